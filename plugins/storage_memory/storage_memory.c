/* Memory storage: a single node, bounded history rings per topic.
 *
 * One global state shared by every worker and protected by one mutex. Per
 * topic: the last seq and a ring of event references with their publish time
 * (history.size entries at most, allocated lazily and grown up to that cap).
 * Expired events (older than history.ttl) are dropped when the topic is
 * published to or read, and by a sweep that every publish carries on over
 * two other topics (round robin), so that the history of a topic nobody
 * touches any more is released too: it then keeps only its name and seq.
 * Every call completes synchronously: the callback fires before the call
 * returns.
 *
 * The epoch is 16 random hex characters drawn at init: a restart loses the
 * history, so positions from the previous process cannot be recovered. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <uthash.h>

#include "moonwire/plugin.h"

#define MEM_SUBSYS "storage_memory"
#define MEM_RING_INITIAL 4
#define MEM_SWEEP_PER_PUBLISH 2

typedef struct mem_slot {
  mw_event_t *ev; /* one reference */
  uint64_t t_ms;  /* publish time, CLOCK_MONOTONIC ms */
} mem_slot_t;

typedef struct mem_topic {
  char *name;       /* owned; the hash key */
  uint64_t seq;     /* last assigned seq; 0 before the first publish */
  mem_slot_t *ring; /* cap slots; NULL until the first stored event */
  size_t cap;
  size_t head; /* index of the oldest retained event */
  size_t len;  /* retained events: seqs seq-len+1 .. seq */
  UT_hash_handle hh;
} mem_topic_t;

/* Presence: who is subscribed to a topic, each entry with an expiry. */
typedef struct mem_member {
  char *client_id; /* owned; the hash key */
  char *user_id;
  uint64_t expires_ms;
  UT_hash_handle hh;
} mem_member_t;

typedef struct mem_room {
  char *name; /* owned; the hash key */
  mem_member_t *members;
  UT_hash_handle hh;
} mem_room_t;

typedef struct mem_state {
  const mw_host_v1_t *host;
  pthread_mutex_t lock; /* guards everything below */
  mem_topic_t *topics;  /* uthash head */
  mem_topic_t *sweep;   /* the next topic the sweep looks at; NULL: first */
  mem_room_t *rooms;    /* presence, uthash head */
  size_t max_len;       /* history.size */
  uint64_t ttl_ms;      /* history.ttl in ms; 0: no time limit */
  char epoch[17];
} mem_state_t;

static uint64_t mem_clock_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The clock; tests replace it to drive TTL expiry. */
static uint64_t (*mem_now_ms)(void) = mem_clock_ms;

static void mem_make_epoch(char out[17]) {
  static const char hex[] = "0123456789abcdef";
  unsigned char rnd[8];
  ssize_t got = getrandom(rnd, sizeof rnd, 0);
  size_t i;

  if (got != (ssize_t)sizeof rnd) {
    /* No getrandom (old kernel): time and pid still differ per start. */
    struct timespec ts;
    uint64_t x;

    clock_gettime(CLOCK_REALTIME, &ts);
    x = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^
        ((uint64_t)getpid() << 32) ^ mem_clock_ms();
    memcpy(rnd, &x, sizeof rnd);
  }
  for (i = 0; i < sizeof rnd; i++) {
    out[2 * i] = hex[rnd[i] >> 4];
    out[2 * i + 1] = hex[rnd[i] & 15];
  }
  out[16] = '\0';
}

static mem_slot_t *mem_slot(mem_topic_t *t, size_t i) {
  return &t->ring[(t->head + i) % t->cap];
}

static void mem_drop_oldest(mem_state_t *st, mem_topic_t *t) {
  mem_slot_t *s = mem_slot(t, 0);

  st->host->event_unref(&s->ev);
  t->head = (t->head + 1) % t->cap;
  t->len--;
}

/* Drops the events of `t` older than the TTL (they are the oldest ones). */
static void mem_expire(mem_state_t *st, mem_topic_t *t, uint64_t now) {
  if (st->ttl_ms == 0) return;
  while (t->len > 0 && now - mem_slot(t, 0)->t_ms > st->ttl_ms)
    mem_drop_oldest(st, t);
}

/* Frees the ring of a topic whose history is empty. */
static void mem_release_empty(mem_topic_t *t) {
  if (t->len > 0 || t->ring == NULL) return;
  free(t->ring);
  t->ring = NULL;
  t->cap = 0;
  t->head = 0;
}

/* Expires the history of up to `n` topics other than `skip`, round robin
 * over every topic (topics are never removed, so the cursor stays valid),
 * and frees the rings that emptied. */
