/* Redis storage: several moonwire nodes sharing one Redis, as one cluster.
 *
 * Connections. Every worker has its own command connection (hiredis async on
 * its own uv loop), so a storage call completes on the worker that made it.
 * Worker 0 also owns the node's one pub/sub connection: it SUBSCRIBEs to the
 * channel of every topic some worker of this node has subscribers for
 * (storage->interest, counted node-wide under a mutex; other workers hand it
 * the change through a uv_async) and delivers every message it receives with
 * host->fanout, in the order Redis sends them. The publishing node fans its
 * own event out at the script's reply already when that event directly
 * follows the last one it fanned out for the topic (same epoch), and drops
 * the echo; otherwise the echo delivers it (per-topic rd_order_t under
 * g->lock: in seq order, each once, on every worker).
 *
 * Keys (KEY = redis_prefix, default "mw:", then "{topic}" so that one
 * topic's keys share a Redis Cluster hash slot):
 *   KEY{topic}:m  hash   seq (last assigned), epoch (random, SET-NX'ed on
 *                        first use: a Redis that lost its data gets a new one)
 *   KEY{topic}:h  zset   history, score seq, member "MS|EVENT-JSON" (MS: the
 *                        Redis clock at append), at most history.size
 *                        members, older than history.ttl dropped; the key
 *                        expires after history.ttl without publishes
 *   KEY{topic}:p  zset   presence, member client id, score expiry (ms)
 *   KEY{topic}:u  hash   presence, client id -> user id
 *   channel KEY c DB : topic  pub/sub, payload "EPOCH EVENT-JSON" or
 *                        "- PRESENCE-JSON" (channels ignore SELECT: the db
 *                        is part of the name)
 *
 * Publish is one EVALSHA (EVAL after NOSCRIPT): HINCRBY seq, build the
 * envelope by concatenation, ZADD + trim, PUBLISH, return {seq, epoch}; the
 * publisher then seals its draft with them. Nothing waits for a reply
 * before sending the next command: every command a loop turn queues goes
 * out in one write at the end of the turn (redis_uv.h) and hiredis matches
 * the replies in order. A connection takes at most redis_max_pending
 * commands (redis_max_pending_bytes of arguments) in flight; beyond that a
 * call fails at once with MW_EUNAVAIL (publish: 503) and counts as "busy". Two
 * nodes publishing to one topic are serialized by Redis: seqs have no gap and
 * no duplicate, and the channel carries them in seq order.
 *
 * Faults: a connection that drops or a command older than redis_timeout_ms
 * fails every pending call with MW_EUNAVAIL, healthy() turns 0, publish
 * answers MW_EUNAVAIL at once, and the connection comes back with backoff
 * (100 ms doubling to 5 s); the pub/sub connection re-SUBSCRIBEs every topic
 * of current interest. history() and position() wait (at most
 * redis_timeout_ms) until this node's SUBSCRIBE of the topic is confirmed, so
 * an answer followed by live events has no gap. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/sha.h>
#include <uthash.h>

#include "moonwire/plugin.h"
#include "redis_proto.h"
#include "redis_uv.h"

#define RD_SUBSYS "storage_redis"
#define RD_BACKOFF_MIN 100
#define RD_BACKOFF_MAX 5000
#define RD_PARK_TICK_MS 2

/* --- Lua scripts ---------------------------------------------------------- */

/* Drops history members older than ttl ms (the oldest come first). */
#define RD_LUA_EXPIRE                                                          \
  "local function expire(key, now, ttl)\n"                                     \
  "  while true do\n"                                                          \
  "    local first = redis.call('ZRANGE', key, 0, 0)\n"                        \
  "    if #first == 0 then return end\n"                                       \
  "    local ts = tonumber(string.match(first[1], '^(%d+)|'))\n"               \
  "    if ts ~= nil and now - ts <= ttl then return end\n"                     \
  "    redis.call('ZREMRANGEBYRANK', key, 0, 0)\n"                             \
  "  end\n"                                                                    \
  "end\n"                                                                      \
  "local function now_ms()\n"                                                  \
  "  local t = redis.call('TIME')\n"                                           \
  "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"       \
  "end\n"

/* KEYS: meta, hist. ARGV: channel, p1, p2, p3, size, ttl_ms, epoch. */
static const char rd_lua_publish[] =
    RD_LUA_EXPIRE "local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)\n"
                  "local epoch = redis.call('HGET', KEYS[1], 'epoch')\n"
                  "if not epoch then\n"
                  "  epoch = ARGV[7]\n"
                  "  redis.call('HSET', KEYS[1], 'epoch', epoch)\n"
                  "end\n"
                  "local s = string.format('%d', seq)\n"
                  "local json = ARGV[2] .. s .. ARGV[3] .. s .. ARGV[4]\n"
                  "local size = tonumber(ARGV[5])\n"
                  "local ttl = tonumber(ARGV[6])\n"
                  "if size > 0 then\n"
                  "  local now = now_ms()\n"
                  "  redis.call('ZADD', KEYS[2], seq, string.format('%d', now) "
                  ".. '|' .. json)\n"
                  "  local n = redis.call('ZCARD', KEYS[2])\n"
                  "  if n > size then redis.call('ZREMRANGEBYRANK', KEYS[2], "
                  "0, n - size - 1) end\n"
                  "  if ttl > 0 then\n"
                  "    expire(KEYS[2], now, ttl)\n"
                  "    redis.call('PEXPIRE', KEYS[2], ttl)\n"
                  "  end\n"
                  "end\n"
                  "redis.call('PUBLISH', ARGV[1], epoch .. ' ' .. json)\n"
                  "return {seq, epoch}\n";

/* KEYS: meta, hist. ARGV: since, limit, ttl_ms, epoch.
 * Returns {top, epoch, complete, items}. */
static const char rd_lua_read[] = RD_LUA_EXPIRE
    "redis.call('HSETNX', KEYS[1], 'epoch', ARGV[4])\n"
    "local m = redis.call('HMGET', KEYS[1], 'seq', 'epoch')\n"
    "local top = tonumber(m[1]) or 0\n"
    "local ttl = tonumber(ARGV[3])\n"
    "if ttl > 0 then expire(KEYS[2], now_ms(), ttl) end\n"
    "local since = tonumber(ARGV[1])\n"
    "local limit = tonumber(ARGV[2])\n"
    "local complete = 1\n"
    "local items = {}\n"
    "if since < top then\n"
    "  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')\n"
    "  if #first == 0 or tonumber(first[2]) > since + 1 then complete = 0 end\n"
    "  if limit > 0 then\n"
    "    items = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf',\n"
    "                       'LIMIT', 0, limit)\n"
    "  end\n"
    "end\n"
    "return {top, m[2], complete, items}\n";

/* KEYS: pres zset, users hash. ARGV: client, user, ttl_ms. */
static const char rd_lua_padd[] =
    RD_LUA_EXPIRE "local ttl = tonumber(ARGV[3])\n"
                  "redis.call('ZADD', KEYS[1], now_ms() + ttl, ARGV[1])\n"
                  /* The cluster's topic index (GET /api/topics): a topic stays
                   * listed while any of its presence entries may be alive. */
                  "local expiry = now_ms() + ttl\n"
                  "local cur = redis.call('ZSCORE', KEYS[3], ARGV[4])\n"
                  "if not cur or tonumber(cur) < expiry then\n"
                  "  redis.call('ZADD', KEYS[3], expiry, ARGV[4])\n"
                  "end\n"
                  "redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])\n"
                  "if redis.call('PTTL', KEYS[1]) < ttl then\n"
                  "  redis.call('PEXPIRE', KEYS[1], ttl)\n"
                  "  redis.call('PEXPIRE', KEYS[2], ttl)\n"
                  "end\n"
                  "return 1\n";

/* KEYS: the topic index. ARGV: key prefix. Returns {names, counts}: topics
 * with live presence entries and how many (expired ones dropped). Reads
 * keys it was not given: fine on one Redis, not on Redis Cluster. */
static const char rd_lua_topics[] = RD_LUA_EXPIRE
    "local now = now_ms()\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "local names, counts = {}, {}\n"
    "for _, t in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do\n"
    "  local n = redis.call('ZCOUNT', ARGV[1] .. '{' .. t .. '}:p', now, "
    "'+inf')\n"
    "  if n > 0 then names[#names + 1] = t; counts[#counts + 1] = n end\n"
    "end\n"
    "return {names, counts}\n";

/* KEYS: pres zset, users hash. ARGV: client. */
static const char rd_lua_premove[] = "redis.call('ZREM', KEYS[1], ARGV[1])\n"
                                     "redis.call('HDEL', KEYS[2], ARGV[1])\n"
                                     "return 1\n";

/* KEYS: pres zset, users hash. Returns {ids, users}; expired ones dropped.
 * unpack() in chunks: Lua's C stack holds a few thousand values at most. */
