#!/usr/bin/env python3
"""CPU per request by layer, from folded perf stacks (inferno-collapse-perf --kernel).

    bench/layers.py NAME=FOLDED:REQUESTS ...

Each sample goes to the layer of the innermost frame of its stack that names one (so an
allocation or a syscall counts for the code that made it), and within it to "user" or
"kernel" by its leaf frame. Stacks with no such frame are "runtime and other". Prints a
Markdown table of microseconds of CPU per request, one column per profile.
"""
import re
import sys
from collections import Counter

# (layer, pattern), tried on each frame from the leaf up: the first frame that matches any
# pattern decides. More specific layers come first where one frame could match two.
LAYERS = [
    ("Redis client (fred)", r"^fred::|redis_protocol|fred::"),
    ("database client (sqlx)", r"sqlx_core::|sqlx_postgres::|sqlx::|db::lease|db::sizes"),
    ("auth", r"middleware::auth"),
    ("DB route", r"middleware::route"),
    ("request timeout", r"middleware::timeout"),
    ("metrics + access log", r"middleware::metrics|middleware::access_log|prometheus"),
    ("request id", r"request_id|MakeRandomRequestId|RequestId"),
    ("tracing span (TraceLayer)", r"tower_http::trace|tracing_core|tracing::span|tracing_subscriber|Span"),
    ("compression layer", r"tower_http::compression"),
    ("sensitive headers / panic guard", r"sensitive_headers|catch_panic"),
    ("handler + service read", r"routes::sizes|service::read|SizeService|cache::Cache|domain::"),
    ("routing (axum)", r"^axum::|<axum::|axum::routing"),
    ("HTTP/1 server (hyper)", r"hyper::|hyper_util::|h1::"),
    ("accept loop + connections", r"product_size_service::server|ceiling::"),
    ("tokio runtime", r"^tokio::|<tokio::|tokio::runtime"),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in LAYERS]
# Frames that only carry a call to the kernel: a socket read or write counts for the layer
# that asked for it (hyper for the client's connection, fred for Redis's).
TRANSPARENT = re.compile(r"tokio::net::|tokio::io::|mio::|std::io::|std::net::|libc|__GI_|\[unknown\]")
OTHER = "runtime and other"


def classify(stack):
    frames = stack.split(";")
    kernel = frames[-1].endswith("_[k]")
    for frame in reversed(frames):
        if frame.endswith("_[k]") or TRANSPARENT.search(frame):
            continue
        for name, pattern in COMPILED:
            if pattern.search(frame):
                return name, kernel
    return OTHER, kernel


def profile(path):
    by = Counter()
    for line in open(path):
        stack, count = line.rstrip("\n").rsplit(" ", 1)
        layer, kernel = classify(stack)
        by[(layer, "kernel" if kernel else "user")] += int(count)
    return by


def main():
    columns = []
    for arg in sys.argv[1:]:
        name, rest = arg.split("=", 1)
        path, requests = rest.rsplit(":", 1)
        columns.append((name, profile(path), int(requests)))
    layers = [name for name, _ in LAYERS] + [OTHER]
    header = "| layer | " + " | ".join(f"{n}: user | {n}: kernel" for n, _, _ in columns) + " |"
    print(header)
    print("|---|" + "---|---|" * len(columns))
    totals = [[0.0, 0.0] for _ in columns]
    for layer in layers:
        cells = []
        for i, (_, by, requests) in enumerate(columns):
            # perf's cpu-clock samples are weighted in nanoseconds.
            user = by[(layer, "user")] / requests / 1000
            kernel = by[(layer, "kernel")] / requests / 1000
            totals[i][0] += user
            totals[i][1] += kernel
            cells += [f"{user:.1f}", f"{kernel:.1f}"]
        if any(float(c) > 0.05 for c in cells):
            print(f"| {layer} | " + " | ".join(cells) + " |")
    cells = [f"**{u:.1f}** | **{k:.1f}**" for u, k in totals]
    print("| **total µs of CPU per request** | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
