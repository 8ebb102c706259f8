/* Topics, subscriptions, fan-out: see hub.h.
 *
 * A subscription links one client and one topic and sits in two lists: the
 * topic's subscribers and the client's topics. Delivery walks the topic's
 * list and hands the shared event to each client's transport. */
#include "hub.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#include "client.h"
#include "codec.h"
#include "event.h"
#include "log.h"
#include "metrics.h"

#define MW_TOPIC_MAX 256

typedef struct mw_topic {
  char *name;
  mw_sub_t *subs; /* first subscriber */
  size_t nsubs;
  UT_hash_handle hh;
} mw_topic_t;

struct mw_sub {
  mw_topic_t *topic;
  mw_client_t *client;
  mw_sub_t *tprev, *tnext;   /* in the topic's list */
  mw_sub_t *cprev, *cnext;   /* in the client's list */
  int presence_events;       /* join/leave events are sent for this one */
  uint64_t last_seq;         /* the newest seq delivered (or skipped) */
  char epoch[40];            /* the epoch last_seq belongs to ("" unknown) */
  struct recovery *recovery; /* while history is replayed: live events wait */
};

/* A subscription being recovered: live events wait in `held` until the
 * history read answers, so the client sees missed events, then live ones,
 * in seq order without gap or duplicate. */
typedef struct recovery {
  mw_sub_t *sub; /* NULL once the subscription went away */
  char *topic;
  uint64_t since;
  char want_epoch[40]; /* "" : any */
  mw_event_t **held;
  size_t nheld, capheld;
  int overflow; /* too many held: the replay cannot be complete */
  mw_recover_cb cb;
  void *ud;
  int status, recovered; /* the history answer */
  mw_event_t **events;   /* its events, replayed on the next turn */
  size_t nevents;
} recovery_t;

#define MW_RECOVERY_HOLD_MAX 10000

/* One changed event made by the policy for some recipients of the event
 * being delivered: reused for every recipient with the same result (the
 * policy gives equal results the same key, see mw__policy_deliver). */
typedef struct changed {
  const void *key; /* the policy's out_key */
  mw_event_t *ev;
} changed_t;

struct mw_hub {
  mw_worker_t *worker;
  mw_topic_t *topics; /* uthash head */
  size_t ntopics;
  uint64_t next_client;
  size_t max_topics_per_client;
  /* Connection gauges by transport, cached per hub. */
  struct {
    char transport[24];
    mw_metric_t *gauge;
  } gauges[8];
  size_t ngauges;
  changed_t *changed; /* results of the event being delivered */
  size_t nchanged, changed_cap;
};

static mw_metric_t *m_topics, *m_subs, *m_delivered, *m_published_local,
    *m_drop_tenant, *m_drop_policy, *m_drop_policy_error, *m_rej_tenant_topic,
    *m_rej_subscribe;

void mw__hub_metrics_init(void) {
  m_topics = mw__metric(MW_METRIC_GAUGE, "moonwire_topics",
                        "Topics with subscribers (summed over workers)", NULL);
  m_subs = mw__metric(MW_METRIC_GAUGE, "moonwire_subscriptions",
                      "Active subscriptions", NULL);
  m_delivered = mw__metric(MW_METRIC_COUNTER, "moonwire_events_delivered_total",
                           "Events handed to subscribers' transports", NULL);
  m_published_local =
      mw__metric(MW_METRIC_COUNTER, "moonwire_events_fanned_out_total",
                 "Events fanned out to a worker's hub", NULL);
  m_drop_tenant = mw__metric(MW_METRIC_COUNTER, "moonwire_events_dropped_total",
                             "Events not published or not delivered, by reason",
                             "reason=\"tenant_isolation\"");
  m_drop_policy = mw__metric(MW_METRIC_COUNTER, "moonwire_events_dropped_total",
                             NULL, "reason=\"policy\"");
  m_drop_policy_error =
      mw__metric(MW_METRIC_COUNTER, "moonwire_events_dropped_total", NULL,
                 "reason=\"policy_error\"");
  m_rej_tenant_topic = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total",
                                  "Requests or connections rejected, by reason",
                                  "reason=\"tenant_topic\"");
  m_rej_subscribe = mw__metric(MW_METRIC_COUNTER, "moonwire_rejected_total",
                               NULL, "reason=\"subscribe_denied\"");
}

