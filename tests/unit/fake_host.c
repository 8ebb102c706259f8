/* A fake host table for plugin unit tests: see fake_host.h. */
#include "fake_host.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

fake_state_t fake;

/* In the real host a connection is freed once its on_close ran: a plugin
 * that touches it afterwards is a use-after-free. The fake fails the test. */
static void fake_assert_alive(const mw_conn_t *c, const char *op) {
  if (c->close_fired)
    fail_msg("plugin called %s on a connection after its on_close", op);
}

struct mw_worker {
  uv_loop_t *loop;
};
struct mw_plugin_handle {
  int unused;
};
struct mw_metric {
  char name[96], labels[96];
  int64_t value;
};

#define FAKE_MAX_METRICS 64
#define FAKE_MAX_ROUTES 8
#define FAKE_MAX_CONFIG 16
#define FAKE_MAX_REQUESTS 32

static struct mw_worker fake_w;
static struct mw_plugin_handle fake_handle;
static struct mw_metric fake_metrics[FAKE_MAX_METRICS];
static int fake_nmetrics;
static struct {
  const char *method, *path;
  mw_route_fn fn;
} fake_routes[FAKE_MAX_ROUTES];
static int fake_nroutes;
static struct {
  char key[64];
  int64_t value;
} fake_config[FAKE_MAX_CONFIG];
static int fake_nconfig;
static mw_http_request_t *fake_requests[FAKE_MAX_REQUESTS];
static int fake_nrequests;
static mw_conn_t *fake_conns;
static mw_client_t *fake_clients;
static mw_event_t fake_pub_event;

static void *fake_xalloc(size_t n) {
  void *p = calloc(1, n ? n : 1);
  if (!p) abort();
  return p;
}

static void fake_record(const char *op, const char *arg) {
  if (fake.ncalls >= FAKE_MAX_CALLS) return;
  fake_call_t *c = &fake.calls[fake.ncalls++];
  snprintf(c->op, sizeof(c->op), "%s", op);
  snprintf(c->arg, sizeof(c->arg), "%s", arg ? arg : "");
}

/* --- host table --------------------------------------------------------------
 */

static void h_log(int level, const char *sub, const char *fmt, ...) {
  if (!getenv("FAKE_HOST_LOG")) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[%d %s] ", level, sub);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static const char *h_strerror(int code) {
  switch (code) {
  case MW_EINVAL:
    return "invalid argument";
  case MW_ELIMIT:
    return "limit reached";
  case MW_EUNAVAIL:
    return "storage unavailable";
  case MW_EDENIED:
    return "denied";
  case MW_ETOOBIG:
    return "too big";
  case MW_ECANCELED:
    return "cancelled";
  default:
    return "error";
  }
}

static int64_t h_config_int(const char *key, int64_t def) {
  for (int i = 0; i < fake_nconfig; i++)
    if (!strcmp(fake_config[i].key, key)) return fake_config[i].value;
  return def;
}

static const char *h_config_string(const char *key, const char *def) {
  return def;
}

static uv_loop_t *h_worker_loop(mw_worker_t *w) {
  return w->loop;
}
static unsigned h_worker_id(mw_worker_t *w) {
  return 0;
}
static unsigned h_worker_count(void) {
  return 1;
}

static int h_http_route(mw_plugin_handle_t *self, const char *method,
                        const char *path, mw_route_fn fn) {
  for (int i = 0; i < fake_nroutes; i++)
    if (!strcmp(fake_routes[i].method, method) &&
        !strcmp(fake_routes[i].path, path))
      return MW_EEXIST;
  if (fake_nroutes == FAKE_MAX_ROUTES) return MW_ELIMIT;
  fake_routes[fake_nroutes].method = method;
  fake_routes[fake_nroutes].path = path;
  fake_routes[fake_nroutes].fn = fn;
  fake_nroutes++;
  return 0;
}

static const char *h_http_method(const mw_http_request_t *r) {
  return r->method;
}
static const char *h_http_path(const mw_http_request_t *r) {
  return r->path;
}

static const char *h_http_header(const mw_http_request_t *r,
                                 const char *lname) {
  for (int i = 0; i < r->nheaders; i++)
    if (!strcmp(r->hname[i], lname)) return r->hvalue[i];
  return NULL;
}

