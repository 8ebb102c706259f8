/* The server: see server.h.
 *
 * The main thread parses the configuration, loads plugins, binds one
 * listening socket per worker (SO_REUSEPORT when there are several), starts
 * the worker threads and then only waits for signals. Each worker runs its
 * own loop, connections and hub; a published event reaches the other loops
 * through their inboxes (a locked array + uv_async), one reference each. */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "client.h"
#include "conn_limits.h"
#include "conn.h"
#include "demo.h"
#include "event.h"
#include "host.h"
#include "hub.h"
#include "log.h"
#include "metrics.h"
#include "publish.h"

#ifndef MW_DEFAULT_PLUGIN_DIR
#define MW_DEFAULT_PLUGIN_DIR "plugins"
#endif

static mw_server_t *g_server;
static _Atomic unsigned workers_done;

mw_server_t *mw__server(void) {
  return g_server;
}

void mw__server_install(mw_server_t *s) {
  g_server = s;
}

/* --- routes ------------------------------------------------------------- */

int mw__server_route(mw_server_t *s, const char *method, const char *path,
                     mw_route_fn fn, struct mw_plugin_handle *plugin) {
  if (s->routes_frozen || strlen(method) >= sizeof s->routes[0].method ||
      strlen(path) >= sizeof s->routes[0].path)
    return MW_EINVAL;
  for (size_t i = 0; i < s->nroutes; i++)
    if (!strcmp(s->routes[i].method, method) &&
        !strcmp(s->routes[i].path, path))
      return MW_EEXIST;
  s->routes = mw_xrealloc(s->routes, (s->nroutes + 1) * sizeof *s->routes);
  mw_route_t *r = &s->routes[s->nroutes++];
  snprintf(r->method, sizeof r->method, "%s", method);
  snprintf(r->path, sizeof r->path, "%s", path);
  r->fn = fn;
  r->plugin = plugin;
  return 0;
}

const mw_route_t *mw__server_find_route(const char *method, const char *path,
                                        int *path_known) {
  mw_server_t *s = g_server;
  *path_known = 0;
  for (size_t i = 0; i < s->nroutes; i++) {
    if (strcmp(s->routes[i].path, path)) continue;
    *path_known = 1;
    if (!strcmp(s->routes[i].method, method)) return &s->routes[i];
  }
  /* HEAD: the GET route answers; http.c leaves the body out. */
  if (*path_known && !strcmp(method, "HEAD"))
    for (size_t i = 0; i < s->nroutes; i++)
      if (!strcmp(s->routes[i].path, path) &&
          !strcmp(s->routes[i].method, "GET"))
        return &s->routes[i];
  return NULL;
}

void *mw__server_wstate(mw_worker_t *w, struct mw_plugin_handle *plugin) {
  return plugin->wstates[w->id];
}

const mw_storage_v1_t *mw__storage(void) {
  return g_server->storage->def.storage;
}

void *mw__storage_wstate(mw_worker_t *w) {
  return g_server->storage->wstates[w->id];
}

/* --- fan-out across workers --------------------------------------------- */

uint64_t mw__now_ms(void) {
  return uv_hrtime() / 1000000u + 1; /* never 0: 0 means "nothing pending" */
}

void mw__server_fanout(mw_event_t *ev) {
  mw_server_t *s = g_server;
  uint64_t now = 0;
  for (unsigned i = 0; i < s->nworkers; i++) {
    mw_worker_t *w = &s->workers[i];
    uv_mutex_lock(&w->inbox_lock);
    if (w->inbox_cap != SIZE_MAX) { /* SIZE_MAX: the worker has stopped */
      if (w->inbox_len == 0) {      /* the age of the inbox starts now */
        if (!now) now = mw__now_ms();
        w->inbox_first_ms = now;
        if (atomic_load_explicit(&w->lag_since_ms, memory_order_relaxed) == 0)
          atomic_store_explicit(&w->lag_since_ms, now, memory_order_relaxed);
      }
      if (w->inbox_len == w->inbox_cap) {
        w->inbox_cap = w->inbox_cap ? w->inbox_cap * 2 : 64;
        w->inbox = mw_xrealloc(w->inbox, w->inbox_cap * sizeof *w->inbox);
      }
      w->inbox[w->inbox_len++] = mw_event_ref(ev);
      atomic_fetch_add_explicit(&w->inbox_depth, 1, memory_order_relaxed);
      uv_async_send(&w->wakeup);
    }
    uv_mutex_unlock(&w->inbox_lock);
  }
}

