/* Topics, subscriptions, limits and fan-out of one worker's hub (core/hub.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core_fixture.h"
#include "event.h"
#include "client.h"
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

static mw_client_t *client(core_fixture_t *f, rec_t *r, const char *token) {
  mw_client_t *c = mw__client_new(&f->worker, "websocket", deliver, r);
  int code = 0;
  assert_int_equal(mw__client_connect(c, token, &code), 0);
  return c;
}

static mw_event_t *sealed_data(const char *topic, uint64_t seq, json_t *data) {
  mw_event_t *ev = mw__event_draft(topic, "UPDATED", "t1", data);
  assert_int_equal(mw__event_seal(ev, seq, "e1"), 0);
  return ev;
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
  mw_client_t *ca = client(f, &a, NULL);
  mw_client_t *cb = client(f, &b, NULL);
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
  mw_client_t *c = client(f, &r, NULL);
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
  mw_client_t *c = client(f, &r, NULL);
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
  mw_client_t *ca = client(f, &a, NULL);
  mw_client_t *cb = client(f, &b, NULL);
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
  mw_client_t *a = client(f, &r, NULL);
  mw_client_t *b = client(f, &r, NULL);
  assert_string_not_equal(mw__client_id(a), mw__client_id(b));
  assert_non_null(strstr(mw__client_id(a), "test-0-"));
  mw__client_free(&a);
  mw__client_free(&b);
}

/* Records the wire bytes each recipient got. */
typedef struct seen {
  int got;
  const mw_event_t *last;
} seen_t;

static void deliver_seen(mw_client_t *c, mw_event_t *ev, void *ud) {
  seen_t *s = ud;
  s->got++;
  s->last = ev;
}

static const char tenant_policy[] =
    "function on_connect(req)\n"
    "  if req.token == 'acme' then return {user_id='a1', tenant_id='acme'} "
    "end\n"
    "  if req.token == 'globex' then return {user_id='g1', tenant_id='globex'} "
    "end\n"
    "  if req.token == 'admin' then return {user_id='root', tenant_id='ops', "
    "all_tenants=true} end\n"
    "  if req.token == 'nobody' then return nil, 401, 'who are you' end\n"
    "  return {user_id='anon'}\n"
    "end\n"
    "function on_subscribe(conn, topic)\n"
    "  if topic == 'secret' then return false, 403, 'no secrets' end\n"
    "  return true\n"
    "end\n";

static mw_client_t *client_seen(core_fixture_t *f, seen_t *s, const char *tok) {
  mw_client_t *c = mw__client_new(&f->worker, "websocket", deliver_seen, s);
  int code = 0;
  assert_int_equal(mw__client_connect(c, tok, &code), 0);
  assert_int_equal(mw__subscribe(c, "t"), 0);
  return c;
}

static void test_tenant_isolation(void **state) {
  core_fixture_t *f = *state;
  fixture_set_policy(f, tenant_policy);
  seen_t a = {0}, g = {0}, anon = {0}, admin = {0};
  mw_client_t *ca = client_seen(f, &a, "acme");
  mw_client_t *cg = client_seen(f, &g, "globex");
  mw_client_t *cn = client_seen(f, &anon, NULL);
  mw_client_t *cr = client_seen(f, &admin, "admin");
  assert_string_equal(mw__client_tenant_id(ca), "acme");
  mw_event_t *acme_ev =
      sealed_data("t", 1, json_pack("{s:s}", "tenant_id", "acme"));
  mw_event_t *public_ev = sealed_data("t", 2, json_pack("{s:i}", "x", 1));
  mw__hub_deliver(f->worker.hub, acme_ev);
  mw__hub_deliver(f->worker.hub, public_ev);
  assert_int_equal(a.got, 2); /* own tenant + public */
  assert_int_equal(g.got, 1); /* public only */
  assert_ptr_equal(g.last, public_ev);
  assert_int_equal(anon.got, 2);       /* no tenant: sees everything */
  assert_int_equal(admin.got, 2);      /* widened explicitly */
  assert_ptr_equal(a.last, public_ev); /* unchanged: the shared event */
  mw_event_unref(&acme_ev);
  mw_event_unref(&public_ev);
  mw__client_free(&ca);
  mw__client_free(&cg);
  mw__client_free(&cn);
  mw__client_free(&cr);
}

