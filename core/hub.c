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

#include "codec.h"
#include "log.h"
#include "metrics.h"

#define MW_TOPIC_MAX 256

typedef struct mw_sub mw_sub_t;

typedef struct mw_topic {
  char *name;
  mw_sub_t *subs; /* first subscriber */
  size_t nsubs;
  UT_hash_handle hh;
} mw_topic_t;

struct mw_sub {
  mw_topic_t *topic;
  mw_client_t *client;
  mw_sub_t *tprev, *tnext; /* in the topic's list */
  mw_sub_t *cprev, *cnext; /* in the client's list */
};

struct mw_client {
  mw_hub_t *hub;
  char id[48];
  mw_metric_t *conn_gauge;
  mw_deliver_fn deliver;
  void *ud;
  mw_sub_t *subs;
  size_t nsubs;
};

struct mw_hub {
  mw_worker_t *worker;
  mw_topic_t *topics; /* uthash head */
  size_t ntopics;
  uint64_t next_client;
  size_t max_topics_per_client;
  /* Connection gauges by transport, cached per hub. */
  struct {
    const char *transport;
    mw_metric_t *gauge;
  } gauges[8];
  size_t ngauges;
};

static mw_metric_t *m_topics, *m_subs, *m_delivered, *m_published_local;

void mw__hub_metrics_init(void) {
  m_topics = mw__metric(MW_METRIC_GAUGE, "moonwire_topics",
                        "Topics with subscribers (summed over workers)", NULL);
  m_subs = mw__metric(MW_METRIC_GAUGE, "moonwire_subscriptions",
                      "Active subscriptions", NULL);
  m_delivered = mw__metric(MW_METRIC_COUNTER, "moonwire_events_delivered_total",
                           "Events handed to subscribers' transports", NULL);
  m_published_local = mw__metric(MW_METRIC_COUNTER,
                                 "moonwire_events_fanned_out_total",
                                 "Events fanned out to a worker's hub", NULL);
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

size_t mw__hub_topic_count(const mw_hub_t *hub) {
  return hub->ntopics;
}

static mw_metric_t *gauge_for(mw_hub_t *hub, const char *transport) {
  for (size_t i = 0; i < hub->ngauges; i++)
    if (strcmp(hub->gauges[i].transport, transport) == 0)
      return hub->gauges[i].gauge;
  char labels[96];
  snprintf(labels, sizeof labels, "transport=\"%s\"", transport);
  mw_metric_t *g = mw__metric(MW_METRIC_GAUGE, "moonwire_connections",
                              "Subscriber connections by transport", labels);
  if (hub->ngauges < sizeof hub->gauges / sizeof hub->gauges[0]) {
    hub->gauges[hub->ngauges].transport = transport;
    hub->gauges[hub->ngauges].gauge = g;
    hub->ngauges++;
  }
  return g;
}

mw_client_t *mw__client_new(mw_worker_t *w, const char *transport,
                            mw_deliver_fn deliver, void *ud) {
  mw_hub_t *hub = w->hub;
  mw_client_t *c = mw_xcalloc(1, sizeof *c);
  c->hub = hub;
  c->deliver = deliver;
  c->ud = ud;
  snprintf(c->id, sizeof c->id, "%s-%u-%llu", w->server->node_id, w->id,
           (unsigned long long)++hub->next_client);
  c->conn_gauge = gauge_for(hub, transport);
  mw__metric_add(c->conn_gauge, 1);
  return c;
}

const char *mw__client_id(const mw_client_t *c) {
  return c->id;
}

static void sub_remove(mw_sub_t *s) {
  mw_topic_t *t = s->topic;
  mw_client_t *c = s->client;
  mw_hub_t *hub = c->hub;
  if (s->tprev) s->tprev->tnext = s->tnext; else t->subs = s->tnext;
  if (s->tnext) s->tnext->tprev = s->tprev;
  if (s->cprev) s->cprev->cnext = s->cnext; else c->subs = s->cnext;
  if (s->cnext) s->cnext->cprev = s->cprev;
  t->nsubs--;
  c->nsubs--;
  mw__metric_add(m_subs, -1);
  if (t->nsubs == 0) {
    HASH_DEL(hub->topics, t);
    hub->ntopics--;
    mw__metric_add(m_topics, -1);
    free(t->name);
    free(t);
  }
  free(s);
}

void mw__client_free(mw_client_t **cp) {
  mw_client_t *c = *cp;
  *cp = NULL;
  if (!c) return;
  while (c->subs) sub_remove(c->subs);
  mw__metric_add(c->conn_gauge, -1);
  free(c);
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
  if (c->nsubs >= c->hub->max_topics_per_client) return MW_ELIMIT;
  mw_hub_t *hub = c->hub;
  mw_topic_t *t;
  HASH_FIND(hh, hub->topics, topic, len, t);
  if (!t) {
    t = mw_xcalloc(1, sizeof *t);
    t->name = mw_xstrdup(topic);
    HASH_ADD_KEYPTR(hh, hub->topics, t->name, len, t);
    hub->ntopics++;
    mw__metric_add(m_topics, 1);
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
  return 0;
}

int mw__unsubscribe(mw_client_t *c, const char *topic) {
  mw_sub_t *s = find_sub(c, topic);
  if (!s) return MW_ENOTFOUND;
  sub_remove(s);
  return 0;
}

void mw__hub_deliver(mw_hub_t *hub, mw_event_t *ev) {
  mw_topic_t *t;
  size_t len = strlen(ev->topic);
  mw__metric_add(m_published_local, 1);
  HASH_FIND(hh, hub->topics, ev->topic, len, t);
  if (!t) return;
  /* A delivery never frees a subscription synchronously (closing is
   * asynchronous), but take `next` first all the same. */
  size_t n = 0;
  for (mw_sub_t *s = t->subs, *next; s; s = next) {
    next = s->tnext;
    s->client->deliver(s->client, ev, s->client->ud);
    n++;
  }
  mw__metric_add(m_delivered, (int64_t)n);
}
