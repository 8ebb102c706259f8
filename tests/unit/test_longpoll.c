/* Unit tests of the long-poll transport: scripted requests through the fake
 * host (tests/unit/fake_host.c) with a real uv loop for the timers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "cursor.h"
#include "fake_host.h"

extern const mw_plugin_v1_t mw_plugin_v1;

static uv_loop_t loop;
static void *g_state, *g_wstate;

static int setup(void **st) {
  if (uv_loop_init(&loop) != 0) return -1;
  fake_host_init(&loop);
  if (mw_plugin_v1.init(fake_host(), fake_plugin_handle(), &g_state) != 0)
    return -1;
  return mw_plugin_v1.worker_start(g_state, fake_worker(), &g_wstate);
}

static int teardown(void **st) {
  mw_plugin_v1.worker_stop(g_wstate);
  mw_plugin_v1.destroy(g_state);
  uv_run(&loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&loop);
  int clients = fake.clients_live, refs = fake.event_refs;
  int64_t waiting = fake_metric_value("moonwire_longpoll_waiting", NULL);
  fake_host_reset();
  assert_int_equal(rc, 0);
  assert_int_equal(clients, 0);
  assert_int_equal(refs, 0);
  assert_int_equal(waiting, 0);
  return 0;
}

/* --- helpers -------------------------------------------------------------- */

static mw_http_request_t *get_poll(const char *topics, const char *cursor,
                                   const char *timeout,
                                   const char *const *headers) {
  mw_http_request_t *r = fake_request_new("GET", "/poll", headers);
  if (topics) fake_request_query(r, "topics", topics);
  if (cursor) fake_request_query(r, "cursor", cursor);
  if (timeout) fake_request_query(r, "timeout", timeout);
  assert_int_equal(fake_route_call("GET", "/poll", r, g_wstate), 0);
  return r;
}

static void expect_error(mw_http_request_t *r, int status, const char *needle) {
  assert_int_equal(r->responded, 1);
  assert_int_equal(r->status, status);
  json_t *j = json_loads(r->body, 0, NULL);
  assert_non_null(j);
  const char *e = json_string_value(json_object_get(j, "error"));
  assert_non_null(e);
  if (needle && !strstr(e, needle))
    fail_msg("error '%s' lacks '%s'", e, needle);
  json_decref(j);
}

static void on_deadline(uv_timer_t *t) {
  *(int *)t->data = 1;
}

/* Runs the loop until `r` is answered or `ms` passed; returns the time. */
static uint64_t run_until_answered(mw_http_request_t *r, uint64_t ms) {
  uv_timer_t deadline;
  int expired = 0;
  uv_timer_init(&loop, &deadline);
  deadline.data = &expired;
  uv_timer_start(&deadline, on_deadline, ms, 0);
  uint64_t t0 = uv_now(&loop);
  while (!expired && !r->responded)
    uv_run(&loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&deadline, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  return uv_now(&loop) - t0;
}

typedef struct tev {
  mw_event_t ev;
  char json[256];
} tev_t;

static void mk_event(tev_t *t, const char *topic, uint64_t seq,
                     const char *epoch) {
  memset(t, 0, sizeof *t);
  snprintf(t->json, sizeof t->json,
           "{\"type\":\"event\",\"topic\":\"%s\",\"seq\":%llu}", topic,
           (unsigned long long)seq);
  t->ev.topic = topic;
  t->ev.name = "UPDATED";
  t->ev.epoch = epoch;
  t->ev.seq = seq;
  t->ev.wire[MW_WIRE_JSON].data = t->json;
  t->ev.wire[MW_WIRE_JSON].len = strlen(t->json);
}

/* The positions of an answer's cursor. */
static json_t *answer_positions(const json_t *body) {
  const char *c = json_string_value(json_object_get(body, "cursor"));
  assert_non_null(c);
  json_t *pos = mw_cursor_decode(c);
  assert_non_null(pos);
  return pos;
}

static void expect_pos(const json_t *pos, const char *topic, int seq,
                       const char *epoch) {
  json_t *v = json_object_get(pos, topic);
  if (!v) fail_msg("no position for %s", topic);
  assert_int_equal(json_integer_value(json_array_get(v, 0)), seq);
  assert_string_equal(json_string_value(json_array_get(v, 1)), epoch);
}

/* --- bad requests --------------------------------------------------------- */

static void test_bad_requests_400(void **st) {
  const char *timeouts[] = {"abc", "-1", "121", "1.5", "", "1000", " 1", NULL};
  for (int i = 0; timeouts[i]; i++)
    expect_error(get_poll("a", NULL, timeouts[i], NULL), 400, "timeout");
  expect_error(get_poll(NULL, NULL, NULL, NULL), 400, "missing topics");
  expect_error(get_poll("a,,b", NULL, NULL, NULL), 400, NULL);
  expect_error(get_poll("a b", NULL, NULL, NULL), 400, "invalid topic");
  expect_error(get_poll("a", "%%%", NULL, NULL), 400, "malformed cursor");
  char *big = malloc(10000 * 7);
  size_t o = 0;
  for (int i = 0; i < 10000; i++)
    o += (size_t)sprintf(big + o, "%st%d", i ? "," : "", i);
  expect_error(get_poll(big, NULL, NULL, NULL), 400, "too many topics");
  free(big);
  assert_int_equal(fake.clients_live, 0);
  assert_int_equal(fake_calls("subscribe", NULL), 0);
}

static void test_cors_and_connect(void **st) {
  fake.cors_deny = 1;
  expect_error(get_poll("a", NULL, NULL, NULL), 403, "origin");
  fake.cors_deny = 0;
  fake.connect_status = MW_EDENIED;
  fake.connect_code = 401;
  fake.connect_reason = "token expired";
  mw_http_request_t *r = get_poll("a", NULL, NULL, NULL);
  expect_error(r, 401, "token expired");
  assert_non_null(strstr(r->extra_headers, "WWW-Authenticate: Bearer"));
  assert_int_equal(fake.clients_live, 0);
}

static void test_subscribe_refused(void **st) {
  fake.subscribe_deny = "secret";
  fake.subscribe_deny_code = 403;
  fake.subscribe_deny_reason = "not yours";
  mw_http_request_t *r = get_poll("open,secret", NULL, NULL, NULL);
  expect_error(r, 403, "not yours");
  json_t *j = json_loads(r->body, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(j, "topic")), "secret");
  json_decref(j);
  assert_int_equal(fake.clients_live, 0);
}

