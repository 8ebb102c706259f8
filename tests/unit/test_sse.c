/* Unit tests of the SSE transport: scripted requests through the fake host
 * (tests/unit/fake_host.c), no sockets; the heartbeat with a real uv loop. */
#define _GNU_SOURCE /* memmem */
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

#define HEAD                                                                   \
  "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"                     \
  "Cache-Control: no-cache\r\nConnection: keep-alive\r\n"                      \
  "X-Accel-Buffering: no\r\n"

static uv_loop_t loop;
static void *g_state, *g_wstate;

/* --- fixtures ------------------------------------------------------------- */

static int start(int64_t heartbeat) {
  if (uv_loop_init(&loop) != 0) return -1;
  fake_host_init(&loop);
  if (heartbeat >= 0) fake_config_set("limits.sse_heartbeat", heartbeat);
  if (mw_plugin_v1.init(fake_host(), fake_plugin_handle(), &g_state) != 0)
    return -1;
  return mw_plugin_v1.worker_start(g_state, fake_worker(), &g_wstate);
}

static int setup(void **st) {
  return start(-1);
}

static int teardown(void **st) {
  fake_host_close_all();
  mw_plugin_v1.worker_stop(g_wstate);
  mw_plugin_v1.destroy(g_state);
  uv_run(&loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&loop);
  int clients = fake.clients_live;
  int64_t streams = fake_metric_value("moonwire_sse_streams", NULL);
  fake_host_reset();
  assert_int_equal(rc, 0);
  assert_int_equal(clients, 0);
  assert_int_equal(streams, 0);
  return 0;
}

/* --- helpers -------------------------------------------------------------- */

/* GET /sse with `topics` (NULL: none), `since` (NULL: none) and headers. */
static mw_http_request_t *get_sse(const char *topics, const char *since,
                                  const char *const *headers) {
  mw_http_request_t *r = fake_request_new("GET", "/sse", headers);
  if (topics) fake_request_query(r, "topics", topics);
  if (since) fake_request_query(r, "since", since);
  assert_int_equal(fake_route_call("GET", "/sse", r, g_wstate), 0);
  return r;
}

static void expect_error(mw_http_request_t *r, int status, const char *needle) {
  assert_int_equal(r->responded, 1);
  assert_null(r->taken);
  assert_int_equal(r->status, status);
  assert_string_equal(r->content_type, "application/json");
  json_t *j = json_loads(r->body, 0, NULL);
  assert_non_null(j);
  const char *e = json_string_value(json_object_get(j, "error"));
  assert_non_null(e);
  if (needle && !strstr(e, needle))
    fail_msg("error '%s' lacks '%s'", e, needle);
  json_decref(j);
}

/* A sealed-looking event with its JSON wire form. */
typedef struct tev {
  mw_event_t ev;
  char json[256];
} tev_t;

static void mk_event(tev_t *t, const char *topic, uint64_t seq,
                     const char *epoch) {
  memset(t, 0, sizeof *t);
  snprintf(t->json, sizeof t->json,
           "{\"type\":\"event\",\"topic\":\"%s\",\"event\":\"UPDATED\","
           "\"seq\":%llu,\"id\":\"%s:%llu\",\"data\":{}}",
           topic, (unsigned long long)seq, topic, (unsigned long long)seq);
  t->ev.topic = topic;
  t->ev.name = "UPDATED";
  t->ev.trace_id = "t";
  t->ev.epoch = epoch;
  t->ev.seq = seq;
  t->ev.wire[MW_WIRE_JSON].data = t->json;
  t->ev.wire[MW_WIRE_JSON].len = strlen(t->json);
}

/* The cursor of `n` (topic, seq, epoch) triples. */
static char *cursor_of(int n, ...) {
  va_list ap;
  va_start(ap, n);
  json_t *o = json_object();
  for (int i = 0; i < n; i++) {
    const char *t = va_arg(ap, const char *);
    int seq = va_arg(ap, int);
    const char *e = va_arg(ap, const char *);
    json_object_set_new(o, t, json_pack("[is]", seq, e));
  }
  va_end(ap);
  char *c = mw_cursor_encode(o);
  json_decref(o);
  assert_non_null(c);
  return c;
}

/* Expects `s` next in what the connection got (advances the read cursor). */
static void expect_out(mw_conn_t *c, const char *s) {
  size_t n = strlen(s);
  size_t have = c->len - c->read_off;
  if (have < n || memcmp(c->out + c->read_off, s, n) != 0)
    fail_msg("expected \"%s\" at %zu, got \"%.*s\"", s, c->read_off, (int)have,
             c->out + c->read_off);
  c->read_off += n;
}

