/* Memory storage plugin, driven through a fake host table: seq per topic,
 * bounded rings, TTL expiry (fake clock), fan-out order, seal failures,
 * concurrent publishers, and no leaked references. */
#include "storage_memory.c"

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#include <cmocka.h>

/* --- fake host ----------------------------------------------------------- */

typedef struct fake_event {
  mw_event_t ev;
  atomic_int refs;
} fake_event_t;

static atomic_int live_events;  /* fake events not yet freed */
static int64_t cfg_size = 1000; /* history.size */
static int64_t cfg_ttl = 3600;  /* history.ttl */
static int seal_fails;          /* event_seal returns MW_EUNAVAIL */
static uint64_t fake_ms;        /* the fake clock */

#define FANOUT_MAX 40000
static uint64_t fanout_seq[FANOUT_MAX];
static const char *fanout_topic[FANOUT_MAX];
static atomic_size_t fanout_n;

static void fake_log(int level, const char *subsystem, const char *fmt, ...) {
  (void)level;
  (void)subsystem;
  (void)fmt;
}

static int64_t fake_config_int(const char *key, int64_t def) {
  if (strcmp(key, "history.size") == 0) return cfg_size;
  if (strcmp(key, "history.ttl") == 0) return cfg_ttl;
  return def;
}

static mw_event_t *fake_ref(mw_event_t *ev) {
  atomic_fetch_add(&((fake_event_t *)ev)->refs, 1);
  return ev;
}

static void fake_unref(mw_event_t **ev) {
  fake_event_t *f = (fake_event_t *)*ev;

  *ev = NULL;
  if (f != NULL && atomic_fetch_sub(&f->refs, 1) == 1) {
    free((char *)f->ev.topic);
    free(f);
    atomic_fetch_sub(&live_events, 1);
  }
}

static int fake_seal(mw_event_t *ev, uint64_t seq, const char *epoch) {
  if (seal_fails) return MW_EUNAVAIL;
  assert_int_equal(ev->seq, 0); /* sealed once */
  ev->seq = seq;
  ev->epoch = epoch;
  return 0;
}

static void fake_fanout(mw_event_t *ev) {
  size_t i = atomic_fetch_add(&fanout_n, 1);

  if (i < FANOUT_MAX) {
    fanout_seq[i] = ev->seq;
    fanout_topic[i] = ev->topic;
  }
}

static uint64_t fake_now(void) {
  return fake_ms;
}

static mw_host_v1_t host = {
    .struct_size = sizeof(mw_host_v1_t),
    .log = fake_log,
    .config_int = fake_config_int,
    .event_ref = fake_ref,
    .event_unref = fake_unref,
    .event_seal = fake_seal,
    .fanout = fake_fanout,
};

static mw_event_t *draft(const char *topic) {
  fake_event_t *f = calloc(1, sizeof *f);

  assert_non_null(f);
  f->ev.topic = strdup(topic);
  f->ev.name = "UPDATED";
  atomic_init(&f->refs, 1);
  atomic_fetch_add(&live_events, 1);
  return &f->ev;
}

/* --- helpers ---------------------------------------------------------------
 */

typedef struct fixture {
  void *state;
  void *wstate;
} fixture_t;

static int setup(void **ctx) {
  fixture_t *fx = calloc(1, sizeof *fx);

  atomic_store(&fanout_n, 0);
  seal_fails = 0;
  fake_ms = 1000000;
  mem_now_ms = fake_now;
  assert_int_equal(mw_plugin_v1.init(&host, NULL, &fx->state), 0);
  assert_int_equal(mw_plugin_v1.worker_start(fx->state, NULL, &fx->wstate), 0);
  *ctx = fx;
  return 0;
}

static int teardown(void **ctx) {
  fixture_t *fx = *ctx;

  mw_plugin_v1.worker_stop(fx->wstate);
  mw_plugin_v1.destroy(fx->state);
  free(fx);
  /* Every reference the plugin took was dropped. */
  assert_int_equal(atomic_load(&live_events), 0);
  cfg_size = 1000;
  cfg_ttl = 3600;
  mem_now_ms = mem_clock_ms;
  return 0;
}

