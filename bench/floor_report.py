#!/usr/bin/env python3
"""The floor table of docs/benchmarks.md from mw_floor's JSON lines
(bench/run.sh --floor): medians over the runs of each point, the p99 range
across runs. Usage: floor_report.py floor_runs.jsonl docs/benchmarks.md"""
import json
import re
import statistics
import sys


def point_key(r):
    return (r["mode"], r["busy_client"], r["n"], r["rate"])


def fmt_ms(us):
    if us >= 1e6:
        return f"{us / 1e6:.1f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms" if us >= 1e4 else f"{us / 1e3:.2f} ms"
    return f"{us:.0f} µs"


def row(runs):
    med = lambda k: statistics.median(r[k] for r in runs)
    first = runs[0]
    mode = first["mode"] + (", busy client" if first["busy_client"] else "")
    p99s = [r["p99_us"] for r in runs]
    return (f"| {mode} | {first['n']:,} × {first['rate']:,.0f} "
            f"| {med('deliveries_per_s'):,.0f} ({first['n'] * first['rate']:,.0f}) "
            f"| {fmt_ms(med('p50_us'))} | {fmt_ms(med('p99_us'))} "
            f"| {fmt_ms(med('p999_us'))} | {fmt_ms(med('max_us'))} "
            f"| {fmt_ms(min(p99s))} – {fmt_ms(max(p99s))} ({len(runs)}) "
            f"| {med('server_cpu_us_per_write'):.2f} | {med('frames_per_write'):.1f} "
            f"| {med('server_cpu_share'):.0%} | {med('client_cpu_share'):.0%} |")


def main():
    runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    points = {}
    for r in runs:
        points.setdefault(point_key(r), []).append(r)
    lines = [
        "| mode | subscribers × events/s | deliveries/s (offered) | p50 | p99 "
        "| p99.9 | max | p99 range (runs) | server CPU-µs per write "
        "| frames per write | server CPU busy | client CPU share |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [row(v) for v in points.values()]  # in the order first run
    doc = open(sys.argv[2]).read()
    new, n = re.subn(r"(<!-- BEGIN floor -->\n).*?(<!-- END floor -->)",
                     lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(2),
                     doc, flags=re.S)
    if n != 1:
        sys.exit("floor_report.py: no <!-- BEGIN floor --> ... <!-- END floor --> "
                 "in " + sys.argv[2])
    open(sys.argv[2], "w").write(new)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
