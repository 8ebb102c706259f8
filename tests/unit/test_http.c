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

static void route_take(mw_http_request_t *req, void *ws) {
  static const char head[] = "HTTP/1.1 101 Switching Protocols\r\n\r\n";
  assert_non_null(mw__http_take(req, head, sizeof head - 1, &take_handler,
                                NULL));
}

static int setup(void **state) {
  core_fixture_t *f = calloc(1, sizeof *f);
  const char *flags[] = {"--listen", "127.0.0.1:0", NULL};
  fixture_init(f, flags);
  mw__server_route(&f->server, "GET", "/echo", route_echo, NULL);
  mw__server_route(&f->server, "POST", "/len", route_len, NULL);
  mw__server_route(&f->server, "GET", "/later", route_later, NULL);
  mw__server_route(&f->server, "GET", "/take", route_take, NULL);
  held = NULL;
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
  for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
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
  for (size_t i = 0; req[i]; i++) mw__http_on_data(c, req + i, 1);
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
  for (int i = 0; i < 101; i++) feed(c, "X-A: 1\r\n");
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
  for (int i = 0; i < 17 && !c->closing; i++) feed(c, chunk);
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
      cmocka_unit_test_setup_teardown(test_headers_lowercased, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
