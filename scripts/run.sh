#!/usr/bin/env bash
# Runs the service on local services with demo data: provisions PostgreSQL (primary and
# replica) and Redis, applies migrations, starts the API, loads demo sizes, and prints how
# to try it. Ctrl-C stops the service; `scripts/services.sh down` stops the databases.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
scripts/services.sh up
eval "$(scripts/services.sh env)"

cargo build --locked --bin product-size
bin=${CARGO_TARGET_DIR:-target}/debug/product-size
"$bin" migrate

export API_READ_TOKENS=${API_READ_TOKENS:-dev-read-token}
export API_WRITE_TOKENS=${API_WRITE_TOKENS:-dev-write-token}
export API_ADMIN_TOKENS=${API_ADMIN_TOKENS:-dev-admin-token}
export BIND_ADDR=${BIND_ADDR:-127.0.0.1:8080}
export LOG_FORMAT=${LOG_FORMAT:-pretty}
read_token=${API_READ_TOKENS%%,*}
write_token=${API_WRITE_TOKENS%%,*}
admin_token=${API_ADMIN_TOKENS%%,*}
base=http://$BIND_ADDR

"$bin" serve &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 100); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "the service did not start" >&2; exit 1; }
  sleep 0.1
done

curl -fsS -X POST "$base/v1/sync/product-sizes" \
  -H "Authorization: Bearer $write_token" -H 'Content-Type: application/json' \
  --data @scripts/demo-data.json >/dev/null

cat <<MSG

  product-size-service is running on $base with demo data.

  Docs (try it out):  $base/docs      read token: $read_token   write token: $write_token   admin token: $admin_token
  Try:
    curl -s -H 'Authorization: Bearer $read_token' $base/v1/products/SHOE-42-BLK/size

  Ctrl-C stops the service; scripts/services.sh down stops PostgreSQL and Redis.

MSG
wait "$server"
