/* Unit tests of the Redis storage's pure logic (plugins/storage_redis/
 * redis_proto.c): URL parsing, the envelope parts the publish script
 * concatenates, reply validation, pub/sub message splitting, backoff, the
 * per-topic order of local fan-out vs pub/sub echoes, the in-flight cap.
 * Replies are built by hand as hiredis redisReply trees. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "moonwire/errno.h"
#include "redis_proto.h"

static void test_url_ok(void **state) {
  rd_url_t u;
  char err[128];
  assert_int_equal(
      rd_url_parse("redis://127.0.0.1:6380/2", &u, err, sizeof err), 0);
  assert_string_equal(u.host, "127.0.0.1");
  assert_int_equal(u.port, 6380);
  assert_int_equal(u.db, 2);
  assert_string_equal(u.password, "");

  assert_int_equal(rd_url_parse("redis://localhost", &u, err, sizeof err), 0);
  assert_string_equal(u.host, "localhost");
  assert_int_equal(u.port, 6379);
  assert_int_equal(u.db, 0);

  assert_int_equal(rd_url_parse("redis://:s3cr%40t@h:1/", &u, err, sizeof err),
                   0);
  assert_string_equal(u.password, "s3cr@t");
  assert_string_equal(u.host, "h");
  assert_int_equal(u.port, 1);

  assert_int_equal(rd_url_parse("redis://:p@ss@h:7/3", &u, err, sizeof err), 0);
  assert_string_equal(u.password, "p@ss");
  assert_int_equal(u.db, 3);

  assert_int_equal(rd_url_parse("redis://[::1]:7000", &u, err, sizeof err), 0);
  assert_string_equal(u.host, "::1");
  assert_int_equal(u.port, 7000);
}

static void test_url_bad(void **state) {
  rd_url_t u;
  char err[128];
  const char *bad[] = {
      NULL,
      "",
      "http://h:1",
      "redis://",
      "redis://:6379",
      "redis://h:",
      "redis://h:0",
      "redis://h:65536",
      "redis://h:12x",
      "redis://h/x",
      "redis://user:pw@h",
      "redis://pw@h",
      "redis://h:1?x=1",
      "redis://[::1",
      "redis://:%zz@h",
      "redis://h:1/99999999999",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    assert_int_equal(rd_url_parse(bad[i], &u, err, sizeof err), MW_EINVAL);
    assert_true(err[0] != '\0');
  }
}

static char *join5(rd_buf_t *p1, const char *seq, rd_buf_t *p2, rd_buf_t *p3) {
  rd_buf_t out = {0};
  rd_buf_add(&out, p1->data, p1->len);
  rd_buf_add(&out, seq, strlen(seq));
  rd_buf_add(&out, p2->data, p2->len);
  rd_buf_add(&out, seq, strlen(seq));
  rd_buf_add(&out, p3->data, p3->len);
  return out.data;
}

static void test_envelope(void **state) {
  rd_buf_t p1 = {0}, p2 = {0}, p3 = {0};
  const char *data = "{\"a\":1}";
  rd_envelope_parts("room:1", "ADDED", data, strlen(data), "t1", &p1, &p2, &p3);
  char *s = join5(&p1, "42", &p2, &p3);
  /* The key order and the compact form of the core's encoder. */
  assert_string_equal(s, "{\"type\":\"event\",\"topic\":\"room:1\",\"event\":"
                         "\"ADDED\",\"seq\":42,\"id\":\"room:1:42\",\"data\":"
                         "{\"a\":1},\"trace_id\":\"t1\"}");
  free(s);
  free(p1.data);
  free(p2.data);
  free(p3.data);

  memset(&p1, 0, sizeof p1);
  memset(&p2, 0, sizeof p2);
  memset(&p3, 0, sizeof p3);
  rd_envelope_parts("q\"\\t\x01/é", "E\n", "{}", 2, NULL, &p1, &p2, &p3);
  s = join5(&p1, "7", &p2, &p3);
  assert_string_equal(
      s, "{\"type\":\"event\",\"topic\":\"q\\\"\\\\t\\u0001/é\","
         "\"event\":\"E\\n\",\"seq\":7,\"id\":\"q\\\"\\\\t\\u0001/é:7\","
         "\"data\":{}}");
  free(s);
  free(p1.data);
  free(p2.data);
  free(p3.data);
}

