/* Core endpoints: see api.h. The server API needs the API key (Bearer or
 * X-API-Key); without a configured key it answers only on loopback. */
#include "api.h"
#include "client.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "hub.h"
#include "json_text.h"
#include "log.h"
#include "metrics.h"
#include "publish.h"

#define MW_BROADCAST_MAX_TOPICS 1000

static mw_metric_t *m_api_auth;

static int is_loopback(const char *addr) {
  return strncmp(addr, "127.", 4) == 0 || strcmp(addr, "::1") == 0 ||
         strncmp(addr, "::ffff:127.", 11) == 0;
}

/* 1 if the request may use the server API; otherwise answers it. */
static int api_allowed(mw_http_request_t *req) {
  const char *key = mw__config_string(mw__server()->cfg, "api_key", NULL);
  if (!key || !*key) {
    if (is_loopback(mw__http_remote_addr(req))) return 1;
    mw__metric_add(m_api_auth, 1);
    mw__http_respond_json(req, 403,
                          "{\"error\":\"no API key configured: the server API "
                          "answers only on loopback\"}");
    return 0;
  }
  const char *given = NULL;
  const char *auth = mw__http_header(req, "authorization");
  if (auth && strncasecmp(auth, "Bearer ", 7) == 0) given = auth + 7;
  if (!given) given = mw__http_header(req, "x-api-key");
  size_t kl = strlen(key);
  if (given && strlen(given) == kl && CRYPTO_memcmp(given, key, kl) == 0)
    return 1;
  mw__metric_add(m_api_auth, 1);
  mw__http_respond(req, 401, "application/json", "WWW-Authenticate: Bearer\r\n",
                   "{\"error\":\"missing or wrong API key\"}",
                   sizeof "{\"error\":\"missing or wrong API key\"}" - 1);
  return 0;
}

static void respond_error(mw_http_request_t *req, int status,
                          const char *reason) {
  json_t *o = json_pack("{s:s}", "error", reason ? reason : "error");
  char *text = json_dumps(o, JSON_COMPACT);
  mw__http_respond_json(req, status, text);
  free(text);
  json_decref(o);
}

/* Admission control for the publishing endpoints: 1 to go on, or 0 after
 * answering 503 with Retry-After (nothing is stored or fanned out). */
static int api_admit(mw_http_request_t *req) {
  if (!mw__publish_admit(mw__http_worker(req))) return 1;
  json_t *o = json_pack("{s:s}", "error", mw__publish_overload_reason);
  char *text = json_dumps(o, JSON_COMPACT);
  char headers[48];
  snprintf(headers, sizeof headers, "Retry-After: %d\r\n",
           MW_PUBLISH_RETRY_AFTER_S);
  mw__http_respond(req, 503, "application/json", headers, text, strlen(text));
  free(text);
  json_decref(o);
  return 0;
}

/* Parses the body as a JSON object or answers 400. */
static json_t *body_object(mw_http_request_t *req) {
  mw_bytes_t body = mw__http_body(req);
  json_error_t jerr;
  json_t *root = json_loadb(body.data, body.len, JSON_REJECT_DUPLICATES, &jerr);
  if (!json_is_object(root)) {
    char reason[200];
    snprintf(reason, sizeof reason, "body must be a JSON object%s%s",
             root ? "" : ": ", root ? "" : jerr.text);
    respond_error(req, 400, reason);
    json_decref(root);
    return NULL;
  }
  return root;
}

/* --- POST /api/publish -------------------------------------------------- */

static void on_published(int status, const mw_event_t *ev, const char *reason,
                         void *ud) {
  mw_http_request_t *req = ud;
  if (status) {
    respond_error(req, mw__publish_http_status(status), reason);
    return;
  }
  char id[320];
  int n = snprintf(id, sizeof id, "%s:%llu", ev->topic,
                   (unsigned long long)ev->seq);
  /* {"id","seq","topic","trace_id"}: the strings are the event's own,
   * valid UTF-8 (checked at publish), so the text cannot fail. */
  mw_json_text_t t;
  mw__jt_init(&t, 2 * (size_t)n + 128);
  mw__jt_lit(&t, "{\"id\":");
  mw__jt_string(&t, id, strlen(id));
  mw__jt_lit(&t, ",\"seq\":");
  mw__jt_u64(&t, ev->seq);
  mw__jt_lit(&t, ",\"topic\":");
  mw__jt_string(&t, ev->topic, strlen(ev->topic));
  if (ev->trace_id) {
    mw__jt_lit(&t, ",\"trace_id\":");
    mw__jt_string(&t, ev->trace_id, strlen(ev->trace_id));
  }
  mw__jt_raw(&t, "}", 1);
  size_t len;
  char *text = mw__jt_finish(&t, &len);
  if (!text) {
    respond_error(req, 500, "could not encode the answer");
    return;
  }
  mw__http_respond(req, 200, "application/json", NULL, text, len);
  free(text);
}

