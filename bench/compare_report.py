"""bench/run.sh --compare: medians of bench/results/compare_runs.jsonl ->
compare_summary.json, the tables between the BEGIN/END compare_* markers of
docs/benchmarks.md (and the issue 7 targets), and the gnuplot data files
plot_*.dat that bench/plots.gp draws.

usage: compare_report.py RESULTS_DIR DOC RUNS LOADAVG_AT_START
Scenarios without runs keep their tables as they are.
"""
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

results, doc, runs, load0 = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rows = [json.loads(l) for l in open(os.path.join(results, "compare_runs.jsonl")) if l.strip()]
summary_path = os.path.join(results, "compare_summary.json")
NAMES = {"moonwire": "moonwire", "nchan": "nchan", "fastapi": "FastAPI"}
ORDER = ["moonwire", "nchan", "fastapi"]
NaN = float("nan")


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def pkg(name):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", name],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def fmt_us(v):
    if v is None:
        return "—"
    if v >= 10000:
        return f"{v / 1000:,.1f} ms"
    return f"{v:,.0f} µs"


def fmt_n(v, d=0):
    return "—" if v is None else f"{v:,.{d}f}"


def by(scenario):
    g = {}
    for d in rows:
        if d["scenario"] == scenario:
            g.setdefault((d["label"], d["target"]), []).append(d)
    return g


def tsort(keys):
    return sorted(keys, key=lambda k: (k[0] if isinstance(k[0], int) else str(k[0]),
                                       ORDER.index(k[1]) if k[1] in ORDER else 9))


summary = {}
tables = {}
plots = {}

