/* Unit tests of the WebSocket transport: scripted byte feeds through a fake
 * host (tests/unit/fake_host.c), no sockets. Client frames are built masked
 * here; server frames are decoded from everything the plugin wrote. */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

#include "codec.h"
#include "fake_host.h"
#include "ws_internal.h"

#define RFC_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static uv_loop_t loop;
static void *g_state, *g_wstate;

/* --- fixtures --------------------------------------------------------------
 */

static int plugin_start(void) {
  if (mw_plugin_v1.init(fake_host(), fake_plugin_handle(), &g_state) != 0)
    return -1;
  return mw_plugin_v1.worker_start(g_state, fake_worker(), &g_wstate);
}

static int setup_with(int64_t max_message_size) {
  if (uv_loop_init(&loop) != 0) return -1;
  fake_host_init(&loop);
  if (max_message_size)
    fake_config_set("limits.max_message_size", max_message_size);
  return plugin_start();
}

static int setup(void **st) {
  return setup_with(0);
}

/* Real timers: idle timeout 1 s, no server pings. */
static int setup_idle1(void **st) {
  if (uv_loop_init(&loop) != 0) return -1;
  fake_host_init(&loop);
  fake_config_set("limits.idle_timeout", 1);
  fake_config_set("limits.ping_interval", 0);
  return plugin_start();
}
static int setup_small(void **st) {
  return setup_with(64);
}

/* Closes what is open the way the core does, stops the worker, runs the loop
 * until every handle closed and checks nothing leaked. */
static int teardown(void **st) {
  fake_host_close_all();
  mw_plugin_v1.worker_stop(g_wstate);
  mw_plugin_v1.destroy(g_state);
  uv_run(&loop, UV_RUN_DEFAULT);
  int rc = uv_loop_close(&loop);
  int clients = fake.clients_live;
  fake_host_reset();
  assert_int_equal(rc, 0);
  assert_int_equal(clients, 0);
  return 0;
}

/* --- client side helpers ---------------------------------------------------
 */

/* A masked client frame into `out` (len + 14 bytes); returns its size. */
static size_t build_frame(uint8_t *out, int fin, int opcode, const void *data,
                          size_t len) {
  static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
  const uint8_t *p = data;
  size_t n = 0;
  out[n++] = (uint8_t)((fin ? 0x80 : 0) | opcode);
  if (len < 126) {
    out[n++] = (uint8_t)(0x80 | len);
  } else if (len <= 0xffff) {
    out[n++] = 0x80 | 126;
    out[n++] = (uint8_t)(len >> 8);
    out[n++] = (uint8_t)len;
  } else {
    out[n++] = 0x80 | 127;
    for (int i = 0; i < 8; i++)
      out[n++] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
  }
  memcpy(out + n, mask, 4);
  n += 4;
  for (size_t i = 0; i < len; i++)
    out[n + i] = p[i] ^ mask[i % 4];
  return n + len;
}

static void send_frame(mw_conn_t *c, int fin, int opcode, const void *data,
                       size_t len) {
  uint8_t *buf = malloc(len + 14);
  assert_non_null(buf);
  size_t n = build_frame(buf, fin, opcode, data, len);
  fake_conn_feed(c, buf, n);
  free(buf);
}

static void send_text(mw_conn_t *c, const char *s) {
  send_frame(c, 1, WSLAY_TEXT_FRAME, s, strlen(s));
}

typedef struct sframe {
  int fin, opcode;
  const uint8_t *p;
  size_t len;
} sframe_t;

/* Decodes the next server frame; 0 when nothing more was written. */
static int read_frame(mw_conn_t *c, sframe_t *f) {
  size_t avail = c->len - c->read_off;
  const uint8_t *b = (const uint8_t *)c->out + c->read_off;
  if (avail == 0) return 0;
  assert_true(avail >= 2);
  assert_int_equal(b[0] & 0x70, 0); /* no RSV bits */
  assert_int_equal(b[1] & 0x80, 0); /* server frames are not masked */
  f->fin = b[0] >> 7;
  f->opcode = b[0] & 0x0f;
  uint64_t len = b[1] & 0x7f;
  size_t h = 2;
  if (len == 126) {
    assert_true(avail >= 4);
    len = ((uint64_t)b[2] << 8) | b[3];
    h = 4;
  } else if (len == 127) {
    assert_true(avail >= 10);
    len = 0;
    for (int i = 0; i < 8; i++)
      len = (len << 8) | b[2 + i];
    h = 10;
  }
  assert_true(avail >= h + len);
  f->p = b + h;
  f->len = (size_t)len;
  c->read_off += h + (size_t)len;
  return 1;
}

static json_t *read_json(mw_conn_t *c) {
  sframe_t f;
  assert_true(read_frame(c, &f));
  assert_int_equal(f.fin, 1);
  assert_int_equal(f.opcode, WSLAY_TEXT_FRAME);
  json_error_t err;
  json_t *j = json_loadb((const char *)f.p, f.len, 0, &err);
  assert_non_null(j);
  return j;
}

static json_t *read_msgpack(mw_conn_t *c) {
  sframe_t f;
  assert_true(read_frame(c, &f));
  assert_int_equal(f.opcode, WSLAY_BINARY_FRAME);
  json_t *j = mw_codec_json_from_msgpack((const char *)f.p, f.len);
  assert_non_null(j);
  return j;
}

static void expect_close(mw_conn_t *c, int code, const char *reason) {
  sframe_t f;
  assert_true(read_frame(c, &f));
  assert_int_equal(f.opcode, WSLAY_CONNECTION_CLOSE);
  assert_true(f.len >= 2);
  assert_int_equal((f.p[0] << 8) | f.p[1], code);
  if (reason) {
    assert_int_equal(f.len - 2, strlen(reason));
    assert_memory_equal(f.p + 2, reason, strlen(reason));
  }
  assert_int_equal(c->read_off, c->len); /* nothing after the close */
  assert_true(c->closed);
}

