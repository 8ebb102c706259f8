/* Connections and their outbound queues: see conn.h. */
#include "conn.h"

#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "http.h"
#include "log.h"
#include "metrics.h"

#define MW_CLOSE_DEADLINE_MS 2000

static mw_metric_t *m_open, *m_bytes_out, *m_slow, *m_accept_errors,
    *m_rejected_max_conn, *m_dropped_slow, *m_dropped_closing;
static _Atomic long
    total_conns; /* across workers, for limits.max_connections */

void mw__conn_metrics_init(void) {
  m_open = mw__metric(MW_METRIC_GAUGE, "moonwire_tcp_connections",
                      "Open TCP connections (all transports)", NULL);
  m_bytes_out = mw__metric(MW_METRIC_COUNTER, "moonwire_bytes_out_total",
                           "Bytes written to clients", NULL);
  m_slow = mw__metric(MW_METRIC_COUNTER, "moonwire_slow_consumer_closes_total",
                      "Connections closed because their outbound queue "
                      "passed its cap",
                      NULL);
  m_dropped_slow =
      mw__metric(MW_METRIC_COUNTER, "moonwire_events_dropped_total",
                 "Events not published or not delivered, by reason",
                 "reason=\"slow_consumer\"");
  m_dropped_closing =
      mw__metric(MW_METRIC_COUNTER, "moonwire_events_dropped_total", NULL,
                 "reason=\"connection_closing\"");
  m_accept_errors =
      mw__metric(MW_METRIC_COUNTER, "moonwire_accept_errors_total",
                 "Failed accepts", NULL);
  m_rejected_max_conn =
      mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total",
                 "Requests or connections rejected, by reason",
                 "reason=\"max_connections\"");
}

/* --- reading ------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  mw_conn_t *c = h->data;
  buf->base = c->worker->read_buf;
  buf->len = 65536;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  mw_conn_t *c = s->data;
  if (n < 0) {
    mw__conn_close(c);
    return;
  }
  if (n == 0 || c->closing) return;
  if (c->mode == MW_CONN_HTTP)
    mw__http_on_data(c, buf->base, (size_t)n);
  else
    c->handler->on_data(c->ud, buf->base, (size_t)n);
}

void mw__conn_read_stop(mw_conn_t *c) {
  if (!c->reading || c->close_started) return;
  c->reading = 0;
  uv_read_stop((uv_stream_t *)&c->tcp);
}

void mw__conn_read_start(mw_conn_t *c) {
  if (c->closing || c->reading) return;
  c->reading = 1;
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read))
    mw__conn_close(c);
}

/* --- deadlines: one timer per worker ----------------------------------- */

enum { DL_NONE = 0, DL_IDLE = 1, DL_CLOSE = 2 };

static void finish_close(mw_conn_t *c);

static mw_conn_t *dl_first(mw_link_t *head) {
  return mw__list_empty(head) ? NULL
                              : MW_CONTAINER_OF(head->next, mw_conn_t, dl_link);
}

static void on_conn_timer(uv_timer_t *t);

/* Arms the worker's timer for its earliest deadline (or stops it). */
static void dl_arm(mw_worker_t *w) {
  if (!w->conn_timer) return;
  uint64_t due = UINT64_MAX;
  mw_conn_t *a = dl_first(&w->conn_idle), *b = dl_first(&w->conn_closing);
  if (a) due = a->deadline;
  if (b && b->deadline < due) due = b->deadline;
  if (due == w->conn_timer_due) return;
  w->conn_timer_due = due;
  if (due == UINT64_MAX) {
    uv_timer_stop(w->conn_timer);
    return;
  }
  uint64_t now = uv_now(&w->loop);
  uv_timer_start(w->conn_timer, on_conn_timer, due > now ? due - now : 0, 0);
}

static void dl_clear(mw_conn_t *c) {
  if (c->dl_kind == DL_NONE) return;
  mw__list_remove(&c->dl_link);
  c->dl_kind = DL_NONE;
  /* The timer may fire early for nothing: it re-arms itself then. */
}

/* Puts c in the `kind` list with a deadline `ms` from now. Deadlines of one
 * kind come almost always in order (one duration per kind), so the sorted
 * insertion from the tail is O(1) in practice. */
