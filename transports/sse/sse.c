/* Server-Sent Events transport: GET /sse?topics=a,b[&since=CURSOR].
 *
 * One stream per request: the connection is taken over with a
 * text/event-stream head, then
 *
 *   retry: 2000                    (once)
 *   id: <cursor>\ndata: <event>\n\n    (each event; the data bytes are the
 *                                   event's shared JSON wire form)
 *   event: moonwire\ndata: {"type":"recovery",...}\n\n  (a topic whose
 *                                   missed events cannot be replayed)
 *   event: error\ndata: {"topic","code","reason"}\n\n  (a refused topic)
 *   : hb\n\n                       (every limits.sse_heartbeat seconds)
 *
 * An event's id is the cursor (core/cursor.h) of every topic of the stream
 * after that event, so Last-Event-ID resumes all of them at once. A block
 * with only an id follows the subscriptions, so even a quiet stream can be
 * resumed from the moment it was opened (EventSource keeps an id-only
 * block's id: HTML, "dispatch the event", step 1).
 *
 * Sessions are reference-counted: the connection holds one (dropped in
 * on_close), every pending host callback one, and the route a guard. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moonwire/plugin.h"
#include "topic_params.h"

#define SSE_SUBSYS "sse"
#define SSE_DEFAULT_HEARTBEAT 15 /* seconds */
#define SSE_MAX_INPUT                                                          \
  (64 * 1024) /* bytes a client may send after the request */
#define SSE_CORS_LEN 512

typedef enum sse_reject {
  SSE_REJ_BAD_REQUEST,
  SSE_REJ_ORIGIN,
  SSE_REJ_CONNECT,
  SSE_REJ_UNAVAILABLE,
  SSE_REJ_COUNT
} sse_reject_t;

static const char *const sse_reject_labels[SSE_REJ_COUNT] = {
    "reason=\"bad_request\"", "reason=\"origin\"", "reason=\"connect\"",
    "reason=\"unavailable\""};

typedef struct sse_plugin {
  const mw_host_v1_t *host;
  uint64_t heartbeat_ms;  /* 0: none */
  mw_metric_t *m_streams; /* gauge */
  mw_metric_t *m_events;
  mw_metric_t *m_slow;
  mw_metric_t *m_rejected[SSE_REJ_COUNT];
} sse_plugin_t;

typedef struct sse_stream sse_stream_t;

/* The id line last built for a stream whose cursor holds one topic: it
 * depends only on (topic, seq, epoch), so the other streams of that topic
 * reuse it for the same event instead of encoding their own. */
typedef struct sse_id_cache {
  char *topic, *epoch; /* owned; NULL: empty */
  uint64_t seq;
  char *line; /* "id: <cursor>\n\n", owned */
  size_t len; /* of line, both newlines included */
} sse_id_cache_t;

/* Per worker: the open streams (for heartbeats, drain and stop). */
typedef struct sse_worker {
  sse_plugin_t *p;
  mw_worker_t *w;
  uv_loop_t *loop;
  sse_stream_t *streams; /* doubly linked */
  uv_timer_t heartbeat;
  int draining;
  sse_id_cache_t id_cache;
} sse_worker_t;

/* The user data of one pending host callback on a stream's topic. */
typedef struct sse_cb_ctx {
  sse_stream_t *s;
  size_t index;
} sse_cb_ctx_t;

struct sse_stream {
  sse_worker_t *sw; /* NULL once detached by worker_stop */
  sse_plugin_t *p;
  const mw_host_v1_t *host;
  mw_conn_t *conn;     /* NULL before the take and after on_close */
  mw_client_t *client; /* NULL after on_close */
  tp_list_t topics;
  sse_cb_ctx_t *ctx; /* one per topic */
  sse_stream_t *prev, *next;
  unsigned refs;
  size_t rx; /* bytes received after the request */
  int pending_positions;
  const char *close_reason; /* static text for on_disconnect */
  unsigned taking : 1;
  unsigned closing : 1;
  unsigned closed : 1;
  unsigned in_list : 1;
  unsigned setting_up : 1;
  unsigned close_after_take : 1;
};