static void assert_json_str(json_t *j, const char *key, const char *want) {
  const char *v = json_string_value(json_object_get(j, key));
  assert_non_null(v);
  assert_string_equal(v, want);
}

static mw_http_request_t *handshake(const char *const *extra, const char *key,
                                    const char *version) {
  const char *h[24] = {"host",      "localhost",  "upgrade",
                       "websocket", "connection", "keep-alive, Upgrade"};
  int n = 6;
  if (key) {
    h[n++] = "sec-websocket-key";
    h[n++] = key;
  }
  if (version) {
    h[n++] = "sec-websocket-version";
    h[n++] = version;
  }
  for (int i = 0; extra && extra[i]; i++)
    h[n++] = extra[i];
  h[n] = NULL;
  return fake_request_new("GET", "/ws", h);
}

/* Connects with an optional Sec-WebSocket-Protocol; the read cursor is put
 * after the 101 head, which is returned in *head when asked. */
static mw_conn_t *connect_ws(const char *protocol, char **head) {
  const char *extra[3] = {"sec-websocket-protocol", protocol, NULL};
  mw_http_request_t *req = handshake(protocol ? extra : NULL, RFC_KEY, "13");
  assert_int_equal(fake_route_call("GET", "/ws", req, g_wstate), 0);
  assert_non_null(req->taken);
  mw_conn_t *c = req->taken;
  char *end = memmem(c->out, c->len, "\r\n\r\n", 4);
  assert_non_null(end);
  c->read_off = (size_t)(end + 4 - c->out);
  if (head) {
    *head = malloc(c->read_off + 1);
    memcpy(*head, c->out, c->read_off);
    (*head)[c->read_off] = 0;
  }
  return c;
}

static ws_session_t *session_of(mw_conn_t *c) {
  return c->ud;
}

/* --- handshake -------------------------------------------------------------
 */

static void test_accept_rfc_example(void **st) {
  char out[29];
  ws_handshake_accept(RFC_KEY, strlen(RFC_KEY), out);
  assert_string_equal(out, RFC_ACCEPT);

  char *head;
  mw_conn_t *c = connect_ws(NULL, &head);
  assert_non_null(strstr(head, "HTTP/1.1 101 Switching Protocols\r\n"));
  assert_non_null(strstr(head, "\r\nUpgrade: websocket\r\n"));
  assert_non_null(strstr(head, "\r\nConnection: Upgrade\r\n"));
  assert_non_null(strstr(head, "\r\nSec-WebSocket-Accept: " RFC_ACCEPT "\r\n"));
  assert_null(strstr(head, "Sec-WebSocket-Protocol"));
  free(head);
  assert_false(c->closed);
  assert_int_equal(fake_metric_value("moonwire_ws_connections", NULL), 1);
  assert_int_equal(fake_metric_value("moonwire_ws_connections_total", NULL), 1);
}

static void test_missing_key_400(void **st) {
  mw_http_request_t *req = handshake(NULL, NULL, "13");
  fake_route_call("GET", "/ws", req, g_wstate);
  assert_null(req->taken);
  assert_int_equal(req->responded, 1);
  assert_int_equal(req->status, 400);
  assert_string_equal(req->content_type, "application/json");
  json_error_t err;
  json_t *body = json_loads(req->body, 0, &err);
  assert_non_null(body);
  assert_non_null(json_string_value(json_object_get(body, "error")));
  json_decref(body);
  assert_int_equal(
      fake_metric_value("moonwire_ws_handshake_rejected_total", "code=\"400\""),
      1);
  assert_int_equal(fake.clients_live, 0);
}

static void test_bad_key_and_headers_400(void **st) {
  mw_http_request_t *req = handshake(NULL, "c2hvcnQ=", "13"); /* 5 bytes */
  fake_route_call("GET", "/ws", req, g_wstate);
  assert_int_equal(req->status, 400);

  const char *h1[] = {"host",
                      "x",
                      "upgrade",
                      "h2c",
                      "connection",
                      "upgrade",
                      "sec-websocket-key",
                      RFC_KEY,
                      "sec-websocket-version",
                      "13",
                      NULL};
  req = fake_request_new("GET", "/ws", h1);
  fake_route_call("GET", "/ws", req, g_wstate);
  assert_int_equal(req->status, 400);
  assert_null(req->taken);

  const char *h2[] = {"host",
                      "x",
                      "upgrade",
                      "WebSocket",
                      "connection",
                      "keep-alive",
                      "sec-websocket-key",
                      RFC_KEY,
                      "sec-websocket-version",
                      "13",
                      NULL};
  req = fake_request_new("GET", "/ws", h2);
  fake_route_call("GET", "/ws", req, g_wstate);
  assert_int_equal(req->status, 400);
  assert_null(req->taken);
}

static void test_version_8_426(void **st) {
  mw_http_request_t *req = handshake(NULL, RFC_KEY, "8");
  fake_route_call("GET", "/ws", req, g_wstate);
  assert_null(req->taken);
  assert_int_equal(req->status, 426);
  assert_non_null(req->extra_headers);
  assert_string_equal(req->extra_headers, "Sec-WebSocket-Version: 13\r\n");
  assert_int_equal(
      fake_metric_value("moonwire_ws_handshake_rejected_total", "code=\"426\""),
      1);
}