mw_hub_t *mw__hub_new(mw_worker_t *w) {
  mw_hub_t *hub = mw_xcalloc(1, sizeof *hub);
  hub->worker = w;
  hub->max_topics_per_client = (size_t)mw__config_int(
      w->server->cfg, "limits.max_topics_per_connection", 256);
  return hub;
}

void mw__hub_free(mw_hub_t *hub) {
  if (!hub) return;
  free(hub->changed);
  mw_topic_t *t, *tmp;
  HASH_ITER(hh, hub->topics, t, tmp) {
    HASH_DEL(hub->topics, t);
    free(t->name);
    free(t);
  }
  free(hub);
}

int mw__topic_valid(const char *topic, size_t len) {
  if (len == 0 || len > MW_TOPIC_MAX) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)topic[i];
    if (ch <= 0x20 || ch == 0x7f || ch == ',') return 0;
  }
  return mw_codec_utf8_valid(topic, len);
}

void mw__hub_foreach_topic(const mw_hub_t *hub,
                           void (*fn)(const char *topic, size_t subscribers,
                                      void *ud),
                           void *ud) {
  for (const mw_topic_t *t = hub->topics; t; t = t->hh.next)
    fn(t->name, t->nsubs, ud);
}

size_t mw__hub_topic_count(const mw_hub_t *hub) {
  return hub->ntopics;
}

uint64_t mw__hub_next_client_number(mw_hub_t *hub) {
  return ++hub->next_client;
}

mw_metric_t *mw__hub_gauge(mw_hub_t *hub, const char *transport,
                           mw_metric_t *(*make)(const char *transport)) {
  for (size_t i = 0; i < hub->ngauges; i++)
    if (strcmp(hub->gauges[i].transport, transport) == 0)
      return hub->gauges[i].gauge;
  mw_metric_t *g = make(transport);
  if (hub->ngauges < sizeof hub->gauges / sizeof hub->gauges[0]) {
    snprintf(hub->gauges[hub->ngauges].transport,
             sizeof hub->gauges[0].transport, "%s", transport);
    hub->gauges[hub->ngauges].gauge = g;
    hub->ngauges++;
  }
  return g;
}

/* --- presence ------------------------------------------------------------ */

static uint64_t presence_ttl_ms(mw_worker_t *w) {
  return (uint64_t)mw__config_int(w->server->cfg, "limits.idle_timeout", 60) *
         1000;
}

/* 1 if config names `topic` a presence topic (presence_topics patterns). */
static int presence_topic(mw_worker_t *w, const char *topic) {
  const char *list = mw__config_string(w->server->cfg, "presence_topics", NULL);
  if (!list || !*list) return 0;
  char pat[300];
  for (const char *p = list; *p;) {
    const char *end = strchr(p, ',');
    size_t n = end ? (size_t)(end - p) : strlen(p);
    if (n < sizeof pat) {
      memcpy(pat, p, n);
      pat[n] = 0;
      if (mw__topic_match(pat, topic)) return 1;
    }
    p += n;
    if (*p == ',') p++;
  }
  return 0;
}

/* Sends a join or leave to every subscriber of the topic, on every node. */
static void presence_event(mw_client_t *c, const char *topic,
                           const char *kind) {
  json_t *data = json_pack("{s:s}", "client_id", c->id);
  if (c->ident.user_id)
    json_object_set_new(data, "user_id", json_string(c->ident.user_id));
  if (c->ident.tenant_id)
    json_object_set_new(data, "tenant_id", json_string(c->ident.tenant_id));
  mw_event_t *ev = mw__event_ephemeral("presence", topic, kind, data);
  if (!ev) return; /* cannot happen: a valid topic, strings from jansson */
  const mw_storage_v1_t *st = mw__storage();
  if (!st->broadcast || st->broadcast(mw__storage_wstate(c->worker), ev) != 0)
    mw__server_fanout(ev); /* at least this node */
  mw_event_unref(&ev);
}

