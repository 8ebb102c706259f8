/* A server with one worker and a real libuv loop, for unit tests of core
 * files: no sockets, no threads. Connections are created unconnected and fed
 * bytes directly; what they would write is read back from their queues. */
#ifndef MW_TEST_CORE_FIXTURE_H
#define MW_TEST_CORE_FIXTURE_H

#include <stddef.h>

#include "conn.h"
#include "server.h"

/* A storage for hub tests: history answers from `history` (sealed events,
 * borrowed), now or when fixture_history_fire() is called. */
typedef struct fixture_storage {
  mw_event_t *history[64];
  size_t nhistory;
  uint64_t top_seq;
  const char *epoch;
  int complete;
  int deferred; /* 1: keep the callback for later */
  mw_store_history_cb cb;
  void *ud;
  uint64_t since;
} fixture_storage_t;

extern fixture_storage_t fixture_store;

/* Answers a deferred history read. */
void fixture_history_fire(void);

typedef struct core_fixture {
  mw_config_t cfg;
  mw_server_t server;
  mw_worker_t worker;
  struct mw_plugin_handle storage;
  void *storage_wstates[1];
  int peers[64]; /* the other ends of fixture_conn socketpairs */
  size_t npeers;
} core_fixture_t;

/* Sets up config (extra flags in argv, NULL-terminated), server, worker. */
void fixture_init(core_fixture_t *f, const char *const *flags);

/* Replaces the worker's policy with one loaded from `lua_source` (NULL: the
 * built-in default). */
void fixture_set_policy(core_fixture_t *f, const char *lua_source);

/* Closes every connection, runs the loop dry, asserts it closes (0). */
void fixture_done(core_fixture_t *f);

/* A new HTTP connection on the fixture's worker, backed by one end of an
 * in-process socketpair (nothing is read from or written to it unless the
 * loop runs). */
mw_conn_t *fixture_conn(core_fixture_t *f);

/* Everything queued on c so far, as one malloc'd NUL-terminated string. */
char *fixture_output(const mw_conn_t *c, size_t *len);

#endif
