/* One WebSocket connection: wslay glue, the ping/idle timer, hub delivery,
 * slow-consumer overflow and the close paths.
 *
 * Invariant: send_callback accepts every byte (conn_write with force=1), so
 * once wslay_event_send returns, wslay holds no partial frame and delivery
 * may write event frames straight to the connection. Sends are never made
 * from inside wslay_event_recv: replies and closes are queued there and the
 * outermost entry point (on_data, a timer, an async callback) flushes.
 *
 * The wslay context exists only while wslay has work (ws_ctx makes it,
 * ws_ctx_trim frees it at a quiet frame boundary); deadlines live in the
 * worker's timer wheel (see ws_internal.h). */
#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "ws_internal.h"

static void ws_on_data(void *ud, const char *data, size_t len);
static void ws_on_overflow(void *ud);
static void ws_on_close(void *ud);

static const mw_stream_handler_t ws_stream_handler = {
    .on_data = ws_on_data,
    .on_overflow = ws_on_overflow,
    .on_close = ws_on_close,
};

/* --- references ------------------------------------------------------------
 */

void ws_session_ref(ws_session_t *s) {
  s->refs++;
}

void ws_session_unref(ws_session_t *s) {
  if (--s->refs > 0) return;
  if (s->ctx) wslay_event_context_free(s->ctx);
  free(s);
}

int ws_session_open_for_replies(const ws_session_t *s) {
  /* Without a context no close was sent (it is kept until the end then). */
  return !s->closed && !s->closing && !s->fail_close &&
         !(s->ctx && wslay_event_get_close_sent(s->ctx));
}

/* --- the wslay context, only while it has work -----------------------------
 */

static const struct wslay_event_callbacks ws_wslay_callbacks;

/* The session's wslay context, made if it has none; NULL when out of
 * memory. A new context starts at a frame boundary, like the input. */
static wslay_event_context_ptr ws_ctx(ws_session_t *s) {
  if (s->ctx) return s->ctx;
  if (wslay_event_context_server_init(&s->ctx, &ws_wslay_callbacks, s) != 0) {
    s->ctx = NULL;
    return NULL;
  }
  wslay_event_config_set_max_recv_msg_length(s->ctx, s->p->max_message_size);
  return s->ctx;
}

/* Frees the context when nothing in it matters any more: outside wslay,
 * the input at a frame boundary outside a fragmented message, nothing
 * queued or half sent, no close sent or received, both directions on. */
static void ws_ctx_trim(ws_session_t *s) {
  wslay_event_context_ptr ctx = s->ctx;
  if (!ctx || s->in_wslay || s->taking) return;
  if (s->rx_hlen || s->rx_left || s->rx_in_msg) return;
  if (s->closing || s->closed || s->fail_close) return;
  if (wslay_event_get_close_sent(ctx) || wslay_event_get_close_received(ctx) ||
      !wslay_event_get_read_enabled(ctx) ||
      !wslay_event_get_write_enabled(ctx) || wslay_event_want_write(ctx) ||
      wslay_event_get_queued_msg_count(ctx))
    return;
  wslay_event_context_free(ctx);
  s->ctx = NULL;
}

/* Follows the frame boundaries of the input (RFC 6455 §5.2 headers) so that
 * ws_ctx_trim knows when wslay holds no partial frame. */
static void ws_track(ws_session_t *s, const uint8_t *p, size_t n) {
  while (n) {
    if (s->rx_left) {
      size_t k = n < s->rx_left ? n : (size_t)s->rx_left;
      s->rx_left -= k;
      p += k;
      n -= k;
      continue;
    }
    if (s->rx_hlen < sizeof s->rx_hdr) s->rx_hdr[s->rx_hlen] = *p;
    s->rx_hlen++;
    p++;
    n--;
    if (s->rx_hlen < 2) continue;
    uint8_t l7 = s->rx_hdr[1] & 0x7f;
    size_t need = 2u +
                  (l7 == 126   ? 2u
                   : l7 == 127 ? 8u
                               : 0u) +
                  ((s->rx_hdr[1] & 0x80) ? 4u : 0u);
    if (s->rx_hlen < need) continue;
    uint64_t len = l7;
    if (l7 == 126) {
      len = ((uint64_t)s->rx_hdr[2] << 8) | s->rx_hdr[3];
    } else if (l7 == 127) {
      len = 0;
      for (int i = 0; i < 8; i++)
        len = (len << 8) | s->rx_hdr[2 + i];
    }
    uint8_t op = s->rx_hdr[0] & 0x0f;
    int fin = s->rx_hdr[0] >> 7;
    if (op == WSLAY_TEXT_FRAME || op == WSLAY_BINARY_FRAME)
      s->rx_in_msg = !fin;
    else if (op == WSLAY_CONTINUATION_FRAME && fin)
      s->rx_in_msg = 0;
    s->rx_hlen = 0;
    s->rx_left = len;
  }
}