/* --- reply builders ---------------------------------------------------- */

static redisReply *r_int(long long v) {
  redisReply *r = calloc(1, sizeof *r);
  r->type = REDIS_REPLY_INTEGER;
  r->integer = v;
  return r;
}

static redisReply *r_str(int type, const char *s) {
  redisReply *r = calloc(1, sizeof *r);
  r->type = type;
  r->str = strdup(s);
  r->len = strlen(s);
  return r;
}

static redisReply *r_nil(void) {
  redisReply *r = calloc(1, sizeof *r);
  r->type = REDIS_REPLY_NIL;
  return r;
}

static redisReply *r_arr(size_t n, ...) {
  redisReply *r = calloc(1, sizeof *r);
  va_list ap;
  r->type = REDIS_REPLY_ARRAY;
  r->elements = n;
  r->element = calloc(n ? n : 1, sizeof *r->element);
  va_start(ap, n);
  for (size_t i = 0; i < n; i++)
    r->element[i] = va_arg(ap, redisReply *);
  va_end(ap);
  return r;
}

static void r_free(redisReply *r) {
  if (!r) return;
  for (size_t i = 0; i < r->elements; i++)
    r_free(r->element[i]);
  free(r->element);
  free(r->str);
  free(r);
}

static void test_publish_reply(void **state) {
  uint64_t seq = 0;
  char epoch[RD_EPOCH_MAX];
  const char *why = NULL;
  redisReply *ok = r_arr(2, r_int(5), r_str(REDIS_REPLY_STRING, "abc123"));
  assert_int_equal(rd_check_publish_reply(ok, &seq, epoch, &why), 0);
  assert_int_equal(seq, 5);
  assert_string_equal(epoch, "abc123");
  r_free(ok);

  redisReply *bad[] = {
      NULL,
      r_str(REDIS_REPLY_STATUS, "OK"),
      r_int(5),
      r_arr(1, r_int(5)),
      r_arr(2, r_int(0), r_str(REDIS_REPLY_STRING, "e")),
      r_arr(2, r_str(REDIS_REPLY_STRING, "5"), r_str(REDIS_REPLY_STRING, "e")),
      r_arr(2, r_int(5), r_str(REDIS_REPLY_STRING, "")),
      r_arr(2, r_int(5), r_str(REDIS_REPLY_STRING, "with space")),
      r_arr(2, r_int(5), r_nil()),
      r_arr(3, r_int(5), r_str(REDIS_REPLY_STRING, "e"), r_int(1)),
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    why = NULL;
    assert_int_equal(rd_check_publish_reply(bad[i], &seq, epoch, &why),
                     MW_EINVAL);
    assert_string_equal(why, "reply_type");
    r_free(bad[i]);
  }
  redisReply *err = r_str(REDIS_REPLY_ERROR, "ERR Error running script");
  assert_int_equal(rd_check_publish_reply(err, &seq, epoch, &why), MW_EINVAL);
  assert_string_equal(why, "script_error");
  r_free(err);
}

static void test_read_reply(void **state) {
  uint64_t top;
  char epoch[RD_EPOCH_MAX];
  int complete;
  redisReply **items;
  size_t n;
  const char *why;
  redisReply *ok = r_arr(4, r_int(9), r_str(REDIS_REPLY_STRING, "ep"), r_int(1),
                         r_arr(2, r_str(REDIS_REPLY_STRING, "1|{}"),
                               r_str(REDIS_REPLY_STRING, "2|{}")));
  assert_int_equal(
      rd_check_read_reply(ok, &top, epoch, &complete, &items, &n, &why), 0);
  assert_int_equal(top, 9);
  assert_string_equal(epoch, "ep");
  assert_int_equal(complete, 1);
  assert_int_equal(n, 2);
  assert_string_equal(items[1]->str, "2|{}");
  r_free(ok);

  redisReply *bad[] = {
      r_arr(3, r_int(9), r_str(REDIS_REPLY_STRING, "ep"), r_int(1)),
      r_arr(4, r_int(-1), r_str(REDIS_REPLY_STRING, "ep"), r_int(1), r_arr(0)),
      r_arr(4, r_int(1), r_str(REDIS_REPLY_STRING, "ep"), r_int(2), r_arr(0)),
      r_arr(4, r_int(1), r_str(REDIS_REPLY_STRING, "ep"), r_int(1), r_int(0)),
      r_arr(4, r_int(1), r_str(REDIS_REPLY_STRING, "ep"), r_int(1),
            r_arr(1, r_int(3))),
      r_arr(4, r_int(1), r_nil(), r_int(1), r_arr(0)),
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    assert_int_equal(
        rd_check_read_reply(bad[i], &top, epoch, &complete, &items, &n, &why),
        MW_EINVAL);
    r_free(bad[i]);
  }
}

