/* Positions in several topics at once, as one opaque string: the SSE event
 * id (Last-Event-ID) and the long-poll cursor. Part of mw_codec (linked into
 * the core and the plugins that need it). The format is described in
 * cursor.c and docs/protocol.md. */
#ifndef MW_CURSOR_H
#define MW_CURSOR_H

#include <jansson.h>

/* Encodes {"topic": [seq, "epoch"], ...} into a new NUL-terminated string
 * (caller frees), or NULL for a malformed input. */
char *mw_cursor_encode(const json_t *positions);

/* Decodes a cursor into a new {"topic": [seq, "epoch"]} object (caller owns),
 * or NULL when it is malformed, too long or names too many topics. */
json_t *mw_cursor_decode(const char *cursor);

#endif
