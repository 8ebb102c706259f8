/* Services the core offers plugins: the host table.
 *
 * A plugin receives a `const mw_host_v1_t *` in its init function and reaches
 * the core only through it (plugins never link core symbols). The table is
 * valid until the plugin's destroy returns. Unless said otherwise, a function
 * that takes a worker, request, connection or client must be called on that
 * worker's thread. Strings passed in are copied unless said otherwise;
 * strings returned are owned by the core and valid as long as the object they
 * came from. Return codes: 0 or a negative MW_E* (moonwire/errno.h). */
#ifndef MOONWIRE_HOST_H
#define MOONWIRE_HOST_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "moonwire/errno.h"
#include "moonwire/event.h"

typedef struct mw_worker mw_worker_t;             /* one event loop + thread */
typedef struct mw_http_request mw_http_request_t; /* one parsed request */
typedef struct mw_conn mw_conn_t;                 /* a taken-over connection */
typedef struct mw_client mw_client_t;             /* a subscriber in the hub */
typedef struct mw_plugin_handle mw_plugin_handle_t; /* the plugin itself */
typedef struct mw_metric mw_metric_t;               /* one metric series */

typedef enum mw_log_level {
  MW_LOG_ERROR = 0,
  MW_LOG_WARN = 1,
  MW_LOG_INFO = 2,
  MW_LOG_DEBUG = 3
} mw_log_level_t;

/* A route handler: runs on the request's worker thread. It must, now or
 * later, either answer (http_respond) or take the connection (http_take);
 * `worker_state` is the registering plugin's state for that worker. */
typedef void (*mw_route_fn)(mw_http_request_t *req, void *worker_state);

/* Called if the client goes away before a pending request was answered; the
 * request is invalid after it returns. An answer (http_respond, http_take)
 * to this or another request of that connection, from the callback or
 * later, goes nowhere and frees that request. */
typedef void (*mw_abort_fn)(mw_http_request_t *req, void *ud);

/* Callbacks of a taken-over connection (WebSocket, SSE, ...). */
typedef struct mw_stream_handler {
  /* Bytes from the peer, valid only during the call. */
  void (*on_data)(void *ud, const char *data, size_t len);
  /* The outbound queue passed its cap (a slow consumer). The handler should
   * write its goodbye (e.g. a 1008 close frame) and call conn_close; further
   * data writes are refused with MW_ELIMIT. Counted by the core. */
  void (*on_overflow)(void *ud);
  /* The connection is closed (by either side); `conn` is invalid after the
   * call and `ud` is the handler's to free. Called exactly once. */
  void (*on_close)(void *ud);
} mw_stream_handler_t;

/* A hub delivery to one subscriber, on the client's worker thread. The event
 * is borrowed: take a reference (or use conn_write_event) to keep it. */
typedef void (*mw_deliver_fn)(mw_client_t *client, mw_event_t *ev, void *ud);

/* Completion of host->publish: exactly once. `status` 0 with the sealed event
 * (borrowed), or a negative MW_E* with ev == NULL; `reason` is a short
 * human-readable text for errors (NULL on success). */
typedef void (*mw_publish_cb)(int status, const mw_event_t *ev,
                              const char *reason, void *ud);

/* Completion of host->topic_position: exactly once. */
typedef void (*mw_position_cb)(int status, uint64_t seq, const char *epoch,
                               void *ud);

/* What to publish. `data_json` must be a JSON object (or NULL for {}). */
typedef struct mw_publish_req {
  const char *topic;
  const char *event;
  const char *data_json;
  size_t data_len;
  const char *trace_id; /* NULL: generated */
} mw_publish_req_t;

/* Completion of host->subscribe_since: once, before any replayed event is
 * delivered. `recovered` is 1 when every event after `since` is replayed
 * (in order, then live events follow without gap or duplicate), 0 when
 * history no longer holds them or the epoch changed (refetch state); `seq`
 * and `epoch` are the topic's current position. `status` is 0 or an MW_E*
 * (e.g. MW_EUNAVAIL: no replay, the subscription stays live). */
typedef void (*mw_recover_cb)(int status, const char *topic, int recovered,
                              uint64_t seq, const char *epoch, void *ud);

typedef enum mw_metric_type {
  MW_METRIC_COUNTER = 0,
  MW_METRIC_GAUGE = 1
} mw_metric_type_t;