static void test_connect_and_subscribe_denied(void **state) {
  core_fixture_t *f = *state;
  fixture_set_policy(f, tenant_policy);
  rec_t r = {0};
  mw_client_t *c = mw__client_new(&f->worker, "websocket", deliver, &r);
  assert_int_equal(mw__subscribe(c, "t"), MW_EDENIED); /* not connected */
  int code = 0;
  assert_int_equal(mw__client_connect(c, "nobody", &code), MW_EDENIED);
  assert_int_equal(code, 401);
  assert_string_equal(mw__client_error(c, NULL), "who are you");
  mw__client_free(&c);
  c = client(f, &r, "acme");
  assert_int_equal(mw__subscribe(c, "secret"), MW_EDENIED);
  assert_string_equal(mw__client_error(c, &code), "no secrets");
  assert_int_equal(code, 403);
  assert_int_equal(mw__subscribe(c, "open"), 0);
  mw__client_free(&c);
}

static void test_deliver_hook_drop_and_shared_transform(void **state) {
  core_fixture_t *f = *state;
  fixture_set_policy(
      f, "function on_connect(req) return {user_id=req.token} end\n"
         "local redacted = {}\n"
         "function on_deliver(conn, ev)\n"
         "  if conn.user_id == 'drop' then return nil end\n"
         "  if conn.user_id == 'redact' then\n"
         "    local c = moonwire.copy(ev); c.data.secret = nil; return c\n"
         "  end\n"
         "  return ev\n"
         "end\n");
  seen_t keep = {0}, drop = {0}, r1 = {0}, r2 = {0};
  mw_client_t *ck = client_seen(f, &keep, "keep");
  mw_client_t *cd = client_seen(f, &drop, "drop");
  mw_client_t *c1 = client_seen(f, &r1, "redact");
  mw_client_t *c2 = client_seen(f, &r2, "redact");
  mw_event_t *ev =
      sealed_data("t", 5, json_pack("{s:s,s:s}", "secret", "s3", "ok", "y"));
  mw__hub_deliver(f->worker.hub, ev);
  assert_int_equal(keep.got, 1);
  assert_ptr_equal(keep.last, ev); /* unchanged: no re-encode */
  assert_int_equal(drop.got, 0);
  assert_int_equal(r1.got, 1);
  assert_int_equal(r2.got, 1);
  assert_ptr_not_equal(r1.last, ev);
  /* Two equal results from two different tables: encoded once. */
  assert_ptr_equal(r1.last, r2.last);
  mw_event_unref(&ev);
  mw__client_free(&ck);
  mw__client_free(&cd);
  mw__client_free(&c1);
  mw__client_free(&c2);
}

/* Records what a recipient got: the event and its data as sorted JSON. */
typedef struct got {
  int n;
  const mw_event_t *last;
  char data[256];
} got_t;

static void deliver_got(mw_client_t *c, mw_event_t *ev, void *ud) {
  got_t *g = ud;
  (void)c;
  g->n++;
  g->last = ev;
  char *t = json_dumps(mw__event_data(ev), JSON_COMPACT | JSON_SORT_KEYS);
  snprintf(g->data, sizeof g->data, "%s", t ? t : "");
  free(t);
}

static mw_client_t *client_got(core_fixture_t *f, got_t *g, const char *tok) {
  mw_client_t *c = mw__client_new(&f->worker, "websocket", deliver_got, g);
  assert_int_equal(mw__client_connect(c, tok, NULL), 0);
  assert_int_equal(mw__subscribe(c, "t"), 0);
  return c;
}

/* The event handed to on_deliver is one view per event: writes to it (an
 * object field, an array through table.insert) make a changed event for
 * that recipient only; recipients after it get the event as published;
 * reads through pairs / # / rawget see the event. */