static void test_presence_reply(void **state) {
  const char *why;
  redisReply *ok = r_arr(2,
                         r_arr(2, r_str(REDIS_REPLY_STRING, "c1"),
                               r_str(REDIS_REPLY_STRING, "c2")),
                         r_arr(2, r_str(REDIS_REPLY_STRING, "u1"), r_nil()));
  assert_int_equal(rd_check_presence_reply(ok, &why), 0);
  r_free(ok);
  redisReply *uneven =
      r_arr(2, r_arr(1, r_str(REDIS_REPLY_STRING, "c1")), r_arr(0));
  assert_int_equal(rd_check_presence_reply(uneven, &why), MW_EINVAL);
  r_free(uneven);
  redisReply *badid = r_arr(2, r_arr(1, r_int(1)), r_arr(1, r_nil()));
  assert_int_equal(rd_check_presence_reply(badid, &why), MW_EINVAL);
  r_free(badid);
}

static void test_history_item_and_message(void **state) {
  const char *json;
  size_t len;
  const char m[] = "1700000000000|{\"type\":\"event\"}";
  assert_int_equal(rd_history_item(m, strlen(m), &json, &len), 0);
  assert_int_equal(len, strlen("{\"type\":\"event\"}"));
  assert_memory_equal(json, "{\"type\":\"event\"}", len);
  assert_int_equal(rd_history_item("x|{}", 4, &json, &len), MW_EINVAL);
  assert_int_equal(rd_history_item("|{}", 3, &json, &len), MW_EINVAL);
  assert_int_equal(rd_history_item("12|", 3, &json, &len), MW_EINVAL);
  assert_int_equal(rd_history_item("12{}", 4, &json, &len), MW_EINVAL);

  char epoch[RD_EPOCH_MAX];
  const char ev[] = "ab12 {\"x\":1}";
  assert_int_equal(rd_split_message(ev, strlen(ev), epoch, &json, &len), 0);
  assert_string_equal(epoch, "ab12");
  assert_memory_equal(json, "{\"x\":1}", len);
  const char pr[] = "- {\"type\":\"presence\"}";
  assert_int_equal(rd_split_message(pr, strlen(pr), epoch, &json, &len), 0);
  assert_string_equal(epoch, "");
  assert_int_equal(rd_split_message("nospace", 7, epoch, &json, &len),
                   MW_EINVAL);
  assert_int_equal(rd_split_message(" {}", 3, epoch, &json, &len), MW_EINVAL);
  assert_int_equal(rd_split_message("e ", 2, epoch, &json, &len), MW_EINVAL);
  char longe[200];
  memset(longe, 'a', sizeof longe);
  longe[150] = ' ';
  assert_int_equal(rd_split_message(longe, sizeof longe, epoch, &json, &len),
                   MW_EINVAL);
}

static void test_backoff(void **state) {
  uint64_t d = 0, seen[10];
  for (int i = 0; i < 10; i++)
    seen[i] = d = rd_backoff_next(d, 100, 5000);
  assert_int_equal(seen[0], 100);
  assert_int_equal(seen[1], 200);
  assert_int_equal(seen[5], 3200);
  assert_int_equal(seen[6], 5000);
  assert_int_equal(seen[9], 5000);
}

/* The publisher's own event goes out at the reply only right behind the
 * last one fanned out (same epoch); its echo is then a duplicate. */