static const char *h_http_query(const mw_http_request_t *r, const char *n) {
  for (int i = 0; i < r->nquery; i++)
    if (!strcmp(r->qname[i], n)) return r->qvalue[i];
  return NULL;
}
static const char *h_http_remote_addr(const mw_http_request_t *r) {
  return "127.0.0.1";
}
static mw_worker_t *h_http_worker(const mw_http_request_t *r) {
  return &fake_w;
}
static mw_bytes_t h_http_body(const mw_http_request_t *r) {
  mw_bytes_t b = {"", 0};
  return b;
}

static char *fake_strndup(const char *s, size_t n) {
  char *d = fake_xalloc(n + 1);
  if (n) memcpy(d, s, n);
  return d;
}

static void h_http_respond(mw_http_request_t *r, int status, const char *ct,
                           const char *extra, const char *body, size_t len) {
  r->responded++;
  r->status = status;
  r->content_type = ct ? fake_strndup(ct, strlen(ct)) : NULL;
  r->extra_headers = extra ? fake_strndup(extra, strlen(extra)) : NULL;
  r->body = fake_strndup(body ? body : "", body ? len : 0);
  r->body_len = len;
}

static void h_http_on_abort(mw_http_request_t *r, mw_abort_fn fn, void *ud) {
  r->abort_fn = fn;
  r->abort_ud = ud;
}

static void fake_append(mw_conn_t *c, const void *data, size_t len) {
  if (!len) return;
  if (c->len + len > c->alloc) {
    size_t n = c->alloc ? c->alloc : 256;
    while (n < c->len + len)
      n *= 2;
    c->out = realloc(c->out, n);
    if (!c->out) abort();
    c->alloc = n;
  }
  memcpy(c->out + c->len, data, len);
  c->len += len;
}

static mw_conn_t *h_http_take(mw_http_request_t *r, const char *head,
                              size_t head_len, const mw_stream_handler_t *h,
                              void *ud) {
  mw_conn_t *c = fake_xalloc(sizeof(*c));
  c->h = *h;
  c->ud = ud;
  c->next = fake_conns;
  fake_conns = c;
  fake_append(c, head, head_len);
  r->taken = c;
  r->responded++;
  /* Like the core may: bytes that followed the request, before returning. */
  if (r->trailing_len) c->h.on_data(c->ud, r->trailing, r->trailing_len);
  return c;
}

/* 0, or MW_ELIMIT (on_overflow ran) / MW_ECLOSED. */
static int fake_check(mw_conn_t *c, size_t n, int force) {
  fake_assert_alive(c, "a write");
  if (c->closed) return MW_ECLOSED;
  if (force || !c->cap) return 0;
  if (c->overflows) return MW_ELIMIT;
  if (c->len + n > c->cap) {
    c->overflows++;
    c->h.on_overflow(c->ud);
    return MW_ELIMIT;
  }
  return 0;
}

static int h_conn_write(mw_conn_t *c, const void *data, size_t len, int force) {
  int rc = fake_check(c, len, force);
  if (rc) return rc;
  fake_append(c, data, len);
  return 0;
}

static int h_conn_write_event(mw_conn_t *c, const void *prefix, size_t plen,
                              mw_event_t *ev, mw_wire_t wire,
                              const void *suffix, size_t slen) {
  if (plen > 16 || slen > 16) return MW_EINVAL;
  int rc = fake_check(c, plen + ev->wire[wire].len + slen, 0);
  if (rc) return rc;
  fake_append(c, prefix, plen);
  fake_append(c, ev->wire[wire].data, ev->wire[wire].len);
  fake_append(c, suffix, slen);
  c->event_writes++;
  c->last_event = ev;
  return 0;
}

static size_t h_conn_queued(const mw_conn_t *c) {
  return 0;
}

static void h_conn_close(mw_conn_t *c) {
  fake_assert_alive(c, "conn_close");
  if (c->closed) return;
  c->closed = 1;
  if (fake.sync_close) fake_conn_fire_close(c);
}

static mw_event_t *h_event_ref(mw_event_t *ev) {
  fake.event_refs++;
  return ev;
}
static void h_event_unref(mw_event_t **ev) {
  if (*ev) fake.event_refs--;
  *ev = NULL;
}
static int h_event_seal(mw_event_t *ev, uint64_t seq, const char *epoch) {
  return MW_EINVAL;
}
static int h_event_parse(const char *j, size_t n, const char *e,
                         mw_event_t **out) {
  return MW_EINVAL;
}
static void h_fanout(mw_event_t *ev) {}

