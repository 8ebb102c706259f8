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
static _Atomic long total_conns; /* across workers, for limits.max_connections */

void mw__conn_metrics_init(void) {
  m_open = mw__metric(MW_METRIC_GAUGE, "moonwire_tcp_connections",
                      "Open TCP connections (all transports)", NULL);
  m_bytes_out = mw__metric(MW_METRIC_COUNTER, "moonwire_bytes_out_total",
                           "Bytes written to clients", NULL);
  m_slow = mw__metric(MW_METRIC_COUNTER, "moonwire_slow_consumer_closes_total",
                      "Connections closed because their outbound queue "
                      "passed its cap",
                      NULL);
  m_dropped_slow = mw__metric(MW_METRIC_COUNTER, "moonwire_events_dropped_total",
                              "Events not published or not delivered, by reason",
                              "reason=\"slow_consumer\"");
  m_dropped_closing = mw__metric(MW_METRIC_COUNTER,
                                 "moonwire_events_dropped_total", NULL,
                                 "reason=\"connection_closing\"");
  m_accept_errors = mw__metric(MW_METRIC_COUNTER, "moonwire_accept_errors_total",
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

/* --- timers and closing ------------------------------------------------- */

static void release_out(mw_out_t *o) {
  if (o->ev) mw_event_unref(&o->ev);
  free(o->owned);
  o->owned = NULL;
}

static void on_handle_closed(uv_handle_t *h) {
  mw_conn_t *c = h->data;
  if (--c->handles_open > 0) return;
  for (size_t i = 0; i < c->qcount; i++)
    release_out(&c->q[(c->qhead + i) % c->qcap]);
  free(c->q);
  c->worker->outbound_bytes -= c->queued;
  if (c->dirty) mw__list_remove(&c->dirty_link);
  mw__list_remove(&c->link);
  c->worker->conn_count--;
  total_conns--;
  mw__metric_add(m_open, -1);
  if (c->mode == MW_CONN_HTTP) {
    mw__http_on_close(c);
  } else {
    mw__http_on_close(c); /* frees leftover HTTP state */
    c->handler->on_close(c->ud);
  }
  free(c);
}

static void finish_close(mw_conn_t *c) {
  if (c->close_started) return;
  c->close_started = 1;
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_timer(uv_timer_t *t) {
  mw_conn_t *c = t->data;
  if (c->closing) {
    finish_close(c); /* the peer did not take our last bytes in time */
    return;
  }
  /* HTTP idle timeout: no complete request in time. */
  if (c->mode == MW_CONN_HTTP && mw__http_idle(c)) mw__conn_close(c);
}

void mw__conn_idle_timer(mw_conn_t *c, uint64_t ms) {
  if (c->closing) return;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

void mw__conn_close(mw_conn_t *c) {
  if (c->closing) return;
  mw__conn_read_stop(c);
  c->closing = 1;
  if (!c->writing && c->qcount == 0) {
    finish_close(c);
    return;
  }
  uv_timer_start(&c->timer, on_timer, MW_CLOSE_DEADLINE_MS, 0);
}

/* --- accepting ---------------------------------------------------------- */

mw_conn_t *mw__conn_new(mw_worker_t *w) {
  mw_conn_t *c = mw_xcalloc(1, sizeof *c);
  c->worker = w;
  uv_tcp_init(&w->loop, &c->tcp);
  uv_timer_init(&w->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->handles_open = 2;
  mw__list_init(&c->dirty_link);
  mw__list_push(&w->conns, &c->link);
  w->conn_count++;
  total_conns++;
  mw__metric_add(m_open, 1);
  c->cap = (size_t)mw__config_int(w->server->cfg, "limits.outbound_queue",
                                  4 << 20);
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

static mw_out_t *push_out(mw_conn_t *c) {
  if (c->qcount == c->qcap) {
    size_t ncap = c->qcap ? c->qcap * 2 : 8;
    mw_out_t *nq = mw_xmalloc(ncap * sizeof *nq);
    for (size_t i = 0; i < c->qcount; i++)
      nq[i] = c->q[(c->qhead + i) % c->qcap];
    free(c->q);
    c->q = nq;
    c->qcap = ncap;
    c->qhead = 0;
  }
  mw_out_t *o = &c->q[(c->qhead + c->qcount++) % c->qcap];
  memset(o, 0, offsetof(mw_out_t, inline_buf));
  return o;
}

static void push_copy(mw_conn_t *c, const void *data, size_t len) {
  if (len == 0) return;
  mw_out_t *o = push_out(c);
  o->len = len;
  if (len <= MW_OUT_INLINE) {
    memcpy(o->inline_buf, data, len);
  } else {
    o->owned = mw_xmalloc(len);
    memcpy(o->owned, data, len);
    o->base = o->owned;
  }
}

/* Accepts `len` more bytes or reports the overflow (once). */
static int admit(mw_conn_t *c, size_t len, int force) {
  if (c->closing) return MW_ECLOSED;
  if (force) return 0;
  if (c->overflowed) return MW_ELIMIT;
  if (c->queued + len > c->cap) {
    c->overflowed = 1;
    mw__metric_add(m_slow, 1);
    mw_log(MW_LOG_INFO, "conn",
           "slow consumer %s: %zu bytes queued, cap %zu: closing", c->remote,
           c->queued, c->cap);
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
  mw_out_t *o = push_out(c);
  o->base = ev->wire[wire].data;
  o->len = ev->wire[wire].len;
  o->ev = mw_event_ref(ev);
  push_copy(c, suffix, slen);
  c->queued += len;
  c->worker->outbound_bytes += len;
  mark_dirty(c);
  return 0;
}

size_t mw__conn_queued(const mw_conn_t *c) {
  return c->queued;
}

static void start_write(mw_conn_t *c);

static void on_write(uv_write_t *req, int status) {
  mw_conn_t *c = req->data;
  size_t bytes = 0;
  for (size_t i = 0; i < c->ninflight; i++) {
    bytes += c->inflight[i].len;
    release_out(&c->inflight[i]);
  }
  c->ninflight = 0;
  c->writing = 0;
  c->queued -= bytes;
  c->worker->outbound_bytes -= bytes;
  if (status < 0) {
    if (status != UV_ECANCELED) mw__conn_close(c);
    if (c->closing) finish_close(c);
    return;
  }
  mw__metric_add(m_bytes_out, (int64_t)bytes);
  if (c->qcount) {
    start_write(c);
  } else if (c->closing) {
    finish_close(c);
  }
}

static void start_write(mw_conn_t *c) {
  if (c->writing || c->qcount == 0 || c->close_started) return;
  uv_buf_t bufs[MW_OUT_IOV] = {{0}};
  size_t n = 0;
  while (c->qcount && n < MW_OUT_IOV) {
    mw_out_t *o = &c->inflight[n];
    *o = c->q[c->qhead];
    c->qhead = (c->qhead + 1) % c->qcap;
    c->qcount--;
    bufs[n] = uv_buf_init(o->base ? (char *)o->base : o->inline_buf,
                          (unsigned)o->len);
    n++;
  }
  c->ninflight = n;
  c->writing = 1;
  c->wreq.data = c;
  int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, (unsigned)n,
                    on_write);
  if (rc) {
    /* The callback will not fire: release now and close. */
    c->writing = 1; /* keep start_write out while we unwind */
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
      bytes += c->inflight[i].len;
      release_out(&c->inflight[i]);
    }
    c->ninflight = 0;
    c->queued -= bytes;
    c->worker->outbound_bytes -= bytes;
    c->writing = 0;
    mw__conn_close(c);
    finish_close(c);
  }
}

void mw__conn_flush_dirty(mw_worker_t *w) {
  while (!mw__list_empty(&w->dirty)) {
    mw_link_t *l = w->dirty.next;
    mw__list_remove(l);
    mw_conn_t *c = MW_CONTAINER_OF(l, mw_conn_t, dirty_link);
    c->dirty = 0;
    start_write(c);
  }
}

void mw__conn_take(mw_conn_t *c, const mw_stream_handler_t *h, void *ud) {
  c->mode = MW_CONN_STREAM;
  c->handler = h;
  c->ud = ud;
  uv_timer_stop(&c->timer);
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
