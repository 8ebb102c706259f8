/* Publish admission control (core/publish.c): the decision, the measures it
 * takes from every worker, the configuration keys, and what a refused
 * publish does (nothing stored, MW_EUNAVAIL with the overload reason,
 * counted). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "config.h"
#include "log.h"
#include "metrics.h"
#include "publish.h"
#include "server.h"

static void test_decide(void **state) {
  mw_admission_limits_t off = {0, 0};
  assert_int_equal(mw__admission_decide(&off, UINT64_MAX, UINT64_MAX),
                   MW_ADMIT_OK);
  mw_admission_limits_t lim = {1000, 100};
  assert_int_equal(mw__admission_decide(&lim, 0, 0), MW_ADMIT_OK);
  assert_int_equal(mw__admission_decide(&lim, 1000, 100), MW_ADMIT_OK);
  assert_int_equal(mw__admission_decide(&lim, 1001, 0), MW_ADMIT_BACKLOG);
  assert_int_equal(mw__admission_decide(&lim, 0, 101), MW_ADMIT_LAG);
  assert_int_equal(mw__admission_decide(&lim, 5000, 5000), MW_ADMIT_BACKLOG);
  mw_admission_limits_t bytes_only = {1000, 0};
  assert_int_equal(mw__admission_decide(&bytes_only, 10, 1000000), MW_ADMIT_OK);
  mw_admission_limits_t lag_only = {0, 100};
  assert_int_equal(mw__admission_decide(&lag_only, UINT64_MAX, 5), MW_ADMIT_OK);
}

static void test_config_defaults(void **state) {
  mw_config_t cfg;
  char err[256];
  char *argv[] = {"moonwire"};
  assert_int_equal(mw__config_load(&cfg, 1, argv, err, sizeof err),
                   MW_CONFIG_RUN);
  assert_int_equal(mw__config_int(&cfg, "limits.publish_backlog", 0), 16 << 20);
  assert_int_equal(mw__config_int(&cfg, "limits.publish_lag_ms", 0), 1000);
  mw__config_free(&cfg);
}

/* Two workers as the server sees them; only the admission fields matter. */
typedef struct two {
  mw_config_t cfg;
  mw_server_t server;
  mw_worker_t workers[2];
} two_t;

static two_t *two_setup(const char *backlog, const char *lag) {
  static two_t t;
  memset(&t, 0, sizeof t);
  char err[256];
  char *argv[] = {"moonwire"};
  assert_int_equal(mw__config_load(&t.cfg, 1, argv, err, sizeof err),
                   MW_CONFIG_RUN);
  mw__config_set(&t.cfg, "limits.publish_backlog", backlog);
  mw__config_set(&t.cfg, "limits.publish_lag_ms", lag);
  mw__log_setup(MW_LOG_ERROR, 0);
  t.server.cfg = &t.cfg;
  t.server.nworkers = 2;
  t.server.workers = t.workers;
  for (unsigned i = 0; i < 2; i++) {
    t.workers[i].id = i;
    t.workers[i].server = &t.server;
  }
  mw__server_install(&t.server);
  mw__publish_metrics_init();
  mw__publish_admission_init(&t.cfg);
  return &t;
}

static void two_done(two_t *t) {
  mw__config_free(&t->cfg);
  mw__server_install(NULL);
  mw__publish_admission_init(&t->cfg); /* no limits: admit all */
}

static int64_t rejected(void) {
  return mw__metric_value(mw__metric(MW_METRIC_COUNTER,
                                     "moonwire_rejected_total", NULL,
                                     "reason=\"overload\""));
}

static void test_admit_backlog(void **state) {
  two_t *t = two_setup("1000", "0");
  mw_worker_t *a = &t->workers[0], *b = &t->workers[1];
  int64_t r0 = rejected();
  assert_int_equal(mw__publish_admit(a), 0);
  /* Its own queue counts live. */
  a->outbound_bytes = 1001;
  assert_int_equal(mw__publish_admit(a), MW_EUNAVAIL);
  assert_int_equal(rejected(), r0 + 1);
  a->outbound_bytes = 1000;
  assert_int_equal(mw__publish_admit(a), 0);
  /* Another worker's counts as of its last loop turn (the atomic), not its
   * private counter. */
  a->outbound_bytes = 0;
  b->outbound_bytes = 5000;
  assert_int_equal(mw__publish_admit(a), 0);
  atomic_store(&b->backlog_bytes, 5000);
  assert_int_equal(mw__publish_admit(a), MW_EUNAVAIL);
  assert_int_equal(mw__publish_admit(b), MW_EUNAVAIL);
  atomic_store(&b->backlog_bytes, 0);
  b->outbound_bytes = 0;
  /* Events accepted but not fanned out count at their recent cost. */
  atomic_store(&b->inbox_depth, 10);
  atomic_store(&b->event_cost, 100);
  assert_int_equal(mw__publish_admit(a), 0); /* 1000: not above */
  atomic_store(&b->inbox_depth, 11);
  assert_int_equal(mw__publish_admit(a), MW_EUNAVAIL);
  assert_int_equal(rejected(), r0 + 4);
  two_done(t);
}

