/* Long-poll transport: GET /poll?topics=a,b[&cursor=C][&timeout=S].
 *
 * Each request is one short-lived subscriber: it subscribes its topics
 * (recovering from the cursor's positions, or live from the moment of the
 * request), collects the delivered events (references, no copies) and
 * answers
 *
 *   {"events":[<event>,...],"cursor":"<cursor>"}
 *
 * as soon as there are events (after a 2 ms pause that lets one replay or a
 * burst land in the same answer), at once when a topic cannot be recovered
 * (with "recovered":false,"unrecovered":[topics]), or after `timeout`
 * seconds with none. The events are the shared JSON wire bytes joined by
 * commas, never re-encoded. At most limits.poll_max_events (1000) events
 * (and about limits.outbound_queue bytes) go into one answer; the cursor
 * then points right after the last one included, so the next poll
 * continues there.
 *
 * A poll is reference-counted: the request holds one (dropped when it is
 * answered or aborted), the timer one (dropped in its close callback),
 * every pending host callback one, and the route a guard. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moonwire/plugin.h"
#include "topic_params.h"

#define LP_SUBSYS "longpoll"
#define LP_DEFAULT_TIMEOUT 25 /* seconds */
#define LP_MAX_TIMEOUT 120
#define LP_DEFAULT_MAX_EVENTS 1000 /* limits.poll_max_events */
#define LP_DEFAULT_MAX_BYTES (4 << 20)
#define LP_COALESCE_MS 2
#define LP_CORS_LEN 512
#define LP_LIT(s) s, sizeof(s) - 1 /* a literal and its length */

typedef enum lp_reject {
  LP_REJ_BAD_REQUEST,
  LP_REJ_ORIGIN,
  LP_REJ_CONNECT,
  LP_REJ_SUBSCRIBE,
  LP_REJ_UNAVAILABLE,
  LP_REJ_COUNT
} lp_reject_t;

static const char *const lp_reject_labels[LP_REJ_COUNT] = {
    "reason=\"bad_request\"", "reason=\"origin\"", "reason=\"connect\"",
    "reason=\"subscribe\"", "reason=\"unavailable\""};

typedef struct lp_plugin {
  const mw_host_v1_t *host;
  size_t max_events;      /* events in one answer */
  size_t max_bytes;       /* body bytes of events in one answer (soft) */
  mw_metric_t *m_waiting; /* gauge */
  mw_metric_t *m_responses;
  mw_metric_t *m_events;
  mw_metric_t *m_rejected[LP_REJ_COUNT];
} lp_plugin_t;

typedef struct lp_poll lp_poll_t;

/* Per worker: the waiting polls (for drain and stop). */
typedef struct lp_worker {
  lp_plugin_t *p;
  mw_worker_t *w;
  lp_poll_t *polls; /* doubly linked */
  int draining;
} lp_worker_t;

typedef struct lp_cb_ctx {
  lp_poll_t *poll;
  size_t index;
} lp_cb_ctx_t;

struct lp_poll {
  lp_worker_t *lw; /* NULL once detached by worker_stop */
  lp_plugin_t *p;
  const mw_host_v1_t *host;
  mw_http_request_t *req; /* NULL once answered or aborted */
  mw_client_t *client;    /* NULL once finished */
  tp_list_t topics;
  lp_cb_ctx_t *ctx; /* one per topic */
  mw_event_t **evs; /* references */
  size_t nevs, capevs, bytes;
  uv_timer_t timer;
  char cors[LP_CORS_LEN];
  lp_poll_t *prev, *next;
  unsigned refs;
  unsigned setting_up : 1;
  unsigned done : 1;
  unsigned in_list : 1;
  unsigned timer_init : 1;
  unsigned soon : 1;   /* the answer is due after the coalescing pause */
  unsigned full : 1;   /* the cap is reached: later events are left out */
  unsigned kicked : 1; /* POST /api/disconnect: answer now, say so */
  unsigned answer_waiting : 1; /* due, but a topic's position is unknown */
  size_t positions_pending;    /* topic_position calls not answered yet */
  char kick_reason[128];
};

static void *lp_xcalloc(size_t n, size_t size) {
  void *p = calloc(n, size);
  if (!p) abort(); /* small internal allocation */
  return p;
}

