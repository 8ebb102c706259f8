/* WebSocket transport plugin: the exported descriptor, lifecycle (init,
 * workers, drain, stop), the GET /ws route and the RFC 6455 handshake. */
#include <ctype.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "ws_internal.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

static const char *const ws_close_labels[WS_CLOSE_COUNT] = {
    "code=\"1000\"", "code=\"1001\"", "code=\"1002\"", "code=\"1007\"",
    "code=\"1008\"", "code=\"1009\"", "code=\"1011\"", "code=\"other\""};
static const char *const ws_error_labels[WS_ERR_COUNT] = {
    "reason=\"malformed\"", "reason=\"invalid\"", "reason=\"unknown_type\"",
    "reason=\"wrong_frame\""};
static const char *const ws_reject_labels[WS_REJECT_COUNT] = {
    "code=\"400\"", "code=\"403\"", "code=\"426\"", "code=\"503\""};

static void *ws_xcalloc(size_t n, size_t size) {
  void *p = calloc(n, size);
  if (!p) abort(); /* small internal allocation: out of memory is fatal */
  return p;
}

/* --- handshake helpers --------------------------------------------------- */

static int ws_is_blank(char c) {
  return c == ' ' || c == '\t';
}

/* Trims blanks around [*b, *e). */
static void ws_trim(const char **b, const char **e) {
  while (*b < *e && ws_is_blank(**b))
    (*b)++;
  while (*e > *b && ws_is_blank((*e)[-1]))
    (*e)--;
}

/* 1 if the comma-separated `list` holds `token` (case-insensitive). */
static int ws_list_has(const char *list, const char *token) {
  size_t tlen = strlen(token);
  const char *p = list;
  while (*p) {
    const char *b = p, *e = strchr(p, ',');
    if (!e) e = p + strlen(p);
    p = *e ? e + 1 : e;
    ws_trim(&b, &e);
    if ((size_t)(e - b) == tlen && strncasecmp(b, token, tlen) == 0) return 1;
  }
  return 0;
}

/* 1 if [b, e) is base64 of exactly 16 bytes (24 chars ending in "=="). */
static int ws_key_valid(const char *b, const char *e) {
  if (e - b != 24 || b[22] != '=' || b[23] != '=') return 0;
  for (int i = 0; i < 22; i++) {
    unsigned char c = (unsigned char)b[i];
    if (!isalnum(c) && c != '+' && c != '/') return 0;
  }
  return 1;
}

void ws_handshake_accept(const char *key, size_t key_len, char out[29]) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  char buf[128];
  size_t glen = sizeof(WS_GUID) - 1;
  if (key_len > sizeof(buf) - glen) key_len = sizeof(buf) - glen;
  memcpy(buf, key, key_len);
  memcpy(buf + key_len, WS_GUID, glen);
  EVP_Digest(buf, key_len + glen, digest, &dlen, EVP_sha1(), NULL);
  EVP_EncodeBlock((unsigned char *)out, digest, (int)dlen); /* 28 + NUL */
}

ws_proto_t ws_handshake_subprotocol(const char *offered, int *echo) {
  *echo = 0;
  if (!offered) return WS_PROTO_JSON;
  const char *p = offered;
  while (*p) {
    const char *b = p, *e = strchr(p, ',');
    if (!e) e = p + strlen(p);
    p = *e ? e + 1 : e;
    ws_trim(&b, &e);
    size_t n = (size_t)(e - b);
    if (n == sizeof(WS_SUBPROTO_JSON) - 1 && !memcmp(b, WS_SUBPROTO_JSON, n)) {
      *echo = 1;
      return WS_PROTO_JSON;
    }
    if (n == sizeof(WS_SUBPROTO_MSGPACK) - 1 &&
        !memcmp(b, WS_SUBPROTO_MSGPACK, n)) {
      *echo = 1;
      return WS_PROTO_MSGPACK;
    }
  }
  return WS_PROTO_JSON;
}

static void ws_reject(ws_worker_t *ws, mw_http_request_t *req, int status,
                      ws_reject_slot_t slot, const char *extra,
                      const char *error) {
  const mw_host_v1_t *host = ws->p->host;
  char body[160];
  int n = snprintf(body, sizeof(body), "{\"error\":\"%s\"}", error);
  host->metric_add(ws->p->m_rejected[slot], 1);
  host->http_respond(req, status, "application/json", extra, body, (size_t)n);
}