static void presence_join(mw_sub_t *s) {
  mw_client_t *c = s->client;
  const mw_storage_v1_t *st = mw__storage();
  if (st && st->presence_add)
    st->presence_add(mw__storage_wstate(c->worker), s->topic->name, c->id,
                     c->ident.user_id ? c->ident.user_id : "",
                     presence_ttl_ms(c->worker));
  if (s->presence_events) presence_event(c, s->topic->name, "join");
}

static void presence_leave(mw_sub_t *s) {
  mw_client_t *c = s->client;
  const mw_storage_v1_t *st = mw__storage();
  if (st && st->presence_remove)
    st->presence_remove(mw__storage_wstate(c->worker), s->topic->name, c->id);
  if (s->presence_events) presence_event(c, s->topic->name, "leave");
}

static mw_sub_t *find_sub(mw_client_t *c, const char *topic);

typedef struct presence_query {
  void (*cb)(int status, const char *json, void *ud);
  void *ud;
  char *topic;
} presence_query_t;

static void on_presence_list(int status, const mw_presence_entry_t *e, size_t n,
                             void *ud) {
  presence_query_t *q = ud;
  if (status) {
    q->cb(status, NULL, q->ud);
  } else {
    json_t *users = json_array(), *conns = json_array(), *seen = json_object();
    for (size_t i = 0; i < n; i++) {
      json_array_append_new(conns,
                            json_pack("{s:s,s:s}", "client_id", e[i].client_id,
                                      "user_id", e[i].user_id));
      if (e[i].user_id[0] && !json_object_get(seen, e[i].user_id)) {
        json_object_set_new(seen, e[i].user_id, json_true());
        json_array_append_new(users, json_string(e[i].user_id));
      }
    }
    json_t *o = json_pack("{s:s,s:I,s:o,s:o}", "topic", q->topic, "clients",
                          (json_int_t)n, "users", users, "connections", conns);
    char *text = json_dumps(o, JSON_COMPACT);
    q->cb(0, text, q->ud);
    free(text);
    json_decref(o);
    json_decref(seen);
  }
  free(q->topic);
  free(q);
}

int mw__presence_query(mw_worker_t *w, mw_client_t *c, const char *topic,
                       void (*cb)(int status, const char *json, void *ud),
                       void *ud) {
  if (!topic || !mw__topic_valid(topic, strlen(topic))) return MW_EINVAL;
  const mw_storage_v1_t *st = mw__storage();
  if (!st->presence_list) return MW_ENOTFOUND;
  if (c && !find_sub(c, topic)) return MW_EDENIED;
  presence_query_t *q = mw_xcalloc(1, sizeof *q);
  q->cb = cb;
  q->ud = ud;
  q->topic = mw_xstrdup(topic);
  int rc = st->presence_list(mw__storage_wstate(w), topic, on_presence_list, q);
  if (rc) {
    free(q->topic);
    free(q);
  }
  return rc;
}

void mw__hub_presence_refresh(mw_hub_t *hub) {
  const mw_storage_v1_t *st = mw__storage();
  if (!st || !st->presence_add) return;
  void *ws = mw__storage_wstate(hub->worker);
  uint64_t ttl = presence_ttl_ms(hub->worker);
  for (mw_topic_t *t = hub->topics; t; t = t->hh.next)
    for (mw_sub_t *s = t->subs; s; s = s->tnext)
      st->presence_add(ws, t->name, s->client->id,
                       s->client->ident.user_id ? s->client->ident.user_id : "",
                       ttl);
}