static void *sse_xcalloc(size_t n, size_t size) {
  void *p = calloc(n, size);
  if (!p) abort(); /* small internal allocation */
  return p;
}

/* --- references and the worker list --------------------------------------- */

static void sse_ref(sse_stream_t *s) {
  s->refs++;
}

/* Drops a reference taken for a callback that will not fire; the caller
 * holds another one, so this never frees. */
static void sse_unref_held(sse_stream_t *s) {
  s->refs--;
}

static void sse_unref(sse_stream_t *s) {
  if (--s->refs > 0) return;
  tp_free(&s->topics);
  free(s->ctx);
  free(s);
}

static void sse_link(sse_stream_t *s) {
  sse_worker_t *sw = s->sw;
  s->prev = NULL;
  s->next = sw->streams;
  if (sw->streams) sw->streams->prev = s;
  sw->streams = s;
  s->in_list = 1;
  s->host->metric_add(s->p->m_streams, 1);
}

static void sse_unlink(sse_stream_t *s) {
  if (!s->in_list) return;
  if (s->prev)
    s->prev->next = s->next;
  else
    s->sw->streams = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = NULL;
  s->in_list = 0;
  s->host->metric_add(s->p->m_streams, -1);
}

static int sse_writable(const sse_stream_t *s) {
  return s->conn && !s->closing && !s->closed;
}

static void sse_close(sse_stream_t *s, const char *reason) {
  if (!s->conn || s->closing || s->closed) return;
  s->closing = 1;
  if (!s->close_reason) s->close_reason = reason;
  s->host->conn_close(s->conn); /* on_close follows */
}

/* --- writing -------------------------------------------------------------- */

/* "id: <cursor>\n\n" (malloc'd, *len its length), or NULL when no
 * cursor can be built (no position known, or longer than a cursor may
 * be). */
static char *sse_id_line(sse_stream_t *s, size_t *len) {
  char *cursor = tp_cursor(s->host, s->client, &s->topics);
  if (!cursor) return NULL;
  size_t n = strlen(cursor);
  char *line = malloc(n + 6);
  if (line) {
    memcpy(line, "id: ", 4);
    memcpy(line + 4, cursor, n);
    line[4 + n] = '\n';
    line[5 + n] = '\n';
    *len = n + 6;
  }
  free(cursor);
  return line;
}

static void sse_id_cache_clear(sse_id_cache_t *c) {
  free(c->topic);
  free(c->epoch);
  free(c->line);
  memset(c, 0, sizeof *c);
}

/* The id line of a stream whose cursor holds exactly one topic, from the
 * worker's cache (built and kept on a miss). NULL: several topics or none
 * (or no memory): the caller builds its own. Borrowed: valid until the
 * next call on this worker. */
static const char *sse_id_cached(sse_stream_t *s, size_t *len) {
  sse_worker_t *sw = s->sw;
  if (!sw) return NULL;
  const tp_topic_t *one = NULL;
  uint64_t seq = 0;
  const char *epoch = NULL;
  for (size_t i = 0; i < s->topics.n; i++) {
    const tp_topic_t *t = &s->topics.t[i];
    uint64_t sq;
    const char *ep;
    if (t->refused || !tp_position(s->host, s->client, t, &sq, &ep)) continue;
    if (one) return NULL; /* several: a cursor of its own */
    one = t;
    seq = sq;
    epoch = ep;
  }
  if (!one) return NULL;
  sse_id_cache_t *c = &sw->id_cache;
  if (c->line && c->seq == seq && strcmp(c->topic, one->name) == 0 &&
      strcmp(c->epoch, epoch) == 0) {
    *len = c->len;
    return c->line;
  }
  sse_id_cache_clear(c);
  size_t n;
  char *line = sse_id_line(s, &n);
  char *topic = strdup(one->name), *ep = strdup(epoch);
  if (!line || !topic || !ep) {
    free(line);
    free(topic);
    free(ep);
    return NULL;
  }
  c->topic = topic;
  c->epoch = ep;
  c->seq = seq;
  c->line = line;
  c->len = n;
  *len = n;
  return line;
}

