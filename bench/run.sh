#!/usr/bin/env bash
# moonwire benchmarks: Lua hook cost and WebSocket fan-out (docs/benchmarks.md).
#
#   bench/run.sh           full run (~3-4 minutes on 2 cores): builds Release,
#                          writes bench/results/*.json and regenerates the
#                          tables in docs/benchmarks.md
#   bench/run.sh --smoke   a few seconds (50 subscribers x 200 events, each
#                          policy once; results in a temporary directory);
#                          exit 0 only if nothing was lost
#   bench/run.sh --peers   moonwire vs nchan (nginx-light + libnginx-mod-nchan,
#                          installed through scripts/install-deps.sh when
#                          missing; ~3 minutes): one node (memory, Redis)
#                          and two nodes on one Redis, 1,000 subscribers x
#                          2,000 events, RUNS runs each (medians); writes
#                          bench/results/peers_*.json and the peer tables in
#                          docs/benchmarks.md (not the other tables)
#   bench/run.sh --compare moonwire vs nchan vs FastAPI (bench/peers/
#                          fastapi_server.py), issue 7's scenarios: a fan-out
#                          1k/10k WS, b many topics, c paced latency, d idle
#                          memory (WS, SSE), e connection churn, g --workers
#                          1 vs 2 (moonwire); RUNS runs each (medians), each
#                          scenario under a minute per run (~25 minutes in
#                          all); writes bench/results/compare_*.json, the
#                          tables and the issue 7 targets in
#                          docs/benchmarks.md and the plots in docs/img/
#   bench/run.sh --floor   the latency floor of fan-out on this machine
#                          (bench/floor.c: an "ideal server" thread writing
#                          paced frames to loopback sockets, a client
#                          thread reading them; ~4 minutes with RUNS=3):
#                          writes bench/results/floor_runs.jsonl and the
#                          floor table in docs/benchmarks.md
#   bench/run.sh --plots   only redraws docs/img/*.png from bench/results
#   bench/run.sh --all     the default run, then --peers, --compare, --floor
#
# Environment: BUILD_DIR (default <repo>/build-bench), WORKERS (server event
# loops, default 1: the server gets one core), RUNS (default 3),
# RESULTS_DIR (default <repo>/bench/results), SKIP_BUILD=1,
# ONLY=a,c,... (--compare: these scenarios only; the tables of the others
# stay as they are).
#
# The server runs pinned to core 0 and the load generator to core 1 when
# taskset exists. Only loopback traffic.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
SMOKE=0
PEERS=0
COMPARE=0
PLOTS=0
FLOOR_RUN=0
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    --peers) PEERS=1 ;;
    --compare) COMPARE=1 ;;
    --plots) PLOTS=1 ;;
    --floor) FLOOR_RUN=1 ;;
    --all)
      # one build, then the four runs in turn
      "$0" && SKIP_BUILD=1 "$0" --peers && SKIP_BUILD=1 "$0" --compare &&
        SKIP_BUILD=1 "$0" --floor
      exit $? ;;
    -h|--help) sed -n '2,44p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument '$a' (try --help)" >&2; exit 2 ;;
  esac
done
if [ $((SMOKE + PEERS + COMPARE + PLOTS + FLOOR_RUN)) -gt 1 ]; then
  echo "run.sh: --smoke, --peers, --compare, --floor and --plots do not go together" >&2
  exit 2
fi
if [ "$PLOTS" = 1 ]; then
  command -v gnuplot >/dev/null || { echo "run.sh --plots: no gnuplot (gnuplot-nox)" >&2; exit 1; }
  mkdir -p "$ROOT/docs/img"
  gnuplot -e "dir='${RESULTS_DIR:-$ROOT/bench/results}'; img='$ROOT/docs/img'" "$ROOT/bench/plots.gp"
  echo "run.sh: drew docs/img/*.png" >&2
  exit 0
fi

