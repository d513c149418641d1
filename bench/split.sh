#!/usr/bin/env bash
# Where the CPU of a warm-up, a WMS sync and a cache miss goes, per row (a miss: per request),
# beside their ceilings (redis-cli --pipe, the direct upsert, pgbench -S) and, for the warm-up,
# what Redis spends per row on any script (blind SETs from Lua) and on the service's install
# script alone: the service, Redis and PostgreSQL all on CPU 1, the
# load generators on CPU 0, as in bench/run.sh, whose database and release build this reuses
# (run bench/run.sh, or BENCH_ONLY=sync bench/run.sh, first).
#
#   bench/split.sh [rounds]      prints a Markdown table per round (default 2 rounds)
#
# Redis's and the service's CPU are read from /proc/PID/stat (every thread), PostgreSQL's as
# the rest of CPU 1's busy time (its backends come and go with connections).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs" >&2; exit 1; }
rounds=${1:-2}
eval "$(scripts/services.sh env)"
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_port=${PSS_PG_PRIMARY_PORT:-55432}
db=product_sizes_bench
bin=${CARGO_TARGET_DIR:-target}/release/product-size
[ -x "$bin" ] || { echo "no release build: run bench/run.sh first" >&2; exit 1; }
rows=$("$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d "$db" -qAt -c "SELECT count(*) FROM product_sizes")
export DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/$db
export DATABASE_REPLICA_URL=postgres://postgres@127.0.0.1:${PSS_PG_REPLICA_PORT:-55433}/$db
redis_port=56395 port=56396 miss_port=56399
data=${PSS_DATA:-.local}/bench
mkdir -p "$data"
for pid in $(pgrep -f "postgres.*$(basename "$PWD")" || true); do
  taskset -a -pc 1 "$pid" >/dev/null 2>&1 || true
done
redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
taskset -c 1 redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize yes --pidfile "$PWD/$data/split-redis.pid" --logfile "$PWD/$data/split-redis.log"
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.1; done
redis_pid=$(cat "$data/split-redis.pid")
API_READ_TOKENS=bench API_WRITE_TOKENS=bench BIND_ADDR=127.0.0.1:$port RUST_LOG=warn \
  REDIS_URL=redis://127.0.0.1:$redis_port CACHE_KEY_PREFIX=split taskset -c 1 "$bin" serve \
  >"$data/split-serve.log" 2>&1 &
service_pid=$!
trap 'kill $service_pid 2>/dev/null || true; redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1 || true' EXIT
until curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do sleep 0.1; done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
cpu1() { awk '$1 == "cpu1" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
now() { date +%s.%N; }
# scenario rows wall cpu1_before cpu1_after redis_before redis_after service_ticks
line() { python3 - "$@" <<'PY'
import os, sys
name, rows, wall, c0, c1, r0, r1, service = sys.argv[1:]
hz = os.sysconf("SC_CLK_TCK")
us = lambda ticks: float(ticks) / hz * 1e6 / float(rows)
redis = us(float(r1) - float(r0))
cpu1 = us(float(c1) - float(c0))
service = us(service)
# The service's own process runs on CPU 1 too, except for the load generators' CPU 0 runs.
pg = max(cpu1 - redis - service, 0.0)
print(f"| {name} | {float(rows) / float(wall):,.0f}/s | {service:.1f} | {redis:.1f} | {pg:.1f} | "
      f"{cpu1:.1f} |")
PY
}

# The scripts and arguments for the floor rows: 100 items a call, random keys in a space so
# large that every key is empty, 4 connections, 4 calls in flight each.
blind_sha=$(redis-cli -p "$redis_port" script load \
  "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) end return #KEYS")
install_script=$(sed -n '/^pub const INSTALL: &str = r#"$/,/^"#;$/p' src/cache/scripts.rs | sed '1d;$d')
[ -n "$install_script" ] || { echo "no INSTALL script found in src/cache/scripts.rs" >&2; exit 1; }
install_sha=$(redis-cli -p "$redis_port" script load "$install_script")
floor_value="1|0123456789abcdef|00000000000000000001|$(printf '{"sku":"SKU-%07d","length_mm":330,"width_mm":210,"height_mm":120,"weight_g":950,"size_label":"EU 42","version":1,"source_version":17,"updated_at":"2026-12-05T00:00:00.000000Z"}' 1)"
floor_calls=4000
floor_row() {
  local name=$1 sha=$2 install=$3 args=()
  if [ "$install" = 1 ]; then
    for i in $(seq 1 100); do args+=("splitfloor:e:__rand_int__" "splitfloor:f:__rand_int__"); done
    args+=(0123456789abcdef 0)
    for i in $(seq 1 100); do args+=(1 "$floor_value" 3600000 ""); done
    set -- evalsha "$sha" 200 "${args[@]}"
  else
    for i in $(seq 1 100); do args+=("splitfloor:__rand_int__"); done
    set -- evalsha "$sha" 100 "${args[@]}" "$floor_value" 3600000
  fi
  redis-cli -p "$redis_port" -n 2 flushdb >/dev/null
  local c0 c1 r0 r1 t0 t1
  c0=$(cpu1) r0=$(ticks "$redis_pid") t0=$(now)
  taskset -c 0 redis-benchmark -p "$redis_port" --dbnum 2 -c 4 -P 4 -n "$floor_calls" \
    -r 1000000000 -q "$@" >/dev/null
  t1=$(now) c1=$(cpu1) r1=$(ticks "$redis_pid")
  line "$name" "$((floor_calls * 100))" "$(python3 -c "print($t1 - $t0)")" "$c0" "$c1" "$r0" "$r1" 0
  redis-cli -p "$redis_port" -n 2 flushdb >/dev/null
}

echo "| round: scenario | rows (requests)/s | service µs | Redis µs | PostgreSQL µs | CPU 1 busy µs |"
echo "|---|---|---|---|---|---|"
for round in $(seq 1 "$rounds"); do
  # Warm-up: every row into an empty Redis, the command itself pinned to CPU 1 like a server.
  redis-cli -p "$redis_port" flushall >/dev/null
  redis-cli -p "$redis_port" config resetstat >/dev/null
  c0=$(cpu1) r0=$(ticks "$redis_pid") t0=$(now)
  # Its CPU in clock ticks, as the kernel accounts it for a child that has ended.
  warm_ticks=$(python3 - "$bin" "$redis_port" <<'PY'
import os, resource, subprocess, sys
bin, port = sys.argv[1:]
env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{port}", CACHE_KEY_PREFIX="split")
subprocess.run(["taskset", "-c", "1", bin, "warm-cache", "--batch-size", "1000"], env=env,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
used = resource.getrusage(resource.RUSAGE_CHILDREN)
print(round((used.ru_utime + used.ru_stime) * os.sysconf("SC_CLK_TCK")))
PY
)
  t1=$(now) c1=$(cpu1) r1=$(ticks "$redis_pid")
  line "$round: warm-cache" "$rows" "$(python3 -c "print($t1 - $t0)")" "$c0" "$c1" "$r0" "$r1" \
    "$warm_ticks"

  # Its ceiling: the same rows as plain SETs through redis-cli --pipe (from CPU 0), into
  # database 1, empty: the service's keyspace (database 0) stays as the warm-up left it.
  redis-cli -p "$redis_port" -n 1 flushdb >/dev/null
  "$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d "$db" -qAt \
    -c "COPY (SELECT sku, version, length_mm FROM product_sizes) TO STDOUT" \
    | python3 bench/report.py resp "$redis_port" >"$data/split-pipe.resp"
  redis-cli -p "$redis_port" config resetstat >/dev/null
  c0=$(cpu1) r0=$(ticks "$redis_pid") t0=$(now)
  taskset -c 0 redis-cli -p "$redis_port" -n 1 --pipe <"$data/split-pipe.resp" >/dev/null
  t1=$(now) c1=$(cpu1) r1=$(ticks "$redis_pid")
  line "$round: redis-cli --pipe" "$rows" "$(python3 -c "print($t1 - $t0)")" "$c0" "$c1" "$r0" "$r1" \
    0

  # What Redis spends per row on a script, whatever the service does: a script of 100 blind
  # SETs (the floor of any compare-and-set in Lua: Redis 7.0 has no conditional SET that
  # reads another key), then the service's own install script filling 100 empty entries, as
  # a warm-up page does. Called by redis-benchmark from CPU 0 into database 2, ~200-byte
  # values as the warm-up's; only Redis's CPU counts.
  floor_row "$round: Lua SET x100 (any script's floor)" "$blind_sha" 0
  floor_row "$round: install x100 into empty keys" "$install_sha" 1

  # WMS sync: batches of 1,000 from wrk on CPU 0, for 10 s.
  redis-cli -p "$redis_port" config resetstat >/dev/null
  c0=$(cpu1) r0=$(ticks "$redis_pid") s0=$(ticks "$service_pid") t0=$(now)
  text=$(BENCH_ROWS="$rows" BENCH_TOKEN=bench taskset -c 0 wrk -t1 -c4 -d10s -s bench/sync.lua \
    "http://127.0.0.1:$port" 2>&1)
  t1=$(now) c1=$(cpu1) r1=$(ticks "$redis_pid") s1=$(ticks "$service_pid")
  requests=$(awk '/requests in/ {print $1}' <<<"$text")
  line "$round: WMS sync x1000" "$((requests * 1000))" "$(python3 -c "print($t1 - $t0)")" \
    "$c0" "$c1" "$r0" "$r1" "$((s1 - s0))"

  # Its ceiling: the same statement through pgbench (from CPU 0), as an outside writer whose
  # rows the capture trigger records for one following cache (as in bench/run.sh).
  "$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d "${db}_direct" -qAt \
    -c "TRUNCATE cache_repairs" -c "SELECT follow_cache_ledgers('{pgbench}')" >/dev/null
  c0=$(cpu1) t0=$(now)
  text=$(taskset -c 0 "$pgbin/pgbench" -h 127.0.0.1 \
    -p "$pg_port" -U postgres -n -c 4 -j 1 -T 10 --max-tries 10 -D rows="$rows" \
    -f bench/upsert.sql "${db}_direct" 2>&1)
  t1=$(now) c1=$(cpu1)
  transactions=$(awk '/number of transactions actually processed/ {print $NF}' <<<"$text" | cut -d/ -f1)
  line "$round: direct upsert x1000" "$((transactions * 1000))" "$(python3 -c "print($t1 - $t0)")" \
    "$c0" "$c1" 0 0 0

  # A cache miss: an instance whose key prefix holds nothing, random SKUs, 32 connections.
  redis-cli -p "$redis_port" --scan --pattern 'splitmiss:*' \
    | xargs -r -n 1000 redis-cli -p "$redis_port" del >/dev/null
  API_READ_TOKENS=bench BIND_ADDR=127.0.0.1:$miss_port RUST_LOG=warn \
    REDIS_URL=redis://127.0.0.1:$redis_port CACHE_KEY_PREFIX=splitmiss taskset -c 1 "$bin" serve \
    >"$data/split-miss.log" 2>&1 &
  miss_pid=$!
  until curl -fsS "http://127.0.0.1:$miss_port/healthz" >/dev/null 2>&1; do sleep 0.1; done
  c0=$(cpu1) r0=$(ticks "$redis_pid") s0=$(ticks "$miss_pid") t0=$(now)
  text=$(BENCH_ROWS="$rows" BENCH_TOKEN=bench taskset -c 0 wrk -t1 -c32 -d10s -s bench/get.lua \
    "http://127.0.0.1:$miss_port" 2>&1)
  t1=$(now) c1=$(cpu1) r1=$(ticks "$redis_pid") s1=$(ticks "$miss_pid")
  kill "$miss_pid" && wait "$miss_pid" || true
  # Deregistered, as bench/run.sh does: else the next round's sync records every row for a
  # cache nobody runs any more.
  "$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d "$db" -qAt \
    -c "DELETE FROM cache_ledgers WHERE ledger = 'splitmiss'" \
    -c "DELETE FROM cache_repairs WHERE cache_prefix = 'splitmiss'" >/dev/null
  line "$round: miss GET" "$(awk '/requests in/ {print $1}' <<<"$text")" \
    "$(python3 -c "print($t1 - $t0)")" "$c0" "$c1" "$r0" "$r1" "$((s1 - s0))"

  # Its ceiling: pgbench -S, 32 connections (from CPU 0).
  c0=$(cpu1) t0=$(now)
  text=$(taskset -c 0 "$pgbin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -S -c 32 -j 1 -T 10 \
    pgbench_bench 2>&1)
  t1=$(now) c1=$(cpu1)
  line "$round: pgbench -S" "$(awk '/number of transactions actually processed/ {print $NF}' <<<"$text" | cut -d/ -f1)" \
    "$(python3 -c "print($t1 - $t0)")" "$c0" "$c1" 0 0 0
done
