/* The publish pipeline: see publish.h. */
#include "publish.h"

#include <openssl/rand.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "client.h"
#include "codec.h"
#include "event.h"
#include "hub.h"
#include "log.h"
#include "metrics.h"
#include "server.h"

#define MW_EVENT_NAME_MAX 128
#define MW_TRACE_ID_MAX 64

static mw_metric_t *m_published, *m_err_invalid, *m_err_unavail, *m_err_other,
    *m_err_denied, *m_overload;
static mw_admission_limits_t admission;     /* zero: admit everything */
static _Atomic uint64_t overload_logged_ms; /* rate-limits the warning */

const char mw__publish_overload_reason[] =
    "overloaded: subscribers cannot be served in time; retry later";

void mw__publish_metrics_init(void) {
  m_published = mw__metric(MW_METRIC_COUNTER, "moonwire_events_published_total",
                           "Events stored and fanned out", NULL);
  m_err_invalid = mw__metric(MW_METRIC_COUNTER, "moonwire_events_dropped_total",
                             "Events not published or not delivered, by reason",
                             "reason=\"invalid\"");
  m_err_unavail = mw__metric(MW_METRIC_COUNTER, "moonwire_events_dropped_total",
                             NULL, "reason=\"storage_unavailable\"");
  m_err_denied = mw__metric(MW_METRIC_COUNTER, "moonwire_events_dropped_total",
                            NULL, "reason=\"publish_denied\"");
  m_err_other = mw__metric(MW_METRIC_COUNTER, "moonwire_events_dropped_total",
                           NULL, "reason=\"storage_error\"");
  m_overload = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total",
                          "Requests or connections rejected, by reason",
                          "reason=\"overload\"");
}

/* --- admission control -------------------------------------------------- */

/* Bytes one event is assumed to queue per connection of a worker that has
 * not fanned out a batch yet (a WebSocket frame of a ~100-byte event). */
#define MW_ADMIT_PRIOR_BYTES 128

void mw__publish_admission_init(const mw_config_t *cfg) {
  int64_t b = mw__config_int(cfg, "limits.publish_backlog", 0);
  int64_t l = mw__config_int(cfg, "limits.publish_lag_ms", 0);
  admission.backlog_bytes = b > 0 ? (uint64_t)b : 0;
  admission.lag_ms = l > 0 ? (uint64_t)l : 0;
}

int mw__admission_decide(const mw_admission_limits_t *lim, uint64_t backlog,
                         uint64_t lag_ms) {
  if (lim->backlog_bytes && backlog > lim->backlog_bytes)
    return MW_ADMIT_BACKLOG;
  if (lim->lag_ms && lag_ms > lim->lag_ms) return MW_ADMIT_LAG;
  return MW_ADMIT_OK;
}