/* GET /ws: validates the upgrade, answers 101 and hands the connection to a
 * new session; 400/426/503 with a JSON body otherwise. */
static void ws_route(mw_http_request_t *req, void *wstate) {
  ws_worker_t *ws = wstate;
  const mw_host_v1_t *host = ws->p->host;

  if (ws->draining) {
    ws_reject(ws, req, 503, WS_REJECT_503, NULL, "server is shutting down");
    return;
  }
  /* Browsers send Origin: only allowed origins may open a WebSocket (the
   * same CORS rules as SSE and long-poll; other clients send none). */
  char cors[512];
  if (host->http_cors(req, cors, sizeof cors) != 0) {
    ws_reject(ws, req, 403, WS_REJECT_403, NULL, "origin not allowed");
    return;
  }
  const char *upgrade = host->http_header(req, "upgrade");
  if (!upgrade || !ws_list_has(upgrade, "websocket")) {
    ws_reject(ws, req, 400, WS_REJECT_400, NULL,
              "missing or invalid Upgrade header");
    return;
  }
  const char *connection = host->http_header(req, "connection");
  if (!connection || !ws_list_has(connection, "upgrade")) {
    ws_reject(ws, req, 400, WS_REJECT_400, NULL,
              "Connection header must contain upgrade");
    return;
  }
  const char *version = host->http_header(req, "sec-websocket-version");
  const char *vb = version, *ve = version ? version + strlen(version) : NULL;
  if (version) ws_trim(&vb, &ve);
  if (!version || ve - vb != 2 || memcmp(vb, "13", 2) != 0) {
    ws_reject(ws, req, 426, WS_REJECT_426, "Sec-WebSocket-Version: 13\r\n",
              "unsupported WebSocket version");
    return;
  }
  const char *key = host->http_header(req, "sec-websocket-key");
  const char *kb = key, *ke = key ? key + strlen(key) : NULL;
  if (key) ws_trim(&kb, &ke);
  if (!key || !ws_key_valid(kb, ke)) {
    ws_reject(ws, req, 400, WS_REJECT_400, NULL,
              "missing or invalid Sec-WebSocket-Key");
    return;
  }

  int echo;
  ws_proto_t proto = ws_handshake_subprotocol(
      host->http_header(req, "sec-websocket-protocol"), &echo);
  char accept[29];
  ws_handshake_accept(kb, (size_t)(ke - kb), accept);
  char head[256];
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 101 Switching Protocols\r\n"
                   "Upgrade: websocket\r\n"
                   "Connection: Upgrade\r\n"
                   "Sec-WebSocket-Accept: %s\r\n"
                   "%s%s%s"
                   "\r\n",
                   accept, echo ? "Sec-WebSocket-Protocol: " : "",
                   echo ? (proto == WS_PROTO_MSGPACK ? WS_SUBPROTO_MSGPACK
                                                     : WS_SUBPROTO_JSON)
                        : "",
                   echo ? "\r\n" : "");

  int deny_code = 401;
  char deny_reason[160] = "";
  int rc = ws_session_open(ws, req, proto, head, (size_t)n, &deny_code,
                           deny_reason, sizeof deny_reason);
  if (rc == MW_EDENIED || rc == MW_ELIMIT) {
    json_t *body = json_pack("{s:s}", "error", deny_reason);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    host->http_respond(req, deny_code ? deny_code : 401, "application/json",
                       deny_code == 401 ? "WWW-Authenticate: Bearer\r\n" : NULL,
                       text ? text : "{}", text ? strlen(text) : 2);
    free(text);
    json_decref(body);
  } else if (rc == MW_ENOMEM || rc == MW_EUNAVAIL) {
    host->http_respond(req, 503, "application/json", NULL,
                       "{\"error\":\"cannot accept connection\"}", 36);
    host->metric_add(ws->p->m_rejected[WS_REJECT_503], 1);
  }
}

/* --- lifecycle ----------------------------------------------------------- */