/* --- frames ----------------------------------------------------------------
 */

size_t ws_frame_header(uint8_t hdr[10], uint8_t opcode, uint64_t len) {
  hdr[0] = (uint8_t)(0x80u | (opcode & 0x0fu));
  if (len < 126) {
    hdr[1] = (uint8_t)len;
    return 2;
  }
  if (len <= 0xffff) {
    hdr[1] = 126;
    hdr[2] = (uint8_t)(len >> 8);
    hdr[3] = (uint8_t)len;
    return 4;
  }
  hdr[1] = 127;
  for (int i = 0; i < 8; i++)
    hdr[2 + i] = (uint8_t)(len >> (56 - 8 * i));
  return 10;
}

static void ws_count_close(ws_session_t *s) {
  if (s->close_counted || !s->ctx || !wslay_event_get_close_sent(s->ctx))
    return;
  s->close_counted = 1;
  ws_close_slot_t slot;
  switch (wslay_event_get_status_code_sent(s->ctx)) {
  case 1000:
    slot = WS_CLOSE_1000;
    break;
  case 1001:
    slot = WS_CLOSE_1001;
    break;
  case 1002:
    slot = WS_CLOSE_1002;
    break;
  case 1007:
    slot = WS_CLOSE_1007;
    break;
  case 1008:
    slot = WS_CLOSE_1008;
    break;
  case 1009:
    slot = WS_CLOSE_1009;
    break;
  case 1011:
    slot = WS_CLOSE_1011;
    break;
  default:
    slot = WS_CLOSE_OTHER;
    break;
  }
  s->host->metric_add(s->p->m_close[slot], 1);
}

static void ws_close_conn(ws_session_t *s) {
  if (s->closing || s->closed || !s->conn) return;
  s->closing = 1;
  s->host->conn_close(s->conn); /* on_close may run now or later */
}

/* A static reason for on_disconnect: the close we sent. */
static const char *ws_close_reason_text(uint16_t code, const char *reason) {
  switch (code) {
  case 1001:
    return reason && !strcmp(reason, "idle timeout") ? "idle timeout"
                                                     : "going away";
  case 1002:
    return "protocol error";
  case 1007:
    return "invalid utf-8";
  case 1008:
    return reason && !strcmp(reason, "slow consumer") ? "slow consumer"
                                                      : "policy violation";
  case 1009:
    return "message too big";
  default:
    return "error";
  }
}

void ws_session_abort(ws_session_t *s, uint16_t code, const char *reason) {
  if (s->closed || s->closing || !s->conn) return;
  uint8_t frame[2 + 2 + 123];
  size_t rlen = strlen(reason);
  if (rlen > 123) rlen = 123;
  frame[0] = 0x88; /* FIN + close */
  frame[1] = (uint8_t)(2 + rlen);
  frame[2] = (uint8_t)(code >> 8);
  frame[3] = (uint8_t)(code & 0xff);
  memcpy(frame + 4, reason, rlen);
  s->host->conn_write(s->conn, frame, 4 + rlen, 1);
  s->close_counted = 1;
  if (!s->close_reason) s->close_reason = ws_close_reason_text(code, reason);
  s->host->metric_add(
      s->p->m_close[code == 1002 ? WS_CLOSE_1002 : WS_CLOSE_1011], 1);
  ws_close_conn(s);
}

