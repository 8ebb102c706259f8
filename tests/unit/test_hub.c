/* Topics, subscriptions, limits and fan-out of one worker's hub (core/hub.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core_fixture.h"
#include "event.h"
#include "hub.h"

typedef struct rec {
  int got;
  uint64_t last_seq;
} rec_t;

static void deliver(mw_client_t *c, mw_event_t *ev, void *ud) {
  rec_t *r = ud;
  r->got++;
  r->last_seq = ev->seq;
}

static mw_event_t *sealed(const char *topic, uint64_t seq) {
  mw_event_t *ev = mw__event_draft(topic, "UPDATED", "t1", NULL);
  assert_int_equal(mw__event_seal(ev, seq, "e1"), 0);
  return ev;
}

static int setup(void **state) {
  core_fixture_t *f = calloc(1, sizeof *f);
  fixture_init(f, NULL);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_done(*state);
  free(*state);
  return 0;
}

static void test_deliver_only_to_subscribers(void **state) {
  core_fixture_t *f = *state;
  rec_t a = {0}, b = {0};
  mw_client_t *ca = mw__client_new(&f->worker, "websocket", deliver, &a);
  mw_client_t *cb = mw__client_new(&f->worker, "websocket", deliver, &b);
  assert_int_equal(mw__subscribe(ca, "room:1"), 0);
  assert_int_equal(mw__subscribe(cb, "room:2"), 0);
  mw_event_t *ev = sealed("room:1", 7);
  mw__hub_deliver(f->worker.hub, ev);
  assert_int_equal(a.got, 1);
  assert_int_equal(a.last_seq, 7);
  assert_int_equal(b.got, 0);
  mw_event_unref(&ev);
  assert_null(ev);
  mw__client_free(&ca);
  mw__client_free(&cb);
  assert_null(ca);
  assert_int_equal(mw__hub_topic_count(f->worker.hub), 0);
}

static void test_subscribe_rules(void **state) {
  core_fixture_t *f = *state;
  rec_t r = {0};
  mw_client_t *c = mw__client_new(&f->worker, "websocket", deliver, &r);
  assert_int_equal(mw__subscribe(c, "t"), 0);
  assert_int_equal(mw__subscribe(c, "t"), MW_EEXIST);
  assert_int_equal(mw__subscribe(c, ""), MW_EINVAL);
  assert_int_equal(mw__subscribe(c, "has space"), MW_EINVAL);
  assert_int_equal(mw__subscribe(c, "a,b"), MW_EINVAL);
  assert_int_equal(mw__subscribe(c, "bad\xff"), MW_EINVAL);
  char longname[300];
  memset(longname, 'x', 299);
  longname[299] = 0;
  assert_int_equal(mw__subscribe(c, longname), MW_EINVAL);
  assert_int_equal(mw__unsubscribe(c, "t"), 0);
  assert_int_equal(mw__unsubscribe(c, "t"), MW_ENOTFOUND);
  assert_int_equal(mw__hub_topic_count(f->worker.hub), 0);
  mw__client_free(&c);
}

static void test_topic_limit_per_client(void **state) {
  core_fixture_t *f = *state;
  rec_t r = {0};
  mw_client_t *c = mw__client_new(&f->worker, "websocket", deliver, &r);
  char name[32];
  for (int i = 0; i < 256; i++) {
    snprintf(name, sizeof name, "topic:%d", i);
    assert_int_equal(mw__subscribe(c, name), 0);
  }
  assert_int_equal(mw__subscribe(c, "one-too-many"), MW_ELIMIT);
  assert_int_equal(mw__hub_topic_count(f->worker.hub), 256);
  mw__client_free(&c);
  assert_int_equal(mw__hub_topic_count(f->worker.hub), 0);
}

static void test_unsubscribe_stops_delivery(void **state) {
  core_fixture_t *f = *state;
  rec_t a = {0}, b = {0};
  mw_client_t *ca = mw__client_new(&f->worker, "websocket", deliver, &a);
  mw_client_t *cb = mw__client_new(&f->worker, "sse", deliver, &b);
  assert_int_equal(mw__subscribe(ca, "t"), 0);
  assert_int_equal(mw__subscribe(cb, "t"), 0);
  mw_event_t *e1 = sealed("t", 1), *e2 = sealed("t", 2);
  mw__hub_deliver(f->worker.hub, e1);
  assert_int_equal(mw__unsubscribe(ca, "t"), 0);
  mw__hub_deliver(f->worker.hub, e2);
  assert_int_equal(a.got, 1);
  assert_int_equal(b.got, 2);
  assert_int_equal(b.last_seq, 2);
  assert_int_equal(mw__hub_topic_count(f->worker.hub), 1);
  mw_event_unref(&e1);
  mw_event_unref(&e2);
  mw__client_free(&ca);
  mw__client_free(&cb);
}

static void test_client_ids_unique(void **state) {
  core_fixture_t *f = *state;
  rec_t r = {0};
  mw_client_t *a = mw__client_new(&f->worker, "websocket", deliver, &r);
  mw_client_t *b = mw__client_new(&f->worker, "websocket", deliver, &r);
  assert_string_not_equal(mw__client_id(a), mw__client_id(b));
  assert_non_null(strstr(mw__client_id(a), "test-0-"));
  mw__client_free(&a);
  mw__client_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_deliver_only_to_subscribers, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_subscribe_rules, setup, teardown),
      cmocka_unit_test_setup_teardown(test_topic_limit_per_client, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_unsubscribe_stops_delivery, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_client_ids_unique, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
