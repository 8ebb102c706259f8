/* mw_loadgen: WebSocket/SSE load for moonwire and its peers
 * (docs/benchmarks.md).
 *
 * One thread, one epoll set, no library beyond libc. Four modes:
 *
 * fan-out (the default):
 *  1. opens --subs WebSocket subscribers to ws://HOST:PORT/ws, at most
 *     --ramp of them handshaking at a time; each subscribes to --topic and
 *     waits for its ack (which carries the topic's current seq);
 *  2. one HTTP/1.1 keep-alive connection POSTs --events events to
 *     /api/publish, pipelined up to --window requests in flight (or paced at
 *     --rate events/s), data {"n":i,"ts":<CLOCK_MONOTONIC ns>,"pad":"..."}
 *     (--pad bytes of data in all, plus "tenant_id" with --tenants);
 *  3. every subscriber checks each event: seq = base + n + 1, n increasing
 *     without gaps or duplicates (with --tenants K, connection c holds token
 *     t<c%K> and must see exactly the events with n%K == c%K), and records the
 *     publish -> deliver latency from ts.
 *  It stops when every expected delivery arrived, when nothing arrived for
 *  --drain seconds after the last publish was answered, or at --deadline.
 *
 * stepped (--rates R1,R2,.. --step-s S): the publish phase is a series of
 *  paced steps, R_k events/s for S seconds each. After each step the load
 *  generator waits until that step's deliveries have all arrived (at most
 *  --step-drain seconds; if they have not, the server is behind and no
 *  further step runs) and records the step alone: deliveries/s, server and
 *  load generator CPU, latency percentiles.
 *
 * many topics (--group G, moonwire and nchan): subscriber i subscribes to two
 *  topics, its personal one TOPIC-u<i> and its group's TOPIC-g<i/G>. Events
 *  alternate: even events go to a personal topic (round robin over the
 *  subscribers: 1 delivery), odd ones to a group topic (round robin over the
 *  groups: G deliveries). The data carries "tk" (0 personal, 1 group), "tid"
 *  (the topic's number) and n counted per topic; every subscriber checks
 *  both of its topics separately (order, gaps, duplicates, foreign topics).
 *  With --target fastapi (one room per socket, the tutorial's model) each
 *  subscriber is two sockets: connections 0..N-1 hold the personal rooms and
 *  N..2N-1 the group rooms.
 *
 * idle (--idle): opens the --subs subscribers (WebSocket, or SSE with
 *  --transport sse) and nothing else; waits until the server's RSS is
 *  stable, reports RSS before connecting and after, per connection, then
 *  holds them --hold seconds and exits.
 *
 * churn (--churn-rates R1,R2,.. --step-s S): --subs idle subscribers stay
 *  connected on TOPIC; then, step by step, R_k new connections per second
 *  each connect, handshake, subscribe to TOPIC-churn, wait for one event
 *  (the publisher publishes to TOPIC-churn at --churn-pub-rate) and close.
 *  Per step: cycles completed per second, handshake latency (connect start
 *  -> subscribe ack; nchan and fastapi: -> the 101 answer, which is their
 *  subscription) and cycle latency (-> the event), server CPU per cycle.
 *  RSS is read when the idle subscribers are in (baseline) and again, once
 *  stable, after the last step.
 *
 * --target nchan drives nginx + nchan (bench/peers/nchan.conf) instead:
 * subscribers open ws://HOST:PORT/sub/TOPIC (no subscribe message: the
 * 101 answer is the subscription; two topics: /msub/A,B, nchan's channel
 * multiplexing), the publisher POSTs the bare data object to /pub/TOPIC (201
 * or 202 is success), and each text frame is the published body, so only n
 * (order, gaps, duplicates) and ts (latency) are checked; there is no seq.
 * SSE subscribers GET /sub/TOPIC with Accept: text/event-stream. Before
 * publishing it polls GET /pub/TOPIC on the publishing node until the server
 * reports every subscriber (at most 10 s).
 * --target fastapi drives bench/peers/fastapi_server.py the same way:
 * ws://HOST:PORT/ws/ROOM, POST /pub/ROOM (200 is success), GET /pub/ROOM for
 * the subscriber count; frames are the published body.
 * --pub-port publishes to another node than the subscribers' --port (two
 * nodes sharing one Redis). --server-pid takes a comma-separated list (all
 * the server processes: both nodes, nginx master and worker); their CPU time
 * and RSS are summed. --aux-pid (same form) is measured separately (Redis).
 * --src-addrs K spreads the client sockets over the source addresses
 * 127.0.0.2 .. 127.0.0.(K+1) (each source address has its own ephemeral
 * ports: past ~28,000 sockets to one server port, or with many TIME_WAITs
 * from churn, one source address runs out).
 *
 * With --server-pid it reads the server's CPU time (utime+stime) and RSS
 * from /proc; its own CPU time comes from getrusage, so its share of the
 * machine is visible in every mode.
 *
 * --overload 1 (moonwire fan-out on one topic): a 503 or 429 answer is the
 * server pushing back, not an error: the event is counted as refused and
 * owed to nobody, the publisher waits out Retry-After (1 s if absent, at
 * most 5), and the run passes when every accepted event reached every
 * subscriber in order (seq is checked on the publish answers: one per
 * accepted publish).
 *
 * Client frames are masked (RFC 6455 §5.3); server frames must not be.
 * Exit status: 0 when every expected event arrived once, in order, and every
 * publish succeeded (idle: every subscriber connected; churn: no failed
 * cycle); 1 otherwise (loss, errors, deadline); 2 on bad usage. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24 /* Linux >= 4.2 */
#endif

#define MAX_SAMPLES (8u << 20) /* latency samples kept (then strided) */
#define SUB_BUF 16384          /* fan-out subscribers' first read buffer */
#define IDLE_BUF 2048          /* idle/churn connections' (grows if needed) */
#define PUB_BUF 65536
#define MAX_STEPS 16

enum { ST_CONNECTING, ST_HANDSHAKE, ST_SUBSCRIBING, ST_READY, ST_CLOSED };
enum { K_SUB, K_PUB };
enum { T_MOONWIRE, T_NCHAN, T_FASTAPI };
enum { TR_WS, TR_SSE };
enum { M_FANOUT, M_IDLE, M_CHURN };
#define MAX_PIDS 8

typedef struct conn {
  int fd;
  int kind;
  int state;
  int idx;
  int tenant;
  int churn;       /* a churn connection (one cycle, then closed) */
  int has[2];      /* topics held: [0] personal (or the one topic), [1] group */
  int tid[2];      /* their numbers (--group) */
  uint64_t t_open; /* connect() time, ns */
  char *buf;
  size_t len, cap;
  /* subscriber */
  int64_t next_n[2]; /* the next n expected, per topic held */
  uint64_t base[2];  /* topic seq at subscribe time (from the ack) */
  uint64_t ok;       /* events received in order */
  uint64_t dups;     /* n below what was expected (duplicate or reordered) */
  uint64_t gaps;     /* events skipped */
  uint64_t seq_bad;  /* seq != base + n + 1 */
  uint64_t foreign;  /* another tenant's (or topic's) event */
  uint64_t expected; /* events this connection should receive */
} conn_t;

static struct {
  const char *host;
  int port;
  int subs;
  int64_t events;
  int window;
  double rate;
  int ramp;
  int tenants;
  int pad;
  int server_pid;
  int target;
  int pub_port;
  const char *json_path;
  const char *topic;
  double deadline_s;
  double drain_s;
  int quiet;
  int mode;
  int transport;
  int group;     /* --group G: personal + group topics (0: one topic) */
  double step_s; /* --step-s */
  double step_drain_s;
  double hold_s; /* --idle: hold after the report is ready */
  double settle_max_s;
  int src_addrs;
  double churn_pub_rate;
  int churn_max; /* churn connections in flight at most */
  int overload;  /* --overload 1: a 503/429 is push-back, not an error */
} opt = {"127.0.0.1", 0, 1000, 2000,    32,  0,   200,  0,        100,   0,
         T_MOONWIRE,  0, NULL, "bench", 120, 5,   0,    M_FANOUT, TR_WS, 0,
         5,           5, 0,    20,      0,   200, 4000, 0};

static double steps_rate[MAX_STEPS];
static int n_steps;

static int server_pids[MAX_PIDS], n_server_pids;
static int aux_pids[MAX_PIDS], n_aux_pids;

static int ep;
static conn_t *subs; /* the steady subscribers' connections */
static int n_conns;  /* how many (2 x --subs for fastapi with --group) */
static int n_groups; /* --group: ceil(subs / group) */
static conn_t pub;
static struct sockaddr_in addr, pub_addr;
static uint64_t t_deadline;
static uint32_t src_counter;

/* progress */
static int n_connecting, n_ready, n_started, n_failed_subs;
static char first_error[256];
static uint64_t deliveries, expected_total, last_delivery_ns;
static uint64_t expected_queued; /* deliveries the events sent so far owe */
static int64_t sent, answered, pub_ok, pub_err;
static uint64_t pub_base = UINT64_MAX; /* topic seq before the first publish */
static uint64_t pub_seq_bad;
static uint64_t pub_no_subs; /* nchan: 202 (no subscriber on that node) */
/* --overload: publishes refused with 503/429 (not stored, owed nowhere),
 * and the end of the pause their Retry-After asked for */
static int64_t pub_refused;
static uint64_t pub_pause_until;
/* --overload: when each event's 200 was read (0: not yet), and the
 * accepted -> delivered latency in µs (a delivery read before its answer
 * counts 0) */
static uint64_t *acc_ns;
static uint32_t *acc_lat;
static size_t n_acc_lat, acc_lat_cap;
static long peer_subs_seen = -1;
static uint64_t t_pub_start, t_pub_done;
static int publishing;
static int64_t *topic_n[2]; /* --group: next n per personal / group topic */

/* pacing: events sent before the current pace started, and when */
static int64_t pace_sent0;
static uint64_t pace_t0;

/* latency samples (ns) */
static uint32_t *lat; /* in units of 100 ns: up to 429 s */
static size_t nlat, lat_cap;
static uint64_t lat_stride = 1, lat_seen;
static uint64_t lat_over; /* samples above 429 s, clamped */

