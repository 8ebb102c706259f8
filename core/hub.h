/* The hub of one worker: topics, subscriptions and fan-out to the clients of
 * this loop, with tenant isolation and the on_deliver policy applied per
 * recipient. Each worker owns its hub; nothing in it is shared across
 * threads (events arrive through the worker's inbox, see server.c). */
#ifndef MW_HUB_H
#define MW_HUB_H

#include <stddef.h>
#include <stdint.h>

#include "moonwire/host.h"
#include "server.h"

/* A new empty hub for worker w. */
mw_hub_t *mw__hub_new(mw_worker_t *w);

/* Frees the hub; every client must have been freed before. */
void mw__hub_free(mw_hub_t *hub);

/* Delivers a sealed event to every local subscriber of its topic: tenant
 * isolation first (in C), then the policy's per-recipient transform and
 * on_deliver, sharing one encoding per distinct result. */
void mw__hub_deliver(mw_hub_t *hub, mw_event_t *ev);

/* See the host table: subscribe runs the tenant topic rules and
 * on_subscribe. */
int mw__subscribe(mw_client_t *c, const char *topic);
int mw__unsubscribe(mw_client_t *c, const char *topic);

/* See the host table (ABI 1.2): subscribe, then replay history after
 * `since` before live events. */
int mw__subscribe_since(mw_client_t *c, const char *topic, uint64_t since,
                        const char *epoch, mw_recover_cb cb, void *ud);

/* The newest seq this client got on `topic` and its epoch (NULL if none). */
uint64_t mw__client_position(const mw_client_t *c, const char *topic,
                             const char **epoch);

/* Removes every subscription of a client (it is going away). */
void mw__hub_client_detach(mw_client_t *c);

/* The next client number of this worker (ids). */
uint64_t mw__hub_next_client_number(mw_hub_t *hub);

/* The connection gauge of a transport, cached per hub; `make` registers it
 * the first time. */
mw_metric_t *mw__hub_gauge(mw_hub_t *hub, const char *transport,
                           mw_metric_t *(*make)(const char *transport));

/* Calls fn for every topic with local subscribers. */
void mw__hub_foreach_topic(const mw_hub_t *hub,
                           void (*fn)(const char *topic, size_t subscribers,
                                      void *ud),
                           void *ud);

/* See the host table's presence. */
int mw__presence_query(mw_worker_t *w, mw_client_t *c, const char *topic,
                       void (*cb)(int status, const char *json, void *ud),
                       void *ud);

/* Refreshes the presence entries of every local subscription (their expiry
 * in the storage); called on a timer. */
void mw__hub_presence_refresh(mw_hub_t *hub);

/* Number of topics with local subscribers. */
size_t mw__hub_topic_count(const mw_hub_t *hub);

/* 1 if `topic` is an acceptable topic name: 1..256 bytes, printable ASCII
 * or UTF-8, no spaces, control characters or commas. */
int mw__topic_valid(const char *topic, size_t len);

/* Registers the hub metrics (once, at start). */
void mw__hub_metrics_init(void);

#endif
