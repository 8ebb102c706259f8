/* mw_loadgen: WebSocket fan-out load for moonwire (docs/benchmarks.md).
 *
 * One thread, one epoll set, no library beyond libc:
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
 * It stops when every expected delivery arrived, when nothing arrived for
 * --drain seconds after the last publish was answered, or at --deadline,
 * and reports one JSON object (stdout or --json FILE) and a summary on
 * stderr. With --server-pid it reads the server's CPU time (utime+stime) and
 * RSS from /proc around the publish phase; its own CPU time comes from
 * getrusage, so its share of the machine is visible.
 *
 * --target nchan drives nginx + nchan (bench/peers/nchan.conf) instead:
 * subscribers open ws://HOST:PORT/sub/TOPIC (no subscribe message: the
 * 101 answer is the subscription), the publisher POSTs the bare data object
 * to /pub/TOPIC (201 or 202 is success), and each text frame is the published
 * body, so only n (order, gaps, duplicates) and ts (latency) are checked;
 * there is no seq. Before publishing it polls GET /pub/TOPIC on the
 * publishing node until nchan reports every subscriber (at most 10 s).
 * --pub-port publishes to another node than the subscribers' --port (two
 * nodes sharing one Redis). --server-pid takes a comma-separated list (all
 * the server processes: both nodes, nginx master and worker); their CPU time
 * and RSS are summed. --aux-pid (same form) is measured separately (Redis).
 *
 * Client frames are masked (RFC 6455 §5.3); server frames must not be.
 * Exit status: 0 when every expected event arrived once, in order, and every
 * publish succeeded; 1 otherwise (loss, errors, deadline); 2 on bad usage. */
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

#define MAX_SAMPLES (8u << 20) /* latency samples kept (then strided) */
#define SUB_BUF 16384
#define PUB_BUF 65536

enum { ST_CONNECTING, ST_HANDSHAKE, ST_SUBSCRIBING, ST_READY, ST_CLOSED };
enum { K_SUB, K_PUB };
enum { T_MOONWIRE, T_NCHAN };
#define MAX_PIDS 8

typedef struct conn {
  int fd;
  int kind;
  int state;
  int idx;
  int tenant;
  char *buf;
  size_t len, cap;
  /* subscriber */
  int64_t next_n;     /* the next n this connection expects */
  uint64_t base;      /* topic seq at subscribe time (from the ack) */
  uint64_t ok;        /* events received in order */
  uint64_t dups;      /* n below what was expected (duplicate or reordered) */
  uint64_t gaps;      /* events skipped */
  uint64_t seq_bad;   /* seq != base + n + 1 */
  uint64_t foreign;   /* another tenant's event */
  uint64_t expected;  /* events this connection should receive */
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
} opt = {"127.0.0.1", 0, 1000, 2000, 32, 0, 200, 0, 100, 0, T_MOONWIRE, 0,
         NULL, "bench", 120, 5, 0};

static int server_pids[MAX_PIDS], n_server_pids;
static int aux_pids[MAX_PIDS], n_aux_pids;

static int ep;
static conn_t *subs;
static conn_t pub;
static struct sockaddr_in addr, pub_addr;
static uint64_t t_deadline;

/* progress */
static int n_connecting, n_ready, n_started, n_failed_subs;
static char first_error[256];
static uint64_t deliveries, expected_total, last_delivery_ns;
static int64_t sent, answered, pub_ok, pub_err;
static uint64_t pub_base = UINT64_MAX; /* topic seq before the first publish */
static uint64_t pub_seq_bad;
static uint64_t pub_no_subs; /* nchan: 202 (no subscriber on that node) */
static long nchan_subs_seen = -1;
static uint64_t t_pub_start, t_pub_done;
static int publishing;

/* latency samples (ns) */
static uint32_t *lat; /* in units of 100 ns: up to 429 s */
static size_t nlat, lat_cap;
static uint64_t lat_stride = 1, lat_seen;
static uint64_t lat_over; /* samples above 429 s, clamped */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void note_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
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

static int conn_open(conn_t *c, const struct sockaddr_in *to) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
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
  for (size_t i = 0; i < len; i++) frame[h + i] = pl[i] ^ mask[i & 3];
  return write_all(c->fd, frame, h + len);
}

/* ---- subscribers ---- */

