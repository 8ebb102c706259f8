/* Event drafts, sealing (both wire forms encoded once), parsing and
 * reference counts (core/event.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "codec.h"
#include "event.h"
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
  assert_memory_equal(copy->wire[MW_WIRE_JSON].data, ev->wire[MW_WIRE_JSON].data,
                      ev->wire[MW_WIRE_JSON].len);
  mw_event_unref(&copy);
  mw_event_unref(&ev);
}

static void test_parse_rejects_bad_input(void **state) {
  const char *bad[] = {
      "", "{", "[]", "{\"type\":\"event\"}",
      "{\"type\":\"ack\",\"topic\":\"t\",\"event\":\"E\",\"seq\":1,\"data\":{}}",
      "{\"type\":\"event\",\"topic\":\"t\",\"event\":\"E\",\"seq\":0,\"data\":{}}",
      "{\"type\":\"event\",\"topic\":\"t\",\"event\":\"E\",\"seq\":1,\"data\":3}",
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
      cmocka_unit_test(test_seal_rejects_seq_zero),
      cmocka_unit_test(test_parse_roundtrip),
      cmocka_unit_test(test_parse_rejects_bad_input),
      cmocka_unit_test(test_refcount),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