static void test_deliver_hook_writes_stay_with_the_recipient(void **state) {
  core_fixture_t *f = *state;
  fixture_set_policy(
      f, "function on_connect(req) return {user_id=req.token} end\n"
         "function on_deliver(conn, ev)\n"
         "  local u = conn.user_id\n"
         "  if u == 'inplace' then ev.data.extra = 1; return ev end\n"
         "  if u == 'nested' then ev.data.obj.k = 'w'; return ev end\n"
         "  if u == 'push' then table.insert(ev.data.list, 3); return ev end\n"
         "  if u == 'read' then\n"
         "    local n = 0\n"
         "    for k, v in pairs(ev.data) do n = n + 1 end\n"
         "    local m = 0\n"
         "    for i, v in ipairs(ev.data.list) do m = m + v end\n"
         "    if n == 3 and #ev.data.list == 2 and m == 3 and\n"
         "       rawget(ev.data, 'obj').k == 'v' and next(ev.data) ~= nil and\n"
         "       getmetatable(ev.data) == nil and\n"
         "       moonwire.json.encode(ev.data) ==\n"
         "         '{\"list\":[1,2],\"obj\":{\"k\":\"v\"},\"x\":\"y\"}' then\n"
         "      return ev\n"
         "    end\n"
         "    return nil\n"
         "  end\n"
         "  return ev\n"
         "end\n");
  /* The hub delivers to the newest subscription first. */
  const char *order[] = {"keep",   "read", "push",   "keep",
                         "nested", "keep", "inplace"};
  enum { N = 7 };
  got_t g[N];
  mw_client_t *c[N];
  memset(g, 0, sizeof g);
  for (int i = N - 1; i >= 0; i--)
    c[i] = client_got(f, &g[i], order[i]);
  for (int round = 0; round < 2; round++) {
    json_t *data = json_loads(
        "{\"x\":\"y\",\"list\":[1,2],\"obj\":{\"k\":\"v\"}}", 0, NULL);
    mw_event_t *ev = sealed_data("t", 9 + (uint64_t)round, data);
    mw__hub_deliver(f->worker.hub, ev);
    const char *orig = "{\"list\":[1,2],\"obj\":{\"k\":\"v\"},\"x\":\"y\"}";
    for (int i = 0; i < N; i++) {
      assert_int_equal(g[i].n, round + 1);
      if (!strcmp(order[i], "inplace")) {
        assert_string_equal(g[i].data, "{\"extra\":1,\"list\":[1,2],\"obj\":"
                                       "{\"k\":\"v\"},\"x\":\"y\"}");
      } else if (!strcmp(order[i], "nested")) {
        assert_string_equal(
            g[i].data, "{\"list\":[1,2],\"obj\":{\"k\":\"w\"},\"x\":\"y\"}");
      } else if (!strcmp(order[i], "push")) {
        assert_string_equal(
            g[i].data, "{\"list\":[1,2,3],\"obj\":{\"k\":\"v\"},\"x\":\"y\"}");
      } else {
        assert_string_equal(g[i].data, orig);
        assert_ptr_equal(g[i].last, ev); /* the shared bytes */
      }
    }
    mw_event_unref(&ev);
  }
  for (int i = 0; i < N; i++)
    mw__client_free(&c[i]);
}

/* Records seqs in order. */
typedef struct seqs {
  uint64_t got[64];
  size_t n;
  int acks, recovered, status;
  uint64_t ack_seq;
} seqs_t;

static void deliver_seq(mw_client_t *c, mw_event_t *ev, void *ud) {
  seqs_t *s = ud;
  if (s->n < 64) s->got[s->n++] = ev->seq;
}

static void on_recover(int status, const char *topic, int recovered,
                       uint64_t seq, const char *epoch, void *ud) {
  seqs_t *s = ud;
  s->acks++;
  s->status = status;
  s->recovered = recovered;
  s->ack_seq = seq;
  assert_int_equal(s->n, 0); /* the answer comes before any replayed event */
}

static mw_event_t *evs[16];

static void make_history(uint64_t upto) {
  for (uint64_t i = 1; i <= upto; i++)
    evs[i] = sealed("t", i);
  for (uint64_t i = 1; i <= upto; i++)
    fixture_store.history[i - 1] = evs[i];
  fixture_store.nhistory = upto;
  fixture_store.top_seq = upto;
}

static void drop_history(uint64_t upto) {
  for (uint64_t i = 1; i <= upto; i++)
    mw_event_unref(&evs[i]);
}