static void sub_fail(conn_t *c, const char *why) {
  note_error("subscriber %d: %s", c->idx, why);
  if (c->state == ST_CONNECTING || c->state == ST_HANDSHAKE ||
      c->state == ST_SUBSCRIBING) {
    n_connecting--;
    n_failed_subs++;
  }
  conn_close(c);
}

static int sub_start(conn_t *c) {
  int rc = conn_open(c, &addr);
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
  char req[768];
  char path[300];
  if (opt.target == T_NCHAN)
    snprintf(path, sizeof path, "/sub/%s", opt.topic);
  else if (opt.tenants > 0)
    snprintf(path, sizeof path, "/ws?token=t%d", c->tenant);
  else
    snprintf(path, sizeof path, "/ws");
  int n = snprintf(req, sizeof req,
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
  while (d < end && *d >= '0' && *d <= '9') v = v * 10 + (uint64_t)(*d++ - '0');
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

static void sub_event(conn_t *c, const char *p, size_t len, uint64_t now) {
  /* nchan frames are the published data itself: no envelope, no seq. */
  int has_seq = opt.target != T_NCHAN;
  uint64_t seq = has_seq ? num_after(p, len, LIT("\"seq\":")) : 0;
  uint64_t n = num_after(p, len, LIT("\"n\":"));
  uint64_t ts = num_after(p, len, LIT("\"ts\":"));
  if (seq == UINT64_MAX || n == UINT64_MAX || ts == UINT64_MAX) {
    note_error("subscriber %d: unexpected event: %.*s", c->idx,
               (int)(len > 160 ? 160 : len), p);
    c->seq_bad++;
    return;
  }
  if (has_seq && seq != c->base + n + 1) c->seq_bad++;
  int step = opt.tenants > 1 ? opt.tenants : 1;
  if (opt.tenants > 1 && (int)(n % (uint64_t)opt.tenants) != c->tenant) {
    c->foreign++;
    return;
  }
  if ((int64_t)n < c->next_n) {
    c->dups++;
    return;
  }
  if ((int64_t)n > c->next_n) c->gaps += (uint64_t)(((int64_t)n - c->next_n) / step);
  c->next_n = (int64_t)n + step;
  c->ok++;
  deliveries++;
  last_delivery_ns = now;
  record_latency(now > ts ? now - ts : 0);
}

/* Handles one complete server frame; returns -1 when the connection ended. */
static int sub_frame(conn_t *c, int opcode, const char *p, size_t len,
                     uint64_t now) {
  switch (opcode) {
  case 1: /* text */
  case 2:
    if (c->state == ST_READY) {
      if (opt.target == T_NCHAN) {
        sub_event(c, p, len, now);
        return 0;
      }
      if (len > 16 && !memcmp(p, "{\"type\":\"event\"", 15)) {
        sub_event(c, p, len, now);
      } else if (memmem(p, len, LIT("\"type\":\"event\""))) {
        sub_event(c, p, len, now);
      }
      return 0;
    }
    if (c->state == ST_SUBSCRIBING) {
      if (memmem(p, len, LIT("\"type\":\"ack\""))) {
        uint64_t seq = num_after(p, len, LIT("\"seq\":"));
        c->base = seq == UINT64_MAX ? 0 : seq;
        c->state = ST_READY;
        n_connecting--;
        n_ready++;
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
    unsigned code = len >= 2 ? ((unsigned)(uint8_t)p[0] << 8 | (uint8_t)p[1]) : 0;
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
      for (int i = 0; i < 8; i++) plen = plen << 8 | b[2 + i];
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
    if (c->state == ST_HANDSHAKE) {
      char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
      if (!end) {
        if (c->len > 8192) sub_fail(c, "handshake answer too long");
        if (c->fd < 0) return;
        continue;
      }
      if (c->len < 12 || memcmp(c->buf, "HTTP/1.1 101", 12)) {
        char m[160];
        snprintf(m, sizeof m, "handshake refused: %.*s",
                 (int)(strcspn(c->buf, "\r\n") > 100 ? 100
                       : strcspn(c->buf, "\r\n")), c->buf);
        sub_fail(c, m);
        return;
      }
      size_t hl = (size_t)(end + 4 - c->buf);
      memmove(c->buf, c->buf + hl, c->len - hl);
      c->len -= hl;
      if (opt.target == T_NCHAN) { /* subscribed by the upgrade itself */
        c->state = ST_READY;
        n_connecting--;
        n_ready++;
        sub_parse_frames(c, now);
        if (c->fd < 0) return;
        if ((size_t)n < room) return;
        continue;
      }
      char msg[256];
      int ml = snprintf(msg, sizeof msg,
                        "{\"type\":\"subscribe\",\"id\":\"s\",\"topics\":[\"%s\"]}",
                        opt.topic);
      if (ws_send(c, 1, msg, (size_t)ml)) {
        sub_fail(c, "write subscribe failed");
        return;
      }
      c->state = ST_SUBSCRIBING;
    }
    sub_parse_frames(c, now);
    if (c->fd < 0) return;
    /* A short read: the socket is drained (level-triggered, so anything
     * that arrives later comes back with the next epoll_wait). */
    if ((size_t)n < room) return;
  }
}

/* ---- publisher ---- */

static char *pub_out;
static size_t pub_out_len, pub_out_off, pub_out_cap;
static char pad_str[4096];

static void pub_queue_one(int64_t i) {
  char body[4096 + 512];
  uint64_t ts = now_ns();
  int bl;
  if (opt.target == T_NCHAN) /* the body is the message */
    bl = snprintf(body, sizeof body, "{\"n\":%lld,\"ts\":%llu,\"pad\":\"%s\"}",
                  (long long)i, (unsigned long long)ts, pad_str);
  else if (opt.tenants > 0)
    bl = snprintf(body, sizeof body,
                  "{\"topic\":\"%s\",\"event\":\"BENCH\",\"data\":{\"n\":%lld,"
                  "\"ts\":%llu,\"tenant_id\":\"t%lld\",\"pad\":\"%s\"}}",
                  opt.topic, (long long)i, (unsigned long long)ts,
                  (long long)(i % opt.tenants), pad_str);
  else
    bl = snprintf(body, sizeof body,
                  "{\"topic\":\"%s\",\"event\":\"BENCH\",\"data\":{\"n\":%lld,"
                  "\"ts\":%llu,\"pad\":\"%s\"}}",
                  opt.topic, (long long)i, (unsigned long long)ts, pad_str);
  size_t need = pub_out_len + (size_t)bl + 256;
  if (need > pub_out_cap) {
    if (pub_out_off) {
      memmove(pub_out, pub_out + pub_out_off, pub_out_len - pub_out_off);
      pub_out_len -= pub_out_off;
      pub_out_off = 0;
      need = pub_out_len + (size_t)bl + 256;
    }
    if (need > pub_out_cap) {
      pub_out_cap = need * 2;
      pub_out = realloc(pub_out, pub_out_cap);
      if (!pub_out) die("out of memory");
    }
  }
  if (opt.target == T_NCHAN)
    pub_out_len += (size_t)sprintf(pub_out + pub_out_len,
                                   "POST /pub/%s HTTP/1.1\r\nHost: %s:%d\r\n"
                                   "Content-Type: application/json\r\n"
                                   "Content-Length: %d\r\n\r\n",
                                   opt.topic, opt.host, opt.pub_port, bl);
  else
    pub_out_len += (size_t)sprintf(pub_out + pub_out_len,
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

/* Queues what the window and the rate allow, then writes. */
static void pub_pump(uint64_t now) {
  if (!publishing || pub.fd < 0) return;
  int queued = 0;
  while (sent < opt.events && sent - answered < opt.window) {
    if (opt.rate > 0) {
      uint64_t due = t_pub_start + (uint64_t)((double)sent * 1e9 / opt.rate);
      if (now < due) break;
    }
    pub_queue_one(sent++);
    queued = 1;
  }
  if (queued) pub_flush();
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
    for (char *l = memchr(p, '\n', hl); l && l < end; l = memchr(l + 1, '\n', (size_t)(end - l))) {
      if (!strncasecmp(l + 1, "content-length:", 15)) clen = strtol(l + 16, NULL, 10);
    }
    if (avail < hl + (size_t)clen) break;
    int status = avail > 12 ? atoi(p + 9) : 0;
    const char *body = p + hl;
    if (opt.target == T_NCHAN && (status == 201 || status == 202)) {
      pub_ok++; /* 201 Created: delivered to subscribers; 202: none there */
      if (status == 202) pub_no_subs++;
    } else if (status == 200 && opt.target != T_NCHAN) {
      pub_ok++;
      uint64_t seq = num_after(body, (size_t)clen, LIT("\"seq\":"));
      if (pub_base == UINT64_MAX && seq != UINT64_MAX) pub_base = seq - 1;
      if (seq == UINT64_MAX || seq != pub_base + (uint64_t)answered + 1)
        pub_seq_bad++;
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

/* nchan: the "active subscribers" of TOPIC on the publishing node (GET
 * /pub/TOPIC, the channel info), or -1. Blocking, one short request. */
static long nchan_active_subscribers(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct timeval tv = {2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  long active = -1;
  char buf[2048];
  int n = snprintf(buf, sizeof buf,
                   "GET /pub/%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/plain\r\n"
                   "Connection: close\r\n\r\n",
                   opt.topic, opt.host, opt.pub_port);
  if (connect(fd, (struct sockaddr *)&pub_addr, sizeof pub_addr) == 0 &&
      write_all(fd, buf, (size_t)n) == 0) {
    size_t len = 0;
    ssize_t r;
    while (len < sizeof buf - 1 && (r = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
      len += (size_t)r;
    buf[len] = '\0';
    const char *k = strstr(buf, "active subscribers: ");
    if (k) active = strtol(k + 20, NULL, 10);
    else if (len > 12 && !memcmp(buf + 9, "404", 3)) active = 0; /* no channel yet */
  }
  close(fd);
  return active;
}

/* ---- report ---- */

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static double pct(double q) {
  if (!nlat) return 0;
  size_t i = (size_t)(q * (double)(nlat - 1) + 0.5);
  return lat[i] / 10.0;
}

static void usage(const char *argv0) {
  fprintf(stderr,
          "usage: %s --port P [--pub-port P] [--target moonwire|nchan]\n"
          "  [--host 127.0.0.1] [--subs N] [--events M]\n"
          "  [--window W] [--rate EV_PER_S] [--ramp R] [--tenants K] [--pad BYTES]\n"
          "  [--topic T] [--server-pid PID[,PID..]] [--aux-pid PID[,PID..]]\n"
          "  [--deadline S] [--drain S] [--json FILE] [--quiet]\n", argv0);
  exit(2);
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--quiet")) { opt.quiet = 1; continue; }
    if (!strcmp(a, "--help") || !v) usage(argv[0]);
    i++;
    if (!strcmp(a, "--port")) opt.port = atoi(v);
    else if (!strcmp(a, "--host")) opt.host = v;
    else if (!strcmp(a, "--subs")) opt.subs = atoi(v);
    else if (!strcmp(a, "--events")) opt.events = atoll(v);
    else if (!strcmp(a, "--window")) opt.window = atoi(v);
    else if (!strcmp(a, "--rate")) opt.rate = atof(v);
    else if (!strcmp(a, "--ramp")) opt.ramp = atoi(v);
    else if (!strcmp(a, "--tenants")) opt.tenants = atoi(v);
    else if (!strcmp(a, "--pad")) opt.pad = atoi(v);
    else if (!strcmp(a, "--topic")) opt.topic = v;
    else if (!strcmp(a, "--server-pid")) n_server_pids = parse_pids(v, server_pids);
    else if (!strcmp(a, "--aux-pid")) n_aux_pids = parse_pids(v, aux_pids);
    else if (!strcmp(a, "--pub-port")) opt.pub_port = atoi(v);
    else if (!strcmp(a, "--target")) {
      if (!strcmp(v, "moonwire")) opt.target = T_MOONWIRE;
      else if (!strcmp(v, "nchan")) opt.target = T_NCHAN;
      else usage(argv[0]);
    }
    else if (!strcmp(a, "--deadline")) opt.deadline_s = atof(v);
    else if (!strcmp(a, "--drain")) opt.drain_s = atof(v);
    else if (!strcmp(a, "--json")) opt.json_path = v;
    else usage(argv[0]);
  }
  if (opt.port <= 0 || opt.port > 65535) usage(argv[0]);
  if (!opt.pub_port) opt.pub_port = opt.port;
  if (opt.pub_port <= 0 || opt.pub_port > 65535) usage(argv[0]);
  if (opt.target == T_NCHAN && opt.tenants > 0)
    die("--tenants is a moonwire policy feature (not with --target nchan)");
  opt.server_pid = n_server_pids ? server_pids[0] : 0;
  if (opt.subs < 0 || opt.events < 0 || opt.window < 1 || opt.ramp < 1 ||
      opt.tenants < 0 || opt.pad < 0 || opt.pad > 4000 || opt.deadline_s <= 0 ||
      strlen(opt.topic) > 200 || strpbrk(opt.topic, "\"\\ /?#%"))
    usage(argv[0]);
  signal(SIGPIPE, SIG_IGN);
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)opt.port);
  if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1)
    die("--host must be an IPv4 address");
  pub_addr = addr;
  pub_addr.sin_port = htons((uint16_t)opt.pub_port);

  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rlim_t need = (rlim_t)opt.subs + 64;
  if (rl.rlim_cur < need) {
    rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < need)
      die("RLIMIT_NOFILE hard limit %llu is below %llu",
          (unsigned long long)rl.rlim_max, (unsigned long long)need);
  }

  /* The data is {"n":..,"ts":..,"pad":".."} (plus "tenant_id"): pad it so
   * the data object is about --pad bytes as sent. */
  int fixed = (int)strlen("{\"n\":0000,\"ts\":0000000000000,\"pad\":\"\"}");
  int padlen = opt.pad > fixed ? opt.pad - fixed : 0;
  if (padlen > (int)sizeof pad_str - 1) padlen = (int)sizeof pad_str - 1;
  memset(pad_str, 'x', (size_t)padlen);
  pad_str[padlen] = '\0';

  /* Every subscriber expects the events of its tenant (all without). */
  subs = calloc((size_t)(opt.subs ? opt.subs : 1), sizeof *subs);
  if (!subs) die("out of memory");
  for (int i = 0; i < opt.subs; i++) {
    conn_t *c = &subs[i];
    c->fd = -1;
    c->kind = K_SUB;
    c->idx = i;
    c->tenant = opt.tenants > 0 ? i % opt.tenants : 0;
    c->cap = SUB_BUF;
    c->buf = xmalloc(c->cap);
    c->next_n = opt.tenants > 1 ? c->tenant : 0;
    int64_t k = opt.tenants > 1 ? opt.tenants : 1;
    c->expected = opt.events > c->tenant
                      ? (uint64_t)((opt.events - c->tenant + k - 1) / k)
                      : 0;
    if (opt.tenants <= 1) c->expected = (uint64_t)opt.events;
    expected_total += c->expected;
  }
  lat_cap = expected_total < MAX_SAMPLES ? expected_total : MAX_SAMPLES;
  if (expected_total > MAX_SAMPLES)
    lat_stride = (expected_total + MAX_SAMPLES - 1) / MAX_SAMPLES;
  lat = xmalloc((lat_cap ? lat_cap : 1) * sizeof *lat);

  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1: %s", strerror(errno));
  uint64_t t0 = now_ns();
  t_deadline = t0 + (uint64_t)(opt.deadline_s * 1e9);
  pstat_t srv_start = procs_read(server_pids, n_server_pids);
  if (n_server_pids && !srv_start.ok)
    die("cannot read /proc/PID/stat of every --server-pid");

  struct epoll_event evs[512];
  int deadline_hit = 0;
  /* Phase 1: subscribers, at most --ramp handshaking at once. */
  int next = 0;
  while (n_ready + n_failed_subs < opt.subs) {
    while (next < opt.subs && n_connecting < opt.ramp) sub_start(&subs[next++]);
    if (n_failed_subs) break;
    uint64_t now = now_ns();
    if (now >= t_deadline) { deadline_hit = 1; break; }
    int n = epoll_wait(ep, evs, 512, 100);
    for (int i = 0; i < n; i++) {
      conn_t *c = evs[i].data.ptr;
      if (c->fd < 0) continue;
      if (c->state == ST_CONNECTING) {
        if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) sub_send_handshake(c);
        continue;
      }
      sub_readable(c);
    }
  }
  /* nchan: the upgrade answer does not say that the channel (or, with
   * Redis, the other node's subscription) is in place: wait until the
   * publishing node counts every subscriber. */
  if (opt.target == T_NCHAN && !deadline_hit && n_ready == opt.subs) {
    uint64_t until = now_ns() + 10000000000ull;
    long active = -1;
    while ((active = nchan_active_subscribers()) < opt.subs && now_ns() < until) {
      struct timespec ts = {0, 20000000};
      nanosleep(&ts, NULL);
    }
    if (active != opt.subs && !opt.quiet)
      fprintf(stderr, "mw_loadgen: nchan reports %ld active subscribers of %d\n",
              active, opt.subs);
    nchan_subs_seen = active;
  }
  uint64_t t_ready = now_ns();
  pstat_t srv_ready = procs_read(server_pids, n_server_pids);
  pstat_t aux_ready = procs_read(aux_pids, n_aux_pids);
  if (!opt.quiet)
    fprintf(stderr, "mw_loadgen: %d/%d subscribers ready in %.2f s\n", n_ready,
            opt.subs, (double)(t_ready - t0) / 1e9);

  /* Phase 2: publish and receive. */
  double cpu_self0 = self_cpu();
  int ok_to_publish = !deadline_hit && n_ready == opt.subs;
  pub.fd = -1;
  pub.kind = K_PUB;
  pub.cap = PUB_BUF;
  pub.buf = xmalloc(pub.cap);
  pub_out_cap = PUB_BUF;
  pub_out = xmalloc(pub_out_cap);
  if (ok_to_publish && opt.events > 0) {
    int rc = conn_open(&pub, &pub_addr);
    if (rc) die("publisher: connect: %s", strerror(-rc));
    /* wait for the connection */
    for (;;) {
      int n = epoll_wait(ep, evs, 512, 1000);
      int got = 0;
      for (int i = 0; i < n; i++) {
        conn_t *c = evs[i].data.ptr;
        if (c == &pub) got = 1;
        else if (c->fd >= 0) sub_readable(c);
      }
      if (got) break;
      if (now_ns() >= t_deadline) die("publisher: connect timed out");
    }
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(pub.fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) die("publisher: connect: %s", strerror(err));
    pub.state = ST_READY;
    publishing = 1;
    t_pub_start = now_ns();
    pub_pump(t_pub_start);
  }
  uint64_t quiet_since = 0;
  while (ok_to_publish && opt.events > 0) {
    uint64_t now = now_ns();
    if (deliveries >= expected_total && answered == opt.events) break;
    if (now >= t_deadline) { deadline_hit = 1; break; }
    if (pub.fd < 0 && answered < opt.events) {
      if (!quiet_since) quiet_since = now;
    }
    if (answered == opt.events || pub.fd < 0) {
      uint64_t ref = last_delivery_ns > t_pub_done ? last_delivery_ns : t_pub_done;
      if (!ref) ref = quiet_since ? quiet_since : now;
      if (now - ref > (uint64_t)(opt.drain_s * 1e9)) break;
    }
    int timeout = 50;
    if (opt.rate > 0 && sent < opt.events) {
      uint64_t due = t_pub_start + (uint64_t)((double)sent * 1e9 / opt.rate);
      timeout = due > now ? (int)((due - now) / 1000000) : 0;
      if (timeout > 50) timeout = 50;
    }
    int n = epoll_wait(ep, evs, 512, timeout);
    for (int i = 0; i < n; i++) {
      conn_t *c = evs[i].data.ptr;
      if (c->fd < 0) continue;
      if (c == &pub) {
        if (evs[i].events & EPOLLOUT) pub_flush();
        if (pub.fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
          pub_readable();
      } else {
        sub_readable(c);
      }
    }
    if (opt.rate > 0) pub_pump(now_ns());
  }
  uint64_t t_end = now_ns();
  double cpu_self = self_cpu() - cpu_self0;
  pstat_t srv_end = procs_read(server_pids, n_server_pids);
  pstat_t aux_end = procs_read(aux_pids, n_aux_pids);
  if (n_server_pids && !srv_end.ok) {
    note_error("a server process (--server-pid) is gone");
    srv_end = srv_ready;
  }
  double aux_cpu = aux_end.ok && aux_ready.ok ? aux_end.cpu_s - aux_ready.cpu_s : 0;

  /* Tally. */
  uint64_t ok = 0, dups = 0, gaps = 0, seq_bad = 0, foreign = 0, loss = 0;
  int closed = 0;
  for (int i = 0; i < opt.subs; i++) {
    conn_t *c = &subs[i];
    ok += c->ok;
    dups += c->dups;
    gaps += c->gaps;
    seq_bad += c->seq_bad;
    foreign += c->foreign;
    loss += c->expected > c->ok ? c->expected - c->ok : 0;
    if (c->state != ST_READY) closed++;
  }
  for (int i = 0; i < opt.subs; i++) conn_close(&subs[i]);
  conn_close(&pub);

  qsort(lat, nlat, sizeof *lat, cmp_u32);
  uint64_t t_last = last_delivery_ns ? last_delivery_ns : t_end;
  double dur = t_pub_start ? (double)(t_last - t_pub_start) / 1e9 : 0;
  double pub_dur = t_pub_start && t_pub_done ? (double)(t_pub_done - t_pub_start) / 1e9 : 0;
  double srv_cpu = srv_end.cpu_s - srv_ready.cpu_s;
  double srv_cpu_connect = srv_ready.cpu_s - srv_start.cpu_s;
  int complete = !deadline_hit && ok == expected_total && !dups && !seq_bad &&
                 !foreign && pub_ok == opt.events && !pub_err && !pub_seq_bad &&
                 n_ready == opt.subs;

  FILE *out = stdout;
  if (opt.json_path && !(out = fopen(opt.json_path, "w")))
    die("cannot write %s", opt.json_path);
  fprintf(out,
          "{\"bench\":\"fanout\",\"target\":\"%s\",\"port\":%d,"
          "\"pub_port\":%d,\"server_pids\":%d,\"aux_cpu_s\":%.3f,"
          "\"aux_cpu_us_per_delivery\":%.3f,\"publish_202\":%llu,"
          "\"nchan_active_subscribers\":%ld,\"subscribers\":%d,\"subscribers_ready\":%d,"
          "\"events\":%lld,\"window\":%d,\"rate\":%g,\"tenants\":%d,"
          "\"data_bytes\":%d,\"published_ok\":%lld,\"publish_errors\":%lld,"
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
          "\"loadgen_cpu_share\":%.3f,\"deadline_hit\":%s,\"ok\":%s,"
          "\"error\":\"",
          opt.target == T_NCHAN ? "nchan" : "moonwire", opt.port, opt.pub_port,
          n_server_pids, aux_cpu, ok ? aux_cpu * 1e6 / (double)ok : 0,
          (unsigned long long)pub_no_subs, nchan_subs_seen,
          opt.subs, n_ready, (long long)opt.events, opt.window, opt.rate,
          opt.tenants, opt.pad, (long long)pub_ok, (long long)pub_err,
          (unsigned long long)expected_total, (unsigned long long)ok,
          (unsigned long long)loss, (unsigned long long)dups,
          (unsigned long long)gaps, (unsigned long long)seq_bad,
          (unsigned long long)pub_seq_bad, (unsigned long long)foreign, closed,
          (double)(t_ready - t0) / 1e9, pub_dur, dur,
          pub_dur > 0 ? (double)pub_ok / pub_dur : 0,
          dur > 0 ? (double)ok / dur : 0, nlat, pct(0.5), pct(0.9), pct(0.99),
          pct(0.999), nlat ? lat[nlat - 1] / 10.0 : 0, opt.server_pid,
          srv_cpu, srv_end.user_s - srv_ready.user_s,
          srv_end.sys_s - srv_ready.sys_s, srv_cpu_connect, ok ? srv_cpu * 1e6 / (double)ok : 0,
          srv_start.rss_kb, srv_ready.rss_kb, srv_end.rss_kb, srv_end.hwm_kb,
          cpu_self,
          cpu_self + srv_cpu > 0 ? cpu_self / (cpu_self + srv_cpu) : 0,
          deadline_hit ? "true" : "false", complete ? "true" : "false");
  for (const char *e = first_error; *e; e++) {
    if (*e == '"' || *e == '\\') fputc('\\', out);
    if ((unsigned char)*e < 0x20) continue;
    fputc(*e, out);
  }
  fprintf(out, "\"}\n");
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
            pct(0.5), pct(0.99), pct(0.999), srv_cpu,
            ok ? srv_cpu * 1e6 / (double)ok : 0, srv_end.rss_kb, cpu_self,
            deadline_hit ? " [DEADLINE]" : "");
  return complete ? 0 : 1;
}