static void lp_ref(lp_poll_t *poll) {
  poll->refs++;
}

/* Drops a reference taken for a callback that will not fire; the caller
 * holds another one, so this never frees. */
static void lp_unref_held(lp_poll_t *poll) {
  poll->refs--;
}

static void lp_unref(lp_poll_t *poll) {
  if (--poll->refs > 0) return;
  for (size_t i = 0; i < poll->nevs; i++)
    poll->host->event_unref(&poll->evs[i]);
  free(poll->evs);
  tp_free(&poll->topics);
  free(poll->ctx);
  free(poll);
}

static void lp_unlink(lp_poll_t *poll) {
  if (!poll->in_list) return;
  if (poll->prev)
    poll->prev->next = poll->next;
  else
    poll->lw->polls = poll->next;
  if (poll->next) poll->next->prev = poll->prev;
  poll->prev = poll->next = NULL;
  poll->in_list = 0;
  poll->host->metric_add(poll->p->m_waiting, -1);
}

static void lp_timer_closed(uv_handle_t *h) {
  lp_unref(h->data);
}

/* Ends the poll (answered or aborted): frees the subscriber, the events and
 * the timer. Never called from inside a hub callback. */
static void lp_finish(lp_poll_t *poll) {
  if (poll->done) return;
  poll->done = 1;
  poll->req = NULL;
  lp_unlink(poll);
  if (poll->client) poll->host->client_disconnect(&poll->client, "closed");
  for (size_t i = 0; i < poll->nevs; i++)
    poll->host->event_unref(&poll->evs[i]);
  poll->nevs = 0;
  if (poll->timer_init) {
    uv_timer_stop(&poll->timer);
    uv_close((uv_handle_t *)&poll->timer, lp_timer_closed);
  }
  lp_unref(poll); /* the request's */
}

/* --- answering ------------------------------------------------------------ */

static int lp_append(char **buf, size_t *len, size_t *cap, const char *s,
                     size_t n) {
  if (*len + n + 1 > *cap) {
    size_t nc = *cap ? *cap : 256;
    while (nc < *len + n + 1)
      nc *= 2;
    char *b = realloc(*buf, nc);
    if (!b) return -1;
    *buf = b;
    *cap = nc;
  }
  memcpy(*buf + *len, s, n);
  *len += n;
  (*buf)[*len] = 0;
  return 0;
}

/* The answer's body: the events' shared JSON bytes joined, the cursor and
 * the unrecovered topics. NULL when out of memory. */
static char *lp_body(lp_poll_t *poll, size_t *out_len) {
  char *buf = NULL;
  size_t len = 0, cap = 0;
  int rc = lp_append(&buf, &len, &cap, LP_LIT("{\"events\":["));
  for (size_t i = 0; i < poll->nevs && rc == 0; i++) {
    const mw_bytes_t *w = &poll->evs[i]->wire[MW_WIRE_JSON];
    if (i) rc = lp_append(&buf, &len, &cap, LP_LIT(","));
    if (rc == 0) rc = lp_append(&buf, &len, &cap, w->data, w->len);
  }
  char *cursor = tp_cursor(poll->host, poll->client, &poll->topics);
  if (rc == 0) rc = lp_append(&buf, &len, &cap, LP_LIT("],\"cursor\":\""));
  if (rc == 0 && cursor)
    rc = lp_append(&buf, &len, &cap, cursor, strlen(cursor));
  if (rc == 0) rc = lp_append(&buf, &len, &cap, LP_LIT("\""));
  free(cursor);
  json_t *unrec = json_array();
  for (size_t i = 0; i < poll->topics.n && unrec; i++)
    if (poll->topics.t[i].unrecovered)
      json_array_append_new(unrec, json_string(poll->topics.t[i].name));
  if (rc == 0 && json_array_size(unrec)) {
    char *list = json_dumps(unrec, JSON_COMPACT);
    rc = lp_append(&buf, &len, &cap,
                   LP_LIT(",\"recovered\":false,\"unrecovered\":"));
    if (rc == 0 && list) rc = lp_append(&buf, &len, &cap, list, strlen(list));
    free(list);
  }
  json_decref(unrec);
  if (rc == 0 && poll->kicked) {
    json_t *r = json_string(poll->kick_reason);
    char *text = r ? json_dumps(r, JSON_ENCODE_ANY) : NULL;
    json_decref(r);
    rc = lp_append(&buf, &len, &cap,
                   LP_LIT(",\"disconnected\":true,\"reason\":"));
    if (rc == 0)
      rc = text ? lp_append(&buf, &len, &cap, text, strlen(text))
                : lp_append(&buf, &len, &cap, LP_LIT("\"\""));
    free(text);
  }
  if (rc == 0) rc = lp_append(&buf, &len, &cap, LP_LIT("}"));
  if (rc) {
    free(buf);
    return NULL;
  }
  *out_len = len;
  return buf;
}