static void test_subprotocol_selection(void **st) {
  int echo;
  assert_int_equal(ws_handshake_subprotocol(NULL, &echo), WS_PROTO_JSON);
  assert_int_equal(echo, 0);
  assert_int_equal(ws_handshake_subprotocol("chat, superchat", &echo),
                   WS_PROTO_JSON);
  assert_int_equal(echo, 0);
  assert_int_equal(
      ws_handshake_subprotocol("chat, moonwire.msgpack,moonwire.json", &echo),
      WS_PROTO_MSGPACK);
  assert_int_equal(echo, 1);
  assert_int_equal(
      ws_handshake_subprotocol(" moonwire.json , moonwire.msgpack", &echo),
      WS_PROTO_JSON);
  assert_int_equal(echo, 1);
  assert_int_equal(ws_handshake_subprotocol("moonwire.jsonx", &echo),
                   WS_PROTO_JSON);
  assert_int_equal(echo, 0);

  char *head;
  connect_ws("foo, moonwire.msgpack", &head);
  assert_non_null(
      strstr(head, "\r\nSec-WebSocket-Protocol: moonwire.msgpack\r\n"));
  free(head);
  connect_ws("moonwire.json, moonwire.msgpack", &head);
  assert_non_null(
      strstr(head, "\r\nSec-WebSocket-Protocol: moonwire.json\r\n"));
  free(head);
  connect_ws("foo", &head);
  assert_null(strstr(head, "Sec-WebSocket-Protocol"));
  free(head);
}

static void test_bytes_after_request(void **st) {
  /* A ping frame pipelined right behind the handshake request. */
  uint8_t buf[64];
  const char *m = "{\"type\":\"ping\",\"id\":\"p0\"}";
  size_t n = build_frame(buf, 1, WSLAY_TEXT_FRAME, m, strlen(m));
  mw_http_request_t *req = handshake(NULL, RFC_KEY, "13");
  req->trailing = (const char *)buf;
  req->trailing_len = n;
  fake_route_call("GET", "/ws", req, g_wstate);
  mw_conn_t *c = req->taken;
  assert_non_null(c);
  char *end = memmem(c->out, c->len, "\r\n\r\n", 4);
  c->read_off = (size_t)(end + 4 - c->out);
  json_t *j = read_json(c);
  assert_json_str(j, "type", "pong");
  assert_json_str(j, "id", "p0");
  json_decref(j);
}

/* --- messages --------------------------------------------------------------
 */

static void test_subscribe_ack(void **st) {
  fake.position_seq = 7;
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"a\",\"b\"],"
               "\"since\":{\"b\":3}}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "ack");
  assert_json_str(j, "id", "r1");
  json_t *topics = json_object_get(json_object_get(j, "data"), "topics");
  json_t *a = json_object_get(topics, "a"), *b = json_object_get(topics, "b");
  assert_non_null(a);
  assert_non_null(b);
  assert_int_equal(json_integer_value(json_object_get(a, "seq")), 7);
  assert_json_str(a, "epoch", "e1");
  assert_true(json_is_true(json_object_get(a, "recovered")));
  assert_true(json_is_false(json_object_get(b, "recovered")));
  json_decref(j);
  assert_int_equal(fake_calls("subscribe", "a"), 1);
  assert_int_equal(fake_calls("subscribe", "b"), 1);
  assert_true(fake_client_has(fake_last_client(), "a"));
  assert_int_equal(
      fake_metric_value("moonwire_ws_messages_received_total", NULL), 1);
  assert_false(c->closed);
}

static void test_subscribe_since_recovers(void **st) {
  fake.position_seq = 9;
  fake.recover_recovered = 1;
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r2\",\"topics\":[\"b\"],"
               "\"since\":{\"b\":{\"seq\":4,\"epoch\":\"e1\"}}}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "ack");
  json_t *b = json_object_get(
      json_object_get(json_object_get(j, "data"), "topics"), "b");
  assert_true(json_is_true(json_object_get(b, "recovered")));
  assert_int_equal(json_integer_value(json_object_get(b, "seq")), 9);
  json_decref(j);
  assert_int_equal(fake.recover_since, 4);
  assert_string_equal(fake.recover_epoch, "e1");
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r3\",\"topics\":[\"c\"],"
               "\"since\":{\"c\":\"x\"}}");
  j = read_json(c);
  assert_json_str(j, "type", "error");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 400);
  json_decref(j);
}

static void test_subscribe_async_and_after_close(void **st) {
  fake.position_mode = FAKE_DEFER;
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"a\"]}");
  assert_int_equal(c->read_off, c->len); /* nothing until the answer */
  fake_position_fire(0);
  json_t *j = read_json(c);
  assert_json_str(j, "type", "ack");
  json_decref(j);

  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r2\",\"topics\":[\"b\"]}");
  size_t before = c->len;
  fake_conn_fire_close(c); /* the peer left; the answer comes late */
  fake_position_fire(MW_ECANCELED);
  assert_int_equal(c->len, before);
}

static void test_subscribe_limit_429(void **st) {
  fake.max_topics = 2;
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"w\"]}");
  json_decref(read_json(c));
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r2\",\"topics\":[\"w\",\"x\","
               "\"y\"]}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "error");
  assert_json_str(j, "id", "r2");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 429);
  assert_json_str(j, "reason", "too many topics per connection");
  json_decref(j);
  /* x was added by the failed request and removed again; w stays. */
  assert_int_equal(fake_calls("unsubscribe", "x"), 1);
  assert_int_equal(fake_calls("unsubscribe", "w"), 0);
  assert_true(fake_client_has(fake_last_client(), "w"));
  assert_false(fake_client_has(fake_last_client(), "x"));
  assert_false(c->closed);
}

static void test_subscribe_position_error_503(void **st) {
  fake.position_status = MW_EUNAVAIL;
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"a\"]}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "error");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 503);
  json_decref(j);
  assert_false(fake_client_has(fake_last_client(), "a"));

  fake.position_mode = FAKE_FAIL; /* returned error: no callback */
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r2\",\"topics\":[\"a\"]}");
  j = read_json(c);
  assert_json_str(j, "id", "r2");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 503);
  json_decref(j);
}

