/* The publish pipeline: validate, build the draft event (timestamp, trace
 * id), hand it to the storage (seq, history, fan-out), report back. */
#ifndef MW_PUBLISH_H
#define MW_PUBLISH_H

#include <jansson.h>

#include "config.h"
#include "moonwire/host.h"

/* Publishes `data` (a JSON object, borrowed; a "timestamp" is added when
 * absent, so pass an object nobody else reads yet) to `topic` from worker w.
 * Always returns 0 and calls `cb` exactly once: with the sealed event, or
 * with an error code and a reason (invalid input, storage unavailable). cb
 * may run before this returns. Worker thread. */
int mw__publish_json(mw_worker_t *w, const char *topic, const char *event,
                     const char *trace_id, json_t *data, mw_client_t *origin,
                     mw_publish_cb cb, void *ud);

/* As mw__publish_json, without the admission check: for a caller that ran
 * mw__publish_admit itself (the server API answers 503 + Retry-After). */
int mw__publish_json_admitted(mw_worker_t *w, const char *topic,
                              const char *event, const char *trace_id,
                              json_t *data, mw_client_t *origin,
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

/* --- admission control (push-back under overload) -------------------------
 * A publish is accepted only while every worker can still deliver in time:
 * its queued outbound bytes stay under limits.publish_backlog and the oldest
 * event it has not fanned out yet is younger than limits.publish_lag_ms.
 * Otherwise the publish is refused before it is stored (MW_EUNAVAIL; the
 * server API answers 503 with Retry-After) and counted in
 * moonwire_rejected_total{reason="overload"}. */

/* The limits; 0 disables a measure. */
typedef struct mw_admission_limits {
  uint64_t backlog_bytes; /* per worker: outbound bytes queued */
  uint64_t lag_ms;        /* any worker: age of the oldest undelivered event */
} mw_admission_limits_t;

/* What mw__admission_decide answers. */
enum {
  MW_ADMIT_OK = 0,
  MW_ADMIT_BACKLOG = 1, /* too many bytes queued for subscribers */
  MW_ADMIT_LAG = 2      /* events wait too long before their fan-out */
};

/* The decision alone (pure): `backlog` is the largest queued-bytes figure
 * of any worker, `lag_ms` the age of the oldest event not yet fanned out. */
int mw__admission_decide(const mw_admission_limits_t *lim, uint64_t backlog,
                         uint64_t lag_ms);

/* Reads the limits from the configuration (once, before workers start;
 * without it, nothing is refused). */
void mw__publish_admission_init(const mw_config_t *cfg);

/* Measures every worker (w's own queue live, the others' as of their last
 * loop turn, lock-free) and decides. 0, or MW_EUNAVAIL after counting the
 * rejection. Worker thread of w. */
int mw__publish_admit(mw_worker_t *w);

/* The reason text given with an overload refusal; the Retry-After to send. */
extern const char mw__publish_overload_reason[];
#define MW_PUBLISH_RETRY_AFTER_S 1

#endif