static void lp_headers(const lp_poll_t *poll, char *out, size_t len, int auth) {
  snprintf(out, len, "Cache-Control: no-store\r\n%s%s",
           auth ? "WWW-Authenticate: Bearer\r\n" : "", poll->cors);
}

/* Answers 200 with what the poll has, then finishes it. */
static void lp_answer(lp_poll_t *poll) {
  if (poll->done) return;
  if (poll->positions_pending && !poll->kicked) {
    /* A topic without a cursor has no position yet (the storage answers
     * asynchronously, e.g. Redis): the cursor would leave it out and the
     * next poll would start from "now", missing what is published in
     * between. lp_position_cb answers when the last one arrives (storage
     * calls always call back, on failure too). */
    poll->answer_waiting = 1;
    return;
  }
  const mw_host_v1_t *host = poll->host;
  char extra[LP_CORS_LEN + 64];
  lp_headers(poll, extra, sizeof extra, 0);
  for (size_t i = 0; i < poll->topics.n; i++) {
    if (!poll->topics.t[i].failed) continue;
    /* The replay could not run (storage unavailable, a node draining): the
     * client polls again with the same cursor. */
    size_t n = strlen(extra);
    snprintf(extra + n, sizeof extra - n, "Retry-After: 1\r\n");
    host->http_respond(poll->req, 503, "application/json", extra,
                       "{\"error\":\"storage unavailable\"}", 31);
    lp_finish(poll);
    return;
  }
  size_t len = 0;
  char *body = lp_body(poll, &len);
  if (body) {
    host->http_respond(poll->req, 200, "application/json", extra, body, len);
    host->metric_add(poll->p->m_responses, 1);
    host->metric_add(poll->p->m_events, (int64_t)poll->nevs);
  } else {
    host->http_respond(poll->req, 500, "application/json", extra,
                       "{\"error\":\"out of memory\"}", 25);
  }
  free(body);
  lp_finish(poll);
}

/* Answers the refusal `code` of a topic's subscription, then finishes. */
static void lp_refuse(lp_poll_t *poll, const char *topic, int code,
                      const char *reason) {
  const mw_host_v1_t *host = poll->host;
  char extra[LP_CORS_LEN + 64];
  lp_headers(poll, extra, sizeof extra, code == 401);
  json_t *o =
      json_pack("{s:s,s:s}", "error", reason ? reason : "", "topic", topic);
  char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
  json_decref(o);
  host->metric_add(poll->p->m_rejected[LP_REJ_SUBSCRIBE], 1);
  host->http_respond(poll->req, code, "application/json", extra,
                     body ? body : "{}", body ? strlen(body) : 2);
  free(body);
  lp_finish(poll);
}

static void lp_timer_cb(uv_timer_t *t) {
  lp_answer(t->data);
}

/* Answers after the coalescing pause (or at once with `now`). */
static void lp_soon(lp_poll_t *poll, int now) {
  if (poll->done || poll->setting_up || !poll->timer_init) return;
  if (now) {
    uv_timer_start(&poll->timer, lp_timer_cb, 0, 0);
  } else if (!poll->soon) {
    uv_timer_start(&poll->timer, lp_timer_cb, LP_COALESCE_MS, 0);
  }
  poll->soon = 1;
}

/* --- hub callbacks -------------------------------------------------------- */