static void test_bad_subscribe_fields(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  const char *bad[] = {
      "{\"type\":\"subscribe\",\"id\":\"r1\"}",
      "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[]}",
      "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[1]}",
      "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"\"]}",
      "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"a\"],\"since\":[]}",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    send_text(c, bad[i]);
    json_t *j = read_json(c);
    assert_json_str(j, "type", "error");
    assert_json_str(j, "id", "r1");
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 400);
    json_decref(j);
  }
  assert_int_equal(fake_calls("subscribe", NULL), 0);
  assert_int_equal(
      fake_metric_value("moonwire_ws_errors_total", "reason=\"invalid\""), 5);
}

static void test_unsubscribe_ack(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"a\"]}");
  json_decref(read_json(c));
  send_text(
      c, "{\"type\":\"unsubscribe\",\"id\":\"r2\",\"topics\":[\"a\",\"zz\"]}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "ack");
  assert_json_str(j, "id", "r2");
  assert_int_equal(json_object_size(json_object_get(j, "data")), 0);
  json_decref(j);
  assert_false(fake_client_has(fake_last_client(), "a"));
  assert_int_equal(fake_calls("unsubscribe", "zz"), 1);
}

static void test_unknown_type_stays_open(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"dance\",\"id\":\"r9\"}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "error");
  assert_json_str(j, "id", "r9");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 400);
  json_decref(j);
  assert_false(c->closed);
  assert_int_equal(
      fake_metric_value("moonwire_ws_errors_total", "reason=\"unknown_type\""),
      1);
  send_text(c, "{\"type\":\"ping\"}"); /* still served */
  j = read_json(c);
  assert_json_str(j, "type", "pong");
  json_decref(j);
}

static void test_malformed_json(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  const char *bad[] = {"{nope", "[1,2]", "\"str\"", "{\"type\":1}",
                       "{\"type\":\"ping\",\"id\":5}"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    send_text(c, bad[i]);
    json_t *j = read_json(c);
    assert_json_str(j, "type", "error");
    assert_null(json_object_get(j, "id"));
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 400);
    json_decref(j);
  }
  assert_false(c->closed);
  assert_int_equal(
      fake_metric_value("moonwire_ws_errors_total", "reason=\"malformed\""), 3);
}

static void test_ping_pong(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"ping\",\"id\":\"p1\"}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "pong");
  assert_json_str(j, "id", "p1");
  json_decref(j);
  send_text(c, "{\"type\":\"ping\"}");
  j = read_json(c);
  assert_json_str(j, "type", "pong");
  assert_null(json_object_get(j, "id"));
  json_decref(j);
  /* A WebSocket ping control frame gets a pong frame with its payload. */
  send_frame(c, 1, WSLAY_PING, "hb", 2);
  sframe_t f;
  assert_true(read_frame(c, &f));
  assert_int_equal(f.opcode, WSLAY_PONG);
  assert_int_equal(f.len, 2);
  assert_memory_equal(f.p, "hb", 2);
}

static void test_token_in_request_decides_before_upgrade(void **st) {
  fake.policy_has_connect = 1;
  fake.request_token = 1;
  fake.connect_status = MW_EDENIED;
  fake.connect_code = 403;
  fake.connect_reason = "bad \"token\"";
  mw_http_request_t *req = handshake(NULL, RFC_KEY, "13");
  assert_int_equal(fake_route_call("GET", "/ws", req, g_wstate), 0);
  assert_null(req->taken);
  assert_int_equal(req->status, 403);
  assert_non_null(strstr(req->body, "bad \\\"token\\\""));
  assert_int_equal(fake.connects, 1);
  assert_int_equal(fake.clients_live, 0);
}

static void test_first_message_auth(void **st) {
  fake.policy_has_connect = 1;
  mw_conn_t *c = connect_ws(NULL, NULL);
  assert_int_equal(fake.connects, 0); /* waits for the first message */
  send_text(c, "{\"type\":\"auth\",\"id\":\"a1\",\"token\":\"tok\"}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "ack");
  assert_json_str(j, "id", "a1");
  assert_json_str(json_object_get(j, "data"), "user_id", "u1");
  json_decref(j);
  assert_int_equal(fake.connects, 1);
  assert_string_equal(fake.connect_token, "tok");
  send_text(c, "{\"type\":\"auth\",\"id\":\"a2\",\"token\":\"again\"}");
  j = read_json(c);
  assert_json_str(j, "type", "error");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 400);
  json_decref(j);
  assert_int_equal(fake.connects, 1);
}

static void test_first_message_denied_closes_1008(void **st) {
  fake.policy_has_connect = 1;
  fake.connect_status = MW_EDENIED;
  fake.connect_code = 401;
  fake.connect_reason = "token expired";
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"auth\",\"id\":\"a1\",\"token\":\"old\"}");
  expect_close(c, 1008, "token expired");
  assert_true(c->closed);
}

static void test_first_message_without_auth_connects_anonymously(void **st) {
  fake.policy_has_connect = 1;
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"a\"]}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "ack");
  json_decref(j);
  assert_int_equal(fake.connects, 1);
  assert_string_equal(fake.connect_token, "");
}

static void test_subscribe_denied_carries_code_and_reason(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  fake.subscribe_deny = "gift-list:secret";
  fake.connect_code = 403;
  fake.connect_reason = "not your list";
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r9\",\"topics\":[\"a\","
               "\"gift-list:secret\"]}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "error");
  assert_json_str(j, "id", "r9");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 403);
  assert_json_str(j, "reason", "not your list");
  json_decref(j);
  assert_false(fake_client_has(fake_last_client(), "a")); /* rolled back */
  assert_false(c->closed);
}