static void dl_set(mw_conn_t *c, int kind, uint64_t ms) {
  mw_worker_t *w = c->worker;
  dl_clear(c);
  c->dl_kind = (unsigned)kind;
  c->deadline = uv_now(&w->loop) + ms;
  mw_link_t *head = kind == DL_IDLE ? &w->conn_idle : &w->conn_closing;
  mw_link_t *at = head->prev;
  while (at != head &&
         MW_CONTAINER_OF(at, mw_conn_t, dl_link)->deadline > c->deadline)
    at = at->prev;
  c->dl_link.prev = at;
  c->dl_link.next = at->next;
  at->next->prev = &c->dl_link;
  at->next = &c->dl_link;
  if (c->deadline < w->conn_timer_due) dl_arm(w);
}

static void on_conn_timer(uv_timer_t *t) {
  mw_worker_t *w = t->data;
  uint64_t now = uv_now(&w->loop);
  w->conn_timer_due = UINT64_MAX; /* a one-shot: not armed any more */
  mw_conn_t *c;
  while ((c = dl_first(&w->conn_closing)) && c->deadline <= now) {
    dl_clear(c);
    finish_close(c); /* the peer did not take our last bytes in time */
  }
  while ((c = dl_first(&w->conn_idle)) && c->deadline <= now) {
    dl_clear(c);
    /* HTTP idle timeout: no complete request in time. */
    if (c->mode == MW_CONN_HTTP && mw__http_idle(c)) mw__conn_close(c);
  }
  dl_arm(w);
}

static void free_handle(uv_handle_t *h) {
  free(h);
}

/* The worker's first connection: its deadline timer. */
static void worker_conns_begin(mw_worker_t *w) {
  if (w->conn_timer) return;
  mw__list_init(&w->conn_idle);
  mw__list_init(&w->conn_closing);
  w->conn_timer = mw_xmalloc(sizeof *w->conn_timer);
  uv_timer_init(&w->loop, w->conn_timer);
  w->conn_timer->data = w;
  w->conn_timer_due = UINT64_MAX;
  w->conn_cap =
      (size_t)mw__config_int(w->server->cfg, "limits.outbound_queue", 4 << 20);
}

/* The worker's last connection is gone: nothing keeps its loop alive. */
static void worker_conns_end(mw_worker_t *w) {
  if (!w->conn_timer) return;
  uv_close((uv_handle_t *)w->conn_timer, free_handle);
  w->conn_timer = NULL;
  w->conn_timer_due = UINT64_MAX;
}

/* --- closing ------------------------------------------------------------ */

static void release_out(mw_out_t *o) {
  if (o->kind == MW_OUT_K_SHARED)
    mw_event_unref(&o->u.shared.ev);
  else if (o->kind == MW_OUT_K_OWNED)
    free(o->u.owned);
  o->kind = MW_OUT_K_INLINE;
}

static void on_handle_closed(uv_handle_t *h) {
  mw_conn_t *c = h->data;
  mw_worker_t *w = c->worker;
  for (uint32_t i = 0; i < c->qcount; i++)
    release_out(&c->q[(c->qhead + i) % c->qcap]);
  if (c->q != c->qin) free(c->q);
  if (c->wr) free(c->wr->pinned);
  free(c->wr);
  w->outbound_bytes -= c->queued;
  dl_clear(c);
  if (c->dirty) mw__list_remove(&c->dirty_link);
  mw__list_remove(&c->link);
  w->conn_count--;
  total_conns--;
  mw__metric_add(m_open, -1);
  if (c->mode == MW_CONN_HTTP) {
    mw__http_on_close(c);
  } else {
    mw__http_on_close(c); /* frees leftover HTTP state */
    c->handler->on_close(c->ud);
  }
  free(c);
  if (w->conn_count == 0) worker_conns_end(w);
}

