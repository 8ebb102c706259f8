/* mw_floor: the latency floor of WebSocket fan-out on this machine
 * (docs/benchmarks.md, issue 7 target c).
 *
 * An "ideal server" that does only what any server must do for the fan-out
 * scenario, and nothing else: no HTTP, no JSON, no event loop library, no
 * queues. N loopback TCP connections; a server thread (pinned to one CPU)
 * generates R events/s, each a 100-byte payload carrying its due time
 * (CLOCK_MONOTONIC ns) and sequence number, framed as a WebSocket text frame
 * (0x81, 100: the bytes moonwire puts on the wire), and writes it to all N
 * sockets; a client thread (pinned to another CPU) reads every socket with
 * epoll, parses the frames and records due time -> receive latency.
 *
 *   --mode each      one write() per socket per event, as soon as it is due
 *   --mode coalesce  each turn takes every event that is due and writes them
 *                    with one writev() per socket (what moonwire does)
 *   --busy-client    the client spins on epoll_wait(timeout 0) instead of
 *                    sleeping: the receiver is never woken up, which shows
 *                    how much of a write is the wakeup (an IPI on a VM)
 *
 * Events are due at t0 + i/R; the server sleeps (clock_nanosleep,
 * TIMER_ABSTIME) only until the next due time. The first --warmup seconds of
 * events are not measured; the next --duration seconds are. A server that
 * cannot keep up sends every event anyway, late: its latency is then a
 * growing queue and deliveries/s falls below N x R. Prints one JSON line:
 * latency percentiles (us, nearest rank) of the measured deliveries; the
 * server thread's CPU (CLOCK_THREAD_CPUTIME_ID, which here includes the
 * softirq work the kernel runs on its behalf: the receiver's TCP input) per
 * delivery and per write syscall, over the span from the first measured turn
 * to the end of the last write; frames per write; the server's and client's
 * CPU share of that span; the mean/max lateness of a turn behind the due
 * time of its first event. At saturation the coalescing loop never idles,
 * so its CPU per delivery is 1 / (deliveries/s) by construction: the cost of
 * one write is read at a rate that leaves the loop idle. The server_core_*,
 * client_core_busy and steal fields come from /proc/stat ticks (100 Hz,
 * sampled: approximate; a client_core_busy well above client_cpu_share means
 * something else ran on the client's core). getrusage's user/sys split is
 * tick-sampled too. Exits 1 if a measured delivery is missing.
 *
 * Self-contained: C11 + Linux syscalls + pthreads.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define PAYLOAD 100
#define FRAME (2 + PAYLOAD)
#define MAX_BATCH 512 /* events per writev (2 iovecs each, IOV_MAX 1024) */
#define STALL_MS 5000 /* longest wait for a full socket to drain */
#define DRAIN_NS 2000000000ull /* client gives up 2 s after the last data */
#define RBUF 65536

/* Options. */
static const char *opt_mode = "coalesce";
static int opt_each;
static int opt_n = 1000;
static double opt_rate = 1000;
static double opt_duration = 5;
static double opt_warmup = 1;
static int opt_busy;
static int opt_server_cpu = 0;
static int opt_client_cpu = 1;
static double opt_timeout = 180;

/* Shared state. Sockets: srv_fd[i] (server's end) sends to cli_fd[i]. */
static int *srv_fd, *cli_fd;
static uint64_t t0;             /* event i is due at t0 + i * 1e9 / rate */
static uint64_t n_warm, n_meas; /* events in warm-up / measured window */
static clockid_t client_clock;  /* the client thread's CPU clock */
static atomic_int client_ready, server_done;

/* Server results (written by the server thread before server_done). */
static struct {
  uint64_t span_ns;          /* first measured turn -> end of last write */
  uint64_t cpu_ns;           /* server thread CPU over the span */
  uint64_t sys_us, user_us;  /* the same from getrusage(RUSAGE_THREAD) */
  uint64_t client_cpu_ns;    /* client thread CPU over the same span */
  uint64_t frames, writes;   /* frames written / write syscalls in the span */
  uint64_t stalls;           /* writes that met a full socket */
  uint64_t turns;            /* loop turns that wrote something in the span */
  uint64_t lag_sum, lag_max; /* turn start - due time of its first event */
  uint64_t core_busy[2], core_soft[2], core_steal[2]; /* /proc/stat ticks */
} srv;