static void test_order_local_and_echo(void **state) {
  rd_order_t o;
  memset(&o, 0, sizeof o);
  /* Nothing fanned out yet: a reply waits for its echo. */
  assert_int_equal(rd_order_local(&o, 1, "E1"), 0);
  assert_int_equal(rd_order_echo(&o, 1, "E1"), 1);
  assert_int_equal(o.seq, 1);
  /* 2 follows 1: out at the reply; its echo is dropped. */
  assert_int_equal(rd_order_local(&o, 2, "E1"), 1);
  assert_int_equal(o.seq, 2);
  assert_int_equal(rd_order_echo(&o, 2, "E1"), 0);
  assert_int_equal(o.seq, 2);
  /* A pipeline of replies 3..5: each directly follows. */
  for (uint64_t s = 3; s <= 5; s++)
    assert_int_equal(rd_order_local(&o, s, "E1"), 1);
  for (uint64_t s = 3; s <= 5; s++)
    assert_int_equal(rd_order_echo(&o, s, "E1"), 0);
  /* Another node's 6 is still on its way when our 7 is answered: 7 waits
   * for its echo, behind 6; both echoes are delivered, in order. */
  assert_int_equal(rd_order_local(&o, 7, "E1"), 0);
  assert_int_equal(o.seq, 5);
  assert_int_equal(rd_order_echo(&o, 6, "E1"), 1);
  assert_int_equal(rd_order_echo(&o, 7, "E1"), 1);
  assert_int_equal(o.seq, 7);
  /* A stale or repeated echo is never delivered twice. */
  assert_int_equal(rd_order_echo(&o, 3, "E1"), 0);
  assert_int_equal(rd_order_echo(&o, 7, "E1"), 0);
  /* Another epoch (Redis emptied): seq 1 again; the echo restarts the
   * order, a reply of the new epoch waits until then. */
  assert_int_equal(rd_order_local(&o, 8, "E2"), 0);
  assert_int_equal(rd_order_local(&o, 1, "E2"), 0);
  assert_int_equal(rd_order_echo(&o, 1, "E2"), 1);
  assert_string_equal(o.epoch, "E2");
  assert_int_equal(rd_order_local(&o, 2, "E2"), 1);
  /* A gap in the echoes (pub/sub was down): delivered, order moves on;
   * a reply must follow the new position. */
  assert_int_equal(rd_order_echo(&o, 10, "E2"), 1);
  assert_int_equal(rd_order_local(&o, 3, "E2"), 0);
  assert_int_equal(rd_order_local(&o, 11, "E2"), 1);
  /* Hostile input: no epoch is never "the same"; delivered, not recorded. */
  assert_int_equal(rd_order_local(&o, 12, NULL), 0);
  assert_int_equal(rd_order_echo(&o, 12, NULL), 1);
  assert_int_equal(rd_order_echo(&o, 12, ""), 1);
  assert_int_equal(o.seq, 11);
}

static void test_pending_admit(void **state) {
  assert_int_equal(rd_pending_admit(0, 0, 100, 4, 1000), 1);
  assert_int_equal(rd_pending_admit(3, 500, 100, 4, 1000), 1);
  assert_int_equal(rd_pending_admit(4, 500, 100, 4, 1000), 0); /* count */
  assert_int_equal(rd_pending_admit(3, 950, 100, 4, 1000), 0); /* bytes */
  assert_int_equal(rd_pending_admit(3, 900, 100, 4, 1000), 1); /* exactly */
  assert_int_equal(rd_pending_admit(0, 0, 2000, 4, 1000), 0);  /* one too big */
  assert_int_equal(rd_pending_admit(0, 0, SIZE_MAX, 4, 1000), 0);
  assert_int_equal(rd_pending_admit(1000000, SIZE_MAX - 1, SIZE_MAX, 0, 0), 1);
  assert_int_equal(rd_pending_admit(3, SIZE_MAX - 1, 100, 4, SIZE_MAX), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_url_ok),
      cmocka_unit_test(test_url_bad),
      cmocka_unit_test(test_envelope),
      cmocka_unit_test(test_publish_reply),
      cmocka_unit_test(test_read_reply),
      cmocka_unit_test(test_presence_reply),
      cmocka_unit_test(test_history_item_and_message),
      cmocka_unit_test(test_backoff),
      cmocka_unit_test(test_order_local_and_echo),
      cmocka_unit_test(test_pending_admit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
