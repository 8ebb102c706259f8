/* JSON text assembled from parts: pre-encoded JSON (an event's data text),
 * integers and strings. Strings that need no escaping are copied as they
 * are; any other is encoded by jansson. Used where a fixed envelope is
 * written once per event or answer, so that what was encoded already (the
 * data) is not encoded again. */
#ifndef MW_JSON_TEXT_H
#define MW_JSON_TEXT_H

#include <stddef.h>
#include <stdint.h>

typedef struct mw_json_text {
  char *data; /* malloc'd, NUL-terminated while len < cap */
  size_t len, cap;
  int failed; /* a string was not valid UTF-8 */
} mw_json_text_t;

/* An empty text with room for about `hint` bytes. */
void mw__jt_init(mw_json_text_t *t, size_t hint);

/* Appends n bytes as they are (JSON syntax or pre-encoded JSON). */
void mw__jt_raw(mw_json_text_t *t, const char *s, size_t n);

/* Appends a NUL-terminated literal as it is. */
void mw__jt_lit(mw_json_text_t *t, const char *s);

/* Appends s (n bytes of UTF-8) as a JSON string literal, quotes included,
 * escaped as jansson's JSON_COMPACT output would be. Invalid UTF-8 sets
 * t->failed and appends nothing. */
void mw__jt_string(mw_json_text_t *t, const char *s, size_t n);

/* Appends v in decimal. */
void mw__jt_u64(mw_json_text_t *t, uint64_t v);

/* The text (malloc'd, NUL-terminated; the caller frees it) and its length
 * in *len; NULL (and the buffer freed) if t->failed. t is empty after (and
 * may be appended to again). */
char *mw__jt_finish(mw_json_text_t *t, size_t *len);

#endif
