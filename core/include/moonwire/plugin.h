/* The moonwire plugin ABI, version 1.
 *
 * A plugin is a shared object exporting one data symbol:
 *
 *   const mw_plugin_v1_t mw_plugin_v1 = { MW_PLUGIN_V1_HEADER(kind, name, ver),
 *                                         .init = ..., ... };
 *
 * The loader dlopens every *.so in the plugin dir, demands abi_major ==
 * MW_ABI_MAJOR and abi_minor <= MW_ABI_MINOR, and reads only struct_size
 * bytes. The plugin reaches the core only through the host table
 * (moonwire/host.h). Lifecycle, in order:
 *
 *   init          main thread, once: register routes and metrics.
 *   worker_start  each worker thread, once: per-loop state.
 *   worker_drain  each worker thread, on SIGTERM: say goodbye to peers
 *                 (WebSocket close 1001, end streams). Optional.
 *   worker_stop   each worker thread: close handles, free per-loop state;
 *                 pending async calls complete with MW_ECANCELED.
 *   destroy       main thread, once, after every worker stopped.
 */
#ifndef MOONWIRE_PLUGIN_H
#define MOONWIRE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#include "moonwire/errno.h"
#include "moonwire/event.h"
#include "moonwire/host.h"
#include "moonwire/version.h"

#define MW_PLUGIN_SYMBOL "mw_plugin_v1"

typedef enum mw_plugin_kind {
  MW_PLUGIN_TRANSPORT = 1,
  MW_PLUGIN_STORAGE = 2
} mw_plugin_kind_t;

/* --- storage plugins --------------------------------------------------- */

/* Completion of storage publish: exactly once, also on shutdown
 * (MW_ECANCELED). On success `sealed` is the sealed event (borrowed). */
typedef void (*mw_store_publish_cb)(int status, mw_event_t *sealed, void *ud);

/* Completion of a history read: exactly once. `events` (borrowed, valid during
 * the call) holds up to `limit` sealed events with seq > since, in order.
 * `complete` is 1 when every event after `since` up to `top_seq` is in the
 * list or still follows (no event after `since` was lost), 0 when history no
 * longer holds some of them. */
typedef void (*mw_store_history_cb)(int status, mw_event_t *const *events,
                                    size_t n, uint64_t top_seq,
                                    const char *epoch, int complete, void *ud);

/* One presence entry: a subscriber of a topic. */
typedef struct mw_presence_entry {
  const char *client_id;
  const char *user_id; /* "" for an anonymous identity */
} mw_presence_entry_t;

/* Completion of a presence list: exactly once; entries borrowed. */
typedef void (*mw_store_presence_cb)(int status,
                                     const mw_presence_entry_t *entries,
                                     size_t n, void *ud);

/* Completion of a topics list: exactly once; arrays borrowed. */
typedef void (*mw_store_topics_cb)(int status, const char *const *names,
                                   const uint64_t *subscribers, size_t n,
                                   void *ud);

typedef struct mw_storage_v1 {
  uint32_t struct_size;
  /* Assigns the next seq of the draft's topic, seals it (host->event_seal),
   * appends it to the bounded history and fans it out to every node (on this
   * node through host->fanout, in seq order). MW_EUNAVAIL when the storage is
   * unreachable. `wstate` is this worker's state. */
  int (*publish)(void *wstate, mw_event_t *draft, mw_store_publish_cb cb,
                 void *ud);
  /* Current seq and epoch of a topic. */
  int (*position)(void *wstate, const char *topic, mw_position_cb cb, void *ud);
  /* Events of `topic` with seq > since, at most `limit`. */
  int (*history)(void *wstate, const char *topic, uint64_t since, size_t limit,
                 mw_store_history_cb cb, void *ud);
  /* 1 when the storage is reachable, 0 otherwise (any thread). */
  int (*healthy)(void *wstate);

  /* --- ABI 1.2, optional (NULL: no presence) --- */
  /* Adds or refreshes `client_id` (of `user_id`) under `topic`; the entry
   * expires after `ttl_ms` unless refreshed (a node that dies leaves no
   * ghosts beyond that). */
  int (*presence_add)(void *wstate, const char *topic, const char *client_id,
                      const char *user_id, uint64_t ttl_ms);
  /* Removes an entry (0 also when it was not there). */
  int (*presence_remove)(void *wstate, const char *topic,
                         const char *client_id);
  /* The live entries of a topic, on every node. */
  int (*presence_list)(void *wstate, const char *topic, mw_store_presence_cb cb,
                       void *ud);
  /* Fans a sealed, unsequenced event (seq 0: presence join/leave) out to
   * every node without storing it (on this node through host->fanout). */
  int (*broadcast)(void *wstate, mw_event_t *ev);
  /* --- ABI 1.3, optional --- */
  /* Local interest in a topic changed on this worker: `on` 1 when its first
   * subscriber arrived, 0 when its last one left. A clustered storage
   * listens only for the topics some worker of this node wants. */
  void (*interest)(void *wstate, const char *topic, int on);
  /* Every topic with live presence entries on any node, with its count
   * (GET /api/topics for the cluster). Optional. */
  int (*topics)(void *wstate, mw_store_topics_cb cb, void *ud);
  void *reserved[2];
} mw_storage_v1_t;

/* --- every plugin ------------------------------------------------------ */

typedef struct mw_plugin_v1 {
  uint16_t abi_major;   /* MW_ABI_MAJOR the plugin was built with */
  uint16_t abi_minor;   /* MW_ABI_MINOR the plugin was built with */
  uint32_t struct_size; /* sizeof(mw_plugin_v1_t) the plugin was built with */
  uint32_t kind;        /* mw_plugin_kind_t */
  const char *name;     /* "websocket", "memory", ... unique per kind */
  const char *version;  /* the plugin's own version text */

  /* Main thread. `self` identifies the plugin to http_route. *state is the
   * plugin's global state (may stay NULL). 0 or a negative MW_E*. */
  int (*init)(const mw_host_v1_t *host, mw_plugin_handle_t *self, void **state);
  /* Worker thread. *wstate is handed to route handlers and storage calls. */
  int (*worker_start)(void *state, mw_worker_t *w, void **wstate);
  /* Worker thread, optional: begin a graceful shutdown. */
  void (*worker_drain)(void *wstate);
  /* Worker thread: close this loop's handles and free wstate. */
  void (*worker_stop)(void *wstate);
  /* Main thread: free the global state. */
  void (*destroy)(void *state);

  /* MW_PLUGIN_STORAGE: its operations; NULL otherwise. */
  const mw_storage_v1_t *storage;

  void *reserved[8];
} mw_plugin_v1_t;

/* The first fields of every plugin struct. */
#define MW_PLUGIN_V1_HEADER(kind_, name_, version_)                            \
  .abi_major = MW_ABI_MAJOR, .abi_minor = MW_ABI_MINOR,                        \
  .struct_size = sizeof(mw_plugin_v1_t), .kind = (kind_), .name = (name_),     \
  .version = (version_)

#endif