static void mem_sweep(mem_state_t *st, const mem_topic_t *skip, uint64_t now,
                      int n) {
  if (st->ttl_ms == 0) return;
  while (n-- > 0) {
    mem_topic_t *t = st->sweep ? st->sweep : st->topics;

    if (t == NULL) return;
    st->sweep = t->hh.next;
    if (t == skip) continue;
    mem_expire(st, t, now);
    mem_release_empty(t);
  }
}

/* Makes room for one more event: grows the ring up to max_len, else drops
 * the oldest. Returns 0 if nothing can be stored (max_len 0, or no memory
 * for the first slots: the event then only counts in seq). */
static int mem_make_room(mem_state_t *st, mem_topic_t *t) {
  if (st->max_len == 0) return 0;
  if (t->len == t->cap && t->cap < st->max_len) {
    size_t ncap = t->cap ? t->cap * 2 : MEM_RING_INITIAL;
    mem_slot_t *nr;
    size_t i;

    if (ncap > st->max_len) ncap = st->max_len;
    nr = malloc(ncap * sizeof *nr);
    if (nr != NULL) {
      for (i = 0; i < t->len; i++)
        nr[i] = *mem_slot(t, i);
      free(t->ring);
      t->ring = nr;
      t->cap = ncap;
      t->head = 0;
    } else if (t->cap == 0) {
      return 0;
    }
  }
  if (t->len == t->cap) mem_drop_oldest(st, t);
  return 1;
}

static mem_topic_t *mem_find(mem_state_t *st, const char *topic) {
  mem_topic_t *t = NULL;

  HASH_FIND_STR(st->topics, topic, t);
  return t;
}

static int mem_publish(void *wstate, mw_event_t *draft, mw_store_publish_cb cb,
                       void *ud) {
  mem_state_t *st = wstate;
  const mw_host_v1_t *host = st->host;
  mem_topic_t *t;
  uint64_t seq, now;
  int rc;

  if (draft == NULL || draft->topic == NULL) return MW_EINVAL;
  pthread_mutex_lock(&st->lock);
  t = mem_find(st, draft->topic);
  if (t == NULL) {
    t = calloc(1, sizeof *t);
    if (t == NULL || (t->name = strdup(draft->topic)) == NULL) {
      free(t);
      pthread_mutex_unlock(&st->lock);
      return MW_ENOMEM;
    }
    HASH_ADD_KEYPTR(hh, st->topics, t->name, strlen(t->name), t);
  }
  now = mem_now_ms();
  mem_expire(st, t, now);

  /* A topic keeps its seq forever, even once its history is empty: a seq
   * must never restart within an epoch, or a client's position would point
   * at different events. */
  seq = t->seq + 1;
  rc = host->event_seal(draft, seq, st->epoch);
  if (rc != 0) {
    pthread_mutex_unlock(&st->lock);
    return rc; /* seq not advanced, cb never fires */
  }
  t->seq = seq;
  if (mem_make_room(st, t)) {
    mem_slot_t *s = mem_slot(t, t->len);

    s->ev = host->event_ref(draft);
    s->t_ms = now;
    t->len++;
  }
  /* Fan out while still holding the lock: when two workers publish to one
   * topic concurrently, this is what makes every worker receive the events
   * in seq order (host->fanout must be called in seq order, and must not
   * call back into this storage synchronously). */
  host->fanout(draft);
  mem_sweep(st, t, now, MEM_SWEEP_PER_PUBLISH);
  pthread_mutex_unlock(&st->lock);

  /* Memory completes synchronously: cb fires before publish returns. */
  if (cb != NULL) cb(0, draft, ud);
  return 0;
}

static int mem_position(void *wstate, const char *topic, mw_position_cb cb,
                        void *ud) {
  mem_state_t *st = wstate;
  mem_topic_t *t;
  uint64_t seq = 0;

  if (topic == NULL || cb == NULL) return MW_EINVAL;
  pthread_mutex_lock(&st->lock);
  t = mem_find(st, topic);
  if (t != NULL) seq = t->seq;
  pthread_mutex_unlock(&st->lock);
  /* Synchronous, like every memory call. */
  cb(0, seq, st->epoch, ud);
  return 0;
}