typedef struct pub_result {
  int calls;
  int status;
  uint64_t seq;
} pub_result_t;

static void pub_cb(int status, mw_event_t *sealed, void *ud) {
  pub_result_t *r = ud;

  r->calls++;
  r->status = status;
  r->seq = sealed ? sealed->seq : 0;
}

/* Publishes one event and returns its seq (asserting success). */
static uint64_t publish(fixture_t *fx, const char *topic) {
  const mw_storage_v1_t *s = mw_plugin_v1.storage;
  pub_result_t r = {0};
  mw_event_t *ev = draft(topic);

  assert_int_equal(s->publish(fx->wstate, ev, pub_cb, &r), 0);
  assert_int_equal(r.calls, 1); /* synchronous */
  assert_int_equal(r.status, 0);
  assert_int_equal(r.seq, ev->seq);
  fake_unref(&ev);
  return r.seq;
}

static void pos_cb(int status, uint64_t seq, const char *epoch, void *ud) {
  uint64_t *out = ud;

  assert_int_equal(status, 0);
  assert_non_null(epoch);
  *out = seq;
}

static uint64_t position(fixture_t *fx, const char *topic) {
  uint64_t seq = UINT64_MAX;

  assert_int_equal(
      mw_plugin_v1.storage->position(fx->wstate, topic, pos_cb, &seq), 0);
  assert_int_not_equal(seq, UINT64_MAX);
  return seq;
}

typedef struct hist_result {
  int calls;
  uint64_t seqs[64];
  size_t n;
  uint64_t top;
  int complete;
  const char *epoch;
} hist_result_t;

static void hist_cb(int status, mw_event_t *const *events, size_t n,
                    uint64_t top_seq, const char *epoch, int complete,
                    void *ud) {
  hist_result_t *r = ud;
  size_t i;

  assert_int_equal(status, 0);
  r->calls++;
  r->n = n;
  r->top = top_seq;
  r->complete = complete;
  r->epoch = epoch;
  for (i = 0; i < n && i < 64; i++) {
    r->seqs[i] = events[i]->seq;
    /* Held by the ring and by the borrowed array. */
    assert_true(atomic_load(&((fake_event_t *)events[i])->refs) >= 2);
  }
}

static hist_result_t history(fixture_t *fx, const char *topic, uint64_t since,
                             size_t limit) {
  hist_result_t r = {0};

  assert_int_equal(mw_plugin_v1.storage->history(fx->wstate, topic, since,
                                                 limit, hist_cb, &r),
                   0);
  assert_int_equal(r.calls, 1);
  return r;
}

/* Asserts that the history holds exactly seqs first..last. */
static void assert_range(const hist_result_t *r, uint64_t first,
                         uint64_t last) {
  size_t i;

  assert_int_equal(r->n, last - first + 1);
  for (i = 0; i < r->n; i++)
    assert_int_equal(r->seqs[i], first + i);
}

/* --- tests -----------------------------------------------------------------
 */

static void test_plugin_struct(void **ctx) {
  fixture_t *fx = *ctx;
  size_t i;

  assert_int_equal(mw_plugin_v1.abi_major, MW_ABI_MAJOR);
  assert_int_equal(mw_plugin_v1.kind, MW_PLUGIN_STORAGE);
  assert_string_equal(mw_plugin_v1.name, "memory");
  assert_int_equal(mw_plugin_v1.storage->healthy(fx->wstate), 1);
  /* The epoch: 16 hex characters. */
  assert_int_equal(strlen(((mem_state_t *)fx->state)->epoch), 16);
  for (i = 0; i < 16; i++)
    assert_non_null(
        strchr("0123456789abcdef", ((mem_state_t *)fx->state)->epoch[i]));
}

static void test_epoch_differs(void **ctx) {
  fixture_t *fx = *ctx;
  void *other = NULL;

  assert_int_equal(mw_plugin_v1.init(&host, NULL, &other), 0);
  assert_string_not_equal(((mem_state_t *)fx->state)->epoch,
                          ((mem_state_t *)other)->epoch);
  mw_plugin_v1.destroy(other);
}