static mw_client_t *h_client_new(mw_worker_t *w, const char *transport,
                                 mw_deliver_fn deliver, void *ud) {
  mw_client_t *c = fake_xalloc(sizeof(*c));
  c->deliver = deliver;
  c->ud = ud;
  c->next = fake_clients;
  fake_clients = c;
  fake.clients_live++;
  return c;
}

static void h_client_free(mw_client_t **pc) {
  mw_client_t *c = *pc;
  if (!c) return;
  for (mw_client_t **p = &fake_clients; *p; p = &(*p)->next)
    if (*p == c) {
      *p = c->next;
      break;
    }
  for (int i = 0; i < c->ntopics; i++)
    free(c->topics[i]);
  free(c);
  fake.clients_live--;
  *pc = NULL;
}

static void h_client_attach_request(mw_client_t *c,
                                    const mw_http_request_t *req) {
  (void)c;
  (void)req;
}

static int h_client_has_token(const mw_client_t *c) {
  (void)c;
  return fake.request_token;
}

static int h_policy_has_connect(mw_worker_t *w) {
  (void)w;
  return fake.policy_has_connect;
}

static int h_client_connect(mw_client_t *c, const char *token, int *code) {
  (void)c;
  fake.connects++;
  snprintf(fake.connect_token, sizeof fake.connect_token, "%s",
           token ? token : "");
  if (code) *code = fake.connect_code;
  return fake.connect_status;
}

static const char *h_client_error(const mw_client_t *c, int *code) {
  (void)c;
  if (fake.subscribe_denied) {
    if (code) *code = fake.subscribe_deny_code;
    return fake.subscribe_deny_reason;
  }
  if (code) *code = fake.connect_code;
  return fake.connect_reason ? fake.connect_reason : "";
}

static const char *h_client_user_id(const mw_client_t *c) {
  (void)c;
  return fake.connect_status ? NULL : "u1";
}

static const char *h_client_tenant_id(const mw_client_t *c) {
  (void)c;
  return NULL;
}

static void h_client_disconnect(mw_client_t **pc, const char *reason) {
  snprintf(fake.disconnect_reason, sizeof fake.disconnect_reason, "%s",
           reason ? reason : "");
  h_client_free(pc);
}

static int h_subscribe(mw_client_t *c, const char *topic);

static int h_subscribe_since(mw_client_t *c, const char *topic, uint64_t since,
                             const char *epoch, mw_recover_cb cb, void *ud) {
  int rc = h_subscribe(c, topic);
  if (rc) return rc;
  fake.recover_since = since;
  snprintf(fake.recover_epoch, sizeof fake.recover_epoch, "%s",
           epoch ? epoch : "");
  /* The position the core keeps: `since` when recovered, else the top. */
  int i = c->ntopics - 1;
  c->pos[i] = fake.recover_recovered ? since : fake.position_seq;
  snprintf(c->pos_epoch[i], sizeof c->pos_epoch[i], "%s",
           fake.position_epoch ? fake.position_epoch : "");
  if (fake.recover_status) {
    cb(fake.recover_status, topic, 0, 0, NULL, ud);
    return 0;
  }
  cb(0, topic, fake.recover_recovered, fake.position_seq, fake.position_epoch,
     ud);
  if (fake.recover_recovered)
    for (int k = 0; k < fake.recover_nreplay; k++) {
      c->pos[i] = fake.recover_replay[k]->seq;
      c->deliver(c, fake.recover_replay[k], c->ud);
    }
  return 0;
}

static uint64_t h_client_position(const mw_client_t *c, const char *topic,
                                  const char **epoch) {
  for (int i = 0; i < c->ntopics; i++)
    if (!strcmp(c->topics[i], topic)) {
      *epoch = c->pos_epoch[i][0] ? c->pos_epoch[i] : NULL;
      return c->pos[i];
    }
  *epoch = NULL;
  return 0;
}

