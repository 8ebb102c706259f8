/* Events: see event.h. An event is one allocation of the public struct plus
 * its private tail; the wire forms are encoded once, at sealing. */
#include "event.h"

#include <msgpack.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "json_text.h"
#include "log.h"
#include "moonwire/errno.h"

typedef struct event_impl {
  mw_event_t pub; /* first: a mw_event_t* is an event_impl* */
  _Atomic unsigned refs;
  json_t *data;
  char *topic;
  char *name;
  char *trace_id;
  char *epoch;
  char *data_text;
  char *wire_json;
  char *wire_msgpack;
} event_impl_t;

/* Packs a NUL-terminated string as a msgpack str. */
static void pack_str(msgpack_packer *pk, const char *s) {
  size_t n = strlen(s);
  msgpack_pack_str(pk, n);
  msgpack_pack_str_body(pk, s, n);
}

mw_event_t *mw__event_draft(const char *topic, const char *name,
                            const char *trace_id, json_t *data) {
  event_impl_t *e = mw_xcalloc(1, sizeof *e);
  atomic_init(&e->refs, 1);
  e->topic = mw_xstrdup(topic);
  e->name = mw_xstrdup(name);
  e->trace_id = trace_id ? mw_xstrdup(trace_id) : NULL;
  e->data = data ? data : json_object();
  e->pub.topic = e->topic;
  e->pub.name = e->name;
  e->pub.trace_id = e->trace_id;
  /* The data text is known from the start: a storage that builds the stored
   * envelope itself (Redis, before the seq is known) reads data_json. */
  e->data_text = json_dumps(e->data, JSON_COMPACT);
  if (!e->data_text) mw_oom();
  e->pub.data_json.data = e->data_text;
  e->pub.data_json.len = strlen(e->data_text);
  return &e->pub;
}

/* Encodes e's wire forms: {"type","topic","event"[,"seq","id"],"data"
 * [,"trace_id"]} as JSON text (the data's text is reused, not encoded
 * again) and as a msgpack map, keys in that order. `full_id` NULL leaves
 * out seq and id. Returns 0, or MW_EINVAL (invalid UTF-8, nesting too
 * deep) with e unchanged. */
static int encode_wire(event_impl_t *e, const char *type, uint64_t seq,
                       const char *full_id) {
  const char *trace = full_id ? e->trace_id : NULL;
  /* Sized for the text without escapes (what nearly every event is): the
   * buffer is kept as long as the event, so it should not be much larger
   * than its text. */
  size_t parts = strlen(type) + strlen(e->topic) + strlen(e->name) +
                 strlen(e->data_text) + (full_id ? strlen(full_id) : 0) +
                 (trace ? strlen(trace) : 0);
  mw_json_text_t t;
  mw__jt_init(&t, parts + 96);
  mw__jt_lit(&t, "{\"type\":");
  mw__jt_string(&t, type, strlen(type));
  mw__jt_lit(&t, ",\"topic\":");
  mw__jt_string(&t, e->topic, strlen(e->topic));
  mw__jt_lit(&t, ",\"event\":");
  mw__jt_string(&t, e->name, strlen(e->name));
  if (full_id) {
    mw__jt_lit(&t, ",\"seq\":");
    mw__jt_u64(&t, seq);
    mw__jt_lit(&t, ",\"id\":");
    mw__jt_string(&t, full_id, strlen(full_id));
  }
  mw__jt_lit(&t, ",\"data\":");
  mw__jt_lit(&t, e->data_text);
  if (trace) {
    mw__jt_lit(&t, ",\"trace_id\":");
    mw__jt_string(&t, trace, strlen(trace));
  }
  mw__jt_raw(&t, "}", 1);
  size_t text_len;
  char *text = mw__jt_finish(&t, &text_len);

  /* msgpack_sbuffer would start at 8 KiB (MSGPACK_SBUFFER_INIT_SIZE), kept
   * for the event's life in every history slot: start at the JSON text's
   * size instead (msgpack is usually smaller; floats, 9 bytes each, can
   * make it larger, and the buffer then grows) and trim what is left. */
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  sb.alloc = (text ? text_len : parts) + 32;
  sb.data = mw_xmalloc(sb.alloc);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 4 + (full_id ? 2 : 0) + (trace ? 1 : 0));
  pack_str(&pk, "type");
  pack_str(&pk, type);
  pack_str(&pk, "topic");
  pack_str(&pk, e->topic);
  pack_str(&pk, "event");
  pack_str(&pk, e->name);
  if (full_id) {
    pack_str(&pk, "seq");
    msgpack_pack_uint64(&pk, seq);
    pack_str(&pk, "id");
    pack_str(&pk, full_id);
  }
  pack_str(&pk, "data");
  int rc = mw_codec_pack_json(&pk, e->data);
  if (trace) {
    pack_str(&pk, "trace_id");
    pack_str(&pk, trace);
  }
  if (!text || rc) {
    free(text);
    msgpack_sbuffer_destroy(&sb);
    return MW_EINVAL;
  }
  if (sb.alloc - sb.size > 16) {
    char *fit = realloc(sb.data, sb.size);
    if (fit) sb.data = fit;
  }
  e->wire_json = text;
  e->wire_msgpack = sb.data; /* msgpack_sbuffer memory is malloc'd */
  e->pub.data_json.data = e->data_text;
  e->pub.data_json.len = strlen(e->data_text);
  e->pub.wire[MW_WIRE_JSON].data = text;
  e->pub.wire[MW_WIRE_JSON].len = text_len;
  e->pub.wire[MW_WIRE_MSGPACK].data = sb.data;
  e->pub.wire[MW_WIRE_MSGPACK].len = sb.size;
  return 0;
}