static void lp_deliver(mw_client_t *client, mw_event_t *ev, void *ud) {
  lp_poll_t *poll = ud;
  if (poll->done) return;
  int ti = tp_find(&poll->topics, ev->topic);
  if (ti < 0) return;
  tp_topic_t *t = &poll->topics.t[ti];
  if (t->pinned) return; /* an earlier event of this topic was left out */
  size_t len = ev->wire[MW_WIRE_JSON].len;
  if (poll->full || poll->nevs >= poll->p->max_events ||
      (poll->nevs && poll->bytes + len > poll->p->max_bytes)) {
    poll->full = 1;
    lp_soon(poll, 1);
    if (!ev->seq) return; /* presence (no position): just dropped */
    /* Left out: the cursor stops right before it for this topic. */
    t->pinned = 1;
    t->pin_seq = ev->seq ? ev->seq - 1 : 0;
    snprintf(t->pin_epoch, sizeof t->pin_epoch, "%s",
             ev->epoch ? ev->epoch : "");
    return;
  }
  if (poll->nevs == poll->capevs) {
    size_t nc = poll->capevs ? poll->capevs * 2 : 8;
    mw_event_t **n = realloc(poll->evs, nc * sizeof *n);
    if (!n) abort();
    poll->evs = n;
    poll->capevs = nc;
  }
  poll->evs[poll->nevs++] = poll->host->event_ref(ev);
  poll->bytes += len + 1;
  lp_soon(poll, 0);
}

static void lp_recover_cb(int status, const char *topic, int recovered,
                          uint64_t seq, const char *epoch, void *ud) {
  lp_cb_ctx_t *ctx = ud;
  lp_poll_t *poll = ctx->poll;
  if (!poll->done) {
    tp_topic_t *t = &poll->topics.t[ctx->index];
    tp_recovered(t, status, recovered, seq, epoch);
    if (t->unrecovered || t->failed) lp_soon(poll, 0); /* tell the client now */
  }
  lp_unref(poll);
}

static void lp_position_cb(int status, uint64_t seq, const char *epoch,
                           void *ud) {
  lp_cb_ctx_t *ctx = ud;
  lp_poll_t *poll = ctx->poll;
  if (!poll->done && status == 0)
    tp_set_base(&poll->topics.t[ctx->index], seq, epoch);
  if (poll->positions_pending) poll->positions_pending--;
  if (!poll->done && !poll->positions_pending && poll->answer_waiting)
    lp_answer(poll);
  lp_unref(poll);
}

/* POST /api/disconnect: the poll is answered at once (outside the core's
 * walk over its clients) with "disconnected":true and the reason. */
static void lp_kick(mw_client_t *client, const char *reason, void *ud) {
  lp_poll_t *poll = ud;
  (void)client;
  if (poll->done || poll->kicked) return;
  poll->kicked = 1;
  snprintf(poll->kick_reason, sizeof poll->kick_reason, "%s",
           reason ? reason : "disconnected");
  lp_soon(poll, 1);
}

/* The client left while the poll waited: the request is invalid after. */
static void lp_abort(mw_http_request_t *req, void *ud) {
  lp_poll_t *poll = ud;
  (void)req;
  poll->req = NULL;
  lp_finish(poll);
}

/* --- the route ------------------------------------------------------------ */

static void lp_reject(lp_plugin_t *p, mw_http_request_t *req, int status,
                      lp_reject_t why, const char *extra, const char *reason) {
  char *body = tp_error_json(reason);
  p->host->metric_add(p->m_rejected[why], 1);
  p->host->http_respond(req, status, "application/json", extra, body,
                        strlen(body));
  free(body);
}

/* Parses ?timeout=: an integer of seconds 0..120; -1 when malformed. */
static int64_t lp_timeout(const char *v) {
  if (!v) return LP_DEFAULT_TIMEOUT;
  size_t n = strlen(v);
  if (n == 0 || n > 3) return -1;
  int64_t t = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return -1;
    t = t * 10 + (v[i] - '0');
  }
  return t <= LP_MAX_TIMEOUT ? t : -1;
}

/* Subscribes every topic; returns 0, or the first refusal's HTTP code with
 * its topic index in *bad and its reason in `reason`. */
