#!/usr/bin/env bash
# PostgreSQL's share of a WMS sync, statement by statement: the direct upsert as an outside
# writer runs it (A: the capture trigger records each row for the one cache that follows the
# table), the service's transaction shape as the service runs it (C: whole rows locked and
# sent to the client, then the set-based UPDATE and the position after the commit; the trigger
# records the batch once, for the writer's own cache), and C with the settle that clears that
# record once Redis holds the versions (D: what the service sends per batch). The same
# 1,000-SKU batches through pgbench -c 4 on the direct upsert's copy of the table, PostgreSQL
# on CPU 1, pgbench on CPU 0; rounds interleave the shapes. Run bench/run.sh (or
# BENCH_ONLY=sync bench/run.sh) first.
#
#   bench/sync-shapes.sh [rounds] [seconds]     (default 3 rounds of 10 s)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3} seconds=${2:-10}
eval "$(scripts/services.sh env)"
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pg_port=${PSS_PG_PRIMARY_PORT:-55432}
db=product_sizes_bench_direct
rows=$("$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d "$db" -qAt \
  -c "SELECT count(*) FROM product_sizes") || { echo "no $db: run bench/run.sh first" >&2; exit 1; }
for pid in $(pgrep -f "postgres.*$(basename "$PWD")" || true); do
  taskset -a -pc 1 "$pid" >/dev/null 2>&1 || true
done
cpu1() { awk '$1 == "cpu1" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
echo "| round | shape | rows/s | CPU 1 µs per row |"
echo "|---|---|---|---|"
# D appends the settle to C.
data=${PSS_DATA:-.local}/bench
mkdir -p "$data"
cp bench/sync-shapes/direct.sql "$data/shape-direct.sql"
cp bench/sync-shapes/locked.sql "$data/shape-locked.sql"
cat bench/sync-shapes/locked.sql bench/sync-shapes/settle.sql >"$data/shape-service.sql"
for round in $(seq 1 "$rounds"); do
  for shape in direct locked service; do
    # The outside writer's rows are recorded for the following cache 'pgbench'; the
    # service's shapes name it as their own, as the service's connections do.
    options=""
    [ "$shape" = direct ] || options="-c product_size.own_ledgers=pgbench"
    # Each shape starts with no records, as where instances apply them as they come.
    "$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -d "$db" -qAt \
      -c "TRUNCATE cache_repairs, cache_own_writes" \
      -c "SELECT follow_cache_ledgers('{pgbench}')" >/dev/null
    before=$(cpu1)
    text=$(PGOPTIONS="$options" taskset -c 0 "$pgbin/pgbench" \
      -h 127.0.0.1 -p "$pg_port" -U postgres -n -c 4 -j 1 -T "$seconds" --max-tries 10 \
      -D rows="$rows" -f "$data/shape-$shape.sql" "$db" 2>&1)
    after=$(cpu1)
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$text")
    python3 - "$round" "$shape" "$tps" "$before" "$after" "$seconds" <<'PY'
import os, sys
round_, shape, tps, before, after, seconds = sys.argv[1:]
rows = float(tps) * 1000 * float(seconds)
us = (float(after) - float(before)) / os.sysconf("SC_CLK_TCK") * 1e6 / rows
print(f"| {round_} | {shape} | {float(tps) * 1000:,.0f} | {us:.1f} |")
PY
  done
done