static void sub_remove(mw_sub_t *s) {
  if (mw__server() && mw__server()->storage) presence_leave(s);
  if (s->recovery) s->recovery->sub = NULL; /* its history answer is dropped */
  mw_topic_t *t = s->topic;
  mw_client_t *c = s->client;
  mw_hub_t *hub = c->worker->hub;
  if (s->tprev)
    s->tprev->tnext = s->tnext;
  else
    t->subs = s->tnext;
  if (s->tnext) s->tnext->tprev = s->tprev;
  if (s->cprev)
    s->cprev->cnext = s->cnext;
  else
    c->subs = s->cnext;
  if (s->cnext) s->cnext->cprev = s->cprev;
  t->nsubs--;
  c->nsubs--;
  mw__metric_add(m_subs, -1);
  if (t->nsubs == 0) {
    const mw_storage_v1_t *st = mw__server() ? mw__storage() : NULL;
    if (st && st->interest)
      st->interest(mw__storage_wstate(hub->worker), t->name, 0);
    HASH_DEL(hub->topics, t);
    hub->ntopics--;
    mw__metric_add(m_topics, -1);
    free(t->name);
    free(t);
  }
  free(s);
}

void mw__hub_client_detach(mw_client_t *c) {
  while (c->subs)
    sub_remove(c->subs);
}

static mw_sub_t *find_sub(mw_client_t *c, const char *topic) {
  for (mw_sub_t *s = c->subs; s; s = s->cnext)
    if (strcmp(s->topic->name, topic) == 0) return s;
  return NULL;
}

int mw__subscribe(mw_client_t *c, const char *topic) {
  size_t len = strlen(topic);
  if (!mw__topic_valid(topic, len)) return MW_EINVAL;
  if (find_sub(c, topic)) return MW_EEXIST;
  mw_hub_t *hub = c->worker->hub;
  if (c->nsubs >= hub->max_topics_per_client) return MW_ELIMIT;
  if (!c->connected) {
    mw__client_set_error(c, 401, "not connected: authenticate first");
    return MW_EDENIED;
  }
  mw_policy_t *p = mw__worker_policy(c->worker);
  if (p && !mw__policy_tenant_topic_allowed(p, c->ident.tenant_id, topic)) {
    char reason[320];
    snprintf(reason, sizeof reason, "topic '%s' is not allowed for tenant '%s'",
             topic, c->ident.tenant_id);
    mw__client_set_error(c, 403, reason);
    mw__metric_add(m_rej_tenant_topic, 1);
    return MW_EDENIED;
  }
  int presence = presence_topic(c->worker, topic);
  if (p && mw__policy_has_subscribe(p)) {
    mw_policy_result_t res;
    memset(&res, 0, sizeof res);
    mw__policy_subscribe(p, &c->ident, topic, &res);
    int ok = res.status == MW_POLICY_OK && res.verdict == MW_VERDICT_ALLOW;
    if (ok && res.presence) presence = 1;
    if (!ok) {
      mw__client_set_error(c, res.code ? res.code : 403,
                           res.status != MW_POLICY_OK ? "policy error"
                           : res.reason[0]            ? res.reason
                                                      : "forbidden");
      mw__metric_add(m_rej_subscribe, 1);
    }
    mw__policy_result_clear(&res);
    if (!ok) return MW_EDENIED;
  }
  mw_topic_t *t;
  HASH_FIND(hh, hub->topics, topic, len, t);
  if (!t) {
    t = mw_xcalloc(1, sizeof *t);
    t->name = mw_xstrdup(topic);
    HASH_ADD_KEYPTR(hh, hub->topics, t->name, len, t);
    hub->ntopics++;
    mw__metric_add(m_topics, 1);
    const mw_storage_v1_t *st = mw__server() ? mw__storage() : NULL;
    if (st && st->interest)
      st->interest(mw__storage_wstate(c->worker), t->name, 1);
  }
  mw_sub_t *s = mw_xcalloc(1, sizeof *s);
  s->topic = t;
  s->client = c;
  s->tnext = t->subs;
  if (t->subs) t->subs->tprev = s;
  t->subs = s;
  s->cnext = c->subs;
  if (c->subs) c->subs->cprev = s;
  c->subs = s;
  t->nsubs++;
  c->nsubs++;
  mw__metric_add(m_subs, 1);
  s->presence_events = presence;
  if (mw__server() && mw__server()->storage) presence_join(s);
  return 0;
}