static void expect_id_block(mw_conn_t *c, const char *cursor) {
  char buf[1024];
  snprintf(buf, sizeof buf, "id: %s\n\n", cursor);
  expect_out(c, buf);
}

static void expect_event(mw_conn_t *c, const char *cursor, const tev_t *t) {
  char buf[1024];
  snprintf(buf, sizeof buf, "id: %s\ndata: %s\n\n", cursor, t->json);
  expect_out(c, buf);
}

static void expect_nothing_more(mw_conn_t *c) {
  if (c->len != c->read_off)
    fail_msg("unexpected output: \"%.*s\"", (int)(c->len - c->read_off),
             c->out + c->read_off);
}

/* --- bad requests --------------------------------------------------------- */

static void test_bad_topics_400(void **st) {
  const char *cases[] = {"",          "a,,b",    ",a",      "a,",
                         "has space", "ctl\x01", "bad\xff", NULL};
  for (int i = 0; cases[i]; i++) {
    mw_http_request_t *r = get_sse(cases[i], NULL, NULL);
    expect_error(r, 400, NULL);
  }
  expect_error(get_sse(NULL, NULL, NULL), 400, "missing topics");
  char longname[300];
  memset(longname, 'x', 257);
  longname[257] = 0;
  expect_error(get_sse(longname, NULL, NULL), 400, "invalid topic");
  assert_int_equal(fake.clients_live, 0);
  assert_int_equal(fake_metric_value("moonwire_sse_rejected_total",
                                     "reason=\"bad_request\""),
                   9);
}

static char *many_topics(int n, int distinct) {
  char *s = malloc((size_t)n * 8 + 1);
  size_t o = 0;
  for (int i = 0; i < n; i++)
    o += (size_t)sprintf(s + o, "%st%d", i ? "," : "", distinct ? i : 0);
  return s;
}

static void test_too_many_topics_400(void **st) {
  char *t10k = many_topics(10000, 1);
  expect_error(get_sse(t10k, NULL, NULL), 400, "too many topics");
  free(t10k);
  char *t257 = many_topics(257, 1);
  expect_error(get_sse(t257, NULL, NULL), 400, "too many topics");
  free(t257);
  assert_int_equal(fake_calls("subscribe", NULL), 0);
  /* 256 distinct are fine (the fake hub holds 64: check the parse only). */
  fake.max_topics = 1000;
  char *dups = many_topics(300, 0); /* 300 times "t0": one topic */
  mw_http_request_t *r = get_sse(dups, NULL, NULL);
  free(dups);
  assert_non_null(r->taken);
  assert_int_equal(fake_calls("subscribe", "t0"), 1);
}

static void test_duplicates_ignored(void **st) {
  mw_http_request_t *r = get_sse("a,b,a,b,a", NULL, NULL);
  assert_non_null(r->taken);
  assert_int_equal(fake_calls("subscribe", "a"), 1);
  assert_int_equal(fake_calls("subscribe", "b"), 1);
}

static void test_malformed_cursor_400(void **st) {
  expect_error(get_sse("a", "not*base64", NULL), 400, "malformed cursor");
  const char *h[] = {"last-event-id", "eyJ0IjpbNSwiZTEiXX0=", NULL};
  expect_error(get_sse("a", NULL, h), 400, "malformed cursor");
  const char *h2[] = {"last-event-id", "e30x", NULL};
  expect_error(get_sse("a", NULL, h2), 400, "malformed cursor");
  assert_int_equal(fake.clients_live, 0);
}

static void test_cors_denied_403(void **st) {
  fake.cors_deny = 1;
  const char *h[] = {"origin", "http://evil.example", NULL};
  expect_error(get_sse("a", NULL, h), 403, "origin");
  assert_int_equal(fake.clients_live, 0);
}

static void test_connect_refused(void **st) {
  fake.connect_status = MW_EDENIED;
  fake.connect_code = 401;
  fake.connect_reason = "bad token";
  fake.cors_headers = "Access-Control-Allow-Origin: http://localhost:3000\r\n";
  mw_http_request_t *r = get_sse("a", NULL, NULL);
  expect_error(r, 401, "bad token");
  assert_non_null(strstr(r->extra_headers, "WWW-Authenticate: Bearer\r\n"));
  assert_non_null(strstr(r->extra_headers, "Access-Control-Allow-Origin"));
  assert_int_equal(fake.clients_live, 0);

  fake.connect_status = MW_ELIMIT;
  fake.connect_code = 429;
  fake.connect_reason = "too many connections for this user";
  r = get_sse("a", NULL, NULL);
  expect_error(r, 429, "too many connections");
  assert_null(strstr(r->extra_headers, "WWW-Authenticate"));
  assert_int_equal(fake_calls("subscribe", NULL), 0);
}

