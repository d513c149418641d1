#!/usr/bin/env bash
# PostgreSQL's share of a WMS sync, statement by statement: the direct upsert (A), with the
# writer's settle of its change records (B), the service's transaction shape (C: whole rows
# locked and sent to the client, then the set-based UPDATE and the position after the commit),
# and both (D: what the service sends per batch). The same 1,000-SKU batches through pgbench
# -c 4 on the direct upsert's copy of the table, PostgreSQL on CPU 1, pgbench on CPU 0; rounds
# interleave the shapes. Run bench/run.sh (or BENCH_ONLY=sync bench/run.sh) first.
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
# A and C are statements of their own; B and D append the settle to them.
data=${PSS_DATA:-.local}/bench
mkdir -p "$data"
cp bench/sync-shapes/direct.sql "$data/shape-direct.sql"
cat bench/sync-shapes/direct.sql bench/sync-shapes/settle.sql >"$data/shape-settle.sql"
cp bench/sync-shapes/locked.sql "$data/shape-locked.sql"
cat bench/sync-shapes/locked.sql bench/sync-shapes/settle.sql >"$data/shape-service.sql"
for round in $(seq 1 "$rounds"); do
  for shape in direct settle locked service; do
    before=$(cpu1)
    text=$(PGOPTIONS="-c product_size.own_ledgers=pgbench" taskset -c 0 "$pgbin/pgbench" \
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