static int h_http_cors(const mw_http_request_t *req, char *headers,
                       size_t len) {
  (void)req;
  headers[0] = 0;
  if (fake.cors_deny) return MW_EDENIED;
  snprintf(headers, len, "%s", fake.cors_headers ? fake.cors_headers : "");
  return 0;
}

static void h_client_set_kick(mw_client_t *c,
                              void (*kick)(mw_client_t *c, const char *reason,
                                           void *ud)) {
  c->kick = kick;
}

static int h_presence(mw_worker_t *w, mw_client_t *c, const char *topic,
                      void (*cb)(int status, const char *json, void *ud),
                      void *ud) {
  (void)w;
  (void)c;
  fake_record("presence", topic);
  if (!fake.presence_json) return MW_ENOTFOUND;
  cb(0, fake.presence_json, ud);
  return 0;
}

static const char *h_client_id(const mw_client_t *c) {
  return "test-0-1";
}

static int h_subscribe(mw_client_t *c, const char *topic) {
  fake_record("subscribe", topic);
  if (!*topic || strchr(topic, ' ')) return MW_EINVAL;
  if (fake_client_has(c, topic)) return MW_EEXIST;
  if (fake.subscribe_deny && !strcmp(topic, fake.subscribe_deny)) {
    if (fake.subscribe_deny_reason) fake.subscribe_denied = 1;
    return MW_EDENIED;
  }
  if (c->ntopics >= fake.max_topics || c->ntopics >= FAKE_MAX_TOPICS)
    return MW_ELIMIT;
  c->pos[c->ntopics] = 0;
  c->pos_epoch[c->ntopics][0] = 0;
  c->topics[c->ntopics++] = fake_strndup(topic, strlen(topic));
  return 0;
}

static int h_unsubscribe(mw_client_t *c, const char *topic) {
  fake_record("unsubscribe", topic);
  for (int i = 0; i < c->ntopics; i++)
    if (!strcmp(c->topics[i], topic)) {
      free(c->topics[i]);
      c->topics[i] = c->topics[--c->ntopics];
      c->pos[i] = c->pos[c->ntopics];
      memcpy(c->pos_epoch[i], c->pos_epoch[c->ntopics], sizeof c->pos_epoch[i]);
      return 0;
    }
  return MW_ENOTFOUND;
}

static int h_publish(mw_worker_t *w, const mw_publish_req_t *req,
                     mw_client_t *origin, mw_publish_cb cb, void *ud) {
  fake_record("publish", req->topic);
  fake_call_t *rec = &fake.calls[fake.ncalls - 1];
  snprintf(rec->event, sizeof(rec->event), "%s", req->event ? req->event : "");
  snprintf(rec->data, sizeof(rec->data), "%.*s", (int)req->data_len,
           req->data_json ? req->data_json : "");
  switch (fake.publish_mode) {
  case FAKE_FAIL:
    return fake.publish_status;
  case FAKE_DEFER:
    fake.publish_cb = cb;
    fake.publish_ud = ud;
    return 0;
  case FAKE_SYNC:
    fake.publish_cb = cb;
    fake.publish_ud = ud;
    if (fake.publish_fanout) fake_hub_deliver(req->topic, fake.publish_fanout);
    fake_publish_fire(fake.publish_status);
    return 0;
  }
  return 0;
}

static int h_topic_position(mw_worker_t *w, const char *topic,
                            mw_position_cb cb, void *ud) {
  fake_record("position", topic);
  switch (fake.position_mode) {
  case FAKE_FAIL:
    return fake.position_status;
  case FAKE_DEFER:
    if (fake.position_deferred == FAKE_MAX_CALLS) abort();
    fake.position_cb[fake.position_deferred] = cb;
    fake.position_ud[fake.position_deferred++] = ud;
    return 0;
  case FAKE_SYNC:
    if (fake.position_status)
      cb(fake.position_status, 0, NULL, ud);
    else
      cb(0, fake.position_seq, fake.position_epoch, ud);
    return 0;
  }
  return 0;
}

static mw_metric_t *h_metric(mw_metric_type_t type, const char *name,
                             const char *help, const char *labels) {
  for (int i = 0; i < fake_nmetrics; i++)
    if (!strcmp(fake_metrics[i].name, name) &&
        !strcmp(fake_metrics[i].labels, labels ? labels : ""))
      return &fake_metrics[i];
  if (fake_nmetrics == FAKE_MAX_METRICS) abort();
  mw_metric_t *m = &fake_metrics[fake_nmetrics++];
  snprintf(m->name, sizeof(m->name), "%s", name);
  snprintf(m->labels, sizeof(m->labels), "%s", labels ? labels : "");
  m->value = 0;
  return m;
}