static int mem_history(void *wstate, const char *topic, uint64_t since,
                       size_t limit, mw_store_history_cb cb, void *ud) {
  mem_state_t *st = wstate;
  const mw_host_v1_t *host = st->host;
  mw_event_t *stackbuf[32];
  mw_event_t **evs = stackbuf;
  size_t n = 0, start = 0, i;
  uint64_t top = 0, first;
  int complete = 1;
  mem_topic_t *t;

  if (topic == NULL || cb == NULL) return MW_EINVAL;
  pthread_mutex_lock(&st->lock);
  t = mem_find(st, topic);
  if (t != NULL) {
    mem_expire(st, t, mem_now_ms());
    mem_release_empty(t);
    top = t->seq;
    if (since < top) {
      /* Retained seqs are contiguous: top-len+1 .. top. */
      first = top - t->len + 1;
      complete = t->len > 0 && first <= since + 1;
      if (since >= first) start = (size_t)(since - first + 1);
      n = t->len - start;
      if (n > limit) n = limit;
      if (n > sizeof stackbuf / sizeof stackbuf[0]) {
        evs = malloc(n * sizeof *evs);
        if (evs == NULL) {
          pthread_mutex_unlock(&st->lock);
          return MW_ENOMEM;
        }
      }
      /* References keep the events alive after the lock is released. */
      for (i = 0; i < n; i++)
        evs[i] = host->event_ref(mem_slot(t, start + i)->ev);
    }
  }
  pthread_mutex_unlock(&st->lock);

  /* Synchronous; the array is borrowed by cb and released after it. */
  cb(0, evs, n, top, st->epoch, complete, ud);
  for (i = 0; i < n; i++)
    host->event_unref(&evs[i]);
  if (evs != stackbuf) free(evs);
  return 0;
}

static int mem_healthy(void *wstate) {
  return 1;
}

static int mem_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                    void **state) {
  mem_state_t *st;
  int64_t size, ttl;

  if (host == NULL ||
      host->struct_size < offsetof(mw_host_v1_t, fanout) + sizeof(void *))
    return MW_EABI;
  st = calloc(1, sizeof *st);
  if (st == NULL) return MW_ENOMEM;
  st->host = host;
  size = host->config_int("history.size", 1000);
  ttl = host->config_int("history.ttl", 3600);
  if (size < 0) size = 0;
  if ((uint64_t)size > SIZE_MAX / sizeof(mem_slot_t) / 2)
    size = (int64_t)(SIZE_MAX / sizeof(mem_slot_t) / 2);
  st->max_len = (size_t)size;
  /* ttl <= 0: no time limit, only the size bounds the history. */
  st->ttl_ms = ttl <= 0 || ttl > INT64_MAX / 1000 ? 0 : (uint64_t)ttl * 1000u;
  mem_make_epoch(st->epoch);
  if (pthread_mutex_init(&st->lock, NULL) != 0) {
    free(st);
    return MW_ENOMEM;
  }
  host->log(MW_LOG_INFO, MEM_SUBSYS, "epoch %s, history size %zu, ttl %lld s",
            st->epoch, st->max_len, (long long)(st->ttl_ms / 1000));
  *state = st;
  return 0;
}

/* Every worker shares the global state. */
static int mem_worker_start(void *state, mw_worker_t *w, void **wstate) {
  *wstate = state;
  return 0;
}

static void mem_worker_stop(void *wstate) {}

/* --- presence ----------------------------------------------------------- */

static void mem_member_free(mem_room_t *r, mem_member_t *m) {
  HASH_DEL(r->members, m);
  free(m->client_id);
  free(m->user_id);
  free(m);
}

static void mem_room_free_if_empty(mem_state_t *st, mem_room_t *r) {
  if (r->members) return;
  HASH_DEL(st->rooms, r);
  free(r->name);
  free(r);
}

/* Drops the expired members of a room. */
static void mem_room_expire(mem_room_t *r, uint64_t now) {
  mem_member_t *m, *tmp;
  HASH_ITER(hh, r->members, m, tmp) {
    if (m->expires_ms <= now) mem_member_free(r, m);
  }
}

static int mem_presence_add(void *wstate, const char *topic,
                            const char *client_id, const char *user_id,
                            uint64_t ttl_ms) {
  mem_state_t *st = wstate;
  pthread_mutex_lock(&st->lock);
  mem_room_t *r;
  HASH_FIND_STR(st->rooms, topic, r);
  if (!r) {
    r = calloc(1, sizeof *r);
    if (!r || !(r->name = strdup(topic))) {
      free(r);
      pthread_mutex_unlock(&st->lock);
      return MW_ENOMEM;
    }
    HASH_ADD_KEYPTR(hh, st->rooms, r->name, strlen(r->name), r);
  }
  mem_member_t *m;
  HASH_FIND_STR(r->members, client_id, m);
  if (!m) {
    m = calloc(1, sizeof *m);
    if (!m || !(m->client_id = strdup(client_id)) ||
        !(m->user_id = strdup(user_id ? user_id : ""))) {
      if (m) free(m->client_id);
      free(m);
      mem_room_free_if_empty(st, r);
      pthread_mutex_unlock(&st->lock);
      return MW_ENOMEM;
    }
    HASH_ADD_KEYPTR(hh, r->members, m->client_id, strlen(m->client_id), m);
  }
  m->expires_ms = mem_now_ms() + ttl_ms;
  pthread_mutex_unlock(&st->lock);
  return 0;
}

