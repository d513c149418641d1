#!/usr/bin/env bash
# The benchmark: the service against its ceilings, side by side, on this machine's loopback.
#
#   bench/run.sh           1,000,000 SKUs, release build, 3 rounds of 10 s per scenario
#   bench/run.sh --smoke   20,000 SKUs, the debug build, 1 round of 3 s (part of CI)
#
# Scenarios and their ceilings: cache-hit GET vs axum + one fred GET of the same entry
# (bench/ceiling.rs), webdis and redis-benchmark; lookup of 100
# cached SKUs vs single GETs; miss GET (Redis up but holding none of the SKUs, an instance of
# its own key prefix emptied before each round; fresh replica; again spread over two
# replicas, the second the one 2 s behind, which has long replayed these rows) vs pgbench -S; WMS
# sync in batches of 1,000 vs the same set-based statement through pgbench (each measured in
# a second period, after a first that is reported apart); warm-cache vs
# redis-cli --pipe, and again from a replica 2 s behind while writes go on; outside UPDATEs
# at 500/s (smoke: 50/s), each timed from before its commit until the service serves it. The load
# generator runs on CPU 0, the service and its datastores on CPU 1.
# Writes bench/RESULTS.md and bench/latency.svg (full mode) or bench/out/ (smoke).
#
# BENCH_ONLY="get miss" runs only those scenario groups (warm, get, lookup, change, miss, sync,
# overload: hits while misses arrive at 3x the rate the miss path sustains), with
# their ceilings, and writes to bench/out/ instead: for trying a change quickly. BENCH_ROUNDS
# overrides the number of rounds. BENCH_PERF=1 also records a CPU profile of the service under
# each of its scenarios (perf, into bench/out/.../perf-*.data; `perf report -i FILE`).
# BENCH_RUST_LOG sets the services' RUST_LOG (default warn: no access log; info writes it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=full
[ "${1:-}" = --smoke ] && mode=smoke
if [ "$mode" = smoke ]; then
  rows=20000 duration=3 rounds=1 profile=debug out=bench/out/smoke change_rate=50
else
  rows=1000000 duration=10 rounds=3 profile=release out=bench/out/full change_rate=500
fi
rounds=${BENCH_ROUNDS:-$rounds}
only=${BENCH_ONLY:-}
if [ -n "$only" ]; then
  [ "$mode" = full ] && out=bench/out/partial
  mode=partial
fi
runs() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }
mkdir -p "$out"
results=$out/results.jsonl
: >"$results"

missing=()
for tool in wrk webdis redis-benchmark taskset; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "missing: ${missing[*]} (run as root to install)" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk webdis redis-tools util-linux >/dev/null
fi

scripts/services.sh up
eval "$(scripts/services.sh env)"
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_port=${PSS_PG_PRIMARY_PORT:-55432}
replica_port=${PSS_PG_REPLICA_PORT:-55433}
lagging_port=${PSS_PG_LAGGING_PORT:-55434}
db=product_sizes_bench
psql_primary() { "$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
psql_primary -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
  || psql_primary -d postgres -c "CREATE DATABASE $db"
psql_primary -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'pgbench_bench'" | grep -q 1 \
  || { psql_primary -d postgres -c "CREATE DATABASE pgbench_bench"; "$pgbin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -i -q -s 10 pgbench_bench >/dev/null 2>&1; }
export DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/$db
export DATABASE_REPLICA_URL=postgres://postgres@127.0.0.1:$replica_port/$db

if [ "$profile" = release ]; then
  cargo build --locked --release --bin product-size --example change_latency --example overload \
    --example ceiling
else
  # The features cargo test builds with (it builds the examples too): usually nothing to do.
  cargo build --locked --tests --examples
fi
bin=${CARGO_TARGET_DIR:-target}/$profile/product-size
change_latency=${CARGO_TARGET_DIR:-target}/$profile/examples/change_latency
overload=${CARGO_TARGET_DIR:-target}/$profile/examples/overload
ceiling=${CARGO_TARGET_DIR:-target}/$profile/examples/ceiling
"$bin" migrate

