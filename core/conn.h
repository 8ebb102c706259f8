/* Connections: one accepted TCP socket for its whole life, first speaking
 * HTTP (http.c), then possibly taken over as a stream by a transport plugin.
 * Owns the outbound queue: copies for small control writes, shared
 * references for event bytes, a byte cap, and one writev per loop iteration
 * (flushed from the worker's prepare handle). */
#ifndef MW_CONN_H
#define MW_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "moonwire/host.h"
#include "server.h"

#define MW_OUT_INLINE 16 /* bytes stored in a queue entry without malloc */
#define MW_OUT_IOV 64    /* entries per writev */
#define MW_OUT_SLOTS 2   /* entries kept in the connection itself */

/* One queued write: a copy (inline or malloc'd) or a slice of an event's
 * wire bytes with a reference on the event. 24 bytes. */
typedef struct mw_out {
  uint32_t len;
  uint8_t kind; /* MW_OUT_K_* */
  union {
    char inline_buf[MW_OUT_INLINE];
    char *owned; /* malloc'd copy */
    struct {
      const char *base;
      mw_event_t *ev; /* a reference held for base */
    } shared;
  } u;
} mw_out_t;

/* A uv_write in flight: allocated for that time only. */
typedef struct mw_conn_write {
  uv_write_t req;
  mw_out_t *pinned; /* a replaced ring still holding its inline bytes */
} mw_conn_write_t;

enum { MW_OUT_K_INLINE = 0, MW_OUT_K_OWNED = 1, MW_OUT_K_SHARED = 2 };

typedef struct mw_http_state mw_http_state_t;

enum { MW_CONN_HTTP = 0, MW_CONN_STREAM = 1 };

/* An idle connection holds no buffer: the outbound queue lives in the two
 * slots below until more is queued (then a ring is malloc'd, and freed once
 * it drains), a write is first tried at once (uv_try_write) and only what
 * the socket did not take waits in a uv_write whose request is malloc'd for
 * that time, and deadlines (HTTP idle, close) are entries of the worker's
 * deadline lists served by one timer per worker. */
struct mw_conn {
  uv_tcp_t tcp;
  mw_worker_t *worker;
  mw_link_t link;       /* in worker->conns */
  mw_link_t dirty_link; /* in worker->dirty */
  mw_link_t dl_link;    /* in worker->conn_idle / conn_closing (dl_kind) */
  uint64_t deadline;    /* loop time (ms), when dl_kind is set */
  /* The outbound queue: a ring of qcap entries at q (qin or malloc'd); the
   * first ninflight entries from qhead are held by a uv_write (wr),
   * head_off bytes of the first entry are already written. */
  mw_out_t *q;
  mw_conn_write_t *wr; /* while a uv_write is pending */
  uint32_t qhead, qcount, qcap, ninflight;
  uint32_t head_off;
  unsigned dirty : 1;
  unsigned mode : 1;
  unsigned reading : 1;
  unsigned closing : 1;
  unsigned close_started : 1;
  unsigned writing : 1;
  unsigned overflowed : 1;
  unsigned dl_kind : 2; /* 0, or the deadline list the connection is in */
  /* stream mode */
  const mw_stream_handler_t *handler;
  void *ud;
  /* HTTP mode (freed on the loop iteration after the take-over) */
  mw_http_state_t *http;
  size_t queued;   /* bytes queued + in flight; the cap: worker */
  char remote[40]; /* the longest inet_ntop text of an IPv6 address */
  mw_out_t qin[MW_OUT_SLOTS];
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

/* Bytes queued or in flight on c. */
size_t mw__conn_queued(const mw_conn_t *c);

/* A malloc'd, NUL-terminated copy of the bytes queued on c and not yet
 * handed to the socket (tests); *len gets their count if len is set. */
char *mw__conn_pending_copy(const mw_conn_t *c, size_t *len);

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
