/* Unit tests of core/cursor.c: the SSE id / long-poll cursor format. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cursor.h"

/* base64url (no padding) of a raw string, for hand-made cursors. */
static char *b64url(const char *raw) {
  static const char a[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t n = strlen(raw), o = 0;
  char *out = malloc(n / 3 * 4 + 8);
  const unsigned char *in = (const unsigned char *)raw;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16;
    if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
    if (i + 2 < n) v |= in[i + 2];
    out[o++] = a[v >> 18 & 63];
    out[o++] = a[v >> 12 & 63];
    if (i + 1 < n) out[o++] = a[v >> 6 & 63];
    if (i + 2 < n) out[o++] = a[v & 63];
  }
  out[o] = 0;
  return out;
}

static json_t *decode_raw(const char *raw) {
  char *c = b64url(raw);
  json_t *j = mw_cursor_decode(c);
  free(c);
  return j;
}

static void test_roundtrip(void **st) {
  json_t *pos =
      json_pack("{s:[Is],s:[Is],s:[Is]}", "gift-list:family-123",
                (json_int_t)42, "0123456789abcdef", "user:ü", (json_int_t)0, "",
                "a", (json_int_t)9007199254740993LL, "e");
  char *c = mw_cursor_encode(pos);
  assert_non_null(c);
  for (const char *p = c; *p; p++)
    assert_non_null(strchr(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        *p));
  json_t *back = mw_cursor_decode(c);
  assert_non_null(back);
  assert_true(json_equal(pos, back));
  /* Order is kept: encoding the decoded object gives the same text. */
  char *again = mw_cursor_encode(back);
  assert_string_equal(c, again);
  free(again);
  free(c);
  json_decref(back);
  json_decref(pos);
}

static void test_known_bytes(void **st) {
  json_t *pos = json_pack("{s:[is]}", "t", 5, "e1");
  char *c = mw_cursor_encode(pos);
  char *want = b64url("{\"t\":[5,\"e1\"]}");
  assert_string_equal(c, want);
  free(want);
  free(c);
  json_decref(pos);
}

static void test_every_tail_length(void **st) {
  /* Lengths 0, 1 and 2 mod 3 of the JSON text all round-trip. */
  const char *names[] = {"a", "ab", "abc", "abcd"};
  for (size_t i = 0; i < 4; i++) {
    json_t *pos = json_pack("{s:[is]}", names[i], 1, "x");
    char *c = mw_cursor_encode(pos);
    assert_non_null(c);
    json_t *back = mw_cursor_decode(c);
    assert_non_null(back);
    assert_true(json_equal(pos, back));
    json_decref(back);
    free(c);
    json_decref(pos);
  }
}

static void test_encode_refuses_bad_input(void **st) {
  assert_null(mw_cursor_encode(NULL));
  json_t *bad[] = {
      json_array(),
      json_pack("{s:[is]}", "has space", 1, "e"),
      json_pack("{s:[is]}", "a,b", 1, "e"),
      json_pack("{s:[is]}", "", 1, "e"),
      json_pack("{s:[is]}", "t", -1, "e"),
      json_pack("{s:[i]}", "t", 1),
      json_pack("{s:[isi]}", "t", 1, "e", 2),
      json_pack("{s:[ss]}", "t", "1", "e"),
      json_pack("{s:[ii]}", "t", 1, 2),
      json_pack("{s:i}", "t", 1),
      json_pack("{s:[fs]}", "t", 1.5, "e"),
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_non_null(bad[i]);
    char *c = mw_cursor_encode(bad[i]);
    if (c) fail_msg("case %zu encoded: %s", i, c);
    json_decref(bad[i]);
  }
  /* An epoch longer than 64 bytes, a topic longer than 256. */
  char longs[300];
  memset(longs, 'x', sizeof longs - 1);
  longs[sizeof longs - 1] = 0;
  json_t *e = json_pack("{s:[is]}", "t", 1, longs);
  assert_null(mw_cursor_encode(e));
  json_decref(e);
  json_t *t = json_pack("{s:[is]}", longs, 1, "e");
  assert_null(mw_cursor_encode(t));
  json_decref(t);
}

static void test_too_many_topics(void **st) {
  json_t *pos = json_object();
  char name[16];
  for (int i = 0; i < 256; i++) {
    snprintf(name, sizeof name, "t%d", i);
    json_object_set_new(pos, name, json_pack("[is]", i, "e"));
  }
  char *c = mw_cursor_encode(pos);
  assert_non_null(c);
  json_t *back = mw_cursor_decode(c);
  assert_non_null(back);
  assert_int_equal(json_object_size(back), 256);
  json_decref(back);
  free(c);
  json_object_set_new(pos, "one-more", json_pack("[is]", 1, "e"));
  assert_null(mw_cursor_encode(pos));
  /* Hand-made: 257 topics are refused by the decoder too. */
  char *text = json_dumps(pos, JSON_COMPACT);
  assert_null(decode_raw(text));
  free(text);
  json_decref(pos);
}

