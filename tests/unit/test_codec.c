/* UTF-8 validation and jansson <-> msgpack conversion (core/codec.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "codec.h"

static void test_utf8(void **state) {
  struct {
    const char *s;
    int ok;
  } cases[] = {
      {"plain ascii", 1},
      {"caf\xc3\xa9", 1},
      {"\xe2\x82\xac", 1},     /* euro sign */
      {"\xf0\x9f\x98\x80", 1}, /* emoji */
      {"\xc0\xaf", 0},         /* overlong '/' */
      {"\xe0\x80\xaf", 0},     /* overlong, 3 bytes */
      {"\xed\xa0\x80", 0},     /* surrogate */
      {"\xf4\x90\x80\x80", 0}, /* above U+10FFFF */
      {"\xc3", 0},             /* truncated */
      {"\xe2\x82", 0},         /* truncated */
      {"\x80", 0},             /* lone continuation */
      {"\xff", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    assert_int_equal(mw_codec_utf8_valid(cases[i].s, strlen(cases[i].s)),
                     cases[i].ok);
}

static json_t *roundtrip(json_t *v) {
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  assert_int_equal(mw_codec_pack_json(&pk, v), 0);
  json_t *back = mw_codec_json_from_msgpack(sb.data, sb.size);
  msgpack_sbuffer_destroy(&sb);
  return back;
}

static void test_roundtrip(void **state) {
  json_t *v = json_loads("{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":"
                         "[\"a\",\"b\"],\"n\":-5,\"f\":1.5,\"t\":true,"
                         "\"z\":null,\"o\":{\"deep\":[1,2,{\"x\":\"y\"}]}}",
                         0, NULL);
  assert_non_null(v);
  json_t *back = roundtrip(v);
  assert_non_null(back);
  assert_true(json_equal(v, back));
  json_decref(v);
  json_decref(back);
}

static void test_rejects_what_json_cannot_carry(void **state) {
  /* map with an integer key: {1: 2} */
  const char int_key[] = {(char)0x81, 0x01, 0x02};
  assert_null(mw_codec_json_from_msgpack(int_key, sizeof int_key));
  /* bin 8 of 1 byte */
  const char bin[] = {(char)0xc4, 0x01, 0x00};
  assert_null(mw_codec_json_from_msgpack(bin, sizeof bin));
  /* two values where one is expected */
  const char two[] = {0x01, 0x02};
  assert_null(mw_codec_json_from_msgpack(two, sizeof two));
  /* truncated string */
  const char trunc[] = {(char)0xa5, 'a', 'b'};
  assert_null(mw_codec_json_from_msgpack(trunc, sizeof trunc));
  /* invalid UTF-8 in a str */
  const char badstr[] = {(char)0xa1, (char)0xff};
  assert_null(mw_codec_json_from_msgpack(badstr, sizeof badstr));
  /* nesting deeper than the limit: 40 nested arrays of one element */
  char deep[41];
  memset(deep, (char)0x91, 40);
  deep[40] = 0x01;
  assert_null(mw_codec_json_from_msgpack(deep, sizeof deep));
  assert_null(mw_codec_json_from_msgpack("", 0));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_utf8),
      cmocka_unit_test(test_roundtrip),
      cmocka_unit_test(test_rejects_what_json_cannot_carry),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
