/* Pure helpers of the Redis storage: URL parsing, the envelope parts the
 * publish script concatenates, reply validation and the pub/sub message
 * format. No I/O and no host table: unit-tested in
 * tests/unit/test_storage_redis.c. Return codes: 0 or a negative MW_E*. */
#ifndef MW_REDIS_PROTO_H
#define MW_REDIS_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define RD_HOST_MAX 256
#define RD_PASS_MAX 256
#define RD_EPOCH_MAX 64

/* A parsed redis://[[user]:password@]host[:port][/db] URL. */
typedef struct rd_url {
  char host[RD_HOST_MAX];     /* "127.0.0.1", "::1" (brackets removed) */
  int port;                   /* 6379 by default */
  int db;                     /* 0 by default */
  char password[RD_PASS_MAX]; /* "" when none */
} rd_url_t;

/* Parses `url` into *out. Returns 0, or MW_EINVAL with a one-line reason in
 * `err` (at most errlen bytes, NUL-terminated). */
int rd_url_parse(const char *url, rd_url_t *out, char *err, size_t errlen);

/* A growable byte buffer (malloc'd; the caller frees `data`). */
typedef struct rd_buf {
  char *data;
  size_t len, cap;
} rd_buf_t;

/* Appends bytes; aborts on allocation failure (small, internal). */
void rd_buf_add(rd_buf_t *b, const char *s, size_t n);
/* Appends `s` as a JSON string literal with quotes, escaped like jansson's
 * compact encoder (", \, control characters; UTF-8 kept as is). With
 * `quotes` 0 only the escaped inside is appended. */
void rd_buf_json_str(rd_buf_t *b, const char *s, int quotes);

/* The three fixed parts of an event envelope around its seq:
 *   p1 SEQ p2 SEQ p3  ==  {"type":"event","topic":T,"event":E,"seq":SEQ,
 *                          "id":"T:SEQ","data":D[,"trace_id":X]}
 * in the key order of the core's encoder. `data_json` is the compact data
 * object text. The three buffers are the caller's to free. */
void rd_envelope_parts(const char *topic, const char *event,
                       const char *data_json, size_t data_len,
                       const char *trace_id, rd_buf_t *p1, rd_buf_t *p2,
                       rd_buf_t *p3);

/* The publish script's reply: {seq (integer >= 1), epoch (non-empty
 * string)}. Returns 0 and fills *seq and epoch (RD_EPOCH_MAX bytes), or
 * MW_EINVAL with *why set to a static reason ("reply_type", "script_error"). */
int rd_check_publish_reply(const redisReply *r, uint64_t *seq, char *epoch,
                           const char **why);

/* The read script's reply: {top (integer >= 0), epoch (string),
 * complete (0/1), items (array of strings "MS|JSON")}. Returns 0 and fills
 * the outputs (*items borrowed from r; may be NULL when *nitems is 0), or
 * MW_EINVAL with *why. */
int rd_check_read_reply(const redisReply *r, uint64_t *top, char *epoch,
                        int *complete, redisReply ***items, size_t *nitems,
                        const char **why);

/* The presence script's reply: {client ids (array of strings), user ids
 * (array of strings or nils, same length)}. 0 or MW_EINVAL with *why. */
int rd_check_presence_reply(const redisReply *r, const char **why);

/* The JSON text of a stored history member "MS|JSON": sets *json and *len.
 * 0 or MW_EINVAL. */
int rd_history_item(const char *s, size_t n, const char **json, size_t *len);

/* Splits a pub/sub payload "EPOCH JSON" (EPOCH "-" for presence messages):
 * copies the epoch ("" for "-") into `epoch` (RD_EPOCH_MAX bytes) and points
 * *json into `payload`. 0 or MW_EINVAL. */
int rd_split_message(const char *payload, size_t n, char *epoch,
                     const char **json, size_t *jlen);

/* This node's delivery order of one topic: the last seq handed to
 * host->fanout and its epoch (seq 0: none yet). Publish replies may be fanned
 * out before their pub/sub echo only when they directly follow it, so that
 * every node-local subscriber still sees seqs in order, each once. */
typedef struct rd_order {
  uint64_t seq;
  char epoch[RD_EPOCH_MAX];
} rd_order_t;

/* A publish reply (seq, epoch) of this node: 1 when it may be fanned out now
 * (it is the successor of the last event fanned out, in the same epoch; the
 * order then records it), 0 when it must wait for its pub/sub echo (an
 * earlier event of another publisher may still be on its way). */
int rd_order_local(rd_order_t *o, uint64_t seq, const char *epoch);

/* A sequenced pub/sub message: 1 when it is to be fanned out (recorded), 0
 * when this node already fanned it out (its own publish, delivered at the
 * reply: the echo is a duplicate). A message of another epoch, or past a
 * gap, is fanned out and restarts the order there. */
int rd_order_echo(rd_order_t *o, uint64_t seq, const char *epoch);

/* Admission of one more command on a connection that has `n` commands
 * (`bytes` bytes of arguments) sent or queued and unanswered: 1 when
 * n < max_n and bytes + add <= max_bytes (0 means no limit), 0 when the
 * caller must fail fast (the connection is saturated). */
int rd_pending_admit(size_t n, size_t bytes, size_t add, size_t max_n,
                     size_t max_bytes);

/* Exponential backoff: the delay after `prev_ms` (0: the first) doubling
 * from `min_ms` up to `max_ms`. */
uint64_t rd_backoff_next(uint64_t prev_ms, uint64_t min_ms, uint64_t max_ms);

#endif