int mw__worker_post(mw_worker_t *w, void (*fn)(mw_worker_t *, void *),
                    void *arg) {
  mw_task_t *t = mw_xcalloc(1, sizeof *t);
  t->fn = fn;
  t->arg = arg;
  uv_mutex_lock(&w->inbox_lock);
  if (w->inbox_cap == SIZE_MAX) {
    uv_mutex_unlock(&w->inbox_lock);
    free(t);
    return MW_ECLOSED;
  }
  mw__list_push(&w->tasks, &t->link);
  uv_async_send(&w->wakeup);
  uv_mutex_unlock(&w->inbox_lock);
  return 0;
}

static void run_tasks(mw_worker_t *w) {
  mw_link_t todo;
  mw__list_init(&todo);
  uv_mutex_lock(&w->inbox_lock);
  if (!mw__list_empty(&w->tasks)) {
    todo.next = w->tasks.next;
    todo.prev = w->tasks.prev;
    todo.next->prev = &todo;
    todo.prev->next = &todo;
    mw__list_init(&w->tasks);
  }
  uv_mutex_unlock(&w->inbox_lock);
  while (!mw__list_empty(&todo)) {
    mw_link_t *l = todo.next;
    mw__list_remove(l);
    mw_task_t *t = MW_CONTAINER_OF(l, mw_task_t, link);
    t->fn(w, t->arg);
    free(t);
  }
}

/* --- policy reload ------------------------------------------------------ */

typedef struct reload_op {
  _Atomic unsigned pending;
  uv_mutex_t lock;
  char err[512];
  mw_worker_t *origin;
  void (*done)(const char *err, void *arg);
  void *arg;
} reload_op_t;

static void reload_finish(mw_worker_t *w, void *arg) {
  reload_op_t *op = arg;
  op->done(op->err[0] ? op->err : NULL, op->arg);
  uv_mutex_destroy(&op->lock);
  free(op);
}

static void reload_task(mw_worker_t *w, void *arg) {
  reload_op_t *op = arg;
  char err[512];
  const char *script = mw__config_string(w->server->cfg, "policy", NULL);
  if (w->policy && mw__policy_reload(w->policy, script, err, sizeof err)) {
    uv_mutex_lock(&op->lock);
    if (!op->err[0]) snprintf(op->err, sizeof op->err, "%s", err);
    uv_mutex_unlock(&op->lock);
  }
  if (atomic_fetch_sub(&op->pending, 1) != 1) return;
  if (!op->origin || op->origin == w) {
    reload_finish(w, op);
  } else if (mw__worker_post(op->origin, reload_finish, op)) {
    /* The origin stopped: its request went with its connection. */
    uv_mutex_destroy(&op->lock);
    free(op);
  }
}

void mw__server_reload(mw_worker_t *origin,
                       void (*done)(const char *err, void *arg), void *arg) {
  mw_server_t *s = g_server;
  reload_op_t *op = mw_xcalloc(1, sizeof *op);
  uv_mutex_init(&op->lock);
  op->origin = origin;
  op->done = done;
  op->arg = arg;
  atomic_init(&op->pending, s->nworkers);
  unsigned posted = 0;
  for (unsigned i = 0; i < s->nworkers; i++)
    if (mw__worker_post(&s->workers[i], reload_task, op) == 0) posted++;
  /* Workers that have stopped will not answer. */
  unsigned missing = s->nworkers - posted;
  if (missing && atomic_fetch_sub(&op->pending, missing) == missing) {
    op->done(NULL, op->arg);
    uv_mutex_destroy(&op->lock);
    free(op);
  }
}