/* Writes "id: <cursor>\n" (plus "\n" when `alone`, an id-only block).
 * 0, or the conn_write error (MW_ELIMIT: on_overflow ran). A cursor that
 * cannot be built (no position known, or longer than a cursor may be) is
 * left out: the client keeps its previous id. */
static int sse_write_id(sse_stream_t *s, int alone) {
  size_t n;
  const char *cached = sse_id_cached(s, &n);
  if (cached) return s->host->conn_write(s->conn, cached, alone ? n : n - 1, 0);
  char *line = sse_id_line(s, &n);
  if (!line) return 0;
  int rc = s->host->conn_write(s->conn, line, alone ? n : n - 1, 0);
  free(line);
  return rc;
}

/* Writes "event: <name>\ndata: <json>\n\n"; `json` is stolen. */
static int sse_write_named(sse_stream_t *s, const char *name, json_t *json) {
  char *text = json ? json_dumps(json, JSON_COMPACT) : NULL;
  json_decref(json);
  if (!text) return MW_ENOMEM;
  size_t nl = strlen(name), tl = strlen(text);
  char *buf = malloc(nl + tl + 20);
  if (!buf) {
    free(text);
    return MW_ENOMEM;
  }
  int n = snprintf(buf, nl + tl + 20, "event: %s\ndata: %s\n\n", name, text);
  int rc = s->host->conn_write(s->conn, buf, (size_t)n, 0);
  free(buf);
  free(text);
  return rc;
}

/* A refused topic: "event: error" with its code and reason; the stream
 * goes on with the other topics. */
static void sse_write_refusal(sse_stream_t *s, const char *topic, int code,
                              const char *reason) {
  if (!sse_writable(s)) return;
  sse_write_named(s, "error",
                  json_pack("{s:s,s:i,s:s}", "topic", topic, "code", code,
                            "reason", reason ? reason : ""));
}

/* --- hub callbacks -------------------------------------------------------- */

static void sse_deliver(mw_client_t *client, mw_event_t *ev, void *ud) {
  sse_stream_t *s = ud;
  if (!sse_writable(s)) return;
  if (sse_write_id(s, 0) != 0) return;
  /* MW_ELIMIT: on_overflow already closed it; MW_ECLOSED: closing. */
  if (s->host->conn_write_event(s->conn, "data: ", 6, ev, MW_WIRE_JSON, "\n\n",
                                2) == 0)
    s->host->metric_add(s->p->m_events, 1);
}

/* subscribe_since answered: a topic whose missed events are gone gets
 * {"type":"recovery","recovered":false,...}; the client refetches. */
static void sse_recover_cb(int status, const char *topic, int recovered,
                           uint64_t seq, const char *epoch, void *ud) {
  sse_cb_ctx_t *ctx = ud;
  sse_stream_t *s = ctx->s;
  tp_topic_t *t = &s->topics.t[ctx->index];
  tp_recovered(t, status, recovered, seq, epoch);
  if (t->failed && sse_writable(s)) {
    /* The replay could not run (e.g. storage unavailable, a node draining):
     * end the stream; EventSource comes back with its Last-Event-ID. */
    s->host->conn_close(s->conn);
  } else if (status != MW_ECANCELED && t->unrecovered && sse_writable(s)) {
    json_t *msg = json_pack("{s:s,s:s,s:b,s:I,s:s}", "type", "recovery",
                            "topic", t->name, "recovered", 0, "seq",
                            (json_int_t)t->base_seq, "epoch", t->base_epoch);
    if (msg && status != 0)
      json_object_set_new(msg, "reason",
                          json_string(s->host->strerror(status)));
    if (sse_write_id(s, 0) == 0)
      sse_write_named(s, "moonwire", msg);
    else
      json_decref(msg);
  }
  sse_unref(s);
}

/* POST /api/disconnect: tells the client why ("type":"disconnect", so a
 * client library stops reconnecting) and ends the stream. */
