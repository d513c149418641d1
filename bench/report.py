#!/usr/bin/env python3
"""Helpers of bench/run.sh: parse tool output, write the RESP stream for redis-cli --pipe, and
summarise rounds into RESULTS.md and a latency plot. Standard library only."""
import json
import re
import statistics
import sys


def wrk(scenario, rnd, tolerate=None):
    """One wrk run's record; with `tolerate-errors`, non-2xx answers are counted, not fatal."""
    text = sys.stdin.read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not m:
            return None
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    def ms(value, unit):
        value = float(value)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", text, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors and tolerate != "tolerate-errors":
        sys.exit(f"{scenario}: {errors.group(1)} non-2xx responses")
    if tolerate == "tolerate-errors":
        print(json.dumps({"scenario": f"{scenario}: refused", "round": int(rnd),
                          "value": int(errors.group(1)) if errors else 0, "unit": "requests",
                          "p50_ms": None, "p99_ms": None, "max_ms": None}))
    print(json.dumps({"scenario": scenario, "round": int(rnd), "value": rps, "unit": "req/s",
                      "p50_ms": pct(50), "p99_ms": pct(99),
                      "max_ms": ms(*latency.groups()) if latency else None}))


def overload(rnd):
    """The records of examples/overload.rs's summary."""
    o = json.load(sys.stdin)
    seconds = o["answered"] / o["answered_per_s"] if o["answered_per_s"] else 1
    print(json.dumps({"scenario": "misses at 3x: answered", "round": int(rnd),
                      "value": o["answered_per_s"], "unit": "req/s",
                      "p50_ms": o["answered_p50_ms"], "p99_ms": o["answered_p99_ms"],
                      "max_ms": o["max_ms"]}))
    print(json.dumps({"scenario": "misses at 3x: shed (503)", "round": int(rnd),
                      "value": o["shed"] / seconds, "unit": "req/s",
                      "p50_ms": None, "p99_ms": o["shed_p99_ms"], "max_ms": o["max_ms"]}))
    print(json.dumps({"scenario": "misses at 3x: failed", "round": int(rnd),
                      "value": o["failed"], "unit": "requests",
                      "p50_ms": None, "p99_ms": None, "max_ms": None}))


def resp(_port):
    out = sys.stdout.buffer
    for line in sys.stdin:
        sku, version, length = line.rstrip("\n").split("\t")
        body = json.dumps({"sku": sku, "length_mm": int(length), "width_mm": 200, "height_mm": 100,
                           "weight_g": 900, "size_label": None, "version": int(version),
                           "source_version": 1, "updated_at": "2026-11-23T00:00:00.000000Z"},
                          separators=(",", ":")).encode()
        key = f"raw:{sku}".encode()
        out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(body), body))


def csv():
    line = sys.stdin.read().strip().splitlines()[-1]
    print(float(line.split(",")[1].strip('"')))


def pgbench():
    text = sys.stdin.read()
    m = re.search(r"tps = ([\d.]+)", text)
    if not m:
        sys.exit("pgbench failed:\n" + text)
    print(float(m.group(1)))


TARGETS = [
    # (what, numerator scenario, multiplier, denominator scenario, multiplier, target)
    ("cache-hit GET / axum + fred GET", "cache-hit GET", 1, "axum + fred GET", 1, 0.9),
    ("cache-hit GET / webdis", "cache-hit GET", 1, "webdis GET", 1, 1.05),
    ("cache-hit GET / redis-benchmark GET", "cache-hit GET", 1, "redis-benchmark GET", 1, None),
    ("lookup SKUs/s / single GETs/s", "lookup 100 cached", 100, "cache-hit GET", 1, 8.0),
    ("miss GET / pgbench -S", "miss GET", 1, "pgbench -S", 1, 0.5),
    ("miss GET, 2 replicas / miss GET, 1 replica", "miss GET, 2 replicas", 1, "miss GET", 1, None),
    ("WMS sync rows/s / direct upsert rows/s", "WMS sync x1000", 1000, "direct upsert x1000", 1000, 0.7),
    ("the same, first period (Redis grows its tables)", "WMS sync x1000, first period", 1000,
     "direct upsert x1000, first period", 1000, None),
    ("warm-cache / redis-cli --pipe", "warm-cache", 1, "redis-cli --pipe", 1, 0.5),
    ("warm-cache, lagging replica + writes / warm-cache", "warm-cache, lagging replica + writes", 1,
     "warm-cache", 1, None),
]