BUILD_DIR=${BUILD_DIR:-$ROOT/build-bench}
WORKERS=${WORKERS:-1}
RUNS=${RUNS:-3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mw-bench.XXXXXX")
SERVER_PID=
PEER_PIDS=() # --peers: every moonwire/nginx/redis-server this script started
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  for p in "${PEER_PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --peers and --compare need nginx with the nchan module (Debian packages),
# Redis, FastAPI + uvicorn (Debian's, for /usr/bin/python3) and gnuplot.
if [ "$PEERS" = 1 ] || [ "$COMPARE" = 1 ]; then
  missing=
  for p in nginx-light libnginx-mod-nchan redis-server python3-fastapi python3-uvicorn \
           gnuplot-nox; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "run.sh: missing:$missing; running scripts/install-deps.sh" >&2
    "$ROOT/scripts/install-deps.sh"
  fi
fi

if [ "$SMOKE" = 1 ]; then
  RESULTS_DIR=${RESULTS_DIR:-$TMP/results}
  RUNS=1
else
  RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
fi
mkdir -p "$RESULTS_DIR"

# 10,000-18,000 connections: the load generator and each server hold one
# descriptor per connection. Raise the soft limit to the hard one (and the
# hard one, when allowed); the servers inherit it.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[ "$NOFILE" = unlimited ] && NOFILE=65536

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
if [ "$FLOOR_RUN" = 1 ]; then
  . "$ROOT/bench/floor.sh"
  exit 0
fi

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

# ---- --peers / --compare: servers other than the policy runs' ----
if [ "$PEERS" = 1 ] || [ "$COMPARE" = 1 ]; then
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  NCHAN_SO=$(dpkg -L libnginx-mod-nchan 2>/dev/null | grep '/ngx_nchan_module\.so$' | head -1)
  NCHAN_SO=${NCHAN_SO:-/usr/lib/nginx/modules/ngx_nchan_module.so}
  REDIS_SERVER=$(command -v redis-server || echo /usr/bin/redis-server)
  for b in "$NGINX" "$NCHAN_SO" "$REDIS_SERVER"; do
    [ -e "$b" ] || { echo "run.sh --peers: missing $b" >&2; exit 1; }
  done
  # The worker runs as whoever runs this (nginx ignores "user" unless root).
  NGX_USER=
  [ "$(id -u)" = 0 ] && NGX_USER="user $(id -un) $(id -gn);"

  free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
  }
  port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
  children() { pgrep -P "$1" 2>/dev/null | paste -sd, - || true; }

  # start_redis DIR -> REDIS_PID REDIS_PORT (a fresh, empty Redis per run)
  start_redis() {
    REDIS_PORT=$(free_port)
    "${PIN0[@]}" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
      --appendonly no --dir "$1" --logfile "$1/redis.log" &
    REDIS_PID=$!
    PEER_PIDS+=("$REDIS_PID")
    for _ in $(seq 100); do
      port_open "$REDIS_PORT" && return 0
      sleep 0.05
    done
    echo "run.sh: redis-server did not start" >&2; cat "$1/redis.log" >&2; exit 1
  }

  # start_mw LOG [moonwire args...] -> MW_PID MW_PORT
  start_mw() {
    local log=$1; shift
    "${PIN0[@]}" "$MOONWIRE" --listen 127.0.0.1:0 --workers "${MW_WORKERS:-1}" \
      --policy "$ROOT/bench/policies/none.lua" "$@" 2>"$log" &
    MW_PID=$!
    PEER_PIDS+=("$MW_PID")
    MW_PORT=
    for _ in $(seq 100); do
      MW_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
      [ -n "$MW_PORT" ] && return 0
      kill -0 "$MW_PID" 2>/dev/null || break
      sleep 0.05
    done
    echo "run.sh: moonwire did not start:" >&2; cat "$log" >&2; exit 1
  }

  # start_nchan DIR CONF [REDIS_URL] -> NGX_PID (master), NGX_PIDS (master,
  # worker), NGX_PORT. nginx in the foreground, its prefix and pid in DIR.
  start_nchan() {
    local dir=$1 conf=$2 url=${3:-}
    mkdir -p "$dir"
    NGX_PORT=$(free_port)
    sed -e "s#@PORT@#$NGX_PORT#g; s#@PREFIX@#$dir#g; s#@MODULE@#$NCHAN_SO#g" \
        -e "s#@USER@#$NGX_USER#g; s#@REDIS_URL@#$url#g; s#@NOFILE@#$NOFILE#g" \
        "$conf" >"$dir/nginx.conf"
    "${PIN0[@]}" "$NGINX" -p "$dir" -c "$dir/nginx.conf" \
      -g "daemon off; pid $dir/nginx.pid; error_log $dir/error.log;" 2>>"$dir/error.log" &
    NGX_PID=$!
    PEER_PIDS+=("$NGX_PID")
    for _ in $(seq 100); do
      if port_open "$NGX_PORT" && [ -n "$(children "$NGX_PID")" ]; then
        NGX_PIDS="$NGX_PID,$(children "$NGX_PID")"
        return 0
      fi
      kill -0 "$NGX_PID" 2>/dev/null || break
      sleep 0.05
    done
    echo "run.sh: nginx did not start:" >&2; cat "$dir/error.log" >&2; exit 1
  }

  # start_fastapi LOG -> FA_PID FA_PORT: bench/peers/fastapi_server.py, one
  # uvicorn process (Debian's python3: the packages are not on other
  # interpreters' paths).
  start_fastapi() {
    FA_PORT=$(free_port)
    "${PIN0[@]}" /usr/bin/python3 "$ROOT/bench/peers/fastapi_server.py" \
      --port "$FA_PORT" 2>"$1" &
    FA_PID=$!
    PEER_PIDS+=("$FA_PID")
    for _ in $(seq 200); do
      port_open "$FA_PORT" && return 0
      kill -0 "$FA_PID" 2>/dev/null || break
      sleep 0.05
    done
    echo "run.sh: the FastAPI peer did not start:" >&2; cat "$1" >&2; exit 1
  }

  stop_all() {
    local p
    for p in "${PEER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PEER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PEER_PIDS=()
  }

  # Error lines in the servers' logs during a run (nginx: [error] and worse;
  # moonwire: error/warn lines). nchan's notices about deprecated directive
  # names are not errors.
  log_errors() {
    cat "$@" 2>/dev/null |
      grep -E '\[(error|crit|alert|emerg)\]| (error|warn) |^(ERROR|WARNING|CRITICAL):|^Traceback' |
      grep -v 'is discouraged in favor of' || true
  }