static int mem_presence_remove(void *wstate, const char *topic,
                               const char *client_id) {
  mem_state_t *st = wstate;
  pthread_mutex_lock(&st->lock);
  mem_room_t *r;
  HASH_FIND_STR(st->rooms, topic, r);
  if (r) {
    mem_member_t *m;
    HASH_FIND_STR(r->members, client_id, m);
    if (m) mem_member_free(r, m);
    mem_room_free_if_empty(st, r);
  }
  pthread_mutex_unlock(&st->lock);
  return 0;
}

/* Completes synchronously, like every memory call. */
static int mem_presence_list(void *wstate, const char *topic,
                             mw_store_presence_cb cb, void *ud) {
  mem_state_t *st = wstate;
  pthread_mutex_lock(&st->lock);
  mem_room_t *r;
  HASH_FIND_STR(st->rooms, topic, r);
  size_t n = 0;
  mw_presence_entry_t *list = NULL;
  if (r) {
    mem_room_expire(r, mem_now_ms());
    n = HASH_COUNT(r->members);
    list = calloc(n ? n : 1, sizeof *list);
    if (!list) {
      pthread_mutex_unlock(&st->lock);
      return MW_ENOMEM;
    }
    size_t i = 0;
    for (mem_member_t *m = r->members; m; m = m->hh.next, i++) {
      /* Copies: the callback runs after the lock is released. */
      list[i].client_id = strdup(m->client_id);
      list[i].user_id = strdup(m->user_id);
    }
    mem_room_free_if_empty(st, r);
  }
  pthread_mutex_unlock(&st->lock);
  int ok = 1;
  for (size_t i = 0; i < n; i++)
    if (!list[i].client_id || !list[i].user_id) ok = 0;
  if (ok)
    cb(0, list, n, ud);
  else
    cb(MW_ENOMEM, NULL, 0, ud);
  for (size_t i = 0; i < n; i++) {
    free((char *)list[i].client_id);
    free((char *)list[i].user_id);
  }
  free(list);
  return 0;
}

/* Topics with live presence entries (every subscription of this node). */
static int mem_topics(void *wstate, mw_store_topics_cb cb, void *ud) {
  mem_state_t *st = wstate;
  pthread_mutex_lock(&st->lock);
  uint64_t now = mem_now_ms();
  size_t n = 0, cap = HASH_COUNT(st->rooms);
  char **names = calloc(cap ? cap : 1, sizeof *names);
  uint64_t *counts = calloc(cap ? cap : 1, sizeof *counts);
  int ok = names && counts;
  mem_room_t *r, *tmp;
  HASH_ITER(hh, st->rooms, r, tmp) {
    if (!ok) break;
    mem_room_expire(r, now);
    size_t members = HASH_COUNT(r->members);
    if (members) {
      names[n] = strdup(r->name);
      if (!names[n]) ok = 0;
      counts[n++] = members;
    }
    mem_room_free_if_empty(st, r);
  }
  pthread_mutex_unlock(&st->lock);
  if (ok)
    cb(0, (const char *const *)names, counts, n, ud);
  else
    cb(MW_ENOMEM, NULL, NULL, 0, ud);
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  free(counts);
  return 0;
}

/* A single node: broadcasting is fanning out here. */
static int mem_broadcast(void *wstate, mw_event_t *ev) {
  mem_state_t *st = wstate;
  st->host->fanout(ev);
  return 0;
}

static void mem_destroy(void *state) {
  mem_state_t *st = state;
  mem_topic_t *t, *tmp;

  if (st == NULL) return;
  mem_room_t *r, *rtmp;
  HASH_ITER(hh, st->rooms, r, rtmp) {
    while (r->members)
      mem_member_free(r, r->members);
    HASH_DEL(st->rooms, r);
    free(r->name);
    free(r);
  }
  HASH_ITER(hh, st->topics, t, tmp) {
    HASH_DEL(st->topics, t);
    while (t->len > 0)
      mem_drop_oldest(st, t);
    free(t->ring);
    free(t->name);
    free(t);
  }
  pthread_mutex_destroy(&st->lock);
  free(st);
}

static const mw_storage_v1_t mem_storage = {
    .struct_size = sizeof(mw_storage_v1_t),
    .publish = mem_publish,
    .position = mem_position,
    .history = mem_history,
    .healthy = mem_healthy,
    .presence_add = mem_presence_add,
    .presence_remove = mem_presence_remove,
    .presence_list = mem_presence_list,
    .broadcast = mem_broadcast,
    .topics = mem_topics,
};

/* The plugin's one exported symbol. */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    MW_PLUGIN_V1_HEADER(MW_PLUGIN_STORAGE, "memory", MW_VERSION_STRING),
    .init = mem_init,
    .worker_start = mem_worker_start,
    .worker_stop = mem_worker_stop,
    .destroy = mem_destroy,
    .storage = &mem_storage,
};