static const char rd_lua_plist[] = RD_LUA_EXPIRE
    "local function chunked(cmd, key, list)\n"
    "  local out = {}\n"
    "  for i = 1, #list, 1000 do\n"
    "    local part = {}\n"
    "    for j = i, math.min(i + 999, #list) do part[#part + 1] = list[j] end\n"
    "    local r = redis.call(cmd, key, unpack(part))\n"
    "    if type(r) == 'table' then\n"
    "      for k = 1, #part do out[#out + 1] = r[k] end\n"
    "    end\n"
    "  end\n"
    "  return out\n"
    "end\n"
    "local now = now_ms()\n"
    "local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "if #dead > 0 then\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "  chunked('HDEL', KEYS[2], dead)\n"
    "end\n"
    "local ids = redis.call('ZRANGE', KEYS[1], 0, -1)\n"
    "local users = chunked('HMGET', KEYS[2], ids)\n"
    "return {ids, users}\n";

enum {
  RD_S_PUBLISH,
  RD_S_READ,
  RD_S_PADD,
  RD_S_PREMOVE,
  RD_S_PLIST,
  RD_S_TOPICS,
  RD_S_COUNT
};

static const char *const rd_scripts[RD_S_COUNT] = {
    rd_lua_publish, rd_lua_read,  rd_lua_padd,
    rd_lua_premove, rd_lua_plist, rd_lua_topics};

/* --- errors counted in moonwire_redis_errors_total{reason} ---------------- */

enum {
  RD_E_REPLY,   /* a reply of the wrong type or shape */
  RD_E_SCRIPT,  /* a script or command answered an error */
  RD_E_TIMEOUT, /* a command older than redis_timeout_ms */
  RD_E_CONNECT, /* a connection failed or dropped */
  RD_E_AUTH,    /* AUTH or SELECT refused */
  RD_E_MESSAGE, /* a pub/sub message that is not ours */
  RD_E_BUSY,    /* a call refused: too many commands in flight */
  RD_E_COUNT
};

static const char *const rd_reason_names[RD_E_COUNT] = {
    "reply_type", "script_error", "timeout", "connect",
    "auth",       "message",      "busy"};

/* --- state ---------------------------------------------------------------- */

/* A topic this node listens to (or stopped listening to). */
typedef struct rd_topic {
  char *name;
  unsigned want;    /* workers with local subscribers (guarded by g->lock) */
  int sent;         /* 1: SUBSCRIBE sent (pub/sub thread) */
  int inflight;     /* a (UN)SUBSCRIBE awaits its answer */
  int subscribed;   /* Redis confirmed the SUBSCRIBE */
  int dirty;        /* in g->dirty: want changed */
  rd_order_t order; /* the last seq fanned out on this node (g->lock) */
  struct rd_topic *next_dirty;
  UT_hash_handle hh;
} rd_topic_t;

typedef struct rd_global {
  const mw_host_v1_t *host;
  rd_url_t url;
  char prefix[64];
  char chan_prefix[96];
  size_t hist_size;
  uint64_t ttl_ms;
  uint64_t timeout_ms;
  size_t max_pending;       /* commands per connection in flight (0: no cap) */
  size_t max_pending_bytes; /* their argument bytes (0: no cap) */
  char sha[RD_S_COUNT][41];
  unsigned nconns;     /* workers + 1 (pub/sub) */
  atomic_uint nup;     /* connections up */
  atomic_int ps_ready; /* the pub/sub connection is subscribed and live */

  pthread_mutex_t lock; /* guards topics, dirty, ps_async */
  rd_topic_t *topics;
  rd_topic_t *dirty;
  uv_async_t *ps_async; /* NULL when the pub/sub worker is not running */

  mw_metric_t *m_up, *m_reconnects, *m_commands, *m_errors[RD_E_COUNT];
  atomic_int logged[RD_E_COUNT];
} rd_global_t;

typedef struct rd_req rd_req_t;

typedef struct rd_worker {
  rd_global_t *g;
  mw_worker_t *w;
  uv_loop_t *loop;
  unsigned id;
  int stopping;
  int open_handles; /* freed when the last one is closed */
  uint64_t rng;

  /* the command connection */
  redisAsyncContext *ac;
  int connected;
  int was_down; /* log the next connect as a reconnect */
  uint64_t connect_t0;
  uint64_t last_sent; /* when a command was last sent (heartbeats) */
  uint64_t backoff;
  uv_timer_t retry;
  uv_timer_t tick;     /* timeouts */
  uv_timer_t park;     /* parked reads */
  rd_req_t *pending;   /* sent, oldest first (circular doubly linked) */
  rd_req_t *parked;    /* waiting for a SUBSCRIBE confirmation */
  size_t nqueued;      /* admitted calls not answered yet (pending+parked) */
  size_t queued_bytes; /* their argument bytes */

  /* the pub/sub connection: worker 0 only */
  int has_ps;
  redisAsyncContext *ps;
  int ps_connected;
  int ps_was_down;
  uint64_t ps_t0;
  uint64_t ps_seen; /* last reply or message on the pub/sub connection */
  uint64_t ps_backoff;
  uv_timer_t ps_retry;
  uv_async_t ps_async;
} rd_worker_t;

enum { RQ_PUBLISH, RQ_HISTORY, RQ_POSITION, RQ_PLIST, RQ_TOPICS, RQ_FIRE };

struct rd_req {
  rd_worker_t *ws;
  int kind;
  int script; /* RD_S_* or -1 for a plain command */
  int retried;
  int admitted; /* counted in ws->nqueued / queued_bytes */
  int internal; /* heartbeat: never refused */
  size_t bytes; /* sum of argvlen */
  int argc;
  char **argv; /* argv[0..1] static for scripts; the rest owned */
  size_t *argvlen;
  uint64_t t0;
  rd_req_t *prev, *next;
  char *topic; /* owned (parked reads) */

  mw_event_t *draft; /* publish: the caller's, borrowed */
  mw_store_publish_cb pcb;
  mw_store_history_cb hcb;
  mw_position_cb poscb;
  mw_store_presence_cb prcb;
  mw_store_topics_cb tcb;
  void *ud;
};

/* One static so that the callbacks of the hiredis contexts find the rest. */
static uint64_t rd_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* 1 when `t` (a stamp of rd_now_ms) is more than `limit` ms before `now`.
 * A stamp taken after `now` (a command sent while `now` was already read)
 * is not old: unsigned `now - t` would wrap and call it ancient. */
static int rd_older(uint64_t now, uint64_t t, uint64_t limit) {
  return now > t && now - t > limit;
}

static void *rd_xcalloc(size_t n, size_t sz) {
  void *p = calloc(n ? n : 1, sz);
  if (!p) abort(); /* small internal allocation: out of memory */
  return p;
}