/* Client results. */
static uint64_t *lat;            /* latencies (ns) of measured deliveries */
static uint64_t n_lat, n_frames; /* measured deliveries / all frames */
static uint64_t first_due_meas, last_meas_rx;

/* die: prints a message (with errno's text if set) and exits 1. */
static void die(const char *fmt, ...) {
  int e = errno;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "mw_floor: ");
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  if (e) fprintf(stderr, ": %s", strerror(e));
  fputc('\n', stderr);
  exit(1);
}

/* now_ns: CLOCK_MONOTONIC in ns. */
static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* clock_ns: any clock (thread CPU clocks) in ns. */
static uint64_t clock_ns(clockid_t c) {
  struct timespec ts;
  if (clock_gettime(c, &ts) != 0) die("clock_gettime");
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* due_ns: the due time of event i. */
static uint64_t due_ns(uint64_t i) {
  return t0 + (uint64_t)((double)i * 1e9 / opt_rate);
}

/* pin: pins the calling thread to one CPU. */
static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  if (rc != 0) {
    errno = rc;
    die("pin to CPU %d", cpu);
  }
}

/* put_u64 / get_u64: little-endian-agnostic copies into the payload. */
static void put_u64(unsigned char *p, uint64_t v) {
  memcpy(p, &v, 8);
}
static uint64_t get_u64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* cpu_ticks: a CPU's busy (user+nice+system+irq+softirq), softirq and steal
 * ticks from /proc/stat: what the thread CPU clocks miss (softirq time run
 * on the thread's behalf) and what else ran on that core. */
static void cpu_ticks(int cpu, uint64_t *busy, uint64_t *soft,
                      uint64_t *steal) {
  FILE *f = fopen("/proc/stat", "r");
  char line[512], name[16];
  int found = 0;
  snprintf(name, sizeof name, "cpu%d ", cpu);
  if (!f) die("/proc/stat");
  while (fgets(line, sizeof line, f)) {
    unsigned long long v[8] = {0};
    if (strncmp(line, name, strlen(name))) continue;
    if (sscanf(line + strlen(name), "%llu %llu %llu %llu %llu %llu %llu %llu",
               &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
      break;
    *busy = v[0] + v[1] + v[2] + v[5] + v[6];
    *soft = v[6];
    *steal = v[7];
    found = 1;
    break;
  }
  fclose(f);
  if (!found) {
    errno = 0;
    die("cpu%d not in /proc/stat", cpu);
  }
}

/* wait_writable: waits (bounded) until a full socket takes data again. */
static void wait_writable(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  int rc;
  do
    rc = poll(&p, 1, STALL_MS);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) die("poll");
  if (rc == 0) {
    errno = 0;
    die("socket %d still full after %d ms", fd, STALL_MS);
  }
  srv.stalls++;
}

/* write_all: writev()s iov[0..cnt) to fd, completing partial writes; returns
 * the number of syscalls it took. */
static uint64_t write_all(int fd, struct iovec *iov, int cnt) {
  uint64_t calls = 0;
  while (cnt > 0) {
    ssize_t w = cnt == 1 ? write(fd, iov[0].iov_base, iov[0].iov_len)
                         : writev(fd, iov, cnt);
    calls++;
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        wait_writable(fd);
        continue;
      }
      die("write to socket %d", fd);
    }
    size_t left = (size_t)w;
    while (cnt > 0 && left >= iov[0].iov_len) {
      left -= iov[0].iov_len;
      iov++;
      cnt--;
    }
    if (cnt > 0 && left > 0) {
      iov[0].iov_base = (char *)iov[0].iov_base + left;
      iov[0].iov_len -= left;
      wait_writable(fd); /* a partial write means the socket is full */
    }
  }
  return calls;
}