def summary(path, mode, rows, duration, rounds, out):
    runs = [json.loads(line) for line in open(path) if line.strip()]
    by = {}
    for r in runs:
        by.setdefault(r["scenario"], []).append(r)
    med = {k: statistics.median(r["value"] for r in v) for k, v in by.items()}
    lines = [f"# Benchmark results ({mode})", "",
             f"{int(rows):,} SKUs, {rounds} round(s) of {duration} s per scenario, wrk -t1 -c32 "
             "(sync: -c4) on CPU 0, the service and its datastores on CPU 1, loopback. "
             "Medians, with the spread (min–max) over rounds.", "",
             "| scenario | median | spread | p50 | p99 |", "|---|---|---|---|---|"]
    for k, v in by.items():
        vals = [r["value"] for r in v]
        p50 = statistics.median([r["p50_ms"] for r in v if r["p50_ms"] is not None] or [0])
        p99 = statistics.median([r["p99_ms"] for r in v if r["p99_ms"] is not None] or [0])
        unit = v[0]["unit"]
        lat = lambda x: f"{x:.2f} ms" if x else "–"
        lines.append(f"| {k} | {med[k]:,.0f} {unit} | {min(vals):,.0f}–{max(vals):,.0f} | {lat(p50)} | {lat(p99)} |")
    lines += ["", "| ratio | measured | target | |", "|---|---|---|---|"]
    for what, num, nm, den, dm, target in TARGETS:
        if num in med and den in med and med[den]:
            ratio = med[num] * nm / (med[den] * dm)
            verdict = "" if target is None else ("met" if ratio >= target else "**missed**")
            lines.append(f"| {what} | {ratio:.2f}× | {'' if target is None else f'≥ {target}×'} | {verdict} |")
    if "cache-hit GET" in by:
        p99 = statistics.median(r["p99_ms"] for r in by["cache-hit GET"])
        lines.append(f"| cache-hit GET p99 | {p99:.2f} ms | < 2 ms | {'met' if p99 < 2 else '**missed**'} |")
    if "cache-hit GET" in by and "cache-hit GET, misses at 3x" in by:
        unloaded = statistics.median(r["p99_ms"] for r in by["cache-hit GET"])
        loaded = statistics.median(r["p99_ms"] for r in by["cache-hit GET, misses at 3x"])
        ratio = loaded / unloaded
        lines.append(f"| cache-hit GET p99, misses at 3x / unloaded | {ratio:.2f}× | ≤ 2× | {'met' if ratio <= 2 else '**missed**'} |")
        slowest = max(r.get("max_ms") or 0 for k in ("cache-hit GET, misses at 3x", "misses at 3x: answered")
                      for r in by.get(k, []))
        lines.append(f"| slowest request under overload | {slowest:,.0f} ms | < 10,000 ms (the request timeout) | {'met' if slowest < 10000 else '**missed**'} |")
        refused = sum(r["value"] for r in by.get("cache-hit GET, misses at 3x: refused", []))
        lines.append(f"| cache hits refused under overload | {refused:.0f} | 0 | {'met' if refused == 0 else '**missed**'} |")
        failed = sum(r["value"] for r in by.get("misses at 3x: failed", []))
        lines.append(f"| misses failed (no answer) under overload | {failed:.0f} | 0 | {'met' if failed == 0 else '**missed**'} |")
    if "outside update → served" in by:
        p99 = statistics.median(r["p99_ms"] for r in by["outside update → served"])
        lines.append(f"| outside update → served p99 (C7) | {p99:.1f} ms | < 1000 ms | {'met' if p99 < 1000 else '**missed**'} |")
    if "peak RSS" in med:
        mib = med["peak RSS"] / 1024
        lines.append(f"| peak RSS | {mib:.1f} MiB | < 64 MiB | {'met' if mib < 64 else '**missed**'} |")
    text = "\n".join(lines) + "\n"
    target_md = "bench/RESULTS.md" if mode == "full" else f"{out}/RESULTS.md"
    open(target_md, "w").write(text)
    svg_path = "bench/latency.svg" if mode == "full" else f"{out}/latency.svg"
    open(svg_path, "w").write(plot(by))
    print(text)


def plot(by):
    bars = [(k, statistics.median(r["p50_ms"] for r in v), statistics.median(r["p99_ms"] for r in v))
            for k, v in by.items() if v[0]["p50_ms"] is not None and v[0]["unit"] != "changes/s"]
    width, row = 760, 34
    height = 60 + row * len(bars)
    top = max([p99 for _, _, p99 in bars] + [1])
    scale = (width - 260) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<text x="10" y="20" font-size="14">Latency by scenario (ms): p50 dark, p99 light</text>']
    for i, (name, p50, p99) in enumerate(bars):
        y = 40 + i * row
        parts.append(f'<text x="10" y="{y + 14}">{name}</text>')
        parts.append(f'<rect x="190" y="{y}" width="{p99 * scale:.1f}" height="20" fill="#9ecae1"/>')
        parts.append(f'<rect x="190" y="{y}" width="{p50 * scale:.1f}" height="20" fill="#3182bd"/>')
        parts.append(f'<text x="{195 + p99 * scale:.1f}" y="{y + 14}">{p50:.2f} / {p99:.2f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"wrk": wrk, "resp": resp, "csv": csv, "pgbench": pgbench, "overload": overload,
     "summary": summary}[command](*args)