static char *rd_xstrndup(const char *s, size_t n) {
  char *p = malloc(n + 1);
  if (!p) abort();
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

/* Counts an error and logs its first occurrence per reason (later ones at
 * debug level). */
static void rd_error(rd_global_t *g, int reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void rd_error(rd_global_t *g, int reason, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  g->host->metric_add(g->m_errors[reason], 1);
  int first = atomic_exchange(&g->logged[reason], 1) == 0;
  g->host->log(first ? MW_LOG_WARN : MW_LOG_DEBUG, RD_SUBSYS, "%s (%s)%s", msg,
               rd_reason_names[reason],
               first ? "; further errors of this kind are only counted" : "");
}

static void rd_conn_up(rd_global_t *g) {
  if (atomic_fetch_add(&g->nup, 1) + 1 == g->nconns)
    g->host->metric_add(g->m_up, 1);
}

static void rd_conn_down(rd_global_t *g) {
  if (atomic_fetch_sub(&g->nup, 1) == g->nconns)
    g->host->metric_add(g->m_up, -1);
}

static void rd_epoch_candidate(rd_worker_t *ws, char out[17]) {
  static const char hex[] = "0123456789abcdef";
  /* xorshift64*: the candidate only needs to differ between Redis lives. */
  uint64_t x = ws->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  ws->rng = x;
  x *= 0x2545F4914F6CDD1Dull;
  for (int i = 0; i < 16; i++)
    out[i] = hex[(x >> (4 * i)) & 15];
  out[16] = '\0';
}

/* --- keys ------------------------------------------------------------------
 */

static char *rd_key(const rd_global_t *g, const char *topic, char kind,
                    size_t *len) {
  size_t n = strlen(g->prefix) + strlen(topic) + 5;
  char *k = malloc(n);
  if (!k) abort();
  *len = (size_t)snprintf(k, n, "%s{%s}:%c", g->prefix, topic, kind);
  return k;
}

static char *rd_channel(const rd_global_t *g, const char *topic, size_t *len) {
  size_t n = strlen(g->chan_prefix) + strlen(topic) + 1;
  char *k = malloc(n);
  if (!k) abort();
  *len = (size_t)snprintf(k, n, "%s%s", g->chan_prefix, topic);
  return k;
}

/* --- requests ------------------------------------------------------------- */

static void rd_list_add(rd_req_t **head, rd_req_t *r) {
  if (!*head) {
    r->prev = r->next = r;
    *head = r;
  } else {
    r->prev = (*head)->prev;
    r->next = *head;
    (*head)->prev->next = r;
    (*head)->prev = r;
  }
}

static void rd_list_del(rd_req_t **head, rd_req_t *r) {
  if (r->next == r) {
    *head = NULL;
  } else {
    r->prev->next = r->next;
    r->next->prev = r->prev;
    if (*head == r) *head = r->next;
  }
  r->prev = r->next = NULL;
}

/* A request for script `script` with `nkeys` keys then the other arguments
 * (the strings are copied). */
static rd_req_t *rd_req_new(rd_worker_t *ws, int kind, int script, int nkeys,
                            int nargs, const char *const *args,
                            const size_t *lens) {
  rd_req_t *r = rd_xcalloc(1, sizeof *r);
  int extra = script >= 0 ? 3 : 0; /* EVALSHA sha numkeys */
  r->ws = ws;
  r->kind = kind;
  r->script = script;
  r->argc = extra + nargs;
  r->argv = rd_xcalloc((size_t)r->argc, sizeof *r->argv);
  r->argvlen = rd_xcalloc((size_t)r->argc, sizeof *r->argvlen);
  if (script >= 0) {
    char nk[16];
    int l = snprintf(nk, sizeof nk, "%d", nkeys);
    r->argv[0] = "EVALSHA";
    r->argvlen[0] = 7;
    r->argv[1] = ws->g->sha[script];
    r->argvlen[1] = 40;
    r->argv[2] = rd_xstrndup(nk, (size_t)l);
    r->argvlen[2] = (size_t)l;
  }
  for (int i = 0; i < nargs; i++) {
    r->argv[extra + i] = rd_xstrndup(args[i], lens[i]);
    r->argvlen[extra + i] = lens[i];
    r->bytes += lens[i];
  }
  return r;
}

/* Counts a caller's request against the worker's cap on calls in flight:
 * 0, or MW_EUNAVAIL (counted as "busy") when the connection already has
 * redis_max_pending commands or redis_max_pending_bytes unanswered. Fails
 * fast instead of queueing without bound behind a slow Redis. */
static int rd_admit(rd_req_t *r) {
  rd_worker_t *ws = r->ws;
  rd_global_t *g = ws->g;
  if (r->admitted || r->internal) return 0;
  if (!rd_pending_admit(ws->nqueued, ws->queued_bytes, r->bytes, g->max_pending,
                        g->max_pending_bytes)) {
    rd_error(g, RD_E_BUSY,
             "worker %u: %zu Redis commands (%zu bytes) in flight: refusing "
             "more until Redis catches up",
             ws->id, ws->nqueued, ws->queued_bytes);
    return MW_EUNAVAIL;
  }
  r->admitted = 1;
  ws->nqueued++;
  ws->queued_bytes += r->bytes;
  return 0;
}

static void rd_req_free(rd_req_t *r) {
  if (r->admitted) {
    r->ws->nqueued--;
    r->ws->queued_bytes -= r->bytes;
  }
  int first = r->script >= 0 ? 2 : 0;
  for (int i = first; i < r->argc; i++)
    free(r->argv[i]);
  free(r->argv);
  free(r->argvlen);
  free(r->topic);
  free(r);
}

static void rd_on_reply(redisAsyncContext *ac, void *reply, void *priv);

/* Sends a request on the command connection. 0 or MW_EUNAVAIL (nothing
 * sent; the request is still the caller's). */
static int rd_send(rd_req_t *r) {
  rd_worker_t *ws = r->ws;
  if (!ws->ac || ws->stopping) return MW_EUNAVAIL;
  if (rd_admit(r)) return MW_EUNAVAIL;
  /* Queued in hiredis' output buffer; everything this loop turn queues is
   * written at once from the check phase (redis_uv.h): a pipeline, the
   * replies matched in order. */
  if (redisAsyncCommandArgv(ws->ac, rd_on_reply, r, r->argc,
                            (const char **)r->argv, r->argvlen) != REDIS_OK)
    return MW_EUNAVAIL;
  ws->last_sent = rd_now_ms();
  if (!r->t0) r->t0 = ws->last_sent;
  rd_list_add(&ws->pending, r);
  ws->g->host->metric_add(ws->g->m_commands, 1);
  return 0;
}

/* Completes a request with an error status: its callback fires once. */
static void rd_fail(rd_req_t *r, int status) {
  switch (r->kind) {
  case RQ_PUBLISH:
    r->pcb(status, NULL, r->ud);
    break;
  case RQ_HISTORY:
    r->hcb(status, NULL, 0, 0, NULL, 0, r->ud);
    break;
  case RQ_POSITION:
    r->poscb(status, 0, NULL, r->ud);
    break;
  case RQ_PLIST:
    r->prcb(status, NULL, 0, r->ud);
    break;
  case RQ_TOPICS:
    r->tcb(status, NULL, NULL, 0, r->ud);
    break;
  default:
    break;
  }
  rd_req_free(r);
}

/* This node's own publish, sealed: when the topic has local subscribers and
 * the event directly follows the last one fanned out here (same epoch), fan
 * it out now rather than one pub/sub round trip later; its echo is then
 * dropped (rd_order_echo). Otherwise the echo delivers it, in order behind
 * the events of other publishers still on their way. Under g->lock, which
 * also orders every fan-out of the pub/sub connection, so every inbox gets a
 * topic's events in seq order, each once. */
static void rd_fanout_local(rd_global_t *g, mw_event_t *ev) {
  pthread_mutex_lock(&g->lock);
  rd_topic_t *t = NULL;
  HASH_FIND_STR(g->topics, ev->topic, t);
  if (t && t->want > 0 && rd_order_local(&t->order, ev->seq, ev->epoch))
    g->host->fanout(ev);
  pthread_mutex_unlock(&g->lock);
}

static void rd_done_publish(rd_req_t *r, const redisReply *rep) {
  rd_worker_t *ws = r->ws;
  const mw_host_v1_t *host = ws->g->host;
  uint64_t seq;
  char epoch[RD_EPOCH_MAX];
  const char *why;
  if (rd_check_publish_reply(rep, &seq, epoch, &why)) {
    rd_error(ws->g, why[0] == 's' ? RD_E_SCRIPT : RD_E_REPLY,
             "publish to %s: unexpected reply%s%s", r->draft->topic,
             rep->type == REDIS_REPLY_ERROR ? ": " : "",
             rep->type == REDIS_REPLY_ERROR ? rep->str : "");
    rd_fail(r, MW_EUNAVAIL);
    return;
  }
  int rc = host->event_seal(r->draft, seq, epoch);
  if (rc) {
    rd_fail(r, rc);
    return;
  }
  rd_fanout_local(ws->g, r->draft);
  r->pcb(0, r->draft, r->ud);
  rd_req_free(r);
}

static void rd_done_read(rd_req_t *r, const redisReply *rep) {
  rd_worker_t *ws = r->ws;
  const mw_host_v1_t *host = ws->g->host;
  uint64_t top;
  char epoch[RD_EPOCH_MAX];
  int complete;
  redisReply **items;
  size_t n;
  const char *why;
  if (rd_check_read_reply(rep, &top, epoch, &complete, &items, &n, &why)) {
    rd_error(ws->g, why[0] == 's' ? RD_E_SCRIPT : RD_E_REPLY,
             "history of %s: unexpected reply%s%s", r->topic,
             rep->type == REDIS_REPLY_ERROR ? ": " : "",
             rep->type == REDIS_REPLY_ERROR ? rep->str : "");
    rd_fail(r, MW_EUNAVAIL);
    return;
  }
  if (r->kind == RQ_POSITION) {
    r->poscb(0, top, epoch, r->ud);
    rd_req_free(r);
    return;
  }
  mw_event_t **evs = rd_xcalloc(n, sizeof *evs);
  size_t k = 0;
  uint64_t expect = 0;
  for (size_t i = 0; i < n; i++) {
    const char *json;
    size_t jl;
    mw_event_t *ev = NULL;
    if (rd_history_item(items[i]->str, items[i]->len, &json, &jl) ||
        host->event_parse(json, jl, epoch, &ev) || ev->seq == 0 ||
        (expect && ev->seq != expect) || strcmp(ev->topic, r->topic) != 0) {
      /* What follows a bad member would skip it: stop, and say so. */
      rd_error(ws->g, RD_E_REPLY, "history of %s: a stored event is not valid",
               r->topic);
      if (ev) host->event_unref(&ev);
      complete = 0;
      break;
    }
    expect = ev->seq + 1;
    evs[k++] = ev;
  }
  r->hcb(0, evs, k, top, epoch, complete, r->ud);
  for (size_t i = 0; i < k; i++)
    host->event_unref(&evs[i]);
  free(evs);
  rd_req_free(r);
}

static void rd_done_plist(rd_req_t *r, const redisReply *rep) {
  rd_worker_t *ws = r->ws;
  const char *why;
  if (rd_check_presence_reply(rep, &why)) {
    rd_error(ws->g, why[0] == 's' ? RD_E_SCRIPT : RD_E_REPLY,
             "presence of %s: unexpected reply", r->topic);
    rd_fail(r, MW_EUNAVAIL);
    return;
  }
  const redisReply *ids = rep->element[0], *users = rep->element[1];
  size_t n = ids->elements;
  mw_presence_entry_t *e = rd_xcalloc(n, sizeof *e);
  for (size_t i = 0; i < n; i++) {
    e[i].client_id = ids->element[i]->str;
    e[i].user_id = users->element[i]->type == REDIS_REPLY_STRING
                       ? users->element[i]->str
                       : "";
  }
  r->prcb(0, e, n, r->ud);
  free(e);
  rd_req_free(r);
}

static void rd_done_topics(rd_req_t *r, const redisReply *rep) {
  rd_worker_t *ws = r->ws;
  const redisReply *names = NULL, *counts = NULL;
  int ok = rep && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2;
  if (ok) {
    names = rep->element[0];
    counts = rep->element[1];
    ok = names && counts && names->type == REDIS_REPLY_ARRAY &&
         counts->type == REDIS_REPLY_ARRAY &&
         names->elements == counts->elements;
  }
  for (size_t i = 0; ok && i < names->elements; i++)
    ok = names->element[i]->type == REDIS_REPLY_STRING &&
         counts->element[i]->type == REDIS_REPLY_INTEGER &&
         counts->element[i]->integer >= 0;
  if (!ok) {
    rd_error(ws->g,
             rep && rep->type == REDIS_REPLY_ERROR ? RD_E_SCRIPT : RD_E_REPLY,
             "topics: unexpected reply");
    rd_fail(r, MW_EUNAVAIL);
    return;
  }
  size_t n = names->elements;
  const char **nv = rd_xcalloc(n ? n : 1, sizeof *nv);
  uint64_t *cv = rd_xcalloc(n ? n : 1, sizeof *cv);
  for (size_t i = 0; i < n; i++) {
    nv[i] = names->element[i]->str;
    cv[i] = (uint64_t)counts->element[i]->integer;
  }
  r->tcb(0, nv, cv, n, r->ud);
  free(nv);
  free(cv);
  rd_req_free(r);
}

static void rd_on_reply(redisAsyncContext *ac, void *reply, void *priv) {
  rd_req_t *r = priv;
  rd_worker_t *ws = r->ws;
  redisReply *rep = reply;
  rd_list_del(&ws->pending, r);
  if (!rep) { /* the connection is gone (or the worker stops) */
    rd_fail(r, ws->stopping ? MW_ECANCELED : MW_EUNAVAIL);
    return;
  }
  if (rep->type == REDIS_REPLY_ERROR && r->script >= 0 && !r->retried &&
      strncmp(rep->str, "NOSCRIPT", 8) == 0) {
    /* The script cache was flushed (or Redis restarted): send the text. */
    r->retried = 1;
    r->argv[0] = "EVAL";
    r->argvlen[0] = 4;
    r->argv[1] = (char *)rd_scripts[r->script];
    r->argvlen[1] = strlen(rd_scripts[r->script]);
    if (rd_send(r)) rd_fail(r, ws->stopping ? MW_ECANCELED : MW_EUNAVAIL);
    return;
  }
  switch (r->kind) {
  case RQ_PUBLISH:
    rd_done_publish(r, rep);
    break;
  case RQ_HISTORY:
  case RQ_POSITION:
    rd_done_read(r, rep);
    break;
  case RQ_PLIST:
    rd_done_plist(r, rep);
    break;
  case RQ_TOPICS:
    rd_done_topics(r, rep);
    break;
  default:
    if (rep->type == REDIS_REPLY_ERROR)
      rd_error(ws->g, RD_E_SCRIPT, "%.*s: %s", (int)r->argvlen[0], r->argv[0],
               rep->str);
    rd_req_free(r);
  }
}

/* --- the command connection ----------------------------------------------- */

static void rd_cmd_connect(rd_worker_t *ws);

static void rd_on_retry(uv_timer_t *t) {
  rd_worker_t *ws = t->data;
  if (!ws->stopping && !ws->ac) rd_cmd_connect(ws);
}

static void rd_cmd_schedule(rd_worker_t *ws) {
  if (ws->stopping) return;
  ws->backoff = rd_backoff_next(ws->backoff, RD_BACKOFF_MIN, RD_BACKOFF_MAX);
  uv_timer_start(&ws->retry, rd_on_retry, ws->backoff, 0);
}

/* The command connection is gone: mark it down, retry later. */
static void rd_cmd_lost(rd_worker_t *ws) {
  if (ws->connected) {
    ws->connected = 0;
    rd_conn_down(ws->g);
  }
  ws->was_down = 1;
  rd_cmd_schedule(ws);
}

static void rd_cmd_on_connect(const redisAsyncContext *ac, int status) {
  rd_worker_t *ws = ac->data;
  if (ws->ac != ac) return;
  if (status != REDIS_OK) {
    /* hiredis frees the context after this returns. */
    ws->ac = NULL;
    if (!ws->was_down || ws->backoff == 0)
      rd_error(ws->g, RD_E_CONNECT,
               "worker %u: cannot connect to Redis %s:%d: %s", ws->id,
               ws->g->url.host, ws->g->url.port, ac->errstr);
    else
      ws->g->host->metric_add(ws->g->m_errors[RD_E_CONNECT], 1);
    rd_cmd_lost(ws);
    return;
  }
  /* TCP is up; the connection counts as up when Redis answers the PING (a
   * stopped Redis still accepts connections). */
}

static void rd_cmd_on_pong(redisAsyncContext *ac, void *reply, void *priv) {
  rd_worker_t *ws = ac->data;
  redisReply *rep = reply;
  if (!rep || ws->ac != ac || ws->connected) return;
  if (rep->type != REDIS_REPLY_STATUS || strcmp(rep->str, "PONG") != 0) {
    rd_error(ws->g, rep->type == REDIS_REPLY_ERROR ? RD_E_AUTH : RD_E_REPLY,
             "worker %u: Redis did not answer PING: %s", ws->id,
             rep->type == REDIS_REPLY_ERROR ? rep->str : "(unexpected reply)");
    redisAsyncDisconnect(ac);
    return;
  }
  ws->connected = 1;
  ws->backoff = 0;
  rd_conn_up(ws->g);
  if (ws->was_down) {
    ws->g->host->metric_add(ws->g->m_reconnects, 1);
    ws->g->host->log(MW_LOG_INFO, RD_SUBSYS, "worker %u: reconnected to Redis",
                     ws->id);
    ws->was_down = 0;
  }
}

static void rd_cmd_on_disconnect(const redisAsyncContext *ac, int status) {
  rd_worker_t *ws = ac->data;
  if (ws->ac != ac) return; /* dropped on purpose: handled there */
  ws->ac = NULL;
  if (!ws->stopping) {
    ws->g->host->metric_add(ws->g->m_errors[RD_E_CONNECT], 1);
    ws->g->host->log(MW_LOG_WARN, RD_SUBSYS,
                     "worker %u: Redis connection lost: %s", ws->id,
                     ac->err ? ac->errstr : "closed by the server");
  }
  rd_cmd_lost(ws);
}

/* AUTH, SELECT and SCRIPT LOAD answers. */
static void rd_on_setup(redisAsyncContext *ac, void *reply, void *priv) {
  rd_worker_t *ws = ac->data;
  redisReply *rep = reply;
  intptr_t what = (intptr_t)priv; /* -1 AUTH/SELECT, else a script index */
  if (!rep) return;
  if (what < 0) {
    if (rep->type == REDIS_REPLY_ERROR) {
      rd_error(ws->g, RD_E_AUTH, "Redis refused AUTH/SELECT: %s", rep->str);
      redisAsyncDisconnect(ac);
    }
    return;
  }
  if (rep->type != REDIS_REPLY_STRING || rep->len != 40 ||
      memcmp(rep->str, ws->g->sha[what], 40) != 0)
    rd_error(ws->g, rep->type == REDIS_REPLY_ERROR ? RD_E_SCRIPT : RD_E_REPLY,
             "SCRIPT LOAD: unexpected reply%s%s",
             rep->type == REDIS_REPLY_ERROR ? ": " : "",
             rep->type == REDIS_REPLY_ERROR ? rep->str : "");
}

/* Queues AUTH and SELECT (first in the connection's output). */
static void rd_send_login(rd_global_t *g, redisAsyncContext *ac, int select) {
  if (g->url.password[0])
    redisAsyncCommand(ac, rd_on_setup, (void *)(intptr_t)-1, "AUTH %s",
                      g->url.password);
  if (select && g->url.db)
    redisAsyncCommand(ac, rd_on_setup, (void *)(intptr_t)-1, "SELECT %d",
                      g->url.db);
}

/* No Nagle on a Redis socket: a small command must not wait for the ACK of
 * the previous write (hiredis sets it too; this does not depend on it). */
static void rd_nodelay(redisAsyncContext *ac) {
  int one = 1;
  setsockopt(ac->c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void rd_cmd_connect(rd_worker_t *ws) {
  rd_global_t *g = ws->g;
  redisAsyncContext *ac = redisAsyncConnect(g->url.host, g->url.port);
  if (!ac || ac->err) {
    if (ac) {
      rd_error(g, RD_E_CONNECT, "worker %u: cannot connect to Redis: %s",
               ws->id, ac->errstr);
      redisAsyncFree(ac);
    }
    ws->was_down = 1;
    rd_cmd_schedule(ws);
    return;
  }
  ac->data = ws;
  rd_nodelay(ac);
  if (rd_uv_attach(ac, ws->loop) != REDIS_OK) {
    redisAsyncFree(ac);
    ws->was_down = 1;
    rd_cmd_schedule(ws);
    return;
  }
  redisAsyncSetConnectCallback(ac, rd_cmd_on_connect);
  redisAsyncSetDisconnectCallback(ac, rd_cmd_on_disconnect);
  ws->ac = ac;
  ws->connect_t0 = rd_now_ms();
  rd_send_login(g, ac, 1);
  for (intptr_t i = 0; i < RD_S_COUNT; i++)
    redisAsyncCommand(ac, rd_on_setup, (void *)i, "SCRIPT LOAD %s",
                      rd_scripts[i]);
  redisAsyncCommand(ac, rd_cmd_on_pong, NULL, "PING");
}

/* Closes the command connection now: every pending call fails (MW_EUNAVAIL,
 * or MW_ECANCELED when stopping). Not from inside a hiredis callback. */
static void rd_cmd_drop(rd_worker_t *ws) {
  redisAsyncContext *ac = ws->ac;
  if (!ac) return;
  ws->ac = NULL; /* calls made from the callbacks below fail at once */
  redisAsyncFree(ac);
  if (!ws->stopping)
    rd_cmd_lost(ws);
  else if (ws->connected) {
    ws->connected = 0;
    rd_conn_down(ws->g);
  }
}

/* Timeouts: a command (or a connect) older than redis_timeout_ms. */
static void rd_ps_lost(rd_worker_t *ws);

static void rd_on_tick(uv_timer_t *t) {
  rd_worker_t *ws = t->data;
  uint64_t now = rd_now_ms();
  /* Timers run before the loop polls: after a long turn (a big fan-out on a
   * busy machine) an answer may be waiting unread in the socket. Read what
   * is there before calling anything late, so that a stalled loop is not
   * taken for a hung Redis. The reads may drop a connection (NULL then). */
  if (ws->ps && ws->ps_connected &&
      rd_older(now, ws->ps_seen, ws->g->timeout_ms + ws->g->timeout_ms / 2))
    redisAsyncHandleRead(ws->ps);
  if (ws->ac && ws->connected && ws->pending &&
      rd_older(now, ws->pending->t0, ws->g->timeout_ms))
    redisAsyncHandleRead(ws->ac);
  now = rd_now_ms(); /* the reads above may have stamped newer times */
  if (ws->ps && !ws->ps_connected &&
      rd_older(now, ws->ps_t0, ws->g->timeout_ms)) {
    redisAsyncContext *ps = ws->ps;
    rd_error(ws->g, RD_E_TIMEOUT, "pub/sub: connecting to Redis timed out");
    ws->ps = NULL;
    redisAsyncFree(ps);
    rd_ps_lost(ws);
  }
  if (ws->ps && ws->ps_connected &&
      rd_older(now, ws->ps_seen, ws->g->timeout_ms + ws->g->timeout_ms / 2)) {
    /* Heartbeats (below) stopped coming back: a hung Redis. */
    redisAsyncContext *ps = ws->ps;
    rd_error(ws->g, RD_E_TIMEOUT,
             "pub/sub: no heartbeat from Redis within %llu ms",
             (unsigned long long)ws->g->timeout_ms);
    ws->ps = NULL;
    redisAsyncFree(ps);
    rd_ps_lost(ws);
  }
  if (!ws->ac) return;
  if (ws->connected &&
      rd_older(now, ws->last_sent, ws->g->timeout_ms / 2 - 1) &&
      (ws->has_ps || !ws->pending)) {
    /* A heartbeat, so that a hung Redis is noticed without traffic: worker 0
     * publishes on the anchor channel, which its pub/sub connection hears. */
    const char *args[] = {ws->has_ps ? "PUBLISH" : "PING", ws->g->chan_prefix,
                          "hb"};
    size_t lens[] = {ws->has_ps ? 7u : 4u, strlen(ws->g->chan_prefix), 2};
    rd_req_t *r =
        rd_req_new(ws, RQ_FIRE, -1, 0, ws->has_ps ? 3 : 1, args, lens);
    r->internal = 1;
    if (rd_send(r)) rd_req_free(r);
  }
  if (!ws->connected && rd_older(now, ws->connect_t0, ws->g->timeout_ms)) {
    rd_error(ws->g, RD_E_TIMEOUT, "worker %u: connecting to Redis timed out",
             ws->id);
    rd_cmd_drop(ws);
  } else if (ws->pending && rd_older(now, ws->pending->t0, ws->g->timeout_ms)) {
    rd_error(ws->g, RD_E_TIMEOUT,
             "worker %u: Redis did not answer within %llu ms", ws->id,
             (unsigned long long)ws->g->timeout_ms);
    rd_cmd_drop(ws);
  }
}

/* --- the pub/sub connection (worker 0) ------------------------------------ */

static void rd_ps_on_msg(redisAsyncContext *ac, void *reply, void *priv);

static void rd_ps_send(rd_worker_t *ws, const char *cmd, const char *topic) {
  size_t cl;
  char *ch = rd_channel(ws->g, topic, &cl);
  const char *argv[2] = {cmd, ch};
  size_t lens[2] = {strlen(cmd), cl};
  redisAsyncCommandArgv(ws->ps, rd_ps_on_msg, ws, 2, argv, lens);
  free(ch);
}

/* Brings one topic's subscription in line with the node's interest. Under
 * g->lock, on the pub/sub thread. May free the topic. */
static void rd_reconcile(rd_worker_t *ws, rd_topic_t *t) {
  rd_global_t *g = ws->g;
  if (!ws->ps || !ws->ps_connected || t->inflight) return;
  if (t->want > 0 && !t->sent) {
    rd_ps_send(ws, "SUBSCRIBE", t->name);
    t->sent = 1;
    t->inflight = 1;
  } else if (t->want == 0 && t->sent) {
    rd_ps_send(ws, "UNSUBSCRIBE", t->name);
    t->sent = 0;
    t->subscribed = 0;
    t->inflight = 1;
  } else if (t->want == 0 && !t->dirty) {
    HASH_DEL(g->topics, t);
    free(t->name);
    free(t);
  }
}

/* Handles the interest changes other workers queued. Under g->lock. */
static void rd_ps_flush_dirty(rd_worker_t *ws) {
  rd_global_t *g = ws->g;
  while (g->dirty) {
    rd_topic_t *t = g->dirty;
    g->dirty = t->next_dirty;
    t->next_dirty = NULL;
    t->dirty = 0;
    rd_reconcile(ws, t);
  }
}

static void rd_ps_on_async(uv_async_t *a) {
  rd_worker_t *ws = a->data;
  pthread_mutex_lock(&ws->g->lock);
  if (ws->ps_connected) rd_ps_flush_dirty(ws);
  pthread_mutex_unlock(&ws->g->lock);
}

/* The pub/sub connection is logged in: subscribe every topic of interest. */
static void rd_ps_ready(rd_worker_t *ws) {
  rd_global_t *g = ws->g;
  /* An anchor channel keeps the connection in subscribed mode even when no
   * topic is (hiredis 0.14 asserts on a reply after the count hit 0). */
  const char *argv[2] = {"SUBSCRIBE", g->chan_prefix};
  size_t lens[2] = {9, strlen(g->chan_prefix)};
  redisAsyncCommandArgv(ws->ps, rd_ps_on_msg, ws, 2, argv, lens);
  ws->ps_connected = 1;
  ws->ps_seen = rd_now_ms();
  ws->ps_backoff = 0;
  pthread_mutex_lock(&g->lock);
  rd_ps_flush_dirty(ws);
  for (rd_topic_t *t = g->topics, *tmp; t; t = tmp) {
    tmp = t->hh.next;
    rd_reconcile(ws, t);
  }
  pthread_mutex_unlock(&g->lock);
  atomic_store(&g->ps_ready, 1);
  rd_conn_up(g);
  if (ws->ps_was_down) {
    g->host->metric_add(g->m_reconnects, 1);
    g->host->log(MW_LOG_INFO, RD_SUBSYS,
                 "pub/sub reconnected to Redis: resubscribed");
    ws->ps_was_down = 0;
  }
}

static void rd_ps_connect(rd_worker_t *ws);

static void rd_ps_on_retry(uv_timer_t *t) {
  rd_worker_t *ws = t->data;
  if (!ws->stopping && !ws->ps) rd_ps_connect(ws);
}

/* The pub/sub connection is gone: nothing is subscribed any more. */
static void rd_ps_lost(rd_worker_t *ws) {
  rd_global_t *g = ws->g;
  pthread_mutex_lock(&g->lock);
  for (rd_topic_t *t = g->topics; t; t = t->hh.next)
    t->sent = t->inflight = t->subscribed = 0;
  pthread_mutex_unlock(&g->lock);
  if (ws->ps_connected) {
    ws->ps_connected = 0;
    atomic_store(&g->ps_ready, 0);
    rd_conn_down(g);
  }
  ws->ps_was_down = 1;
  if (ws->stopping) return;
  ws->ps_backoff =
      rd_backoff_next(ws->ps_backoff, RD_BACKOFF_MIN, RD_BACKOFF_MAX);
  uv_timer_start(&ws->ps_retry, rd_ps_on_retry, ws->ps_backoff, 0);
}

static void rd_ps_on_auth(redisAsyncContext *ac, void *reply, void *priv) {
  rd_worker_t *ws = priv;
  redisReply *rep = reply;
  if (!rep || ws->ps != ac) return;
  if (rep->type == REDIS_REPLY_ERROR) {
    rd_error(ws->g, RD_E_AUTH, "Redis refused AUTH/PING (pub/sub): %s",
             rep->str);
    redisAsyncDisconnect(ac);
    return;
  }
  rd_ps_ready(ws);
}

static void rd_ps_on_connect(const redisAsyncContext *ac, int status) {
  rd_worker_t *ws = ac->data;
  if (ws->ps != ac) return;
  if (status != REDIS_OK) {
    ws->ps = NULL;
    if (ws->ps_backoff == 0)
      rd_error(ws->g, RD_E_CONNECT,
               "pub/sub: cannot connect to Redis %s:%d: %s", ws->g->url.host,
               ws->g->url.port, ac->errstr);
    else
      ws->g->host->metric_add(ws->g->m_errors[RD_E_CONNECT], 1);
    rd_ps_lost(ws);
    return;
  }
  /* Ready when Redis answers (AUTH, or a PING): a stopped Redis still
   * accepts connections. Before any SUBSCRIBE: a normal reply. */
  if (ws->g->url.password[0])
    redisAsyncCommand((redisAsyncContext *)ac, rd_ps_on_auth, ws, "AUTH %s",
                      ws->g->url.password);
  else
    redisAsyncCommand((redisAsyncContext *)ac, rd_ps_on_auth, ws, "PING");
}

static void rd_ps_on_disconnect(const redisAsyncContext *ac, int status) {
  rd_worker_t *ws = ac->data;
  if (ws->ps != ac) return;
  ws->ps = NULL;
  if (!ws->stopping) {
    ws->g->host->metric_add(ws->g->m_errors[RD_E_CONNECT], 1);
    ws->g->host->log(MW_LOG_WARN, RD_SUBSYS,
                     "pub/sub: Redis connection lost: %s",
                     ac->err ? ac->errstr : "closed by the server");
  }
  rd_ps_lost(ws);
}

static void rd_ps_connect(rd_worker_t *ws) {
  redisAsyncContext *ac = redisAsyncConnect(ws->g->url.host, ws->g->url.port);
  if (ac && !ac->err) rd_nodelay(ac);
  if (!ac || ac->err ||
      (ac->data = ws, rd_uv_attach(ac, ws->loop)) != REDIS_OK) {
    if (ac) redisAsyncFree(ac);
    rd_ps_lost(ws);
    return;
  }
  redisAsyncSetConnectCallback(ac, rd_ps_on_connect);
  redisAsyncSetDisconnectCallback(ac, rd_ps_on_disconnect);
  ws->ps = ac;
  ws->ps_t0 = rd_now_ms();
}

/* A message, or a (un)subscribe confirmation. */
static void rd_ps_on_msg(redisAsyncContext *ac, void *reply, void *priv) {
  rd_worker_t *ws = priv;
  rd_global_t *g = ws->g;
  const mw_host_v1_t *host = g->host;
  redisReply *rep = reply;
  if (!rep || ws->ps != ac) return;
  ws->ps_seen = rd_now_ms();
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
      rep->element[0]->type != REDIS_REPLY_STRING ||
      rep->element[1]->type != REDIS_REPLY_STRING) {
    if (rep->type == REDIS_REPLY_ERROR)
      rd_error(g, RD_E_SCRIPT, "pub/sub: %s", rep->str);
    else
      rd_error(g, RD_E_REPLY, "pub/sub: a reply of an unexpected shape");
    return;
  }
  const char *kind = rep->element[0]->str;
  const redisReply *ch = rep->element[1];
  size_t pl = strlen(g->chan_prefix);
  if (ch->len < pl || memcmp(ch->str, g->chan_prefix, pl) != 0) {
    rd_error(g, RD_E_MESSAGE, "pub/sub: message on a foreign channel");
    return;
  }
  if (ch->len == pl) return; /* the anchor */
  const char *topic = ch->str + pl;
  size_t tlen = ch->len - pl;
  if (strcmp(kind, "message") == 0) {
    const redisReply *p = rep->element[2];
    char epoch[RD_EPOCH_MAX];
    const char *json;
    size_t jl;
    mw_event_t *ev = NULL;
    if (p->type != REDIS_REPLY_STRING ||
        rd_split_message(p->str, p->len, epoch, &json, &jl) ||
        host->event_parse(json, jl, epoch[0] ? epoch : NULL, &ev) ||
        strlen(ev->topic) != tlen || memcmp(ev->topic, topic, tlen) != 0) {
      rd_error(g, RD_E_MESSAGE, "pub/sub: a message that is not an event");
      if (ev) host->event_unref(&ev);
      return;
    }
    if (ev->seq == 0) { /* presence: unsequenced, never sent locally first */
      host->fanout(ev);
      host->event_unref(&ev);
      return;
    }
    pthread_mutex_lock(&g->lock);
    rd_topic_t *t = NULL;
    HASH_FIND(hh, g->topics, topic, tlen, t);
    if (!t || rd_order_echo(&t->order, ev->seq, ev->epoch))
      host->fanout(ev); /* else: this node's own, already fanned out */
    pthread_mutex_unlock(&g->lock);
    host->event_unref(&ev);
    return;
  }
  int sub = strcmp(kind, "subscribe") == 0;
  if (!sub && strcmp(kind, "unsubscribe") != 0) {
    rd_error(g, RD_E_REPLY, "pub/sub: unexpected reply '%s'", kind);
    return;
  }
  pthread_mutex_lock(&g->lock);
  rd_topic_t *t = NULL;
  HASH_FIND(hh, g->topics, topic, tlen, t);
  if (t) {
    t->inflight = 0;
    if (sub && t->sent) t->subscribed = 1;
    rd_reconcile(ws, t);
  }
  pthread_mutex_unlock(&g->lock);
}

/* 1 when reads of `topic` may go now: this node does not listen to it, or
 * its SUBSCRIBE is confirmed, or there is no pub/sub connection to wait for. */
static int rd_topic_ready(rd_global_t *g, const char *topic) {
  if (!atomic_load(&g->ps_ready)) return 1;
  pthread_mutex_lock(&g->lock);
  rd_topic_t *t = NULL;
  HASH_FIND_STR(g->topics, topic, t);
  int ready = !t || t->want == 0 || t->subscribed;
  pthread_mutex_unlock(&g->lock);
  return ready;
}

/* --- parked reads ----------------------------------------------------------
 */

static void rd_on_park(uv_timer_t *t) {
  rd_worker_t *ws = t->data;
  uint64_t now = rd_now_ms();
  rd_req_t *todo = NULL, *keep = NULL;
  /* Sort the ready ones out first: a callback may park new reads. */
  while (ws->parked) {
    rd_req_t *r = ws->parked;
    rd_list_del(&ws->parked, r);
    if (rd_topic_ready(ws->g, r->topic) ||
        rd_older(now, r->t0, ws->g->timeout_ms))
      rd_list_add(&todo, r);
    else
      rd_list_add(&keep, r);
  }
  ws->parked = keep;
  if (!ws->parked) uv_timer_stop(&ws->park);
  while (todo) {
    rd_req_t *r = todo;
    rd_list_del(&todo, r);
    r->t0 = 0;
    if (rd_send(r)) rd_fail(r, MW_EUNAVAIL);
  }
}

/* Sends a read now, or parks it until the topic's SUBSCRIBE is confirmed. */
static int rd_send_read(rd_worker_t *ws, rd_req_t *r) {
  if (rd_topic_ready(ws->g, r->topic)) return rd_send(r);
  if (rd_admit(r)) return MW_EUNAVAIL;
  r->t0 = rd_now_ms();
  if (!ws->parked)
    uv_timer_start(&ws->park, rd_on_park, RD_PARK_TICK_MS, RD_PARK_TICK_MS);
  rd_list_add(&ws->parked, r);
  return 0;
}

/* --- storage operations -----------------------------------------------------
 */

static int rd_usable(rd_worker_t *ws) {
  if (!ws || ws->stopping) return MW_ECANCELED;
  return ws->ac ? 0 : MW_EUNAVAIL;
}

static int rd_publish(void *wstate, mw_event_t *draft, mw_store_publish_cb cb,
                      void *ud) {
  rd_worker_t *ws = wstate;
  int rc = rd_usable(ws);
  if (rc) return rc;
  if (!draft || !draft->topic || !draft->name || !cb) return MW_EINVAL;
  rd_global_t *g = ws->g;
  if (!draft->data_json.data) {
    rd_error(g, RD_E_REPLY,
             "the core hands drafts without data_json: this "
             "moonwire is too old for storage_redis");
    return MW_EINVAL;
  }
  /* Without the pub/sub connection nothing would reach this node's
   * subscribers: refuse rather than answer for an event not fanned out. */
  if (!ws->connected || !atomic_load(&g->ps_ready)) return MW_EUNAVAIL;
  rd_buf_t p1 = {0}, p2 = {0}, p3 = {0};
  rd_envelope_parts(draft->topic, draft->name, draft->data_json.data,
                    draft->data_json.len, draft->trace_id, &p1, &p2, &p3);
  size_t kl, hl, cl;
  char *meta = rd_key(g, draft->topic, 'm', &kl);
  char *hist = rd_key(g, draft->topic, 'h', &hl);
  char *chan = rd_channel(g, draft->topic, &cl);
  char size[24], ttl[24], epoch[17];
  snprintf(size, sizeof size, "%zu", g->hist_size);
  snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)g->ttl_ms);
  rd_epoch_candidate(ws, epoch);
  const char *args[] = {meta,    hist, chan, p1.data, p2.data,
                        p3.data, size, ttl,  epoch};
  size_t lens[] = {kl,     hl,           cl,          p1.len, p2.len,
                   p3.len, strlen(size), strlen(ttl), 16};
  rd_req_t *r = rd_req_new(ws, RQ_PUBLISH, RD_S_PUBLISH, 2, 9, args, lens);
  free(meta);
  free(hist);
  free(chan);
  free(p1.data);
  free(p2.data);
  free(p3.data);
  r->draft = draft;
  r->pcb = cb;
  r->ud = ud;
  rc = rd_send(r);
  if (rc) rd_req_free(r); /* the callback never fires */
  return rc;
}

static int rd_read(rd_worker_t *ws, int kind, const char *topic, uint64_t since,
                   size_t limit, rd_req_t **out) {
  rd_global_t *g = ws->g;
  size_t kl, hl;
  char *meta = rd_key(g, topic, 'm', &kl);
  char *hist = rd_key(g, topic, 'h', &hl);
  char s[24], l[24], ttl[24], epoch[17];
  snprintf(s, sizeof s, "%llu", (unsigned long long)since);
  snprintf(l, sizeof l, "%zu", limit);
  snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)g->ttl_ms);
  rd_epoch_candidate(ws, epoch);
  const char *args[] = {meta, hist, s, l, ttl, epoch};
  size_t lens[] = {kl, hl, strlen(s), strlen(l), strlen(ttl), 16};
  rd_req_t *r = rd_req_new(ws, kind, RD_S_READ, 2, 6, args, lens);
  free(meta);
  free(hist);
  r->topic = rd_xstrndup(topic, strlen(topic));
  *out = r;
  return 0;
}