static void finish_close(mw_conn_t *c) {
  if (c->close_started) return;
  c->close_started = 1;
  dl_clear(c);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

void mw__conn_idle_timer(mw_conn_t *c, uint64_t ms) {
  if (c->closing) return;
  dl_set(c, DL_IDLE, ms);
}

void mw__conn_close(mw_conn_t *c) {
  if (c->closing) return;
  mw__conn_read_stop(c);
  c->closing = 1;
  if (!c->writing && c->qcount == 0) {
    finish_close(c);
    return;
  }
  dl_set(c, DL_CLOSE, MW_CLOSE_DEADLINE_MS);
}

/* --- accepting ---------------------------------------------------------- */

mw_conn_t *mw__conn_new(mw_worker_t *w) {
  worker_conns_begin(w);
  mw_conn_t *c = mw_xcalloc(1, sizeof *c);
  c->worker = w;
  uv_tcp_init(&w->loop, &c->tcp);
  c->tcp.data = c;
  c->q = c->qin;
  c->qcap = MW_OUT_SLOTS;
  mw__list_init(&c->dirty_link);
  mw__list_init(&c->dl_link);
  mw__list_push(&w->conns, &c->link);
  w->conn_count++;
  total_conns++;
  mw__metric_add(m_open, 1);
  return c;
}

void mw__conn_accept(mw_worker_t *w, uv_stream_t *server) {
  mw_conn_t *c = mw__conn_new(w);
  if (uv_accept(server, (uv_stream_t *)&c->tcp)) {
    mw__metric_add(m_accept_errors, 1);
    c->closing = 1;
    finish_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
    if (ss.ss_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)&ss, c->remote, sizeof c->remote);
    else
      uv_ip4_name((struct sockaddr_in *)&ss, c->remote, sizeof c->remote);
  }
  mw__http_start(c);
  long max = (long)mw__config_int(w->server->cfg, "limits.max_connections", 0);
  if (max > 0 && total_conns > max) {
    mw__metric_add(m_rejected_max_conn, 1);
    mw__http_reject(c, 503, "too many connections");
    return;
  }
  mw__conn_read_start(c);
}

/* --- writing ------------------------------------------------------------ */

static void mark_dirty(mw_conn_t *c) {
  if (c->dirty || c->writing) return;
  c->dirty = 1;
  mw__list_push(&c->worker->dirty, &c->dirty_link);
}

/* Grows the ring (doubling; the inline slots first). A ring held by the
 * write in flight (its inline bytes are in libuv's hands) is kept until the
 * write callback. */
static void grow_ring(mw_conn_t *c) {
  uint32_t ncap = c->qcap < 8 ? 8 : c->qcap * 2;
  mw_out_t *nq = mw_xmalloc(ncap * sizeof *nq);
  for (uint32_t i = 0; i < c->qcount; i++)
    nq[i] = c->q[(c->qhead + i) % c->qcap];
  if (c->q != c->qin) {
    if (c->wr && !c->wr->pinned)
      c->wr->pinned = c->q;
    else
      free(c->q);
  }
  c->q = nq;
  c->qcap = ncap;
  c->qhead = 0;
}

/* Back to the inline slots once nothing is queued or in flight. */
static void shrink_ring(mw_conn_t *c) {
  if (c->qcount || c->writing) return;
  if (c->q != c->qin) {
    free(c->q);
    c->q = c->qin;
    c->qcap = MW_OUT_SLOTS;
  }
  c->qhead = 0;
}

static mw_out_t *push_out(mw_conn_t *c) {
  if (c->qcount == c->qcap) grow_ring(c);
  mw_out_t *o = &c->q[(c->qhead + c->qcount++) % c->qcap];
  o->kind = MW_OUT_K_INLINE;
  o->len = 0;
  return o;
}

static void push_copy(mw_conn_t *c, const void *data, size_t len) {
  if (len == 0) return;
  mw_out_t *o = push_out(c);
  o->len = (uint32_t)len;
  if (len <= MW_OUT_INLINE) {
    memcpy(o->u.inline_buf, data, len);
  } else {
    o->kind = MW_OUT_K_OWNED;
    o->u.owned = mw_xmalloc(len);
    memcpy(o->u.owned, data, len);
  }
}

static const char *out_bytes(const mw_out_t *o) {
  switch (o->kind) {
  case MW_OUT_K_OWNED:
    return o->u.owned;
  case MW_OUT_K_SHARED:
    return o->u.shared.base;
  default:
    return o->u.inline_buf;
  }
}

