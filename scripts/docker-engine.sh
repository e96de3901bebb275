#!/usr/bin/env bash
# A Docker engine for tests/compose (called by scripts/test.sh): starts the engine when it is installed
# but not running; when it is missing and CI=true, installs it with compose v2 through
# ../shared/tools/docker-offline.sh (the build machines reach no container registry; see that script,
# or set DOCKER_OFFLINE_SH to it); then builds the offline Debian 12 base image the compose tests build
# FROM (DSPO_TEST_DOCKER_BASE, default local/bookworm-base). It never fails its caller: without an
# engine the compose tests skip with the reason (and fail on CI).
set -uo pipefail
cd "$(dirname "$0")/.."
base=${DSPO_TEST_DOCKER_BASE:-local/bookworm-base}

offline=""
for candidate in "${DOCKER_OFFLINE_SH:-}" ../shared/tools/docker-offline.sh ../../shared/tools/docker-offline.sh; do
  if [ -n "$candidate" ] && [ -f "$candidate" ]; then offline=$candidate; break; fi
done
note() { echo "docker-engine: $*" >&2; }

if ! command -v dockerd >/dev/null || ! docker compose version >/dev/null 2>&1; then
  if [ "${CI:-}" != true ]; then
    note "no Docker engine or compose v2 here: the compose tests will skip (CI=true installs them)"
    exit 0
  fi
  if [ -z "$offline" ] || [ "$(id -u)" != 0 ]; then
    note "cannot install Docker: needs root and docker-offline.sh (set DOCKER_OFFLINE_SH)"
    exit 0
  fi
  bash "$offline" install || { note "installing Docker failed"; exit 0; }
fi

if ! docker info >/dev/null 2>&1; then
  if [ -n "$offline" ]; then
    bash "$offline" start
  elif [ "$(id -u)" = 0 ]; then
    nohup dockerd >/var/log/dockerd.log 2>&1 &
    for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  docker info >/dev/null 2>&1 || { note "the Docker engine did not start"; exit 0; }
fi

if ! docker image inspect "$base" >/dev/null 2>&1; then
  if [ -n "$offline" ] && [ "$base" = local/bookworm-base ]; then
    bash "$offline" base || note "building $base failed"
  else
    note "the base image $base is missing: the compose tests will skip"
  fi
fi
exit 0
