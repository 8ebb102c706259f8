/* Connections: one accepted TCP socket for its whole life, first speaking
 * HTTP (http.c), then possibly taken over as a stream by a transport plugin.
 * Owns the outbound queue: copies for small control writes, shared
 * references for event bytes, a byte cap, and one writev per loop iteration
 * (flushed from the worker's prepare handle). */
#ifndef MW_CONN_H
#define MW_CONN_H

#include <stddef.h>
#include <uv.h>

#include "moonwire/host.h"
#include "server.h"

#define MW_OUT_INLINE 32 /* bytes stored in a queue entry without malloc */
#define MW_OUT_IOV 64    /* entries per writev */

typedef struct mw_out {
  const char *base; /* resolved at flush; NULL: use inline_buf */
  size_t len;
  mw_event_t *ev;   /* a reference held for base, or NULL */
  char *owned;      /* malloc'd copy, or NULL */
  char inline_buf[MW_OUT_INLINE];
} mw_out_t;

typedef struct mw_http_state mw_http_state_t;

enum { MW_CONN_HTTP = 0, MW_CONN_STREAM = 1 };

struct mw_conn {
  uv_tcp_t tcp;
  uv_timer_t timer; /* HTTP idle timeout, then the close deadline */
  mw_worker_t *worker;
  mw_link_t link;   /* in worker->conns */
  mw_link_t dirty_link;
  int dirty;
  int mode;
  int reading;
  int closing;
  int close_started;
  int handles_open;
  char remote[64];
  /* outbound queue (a ring) and the writev in flight */
  mw_out_t *q;
  size_t qhead, qcount, qcap;
  mw_out_t inflight[MW_OUT_IOV];
  size_t ninflight;
  uv_write_t wreq;
  int writing;
  size_t queued; /* bytes queued + in flight */
  size_t cap;
  int overflowed;
  /* stream mode */
  const mw_stream_handler_t *handler;
  void *ud;
  /* HTTP mode */
  mw_http_state_t *http;
};

/* A new connection object on worker w, not yet connected (the socket handle
 * is initialised; accept fills it). Owned by the worker until closed. */
mw_conn_t *mw__conn_new(mw_worker_t *w);

/* Accepts one connection from `server` on worker `w`. Logs failures. */
void mw__conn_accept(mw_worker_t *w, uv_stream_t *server);

/* Queues a copy of data. 0, MW_ELIMIT (past the cap unless force: the
 * handler's on_overflow fires once), MW_ECLOSED. */
int mw__conn_write(mw_conn_t *c, const void *data, size_t len, int force);

/* Queues prefix (copied) + the event's wire bytes (shared) + suffix. */
int mw__conn_write_event(mw_conn_t *c, const void *prefix, size_t plen,
                         mw_event_t *ev, mw_wire_t wire, const void *suffix,
                         size_t slen);

size_t mw__conn_queued(const mw_conn_t *c);

/* Closes after flushing (bounded by a short deadline); idempotent. */
void mw__conn_close(mw_conn_t *c);

/* Switches to stream mode with handler h. */
void mw__conn_take(mw_conn_t *c, const mw_stream_handler_t *h, void *ud);

/* (Re)arms the HTTP idle timer: the connection closes after ms of quiet. */
void mw__conn_idle_timer(mw_conn_t *c, uint64_t ms);

/* Stops / resumes reading (HTTP back-pressure while a request is handled). */
void mw__conn_read_stop(mw_conn_t *c);
void mw__conn_read_start(mw_conn_t *c);

/* Worker hooks: flush every dirty connection (prepare callback). */
void mw__conn_flush_dirty(mw_worker_t *w);

/* Closes every connection of the worker that is idle in HTTP mode (drain),
 * or all of them if `all`. */
void mw__conn_close_all(mw_worker_t *w, int all);

/* Registers the connection metrics (called once at start). */
void mw__conn_metrics_init(void);

#endif