static void test_seq_per_topic(void **ctx) {
  fixture_t *fx = *ctx;
  hist_result_t r;

  assert_int_equal(position(fx, "a"), 0);
  assert_int_equal(publish(fx, "a"), 1);
  assert_int_equal(publish(fx, "a"), 2);
  assert_int_equal(publish(fx, "b"), 1);
  assert_int_equal(publish(fx, "a"), 3);
  assert_int_equal(publish(fx, "b"), 2);
  assert_int_equal(position(fx, "a"), 3);
  assert_int_equal(position(fx, "b"), 2);
  assert_int_equal(position(fx, "c"), 0);

  r = history(fx, "a", 0, 100);
  assert_range(&r, 1, 3);
  assert_int_equal(r.top, 3);
  assert_int_equal(r.complete, 1);
  assert_string_equal(r.epoch, ((mem_state_t *)fx->state)->epoch);

  r = history(fx, "unknown", 0, 100);
  assert_int_equal(r.n, 0);
  assert_int_equal(r.top, 0);
  assert_int_equal(r.complete, 1);
}

static void test_ring_bound(void **ctx) {
  fixture_t *fx;
  hist_result_t r;
  int i;

  teardown(ctx);
  cfg_size = 3;
  setup(ctx);
  fx = *ctx;
  for (i = 1; i <= 5; i++)
    assert_int_equal(publish(fx, "t"), i);

  r = history(fx, "t", 0, 100);
  assert_range(&r, 3, 5);
  assert_int_equal(r.top, 5);
  assert_int_equal(r.complete, 0); /* 1 and 2 are gone */

  r = history(fx, "t", 1, 100);
  assert_range(&r, 3, 5);
  assert_int_equal(r.complete, 0); /* 2 is gone */

  r = history(fx, "t", 2, 100);
  assert_range(&r, 3, 5);
  assert_int_equal(r.complete, 1);

  r = history(fx, "t", 4, 100);
  assert_range(&r, 5, 5);
  assert_int_equal(r.complete, 1);

  r = history(fx, "t", 5, 100);
  assert_int_equal(r.n, 0);
  assert_int_equal(r.complete, 1);

  r = history(fx, "t", 9, 100); /* ahead of the topic */
  assert_int_equal(r.n, 0);
  assert_int_equal(r.complete, 1);

  /* The limit cuts the list, not completeness. */
  r = history(fx, "t", 2, 2);
  assert_range(&r, 3, 4);
  assert_int_equal(r.complete, 1);
  r = history(fx, "t", 0, 1);
  assert_range(&r, 3, 3);
  assert_int_equal(r.complete, 0);
}

static void test_ring_growth(void **ctx) {
  fixture_t *fx = *ctx;
  hist_result_t r;
  int i;

  /* Past the initial ring, the history keeps every event up to its cap. */
  for (i = 1; i <= 50; i++)
    publish(fx, "g");
  r = history(fx, "g", 0, 1000);
  assert_int_equal(r.n, 50);
  assert_int_equal(r.seqs[0], 1);
  assert_int_equal(r.seqs[49], 50);
  assert_int_equal(r.complete, 1);
  r = history(fx, "g", 40, 5);
  assert_range(&r, 41, 45);
}

static void test_no_history(void **ctx) {
  fixture_t *fx;
  hist_result_t r;

  teardown(ctx);
  cfg_size = 0;
  setup(ctx);
  fx = *ctx;
  assert_int_equal(publish(fx, "t"), 1);
  assert_int_equal(publish(fx, "t"), 2);
  r = history(fx, "t", 0, 100);
  assert_int_equal(r.n, 0);
  assert_int_equal(r.top, 2);
  assert_int_equal(r.complete, 0);
  r = history(fx, "t", 2, 100);
  assert_int_equal(r.complete, 1);
}

