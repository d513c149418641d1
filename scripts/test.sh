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
# The pooler tests (tests/api/pooler.rs) run PgBouncers of their own, as the postgres user.
if [ ! -x /usr/sbin/pgbouncer ] && ! command -v pgbouncer >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "missing: pgbouncer (run as root to install)" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null
  # Debian starts one as a system service where it can; the tests need none.
  if command -v systemctl >/dev/null 2>&1; then systemctl disable --now pgbouncer >/dev/null 2>&1 || true; fi
fi

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
