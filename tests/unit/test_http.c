/* HTTP parsing, limits, keep-alive, pipelining, async answers and take-over,
 * with scripted byte feeds (core/http.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core_fixture.h"
#include "http.h"
#include "plugin_loader.h"

static mw_http_request_t *held; /* a request answered later */
static char taken_data[256];
static size_t taken_len;
static int taken_closed;

static void route_echo(mw_http_request_t *req, void *ws) {
  const char *q = mw__http_query(req, "q");
  mw__http_respond(req, 200, "text/plain", NULL, q ? q : "-",
                   strlen(q ? q : "-"));
}

static void route_len(mw_http_request_t *req, void *ws) {
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%zu", mw__http_body(req).len);
  mw__http_respond(req, 200, "text/plain", NULL, buf, (size_t)n);
}

static void route_later(mw_http_request_t *req, void *ws) {
  held = req;
}

static void take_data(void *ud, const char *d, size_t n) {
  memcpy(taken_data + taken_len, d, n);
  taken_len += n;
}
static void take_close(void *ud) {
  taken_closed++;
}
static const mw_stream_handler_t take_handler = {take_data, NULL, take_close};

/* Requests held by /hold and the plugin route /plug, in dispatch order. */
static mw_http_request_t *holds[64];
static size_t nholds;
static mw_http_request_t *plugs[8];
static size_t nplugs;
static int aborts;
static void answer(size_t i);

static void route_hold(mw_http_request_t *req, void *ws) {
  assert_true(nholds < 64);
  holds[nholds++] = req;
}

static void on_abort_count(mw_http_request_t *req, void *ud) {
  assert_ptr_equal(req, ud);
  aborts++;
}

/* Holds the request with an abort callback (a long-poll does that). */
static void route_hold_abort(mw_http_request_t *req, void *ws) {
  mw__http_on_abort(req, on_abort_count, req);
  route_hold(req, ws);
}

/* An abort callback that answers every request still held, its own
 * included (the core must free each exactly once). */
static void on_abort_answer_all(mw_http_request_t *req, void *ud) {
  aborts++;
  for (size_t i = 0; i < nholds; i++)
    if (holds[i]) answer(i);
}

static void route_hold_abort_answering(mw_http_request_t *req, void *ws) {
  mw__http_on_abort(req, on_abort_answer_all, NULL);
  route_hold(req, ws);
}

/* A plugin route: it could take the connection, so it is a barrier. */
static void route_plug(mw_http_request_t *req, void *ws) {
  assert_true(nplugs < 8);
  plugs[nplugs++] = req;
}

static void *fake_wstates[1];
static struct mw_plugin_handle fake_plugin = {.wstates = fake_wstates};

/* Answers held request i with its number as the body. */
static void answer(size_t i) {
  char body[16];
  int n = snprintf(body, sizeof body, "h%zu", i);
  mw__http_respond(holds[i], 200, "text/plain", NULL, body, (size_t)n);
  holds[i] = NULL;
}

static int take_tries;
static mw_conn_t *take_result;

static void route_take_try(mw_http_request_t *req, void *ws) {
  static const char head[] = "HTTP/1.1 200 OK\r\n\r\n";
  take_tries++;
  take_result = mw__http_take(req, head, sizeof head - 1, &take_handler, NULL);
}

static void route_take(mw_http_request_t *req, void *ws) {
  static const char head[] = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
  assert_non_null(
      mw__http_take(req, head, sizeof head - 1, &take_handler, NULL));
}

static int setup(void **state) {
  core_fixture_t *f = calloc(1, sizeof *f);
  const char *flags[] = {"--listen", "127.0.0.1:0", NULL};
  fixture_init(f, flags);
  mw__server_route(&f->server, "GET", "/echo", route_echo, NULL);
  mw__server_route(&f->server, "POST", "/len", route_len, NULL);
  mw__server_route(&f->server, "GET", "/later", route_later, NULL);
  mw__server_route(&f->server, "GET", "/take", route_take, NULL);
  mw__server_route(&f->server, "GET", "/hold", route_hold, NULL);
  mw__server_route(&f->server, "HEAD", "/hold", route_hold, NULL);
  mw__server_route(&f->server, "POST", "/hold", route_hold, NULL);
  mw__server_route(&f->server, "GET", "/hold_abort", route_hold_abort, NULL);
  mw__server_route(&f->server, "GET", "/hold_abort_answering",
                   route_hold_abort_answering, NULL);
  mw__server_route(&f->server, "GET", "/plug", route_plug, &fake_plugin);
  mw__server_route(&f->server, "GET", "/take_try", route_take_try, NULL);
  take_tries = 0;
  take_result = NULL;
  held = NULL;
  memset(holds, 0, sizeof holds);
  nholds = 0;
  nplugs = 0;
  aborts = 0;
  taken_len = 0;
  taken_closed = 0;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_done(*state);
  free(*state);
  return 0;
}

