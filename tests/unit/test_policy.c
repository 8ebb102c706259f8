/* The Lua policy engine (core/policy.c, core/policy_lib.c): hooks and their
 * verdicts, failures (error, timeout, memory, bad returns), the sandbox,
 * deliver's once-per-event table and out keys, tenant rules, reload, and
 * the moonwire.* library. Fixtures live in tests/lua. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include <lauxlib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <uv.h>

#include "event.h"
#include "log.h"
#include "moonwire/errno.h"
#include "policy.h"

#define BUDGET_MS 50

static char err[512];

static mw_policy_t *load(const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", MWT_LUA_DIR, name);
  mw_policy_limits_t lim = {.budget_ms = BUDGET_MS, .memory_bytes = 0};
  mw_policy_t *p = mw__policy_new(path, &lim, err, sizeof err);
  if (!p) fail_msg("loading %s: %s", name, err);
  return p;
}

/* Loads a script by path with a 200 ms budget and a 16 MiB cap. */
static mw_policy_t *load_path(const char *path) {
  mw_policy_limits_t lim = {.budget_ms = 200, .memory_bytes = 16u << 20};
  mw_policy_t *p = mw__policy_new(path, &lim, err, sizeof err);
  if (!p) fail_msg("loading %s: %s", path, err);
  return p;
}

/* The line of `needle` in a fixture, for script:line checks. */
static int line_of(const char *name, const char *needle) {
  char path[1024], line[1024];
  snprintf(path, sizeof path, "%s/%s", MWT_LUA_DIR, name);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  int n = 0, found = 0;
  while (fgets(line, sizeof line, f)) {
    n++;
    if (strstr(line, needle)) {
      found = n;
      break;
    }
  }
  fclose(f);
  assert_true(found > 0);
  return found;
}

static void assert_contains(const char *s, const char *needle) {
  if (!strstr(s, needle)) fail_msg("\"%s\" does not contain \"%s\"", s, needle);
}

static void connect_q(mw_policy_t *p, const char *token, const char *conn_id,
                      const mw_policy_pair_t *query, size_t nquery,
                      mw_policy_identity_t *id, mw_policy_result_t *res) {
  mw_policy_connect_req_t req = {.transport = "websocket",
                                 .remote_addr = "127.0.0.1",
                                 .query = query,
                                 .nquery = nquery,
                                 .token = token};
  mw__policy_connect(p, &req, conn_id, id, res);
}

static void connect_tok(mw_policy_t *p, const char *token, const char *conn_id,
                        mw_policy_identity_t *id, mw_policy_result_t *res) {
  connect_q(p, token, conn_id, NULL, 0, id, res);
}

