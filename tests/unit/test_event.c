/* Event drafts, sealing (both wire forms encoded once), parsing and
 * reference counts (core/event.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <malloc.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "codec.h"
#include "event.h"
#include "json_text.h"
#include "moonwire/errno.h"

static json_t *data_obj(void) {
  return json_pack("{s:s,s:{s:s},s:s}", "entity_id", "gift-7", "payload",
                   "name", "Bike", "tenant_id", "family");
}

static void test_seal_encodes_envelope(void **state) {
  mw_event_t *ev = mw__event_draft("gift-list:family-123", "UPDATED",
                                   "4bf92f3577b34da6", data_obj());
  assert_int_equal(ev->seq, 0);
  assert_int_equal(ev->wire[MW_WIRE_JSON].len, 0);
  assert_int_equal(mw__event_seal(ev, 42, "ep"), 0);
  assert_int_equal(ev->seq, 42);
  assert_string_equal(ev->epoch, "ep");
  const char *expect =
      "{\"type\":\"event\",\"topic\":\"gift-list:family-123\",\"event\":"
      "\"UPDATED\",\"seq\":42,\"id\":\"gift-list:family-123:42\",\"data\":{"
      "\"entity_id\":\"gift-7\",\"payload\":{\"name\":\"Bike\"},\"tenant_id\":"
      "\"family\"},\"trace_id\":\"4bf92f3577b34da6\"}";
  assert_int_equal(ev->wire[MW_WIRE_JSON].len, strlen(expect));
  assert_memory_equal(ev->wire[MW_WIRE_JSON].data, expect, strlen(expect));
  /* The msgpack form carries the same map. */
  json_t *from_mp = mw_codec_json_from_msgpack(ev->wire[MW_WIRE_MSGPACK].data,
                                               ev->wire[MW_WIRE_MSGPACK].len);
  json_t *from_js = json_loadb(ev->wire[MW_WIRE_JSON].data,
                               ev->wire[MW_WIRE_JSON].len, 0, NULL);
  assert_non_null(from_mp);
  assert_true(json_equal(from_mp, from_js));
  json_decref(from_mp);
  json_decref(from_js);
  /* Sealed once only. */
  assert_int_equal(mw__event_seal(ev, 43, "ep"), MW_EINVAL);
  mw_event_unref(&ev);
  assert_null(ev);
}

/* The envelope assembled from parts is byte for byte what jansson writes
 * for the same object (JSON_COMPACT, keys in this order), for strings that
 * need escaping too, and the msgpack form is the same map packed whole. */
static void check_like_jansson(const char *topic, const char *name,
                               const char *trace) {
  json_t *data = json_pack("{s:s,s:[i,f,b,n],s:s}", "q\"uote", "a\\b/c\n\x01",
                           "list", -7, 1.5, 1, "u", "\xc3\xa9\xe2\x82\xac");
  mw_event_t *ev = mw__event_draft(topic, name, trace, json_incref(data));
  assert_int_equal(mw__event_seal(ev, 1234567890123ULL, "ep"), 0);
  char id[512];
  snprintf(id, sizeof id, "%s:1234567890123", topic);
  json_t *env = json_object();
  json_object_set_new(env, "type", json_string("event"));
  json_object_set_new(env, "topic", json_string(topic));
  json_object_set_new(env, "event", json_string(name));
  json_object_set_new(env, "seq", json_integer(1234567890123LL));
  json_object_set_new(env, "id", json_string(id));
  json_object_set(env, "data", data);
  if (trace) json_object_set_new(env, "trace_id", json_string(trace));
  char *want = json_dumps(env, JSON_COMPACT);
  assert_non_null(want);
  assert_int_equal(ev->wire[MW_WIRE_JSON].len, strlen(want));
  assert_memory_equal(ev->wire[MW_WIRE_JSON].data, want, strlen(want));
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  assert_int_equal(mw_codec_pack_json(&pk, env), 0);
  assert_int_equal(ev->wire[MW_WIRE_MSGPACK].len, sb.size);
  assert_memory_equal(ev->wire[MW_WIRE_MSGPACK].data, sb.data, sb.size);
  msgpack_sbuffer_destroy(&sb);
  free(want);
  json_decref(env);
  json_decref(data);
  mw_event_unref(&ev);
}

