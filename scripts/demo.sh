#!/usr/bin/env bash
# Set up and run the demo on the embedded default: SQLite in ./var, jobs in-process, no other servers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "${DSPO_DEMO_EXTRAS:-}"
exec .venv/bin/dspo demo "$@"