static const char *opt_string(json_t *root, const char *key, int *bad) {
  json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) return NULL;
  if (!json_is_string(v)) *bad = 1;
  return json_string_value(v);
}

static void api_publish(mw_http_request_t *req, void *unused) {
  if (!api_allowed(req) || !api_admit(req)) return;
  json_t *root = body_object(req);
  if (!root) return;
  int bad = 0;
  const char *topic = opt_string(root, "topic", &bad);
  const char *event = opt_string(root, "event", &bad);
  const char *trace = opt_string(root, "trace_id", &bad);
  json_t *data = json_object_get(root, "data");
  if (bad || !topic || !event || (data && !json_is_object(data))) {
    respond_error(req, 400,
                  "expected {\"topic\":string, \"event\":string, "
                  "\"data\":object, \"trace_id\":optional string}");
    json_decref(root);
    return;
  }
  mw__publish_json_admitted(mw__http_worker(req), topic, event, trace, data,
                            NULL, on_published, req);
  json_decref(root);
}

/* --- POST /api/broadcast ------------------------------------------------ */

typedef struct broadcast broadcast_t;

typedef struct broadcast_slot {
  broadcast_t *b;
  size_t index;
} broadcast_slot_t;

struct broadcast {
  mw_http_request_t *req;
  json_t *results;
  size_t pending;
  int first_error;
  broadcast_slot_t *slots;
};

static void on_broadcast_one(int status, const mw_event_t *ev,
                             const char *reason, void *ud) {
  broadcast_slot_t *sl = ud;
  broadcast_t *b = sl->b;
  json_t *slot = json_array_get(b->results, sl->index);
  if (status) {
    json_object_set_new(slot, "error", json_string(reason ? reason : "error"));
    if (!b->first_error) b->first_error = status;
  } else {
    char id[320];
    snprintf(id, sizeof id, "%s:%llu", ev->topic, (unsigned long long)ev->seq);
    json_object_set_new(slot, "seq", json_integer((json_int_t)ev->seq));
    json_object_set_new(slot, "id", json_string(id));
  }
  if (--b->pending) return;
  json_t *o = json_pack("{s:O}", "results", b->results);
  char *text = json_dumps(o, JSON_COMPACT);
  mw__http_respond_json(
      b->req, b->first_error ? mw__publish_http_status(b->first_error) : 200,
      text);
  free(text);
  json_decref(o);
  json_decref(b->results);
  free(b->slots);
  free(b);
}

static void api_broadcast(mw_http_request_t *req, void *unused) {
  if (!api_allowed(req) || !api_admit(req)) return; /* all topics or none */
  json_t *root = body_object(req);
  if (!root) return;
  int bad = 0;
  json_t *topics = json_object_get(root, "topics");
  const char *event = opt_string(root, "event", &bad);
  const char *trace = opt_string(root, "trace_id", &bad);
  json_t *data = json_object_get(root, "data");
  size_t n = json_array_size(topics);
  if (bad || !event || !json_is_array(topics) || n == 0 ||
      (data && !json_is_object(data))) {
    respond_error(req, 400,
                  "expected {\"topics\":[string,...], \"event\":string, "
                  "\"data\":object}");
    json_decref(root);
    return;
  }
  if (n > MW_BROADCAST_MAX_TOPICS) {
    respond_error(req, 400, "at most 1000 topics per broadcast");
    json_decref(root);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    json_t *t = json_array_get(topics, i);
    if (!json_is_string(t) ||
        !mw__topic_valid(json_string_value(t), json_string_length(t))) {
      respond_error(req, 400, "topics: every topic must be a valid topic name");
      json_decref(root);
      return;
    }
  }
  /* One data object for every topic: one timestamp, shared, immutable. */
  json_t *shared = data ? json_deep_copy(data) : json_object();
  broadcast_t *b = mw_xcalloc(1, sizeof *b);
  b->req = req;
  b->results = json_array();
  b->pending = n;
  b->slots = mw_xcalloc(n, sizeof *b->slots);
  for (size_t i = 0; i < n; i++) {
    b->slots[i].b = b;
    b->slots[i].index = i;
  }
  for (size_t i = 0; i < n; i++)
    json_array_append_new(
        b->results, json_pack("{s:O}", "topic", json_array_get(topics, i)));
  /* Callbacks may run synchronously and free b after the last one. */
  mw_worker_t *w = mw__http_worker(req);
  for (size_t i = 0; i < n; i++)
    mw__publish_json_admitted(w, json_string_value(json_array_get(topics, i)),
                              event, trace, shared, NULL, on_broadcast_one,
                              &b->slots[i]);
  json_decref(shared);
  json_decref(root);
}