/* Admission control's view of a batch just fanned out (n events; the
 * worker's queues held `before` bytes): what one event costs here in queued
 * bytes (nothing is written during the fan-out: writes go out from the
 * prepare handle), and how long the batch waited since its first post. */
static void note_batch(mw_worker_t *w, size_t n, size_t before) {
  size_t added = w->outbound_bytes > before ? w->outbound_bytes - before : 0;
  size_t sample = added / n;
  size_t old = atomic_load_explicit(&w->event_cost, memory_order_relaxed);
  atomic_store_explicit(&w->event_cost, old ? (3 * old + sample) / 4 : sample,
                        memory_order_relaxed);
  atomic_fetch_sub_explicit(&w->inbox_depth, n, memory_order_relaxed);
  uint64_t since = atomic_load_explicit(&w->lag_since_ms, memory_order_relaxed);
  uint64_t now = mw__now_ms();
  atomic_store_explicit(&w->batch_lag_ms,
                        since && now > since ? now - since : 0,
                        memory_order_relaxed);
  atomic_store_explicit(&w->batch_done_ms, now, memory_order_relaxed);
}

static void drain_inbox(mw_worker_t *w) {
  uv_mutex_lock(&w->inbox_lock);
  mw_event_t **batch = w->inbox;
  size_t n = w->inbox_len;
  if (w->inbox_cap != SIZE_MAX) {
    w->inbox = NULL;
    w->inbox_len = w->inbox_cap = 0;
    w->inbox_first_ms = 0; /* lag_since_ms keeps the batch's age */
  }
  uv_mutex_unlock(&w->inbox_lock);
  if (w->inbox_cap == SIZE_MAX) return;
  size_t before = w->outbound_bytes;
  for (size_t i = 0; i < n; i++) {
    if (w->hub) mw__hub_deliver(w->hub, batch[i]);
    mw_event_unref(&batch[i]);
  }
  free(batch);
  if (n) note_batch(w, n, before);
  /* The batch is out (queued on the connections): the age is now that of
   * whatever arrived meanwhile, if anything. */
  uv_mutex_lock(&w->inbox_lock);
  atomic_store_explicit(&w->lag_since_ms, w->inbox_first_ms,
                        memory_order_relaxed);
  uv_mutex_unlock(&w->inbox_lock);
}

/* --- worker lifecycle --------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status) {
  mw_worker_t *w = server->data;
  if (status < 0) {
    mw_log(MW_LOG_WARN, "server", "accept: %s", uv_strerror(status));
    return;
  }
  mw__conn_accept(w, server);
}

static void on_presence_refresh(uv_timer_t *t) {
  mw_worker_t *w = t->data;
  if (w->hub) mw__hub_presence_refresh(w->hub);
}

/* The k-th smallest of a[0..n) (k < n); reorders a. */
static size_t select_kth(size_t *a, size_t n, size_t k) {
  size_t lo = 0, hi = n - 1;
  while (lo < hi) {
    size_t pivot = a[lo + (hi - lo) / 2], i = lo, j = hi;
    while (i <= j) {
      while (a[i] < pivot)
        i++;
      while (a[j] > pivot)
        j--;
      if (i <= j) {
        size_t t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        if (j == 0) break;
        j--;
      }
    }
    if (k <= j)
      hi = j;
    else if (k >= i)
      lo = i;
    else
      return a[k];
  }
  return a[k];
}

/* How far the connections are behind, for admission control: the bytes
 * that connections hold beyond the 90th-percentile queue are a few laggards
 * (they are closed at their own cap), not a sign that the worker cannot
 * serve the rest in time. A walk over the connections, so at most every
 * 10 ms plus 1 ms per 1,000 connections. */