static int rd_position(void *wstate, const char *topic, mw_position_cb cb,
                       void *ud) {
  rd_worker_t *ws = wstate;
  int rc = rd_usable(ws);
  if (rc) return rc;
  if (!topic || !cb) return MW_EINVAL;
  rd_req_t *r;
  rd_read(ws, RQ_POSITION, topic, 0, 0, &r);
  r->poscb = cb;
  r->ud = ud;
  rc = rd_send_read(ws, r);
  if (rc) rd_req_free(r);
  return rc;
}

static int rd_history(void *wstate, const char *topic, uint64_t since,
                      size_t limit, mw_store_history_cb cb, void *ud) {
  rd_worker_t *ws = wstate;
  int rc = rd_usable(ws);
  if (rc) return rc;
  if (!topic || !cb) return MW_EINVAL;
  rd_req_t *r;
  rd_read(ws, RQ_HISTORY, topic, since, limit, &r);
  r->hcb = cb;
  r->ud = ud;
  rc = rd_send_read(ws, r);
  if (rc) rd_req_free(r);
  return rc;
}

static int rd_healthy(void *wstate) {
  rd_worker_t *ws = wstate;
  return ws && !ws->stopping && ws->connected && atomic_load(&ws->g->ps_ready);
}

/* Sends a fire-and-forget presence script. */
static int rd_presence_cmd(rd_worker_t *ws, int script, const char *topic,
                           int nargs, const char *const *extra,
                           const size_t *elens) {
  rd_global_t *g = ws->g;
  size_t pl, ul;
  char *pk = rd_key(g, topic, 'p', &pl);
  char *uk = rd_key(g, topic, 'u', &ul);
  const char *args[5] = {pk, uk};
  size_t lens[5] = {pl, ul};
  for (int i = 0; i < nargs; i++) {
    args[2 + i] = extra[i];
    lens[2 + i] = elens[i];
  }
  rd_req_t *r = rd_req_new(ws, RQ_FIRE, script, 2, 2 + nargs, args, lens);
  free(pk);
  free(uk);
  int rc = rd_send(r);
  if (rc) rd_req_free(r);
  return rc;
}

