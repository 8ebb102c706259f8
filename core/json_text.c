/* JSON text assembly: see json_text.h. */
#include "json_text.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "log.h"

void mw__jt_init(mw_json_text_t *t, size_t hint) {
  t->cap = hint < 64 ? 64 : hint;
  t->data = mw_xmalloc(t->cap);
  t->len = 0;
  t->failed = 0;
}

/* Room for n more bytes and the NUL. */
static void reserve(mw_json_text_t *t, size_t n) {
  if (t->len + n < t->cap) return;
  size_t cap = t->cap ? t->cap * 2 : 64; /* 0 after mw__jt_finish */
  while (t->len + n >= cap)
    cap *= 2;
  t->data = mw_xrealloc(t->data, cap);
  t->cap = cap;
}

void mw__jt_raw(mw_json_text_t *t, const char *s, size_t n) {
  reserve(t, n);
  memcpy(t->data + t->len, s, n);
  t->len += n;
}

void mw__jt_lit(mw_json_text_t *t, const char *s) {
  mw__jt_raw(t, s, strlen(s));
}

/* 1 if JSON_COMPACT output of s is s between quotes: no quote, backslash
 * or control character (jansson escapes only those without flags). */
static int needs_no_escape(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == '"' || c == '\\') return 0;
  }
  return 1;
}

void mw__jt_string(mw_json_text_t *t, const char *s, size_t n) {
  if (!mw_codec_utf8_valid(s, n)) {
    t->failed = 1;
    return;
  }
  if (needs_no_escape(s, n)) {
    reserve(t, n + 2);
    t->data[t->len++] = '"';
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len++] = '"';
    return;
  }
  json_t *js = json_stringn(s, n);
  char *enc = js ? json_dumps(js, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  json_decref(js);
  if (!enc) {
    t->failed = 1;
    return;
  }
  mw__jt_lit(t, enc);
  free(enc);
}

void mw__jt_u64(mw_json_text_t *t, uint64_t v) {
  char digits[20];
  size_t n = 0;
  do {
    digits[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  reserve(t, n);
  while (n)
    t->data[t->len++] = digits[--n];
}

char *mw__jt_finish(mw_json_text_t *t, size_t *len) {
  char *out = t->data;
  if (t->failed) {
    free(out);
    out = NULL;
  } else {
    out[t->len] = 0; /* reserve() kept room for it */
    if (len) *len = t->len;
  }
  t->data = NULL;
  t->len = t->cap = 0;
  t->failed = 0;
  return out;
}