static void backlog_scan(mw_worker_t *w) {
  uint64_t now = uv_now(&w->loop);
  if (now - w->backlog_scan_at < 10 + w->conn_count / 1000) return;
  w->backlog_scan_at = now;
  if (w->outbound_bytes == 0) {
    w->laggard_bytes = 0;
    return;
  }
  if (w->scan_cap < w->conn_count) {
    w->scan_cap = w->conn_count * 2;
    free(w->scan_buf);
    w->scan_buf = mw_xmalloc(w->scan_cap * sizeof *w->scan_buf);
  }
  size_t n = 0, total = 0;
  for (mw_link_t *l = w->conns.next; l != &w->conns && n < w->scan_cap;
       l = l->next) {
    mw_conn_t *c = MW_CONTAINER_OF(l, mw_conn_t, link);
    w->scan_buf[n++] = c->queued;
    total += c->queued;
  }
  size_t p90 = n ? select_kth(w->scan_buf, n, n * 9 / 10) : 0;
  size_t typical = p90 * n;
  w->laggard_bytes = total > typical ? total - typical : 0;
}

size_t mw__worker_backlog(const mw_worker_t *w) {
  return w->outbound_bytes > w->laggard_bytes
             ? w->outbound_bytes - w->laggard_bytes
             : 0;
}

static void on_flush(uv_prepare_t *p) {
  mw_worker_t *w = p->data;
  mw__conn_flush_dirty(w);
  /* Once per loop turn: what the other workers' admission control sees. */
  backlog_scan(w);
  atomic_store_explicit(&w->backlog_bytes, mw__worker_backlog(w),
                        memory_order_relaxed);
}

static void close_listener(mw_worker_t *w) {
  if (!uv_is_closing((uv_handle_t *)&w->listener))
    uv_close((uv_handle_t *)&w->listener, NULL);
}

/* Last step on a worker: every connection is gone. */
static void worker_finish(mw_worker_t *w) {
  mw_server_t *s = w->server;
  for (size_t i = s->plugins.count; i-- > 0;) {
    struct mw_plugin_handle *p = s->plugins.items[i];
    if (p->initialized && p->wstates[w->id] != NULL && p->def.worker_stop)
      p->def.worker_stop(p->wstates[w->id]);
    p->wstates[w->id] = NULL;
  }
  run_tasks(w); /* e.g. a reload in flight: answered before the close */
  /* Close the inbox: later fan-outs and tasks skip this worker. */
  uv_mutex_lock(&w->inbox_lock);
  for (size_t i = 0; i < w->inbox_len; i++)
    mw_event_unref(&w->inbox[i]);
  free(w->inbox);
  w->inbox = NULL;
  w->inbox_len = 0;
  w->inbox_cap = SIZE_MAX;
  /* Nothing pending here any more: no reason to push publishers back. */
  atomic_store_explicit(&w->lag_since_ms, 0, memory_order_relaxed);
  atomic_store_explicit(&w->backlog_bytes, 0, memory_order_relaxed);
  atomic_store_explicit(&w->inbox_depth, 0, memory_order_relaxed);
  atomic_store_explicit(&w->batch_lag_ms, 0, memory_order_relaxed);
  uv_mutex_unlock(&w->inbox_lock);
  mw__hub_free(w->hub);
  w->hub = NULL;
  mw__policy_free(w->policy);
  w->policy = NULL;
  uv_close((uv_handle_t *)&w->wakeup, NULL);
  uv_close((uv_handle_t *)&w->flush, NULL);
  uv_close((uv_handle_t *)&w->drain_timer, NULL);
  uv_close((uv_handle_t *)&w->presence_timer, NULL);
}

static void on_drain_tick(uv_timer_t *t) {
  mw_worker_t *w = t->data;
  if (w->conn_count == 0) {
    uv_timer_stop(t);
    worker_finish(w);
  }
}

static void worker_stop(mw_worker_t *w) {
  if (w->stopping) return;
  w->stopping = 1;
  w->draining = 1;
  close_listener(w);
  mw__conn_close_all(w, 2);
  uv_timer_start(&w->drain_timer, on_drain_tick, 0, 10);
}