/* Accepts `len` more bytes or reports the overflow (once). */
static int admit(mw_conn_t *c, size_t len, int force) {
  if (c->closing) return MW_ECLOSED;
  if (len > UINT32_MAX) return MW_ETOOBIG;
  if (force) return 0;
  if (c->overflowed) return MW_ELIMIT;
  if (c->queued + len > c->worker->conn_cap) {
    c->overflowed = 1;
    mw__metric_add(m_slow, 1);
    mw_log(MW_LOG_INFO, "conn",
           "slow consumer %s: %zu bytes queued, cap %zu: closing", c->remote,
           c->queued, c->worker->conn_cap);
    if (c->mode == MW_CONN_STREAM && c->handler->on_overflow)
      c->handler->on_overflow(c->ud);
    else
      mw__conn_close(c);
    return MW_ELIMIT;
  }
  return 0;
}

int mw__conn_write(mw_conn_t *c, const void *data, size_t len, int force) {
  int rc = admit(c, len, force);
  if (rc) return rc;
  push_copy(c, data, len);
  c->queued += len;
  c->worker->outbound_bytes += len;
  mark_dirty(c);
  return 0;
}

int mw__conn_write_event(mw_conn_t *c, const void *prefix, size_t plen,
                         mw_event_t *ev, mw_wire_t wire, const void *suffix,
                         size_t slen) {
  if ((unsigned)wire >= MW_WIRE_COUNT || plen > 16 || slen > 16)
    return MW_EINVAL;
  size_t len = plen + ev->wire[wire].len + slen;
  int rc = admit(c, len, 0);
  if (rc) {
    mw__metric_add(rc == MW_ELIMIT ? m_dropped_slow : m_dropped_closing, 1);
    return rc;
  }
  push_copy(c, prefix, plen);
  if (ev->wire[wire].len) {
    mw_out_t *o = push_out(c);
    o->kind = MW_OUT_K_SHARED;
    o->len = (uint32_t)ev->wire[wire].len;
    o->u.shared.base = ev->wire[wire].data;
    o->u.shared.ev = mw_event_ref(ev);
  }
  push_copy(c, suffix, slen);
  c->queued += len;
  c->worker->outbound_bytes += len;
  mark_dirty(c);
  return 0;
}

size_t mw__conn_queued(const mw_conn_t *c) {
  return c->queued;
}

char *mw__conn_pending_copy(const mw_conn_t *c, size_t *len) {
  size_t total = 0;
  for (uint32_t i = c->ninflight; i < c->qcount; i++)
    total += c->q[(c->qhead + i) % c->qcap].len;
  char *out = mw_xmalloc(total + 1), *p = out;
  for (uint32_t i = c->ninflight; i < c->qcount; i++) {
    const mw_out_t *o = &c->q[(c->qhead + i) % c->qcap];
    size_t off = i == 0 ? c->head_off : 0;
    memcpy(p, out_bytes(o) + off, o->len - off);
    p += o->len - off;
  }
  *p = 0;
  if (len) *len = (size_t)(p - out);
  return out;
}

/* `bytes` left the queue (written or dropped): releases the entries they
 * complete and keeps the offset into a partly written one. */
static void consume(mw_conn_t *c, size_t bytes) {
  c->queued -= bytes;
  c->worker->outbound_bytes -= bytes;
  bytes += c->head_off;
  while (c->qcount && bytes >= c->q[c->qhead].len) {
    mw_out_t *o = &c->q[c->qhead];
    bytes -= o->len;
    release_out(o);
    c->qhead = (c->qhead + 1) % c->qcap;
    c->qcount--;
  }
  c->head_off = (uint32_t)bytes; /* less than the entry's length */
}

/* The iovecs of up to MW_OUT_IOV queued entries from the head. */
static unsigned gather(mw_conn_t *c, uv_buf_t *bufs, size_t *total) {
  unsigned n = 0;
  size_t sum = 0;
  for (; n < c->qcount && n < MW_OUT_IOV; n++) {
    const mw_out_t *o = &c->q[(c->qhead + n) % c->qcap];
    size_t off = n == 0 ? c->head_off : 0;
    bufs[n] = uv_buf_init((char *)out_bytes(o) + off, (unsigned)(o->len - off));
    sum += o->len - off;
  }
  *total = sum;
  return n;
}

static void start_write(mw_conn_t *c);