int mw__event_seal(mw_event_t *ev, uint64_t seq, const char *epoch) {
  event_impl_t *e = (event_impl_t *)ev;
  if (e->wire_json || seq == 0) return MW_EINVAL;
  char id[32];
  snprintf(id, sizeof id, ":%llu", (unsigned long long)seq);
  size_t tl = strlen(e->topic), il = strlen(id);
  char *full_id = mw_xmalloc(tl + il + 1);
  memcpy(full_id, e->topic, tl);
  memcpy(full_id + tl, id, il + 1);
  int rc = encode_wire(e, "event", seq, full_id);
  free(full_id);
  if (rc) return rc;
  e->epoch = mw_xstrdup(epoch ? epoch : "");
  ev->seq = seq;
  ev->epoch = e->epoch;
  return 0;
}

mw_event_t *mw__event_ephemeral(const char *type, const char *topic,
                                const char *name, json_t *data) {
  mw_event_t *ev = mw__event_draft(topic, name, NULL, data);
  if (encode_wire((event_impl_t *)ev, type, 0, NULL)) {
    mw_event_unref(&ev); /* data nested too deep, or not UTF-8 */
    return NULL;
  }
  return ev; /* seq 0, no epoch: never stored, never recovered */
}

int mw__event_parse(const char *json, size_t len, const char *epoch,
                    mw_event_t **out) {
  *out = NULL;
  json_error_t jerr;
  json_t *root = json_loadb(json, len, 0, &jerr);
  if (!root) return MW_EINVAL;
  const char *type = json_string_value(json_object_get(root, "type"));
  const char *topic = json_string_value(json_object_get(root, "topic"));
  const char *name = json_string_value(json_object_get(root, "event"));
  const char *trace = json_string_value(json_object_get(root, "trace_id"));
  json_t *seq = json_object_get(root, "seq");
  json_t *data = json_object_get(root, "data");
  if (type && !strcmp(type, "presence") && topic && name &&
      json_is_object(data)) {
    *out = mw__event_ephemeral("presence", topic, name, json_incref(data));
    json_decref(root);
    return *out ? 0 : MW_EINVAL;
  }
  if (!type || strcmp(type, "event") || !topic || !name ||
      !json_is_integer(seq) || json_integer_value(seq) < 1 ||
      !json_is_object(data)) {
    json_decref(root);
    return MW_EINVAL;
  }
  mw_event_t *ev = mw__event_draft(topic, name, trace, json_incref(data));
  int rc = mw__event_seal(ev, (uint64_t)json_integer_value(seq), epoch);
  json_decref(root);
  if (rc) {
    mw_event_unref(&ev);
    return rc;
  }
  *out = ev;
  return 0;
}

const json_t *mw__event_data(const mw_event_t *ev) {
  return ((const event_impl_t *)ev)->data;
}

mw_event_t *mw_event_ref(mw_event_t *ev) {
  atomic_fetch_add_explicit(&((event_impl_t *)ev)->refs, 1,
                            memory_order_relaxed);
  return ev;
}

void mw_event_unref(mw_event_t **evp) {
  event_impl_t *e = (event_impl_t *)*evp;
  *evp = NULL;
  if (!e) return;
  if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1) return;
  json_decref(e->data);
  free(e->topic);
  free(e->name);
  free(e->trace_id);
  free(e->epoch);
  free(e->data_text);
  free(e->wire_json);
  free(e->wire_msgpack);
  free(e);
}