/* churn */
static conn_t *churn; /* --churn-max slots */
static int *churn_free, n_churn_free;
static uint64_t churn_opened, churn_done, churn_failed, churn_skipped;
static uint64_t churn_last_done_ns;
typedef struct samples {
  uint32_t *v; /* 100 ns units */
  size_t n, cap;
} samples_t;
static samples_t hs_lat, cyc_lat;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void note_error(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static void note_error(const char *fmt, ...) {
  if (first_error[0]) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(first_error, sizeof first_error, fmt, ap);
  va_end(ap);
  if (!opt.quiet) fprintf(stderr, "mw_loadgen: %s\n", first_error);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "mw_loadgen: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(2);
}

static void *xmalloc(size_t n) {
  void *p = malloc(n);
  if (!p) die("out of memory (%zu bytes)", n);
  return p;
}

static void samples_push(samples_t *s, uint64_t ns) {
  if (s->n == s->cap) {
    s->cap = s->cap ? s->cap * 2 : 4096;
    s->v = realloc(s->v, s->cap * sizeof *s->v);
    if (!s->v) die("out of memory");
  }
  uint64_t v = ns / 100;
  s->v[s->n++] = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* Percentile q of v[from, n) in µs; sorts that segment in place. */
static void seg_sort(uint32_t *v, size_t from, size_t n) {
  if (n > from) qsort(v + from, n - from, sizeof *v, cmp_u32);
}
static double seg_pct(const uint32_t *v, size_t from, size_t n, double q) {
  if (n <= from) return 0;
  size_t i = from + (size_t)(q * (double)(n - from - 1) + 0.5);
  return v[i] / 10.0;
}

/* ---- /proc ---- */

typedef struct pstat {
  double cpu_s, user_s, sys_s;
  long rss_kb, hwm_kb;
  int ok;
} pstat_t;

static pstat_t proc_read(int pid) {
  pstat_t st = {0, 0, 0, 0, 0, 0};
  if (pid <= 0) return st;
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return st;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *p = strrchr(buf, ')');
  if (!p) return st;
  /* fields after the comm: state is field 3; utime 14, stime 15. */
  unsigned long long ut = 0, stt = 0;
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
             &ut, &stt) != 2)
    return st;
  double tck = (double)sysconf(_SC_CLK_TCK);
  st.user_s = (double)ut / tck;
  st.sys_s = (double)stt / tck;
  st.cpu_s = st.user_s + st.sys_s;
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  if ((f = fopen(path, "r"))) {
    char line[256];
    while (fgets(line, sizeof line, f)) {
      if (!strncmp(line, "VmRSS:", 6)) st.rss_kb = strtol(line + 6, NULL, 10);
      if (!strncmp(line, "VmHWM:", 6)) st.hwm_kb = strtol(line + 6, NULL, 10);
    }
    fclose(f);
  }
  st.ok = 1;
  return st;
}

/* The sum over several processes (ok only if every one was readable). */
static pstat_t procs_read(const int *pids, int n) {
  pstat_t sum = {0, 0, 0, 0, 0, n > 0};
  for (int i = 0; i < n; i++) {
    pstat_t st = proc_read(pids[i]);
    if (!st.ok) sum.ok = 0;
    sum.cpu_s += st.cpu_s;
    sum.user_s += st.user_s;
    sum.sys_s += st.sys_s;
    sum.rss_kb += st.rss_kb;
    sum.hwm_kb += st.hwm_kb;
  }
  return sum;
}

/* "PID[,PID...]" -> pids; returns the count (exits on bad input). */
static int parse_pids(const char *v, int *pids) {
  int n = 0;
  while (*v) {
    char *end;
    long pid = strtol(v, &end, 10);
    if (end == v || pid <= 0 || pid > INT32_MAX || n == MAX_PIDS ||
        (*end && *end != ','))
      die("bad pid list '%s' (at most %d comma-separated pids)", v, MAX_PIDS);
    pids[n++] = (int)pid;
    v = *end ? end + 1 : end;
  }
  return n;
}

/* "R1,R2,..." -> rates (events or connections per second); the count. */
static int parse_rates(const char *v, double *rates) {
  int n = 0;
  while (*v) {
    char *end;
    double r = strtod(v, &end);
    if (end == v || r <= 0 || n == MAX_STEPS || (*end && *end != ','))
      die("bad rate list '%s' (at most %d comma-separated rates > 0)", v,
          MAX_STEPS);
    rates[n++] = r;
    v = *end ? end + 1 : end;
  }
  return n;
}

static double self_cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* ---- sockets ---- */

static void conn_close(conn_t *c) {
  if (c->fd >= 0) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
  }
  c->fd = -1;
  c->state = ST_CLOSED;
}

/* With --src-addrs K, client sockets (not the publisher) take their source
 * address in turn from 127.0.0.2 .. 127.0.0.(K+1); the port is chosen at
 * connect() (IP_BIND_ADDRESS_NO_PORT), per source address. */
static int bind_source(int fd) {
  if (opt.src_addrs <= 1) return 0;
  struct sockaddr_in src;
  memset(&src, 0, sizeof src);
  src.sin_family = AF_INET;
  src.sin_addr.s_addr =
      htonl(0x7f000002u + src_counter++ % (uint32_t)opt.src_addrs);
  int one = 1;
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  return bind(fd, (struct sockaddr *)&src, sizeof src) < 0 ? -errno : 0;
}

static int conn_open(conn_t *c, const struct sockaddr_in *to, int spread) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int rc = spread ? bind_source(fd) : 0;
  if (rc) {
    close(fd);
    return rc;
  }
  c->t_open = now_ns();
  if (connect(fd, (const struct sockaddr *)to, sizeof *to) < 0 &&
      errno != EINPROGRESS) {
    int e = errno;
    close(fd);
    return -e;
  }
  c->fd = fd;
  c->state = ST_CONNECTING;
  c->len = 0;
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
    int e = errno;
    close(fd);
    c->fd = -1;
    return -e;
  }
  return 0;
}

/* Writes all of `len` bytes (small control messages on an idle socket). */
static int write_all(int fd, const void *p, size_t len) {
  const char *b = p;
  while (len) {
    ssize_t n = write(fd, b, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
        continue;
      }
      return -1;
    }
    b += n;
    len -= (size_t)n;
  }
  return 0;
}

static uint32_t rng_state = 0x9e3779b9u;
static uint32_t rng(void) {
  uint32_t x = rng_state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return rng_state = x;
}

/* A masked client frame. */
static int ws_send(conn_t *c, int opcode, const void *payload, size_t len) {
  uint8_t frame[14 + 512];
  if (len > 512) return -1;
  size_t h = 0;
  frame[h++] = (uint8_t)(0x80 | opcode);
  if (len < 126) {
    frame[h++] = (uint8_t)(0x80 | len);
  } else {
    frame[h++] = 0x80 | 126;
    frame[h++] = (uint8_t)(len >> 8);
    frame[h++] = (uint8_t)len;
  }
  uint32_t m = rng();
  uint8_t mask[4] = {(uint8_t)m, (uint8_t)(m >> 8), (uint8_t)(m >> 16),
                     (uint8_t)(m >> 24)};
  memcpy(frame + h, mask, 4);
  h += 4;
  const uint8_t *pl = payload;
  for (size_t i = 0; i < len; i++)
    frame[h + i] = pl[i] ^ mask[i & 3];
  return write_all(c->fd, frame, h + len);
}

/* ---- topics ---- */

/* The name of topic `k` (0: personal / the one topic, 1: group) number
 * `id`; a churn connection's topic is TOPIC-churn. */
static void topic_name(char *out, size_t cap, int k, int id) {
  if (!opt.group)
    snprintf(out, cap, "%s", opt.topic);
  else
    snprintf(out, cap, "%s-%c%d", opt.topic, k ? 'g' : 'u', id);
}

/* The comma-separated topics connection c holds (or TOPIC-churn). */
static void conn_topics(const conn_t *c, char *out, size_t cap) {
  if (c->churn) {
    snprintf(out, cap, "%s-churn", opt.topic);
    return;
  }
  char a[256], b[256];
  out[0] = '\0';
  if (c->has[0]) topic_name(a, sizeof a, 0, c->tid[0]);
  if (c->has[1]) topic_name(b, sizeof b, 1, c->tid[1]);
  if (c->has[0] && c->has[1])
    snprintf(out, cap, "%s,%s", a, b);
  else
    snprintf(out, cap, "%s", c->has[0] ? a : b);
}

/* ---- subscribers ---- */

static void churn_release(conn_t *c);

static void sub_fail(conn_t *c, const char *why) {
  if (c->churn) {
    note_error("churn connection: %s", why);
    churn_failed++;
    conn_close(c);
    churn_release(c);
    return;
  }
  note_error("subscriber %d: %s", c->idx, why);
  if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE ||
      c->state == ST_SUBSCRIBING) {
    n_connecting--;
    n_failed_subs++;
  }
  conn_close(c);
}

/* The subscription is in place (ack, 101, or the SSE stream's first id). */
static void sub_ready(conn_t *c, uint64_t now) {
  c->state = ST_READY;
  if (c->churn) {
    samples_push(&hs_lat, now - c->t_open);
    return;
  }
  n_connecting--;
  n_ready++;
}

static int sub_start(conn_t *c) {
  int rc = conn_open(c, &addr, 1);
  if (rc) {
    note_error("subscriber %d: connect: %s", c->idx, strerror(-rc));
    n_failed_subs++;
    return -1;
  }
  n_connecting++;
  n_started++;
  return 0;
}

