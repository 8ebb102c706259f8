/* The publish pipeline: validate, build the draft event (timestamp, trace
 * id), hand it to the storage (seq, history, fan-out), report back. */
#ifndef MW_PUBLISH_H
#define MW_PUBLISH_H

#include <jansson.h>

#include "moonwire/host.h"

/* Publishes `data` (a JSON object, borrowed; a "timestamp" is added when
 * absent, so pass an object nobody else reads yet) to `topic` from worker w.
 * Always returns 0 and calls `cb` exactly once: with the sealed event, or
 * with an error code and a reason (invalid input, storage unavailable). cb
 * may run before this returns. Worker thread. */
int mw__publish_json(mw_worker_t *w, const char *topic, const char *event,
                     const char *trace_id, json_t *data, mw_client_t *origin,
                     mw_publish_cb cb, void *ud);

/* The host-table form: parses req->data_json, then as above. */
int mw__publish(mw_worker_t *w, const mw_publish_req_t *req,
                mw_client_t *origin, mw_publish_cb cb, void *ud);

/* Current seq and epoch of a topic, from the storage. */
int mw__topic_position(mw_worker_t *w, const char *topic, mw_position_cb cb,
                       void *ud);

/* Writes the current UTC time as "2026-11-23T10:00:00.000Z" (25 bytes). */
void mw__iso_now(char out[32]);

/* The HTTP status that matches an MW_E* publish error. */
int mw__publish_http_status(int code);

/* Registers the publish metrics (once, at start). */
void mw__publish_metrics_init(void);

#endif