/* --- POST /api/reload --------------------------------------------------- */

static void on_reloaded(const char *err, void *ud) {
  mw_http_request_t *req = ud;
  if (err) {
    mw_log(MW_LOG_ERROR, "policy", "reload failed, keeping the old policy: %s",
           err);
    respond_error(req, 400, err);
    return;
  }
  mw_log(MW_LOG_INFO, "policy", "reloaded (POST /api/reload)");
  mw__http_respond_json(req, 200, "{\"status\":\"reloaded\"}");
}

static void api_reload(mw_http_request_t *req, void *unused) {
  if (!api_allowed(req)) return;
  mw__server_reload(mw__http_worker(req), on_reloaded, req);
}

/* --- GET /api/history ---------------------------------------------------- */

/* Parses an unsigned decimal query value; `def` when absent; -1 if bad. */
static int64_t query_uint(mw_http_request_t *req, const char *name,
                          int64_t def) {
  const char *v = mw__http_query(req, name);
  if (!v) return def;
  if (!*v || strlen(v) > 18) return -1;
  int64_t n = 0;
  for (const char *p = v; *p; p++) {
    if (*p < '0' || *p > '9') return -1;
    n = n * 10 + (*p - '0');
  }
  return n;
}

static void on_history(int status, mw_event_t *const *events, size_t n,
                       uint64_t top_seq, const char *epoch, int complete,
                       void *ud) {
  mw_http_request_t *req = ud;
  if (status) {
    respond_error(req, mw__publish_http_status(status), mw_strerror(status));
    return;
  }
  /* The events' JSON wire bytes, concatenated as they are: no re-encoding. */
  json_t *head = json_pack(
      "{s:s,s:s,s:I,s:b}", "topic", mw__http_query(req, "topic"), "epoch",
      epoch ? epoch : "", "seq", (json_int_t)top_seq, "complete", complete);
  char *h = json_dumps(head, JSON_COMPACT);
  json_decref(head);
  size_t hl = strlen(h), cap = hl + 16;
  for (size_t i = 0; i < n; i++)
    cap += events[i]->wire[MW_WIRE_JSON].len + 1;
  char *body = mw_xmalloc(cap), *p = body;
  memcpy(p, h, hl - 1); /* without the closing brace */
  p += hl - 1;
  free(h);
  memcpy(p, ",\"events\":[", 11);
  p += 11;
  for (size_t i = 0; i < n; i++) {
    if (i) *p++ = ',';
    memcpy(p, events[i]->wire[MW_WIRE_JSON].data,
           events[i]->wire[MW_WIRE_JSON].len);
    p += events[i]->wire[MW_WIRE_JSON].len;
  }
  memcpy(p, "]}", 2);
  p += 2;
  mw__http_respond(req, 200, "application/json", NULL, body,
                   (size_t)(p - body));
  free(body);
}

static void api_history(mw_http_request_t *req, void *unused) {
  if (!api_allowed(req)) return;
  const char *topic = mw__http_query(req, "topic");
  int64_t since = query_uint(req, "since", 0);
  int64_t max = mw__config_int(mw__server()->cfg, "history.size", 1000);
  int64_t limit = query_uint(req, "limit", max < 100 ? max : 100);
  if (!topic || !mw__topic_valid(topic, strlen(topic)) || since < 0 ||
      limit < 1) {
    respond_error(req, 400,
                  "expected ?topic=T[&since=N][&limit=L] with N >= 0, L >= 1");
    return;
  }
  if (limit > max) limit = max;
  mw_worker_t *w = mw__http_worker(req);
  int rc = mw__storage()->history(mw__storage_wstate(w), topic, (uint64_t)since,
                                  (size_t)limit, on_history, req);
  if (rc) respond_error(req, mw__publish_http_status(rc), mw_strerror(rc));
}