/* server_main: the paced generator and fan-out loop (see the header). */
static void *server_main(void *arg) {
  (void)arg;
  pin(opt_server_cpu);
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL); /* wake at the due time */
  static const unsigned char hdr[2] = {0x81, PAYLOAD};
  static unsigned char frames[MAX_BATCH][FRAME];    /* for --mode each */
  static unsigned char payload[MAX_BATCH][PAYLOAD]; /* for coalesce */
  static struct iovec iov[2 * MAX_BATCH], tmp[2 * MAX_BATCH];
  uint64_t total = n_warm + n_meas, next = 0;
  uint64_t deadline = t0 + (uint64_t)(opt_timeout * 1e9);
  int measuring = 0;
  uint64_t m_wall = 0, m_cpu = 0, m_ccpu = 0;
  struct rusage ru0, ru1;

  while (!atomic_load(&client_ready))
    usleep(1000);
  while (next < total) {
    uint64_t now = now_ns();
    if (now > deadline) {
      errno = 0;
      die("server: --timeout %.0f s reached at event %llu of %llu", opt_timeout,
          (unsigned long long)next, (unsigned long long)total);
    }
    uint64_t due = due_ns(next);
    if (due > now) { /* idle: sleep exactly until the next due time */
      struct timespec ts = {.tv_sec = (time_t)(due / 1000000000ull),
                            .tv_nsec = (long)(due % 1000000000ull)};
      int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
      if (rc != 0 && rc != EINTR) {
        errno = rc;
        die("clock_nanosleep");
      }
      continue;
    }
    /* The events of this turn: one (each) or every due one (coalesce). */
    uint64_t k = 1;
    if (!opt_each)
      while (k < MAX_BATCH && next + k < total && due_ns(next + k) <= now)
        k++;
    if (!measuring && next + k > n_warm) {
      measuring = 1;
      m_wall = now_ns();
      m_cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID);
      m_ccpu = clock_ns(client_clock);
      getrusage(RUSAGE_THREAD, &ru0);
      cpu_ticks(opt_server_cpu, &srv.core_busy[0], &srv.core_soft[0],
                &srv.core_steal[0]);
      cpu_ticks(opt_client_cpu, &srv.core_busy[1], &srv.core_soft[1],
                &srv.core_steal[1]);
    }
    for (uint64_t j = 0; j < k; j++) {
      unsigned char *p = opt_each ? frames[j] + 2 : payload[j];
      memset(p + 16, 'x', PAYLOAD - 16);
      put_u64(p, due_ns(next + j)); /* the publish time: the due time */
      put_u64(p + 8, next + j);
      if (opt_each) memcpy(frames[j], hdr, 2);
      iov[2 * j] = (struct iovec){(void *)hdr, 2};
      iov[2 * j + 1] = (struct iovec){payload[j], PAYLOAD};
    }
    uint64_t calls = 0;
    if (opt_each) {
      for (int i = 0; i < opt_n; i++) {
        struct iovec one = {frames[0], FRAME};
        calls += write_all(srv_fd[i], &one, 1);
      }
    } else {
      for (int i = 0; i < opt_n; i++) {
        memcpy(tmp, iov, sizeof(struct iovec) * 2 * k); /* write_all edits */
        calls += write_all(srv_fd[i], tmp, (int)(2 * k));
      }
    }
    if (measuring) {
      uint64_t lag = now - due_ns(next);
      srv.lag_sum += lag;
      if (lag > srv.lag_max) srv.lag_max = lag;
      srv.frames += k * (uint64_t)opt_n;
      srv.writes += calls;
      srv.turns++;
    }
    next += k;
  }
  getrusage(RUSAGE_THREAD, &ru1);
  for (int c = 0; c < 2; c++) {
    uint64_t b, so, st;
    cpu_ticks(c ? opt_client_cpu : opt_server_cpu, &b, &so, &st);
    srv.core_busy[c] = b - srv.core_busy[c];
    srv.core_soft[c] = so - srv.core_soft[c];
    srv.core_steal[c] = st - srv.core_steal[c];
  }
  srv.span_ns = now_ns() - m_wall;
  srv.cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - m_cpu;
  srv.client_cpu_ns = clock_ns(client_clock) - m_ccpu;
  srv.user_us =
      (uint64_t)((ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) * 1000000 +
                 (ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec));
  srv.sys_us =
      (uint64_t)((ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) * 1000000 +
                 (ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec));
  atomic_store(&server_done, 1);
  return NULL;
}