static mw_client_t *seq_client(core_fixture_t *f, seqs_t *s) {
  mw_client_t *c = mw__client_new(&f->worker, "websocket", deliver_seq, s);
  assert_int_equal(mw__client_connect(c, NULL, NULL), 0);
  return c;
}

static void test_recovery_replays_then_live_without_gap_or_dup(void **state) {
  core_fixture_t *f = *state;
  make_history(5);
  evs[6] = sealed("t", 6);
  evs[7] = sealed("t", 7);
  fixture_store.deferred = 1;
  seqs_t s = {0};
  mw_client_t *c = seq_client(f, &s);
  assert_int_equal(mw__subscribe_since(c, "t", 2, "e1", on_recover, &s), 0);
  assert_int_equal(fixture_store.since, 2);
  /* While history is read, 5 (already in it), 6 and 7 arrive live. */
  mw__hub_deliver(f->worker.hub, evs[5]);
  mw__hub_deliver(f->worker.hub, evs[6]);
  assert_int_equal(s.n, 0); /* held */
  fixture_history_fire();
  mw__hub_deliver(f->worker.hub, evs[7]);
  mw__hub_deliver(f->worker.hub, evs[7]); /* a duplicate is suppressed */
  assert_int_equal(s.acks, 1);
  assert_int_equal(s.status, 0);
  assert_int_equal(s.recovered, 1);
  assert_int_equal(s.ack_seq, 5);
  uint64_t want[] = {3, 4, 5, 6, 7};
  assert_int_equal(s.n, 5);
  for (size_t i = 0; i < 5; i++)
    assert_int_equal(s.got[i], want[i]);
  const char *epoch = NULL;
  assert_int_equal(mw__client_position(c, "t", &epoch), 7);
  assert_string_equal(epoch, "e1");
  mw__client_free(&c);
  drop_history(7);
}

static void test_recovery_other_epoch_is_not_recovered(void **state) {
  core_fixture_t *f = *state;
  make_history(3);
  seqs_t s = {0};
  mw_client_t *c = seq_client(f, &s);
  assert_int_equal(mw__subscribe_since(c, "t", 1, "old-epoch", on_recover, &s),
                   0);
  assert_int_equal(s.acks, 1);
  assert_int_equal(s.recovered, 0);
  assert_int_equal(s.n, 0); /* nothing replayed from another epoch */
  evs[4] = sealed("t", 4);
  mw__hub_deliver(f->worker.hub, evs[4]);
  assert_int_equal(s.n, 1);
  assert_int_equal(s.got[0], 4);
  mw__client_free(&c);
  drop_history(4);
}

static void test_recovery_incomplete_history(void **state) {
  core_fixture_t *f = *state;
  make_history(5);
  fixture_store.complete = 0; /* events 1..2 expired, say */
  seqs_t s = {0};
  mw_client_t *c = seq_client(f, &s);
  assert_int_equal(mw__subscribe_since(c, "t", 0, NULL, on_recover, &s), 0);
  assert_int_equal(s.recovered, 0);
  assert_int_equal(s.n, 0);
  mw__client_free(&c);
  drop_history(5);
}

static void test_recovery_cancelled_by_unsubscribe(void **state) {
  core_fixture_t *f = *state;
  make_history(2);
  fixture_store.deferred = 1;
  seqs_t s = {0};
  mw_client_t *c = seq_client(f, &s);
  assert_int_equal(mw__subscribe_since(c, "t", 0, NULL, on_recover, &s), 0);
  assert_int_equal(mw__unsubscribe(c, "t"), 0);
  fixture_history_fire();
  assert_int_equal(s.acks, 1);
  assert_int_equal(s.status, MW_ECANCELED);
  assert_int_equal(s.n, 0);
  mw__client_free(&c);
  drop_history(2);
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
      cmocka_unit_test_setup_teardown(test_tenant_isolation, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_deliver_hook_writes_stay_with_the_recipient, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_recovery_replays_then_live_without_gap_or_dup, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_recovery_other_epoch_is_not_recovered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_recovery_incomplete_history, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_recovery_cancelled_by_unsubscribe,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_connect_and_subscribe_denied, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          test_deliver_hook_drop_and_shared_transform, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