void ws_session_flush(ws_session_t *s) {
  if (s->in_wslay || s->taking || s->closed || s->closing || !s->conn) return;
  if (!s->ctx) return; /* nothing queued */
  ws_session_ref(s);
  s->in_wslay++;
  int rc = wslay_event_send(s->ctx);
  s->in_wslay--;
  ws_count_close(s);
  if (rc != 0 || s->fail_close || wslay_event_get_close_sent(s->ctx) ||
      (!wslay_event_want_read(s->ctx) && !wslay_event_want_write(s->ctx)))
    ws_close_conn(s);
  else
    ws_ctx_trim(s);
  ws_session_unref(s);
}

void ws_session_fail(ws_session_t *s, uint16_t code, const char *reason) {
  if (s->closed || s->closing || s->fail_close) return;
  s->fail_close = 1;
  if (!ws_ctx(s)) { /* out of memory: say it without wslay */
    ws_session_abort(s, code, reason ? reason : "");
    return;
  }
  if (!s->close_reason) s->close_reason = ws_close_reason_text(code, reason);
  wslay_event_shutdown_read(s->ctx);
  /* Fails harmlessly when a close was already queued or sent. */
  wslay_event_queue_close(s->ctx, code, (const uint8_t *)reason,
                          reason ? strlen(reason) : 0);
  ws_session_flush(s);
}

void ws_session_send(ws_session_t *s, json_t *msg) {
  if (!msg) return;
  if (!ws_session_open_for_replies(s)) {
    json_decref(msg);
    return;
  }
  struct wslay_event_msg m = {0};
  char *text = NULL;
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  if (s->proto == WS_PROTO_JSON) {
    text = json_dumps(msg, JSON_COMPACT);
    if (text) {
      m.opcode = WSLAY_TEXT_FRAME;
      m.msg = (const uint8_t *)text;
      m.msg_length = strlen(text);
    }
  } else {
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (mw_codec_pack_json(&pk, msg) == 0) {
      m.opcode = WSLAY_BINARY_FRAME;
      m.msg = (const uint8_t *)sb.data;
      m.msg_length = sb.size;
    }
  }
  if (m.msg && ws_ctx(s)) {
    wslay_event_queue_msg(s->ctx, &m); /* copies */
  } else {
    s->host->log(MW_LOG_ERROR, "websocket", "cannot encode a reply");
  }
  free(text);
  msgpack_sbuffer_destroy(&sb);
  json_decref(msg);
  ws_session_flush(s);
}

/* --- wslay callbacks -------------------------------------------------------
 */