int mw__unsubscribe(mw_client_t *c, const char *topic) {
  mw_sub_t *s = find_sub(c, topic);
  if (!s) return MW_ENOTFOUND;
  sub_remove(s);
  return 0;
}

/* The event this recipient gets for a changed result (cached per event:
 * one encoding per distinct result). */
static mw_event_t *changed_event(mw_hub_t *hub, const mw_event_t *ev,
                                 mw_policy_result_t *res) {
  for (size_t i = hub->nchanged; i-- > 0;)
    if (hub->changed[i].key == res->out_key) return hub->changed[i].ev;
  json_t *name = json_object_get(res->out, "event");
  json_t *data = json_object_get(res->out, "data");
  json_t *trace = json_object_get(res->out, "trace_id");
  mw_event_t *out = mw__event_draft(
      ev->topic, json_is_string(name) ? json_string_value(name) : ev->name,
      json_is_string(trace) ? json_string_value(trace) : ev->trace_id,
      json_is_object(data) ? json_incref(data) : json_object());
  if (mw__event_seal(out, ev->seq, ev->epoch)) {
    mw_event_unref(&out);
    return NULL;
  }
  if (hub->nchanged == hub->changed_cap) {
    hub->changed_cap = hub->changed_cap ? hub->changed_cap * 2 : 4;
    hub->changed =
        mw_xrealloc(hub->changed, hub->changed_cap * sizeof *hub->changed);
  }
  hub->changed[hub->nchanged++] = (changed_t){res->out_key, out};
  return out;
}

/* The tenant of an event: data.tenant_id; NULL when absent (public). A
 * tenant_id that is not a string (publish refuses those; another node might
 * not) belongs to no connection's tenant: it must not read as public. */
static const char *event_tenant(const json_t *data) {
  json_t *t = json_object_get(data, "tenant_id");
  if (!t || json_is_null(t)) return NULL;
  return json_is_string(t) ? json_string_value(t) : "\x01invalid";
}

typedef struct deliver_stats {
  size_t delivered, tenant, policy, error;
} deliver_stats_t;

/* The policy pipeline for one recipient: tenant isolation (in C), then the
 * tenant transform and on_deliver; hands the result to the transport. */
static void deliver_to(mw_hub_t *hub, mw_policy_t *p, mw_sub_t *s,
                       mw_event_t *ev, const json_t *data,
                       const char *ev_tenant, int hook, deliver_stats_t *st) {
  mw_client_t *c = s->client;
  if (ev->seq) { /* seq 0: presence, not a position */
    s->last_seq = ev->seq;
    if (ev->epoch && strcmp(s->epoch, ev->epoch) != 0)
      snprintf(s->epoch, sizeof s->epoch, "%s", ev->epoch);
  }
  const char *tenant = c->ident.tenant_id;
  /* Tenant isolation, before any hook: a tenant's connection never sees
   * another tenant's event unless the policy widened it explicitly. */
  if (tenant && ev_tenant && !c->ident.all_tenants &&
      strcmp(tenant, ev_tenant) != 0) {
    st->tenant++;
    return;
  }
  mw_event_t *out = ev;
  if (ev->seq && /* presence messages skip the event hooks */
      (hook || (tenant && p && mw__policy_tenant_has_transform(p, tenant)))) {
    mw_policy_result_t res; /* initialized by mw__policy_deliver */
    mw__policy_deliver(p, &c->ident, ev, data, &res);
    if (res.status != MW_POLICY_OK) {
      out = NULL;
      st->error++;
    } else if (res.verdict == MW_VERDICT_DROP) {
      out = NULL;
      st->policy++;
    } else if (res.verdict == MW_VERDICT_CHANGED) {
      out = changed_event(hub, ev, &res);
      if (!out) st->error++;
    }
    mw__policy_result_clear(&res);
  }
  if (!out) return;
  c->deliver(c, out, c->ud);
  st->delivered++;
}