/* --- streams -------------------------------------------------------------- */

static void test_head_retry_and_event_framing(void **st) {
  fake.cors_headers = "Access-Control-Allow-Origin: http://localhost:3000\r\n";
  fake.position_seq = 7;
  mw_http_request_t *r = get_sse("a,b", NULL, NULL);
  mw_conn_t *c = r->taken;
  assert_non_null(c);
  expect_out(c, HEAD "Access-Control-Allow-Origin: http://localhost:3000\r\n"
                     "\r\n");
  expect_out(c, "retry: 2000\n\n");
  /* Quiet stream: an id-only block with the positions at subscribe time. */
  char *c0 = cursor_of(2, "a", 7, "e1", "b", 7, "e1");
  expect_id_block(c, c0);
  expect_nothing_more(c);
  assert_int_equal(fake_calls("position", "a"), 1);
  assert_int_equal(fake_calls("subscribe", "a"), 1);
  assert_int_equal(fake_calls("subscribe", "b"), 1);
  assert_int_equal(fake_metric_value("moonwire_sse_streams", NULL), 1);

  tev_t e8, e9;
  mk_event(&e8, "a", 8, "e1");
  mk_event(&e9, "b", 9, "e1");
  assert_int_equal(fake_hub_deliver("a", &e8.ev), 1);
  char *c1 = cursor_of(2, "a", 8, "e1", "b", 7, "e1");
  expect_event(c, c1, &e8);
  assert_int_equal(fake_hub_deliver("b", &e9.ev), 1);
  char *c2 = cursor_of(2, "a", 8, "e1", "b", 9, "e1");
  expect_event(c, c2, &e9);
  expect_nothing_more(c);
  /* The data bytes were handed over as the shared event, not copied. */
  assert_int_equal(c->event_writes, 2);
  assert_ptr_equal(c->last_event, &e9.ev);
  assert_int_equal(fake_metric_value("moonwire_sse_events_total", NULL), 2);
  free(c0);
  free(c1);
  free(c2);
}

/* Streams of one topic share the worker's id line for an event (built
 * once); a stream of several topics gets its own; a new seq or epoch is a
 * new line. The bytes are the cursor's either way. */
static void test_single_topic_ids_shared(void **st) {
  fake.position_seq = 7;
  mw_conn_t *c1 = get_sse("a", NULL, NULL)->taken;
  mw_conn_t *c2 = get_sse("a", NULL, NULL)->taken;
  mw_conn_t *cm = get_sse("a,b", NULL, NULL)->taken;
  assert_non_null(c1);
  assert_non_null(c2);
  assert_non_null(cm);
  mw_conn_t *all[] = {c1, c2, cm};
  char *q1 = cursor_of(1, "a", 7, "e1"),
       *qm = cursor_of(2, "a", 7, "e1", "b", 7, "e1");
  for (int i = 0; i < 3; i++) {
    expect_out(all[i], HEAD "\r\n");
    expect_out(all[i], "retry: 2000\n\n");
    expect_id_block(all[i], i < 2 ? q1 : qm);
  }
  tev_t e8, e9;
  mk_event(&e8, "a", 8, "e1");
  mk_event(&e9, "a", 8, "e2"); /* same seq, another epoch */
  assert_int_equal(fake_hub_deliver("a", &e8.ev), 3);
  char *a8 = cursor_of(1, "a", 8, "e1");
  char *m8 = cursor_of(2, "a", 8, "e1", "b", 7, "e1");
  expect_event(c1, a8, &e8);
  expect_event(c2, a8, &e8);
  expect_event(cm, m8, &e8);
  assert_int_equal(fake_hub_deliver("a", &e9.ev), 3);
  char *a9 = cursor_of(1, "a", 8, "e2");
  char *m9 = cursor_of(2, "a", 8, "e2", "b", 7, "e1");
  expect_event(c1, a9, &e9);
  expect_event(c2, a9, &e9);
  expect_event(cm, m9, &e9);
  for (int i = 0; i < 3; i++)
    expect_nothing_more(all[i]);
  free(q1);
  free(qm);
  free(a8);
  free(m8);
  free(a9);
  free(m9);
}

