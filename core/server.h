/* The server: workers (one libuv loop and thread each, SO_REUSEPORT
 * listeners), plugin lifecycle, signals and drain. */
#ifndef MW_SERVER_H
#define MW_SERVER_H

#include <stdatomic.h>
#include <uv.h>

#include "config.h"
#include "moonwire/plugin.h"
#include "plugin_loader.h"
#include "policy.h"

typedef struct mw_hub mw_hub_t;
typedef struct mw_server mw_server_t;

/* An intrusive doubly linked list node. */
typedef struct mw_link {
  struct mw_link *prev, *next;
} mw_link_t;

struct mw_worker {
  unsigned id;
  mw_server_t *server;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_os_sock_t listen_fd; /* bound by the main thread */
  uv_tcp_t listener;
  uv_async_t wakeup;         /* inbox and commands */
  uv_prepare_t flush;        /* writes queued this iteration go out here */
  uv_timer_t drain_timer;    /* polls for the end of a drain */
  uv_timer_t presence_timer; /* refreshes presence entries */
  uv_mutex_t inbox_lock;
  mw_event_t **inbox; /* events to fan out, guarded by inbox_lock */
  size_t inbox_len, inbox_cap;
  _Atomic int command; /* MW_WORKER_CMD_* bits */
  mw_hub_t *hub;
  mw_policy_t *policy; /* this loop's Lua state */
  mw_link_t tasks;   /* mw_task_t to run on this loop, guarded by inbox_lock */
  mw_link_t conns;   /* every open connection of this loop */
  mw_link_t clients; /* every mw_client_t of this loop */
  mw_link_t dirty;   /* connections with writes to flush */
  size_t conn_count;
  size_t outbound_bytes; /* sum of every connection's queued bytes */
  /* conn.c: one timer for every connection deadline (created with the first
   * connection, closed with the last), and the deadlines by kind, each list
   * in deadline order */
  uv_timer_t *conn_timer;
  uint64_t conn_timer_due; /* loop time it is armed for, or UINT64_MAX */
  mw_link_t conn_idle;     /* HTTP idle deadlines */
  mw_link_t conn_closing;  /* close (flush) deadlines */
  size_t conn_cap;         /* limits.outbound_queue: bytes per connection */
  /* Publish admission control (publish.c), read by any worker without a
   * lock: */
  _Atomic size_t backlog_bytes;  /* outbound_bytes at the last loop turn */
  _Atomic uint64_t lag_since_ms; /* mw__now_ms() when the oldest event not
                                  * yet fanned out here was posted; 0: none */
  _Atomic size_t inbox_depth;    /* events posted here, not yet fanned out */
  _Atomic size_t event_cost;     /* bytes one fanned-out event queues here
                                  * (recent average) */
  _Atomic uint64_t batch_lag_ms; /* post-to-fanned-out time of the last batch */
  _Atomic uint64_t batch_done_ms; /* when that batch was out */
  uint64_t inbox_first_ms;        /* same for the inbox only (inbox_lock) */
  size_t laggard_bytes;     /* bytes queued beyond what the 90th-percentile
                             * connection has, at the last scan */
  uint64_t backlog_scan_at; /* loop time of that scan */
  size_t *scan_buf;         /* scratch for the scan */
  size_t scan_cap;
  int draining;
  int stopping;
  char *read_buf;   /* one read buffer per loop */
  int start_status; /* set by the thread before signalling ready */
};

enum { MW_WORKER_CMD_DRAIN = 1, MW_WORKER_CMD_STOP = 2 };

/* A function to run on a given worker's loop (see mw__worker_post). */
typedef struct mw_task {
  mw_link_t link;
  void (*fn)(mw_worker_t *w, void *arg);
  void *arg;
} mw_task_t;

/* A route: exact method and path. Core routes have plugin == NULL. */
typedef struct mw_route {
  char method[8];
  char path[128];
  mw_route_fn fn;
  struct mw_plugin_handle *plugin;
} mw_route_t;

struct mw_server {
  mw_config_t *cfg;
  unsigned nworkers;
  mw_worker_t *workers;
  mw_plugin_list_t plugins;
  struct mw_plugin_handle *storage; /* the storage in use */
  mw_route_t *routes;
  size_t nroutes;
  int routes_frozen; /* no registration once workers run */
  uv_loop_t main_loop;
  uv_signal_t sig_term, sig_int, sig_hup;
  uv_timer_t drain_deadline;
  uv_sem_t ready;
  int draining;
  char node_id[20]; /* random, names clients */
  int64_t started_ms;
};

/* Runs the server until drained. Returns a process exit code. */
int mw__server_run(mw_config_t *cfg);

/* The running server (read-only after start), or NULL. */
mw_server_t *mw__server(void);

/* Makes `s` the process's server (mw__server_run does it; unit tests too). */
void mw__server_install(mw_server_t *s);

/* Hands a sealed event to every worker's hub (takes one reference per
 * worker). Any thread. Order is preserved per caller. */
void mw__server_fanout(mw_event_t *ev);

/* Milliseconds of a monotonic clock that every thread shares. */
uint64_t mw__now_ms(void);

/* The worker's delivery backlog for admission control: its queued outbound
 * bytes, without what a few laggards hold beyond the 90th-percentile
 * connection (as of the last scan). Worker thread of w. */
size_t mw__worker_backlog(const mw_worker_t *w);

/* Runs fn(w, arg) on w's loop soon (any thread). Returns 0, or MW_ECLOSED
 * if the worker has stopped (fn will not run). */
int mw__worker_post(mw_worker_t *w, void (*fn)(mw_worker_t *, void *),
                    void *arg);

/* Reloads the policy on every worker. `done(err, arg)` runs once on worker
 * `origin` (or, with origin NULL, on whichever worker finishes last) with
 * NULL or the first error text. Any thread. */
void mw__server_reload(mw_worker_t *origin,
                       void (*done)(const char *err, void *arg), void *arg);

/* The policy limits from the configuration. */
mw_policy_limits_t mw__server_policy_limits(const mw_config_t *cfg);

/* The worker-local state of `plugin` on worker `w`. */
void *mw__server_wstate(mw_worker_t *w, struct mw_plugin_handle *plugin);

/* Registers a route (only before the workers start). 0 or MW_EEXIST. */
int mw__server_route(mw_server_t *s, const char *method, const char *path,
                     mw_route_fn fn, struct mw_plugin_handle *plugin);

/* Finds a route: returns it, or NULL with *path_known set if the path exists
 * with another method. */
const mw_route_t *mw__server_find_route(const char *method, const char *path,
                                        int *path_known);

/* Storage helpers for the core (worker thread). */
const mw_storage_v1_t *mw__storage(void);
void *mw__storage_wstate(mw_worker_t *w);

/* List helpers. */
static inline void mw__list_init(mw_link_t *head) {
  head->prev = head->next = head;
}
static inline void mw__list_push(mw_link_t *head, mw_link_t *node) {
  node->prev = head->prev;
  node->next = head;
  head->prev->next = node;
  head->prev = node;
}
static inline void mw__list_remove(mw_link_t *node) {
  node->prev->next = node->next;
  node->next->prev = node->prev;
  node->prev = node->next = node;
}
static inline int mw__list_empty(const mw_link_t *head) {
  return head->next == head;
}

#define MW_CONTAINER_OF(ptr, type, field)                                      \
  ((type *)((char *)(ptr)-offsetof(type, field)))

#endif