echo "== loading $rows SKUs"
# No cache follows the table while it loads (a previous run's registrations go too), so the
# load records nothing for the service to apply during the measurements.
psql_primary -d "$db" -c "TRUNCATE product_sizes, cache_repairs, cache_own_writes, cache_ledgers" -c "
  INSERT INTO product_sizes
  SELECT 'B' || lpad(i::text, 7, '0'), 100 + i % 900, 200, 100, 900 + i % 5000,
         CASE WHEN i % 3 = 0 THEN 'M' END, 1, 1, false, now()
  FROM generate_series(1, $rows) AS i" -c "VACUUM ANALYZE product_sizes"
# The direct upsert's copy of the table: no cache follows it, so nothing but the statement
# itself (and the records the trigger keeps for the writer's own cache) is measured. Copied
# through the WAL: a standby replays a file_copy by copying the template's directory, and
# fails (and stops) if a backend of its own is writing a relcache file there at that moment.
direct_db=${db}_direct
psql_primary -d postgres -c "DROP DATABASE IF EXISTS $direct_db" \
  -c "CREATE DATABASE $direct_db TEMPLATE $db STRATEGY wal_log"
wait_replayed() { # replica_port: until it has replayed what the primary has written now
  local target
  target=$(psql_primary -d "$db" -c "SELECT pg_current_wal_insert_lsn()")
  until [ "$("$pgbin/psql" -h 127.0.0.1 -p "$1" -U postgres -d "$db" -qAt \
            -c "SELECT pg_last_wal_replay_lsn() >= '$target'::pg_lsn")" = t ]; do sleep 0.2; done
}
wait_replayed "$replica_port"

# The service and its datastores on CPU 1, the load generators on CPU 0. Processes started
# here start pinned, so that they size their thread pools for the one CPU they have (tokio
# takes its worker count from the affinity mask, as it takes it from a container's CPU quota).
# A command prefix, not a function: a function run in the background is a subshell, and $!
# would name the subshell instead of the server.
servers=()
loader=()
[ "$(nproc)" -ge 2 ] && loader=(taskset -c 0)
load() { if [ "$(nproc)" -ge 2 ]; then taskset -c 0 "$@"; else "$@"; fi; }
if [ "$(nproc)" -ge 2 ]; then
  servers=(taskset -c 1)
  for pid in $(pgrep -f "postgres.*$(basename "$PWD")" || true); do
    taskset -a -pc 1 "$pid" >/dev/null 2>&1 || true
  done
fi

# A Redis of the benchmark's own, and webdis in front of it.
redis_port=56390 webdis_port=56391 port=56392 miss_port=56393 ceiling_port=56394
data=${PSS_DATA:-.local}/bench
mkdir -p "$data"
redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
"${servers[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$PWD/$data/redis.pid" --logfile "$PWD/$data/redis.log" >/dev/null
cat >"$data/webdis.json" <<JSON
{"redis_host": "127.0.0.1", "redis_port": $redis_port, "http_host": "127.0.0.1", "http_port": $webdis_port,
 "database": 1, "threads": 2, "pool_size": 20, "daemonize": false, "verbosity": 0, "logfile": "$PWD/$data/webdis.log"}
JSON

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Gone before this script ends, so a run right after finds their ports free.
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT


wait_healthy() { # port pid log: polls /healthz while the process lives; stops if it exits
  until curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null 2>&1; do
    if ! kill -0 "$2" 2>/dev/null; then
      echo "the process for port $1 exited before it answered:" >&2
      cat "$3" >&2
      exit 1
    fi
    sleep 0.1
  done
}