/* --- GET /api/topics: every worker's topics, summed -------------------- */

typedef struct topics_op {
  _Atomic unsigned pending;
  uv_mutex_t lock;
  json_t *counts; /* {"topic": subscribers} */
  mw_worker_t *origin;
  mw_http_request_t *req;
} topics_op_t;

static void topics_add(const char *topic, size_t subs, void *ud) {
  topics_op_t *op = ud;
  json_t *cur = json_object_get(op->counts, topic);
  json_int_t n = (json_int_t)subs + (cur ? json_integer_value(cur) : 0);
  json_object_set_new(op->counts, topic, json_integer(n));
}

static void topics_answer(mw_worker_t *w, void *arg) {
  topics_op_t *op = arg;
  json_t *list = json_array();
  const char *k;
  json_t *v;
  json_object_foreach(op->counts, k, v) json_array_append_new(
      list, json_pack("{s:s,s:O}", "topic", k, "subscribers", v));
  json_t *o = json_pack("{s:o,s:I}", "topics", list, "count",
                        (json_int_t)json_object_size(op->counts));
  char *text = json_dumps(o, JSON_COMPACT);
  mw__http_respond_json(op->req, 200, text);
  free(text);
  json_decref(o);
  json_decref(op->counts);
  uv_mutex_destroy(&op->lock);
  free(op);
}

static void topics_collect(mw_worker_t *w, void *arg) {
  topics_op_t *op = arg;
  uv_mutex_lock(&op->lock);
  if (w->hub) mw__hub_foreach_topic(w->hub, topics_add, op);
  uv_mutex_unlock(&op->lock);
  if (atomic_fetch_sub(&op->pending, 1) != 1) return;
  if (w == op->origin || mw__worker_post(op->origin, topics_answer, op))
    topics_answer(w, op); /* origin gone: its request went with it */
}

/* The storage knows every subscription of every node (presence). */
static void on_storage_topics(int status, const char *const *names,
                              const uint64_t *subs, size_t n, void *ud) {
  mw_http_request_t *req = ud;
  if (status) {
    respond_error(req, mw__publish_http_status(status), mw_strerror(status));
    return;
  }
  json_t *list = json_array();
  for (size_t i = 0; i < n; i++)
    json_array_append_new(list, json_pack("{s:s,s:I}", "topic", names[i],
                                          "subscribers", (json_int_t)subs[i]));
  json_t *o = json_pack("{s:o,s:I}", "topics", list, "count", (json_int_t)n);
  char *text = json_dumps(o, JSON_COMPACT);
  mw__http_respond_json(req, 200, text);
  free(text);
  json_decref(o);
}

static void api_topics(mw_http_request_t *req, void *unused) {
  if (!api_allowed(req)) return;
  const mw_storage_v1_t *st = mw__storage();
  if (st->topics) {
    int rc = st->topics(mw__storage_wstate(mw__http_worker(req)),
                        on_storage_topics, req);
    if (rc) respond_error(req, mw__publish_http_status(rc), mw_strerror(rc));
    return;
  }
  mw_server_t *s = mw__server();
  topics_op_t *op = mw_xcalloc(1, sizeof *op);
  uv_mutex_init(&op->lock);
  op->counts = json_object();
  op->origin = mw__http_worker(req);
  op->req = req;
  atomic_init(&op->pending, s->nworkers);
  for (unsigned i = 0; i < s->nworkers; i++)
    if (mw__worker_post(&s->workers[i], topics_collect, op))
      topics_collect(&s->workers[i], op); /* stopped: nothing to add */
}

/* --- GET /api/presence ---------------------------------------------------- */

static void on_presence(int status, const char *json, void *ud) {
  mw_http_request_t *req = ud;
  if (status)
    respond_error(req, mw__publish_http_status(status), mw_strerror(status));
  else
    mw__http_respond_json(req, 200, json);
}