static void h_metric_add(mw_metric_t *m, int64_t delta) {
  if (m) m->value += delta;
}

/* --- test API --------------------------------------------------------------
 */

void fake_host_init(uv_loop_t *loop) {
  memset(&fake, 0, sizeof(fake));
  fake_nmetrics = fake_nroutes = fake_nconfig = fake_nrequests = 0;
  fake_conns = NULL;
  fake_clients = NULL;
  fake_w.loop = loop;
  fake.loop = loop;
  fake.max_topics = 256;
  fake.publish_seq = 1;
  fake.position_seq = 0;
  fake.position_epoch = "e1";
  mw_host_v1_t *h = &fake.host;
  h->struct_size = sizeof(*h);
  h->log = h_log;
  h->strerror = h_strerror;
  h->config_int = h_config_int;
  h->config_string = h_config_string;
  h->worker_loop = h_worker_loop;
  h->worker_id = h_worker_id;
  h->worker_count = h_worker_count;
  h->http_route = h_http_route;
  h->http_method = h_http_method;
  h->http_path = h_http_path;
  h->http_header = h_http_header;
  h->http_query = h_http_query;
  h->http_remote_addr = h_http_remote_addr;
  h->http_worker = h_http_worker;
  h->http_body = h_http_body;
  h->http_respond = h_http_respond;
  h->http_on_abort = h_http_on_abort;
  h->http_take = h_http_take;
  h->conn_write = h_conn_write;
  h->conn_write_event = h_conn_write_event;
  h->conn_queued = h_conn_queued;
  h->conn_close = h_conn_close;
  h->event_ref = h_event_ref;
  h->event_unref = h_event_unref;
  h->event_seal = h_event_seal;
  h->event_parse = h_event_parse;
  h->fanout = h_fanout;
  h->client_new = h_client_new;
  h->client_free = h_client_free;
  h->client_id = h_client_id;
  h->subscribe = h_subscribe;
  h->unsubscribe = h_unsubscribe;
  h->publish = h_publish;
  h->topic_position = h_topic_position;
  h->metric = h_metric;
  h->metric_add = h_metric_add;
  h->client_attach_request = h_client_attach_request;
  h->client_has_token = h_client_has_token;
  h->policy_has_connect = h_policy_has_connect;
  h->client_connect = h_client_connect;
  h->client_error = h_client_error;
  h->client_user_id = h_client_user_id;
  h->client_tenant_id = h_client_tenant_id;
  h->client_disconnect = h_client_disconnect;
  h->subscribe_since = h_subscribe_since;
  h->presence = h_presence;
  h->client_set_kick = h_client_set_kick;
  h->client_position = h_client_position;
  h->http_cors = h_http_cors;
}

void fake_host_close_all(void) {
  for (mw_conn_t *c = fake_conns; c; c = c->next) {
    c->closed = 1;
    fake_conn_fire_close(c);
  }
}

void fake_host_reset(void) {
  while (fake_conns) {
    mw_conn_t *c = fake_conns;
    fake_conns = c->next;
    free(c->out);
    free(c);
  }
  while (fake_clients) {
    mw_client_t *c = fake_clients;
    h_client_free(&c);
  }
  for (int i = 0; i < fake_nrequests; i++) {
    mw_http_request_t *r = fake_requests[i];
    free(r->content_type);
    free(r->extra_headers);
    free(r->body);
    free(r);
  }
  fake_nrequests = 0;
}

const mw_host_v1_t *fake_host(void) {
  return &fake.host;
}
mw_worker_t *fake_worker(void) {
  return &fake_w;
}
mw_plugin_handle_t *fake_plugin_handle(void) {
  return &fake_handle;
}

void fake_config_set(const char *key, int64_t value) {
  if (fake_nconfig == FAKE_MAX_CONFIG) abort();
  snprintf(fake_config[fake_nconfig].key, sizeof(fake_config[0].key), "%s",
           key);
  fake_config[fake_nconfig++].value = value;
}