static void stats_flush(mw_hub_t *hub, deliver_stats_t *st) {
  for (size_t i = 0; i < hub->nchanged; i++)
    mw_event_unref(&hub->changed[i].ev);
  hub->nchanged = 0;
  mw_policy_t *p = mw__worker_policy(hub->worker);
  if (p) mw__policy_flush(p);
  if (st->delivered) mw__metric_add(m_delivered, (int64_t)st->delivered);
  if (st->tenant) mw__metric_add(m_drop_tenant, (int64_t)st->tenant);
  if (st->policy) mw__metric_add(m_drop_policy, (int64_t)st->policy);
  if (st->error) mw__metric_add(m_drop_policy_error, (int64_t)st->error);
  memset(st, 0, sizeof *st);
}

/* 1 if `ev` is one the subscription already has (same epoch, seq not newer). */
static int already_seen(const mw_sub_t *s, const mw_event_t *ev) {
  return ev->seq && s->last_seq && ev->seq <= s->last_seq && ev->epoch &&
         strcmp(s->epoch, ev->epoch) == 0;
}

static void hold(recovery_t *r, mw_event_t *ev) {
  if (r->nheld == MW_RECOVERY_HOLD_MAX) {
    r->overflow = 1;
    return;
  }
  if (r->nheld == r->capheld) {
    r->capheld = r->capheld ? r->capheld * 2 : 16;
    r->held = mw_xrealloc(r->held, r->capheld * sizeof *r->held);
  }
  r->held[r->nheld++] = mw_event_ref(ev);
}

void mw__hub_deliver(mw_hub_t *hub, mw_event_t *ev) {
  mw_topic_t *t;
  size_t len = strlen(ev->topic);
  mw__metric_add(m_published_local, 1);
  HASH_FIND(hh, hub->topics, ev->topic, len, t);
  if (!t) return;
  mw_policy_t *p = mw__worker_policy(hub->worker);
  const json_t *data = mw__event_data(ev);
  const char *ev_tenant = event_tenant(data);
  int hook = p && mw__policy_has_deliver(p);
  deliver_stats_t st = {0};
  /* A delivery never frees a subscription synchronously (closing is
   * asynchronous), but take `next` first all the same. */
  for (mw_sub_t *s = t->subs, *next; s; s = next) {
    next = s->tnext;
    if (s->recovery) {
      hold(s->recovery, ev);
      continue;
    }
    if (already_seen(s, ev)) continue; /* duplicate suppression */
    deliver_to(hub, p, s, ev, data, ev_tenant, hook, &st);
  }
  stats_flush(hub, &st);
}

/* --- recovery ------------------------------------------------------------ */

static void recovery_free(recovery_t *r) {
  free(r->topic);
  for (size_t i = 0; i < r->nevents; i++)
    mw_event_unref(&r->events[i]);
  free(r->events);
  for (size_t i = 0; i < r->nheld; i++)
    mw_event_unref(&r->held[i]);
  free(r->held);
  free(r);
}

/* Delivers one event of a replay to the recovering subscription. */
static void replay_one(mw_hub_t *hub, mw_sub_t *s, mw_event_t *ev,
                       deliver_stats_t *st) {
  if (already_seen(s, ev)) return;
  mw_policy_t *p = mw__worker_policy(hub->worker);
  const json_t *data = mw__event_data(ev);
  const char *ev_tenant = event_tenant(data);
  deliver_to(hub, p, s, ev, data, ev_tenant, p && mw__policy_has_deliver(p),
             st);
  stats_flush(hub, st);
}

/* The replay: missed events, then the live ones held meanwhile. */
static void replay_task(mw_worker_t *w, void *arg) {
  recovery_t *r = arg;
  mw_sub_t *s = r->sub;
  if (s && w->hub) {
    s->recovery = NULL;
    deliver_stats_t st = {0};
    if (r->status == 0 && r->recovered)
      for (size_t i = 0; i < r->nevents; i++)
        replay_one(w->hub, s, r->events[i], &st);
    for (size_t i = 0; i < r->nheld; i++)
      replay_one(w->hub, s, r->held[i], &st);
  }
  recovery_free(r);
}