static void sub_send_handshake(conn_t *c) {
  int err = 0;
  socklen_t el = sizeof err;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
  if (err) {
    char m[128];
    snprintf(m, sizeof m, "connect: %s", strerror(err));
    sub_fail(c, m);
    return;
  }
  char req[1024];
  char path[600], topics[520];
  conn_topics(c, topics, sizeof topics);
  int sse = opt.transport == TR_SSE && !c->churn;
  if (opt.target == T_NCHAN)
    snprintf(path, sizeof path, "/%s/%s", strchr(topics, ',') ? "msub" : "sub",
             topics);
  else if (opt.target == T_FASTAPI)
    snprintf(path, sizeof path, "/ws/%s", topics);
  else if (sse)
    snprintf(path, sizeof path, "/sse?topics=%s", topics);
  else if (opt.tenants > 0)
    snprintf(path, sizeof path, "/ws?token=t%d", c->tenant);
  else
    snprintf(path, sizeof path, "/ws");
  int n;
  if (sse)
    n = snprintf(
        req, sizeof req,
        "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n\r\n",
        path, opt.host, opt.port);
  else
    n = snprintf(req, sizeof req,
                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n",
                 path, opt.host, opt.port);
  if (write_all(c->fd, req, (size_t)n)) {
    sub_fail(c, "write handshake failed");
    return;
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
  c->state = ST_HANDSHAKE;
}

/* The unsigned integer after `key` in [p, p+len), or UINT64_MAX. */
static uint64_t num_after(const char *p, size_t len, const char *key,
                          size_t klen) {
  const char *k = memmem(p, len, key, klen);
  if (!k) return UINT64_MAX;
  const char *d = k + klen, *end = p + len;
  if (d >= end || *d < '0' || *d > '9') return UINT64_MAX;
  uint64_t v = 0;
  while (d < end && *d >= '0' && *d <= '9')
    v = v * 10 + (uint64_t)(*d++ - '0');
  return v;
}

#define LIT(s) s, sizeof(s) - 1

static void record_latency(uint64_t ns) {
  lat_seen++;
  if (lat_stride > 1 && lat_seen % lat_stride) return;
  if (nlat >= lat_cap) return;
  uint64_t v = ns / 100;
  if (v > UINT32_MAX) {
    lat_over++;
    v = UINT32_MAX;
  }
  lat[nlat++] = (uint32_t)v;
}

/* A churn connection got its event: the cycle is complete; close it (a
 * close frame, then the socket) and free its slot. */
static void churn_complete(conn_t *c, uint64_t now) {
  samples_push(&cyc_lat, now - c->t_open);
  churn_done++;
  churn_last_done_ns = now;
  uint8_t code[2] = {0x03, 0xe8}; /* 1000 */
  ws_send(c, 8, code, 2);
  conn_close(c);
  churn_release(c);
}

static void sub_event(conn_t *c, const char *p, size_t len, uint64_t now) {
  if (c->churn) { /* any event will do: it started mid-stream */
    churn_complete(c, now);
    return;
  }
  /* nchan and fastapi frames are the published data itself: no envelope,
   * no seq. */
  int has_seq = opt.target == T_MOONWIRE;
  uint64_t seq = has_seq ? num_after(p, len, LIT("\"seq\":")) : 0;
  uint64_t n = num_after(p, len, LIT("\"n\":"));
  uint64_t ts = num_after(p, len, LIT("\"ts\":"));
  uint64_t k = 0;
  if (opt.group) {
    k = num_after(p, len, LIT("\"tk\":"));
    uint64_t id = num_after(p, len, LIT("\"tid\":"));
    if (k > 1 || !c->has[k] || id != (uint64_t)c->tid[k]) {
      c->foreign++;
      return;
    }
  }
  if (seq == UINT64_MAX || n == UINT64_MAX || ts == UINT64_MAX) {
    note_error("subscriber %d: unexpected event: %.*s", c->idx,
               (int)(len > 160 ? 160 : len), p);
    c->seq_bad++;
    return;
  }
  /* --overload: refused events leave holes in n, so seq is checked by the
   * publisher (one per accepted publish) and n only for order here */
  if (has_seq && !opt.overload && seq != c->base[k] + n + 1) c->seq_bad++;
  int step = opt.tenants > 1 ? opt.tenants : 1;
  if (opt.tenants > 1 && (int)(n % (uint64_t)opt.tenants) != c->tenant) {
    c->foreign++;
    return;
  }
  if ((int64_t)n < c->next_n[k]) {
    c->dups++;
    return;
  }
  if ((int64_t)n > c->next_n[k] && !opt.overload)
    c->gaps += (uint64_t)(((int64_t)n - c->next_n[k]) / step);
  c->next_n[k] = (int64_t)n + step;
  c->ok++;
  deliveries++;
  last_delivery_ns = now;
  record_latency(now > ts ? now - ts : 0);
  if (acc_ns && n < (uint64_t)opt.events && n_acc_lat < acc_lat_cap) {
    uint64_t a = acc_ns[n];
    acc_lat[n_acc_lat++] = (uint32_t)(a && now > a ? (now - a) / 1000 : 0);
  }
}

/* Reads each held topic's seq from a subscribe ack:
 * {"type":"ack","id":"s","data":{"T":{"seq":N,...},...}}. */
static void ack_bases(conn_t *c, const char *p, size_t len) {
  for (int k = 0; k < 2; k++) {
    if (!c->has[k]) continue;
    char key[300], name[256];
    topic_name(name, sizeof name, k, c->tid[k]);
    int kl = snprintf(key, sizeof key, "\"%s\":{", name);
    const char *at = memmem(p, len, key, (size_t)kl);
    uint64_t seq = at ? num_after(at, len - (size_t)(at - p), LIT("\"seq\":"))
                      : num_after(p, len, LIT("\"seq\":"));
    c->base[k] = seq == UINT64_MAX ? 0 : seq;
  }
}

/* Handles one complete server frame; returns -1 when the connection ended. */
static int sub_frame(conn_t *c, int opcode, const char *p, size_t len,
                     uint64_t now) {
  switch (opcode) {
  case 1: /* text */
  case 2:
    if (c->state == ST_READY) {
      if (opt.target != T_MOONWIRE) {
        sub_event(c, p, len, now);
        return c->fd < 0 ? -1 : 0;
      }
      if (len > 16 && !memcmp(p, "{\"type\":\"event\"", 15)) {
        sub_event(c, p, len, now);
      } else if (memmem(p, len, LIT("\"type\":\"event\""))) {
        sub_event(c, p, len, now);
      }
      return c->fd < 0 ? -1 : 0;
    }
    if (c->state == ST_SUBSCRIBING) {
      if (memmem(p, len, LIT("\"type\":\"ack\""))) {
        ack_bases(c, p, len);
        sub_ready(c, now);
        return 0;
      }
      char m[200];
      snprintf(m, sizeof m, "subscribe answered: %.*s",
               (int)(len > 150 ? 150 : len), p);
      sub_fail(c, m);
      return -1;
    }
    return 0;
  case 8: { /* close */
    char m[160];
    unsigned code =
        len >= 2 ? ((unsigned)(uint8_t)p[0] << 8 | (uint8_t)p[1]) : 0;
    snprintf(m, sizeof m, "server closed the WebSocket (%u %.*s)", code,
             (int)(len > 2 ? (len - 2 > 100 ? 100 : len - 2) : 0), p + 2);
    sub_fail(c, m);
    return -1;
  }
  case 9: /* ping */
    ws_send(c, 10, p, len);
    return 0;
  default:
    return 0;
  }
}

static void sub_parse_frames(conn_t *c, uint64_t now) {
  size_t off = 0;
  while (c->fd >= 0) {
    const uint8_t *b = (const uint8_t *)c->buf + off;
    size_t avail = c->len - off;
    if (avail < 2) break;
    if (b[1] & 0x80) {
      sub_fail(c, "masked server frame");
      return;
    }
    size_t plen = b[1] & 0x7f, h = 2;
    if (plen == 126) {
      if (avail < 4) break;
      plen = (size_t)b[2] << 8 | b[3];
      h = 4;
    } else if (plen == 127) {
      if (avail < 10) break;
      plen = 0;
      for (int i = 0; i < 8; i++)
        plen = plen << 8 | b[2 + i];
      h = 10;
    }
    if (avail < h + plen) {
      if (h + plen > c->cap) {
        c->cap = h + plen + 1024;
        memmove(c->buf, c->buf + off, avail);
        c->buf = realloc(c->buf, c->cap);
        if (!c->buf) die("out of memory");
        c->len = avail;
        return;
      }
      break;
    }
    if (!(b[0] & 0x80)) {
      sub_fail(c, "fragmented server frame (not expected)");
      return;
    }
    if (sub_frame(c, b[0] & 0x0f, (const char *)b + h, plen, now) < 0) return;
    off += h + plen;
  }
  if (c->fd < 0) return;
  if (off) {
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
  }
}

/* An SSE stream after its head: moonwire's subscriptions are in place with
 * the first "id:" line (sse.c: an id-only block follows them); nchan's
 * with the head itself. Idle streams only: what comes later is dropped. */
static void sse_data(conn_t *c, uint64_t now) {
  if (c->state == ST_SUBSCRIBING &&
      ((c->len >= 3 && !memcmp(c->buf, "id:", 3)) ||
       memmem(c->buf, c->len, "\nid:", 4) != NULL))
    sub_ready(c, now);
  /* keep the last 3 bytes: "\nid" may straddle two reads */
  if (c->len > 3) {
    memmove(c->buf, c->buf + c->len - 3, 3);
    c->len = 3;
  }
}

static void sub_readable(conn_t *c) {
  for (;;) {
    if (c->len == c->cap) {
      c->cap *= 2;
      c->buf = realloc(c->buf, c->cap);
      if (!c->buf) die("out of memory");
    }
    size_t room = c->cap - c->len;
    ssize_t n = read(c->fd, c->buf + c->len, room);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      char m[96];
      snprintf(m, sizeof m, "read: %s", strerror(errno));
      sub_fail(c, m);
      return;
    }
    if (n == 0) {
      sub_fail(c, "server closed the connection");
      return;
    }
    uint64_t now = now_ns();
    c->len += (size_t)n;
    int sse = opt.transport == TR_SSE && !c->churn;
    if (c->state == ST_HANDSHAKE) {
      char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
      if (!end) {
        if (c->len > 8192) sub_fail(c, "handshake answer too long");
        if (c->fd < 0) return;
        continue;
      }
      const char *want = sse ? "HTTP/1.1 200" : "HTTP/1.1 101";
      if (c->len < 12 || memcmp(c->buf, want, 12)) {
        char m[160];
        snprintf(m, sizeof m, "handshake refused: %.*s",
                 (int)(strcspn(c->buf, "\r\n") > 100 ? 100
                                                     : strcspn(c->buf, "\r\n")),
                 c->buf);
        sub_fail(c, m);
        return;
      }
      size_t hl = (size_t)(end + 4 - c->buf);
      memmove(c->buf, c->buf + hl, c->len - hl);
      c->len -= hl;
      if (sse) {
        c->state = ST_SUBSCRIBING;
        if (opt.target != T_MOONWIRE) sub_ready(c, now);
        sse_data(c, now);
        if ((size_t)n < room) return;
        continue;
      }
      if (opt.target != T_MOONWIRE) { /* subscribed by the upgrade itself */
        sub_ready(c, now);
        sub_parse_frames(c, now);
        if (c->fd < 0) return;
        if ((size_t)n < room) return;
        continue;
      }
      char msg[640], topics[520];
      conn_topics(c, topics, sizeof topics);
      char *comma = strchr(topics, ',');
      if (comma) *comma = '\0';
      int ml = comma
                   ? snprintf(msg, sizeof msg,
                              "{\"type\":\"subscribe\",\"id\":\"s\",\"topics\":"
                              "[\"%s\",\"%s\"]}",
                              topics, comma + 1)
                   : snprintf(msg, sizeof msg,
                              "{\"type\":\"subscribe\",\"id\":\"s\",\"topics\":"
                              "[\"%s\"]}",
                              topics);
      if (ws_send(c, 1, msg, (size_t)ml)) {
        sub_fail(c, "write subscribe failed");
        return;
      }
      c->state = ST_SUBSCRIBING;
    }
    if (sse)
      sse_data(c, now);
    else
      sub_parse_frames(c, now);
    if (c->fd < 0) return;
    /* A short read: the socket is drained (level-triggered, so anything
     * that arrives later comes back with the next epoll_wait). */
    if ((size_t)n < room) return;
  }
}

/* ---- churn connections ---- */

static void churn_release(conn_t *c) {
  c->state = ST_CLOSED;
  churn_free[n_churn_free++] = (int)(c - churn);
}