fi

# ---- --peers: moonwire vs nchan (docs/benchmarks.md, "moonwire vs nchan") ----
if [ "$PEERS" = 1 ]; then
  NSUBS=${PEER_SUBS:-1000}
  NEVENTS=${PEER_EVENTS:-2000}
  # layout target storage nodes
  SCENARIOS=(
    "single moonwire memory 1"
    "single nchan memory 1"
    "single moonwire redis 1"
    "single nchan redis 1"
    "cross moonwire redis 2"
    "cross nchan redis 2"
  )
  RUNS_FILE=$RESULTS_DIR/peers_runs.jsonl
  : >"$RUNS_FILE"
  LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
  FAILED=0
  # Interleaved (every scenario once, RUNS times) so that a noisy moment on
  # the machine does not land on one scenario only. Fresh servers (and a
  # fresh Redis) for every run.
  for run in $(seq "$RUNS"); do
    for sc in "${SCENARIOS[@]}"; do
      read -r layout target storage nodes <<<"$sc"
      d=$TMP/peer-$layout-$target-$storage-$run
      mkdir -p "$d"
      aux=() redis_url=
      if [ "$storage" = redis ]; then
        start_redis "$d"
        redis_url=redis://127.0.0.1:$REDIS_PORT
        aux=(--aux-pid "$REDIS_PID")
      fi
      logs=()
      if [ "$target" = moonwire ]; then
        st=(--storage memory)
        [ "$storage" = redis ] && st=(--storage redis --redis "$redis_url")
        start_mw "$d/a.log" "${st[@]}"
        pids=$MW_PID port=$MW_PORT pub_port=$MW_PORT
        logs+=("$d/a.log")
        if [ "$nodes" = 2 ]; then
          start_mw "$d/b.log" "${st[@]}"
          pids="$pids,$MW_PID" port=$MW_PORT
          logs+=("$d/b.log")
        fi
      else
        conf=$ROOT/bench/peers/nchan.conf
        [ "$storage" = redis ] && conf=$ROOT/bench/peers/nchan_redis.conf
        start_nchan "$d/a" "$conf" "$redis_url"
        pids=$NGX_PIDS port=$NGX_PORT pub_port=$NGX_PORT
        logs+=("$d/a/error.log")
        if [ "$nodes" = 2 ]; then
          start_nchan "$d/b" "$conf" "$redis_url"
          pids="$pids,$NGX_PIDS" port=$NGX_PORT
          logs+=("$d/b/error.log")
        fi
      fi
      out=$d/run.json
      rc=0
      "${PIN1[@]}" "$LOADGEN" --target "$target" --port "$port" --pub-port "$pub_port" \
        --subs "$NSUBS" --events "$NEVENTS" --window 32 --pad 100 \
        --topic "peer-$run" --server-pid "$pids" "${aux[@]}" --deadline 120 \
        --json "$out" --quiet || rc=$?
      for p in ${pids//,/ }; do
        kill -0 "$p" 2>/dev/null || { echo "run.sh: $sc: server process $p exited" >&2; rc=1; }
      done
      stop_all
      log_errors "${logs[@]}" >"$d/log_errors.txt"
      if [ ! -s "$out" ]; then
        echo "run.sh: $sc run $run: no result (exit $rc)" >&2
        FAILED=1
        continue
      fi
      [ "$rc" = 0 ] || FAILED=1
      "$PY" - "$out" "$layout" "$storage" "$nodes" "$run" "$rc" "$d/log_errors.txt" \
        "$LOAD0" >>"$RUNS_FILE" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
errs = [l.rstrip("\n") for l in open(sys.argv[7]) if l.strip()]
d.update(layout=sys.argv[2], storage=sys.argv[3], nodes=int(sys.argv[4]),
         run=int(sys.argv[5]), exit=int(sys.argv[6]), server_log_errors=len(errs),
         server_log_first_errors=[e[-300:] for e in errs[:3]],
         loadavg_at_start=sys.argv[8])
print(json.dumps(d, sort_keys=True))
EOF
      tail -1 "$RUNS_FILE" | "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read()); l = d["latency_us"]
print("%6s %8s %6s run %d: %9.0f deliveries/s, %.2f server CPU-us/delivery, "
      "p50 %.1f ms p99 %.1f ms, loss %d, log errors %d%s" % (
      d["layout"], d["target"], d["storage"], d["run"], d["deliveries_per_s"],
      d["server_cpu_us_per_delivery"], l["p50"] / 1000, l["p99"] / 1000, d["loss"],
      d["server_log_errors"], "" if d["ok"] else "  NOT OK: " + d["error"]))' >&2
    done
  done

  "$PY" - "$RESULTS_DIR" "$ROOT/docs/benchmarks.md" "$RUNS" "$LOAD0" <<'EOF'
import json, os, platform, re, statistics, subprocess, sys, time

results, doc, runs, load0 = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = [json.loads(l) for l in open(os.path.join(results, "peers_runs.jsonl")) if l.strip()]

def pkg(name):
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", name],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
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
           "date": time.strftime("%Y-%m-%d"), "commit": rev, "runs": runs,
           "nginx": pkg("nginx-light"), "nchan": pkg("libnginx-mod-nchan"),
           "redis": pkg("redis-server"), "loadavg_at_start": load0}