static int rd_presence_add(void *wstate, const char *topic,
                           const char *client_id, const char *user_id,
                           uint64_t ttl_ms) {
  rd_worker_t *ws = wstate;
  int rc = rd_usable(ws);
  if (rc) return rc;
  if (!topic || !client_id) return MW_EINVAL;
  char ttl[24];
  snprintf(ttl, sizeof ttl, "%llu",
           (unsigned long long)(ttl_ms ? ttl_ms : 60000));
  const char *u = user_id ? user_id : "";
  rd_global_t *g = ws->g;
  size_t pl, ul;
  char *pk = rd_key(g, topic, 'p', &pl);
  char *uk = rd_key(g, topic, 'u', &ul);
  char ik[80];
  size_t il = (size_t)snprintf(ik, sizeof ik, "%stopics", g->prefix);
  const char *args[] = {pk, uk, ik, client_id, u, ttl, topic};
  size_t lens[] = {pl,        ul,          il,           strlen(client_id),
                   strlen(u), strlen(ttl), strlen(topic)};
  rd_req_t *r = rd_req_new(ws, RQ_FIRE, RD_S_PADD, 3, 7, args, lens);
  free(pk);
  free(uk);
  rc = rd_send(r);
  if (rc) rd_req_free(r);
  return rc;
}