static void test_presence_ack(void **st) {
  fake.presence_json =
      "{\"topic\":\"room:1\",\"clients\":2,\"users\":[\"u1\"]}";
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"presence\",\"id\":\"p1\",\"topic\":\"room:1\"}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "ack");
  assert_json_str(j, "id", "p1");
  assert_int_equal(json_integer_value(
                       json_object_get(json_object_get(j, "data"), "clients")),
                   2);
  json_decref(j);
  assert_int_equal(fake_calls("presence", "room:1"), 1);
}

static void test_kick_closes_4001(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  mw_client_t *cl = fake_last_client();
  assert_non_null(cl->kick);
  cl->kick(cl, "disconnected", cl->ud);
  expect_close(c, 4001, "disconnected");
  assert_true(c->closed);
}

static void test_presence_501(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"presence\",\"id\":\"r3\",\"topic\":\"room:1\"}");
  json_t *j = read_json(c);
  assert_json_str(j, "id", "r3");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 501);
  json_decref(j);
}

static void test_publish(void **st) {
  fake.publish_seq = 42;
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c,
            "{\"type\":\"publish\",\"id\":\"m1\",\"topic\":\"room:1\","
            "\"event\":\"CUSTOM\",\"data\":{\"payload\": {\"text\": \"hi\"}}}");
  json_t *j = read_json(c);
  assert_json_str(j, "type", "ack");
  assert_json_str(j, "id", "m1");
  json_t *d = json_object_get(j, "data");
  assert_json_str(d, "status", "delivered");
  assert_int_equal(json_integer_value(json_object_get(d, "seq")), 42);
  json_decref(j);
  assert_int_equal(fake_calls("publish", "room:1"), 1);
  assert_string_equal(fake.calls[fake.ncalls - 1].event, "CUSTOM");
  assert_string_equal(fake.calls[fake.ncalls - 1].data,
                      "{\"payload\":{\"text\":\"hi\"}}");

  /* Denied later by policy, with the policy's reason. */
  fake.publish_mode = FAKE_DEFER;
  fake.publish_reason = "not in this room";
  send_text(c, "{\"type\":\"publish\",\"id\":\"m2\",\"topic\":\"room:1\","
               "\"event\":\"X\"}");
  assert_int_equal(c->read_off, c->len);
  fake_publish_fire(MW_EDENIED);
  j = read_json(c);
  assert_json_str(j, "id", "m2");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 403);
  assert_json_str(j, "reason", "not in this room");
  json_decref(j);

  /* Refused at once: the callback never fires. */
  fake.publish_mode = FAKE_FAIL;
  fake.publish_status = MW_EUNAVAIL;
  send_text(c, "{\"type\":\"publish\",\"id\":\"m3\",\"topic\":\"room:1\","
               "\"event\":\"X\"}");
  j = read_json(c);
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 503);
  json_decref(j);

  /* Bad data */
  send_text(c, "{\"type\":\"publish\",\"id\":\"m4\",\"topic\":\"room:1\","
               "\"event\":\"X\",\"data\":[1]}");
  j = read_json(c);
  assert_json_str(j, "id", "m4");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 400);
  json_decref(j);
  assert_int_equal(fake_calls("publish", NULL), 3);
}

static void test_publish_answer_after_close(void **st) {
  fake.publish_mode = FAKE_DEFER;
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"publish\",\"id\":\"m1\",\"topic\":\"t\","
               "\"event\":\"X\"}");
  size_t before = c->len;
  fake_conn_fire_close(c);
  assert_int_equal(fake.clients_live, 0);
  fake_publish_fire(0); /* the session is gone: nothing written, no crash */
  assert_int_equal(c->len, before);
}

static void test_wrong_frame_type(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_frame(c, 1, WSLAY_BINARY_FRAME, "\x81\xa4type\xa4ping", 11);
  json_t *j = read_json(c);
  assert_json_str(j, "type", "error");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 400);
  json_decref(j);
  assert_false(c->closed);
  assert_int_equal(
      fake_metric_value("moonwire_ws_errors_total", "reason=\"wrong_frame\""),
      1);
}

/* --- framing and protocol errors -------------------------------------------
 */

static void test_fragmented_message(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_frame(c, 0, WSLAY_TEXT_FRAME, "{\"type\":", 8);
  send_frame(c, 1, WSLAY_PING, "x", 1); /* control frames may interleave */
  send_frame(c, 0, WSLAY_CONTINUATION_FRAME, "\"ping\",\"id\":", 12);
  send_frame(c, 1, WSLAY_CONTINUATION_FRAME, "\"f1\"}", 5);
  sframe_t f;
  assert_true(read_frame(c, &f));
  assert_int_equal(f.opcode, WSLAY_PONG);
  json_t *j = read_json(c);
  assert_json_str(j, "type", "pong");
  assert_json_str(j, "id", "f1");
  json_decref(j);
  assert_int_equal(
      fake_metric_value("moonwire_ws_messages_received_total", NULL), 1);
}

static void test_byte_by_byte(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  const char *m = "{\"type\":\"ping\",\"id\":\"b\"}";
  uint8_t buf[64];
  size_t n = build_frame(buf, 1, WSLAY_TEXT_FRAME, m, strlen(m));
  for (size_t i = 0; i < n; i++)
    fake_conn_feed(c, buf + i, 1);
  json_t *j = read_json(c);
  assert_json_str(j, "id", "b");
  json_decref(j);
}

static void test_invalid_utf8_1007(void **st) {
  fake.sync_close = 1; /* on_close inside conn_close must be survived */
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_frame(c, 1, WSLAY_TEXT_FRAME, "{\"a\":\"\xc3\x28\"}", 10);
  expect_close(c, 1007, NULL);
  assert_true(c->close_fired);
  assert_int_equal(fake.clients_live, 0);
  assert_int_equal(
      fake_metric_value("moonwire_ws_close_total", "code=\"1007\""), 1);
  assert_int_equal(fake_metric_value("moonwire_ws_connections", NULL), 0);
}

