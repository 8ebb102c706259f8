/* jansson <-> msgpack and UTF-8 validation: see codec.h. */
#include "codec.h"

#include <string.h>

#include "moonwire/errno.h"

static int pack_value(msgpack_packer *pk, const json_t *v, int depth) {
  if (depth > MW_CODEC_MAX_DEPTH) return MW_EINVAL;
  switch (json_typeof(v)) {
  case JSON_OBJECT: {
    const char *key;
    json_t *item;
    msgpack_pack_map(pk, json_object_size(v));
    json_object_foreach((json_t *)v, key, item) {
      size_t klen = strlen(key);
      msgpack_pack_str(pk, klen);
      msgpack_pack_str_body(pk, key, klen);
      int rc = pack_value(pk, item, depth + 1);
      if (rc) return rc;
    }
    return 0;
  }
  case JSON_ARRAY: {
    size_t i;
    json_t *item;
    msgpack_pack_array(pk, json_array_size(v));
    json_array_foreach(v, i, item) {
      int rc = pack_value(pk, item, depth + 1);
      if (rc) return rc;
    }
    return 0;
  }
  case JSON_STRING: {
    size_t len = json_string_length(v);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, json_string_value(v), len);
    return 0;
  }
  case JSON_INTEGER:
    msgpack_pack_int64(pk, json_integer_value(v));
    return 0;
  case JSON_REAL:
    msgpack_pack_double(pk, json_real_value(v));
    return 0;
  case JSON_TRUE:
    msgpack_pack_true(pk);
    return 0;
  case JSON_FALSE:
    msgpack_pack_false(pk);
    return 0;
  case JSON_NULL:
    msgpack_pack_nil(pk);
    return 0;
  }
  return MW_EINVAL;
}

int mw_codec_pack_json(msgpack_packer *pk, const json_t *v) {
  return pack_value(pk, v, 0);
}

static json_t *from_object(const msgpack_object *o, int depth) {
  if (depth > MW_CODEC_MAX_DEPTH) return NULL;
  switch (o->type) {
  case MSGPACK_OBJECT_NIL:
    return json_null();
  case MSGPACK_OBJECT_BOOLEAN:
    return json_boolean(o->via.boolean);
  case MSGPACK_OBJECT_POSITIVE_INTEGER:
    if (o->via.u64 > (uint64_t)INT64_MAX) return json_real((double)o->via.u64);
    return json_integer((json_int_t)o->via.u64);
  case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    return json_integer((json_int_t)o->via.i64);
  case MSGPACK_OBJECT_FLOAT32:
  case MSGPACK_OBJECT_FLOAT64:
    return json_real(o->via.f64);
  case MSGPACK_OBJECT_STR:
    if (!mw_codec_utf8_valid(o->via.str.ptr, o->via.str.size)) return NULL;
    return json_stringn(o->via.str.ptr, o->via.str.size);
  case MSGPACK_OBJECT_ARRAY: {
    json_t *arr = json_array();
    for (uint32_t i = 0; i < o->via.array.size; i++) {
      json_t *item = from_object(&o->via.array.ptr[i], depth + 1);
      if (!item || json_array_append_new(arr, item)) {
        json_decref(arr);
        return NULL;
      }
    }
    return arr;
  }
  case MSGPACK_OBJECT_MAP: {
    json_t *obj = json_object();
    for (uint32_t i = 0; i < o->via.map.size; i++) {
      const msgpack_object_kv *kv = &o->via.map.ptr[i];
      if (kv->key.type != MSGPACK_OBJECT_STR ||
          !mw_codec_utf8_valid(kv->key.via.str.ptr, kv->key.via.str.size) ||
          memchr(kv->key.via.str.ptr, 0, kv->key.via.str.size)) {
        json_decref(obj);
        return NULL;
      }
      json_t *val = from_object(&kv->val, depth + 1);
      if (!val || json_object_setn_new(obj, kv->key.via.str.ptr,
                                       kv->key.via.str.size, val)) {
        json_decref(obj);
        return NULL;
      }
    }
    return obj;
  }
  default: /* BIN, EXT */
    return NULL;
  }
}

json_t *mw_codec_json_from_msgpack(const char *data, size_t len) {
  msgpack_unpacked up;
  size_t off = 0;
  json_t *out = NULL;
  msgpack_unpacked_init(&up);
  if (msgpack_unpack_next(&up, data, len, &off) == MSGPACK_UNPACK_SUCCESS &&
      off == len)
    out = from_object(&up.data, 0);
  msgpack_unpacked_destroy(&up);
  return out;
}

int mw_codec_utf8_valid(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < len) {
    unsigned char c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      cp = c & 0x07;
    } else {
      return 0;
    }
    if (i + n >= len) return 0; /* truncated sequence */
    for (size_t k = 1; k <= n; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += n + 1;
  }
  return 1;
}