/* The wire buffers, kept as long as the event (in every history slot),
 * are about the size of what they hold (msgpack_sbuffer alone would hold
 * 8 KiB per event). */
static void test_wire_buffers_fit(void **state) {
  mw_event_t *ev = mw__event_draft("room:1", "MSG", "t1",
                                   json_pack("{s:s}", "text", "hello"));
  assert_int_equal(mw__event_seal(ev, 7, "ep"), 0);
  for (int w = 0; w < MW_WIRE_COUNT; w++) {
    size_t len = ev->wire[w].len;
    assert_true(len > 0);
    assert_true(malloc_usable_size((void *)ev->wire[w].data) <= len + 64);
  }
  mw_event_unref(&ev);
}

static void test_seal_matches_jansson(void **state) {
  check_like_jansson("plain:topic-1", "UPDATED", "4bf92f3577b34da6");
  check_like_jansson("we\"ird\\to/pic\x7f", "na\"me\ttab", NULL);
  check_like_jansson("caf\xc3\xa9:\xf0\x9f\x98\x80", "\xe2\x82\xac",
                     "a.b:c-d_e");
}

/* The text builder refuses invalid UTF-8 (jansson would too). */
static void test_json_text_invalid_utf8(void **state) {
  mw_json_text_t t;
  mw__jt_init(&t, 0);
  mw__jt_lit(&t, "{\"a\":");
  mw__jt_string(&t, "\xff\xfe", 2);
  mw__jt_raw(&t, "}", 1);
  size_t len = 99;
  assert_null(mw__jt_finish(&t, &len));
  assert_int_equal(len, 99);
  mw__jt_init(&t, 0);
  for (int i = 0; i < 100; i++)
    mw__jt_string(&t, "x\"", 2); /* grows */
  mw__jt_u64(&t, 0);
  mw__jt_u64(&t, UINT64_MAX);
  char *out = mw__jt_finish(&t, &len);
  assert_non_null(out);
  assert_int_equal(len, 100 * 5 + 1 + 20);
  assert_memory_equal(out + 500, "018446744073709551615", 21);
  free(out);
  /* Empty after finish, and usable again. */
  mw__jt_lit(&t, "{}");
  out = mw__jt_finish(&t, &len);
  assert_string_equal(out, "{}");
  assert_int_equal(len, 2);
  free(out);
}

/* A presence message has no seq, id or trace id. */
static void test_ephemeral_envelope(void **state) {
  mw_event_t *ev = mw__event_ephemeral("presence", "room:\"1\"", "join",
                                       json_pack("{s:s}", "user_id", "u1"));
  const char *expect = "{\"type\":\"presence\",\"topic\":\"room:\\\"1\\\"\","
                       "\"event\":\"join\",\"data\":{\"user_id\":\"u1\"}}";
  assert_int_equal(ev->wire[MW_WIRE_JSON].len, strlen(expect));
  assert_memory_equal(ev->wire[MW_WIRE_JSON].data, expect, strlen(expect));
  json_t *mp = mw_codec_json_from_msgpack(ev->wire[MW_WIRE_MSGPACK].data,
                                          ev->wire[MW_WIRE_MSGPACK].len);
  json_t *js = json_loads(expect, 0, NULL);
  assert_true(json_equal(mp, js));
  json_decref(mp);
  json_decref(js);
  mw_event_unref(&ev);
}

/* A presence message from another node (a Redis reply: hostile) whose
 * data is nested too deep for msgpack is refused, not a crash. */
