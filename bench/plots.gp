# bench/plots.gp: docs/img/*.png from bench/run.sh --compare's plot data
# (bench/results/plot_*.dat, written by bench/compare_report.py).
#   gnuplot -e "dir='bench/results'; img='docs/img'" bench/plots.gp
# (bench/run.sh --plots does that). A plot whose data file is missing is
# skipped. Debian's gnuplot-nox (pngcairo).
if (!exists("dir")) dir = "bench/results"
if (!exists("img")) img = "docs/img"
have(f) = system("[ -s '" . f . "' ] && echo 1 || echo 0") eq "1"

set terminal pngcairo size 900,520 font "sans,11"
set termoption noenhanced
set grid ytics
set key top right
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
c_mw = "#1f77b4"; c_nc = "#ff7f0e"; c_fa = "#2ca02c"

# ---- a: fan-out deliveries/s ----
f = dir . "/plot_fanout.dat"
if (have(f)) {
  set output img . "/fanout.png"
  set title "a: one topic fan-out, 100-byte events (saturation, zero loss): deliveries/s, one server core"
  set xlabel "WebSocket subscribers"
  set ylabel "deliveries/s (log scale)"
  set logscale y
  set yrange [1000:*]
  set format y "%.0s%c"
  plot f using 2:xtic(1) title columnheader(2) lc rgb c_mw, \
       '' using 3 title columnheader(3) lc rgb c_nc, \
       '' using 4 title columnheader(4) lc rgb c_fa
  unset logscale y; set yrange [*:*]; set format y "%g"
}

# ---- c: latency percentiles ----
f = dir . "/plot_latency.dat"
if (have(f)) {
  set output img . "/latency.png"
  set title "c: publish -> deliver latency, 1,000 subscribers, 1,000 events/s paced"
  set xlabel ""
  set ylabel "ms (log scale)"
  set logscale y
  set format y "%g"
  plot f using 2:xtic(1) title columnheader(2) lc rgb "#9ecae1", \
       '' using 3 title columnheader(3) lc rgb "#3182bd", \
       '' using 4 title columnheader(4) lc rgb "#08519c"
  unset logscale y
}

# ---- d: memory per idle connection ----
f = dir . "/plot_memory.dat"
if (have(f)) {
  n = int(system("cat '" . dir . "/plot_memory_series.txt'"))
  set output img . "/memory.png"
  set style data linespoints
  set title "d: server RSS growth per idle subscribed connection"
  set xlabel "idle connections"
  set ylabel "KiB per connection"
  set logscale x
  set xtics (1000, 2000, 5000, 10000, 18000)
  set format x "%.0f"
  set yrange [0:*]
  set key top left
  set arrow 1 from graph 0, first 2 to graph 1, first 2 nohead dt 2 lc rgb "red"
  set label 1 "issue 7 goal: 2 KiB" at graph 0.02, first 2 offset 0,0.7 tc rgb "red"
  plot for [i=2:n+1] f using 1:i title columnheader(i) lw 2 pt 7
  unset arrow 1; unset label 1; unset logscale x; set xtics autofreq; set yrange [*:*]
  set key top right
}

# ---- e: churn ----
f = dir . "/plot_churn.dat"
if (have(f)) {
  set output img . "/churn.png"
  set style data linespoints
  set title "e: connection churn beside 10,000 idle connections: handshake p99"
  set xlabel "offered connect-subscribe-receive-close cycles/s"
  set ylabel "handshake p99, ms (log scale)"
  set logscale xy
  set format x "%.0f"
  set key top left
  plot f index 0 using 1:3 title "moonwire" lw 2 pt 7 lc rgb c_mw, \
       f index 1 using 1:3 title "nchan" lw 2 pt 7 lc rgb c_nc, \
       f index 2 using 1:3 title "FastAPI" lw 2 pt 7 lc rgb c_fa
  unset logscale xy
  set key top right
}

# ---- b: many topics ----
f = dir . "/plot_topics.dat"
if (have(f)) {
  set output img . "/topics.png"
  set style data linespoints
  set title "b: 10,000 subscribers x (personal + group-of-10 topic): p99 per publish rate"
  set xlabel "offered events/s (half personal: 1 delivery, half group: 10)"
  set ylabel "p99, ms (log scale)"
  set logscale xy
  set format x "%.0f"
  set key top left
  plot f index 0 using 1:3 title "moonwire" lw 2 pt 7 lc rgb c_mw, \
       f index 1 using 1:3 title "nchan" lw 2 pt 7 lc rgb c_nc, \
       f index 2 using 1:3 title "FastAPI (one socket per room)" lw 2 pt 7 lc rgb c_fa
  unset logscale xy
}
