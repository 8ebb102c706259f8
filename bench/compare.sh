# bench/run.sh --compare (sourced by run.sh, which defines the helpers used
# here: start_mw, start_nchan, start_fastapi, stop_all, log_errors, PIN0/1,
# LOADGEN, RESULTS_DIR, RUNS, TMP, PY, NOFILE). Issue 7's scenarios, each
# against moonwire, nchan and the FastAPI peer, fresh servers for every run,
# the runs interleaved (every scenario once, RUNS times). Every run appends
# one JSON line to bench/results/compare_runs.jsonl (the load generator's
# report plus scenario, label, target, run, exit, log errors);
# bench/compare_report.py turns them into compare_summary.json, the tables
# in docs/benchmarks.md and the plot data, and bench/plots.gp into
# docs/img/*.png. Docs: docs/benchmarks.md, "moonwire vs nchan vs FastAPI".
#
# Sizes (environment, for quick checks with small numbers):
#   CMP_A_SIZES "1000 10000"  fan-out subscribers
#   CMP_B_SUBS 10000, CMP_B_RATES 1000,2000,5000,10000 (fastapi:
#     CMP_B_RATES_FASTAPI 250,500,1000,2000), CMP_STEP_S 4
#   CMP_C_SUBS 1000, CMP_C_RATE 1000, CMP_C_SECONDS 5
#   CMP_D_SIZES "1000 5000 18000"
#   CMP_E_SUBS 10000, CMP_E_RATES 200,500,1000,2000, CMP_E_STEP_S 5
#   CMP_W_SUBS 1000, CMP_W_EVENTS 2000 (w: --workers 1 vs 2)
#   CMP_O_SUBS 1000, CMP_O_EVENTS 5000 (o: overload, publisher flat out)
CMP_A_SIZES=${CMP_A_SIZES:-1000 10000}
CMP_B_SUBS=${CMP_B_SUBS:-10000}
CMP_B_RATES=${CMP_B_RATES:-1000,2000,5000,10000}
CMP_B_RATES_FASTAPI=${CMP_B_RATES_FASTAPI:-250,500,1000,2000}
CMP_STEP_S=${CMP_STEP_S:-4}
CMP_C_SUBS=${CMP_C_SUBS:-1000}
CMP_C_RATE=${CMP_C_RATE:-1000}
CMP_C_SECONDS=${CMP_C_SECONDS:-5}
CMP_D_SIZES=${CMP_D_SIZES:-1000 5000 18000}
CMP_E_SUBS=${CMP_E_SUBS:-10000}
CMP_E_RATES=${CMP_E_RATES:-200,500,1000,2000}
CMP_E_STEP_S=${CMP_E_STEP_S:-5}
CMP_W_SUBS=${CMP_W_SUBS:-1000}
CMP_W_EVENTS=${CMP_W_EVENTS:-2000}
CMP_O_SUBS=${CMP_O_SUBS:-1000}
CMP_O_EVENTS=${CMP_O_EVENTS:-5000}
TARGETS=(moonwire nchan fastapi)
ALL_SCENARIOS=a,b,c,d,e,o,w
ONLY=${ONLY:-$ALL_SCENARIOS}
want() { case ",$ONLY," in *",$1,"*) return 0 ;; esac; return 1; }

# The largest run holds 18,000 idle connections (+ a few): both the load
# generator and the server need that many descriptors.
biggest=0
for n in $CMP_D_SIZES $CMP_A_SIZES $CMP_B_SUBS $((CMP_E_SUBS + 4000)); do
  [ "$n" -gt "$biggest" ] && biggest=$n
done
if [ "$NOFILE" -lt $((biggest + 200)) ]; then
  echo "run.sh --compare: the open-file limit is $NOFILE, below $((biggest + 200)):" \
       "raise it (ulimit -Hn as root) or lower CMP_*" >&2
  exit 1
fi

CMP_RUNS=$RESULTS_DIR/compare_runs.jsonl
# ONLY=...: keep the other scenarios' earlier runs
if [ -s "$CMP_RUNS" ] && [ "$ONLY" != "$ALL_SCENARIOS" ]; then
  "$PY" - "$CMP_RUNS" "$ONLY" <<'EOF'
import json, sys
path, only = sys.argv[1], sys.argv[2].split(",")
keep = [l for l in open(path) if l.strip() and json.loads(l).get("scenario") not in only]
open(path, "w").writelines(keep)
EOF
else
  : >"$CMP_RUNS"
fi
CMP_LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
CMP_FAILED=0

