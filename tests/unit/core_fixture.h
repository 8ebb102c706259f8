/* A server with one worker and a real libuv loop, for unit tests of core
 * files: no sockets, no threads. Connections are created unconnected and fed
 * bytes directly; what they would write is read back from their queues. */
#ifndef MW_TEST_CORE_FIXTURE_H
#define MW_TEST_CORE_FIXTURE_H

#include <stddef.h>

#include "conn.h"
#include "server.h"

typedef struct core_fixture {
  mw_config_t cfg;
  mw_server_t server;
  mw_worker_t worker;
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