/* An identity from deliver.lua / tenants_ok: user `user`, claims.mode. */
static void ident(mw_policy_t *p, const char *user, const char *mode,
                  const char *tenant, mw_policy_identity_t *id) {
  mw_policy_pair_t q[2] = {{"mode", mode ? mode : "pass"},
                           {"tenant", tenant ? tenant : "none"}};
  mw_policy_result_t res;
  connect_q(p, user, "c", q, tenant ? 2 : 1, id, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
}

static mw_event_t *make_event(const char *topic, const char *name,
                              const char *trace, const char *data,
                              uint64_t seq) {
  json_t *d = json_loads(data, 0, NULL);
  assert_non_null(d);
  mw_event_t *ev = mw__event_draft(topic, name, trace, d);
  assert_int_equal(mw__event_seal(ev, seq, "ep"), 0);
  return ev;
}

static void deliver(mw_policy_t *p, const mw_policy_identity_t *id,
                    mw_event_t *ev, mw_policy_result_t *res) {
  mw__policy_deliver(p, id, ev, mw__event_data(ev), res);
}

static void assert_json(const json_t *v, const char *expect) {
  json_t *e = json_loads(expect, 0, NULL);
  assert_non_null(e);
  if (!json_equal(v, e)) {
    char *got = v ? json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    fail_msg("got %s, expected %s", got ? got : "NULL", expect);
  }
  json_decref(e);
}

static void sub(mw_policy_t *p, const mw_policy_identity_t *id,
                const char *topic, mw_policy_result_t *res) {
  mw__policy_subscribe(p, id, topic, res);
}

/* ---- missing hooks, connect, subscribe ---- */

static void test_missing_hooks(void **state) {
  mw_policy_t *p = load("empty.lua");
  assert_false(mw__policy_has_connect(p));
  assert_false(mw__policy_has_subscribe(p));
  assert_false(mw__policy_has_publish(p));
  assert_false(mw__policy_has_deliver(p));
  mw_policy_identity_t id;
  mw_policy_result_t res;
  connect_tok(p, "x", "c-1", &id, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  assert_null(id.user_id);
  assert_null(id.tenant_id);
  assert_true(id.ref != LUA_NOREF); /* the conn table exists: {id, transport} */
  assert_string_equal(id.conn_id, "c-1");
  sub(p, &id, "t", &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  json_t *ev = json_pack("{s:s,s:s,s:{}}", "topic", "t", "event", "E", "data");
  mw__policy_publish(p, &id, ev, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  assert_null(res.out);
  json_decref(ev);
  mw_event_t *e = make_event("t", "E", NULL, "{}", 1);
  deliver(p, &id, e, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  mw_event_unref(&e);
  mw__policy_disconnect(p, &id, "bye");
  mw__policy_identity_free(p, &id);
  mw__policy_free(p);
}

static void test_connect_allow(void **state) {
  mw_policy_t *p = load("connect.lua");
  assert_true(mw__policy_has_connect(p));
  mw_policy_identity_t id;
  mw_policy_result_t res;
  connect_tok(p, "alice", "c-1", &id, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  assert_string_equal(id.user_id, "alice");
  assert_string_equal(id.tenant_id, "acme");
  assert_int_equal(id.all_tenants, 0);
  assert_json(id.claims, "{\"role\":\"admin\",\"n\":3}");
  /* The conn table handed to later hooks. */
  sub(p, &id, "whoami", &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  mw__policy_identity_free(p, &id);
  assert_null(id.user_id);

  connect_tok(p, "num", "c-3", &id, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  assert_string_equal(id.user_id, "42");
  assert_null(id.tenant_id);
  assert_int_equal(id.all_tenants, 1);
  mw__policy_identity_free(p, &id);

  mw_policy_pair_t hdr[] = {{"X-User", "bob"}};
  mw_policy_pair_t q[] = {{"q", "1"}, {"q", "2"}};
  mw_policy_pair_t ck[] = {{"c", "cookie"}};
  mw_policy_connect_req_t req = {.transport = "sse",
                                 .remote_addr = "10.0.0.1",
                                 .headers = hdr,
                                 .nheaders = 1,
                                 .query = q,
                                 .nquery = 2,
                                 .cookies = ck,
                                 .ncookies = 1,
                                 .token = "req"};
  mw__policy_connect(p, &req, "c-4", &id, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  assert_string_equal(id.user_id, "bob|1|cookie|10.0.0.1|sse");
  mw__policy_identity_free(p, &id);
  mw__policy_free(p);
}

static void test_connect_deny(void **state) {
  mw_policy_t *p = load("connect.lua");
  mw_policy_identity_t id;
  mw_policy_result_t res;
  connect_tok(p, "deny", "c", &id, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_int_equal(res.code, 403);
  assert_string_equal(res.reason, "go away");
  assert_int_equal(id.ref, LUA_NOREF);
  assert_null(id.user_id);
  mw__policy_identity_free(p, &id);
  connect_tok(p, "deny-default", "c", &id, &res);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_int_equal(res.code, 401);
  assert_string_equal(res.reason, "unauthorized");
  connect_tok(p, NULL, "c", &id, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_int_equal(res.code, 401);
  mw__policy_free(p);
}

static void test_connect_badreturn(void **state) {
  mw_policy_t *p = load("connect.lua");
  const char *tokens[] = {"bad", "bad-uid", "bad-code"};
  const char *why[] = {"returned a string", "user_id must be",
                       "code must be an integer"};
  for (int i = 0; i < 3; i++) {
    mw_policy_identity_t id;
    mw_policy_result_t res;
    connect_tok(p, tokens[i], "c", &id, &res);
    assert_int_equal(res.status, MW_POLICY_BADRETURN);
    assert_int_equal(res.verdict, MW_VERDICT_DENY);
    assert_contains(res.reason, "on_connect");
    assert_contains(res.reason, why[i]);
    assert_int_equal(id.ref, LUA_NOREF);
    assert_null(id.user_id);
  }
  mw__policy_free(p);
}

static void test_connect_error(void **state) {
  mw_policy_t *p = load("connect.lua");
  mw_policy_identity_t id;
  mw_policy_result_t res;
  char where[256];
  connect_tok(p, "boom", "c", &id, &res);
  assert_int_equal(res.status, MW_POLICY_ERROR);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  snprintf(where, sizeof where, "connect.lua:%d: boom",
           line_of("connect.lua", "error(\"boom\")"));
  assert_contains(res.reason, where);
  connect_tok(p, "arith", "c", &id, &res);
  assert_int_equal(res.status, MW_POLICY_ERROR);
  snprintf(where, sizeof where,
           "connect.lua:%d:", line_of("connect.lua", "return x + 1"));
  assert_contains(res.reason, where);
  /* The state still works. */
  connect_tok(p, "alice", "c", &id, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  mw__policy_identity_free(p, &id);
  mw__policy_free(p);
}

static void test_subscribe(void **state) {
  mw_policy_t *p = load("connect.lua");
  mw_policy_identity_t id;
  mw_policy_result_t res;
  connect_tok(p, "alice", "c-1", &id, &res);
  sub(p, &id, "presence:room", &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  assert_int_equal(res.presence, 1);
  sub(p, &id, "plain", &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  assert_int_equal(res.presence, 0);
  sub(p, &id, "private", &res);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_int_equal(res.code, 451);
  assert_string_equal(res.reason, "not yours");
  sub(p, &id, "nil", &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_int_equal(res.code, 403);
  assert_string_equal(res.reason, "forbidden");
  sub(p, &id, "bad", &res);
  assert_int_equal(res.status, MW_POLICY_BADRETURN);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_contains(res.reason, "on_subscribe");
  sub(p, &id, "bad-presence", &res);
  assert_int_equal(res.status, MW_POLICY_BADRETURN);
  assert_contains(res.reason, "presence must be a boolean");
  /* No identity: conn is nil. */
  sub(p, NULL, "whoami", &res);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  mw__policy_identity_free(p, &id);
  mw__policy_free(p);
}

/* ---- budget, memory, sandbox ---- */

static void test_timeouts(void **state) {
  mw_policy_t *p = load("limits.lua");
  const char *topics[] = {"while", "for", "helper-for", "helper-while",
                          "pcall-loop"};
  for (size_t i = 0; i < sizeof topics / sizeof *topics; i++) {
    mw_policy_result_t res;
    uint64_t t0 = uv_hrtime();
    sub(p, NULL, topics[i], &res);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    if (res.status != MW_POLICY_TIMEOUT)
      fail_msg("%s: status %d (%s)", topics[i], res.status, res.reason);
    assert_int_equal(res.verdict, MW_VERDICT_DENY);
    assert_contains(res.reason, "time budget exceeded");
    assert_contains(res.reason, "limits.lua:");
    if (ms > 3 * BUDGET_MS)
      fail_msg("%s took %llu ms", topics[i], (unsigned long long)ms);
    assert_true(ms >= BUDGET_MS - 1);
    /* The state still works. */
    sub(p, NULL, "ok", &res);
    assert_int_equal(res.status, MW_POLICY_OK);
    assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  }
  mw__policy_free(p);
}

static void test_memory(void **state) {
  /* Filling 64 MiB takes tens of ms (page faults; more under ASan): a
   * larger budget keeps this about memory only. */
  char path[1024];
  snprintf(path, sizeof path, "%s/limits.lua", MWT_LUA_DIR);
  mw_policy_limits_t big = {.budget_ms = 2000, .memory_bytes = 0};
  mw_policy_t *p = mw__policy_new(path, &big, err, sizeof err);
  assert_non_null(p);
  mw_policy_result_t res;
  for (int i = 0; i < 2; i++) {
    sub(p, NULL, "hog", &res);
    if (res.status != MW_POLICY_NOMEM)
      fail_msg("status %d (%s)", res.status, res.reason);
    assert_int_equal(res.verdict, MW_VERDICT_DENY);
    sub(p, NULL, "ok", &res);
    assert_int_equal(res.status, MW_POLICY_OK);
    assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  }
  /* A script may catch it itself. */
  sub(p, NULL, "pcall-hog", &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  sub(p, NULL, "ok", &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);

  mw__policy_free(p);

  /* A small cap: the script does not even load. */
  mw_policy_limits_t lim = {.budget_ms = BUDGET_MS, .memory_bytes = 16384};
  assert_null(mw__policy_new(path, &lim, err, sizeof err));
  assert_contains(err, "not enough memory");

  /* A cap just above what loading needs: building a large on_connect
   * request (the engine's own allocation, before the script runs) fails
   * cleanly with NOMEM, and a small one works afterwards. */
  snprintf(path, sizeof path, "%s/connect.lua", MWT_LUA_DIR);
  p = NULL;
  for (lim.memory_bytes = 32768; !p; lim.memory_bytes += 8192)
    p = mw__policy_new(path, &lim, err, sizeof err);
  enum { NH = 2000 };
  static mw_policy_pair_t hdr[NH];
  static char names[NH][16];
  for (int i = 0; i < NH; i++) {
    snprintf(names[i], sizeof names[i], "x-h%d", i);
    hdr[i].name = names[i];
    hdr[i].value = "a fairly long header value, repeated many times";
  }
  mw_policy_connect_req_t req = {.transport = "websocket",
                                 .headers = hdr,
                                 .nheaders = NH,
                                 .token = "alice"};
  mw_policy_identity_t id;
  mw__policy_connect(p, &req, "c-1", &id, &res);
  assert_int_equal(res.status, MW_POLICY_NOMEM);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_int_equal(id.ref, LUA_NOREF);
  connect_tok(p, "alice", "c-1", &id, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  mw__policy_identity_free(p, &id);
  mw__policy_free(p);
}

static void test_sandbox(void **state) {
  mw_policy_t *p = load("limits.lua");
  mw_policy_result_t res;
  sub(p, NULL, "sandbox", &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  sub(p, NULL, "global", &res);
  assert_int_equal(res.status, MW_POLICY_ERROR);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_contains(res.reason, "assignment to undeclared global 'undeclared_x'");
  char where[256];
  snprintf(where, sizeof where,
           "limits.lua:%d:", line_of("limits.lua", "undeclared_x = 1"));
  assert_contains(res.reason, where);
  sub(p, NULL, "read-undeclared", &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  sub(p, NULL, "global-write", &res); /* declared at load: writable */
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  mw__policy_free(p);
}

/* ---- deliver ---- */

static mw_event_t *room_event(uint64_t seq) {
  return make_event("room:1", "UPDATED", "tr-1",
                    "{\"name\":\"Bike\",\"tags\":[\"a\",\"b\"],\"n\":1.5,"
                    "\"nested\":{\"x\":null,\"y\":true,\"e\":[]}}",
                    seq);
}

/* "distinct/calls" counted by deliver.lua. */
static void stats(mw_policy_t *p, char *out, size_t n) {
  mw_policy_result_t res;
  sub(p, NULL, "stats", &res);
  assert_int_equal(res.code, 299);
  snprintf(out, n, "%s", res.reason);
}

static void test_deliver_once_per_event(void **state) {
  mw_policy_t *p = load("deliver.lua");
  mw_policy_identity_t ids[3];
  ident(p, "u0", "pass", NULL, &ids[0]);
  ident(p, "u1", "pass", NULL, &ids[1]);
  ident(p, "u2", "check", NULL, &ids[2]);
  mw_event_t *ev = room_event(7);
  for (int i = 0; i < 100; i++) {
    mw_policy_result_t res;
    deliver(p, &ids[i % 3], ev, &res);
    assert_int_equal(res.status, MW_POLICY_OK);
    assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
    assert_null(res.out);
  }
  char st[200];
  stats(p, st, sizeof st);
  assert_string_equal(st, "1/100");
  /* A new event gets a new table. */
  mw_event_t *ev2 = room_event(8);
  mw_policy_result_t res;
  deliver(p, &ids[0], ev2, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  stats(p, st, sizeof st);
  assert_string_equal(st, "2/101");
  mw_event_unref(&ev);
  mw_event_unref(&ev2);
  for (int i = 0; i < 3; i++)
    mw__policy_identity_free(p, &ids[i]);
  mw__policy_free(p);
}

static void test_deliver_drop_and_change(void **state) {
  mw_policy_t *p = load("deliver.lua");
  mw_policy_identity_t pass, drop, inplace, fresh, topic;
  ident(p, "pass", "pass", NULL, &pass);
  ident(p, "drop", "drop", NULL, &drop);
  ident(p, "inplace", "inplace", NULL, &inplace);
  ident(p, "fresh", "new", NULL, &fresh);
  ident(p, "topic", "inplace-topic", NULL, &topic);
  mw_event_t *ev = room_event(7);
  mw_policy_result_t res;
  char st[200];

  deliver(p, &drop, ev, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_DROP);
  assert_null(res.out);

  deliver(p, &inplace, ev, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_CHANGED);
  assert_non_null(res.out_key);
  assert_json(res.out,
              "{\"event\":\"UPDATED\",\"trace_id\":\"tr-1\",\"data\":"
              "{\"name\":\"Bike\",\"tags\":[\"a\",\"b\"],\"n\":1.5,"
              "\"nested\":{\"x\":null,\"y\":true,\"e\":[]},\"extra\":1}}");
  mw__policy_result_clear(&res);
  assert_null(res.out);
  /* The modified table is not handed to the next recipient. */
  deliver(p, &pass, ev, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  stats(p, st, sizeof st);
  assert_string_equal(st, "2/3");

  /* Only the topic changed: ignored, but the table is rebuilt. */
  deliver(p, &topic, ev, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  deliver(p, &pass, ev, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  stats(p, st, sizeof st);
  assert_string_equal(st, "3/5");

  deliver(p, &fresh, ev, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_CHANGED);
  assert_json(res.out, "{\"event\":\"NEW\",\"data\":{\"who\":\"fresh\","
                       "\"list\":[1,2]},\"trace_id\":\"tr-1\"}");
  mw__policy_result_clear(&res);
  /* A new table leaves the event's table alone. */
  deliver(p, &pass, ev, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  stats(p, st, sizeof st);
  assert_string_equal(st, "3/7");

  mw_event_unref(&ev);
  mw__policy_identity_free(p, &pass);
  mw__policy_identity_free(p, &drop);
  mw__policy_identity_free(p, &inplace);
  mw__policy_identity_free(p, &fresh);
  mw__policy_identity_free(p, &topic);
  mw__policy_free(p);
}

static void test_deliver_out_keys(void **state) {
  mw_policy_t *p = load("deliver.lua");
  mw_policy_identity_t s1, s2, m1, m2, c1;
  ident(p, "s1", "shared", NULL, &s1);
  ident(p, "s2", "shared", NULL, &s2);
  ident(p, "m1", "mutate", NULL, &m1);
  ident(p, "m2", "mutate", NULL, &m2);
  ident(p, "c1", "copy", NULL, &c1);
  mw_event_t *ev = room_event(7);
  mw_policy_result_t a, b;

  /* One cached table for every recipient: one key. */
  deliver(p, &s1, ev, &a);
  deliver(p, &s2, ev, &b);
  assert_int_equal(a.verdict, MW_VERDICT_CHANGED);
  assert_int_equal(b.verdict, MW_VERDICT_CHANGED);
  assert_ptr_equal(a.out_key, b.out_key);
  assert_json(a.out, "{\"event\":\"SHARED\",\"data\":{\"k\":1},"
                     "\"trace_id\":\"tr-1\"}");
  assert_true(json_equal(a.out, b.out));
  mw__policy_result_clear(&a);
  mw__policy_result_clear(&b);

  /* The same table with other content: another key. */
  deliver(p, &m1, ev, &a);
  deliver(p, &m2, ev, &b);
  assert_int_equal(a.verdict, MW_VERDICT_CHANGED);
  assert_int_equal(b.verdict, MW_VERDICT_CHANGED);
  assert_true(a.out_key != b.out_key);
  assert_json(a.out, "{\"event\":\"MUT\",\"data\":{\"who\":\"m1\"},"
                     "\"trace_id\":\"tr-1\"}");
  assert_json(b.out, "{\"event\":\"MUT\",\"data\":{\"who\":\"m2\"},"
                     "\"trace_id\":\"tr-1\"}");
  mw__policy_result_clear(&a);
  mw__policy_result_clear(&b);

  /* moonwire.copy of the event, changed. */
  deliver(p, &c1, ev, &a);
  assert_int_equal(a.verdict, MW_VERDICT_CHANGED);
  assert_json(a.out,
              "{\"event\":\"UPDATED\",\"trace_id\":\"tr-1\",\"data\":"
              "{\"name\":\"Bike\",\"tags\":[\"a\",\"b\"],\"n\":1.5,"
              "\"nested\":{\"x\":null,\"y\":true,\"e\":[]},\"who\":\"c1\"}}");
  mw__policy_result_clear(&a);

  mw_event_unref(&ev);
  mw__policy_identity_free(p, &s1);
  mw__policy_identity_free(p, &s2);
  mw__policy_identity_free(p, &m1);
  mw__policy_identity_free(p, &m2);
  mw__policy_identity_free(p, &c1);
  mw__policy_free(p);
}

static void test_deliver_failures(void **state) {
  mw_policy_t *p = load("deliver.lua");
  const char *modes[] = {"bad-event", "bad-data", "bad-type", "error"};
  const mw_policy_status_t st[] = {MW_POLICY_BADRETURN, MW_POLICY_BADRETURN,
                                   MW_POLICY_BADRETURN, MW_POLICY_ERROR};
  const char *why[] = {"event.event must be a string",
                       "event.data must be an object", "returned a string",
                       "deliver failed"};
  mw_policy_identity_t pass;
  ident(p, "pass", "pass", NULL, &pass);
  mw_event_t *ev = room_event(7);
  for (int i = 0; i < 4; i++) {
    mw_policy_identity_t id;
    mw_policy_result_t res;
    ident(p, "x", modes[i], NULL, &id);
    deliver(p, &id, ev, &res);
    assert_int_equal(res.status, st[i]);
    assert_int_equal(res.verdict, MW_VERDICT_DROP);
    assert_null(res.out);
    assert_contains(res.reason, why[i]);
    /* Even a failed call that dirtied the table leaves the next recipient
     * with the event as it is. */
    deliver(p, &pass, ev, &res);
    assert_int_equal(res.status, MW_POLICY_OK);
    assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
    mw__policy_identity_free(p, &id);
  }
  mw_event_unref(&ev);
  mw__policy_identity_free(p, &pass);
  mw__policy_free(p);
}

/* ---- publish ---- */

static void publish_mode(mw_policy_t *p, const mw_policy_identity_t *id,
                         const char *mode, mw_policy_result_t *res) {
  json_t *ev =
      json_pack("{s:s,s:s,s:{s:s,s:i},s:s}", "topic", "room:1", "event",
                "ADDED", "data", "mode", mode, "n", 1, "trace_id", "tr-9");
  mw__policy_publish(p, id, ev, res);
  json_decref(ev);
}

static void test_publish(void **state) {
  mw_policy_t *p = load("deliver.lua");
  mw_policy_identity_t id;
  ident(p, "pub", "pass", NULL, &id);
  mw_policy_result_t res;
  publish_mode(p, &id, "pass", &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  assert_null(res.out);
  publish_mode(p, &id, "topic", &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  publish_mode(p, &id, "deny", &res);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_int_equal(res.code, 429);
  assert_string_equal(res.reason, "slow down");
  publish_mode(p, &id, "deny-default", &res);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_int_equal(res.code, 403);
  assert_string_equal(res.reason, "forbidden");
  publish_mode(p, &id, "inplace", &res);
  assert_int_equal(res.verdict, MW_VERDICT_CHANGED);
  assert_json(res.out, "{\"event\":\"ADDED\",\"trace_id\":\"tr-9\",\"data\":"
                       "{\"mode\":\"inplace\",\"n\":1,\"stamped\":\"pub\"}}");
  mw__policy_result_clear(&res);
  publish_mode(p, NULL, "inplace", &res); /* the server API: conn is nil */
  assert_int_equal(res.verdict, MW_VERDICT_CHANGED);
  assert_json(res.out,
              "{\"event\":\"ADDED\",\"trace_id\":\"tr-9\",\"data\":"
              "{\"mode\":\"inplace\",\"n\":1,\"stamped\":\"server\"}}");
  mw__policy_result_clear(&res);
  publish_mode(p, &id, "new", &res);
  assert_int_equal(res.verdict, MW_VERDICT_CHANGED);
  assert_json(res.out, "{\"event\":\"REWRITTEN\",\"data\":{\"n\":1},"
                       "\"trace_id\":\"new-trace\"}");
  mw__policy_result_clear(&res);
  publish_mode(p, &id, "new-notrace", &res);
  assert_int_equal(res.verdict, MW_VERDICT_CHANGED);
  assert_json(res.out, "{\"event\":\"REWRITTEN\",\"data\":{},"
                       "\"trace_id\":\"tr-9\"}");
  mw__policy_result_clear(&res);
  publish_mode(p, &id, "bad", &res);
  assert_int_equal(res.status, MW_POLICY_BADRETURN);
  assert_int_equal(res.verdict, MW_VERDICT_DENY);
  assert_null(res.out);
  mw__policy_identity_free(p, &id);
  mw__policy_free(p);
}

/* ---- tenants ---- */

static void test_tenants(void **state) {
  mw_policy_t *p = load("tenants_ok/main.lua");
  assert_int_equal(mw__policy_tenant_max_connections(p, "acme"), 5);
  assert_int_equal(mw__policy_tenant_max_connections(p, "beta"), 2);
  assert_int_equal(mw__policy_tenant_max_connections(p, "gamma"), 0);
  assert_int_equal(mw__policy_tenant_max_connections(p, "nobody"), 0);
  assert_int_equal(mw__policy_tenant_max_connections(p, NULL), 0);
  assert_true(mw__policy_tenant_topic_allowed(p, "acme", "acme:orders"));
  assert_true(mw__policy_tenant_topic_allowed(p, "acme", "public"));
  assert_false(mw__policy_tenant_topic_allowed(p, "acme", "beta:orders"));
  assert_false(mw__policy_tenant_topic_allowed(p, "acme", "public2"));
  assert_true(mw__policy_tenant_topic_allowed(p, "beta", "beta:x"));
  assert_false(mw__policy_tenant_topic_allowed(p, "beta", "acme:x"));
  assert_true(mw__policy_tenant_topic_allowed(p, "gamma", "anything"));
  assert_true(mw__policy_tenant_topic_allowed(p, "nobody", "anything"));
  assert_true(mw__policy_tenant_topic_allowed(p, NULL, "anything"));

  mw_policy_identity_t acme, beta, gamma;
  ident(p, "a", NULL, "acme", &acme);
  ident(p, "b", NULL, "beta", &beta);
  ident(p, "g", NULL, "gamma", &gamma);
  mw_event_t *ev = make_event("acme:orders", "ADDED", "tr", "{\"n\":1}", 1);
  mw_policy_result_t res;
  deliver(p, &acme, ev, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_CHANGED);
  assert_json(res.out, "{\"event\":\"ADDED\",\"trace_id\":\"tr\",\"data\":"
                       "{\"n\":1,\"transformed_for\":\"acme\"}}");
  mw__policy_result_clear(&res);
  deliver(p, &beta, ev, &res); /* no transform, no on_deliver */
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  deliver(p, &gamma, ev, &res);
  assert_int_equal(res.verdict, MW_VERDICT_DROP);
  mw_event_t *keep = make_event("acme:orders", "keep", NULL, "{}", 2);
  deliver(p, &gamma, keep, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  mw_event_unref(&ev);
  mw_event_unref(&keep);
  mw__policy_identity_free(p, &acme);
  mw__policy_identity_free(p, &beta);
  mw__policy_identity_free(p, &gamma);
  mw__policy_free(p);

  char path[1024];
  snprintf(path, sizeof path, "%s/tenants_bad/main.lua", MWT_LUA_DIR);
  assert_null(mw__policy_new(path, NULL, err, sizeof err));
  assert_contains(err, "tenants/bad.lua: max_connections must be an integer");
}

/* ---- reload and load errors ---- */

static char tmpdir[256];

static const char *write_script(const char *name, const char *text) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  return path;
}

static int setup_tmp(void **state) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/mw_policy_XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static void test_reload(void **state) {
  const char *v1 = write_script(
      "policy.lua",
      "function on_connect(req)\n"
      "  return {user_id = req.token, claims = {level = 3}}\n"
      "end\n"
      "function on_subscribe(conn, topic) return false, 403, 'v1' end\n");
  mw_policy_limits_t lim = {.budget_ms = BUDGET_MS};
  mw_policy_t *p = mw__policy_new(v1, &lim, err, sizeof err);
  assert_non_null(p);
  mw_policy_identity_t id;
  mw_policy_result_t res;
  connect_tok(p, "u1", "c-1", &id, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  sub(p, &id, "t", &res);
  assert_string_equal(res.reason, "v1");

  const char *v2 = write_script(
      "policy.lua",
      "function on_subscribe(conn, topic)\n"
      "  return conn.user_id == 'u1' and conn.claims.level == 3 and\n"
      "         conn.id == 'c-1' and conn.transport == 'websocket', 403, 'v2'\n"
      "end\n");
  assert_int_equal(mw__policy_reload(p, v2, err, sizeof err), 0);
  assert_false(mw__policy_has_connect(p));
  /* The identity from before the reload gets a conn table in the new state. */
  sub(p, &id, "t", &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  sub(p, &id, "t", &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);

  const char *bad =
      write_script("policy.lua", "function on_subscribe(conn, topic)\n"
                                 "  return true\n"
                                 "end end\n");
  assert_int_equal(mw__policy_reload(p, bad, err, sizeof err), MW_EINVAL);
  assert_contains(err, "policy.lua:3:");
  /* The old state is untouched. */
  sub(p, &id, "t", &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  mw__policy_identity_free(p, &id);

  /* An anonymous identity (no on_connect) survives a reload too. */
  const char *v3 = write_script("policy.lua", "-- nothing\n");
  assert_int_equal(mw__policy_reload(p, v3, err, sizeof err), 0);
  connect_tok(p, NULL, "c-2", &id, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  char path[1024];
  snprintf(path, sizeof path, "%s/connect.lua", MWT_LUA_DIR);
  assert_int_equal(mw__policy_reload(p, path, err, sizeof err), 0);
  sub(p, &id, "anon", &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  mw__policy_identity_free(p, &id);
  mw__policy_free(p);
}

static void test_load_errors(void **state) {
  mw_policy_limits_t lim = {.budget_ms = BUDGET_MS};
  assert_null(mw__policy_new("/nonexistent/p.lua", &lim, err, sizeof err));
  assert_contains(err, "cannot open");
  const char *s = write_script("syntax.lua", "local x = \nfunction(\n");
  assert_null(mw__policy_new(s, &lim, err, sizeof err));
  assert_contains(err, "syntax.lua:");
  s = write_script("runtime.lua", "local x = 1\nerror('at load')\n");
  assert_null(mw__policy_new(s, &lim, err, sizeof err));
  assert_contains(err, "runtime.lua:2: at load");
  s = write_script("nofn.lua", "on_connect = 5\n");
  assert_null(mw__policy_new(s, &lim, err, sizeof err));
  assert_contains(err, "on_connect must be a function");
  s = write_script("tenants.lua", "tenants = {acme = {topics = 'x'}}\n");
  assert_null(mw__policy_new(s, &lim, err, sizeof err));
  assert_contains(err, "tenants.acme: topics must be a list");
  s = write_script("unknown.lua", "tenants = {acme = {max_conn = 1}}\n");
  assert_null(mw__policy_new(s, &lim, err, sizeof err));
  assert_contains(err, "unknown key 'max_conn'");
  s = write_script("loop.lua", "while true do end\n");
  uint64_t t0 = uv_hrtime();
  assert_null(mw__policy_new(s, &lim, err, sizeof err));
  assert_contains(err, "loop.lua:1: time budget exceeded");
  assert_true((uv_hrtime() - t0) / 1000000 < 3000);
}

/* The embedded default (scripts/default.lua, or the test build's stand-in):
 * it loads, and it allows. */
static void test_default_policy(void **state) {
  mw_policy_t *p = mw__policy_new(NULL, NULL, err, sizeof err);
  if (!p) fail_msg("%s", err);
  mw_policy_identity_t id;
  mw_policy_result_t res;
  connect_tok(p, NULL, "c-1", &id, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  sub(p, &id, "any:topic", &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  mw__policy_identity_free(p, &id);
  mw__policy_free(p);
}

/* ---- moonwire.* ---- */

static char *b64url(const void *in, size_t n) {
  char *out = malloc(4 * ((n + 2) / 3) + 1);
  EVP_EncodeBlock((unsigned char *)out, in, (int)n);
  size_t j = 0;
  for (size_t i = 0; out[i]; i++) {
    if (out[i] == '=') break;
    out[j++] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
  }
  out[j] = '\0';
  return out;
}

static char *make_jwt(const char *alg, const char *payload,
                      const char *secret) {
  char header[64];
  snprintf(header, sizeof header, "{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg);
  char *h = b64url(header, strlen(header));
  char *pl = b64url(payload, strlen(payload));
  size_t n = strlen(h) + strlen(pl) + 2;
  char *signing = malloc(n);
  snprintf(signing, n, "%s.%s", h, pl);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int maclen = 0;
  const EVP_MD *md = strcmp(alg, "HS512") == 0   ? EVP_sha512()
                     : strcmp(alg, "HS256") == 0 ? EVP_sha256()
                                                 : NULL;
  if (md)
    HMAC(md, secret, (int)strlen(secret), (unsigned char *)signing,
         strlen(signing), mac, &maclen);
  char *sig = b64url(mac, maclen);
  char *tok = malloc(n + strlen(sig) + 1);
  sprintf(tok, "%s.%s", signing, sig);
  free(h);
  free(pl);
  free(signing);
  free(sig);
  return tok;
}

/* Runs lib.lua's on_connect with token `op`; returns the claims. */
static json_t *lib_call(mw_policy_t *p, const char *op,
                        const mw_policy_pair_t *q, size_t nq,
                        mw_policy_identity_t *id) {
  mw_policy_result_t res;
  connect_q(p, op, "c", q, nq, id, &res);
  if (res.status != MW_POLICY_OK) fail_msg("%s: %s", op, res.reason);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  return id->claims;
}

static void jwt_case(mw_policy_t *p, const char *tok, const char *secret,
                     const char *expect_error, const char *expect_sub) {
  mw_policy_pair_t q[2] = {{"jwt", tok}, {"secret", secret}};
  mw_policy_identity_t id;
  json_t *c = lib_call(p, "jwt", q, secret ? 2 : 1, &id);
  if (expect_error) {
    const char *e = json_string_value(json_object_get(c, "error"));
    if (!e || strcmp(e, expect_error))
      fail_msg("token %s: error %s, expected %s", tok, e ? e : "none",
               expect_error);
  } else {
    assert_null(json_object_get(c, "error"));
    assert_string_equal(id.user_id, expect_sub);
  }
  mw__policy_identity_free(p, &id);
}

static void test_jwt(void **state) {
  mw_policy_t *p = load("lib.lua");
  long now = (long)time(NULL);
  char payload[256];
  snprintf(payload, sizeof payload,
           "{\"sub\":\"alice\",\"tenant\":\"acme\",\"exp\":%ld,\"nbf\":%ld}",
           now + 600, now - 10);
  char *good = make_jwt("HS256", payload, "s3cret");
  jwt_case(p, good, NULL, NULL, "alice");
  jwt_case(p, good, "wrong", "bad signature", NULL);
  /* A flipped signature character. */
  char *flipped = strdup(good);
  char *last = flipped + strlen(flipped) - 2;
  *last = *last == 'A' ? 'B' : 'A';
  jwt_case(p, flipped, NULL, "bad signature", NULL);
  char *hs512 = make_jwt("HS512", payload, "s3cret");
  jwt_case(p, hs512, NULL, NULL, "alice");

  snprintf(payload, sizeof payload, "{\"sub\":\"a\",\"exp\":%ld}", now - 5);
  char *expired = make_jwt("HS256", payload, "s3cret");
  jwt_case(p, expired, NULL, "expired", NULL);
  snprintf(payload, sizeof payload, "{\"sub\":\"a\",\"nbf\":%ld}", now + 600);
  char *early = make_jwt("HS256", payload, "s3cret");
  jwt_case(p, early, NULL, "not yet valid", NULL);
  char *none = make_jwt("none", "{\"sub\":\"a\"}", "s3cret");
  jwt_case(p, none, NULL, "unsupported alg", NULL);
  char *rs = make_jwt("RS256", "{\"sub\":\"a\"}", "s3cret");
  jwt_case(p, rs, NULL, "unsupported alg", NULL);
  jwt_case(p, "garbage", NULL, "malformed token", NULL);
  jwt_case(p, "a.b.c.d", NULL, "malformed token", NULL);
  jwt_case(p, "!!.e30.xx", NULL, "malformed token", NULL);
  snprintf(payload, sizeof payload, "{\"sub\":\"a\",\"exp\":\"soon\"}");
  char *strexp = make_jwt("HS256", payload, "s3cret");
  jwt_case(p, strexp, NULL, "malformed token", NULL);
  free(good);
  free(flipped);
  free(hs512);
  free(expired);
  free(early);
  free(none);
  free(rs);
  free(strexp);
  mw__policy_free(p);
}

static void test_lib_json(void **state) {
  mw_policy_t *p = load("lib.lua");
  mw_policy_identity_t id;
  json_t *c = lib_call(p, "json", NULL, 0, &id);
  assert_true(json_is_true(json_object_get(c, "ok")));
  assert_true(json_is_true(json_object_get(c, "bad")));
  assert_true(json_is_true(json_object_get(c, "fn_err")));
  assert_true(json_is_true(json_object_get(c, "cycle_err")));
  assert_contains(json_string_value(json_object_get(c, "cycle_msg")),
                  "table cycle");
  assert_true(json_is_true(json_object_get(c, "deep_err")));
  assert_string_equal(json_string_value(json_object_get(c, "scalar")), "\"s\"");
  assert_json(json_object_get(c, "list"), "[1,2]");
  /* What json.encode produced, read back in C. */
  json_t *enc =
      json_loads(json_string_value(json_object_get(c, "encoded")), 0, NULL);
  assert_json(enc, "{\"a\":1,\"b\":[1,2,3],\"c\":\"x\\\"y\",\"d\":true,"
                   "\"e\":{},\"f\":1.5,\"g\":null,\"h\":[]}");
  json_decref(enc);
  mw__policy_identity_free(p, &id);
  mw__policy_free(p);
}

static void test_lib_misc(void **state) {
  mw_policy_t *p = load("lib.lua");
  mw_policy_identity_t id;
  json_t *c = lib_call(p, "match", NULL, 0, &id);
  assert_json(c, "[true,true,true,true,true,true,true]");
  mw__policy_identity_free(p, &id);
  c = lib_call(p, "copy", NULL, 0, &id);
  assert_true(json_is_true(json_object_get(c, "ok")));
  mw__policy_identity_free(p, &id);
  c = lib_call(p, "log", NULL, 0, &id);
  assert_true(json_is_true(json_object_get(c, "bad_level")));
  mw__policy_identity_free(p, &id);
  c = lib_call(p, "now", NULL, 0, &id);
  double now = json_number_value(json_object_get(c, "now"));
  assert_true(now > (double)time(NULL) - 5 && now < (double)time(NULL) + 5);
  mw__policy_identity_free(p, &id);
  mw__policy_free(p);
}

static void test_topic_match(void **state) {
  assert_true(mw__topic_match("gift-list:*", "gift-list:1"));
  assert_true(mw__topic_match("gift-list:*", "gift-list:"));
  assert_false(mw__topic_match("gift-list:*", "gift-lists:1"));
  assert_true(mw__topic_match("*", ""));
  assert_true(mw__topic_match("*", "anything"));
  assert_true(mw__topic_match("", ""));
  assert_false(mw__topic_match("", "x"));
  assert_true(mw__topic_match("a*b*c", "abc"));
  assert_true(mw__topic_match("a*b*c", "aXXbYYc"));
  assert_true(mw__topic_match("a*b*c", "abcbc"));
  assert_false(mw__topic_match("a*b*c", "aXXbYY"));
  assert_false(mw__topic_match("a*b*c", "XaXbc"));
  assert_true(mw__topic_match("**", "x"));
  assert_true(mw__topic_match("exact", "exact"));
  assert_false(mw__topic_match("exact", "exact2"));
  /* No exponential backtracking. */
  char topic[20001];
  memset(topic, 'a', sizeof topic - 1);
  topic[sizeof topic - 1] = '\0';
  uint64_t t0 = uv_hrtime();
  assert_false(mw__topic_match("*a*a*a*a*a*a*a*a*a*a*b", topic));
  assert_true((uv_hrtime() - t0) / 1000000 < 1000);
}

/* ---- deliver: the read-only view of the event ---- */

static const char view_lua[] =
    "function on_connect(req) return {user_id = req.token} end\n"
    "stash = false\n"
    "function on_deliver(conn, ev)\n"
    "  local u = conn.user_id\n"
    "  if u == 'nested' then ev.data.nested.y = false; return ev end\n"
    "  if u == 'array' then table.insert(ev.data.tags, 'c'); return ev end\n"
    "  if u == 'arrayset' then ev.data.tags[1] = 'z'; return ev end\n"
    "  if u == 'objinsert' then table.insert(ev.data, 'q'); return ev end\n"
    "  if u == 'same' then ev.data.name = 'Bike'; return ev end\n"
    "  if u == 'setmt' then setmetatable(ev, {}); return ev end\n"
    "  if u == 'stash' then stash = ev.data; return ev end\n"
    "  if u == 'late' then stash.name = 'Late'; return ev end\n"
    "  if u == 'copy' then\n"
    "    local c = moonwire.copy(ev); c.data.who = 'x'; return c\n"
    "  end\n"
    "  if u == 'copycheck' then\n"
    "    local c = moonwire.copy(ev)\n"
    "    c.data.n = 2\n"
    "    if getmetatable(c) == nil and getmetatable(c.data) == nil and\n"
    "       getmetatable(c.data.tags) == moonwire.json.array_mt and\n"
    "       rawget(c.data, 'n') == 2 and ev.data.n == 1.5 then\n"
    "      return ev\n"
    "    end\n"
    "    return nil\n"
    "  end\n"
    "  if u == 'reads' then\n"
    "    local keys = {}\n"
    "    for k in pairs(ev) do keys[#keys + 1] = k end\n"
    "    table.sort(keys)\n"
    "    local n = 0\n"
    "    for k, v in next, ev.data do n = n + 1 end\n"
    "    if table.concat(keys, ',') == "
    "'data,event,id,seq,topic,trace_id,type'\n"
    "       and n == 4 and #ev.data.tags == 2 and unpack(ev.data.tags) == 'a'\n"
    "       and rawget(ev, 'id') == 'room:1:7' and ev.data.nested.x ==\n"
    "       moonwire.json.null and getmetatable(ev) == nil then\n"
    "      return ev\n"
    "    end\n"
    "    return nil\n"
    "  end\n"
    "  if u == 'loop' then while true do end end\n"
    "  if u == 'hog' then\n"
    "    local t = {}\n"
    "    while true do t[#t + 1] = string.rep('x', 1e6) .. #t end\n"
    "  end\n"
    "  return ev\n"
    "end\n";

static void deliver_as(mw_policy_t *p, const char *user, mw_event_t *ev,
                       mw_policy_result_t *res) {
  mw_policy_identity_t id;
  ident(p, user, NULL, NULL, &id);
  deliver(p, &id, ev, res);
  mw__policy_identity_free(p, &id);
}

static void expect_pass(mw_policy_t *p, mw_event_t *ev) {
  mw_policy_result_t res;
  deliver_as(p, "pass", ev, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  assert_null(res.out);
}

static void expect_changed(mw_policy_t *p, const char *user, mw_event_t *ev,
                           const char *json) {
  mw_policy_result_t res;
  deliver_as(p, user, ev, &res);
  if (res.status != MW_POLICY_OK) fail_msg("%s: %s", user, res.reason);
  assert_int_equal(res.verdict, MW_VERDICT_CHANGED);
  assert_json(res.out, json);
  mw__policy_result_clear(&res);
  /* The next recipient gets the event as published. */
  expect_pass(p, ev);
}

static void test_deliver_view(void **state) {
  (void)state;
  mw_policy_t *p = load_path(write_script("view.lua", view_lua));
  mw_event_t *ev = room_event(7);
  mw_policy_result_t res, a, b;
  expect_pass(p, ev);
  expect_pass(p, ev); /* the fast path */
  expect_changed(p, "nested", ev,
                 "{\"event\":\"UPDATED\",\"trace_id\":\"tr-1\",\"data\":"
                 "{\"name\":\"Bike\",\"tags\":[\"a\",\"b\"],\"n\":1.5,"
                 "\"nested\":{\"x\":null,\"y\":false,\"e\":[]}}}");
  expect_changed(p, "array", ev,
                 "{\"event\":\"UPDATED\",\"trace_id\":\"tr-1\",\"data\":"
                 "{\"name\":\"Bike\",\"tags\":[\"a\",\"b\",\"c\"],\"n\":1.5,"
                 "\"nested\":{\"x\":null,\"y\":true,\"e\":[]}}}");
  expect_changed(p, "arrayset", ev,
                 "{\"event\":\"UPDATED\",\"trace_id\":\"tr-1\",\"data\":"
                 "{\"name\":\"Bike\",\"tags\":[\"z\",\"b\"],\"n\":1.5,"
                 "\"nested\":{\"x\":null,\"y\":true,\"e\":[]}}}");
  expect_changed(
      p, "objinsert", ev,
      "{\"event\":\"UPDATED\",\"trace_id\":\"tr-1\",\"data\":"
      "{\"name\":\"Bike\",\"tags\":[\"a\",\"b\"],\"n\":1.5,\"1\":\"q\","
      "\"nested\":{\"x\":null,\"y\":true,\"e\":[]}}}");
  /* Written with the same value: still the event. */
  deliver_as(p, "same", ev, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  assert_null(res.out);
  expect_pass(p, ev);
  /* Reads see the event through the view. */
  deliver_as(p, "reads", ev, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  deliver_as(p, "copycheck", ev, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  expect_pass(p, ev);
  /* setmetatable on the view fails the call (dropped), nothing else. */
  deliver_as(p, "setmt", ev, &res);
  assert_int_equal(res.status, MW_POLICY_ERROR);
  assert_int_equal(res.verdict, MW_VERDICT_DROP);
  assert_contains(res.reason, "read-only");
  expect_pass(p, ev);
  /* Equal copies from different tables share one result (one encoding). */
  deliver_as(p, "copy", ev, &a);
  deliver_as(p, "copy", ev, &b);
  assert_int_equal(a.verdict, MW_VERDICT_CHANGED);
  assert_int_equal(b.verdict, MW_VERDICT_CHANGED);
  assert_ptr_equal(a.out_key, b.out_key);
  assert_true(json_equal(a.out, b.out));
  mw__policy_result_clear(&a);
  mw__policy_result_clear(&b);
  expect_pass(p, ev);
  /* A view kept from an older event: writing to it changes nothing now. */
  deliver_as(p, "stash", ev, &res);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  mw_event_t *ev2 = room_event(8);
  deliver_as(p, "late", ev2, &res);
  assert_int_equal(res.status, MW_POLICY_OK);
  assert_int_equal(res.verdict, MW_VERDICT_ALLOW);
  expect_pass(p, ev2);
  /* Budget and memory on the fast path; the state keeps working. */
  expect_pass(p, ev2);
  deliver_as(p, "loop", ev2, &res);
  assert_int_equal(res.status, MW_POLICY_TIMEOUT);
  assert_int_equal(res.verdict, MW_VERDICT_DROP);
  expect_pass(p, ev2);
  deliver_as(p, "hog", ev2, &res);
  assert_int_equal(res.status, MW_POLICY_NOMEM);
  assert_int_equal(res.verdict, MW_VERDICT_DROP);
  expect_pass(p, ev2);
  expect_changed(p, "nested", ev2,
                 "{\"event\":\"UPDATED\",\"trace_id\":\"tr-1\",\"data\":"
                 "{\"name\":\"Bike\",\"tags\":[\"a\",\"b\"],\"n\":1.5,"
                 "\"nested\":{\"x\":null,\"y\":false,\"e\":[]}}}");
  mw_event_unref(&ev);
  mw_event_unref(&ev2);
  mw__policy_free(p);
}

int main(void) {
  mw__log_setup(MW_LOG_ERROR, 0);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_missing_hooks),
      cmocka_unit_test(test_connect_allow),
      cmocka_unit_test(test_connect_deny),
      cmocka_unit_test(test_connect_badreturn),
      cmocka_unit_test(test_connect_error),
      cmocka_unit_test(test_subscribe),
      cmocka_unit_test(test_timeouts),
      cmocka_unit_test(test_memory),
      cmocka_unit_test(test_sandbox),
      cmocka_unit_test(test_deliver_once_per_event),
      cmocka_unit_test(test_deliver_drop_and_change),
      cmocka_unit_test(test_deliver_out_keys),
      cmocka_unit_test(test_deliver_failures),
      cmocka_unit_test(test_deliver_view),
      cmocka_unit_test(test_publish),
      cmocka_unit_test(test_tenants),
      cmocka_unit_test(test_reload),
      cmocka_unit_test(test_load_errors),
      cmocka_unit_test(test_default_policy),
      cmocka_unit_test(test_jwt),
      cmocka_unit_test(test_lib_json),
      cmocka_unit_test(test_lib_misc),
      cmocka_unit_test(test_topic_match),
  };
  return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
