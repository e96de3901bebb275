#!/usr/bin/env bash
# Set up everything and run all tests. PostgreSQL and Redis tests need the servers at
# DSPO_TEST_POSTGRES_URL / DSPO_TEST_REDIS_URL (defaults: 127.0.0.1:5432, 127.0.0.1:6379); without
# them they skip with the reason, except when CI=true, where they fail. The same goes for the compose
# tests (tests/compose) and a Docker engine, which scripts/docker-engine.sh starts or, on CI, installs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-packages.sh
bash scripts/setup.sh "train,realesrgan,labelstudio,test"
bash scripts/docker-engine.sh  # tests/compose: starts (on CI installs) a Docker engine
export HF_HUB_OFFLINE=1
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