/* Per receiving socket: a partial frame and the next expected seq. */
struct rx {
  unsigned char part[FRAME];
  int len;
  uint64_t next_seq;
};

/* on_frame: checks one frame and records its latency. */
static void on_frame(struct rx *r, const unsigned char *f, uint64_t now,
                     int i) {
  if (f[0] != 0x81 || f[1] != PAYLOAD) {
    errno = 0;
    die("socket %d: bad frame header %02x %02x", i, f[0], f[1]);
  }
  uint64_t ts = get_u64(f + 2), seq = get_u64(f + 10);
  if (seq != r->next_seq) {
    errno = 0;
    die("socket %d: seq %llu, expected %llu", i, (unsigned long long)seq,
        (unsigned long long)r->next_seq);
  }
  r->next_seq++;
  n_frames++;
  if (seq >= n_warm && n_lat < n_meas * (uint64_t)opt_n) {
    lat[n_lat++] = now > ts ? now - ts : 0;
    last_meas_rx = now;
  }
}

/* on_data: splits what one read() returned into frames. */
static void on_data(struct rx *r, const unsigned char *b, size_t len,
                    uint64_t now, int i) {
  if (r->len > 0) { /* complete the partial frame first */
    size_t need = (size_t)(FRAME - r->len);
    size_t take = len < need ? len : need;
    memcpy(r->part + r->len, b, take);
    r->len += (int)take;
    b += take;
    len -= take;
    if (r->len < FRAME) return;
    on_frame(r, r->part, now, i);
    r->len = 0;
  }
  while (len >= FRAME) {
    on_frame(r, b, now, i);
    b += FRAME;
    len -= FRAME;
  }
  memcpy(r->part, b, len);
  r->len = (int)len;
}

/* client_main: epoll over every receiving socket until all frames arrived,
 * nothing arrived for 2 s after the server finished, or --timeout. */
static void *client_main(void *arg) {
  (void)arg;
  pin(opt_client_cpu);
  int ep = epoll_create1(0);
  if (ep < 0) die("epoll_create1");
  for (int i = 0; i < opt_n; i++) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, cli_fd[i], &ev) != 0) die("epoll_ctl");
  }
  struct rx *rx = calloc((size_t)opt_n, sizeof *rx);
  static unsigned char buf[RBUF];
  struct epoll_event evs[1024];
  uint64_t want = (n_warm + n_meas) * (uint64_t)opt_n;
  uint64_t last_data = now_ns();
  uint64_t deadline = t0 + (uint64_t)(opt_timeout * 1e9);
  if (!rx) die("calloc");
  atomic_store(&client_ready, 1);
  while (n_frames < want) {
    int n = epoll_wait(ep, evs, 1024, opt_busy ? 0 : 100);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    if (n == 0) {
      uint64_t now = now_ns();
      if (now > deadline) break;
      if (atomic_load(&server_done) && now - last_data > DRAIN_NS) break;
      continue;
    }
    for (int e = 0; e < n; e++) {
      int i = (int)evs[e].data.u32;
      for (;;) {
        ssize_t got = read(cli_fd[i], buf, sizeof buf);
        if (got < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN) break;
          die("read socket %d", i);
        }
        if (got == 0) {
          errno = 0;
          die("socket %d closed by the server", i);
        }
        uint64_t now = now_ns();
        last_data = now;
        on_data(&rx[i], buf, (size_t)got, now, i);
        if ((size_t)got < sizeof buf) break;
      }
    }
  }
  free(rx);
  close(ep);
  return NULL;
}