static void sse_kick(mw_client_t *client, const char *reason, void *ud) {
  sse_stream_t *s = ud;
  (void)client;
  if (!sse_writable(s)) return;
  sse_write_named(s, "moonwire",
                  json_pack("{s:s,s:s}", "type", "disconnect", "reason",
                            reason ? reason : "disconnected"));
  sse_close(s, "disconnected");
}

/* topic_position answered for a topic subscribed live: its base position. */
static void sse_position_cb(int status, uint64_t seq, const char *epoch,
                            void *ud) {
  sse_cb_ctx_t *ctx = ud;
  sse_stream_t *s = ctx->s;
  if (status == 0) tp_set_base(&s->topics.t[ctx->index], seq, epoch);
  s->pending_positions--;
  if (!s->pending_positions && !s->setting_up && sse_writable(s))
    sse_write_id(s, 1);
  sse_unref(s);
}

/* --- stream handler ------------------------------------------------------- */

static void sse_on_data(void *ud, const char *data, size_t len) {
  sse_stream_t *s = ud;
  (void)data;
  s->rx += len; /* ignored, but bounded */
  if (s->rx <= SSE_MAX_INPUT) return;
  if (s->taking) {
    s->close_after_take = 1;
    return;
  }
  sse_close(s, "protocol error");
}

static void sse_on_overflow(void *ud) {
  sse_stream_t *s = ud;
  s->host->metric_add(s->p->m_slow, 1);
  sse_close(s, "slow consumer");
}

static void sse_on_close(void *ud) {
  sse_stream_t *s = ud;
  if (s->closed) return;
  s->closed = 1;
  s->conn = NULL;
  if (s->client)
    s->host->client_disconnect(&s->client,
                               s->close_reason ? s->close_reason : "closed");
  sse_unlink(s);
  sse_unref(s); /* the connection's reference */
}

static const mw_stream_handler_t sse_handler = {
    .on_data = sse_on_data,
    .on_overflow = sse_on_overflow,
    .on_close = sse_on_close,
};

/* --- the route ------------------------------------------------------------ */

static void sse_reject(sse_plugin_t *p, mw_http_request_t *req, int status,
                       sse_reject_t why, const char *extra,
                       const char *reason) {
  char *body = tp_error_json(reason);
  p->host->metric_add(p->m_rejected[why], 1);
  p->host->http_respond(req, status, "application/json", extra, body,
                        strlen(body));
  free(body);
}

/* Subscribes every topic: a position from the cursor recovers, the others
 * are live from now (their base position comes from topic_position). */
static void sse_subscribe_all(sse_stream_t *s, mw_worker_t *w) {
  const mw_host_v1_t *host = s->host;
  s->setting_up = 1;
  for (size_t i = 0; i < s->topics.n; i++) {
    if (s->topics.t[i].from_cursor) continue;
    sse_ref(s);
    s->pending_positions++;
    if (host->topic_position(w, s->topics.t[i].name, sse_position_cb,
                             &s->ctx[i]) != 0) {
      s->pending_positions--;
      sse_unref_held(s);
    }
  }
  for (size_t i = 0; i < s->topics.n && s->client && sse_writable(s); i++) {
    tp_topic_t *t = &s->topics.t[i];
    int rc;
    if (t->from_cursor) {
      sse_ref(s); /* the recovery callback's */
      rc = host->subscribe_since(s->client, t->name, t->base_seq,
                                 t->base_epoch[0] ? t->base_epoch : NULL,
                                 sse_recover_cb, &s->ctx[i]);
      if (rc) sse_unref_held(s);
    } else {
      rc = host->subscribe(s->client, t->name);
    }
    if (rc == 0 || rc == MW_EEXIST || !s->client) continue;
    t->refused = 1;
    int code = 500;
    const char *reason = host->strerror(rc);
    if (rc == MW_EDENIED) {
      reason = host->client_error(s->client, &code);
      if (!code) code = 403;
    } else if (rc == MW_ELIMIT) {
      code = 429;
      reason = "too many topics for this connection";
    } else if (rc == MW_EINVAL) {
      code = 400;
      reason = "invalid topic name";
    }
    sse_write_refusal(s, t->name, code, reason);
  }
  s->setting_up = 0;
  if (!s->pending_positions && sse_writable(s)) sse_write_id(s, 1);
}