static void feed(mw_conn_t *c, const char *s) {
  mw__http_on_data(c, s, strlen(s));
}

static size_t count(const char *hay, const char *needle) {
  size_t n = 0;
  for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
    n++;
  return n;
}

static void test_get_with_query(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /echo?x=1&q=a%20b+c HTTP/1.1\r\nHost: t\r\n\r\n");
  char *out = fixture_output(c, NULL);
  assert_true(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0);
  assert_non_null(strstr(out, "Connection: keep-alive\r\n"));
  assert_non_null(strstr(out, "Content-Length: 5\r\n"));
  assert_non_null(strstr(out, "\r\n\r\na b c"));
  assert_false(c->closing);
  free(out);
}

static void test_pipelined_in_order(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /echo?q=one HTTP/1.1\r\nHost: t\r\n\r\n"
          "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
          "GET /echo?q=two HTTP/1.1\r\nHost: t\r\n\r\n");
  char *out = fixture_output(c, NULL);
  assert_int_equal(count(out, "HTTP/1.1 200 OK"), 3);
  char *one = strstr(out, "\r\n\r\none"), *three = strstr(out, "\r\n\r\n3");
  char *two = strstr(out, "\r\n\r\ntwo");
  assert_non_null(one);
  assert_non_null(three);
  assert_non_null(two);
  assert_true(one < three && three < two);
  free(out);
}

static void test_byte_by_byte(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  const char *req = "GET /echo?q=slow HTTP/1.1\r\nHost: t\r\n\r\n";
  for (size_t i = 0; req[i]; i++)
    mw__http_on_data(c, req + i, 1);
  char *out = fixture_output(c, NULL);
  assert_int_equal(count(out, "HTTP/1.1 200 OK"), 1);
  assert_non_null(strstr(out, "slow"));
  free(out);
}

static void test_garbage_is_400_and_close(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "\x01\x02\x03 hello there\r\n\r\n");
  char *out = fixture_output(c, NULL);
  assert_true(strncmp(out, "HTTP/1.1 400 ", 13) == 0);
  assert_non_null(strstr(out, "Connection: close"));
  assert_true(c->closing);
  free(out);
}

static void test_long_request_line_is_414(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  char *req = malloc(10000);
  memcpy(req, "GET /echo?q=", 12);
  memset(req + 12, 'a', 9000);
  strcpy(req + 9012, " HTTP/1.1\r\n\r\n");
  feed(c, req);
  char *out = fixture_output(c, NULL);
  assert_true(strncmp(out, "HTTP/1.1 414 ", 13) == 0);
  assert_true(c->closing);
  free(out);
  free(req);
}

static void test_big_headers_are_431(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  char *req = malloc(20000);
  strcpy(req, "GET /echo HTTP/1.1\r\nX-Big: ");
  size_t n = strlen(req);
  memset(req + n, 'b', 17000);
  strcpy(req + n + 17000, "\r\n\r\n");
  feed(c, req);
  char *out = fixture_output(c, NULL);
  assert_true(strncmp(out, "HTTP/1.1 431 ", 13) == 0);
  assert_true(c->closing);
  free(out);
  free(req);
}

static void test_too_many_headers_are_431(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /echo HTTP/1.1\r\n");
  for (int i = 0; i < 101; i++)
    feed(c, "X-A: 1\r\n");
  feed(c, "\r\n");
  char *out = fixture_output(c, NULL);
  assert_true(strncmp(out, "HTTP/1.1 431 ", 13) == 0);
  free(out);
}

static void test_big_body_is_413(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "POST /len HTTP/1.1\r\nContent-Length: 2000000\r\n\r\nxx");
  char *out = fixture_output(c, NULL);
  assert_true(strncmp(out, "HTTP/1.1 413 ", 13) == 0);
  assert_true(c->closing);
  free(out);
}

