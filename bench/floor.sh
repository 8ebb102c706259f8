# bench/run.sh --floor (sourced by run.sh after the build): the latency
# floor of fan-out on this machine, with mw_floor (bench/floor.c), at the
# points of docs/benchmarks.md's floor table; RUNS runs per point,
# interleaved. Writes $RESULTS_DIR/floor_runs.jsonl and the table between
# <!-- BEGIN floor --> and <!-- END floor --> in docs/benchmarks.md.
FLOOR=$BUILD_DIR/bench/mw_floor
[ -x "$FLOOR" ] || { echo "run.sh --floor: missing $FLOOR" >&2; exit 1; }
FLOOR_POINTS=(
  "--mode coalesce --n 1000 --rate 1000"
  "--mode coalesce --n 1000 --rate 1000 --busy-client"
  "--mode each --n 1000 --rate 1000"
  "--mode coalesce --n 1000 --rate 300"
  "--mode coalesce --n 1000 --rate 100"
  "--mode each --n 1000 --rate 100"
  "--mode each --n 1000 --rate 100 --busy-client"
  "--mode each --n 100 --rate 1000"
)
out=$RESULTS_DIR/floor_runs.jsonl
: >"$out"
for run in $(seq "$RUNS"); do
  for p in "${FLOOR_POINTS[@]}"; do
    echo "== floor run $run/$RUNS: $p" >&2
    # mw_floor pins its own threads (server CPU 0, client CPU 1). "each" at
    # 1,000 x 1,000 cannot keep up: it sends every event late, the run
    # lasts ~1 minute; the timeout bounds it.
    # shellcheck disable=SC2086
    timeout 300 "$FLOOR" $p >>"$out" ||
      { echo "run.sh --floor: mw_floor $p failed" >&2; exit 1; }
  done
done
"$PY" "$ROOT/bench/floor_report.py" "$out" "$ROOT/docs/benchmarks.md"