int mw__publish_admit(mw_worker_t *w) {
  if (!admission.backlog_bytes && !admission.lag_ms) return 0;
  mw_server_t *s = mw__server();
  uint64_t now = mw__now_ms();
  uint64_t backlog = 0, lag = 0;
  for (unsigned i = 0; s && i < s->nworkers; i++) {
    mw_worker_t *o = &s->workers[i];
    /* Bytes queued for its subscribers (without a few laggards' excess,
     * see server.c), plus what the events already accepted but not fanned
     * out there will add (at its recent cost per event): a burst read in
     * one loop turn is counted before it lands. */
    uint64_t b =
        o == w ? mw__worker_backlog(o)
               : atomic_load_explicit(&o->backlog_bytes, memory_order_relaxed);
    uint64_t cost = atomic_load_explicit(&o->event_cost, memory_order_relaxed);
    /* Before its first batch a worker has no measured cost per event: its
     * own connections times a typical frame stand in, so that the very
     * first burst (read in one loop turn) is counted too. */
    if (!cost && o == w) cost = (uint64_t)w->conn_count * MW_ADMIT_PRIOR_BYTES;
    b += (uint64_t)atomic_load_explicit(&o->inbox_depth, memory_order_relaxed) *
         cost;
    if (b > backlog) backlog = b;
    /* The age of its oldest event not fanned out yet; and the wait its last
     * batch had, remembered for as long as that wait lasted. */
    uint64_t since =
        atomic_load_explicit(&o->lag_since_ms, memory_order_relaxed);
    if (since && now > since && now - since > lag) lag = now - since;
    uint64_t bl = atomic_load_explicit(&o->batch_lag_ms, memory_order_relaxed);
    uint64_t done =
        atomic_load_explicit(&o->batch_done_ms, memory_order_relaxed);
    if (bl > lag && done + bl > now) lag = bl;
  }
  int why = mw__admission_decide(&admission, backlog, lag);
  if (why == MW_ADMIT_OK) return 0;
  mw__metric_add(m_overload, 1);
  uint64_t last =
      atomic_load_explicit(&overload_logged_ms, memory_order_relaxed);
  if (now - last >= 1000 &&
      atomic_compare_exchange_strong(&overload_logged_ms, &last, now))
    mw_log(MW_LOG_WARN, "publish",
           "overloaded, refusing publishes (503): %s (backlog %llu bytes, "
           "limit %llu; lag %llu ms, limit %llu)",
           why == MW_ADMIT_BACKLOG ? "outbound backlog" : "fan-out lag",
           (unsigned long long)backlog,
           (unsigned long long)admission.backlog_bytes, (unsigned long long)lag,
           (unsigned long long)admission.lag_ms);
  return MW_EUNAVAIL;
}

void mw__iso_now(char out[32]) {
  /* The date and time to the second change once a second: formatted then,
   * per thread, and the milliseconds appended to a copy. */
  static _Thread_local time_t last_sec = -1;
  static _Thread_local char prefix[24];
  static _Thread_local size_t prefix_len;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  if (tv.tv_sec != last_sec) {
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    prefix_len = strftime(prefix, sizeof prefix, "%Y-%m-%dT%H:%M:%S", &tm);
    last_sec = tv.tv_sec;
  }
  unsigned ms = (unsigned)(tv.tv_usec / 1000);
  memcpy(out, prefix, prefix_len);
  out[prefix_len] = '.';
  out[prefix_len + 1] = (char)('0' + ms / 100);
  out[prefix_len + 2] = (char)('0' + ms / 10 % 10);
  out[prefix_len + 3] = (char)('0' + ms % 10);
  out[prefix_len + 4] = 'Z';
  out[prefix_len + 5] = 0;
}

/* 16 random hex digits into out[17]: bytes from OpenSSL's generator, drawn
 * 512 at a time per thread (one RAND_bytes call per 64 trace ids). */
static void random_trace_id(char out[17]) {
  static _Thread_local unsigned char pool[512];
  static _Thread_local size_t pool_left;
  static const char hex[] = "0123456789abcdef";
  if (pool_left < 8) {
    if (RAND_bytes(pool, sizeof pool) != 1) mw_oom();
    pool_left = sizeof pool;
  }
  const unsigned char *rnd = pool + sizeof pool - pool_left;
  for (int i = 0; i < 8; i++) {
    out[2 * i] = hex[rnd[i] >> 4];
    out[2 * i + 1] = hex[rnd[i] & 15];
  }
  out[16] = 0;
  memset(pool + sizeof pool - pool_left, 0, 8); /* used bytes do not linger */
  pool_left -= 8;
}

int mw__publish_http_status(int code) {
  switch (code) {
  case MW_EINVAL:
    return 400;
  case MW_EDENIED:
    return 403;
  case MW_ETOOBIG:
    return 413;
  case MW_ELIMIT:
    return 429;
  case MW_EUNAVAIL:
    return 503;
  case MW_ECANCELED:
    return 503;
  default:
    return 500;
  }
}

static int name_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > MW_EVENT_NAME_MAX) return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
  return mw_codec_utf8_valid(s, n);
}

static int trace_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > MW_TRACE_ID_MAX) return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
          (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '_' || ch == '.' ||
          ch == ':'))
      return 0;
  }
  return 1;
}

typedef struct publish_op {
  mw_publish_cb cb;
  void *ud;
  mw_event_t *draft; /* our reference until the storage answers */
} publish_op_t;