static ssize_t ws_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len,
                          int flags, void *ud) {
  ws_session_t *s = ud;
  ws_bytes_t *in = s->in;
  size_t avail = in ? in->len - in->off : 0;
  if (avail == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  if (len > avail) len = avail;
  memcpy(buf, in->data + in->off, len);
  in->off += len;
  return (ssize_t)len;
}

static ssize_t ws_send_cb(wslay_event_context_ptr ctx, const uint8_t *data,
                          size_t len, int flags, void *ud) {
  ws_session_t *s = ud;
  /* force=1: control and reply frames bypass the cap; after a close the
   * bytes are dropped. Either way all of them count as sent. */
  if (s->conn && !s->closing && !s->closed)
    s->host->conn_write(s->conn, data, len, 1);
  return (ssize_t)len;
}

static void ws_on_msg(wslay_event_context_ptr ctx,
                      const struct wslay_event_on_msg_recv_arg *arg, void *ud) {
  ws_session_t *s = ud;
  if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
    return; /* ping, pong and close are wslay's */
  if (!ws_session_open_for_replies(s)) return;
  s->host->metric_add(s->p->m_received, 1);
  if (arg->opcode == WSLAY_TEXT_FRAME &&
      !mw_codec_utf8_valid((const char *)arg->msg, arg->msg_length)) {
    ws_session_fail(s, WSLAY_CODE_INVALID_FRAME_PAYLOAD_DATA, "invalid UTF-8");
    return;
  }
  ws_messages_handle(s, arg->opcode, arg->msg, arg->msg_length);
}

static const struct wslay_event_callbacks ws_wslay_callbacks = {
    .recv_callback = ws_recv_cb,
    .send_callback = ws_send_cb,
    .on_msg_recv_callback = ws_on_msg,
};

/* --- the timer wheel -------------------------------------------------------
 */

static void ws_wheel_unlink(ws_session_t *s) {
  if (!s->in_wheel) return;
  s->wheel_link.prev->next = s->wheel_link.next;
  s->wheel_link.next->prev = s->wheel_link.prev;
  s->wheel_link.prev = s->wheel_link.next = NULL;
  s->in_wheel = 0;
  if (--s->ws->wheel_count == 0) uv_timer_stop(&s->ws->timer);
}

static void ws_wheel_cb(uv_timer_t *t);

/* Files s in the slot of its next deadline (or unfiles it if it has none). */
static void ws_timer_arm(ws_session_t *s, uint64_t now) {
  (void)now;
  ws_worker_t *ws = s->ws;
  if (!ws) return;
  ws_wheel_unlink(s);
  if (s->closed || s->closing || s->fail_close) return;
  uint64_t deadline = s->next_ping;
  if (s->p->idle_timeout_ms && s->last_rx + s->p->idle_timeout_ms < deadline)
    deadline = s->last_rx + s->p->idle_timeout_ms;
  if (deadline == UINT64_MAX) return; /* neither pings nor idle timeout */
  /* The first tick at or after the deadline, after the ticks served. */
  uint64_t tick = (deadline + WS_WHEEL_TICK - 1) / WS_WHEEL_TICK;
  if (tick <= ws->wheel_now) tick = ws->wheel_now + 1;
  if (tick - ws->wheel_now >= WS_WHEEL_SLOTS)
    tick = ws->wheel_now + WS_WHEEL_SLOTS - 1; /* looked at again then */
  ws_link_t *head = &ws->wheel[tick % WS_WHEEL_SLOTS];
  s->wheel_link.prev = head->prev;
  s->wheel_link.next = head;
  head->prev->next = &s->wheel_link;
  head->prev = &s->wheel_link;
  s->in_wheel = 1;
  if (ws->wheel_count++ == 0)
    uv_timer_start(&ws->timer, ws_wheel_cb, WS_WHEEL_TICK, WS_WHEEL_TICK);
}

/* Serves every tick up to now: each session of a slot is ticked if its
 * deadline came, re-filed otherwise (it received bytes since). */
static void ws_wheel_cb(uv_timer_t *t) {
  ws_worker_t *ws = t->data;
  uint64_t now = uv_now(ws->loop);
  uint64_t target = now / WS_WHEEL_TICK;
  if (target - ws->wheel_now > WS_WHEEL_SLOTS) /* the loop was stalled */
    ws->wheel_now = target - WS_WHEEL_SLOTS;
  while (ws->wheel_now < target) {
    ws->wheel_now++;
    ws_link_t *head = &ws->wheel[ws->wheel_now % WS_WHEEL_SLOTS];
    /* Detach the slot first: sessions re-filed now go to later slots. */
    ws_link_t due = *head;
    if (due.next == head) continue;
    due.next->prev = &due;
    due.prev->next = &due;
    head->prev = head->next = head;
    while (due.next != &due) {
      ws_session_t *s = (ws_session_t *)((char *)due.next -
                                         offsetof(ws_session_t, wheel_link));
      /* Out of the slot (the count is fixed by ws_timer_arm's re-filing). */
      s->wheel_link.prev->next = s->wheel_link.next;
      s->wheel_link.next->prev = s->wheel_link.prev;
      s->wheel_link.prev = s->wheel_link.next = NULL;
      s->in_wheel = 0;
      ws->wheel_count--;
      ws_session_tick(s, now);
    }
  }
  if (ws->wheel_count == 0) uv_timer_stop(&ws->timer);
}

void ws_wheel_init(ws_worker_t *ws) {
  for (size_t i = 0; i < WS_WHEEL_SLOTS; i++)
    ws->wheel[i].prev = ws->wheel[i].next = &ws->wheel[i];
  uv_timer_init(ws->loop, &ws->timer);
  ws->timer.data = ws;
  ws->wheel_now = uv_now(ws->loop) / WS_WHEEL_TICK;
}

static void ws_wheel_closed(uv_handle_t *h) {
  free(h->data); /* the ws_worker_t */
}

void ws_wheel_close(ws_worker_t *ws) {
  uv_close((uv_handle_t *)&ws->timer, ws_wheel_closed);
}

void ws_session_tick(ws_session_t *s, uint64_t now) {
  if (s->closed || s->closing || s->fail_close) {
    ws_wheel_unlink(s);
    return;
  }
  ws_session_ref(s);
  if (s->p->idle_timeout_ms && now - s->last_rx >= s->p->idle_timeout_ms) {
    ws_wheel_unlink(s);
    ws_session_fail(s, WSLAY_CODE_GOING_AWAY, "idle timeout");
  } else {
    if (now >= s->next_ping && ws_ctx(s)) {
      struct wslay_event_msg m = {
          .opcode = WSLAY_PING, .msg = NULL, .msg_length = 0};
      wslay_event_queue_msg(s->ctx, &m);
      s->next_ping = now + s->p->ping_interval_ms;
      ws_session_flush(s);
    }
    ws_timer_arm(s, now);
  }
  ws_session_unref(s);
}

/* --- worker list -----------------------------------------------------------
 */

static void ws_link(ws_session_t *s) {
  ws_worker_t *ws = s->ws;
  s->prev = NULL;
  s->next = ws->sessions;
  if (ws->sessions) ws->sessions->prev = s;
  ws->sessions = s;
  s->in_list = 1;
  s->host->metric_add(s->p->m_connections, 1);
}

static void ws_unlink(ws_session_t *s) {
  if (!s->in_list) return;
  if (s->prev)
    s->prev->next = s->next;
  else
    s->ws->sessions = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = NULL;
  s->in_list = 0;
  s->host->metric_add(s->p->m_connections, -1);
}

/* --- stream handler --------------------------------------------------------
 */

/* Feeds `len` bytes to wslay, then flushes. */
static void ws_feed(ws_session_t *s, const char *data, size_t len) {
  s->last_rx = uv_now(s->host->worker_loop(s->w));
  if (!ws_ctx(s)) {
    ws_session_abort(s, 1011, "internal error");
    return;
  }
  ws_track(s, (const uint8_t *)data, len);
  ws_bytes_t in = {(char *)data, len, 0};
  s->in = &in;
  s->in_wslay++;
  int rc = wslay_event_recv(s->ctx);
  s->in_wslay--;
  s->in = NULL;
  if (rc != 0) {
    /* wslay rejected the input (a frame it cannot parse) and may have queued
     * a close without a code: say 1002 ourselves, bypassing its queue. A
     * peer can trigger this at will, so it is logged at debug only. */
    s->host->log(MW_LOG_DEBUG, "websocket", "frame rejected (wslay %d)", rc);
    ws_session_abort(s, rc == WSLAY_ERR_NOMEM ? 1011 : 1002,
                     rc == WSLAY_ERR_NOMEM ? "internal error"
                                           : "protocol error");
    return;
  }
  ws_session_flush(s);
}

static void ws_on_data(void *ud, const char *data, size_t len) {
  ws_session_t *s = ud;
  if (s->closed || s->closing || len == 0) return;
  if (s->taking) { /* http_take has not returned yet: keep for later */
    ws_bytes_t *pb = s->pending;
    char *p = realloc(pb->data, pb->len + len);
    if (!p) return; /* the frame parser will see a gap and fail */
    memcpy(p + pb->len, data, len);
    pb->data = p;
    pb->len += len;
    return;
  }
  ws_session_ref(s);
  ws_feed(s, data, len);
  ws_session_unref(s);
}

static void ws_on_overflow(void *ud) {
  ws_session_t *s = ud;
  ws_session_ref(s);
  ws_session_fail(s, WSLAY_CODE_POLICY_VIOLATION, "slow consumer");
  ws_session_unref(s);
}

static void ws_on_close(void *ud) {
  ws_session_t *s = ud;
  if (s->closed) return;
  s->closed = 1;
  s->conn = NULL;
  if (s->client)
    s->host->client_disconnect(&s->client,
                               s->close_reason ? s->close_reason : "closed");
  ws_wheel_unlink(s);
  ws_unlink(s);
  ws_session_unref(s); /* the connection's reference */
}

/* --- delivery --------------------------------------------------------------
 */

static void ws_deliver(mw_client_t *client, mw_event_t *ev, void *ud) {
  ws_session_t *s = ud;
  if (!ws_session_open_for_replies(s) || !s->conn) return;
  mw_wire_t wire =
      s->proto == WS_PROTO_MSGPACK ? MW_WIRE_MSGPACK : MW_WIRE_JSON;
  uint8_t opcode =
      s->proto == WS_PROTO_MSGPACK ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME;
  uint8_t hdr[10];
  size_t hlen = ws_frame_header(hdr, opcode, ev->wire[wire].len);
  /* MW_ELIMIT: the core already ran on_overflow; MW_ECLOSED: closing. */
  s->host->conn_write_event(s->conn, hdr, hlen, ev, wire, NULL, 0);
}

/* POST /api/disconnect: close 4001 with the reason. */
static void ws_kick(mw_client_t *client, const char *reason, void *ud) {
  ws_session_t *s = ud;
  (void)client;
  ws_session_ref(s);
  s->close_reason = "disconnected";
  ws_session_fail(s, 4001, reason ? reason : "disconnected");
  ws_session_unref(s);
}

/* --- open / detach ---------------------------------------------------------
 */

int ws_session_open(ws_worker_t *ws, mw_http_request_t *req, ws_proto_t proto,
                    const char *head, size_t head_len, int *deny_code,
                    char *deny_reason, size_t reason_len) {
  const mw_host_v1_t *host = ws->p->host;
  ws_session_t *s = calloc(1, sizeof(*s));
  if (!s) return MW_ENOMEM;
  s->ws = ws;
  s->p = ws->p;
  s->host = host;
  s->w = ws->w;
  s->proto = proto;
  s->refs = 1; /* the connection's */
  s->client = host->client_new(ws->w, "websocket", ws_deliver, s);
  if (!s->client) {
    ws_session_unref(s);
    return MW_EUNAVAIL;
  }
  host->client_set_kick(s->client, ws_kick);
  /* Credentials in the request decide now, before the upgrade; without
   * them, a policy with on_connect waits for the first message. */
  host->client_attach_request(s->client, req);
  if (host->client_has_token(s->client) || !host->policy_has_connect(ws->w)) {
    int rc = host->client_connect(s->client, NULL, deny_code);
    if (rc) {
      snprintf(deny_reason, reason_len, "%s",
               host->client_error(s->client, NULL));
      host->client_free(&s->client);
      ws_session_unref(s);
      return rc;
    }
    s->authed = 1;
  }

  ws_session_ref(s); /* guard */
  ws_bytes_t pending = {NULL, 0, 0};
  s->pending = &pending;
  s->taking = 1;
  mw_conn_t *conn = host->http_take(req, head, head_len, &ws_stream_handler, s);
  s->taking = 0;
  s->pending = NULL;
  if (!conn || s->closed) free(pending.data);
  if (!conn) {
    if (!s->closed) {
      s->closed = 1;
      host->client_free(&s->client);
      ws_session_unref(s);
    }
    ws_session_unref(s);
    return MW_ECLOSED;
  }
  if (s->closed) { /* on_close ran inside http_take */
    ws_session_unref(s);
    return 0;
  }
  s->conn = conn;
  host->metric_add(s->p->m_accepted, 1);
  ws_link(s);

  uint64_t now = uv_now(ws->loop);
  s->last_rx = now;
  s->next_ping =
      s->p->ping_interval_ms ? now + s->p->ping_interval_ms : UINT64_MAX;
  ws_timer_arm(s, now);

  if (pending.len) ws_feed(s, pending.data, pending.len);
  free(pending.data);
  ws_session_flush(s);
  ws_session_unref(s);
  return 0;
}

void ws_session_detach(ws_session_t *s) {
  ws_session_ref(s);
  ws_unlink(s);
  ws_wheel_unlink(s);
  s->ws = NULL;
  ws_session_fail(s, WSLAY_CODE_GOING_AWAY, "going away"); /* if not yet */
  ws_close_conn(s);
  ws_session_unref(s);
}