/* --- answers -------------------------------------------------------------- */

static void test_answer_on_event(void **st) {
  fake.position_seq = 4;
  fake.cors_headers = "Access-Control-Allow-Origin: http://localhost:3000\r\n";
  mw_http_request_t *r = get_poll("a,b", NULL, NULL, NULL);
  assert_int_equal(r->responded, 0);
  assert_int_equal(fake.clients_live, 1);
  assert_int_equal(fake_metric_value("moonwire_longpoll_waiting", NULL), 1);
  tev_t e5, e6;
  mk_event(&e5, "a", 5, "e1");
  mk_event(&e6, "a", 6, "e1");
  fake_hub_deliver("a", &e5.ev);
  fake_hub_deliver("a", &e6.ev);
  assert_int_equal(r->responded, 0); /* the coalescing pause */
  uint64_t dt = run_until_answered(r, 2000);
  assert_true(dt < 500);
  assert_int_equal(r->status, 200);
  assert_string_equal(r->content_type, "application/json");
  assert_non_null(strstr(r->extra_headers, "Access-Control-Allow-Origin"));
  /* The events are the shared wire bytes, joined. */
  char want[600];
  snprintf(want, sizeof want, "{\"events\":[%s,%s],\"cursor\":\"", e5.json,
           e6.json);
  assert_memory_equal(r->body, want, strlen(want));
  json_t *body = json_loads(r->body, 0, NULL);
  assert_non_null(body);
  assert_int_equal(json_object_size(body), 2);
  json_t *pos = answer_positions(body);
  expect_pos(pos, "a", 6, "e1");
  expect_pos(pos, "b", 4, "e1"); /* nothing new: its position at the start */
  json_decref(pos);
  json_decref(body);
  assert_int_equal(fake.clients_live, 0);
  assert_string_equal(fake.disconnect_reason, "closed");
  assert_int_equal(fake.event_refs, 0);
  assert_int_equal(fake_metric_value("moonwire_longpoll_responses_total", NULL),
                   1);
}

static void test_answer_on_timeout(void **st) {
  fake.position_seq = 9;
  mw_http_request_t *r = get_poll("a", NULL, "1", NULL);
  assert_int_equal(r->responded, 0);
  uint64_t dt = run_until_answered(r, 3000);
  assert_int_equal(r->status, 200);
  assert_true(dt >= 900 && dt <= 2000);
  json_t *body = json_loads(r->body, 0, NULL);
  assert_int_equal(json_array_size(json_object_get(body, "events")), 0);
  json_t *pos = answer_positions(body);
  expect_pos(pos, "a", 9, "e1");
  json_decref(pos);
  json_decref(body);
}

static void test_cursor_replay(void **st) {
  fake.position_seq = 7;
  fake.recover_recovered = 1;
  tev_t e[4];
  mw_event_t *replay[4];
  for (int i = 0; i < 4; i++) {
    mk_event(&e[i], "a", (uint64_t)i + 4, "e1");
    replay[i] = &e[i].ev;
  }
  fake.recover_replay = replay;
  fake.recover_nreplay = 4;
  json_t *o = json_pack("{s:[is]}", "a", 3, "e1");
  char *cur = mw_cursor_encode(o);
  json_decref(o);
  mw_http_request_t *r = get_poll("a,b", cur, "30", NULL);
  free(cur);
  assert_int_equal(fake.recover_since, 3);
  run_until_answered(r, 2000);
  assert_int_equal(r->status, 200);
  json_t *body = json_loads(r->body, 0, NULL);
  json_t *evs = json_object_get(body, "events");
  assert_int_equal(json_array_size(evs), 4);
  for (int i = 0; i < 4; i++)
    assert_int_equal(
        json_integer_value(json_object_get(json_array_get(evs, i), "seq")),
        i + 4);
  json_t *pos = answer_positions(body);
  expect_pos(pos, "a", 7, "e1");
  expect_pos(pos, "b", 7, "e1");
  json_decref(pos);
  json_decref(body);
}