/* A write failed: the queue stays until the close callback. */
static void write_failed(mw_conn_t *c) {
  mw__conn_close(c);
  finish_close(c);
}

static void on_write(uv_write_t *req, int status) {
  mw_conn_t *c = req->data;
  size_t bytes = 0;
  for (uint32_t i = 0; i < c->ninflight; i++)
    bytes += c->q[(c->qhead + i) % c->qcap].len;
  bytes -= c->head_off;
  c->ninflight = 0;
  c->writing = 0;
  free(c->wr->pinned);
  free(c->wr);
  c->wr = NULL;
  consume(c, bytes);
  if (status < 0) {
    if (status != UV_ECANCELED) mw__conn_close(c);
    if (c->closing) finish_close(c);
    return;
  }
  mw__metric_add(m_bytes_out, (int64_t)bytes);
  if (c->qcount) {
    start_write(c);
  } else {
    shrink_ring(c);
    if (c->closing) finish_close(c);
  }
  if (c->mode == MW_CONN_HTTP && !c->closing) mw__http_on_drained(c);
}

/* Writes what the socket takes now (writev through uv_try_write, 64 entries
 * at a time); the rest goes to one uv_write whose request is allocated only
 * for as long as it is pending. */
static void start_write(mw_conn_t *c) {
  if (c->writing || c->close_started) return;
  uv_buf_t bufs[MW_OUT_IOV];
  while (c->qcount) {
    size_t total;
    unsigned n = gather(c, bufs, &total);
    int rc = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (rc < 0 && rc != UV_EAGAIN) {
      write_failed(c);
      return;
    }
    size_t done = rc > 0 ? (size_t)rc : 0;
    if (done) {
      mw__metric_add(m_bytes_out, (int64_t)done);
      consume(c, done);
    }
    if (done == total) continue;
    /* The socket is full: the rest of these entries waits for libuv. */
    n = gather(c, bufs, &total);
    c->wr = mw_xmalloc(sizeof *c->wr);
    c->wr->req.data = c;
    c->wr->pinned = NULL;
    c->ninflight = n;
    c->writing = 1;
    rc = uv_write(&c->wr->req, (uv_stream_t *)&c->tcp, bufs, n, on_write);
    if (rc) {
      /* The callback will not fire. */
      free(c->wr);
      c->wr = NULL;
      c->ninflight = 0;
      c->writing = 0;
      write_failed(c);
    }
    return;
  }
  shrink_ring(c);
  if (c->closing) finish_close(c);
}

void mw__conn_flush_dirty(mw_worker_t *w) {
  while (!mw__list_empty(&w->dirty)) {
    mw_link_t *l = w->dirty.next;
    mw__list_remove(l);
    mw_conn_t *c = MW_CONTAINER_OF(l, mw_conn_t, dirty_link);
    c->dirty = 0;
    /* Taken over on an earlier call: the HTTP state is no longer on any
     * stack, and a stream does not need it. */
    if (c->mode == MW_CONN_STREAM && c->http) mw__http_on_close(c);
    start_write(c);
    /* Parsing that waited for the socket goes on (its answers mark the
     * connection dirty again: this loop writes them). */
    if (c->mode == MW_CONN_HTTP && !c->closing) mw__http_on_drained(c);
  }
}

void mw__conn_take(mw_conn_t *c, const mw_stream_handler_t *h, void *ud) {
  c->mode = MW_CONN_STREAM;
  c->handler = h;
  c->ud = ud;
  if (!c->closing) dl_clear(c);
  /* The flush of this iteration frees the HTTP state (see flush_dirty). */
  if (!c->dirty) {
    c->dirty = 1;
    mw__list_push(&c->worker->dirty, &c->dirty_link);
  }
}

void mw__conn_close_all(mw_worker_t *w, int all) {
  mw_link_t *l = w->conns.next;
  while (l != &w->conns) {
    mw_link_t *next = l->next;
    mw_conn_t *c = MW_CONTAINER_OF(l, mw_conn_t, link);
    if (all) {
      mw__conn_close(c);
      if (all > 1) finish_close(c);
    } else if (c->mode == MW_CONN_HTTP && mw__http_idle(c)) {
      mw__conn_close(c);
    }
    l = next;
  }
}
