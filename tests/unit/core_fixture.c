/* See core_fixture.h. */
#include "core_fixture.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sys/socket.h>
#include <unistd.h>

#include "http.h"
#include "client.h"
#include "hub.h"
#include "log.h"

fixture_storage_t fixture_store;

static void answer_history(void) {
  fixture_storage_t *fs = &fixture_store;
  mw_event_t *out[64];
  size_t n = 0;
  for (size_t i = 0; i < fs->nhistory; i++)
    if (fs->history[i]->seq > fs->since) out[n++] = fs->history[i];
  mw_store_history_cb cb = fs->cb;
  fs->cb = NULL;
  cb(0, out, n, fs->top_seq, fs->epoch, fs->complete, fs->ud);
}

void fixture_history_fire(void) {
  assert_non_null(fixture_store.cb);
  answer_history();
}

static int fx_history(void *ws, const char *topic, uint64_t since, size_t limit,
                      mw_store_history_cb cb, void *ud) {
  fixture_store.cb = cb;
  fixture_store.ud = ud;
  fixture_store.since = since;
  if (!fixture_store.deferred) answer_history();
  return 0;
}

static int fx_healthy(void *ws) {
  return 1;
}

static const mw_storage_v1_t fixture_storage_ops = {
    .struct_size = sizeof(mw_storage_v1_t),
    .history = fx_history,
    .healthy = fx_healthy,
};

void fixture_init(core_fixture_t *f, const char *const *flags) {
  memset(f, 0, sizeof *f);
  char *argv[32] = {"moonwire"};
  int argc = 1;
  for (size_t i = 0; flags && flags[i] && argc < 31; i++)
    argv[argc++] = (char *)flags[i];
  char err[256];
  assert_int_equal(mw__config_load(&f->cfg, argc, argv, err, sizeof err),
                   MW_CONFIG_RUN);
  mw__log_setup(MW_LOG_ERROR, 0);
  f->server.cfg = &f->cfg;
  f->server.nworkers = 1;
  f->server.workers = &f->worker;
  memset(&fixture_store, 0, sizeof fixture_store);
  fixture_store.epoch = "e1";
  fixture_store.complete = 1;
  f->storage.def.storage = &fixture_storage_ops;
  f->storage.wstates = f->storage_wstates;
  f->server.storage = &f->storage;
  snprintf(f->server.node_id, sizeof f->server.node_id, "test");
  mw__server_install(&f->server);
  mw__conn_metrics_init();
  mw__hub_metrics_init();
  mw__client_metrics_init();
  mw_worker_t *w = &f->worker;
  w->server = &f->server;
  assert_int_equal(uv_loop_init(&w->loop), 0);
  w->read_buf = mw_xmalloc(65536);
  mw__list_init(&w->conns);
  mw__list_init(&w->dirty);
  mw__list_init(&w->tasks);
  mw__list_init(&w->clients);
  /* No inbox or task queue in unit tests: posted tasks run at once. */
  assert_int_equal(uv_mutex_init(&w->inbox_lock), 0);
  w->inbox_cap = SIZE_MAX;
  w->hub = mw__hub_new(w);
  fixture_set_policy(f, NULL);
}

void fixture_set_policy(core_fixture_t *f, const char *lua_source) {
  mw_worker_t *w = &f->worker;
  mw__policy_free(w->policy);
  w->policy = NULL;
  const char *path = NULL;
  char tmpl[] = "/tmp/mwpolicyXXXXXX";
  if (lua_source) {
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, lua_source, strlen(lua_source)),
                     (ssize_t)strlen(lua_source));
    close(fd);
    path = tmpl;
  }
  mw_policy_limits_t lim = {50, 64 << 20};
  char err[256];
  w->policy = mw__policy_new(path, &lim, err, sizeof err);
  if (!w->policy) fail_msg("policy: %s", err);
  if (path) unlink(path);
}

void fixture_done(core_fixture_t *f) {
  mw_worker_t *w = &f->worker;
  mw__conn_close_all(w, 2);
  uv_run(&w->loop, UV_RUN_DEFAULT);
  assert_int_equal(w->conn_count, 0);
  mw__hub_free(w->hub);
  mw__policy_free(w->policy);
  w->policy = NULL;
  assert_int_equal(uv_loop_close(&w->loop), 0);
  free(w->read_buf);
  uv_mutex_destroy(&w->inbox_lock);
  free(f->server.routes);
  for (size_t i = 0; i < f->npeers; i++)
    close(f->peers[i]);
  mw__config_free(&f->cfg);
  mw__server_install(NULL);
}

mw_conn_t *fixture_conn(core_fixture_t *f) {
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  assert_true(f->npeers < 64);
  f->peers[f->npeers++] = sv[1];
  mw_conn_t *c = mw__conn_new(&f->worker);
  assert_int_equal(uv_tcp_open(&c->tcp, sv[0]), 0);
  snprintf(c->remote, sizeof c->remote, "127.0.0.1");
  mw__http_start(c);
  return c;
}

char *fixture_output(const mw_conn_t *c, size_t *len) {
  return mw__conn_pending_copy(c, len);
}