mw_http_request_t *fake_request_new(const char *method, const char *path,
                                    const char *const *headers) {
  if (fake_nrequests == FAKE_MAX_REQUESTS) abort();
  mw_http_request_t *r = fake_xalloc(sizeof(*r));
  r->method = method;
  r->path = path;
  for (int i = 0; headers && headers[i] && r->nheaders < FAKE_MAX_HEADERS;
       i += 2) {
    r->hname[r->nheaders] = headers[i];
    r->hvalue[r->nheaders++] = headers[i + 1];
  }
  fake_requests[fake_nrequests++] = r;
  return r;
}

int fake_route_call(const char *method, const char *path,
                    mw_http_request_t *req, void *worker_state) {
  for (int i = 0; i < fake_nroutes; i++)
    if (!strcmp(fake_routes[i].method, method) &&
        !strcmp(fake_routes[i].path, path)) {
      fake_routes[i].fn(req, worker_state);
      return 0;
    }
  return -1;
}

void fake_request_query(mw_http_request_t *req, const char *name,
                        const char *value) {
  if (req->nquery == FAKE_MAX_HEADERS) abort();
  req->qname[req->nquery] = name;
  req->qvalue[req->nquery++] = value;
}

void fake_request_abort(mw_http_request_t *req) {
  if (req->aborted || req->responded) return;
  req->aborted = 1;
  if (req->abort_fn) req->abort_fn(req, req->abort_ud);
}

void fake_conn_feed(mw_conn_t *c, const void *data, size_t len) {
  if (c->close_fired) return;
  c->h.on_data(c->ud, data, len);
}

void fake_conn_fire_close(mw_conn_t *c) {
  if (c->close_fired) return;
  c->close_fired = 1;
  c->h.on_close(c->ud);
}

int fake_hub_deliver(const char *topic, mw_event_t *ev) {
  int n = 0;
  for (mw_client_t *c = fake_clients; c; c = c->next)
    if (fake_client_has(c, topic)) {
      for (int i = 0; i < c->ntopics; i++) /* the core's position first */
        if (!strcmp(c->topics[i], topic)) {
          c->pos[i] = ev->seq;
          snprintf(c->pos_epoch[i], sizeof c->pos_epoch[i], "%s",
                   ev->epoch ? ev->epoch : "");
        }
      c->deliver(c, ev, c->ud);
      n++;
    }
  return n;
}

int fake_client_has(const mw_client_t *c, const char *topic) {
  for (int i = 0; i < c->ntopics; i++)
    if (!strcmp(c->topics[i], topic)) return 1;
  return 0;
}

mw_client_t *fake_last_client(void) {
  return fake_clients;
}

void fake_publish_fire(int status) {
  mw_publish_cb cb = fake.publish_cb;
  void *ud = fake.publish_ud;
  fake.publish_cb = NULL;
  if (!cb) return;
  if (status) {
    cb(status, NULL, fake.publish_reason, ud);
    return;
  }
  memset(&fake_pub_event, 0, sizeof(fake_pub_event));
  fake_pub_event.topic = fake.calls[fake.ncalls - 1].arg;
  fake_pub_event.seq = fake.publish_seq++;
  fake_pub_event.epoch = "e1";
  cb(0, &fake_pub_event, NULL, ud);
}

void fake_position_fire(int status) {
  int n = fake.position_deferred;
  fake.position_deferred = 0;
  for (int i = 0; i < n; i++) {
    if (status)
      fake.position_cb[i](status, 0, NULL, fake.position_ud[i]);
    else
      fake.position_cb[i](0, fake.position_seq, fake.position_epoch,
                          fake.position_ud[i]);
  }
}

int fake_calls(const char *op, const char *arg) {
  int n = 0;
  for (int i = 0; i < fake.ncalls; i++)
    if (!strcmp(fake.calls[i].op, op) &&
        (!arg || !strcmp(fake.calls[i].arg, arg)))
      n++;
  return n;
}

int64_t fake_metric_value(const char *name, const char *labels) {
  for (int i = 0; i < fake_nmetrics; i++)
    if (!strcmp(fake_metrics[i].name, name) &&
        !strcmp(fake_metrics[i].labels, labels ? labels : ""))
      return fake_metrics[i].value;
  return -1;
}