/* GET /sse: validates, asks CORS and the policy, takes the connection and
 * subscribes. Errors: 400 (topics, cursor), 403 (origin), on_connect's code
 * (401, 403, 429), 503 (draining). */
static void sse_route(mw_http_request_t *req, void *wstate) {
  sse_worker_t *sw = wstate;
  sse_plugin_t *p = sw->p;
  const mw_host_v1_t *host = p->host;

  if (sw->draining) {
    sse_reject(p, req, 503, SSE_REJ_UNAVAILABLE, NULL,
               "server is shutting down");
    return;
  }
  /* Last-Event-ID (an automatic reconnect) is newer than the URL's since. */
  const char *cursor = host->http_header(req, "last-event-id");
  if (!cursor || !*cursor) cursor = host->http_query(req, "since");
  tp_list_t topics = {0};
  char err[160];
  if (tp_parse(host->http_query(req, "topics"), cursor, &topics, err,
               sizeof err)) {
    sse_reject(p, req, 400, SSE_REJ_BAD_REQUEST, NULL, err);
    return;
  }
  char cors[SSE_CORS_LEN];
  if (host->http_cors(req, cors, sizeof cors) != 0) {
    tp_free(&topics);
    sse_reject(p, req, 403, SSE_REJ_ORIGIN, NULL, "origin not allowed");
    return;
  }

  sse_stream_t *s = sse_xcalloc(1, sizeof *s);
  s->sw = sw;
  s->p = p;
  s->host = host;
  s->topics = topics;
  s->refs = 1; /* the connection's */
  s->ctx = sse_xcalloc(topics.n ? topics.n : 1, sizeof *s->ctx);
  for (size_t i = 0; i < topics.n; i++) {
    s->ctx[i].s = s;
    s->ctx[i].index = i;
  }
  mw_worker_t *w = host->http_worker(req);
  s->client = host->client_new(w, "sse", sse_deliver, s);
  if (!s->client) {
    sse_unref(s);
    sse_reject(p, req, 503, SSE_REJ_UNAVAILABLE, cors,
               "cannot accept connection");
    return;
  }
  host->client_set_kick(s->client, sse_kick);
  host->client_attach_request(s->client, req);
  int code = 401;
  if (host->client_connect(s->client, NULL, &code) != 0) {
    char extra[SSE_CORS_LEN + 32];
    if (!code) code = 401;
    snprintf(extra, sizeof extra, "%s%s",
             code == 401 ? "WWW-Authenticate: Bearer\r\n" : "", cors);
    sse_reject(p, req, code, SSE_REJ_CONNECT, extra,
               host->client_error(s->client, NULL));
    host->client_free(&s->client);
    sse_unref(s);
    return;
  }

  char head[SSE_CORS_LEN + 256];
  int hn = snprintf(head, sizeof head,
                    "HTTP/1.1 200 OK\r\n"
                    "Content-Type: text/event-stream\r\n"
                    "Cache-Control: no-cache\r\n"
                    "Connection: keep-alive\r\n"
                    "X-Accel-Buffering: no\r\n"
                    "%s\r\n",
                    cors);
  sse_ref(s); /* guard */
  s->taking = 1;
  mw_conn_t *conn = host->http_take(req, head, (size_t)hn, &sse_handler, s);
  s->taking = 0;
  if (!conn) { /* the peer is gone */
    if (!s->closed) {
      s->closed = 1;
      host->client_disconnect(&s->client, "closed");
      s->refs--; /* the connection's; the guard still holds it */
    }
    sse_unref(s);
    return;
  }
  if (s->closed) { /* on_close ran inside the take */
    sse_unref(s);
    return;
  }
  s->conn = conn;
  sse_link(s);
  if (s->close_after_take) {
    sse_close(s, "protocol error");
  } else if (host->conn_write(conn, "retry: 2000\n\n", 13, 0) == 0) {
    sse_subscribe_all(s, w);
  }
  sse_unref(s);
}