static void on_history(int status, mw_event_t *const *events, size_t n,
                       uint64_t top_seq, const char *epoch, int complete,
                       void *ud) {
  recovery_t *r = ud;
  mw_sub_t *s = r->sub;
  if (!s) { /* unsubscribed or closed meanwhile: still answer, once */
    if (r->cb) r->cb(MW_ECANCELED, r->topic, 0, 0, NULL, r->ud);
    recovery_free(r);
    return;
  }
  mw_hub_t *hub = s->client->worker->hub;
  int recovered = 0;
  const char *cur_epoch = epoch ? epoch : "";
  deliver_stats_t st = {0};
  if (status == 0) {
    int same_epoch = !r->want_epoch[0] || strcmp(r->want_epoch, cur_epoch) == 0;
    snprintf(s->epoch, sizeof s->epoch, "%s", cur_epoch);
    /* Every missed event must be in the answer (not cut by `limit`). */
    uint64_t last = n ? events[n - 1]->seq : r->since;
    if (same_epoch && r->since <= top_seq) {
      recovered = complete && !r->overflow && last >= top_seq;
      /* Not recovered: nothing is replayed, go on from the current seq. */
      s->last_seq = recovered ? r->since : top_seq;
    } else {
      /* Another epoch (history lost) or a position from the future: the
       * client must refetch; it continues from the current position. */
      s->last_seq = top_seq;
    }
  }
  /* The answer first; the missed events and what was held follow on the
   * next turn of the loop, so a transport that answers once for several
   * topics (one WebSocket ack) still answers before any replayed event. */
  r->recovered = recovered;
  r->status = status;
  r->events = mw_xcalloc(n ? n : 1, sizeof *r->events);
  for (size_t i = 0; i < n; i++)
    r->events[r->nevents++] = mw_event_ref(events[i]);
  if (r->cb)
    r->cb(status, s->topic->name, recovered, status ? 0 : top_seq,
          status ? NULL : cur_epoch, r->ud);
  r->cb = NULL;
  if (!r->sub) { /* the answer made the client unsubscribe */
    recovery_free(r);
    return;
  }
  if (mw__worker_post(hub->worker, replay_task, r)) replay_task(hub->worker, r);
  (void)st;
}

int mw__subscribe_since(mw_client_t *c, const char *topic, uint64_t since,
                        const char *epoch, mw_recover_cb cb, void *ud) {
  int rc = mw__subscribe(c, topic);
  if (rc) return rc;
  mw_sub_t *s = find_sub(c, topic);
  recovery_t *r = mw_xcalloc(1, sizeof *r);
  r->sub = s;
  r->topic = mw_xstrdup(topic);
  r->since = since;
  snprintf(r->want_epoch, sizeof r->want_epoch, "%s", epoch ? epoch : "");
  r->cb = cb;
  r->ud = ud;
  s->recovery = r;
  mw_worker_t *w = c->worker;
  /* At most history.size events can be replayed; ask for one more to know. */
  size_t limit = (size_t)mw__config_int(w->server->cfg, "history.size", 1000);
  rc = mw__storage()->history(mw__storage_wstate(w), topic, since, limit,
                              on_history, r);
  if (rc) {
    /* The callback will not fire: answer now, keep the subscription live. */
    s->recovery = NULL;
    recovery_free(r);
    if (cb) cb(rc, topic, 0, 0, NULL, ud);
  }
  return 0;
}

uint64_t mw__client_position(const mw_client_t *c, const char *topic,
                             const char **epoch) {
  mw_sub_t *s = find_sub((mw_client_t *)c, topic);
  if (epoch) *epoch = s && s->epoch[0] ? s->epoch : NULL;
  return s ? s->last_seq : 0;
}