/* connect_all: N loopback connections through a listener on an ephemeral
 * port; the accepted ends send (TCP_NODELAY, non-blocking), the connecting
 * ends receive (non-blocking). */
static void connect_all(void) {
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  if (ls < 0) die("socket");
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(ls, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
  if (listen(ls, 1024) != 0) die("listen");
  if (getsockname(ls, (struct sockaddr *)&a, &al) != 0) die("getsockname");
  srv_fd = calloc((size_t)opt_n, sizeof *srv_fd);
  cli_fd = calloc((size_t)opt_n, sizeof *cli_fd);
  if (!srv_fd || !cli_fd) die("calloc");
  struct timeval tv = {.tv_sec = 5};
  if (setsockopt(ls, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0)
    die("SO_RCVTIMEO"); /* bounds accept() */
  for (int i = 0; i < opt_n; i++) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0) die("socket %d (raise ulimit -n?)", i);
    if (setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
      die("SO_SNDTIMEO"); /* bounds connect() */
    if (connect(c, (struct sockaddr *)&a, sizeof a) != 0) die("connect %d", i);
    int s = accept(ls, NULL, NULL);
    if (s < 0) die("accept %d", i);
    int one = 1;
    if (setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
      die("TCP_NODELAY");
    if (fcntl(s, F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(c, F_SETFL, O_NONBLOCK) != 0)
      die("O_NONBLOCK");
    srv_fd[i] = s;
    cli_fd[i] = c;
  }
  close(ls);
}

/* cmp_u64: qsort order. */
static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* pct_us: nearest-rank percentile of the sorted latencies, in us. */
static double pct_us(double p) {
  if (n_lat == 0) return 0;
  uint64_t k = (uint64_t)(p * (double)n_lat + 0.999999);
  if (k < 1) k = 1;
  if (k > n_lat) k = n_lat;
  return (double)lat[k - 1] / 1000.0;
}

/* usage: prints the options and exits 2. */
static void usage(void) {
  fprintf(stderr,
          "usage: mw_floor [--mode each|coalesce] [--n N] [--rate EV_PER_S]\n"
          "                [--duration S] [--warmup S] [--busy-client]\n"
          "                [--server-cpu C] [--client-cpu C] [--timeout S]\n");
  exit(2);
}

/* main: options, connections, threads, report. */
int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(o, "--busy-client")) {
      opt_busy = 1;
      continue;
    }
    if (!v) usage();
    if (!strcmp(o, "--mode"))
      opt_mode = v;
    else if (!strcmp(o, "--n"))
      opt_n = atoi(v);
    else if (!strcmp(o, "--rate"))
      opt_rate = atof(v);
    else if (!strcmp(o, "--duration"))
      opt_duration = atof(v);
    else if (!strcmp(o, "--warmup"))
      opt_warmup = atof(v);
    else if (!strcmp(o, "--server-cpu"))
      opt_server_cpu = atoi(v);
    else if (!strcmp(o, "--client-cpu"))
      opt_client_cpu = atoi(v);
    else if (!strcmp(o, "--timeout"))
      opt_timeout = atof(v);
    else
      usage();
    i++;
  }
  if (!strcmp(opt_mode, "each"))
    opt_each = 1;
  else if (strcmp(opt_mode, "coalesce"))
    usage();
  if (opt_n < 1 || opt_rate <= 0 || opt_duration <= 0 || opt_warmup < 0 ||
      opt_timeout <= 0)
    usage();

  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 &&
      rl.rlim_cur < (rlim_t)(2 * opt_n + 64)) {
    rl.rlim_cur = rl.rlim_max < (rlim_t)(2 * opt_n + 64)
                      ? rl.rlim_max
                      : (rlim_t)(2 * opt_n + 64);
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  n_warm = (uint64_t)(opt_warmup * opt_rate + 0.5);
  n_meas = (uint64_t)(opt_duration * opt_rate + 0.5);
  if (n_meas == 0) usage();
  lat = malloc(sizeof *lat * n_meas * (uint64_t)opt_n);
  if (!lat) die("malloc latencies");
  connect_all();

  pthread_t cs, ss;
  int rc;
  t0 = now_ns() + 200000000ull; /* both threads are up and pinned by then */
  if ((rc = pthread_create(&cs, NULL, client_main, NULL)) != 0 ||
      (rc = pthread_getcpuclockid(cs, &client_clock)) != 0 ||
      (rc = pthread_create(&ss, NULL, server_main, NULL)) != 0) {
    errno = rc;
    die("pthread");
  }
  pthread_join(ss, NULL);
  pthread_join(cs, NULL);

  first_due_meas = due_ns(n_warm);
  uint64_t expected = n_meas * (uint64_t)opt_n;
  qsort(lat, n_lat, sizeof *lat, cmp_u64);
  double span = n_lat && last_meas_rx > first_due_meas
                    ? (double)(last_meas_rx - first_due_meas) / 1e9
                    : 0;
  double sspan = (double)srv.span_ns;
  double tick_ns = 1e9 / (double)sysconf(_SC_CLK_TCK);
  printf("{\"mode\":\"%s\",\"n\":%d,\"rate\":%.0f,\"duration_s\":%.1f,"
         "\"busy_client\":%s,\"events\":%llu,\"deliveries\":%llu,"
         "\"deliveries_per_s\":%.0f,\"loss\":%lld,"
         "\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,"
         "\"server_cpu_us_per_delivery\":%.3f,\"server_cpu_us_per_write\":%.3f,"
         "\"frames_per_write\":%.2f,\"server_cpu_share\":%.3f,"
         "\"server_sys_share_of_cpu\":%.3f,\"server_stalls\":%llu,"
         "\"server_turns\":%llu,\"server_lag_mean_us\":%.1f,"
         "\"server_lag_max_us\":%.1f,\"client_cpu_share\":%.3f,"
         "\"server_core_busy\":%.3f,\"server_core_softirq\":%.3f,"
         "\"server_core_us_per_delivery\":%.3f,\"client_core_busy\":%.3f,"
         "\"steal\":%.3f}\n",
         opt_mode, opt_n, opt_rate, opt_duration, opt_busy ? "true" : "false",
         (unsigned long long)n_meas, (unsigned long long)n_lat,
         span > 0 ? (double)n_lat / span : 0,
         (long long)expected - (long long)n_lat, pct_us(0.50), pct_us(0.99),
         pct_us(0.999), pct_us(1.0),
         srv.frames ? (double)srv.cpu_ns / 1000.0 / (double)srv.frames : 0,
         srv.writes ? (double)srv.cpu_ns / 1000.0 / (double)srv.writes : 0,
         srv.writes ? (double)srv.frames / (double)srv.writes : 0,
         sspan > 0 ? (double)srv.cpu_ns / sspan : 0,
         srv.user_us + srv.sys_us
             ? (double)srv.sys_us / (double)(srv.user_us + srv.sys_us)
             : 0,
         (unsigned long long)srv.stalls, (unsigned long long)srv.turns,
         srv.turns ? (double)srv.lag_sum / 1000.0 / (double)srv.turns : 0,
         (double)srv.lag_max / 1000.0,
         sspan > 0 ? (double)srv.client_cpu_ns / sspan : 0,
         sspan > 0 ? (double)srv.core_busy[0] * tick_ns / sspan : 0,
         sspan > 0 ? (double)srv.core_soft[0] * tick_ns / sspan : 0,
         srv.frames
             ? (double)srv.core_busy[0] * tick_ns / 1000.0 / (double)srv.frames
             : 0,
         sspan > 0 ? (double)srv.core_busy[1] * tick_ns / sspan : 0,
         sspan > 0 ? (double)(srv.core_steal[0] + srv.core_steal[1]) * tick_ns /
                         2 / sspan
                   : 0);
  free(lat);
  if (n_lat != expected)
    fprintf(stderr, "mw_floor: %lld of %llu measured deliveries missing\n",
            (long long)expected - (long long)n_lat,
            (unsigned long long)expected);
  return n_lat == expected ? 0 : 1;
}