static void test_big_chunked_body_is_413(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "POST /len HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
  char *chunk = malloc(70000);
  strcpy(chunk, "10000\r\n");
  memset(chunk + 7, 'z', 0x10000);
  strcpy(chunk + 7 + 0x10000, "\r\n");
  for (int i = 0; i < 17 && !c->closing; i++)
    feed(c, chunk);
  char *out = fixture_output(c, NULL);
  assert_true(strncmp(out, "HTTP/1.1 413 ", 13) == 0);
  free(out);
  free(chunk);
}

static void test_404_and_405(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /nope HTTP/1.1\r\n\r\nDELETE /echo HTTP/1.1\r\n\r\n");
  char *out = fixture_output(c, NULL);
  char *a = strstr(out, "HTTP/1.1 404 "), *b = strstr(out, "HTTP/1.1 405 ");
  assert_non_null(a);
  assert_non_null(b);
  assert_true(a < b);
  free(out);
}

static void test_async_answer_keeps_order(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /later HTTP/1.1\r\n\r\nGET /echo?q=after HTTP/1.1\r\n\r\n");
  size_t len;
  char *out = fixture_output(c, &len);
  assert_int_equal(len, 0); /* the second waits for the first */
  free(out);
  assert_non_null(held);
  mw__http_respond(held, 202, "text/plain", NULL, "first", 5);
  out = fixture_output(c, NULL);
  char *first = strstr(out, "first"), *after = strstr(out, "after");
  assert_non_null(first);
  assert_non_null(after);
  assert_true(first < after);
  free(out);
}

static void test_answer_after_peer_left(void **state) {
  core_fixture_t *f = *state;
  mw_conn_t *c = fixture_conn(f);
  feed(c, "GET /later HTTP/1.1\r\n\r\n");
  assert_non_null(held);
  mw__conn_close_all(&f->worker, 2);
  uv_run(&f->worker.loop, UV_RUN_DEFAULT); /* the connection is freed */
  assert_int_equal(f->worker.conn_count, 0);
  mw__http_respond(held, 200, "text/plain", NULL, "late", 4); /* just frees */
}

static void test_take_hands_over_following_bytes(void **state) {
  core_fixture_t *f = *state;
  mw_conn_t *c = fixture_conn(f);
  feed(c, "GET /take HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
          "EXTRA");
  char *out = fixture_output(c, NULL);
  assert_true(strncmp(out, "HTTP/1.1 101 ", 13) == 0);
  free(out);
  assert_int_equal(c->mode, MW_CONN_STREAM);
  assert_int_equal(taken_len, 5);
  assert_memory_equal(taken_data, "EXTRA", 5);
  mw__http_on_data(c, "", 0);
  mw__conn_close(c);
  uv_run(&f->worker.loop, UV_RUN_DEFAULT);
  assert_int_equal(taken_closed, 1);
}

static void test_head_and_absolute_form(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "HEAD /echo?q=abc HTTP/1.1\r\nHost: t\r\n\r\n"
          "GET http://t:8080/echo?q=abs HTTP/1.1\r\nHost: t\r\n\r\n");
  char *out = fixture_output(c, NULL);
  /* HEAD: GET's head with the real length, no body. */
  assert_true(strncmp(out, "HTTP/1.1 200 OK\r\n", 17) == 0);
  assert_non_null(strstr(out, "Content-Length: 3\r\n"));
  assert_null(strstr(out, "abc"));
  char *second = strstr(out + 17, "HTTP/1.1 200 OK");
  assert_non_null(second);
  assert_non_null(strstr(second, "\r\n\r\nabs"));
  free(out);
}

static void test_headers_lowercased(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /later HTTP/1.1\r\nX-Mixed-Case: Value\r\n\r\n");
  assert_non_null(held);
  assert_string_equal(mw__http_header(held, "x-mixed-case"), "Value");
  assert_null(mw__http_header(held, "X-Mixed-Case"));
  assert_string_equal(mw__http_path(held), "/later");
  assert_string_equal(mw__http_method(held), "GET");
  mw__http_respond(held, 204, "text/plain", NULL, "", 0);
}

/* --- pipelining --------------------------------------------------------- */