def med(v):
    return statistics.median(v) if v else 0

groups = {}
for d in lines:
    groups.setdefault((d["layout"], d["target"], d["storage"]), []).append(d)
summary = []
for (layout, target, storage), ds in groups.items():
    def m(f):
        return med([f(d) for d in ds])
    summary.append({
        "layout": layout, "target": target, "storage": storage,
        "nodes": ds[0]["nodes"], "runs": len(ds),
        "subscribers": ds[0]["subscribers"], "events": ds[0]["events"],
        "deliveries_expected": ds[0]["deliveries_expected"],
        "deliveries_per_s": m(lambda d: d["deliveries_per_s"]),
        "publishes_per_s": m(lambda d: d["events_per_s"]),
        "duration_s": m(lambda d: d["duration_s"]),
        "server_cpu_us_per_delivery": m(lambda d: d["server_cpu_us_per_delivery"]),
        "server_busy": m(lambda d: d["server_cpu_s"] / d["duration_s"] if d["duration_s"] else 0),
        "server_kernel_share": m(lambda d: d["server_sys_s"] / d["server_cpu_s"] if d["server_cpu_s"] else 0),
        "redis_cpu_us_per_delivery": m(lambda d: d["aux_cpu_us_per_delivery"]),
        "loadgen_cpu_us_per_delivery": m(lambda d: d["loadgen_cpu_s"] * 1e6 / d["deliveries_received"]
                                         if d["deliveries_received"] else 0),
        "loadgen_busy": m(lambda d: d["loadgen_cpu_s"] / d["duration_s"] if d["duration_s"] else 0),
        "loadgen_cpu_share": m(lambda d: d["loadgen_cpu_share"]),
        "p50_us": m(lambda d: d["latency_us"]["p50"]),
        "p99_us": m(lambda d: d["latency_us"]["p99"]),
        "server_rss_kb_end": m(lambda d: d["server_rss_kb_end"]),
        "loss_max": max(d["loss"] for d in ds),
        "duplicates_max": max(d["duplicates"] for d in ds),
        "publish_errors_max": max(d["publish_errors"] for d in ds),
        "all_ok": all(d["ok"] for d in ds),
        "server_log_errors": [d["server_log_errors"] for d in ds],
        "server_log_first_errors": sorted({e for d in ds for e in d["server_log_first_errors"]})[:3],
    })