static void api_presence(mw_http_request_t *req, void *unused) {
  if (!api_allowed(req)) return;
  const char *topic = mw__http_query(req, "topic");
  if (!topic || !mw__topic_valid(topic, strlen(topic))) {
    respond_error(req, 400, "expected ?topic=T");
    return;
  }
  int rc =
      mw__presence_query(mw__http_worker(req), NULL, topic, on_presence, req);
  if (rc == MW_ENOTFOUND)
    respond_error(req, 501, "the storage keeps no presence");
  else if (rc)
    respond_error(req, mw__publish_http_status(rc), mw_strerror(rc));
}

/* --- POST /api/disconnect {"user_id":...} ------------------------------- */

typedef struct kick_op {
  _Atomic unsigned pending;
  _Atomic size_t kicked;
  char *user_id;
  mw_worker_t *origin;
  mw_http_request_t *req;
} kick_op_t;

static void kick_answer(mw_worker_t *w, void *arg) {
  kick_op_t *op = arg;
  char body[64];
  snprintf(body, sizeof body, "{\"disconnected\":%zu}",
           (size_t)atomic_load(&op->kicked));
  mw__http_respond_json(op->req, 200, body);
  free(op->user_id);
  free(op);
}

static void kick_task(mw_worker_t *w, void *arg) {
  kick_op_t *op = arg;
  if (w->hub)
    atomic_fetch_add(&op->kicked,
                     mw__clients_kick_user(w, op->user_id, "disconnected"));
  if (atomic_fetch_sub(&op->pending, 1) != 1) return;
  if (w == op->origin || mw__worker_post(op->origin, kick_answer, op))
    kick_answer(w, op);
}

static void api_disconnect(mw_http_request_t *req, void *unused) {
  if (!api_allowed(req)) return;
  json_t *root = body_object(req);
  if (!root) return;
  json_t *user = json_object_get(root, "user_id");
  if (!json_is_string(user) || json_string_length(user) == 0) {
    respond_error(req, 400, "expected {\"user_id\":string}");
    json_decref(root);
    return;
  }
  mw_server_t *s = mw__server();
  kick_op_t *op = mw_xcalloc(1, sizeof *op);
  op->user_id = mw_xstrdup(json_string_value(user));
  op->origin = mw__http_worker(req);
  op->req = req;
  atomic_init(&op->pending, s->nworkers);
  atomic_init(&op->kicked, 0);
  json_decref(root);
  for (unsigned i = 0; i < s->nworkers; i++)
    if (mw__worker_post(&s->workers[i], kick_task, op))
      kick_task(&s->workers[i], op);
}

/* --- GET /healthz, /metrics ------------------------------------------- */

static void healthz(mw_http_request_t *req, void *unused) {
  mw_worker_t *w = mw__http_worker(req);
  if (w->draining) {
    mw__http_respond_json(req, 503, "{\"status\":\"draining\"}");
    return;
  }
  if (!mw__storage()->healthy(mw__storage_wstate(w))) {
    mw__http_respond_json(req, 503, "{\"status\":\"storage unavailable\"}");
    return;
  }
  mw__http_respond_json(req, 200, "{\"status\":\"ok\"}");
}

static void metrics(mw_http_request_t *req, void *unused) {
  size_t len;
  char *text = mw__metrics_render(&len);
  mw__http_respond(req, 200, "text/plain; version=0.0.4", NULL, text, len);
  free(text);
}

void mw__api_register(mw_server_t *s) {
  m_api_auth = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total",
                          "Requests or connections rejected, by reason",
                          "reason=\"api_auth\"");
  mw__server_route(s, "POST", "/api/publish", api_publish, NULL);
  mw__server_route(s, "POST", "/api/broadcast", api_broadcast, NULL);
  mw__server_route(s, "POST", "/api/reload", api_reload, NULL);
  mw__server_route(s, "GET", "/api/history", api_history, NULL);
  mw__server_route(s, "GET", "/api/topics", api_topics, NULL);
  mw__server_route(s, "GET", "/api/presence", api_presence, NULL);
  mw__server_route(s, "POST", "/api/disconnect", api_disconnect, NULL);
  mw__server_route(s, "GET", "/healthz", healthz, NULL);
  mw__server_route(s, "GET", "/metrics", metrics, NULL);
}