static void test_too_long(void **st) {
  /* 200 topics of 40 bytes: more than 8 KiB once encoded. */
  json_t *pos = json_object();
  char name[48];
  for (int i = 0; i < 200; i++) {
    snprintf(name, sizeof name, "%040d", i);
    json_object_set_new(pos, name, json_pack("[is]", i, "0123456789abcdef"));
  }
  assert_null(mw_cursor_encode(pos));
  char *text = json_dumps(pos, JSON_COMPACT);
  assert_null(decode_raw(text));
  free(text);
  json_decref(pos);
  /* A huge input is refused without being decoded. */
  size_t n = 1 << 20;
  char *huge = malloc(n + 1);
  memset(huge, 'A', n);
  huge[n] = 0;
  assert_null(mw_cursor_decode(huge));
  free(huge);
}

static void test_malformed(void **st) {
  char *good = b64url("{\"t\":[5,\"e1\"]}");
  json_t *ok = mw_cursor_decode(good);
  assert_non_null(ok);
  json_decref(ok);
  size_t n = strlen(good);

  const char *literal[] = {
      NULL,
      "",
      "A",
      "AAAAA",
      "abc=",
      "ab==",
      "a+b/",
      "ab cd",
      "ab\ncd",
      "%7B%7D",
      "eyJ0IjpbNSwiZTEiXX0=", /* standard padding */
      "!!!!",
      "\xc3\xa9\xc3\xa9",
  };
  for (size_t i = 0; i < sizeof literal / sizeof literal[0]; i++) {
    json_t *j = mw_cursor_decode(literal[i]);
    if (j) fail_msg("literal case %zu decoded", i);
  }
  /* Truncated: every shorter prefix is refused. */
  char *cut = strdup(good);
  for (size_t k = 0; k < n; k++) {
    cut[k] = 0;
    json_t *j = mw_cursor_decode(cut);
    if (j) fail_msg("prefix of %zu chars decoded", k);
    memcpy(cut, good, n + 1);
  }
  free(cut);
  /* One bad character anywhere. */
  char *bad = strdup(good);
  bad[n / 2] = '.';
  assert_null(mw_cursor_decode(bad));
  free(bad);
  /* Non-canonical last character: the unused low bits must be zero. */
  assert_true(n % 4 == 2 || n % 4 == 3);
  char *nc = strdup(good);
  char last = nc[n - 1];
  nc[n - 1] = last == 'A' ? 'B' : last == 'Q' ? 'R' : last == 'g' ? 'h' : 'x';
  assert_null(mw_cursor_decode(nc));
  free(nc);
  free(good);

  const char *raw[] = {
      "[1,2]",
      "\"s\"",
      "5",
      "null",
      "{",
      "{\"t\":[5,\"e1\"]",
      "not json",
      "{\"t\":[-1,\"e\"]}",
      "{\"t\":[1.5,\"e\"]}",
      "{\"t\":[\"1\",\"e\"]}",
      "{\"t\":[1]}",
      "{\"t\":[1,\"e\",3]}",
      "{\"t\":5}",
      "{\"t\":{\"seq\":1}}",
      "{\"t\":[1,2]}",
      "{\"t\":[1,null]}",
      "{\"a b\":[1,\"e\"]}",
      "{\"a,b\":[1,\"e\"]}",
      "{\"\":[1,\"e\"]}",
      "{\"a\\u0001\":[1,\"e\"]}",
      "{\"t\":[1,\"e\"],\"t\":[2,\"e\"]}",
      "{\"t\":[1,\"e\\n\"]}",
      "{\"t\":[99999999999999999999999,\"e\"]}",
      "{\"t\":[1,\"e\"]} x",
  };
  for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++) {
    json_t *j = decode_raw(raw[i]);
    if (j) fail_msg("raw case %zu (%s) decoded", i, raw[i]);
  }
  json_t *empty = decode_raw("{}");
  assert_non_null(empty); /* valid, just empty */
  json_decref(empty);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip),
      cmocka_unit_test(test_known_bytes),
      cmocka_unit_test(test_every_tail_length),
      cmocka_unit_test(test_encode_refuses_bad_input),
      cmocka_unit_test(test_too_many_topics),
      cmocka_unit_test(test_too_long),
      cmocka_unit_test(test_malformed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