order = [("single", "memory"), ("single", "redis"), ("cross", "redis")]
summary.sort(key=lambda s: (order.index((s["layout"], s["storage"])), s["target"] != "moonwire"))
with open(os.path.join(results, "peers_summary.json"), "w") as f:
    json.dump({"machine": machine, "peers": summary}, f, indent=1, sort_keys=True)
    f.write("\n")

def fmt_us(v):
    return f"{v/1000:,.1f} ms" if v >= 10000 else f"{v:,.0f} µs"

def row(s, what):
    flag = "" if s["all_ok"] else " ⚠"
    errs = sum(s["server_log_errors"])
    redis = f"{s['redis_cpu_us_per_delivery']:.2f}" if s["storage"] == "redis" else "—"
    return (f"| {what} | {s['deliveries_per_s']:,.0f} | {s['publishes_per_s']:,.0f} | "
            f"{s['server_cpu_us_per_delivery']:.2f} | {s['server_busy']:.0%} | {redis} | "
            f"{s['loadgen_cpu_us_per_delivery']:.2f} ({s['loadgen_busy']:.0%}) | "
            f"{fmt_us(s['p50_us'])} | {fmt_us(s['p99_us'])} | {s['loss_max']}{flag} | {errs} |")

head = ["| server | deliveries/s | publishes/s (answered) | server CPU-µs per delivery | server CPU / wall | Redis CPU-µs per delivery | loadgen CPU-µs per delivery (core 1 busy) | p50 | p99 | loss | error lines in logs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
names = {("single", "moonwire", "memory"): "moonwire `--workers 1`, memory",
         ("single", "nchan", "memory"): "nchan, 1 worker, memory",
         ("single", "moonwire", "redis"): "moonwire `--workers 1`, `--storage redis`",
         ("single", "nchan", "redis"): "nchan, 1 worker, Redis",
         ("cross", "moonwire", "redis"): "moonwire: node A (publish) + node B (subscribers)",
         ("cross", "nchan", "redis"): "nchan: nginx A (publish) + nginx B (subscribers)"}
single = head + [row(s, names[(s["layout"], s["target"], s["storage"])])
                 for s in summary if s["layout"] == "single"]
cross = head + [row(s, names[(s["layout"], s["target"], s["storage"])])
                for s in summary if s["layout"] == "cross"]
mach = (f"- CPU: {model}, {machine['nproc']} cores; Linux {machine['kernel']}; "
        f"nginx-light {machine['nginx']}, libnginx-mod-nchan {machine['nchan']}, "
        f"redis-server {machine['redis']}\n"
        f"- {lines[0]['subscribers']:,} subscribers × {lines[0]['events']:,} events "
        f"(100-byte data, 32 publishes in flight); servers and Redis pinned to core 0, "
        f"load generator to core 1\n"
        f"- median of {runs} runs; measured {machine['date']}"
        + (f" at commit {rev}" if rev else "") + f"; load average at the start: {load0}")
text = open(doc).read()
for name, body in (("peers_machine", mach), ("peers_single", "\n".join(single)),
                   ("peers_cross", "\n".join(cross))):
    pat = re.compile(r"(<!-- BEGIN %s -->\n).*?(<!-- END %s -->)" % (name, name), re.S)
    if not pat.search(text):
        sys.exit(f"run.sh: {doc} has no BEGIN/END {name} markers")
    text = pat.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
open(doc, "w").write(text)
print(f"run.sh: wrote {results}/peers_summary.json and the peer tables in {doc}", file=sys.stderr)
EOF
  if [ "$FAILED" != 0 ]; then
    echo "run.sh --peers: some runs lost events or failed (see above)" >&2
    exit 1
  fi
  exit 0
fi

# ---- --compare: issue 7's scenarios, moonwire vs nchan vs FastAPI ----
if [ "$COMPARE" = 1 ]; then
  . "$ROOT/bench/compare.sh"
  exit $?
fi

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
  # The load generator's other modes (--compare's scenarios b, d, e), tiny,
  # against moonwire only (no peer needed): each must exit 0.
  start_server "$ROOT/bench/policies/none.lua" "$TMP/server-modes.log"
  for args in "--subs 50 --group 10 --rates 100,200 --step-s 0.5" \
              "--idle --subs 50 --settle-max 2" \
              "--idle --transport sse --subs 50 --settle-max 2" \
              "--subs 50 --churn-rates 50 --step-s 0.5 --settle-max 2 --src-addrs 4"; do
    # shellcheck disable=SC2086 # word splitting of $args is intended
    if ! "$LOADGEN" --port "$PORT" --server-pid "$SERVER_PID" --topic smoke --quiet \
         --deadline 20 --json "$TMP/mode.json" $args; then
      echo "run.sh --smoke: mw_loadgen $args failed:" >&2
      cat "$TMP/mode.json" >&2 2>/dev/null || true
      FAILED=1
    fi
  done
  stop_server
  # The floor program (--floor), one short run.
  MW_FLOOR=$BUILD_DIR/bench/mw_floor
  if ! [ -x "$MW_FLOOR" ] ||
     ! "$MW_FLOOR" --mode coalesce --n 20 --rate 200 --warmup 0.2 --duration 0.5 \
       --timeout 20 >"$TMP/floor.json"; then
    echo "run.sh --smoke: mw_floor failed" >&2
    FAILED=1
  fi
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
    "on_deliver_copy_hub": "  same + the hub's lookup of the result's key (encoded once per distinct result)",
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
        rel = f"{d:+.2f} µs (×{s['server_cpu_us_per_delivery']/b['server_cpu_us_per_delivery']:.1f})"
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