static void test_parse_presence_too_deep(void **state) {
  char msg[512];
  int n = snprintf(msg, sizeof msg,
                   "{\"type\":\"presence\",\"topic\":\"t\",\"event\":"
                   "\"join\",\"data\":{\"x\":");
  for (int i = 0; i < 40; i++)
    msg[n++] = '[';
  for (int i = 0; i < 40; i++)
    msg[n++] = ']';
  memcpy(msg + n, "}}", 3);
  mw_event_t *ev = NULL;
  assert_int_equal(mw__event_parse(msg, strlen(msg), "ep", &ev), MW_EINVAL);
  assert_null(ev);
  /* The same message, shallow, is a presence message. */
  const char *ok = "{\"type\":\"presence\",\"topic\":\"t\",\"event\":"
                   "\"join\",\"data\":{\"x\":[[1]]}}";
  assert_int_equal(mw__event_parse(ok, strlen(ok), "ep", &ev), 0);
  assert_non_null(ev);
  mw_event_unref(&ev);
}

static void test_seal_rejects_seq_zero(void **state) {
  mw_event_t *ev = mw__event_draft("t", "E", NULL, NULL);
  assert_int_equal(mw__event_seal(ev, 0, "ep"), MW_EINVAL);
  mw_event_unref(&ev);
}

static void test_parse_roundtrip(void **state) {
  mw_event_t *ev = mw__event_draft("t", "ADDED", "tr", data_obj());
  assert_int_equal(mw__event_seal(ev, 5, "ep"), 0);
  mw_event_t *copy = NULL;
  assert_int_equal(mw__event_parse(ev->wire[MW_WIRE_JSON].data,
                                   ev->wire[MW_WIRE_JSON].len, "ep", &copy),
                   0);
  assert_int_equal(copy->seq, 5);
  assert_string_equal(copy->topic, "t");
  assert_int_equal(copy->wire[MW_WIRE_JSON].len, ev->wire[MW_WIRE_JSON].len);
  assert_memory_equal(copy->wire[MW_WIRE_JSON].data,
                      ev->wire[MW_WIRE_JSON].data, ev->wire[MW_WIRE_JSON].len);
  mw_event_unref(&copy);
  mw_event_unref(&ev);
}

static void test_parse_rejects_bad_input(void **state) {
  const char *bad[] = {
      "",
      "{",
      "[]",
      "{\"type\":\"event\"}",
      "{\"type\":\"ack\",\"topic\":\"t\",\"event\":\"E\",\"seq\":1,\"data\":{}"
      "}",
      "{\"type\":\"event\",\"topic\":\"t\",\"event\":\"E\",\"seq\":0,\"data\":{"
      "}}",
      "{\"type\":\"event\",\"topic\":\"t\",\"event\":\"E\",\"seq\":1,\"data\":"
      "3}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    mw_event_t *out = (mw_event_t *)1;
    assert_int_equal(mw__event_parse(bad[i], strlen(bad[i]), "e", &out),
                     MW_EINVAL);
    assert_null(out);
  }
}

static void test_refcount(void **state) {
  mw_event_t *ev = mw__event_draft("t", "E", NULL, NULL);
  mw_event_t *second = mw_event_ref(ev);
  assert_ptr_equal(second, ev);
  mw_event_unref(&second);
  assert_null(second);
  assert_string_equal(ev->topic, "t"); /* still alive */
  mw_event_unref(&ev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_seal_encodes_envelope),
      cmocka_unit_test(test_seal_matches_jansson),
      cmocka_unit_test(test_wire_buffers_fit),
      cmocka_unit_test(test_ephemeral_envelope),
      cmocka_unit_test(test_json_text_invalid_utf8),
      cmocka_unit_test(test_parse_presence_too_deep),
      cmocka_unit_test(test_seal_rejects_seq_zero),
      cmocka_unit_test(test_parse_roundtrip),
      cmocka_unit_test(test_parse_rejects_bad_input),
      cmocka_unit_test(test_refcount),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
