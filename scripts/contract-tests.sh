#!/usr/bin/env bash
# Contract tests against a live instance on the local services (scripts/services.sh up):
#   1. the docs page driven in headless Chromium (tests/browser/docs.test.mjs);
#   2. schemathesis over the whole OpenAPI document: all checks, every phase, seeded data.
# Installs what it needs when missing: Debian's chromium and nodejs/npm (as root), the pinned
# playwright-core (npm ci) and schemathesis (a virtualenv under .local/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

data=${PSS_DATA:-.local}
need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "missing: ${need_apt[*]} (run as root to install)" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if [ ! -x "$data/venv/bin/schemathesis" ]; then
  python3 -m venv "$data/venv"
  "$data/venv/bin/pip" install -q schemathesis==4.32.5
fi
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

eval "$(scripts/services.sh env)"
# The features `cargo test` built with (dev-dependencies unify features): no rebuild after it.
cargo build --locked --tests
bin=${CARGO_TARGET_DIR:-target}/debug/product-size
read_token=contract-read-token
write_token=contract-write-token
admin_token=contract-admin-token
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
API_READ_TOKENS=$read_token API_WRITE_TOKENS=$write_token API_ADMIN_TOKENS=$admin_token \
  BIND_ADDR=127.0.0.1:$port \
  CACHE_KEY_PREFIX=contract-$port LOG_FORMAT=json RUST_LOG=warn \
  "$bin" serve >"$data/contract-serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$data/contract-serve.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -X POST "$base/v1/sync/product-sizes" -H "Authorization: Bearer $write_token" \
  -H 'Content-Type: application/json' --data @scripts/demo-data.json >/dev/null
# The SKU the browser test reads: a PUT (re)creates it even if an earlier run deleted it.
sku=DOCS-SHOE-42
curl -fsS -X PUT "$base/v1/products/$sku/size" -H "Authorization: Bearer $write_token" \
  -H 'Content-Type: application/json' \
  -d '{"length_mm": 330, "width_mm": 210, "height_mm": 120, "weight_g": 950, "size_label": "EU 42"}' >/dev/null

echo "== docs page in headless Chromium"
PSS_BASE_URL=$base PSS_READ_TOKEN=$read_token PSS_SKU=$sku \
  PSS_SCREENSHOT=docs/screenshots/docs-try-it-out.png node tests/browser/docs.test.mjs

echo "== schemathesis: all checks, all phases"
"$data/venv/bin/schemathesis" run "$base/openapi.json" \
  --checks all --max-examples 150 --seed 1 \
  -H "Authorization: Bearer $write_token" --no-color

echo "== schemathesis: the operator endpoints, with an admin token"
# The write token above only meets 403 there; an admin token reaches the handlers. No
# stateful phase: no link leads to or from these operations.
"$data/venv/bin/schemathesis" run "$base/openapi.json" \
  --checks all --max-examples 50 --seed 1 --include-path-regex '^/v1/admin/' \
  --phases examples,coverage,fuzzing \
  -H "Authorization: Bearer $admin_token" --no-color