# cmp_run SCENARIO LABEL TARGET RUN [loadgen args...]: a fresh server, one
# load generator run, its JSON line (with the tags) in compare_runs.jsonl.
cmp_run() {
  local sc=$1 label=$2 target=$3 run=$4
  shift 4
  local d=$TMP/cmp-$sc-$label-$target-$run pids port log rc=0 t0
  mkdir -p "$d"
  case $target in
    moonwire) start_mw "$d/server.log" ${MW_ARGS:-}; pids=$MW_PID port=$MW_PORT log=$d/server.log ;;
    nchan) start_nchan "$d/ngx" "$ROOT/bench/peers/nchan.conf"
           pids=$NGX_PIDS port=$NGX_PORT log=$d/ngx/error.log ;;
    fastapi) start_fastapi "$d/server.log"; pids=$FA_PID port=$FA_PORT log=$d/server.log ;;
  esac
  t0=$(date +%s.%N)
  "${PIN1[@]}" "$LOADGEN" --target "$target" --port "$port" --server-pid "$pids" \
    --topic "c$run" --deadline 60 --json "$d/out.json" --quiet "$@" || rc=$?
  for p in ${pids//,/ }; do
    kill -0 "$p" 2>/dev/null || { echo "run.sh: $sc $label $target: server process $p exited" >&2; rc=1; }
  done
  stop_all
  log_errors "$log" >"$d/log_errors.txt"
  if [ ! -s "$d/out.json" ]; then
    echo "run.sh: $sc $label $target run $run: no result (exit $rc)" >&2
    CMP_FAILED=1
    return 0
  fi
  [ "$rc" = 0 ] || CMP_FAILED=1
  "$PY" - "$d/out.json" "$sc" "$label" "$run" "$rc" "$d/log_errors.txt" "$t0" \
    "$CMP_LOAD0" "${MW_WORKERS:-1}" >>"$CMP_RUNS" <<'EOF'
import json, sys, time
d = json.load(open(sys.argv[1]))
errs = [l.rstrip("\n") for l in open(sys.argv[6]) if l.strip()]
d.update(scenario=sys.argv[2], label=sys.argv[3], run=int(sys.argv[4]), exit=int(sys.argv[5]),
         server_log_errors=len(errs), server_log_first_errors=[e[-300:] for e in errs[:3]],
         wall_s=round(time.time() - float(sys.argv[7]), 1), loadavg_at_start=sys.argv[8],
         workers=int(sys.argv[9]))
print(json.dumps(d, sort_keys=True))
EOF
  tail -1 "$CMP_RUNS" | "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read())
b = d["bench"]
head = "%s %-9s %-8s run %d (%4.0f s): " % (d["scenario"], d["label"], d["target"], d["run"], d["wall_s"])
if b == "idle":
    s = "%d/%d idle %s, +%.0f bytes per connection" % (d["subscribers_ready"], d["subscribers"],
        d["transport"], d["bytes_per_connection"])
elif b == "churn":
    s = "; ".join("%g/s: %.0f/s hs p99 %.1f ms%s" % (x["rate"], x["cycles_per_s"],
        x["handshake_us"]["p99"] / 1000, "" if x["drained"] else " BEHIND") for x in d["steps"])
    s += "; RSS after-baseline %+d kB" % d["server_rss_after_minus_baseline_kb"]
elif b == "stepped":
    s = "; ".join("%g/s: %.0f deliv/s p99 %.1f ms%s" % (x["rate"], x["deliveries_per_s"],
        x["latency_us"]["p99"] / 1000, "" if x["drained"] else " BEHIND") for x in d["steps"])
    s += "; loss %d" % d["loss"]
else:
    l = d["latency_us"]
    s = "%.0f deliveries/s, %.2f server CPU-us/delivery, p50 %.1f ms p99 %.1f ms p99.9 %.1f ms, loss %d" % (
        d["deliveries_per_s"], d["server_cpu_us_per_delivery"], l["p50"] / 1000, l["p99"] / 1000,
        l["p999"] / 1000, d["loss"])
print(head + s + ("" if d["ok"] else "  NOT OK: " + d["error"]) +
      (" log errors %d" % d["server_log_errors"] if d["server_log_errors"] else ""))' >&2
}

# a: fan-out events per target and size: about as many deliveries as the
# server can make in a few seconds (FastAPI ~10-20k/s, nchan ~0.2M/s at
# 1,000 subscribers but ~20k/s at 10,000, moonwire ~0.4-1.5M/s on one core
# here).
a_events() { # target subs
  local budget
  case $1 in moonwire) budget=4000000 ;; nchan) budget=400000 ;; *) budget=150000 ;; esac
  local e=$((budget / $2))
  [ "$e" -gt 2000 ] && e=2000
  [ "$e" -lt 10 ] && e=10
  echo "$e"
}
src_for() { [ "$1" -gt 10000 ] && echo 16 || echo 1; }