static void test_not_recovered(void **st) {
  fake.position_seq = 50;
  fake.position_epoch = "e2";
  fake.recover_recovered = 0;
  json_t *o = json_pack("{s:[is]}", "a", 3, "e1");
  char *cur = mw_cursor_encode(o);
  json_decref(o);
  mw_http_request_t *r = get_poll("a", cur, "30", NULL);
  free(cur);
  uint64_t dt = run_until_answered(r, 2000);
  assert_true(dt < 500); /* told at once */
  json_t *body = json_loads(r->body, 0, NULL);
  assert_true(json_is_false(json_object_get(body, "recovered")));
  json_t *un = json_object_get(body, "unrecovered");
  assert_int_equal(json_array_size(un), 1);
  assert_string_equal(json_string_value(json_array_get(un, 0)), "a");
  json_t *pos = answer_positions(body);
  expect_pos(pos, "a", 50, "e2");
  json_decref(pos);
  json_decref(body);
}

static void test_abort_frees_everything(void **st) {
  mw_http_request_t *r = get_poll("a,b", NULL, "60", NULL);
  tev_t e;
  mk_event(&e, "a", 1, "e1");
  fake_hub_deliver("a", &e.ev);
  assert_int_equal(fake.event_refs, 1);
  fake_request_abort(r); /* before the coalescing pause ends */
  assert_int_equal(fake.clients_live, 0);
  assert_int_equal(fake.event_refs, 0);
  assert_int_equal(fake_metric_value("moonwire_longpoll_waiting", NULL), 0);
  uv_run(&loop, UV_RUN_NOWAIT);
  assert_int_equal(r->responded, 0);
}

static void test_cap(void **st) {
  mw_http_request_t *r = get_poll("a,b", NULL, "60", NULL);
  static tev_t e[1005];
  tev_t eb;
  for (int i = 0; i < 1005; i++) {
    mk_event(&e[i], "a", (uint64_t)i + 1, "e1");
    fake_hub_deliver("a", &e[i].ev);
  }
  mk_event(&eb, "b", 3, "e1");
  fake_hub_deliver("b", &eb.ev); /* after the cap: left out too */
  assert_int_equal(fake.event_refs, 1000);
  run_until_answered(r, 2000);
  json_t *body = json_loads(r->body, 0, NULL);
  assert_non_null(body);
  assert_int_equal(json_array_size(json_object_get(body, "events")), 1000);
  json_t *pos = answer_positions(body);
  expect_pos(pos, "a", 1000, "e1"); /* right after the last included */
  expect_pos(pos, "b", 2, "e1");
  json_decref(pos);
  json_decref(body);
}

static void test_drain(void **st) {
  mw_http_request_t *r = get_poll("a", NULL, "60", NULL);
  tev_t e;
  mk_event(&e, "a", 1, "e1");
  fake_hub_deliver("a", &e.ev);
  mw_plugin_v1.worker_drain(g_wstate);
  assert_int_equal(r->responded, 1); /* at once, with what it had */
  json_t *body = json_loads(r->body, 0, NULL);
  assert_int_equal(json_array_size(json_object_get(body, "events")), 1);
  json_decref(body);
  expect_error(get_poll("a", NULL, NULL, NULL), 503, "shutting down");
}

static void test_kick(void **st) {
  mw_http_request_t *r = get_poll("a", NULL, "60", NULL);
  mw_client_t *cl = fake_last_client();
  assert_non_null(cl->kick);
  cl->kick(cl, "bye", cl->ud);
  assert_int_equal(r->responded, 0); /* not inside the core's walk */
  assert_int_equal(fake.clients_live, 1);
  run_until_answered(r, 2000);
  assert_int_equal(r->status, 200);
  json_t *body = json_loads(r->body, 0, NULL);
  assert_true(json_is_true(json_object_get(body, "disconnected")));
  assert_string_equal(json_string_value(json_object_get(body, "reason")),
                      "bye");
  json_decref(body);
  assert_int_equal(fake.clients_live, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_bad_requests_400, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cors_and_connect, setup, teardown),
      cmocka_unit_test_setup_teardown(test_subscribe_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_answer_on_event, setup, teardown),
      cmocka_unit_test_setup_teardown(test_answer_on_timeout, setup, teardown),
      cmocka_unit_test_setup_teardown(test_cursor_replay, setup, teardown),
      cmocka_unit_test_setup_teardown(test_not_recovered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_abort_frees_everything, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_cap, setup, teardown),
      cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
      cmocka_unit_test_setup_teardown(test_kick, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