static void test_ttl(void **ctx) {
  fixture_t *fx;
  hist_result_t r;

  teardown(ctx);
  cfg_ttl = 10; /* seconds */
  setup(ctx);
  fx = *ctx;
  publish(fx, "t"); /* 1 at t0 */
  publish(fx, "t"); /* 2 at t0 */
  fake_ms += 6000;
  publish(fx, "t"); /* 3 at t0+6s */

  fake_ms += 4000; /* t0+10s: nothing older than the ttl yet */
  r = history(fx, "t", 0, 100);
  assert_range(&r, 1, 3);
  assert_int_equal(r.complete, 1);

  fake_ms += 1; /* 1 and 2 are now older than 10 s */
  r = history(fx, "t", 0, 100);
  assert_range(&r, 3, 3);
  assert_int_equal(r.complete, 0);
  r = history(fx, "t", 2, 100);
  assert_range(&r, 3, 3);
  assert_int_equal(r.complete, 1);

  fake_ms += 6000; /* everything expired */
  r = history(fx, "t", 0, 100);
  assert_int_equal(r.n, 0);
  assert_int_equal(r.top, 3);
  assert_int_equal(r.complete, 0);
  r = history(fx, "t", 3, 100);
  assert_int_equal(r.complete, 1);

  /* The topic keeps its seq after its history expired. */
  assert_int_equal(position(fx, "t"), 3);
  assert_int_equal(publish(fx, "t"), 4);
  r = history(fx, "t", 3, 100);
  assert_range(&r, 4, 4);
  assert_int_equal(r.complete, 1);
}

/* Topics nobody touches any more: publishes elsewhere sweep their expired
 * events away and free their rings; each keeps its seq. */
static void test_sweep_untouched_topics(void **ctx) {
  fixture_t *fx;
  char name[16];
  int i;

  teardown(ctx);
  cfg_ttl = 10; /* seconds */
  setup(ctx);
  fx = *ctx;
  for (i = 0; i < 100; i++) {
    snprintf(name, sizeof name, "s%d", i);
    publish(fx, name);
  }
  assert_int_equal(atomic_load(&live_events), 100);
  fake_ms += 11000; /* all 100 expired, none read */
  /* 60 publishes sweep 120 topics: all 101 once. */
  for (i = 0; i < 60; i++)
    publish(fx, "busy");
  assert_int_equal(atomic_load(&live_events), 60); /* busy's own, in ttl */
  mem_state_t *st = fx->wstate;
  for (i = 0; i < 100; i++) {
    snprintf(name, sizeof name, "s%d", i);
    mem_topic_t *t = mem_find(st, name);
    assert_non_null(t);
    assert_null(t->ring);
    assert_int_equal(t->len, 0);
  }
  assert_non_null(mem_find(st, "busy")->ring);
  /* Their seqs go on. */
  assert_int_equal(position(fx, "s7"), 1);
  assert_int_equal(publish(fx, "s7"), 2);
  hist_result_t r = history(fx, "s7", 1, 100);
  assert_range(&r, 2, 2);
  assert_int_equal(r.complete, 1);
}

static void test_fanout_order(void **ctx) {
  fixture_t *fx = *ctx;
  size_t i;

  for (i = 0; i < 10; i++)
    publish(fx, i % 2 ? "odd" : "even");
  assert_int_equal(atomic_load(&fanout_n), 10);
  for (i = 0; i < 10; i++) {
    assert_string_equal(fanout_topic[i], i % 2 ? "odd" : "even");
    assert_int_equal(fanout_seq[i], i / 2 + 1);
  }
}

static void test_seal_failure(void **ctx) {
  fixture_t *fx = *ctx;
  pub_result_t r = {0};
  mw_event_t *ev;

  assert_int_equal(publish(fx, "t"), 1);
  seal_fails = 1;
  ev = draft("t");
  assert_int_equal(mw_plugin_v1.storage->publish(fx->wstate, ev, pub_cb, &r),
                   MW_EUNAVAIL);
  assert_int_equal(r.calls, 0);
  assert_int_equal(ev->seq, 0);
  assert_int_equal(atomic_load(&((fake_event_t *)ev)->refs), 1);
  fake_unref(&ev);
  /* Also on a topic's first publish. */
  ev = draft("fresh");
  assert_int_equal(mw_plugin_v1.storage->publish(fx->wstate, ev, pub_cb, &r),
                   MW_EUNAVAIL);
  assert_int_equal(r.calls, 0);
  fake_unref(&ev);
  assert_int_equal(atomic_load(&fanout_n), 1);
  assert_int_equal(position(fx, "t"), 1);
  assert_int_equal(position(fx, "fresh"), 0);

  seal_fails = 0;
  assert_int_equal(publish(fx, "t"), 2);
  assert_int_equal(publish(fx, "fresh"), 1);
}

