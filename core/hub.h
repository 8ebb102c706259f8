/* The hub of one worker: topics, subscriptions and fan-out to the clients of
 * this loop. Each worker owns its hub; nothing in it is shared across
 * threads (events arrive through the worker's inbox, see server.c). */
#ifndef MW_HUB_H
#define MW_HUB_H

#include <stddef.h>

#include "moonwire/host.h"
#include "server.h"

/* A new empty hub for worker w. */
mw_hub_t *mw__hub_new(mw_worker_t *w);

/* Frees the hub; every client must have been freed before. */
void mw__hub_free(mw_hub_t *hub);

/* Delivers a sealed event to every local subscriber of its topic. */
void mw__hub_deliver(mw_hub_t *hub, mw_event_t *ev);

/* See the host table. */
mw_client_t *mw__client_new(mw_worker_t *w, const char *transport,
                            mw_deliver_fn deliver, void *ud);
void mw__client_free(mw_client_t **c);
const char *mw__client_id(const mw_client_t *c);
int mw__subscribe(mw_client_t *c, const char *topic);
int mw__unsubscribe(mw_client_t *c, const char *topic);

/* Number of topics with local subscribers, and subscriptions. */
size_t mw__hub_topic_count(const mw_hub_t *hub);

/* 1 if `topic` is an acceptable topic name: 1..256 bytes, printable ASCII
 * or UTF-8, no spaces, control characters or commas. */
int mw__topic_valid(const char *topic, size_t len);

/* Registers the hub metrics (once, at start). */
void mw__hub_metrics_init(void);

#endif