static int lp_subscribe_all(lp_poll_t *poll, mw_worker_t *w, size_t *bad,
                            const char **reason) {
  const mw_host_v1_t *host = poll->host;
  for (size_t i = 0; i < poll->topics.n; i++) {
    if (poll->topics.t[i].from_cursor) continue;
    lp_ref(poll);
    poll->positions_pending++;
    if (host->topic_position(w, poll->topics.t[i].name, lp_position_cb,
                             &poll->ctx[i]) != 0) {
      poll->positions_pending--;
      lp_unref_held(poll);
    }
  }
  for (size_t i = 0; i < poll->topics.n; i++) {
    tp_topic_t *t = &poll->topics.t[i];
    int rc;
    if (t->from_cursor) {
      lp_ref(poll);
      rc = host->subscribe_since(poll->client, t->name, t->base_seq,
                                 t->base_epoch[0] ? t->base_epoch : NULL,
                                 lp_recover_cb, &poll->ctx[i]);
      if (rc) lp_unref_held(poll);
    } else {
      rc = host->subscribe(poll->client, t->name);
    }
    if (rc == 0 || rc == MW_EEXIST) continue;
    *bad = i;
    int code = 500;
    *reason = host->strerror(rc);
    if (rc == MW_EDENIED) {
      *reason = host->client_error(poll->client, &code);
      if (!code) code = 403;
    } else if (rc == MW_ELIMIT) {
      code = 429;
      *reason = "too many topics for this connection";
    } else if (rc == MW_EINVAL) {
      code = 400;
      *reason = "invalid topic name";
    }
    return code;
  }
  return 0;
}

/* GET /poll: validates, asks CORS and the policy, subscribes and waits.
 * Errors: 400 (topics, cursor, timeout), 403 (origin), on_connect's code
 * (401, 403, 429), a refused topic's code (403, 429, ...) with
 * {"error","topic"}, 503 (draining). */
static void lp_route(mw_http_request_t *req, void *wstate) {
  lp_worker_t *lw = wstate;
  lp_plugin_t *p = lw->p;
  const mw_host_v1_t *host = p->host;

  if (lw->draining) {
    lp_reject(p, req, 503, LP_REJ_UNAVAILABLE, NULL, "server is shutting down");
    return;
  }
  int64_t timeout = lp_timeout(host->http_query(req, "timeout"));
  if (timeout < 0) {
    lp_reject(p, req, 400, LP_REJ_BAD_REQUEST, NULL,
              "timeout must be an integer number of seconds from 0 to 120");
    return;
  }
  tp_list_t topics = {0};
  char err[160];
  if (tp_parse(host->http_query(req, "topics"), host->http_query(req, "cursor"),
               &topics, err, sizeof err)) {
    lp_reject(p, req, 400, LP_REJ_BAD_REQUEST, NULL, err);
    return;
  }
  lp_poll_t *poll = lp_xcalloc(1, sizeof *poll);
  if (host->http_cors(req, poll->cors, sizeof poll->cors) != 0) {
    tp_free(&topics);
    free(poll);
    lp_reject(p, req, 403, LP_REJ_ORIGIN, NULL, "origin not allowed");
    return;
  }
  poll->lw = lw;
  poll->p = p;
  poll->host = host;
  poll->topics = topics;
  poll->refs = 1; /* the request's */
  poll->ctx = lp_xcalloc(topics.n ? topics.n : 1, sizeof *poll->ctx);
  for (size_t i = 0; i < topics.n; i++) {
    poll->ctx[i].poll = poll;
    poll->ctx[i].index = i;
  }
  mw_worker_t *w = host->http_worker(req);
  char extra[LP_CORS_LEN + 64];
  poll->client = host->client_new(w, "longpoll", lp_deliver, poll);
  if (!poll->client) {
    lp_headers(poll, extra, sizeof extra, 0);
    lp_unref(poll);
    lp_reject(p, req, 503, LP_REJ_UNAVAILABLE, extra,
              "cannot accept connection");
    return;
  }
  host->client_set_kick(poll->client, lp_kick);
  host->client_attach_request(poll->client, req);
  int code = 401;
  if (host->client_connect(poll->client, NULL, &code) != 0) {
    if (!code) code = 401;
    lp_headers(poll, extra, sizeof extra, code == 401);
    lp_reject(p, req, code, LP_REJ_CONNECT, extra,
              host->client_error(poll->client, NULL));
    host->client_free(&poll->client);
    lp_unref(poll);
    return;
  }

  poll->req = req;
  poll->prev = NULL;
  poll->next = lw->polls;
  if (lw->polls) lw->polls->prev = poll;
  lw->polls = poll;
  poll->in_list = 1;
  host->metric_add(p->m_waiting, 1);
  if (uv_timer_init(host->worker_loop(w), &poll->timer) == 0) {
    poll->timer.data = poll;
    poll->timer_init = 1;
    lp_ref(poll); /* the timer's, dropped in lp_timer_closed */
  }
  host->http_on_abort(req, lp_abort, poll);

  lp_ref(poll); /* guard */
  poll->setting_up = 1;
  size_t bad = 0;
  const char *reason = NULL;
  int refused = lp_subscribe_all(poll, w, &bad, &reason);
  poll->setting_up = 0;
  if (refused) {
    lp_refuse(poll, poll->topics.t[bad].name, refused, reason);
  } else if (!poll->timer_init) {
    lp_answer(poll);
  } else {
    int unrecovered = 0;
    for (size_t i = 0; i < poll->topics.n; i++)
      unrecovered |= poll->topics.t[i].unrecovered | poll->topics.t[i].failed;
    if (poll->full || poll->kicked)
      lp_soon(poll, 1);
    else if (poll->nevs || unrecovered)
      lp_soon(poll, 0);
    else
      uv_timer_start(&poll->timer, lp_timer_cb, (uint64_t)timeout * 1000u, 0);
  }
  lp_unref(poll);
}