static void on_stored(int status, mw_event_t *sealed, void *ud) {
  publish_op_t *op = ud;
  if (status == 0) {
    mw__metric_add(m_published, 1);
    mw_log(MW_LOG_DEBUG, "publish", "topic=%s event=%s seq=%llu trace_id=%s",
           sealed->topic, sealed->name, (unsigned long long)sealed->seq,
           sealed->trace_id);
    op->cb(0, sealed, NULL, op->ud);
  } else {
    mw__metric_add(status == MW_EUNAVAIL ? m_err_unavail : m_err_other, 1);
    mw_log(MW_LOG_WARN, "publish", "topic=%s trace_id=%s failed: %s",
           op->draft->topic, op->draft->trace_id, mw_strerror(status));
    op->cb(status, NULL, mw_strerror(status), op->ud);
  }
  mw_event_unref(&op->draft);
  free(op);
}

static int invalid(mw_publish_cb cb, void *ud, const char *reason) {
  mw__metric_add(m_err_invalid, 1);
  cb(MW_EINVAL, NULL, reason, ud);
  return 0;
}

/* The MW_E* that carries a policy's HTTP-like code back to the caller. */
static int code_to_error(int code) {
  switch (code) {
  case 400:
    return MW_EINVAL;
  case 413:
    return MW_ETOOBIG;
  case 429:
    return MW_ELIMIT;
  case 503:
    return MW_EUNAVAIL;
  default:
    return MW_EDENIED;
  }
}

static int denied(mw_publish_cb cb, void *ud, int code, const char *reason) {
  mw__metric_add(m_err_denied, 1);
  cb(code_to_error(code), NULL, reason, ud);
  return 0;
}

/* Tenant rules and on_publish. Returns 1 to go on (with *data, *event and
 * *trace possibly replaced: *owned then holds what to free), 0 after
 * answering cb. */
static int apply_policy(mw_worker_t *w, mw_client_t *origin, const char *topic,
                        const char **event, const char **trace, json_t **data,
                        json_t **owned, mw_publish_cb cb, void *ud) {
  mw_policy_t *p = mw__worker_policy(w);
  const mw_policy_identity_t *ident = NULL;
  if (origin) {
    if (!origin->connected)
      return denied(cb, ud, 401, "not connected: authenticate first"), 0;
    ident = &origin->ident;
    const char *tenant = ident->tenant_id;
    if (p && !mw__policy_tenant_topic_allowed(p, tenant, topic))
      return denied(cb, ud, 403, "topic not allowed for this tenant"), 0;
    /* A tenant's connection publishes into its own tenant. */
    if (tenant && !ident->all_tenants) {
      const char *given =
          json_string_value(json_object_get(*data, "tenant_id"));
      if (given && strcmp(given, tenant) != 0)
        return denied(cb, ud, 403, "data.tenant_id is not your tenant"), 0;
      if (!given) json_object_set_new(*data, "tenant_id", json_string(tenant));
    }
    if (ident->user_id && !json_object_get(*data, "user_id"))
      json_object_set_new(*data, "user_id", json_string(ident->user_id));
  }
  if (!p || !mw__policy_has_publish(p)) return 1;
  json_t *in = json_pack("{s:s,s:s,s:O,s:s}", "topic", topic, "event", *event,
                         "data", *data, "trace_id", *trace);
  mw_policy_result_t res;
  memset(&res, 0, sizeof res);
  mw__policy_publish(p, ident, in, &res);
  json_decref(in);
  if (res.status != MW_POLICY_OK || res.verdict == MW_VERDICT_DENY) {
    denied(cb, ud, res.code ? res.code : 403,
           res.status != MW_POLICY_OK ? "policy error"
           : res.reason[0]            ? res.reason
                                      : "forbidden");
    mw__policy_result_clear(&res);
    return 0;
  }
  if (res.verdict == MW_VERDICT_CHANGED && res.out) {
    json_t *ne = json_object_get(res.out, "event");
    json_t *nd = json_object_get(res.out, "data");
    json_t *nt = json_object_get(res.out, "trace_id");
    if (!json_is_string(ne) || !name_valid(json_string_value(ne)) ||
        !json_is_object(nd) ||
        (nt && (!json_is_string(nt) || !trace_valid(json_string_value(nt))))) {
      denied(cb, ud, 500, "on_publish returned an invalid event");
      mw__policy_result_clear(&res);
      return 0;
    }
    *owned = res.out; /* keeps the strings below alive */
    res.out = NULL;
    *event = json_string_value(ne);
    if (nt) *trace = json_string_value(nt);
    json_decref(*data);
    *data = json_incref(nd);
  }
  mw__policy_result_clear(&res);
  return 1;
}