static int rd_topics(void *wstate, mw_store_topics_cb cb, void *ud) {
  rd_worker_t *ws = wstate;
  int rc = rd_usable(ws);
  if (rc) return rc;
  if (!cb) return MW_EINVAL;
  rd_global_t *g = ws->g;
  char ik[80];
  size_t il = (size_t)snprintf(ik, sizeof ik, "%stopics", g->prefix);
  const char *args[] = {ik, g->prefix};
  size_t lens[] = {il, strlen(g->prefix)};
  rd_req_t *r = rd_req_new(ws, RQ_TOPICS, RD_S_TOPICS, 1, 2, args, lens);
  r->tcb = cb;
  r->ud = ud;
  rc = rd_send(r);
  if (rc) rd_req_free(r);
  return rc;
}

static int rd_presence_remove(void *wstate, const char *topic,
                              const char *client_id) {
  rd_worker_t *ws = wstate;
  int rc = rd_usable(ws);
  if (rc) return rc;
  if (!topic || !client_id) return MW_EINVAL;
  const char *extra[] = {client_id};
  size_t elens[] = {strlen(client_id)};
  return rd_presence_cmd(ws, RD_S_PREMOVE, topic, 1, extra, elens);
}

static int rd_presence_list(void *wstate, const char *topic,
                            mw_store_presence_cb cb, void *ud) {
  rd_worker_t *ws = wstate;
  int rc = rd_usable(ws);
  if (rc) return rc;
  if (!topic || !cb) return MW_EINVAL;
  rd_global_t *g = ws->g;
  size_t pl, ul;
  char *pk = rd_key(g, topic, 'p', &pl);
  char *uk = rd_key(g, topic, 'u', &ul);
  const char *args[] = {pk, uk};
  size_t lens[] = {pl, ul};
  rd_req_t *r = rd_req_new(ws, RQ_PLIST, RD_S_PLIST, 2, 2, args, lens);
  free(pk);
  free(uk);
  r->topic = rd_xstrndup(topic, strlen(topic));
  r->prcb = cb;
  r->ud = ud;
  rc = rd_send(r);
  if (rc) rd_req_free(r);
  return rc;
}