static void test_too_big_1009(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  char big[100];
  memset(big, 'a', sizeof(big));
  send_frame(c, 1, WSLAY_TEXT_FRAME, big, sizeof(big)); /* max is 64 */
  expect_close(c, 1009, NULL);
  assert_int_equal(
      fake_metric_value("moonwire_ws_close_total", "code=\"1009\""), 1);
}

static void test_too_big_fragmented_1009(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  char part[40];
  memset(part, 'a', sizeof(part));
  send_frame(c, 0, WSLAY_TEXT_FRAME, part, sizeof(part));
  send_frame(c, 1, WSLAY_CONTINUATION_FRAME, part, sizeof(part));
  expect_close(c, 1009, NULL);
}

static void test_reserved_opcode_1002(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_frame(c, 1, 0x3, "abc", 3);
  expect_close(c, 1002, NULL);
  assert_int_equal(
      fake_metric_value("moonwire_ws_close_total", "code=\"1002\""), 1);
}

static void test_unmasked_frame_1002(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  const uint8_t frame[] = {0x81, 0x02, 'h', 'i'};
  fake_conn_feed(c, frame, sizeof(frame));
  expect_close(c, 1002, NULL);
}

static void test_client_close_echoed(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  const uint8_t payload[] = {0x03, 0xe8, 'b', 'y', 'e'};
  send_frame(c, 1, WSLAY_CONNECTION_CLOSE, payload, sizeof(payload));
  expect_close(c, 1000, NULL);
  assert_int_equal(
      fake_metric_value("moonwire_ws_close_total", "code=\"1000\""), 1);
}

/* --- msgpack ---------------------------------------------------------------
 */

static void test_msgpack_subscribe(void **st) {
  fake.position_seq = 5;
  mw_conn_t *c = connect_ws("moonwire.msgpack", NULL);
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 3);
  msgpack_pack_str_with_body(&pk, "type", 4);
  msgpack_pack_str_with_body(&pk, "subscribe", 9);
  msgpack_pack_str_with_body(&pk, "id", 2);
  msgpack_pack_str_with_body(&pk, "r1", 2);
  msgpack_pack_str_with_body(&pk, "topics", 6);
  msgpack_pack_array(&pk, 1);
  msgpack_pack_str_with_body(&pk, "a", 1);
  send_frame(c, 1, WSLAY_BINARY_FRAME, sb.data, sb.size);
  msgpack_sbuffer_destroy(&sb);

  json_t *j = read_msgpack(c);
  assert_json_str(j, "type", "ack");
  assert_json_str(j, "id", "r1");
  json_t *a = json_object_get(
      json_object_get(json_object_get(j, "data"), "topics"), "a");
  assert_int_equal(json_integer_value(json_object_get(a, "seq")), 5);
  json_decref(j);

  /* A text frame on moonwire.msgpack is answered with a (binary) error. */
  send_text(c, "{\"type\":\"ping\"}");
  j = read_msgpack(c);
  assert_json_str(j, "type", "error");
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 400);
  json_decref(j);
  /* Garbage bytes: malformed. */
  send_frame(c, 1, WSLAY_BINARY_FRAME, "\xc1", 1);
  j = read_msgpack(c);
  assert_int_equal(json_integer_value(json_object_get(j, "code")), 400);
  json_decref(j);
  assert_false(c->closed);
}

/* --- delivery --------------------------------------------------------------
 */

static void check_delivery(const char *proto, size_t len, uint8_t opcode,
                           size_t want_hlen) {
  mw_conn_t *c = connect_ws(proto, NULL);
  const char *subscribe =
      "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"t\"]}";
  if (!strcmp(proto, "moonwire.msgpack")) {
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "type", 4);
    msgpack_pack_str_with_body(&pk, "subscribe", 9);
    msgpack_pack_str_with_body(&pk, "topics", 6);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_str_with_body(&pk, "t", 1);
    send_frame(c, 1, WSLAY_BINARY_FRAME, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    json_decref(read_msgpack(c));
  } else {
    send_text(c, subscribe);
    json_decref(read_json(c));
  }

  char *json = malloc(len), *mp = malloc(len);
  memset(json, 'j', len);
  memset(mp, 'm', len);
  mw_event_t ev = {.topic = "t", .name = "X", .seq = 1};
  ev.wire[MW_WIRE_JSON].data = json;
  ev.wire[MW_WIRE_JSON].len = len;
  ev.wire[MW_WIRE_MSGPACK].data = mp;
  ev.wire[MW_WIRE_MSGPACK].len = len;
  size_t before = c->len;
  assert_int_equal(fake_hub_deliver("t", &ev), 1);
  assert_int_equal(c->event_writes, 1);
  assert_ptr_equal(c->last_event, &ev);
  assert_int_equal(c->len - before, want_hlen + len); /* header + wire */
  sframe_t f;
  assert_true(read_frame(c, &f));
  assert_int_equal(f.fin, 1);
  assert_int_equal(f.opcode, opcode);
  assert_int_equal(f.len, len);
  assert_memory_equal(f.p, opcode == WSLAY_TEXT_FRAME ? json : mp, len);
  assert_int_equal(c->read_off, c->len);
  free(json);
  free(mp);
}

static void test_deliver_json(void **st) {
  check_delivery("moonwire.json", 20, WSLAY_TEXT_FRAME, 2);
}

static void test_deliver_json_medium(void **st) {
  check_delivery("moonwire.json", 300, WSLAY_TEXT_FRAME, 4);
}

static void test_deliver_msgpack_large(void **st) {
  check_delivery("moonwire.msgpack", 70000, WSLAY_BINARY_FRAME, 10);
}

