/* Cursors: see cursor.h. (Stub: the SSE/long-poll work fills this in.) */
#include "cursor.h"

char *mw_cursor_encode(const json_t *positions) {
  (void)positions;
  return NULL;
}

json_t *mw_cursor_decode(const char *cursor) {
  (void)cursor;
  return NULL;
}