#define PER_THREAD 10000

typedef struct worker_arg {
  fixture_t *fx;
  uint64_t seqs[PER_THREAD];
  int errors;
} worker_arg_t;

static void thread_cb(int status, mw_event_t *sealed, void *ud) {
  uint64_t *out = ud;

  *out = status == 0 ? sealed->seq : 0;
}

static void *publisher(void *p) {
  worker_arg_t *a = p;
  int i;

  for (i = 0; i < PER_THREAD; i++) {
    mw_event_t *ev = draft("shared");

    if (mw_plugin_v1.storage->publish(a->fx->wstate, ev, thread_cb,
                                      &a->seqs[i]) != 0)
      a->errors++;
    fake_unref(&ev);
  }
  return NULL;
}

static void test_two_threads(void **ctx) {
  fixture_t *fx;
  static worker_arg_t a, b;
  static unsigned char seen[2 * PER_THREAD + 1];
  pthread_t ta, tb;
  hist_result_t r;
  size_t i;

  teardown(ctx);
  cfg_size = 100;
  setup(ctx);
  fx = *ctx;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  memset(seen, 0, sizeof seen);
  a.fx = b.fx = fx;
  assert_int_equal(pthread_create(&ta, NULL, publisher, &a), 0);
  assert_int_equal(pthread_create(&tb, NULL, publisher, &b), 0);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  assert_int_equal(a.errors + b.errors, 0);

  /* Every seq 1..20000 exactly once, each thread's in increasing order. */
  for (i = 0; i < PER_THREAD; i++) {
    assert_true(a.seqs[i] >= 1 && a.seqs[i] <= 2 * PER_THREAD);
    assert_true(b.seqs[i] >= 1 && b.seqs[i] <= 2 * PER_THREAD);
    assert_int_equal(seen[a.seqs[i]]++, 0);
    assert_int_equal(seen[b.seqs[i]]++, 0);
    if (i > 0) {
      assert_true(a.seqs[i] > a.seqs[i - 1]);
      assert_true(b.seqs[i] > b.seqs[i - 1]);
    }
  }
  /* Fan-out saw them in seq order, no gap, no duplicate. */
  assert_int_equal(atomic_load(&fanout_n), 2 * PER_THREAD);
  for (i = 0; i < 2 * PER_THREAD; i++)
    assert_int_equal(fanout_seq[i], i + 1);
  assert_int_equal(position(fx, "shared"), 2 * PER_THREAD);
  r = history(fx, "shared", 2 * PER_THREAD - 64, 64);
  assert_range(&r, 2 * PER_THREAD - 63, 2 * PER_THREAD);
  assert_int_equal(r.complete, 1);
}

static void test_destroy_with_events(void **ctx) {
  fixture_t *fx = *ctx;
  int i;

  /* Many topics with held events: teardown checks all are released. */
  for (i = 0; i < 200; i++) {
    char topic[32];

    snprintf(topic, sizeof topic, "topic:%d", i % 37);
    publish(fx, topic);
  }
  assert_true(atomic_load(&live_events) > 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_plugin_struct, setup, teardown),
      cmocka_unit_test_setup_teardown(test_epoch_differs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_seq_per_topic, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ring_bound, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ring_growth, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_history, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ttl, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sweep_untouched_topics, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_fanout_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_seal_failure, setup, teardown),
      cmocka_unit_test_setup_teardown(test_two_threads, setup, teardown),
      cmocka_unit_test_setup_teardown(test_destroy_with_events, setup,
                                      teardown),
  };

  return cmocka_run_group_tests(tests, NULL, NULL);
}