for run in $(seq "$RUNS"); do
  for target in "${TARGETS[@]}"; do
    if want a; then
      # maximum fan-out: moonwire's publish push-back is raised out of the
      # way (nchan and FastAPI have none; at 10,000 subscribers 32 events in
      # flight are ~40 MB queued, over the default 32 MiB backlog): the
      # overload scenario (o) measures the push-back itself
      echo 'return { limits = { publish_backlog = 1073741824, publish_lag_ms = 0 } }' \
        >"$TMP/max-fanout.lua"
      for n in $CMP_A_SIZES; do
        MW_ARGS="--config $TMP/max-fanout.lua" cmp_run a "$n" "$target" "$run" --subs "$n" \
          --events "$(a_events "$target" "$n")" --window 32 --pad 100 --src-addrs "$(src_for "$n")"
      done
    fi
    if want b; then
      rates=$CMP_B_RATES bsubs=$CMP_B_SUBS
      if [ "$target" = fastapi ]; then
        # one socket per room: two per subscriber, and both the load
        # generator and uvicorn need a descriptor for each (at a hard limit
        # of 20,000: 9,850 subscribers, same groups of 10)
        rates=$CMP_B_RATES_FASTAPI
        [ $((bsubs * 2 + 300)) -gt "$NOFILE" ] && bsubs=$(((NOFILE - 300) / 20 * 10))
      fi
      cmp_run b "$CMP_B_SUBS" "$target" "$run" --subs "$bsubs" --group 10 \
        --rates "$rates" --step-s "$CMP_STEP_S" --step-drain 5 --window 64 --pad 100 \
        --src-addrs "$(src_for $((bsubs * 2)))"
    fi
    if want c; then
      # FastAPI delivers ~20k/s: 1,000 x 1,000/s would take minutes to drain,
      # so it gets 300 events (its latency is a growing queue either way).
      ev=$((CMP_C_RATE * CMP_C_SECONDS))
      # nchan ~15-200k/s here (it slows down past ~1,000 subscribers): 1,000
      [ "$target" = nchan ] && [ "$ev" -gt 1000 ] && ev=1000
      [ "$target" = fastapi ] && ev=300
      cmp_run c "$CMP_C_SUBS" "$target" "$run" --subs "$CMP_C_SUBS" --events "$ev" \
        --rate "$CMP_C_RATE" --window 256 --pad 100
    fi
    if want d; then
      for n in $CMP_D_SIZES; do
        cmp_run d "$n-ws" "$target" "$run" --idle --subs "$n" --src-addrs "$(src_for "$n")"
        if [ "$target" != fastapi ]; then
          cmp_run d "$n-sse" "$target" "$run" --idle --transport sse --subs "$n" \
            --src-addrs "$(src_for "$n")"
        fi
      done
    fi
    if want o && [ "$target" != fastapi ]; then
      # overload: the publisher flat out (256 in flight, 503/429 + Retry-After
      # honoured); moonwire with its push-back (default limits) and without
      # (limits.publish_backlog = 0, publish_lag_ms = 0); nchan has none
      # (FastAPI: no push-back either, and too slow for this many events)
      oev=$CMP_O_EVENTS
      [ "$target" = nchan ] && [ "$oev" -gt 1000 ] && oev=1000
      cmp_run o push-back "$target" "$run" --subs "$CMP_O_SUBS" --events "$oev" \
        --window 256 --pad 100 --overload 1
      if [ "$target" = moonwire ]; then
        echo 'return { limits = { publish_backlog = 0, publish_lag_ms = 0 } }' >"$TMP/no-push-back.lua"
        MW_ARGS="--config $TMP/no-push-back.lua" cmp_run o no-push-back moonwire "$run" \
          --subs "$CMP_O_SUBS" --events "$oev" --window 256 --pad 100 --overload 1
      fi
    fi
    if want e; then
      cmp_run e "$CMP_E_SUBS" "$target" "$run" --subs "$CMP_E_SUBS" \
        --churn-rates "$CMP_E_RATES" --step-s "$CMP_E_STEP_S" --step-drain 5 \
        --churn-pub-rate 200 --churn-max 4000 --src-addrs 32
    fi
  done
  if want w; then
    # --workers 1 vs 2: nothing pinned (the load generator shares the cores)
    save0=("${PIN0[@]}") save1=("${PIN1[@]}")
    PIN0=() PIN1=()
    for w in 1 2; do
      MW_WORKERS=$w cmp_run w "w$w" moonwire "$run" --subs "$CMP_W_SUBS" \
        --events "$CMP_W_EVENTS" --window 32 --pad 100
    done
    PIN0=("${save0[@]}") PIN1=("${save1[@]}")
  fi
done

"$PY" "$ROOT/bench/compare_report.py" "$RESULTS_DIR" "$ROOT/docs/benchmarks.md" "$RUNS" \
  "$CMP_LOAD0" || CMP_FAILED=1
if command -v gnuplot >/dev/null 2>&1; then
  mkdir -p "$ROOT/docs/img"
  gnuplot -e "dir='$RESULTS_DIR'; img='$ROOT/docs/img'" "$ROOT/bench/plots.gp" ||
    { echo "run.sh --compare: gnuplot failed" >&2; CMP_FAILED=1; }
else
  echo "run.sh --compare: no gnuplot (gnuplot-nox): plots not redrawn" >&2
fi
if [ "$CMP_FAILED" != 0 ]; then
  echo "run.sh --compare: some runs lost events or failed (see above)" >&2
  false
fi