static void test_resume_last_event_id(void **st) {
  fake.position_seq = 5; /* the topic's current position */
  fake.recover_recovered = 1;
  tev_t r4, r5;
  mk_event(&r4, "a", 4, "e1");
  mk_event(&r5, "a", 5, "e1");
  mw_event_t *replay[] = {&r4.ev, &r5.ev};
  fake.recover_replay = replay;
  fake.recover_nreplay = 2;
  char *since = cursor_of(1, "a", 3, "e1");
  char *header = cursor_of(1, "a", 3, "e1");
  const char *h[] = {"last-event-id", header, NULL};
  /* The header wins over the URL's since (an EventSource reconnect). */
  char *old = cursor_of(1, "a", 1, "e1");
  mw_http_request_t *r = get_sse("a,b", old, h);
  mw_conn_t *c = r->taken;
  assert_non_null(c);
  assert_int_equal(fake.recover_since, 3);
  assert_string_equal(fake.recover_epoch, "e1");
  assert_int_equal(fake_calls("position", "a"), 0); /* it has a position */
  assert_int_equal(fake_calls("position", "b"), 1);
  c->read_off = strlen(HEAD) + 2;
  expect_out(c, "retry: 2000\n\n");
  /* The replayed events, then the id-only block; b is at 5 (its base). */
  char *c4 = cursor_of(2, "a", 4, "e1", "b", 5, "e1");
  char *c5 = cursor_of(2, "a", 5, "e1", "b", 5, "e1");
  expect_event(c, c4, &r4);
  expect_event(c, c5, &r5);
  expect_id_block(c, c5);
  expect_nothing_more(c);
  free(since);
  free(header);
  free(old);
  free(c4);
  free(c5);
}

static void test_since_query(void **st) {
  fake.recover_recovered = 1;
  fake.position_seq = 3;
  char *since = cursor_of(1, "a", 2, "e9");
  mw_http_request_t *r = get_sse("a", since, NULL);
  assert_non_null(r->taken);
  assert_int_equal(fake.recover_since, 2);
  assert_string_equal(fake.recover_epoch, "e9");
  free(since);
  /* A cursor alone names the topics. */
  since = cursor_of(1, "z", 1, "e1");
  r = get_sse(NULL, since, NULL);
  assert_non_null(r->taken);
  assert_int_equal(fake_calls("subscribe", "z"), 1);
  free(since);
}

static void test_not_recovered_event(void **st) {
  fake.position_seq = 40;
  fake.position_epoch = "e2";
  fake.recover_recovered = 0;
  char *since = cursor_of(1, "a", 3, "e1");
  mw_http_request_t *r = get_sse("a", since, NULL);
  mw_conn_t *c = r->taken;
  c->read_off = strlen(HEAD) + 2 + strlen("retry: 2000\n\n");
  char *cur = cursor_of(1, "a", 40, "e2");
  char buf[512];
  snprintf(buf, sizeof buf,
           "id: %s\nevent: moonwire\ndata: {\"type\":\"recovery\",\"topic\":"
           "\"a\",\"recovered\":false,\"seq\":40,\"epoch\":\"e2\"}\n\n",
           cur);
  expect_out(c, buf);
  expect_id_block(c, cur);
  expect_nothing_more(c);
  free(since);
  free(cur);
}

static void test_subscribe_refused_goes_on(void **st) {
  fake.subscribe_deny = "secret";
  fake.subscribe_deny_code = 403;
  fake.subscribe_deny_reason = "not yours";
  mw_http_request_t *r = get_sse("secret,open", NULL, NULL);
  mw_conn_t *c = r->taken;
  c->read_off = strlen(HEAD) + 2 + strlen("retry: 2000\n\n");
  expect_out(c, "event: error\ndata: {\"topic\":\"secret\",\"code\":403,"
                "\"reason\":\"not yours\"}\n\n");
  char *cur = cursor_of(1, "open", 0, "e1"); /* the refused one is left out */
  expect_id_block(c, cur);
  free(cur);
  assert_int_equal(fake_calls("subscribe", "open"), 1);
  assert_true(fake_client_has(fake_last_client(), "open"));
}

static void test_client_gone(void **st) {
  mw_http_request_t *r = get_sse("a", NULL, NULL);
  mw_conn_t *c = r->taken;
  assert_int_equal(fake.clients_live, 1);
  fake_conn_fire_close(c);
  assert_int_equal(fake.clients_live, 0);
  assert_string_equal(fake.disconnect_reason, "closed");
  assert_int_equal(fake_metric_value("moonwire_sse_streams", NULL), 0);
  tev_t e;
  mk_event(&e, "a", 1, "e1");
  assert_int_equal(fake_hub_deliver("a", &e.ev), 0);
}