/* Opens one churn connection; 0 when no slot was free. */
static int churn_open(void) {
  if (!n_churn_free) {
    churn_skipped++;
    return 0;
  }
  conn_t *c = &churn[churn_free[--n_churn_free]];
  c->len = 0;
  int rc = conn_open(c, &addr, 1);
  churn_opened++;
  if (rc) {
    note_error("churn connection: connect: %s", strerror(-rc));
    churn_failed++;
    churn_release(c);
  }
  return 1;
}

/* ---- publisher ---- */

static char *pub_out;
static size_t pub_out_len, pub_out_off, pub_out_cap;
static char pad_str[4096];

/* --group: the topic of event i: (k, id). */
static void event_topic(int64_t i, int *k, int *id) {
  *k = (int)(i & 1);
  *id = (int)((i / 2) % (*k ? n_groups : opt.subs));
}

/* Credits the connections that must receive event i (at queue time) and
 * returns how many they are. */
static uint64_t event_owed(int64_t i, int credit) {
  if (opt.mode == M_CHURN) return 0; /* churn events: any churn connection */
  if (opt.group) {
    int k, id;
    event_topic(i, &k, &id);
    int off = opt.target == T_FASTAPI ? opt.subs : 0; /* group sockets */
    if (!k) {
      if (credit) subs[id].expected++;
      return 1;
    }
    int lo = id * opt.group, hi = lo + opt.group;
    if (hi > opt.subs) hi = opt.subs;
    if (credit)
      for (int j = lo; j < hi; j++)
        subs[off + j].expected++;
    return (uint64_t)(hi - lo);
  }
  uint64_t owed = 0;
  for (int j = 0; j < n_conns; j++) {
    if (opt.tenants > 1 && (int)(i % opt.tenants) != subs[j].tenant) continue;
    if (credit) subs[j].expected++;
    owed++;
  }
  return owed;
}

static void pub_queue_one(int64_t i) {
  char body[4096 + 512];
  char topic[300];
  uint64_t ts = now_ns();
  int bl;
  int64_t n = i;
  char extra[64] = "";
  if (opt.mode == M_CHURN) {
    snprintf(topic, sizeof topic, "%s-churn", opt.topic);
  } else if (opt.group) {
    int k, id;
    event_topic(i, &k, &id);
    topic_name(topic, sizeof topic, k, id);
    n = topic_n[k][id]++;
    snprintf(extra, sizeof extra, "\"tk\":%d,\"tid\":%d,", k, id);
  } else {
    snprintf(topic, sizeof topic, "%s", opt.topic);
  }
  expected_queued += event_owed(i, 1);
  if (opt.target != T_MOONWIRE) /* the body is the message */
    bl =
        snprintf(body, sizeof body, "{\"n\":%lld,\"ts\":%llu,%s\"pad\":\"%s\"}",
                 (long long)n, (unsigned long long)ts, extra, pad_str);
  else if (opt.tenants > 0)
    bl = snprintf(body, sizeof body,
                  "{\"topic\":\"%s\",\"event\":\"BENCH\",\"data\":{\"n\":%lld,"
                  "\"ts\":%llu,\"tenant_id\":\"t%lld\",\"pad\":\"%s\"}}",
                  topic, (long long)n, (unsigned long long)ts,
                  (long long)(i % opt.tenants), pad_str);
  else
    bl = snprintf(body, sizeof body,
                  "{\"topic\":\"%s\",\"event\":\"BENCH\",\"data\":{\"n\":%lld,"
                  "\"ts\":%llu,%s\"pad\":\"%s\"}}",
                  topic, (long long)n, (unsigned long long)ts, extra, pad_str);
  size_t need = pub_out_len + (size_t)bl + 512;
  if (need > pub_out_cap) {
    if (pub_out_off) {
      memmove(pub_out, pub_out + pub_out_off, pub_out_len - pub_out_off);
      pub_out_len -= pub_out_off;
      pub_out_off = 0;
      need = pub_out_len + (size_t)bl + 512;
    }
    if (need > pub_out_cap) {
      pub_out_cap = need * 2;
      pub_out = realloc(pub_out, pub_out_cap);
      if (!pub_out) die("out of memory");
    }
  }
  if (opt.target != T_MOONWIRE)
    pub_out_len += (size_t)sprintf(pub_out + pub_out_len,
                                   "POST /pub/%s HTTP/1.1\r\nHost: %s:%d\r\n"
                                   "Content-Type: application/json\r\n"
                                   "Content-Length: %d\r\n\r\n",
                                   topic, opt.host, opt.pub_port, bl);
  else
    pub_out_len +=
        (size_t)sprintf(pub_out + pub_out_len,
                        "POST /api/publish HTTP/1.1\r\nHost: %s:%d\r\n"
                        "Content-Type: application/json\r\n"
                        "Content-Length: %d\r\n\r\n",
                        opt.host, opt.pub_port, bl);
  memcpy(pub_out + pub_out_len, body, (size_t)bl);
  pub_out_len += (size_t)bl;
}

static void pub_flush(void) {
  while (pub_out_off < pub_out_len) {
    ssize_t n = write(pub.fd, pub_out + pub_out_off, pub_out_len - pub_out_off);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      note_error("publisher: write: %s", strerror(errno));
      conn_close(&pub);
      return;
    }
    pub_out_off += (size_t)n;
  }
  if (pub_out_off == pub_out_len) pub_out_off = pub_out_len = 0;
  uint32_t want = EPOLLIN | (pub_out_off < pub_out_len ? EPOLLOUT : 0);
  struct epoll_event ev = {.events = want, .data.ptr = &pub};
  epoll_ctl(ep, EPOLL_CTL_MOD, pub.fd, &ev);
}

/* Queues what the window and the pace allow (up to `limit` events in all),
 * then writes. */
static void pub_pump_to(uint64_t now, int64_t limit) {
  if (!publishing || pub.fd < 0) return;
  if (now < pub_pause_until) return; /* the server asked us to wait */
  int queued = 0;
  while (sent < limit && sent - answered < opt.window) {
    if (opt.rate > 0) {
      uint64_t due =
          pace_t0 + (uint64_t)((double)(sent - pace_sent0) * 1e9 / opt.rate);
      if (now < due) break;
    }
    pub_queue_one(sent++);
    queued = 1;
  }
  if (queued) pub_flush();
}

static int64_t pub_limit; /* events the current phase may send */
static void pub_pump(uint64_t now) {
  pub_pump_to(now, pub_limit);
}

/* When the next paced publish is due, in ms from now (at most `cap`). */
static int pace_timeout(uint64_t now, int cap) {
  if (opt.rate <= 0 || sent >= pub_limit || !publishing) return cap;
  uint64_t due =
      pace_t0 + (uint64_t)((double)(sent - pace_sent0) * 1e9 / opt.rate);
  /* rounded up: epoll's timeout is in ms, and 0 would spin until due */
  int t = due > now ? (int)((due - now + 999999) / 1000000) : 0;
  return t > cap ? cap : t;
}

static void pub_readable(void) {
  for (;;) {
    if (pub.len == pub.cap) {
      pub.cap *= 2;
      pub.buf = realloc(pub.buf, pub.cap);
      if (!pub.buf) die("out of memory");
    }
    ssize_t n = read(pub.fd, pub.buf + pub.len, pub.cap - pub.len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      note_error("publisher: read: %s", strerror(errno));
      conn_close(&pub);
      return;
    }
    if (n == 0) {
      note_error("publisher: server closed the connection after %lld answers",
                 (long long)answered);
      conn_close(&pub);
      return;
    }
    pub.len += (size_t)n;
    if ((size_t)n < pub.cap - (pub.len - (size_t)n)) break;
  }
  size_t off = 0;
  for (;;) {
    char *p = pub.buf + off;
    size_t avail = pub.len - off;
    char *end = memmem(p, avail, "\r\n\r\n", 4);
    if (!end) break;
    size_t hl = (size_t)(end + 4 - p);
    long clen = 0;
    for (char *l = memchr(p, '\n', hl); l && l < end;
         l = memchr(l + 1, '\n', (size_t)(end - l))) {
      if (!strncasecmp(l + 1, "content-length:", 15))
        clen = strtol(l + 16, NULL, 10);
    }
    if (avail < hl + (size_t)clen) break;
    int status = avail > 12 ? atoi(p + 9) : 0;
    const char *body = p + hl;
    if (opt.target == T_NCHAN && (status == 201 || status == 202)) {
      pub_ok++; /* 201 Created: delivered to subscribers; 202: none there */
      if (status == 202) pub_no_subs++;
    } else if (opt.target == T_FASTAPI && status == 200) {
      pub_ok++;
    } else if (status == 200 && opt.target == T_MOONWIRE) {
      pub_ok++;
      if (acc_ns && answered < opt.events) acc_ns[answered] = now_ns();
      /* one topic: its seq grows by one per accepted publish (--group and
       * churn publish to many topics: not checked here) */
      if (!opt.group && opt.mode == M_FANOUT) {
        uint64_t seq = num_after(body, (size_t)clen, LIT("\"seq\":"));
        if (pub_base == UINT64_MAX && seq != UINT64_MAX)
          pub_base = seq - (uint64_t)pub_ok;
        if (seq == UINT64_MAX || seq != pub_base + (uint64_t)pub_ok)
          pub_seq_bad++;
      }
    } else if (opt.overload && (status == 503 || status == 429)) {
      /* push-back: event `answered` was not accepted, so nobody is owed
       * it; wait as long as Retry-After says (1 s if absent, at most 5) */
      pub_refused++;
      expected_total -= event_owed(answered, 0);
      uint64_t wait_s = 1;
      for (char *l = memchr(p, '\n', hl); l && l < end;
           l = memchr(l + 1, '\n', (size_t)(end - l)))
        if (!strncasecmp(l + 1, "retry-after:", 12))
          wait_s = strtoull(l + 13, NULL, 10);
      if (wait_s > 5) wait_s = 5;
      uint64_t until = now_ns() + wait_s * 1000000000ull;
      if (until > pub_pause_until) pub_pause_until = until;
    } else {
      pub_err++;
      note_error("publish %lld: HTTP %d %.*s", (long long)answered, status,
                 (int)(clen > 120 ? 120 : clen), body);
    }
    answered++;
    off += hl + (size_t)clen;
  }
  if (off) {
    memmove(pub.buf, pub.buf + off, pub.len - off);
    pub.len -= off;
  }
  if (answered == opt.events && !t_pub_done) t_pub_done = now_ns();
  pub_pump(now_ns());
}

/* nchan / fastapi: the "active subscribers" of `topic` on the publishing
 * node (GET /pub/TOPIC, the channel info), or -1. Blocking, one short
 * request. */