start_service() { # port key_prefix
  API_READ_TOKENS=bench API_WRITE_TOKENS=bench BIND_ADDR=127.0.0.1:$1 \
    REDIS_URL=redis://127.0.0.1:$redis_port CACHE_KEY_PREFIX=$2 LOG_FORMAT=json RUST_LOG=${BENCH_RUST_LOG:-warn} "${servers[@]}" "$bin" serve >"$data/serve-$1.log" 2>&1 &
  pids+=($!)
  wait_healthy "$1" "${pids[-1]}" "$data/serve-$1.log"
}
start_service "$port" bench
service_pid=${pids[-1]}
"${servers[@]}" webdis "$data/webdis.json" >/dev/null 2>&1 &
pids+=($!)
# The hit's ceiling: axum + one fred GET of the same entry (bench/ceiling.rs).
BIND_ADDR=127.0.0.1:$ceiling_port REDIS_URL=redis://127.0.0.1:$redis_port CACHE_KEY_PREFIX=bench \
  "${servers[@]}" "$ceiling" >"$data/ceiling.log" 2>&1 &
pids+=($!)
wait_healthy "$ceiling_port" "${pids[-1]}" "$data/ceiling.log"

record() { # scenario round value unit [p50_ms p99_ms]
  printf '{"scenario":"%s","round":%s,"value":%s,"unit":"%s","p50_ms":%s,"p99_ms":%s}\n' \
    "$1" "$2" "$3" "$4" "${5:-null}" "${6:-null}" >>"$results"
}