/* Before its first batch a worker has no measured cost per event: its own
 * connections x 128 bytes stand in, so the first burst is counted. */
static void test_admit_first_burst(void **state) {
  (void)state;
  two_t *t = two_setup("1280000", "0");
  mw_worker_t *a = &t->workers[0];
  a->conn_count = 1000;              /* 128,000 bytes per event assumed */
  atomic_store(&a->inbox_depth, 10); /* 1,280,000: not above */
  assert_int_equal(mw__publish_admit(a), 0);
  atomic_store(&a->inbox_depth, 11);
  assert_int_equal(mw__publish_admit(a), MW_EUNAVAIL);
  /* once measured, the measured cost counts instead */
  atomic_store(&a->event_cost, 100);
  assert_int_equal(mw__publish_admit(a), 0);
  atomic_store(&a->inbox_depth, 0);
  a->conn_count = 0;
  two_done(t);
}

static void test_admit_lag(void **state) {
  two_t *t = two_setup("0", "100");
  mw_worker_t *a = &t->workers[0], *b = &t->workers[1];
  uint64_t now = mw__now_ms();
  assert_true(now > 10000); /* uptime in ms; far from 0 on any test box */
  assert_int_equal(mw__publish_admit(a), 0);
  /* An event posted to b 50 ms ago and not fanned out: in time. */
  atomic_store(&b->lag_since_ms, now - 50);
  assert_int_equal(mw__publish_admit(a), 0);
  /* 500 ms ago: too late. */
  atomic_store(&b->lag_since_ms, now - 500);
  assert_int_equal(mw__publish_admit(a), MW_EUNAVAIL);
  atomic_store(&b->lag_since_ms, 0);
  /* The last batch waited 300 ms and went out just now: still refused... */
  atomic_store(&b->batch_lag_ms, 300);
  atomic_store(&b->batch_done_ms, mw__now_ms());
  assert_int_equal(mw__publish_admit(a), MW_EUNAVAIL);
  /* ...but not for longer than that wait lasted. */
  atomic_store(&b->batch_done_ms, now - 301);
  assert_int_equal(mw__publish_admit(a), 0);
  two_done(t);
}

typedef struct answer {
  int calls, status;
  const char *reason;
} answer_t;

static void on_answer(int status, const mw_event_t *ev, const char *reason,
                      void *ud) {
  answer_t *a = ud;
  a->calls++;
  a->status = status;
  a->reason = reason;
  assert_null(ev);
}

static void test_publish_refused_stores_nothing(void **state) {
  two_t *t = two_setup("10", "0");
  /* No storage is installed: a publish that got past admission would
   * crash here. */
  t->workers[0].outbound_bytes = 11;
  answer_t ans = {0, 0, NULL};
  assert_int_equal(mw__publish_json(&t->workers[0], "t", "E", NULL, NULL, NULL,
                                    on_answer, &ans),
                   0);
  assert_int_equal(ans.calls, 1);
  assert_int_equal(ans.status, MW_EUNAVAIL);
  assert_ptr_equal(ans.reason, mw__publish_overload_reason);
  assert_int_equal(mw__publish_http_status(ans.status), 503);
  mw_publish_req_t req = {
      .topic = "t", .event = "E", .data_json = "{", .data_len = 1};
  memset(&ans, 0, sizeof ans);
  /* The host-table form refuses before parsing (the data is malformed). */
  assert_int_equal(mw__publish(&t->workers[0], &req, NULL, on_answer, &ans), 0);
  assert_int_equal(ans.calls, 1);
  assert_int_equal(ans.status, MW_EUNAVAIL);
  two_done(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_decide),
      cmocka_unit_test(test_config_defaults),
      cmocka_unit_test(test_admit_backlog),
      cmocka_unit_test(test_admit_first_burst),
      cmocka_unit_test(test_admit_lag),
      cmocka_unit_test(test_publish_refused_stores_nothing),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  mw__metrics_free();
  return rc;
}
