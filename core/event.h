/* Events inside the core: drafts, sealing (encode every wire form once),
 * atomic reference counts. The public view is moonwire/event.h. */
#ifndef MW_EVENT_INTERNAL_H
#define MW_EVENT_INTERNAL_H

#include <jansson.h>

#include "moonwire/event.h"

/* A new draft with one reference. Takes ownership of `data` (a JSON object).
 * `trace_id` NULL means none yet. Strings are copied. */
mw_event_t *mw__event_draft(const char *topic, const char *name,
                            const char *trace_id, json_t *data);

/* Assigns seq and epoch and encodes the JSON and msgpack envelopes. Returns
 * 0, or MW_EINVAL if already sealed or seq is 0. */
int mw__event_seal(mw_event_t *ev, uint64_t seq, const char *epoch);

/* A message that is not stored and has no seq (presence join/leave): the
 * wire forms are {"type":type,"topic","event":name,"data"}, encoded now.
 * One reference; takes ownership of `data`. NULL if it cannot be encoded
 * (data nested deeper than MW_CODEC_MAX_DEPTH, a string not UTF-8). */
mw_event_t *mw__event_ephemeral(const char *type, const char *topic,
                                const char *name, json_t *data);

/* Rebuilds a sealed event from its JSON envelope. 0 or MW_EINVAL. */
int mw__event_parse(const char *json, size_t len, const char *epoch,
                    mw_event_t **out);

/* The event's data object (borrowed, read-only). */
const json_t *mw__event_data(const mw_event_t *ev);

/* Takes one more reference; returns ev. Any thread. */
mw_event_t *mw_event_ref(mw_event_t *ev);

/* Drops a reference, frees at zero, and sets *ev to NULL. Any thread. */
void mw_event_unref(mw_event_t **ev);

#endif