static void test_slow_consumer(void **st) {
  mw_http_request_t *r = get_sse("a", NULL, NULL);
  mw_conn_t *c = r->taken;
  c->cap = c->len + 200; /* room for about one event */
  tev_t e[4];
  for (int i = 0; i < 4; i++) {
    mk_event(&e[i], "a", (uint64_t)i + 1, "e1");
    fake_hub_deliver("a", &e[i].ev);
  }
  assert_int_equal(c->overflows, 1);
  assert_true(c->closed);
  assert_int_equal(
      fake_metric_value("moonwire_sse_slow_consumer_closes_total", NULL), 1);
  fake_conn_fire_close(c);
  assert_string_equal(fake.disconnect_reason, "slow consumer");
}

static void test_client_bytes_ignored_bounded(void **st) {
  mw_http_request_t *r = get_sse("a", NULL, NULL);
  mw_conn_t *c = r->taken;
  size_t before = c->len;
  char junk[4096];
  memset(junk, 'x', sizeof junk);
  for (int i = 0; i < 16; i++)
    fake_conn_feed(c, junk, sizeof junk); /* 64 KiB: still fine */
  assert_false(c->closed);
  assert_int_equal(c->len, before);
  fake_conn_feed(c, junk, 1);
  assert_true(c->closed);
}

static void test_drain(void **st) {
  mw_http_request_t *r = get_sse("a", NULL, NULL);
  mw_conn_t *c = r->taken;
  size_t before = c->len;
  mw_plugin_v1.worker_drain(g_wstate);
  assert_true(c->closed);
  assert_int_equal(c->len, before); /* nothing more written */
  tev_t e;
  mk_event(&e, "a", 1, "e1");
  fake_hub_deliver("a", &e.ev);
  assert_int_equal(c->len, before);
  mw_http_request_t *late = get_sse("a", NULL, NULL);
  expect_error(late, 503, "shutting down");
  fake_conn_fire_close(c);
  assert_int_equal(fake.clients_live, 0);
}

static void test_kick(void **st) {
  mw_http_request_t *r = get_sse("a", NULL, NULL);
  mw_conn_t *c = r->taken;
  c->read_off = c->len;
  mw_client_t *cl = fake_last_client();
  assert_non_null(cl->kick);
  cl->kick(cl, "bye", cl->ud);
  expect_out(c, "event: moonwire\ndata: {\"type\":\"disconnect\","
                "\"reason\":\"bye\"}\n\n");
  assert_true(c->closed);
  fake_conn_fire_close(c);
  assert_string_equal(fake.disconnect_reason, "disconnected");
}

/* --- heartbeat (real loop) ------------------------------------------------ */

static int setup_hb(void **st) {
  return start(1);
}

static void on_deadline(uv_timer_t *t) {
  *(int *)t->data = 1;
}

static void test_heartbeat(void **st) {
  mw_http_request_t *r = get_sse("a", NULL, NULL);
  mw_conn_t *c = r->taken;
  uv_timer_t deadline;
  int expired = 0;
  uv_timer_init(&loop, &deadline);
  deadline.data = &expired;
  uv_timer_start(&deadline, on_deadline, 3000, 0);
  uint64_t t0 = uv_now(&loop);
  while (!expired && !memmem(c->out, c->len, ": hb\n\n", 6))
    uv_run(&loop, UV_RUN_ONCE);
  assert_false(expired);
  uint64_t dt = uv_now(&loop) - t0;
  assert_true(dt >= 900 && dt <= 2500);
  uv_close((uv_handle_t *)&deadline, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_bad_topics_400, setup, teardown),
      cmocka_unit_test_setup_teardown(test_single_topic_ids_shared, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_too_many_topics_400, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_duplicates_ignored, setup, teardown),
      cmocka_unit_test_setup_teardown(test_malformed_cursor_400, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_cors_denied_403, setup, teardown),
      cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_head_retry_and_event_framing, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_resume_last_event_id, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_since_query, setup, teardown),
      cmocka_unit_test_setup_teardown(test_not_recovered_event, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_subscribe_refused_goes_on, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_client_gone, setup, teardown),
      cmocka_unit_test_setup_teardown(test_slow_consumer, setup, teardown),
      cmocka_unit_test_setup_teardown(test_client_bytes_ignored_bounded, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
      cmocka_unit_test_setup_teardown(test_kick, setup, teardown),
      cmocka_unit_test_setup_teardown(test_heartbeat, setup_hb, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