/* Concatenates n copies of `req`. */
static char *repeat(const char *req, size_t n) {
  size_t l = strlen(req);
  char *out = malloc(l * n + 1);
  for (size_t i = 0; i < n; i++)
    memcpy(out + i * l, req, l);
  out[l * n] = 0;
  return out;
}

/* The bodies of the responses in `out`, in order, joined by ','. */
static void bodies(const char *out, char *dst, size_t cap) {
  dst[0] = 0;
  size_t used = 0;
  for (const char *p = strstr(out, "HTTP/1.1 "); p;
       p = strstr(p + 1, "HTTP/1.1 ")) {
    const char *cl = strstr(p, "Content-Length: ");
    const char *b = strstr(p, "\r\n\r\n");
    assert_non_null(cl);
    assert_non_null(b);
    size_t n = (size_t)strtoul(cl + 16, NULL, 10);
    int w = snprintf(dst + used, cap - used, "%s%.*s", used ? "," : "", (int)n,
                     b + 4);
    assert_true(w > 0 && (size_t)w < cap - used);
    used += (size_t)w;
    p = b + 4 + n - 1;
  }
}

static void test_pipeline_dispatches_ahead(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /hold HTTP/1.1\r\n\r\nGET /hold HTTP/1.1\r\n\r\n"
          "GET /hold HTTP/1.1\r\n\r\n");
  assert_int_equal(nholds, 3); /* all handled at once */
  assert_false(mw__http_idle(c));
  answer(2);
  answer(1);
  size_t len;
  char *out = fixture_output(c, &len);
  assert_int_equal(len, 0); /* held until the first is answered */
  free(out);
  answer(0);
  out = fixture_output(c, NULL);
  char got[256];
  bodies(out, got, sizeof got);
  assert_string_equal(got, "h0,h1,h2");
  assert_int_equal(count(out, "Connection: keep-alive"), 3);
  free(out);
  assert_true(mw__http_idle(c));
  assert_true(c->reading);
}

static void test_pipeline_mixed_sync_and_held(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /echo?q=a HTTP/1.1\r\n\r\nGET /hold HTTP/1.1\r\n\r\n"
          "GET /echo?q=b HTTP/1.1\r\n\r\nPOST /len HTTP/1.1\r\n"
          "Content-Length: 4\r\n\r\nabcdGET /hold HTTP/1.1\r\n\r\n"
          "HEAD /echo?q=xyz HTTP/1.1\r\n\r\n");
  assert_int_equal(nholds, 2);
  char got[256];
  char *out = fixture_output(c, NULL);
  bodies(out, got, sizeof got);
  assert_string_equal(got, "a"); /* the rest waits for /hold */
  free(out);
  answer(1);
  answer(0);
  out = fixture_output(c, NULL);
  /* The HEAD answer keeps its length but has no body. */
  assert_non_null(strstr(out, "Content-Length: 3\r\n"));
  assert_null(strstr(out, "xyz"));
  assert_int_equal(count(out, "HTTP/1.1 200 OK"), 6);
  char *h0 = strstr(out, "h0"), *b = strstr(out, "\r\n\r\nb");
  char *four = strstr(out, "\r\n\r\n4"), *h1 = strstr(out, "h1");
  assert_true(h0 && b && four && h1);
  assert_true(h0 < b && b < four && four < h1);
  free(out);
}

static void test_pipeline_many_sync_in_one_read(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  char *reqs = malloc(200 * 48);
  size_t n = 0;
  for (int i = 0; i < 200; i++)
    n += (size_t)sprintf(reqs + n, "GET /echo?q=%d HTTP/1.1\r\n\r\n", i);
  mw__http_on_data(c, reqs, n);
  free(reqs);
  char *out = fixture_output(c, NULL);
  char *got = malloc(4096), want[4096];
  bodies(out, got, 4096);
  size_t w = 0;
  for (int i = 0; i < 200; i++)
    w += (size_t)snprintf(want + w, sizeof want - w, "%s%d", i ? "," : "", i);
  assert_string_equal(got, want);
  assert_true(c->reading);
  free(got);
  free(out);
}