static long peer_active_subscribers(const char *topic) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct timeval tv = {2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  long active = -1;
  char buf[2048];
  int n =
      snprintf(buf, sizeof buf,
               "GET /pub/%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/plain\r\n"
               "Connection: close\r\n\r\n",
               topic, opt.host, opt.pub_port);
  if (connect(fd, (struct sockaddr *)&pub_addr, sizeof pub_addr) == 0 &&
      write_all(fd, buf, (size_t)n) == 0) {
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 &&
           (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
      len += (size_t)r;
    buf[len] = '\0';
    const char *k = strstr(buf, "active subscribers: ");
    if (k)
      active = strtol(k + 20, NULL, 10);
    else if (len > 12 && !memcmp(buf + 9, "404", 3))
      active = 0; /* no channel yet */
  }
  close(fd);
  return active;
}

/* ---- the event loop ---- */

static struct epoll_event evs[512];

/* One epoll_wait and its events. */
static void pump_io(int timeout_ms) {
  int n = epoll_wait(ep, evs, 512, timeout_ms);
  for (int i = 0; i < n; i++) {
    conn_t *c = evs[i].data.ptr;
    if (c->fd < 0) continue;
    if (c == &pub) {
      if (evs[i].events & EPOLLOUT) pub_flush();
      if (pub.fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        pub_readable();
      continue;
    }
    if (c->state == ST_CONNECTING) {
      if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        sub_send_handshake(c);
      continue;
    }
    sub_readable(c);
  }
}

/* Waits (serving the sockets) until the servers' RSS is stable: four
 * readings 250 ms apart within 0.25 % (at least 64 kB) of each other, at
 * most --settle-max seconds. Returns the last reading. */
static pstat_t rss_settle(double *waited_s) {
  uint64_t t0 = now_ns(), until = t0 + (uint64_t)(opt.settle_max_s * 1e9);
  pstat_t prev = procs_read(server_pids, n_server_pids);
  int stable = 0;
  while (stable < 4 && now_ns() < until) {
    uint64_t tick = now_ns() + 250000000ull;
    while (now_ns() < tick)
      pump_io(50);
    pstat_t cur = procs_read(server_pids, n_server_pids);
    long d = cur.rss_kb - prev.rss_kb;
    long tol = prev.rss_kb / 400 > 64 ? prev.rss_kb / 400 : 64;
    stable = (d <= tol && d >= -tol) ? stable + 1 : 0;
    prev = cur;
  }
  if (waited_s) *waited_s = (double)(now_ns() - t0) / 1e9;
  return prev;
}

/* Connects the publisher (blocking on the loop until it is up). */
static void pub_connect(void) {
  int rc = conn_open(&pub, &pub_addr, 0);
  if (rc) die("publisher: connect: %s", strerror(-rc));
  for (;;) {
    int n = epoll_wait(ep, evs, 512, 1000);
    int got = 0;
    for (int i = 0; i < n; i++) {
      conn_t *c = evs[i].data.ptr;
      if (c == &pub)
        got = 1;
      else if (c->fd >= 0 && c->state != ST_CONNECTING)
        sub_readable(c);
    }
    if (got) break;
    if (now_ns() >= t_deadline) die("publisher: connect timed out");
  }
  int err = 0;
  socklen_t el = sizeof err;
  getsockopt(pub.fd, SOL_SOCKET, SO_ERROR, &err, &el);
  if (err) die("publisher: connect: %s", strerror(err));
  pub.state = ST_READY;
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &pub};
  epoll_ctl(ep, EPOLL_CTL_MOD, pub.fd, &ev);
}

static void json_str(FILE *out, const char *s) {
  fputc('"', out);
  for (const char *e = s; *e; e++) {
    if (*e == '"' || *e == '\\') fputc('\\', out);
    if ((unsigned char)*e < 0x20) continue;
    fputc(*e, out);
  }
  fputc('"', out);
}

static const char *target_name(void) {
  return opt.target == T_NCHAN     ? "nchan"
         : opt.target == T_FASTAPI ? "fastapi"
                                   : "moonwire";
}

/* ---- step records ---- */

typedef struct step_rec {
  double rate, wall_s, pub_s, server_cpu_s, server_sys_s, loadgen_cpu_s;
  uint64_t events, deliveries, owed;
  double p50, p90, p99, p999, max;
  int drained;
  /* churn */
  uint64_t opened, done, failed, skipped;
  double hs_p50, hs_p99, hs_p999, cyc_p50, cyc_p99;
  long rss_kb_end;
} step_rec_t;
static step_rec_t steps[MAX_STEPS];
static int steps_run;

static void step_json(FILE *out, const step_rec_t *s) {
  double srv_share =
      s->server_cpu_s + s->loadgen_cpu_s > 0
          ? s->loadgen_cpu_s / (s->server_cpu_s + s->loadgen_cpu_s)
          : 0;
  if (opt.mode == M_CHURN) {
    fprintf(
        out,
        "{\"rate\":%g,\"wall_s\":%.3f,\"opened\":%llu,\"completed\":%llu,"
        "\"failed\":%llu,\"skipped\":%llu,\"cycles_per_s\":%.1f,"
        "\"handshake_us\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f},"
        "\"cycle_us\":{\"p50\":%.1f,\"p99\":%.1f},\"server_cpu_s\":%.3f,"
        "\"server_cpu_us_per_cycle\":%.1f,\"server_busy\":%.3f,"
        "\"loadgen_cpu_s\":%.3f,\"loadgen_busy\":%.3f,"
        "\"loadgen_cpu_share\":%.3f,\"server_rss_kb_end\":%ld,\"drained\":%s}",
        s->rate, s->wall_s, (unsigned long long)s->opened,
        (unsigned long long)s->done, (unsigned long long)s->failed,
        (unsigned long long)s->skipped,
        s->wall_s > 0 ? (double)s->done / s->wall_s : 0, s->hs_p50, s->hs_p99,
        s->hs_p999, s->cyc_p50, s->cyc_p99, s->server_cpu_s,
        s->done ? s->server_cpu_s * 1e6 / (double)s->done : 0,
        s->wall_s > 0 ? s->server_cpu_s / s->wall_s : 0, s->loadgen_cpu_s,
        s->wall_s > 0 ? s->loadgen_cpu_s / s->wall_s : 0, srv_share,
        s->rss_kb_end, s->drained ? "true" : "false");
    return;
  }
  double dps = s->wall_s > 0 ? (double)s->deliveries / s->wall_s : 0;
  double busy = s->wall_s > 0 ? s->server_cpu_s / s->wall_s : 0;
  fprintf(
      out,
      "{\"rate\":%g,\"events\":%llu,\"deliveries\":%llu,\"owed\":%llu,"
      "\"wall_s\":%.3f,\"publish_s\":%.3f,\"events_per_s\":%.1f,"
      "\"deliveries_per_s\":%.1f,\"server_cpu_s\":%.3f,\"server_sys_s\":%.3f,"
      "\"server_busy\":%.3f,\"server_cpu_us_per_delivery\":%.3f,"
      "\"server_core_share_per_100k_per_s\":%.4f,\"loadgen_cpu_s\":%.3f,"
      "\"loadgen_busy\":%.3f,\"loadgen_cpu_share\":%.3f,"
      "\"latency_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,"
      "\"max\":%.1f},\"drained\":%s}",
      s->rate, (unsigned long long)s->events, (unsigned long long)s->deliveries,
      (unsigned long long)s->owed, s->wall_s, s->pub_s,
      s->pub_s > 0 ? (double)s->events / s->pub_s : 0, dps, s->server_cpu_s,
      s->server_sys_s, busy,
      s->deliveries ? s->server_cpu_s * 1e6 / (double)s->deliveries : 0,
      dps > 0 ? busy / (dps / 1e5) : 0, s->loadgen_cpu_s,
      s->wall_s > 0 ? s->loadgen_cpu_s / s->wall_s : 0, srv_share, s->p50,
      s->p90, s->p99, s->p999, s->max, s->drained ? "true" : "false");
}

static void usage(const char *argv0) {
  fprintf(
      stderr,
      "usage: %s --port P [--pub-port P] [--target moonwire|nchan|fastapi]\n"
      "  [--host 127.0.0.1] [--subs N] [--events M]\n"
      "  [--window W] [--rate EV_PER_S] [--ramp R] [--tenants K] [--pad "
      "BYTES]\n"
      "  [--topic T] [--server-pid PID[,PID..]] [--aux-pid PID[,PID..]]\n"
      "  [--deadline S] [--drain S] [--json FILE] [--quiet]\n"
      "  [--rates R1,R2.. [--step-s S] [--step-drain S]] [--group G]\n"
      "  [--overload 1]  (503/429 + Retry-After: pause, count, owe nothing)\n"
      "  [--idle [--transport ws|sse] [--hold S]] [--settle-max S]\n"
      "  [--churn-rates R1,R2.. [--step-s S] [--churn-pub-rate R]\n"
      "   [--churn-max N]] [--src-addrs K]\n",
      argv0);
  exit(2);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--quiet")) {
      opt.quiet = 1;
      continue;
    }
    if (!strcmp(a, "--idle")) {
      opt.mode = M_IDLE;
      continue;
    }
    if (!strcmp(a, "--help") || !v) usage(argv[0]);
    i++;
    if (!strcmp(a, "--port"))
      opt.port = atoi(v);
    else if (!strcmp(a, "--host"))
      opt.host = v;
    else if (!strcmp(a, "--subs"))
      opt.subs = atoi(v);
    else if (!strcmp(a, "--events"))
      opt.events = atoll(v);
    else if (!strcmp(a, "--window"))
      opt.window = atoi(v);
    else if (!strcmp(a, "--rate"))
      opt.rate = atof(v);
    else if (!strcmp(a, "--ramp"))
      opt.ramp = atoi(v);
    else if (!strcmp(a, "--tenants"))
      opt.tenants = atoi(v);
    else if (!strcmp(a, "--overload"))
      opt.overload = atoi(v);
    else if (!strcmp(a, "--pad"))
      opt.pad = atoi(v);
    else if (!strcmp(a, "--topic"))
      opt.topic = v;
    else if (!strcmp(a, "--server-pid"))
      n_server_pids = parse_pids(v, server_pids);
    else if (!strcmp(a, "--aux-pid"))
      n_aux_pids = parse_pids(v, aux_pids);
    else if (!strcmp(a, "--pub-port"))
      opt.pub_port = atoi(v);
    else if (!strcmp(a, "--target")) {
      if (!strcmp(v, "moonwire"))
        opt.target = T_MOONWIRE;
      else if (!strcmp(v, "nchan"))
        opt.target = T_NCHAN;
      else if (!strcmp(v, "fastapi"))
        opt.target = T_FASTAPI;
      else
        usage(argv[0]);
    } else if (!strcmp(a, "--transport")) {
      if (!strcmp(v, "ws"))
        opt.transport = TR_WS;
      else if (!strcmp(v, "sse"))
        opt.transport = TR_SSE;
      else
        usage(argv[0]);
    } else if (!strcmp(a, "--rates"))
      n_steps = parse_rates(v, steps_rate);
    else if (!strcmp(a, "--churn-rates")) {
      n_steps = parse_rates(v, steps_rate);
      opt.mode = M_CHURN;
    } else if (!strcmp(a, "--step-s"))
      opt.step_s = atof(v);
    else if (!strcmp(a, "--step-drain"))
      opt.step_drain_s = atof(v);
    else if (!strcmp(a, "--group"))
      opt.group = atoi(v);
    else if (!strcmp(a, "--hold"))
      opt.hold_s = atof(v);
    else if (!strcmp(a, "--settle-max"))
      opt.settle_max_s = atof(v);
    else if (!strcmp(a, "--src-addrs"))
      opt.src_addrs = atoi(v);
    else if (!strcmp(a, "--churn-pub-rate"))
      opt.churn_pub_rate = atof(v);
    else if (!strcmp(a, "--churn-max"))
      opt.churn_max = atoi(v);
    else if (!strcmp(a, "--deadline"))
      opt.deadline_s = atof(v);
    else if (!strcmp(a, "--drain"))
      opt.drain_s = atof(v);
    else if (!strcmp(a, "--json"))
      opt.json_path = v;
    else
      usage(argv[0]);
  }
  if (opt.port <= 0 || opt.port > 65535) usage(argv[0]);
  if (!opt.pub_port) opt.pub_port = opt.port;
  if (opt.pub_port <= 0 || opt.pub_port > 65535) usage(argv[0]);
  if (opt.target != T_MOONWIRE && opt.tenants > 0)
    die("--tenants is a moonwire policy feature (not with --target %s)",
        target_name());
  if (opt.transport == TR_SSE &&
      (opt.mode != M_IDLE || opt.target == T_FASTAPI))
    die("--transport sse: idle subscribers only (--idle), moonwire or nchan");
  if (opt.group && (opt.mode != M_FANOUT || opt.tenants))
    die("--group is a fan-out mode (not with --idle, --churn-rates, "
        "--tenants)");
  opt.server_pid = n_server_pids ? server_pids[0] : 0;
  if (opt.subs < 0 || opt.events < 0 || opt.window < 1 || opt.ramp < 1 ||
      opt.tenants < 0 || opt.pad < 0 || opt.pad > 4000 || opt.deadline_s <= 0 ||
      opt.group < 0 || opt.step_s <= 0 || opt.step_drain_s <= 0 ||
      opt.src_addrs < 0 || opt.src_addrs > 250 || opt.churn_max < 1 ||
      opt.churn_pub_rate <= 0 || opt.settle_max_s <= 0 ||
      strlen(opt.topic) > 200 || strpbrk(opt.topic, "\"\\ /?#%,"))
    usage(argv[0]);
  signal(SIGPIPE, SIG_IGN);
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)opt.port);
  if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1)
    die("--host must be an IPv4 address");
  if (opt.src_addrs > 1 && (ntohl(addr.sin_addr.s_addr) >> 24) != 127)
    die("--src-addrs spreads over 127.0.0.x: --host must be a loopback "
        "address");
  pub_addr = addr;
  pub_addr.sin_port = htons((uint16_t)opt.pub_port);

  /* Connections: one per subscriber; fastapi with --group: one per room. */
  n_conns = opt.subs;
  if (opt.group) {
    n_groups = (opt.subs + opt.group - 1) / opt.group;
    if (opt.target == T_FASTAPI) n_conns = 2 * opt.subs;
  }
  int churn_slots = opt.mode == M_CHURN ? opt.churn_max : 0;

  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rlim_t need = (rlim_t)n_conns + (rlim_t)churn_slots + 64;
  if (rl.rlim_cur < need) {
    rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need)
      die("RLIMIT_NOFILE hard limit %llu is below %llu",
          (unsigned long long)rl.rlim_max, (unsigned long long)need);
  }

  /* The data is {"n":..,"ts":..,"pad":".."} (plus "tenant_id" or "tk" and
   * "tid"): pad it so the data object is about --pad bytes as sent. */
  int fixed = (int)strlen("{\"n\":0000,\"ts\":0000000000000,\"pad\":\"\"}");
  if (opt.group) fixed += (int)strlen("\"tk\":0,\"tid\":0000,");
  int padlen = opt.pad > fixed ? opt.pad - fixed : 0;
  if (padlen > (int)sizeof pad_str - 1) padlen = (int)sizeof pad_str - 1;
  memset(pad_str, 'x', (size_t)padlen);
  pad_str[padlen] = '\0';

  /* Every subscriber expects the events of its tenant (all without); the
   * counts are credited as events are queued (event_owed). */
  subs = calloc((size_t)(n_conns ? n_conns : 1), sizeof *subs);
  if (!subs) die("out of memory");
  for (int i = 0; i < n_conns; i++) {
    conn_t *c = &subs[i];
    c->fd = -1;
    c->kind = K_SUB;
    c->idx = i;
    c->tenant = opt.tenants > 0 ? i % opt.tenants : 0;
    c->cap = opt.mode == M_FANOUT ? SUB_BUF : IDLE_BUF;
    c->buf = xmalloc(c->cap);
    c->next_n[0] = opt.tenants > 1 ? c->tenant : 0;
    if (!opt.group) {
      c->has[0] = 1;
    } else if (opt.target == T_FASTAPI) { /* one room per socket */
      int s = i % opt.subs;
      c->has[i >= opt.subs] = 1;
      c->tid[0] = s;
      c->tid[1] = s / opt.group;
    } else {
      c->has[0] = c->has[1] = 1;
      c->tid[0] = i;
      c->tid[1] = i / opt.group;
    }
  }
  if (opt.group) {
    topic_n[0] = calloc((size_t)opt.subs + 1, sizeof *topic_n[0]);
    topic_n[1] = calloc((size_t)n_groups + 1, sizeof *topic_n[1]);
    if (!topic_n[0] || !topic_n[1]) die("out of memory");
  }
  if (churn_slots) {
    churn = calloc((size_t)churn_slots, sizeof *churn);
    churn_free = xmalloc((size_t)churn_slots * sizeof *churn_free);
    if (!churn) die("out of memory");
    for (int i = 0; i < churn_slots; i++) {
      churn[i].fd = -1;
      churn[i].kind = K_SUB;
      churn[i].idx = i;
      churn[i].churn = 1;
      churn[i].state = ST_CLOSED;
      churn[i].cap = IDLE_BUF;
      churn[i].buf = xmalloc(IDLE_BUF);
      churn_free[n_churn_free++] = churn_slots - 1 - i;
    }
  }

  /* Events to publish: --events, or the steps' rates x --step-s. */
  if (opt.mode == M_FANOUT && n_steps) {
    opt.events = 0;
    for (int s = 0; s < n_steps; s++)
      opt.events += (int64_t)(steps_rate[s] * opt.step_s + 0.5);
  }
  if (opt.mode != M_FANOUT) opt.events = 0;
  uint64_t planned = 0;
  for (int64_t j = 0; j < opt.events; j++)
    planned += event_owed(j, 0);
  expected_total = planned;
  lat_cap = planned < MAX_SAMPLES ? planned : MAX_SAMPLES;
  if (planned > MAX_SAMPLES)
    lat_stride = (planned + MAX_SAMPLES - 1) / MAX_SAMPLES;
  lat = xmalloc((lat_cap ? lat_cap : 1) * sizeof *lat);
  if (opt.overload && opt.events > 0) {
    acc_ns = calloc((size_t)opt.events, sizeof *acc_ns);
    acc_lat_cap = lat_cap;
    acc_lat = xmalloc((acc_lat_cap ? acc_lat_cap : 1) * sizeof *acc_lat);
    if (!acc_ns) die("out of memory");
  }

  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1: %s", strerror(errno));
  uint64_t t0 = now_ns();
  t_deadline = t0 + (uint64_t)(opt.deadline_s * 1e9);
  double cpu_self_start = self_cpu();
  pstat_t srv_start = procs_read(server_pids, n_server_pids);
  if (n_server_pids && !srv_start.ok)
    die("cannot read /proc/PID/stat of every --server-pid");

  int deadline_hit = 0;
  /* Phase 1: subscribers, at most --ramp handshaking at once. */
  int next = 0;
  while (n_ready + n_failed_subs < n_conns) {
    while (next < n_conns && n_connecting < opt.ramp)
      sub_start(&subs[next++]);
    if (n_failed_subs) break;
    if (now_ns() >= t_deadline) {
      deadline_hit = 1;
      break;
    }
    pump_io(100);
  }
  /* nchan and fastapi: the upgrade answer does not say that the channel (or,
   * with Redis, the other node's subscription; fastapi: the room list) is in
   * place: wait until the publishing node counts every subscriber (of the
   * last group with --group). */
  if (opt.target != T_MOONWIRE && !deadline_hit && n_ready == n_conns &&
      n_conns) {
    char topic[300];
    long want = n_conns;
    if (opt.group) {
      topic_name(topic, sizeof topic, 1, n_groups - 1);
      want = opt.subs - (n_groups - 1) * opt.group;
    } else {
      snprintf(topic, sizeof topic, "%s", opt.topic);
    }
    uint64_t until = now_ns() + 10000000000ull;
    long active = -1;
    while ((active = peer_active_subscribers(topic)) < want &&
           now_ns() < until) {
      pump_io(20);
    }
    if (active != want && !opt.quiet)
      fprintf(stderr,
              "mw_loadgen: %s reports %ld active subscribers of %ld on %s\n",
              target_name(), active, want, topic);
    peer_subs_seen = active;
  }
  uint64_t t_ready = now_ns();
  pstat_t srv_ready = procs_read(server_pids, n_server_pids);
  pstat_t aux_ready = procs_read(aux_pids, n_aux_pids);
  double cpu_self_connect = self_cpu() - cpu_self_start;
  if (!opt.quiet)
    fprintf(stderr, "mw_loadgen: %d/%d connections ready in %.2f s\n", n_ready,
            n_conns, (double)(t_ready - t0) / 1e9);
  int all_ready = !deadline_hit && n_ready == n_conns;

  pub.fd = -1;
  pub.kind = K_PUB;
  pub.cap = PUB_BUF;
  pub.buf = xmalloc(pub.cap);
  pub_out_cap = PUB_BUF;
  pub_out = xmalloc(pub_out_cap);

  FILE *out = stdout;
  if (opt.json_path && !(out = fopen(opt.json_path, "w")))
    die("cannot write %s", opt.json_path);

  /* ---- idle: RSS per connection ---- */
  if (opt.mode == M_IDLE) {
    double settle_s = 0;
    pstat_t st = all_ready ? rss_settle(&settle_s) : srv_ready;
    double cpu_lg = self_cpu() - cpu_self_start;
    pstat_t srv_now = procs_read(server_pids, n_server_pids);
    double srv_cpu = srv_now.cpu_s - srv_start.cpu_s;
    long grow = st.rss_kb - srv_start.rss_kb;
    int ok = all_ready && st.ok;
    fprintf(out,
            "{\"bench\":\"idle\",\"target\":\"%s\",\"transport\":\"%s\","
            "\"subscribers\":%d,\"subscribers_ready\":%d,\"peer_active_"
            "subscribers\":%ld,"
            "\"connect_s\":%.3f,\"settle_s\":%.2f,\"server_rss_kb_start\":%ld,"
            "\"server_rss_kb_ready\":%ld,\"server_rss_kb_settled\":%ld,"
            "\"server_rss_growth_kb\":%ld,\"bytes_per_connection\":%.0f,"
            "\"server_cpu_s\":%.3f,\"loadgen_cpu_s\":%.3f,\"loadgen_cpu_"
            "share\":%.3f,"
            "\"ok\":%s,\"error\":",
            target_name(), opt.transport == TR_SSE ? "sse" : "ws", opt.subs,
            n_ready, peer_subs_seen, (double)(t_ready - t0) / 1e9, settle_s,
            srv_start.rss_kb, srv_ready.rss_kb, st.rss_kb, grow,
            opt.subs ? (double)grow * 1024.0 / opt.subs : 0, srv_cpu, cpu_lg,
            cpu_lg + srv_cpu > 0 ? cpu_lg / (cpu_lg + srv_cpu) : 0,
            ok ? "true" : "false");
    json_str(out, first_error);
    fprintf(out, "}\n");
    if (out != stdout) fclose(out);
    if (!opt.quiet)
      fprintf(stderr,
              "mw_loadgen: idle %d/%d %s: server RSS %ld -> %ld kB (+%.0f "
              "bytes per "
              "connection, settled in %.1f s); loadgen %.2f CPU-s\n",
              n_ready, opt.subs, opt.transport == TR_SSE ? "SSE" : "WebSocket",
              srv_start.rss_kb, st.rss_kb,
              opt.subs ? (double)grow * 1024.0 / opt.subs : 0, settle_s,
              cpu_lg);
    uint64_t hold_until = now_ns() + (uint64_t)(opt.hold_s * 1e9);
    while (now_ns() < hold_until)
      pump_io(100);
    return ok ? 0 : 1;
  }

  /* ---- churn ---- */
  if (opt.mode == M_CHURN) {
    double settle_s = 0;
    pstat_t base = all_ready ? rss_settle(&settle_s) : srv_ready;
    int ok = all_ready;
    if (ok) {
      pub_connect();
      publishing = 1;
      opt.rate = opt.churn_pub_rate;
      opt.window = 4;
      pub_limit = INT64_MAX;
      pace_t0 = now_ns();
      pace_sent0 = 0;
      t_pub_start = pace_t0;
    }
    for (int s = 0; ok && s < n_steps; s++) {
      step_rec_t *r = &steps[steps_run++];
      r->rate = steps_rate[s];
      uint64_t ts0 = now_ns(), tend = ts0 + (uint64_t)(opt.step_s * 1e9);
      size_t hs0 = hs_lat.n, cy0 = cyc_lat.n;
      uint64_t op0 = churn_opened, dn0 = churn_done, fl0 = churn_failed,
               sk0 = churn_skipped;
      pstat_t p0 = procs_read(server_pids, n_server_pids);
      double c0 = self_cpu();
      uint64_t due_n = 0; /* connections due so far in this step */
      for (;;) {
        uint64_t now = now_ns();
        if (now >= tend) break;
        uint64_t due = (uint64_t)((double)(now - ts0) / 1e9 * r->rate) + 1;
        while (due_n < due) {
          churn_open();
          due_n++;
        }
        pub_pump(now);
        uint64_t next_due = ts0 + (uint64_t)((double)due_n * 1e9 / r->rate);
        int t = next_due > now ? (int)((next_due - now + 999999) / 1000000) : 0;
        pump_io(pace_timeout(now, t > 10 ? 10 : t));
      }
      /* let the cycles in flight finish (events keep coming) */
      uint64_t drain_until = now_ns() + (uint64_t)(opt.step_drain_s * 1e9);
      while (n_churn_free < churn_slots && now_ns() < drain_until) {
        pub_pump(now_ns());
        pump_io(pace_timeout(now_ns(), 10));
      }
      r->drained = n_churn_free == churn_slots;
      uint64_t t_end = churn_last_done_ns > ts0 ? churn_last_done_ns : now_ns();
      if (t_end < tend) t_end = tend;
      pstat_t p1 = procs_read(server_pids, n_server_pids);
      r->wall_s = (double)(t_end - ts0) / 1e9;
      r->server_cpu_s = p1.cpu_s - p0.cpu_s;
      r->server_sys_s = p1.sys_s - p0.sys_s;
      r->loadgen_cpu_s = self_cpu() - c0;
      r->opened = churn_opened - op0;
      r->done = churn_done - dn0;
      r->failed = churn_failed - fl0;
      r->skipped = churn_skipped - sk0;
      r->rss_kb_end = p1.rss_kb;
      seg_sort(hs_lat.v, hs0, hs_lat.n);
      seg_sort(cyc_lat.v, cy0, cyc_lat.n);
      r->hs_p50 = seg_pct(hs_lat.v, hs0, hs_lat.n, 0.5);
      r->hs_p99 = seg_pct(hs_lat.v, hs0, hs_lat.n, 0.99);
      r->hs_p999 = seg_pct(hs_lat.v, hs0, hs_lat.n, 0.999);
      r->cyc_p50 = seg_pct(cyc_lat.v, cy0, cyc_lat.n, 0.5);
      r->cyc_p99 = seg_pct(cyc_lat.v, cy0, cyc_lat.n, 0.99);
      if (!opt.quiet)
        fprintf(stderr,
                "mw_loadgen: churn %g/s: %llu cycles in %.2f s (%.0f/s), "
                "failed %llu, "
                "skipped %llu; handshake p50 %.0f us p99 %.0f us; server %.2f "
                "CPU-s\n",
                r->rate, (unsigned long long)r->done, r->wall_s,
                r->wall_s > 0 ? (double)r->done / r->wall_s : 0,
                (unsigned long long)r->failed, (unsigned long long)r->skipped,
                r->hs_p50, r->hs_p99, r->server_cpu_s);
      if (!r->drained || r->failed) break; /* behind or failing: stop rising */
    }
    publishing = 0;
    conn_close(&pub);
    for (int i = 0; i < churn_slots; i++)
      if (churn[i].fd >= 0) conn_close(&churn[i]);
    double settle2_s = 0;
    pstat_t after = ok ? rss_settle(&settle2_s) : base;
    double cpu_lg = self_cpu() - cpu_self_start;
    int steady_ok = n_ready == n_conns;
    for (int i = 0; i < n_conns; i++)
      if (subs[i].state != ST_READY) steady_ok = 0;
    ok = ok && steady_ok && !churn_failed && steps_run == n_steps;
    fprintf(
        out,
        "{\"bench\":\"churn\",\"target\":\"%s\",\"subscribers\":%d,"
        "\"subscribers_ready\":%d,\"steady_still_open\":%s,\"connect_s\":%.3f,"
        "\"server_rss_kb_start\":%ld,\"server_rss_kb_baseline\":%ld,"
        "\"server_rss_kb_after\":%ld,\"server_rss_after_minus_baseline_kb\":%"
        "ld,"
        "\"settle_s\":%.2f,\"events_published\":%lld,\"publish_errors\":%lld,"
        "\"loadgen_cpu_s\":%.3f,\"loadgen_cpu_connect_s\":%.3f,"
        "\"steps_planned\":%d,\"steps\":[",
        target_name(), opt.subs, n_ready, steady_ok ? "true" : "false",
        (double)(t_ready - t0) / 1e9, srv_start.rss_kb, base.rss_kb,
        after.rss_kb, after.rss_kb - base.rss_kb, settle2_s, (long long)pub_ok,
        (long long)pub_err, cpu_lg, cpu_self_connect, n_steps);
    for (int s = 0; s < steps_run; s++) {
      if (s) fputc(',', out);
      step_json(out, &steps[s]);
    }
    fprintf(out, "],\"ok\":%s,\"error\":", ok ? "true" : "false");
    json_str(out, first_error);
    fprintf(out, "}\n");
    if (out != stdout) fclose(out);
    if (!opt.quiet)
      fprintf(stderr,
              "mw_loadgen: churn: server RSS baseline %ld kB, after %ld kB "
              "(%+ld)\n",
              base.rss_kb, after.rss_kb, after.rss_kb - base.rss_kb);
    return ok ? 0 : 1;
  }

  /* ---- Phase 2 (fan-out): publish and receive. ---- */
  double cpu_self0 = self_cpu();
  int ok_to_publish = all_ready;
  pub_limit = opt.events;
  if (ok_to_publish && opt.events > 0) {
    pub_connect();
    publishing = 1;
    t_pub_start = now_ns();
    pace_t0 = t_pub_start;
    pace_sent0 = 0;
    if (n_steps) { /* step 0 */
      opt.rate = steps_rate[0];
      pub_limit = (int64_t)(steps_rate[0] * opt.step_s + 0.5);
    }
    pub_pump(t_pub_start);
  }
  /* steps: the current one's start */
  int cur = 0, step_draining = 0;
  uint64_t st_t0 = t_pub_start, st_drain_until = 0, st_pub_end = 0;
  int64_t st_sent0 = 0;
  uint64_t st_deliv0 = 0, st_owed0 = 0;
  size_t st_lat0 = 0;
  pstat_t st_p0 = procs_read(server_pids, n_server_pids);
  double st_c0 = self_cpu();
  uint64_t quiet_since = 0;
  int stopped_behind = 0;
  while (ok_to_publish && opt.events > 0) {
    uint64_t now = now_ns();
    if (n_steps && cur < n_steps) {
      /* the step's events are all sent: wait for their deliveries */
      if (!step_draining && sent >= pub_limit) {
        step_draining = 1;
        st_pub_end = now;
        st_drain_until = now + (uint64_t)(opt.step_drain_s * 1e9);
      }
      int drained =
          step_draining && deliveries >= expected_queued && answered == sent;
      if (drained || (step_draining && now >= st_drain_until)) {
        step_rec_t *r = &steps[steps_run++];
        pstat_t p1 = procs_read(server_pids, n_server_pids);
        uint64_t t_last = last_delivery_ns > st_t0 ? last_delivery_ns : now;
        r->rate = steps_rate[cur];
        r->events = (uint64_t)(sent - st_sent0);
        r->owed = expected_queued - st_owed0;
        r->deliveries = deliveries - st_deliv0;
        r->wall_s = (double)(t_last - st_t0) / 1e9;
        r->pub_s = (double)(st_pub_end - st_t0) / 1e9;
        r->server_cpu_s = p1.cpu_s - st_p0.cpu_s;
        r->server_sys_s = p1.sys_s - st_p0.sys_s;
        r->loadgen_cpu_s = self_cpu() - st_c0;
        r->drained = drained;
        seg_sort(lat, st_lat0, nlat);
        r->p50 = seg_pct(lat, st_lat0, nlat, 0.5);
        r->p90 = seg_pct(lat, st_lat0, nlat, 0.9);
        r->p99 = seg_pct(lat, st_lat0, nlat, 0.99);
        r->p999 = seg_pct(lat, st_lat0, nlat, 0.999);
        r->max = nlat > st_lat0 ? lat[nlat - 1] / 10.0 : 0;
        if (!opt.quiet)
          fprintf(
              stderr,
              "mw_loadgen: step %g ev/s: %llu events, %llu/%llu deliveries in "
              "%.2f s (%.0f/s), p50 %.0f us p99 %.0f us, server %.2f CPU-s%s\n",
              r->rate, (unsigned long long)r->events,
              (unsigned long long)r->deliveries, (unsigned long long)r->owed,
              r->wall_s, r->wall_s > 0 ? (double)r->deliveries / r->wall_s : 0,
              r->p50, r->p99, r->server_cpu_s, drained ? "" : " [BEHIND]");
        cur++;
        step_draining = 0;
        if (!drained) {
          /* behind: give the backlog --drain more seconds, then report
           * what is still missing as lost (the run stays bounded) */
          uint64_t until = now + (uint64_t)(opt.drain_s * 1e9);
          if (until < t_deadline) t_deadline = until;
          stopped_behind = 1;
        }
        if (!drained || cur == n_steps) {
          /* no further step: what was sent is all there is */
          opt.events = sent;
          pub_limit = sent;
          expected_total = expected_queued;
          if (answered == opt.events && !t_pub_done) t_pub_done = now;
          cur = n_steps;
        } else {
          opt.rate = steps_rate[cur];
          pub_limit = sent + (int64_t)(steps_rate[cur] * opt.step_s + 0.5);
          st_t0 = pace_t0 = now_ns();
          pace_sent0 = st_sent0 = sent;
          st_deliv0 = deliveries;
          st_owed0 = expected_queued;
          st_lat0 = nlat;
          st_p0 = p1;
          st_c0 = self_cpu();
          pub_pump(st_t0);
        }
        continue;
      }
    }
    if (deliveries >= expected_total && answered == opt.events) break;
    if (now >= t_deadline) {
      deadline_hit = 1;
      break;
    }
    if (pub.fd < 0 && answered < opt.events) {
      if (!quiet_since) quiet_since = now;
    }
    if ((answered == opt.events && (!n_steps || cur >= n_steps)) ||
        pub.fd < 0) {
      uint64_t ref =
          last_delivery_ns > t_pub_done ? last_delivery_ns : t_pub_done;
      if (!ref) ref = quiet_since ? quiet_since : now;
      if (now - ref > (uint64_t)(opt.drain_s * 1e9)) break;
    }
    pump_io(pace_timeout(now, 50));
    if (opt.rate > 0 || pub_pause_until) pub_pump(now_ns());
  }
  uint64_t t_end = now_ns();
  double cpu_self = self_cpu() - cpu_self0;
  pstat_t srv_end = procs_read(server_pids, n_server_pids);
  pstat_t aux_end = procs_read(aux_pids, n_aux_pids);
  if (n_server_pids && !srv_end.ok) {
    note_error("a server process (--server-pid) is gone");
    srv_end = srv_ready;
  }
  double aux_cpu =
      aux_end.ok && aux_ready.ok ? aux_end.cpu_s - aux_ready.cpu_s : 0;
  if (deadline_hit)
    note_error(
        "%s: %llu of %llu deliveries had arrived",
        stopped_behind
            ? "server behind (a step did not drain), stopped --drain s later"
            : "deadline",
        (unsigned long long)deliveries, (unsigned long long)expected_total);

  /* Tally. */
  uint64_t ok = 0, dups = 0, gaps = 0, seq_bad = 0, foreign = 0, loss = 0;
  int closed = 0;
  for (int i = 0; i < n_conns; i++) {
    conn_t *c = &subs[i];
    ok += c->ok;
    dups += c->dups;
    gaps += c->gaps;
    seq_bad += c->seq_bad;
    foreign += c->foreign;
    /* --overload: each subscriber is owed exactly the accepted events */
    uint64_t owed = opt.overload ? (uint64_t)pub_ok : c->expected;
    loss += owed > c->ok ? owed - c->ok : 0;
    if (c->state != ST_READY) closed++;
  }
  for (int i = 0; i < n_conns; i++)
    conn_close(&subs[i]);
  conn_close(&pub);

  qsort(lat, nlat, sizeof *lat, cmp_u32);
  if (n_acc_lat) qsort(acc_lat, n_acc_lat, sizeof *acc_lat, cmp_u32);