# ---- a: fan-out ----
ga = by("a")
if ga:
    out = []
    for (label, target), ds in ga.items():
        m = lambda f: med([f(d) for d in ds])
        out.append({
            "subscribers": int(label), "target": target, "runs": len(ds),
            "events": ds[0]["events"],
            "deliveries_per_s": m(lambda d: d["deliveries_per_s"]),
            "server_cpu_us_per_delivery": m(lambda d: d["server_cpu_us_per_delivery"]),
            "server_busy": m(lambda d: d["server_cpu_s"] / d["duration_s"] if d["duration_s"] else 0),
            "p50_us": m(lambda d: d["latency_us"]["p50"]),
            "p99_us": m(lambda d: d["latency_us"]["p99"]),
            "loadgen_cpu_share": m(lambda d: d["loadgen_cpu_share"]),
            "loadgen_busy": m(lambda d: d.get("loadgen_busy", 0)),
            "loss_max": max(d["loss"] for d in ds),
            "all_ok": all(d["ok"] for d in ds),
            "log_errors": sum(d["server_log_errors"] for d in ds),
        })
    out.sort(key=lambda s: (s["subscribers"], ORDER.index(s["target"])))
    summary["a_fanout"] = out
    t = ["| subscribers | server | events | deliveries/s | server CPU-µs per delivery | "
         "deliveries per server CPU-second | moonwire per core: × | p50 | p99 | "
         "loadgen CPU share (core 1 busy) | loss | log errors |",
         "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    mw = {s["subscribers"]: s for s in out if s["target"] == "moonwire"}
    for s in out:
        per_core = 1e6 / s["server_cpu_us_per_delivery"] if s["server_cpu_us_per_delivery"] else None
        base = mw.get(s["subscribers"])
        adv = "—"
        if base and s["target"] != "moonwire" and base["server_cpu_us_per_delivery"]:
            adv = f"{s['server_cpu_us_per_delivery'] / base['server_cpu_us_per_delivery']:.1f}"
        t.append(f"| {s['subscribers']:,} | {NAMES[s['target']]} | {s['events']:,} | "
                 f"{fmt_n(s['deliveries_per_s'])} | {s['server_cpu_us_per_delivery']:.2f} | "
                 f"{fmt_n(per_core)} | {adv} | {fmt_us(s['p50_us'])} | {fmt_us(s['p99_us'])} | "
                 f"{s['loadgen_cpu_share']:.0%} ({s['loadgen_busy']:.0%}) | "
                 f"{s['loss_max']}{'' if s['all_ok'] else ' ⚠'} | {s['log_errors']} |")
    tables["compare_fanout"] = "\n".join(t)
    sizes = sorted({s["subscribers"] for s in out})
    lines = ["subscribers moonwire nchan FastAPI"]
    for n in sizes:
        v = {s["target"]: s["deliveries_per_s"] for s in out if s["subscribers"] == n}
        lines.append(f"\"{n:,}\" " + " ".join(str(v.get(x, NaN)) for x in ORDER))
    plots["plot_fanout.dat"] = "\n".join(lines) + "\n"


def step_medians(ds, rate_key="rate"):
    """{rate: [step dicts of the runs that reached that rate]}"""
    g = {}
    for d in ds:
        for s in d.get("steps", []):
            g.setdefault(s[rate_key], []).append(s)
    return g


# ---- b: many topics ----
gb = by("b")
if gb:
    out = []
    for (label, target), ds in gb.items():
        for rate, ss in sorted(step_medians(ds).items()):
            m = lambda f: med([f(s) for s in ss])
            out.append({
                "target": target, "subscribers": ds[0]["subscribers"],
                "connections": ds[0]["connections"], "rate": rate, "runs": len(ss),
                "runs_total": len(ds),
                "events_per_s": m(lambda s: s["events_per_s"]),
                "deliveries_per_s": m(lambda s: s["deliveries_per_s"]),
                "core_share_per_100k": m(lambda s: s["server_core_share_per_100k_per_s"]),
                "server_cpu_us_per_delivery": m(lambda s: s["server_cpu_us_per_delivery"]),
                "server_busy": m(lambda s: s["server_busy"]),
                "p50_us": m(lambda s: s["latency_us"]["p50"]),
                "p99_us": m(lambda s: s["latency_us"]["p99"]),
                "loadgen_cpu_share": m(lambda s: s["loadgen_cpu_share"]),
                "loadgen_busy": m(lambda s: s["loadgen_busy"]),
                "kept_up": sum(1 for s in ss if s["drained"]),
                "loss_max": max(d["loss"] for d in ds),
                "all_ok": all(d["ok"] for d in ds),
            })
    out.sort(key=lambda s: (ORDER.index(s["target"]), s["rate"]))
    summary["b_topics"] = out
    t = ["| server (subscribers, connections) | offered events/s | events/s sent | deliveries/s | "
         "server core share per 100k deliveries/s | server CPU-µs per delivery | p50 | p99 | "
         "loadgen CPU share (core 1 busy) | kept up (runs) | loss |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in out:
        t.append(f"| {NAMES[s['target']]} ({s['subscribers']:,}, {s['connections']:,}) | {s['rate']:,.0f} | "
                 f"{fmt_n(s['events_per_s'])} | {fmt_n(s['deliveries_per_s'])} | "
                 f"{s['core_share_per_100k']:.0%} | {s['server_cpu_us_per_delivery']:.1f} | "
                 f"{fmt_us(s['p50_us'])} | {fmt_us(s['p99_us'])} | "
                 f"{s['loadgen_cpu_share']:.0%} ({s['loadgen_busy']:.0%}) | "
                 f"{s['kept_up']}/{s['runs_total']} | {s['loss_max']}{'' if s['all_ok'] else ' ⚠'} |")
    tables["compare_topics"] = "\n".join(t)
    blocks = []
    for target in ORDER:
        b = [f"# {target}: offered_events_per_s deliveries_per_s p99_ms core_share_per_100k"]
        for s in out:
            if s["target"] == target:
                b.append(f"{s['rate']} {s['deliveries_per_s']} {s['p99_us'] / 1000} "
                         f"{s['core_share_per_100k']}")
        if len(b) == 1:
            b.append("NaN NaN NaN NaN")
        blocks.append("\n".join(b))
    plots["plot_topics.dat"] = "\n\n\n".join(blocks) + "\n"

# ---- c: paced latency ----
gc = by("c")
if gc:
    out = []
    for (label, target), ds in gc.items():
        m = lambda f: med([f(d) for d in ds])
        out.append({
            "target": target, "subscribers": int(label), "runs": len(ds),
            "rate": ds[0]["rate"], "events": ds[0]["events"],
            "events_per_s": m(lambda d: d["events_per_s"]),
            "deliveries_per_s": m(lambda d: d["deliveries_per_s"]),
            "server_busy": m(lambda d: d["server_cpu_s"] / d["duration_s"] if d["duration_s"] else 0),
            "server_cpu_us_per_delivery": m(lambda d: d["server_cpu_us_per_delivery"]),
            "p50_us": m(lambda d: d["latency_us"]["p50"]),
            "p99_us": m(lambda d: d["latency_us"]["p99"]),
            "p999_us": m(lambda d: d["latency_us"]["p999"]),
            "loadgen_cpu_share": m(lambda d: d["loadgen_cpu_share"]),
            "loadgen_busy": m(lambda d: d.get("loadgen_busy", 0)),
            "loss_max": max(d["loss"] for d in ds),
            "all_ok": all(d["ok"] for d in ds),
        })
    out.sort(key=lambda s: ORDER.index(s["target"]))
    summary["c_latency"] = out
    t = ["| server | subscribers × events @ rate | deliveries/s (offered) | server CPU busy | "
         "p50 | p99 | p99.9 | loadgen CPU share (core 1 busy) | loss |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in out:
        offered = s["rate"] * s["subscribers"]
        t.append(f"| {NAMES[s['target']]} | {s['subscribers']:,} × {s['events']:,} @ {s['rate']:,.0f}/s | "
                 f"{fmt_n(s['deliveries_per_s'])} ({offered:,.0f}) | {s['server_busy']:.0%} | "
                 f"{fmt_us(s['p50_us'])} | {fmt_us(s['p99_us'])} | {fmt_us(s['p999_us'])} | "
                 f"{s['loadgen_cpu_share']:.0%} ({s['loadgen_busy']:.0%}) | "
                 f"{s['loss_max']}{'' if s['all_ok'] else ' ⚠'} |")
    tables["compare_latency"] = "\n".join(t)
    lines = ["server p50 p99 p99.9"]
    for s in out:
        lines.append(f"{NAMES[s['target']]} {s['p50_us'] / 1000} {s['p99_us'] / 1000} "
                     f"{s['p999_us'] / 1000}")
    plots["plot_latency.dat"] = "\n".join(lines) + "\n"

# ---- d: idle memory ----
gd = by("d")
if gd:
    out = []
    for (label, target), ds in gd.items():
        n, tr = label.split("-")
        m = lambda f: med([f(d) for d in ds])
        out.append({
            "target": target, "transport": tr, "subscribers": int(n), "runs": len(ds),
            "bytes_per_connection": m(lambda d: d["bytes_per_connection"]),
            "rss_kb_start": m(lambda d: d["server_rss_kb_start"]),
            "rss_kb_settled": m(lambda d: d["server_rss_kb_settled"]),
            "connect_s": m(lambda d: d["connect_s"]),
            "loadgen_cpu_share": m(lambda d: d["loadgen_cpu_share"]),
            "all_ok": all(d["ok"] for d in ds),
        })
    out.sort(key=lambda s: (ORDER.index(s["target"]), s["transport"] != "ws", s["subscribers"]))
    summary["d_idle_memory"] = out
    sizes = sorted({s["subscribers"] for s in out})
    series = []
    for s in out:
        if (s["target"], s["transport"]) not in series:
            series.append((s["target"], s["transport"]))
    t = ["| server, transport | " + " | ".join(f"{n:,} idle: bytes per connection" for n in sizes)
         + f" | RSS before → after ({sizes[-1]:,}) | connect time ({sizes[-1]:,}) | "
         f"loadgen CPU share ({sizes[-1]:,}) |",
         "|---|" + "---:|" * (len(sizes) + 3)]
    for target, tr in series:
        cells = []
        last = None
        for n in sizes:
            s = next((x for x in out if (x["target"], x["transport"], x["subscribers"]) == (target, tr, n)), None)
            cells.append("—" if s is None else f"{s['bytes_per_connection']:,.0f}"
                         + ("" if s["all_ok"] else " ⚠"))
            last = s or last
        tname = "WebSocket" if tr == "ws" else "SSE (EventSource)"
        t.append(f"| {NAMES[target]}, {tname} | " + " | ".join(cells) +
                 (f" | {last['rss_kb_start'] / 1024:,.1f} → {last['rss_kb_settled'] / 1024:,.1f} MB | "
                  f"{last['connect_s']:.1f} s | {last['loadgen_cpu_share']:.0%} |" if last else " | | | |"))
    tables["compare_memory"] = "\n".join(t)
    lines = ["subscribers " + " ".join(f"{NAMES[a]}-{'WS' if b == 'ws' else 'SSE'}" for a, b in series)]
    for n in sizes:
        vals = []
        for target, tr in series:
            s = next((x for x in out if (x["target"], x["transport"], x["subscribers"]) == (target, tr, n)), None)
            vals.append(str(s["bytes_per_connection"] / 1024) if s else "NaN")
        lines.append(f"{n} " + " ".join(vals))
    plots["plot_memory.dat"] = "\n".join(lines) + "\n"
    plots["plot_memory_series.txt"] = f"{len(series)}\n"

# ---- e: churn ----
ge = by("e")
if ge:
    out = []
    rss = {}
    for (label, target), ds in ge.items():
        rss[target] = {
            "baseline_kb": med([d["server_rss_kb_baseline"] for d in ds]),
            "after_kb": med([d["server_rss_kb_after"] for d in ds]),
            "after_minus_baseline_kb": med([d["server_rss_after_minus_baseline_kb"] for d in ds]),
            "start_kb": med([d["server_rss_kb_start"] for d in ds]),
            "connect_s": med([d["connect_s"] for d in ds]),
            "all_ok": all(d["ok"] for d in ds),
            "runs": len(ds), "subscribers": ds[0]["subscribers"],
        }
        for rate, ss in sorted(step_medians(ds).items()):
            m = lambda f: med([f(s) for s in ss])
            out.append({
                "target": target, "rate": rate, "runs": len(ss), "runs_total": len(ds),
                "cycles_per_s": m(lambda s: s["cycles_per_s"]),
                "hs_p50_us": m(lambda s: s["handshake_us"]["p50"]),
                "hs_p99_us": m(lambda s: s["handshake_us"]["p99"]),
                "cycle_p99_us": m(lambda s: s["cycle_us"]["p99"]),
                "server_cpu_us_per_cycle": m(lambda s: s["server_cpu_us_per_cycle"]),
                "server_busy": m(lambda s: s["server_busy"]),
                "loadgen_cpu_share": m(lambda s: s["loadgen_cpu_share"]),
                "loadgen_busy": m(lambda s: s["loadgen_busy"]),
                "failed": sum(s["failed"] for s in ss),
                "kept_up": sum(1 for s in ss if s["drained"] and not s["failed"]),
            })
    out.sort(key=lambda s: (ORDER.index(s["target"]), s["rate"]))
    summary["e_churn"] = {"steps": out, "rss": rss}
    t = ["| server | offered cycles/s | cycles/s done | handshake p50 | handshake p99 | "
         "cycle p99 (→ event) | server CPU-µs per cycle | server CPU busy | "
         "loadgen CPU share (core 1 busy) | kept up (runs) | failed |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in out:
        t.append(f"| {NAMES[s['target']]} | {s['rate']:,.0f} | {fmt_n(s['cycles_per_s'])} | "
                 f"{fmt_us(s['hs_p50_us'])} | {fmt_us(s['hs_p99_us'])} | {fmt_us(s['cycle_p99_us'])} | "
                 f"{fmt_n(s['server_cpu_us_per_cycle'])} | {s['server_busy']:.0%} | "
                 f"{s['loadgen_cpu_share']:.0%} ({s['loadgen_busy']:.0%}) | "
                 f"{s['kept_up']}/{s['runs_total']} | {s['failed']} |")
    t += ["", "| server | idle connections | RSS before connecting | baseline (idle connected) | "
          "after churn (settled) | after − baseline |", "|---|---:|---:|---:|---:|---:|"]
    for target in ORDER:
        if target in rss:
            r = rss[target]
            t.append(f"| {NAMES[target]} | {r['subscribers']:,} | {r['start_kb'] / 1024:,.1f} MB | "
                     f"{r['baseline_kb'] / 1024:,.1f} MB | {r['after_kb'] / 1024:,.1f} MB | "
                     f"{r['after_minus_baseline_kb'] / 1024:+,.1f} MB"
                     f"{'' if r['all_ok'] else ' ⚠'} |")
    tables["compare_churn"] = "\n".join(t)
    blocks = []
    for target in ORDER:
        b = [f"# {target}: offered done hs_p99_ms"]
        for s in out:
            if s["target"] == target:
                b.append(f"{s['rate']} {s['cycles_per_s']} {s['hs_p99_us'] / 1000}")
        if len(b) == 1:
            b.append("NaN NaN NaN")
        blocks.append("\n".join(b))
    plots["plot_churn.dat"] = "\n\n\n".join(blocks) + "\n"

# ---- o: overload ----
oo = by("o")
if oo:
    out = []
    for (label, target), ds in oo.items():
        m = lambda f: med([f(d) for d in ds])
        out.append({
            "target": target, "label": label, "runs": len(ds),
            "events": ds[0]["events"], "subscribers": ds[0]["subscribers"],
            "accepted": m(lambda d: d["published_ok"]),
            "refused": m(lambda d: d.get("publish_refused", 0)),
            "deliveries_per_s": m(lambda d: d["deliveries_per_s"]),
            "p99_us": m(lambda d: d["latency_us"]["p99"]),
            "accepted_p99_us": m(lambda d: d.get("accepted_latency_us", {}).get("p99"))
            if target == "moonwire" else None,
            "hwm_kb": m(lambda d: d["server_hwm_kb"]),
            "loss_max": max(d["loss"] for d in ds),
            "log_errors": max(d["server_log_errors"] for d in ds),
            "all_ok": all(d["ok"] for d in ds),
        })
    out.sort(key=lambda s: (ORDER.index(s["target"]), s["label"] != "push-back"))
    summary["o_overload"] = out
    t = ["| server | events offered (256 in flight) | accepted | refused (503 + Retry-After) | "
         "p99 send → deliver | p99 accepted → deliver | server peak RSS | loss of accepted | "
         "error lines in logs |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in out:
        name = NAMES[s["target"]] + ("" if s["target"] != "moonwire" else
                                     (" (push-back)" if s["label"] == "push-back" else " (push-back off)"))
        t.append(f"| {name} | {s['events']:,} | {fmt_n(s['accepted'])} | {fmt_n(s['refused'])} | "
                 f"{fmt_us(s['p99_us'])} | {fmt_us(s['accepted_p99_us'])} | "
                 f"{s['hwm_kb'] / 1024:,.1f} MB | {s['loss_max']}{'' if s['all_ok'] else ' ⚠'} | "
                 f"{s['log_errors']} |")
    tables["compare_overload"] = "\n".join(t)

# ---- w: --workers ----
gg = by("w")
if gg:
    out = []
    for (label, target), ds in gg.items():
        m = lambda f: med([f(d) for d in ds])
        out.append({
            "workers": int(label[1:]), "runs": len(ds),
            "deliveries_per_s": m(lambda d: d["deliveries_per_s"]),
            "deliveries_per_s_min": min(d["deliveries_per_s"] for d in ds),
            "deliveries_per_s_max": max(d["deliveries_per_s"] for d in ds),
            "server_cpu_us_per_delivery": m(lambda d: d["server_cpu_us_per_delivery"]),
            "loadgen_cpu_share": m(lambda d: d["loadgen_cpu_share"]),
            "loss_max": max(d["loss"] for d in ds),
            "all_ok": all(d["ok"] for d in ds),
            "subscribers": ds[0]["subscribers"], "events": ds[0]["events"],
        })
    out.sort(key=lambda s: s["workers"])
    summary["w_workers"] = out
    t = ["| workers | subs × events | deliveries/s (min–max) | server CPU-µs per delivery | "
         "loadgen CPU share | loss |", "|---:|---|---:|---:|---:|---:|"]
    for s in out:
        t.append(f"| {s['workers']} | {s['subscribers']:,} × {s['events']:,} | "
                 f"{s['deliveries_per_s'] / 1e6:.2f} M ({s['deliveries_per_s_min'] / 1e6:.2f}–"
                 f"{s['deliveries_per_s_max'] / 1e6:.2f}) | {s['server_cpu_us_per_delivery']:.2f} | "
                 f"{s['loadgen_cpu_share']:.0%} | {s['loss_max']}{'' if s['all_ok'] else ' ⚠'} |")
    tables["compare_workers"] = "\n".join(t)

# Scenarios not run this time keep their earlier summary.
try:
    old = json.load(open(summary_path))
except (OSError, ValueError):
    old = {}
for k, v in old.items():
    if k not in summary and k not in ("machine",):
        summary[k] = v

# ---- machine ----
model = "unknown"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        model = l.split(":", 1)[1].strip()
        break
try:
    git = ["git", "-C", os.path.dirname(os.path.abspath(doc))]
    rev = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    if rev and subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True).stdout.strip():
        rev += " + uncommitted changes"
except OSError:
    rev = ""
machine = {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
           "date": time.strftime("%Y-%m-%d"), "commit": rev, "runs": runs,
           "nginx": pkg("nginx-light"), "nchan": pkg("libnginx-mod-nchan"),
           "fastapi": pkg("python3-fastapi"), "uvicorn": pkg("python3-uvicorn"),
           "python": pkg("python3"), "loadavg_at_start": load0}
summary["machine"] = machine
tables["compare_machine"] = (
    f"- CPU: {model}, {machine['nproc']} cores; Linux {machine['kernel']}; "
    f"nginx-light {machine['nginx']}, libnginx-mod-nchan {machine['nchan']}; "
    f"python3-fastapi {machine['fastapi']}, python3-uvicorn {machine['uvicorn']} "
    f"(python3 {machine['python']}, asyncio loop, h11, websockets)\n"
    f"- servers pinned to core 0 (moonwire `--workers 1`, nginx 1 worker, uvicorn 1 process), "
    f"load generator to core 1 (scenario w: nothing pinned)\n"
    f"- median of {runs} runs (fresh servers each); measured {machine['date']}"
    + (f" at commit {rev}" if rev else "") + f"; load average at the start: {load0}")

# ---- issue 7 targets ----


def line(name, ok, text):
    return f"- **{name}** — {'met' if ok else 'not met'}: {text}" if ok is not None else f"- **{name}** — no data: {text}"


tl = []
a = summary.get("a_fanout", [])
if a:
    parts, ok = [], True
    for n in sorted({s["subscribers"] for s in a}):
        cpu = {s["target"]: s["server_cpu_us_per_delivery"] for s in a if s["subscribers"] == n}
        if "moonwire" not in cpu or not cpu["moonwire"]:
            continue
        for peer, goal in (("nchan", 2), ("fastapi", 10)):
            if peer in cpu:
                x = cpu[peer] / cpu["moonwire"]
                ok = ok and x >= goal
                parts.append(f"{n:,} subscribers: {x:.1f}× {NAMES[peer]} per core (goal ≥{goal}×, "
                             f"{(x / goal - 1):+.0%} against the goal)")
    tl.append(line("a: fan-out ≥2× nchan and ≥10× FastAPI per core", ok if parts else None,
                   "; ".join(parts) or "run `bench/run.sh --compare`"))
else:
    tl.append(line("a: fan-out ≥2× nchan and ≥10× FastAPI per core", None, "run `bench/run.sh --compare`"))
c = {s["target"]: s for s in summary.get("c_latency", [])}
if "moonwire" in c:
    p99 = c["moonwire"]["p99_us"]
    np99 = c.get("nchan", {}).get("p99_us")
    ok = p99 <= 1000 and (np99 is None or p99 <= np99)
    txt = f"moonwire p99 {fmt_us(p99)} (goal ≤1 ms: {p99 / 1000:.1f}× the goal)"
    if np99 is not None:
        txt += f"; nchan p99 {fmt_us(np99)} ({'≤' if p99 <= np99 else '>'} nchan's)"
    # The floor of any server on this machine (bench/run.sh --floor), if run.
    floor_path = os.path.join(results, "floor_runs.jsonl")
    if os.path.exists(floor_path):
        fl = [json.loads(x) for x in open(floor_path) if x.strip()]
        fl = [r["p99_us"] for r in fl if r["mode"] == "coalesce" and not r["busy_client"]
              and r["n"] == 1000 and r["rate"] == 1000]
        if fl:
            txt += (f"; the floor of any server here (`bench/run.sh --floor`): p99 "
                    f"{fmt_us(statistics.median(fl))}")
    tl.append(line("c: p99 ≤ nchan's and ≤1 ms at 1,000 subscribers × 1,000 msg/s", ok, txt))
else:
    tl.append(line("c: p99 ≤ nchan's and ≤1 ms", None, "run `bench/run.sh --compare`"))
d = [s for s in summary.get("d_idle_memory", []) if s["target"] == "moonwire" and s["transport"] == "ws"]
if d:
    worst = max(s["bytes_per_connection"] for s in d)
    tl.append(line("d: ≤2 KiB per idle WebSocket connection", worst <= 2048,
                   ", ".join(f"{s['subscribers']:,}: {s['bytes_per_connection']:,.0f} B"
                             for s in sorted(d, key=lambda s: s["subscribers"]))
                   + f" (worst {worst / 2048:.1f}× the 2,048 B goal)"))
else:
    tl.append(line("d: ≤2 KiB per idle WebSocket connection", None, "run `bench/run.sh --compare`"))
try:
    fan = json.load(open(os.path.join(results, "summary.json")))["fanout"]
    none = {(s["subscribers"], s["events"]): s for s in fan if s["policy"] == "none" and not s["rate"]}
    parts, ok = [], True
    for s in fan:
        if s["policy"] == "deliver_passthrough" and not s["rate"] and (s["subscribers"], s["events"]) in none:
            b = none[(s["subscribers"], s["events"])]["server_cpu_us_per_delivery"]
            x = s["server_cpu_us_per_delivery"] / b - 1
            ok = ok and x <= 0.15
            parts.append(f"{s['subscribers']:,} × {s['events']:,}: {x:+.0%} CPU per delivery with a "
                         f"pass-through `on_deliver` (goal ≤15%)")
    tl.append(line("f: `on_deliver` overhead ≤15%", ok if parts else None,
                   "; ".join(parts) + " (from the fan-out table above)" if parts else "run `bench/run.sh`"))
except (OSError, ValueError, KeyError):
    tl.append(line("f: `on_deliver` overhead ≤15%", None, "run `bench/run.sh`"))
o = {(s["target"], s["label"]): s for s in summary.get("o_overload", [])}
if ("moonwire", "push-back") in o:
    s = o[("moonwire", "push-back")]
    p = s["accepted_p99_us"]
    ok = s["loss_max"] == 0 and s["all_ok"] and p is not None and p <= 250000
    tl.append(line("overload: push back, nothing accepted lost, p99 of accepted ≤250 ms", ok,
                   f"{fmt_n(s['refused'])} of {s['events']:,} publishes refused with 503 + Retry-After, "
                   f"loss of accepted {s['loss_max']}, p99 accepted → delivered {fmt_us(p)}, "
                   f"peak RSS {s['hwm_kb'] / 1024:,.1f} MB"))
else:
    tl.append(line("overload: push back, p99 of accepted ≤250 ms", None, "run `bench/run.sh --compare`"))
g = {s["workers"]: s for s in summary.get("w_workers", [])}
if 1 in g and 2 in g:
    x = g[2]["deliveries_per_s"] / g[1]["deliveries_per_s"]
    tl.append(line("`--workers 2` ≥1.7× `--workers 1`", x >= 1.7,
                   f"{x:.2f}× ({g[1]['deliveries_per_s'] / 1e6:.2f} M → {g[2]['deliveries_per_s'] / 1e6:.2f} M "
                   f"deliveries/s; 2 cores shared with the load generator)"))
else:
    tl.append(line("`--workers 2` ≥1.7× `--workers 1`", None, "run `bench/run.sh --compare`"))
tables["targets"] = "\n".join(tl)

with open(summary_path, "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
    f.write("\n")
for name, body in plots.items():
    with open(os.path.join(results, name), "w") as f:
        f.write(body)

text = open(doc).read()
for name, body in tables.items():
    pat = re.compile(r"(<!-- BEGIN %s -->\n).*?(<!-- END %s -->)" % (name, name), re.S)
    if not pat.search(text):
        sys.exit(f"compare_report.py: {doc} has no BEGIN/END {name} markers")
    text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
open(doc, "w").write(text)
print(f"run.sh: wrote {summary_path}, the plot data and the compare tables in {doc}", file=sys.stderr)
