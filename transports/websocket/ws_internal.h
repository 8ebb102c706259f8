/* WebSocket transport: types and functions shared by the plugin's files.
 *
 *   websocket.c    the plugin struct, lifecycle, route and handshake
 *   ws_session.c   one connection: wslay glue, timers, delivery, close
 *   ws_messages.c  client messages of SPEC §3 (JSON or msgpack)
 *
 * Everything here is private to the plugin (built with -fvisibility=hidden);
 * the core is reached only through the host table. */
#ifndef MW_WS_INTERNAL_H
#define MW_WS_INTERNAL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <wslay/wslay.h>

#include "moonwire/plugin.h"

#define WS_SUBPROTO_JSON "moonwire.json"
#define WS_SUBPROTO_MSGPACK "moonwire.msgpack"
#define WS_MAX_TOPIC_LEN 256

#define WS_DEFAULT_MAX_MESSAGE_SIZE 1048576
#define WS_DEFAULT_IDLE_TIMEOUT 60  /* seconds */
#define WS_DEFAULT_PING_INTERVAL 25 /* seconds */

typedef enum ws_proto { WS_PROTO_JSON = 0, WS_PROTO_MSGPACK = 1 } ws_proto_t;

/* Close codes with their own series of moonwire_ws_close_total. */
typedef enum ws_close_slot {
  WS_CLOSE_1000,
  WS_CLOSE_1001,
  WS_CLOSE_1002,
  WS_CLOSE_1007,
  WS_CLOSE_1008,
  WS_CLOSE_1009,
  WS_CLOSE_1011,
  WS_CLOSE_OTHER,
  WS_CLOSE_COUNT
} ws_close_slot_t;

/* Reasons of moonwire_ws_errors_total (bad client messages). */
typedef enum ws_err_slot {
  WS_ERR_MALFORMED,    /* not JSON / msgpack, or not an object */
  WS_ERR_INVALID,      /* missing or ill-typed fields */
  WS_ERR_UNKNOWN_TYPE, /* unknown "type" */
  WS_ERR_WRONG_FRAME,  /* text frame on msgpack or binary frame on json */
  WS_ERR_COUNT
} ws_err_slot_t;

/* Handshake rejections of moonwire_ws_handshake_rejected_total. */
typedef enum ws_reject_slot {
  WS_REJECT_400,
  WS_REJECT_403,
  WS_REJECT_426,
  WS_REJECT_503,
  WS_REJECT_COUNT
} ws_reject_slot_t;

/* Global plugin state (main thread writes it in init, then read-only). */
typedef struct ws_plugin {
  const mw_host_v1_t *host;
  uint64_t max_message_size; /* bytes */
  uint64_t idle_timeout_ms;  /* 0: never */
  uint64_t ping_interval_ms; /* 0: no server pings */
  mw_metric_t *m_close[WS_CLOSE_COUNT];
  mw_metric_t *m_errors[WS_ERR_COUNT];
  mw_metric_t *m_rejected[WS_REJECT_COUNT];
  mw_metric_t *m_received;    /* data messages received */
  mw_metric_t *m_accepted;    /* handshakes accepted */
  mw_metric_t *m_connections; /* gauge: open sessions */
} ws_plugin_t;

typedef struct ws_session ws_session_t;

/* An intrusive doubly linked list node (a list head is a node too). */
typedef struct ws_link {
  struct ws_link *prev, *next;
} ws_link_t;

/* The timer wheel: one slot per WS_WHEEL_TICK ms, WS_WHEEL_SLOTS slots. A
 * session sits in the slot of its next deadline (server ping or idle
 * close), never later; a tick re-files the sessions whose deadline moved
 * (bytes received) instead of moving them on every read. Deadlines fire at
 * most one tick late, never early. */
#define WS_WHEEL_TICK 100 /* ms */
#define WS_WHEEL_SLOTS 1024

/* Per-worker state: the live sessions (drain, stop) and the timer wheel. */
typedef struct ws_worker {
  ws_plugin_t *p;
  mw_worker_t *w;
  uv_loop_t *loop;
  ws_session_t *sessions; /* doubly linked through prev/next */
  int draining;
  uv_timer_t timer;   /* ticks while the wheel holds a session */
  uint64_t wheel_now; /* the last tick served (loop ms / WS_WHEEL_TICK) */
  size_t wheel_count; /* sessions in the wheel */
  ws_link_t wheel[WS_WHEEL_SLOTS];
} ws_worker_t;

/* Bytes borrowed for the length of a call: data, len, and how far read. */
typedef struct ws_bytes {
  char *data;
  size_t len, off;
} ws_bytes_t;

/* One WebSocket connection. Reference-counted: the connection holds one
 * (dropped in on_close), each pending async host call one, and every entry
 * point a temporary guard. The last reference frees the memory.
 *
 * An idle session holds no wslay context (about 8.7 KiB of buffers): one is
 * made when bytes arrive or a frame is sent, and freed once wslay is quiet
 * again (at a frame boundary, nothing queued, no close under way). The
 * frame boundaries are tracked here (rx_*). */