/* --- lifecycle ------------------------------------------------------------ */

static int lp_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                   void **state) {
  lp_plugin_t *p = lp_xcalloc(1, sizeof *p);
  p->host = host;
  int64_t mb = host->config_int("limits.outbound_queue", LP_DEFAULT_MAX_BYTES);
  p->max_bytes = mb > 0 ? (size_t)mb : LP_DEFAULT_MAX_BYTES;
  int64_t me =
      host->config_int("limits.poll_max_events", LP_DEFAULT_MAX_EVENTS);
  p->max_events = me > 0 ? (size_t)me : LP_DEFAULT_MAX_EVENTS;
  p->m_waiting = host->metric(MW_METRIC_GAUGE, "moonwire_longpoll_waiting",
                              "Long-poll requests waiting for events", NULL);
  p->m_responses =
      host->metric(MW_METRIC_COUNTER, "moonwire_longpoll_responses_total",
                   "Long-poll requests answered with 200", NULL);
  p->m_events =
      host->metric(MW_METRIC_COUNTER, "moonwire_longpoll_events_total",
                   "Events answered to long-poll requests", NULL);
  for (int i = 0; i < LP_REJ_COUNT; i++)
    p->m_rejected[i] = host->metric(
        MW_METRIC_COUNTER, "moonwire_longpoll_rejected_total",
        "Long-poll requests refused, by reason", lp_reject_labels[i]);
  int rc = host->http_route(self, "GET", "/poll", lp_route);
  if (rc != 0) {
    host->log(MW_LOG_ERROR, LP_SUBSYS, "cannot register GET /poll: %s",
              host->strerror(rc));
    free(p);
    return rc;
  }
  *state = p;
  return 0;
}

static int lp_worker_start(void *state, mw_worker_t *w, void **wstate) {
  lp_worker_t *lw = lp_xcalloc(1, sizeof *lw);
  lw->p = state;
  lw->w = w;
  *wstate = lw;
  return 0;
}

/* Answers every waiting poll at once with what it has; new polls get 503. */
static void lp_worker_drain(void *wstate) {
  lp_worker_t *lw = wstate;
  lw->draining = 1;
  while (lw->polls)
    lp_answer(lw->polls); /* unlinks it */
}

static void lp_worker_stop(void *wstate) {
  lp_worker_t *lw = wstate;
  while (lw->polls)
    lp_answer(lw->polls);
  free(lw);
}

static void lp_destroy(void *state) {
  free(state);
}

/* The plugin descriptor the loader looks up (MW_PLUGIN_SYMBOL). */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    MW_PLUGIN_V1_HEADER(MW_PLUGIN_TRANSPORT, "longpoll", "0.1.0"),
    .init = lp_init,
    .worker_start = lp_worker_start,
    .worker_drain = lp_worker_drain,
    .worker_stop = lp_worker_stop,
    .destroy = lp_destroy,
    .storage = NULL,
};