static int rd_broadcast(void *wstate, mw_event_t *ev) {
  rd_worker_t *ws = wstate;
  int rc = rd_usable(ws);
  if (rc) return rc;
  if (!ev || !ev->topic || !ev->wire[MW_WIRE_JSON].data) return MW_EINVAL;
  if (!ws->connected || !atomic_load(&ws->g->ps_ready)) return MW_EUNAVAIL;
  size_t cl;
  char *chan = rd_channel(ws->g, ev->topic, &cl);
  rd_buf_t msg = {0};
  rd_buf_add(&msg, "- ", 2);
  rd_buf_add(&msg, ev->wire[MW_WIRE_JSON].data, ev->wire[MW_WIRE_JSON].len);
  const char *args[] = {"PUBLISH", chan, msg.data};
  size_t lens[] = {7, cl, msg.len};
  rd_req_t *r = rd_req_new(ws, RQ_FIRE, -1, 0, 3, args, lens);
  free(chan);
  free(msg.data);
  rc = rd_send(r);
  if (rc) rd_req_free(r);
  return rc;
}

static void rd_interest(void *wstate, const char *topic, int on) {
  rd_worker_t *ws = wstate;
  if (!ws || !topic) return; /* after worker_stop: the node is going away */
  rd_global_t *g = ws->g;
  pthread_mutex_lock(&g->lock);
  rd_topic_t *t = NULL;
  HASH_FIND_STR(g->topics, topic, t);
  if (!t) {
    if (!on) {
      pthread_mutex_unlock(&g->lock);
      return;
    }
    t = rd_xcalloc(1, sizeof *t);
    t->name = rd_xstrndup(topic, strlen(topic));
    HASH_ADD_KEYPTR(hh, g->topics, t->name, strlen(t->name), t);
  }
  if (on)
    t->want++;
  else if (t->want > 0)
    t->want--;
  if (!t->dirty) {
    t->dirty = 1;
    t->next_dirty = g->dirty;
    g->dirty = t;
  }
  if (g->ps_async) uv_async_send(g->ps_async);
  pthread_mutex_unlock(&g->lock);
}