int mw__publish_json(mw_worker_t *w, const char *topic, const char *event,
                     const char *trace_id, json_t *data, mw_client_t *origin,
                     mw_publish_cb cb, void *ud) {
  if (mw__publish_admit(w)) {
    cb(MW_EUNAVAIL, NULL, mw__publish_overload_reason, ud);
    return 0;
  }
  return mw__publish_json_admitted(w, topic, event, trace_id, data, origin, cb,
                                   ud);
}

int mw__publish_json_admitted(mw_worker_t *w, const char *topic,
                              const char *event, const char *trace_id,
                              json_t *data, mw_client_t *origin,
                              mw_publish_cb cb, void *ud) {
  if (!topic || !mw__topic_valid(topic, strlen(topic)))
    return invalid(cb, ud,
                   "topic: 1..256 bytes of UTF-8 without spaces, "
                   "control characters or commas");
  if (!event || !name_valid(event))
    return invalid(cb, ud, "event: 1..128 bytes of UTF-8 text");
  if (data && !json_is_object(data))
    return invalid(cb, ud, "data: must be an object");
  json_t *tenant = data ? json_object_get(data, "tenant_id") : NULL;
  if (tenant && (!json_is_string(tenant) || json_string_length(tenant) == 0))
    return invalid(cb, ud, "data.tenant_id: must be a non-empty string");
  if (trace_id && !trace_valid(trace_id))
    return invalid(cb, ud, "trace_id: 1..64 characters of [A-Za-z0-9-_.:]");
  char trace[17];
  if (!trace_id) {
    random_trace_id(trace);
    trace_id = trace;
  }
  json_t *d = data ? json_incref(data) : json_object();
  json_t *owned = NULL;
  if (!apply_policy(w, origin, topic, &event, &trace_id, &d, &owned, cb, ud)) {
    json_decref(d);
    return 0;
  }
  if (!json_object_get(d, "timestamp")) {
    char ts[32];
    mw__iso_now(ts);
    json_object_set_new(d, "timestamp", json_string(ts));
  }
  publish_op_t *op = mw_xcalloc(1, sizeof *op);
  op->cb = cb;
  op->ud = ud;
  op->draft = mw__event_draft(topic, event, trace_id, d);
  json_decref(owned);
  const mw_storage_v1_t *st = mw__storage();
  int rc = st->publish(mw__storage_wstate(w), op->draft, on_stored, op);
  if (rc) on_stored(rc, NULL, op); /* the storage's callback will not fire */
  return 0;
}

int mw__publish(mw_worker_t *w, const mw_publish_req_t *req,
                mw_client_t *origin, mw_publish_cb cb, void *ud) {
  if (mw__publish_admit(w)) { /* before any parsing: push back cheaply */
    cb(MW_EUNAVAIL, NULL, mw__publish_overload_reason, ud);
    return 0;
  }
  json_t *data = NULL;
  if (req->data_json && req->data_len) {
    json_error_t jerr;
    data = json_loadb(req->data_json, req->data_len, 0, &jerr);
    if (!data) return invalid(cb, ud, "data: malformed JSON");
  }
  int rc = mw__publish_json_admitted(w, req->topic, req->event, req->trace_id,
                                     data, origin, cb, ud);
  json_decref(data);
  return rc;
}

int mw__topic_position(mw_worker_t *w, const char *topic, mw_position_cb cb,
                       void *ud) {
  if (!topic || !mw__topic_valid(topic, strlen(topic))) return MW_EINVAL;
  return mw__storage()->position(mw__storage_wstate(w), topic, cb, ud);
}