static uint64_t ws_config_seconds_ms(const mw_host_v1_t *host, const char *key,
                                     int64_t def) {
  int64_t v = host->config_int(key, def);
  if (v < 0) v = def;
  return (uint64_t)v * 1000u;
}

static int ws_init(const mw_host_v1_t *host, mw_plugin_handle_t *self,
                   void **state) {
  ws_plugin_t *p = ws_xcalloc(1, sizeof(*p));
  p->host = host;
  int64_t max =
      host->config_int("limits.max_message_size", WS_DEFAULT_MAX_MESSAGE_SIZE);
  p->max_message_size = max > 0 ? (uint64_t)max : WS_DEFAULT_MAX_MESSAGE_SIZE;
  p->idle_timeout_ms = ws_config_seconds_ms(host, "limits.idle_timeout",
                                            WS_DEFAULT_IDLE_TIMEOUT);
  p->ping_interval_ms = ws_config_seconds_ms(host, "limits.ping_interval",
                                             WS_DEFAULT_PING_INTERVAL);

  for (int i = 0; i < WS_CLOSE_COUNT; i++)
    p->m_close[i] = host->metric(MW_METRIC_COUNTER, "moonwire_ws_close_total",
                                 "WebSocket close frames sent, by code",
                                 ws_close_labels[i]);
  for (int i = 0; i < WS_ERR_COUNT; i++)
    p->m_errors[i] = host->metric(
        MW_METRIC_COUNTER, "moonwire_ws_errors_total",
        "Bad WebSocket client messages answered with an error, by reason",
        ws_error_labels[i]);
  for (int i = 0; i < WS_REJECT_COUNT; i++)
    p->m_rejected[i] = host->metric(
        MW_METRIC_COUNTER, "moonwire_ws_handshake_rejected_total",
        "WebSocket handshakes refused, by HTTP status", ws_reject_labels[i]);
  p->m_received =
      host->metric(MW_METRIC_COUNTER, "moonwire_ws_messages_received_total",
                   "WebSocket data messages received", NULL);
  p->m_accepted =
      host->metric(MW_METRIC_COUNTER, "moonwire_ws_connections_total",
                   "WebSocket handshakes accepted", NULL);
  p->m_connections = host->metric(MW_METRIC_GAUGE, "moonwire_ws_connections",
                                  "Open WebSocket connections", NULL);

  int rc = host->http_route(self, "GET", "/ws", ws_route);
  if (rc != 0) {
    host->log(MW_LOG_ERROR, "websocket", "cannot register GET /ws: %s",
              host->strerror(rc));
    free(p);
    return rc;
  }
  *state = p;
  return 0;
}

static int ws_worker_start(void *state, mw_worker_t *w, void **wstate) {
  ws_plugin_t *p = state;
  ws_worker_t *ws = ws_xcalloc(1, sizeof(*ws));
  ws->p = p;
  ws->w = w;
  ws->loop = p->host->worker_loop(w);
  ws_wheel_init(ws);
  *wstate = ws;
  return 0;
}

/* Every session gets close 1001 "going away"; new handshakes get 503. */
static void ws_worker_drain(void *wstate) {
  ws_worker_t *ws = wstate;
  ws->draining = 1;
  ws_session_t *s = ws->sessions, *next;
  for (; s; s = next) {
    next = s->next; /* closing s may unlink (and free) only s itself */
    ws_session_fail(s, WSLAY_CODE_GOING_AWAY, "going away");
  }
}

static void ws_worker_stop(void *wstate) {
  ws_worker_t *ws = wstate;
  while (ws->sessions)
    ws_session_detach(ws->sessions);
  ws_wheel_close(ws); /* frees ws once the loop closed the timer */
}

static void ws_destroy(void *state) {
  free(state);
}

/* The plugin descriptor the loader looks up (MW_PLUGIN_SYMBOL). */
__attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1 = {
    MW_PLUGIN_V1_HEADER(MW_PLUGIN_TRANSPORT, "websocket", "0.1.0"),
    .init = ws_init,
    .worker_start = ws_worker_start,
    .worker_drain = ws_worker_drain,
    .worker_stop = ws_worker_stop,
    .destroy = ws_destroy,
    .storage = NULL,
};