/* --- lifecycle ---------------------------------------------------------------
 */

static int rd_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                   void **state) {
  if (!host ||
      host->struct_size < offsetof(mw_host_v1_t, fanout) + sizeof(void *))
    return MW_EABI;
  const char *url = host->config_string("redis", NULL);
  if (!url || !*url) {
    host->log(MW_LOG_ERROR, RD_SUBSYS,
              "--storage redis needs --redis redis://host:port[/db]");
    return MW_EINVAL;
  }
  rd_global_t *g = rd_xcalloc(1, sizeof *g);
  char err[200];
  if (rd_url_parse(url, &g->url, err, sizeof err)) {
    host->log(MW_LOG_ERROR, RD_SUBSYS, "--redis %s: %s", url, err);
    free(g);
    return MW_EINVAL;
  }
  g->host = host;
  int64_t size = host->config_int("history.size", 1000);
  int64_t ttl = host->config_int("history.ttl", 3600);
  int64_t tmo = host->config_int("redis_timeout_ms", 2000);
  g->hist_size = size < 0 ? 0 : (size_t)size;
  g->ttl_ms = ttl <= 0 || ttl > INT64_MAX / 1000 ? 0 : (uint64_t)ttl * 1000u;
  g->timeout_ms = tmo < 10 ? 10 : (uint64_t)tmo;
  /* Not settable through the config file until the core knows the keys;
   * MOONWIRE_REDIS_MAX_PENDING overrides the count (tests). */
  int64_t maxp = host->config_int("redis_max_pending", 4096);
  int64_t maxb = host->config_int("redis_max_pending_bytes", 64 << 20);
  const char *envp = getenv("MOONWIRE_REDIS_MAX_PENDING");
  if (envp && *envp) maxp = strtoll(envp, NULL, 10);
  g->max_pending = maxp <= 0 ? 0 : (size_t)maxp;
  g->max_pending_bytes = maxb <= 0 ? 0 : (size_t)maxb;
  const char *prefix = host->config_string("redis_prefix", "mw:");
  snprintf(g->prefix, sizeof g->prefix, "%s", prefix);
  snprintf(g->chan_prefix, sizeof g->chan_prefix, "%sc%d:", g->prefix,
           g->url.db);
  for (int i = 0; i < RD_S_COUNT; i++) {
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)rd_scripts[i], strlen(rd_scripts[i]), md);
    for (int j = 0; j < SHA_DIGEST_LENGTH; j++)
      snprintf(g->sha[i] + 2 * j, 3, "%02x", md[j]);
  }
  g->nconns = host->worker_count() + 1;
  pthread_mutex_init(&g->lock, NULL);
  g->m_up =
      host->metric(MW_METRIC_GAUGE, "moonwire_redis_up",
                   "1 when every Redis connection of this node is up", NULL);
  g->m_reconnects =
      host->metric(MW_METRIC_COUNTER, "moonwire_redis_reconnects_total",
                   "Redis connections re-established", NULL);
  g->m_commands =
      host->metric(MW_METRIC_COUNTER, "moonwire_redis_commands_total",
                   "Redis commands sent", NULL);
  for (int i = 0; i < RD_E_COUNT; i++) {
    char labels[64];
    snprintf(labels, sizeof labels, "reason=\"%s\"", rd_reason_names[i]);
    g->m_errors[i] =
        host->metric(MW_METRIC_COUNTER, "moonwire_redis_errors_total",
                     i == 0 ? "Redis errors, by reason" : NULL, labels);
  }
  host->log(MW_LOG_INFO, RD_SUBSYS,
            "Redis %s:%d db %d, history size %zu, ttl %llu s, timeout %llu ms",
            g->url.host, g->url.port, g->url.db, g->hist_size,
            (unsigned long long)(g->ttl_ms / 1000),
            (unsigned long long)g->timeout_ms);
  *state = g;
  return 0;
}

static int rd_worker_start(void *state, mw_worker_t *w, void **wstate) {
  rd_global_t *g = state;
  rd_worker_t *ws = rd_xcalloc(1, sizeof *ws);
  ws->g = g;
  ws->w = w;
  ws->loop = g->host->worker_loop(w);
  ws->id = g->host->worker_id(w);
  if (getrandom(&ws->rng, sizeof ws->rng, 0) != (ssize_t)sizeof ws->rng)
    ws->rng = rd_now_ms() ^ ((uint64_t)getpid() << 32);
  ws->rng ^= (uint64_t)ws->id * 0x9E3779B97F4A7C15ull;
  if (!ws->rng) ws->rng = 1;
  uv_timer_init(ws->loop, &ws->retry);
  uv_timer_init(ws->loop, &ws->tick);
  uv_timer_init(ws->loop, &ws->park);
  ws->retry.data = ws->tick.data = ws->park.data = ws;
  ws->open_handles = 3;
  uint64_t every = g->timeout_ms / 4 < 100 ? g->timeout_ms / 4 + 1 : 100;
  uv_timer_start(&ws->tick, rd_on_tick, every, every);
  if (ws->id == 0) {
    ws->has_ps = 1;
    uv_timer_init(ws->loop, &ws->ps_retry);
    ws->ps_retry.data = ws;
    uv_async_init(ws->loop, &ws->ps_async, rd_ps_on_async);
    ws->ps_async.data = ws;
    ws->open_handles += 2;
    pthread_mutex_lock(&g->lock);
    g->ps_async = &ws->ps_async;
    pthread_mutex_unlock(&g->lock);
    rd_ps_connect(ws);
  }
  rd_cmd_connect(ws);
  *wstate = ws;
  return 0;
}

static void rd_on_handle_closed(uv_handle_t *h) {
  rd_worker_t *ws = h->data;
  if (--ws->open_handles == 0) free(ws);
}

static void rd_worker_stop(void *wstate) {
  rd_worker_t *ws = wstate;
  if (!ws) return;
  ws->stopping = 1;
  while (ws->parked) {
    rd_req_t *r = ws->parked;
    rd_list_del(&ws->parked, r);
    rd_fail(r, MW_ECANCELED);
  }
  if (ws->has_ps) {
    rd_global_t *g = ws->g;
    pthread_mutex_lock(&g->lock);
    g->ps_async = NULL;
    pthread_mutex_unlock(&g->lock);
    uv_close((uv_handle_t *)&ws->ps_async, rd_on_handle_closed);
    uv_close((uv_handle_t *)&ws->ps_retry, rd_on_handle_closed);
    redisAsyncContext *ps = ws->ps;
    ws->ps = NULL;
    if (ps) redisAsyncFree(ps);
    if (ws->ps_connected) {
      ws->ps_connected = 0;
      atomic_store(&g->ps_ready, 0);
      rd_conn_down(g);
    }
  }
  rd_cmd_drop(ws); /* pending calls complete with MW_ECANCELED */
  uv_close((uv_handle_t *)&ws->retry, rd_on_handle_closed);
  uv_close((uv_handle_t *)&ws->tick, rd_on_handle_closed);
  uv_close((uv_handle_t *)&ws->park, rd_on_handle_closed);
}

static void rd_destroy(void *state) {
  rd_global_t *g = state;
  if (!g) return;
  rd_topic_t *t, *tmp;
  HASH_ITER(hh, g->topics, t, tmp) {
    HASH_DEL(g->topics, t);
    free(t->name);
    free(t);
  }
  pthread_mutex_destroy(&g->lock);
  free(g);
}

static const mw_storage_v1_t rd_storage = {
    .struct_size = sizeof(mw_storage_v1_t),
    .publish = rd_publish,
    .position = rd_position,
    .history = rd_history,
    .healthy = rd_healthy,
    .presence_add = rd_presence_add,
    .presence_remove = rd_presence_remove,
    .presence_list = rd_presence_list,
    .topics = rd_topics,
    .broadcast = rd_broadcast,
    .interest = rd_interest,
};

/* The plugin's one exported symbol. */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    MW_PLUGIN_V1_HEADER(MW_PLUGIN_STORAGE, "redis", MW_VERSION_STRING),
    .init = rd_init,
    .worker_start = rd_worker_start,
    .worker_stop = rd_worker_stop,
    .destroy = rd_destroy,
    .storage = &rd_storage,
};