struct ws_session {
  ws_worker_t *ws; /* NULL once detached by worker_stop */
  ws_plugin_t *p;
  const mw_host_v1_t *host;
  mw_worker_t *w;
  mw_conn_t *conn;     /* NULL before http_take returned and after on_close */
  mw_client_t *client; /* NULL after on_close */
  wslay_event_context_ptr ctx; /* NULL while idle */
  ws_link_t wheel_link;        /* in ws->wheel while in_wheel */
  uint64_t last_rx;            /* loop time (ms) of the last bytes received */
  uint64_t next_ping;          /* loop time (ms) of the next server ping */
  ws_session_t *prev, *next;
  unsigned refs;
  unsigned in_wslay;   /* > 0 inside wslay_event_recv/send: sends wait */
  ws_bytes_t *in;      /* bytes being fed to wslay_event_recv (on the stack) */
  ws_bytes_t *pending; /* bytes that arrived while http_take ran (ditto) */
  uint64_t rx_left;    /* payload bytes of the current input frame to come */
  uint8_t rx_hdr[10];  /* header bytes of the input frame (mask key left out) */
  uint8_t rx_hlen;     /* header bytes seen, mask key included */
  unsigned proto : 1;  /* ws_proto_t */
  unsigned rx_in_msg : 1;  /* a fragmented data message is open */
  unsigned taking : 1;     /* inside http_take */
  unsigned closing : 1;    /* conn_close called */
  unsigned closed : 1;     /* on_close ran (or the take failed) */
  unsigned fail_close : 1; /* a close is queued: conn_close after send */
  unsigned close_counted : 1;
  unsigned in_list : 1;
  unsigned in_wheel : 1;
  unsigned authed : 1;      /* host->client_connect allowed the client */
  const char *close_reason; /* static text for on_disconnect, or NULL */
};

/* websocket.c */

/* Writes the Sec-WebSocket-Accept value for `key` (the header's value,
 * without surrounding blanks) into `out` (29 bytes incl. NUL). */
void ws_handshake_accept(const char *key, size_t key_len, char out[29]);

/* Picks the subprotocol from a Sec-WebSocket-Protocol value (NULL: none):
 * the first of the client's list that is ours; *echo is set to 1 when the
 * choice must be echoed in the 101 response, 0 when the client offered none
 * of ours (moonwire.json is used). */
ws_proto_t ws_handshake_subprotocol(const char *offered, int *echo);

/* ws_session.c */

/* Creates a session for an accepted handshake, asks the policy whether the
 * client may connect when the request carries a token (or the policy has no
 * on_connect; otherwise the first message decides), takes the connection
 * over with `head` (the 101 response) and starts its timer. Answers nothing
 * itself: returns 0 (the session lives on, owned by its connection),
 * MW_ENOMEM or MW_EUNAVAIL before the take (the caller still owns `req` and
 * must answer it), MW_EDENIED / MW_ELIMIT when the policy refused (the
 * caller answers `req` with *deny_code and `deny_reason`), or MW_ECLOSED
 * when the peer was already gone (`req` is consumed). */
int ws_session_open(ws_worker_t *ws, mw_http_request_t *req, ws_proto_t proto,
                    const char *head, size_t head_len, int *deny_code,
                    char *deny_reason, size_t reason_len);

/* Takes / drops a reference; the last drop frees the session. */
void ws_session_ref(ws_session_t *s);
void ws_session_unref(ws_session_t *s);

/* 1 while replies can still be sent on `s`, 0 once it is closing. */
int ws_session_open_for_replies(const ws_session_t *s);

/* Encodes `msg` (stolen) in the session's subprotocol, queues it as one
 * frame and flushes (unless inside wslay, where the caller flushes). */
void ws_session_send(ws_session_t *s, json_t *msg);

/* Sends a close frame `code`/`reason` (reason < 123 bytes) and closes the
 * connection once it is written. Idempotent. */
void ws_session_fail(ws_session_t *s, uint16_t code, const char *reason);

/* Writes what wslay queued and closes the connection when wslay is done.
 * No-op inside wslay calls (the outermost entry point flushes). */
/* Writes a close frame with `code` straight to the connection (bypassing
 * wslay, whose state is broken after a parse failure) and closes it. */
void ws_session_abort(ws_session_t *s, uint16_t code, const char *reason);

void ws_session_flush(ws_session_t *s);

/* A session's deadline work at loop time `now` (ms): idle close, server
 * ping, then files it in the wheel again. Exposed for tests. */
void ws_session_tick(ws_session_t *s, uint64_t now);

/* worker_stop: unlinks `s` from its worker and its wheel and closes the
 * connection; the session lives until the core's on_close. */
void ws_session_detach(ws_session_t *s);

/* Sets up / tears down a worker's timer wheel (worker_start, worker_stop;
 * the stop closes the timer and frees `ws` in its close callback). */
void ws_wheel_init(ws_worker_t *ws);
void ws_wheel_close(ws_worker_t *ws);

/* Writes the header of one unmasked final frame of `opcode` carrying `len`
 * bytes into `hdr` (10 bytes); returns its length (2, 4 or 10). */
size_t ws_frame_header(uint8_t hdr[10], uint8_t opcode, uint64_t len);

/* ws_messages.c */

/* Handles one complete data message (`opcode` WSLAY_TEXT_FRAME or
 * WSLAY_BINARY_FRAME; text already UTF-8 checked). Bytes are borrowed. */
void ws_messages_handle(ws_session_t *s, uint8_t opcode, const uint8_t *msg,
                        size_t len);

/* Sends {"type":"error","id":id,"code":code,"reason":reason}; `id` is
 * borrowed and may be NULL. */
void ws_reply_error(ws_session_t *s, json_t *id, int code, const char *reason);

/* The plugin's exported descriptor (websocket.c). */
extern __attribute__((visibility("default"))) const mw_plugin_v1_t mw_plugin_v1;

#endif