static void test_frame_header(void **st) {
  uint8_t h[10];
  assert_int_equal(ws_frame_header(h, 1, 125), 2);
  assert_int_equal(h[0], 0x81);
  assert_int_equal(h[1], 125);
  assert_int_equal(ws_frame_header(h, 2, 126), 4);
  assert_int_equal(h[0], 0x82);
  assert_int_equal(h[1], 126);
  assert_int_equal((h[2] << 8) | h[3], 126);
  assert_int_equal(ws_frame_header(h, 1, 65536), 10);
  assert_int_equal(h[1], 127);
  assert_int_equal(h[7], 1);
  assert_int_equal(h[8], 0);
}

static void test_overflow_1008(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"t\"]}");
  json_decref(read_json(c));
  c->cap = c->len + 50; /* the next event passes the cap */
  char data[100];
  memset(data, 'x', sizeof(data));
  mw_event_t ev = {.topic = "t", .name = "X", .seq = 1};
  ev.wire[MW_WIRE_JSON].data = data;
  ev.wire[MW_WIRE_JSON].len = sizeof(data);
  fake_hub_deliver("t", &ev);
  assert_int_equal(c->overflows, 1);
  assert_int_equal(c->event_writes, 0);
  expect_close(c, 1008, "slow consumer");
  fake_hub_deliver("t", &ev); /* closing: nothing more is written */
  assert_int_equal(c->read_off, c->len);
  assert_int_equal(
      fake_metric_value("moonwire_ws_close_total", "code=\"1008\""), 1);
}

static void test_publish_sync_fanout(void **st) {
  /* The publisher is subscribed and the storage fans out before publish
   * returns: the event frame is written from inside the receive path, the
   * ack follows; both frames stay intact. */
  char data[30];
  memset(data, 'e', sizeof(data));
  mw_event_t ev = {.topic = "t", .name = "X", .seq = 1};
  ev.wire[MW_WIRE_JSON].data = data;
  ev.wire[MW_WIRE_JSON].len = sizeof(data);
  fake.publish_fanout = &ev;
  mw_conn_t *c = connect_ws(NULL, NULL);
  send_text(c, "{\"type\":\"subscribe\",\"id\":\"r1\",\"topics\":[\"t\"]}");
  json_decref(read_json(c));
  send_text(c, "{\"type\":\"publish\",\"id\":\"m1\",\"topic\":\"t\","
               "\"event\":\"X\"}");
  sframe_t f;
  assert_true(read_frame(c, &f));
  assert_int_equal(f.opcode, WSLAY_TEXT_FRAME);
  assert_int_equal(f.len, sizeof(data));
  assert_memory_equal(f.p, data, sizeof(data));
  json_t *j = read_json(c);
  assert_json_str(j, "type", "ack");
  assert_json_str(j, "id", "m1");
  json_decref(j);

  /* Now the fan-out passes the cap inside the receive path: 1008 follows
   * once wslay returned, and no ack is sent after the close. */
  c->cap = c->len + 10;
  send_text(c, "{\"type\":\"publish\",\"id\":\"m2\",\"topic\":\"t\","
               "\"event\":\"X\"}");
  assert_int_equal(c->overflows, 1);
  expect_close(c, 1008, "slow consumer");
}

/* --- timers and drain ------------------------------------------------------
 */

static void test_ping_and_idle(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  ws_session_t *s = session_of(c);
  uint64_t t0 = s->last_rx;
  ws_session_tick(s, t0 + 1000); /* nothing due */
  assert_int_equal(c->read_off, c->len);
  ws_session_tick(s, t0 + 25000); /* server ping */
  sframe_t f;
  assert_true(read_frame(c, &f));
  assert_int_equal(f.opcode, WSLAY_PING);
  assert_false(c->closed);
  /* The pong (any bytes) resets the idle clock. */
  uv_update_time(&loop);
  send_frame(c, 1, WSLAY_PONG, NULL, 0);
  assert_true(s->last_rx >= t0);
  ws_session_tick(s, s->last_rx + 59999);
  assert_true(read_frame(c, &f)); /* second ping at +50 s */
  assert_int_equal(f.opcode, WSLAY_PING);
  assert_false(c->closed);
  ws_session_tick(s, s->last_rx + 60000);
  expect_close(c, 1001, "idle timeout");
}

/* An idle session holds no wslay context: it is made for the bytes of a
 * frame and dropped at the next quiet frame boundary; a partial frame or an
 * open fragmented message keeps it. */
static void test_idle_session_has_no_wslay_context(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  ws_session_t *s = session_of(c);
  assert_null(s->ctx);
  send_text(c, "{\"type\":\"ping\",\"id\":\"p1\"}");
  json_t *j = read_json(c);
  assert_json_str(j, "id", "p1");
  json_decref(j);
  assert_null(s->ctx);
  /* Half a frame (header split too), then the rest. */
  const char *msg = "{\"type\":\"ping\",\"id\":\"p2\"}";
  uint8_t buf[64];
  size_t n = build_frame(buf, 1, WSLAY_TEXT_FRAME, msg, strlen(msg));
  fake_conn_feed(c, buf, 1);
  assert_non_null(s->ctx);
  fake_conn_feed(c, buf + 1, 9);
  assert_non_null(s->ctx);
  fake_conn_feed(c, buf + 10, n - 10);
  j = read_json(c);
  assert_json_str(j, "id", "p2");
  json_decref(j);
  assert_null(s->ctx);
  /* A fragmented message, a control frame between its fragments. */
  send_frame(c, 0, WSLAY_TEXT_FRAME, "{\"type\":", 8);
  assert_non_null(s->ctx);
  send_frame(c, 1, WSLAY_PING, "hb", 2);
  sframe_t f;
  assert_true(read_frame(c, &f));
  assert_int_equal(f.opcode, WSLAY_PONG);
  assert_non_null(s->ctx);
  const char *rest = "\"ping\",\"id\":\"p3\"}";
  send_frame(c, 1, WSLAY_CONTINUATION_FRAME, rest, strlen(rest));
  j = read_json(c);
  assert_json_str(j, "id", "p3");
  json_decref(j);
  assert_null(s->ctx);
  /* A server ping makes one for its send only. */
  ws_session_tick(s, s->next_ping);
  assert_true(read_frame(c, &f));
  assert_int_equal(f.opcode, WSLAY_PING);
  assert_null(s->ctx);
  assert_false(c->closed);
  /* Closing keeps it: the close frame was sent through it. */
  mw_plugin_v1.worker_drain(g_wstate);
  expect_close(c, 1001, "going away");
}