/* --- lifecycle ------------------------------------------------------------ */

static void sse_heartbeat_cb(uv_timer_t *t) {
  sse_worker_t *sw = t->data;
  for (sse_stream_t *s = sw->streams; s; s = s->next)
    if (sse_writable(s)) s->host->conn_write(s->conn, ": hb\n\n", 6, 0);
}

static int sse_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                    void **state) {
  sse_plugin_t *p = sse_xcalloc(1, sizeof *p);
  p->host = host;
  int64_t hb = host->config_int("limits.sse_heartbeat", SSE_DEFAULT_HEARTBEAT);
  p->heartbeat_ms = hb > 0 ? (uint64_t)hb * 1000u : 0;
  p->m_streams = host->metric(MW_METRIC_GAUGE, "moonwire_sse_streams",
                              "Open Server-Sent Events streams", NULL);
  p->m_events = host->metric(MW_METRIC_COUNTER, "moonwire_sse_events_total",
                             "Events written to SSE streams", NULL);
  p->m_slow =
      host->metric(MW_METRIC_COUNTER, "moonwire_sse_slow_consumer_closes_total",
                   "SSE streams closed because their outbound queue "
                   "passed its cap",
                   NULL);
  for (int i = 0; i < SSE_REJ_COUNT; i++)
    p->m_rejected[i] =
        host->metric(MW_METRIC_COUNTER, "moonwire_sse_rejected_total",
                     "SSE requests refused, by reason", sse_reject_labels[i]);
  int rc = host->http_route(self, "GET", "/sse", sse_route);
  if (rc != 0) {
    host->log(MW_LOG_ERROR, SSE_SUBSYS, "cannot register GET /sse: %s",
              host->strerror(rc));
    free(p);
    return rc;
  }
  *state = p;
  return 0;
}

static int sse_worker_start(void *state, mw_worker_t *w, void **wstate) {
  sse_plugin_t *p = state;
  sse_worker_t *sw = sse_xcalloc(1, sizeof *sw);
  sw->p = p;
  sw->w = w;
  sw->loop = p->host->worker_loop(w);
  uv_timer_init(sw->loop, &sw->heartbeat);
  sw->heartbeat.data = sw;
  if (p->heartbeat_ms)
    uv_timer_start(&sw->heartbeat, sse_heartbeat_cb, p->heartbeat_ms,
                   p->heartbeat_ms);
  *wstate = sw;
  return 0;
}

/* Ends every stream cleanly (nothing more is written); new requests get
 * 503. */
static void sse_worker_drain(void *wstate) {
  sse_worker_t *sw = wstate;
  sw->draining = 1;
  uv_timer_stop(&sw->heartbeat);
  for (sse_stream_t *s = sw->streams; s; s = s->next)
    sse_close(s, "going away"); /* unlinks only in on_close, later */
}

static void sse_worker_freed(uv_handle_t *h) {
  free(h->data);
}

static void sse_worker_stop(void *wstate) {
  sse_worker_t *sw = wstate;
  while (sw->streams) {
    sse_stream_t *s = sw->streams;
    sse_unlink(s);
    s->sw = NULL;
    sse_close(s, "going away");
  }
  uv_timer_stop(&sw->heartbeat);
  sse_id_cache_clear(&sw->id_cache);
  uv_close((uv_handle_t *)&sw->heartbeat, sse_worker_freed);
}

static void sse_destroy(void *state) {
  free(state);
}

/* The plugin descriptor the loader looks up (MW_PLUGIN_SYMBOL). */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    MW_PLUGIN_V1_HEADER(MW_PLUGIN_TRANSPORT, "sse", "0.1.0"),
    .init = sse_init,
    .worker_start = sse_worker_start,
    .worker_drain = sse_worker_drain,
    .worker_stop = sse_worker_stop,
    .destroy = sse_destroy,
    .storage = NULL,
};