static void worker_drain(mw_worker_t *w) {
  if (w->draining) return;
  w->draining = 1;
  close_listener(w);
  mw_server_t *s = w->server;
  for (size_t i = 0; i < s->plugins.count; i++) {
    struct mw_plugin_handle *p = s->plugins.items[i];
    if (p->initialized && p->def.worker_drain && p->wstates[w->id])
      p->def.worker_drain(p->wstates[w->id]);
  }
  mw__conn_close_all(w, 0);
  uv_timer_start(&w->drain_timer, on_drain_tick, 0, 20);
}

static void on_wakeup(uv_async_t *a) {
  mw_worker_t *w = a->data;
  int cmd = atomic_exchange(&w->command, 0);
  drain_inbox(w);
  run_tasks(w);
  if (cmd & MW_WORKER_CMD_STOP)
    worker_stop(w);
  else if (cmd & MW_WORKER_CMD_DRAIN)
    worker_drain(w);
}

static void worker_send(mw_worker_t *w, int cmd) {
  atomic_fetch_or(&w->command, cmd);
  uv_mutex_lock(&w->inbox_lock);
  if (w->inbox_cap != SIZE_MAX) uv_async_send(&w->wakeup);
  uv_mutex_unlock(&w->inbox_lock);
}

static void worker_main(void *arg) {
  mw_worker_t *w = arg;
  mw_server_t *s = w->server;
  int rc = 0;
  uv_loop_init(&w->loop);
  uv_async_init(&w->loop, &w->wakeup, on_wakeup);
  w->wakeup.data = w;
  uv_prepare_init(&w->loop, &w->flush);
  w->flush.data = w;
  uv_prepare_start(&w->flush, on_flush);
  uv_timer_init(&w->loop, &w->drain_timer);
  w->drain_timer.data = w;
  uv_timer_init(&w->loop, &w->presence_timer);
  w->presence_timer.data = w;
  uint64_t refresh =
      (uint64_t)mw__config_int(s->cfg, "limits.idle_timeout", 60) * 500;
  uv_timer_start(&w->presence_timer, on_presence_refresh, refresh, refresh);
  uv_tcp_init(&w->loop, &w->listener);
  w->listener.data = w;
  w->hub = mw__hub_new(w);
  char perr[512];
  mw_policy_limits_t lim = mw__server_policy_limits(s->cfg);
  w->policy = mw__policy_new(mw__config_string(s->cfg, "policy", NULL), &lim,
                             perr, sizeof perr);
  if (!w->policy) {
    mw_log(MW_LOG_ERROR, "policy", "worker %u: %s", w->id, perr);
    rc = MW_EINVAL;
  }
  if (!rc) rc = uv_tcp_open(&w->listener, w->listen_fd);
  if (!rc) rc = uv_listen((uv_stream_t *)&w->listener, 1024, on_connection);
  if (rc)
    mw_log(MW_LOG_ERROR, "server", "worker %u: listen: %s", w->id,
           uv_strerror(rc));
  for (size_t i = 0; !rc && i < s->plugins.count; i++) {
    struct mw_plugin_handle *p = s->plugins.items[i];
    if (!p->initialized || !p->def.worker_start) continue;
    rc = p->def.worker_start(p->state, w, &p->wstates[w->id]);
    if (rc)
      mw_log(MW_LOG_ERROR, "server",
             "worker %u: plugin '%s' failed to start: %s", w->id, p->def.name,
             mw_strerror(rc));
  }
  w->start_status = rc;
  uv_sem_post(&s->ready);
  if (rc) {
    /* Unwind what started: the main thread stops the other workers. */
    w->stopping = 1;
    close_listener(w);
    worker_finish(w);
  }
  uv_run(&w->loop, UV_RUN_DEFAULT);
  int crc = uv_loop_close(&w->loop);
  if (crc)
    mw_log(MW_LOG_WARN, "server", "worker %u: loop not closed: %s", w->id,
           uv_strerror(crc));
  free(w->read_buf);
  w->read_buf = NULL;
  free(w->scan_buf);
  w->scan_buf = NULL;
  workers_done++;
}