static void test_idle_timer_fires(void **st) {
  mw_conn_t *c = connect_ws(NULL, NULL);
  uint64_t t0 = uv_now(&loop);
  uv_run(&loop, UV_RUN_DEFAULT); /* returns once the timer is done */
  assert_true(uv_now(&loop) - t0 >= 1000);
  expect_close(c, 1001, "idle timeout");
}

static void test_drain_1001(void **st) {
  mw_conn_t *c1 = connect_ws(NULL, NULL);
  mw_conn_t *c2 = connect_ws("moonwire.msgpack", NULL);
  mw_plugin_v1.worker_drain(g_wstate);
  expect_close(c1, 1001, "going away");
  expect_close(c2, 1001, "going away");
  /* New handshakes are refused while draining. */
  mw_http_request_t *req = handshake(NULL, RFC_KEY, "13");
  fake_route_call("GET", "/ws", req, g_wstate);
  assert_int_equal(req->status, 503);
  assert_null(req->taken);
  assert_int_equal(
      fake_metric_value("moonwire_ws_close_total", "code=\"1001\""), 2);
}

static void test_stop_with_open_session(void **st) {
  /* worker_stop with a live connection: the session survives until the
   * core's on_close (fired by teardown after stop here). */
  mw_conn_t *c = connect_ws(NULL, NULL);
  mw_plugin_v1.worker_stop(g_wstate);
  expect_close(c, 1001, "going away");
  fake_conn_fire_close(c);
  assert_int_equal(fake.clients_live, 0);
  /* teardown stops a fresh worker state */
  assert_int_equal(mw_plugin_v1.worker_start(g_state, fake_worker(), &g_wstate),
                   0);
}

static void test_descriptor(void **st) {
  assert_int_equal(mw_plugin_v1.abi_major, MW_ABI_MAJOR);
  assert_int_equal(mw_plugin_v1.struct_size, sizeof(mw_plugin_v1_t));
  assert_int_equal(mw_plugin_v1.kind, MW_PLUGIN_TRANSPORT);
  assert_string_equal(mw_plugin_v1.name, "websocket");
  assert_null(mw_plugin_v1.storage);
  mw_http_request_t *req = fake_request_new("GET", "/ws", NULL);
  assert_int_equal(fake_route_call("GET", "/ws", req, g_wstate), 0);
  assert_int_equal(req->status, 400);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_descriptor, setup, teardown),
      cmocka_unit_test_setup_teardown(test_accept_rfc_example, setup, teardown),
      cmocka_unit_test_setup_teardown(test_missing_key_400, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_key_and_headers_400, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_version_8_426, setup, teardown),
      cmocka_unit_test_setup_teardown(test_subprotocol_selection, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_bytes_after_request, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_subscribe_ack, setup, teardown),
      cmocka_unit_test_setup_teardown(test_subscribe_async_and_after_close,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_subscribe_limit_429, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_subscribe_position_error_503, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_bad_subscribe_fields, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_unsubscribe_ack, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unknown_type_stays_open, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_malformed_json, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ping_pong, setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_token_in_request_decides_before_upgrade, setup, teardown),
      cmocka_unit_test_setup_teardown(test_first_message_auth, setup, teardown),
      cmocka_unit_test_setup_teardown(test_first_message_denied_closes_1008,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          test_first_message_without_auth_connects_anonymously, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_subscribe_denied_carries_code_and_reason, setup, teardown),
      cmocka_unit_test_setup_teardown(test_subscribe_since_recovers, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_presence_ack, setup, teardown),
      cmocka_unit_test_setup_teardown(test_kick_closes_4001, setup, teardown),
      cmocka_unit_test_setup_teardown(test_presence_501, setup, teardown),
      cmocka_unit_test_setup_teardown(test_publish, setup, teardown),
      cmocka_unit_test_setup_teardown(test_publish_answer_after_close, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_wrong_frame_type, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fragmented_message, setup, teardown),
      cmocka_unit_test_setup_teardown(test_byte_by_byte, setup, teardown),
      cmocka_unit_test_setup_teardown(test_invalid_utf8_1007, setup, teardown),
      cmocka_unit_test_setup_teardown(test_too_big_1009, setup_small, teardown),
      cmocka_unit_test_setup_teardown(test_too_big_fragmented_1009, setup_small,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_reserved_opcode_1002, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_unmasked_frame_1002, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_client_close_echoed, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_msgpack_subscribe, setup, teardown),
      cmocka_unit_test_setup_teardown(test_frame_header, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deliver_json, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deliver_json_medium, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_deliver_msgpack_large, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_overflow_1008, setup, teardown),
      cmocka_unit_test_setup_teardown(test_publish_sync_fanout, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_ping_and_idle, setup, teardown),
      cmocka_unit_test_setup_teardown(test_idle_session_has_no_wslay_context,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_idle_timer_fires, setup_idle1,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_drain_1001, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stop_with_open_session, setup,
                                      teardown),
  };
  return cmocka_run_group_tests_name("websocket", tests, NULL, NULL);
}