static void test_pipeline_is_bounded(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  char *reqs = repeat("GET /hold HTTP/1.1\r\n\r\n", MW_HTTP_PIPELINE + 8);
  feed(c, reqs);
  free(reqs);
  /* K handled, the rest unparsed, reading stopped. */
  assert_int_equal(nholds, MW_HTTP_PIPELINE);
  assert_false(c->reading);
  /* More bytes meanwhile (a read already under way) are kept, not parsed. */
  feed(c, "GET /hold HTTP/1.1\r\n\r\n");
  assert_int_equal(nholds, MW_HTTP_PIPELINE);
  answer(1); /* held: the head is still outstanding */
  assert_int_equal(nholds, MW_HTTP_PIPELINE);
  answer(0); /* two answers out: two more parsed */
  assert_int_equal(nholds, MW_HTTP_PIPELINE + 2);
  assert_false(c->reading);
  for (size_t i = 2; i < MW_HTTP_PIPELINE + 9; i++) {
    assert_non_null(holds[i]);
    answer(i);
  }
  assert_int_equal(nholds, MW_HTTP_PIPELINE + 9);
  assert_true(c->reading);
  char *out = fixture_output(c, NULL);
  assert_int_equal(count(out, "HTTP/1.1 200 OK"), MW_HTTP_PIPELINE + 9);
  char got[1024];
  bodies(out, got, sizeof got);
  char *p = got;
  for (size_t i = 0; i < MW_HTTP_PIPELINE + 9; i++) {
    char want[16];
    snprintf(want, sizeof want, "h%zu", i);
    assert_memory_equal(p, want, strlen(want));
    p += strlen(want) + 1;
  }
  free(out);
}

static void test_pipeline_bounded_by_bytes(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  /* Bodies of 600 KB: two outstanding pass the byte bound (one maximum
   * request), so the third waits unparsed. */
  size_t body = 600000;
  const char *head = "POST /hold HTTP/1.1\r\nContent-Length: 600000\r\n\r\n";
  size_t hl = strlen(head), one = hl + body;
  char *buf = malloc(one * 3);
  for (int i = 0; i < 3; i++) {
    memcpy(buf + i * one, head, hl);
    memset(buf + i * one + hl, 'x', body);
  }
  for (size_t off = 0; off < one * 3 && !c->closing; off += 65536) {
    size_t n = one * 3 - off < 65536 ? one * 3 - off : 65536;
    if (!c->reading && nholds == 2) break; /* TCP would push back here */
    mw__http_on_data(c, buf + off, n);
  }
  assert_false(c->closing);
  assert_int_equal(nholds, 2);
  assert_false(c->reading);
  answer(0);
  answer(1);
  assert_true(c->reading);
  free(buf);
  char *out = fixture_output(c, NULL);
  assert_int_equal(count(out, "HTTP/1.1 200 OK"), 2);
  free(out);
}

static void test_barrier_waits_for_the_head(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /hold HTTP/1.1\r\n\r\nGET /plug HTTP/1.1\r\n\r\n"
          "GET /echo?q=after HTTP/1.1\r\n\r\n");
  assert_int_equal(nholds, 1);
  assert_int_equal(nplugs, 0); /* not the head yet */
  assert_false(c->reading);
  answer(0);
  assert_int_equal(nplugs, 1); /* the head now */
  char *out = fixture_output(c, NULL);
  assert_null(strstr(out, "after")); /* nothing parsed past the barrier */
  free(out);
  mw__http_respond(plugs[0], 200, "text/plain", NULL, "plug", 4);
  out = fixture_output(c, NULL);
  char got[256];
  bodies(out, got, sizeof got);
  assert_string_equal(got, "h0,plug,after");
  free(out);
  assert_true(c->reading);
}

static void test_reads_on_while_nothing_waits(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  /* A barrier waits, but no bytes: reading stays on (a peer that leaves is
   * noticed); the next bytes wait unparsed and stop reading. */
  feed(c, "GET /hold HTTP/1.1\r\n\r\nGET /plug HTTP/1.1\r\n\r\n");
  assert_int_equal(nholds, 1);
  assert_int_equal(nplugs, 0);
  assert_true(c->reading);
  feed(c, "GET /echo?q=next HTTP/1.1\r\n\r\n");
  assert_false(c->reading);
  answer(0);
  assert_int_equal(nplugs, 1);
  assert_false(c->reading);
  mw__http_respond(plugs[0], 200, "text/plain", NULL, "plug", 4);
  assert_true(c->reading);
  char *out = fixture_output(c, NULL);
  char got[256];
  bodies(out, got, sizeof got);
  assert_string_equal(got, "h0,plug,next");
  free(out);
}