/* --- listening sockets -------------------------------------------------- */

static int bind_socket(const char *host, int port, int reuseport, int *out_fd,
                       int *out_port) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (!strcmp(host, "localhost")) host = "127.0.0.1";
  int family = strchr(host, ':') ? AF_INET6 : AF_INET;
  int rc = family == AF_INET6
               ? uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss)
               : uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
  if (rc) return rc;
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (reuseport &&
      setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
    rc = -errno;
    close(fd);
    return rc;
  }
  socklen_t sl = family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                    : sizeof(struct sockaddr_in);
  if (bind(fd, (struct sockaddr *)&ss, sl) < 0) {
    rc = -errno;
    close(fd);
    return rc;
  }
  sl = sizeof ss;
  getsockname(fd, (struct sockaddr *)&ss, &sl);
  *out_port = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                       : ((struct sockaddr_in *)&ss)->sin_port);
  *out_fd = fd;
  return 0;
}

/* --- main thread: signals and drain ------------------------------------- */

static void on_workers_poll(uv_timer_t *t) {
  mw_server_t *s = g_server;
  if (workers_done < s->nworkers) return;
  uv_close((uv_handle_t *)&s->sig_term, NULL);
  uv_close((uv_handle_t *)&s->sig_int, NULL);
  uv_close((uv_handle_t *)&s->sig_hup, NULL);
  uv_close((uv_handle_t *)&s->drain_deadline, NULL);
  uv_close((uv_handle_t *)t, NULL);
}

static uv_timer_t workers_poll;

static void on_drain_deadline(uv_timer_t *t) {
  mw_server_t *s = g_server;
  mw_log(MW_LOG_WARN, "server", "drain timeout: closing what is left");
  for (unsigned i = 0; i < s->nworkers; i++)
    worker_send(&s->workers[i], MW_WORKER_CMD_STOP);
}

static void begin_shutdown(mw_server_t *s, int force) {
  if (s->draining && !force) force = 1; /* a second signal: stop now */
  if (!s->draining) {
    s->draining = 1;
    uv_timer_start(&workers_poll, on_workers_poll, 10, 10);
  }
  if (force) {
    for (unsigned i = 0; i < s->nworkers; i++)
      worker_send(&s->workers[i], MW_WORKER_CMD_STOP);
    return;
  }
  int64_t secs = mw__config_int(s->cfg, "drain_timeout", 10);
  mw_log(MW_LOG_INFO, "server", "draining (up to %lld s)", (long long)secs);
  uv_timer_start(&s->drain_deadline, on_drain_deadline, (uint64_t)secs * 1000,
                 0);
  for (unsigned i = 0; i < s->nworkers; i++)
    worker_send(&s->workers[i], MW_WORKER_CMD_DRAIN);
}

static void on_reloaded(const char *err, void *arg) {
  if (err)
    mw_log(MW_LOG_ERROR, "policy", "reload failed, keeping the old policy: %s",
           err);
  else
    mw_log(MW_LOG_INFO, "policy", "reloaded");
}

mw_policy_limits_t mw__server_policy_limits(const mw_config_t *cfg) {
  mw_policy_limits_t lim;
  lim.budget_ms = (uint64_t)mw__config_int(cfg, "limits.hook_budget_ms", 50);
  lim.memory_bytes = (size_t)mw__config_int(cfg, "limits.lua_memory", 64 << 20);
  return lim;
}

static void on_signal(uv_signal_t *h, int signum) {
  mw_server_t *s = g_server;
  if (signum == SIGHUP) {
    mw_log(MW_LOG_INFO, "policy", "SIGHUP: reloading the policy");
    mw__server_reload(NULL, on_reloaded, NULL);
    return;
  }
  begin_shutdown(s, 0);
}