typedef struct mw_host_v1 {
  uint32_t struct_size; /* sizeof(mw_host_v1_t) of the core */

  /* --- logging and errors --- */
  /* Logs one line; `subsystem` names the plugin or part ("websocket"). */
  void (*log)(int level, const char *subsystem, const char *fmt, ...)
      __attribute__((format(printf, 3, 4)));
  /* A static text for an MW_E* or libuv code. */
  const char *(*strerror)(int code);

  /* --- configuration (any thread, read-only after start) --- */
  /* The value of a dotted key ("limits.max_message_size"), or `def`. */
  int64_t (*config_int)(const char *key, int64_t def);
  /* The string value of a key, or `def`; owned by the core. */
  const char *(*config_string)(const char *key, const char *def);

  /* --- workers --- */
  uv_loop_t *(*worker_loop)(mw_worker_t *w);
  unsigned (*worker_id)(mw_worker_t *w);
  /* Number of workers (any thread). */
  unsigned (*worker_count)(void);

  /* --- HTTP --- */
  /* Registers `fn` for METHOD and exact PATH; only during init. Returns
   * MW_EEXIST if the route is taken. */
  int (*http_route)(mw_plugin_handle_t *self, const char *method,
                    const char *path, mw_route_fn fn);
  const char *(*http_method)(const mw_http_request_t *req);
  const char *(*http_path)(const mw_http_request_t *req);
  /* The value of a header by lower-case name, or NULL. */
  const char *(*http_header)(const mw_http_request_t *req, const char *lname);
  /* The decoded value of a query parameter, or NULL. */
  const char *(*http_query)(const mw_http_request_t *req, const char *name);
  /* The peer's address as text ("127.0.0.1"). */
  const char *(*http_remote_addr)(const mw_http_request_t *req);
  mw_worker_t *(*http_worker)(const mw_http_request_t *req);
  /* The request body (may be empty). */
  mw_bytes_t (*http_body)(const mw_http_request_t *req);
  /* Answers the request; `extra_headers` is NULL or "Name: v\r\n..." lines.
   * The request is invalid afterwards. */
  void (*http_respond)(mw_http_request_t *req, int status,
                       const char *content_type, const char *extra_headers,
                       const char *body, size_t len);
  /* Notifies `fn` if the peer leaves while the request is pending. */
  void (*http_on_abort)(mw_http_request_t *req, mw_abort_fn fn, void *ud);
  /* Takes the connection over: writes `head` (the response head, e.g. a 101
   * or a streaming 200) and from then on hands the peer's bytes to `h`,
   * starting with any bytes that followed the request. The request is
   * invalid afterwards. Returns NULL if the connection is already gone. */
  mw_conn_t *(*http_take)(mw_http_request_t *req, const char *head,
                          size_t head_len, const mw_stream_handler_t *h,
                          void *ud);

  /* --- taken-over connections --- */
  /* Queues a copy of `data`. MW_ELIMIT past the cap (on_overflow fires),
   * MW_ECLOSED if closing. Control writes (`force` = 1) bypass the cap. */
  int (*conn_write)(mw_conn_t *c, const void *data, size_t len, int force);
  /* Queues `prefix` (copied, at most 16 bytes), then the event's wire form
   * `wire` shared without copying (a reference is held until written), then
   * `suffix` (copied, at most 16 bytes). Same errors as conn_write. */
  int (*conn_write_event)(mw_conn_t *c, const void *prefix, size_t plen,
                          mw_event_t *ev, mw_wire_t wire, const void *suffix,
                          size_t slen);
  /* Bytes queued and not yet written. */
  size_t (*conn_queued)(const mw_conn_t *c);
  /* Closes: stops reading, writes what is queued (up to a short deadline),
   * then closes the socket; on_close fires afterwards. Idempotent. */
  void (*conn_close)(mw_conn_t *c);

  /* --- events (any thread) --- */
  mw_event_t *(*event_ref)(mw_event_t *ev);
  /* Drops a reference and sets *ev to NULL. */
  void (*event_unref)(mw_event_t **ev);
  /* For storage plugins: assigns seq and epoch to a draft and encodes its
   * wire forms; the event is immutable afterwards. */
  int (*event_seal)(mw_event_t *ev, uint64_t seq, const char *epoch);
  /* For storage plugins: rebuilds a sealed event from its JSON wire form
   * (e.g. received from another node): an event ({"type":"event",...,
   * "seq":N}) or a presence message ({"type":"presence",...}, seq 0).
   * *out holds one reference. */
  int (*event_parse)(const char *json, size_t len, const char *epoch,
                     mw_event_t **out);
  /* For storage plugins: delivers a sealed event to this node's subscribers
   * on every worker (takes its own references). Call it in seq order. */
  void (*fanout)(mw_event_t *ev);

  /* --- hub: subscribers on a worker --- */
  /* A new subscriber on worker `w` for transport `transport` ("websocket");
   * `deliver` receives its events. Owned by the caller until client_free. */
  mw_client_t *(*client_new)(mw_worker_t *w, const char *transport,
                             mw_deliver_fn deliver, void *ud);
  /* Removes every subscription, frees the client and sets *c to NULL. */
  void (*client_free)(mw_client_t **c);
  /* The client's unique id ("<node>-<worker>-<n>"). */
  const char *(*client_id)(const mw_client_t *c);
  /* 0, MW_EEXIST (already), MW_ELIMIT (too many topics), MW_EINVAL (name),
   * MW_EDENIED (tenant rules or on_subscribe refused, or the client is not
   * connected: client_error() tells the code and reason). */
  int (*subscribe)(mw_client_t *c, const char *topic);
  /* 0 or MW_ENOTFOUND (not subscribed). */
  int (*unsubscribe)(mw_client_t *c, const char *topic);

  /* --- publishing through storage --- */
  /* Validates, asks the policy (tenant topic rules, on_publish with the
   * origin's identity) and publishes: the storage assigns seq, stores, fans
   * out. Returns 0 and fires `cb` exactly once (possibly before returning),
   * with MW_EDENIED and the script's reason when the policy refuses.
   * `origin` is the publishing client or NULL for the server API. */
  int (*publish)(mw_worker_t *w, const mw_publish_req_t *req,
                 mw_client_t *origin, mw_publish_cb cb, void *ud);
  /* The current seq and epoch of a topic (0 if it has no events). */
  int (*topic_position)(mw_worker_t *w, const char *topic, mw_position_cb cb,
                        void *ud);

  /* --- metrics (any thread) --- */
  /* Registers (or finds) one series: `labels` is NULL or `k="v",k2="v2"`.
   * Only during init. */
  mw_metric_t *(*metric)(mw_metric_type_t type, const char *name,
                         const char *help, const char *labels);
  void (*metric_add)(mw_metric_t *m, int64_t delta);

  /* --- ABI 1.1: identity and policy (SPEC §4) --- */
  /* Keeps in the client what on_connect needs from `req`: transport, remote
   * address, headers, query, cookies and the token found in ?token=,
   * `Authorization: Bearer` or the `moonwire_token` cookie. Call it before
   * answering or taking the request. */
  void (*client_attach_request)(mw_client_t *c, const mw_http_request_t *req);
  /* 1 if the attached request carried a token. */
  int (*client_has_token)(const mw_client_t *c);
  /* 1 if the policy decides who connects (it defines on_connect). */
  int (*policy_has_connect)(mw_worker_t *w);
  /* Decides whether the client may connect: on_connect with the attached
   * request and `token` (NULL: the attached one), then the connection limits
   * (per user, per tenant). 0: allowed, the identity is kept in the client;
   * MW_EDENIED or MW_ELIMIT: refused, with *code (401, 403, 429, ...) and
   * client_error() telling why. Call once per client, before subscribe or
   * publish (those refuse an unconnected client). */
  int (*client_connect)(mw_client_t *c, const char *token, int *code);
  /* Why the client's last connect/subscribe was refused ("" if it was not),
   * and its code in *code (may be NULL). */
  const char *(*client_error)(const mw_client_t *c, int *code);
  /* The identity on_connect gave (NULL when none). */
  const char *(*client_user_id)(const mw_client_t *c);
  const char *(*client_tenant_id)(const mw_client_t *c);
  /* Like client_free, telling on_disconnect `reason` ("closed", "idle
   * timeout", "slow consumer", ...). */
  void (*client_disconnect)(mw_client_t **c, const char *reason);

  /* --- ABI 1.2: recovery and CORS (SPEC §3, §2) --- */
  /* Subscribes like subscribe (same errors; the callback never fires on an
   * error), then replays every event of `topic` after seq `since` of epoch
   * `epoch` (NULL: whatever the current epoch is) before any live event.
   * `cb` may fire before this returns. */
  int (*subscribe_since)(mw_client_t *c, const char *topic, uint64_t since,
                         const char *epoch, mw_recover_cb cb, void *ud);
  /* The newest seq the client was handed on `topic` (0 if none) and its
   * epoch in *epoch (NULL if unknown): a resumable position. */
  uint64_t (*client_position)(const mw_client_t *c, const char *topic,
                              const char **epoch);
  /* CORS for browser transports: 0 when the request has no Origin or an
   * allowed one (`headers` then holds the Access-Control-* lines to add,
   * possibly empty), MW_EDENIED when its Origin is not allowed. */
  int (*http_cors)(const mw_http_request_t *req, char *headers, size_t len);
  /* Who is subscribed to `topic` on every node: `cb` gets a JSON object
   * {"topic","clients":N,"users":[...],"connections":[{"client_id",
   * "user_id"}]} as text (borrowed), or an error. `c` is the asking client
   * (it must be subscribed to the topic: MW_EDENIED otherwise) or NULL for
   * the server API. MW_ENOTFOUND when the storage keeps no presence. Fires
   * exactly once unless this returns an error. */
  int (*presence)(mw_worker_t *w, mw_client_t *c, const char *topic,
                  void (*cb)(int status, const char *json, void *ud), void *ud);
  /* How the core asks the transport to close this client's connection
   * (POST /api/disconnect): `kick(c, reason, ud)` with the client's ud. The
   * transport closes asynchronously (WebSocket: close 4001). */
  void (*client_set_kick)(mw_client_t *c,
                          void (*kick)(mw_client_t *c, const char *reason,
                                       void *ud));

  void *reserved[3];
} mw_host_v1_t;

#endif
