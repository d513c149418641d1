#!/usr/bin/env bash
# The whole test suite against real services: a PostgreSQL primary, two streaming replicas
# (one fresh, one applying WAL 2 s late) and Redis, all local to this checkout.
# Installs missing Debian packages when run as root. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }

started_here=false
if ! scripts/services.sh running 2>/dev/null; then
  started_here=true
fi
scripts/services.sh up
if $started_here; then
  # Leave the machine as we found it.
  trap 'scripts/services.sh down' EXIT
fi
eval "$(scripts/services.sh env)"

cargo test --locked "$@"
# The live-instance contract tests: the docs page in a browser, schemathesis over the API.
if [ "${PSS_SKIP_CONTRACT_TESTS:-}" != 1 ]; then
  scripts/contract-tests.sh
fi
# The Dockerfile and the Helm chart, linted and validated.
scripts/lint-deploy.sh
# The benchmark harness end to end on a small data set (numbers from it mean nothing).
if [ "${PSS_SKIP_BENCH_SMOKE:-}" != 1 ]; then
  bench/run.sh --smoke
fi