/* --- plugins ------------------------------------------------------------ */

static const char *plugin_dir(const mw_config_t *cfg) {
  const char *dir = mw__config_string(cfg, "plugin_dir", NULL);
  if (dir) return dir;
  struct stat st;
  if (stat(MW_DEFAULT_PLUGIN_DIR, &st) == 0) return MW_DEFAULT_PLUGIN_DIR;
  return MW_INSTALL_PLUGIN_DIR;
}

/* Inits one plugin. Returns 0, or an exit code: 2 when the plugin refused
 * its configuration (MW_EINVAL: it logged why), 1 otherwise. */
static int plugin_init(struct mw_plugin_handle *p) {
  int rc = p->def.init(mw__host(), p, &p->state);
  if (rc == MW_EINVAL) return 2;
  if (rc) {
    mw_log(MW_LOG_ERROR, "plugins", "plugin '%s' (%s) failed to init: %s",
           p->def.name, p->path, mw_strerror(rc));
    return 1;
  }
  p->initialized = 1;
  mw_log(MW_LOG_INFO, "plugins", "loaded %s plugin '%s' %s",
         p->def.kind == MW_PLUGIN_STORAGE ? "storage" : "transport",
         p->def.name, p->def.version ? p->def.version : "");
  return 0;
}

/* Loads and inits the plugins. Returns 0, or an exit code (1 or 2). */
static int plugins_start(mw_server_t *s) {
  char err[512];
  const char *dir = plugin_dir(s->cfg);
  if (mw__plugin_load_dir(dir, &s->plugins, err, sizeof err)) {
    mw_log(MW_LOG_ERROR, "plugins", "%s", err);
    return 1;
  }
  const char *storage = mw__config_string(s->cfg, "storage", "memory");
  s->storage = mw__plugin_find(&s->plugins, MW_PLUGIN_STORAGE, storage);
  if (!s->storage) {
    fprintf(stderr,
            "moonwire: --storage %s: not available (no storage plugin named "
            "'%s' in %s)\n",
            storage, storage, dir);
    return 2;
  }
  /* The policy compiles before anything starts (a broken script is a
   * configuration error: one line, exit 2). */
  char perr[512];
  mw_policy_limits_t lim = mw__server_policy_limits(s->cfg);
  const char *script = mw__config_string(s->cfg, "policy", NULL);
  mw_policy_t *check = mw__policy_new(script, &lim, perr, sizeof perr);
  if (!check) {
    fprintf(stderr, "moonwire: policy: %s\n", perr);
    return 2;
  }
  mw__policy_free(check);
  for (size_t i = 0; i < s->plugins.count; i++)
    s->plugins.items[i]->wstates =
        mw_xcalloc(s->nworkers, sizeof *s->plugins.items[i]->wstates);
  /* The storage first: a configuration it refuses (e.g. --storage redis
   * without --redis) is a usage error, told in its own one line. */
  int rc = plugin_init(s->storage);
  if (rc) return rc;
  for (size_t i = 0; i < s->plugins.count; i++) {
    struct mw_plugin_handle *p = s->plugins.items[i];
    if (p->def.kind == MW_PLUGIN_STORAGE) continue;
    rc = plugin_init(p);
    if (rc) return rc;
  }
  return 0;
}

static void plugins_stop(mw_server_t *s) {
  for (size_t i = s->plugins.count; i-- > 0;) {
    struct mw_plugin_handle *p = s->plugins.items[i];
    if (p->initialized && p->def.destroy) p->def.destroy(p->state);
    free(p->wstates);
    p->wstates = NULL;
  }
  mw__plugin_list_free(&s->plugins);
}

/* --- run ---------------------------------------------------------------- */