static void test_upgrade_ends_the_pipeline(void **state) {
  core_fixture_t *f = *state;
  mw_conn_t *c = fixture_conn(f);
  feed(c, "GET /hold HTTP/1.1\r\n\r\nGET /echo?q=e HTTP/1.1\r\n\r\n"
          "GET /take HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
          "GET /echo?q=not-http HTTP/1.1\r\n\r\n");
  assert_int_equal(nholds, 1);
  assert_int_equal(c->mode, MW_CONN_HTTP);
  assert_false(c->reading);
  answer(0);
  assert_int_equal(c->mode, MW_CONN_STREAM);
  char *out = fixture_output(c, NULL);
  char *h0 = strstr(out, "h0"), *e = strstr(out, "\r\n\r\ne");
  char *up = strstr(out, "HTTP/1.1 101 ");
  assert_true(h0 && e && up);
  assert_true(h0 < e && e < up);
  assert_null(strstr(out, "not-http"));
  free(out);
  /* The bytes after the Upgrade belong to the new owner, unparsed. */
  const char *rest = "GET /echo?q=not-http HTTP/1.1\r\n\r\n";
  assert_int_equal(taken_len, strlen(rest));
  assert_memory_equal(taken_data, rest, taken_len);
  mw__conn_close(c);
  uv_run(&f->worker.loop, UV_RUN_DEFAULT);
  assert_int_equal(taken_closed, 1);
}

static void test_connection_close_ends_the_pipeline(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /hold HTTP/1.1\r\n\r\n"
          "GET /echo?q=last HTTP/1.1\r\nConnection: close\r\n\r\n"
          "GET /echo?q=never HTTP/1.1\r\n\r\n");
  assert_int_equal(nholds, 1);
  assert_false(c->reading);
  answer(0);
  char *out = fixture_output(c, NULL);
  char got[256];
  bodies(out, got, sizeof got);
  assert_string_equal(got, "h0,last");
  assert_int_equal(count(out, "Connection: close"), 1);
  free(out);
  assert_true(c->closing);
}

static void test_parse_error_answered_in_order(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /hold HTTP/1.1\r\n\r\nGET /echo?q=ok HTTP/1.1\r\n\r\n"
          "\x01\x02 garbage\r\n\r\n");
  assert_int_equal(nholds, 1);
  assert_false(c->closing);
  size_t len;
  char *out = fixture_output(c, &len);
  assert_int_equal(len, 0);
  free(out);
  answer(0);
  out = fixture_output(c, NULL);
  char *h0 = strstr(out, "h0"), *ok = strstr(out, "\r\n\r\nok");
  char *bad = strstr(out, "HTTP/1.1 400 ");
  assert_true(h0 && ok && bad);
  assert_true(h0 < ok && ok < bad);
  free(out);
  assert_true(c->closing);
}

static void test_limit_error_answered_in_order(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  feed(c, "GET /hold HTTP/1.1\r\n\r\n"
          "POST /len HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n");
  assert_int_equal(nholds, 1);
  answer(0);
  char *out = fixture_output(c, NULL);
  char *h0 = strstr(out, "h0"), *big = strstr(out, "HTTP/1.1 413 ");
  assert_true(h0 && big && h0 < big);
  free(out);
  assert_true(c->closing);
}

static void test_peer_leaves_mid_pipeline(void **state) {
  core_fixture_t *f = *state;
  mw_conn_t *c = fixture_conn(f);
  feed(c, "GET /hold HTTP/1.1\r\n\r\nGET /hold_abort HTTP/1.1\r\n\r\n"
          "GET /hold HTTP/1.1\r\n\r\nGET /hold_abort HTTP/1.1\r\n\r\n"
          "GET /plug HTTP/1.1\r\n\r\nGET /hold HTTP/1.1\r\n\r\n");
  assert_int_equal(nholds, 4);
  answer(2); /* an answer held behind the first */
  mw_http_request_t *h0 = holds[0];
  mw__conn_close_all(&f->worker, 2);
  uv_run(&f->worker.loop, UV_RUN_DEFAULT);
  assert_int_equal(f->worker.conn_count, 0);
  assert_int_equal(aborts, 2);
  assert_int_equal(nplugs, 0); /* never dispatched, freed */
  /* Late answers to orphans just free them (ASan: no leak, no UAF). */
  assert_string_equal(mw__http_remote_addr(h0), "");
  mw__http_respond(h0, 200, "text/plain", NULL, "late", 4);
}

