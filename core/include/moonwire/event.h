/* The event: what a publish creates and every subscriber receives.
 *
 * An event is created as a draft by the core (topic, name, data, trace id),
 * sealed once by the storage plugin (which assigns seq and epoch; sealing
 * encodes every wire form once), and immutable from then on. It is
 * reference-counted with atomic counts, so one sealed event is shared by all
 * workers and all subscribers: a subscriber's write points into `wire[]`.
 * Plugins take and drop references with host->event_ref / host->event_unref.
 * Every field is read-only for plugins. */
#ifndef MOONWIRE_EVENT_H
#define MOONWIRE_EVENT_H

#include <stddef.h>
#include <stdint.h>

/* The encoded forms of an event. Each holds the complete envelope of SPEC §3
 * ({"type":"event","topic":...,"seq":...,"id":...,"data":...,"trace_id":...}).
 */
typedef enum mw_wire {
  MW_WIRE_JSON = 0,    /* UTF-8 JSON text */
  MW_WIRE_MSGPACK = 1, /* msgpack map with the same keys */
  MW_WIRE_COUNT = 2
} mw_wire_t;

typedef struct mw_bytes {
  const char *data;
  size_t len;
} mw_bytes_t;

typedef struct mw_event {
  const char *topic;    /* NUL-terminated */
  const char *name;     /* "ADDED", "UPDATED", ... or a custom string */
  const char *trace_id; /* given by the publisher or generated */
  const char *epoch;    /* storage epoch; NULL while a draft */
  uint64_t seq;         /* 1, 2, ... per topic; 0 while a draft */
  mw_bytes_t data_json; /* the "data" object as compact JSON text */
  mw_bytes_t wire[MW_WIRE_COUNT]; /* empty while a draft */
} mw_event_t;

#endif