#define ACC_PCT(q)                                                             \
  (n_acc_lat ? acc_lat[(size_t)((double)(n_acc_lat - 1) * (q))] : 0u)
  uint64_t t_last = last_delivery_ns ? last_delivery_ns : t_end;
  double dur = t_pub_start ? (double)(t_last - t_pub_start) / 1e9 : 0;
  double pub_dur =
      t_pub_start && t_pub_done ? (double)(t_pub_done - t_pub_start) / 1e9 : 0;
  double srv_cpu = srv_end.cpu_s - srv_ready.cpu_s;
  double srv_cpu_connect = srv_ready.cpu_s - srv_start.cpu_s;
  int complete = !deadline_hit && ok == expected_total && !dups && !seq_bad &&
                 !foreign && pub_ok + pub_refused == opt.events && !pub_err &&
                 !pub_seq_bad && n_ready == n_conns;
#define PCT(q) seg_pct(lat, 0, nlat, q)

  fprintf(
      out,
      "{\"bench\":\"%s\",\"target\":\"%s\",\"port\":%d,"
      "\"pub_port\":%d,\"server_pids\":%d,\"aux_cpu_s\":%.3f,"
      "\"aux_cpu_us_per_delivery\":%.3f,\"publish_202\":%llu,"
      "\"nchan_active_subscribers\":%ld,\"subscribers\":%d,\"connections\":%d,"
      "\"subscribers_ready\":%d,\"group\":%d,"
      "\"events\":%lld,\"window\":%d,\"rate\":%g,\"tenants\":%d,"
      "\"data_bytes\":%d,\"published_ok\":%lld,\"publish_errors\":%lld,"
      "\"publish_refused\":%lld,\"accepted_latency_us\":{\"p50\":%u,"
      "\"p99\":%u,\"p999\":%u,\"max\":%u},"
      "\"deliveries_expected\":%llu,\"deliveries_received\":%llu,"
      "\"loss\":%llu,\"duplicates\":%llu,\"gaps\":%llu,\"seq_errors\":%llu,"
      "\"publish_seq_errors\":%llu,\"foreign_tenant\":%llu,"
      "\"subscribers_closed\":%d,"
      "\"connect_s\":%.3f,\"publish_s\":%.3f,\"duration_s\":%.3f,"
      "\"events_per_s\":%.1f,\"deliveries_per_s\":%.1f,"
      "\"latency_us\":{\"samples\":%zu,\"p50\":%.1f,\"p90\":%.1f,"
      "\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f},"
      "\"server_pid\":%d,\"server_cpu_s\":%.3f,\"server_user_s\":%.3f,"
      "\"server_sys_s\":%.3f,\"server_cpu_connect_s\":%.3f,"
      "\"server_cpu_us_per_delivery\":%.3f,\"server_rss_kb_start\":%ld,"
      "\"server_rss_kb_ready\":%ld,\"server_rss_kb_end\":%ld,"
      "\"server_hwm_kb\":%ld,\"loadgen_cpu_s\":%.3f,"
      "\"loadgen_cpu_share\":%.3f,\"loadgen_busy\":%.3f,"
      "\"deadline_hit\":%s,\"ok\":%s,\"steps_planned\":%d,\"steps\":[",
      n_steps ? "stepped" : "fanout", target_name(), opt.port, opt.pub_port,
      n_server_pids, aux_cpu, ok ? aux_cpu * 1e6 / (double)ok : 0,
      (unsigned long long)pub_no_subs, peer_subs_seen, opt.subs, n_conns,
      n_ready, opt.group, (long long)opt.events, opt.window,
      n_steps ? 0 : opt.rate, opt.tenants, opt.pad, (long long)pub_ok,
      (long long)pub_err, (long long)pub_refused, ACC_PCT(0.5), ACC_PCT(0.99),
      ACC_PCT(0.999), n_acc_lat ? acc_lat[n_acc_lat - 1] : 0u,
      (unsigned long long)expected_total, (unsigned long long)ok,
      (unsigned long long)loss, (unsigned long long)dups,
      (unsigned long long)gaps, (unsigned long long)seq_bad,
      (unsigned long long)pub_seq_bad, (unsigned long long)foreign, closed,
      (double)(t_ready - t0) / 1e9, pub_dur, dur,
      pub_dur > 0 ? (double)pub_ok / pub_dur : 0,
      dur > 0 ? (double)ok / dur : 0, nlat, PCT(0.5), PCT(0.9), PCT(0.99),
      PCT(0.999), nlat ? lat[nlat - 1] / 10.0 : 0, opt.server_pid, srv_cpu,
      srv_end.user_s - srv_ready.user_s, srv_end.sys_s - srv_ready.sys_s,
      srv_cpu_connect, ok ? srv_cpu * 1e6 / (double)ok : 0, srv_start.rss_kb,
      srv_ready.rss_kb, srv_end.rss_kb, srv_end.hwm_kb, cpu_self,
      cpu_self + srv_cpu > 0 ? cpu_self / (cpu_self + srv_cpu) : 0,
      dur > 0 ? cpu_self / dur : 0, deadline_hit ? "true" : "false",
      complete ? "true" : "false", n_steps);
  for (int s = 0; s < steps_run; s++) {
    if (s) fputc(',', out);
    step_json(out, &steps[s]);
  }
  fprintf(out, "],\"error\":");
  json_str(out, first_error);
  fprintf(out, "}\n");
  if (out != stdout) fclose(out);
  if (!opt.quiet)
    fprintf(stderr,
            "mw_loadgen: %d subs x %lld events: %llu/%llu deliveries "
            "(loss %llu, dup %llu) in %.3f s = %.0f deliveries/s; latency "
            "p50 %.0f us p99 %.0f us p99.9 %.0f us; server %.2f CPU-s "
            "(%.2f us/delivery), RSS %ld kB; loadgen %.2f CPU-s%s\n",
            opt.subs, (long long)opt.events, (unsigned long long)ok,
            (unsigned long long)expected_total, (unsigned long long)loss,
            (unsigned long long)dups, dur, dur > 0 ? (double)ok / dur : 0,
            PCT(0.5), PCT(0.99), PCT(0.999), srv_cpu,
            ok ? srv_cpu * 1e6 / (double)ok : 0, srv_end.rss_kb, cpu_self,
            deadline_hit ? " [DEADLINE]" : "");
  return complete ? 0 : 1;
}