wrk_run() { # scenario round url script connections [env...]
  local scenario=$1 round=$2 url=$3 script=$4 connections=$5
  shift 5
  local text profiler=
  local target_port=${url##*:}
  if [ -n "${BENCH_PERF:-}" ] && [ "$target_port" != "$webdis_port" ]; then
    perf record -q -F 499 --call-graph dwarf,16384 -p "$(lsof -t -iTCP@127.0.0.1:"$target_port" -sTCP:LISTEN)" \
      -o "$out/perf-${scenario// /-}-$round.data" -- sleep "$duration" >/dev/null 2>&1 &
    profiler=$!
  fi
  text=$(env BENCH_ROWS="$rows" BENCH_TOKEN=bench "$@" \
    taskset -c 0 wrk -t1 -c"$connections" -d"${duration}s" --latency -s "bench/$script" "$url" 2>&1)
  echo "$text" >"$out/$scenario-$round.txt"
  [ -z "$profiler" ] || wait "$profiler" || true
  python3 bench/report.py wrk "$scenario" "$round" ${tolerate:-} <<<"$text" >>"$results"
}

for round in $(seq 1 "$rounds"); do
  echo "== round $round/$rounds"
  # Warm-up against redis-cli --pipe of the same rows into an empty Redis (always: the other
  # scenarios read what they load).
  redis-cli -p "$redis_port" flushall >/dev/null
  start=$(date +%s.%N)
  REDIS_URL="redis://127.0.0.1:$redis_port" CACHE_KEY_PREFIX=bench \
    "$bin" warm-cache --batch-size 1000 >"$out/warm-$round.txt" 2>/dev/null
  elapsed=$(python3 -c "import time,sys; print(time.time() - float(sys.argv[1]))" "$start")
  record warm-cache "$round" "$(python3 -c "print($rows / $elapsed)")" rows/s
  if runs warm; then
    # Again, from the replica that applies WAL 2 s late, while one connection writes through
    # the service: every write raises the high-water mark the replica must have replayed.
    redis-cli -p "$redis_port" flushall >/dev/null
    BENCH_ROWS="$rows" BENCH_TOKEN=bench "${loader[@]}" wrk -t1 -c1 -d600s -s bench/put.lua \
      "http://127.0.0.1:$port" >/dev/null 2>&1 &
    writer=$!
    start=$(date +%s.%N)
    DATABASE_REPLICA_URL=postgres://postgres@127.0.0.1:$lagging_port/$db \
      REDIS_URL="redis://127.0.0.1:$redis_port" CACHE_KEY_PREFIX=bench \
      "$bin" warm-cache --batch-size 1000 >"$out/warm-lagging-$round.txt" 2>/dev/null
    elapsed=$(python3 -c "import time,sys; print(time.time() - float(sys.argv[1]))" "$start")
    kill "$writer" 2>/dev/null || true
    wait "$writer" 2>/dev/null || true
    record "warm-cache, lagging replica + writes" "$round" "$(python3 -c "print($rows / $elapsed)")" rows/s
  fi
  psql_primary -d "$db" -c "COPY (SELECT sku, version, length_mm FROM product_sizes) TO STDOUT" \
    | python3 bench/report.py resp "$redis_port" >"$data/pipe.resp"
  # Into database 1 (where webdis reads them): the service's keyspace, database 0, stays its
  # own, as in production. A million more keys there would make Redis grow and rehash its
  # table under the next scenarios, which no deployment of the service pays.
  redis-cli -p "$redis_port" -n 1 flushdb >/dev/null
  start=$(date +%s.%N)
  load redis-cli -p "$redis_port" -n 1 --pipe <"$data/pipe.resp" >/dev/null
  elapsed=$(python3 -c "import time,sys; print(time.time() - float(sys.argv[1]))" "$start")
  record "redis-cli --pipe" "$round" "$(python3 -c "print($rows / $elapsed)")" rows/s

  if runs get || runs lookup || runs overload; then
    wrk_run "cache-hit GET" "$round" "http://127.0.0.1:$port" get.lua 32
  fi
  if runs get; then
    wrk_run "axum + fred GET" "$round" "http://127.0.0.1:$ceiling_port" get.lua 32
    wrk_run "webdis GET" "$round" "http://127.0.0.1:$webdis_port" get.lua 32 BENCH_PATH=/GET/raw:%s
    text=$(load redis-benchmark -p "$redis_port" -t get -c 32 -n $((rows * 4)) -r "$rows" --csv 2>/dev/null | tail -n 1)
    record "redis-benchmark GET" "$round" "$(python3 bench/report.py csv <<<"$text")" req/s
  fi
  if runs lookup; then
    wrk_run "lookup 100 cached" "$round" "http://127.0.0.1:$port" lookup.lua 32
  fi
  if runs change; then
    # Outside UPDATEs on cached SKUs at a steady rate, each read through the service until it
    # is served (C7: within 1 s of its commit).
    text=$(load "$change_latency" "$DATABASE_URL" "http://127.0.0.1:$port" bench "$rows" "$change_rate" "$duration")
    echo "$text" >"$out/change-$round.json"
    record "outside update → served" "$round" \
      "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["rate_per_s"])' "$text")" changes/s \
      "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["p50_ms"])' "$text")" \
      "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["p99_ms"])' "$text")"
  fi
  if runs miss || runs overload; then
    # Misses only: an instance of its own key prefix, its cache emptied (1% of the SKUs were
    # filled by the previous round). It runs only here, and is then deregistered, so that no
    # other scenario's writes are also applied to its cache (a second deployment's cost).
    redis-cli -p "$redis_port" --scan --pattern 'benchmiss:*' | xargs -r -n 1000 redis-cli -p "$redis_port" del >/dev/null
    start_service "$miss_port" benchmiss
    miss_pid=${pids[-1]}
    wrk_run "miss GET" "$round" "http://127.0.0.1:$miss_port" get.lua 32
    kill "$miss_pid" && wait "$miss_pid" || true
    # The same misses spread over two replicas: the second is the one that applies WAL 2 s
    # late, which serves these rows (written long before) as well once it has replayed them.
    wait_replayed "$lagging_port"
    redis-cli -p "$redis_port" --scan --pattern 'benchmiss:*' | xargs -r -n 1000 redis-cli -p "$redis_port" del >/dev/null
    DATABASE_REPLICA_URL="$DATABASE_REPLICA_URL,postgres://postgres@127.0.0.1:$lagging_port/$db" \
      start_service "$miss_port" benchmiss
    miss_pid=${pids[-1]}
    wrk_run "miss GET, 2 replicas" "$round" "http://127.0.0.1:$miss_port" get.lua 32
    kill "$miss_pid" && wait "$miss_pid" || true
    psql_primary -d "$db" -c "DELETE FROM cache_ledgers WHERE ledger = 'benchmiss'" \
      -c "DELETE FROM cache_repairs WHERE cache_prefix = 'benchmiss'"
    text=$(load "$pgbin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -S -c 32 -j 1 -T "$duration" pgbench_bench 2>&1)
    record "pgbench -S" "$round" "$(python3 bench/report.py pgbench <<<"$text")" tps
  fi
  if runs overload; then
    # Misses of SKUs that exist nowhere, open loop at 3x the rate the miss path sustained
    # this round, on the instance that serves the hits: misses beyond what the database
    # answers are shed with 503 at once, and the hits beside them stay fast.
    miss_rate=$(python3 -c 'import json,sys; print(max(json.loads(l)["value"] for l in open(sys.argv[1]) if json.loads(l)["scenario"] == "miss GET" and json.loads(l)["round"] == int(sys.argv[2])))' "$results" "$round")
    load "$overload" "http://127.0.0.1:$port" bench "$(python3 -c "print(3 * $miss_rate)")" "$duration" \
      >"$out/overload-$round.json" &
    misses=$!
    tolerate=tolerate-errors wrk_run "cache-hit GET, misses at 3x" "$round" "http://127.0.0.1:$port" get.lua 32
    wait "$misses"
    python3 bench/report.py overload "$round" <"$out/overload-$round.json" >>"$results"
  fi
  if runs sync; then
    # Each side runs twice, and the target is on the second period: the first pays one-off
    # costs of the state the warm-up leaves. A million warmed entries fill 95% of Redis's
    # 2^20-bucket tables, so the sync's first fences double them and Redis rehashes two
    # million entries within those seconds: a deployment pays that once, over as many inserts
    # as it has keys (bench/RESULTS.md, "Issue 14, sixth pass"). Both periods are reported,
    # each with Redis's own time per SET in it (from INFO commandstats; the SETs are the
    # install script's), which shows that growth.
    for period in "WMS sync x1000, first period" "WMS sync x1000"; do
      redis-cli -p "$redis_port" config resetstat >/dev/null
      wrk_run "$period" "$round" "http://127.0.0.1:$port" sync.lua 4
      record "$period: Redis per SET" "$round" "$(redis-cli -p "$redis_port" info commandstats \
        | awk -F'[=,]' '/^cmdstat_set:/ {ns = $6 * 1000} END {print ns + 0}')" ns
    done
    # As an outside writer (the WMS writing the table itself) runs it where the service's cache
    # follows the table: the capture trigger records each row for that cache (C7). Each period
    # registers the ledger afresh (the trigger records for ledgers seen in the last minute)
    # and starts with no records, as where instances apply them as they come: left in place,
    # one period's records would turn the next one's inserts into updates of old ones.
    for period in "direct upsert x1000, first period" "direct upsert x1000"; do
      psql_primary -d "$direct_db" -c "TRUNCATE cache_repairs" \
        -c "SELECT follow_cache_ledgers('{pgbench}')" >/dev/null
      text=$(load "$pgbin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -n -c 4 -j 1 -T "$duration" \
        --max-tries 10 -D rows="$rows" -f bench/upsert.sql "$direct_db" 2>&1)
      record "$period" "$round" "$(python3 bench/report.py pgbench <<<"$text")" tps
    done
  fi
done
rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$service_pid/status")
record "peak RSS" 1 "$rss_kb" KiB

python3 bench/report.py summary "$results" "$mode" "$rows" "$duration" "$rounds" "$out"
