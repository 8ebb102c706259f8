#!/usr/bin/env bash
# moonwire benchmarks: Lua hook cost and WebSocket fan-out (docs/benchmarks.md).
#
#   bench/run.sh           full run (~3-4 minutes on 2 cores): builds Release,
#                          writes bench/results/*.json and regenerates the
#                          tables in docs/benchmarks.md
#   bench/run.sh --smoke   a few seconds (50 subscribers x 200 events, each
#                          policy once; results in a temporary directory);
#                          exit 0 only if nothing was lost
#
# Environment: BUILD_DIR (default <repo>/build-bench), WORKERS (server event
# loops, default 1: the server gets one core), RUNS (default 3),
# RESULTS_DIR (default <repo>/bench/results), SKIP_BUILD=1.
#
# The server runs pinned to core 0 and the load generator to core 1 when
# taskset exists. Only loopback traffic.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
SMOKE=0
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$a' (try --help)" >&2; exit 2 ;;
  esac
done

BUILD_DIR=${BUILD_DIR:-$ROOT/build-bench}
WORKERS=${WORKERS:-1}
RUNS=${RUNS:-3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mw-bench.XXXXXX")
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$SMOKE" = 1 ]; then
  RESULTS_DIR=${RESULTS_DIR:-$TMP/results}
  RUNS=1
else
  RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
fi
mkdir -p "$RESULTS_DIR"

PIN0=() PIN1=()
if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  PIN0=(taskset -c 0)
  PIN1=(taskset -c 1)
fi

# ---- build (Release) ----
SRC=$ROOT
if ! grep -Eq '^[[:space:]]*add_subdirectory\(bench\)' "$ROOT/CMakeLists.txt"; then
  # Not wired into the top CMakeLists.txt yet: build a copy that is.
  echo "run.sh: CMakeLists.txt has no add_subdirectory(bench); building a copy" >&2
  SRC=$TMP/src
  mkdir -p "$SRC"
  (cd "$ROOT" && tar --exclude=./.git --exclude='./build*' -cf - .) | tar -xf - -C "$SRC"
  echo 'add_subdirectory(bench)' >>"$SRC/CMakeLists.txt"
  BUILD_DIR=$TMP/build
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== build (Release) in $BUILD_DIR" >&2
  cmake -B "$BUILD_DIR" -S "$SRC" -DCMAKE_BUILD_TYPE=Release -DMW_BUILD_TESTS=OFF \
    >"$TMP/cmake.log" 2>&1 || { cat "$TMP/cmake.log" >&2; exit 1; }
  cmake --build "$BUILD_DIR" -j"$(nproc)" >"$TMP/build.log" 2>&1 ||
    { tail -50 "$TMP/build.log" >&2; exit 1; }
fi
MOONWIRE=$BUILD_DIR/core/moonwire
LOADGEN=$BUILD_DIR/bench/mw_loadgen
HOOKCOST=$BUILD_DIR/bench/mw_hook_cost
for b in "$MOONWIRE" "$LOADGEN" "$HOOKCOST"; do
  [ -x "$b" ] || { echo "run.sh: missing $b" >&2; exit 1; }
done

# ---- server ----
start_server() { # policy-file log-file
  "${PIN0[@]}" "$MOONWIRE" --listen 127.0.0.1:0 --workers "$WORKERS" \
    --policy "$1" 2>"$2" &
  SERVER_PID=$!
  PORT=
  for _ in $(seq 100); do
    PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$2" | head -1)
    [ -n "$PORT" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
  done
  echo "run.sh: the server did not start:" >&2
  cat "$2" >&2
  exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

POLICIES=(none deliver_passthrough deliver_tenant deliver_redact)
tenants_for() { [ "$1" = deliver_tenant ] && echo 2 || echo 0; }

if [ "$SMOKE" = 1 ]; then
  SIZES=("50 200 0")
else
  # subscribers events rate(0 = as fast as a window of 32 allows)
  SIZES=("1000 2000 0" "100 20000 0" "1000 500 100")
fi

RUNS_FILE=$RESULTS_DIR/fanout_runs.jsonl
: >"$RUNS_FILE"
FAILED=0
for pol in "${POLICIES[@]}"; do
  for size in "${SIZES[@]}"; do
    read -r nsubs nevents rate <<<"$size"
    runs=$RUNS
    [ "$rate" != 0 ] && runs=1 # the paced latency run takes a fixed time
    for run in $(seq "$runs"); do
      start_server "$ROOT/bench/policies/$pol.lua" "$TMP/server-$pol.log"
      out=$TMP/run.json
      rc=0
      "${PIN1[@]}" "$LOADGEN" --port "$PORT" --subs "$nsubs" --events "$nevents" \
        --rate "$rate" --window 32 --tenants "$(tenants_for "$pol")" \
        --topic "bench-$run" --server-pid "$SERVER_PID" --deadline 120 \
        --json "$out" --quiet || rc=$?
      if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "run.sh: $pol ${nsubs}x$nevents run $run: the server exited during the run" >&2
        rc=1
      fi
      stop_server
      if [ "$rc" != 0 ]; then
        echo "run.sh: $pol ${nsubs}x$nevents run $run failed (exit $rc); server log:" >&2
        tail -5 "$TMP/server-$pol.log" | sed 's/^/    /' >&2
      fi
      if [ ! -s "$out" ]; then
        echo "run.sh: $pol ${nsubs}x$nevents run $run: no result (exit $rc)" >&2
        FAILED=1
        continue
      fi
      [ "$rc" = 0 ] || FAILED=1
      "$PY" - "$out" "$pol" "$run" "$WORKERS" "$rc" >>"$RUNS_FILE" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
d.update(policy=sys.argv[2], run=int(sys.argv[3]), workers=int(sys.argv[4]),
         exit=int(sys.argv[5]))
print(json.dumps(d, sort_keys=True))
EOF
      "$PY" - "$out" "$pol" "$run" <<'EOF' >&2
import json, sys
d = json.load(open(sys.argv[1]))
l = d["latency_us"]
print(f"{sys.argv[2]:>20} {d['subscribers']:>5}x{d['events']:<6} run {sys.argv[3]}: "
      f"{d['deliveries_per_s']:>10.0f} deliveries/s, "
      f"{d['server_cpu_us_per_delivery']:.3f} server CPU-us/delivery, "
      f"p50 {l['p50']:.0f} us p99 {l['p99']:.0f} us, loss {d['loss']}, "
      f"loadgen {d['loadgen_cpu_s']:.2f} CPU-s{'' if d['ok'] else '  NOT OK: ' + d['error']}")
EOF
    done
  done
done

if [ "$SMOKE" = 1 ]; then
  "$HOOKCOST" --iters 2000 --reps 1 --quiet --json "$RESULTS_DIR/hook_cost.json"
  if [ "$FAILED" = 0 ]; then
    echo "run.sh --smoke: ok (no loss)" >&2
    exit 0
  fi
  echo "run.sh --smoke: FAILED (loss, errors or a deadline; see above)" >&2
  exit 1
fi

echo "== hook cost" >&2
"${PIN0[@]}" "$HOOKCOST" --iters 200000 --reps 5 --json "$RESULTS_DIR/hook_cost.json"

# ---- summary + docs/benchmarks.md tables ----
"$PY" - "$RESULTS_DIR" "$ROOT/docs/benchmarks.md" "$WORKERS" "$RUNS" <<'EOF'
import json, os, platform, re, statistics, subprocess, sys, time

results, doc, workers, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = [json.loads(l) for l in open(os.path.join(results, "fanout_runs.jsonl")) if l.strip()]
hooks = [json.loads(l) for l in open(os.path.join(results, "hook_cost.json")) if l.strip()]

model = "unknown"
for l in open("/proc/cpuinfo"):
    if l.startswith("model name"):
        model = l.split(":", 1)[1].strip()
        break
try:
    git = ["git", "-C", os.path.dirname(doc)]
    rev = subprocess.run(git + ["rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    if rev and subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                              capture_output=True, text=True).stdout.strip():
        rev += " + uncommitted changes"
except OSError:
    rev = ""
machine = {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
           "date": time.strftime("%Y-%m-%d"), "commit": rev, "workers": workers,
           "runs": runs}

groups = {}
for d in lines:
    key = (d["policy"], d["subscribers"], d["events"], d["rate"])
    groups.setdefault(key, []).append(d)

def med(v):
    return statistics.median(v) if v else 0

summary = []
for key, ds in groups.items():
    pol, subs, events, rate = key
    summary.append({
        "policy": pol, "subscribers": subs, "events": events, "rate": rate,
        "tenants": ds[0]["tenants"], "runs": len(ds),
        "deliveries_expected": ds[0]["deliveries_expected"],
        "deliveries_per_s": med([d["deliveries_per_s"] for d in ds]),
        "server_cpu_us_per_delivery": med([d["server_cpu_us_per_delivery"] for d in ds]),
        "p50_us": med([d["latency_us"]["p50"] for d in ds]),
        "p99_us": med([d["latency_us"]["p99"] for d in ds]),
        "p999_us": med([d["latency_us"]["p999"] for d in ds]),
        "loss_max": max(d["loss"] for d in ds),
        "all_ok": all(d["ok"] for d in ds),
        "server_rss_kb_end": med([d["server_rss_kb_end"] for d in ds]),
        "loadgen_cpu_share": med([d["loadgen_cpu_share"] for d in ds]),
        "server_kernel_share": med([d.get("server_sys_s", 0) / d["server_cpu_s"]
                                    for d in ds if d["server_cpu_s"] > 0]),
    })
order = ["none", "deliver_passthrough", "deliver_tenant", "deliver_redact"]
summary.sort(key=lambda s: (s["rate"] != 0, -s["subscribers"], order.index(s["policy"])
                            if s["policy"] in order else 99))
with open(os.path.join(results, "summary.json"), "w") as f:
    json.dump({"machine": machine, "fanout": summary,
               "hook_cost": {h["case"]: h["ns_per_call"] for h in hooks}}, f, indent=1,
              sort_keys=True)
    f.write("\n")

hook_desc = {
    "on_connect": "`on_connect` returning an identity (+ freeing it)",
    "on_subscribe": "`on_subscribe` returning `true`",
    "on_subscribe_match": "`on_subscribe` returning `moonwire.match(...)`",
    "on_publish": "`on_publish` returning the event unchanged",
    "on_deliver_unchanged": "`on_deliver` returning the event unchanged (per recipient)",
    "on_deliver_unchanged_new_event": "  same, a new event on every call (builds the event table)",
    "on_deliver_tenant_check": "`on_deliver` comparing tenants, returning the event",
    "on_deliver_copy": "`on_deliver` returning `moonwire.copy(event)` minus a field",
    "on_deliver_copy_hub": "  same + the hub's per-recipient `json_dumps` of the result",
    "on_deliver_copy_memo": "`on_deliver` returning one copy made once per event",
    "on_deliver_nil": "`on_deliver` returning `nil` (drop)",
    "no_on_deliver_hub": "no `on_deliver`: the hub's per-recipient checks",
    "no_on_deliver_call": "no `on_deliver`: `mw__policy_deliver` called anyway",
}
t = ["| hook call | ns per call |", "|---|---:|"]
for h in hooks:
    t.append(f"| {hook_desc.get(h['case'], h['case'])} | {h['ns_per_call']:,.0f} |")
hook_table = "\n".join(t)

def fmt_us(v):
    return f"{v/1000:,.1f} ms" if v >= 10000 else f"{v:,.0f} µs"

base = {(s["subscribers"], s["events"], s["rate"]): s for s in summary if s["policy"] == "none"}
t = ["| policy | subs × events | deliveries | deliveries/s | server CPU-µs per delivery | vs no hook | server CPU in kernel | p50 | p99 | loss |",
     "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
lt = ["| policy | subs × events @ rate | deliveries/s | server CPU-µs per delivery | server CPU in kernel | p50 | p99 | p99.9 | loss |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
for s in summary:
    b = base.get((s["subscribers"], s["events"], s["rate"]))
    rel = "—"
    if b and s["policy"] != "none" and b["server_cpu_us_per_delivery"] > 0:
        d = s["server_cpu_us_per_delivery"] - b["server_cpu_us_per_delivery"]
        rel = f"+{d:.2f} µs (×{s['server_cpu_us_per_delivery']/b['server_cpu_us_per_delivery']:.1f})"
    name = s["policy"] + (f" ({s['tenants']} tenants)" if s["tenants"] > 1 else "")
    flag = "" if s["all_ok"] else " ⚠"
    if s["rate"]:
        lt.append(f"| {name} | {s['subscribers']:,} × {s['events']:,} @ {s['rate']:g}/s | "
                  f"{s['deliveries_per_s']:,.0f} | {s['server_cpu_us_per_delivery']:.2f} | "
                  f"{s['server_kernel_share']:.0%} | {fmt_us(s['p50_us'])} | {fmt_us(s['p99_us'])} | "
                  f"{fmt_us(s['p999_us'])} | {s['loss_max']}{flag} |")
        continue
    t.append(f"| {name} | {s['subscribers']:,} × {s['events']:,} | {s['deliveries_expected']:,} | "
             f"{s['deliveries_per_s']:,.0f} | {s['server_cpu_us_per_delivery']:.2f} | {rel} | "
             f"{s['server_kernel_share']:.0%} | "
             f"{fmt_us(s['p50_us'])} | {fmt_us(s['p99_us'])} | {s['loss_max']}{flag} |")
fan_table = "\n".join(t)
lat_table = "\n".join(lt)
mach = (f"- CPU: {model}, {machine['nproc']} cores (`nproc`); Linux {machine['kernel']}\n"
        f"- server: `--workers {workers}`, pinned to core 0; load generator pinned to core 1\n"
        f"- {runs} runs per fan-out size (medians); measured {machine['date']}"
        + (f" at commit {rev}" if rev else ""))

text = open(doc).read()
for name, body in (("machine", mach), ("hook_cost", hook_table), ("fanout", fan_table),
                   ("latency", lat_table)):
    pat = re.compile(r"(<!-- BEGIN %s -->\n).*?(<!-- END %s -->)" % (name, name), re.S)
    if not pat.search(text):
        sys.exit(f"run.sh: {doc} has no BEGIN/END {name} markers")
    text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
open(doc, "w").write(text)
print(f"run.sh: wrote {results}/summary.json and the tables in {doc}", file=sys.stderr)
EOF

if [ "$FAILED" != 0 ]; then
  echo "run.sh: some runs lost events or failed (see above)" >&2
  exit 1
fi