/* Abort callbacks that answer their own and later requests of the
 * connection that went away: each request is freed once (ASan: no
 * use-after-free, no double free, no leak). */
static void test_abort_callback_answers_others(void **state) {
  core_fixture_t *f = *state;
  mw_conn_t *c = fixture_conn(f);
  feed(c, "GET /hold_abort_answering HTTP/1.1\r\n\r\n"
          "GET /hold HTTP/1.1\r\n\r\n"
          "GET /hold_abort_answering HTTP/1.1\r\n\r\n"
          "GET /hold_abort HTTP/1.1\r\n\r\n");
  assert_int_equal(nholds, 4);
  mw__conn_close_all(&f->worker, 2);
  uv_run(&f->worker.loop, UV_RUN_DEFAULT);
  assert_int_equal(f->worker.conn_count, 0);
  /* The first callback answered all four: no other callback ran. */
  assert_int_equal(aborts, 1);
  for (size_t i = 0; i < nholds; i++)
    assert_null(holds[i]);
}

static void test_draining_closes_after_the_last(void **state) {
  core_fixture_t *f = *state;
  mw_conn_t *c = fixture_conn(f);
  feed(c, "GET /hold HTTP/1.1\r\n\r\nGET /hold HTTP/1.1\r\n\r\n");
  assert_int_equal(nholds, 2);
  f->worker.draining = 1;
  feed(c, "GET /echo?q=unread HTTP/1.1\r\n\r\n");
  answer(0);
  answer(1);
  char *out = fixture_output(c, NULL);
  char got[256];
  bodies(out, got, sizeof got);
  assert_string_equal(got, "h0,h1"); /* nothing new parsed while draining */
  assert_int_equal(count(out, "Connection: keep-alive"), 1);
  assert_int_equal(count(out, "Connection: close"), 1);
  free(out);
  assert_true(c->closing);
  f->worker.draining = 0;
}

static void test_take_refused_behind_others(void **state) {
  mw_conn_t *c = fixture_conn(*state);
  /* A core route without Upgrade is no barrier: if it tries to take the
   * connection with a request ahead of it, that is refused with a 500. */
  feed(c, "GET /hold HTTP/1.1\r\n\r\nGET /take_try HTTP/1.1\r\n\r\n");
  assert_int_equal(take_tries, 1);
  assert_null(take_result);
  answer(0);
  char *out = fixture_output(c, NULL);
  char *h0 = strstr(out, "h0"), *err = strstr(out, "HTTP/1.1 500 ");
  assert_true(h0 && err && h0 < err);
  free(out);
  assert_int_equal(c->mode, MW_CONN_HTTP);
  assert_false(c->closing);
  /* Alone, it may. */
  feed(c, "GET /take_try HTTP/1.1\r\n\r\nBYTES");
  assert_int_equal(take_tries, 2);
  assert_ptr_equal(take_result, c);
  assert_int_equal(c->mode, MW_CONN_STREAM);
  assert_int_equal(taken_len, 5);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_get_with_query, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pipelined_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_byte_by_byte, setup, teardown),
      cmocka_unit_test_setup_teardown(test_garbage_is_400_and_close, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_long_request_line_is_414, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_big_headers_are_431, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_too_many_headers_are_431, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_big_body_is_413, setup, teardown),
      cmocka_unit_test_setup_teardown(test_big_chunked_body_is_413, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_404_and_405, setup, teardown),
      cmocka_unit_test_setup_teardown(test_async_answer_keeps_order, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_answer_after_peer_left, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_take_hands_over_following_bytes,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_head_and_absolute_form, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_headers_lowercased, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pipeline_dispatches_ahead, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_pipeline_mixed_sync_and_held, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_pipeline_many_sync_in_one_read,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_pipeline_is_bounded, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_pipeline_bounded_by_bytes, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_barrier_waits_for_the_head, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_reads_on_while_nothing_waits, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_upgrade_ends_the_pipeline, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_connection_close_ends_the_pipeline,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_parse_error_answered_in_order, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_limit_error_answered_in_order, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_peer_leaves_mid_pipeline, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_abort_callback_answers_others, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_draining_closes_after_the_last,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_take_refused_behind_others, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
