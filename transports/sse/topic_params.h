/* What GET /sse and GET /poll share: the `topics` list, the positions of a
 * cursor (core/cursor.h) and the cursor of a client's current positions.
 * Compiled into both plugins (sse.so, longpoll.so); private to each. */
#ifndef MW_TOPIC_PARAMS_H
#define MW_TOPIC_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "moonwire/host.h"

#define TP_MAX_TOPICS 256    /* topics per request */
#define TP_MAX_TOPIC_LEN 256 /* bytes of a topic name */
#define TP_EPOCH_LEN 65      /* an epoch (at most 64 bytes) + NUL */

/* One requested topic and what is known of its position. */
typedef struct tp_topic {
  char *name;
  int from_cursor; /* the request's cursor gave a position: recover */
  int has_base;    /* base_* holds a position */
  uint64_t base_seq;
  char base_epoch[TP_EPOCH_LEN];
  int pinned; /* long-poll cap: the cursor says exactly pin_* */
  uint64_t pin_seq;
  char pin_epoch[TP_EPOCH_LEN];
  int unrecovered; /* the recovery reported recovered:false */
  int failed;      /* the recovery could not run (storage unavailable):
                      the client should retry from the same position */
  int refused;     /* the subscription was refused: not in cursors */
} tp_topic_t;

typedef struct tp_list {
  tp_topic_t *t;
  size_t n;
} tp_list_t;

/* Parses the comma-separated `topics` (NULL: absent) and the `cursor` (NULL
 * or "": absent) into `out` (zeroed by the caller): each topic once, in the
 * order given, with its position when the cursor names it. Without
 * `topics`, the cursor's topics are the list. Returns 0, or -1 with a short
 * reason in `err` (the caller answers 400); `out` is empty then. */
int tp_parse(const char *topics, const char *cursor, tp_list_t *out, char *err,
             size_t err_len);

/* Frees the list's topics. */
void tp_free(tp_list_t *l);

/* The index of `name` in `l`, or -1. */
int tp_find(const tp_list_t *l, const char *name);

/* Applies a subscribe_since answer to `t`: recovered keeps the position it
 * had (in the current epoch), not recovered moves it to the topic's current
 * position and marks it unrecovered. MW_ECANCELED is ignored. */
void tp_recovered(tp_topic_t *t, int status, int recovered, uint64_t seq,
                  const char *epoch);

/* Records a topic's current position (topic_position) as its base. */
void tp_set_base(tp_topic_t *t, uint64_t seq, const char *epoch);

/* The resumable position of `t` for `client`: the pinned one, else the
 * newer of its base and host->client_position. 0 when none is known. */
int tp_position(const mw_host_v1_t *host, const mw_client_t *client,
                const tp_topic_t *t, uint64_t *seq, const char **epoch);

/* The cursor of every topic of `l` with a known position, as a new string
 * (caller frees), or NULL when none is known or it would be too long. */
char *tp_cursor(const mw_host_v1_t *host, const mw_client_t *client,
                const tp_list_t *l);

/* Writes {"error":reason} (JSON-escaped) into a new string (caller frees). */
char *tp_error_json(const char *reason);

#endif