int mw__server_run(mw_config_t *cfg) {
  mw_server_t *s = mw_xcalloc(1, sizeof *s);
  g_server = s;
  s->cfg = cfg;
  s->nworkers = (unsigned)cfg->workers;
  int exit_code = 0;
  signal(SIGPIPE, SIG_IGN);
  unsigned char rnd[4];
  RAND_bytes(rnd, sizeof rnd);
  snprintf(s->node_id, sizeof s->node_id, "%02x%02x%02x%02x", rnd[0], rnd[1],
           rnd[2], rnd[3]);

  mw__conn_metrics_init();
  mw__hub_metrics_init();
  mw__publish_metrics_init();
  mw__publish_admission_init(cfg);
  mw__client_metrics_init();
  mw__api_register(s);
  mw__demo_register(s);
  s->workers = mw_xcalloc(s->nworkers, sizeof *s->workers);
  for (unsigned i = 0; i < s->nworkers; i++)
    s->workers[i].listen_fd = -1;
  exit_code = plugins_start(s);
  if (exit_code) goto done;
  s->routes_frozen = 1;

  int port = cfg->listen_port;
  for (unsigned i = 0; i < s->nworkers; i++) {
    int rc = bind_socket(cfg->listen_host, port, s->nworkers > 1,
                         &s->workers[i].listen_fd, &port);
    if (rc) {
      mw_log(MW_LOG_ERROR, "server", "cannot listen on %s:%d: %s",
             cfg->listen_host, port, uv_strerror(rc));
      exit_code = 1;
      goto done;
    }
  }

  uv_loop_init(&s->main_loop);
  uv_sem_init(&s->ready, 0);
  int started = 0, failed = 0;
  for (unsigned i = 0; i < s->nworkers; i++) {
    mw_worker_t *w = &s->workers[i];
    w->id = i;
    w->server = s;
    w->read_buf = mw_xmalloc(65536);
    mw__list_init(&w->conns);
    mw__list_init(&w->dirty);
    mw__list_init(&w->tasks);
    mw__list_init(&w->clients);
    uv_mutex_init(&w->inbox_lock);
    if (uv_thread_create(&w->thread, worker_main, w)) mw_oom();
    uv_sem_wait(&s->ready);
    started++;
    if (w->start_status) {
      failed = 1;
      break;
    }
  }

  uv_signal_init(&s->main_loop, &s->sig_term);
  uv_signal_init(&s->main_loop, &s->sig_int);
  uv_signal_init(&s->main_loop, &s->sig_hup);
  uv_timer_init(&s->main_loop, &s->drain_deadline);
  uv_timer_init(&s->main_loop, &workers_poll);
  uv_signal_start(&s->sig_term, on_signal, SIGTERM);
  uv_signal_start(&s->sig_int, on_signal, SIGINT);
  uv_signal_start(&s->sig_hup, on_signal, SIGHUP);
  s->nworkers = (unsigned)started; /* only those that ran */
  if (failed) {
    exit_code = 1;
    begin_shutdown(s, 1);
  } else {
    const char *script = mw__config_string(cfg, "policy", NULL);
    mw_log(MW_LOG_INFO, "server",
           "listening on %s:%d (%u worker%s, storage %s, policy %s)",
           cfg->listen_host, port, s->nworkers, s->nworkers > 1 ? "s" : "",
           s->storage->def.name, script ? script : "built-in default");
  }
  uv_run(&s->main_loop, UV_RUN_DEFAULT);
  for (unsigned i = 0; i < s->nworkers; i++) {
    uv_thread_join(&s->workers[i].thread);
    uv_mutex_destroy(&s->workers[i].inbox_lock);
  }
  uv_sem_destroy(&s->ready);
  uv_loop_close(&s->main_loop);
  if (!exit_code) mw_log(MW_LOG_INFO, "server", "stopped");

done:
  for (unsigned i = 0; i < (unsigned)cfg->workers; i++)
    if (s->workers[i].listen_fd >= 0 && !s->workers[i].server)
      close(s->workers[i].listen_fd);
  plugins_stop(s);
  free(s->workers);
  free(s->routes);
  free(s);
  g_server = NULL;
  mw__metrics_free();
  mw__conn_limits_free();
  return exit_code;
}
