#!/usr/bin/env bash
# What a write whose cache update fails costs (docs/reader-leases.md): PUT latency through one
# of two instances of a deployment, while Redis takes writes, while Redis pauses them
# (CLIENT PAUSE ... WRITE: every install times out after REDIS_TIMEOUT_MS, then the writer
# records the SKU as owed and waits for the other instance to learn it), and with the other
# instance killed (SIGKILL: its row stays, so the writer waits out its lease).
#
#   bench/failed-install.sh [WRITES]     (default 200; a tenth of them with the instance killed)
#
# Uses the release build and the local services (scripts/services.sh), a Redis of its own and
# the benchmark's database. Prints p50/p90/p99 per condition. While Redis pauses writes, the
# breaker soon fails installs at once instead of after REDIS_TIMEOUT_MS (50 ms here), so
# most of what is left is recording the SKUs as owed and the other instance's renewal.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

writes=${1:-200}
redis_port=56395 first_port=56396 second_port=56397
timeout_ms=50 lease_ms=2000
data=${PSS_DATA:-.local}/bench-failed-install
mkdir -p "$data"

scripts/services.sh up
eval "$(scripts/services.sh env)"
pg_port=${PSS_PG_PRIMARY_PORT:-55432}
db=product_sizes_bench
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
"$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -qAt \
  -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
  || "$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -qc "CREATE DATABASE $db"
cargo build --locked --release --bin product-size
bin=${CARGO_TARGET_DIR:-target}/release/product-size

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
}
trap stop_all EXIT

redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$PWD/$data/redis.pid" --logfile "$PWD/$data/redis.log" >/dev/null
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done

url=postgres://postgres@127.0.0.1:$pg_port/$db
serve() {
  env -u DATABASE_REPLICA_URL DATABASE_URL="$url" REDIS_URL=redis://127.0.0.1:$redis_port CACHE_KEY_PREFIX=fi BIND_ADDR=127.0.0.1:$1 \
    API_WRITE_TOKENS=bench REDIS_TIMEOUT_MS=$timeout_ms CACHE_READ_LEASE_MS=$lease_ms \
    RUST_LOG=error "$bin" serve >"$data/serve-$1.log" 2>&1 &
  pids+=($!)
  until curl -fs "http://127.0.0.1:$1/readyz" >/dev/null 2>&1; do sleep 0.1; done
}
DATABASE_URL="$url" "$bin" migrate >/dev/null
serve "$first_port"
serve "$second_port"

# Seconds per PUT of `count` new SKUs named `prefix-N` through the first instance.
put_times() {
  local prefix=$1 count=$2 i
  for ((i = 0; i < count; i++)); do
    curl -s -o /dev/null -w '%{time_total}\n' -X PUT -H 'Authorization: Bearer bench' \
      -H 'Content-Type: application/json' \
      -d '{"length_mm":1,"width_mm":2,"height_mm":3,"weight_g":4}' \
      "http://127.0.0.1:$first_port/v1/products/$prefix-$RANDOM$RANDOM-$i/size"
  done
}

report() {
  python3 -c '
import sys
times = sorted(float(line) * 1000 for line in sys.stdin if line.strip())
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
print(f"| {sys.argv[1]} | {len(times)} | "
      + " | ".join(f"{pick(q):.1f}" for q in (0.5, 0.9, 0.99)) + f" | {times[-1]:.1f} |")
' "$1"
}

echo "| condition | writes | p50 ms | p90 ms | p99 ms | max ms |"
echo "|---|---|---|---|---|---|"
put_times ok "$writes" | report "Redis takes writes"
redis-cli -p "$redis_port" client pause 600000 write >/dev/null
put_times paused "$writes" | report "Redis pauses writes (the other instance renews)"
kill -9 "${pids[1]}" && wait "${pids[1]}" 2>/dev/null || true
put_times killed "$((writes / 10))" | report "Redis pauses writes, the other instance killed"
redis-cli -p "$redis_port" client unpause >/dev/null
