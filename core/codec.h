/* Conversions shared by the core and the plugins that speak msgpack:
 * jansson values <-> msgpack, and UTF-8 validation. Built as the static
 * library mw_codec, linked into the core and into plugins that need it (a
 * copy of the code, not a core symbol). */
#ifndef MW_CODEC_H
#define MW_CODEC_H

#include <jansson.h>
#include <msgpack.h>
#include <stddef.h>

/* Deepest nesting accepted from the network. */
#define MW_CODEC_MAX_DEPTH 32

/* Packs `v` into `pk` (the same map/array/scalars). Returns 0, or MW_EINVAL
 * for a value deeper than MW_CODEC_MAX_DEPTH. */
int mw_codec_pack_json(msgpack_packer *pk, const json_t *v);

/* Decodes one msgpack value from `data` into a new jansson value (the caller
 * owns the reference). Returns NULL for bytes that are not exactly one
 * msgpack value or hold what JSON cannot carry (non-string map keys, bin,
 * ext, nesting deeper than MW_CODEC_MAX_DEPTH, invalid UTF-8 strings). */
json_t *mw_codec_json_from_msgpack(const char *data, size_t len);

/* 1 if `s` (len bytes) is well-formed UTF-8 (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), 0 otherwise. */
int mw_codec_utf8_valid(const char *s, size_t len);

#endif
