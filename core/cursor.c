/* Cursors: positions in several topics as one opaque, URL- and header-safe
 * string (the SSE event id / Last-Event-ID and the long-poll cursor).
 *
 * Format: base64url without padding (RFC 4648 §5) of the compact JSON object
 *
 *   {"<topic>":[<seq>,"<epoch>"],...}
 *
 * in the order the caller built it. Decoding is strict: at most
 * MW_CURSOR_MAX_LEN characters, only the base64url alphabet, no padding, no
 * non-canonical trailing bits; the JSON must be one object (no duplicate
 * keys) of at most MW_CURSOR_MAX_TOPICS topics, each a valid topic name
 * (1..256 bytes of UTF-8 without spaces, control characters or commas) whose
 * value is exactly [integer >= 0, string of at most 64 bytes without control
 * characters]. Encoding checks the same and refuses an output longer than
 * MW_CURSOR_MAX_LEN, so whatever is encoded can be decoded again. */
#include "cursor.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

#define MW_CURSOR_MAX_LEN 8192 /* characters of the encoded form */
#define MW_CURSOR_MAX_TOPICS 256
#define MW_CURSOR_MAX_TOPIC 256 /* bytes of a topic name */
#define MW_CURSOR_MAX_EPOCH 64  /* bytes of an epoch */

static const char b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* The 6-bit value of a base64url character, or -1. */
static int b64url_val(unsigned char ch) {
  if (ch >= 'A' && ch <= 'Z') return ch - 'A';
  if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
  if (ch >= '0' && ch <= '9') return ch - '0' + 52;
  if (ch == '-') return 62;
  if (ch == '_') return 63;
  return -1;
}

static int topic_ok(const char *t, size_t len) {
  if (len == 0 || len > MW_CURSOR_MAX_TOPIC) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)t[i];
    if (ch <= 0x20 || ch == 0x7f || ch == ',') return 0;
  }
  return mw_codec_utf8_valid(t, len);
}

static int epoch_ok(const json_t *e) {
  if (!json_is_string(e)) return 0;
  size_t len = json_string_length(e);
  const char *s = json_string_value(e);
  if (len > MW_CURSOR_MAX_EPOCH || strlen(s) != len) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch < 0x20 || ch == 0x7f) return 0;
  }
  return 1;
}

/* 1 if `o` is a positions object within every limit. */
static int positions_ok(const json_t *o) {
  if (!json_is_object(o) || json_object_size(o) > MW_CURSOR_MAX_TOPICS)
    return 0;
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)o, k, v) {
    if (!topic_ok(k, strlen(k))) return 0;
    if (!json_is_array(v) || json_array_size(v) != 2) return 0;
    json_t *seq = json_array_get(v, 0);
    if (!json_is_integer(seq) || json_integer_value(seq) < 0) return 0;
    if (!epoch_ok(json_array_get(v, 1))) return 0;
  }
  return 1;
}

char *mw_cursor_encode(const json_t *positions) {
  if (!positions || !positions_ok(positions)) return NULL;
  char *text = json_dumps(positions, JSON_COMPACT);
  if (!text) return NULL;
  size_t n = strlen(text);
  size_t out_len = n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
  if (out_len > MW_CURSOR_MAX_LEN) {
    free(text);
    return NULL;
  }
  char *out = malloc(out_len + 1);
  if (!out) {
    free(text);
    return NULL;
  }
  const unsigned char *in = (const unsigned char *)text;
  size_t o = 0, i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = b64url[v >> 18 & 63];
    out[o++] = b64url[v >> 12 & 63];
    out[o++] = b64url[v >> 6 & 63];
    out[o++] = b64url[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    out[o++] = b64url[v >> 18 & 63];
    out[o++] = b64url[v >> 12 & 63];
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    out[o++] = b64url[v >> 18 & 63];
    out[o++] = b64url[v >> 12 & 63];
    out[o++] = b64url[v >> 6 & 63];
  }
  out[o] = 0;
  free(text);
  return out;
}

json_t *mw_cursor_decode(const char *cursor) {
  if (!cursor) return NULL;
  size_t n = strnlen(cursor, MW_CURSOR_MAX_LEN + 1);
  if (n == 0 || n > MW_CURSOR_MAX_LEN || n % 4 == 1) return NULL;
  unsigned char *raw = malloc(n / 4 * 3 + 3);
  if (!raw) return NULL;
  size_t o = 0, i = 0;
  for (; i + 4 <= n; i += 4) {
    int a = b64url_val((unsigned char)cursor[i]);
    int b = b64url_val((unsigned char)cursor[i + 1]);
    int c = b64url_val((unsigned char)cursor[i + 2]);
    int d = b64url_val((unsigned char)cursor[i + 3]);
    if ((a | b | c | d) < 0) goto fail;
    uint32_t v =
        (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
    raw[o++] = (unsigned char)(v >> 16);
    raw[o++] = (unsigned char)(v >> 8);
    raw[o++] = (unsigned char)v;
  }
  if (n - i >= 2) { /* 2 or 3 characters left: 1 or 2 bytes */
    int a = b64url_val((unsigned char)cursor[i]);
    int b = b64url_val((unsigned char)cursor[i + 1]);
    int c = n - i == 3 ? b64url_val((unsigned char)cursor[i + 2]) : 0;
    if ((a | b | c) < 0) goto fail;
    uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6;
    /* Canonical form only: the bits past the last byte must be zero. */
    if (n - i == 2 ? (v & 0xffff) : (v & 0xff)) goto fail;
    raw[o++] = (unsigned char)(v >> 16);
    if (n - i == 3) raw[o++] = (unsigned char)(v >> 8);
  }
  json_error_t err;
  json_t *j = json_loadb((const char *)raw, o, JSON_REJECT_DUPLICATES, &err);
  free(raw);
  if (!j) return NULL;
  if (!positions_ok(j)) {
    json_decref(j);
    return NULL;
  }
  return j;
fail:
  free(raw);
  return NULL;
}
