/* The Lua policy engine: one LuaJIT state per worker, the operator's hooks
 * (SPEC §4) called with prepared arguments, sandboxed, with a time budget and
 * a memory cap. Private to the core; everything here runs on the worker's
 * thread that owns the policy.
 *
 * Verdicts (what the script decided) are kept apart from the execution
 * status (whether the script ran): a hook that errors, times out, runs out
 * of memory or returns a wrong type fails closed — deny for connect,
 * subscribe and publish, drop for deliver — and is logged once with
 * script:line and counted in moonwire_policy_failures_total{hook,status}. */
#ifndef MW_POLICY_H
#define MW_POLICY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "moonwire/event.h"

typedef struct mw_policy mw_policy_t;

/* Execution status of one hook call. */
typedef enum mw_policy_status {
  MW_POLICY_OK = 0,
  MW_POLICY_ERROR = 1,    /* the script raised an error */
  MW_POLICY_TIMEOUT = 2,  /* the time budget ran out */
  MW_POLICY_NOMEM = 3,    /* the state's memory cap was reached */
  MW_POLICY_BADRETURN = 4 /* a return value of the wrong type or shape */
} mw_policy_status_t;

/* What the script decided. */
typedef enum mw_policy_verdict {
  MW_VERDICT_ALLOW =
      0, /* connect/subscribe allowed; publish/deliver unchanged */
  MW_VERDICT_DENY = 1,   /* connect/subscribe/publish refused (code, reason) */
  MW_VERDICT_DROP = 2,   /* deliver: this recipient does not get the event */
  MW_VERDICT_CHANGED = 3 /* publish/deliver: a changed event (see out) */
} mw_policy_verdict_t;

typedef struct mw_policy_limits {
  uint64_t budget_ms;  /* wall-clock budget per hook call (default 50) */
  size_t memory_bytes; /* memory cap of the state (default 64 MiB) */
} mw_policy_limits_t;

/* A name/value pair handed to on_connect (headers lower-cased). */
typedef struct mw_policy_pair {
  const char *name;
  const char *value;
} mw_policy_pair_t;

/* The request of on_connect(req). All strings borrowed for the call. */
typedef struct mw_policy_connect_req {
  const char *transport; /* "websocket", "sse", "longpoll" */
  const char *remote_addr;
  const mw_policy_pair_t *headers;
  size_t nheaders;
  const mw_policy_pair_t *query;
  size_t nquery;
  const mw_policy_pair_t *cookies;
  size_t ncookies;
  const char *token; /* from ?token=, Authorization: Bearer, the
                        moonwire_token cookie or a first message; or NULL */
} mw_policy_connect_req_t;

/* The identity on_connect returned, owned by the connection. `ref` is the
 * registry reference of the `conn` table handed to later hooks in this
 * worker's state ({id, transport, user_id, tenant_id, claims}); free the
 * identity with mw__policy_identity_free on the same policy. */
typedef struct mw_policy_identity {
  char *user_id;   /* may be NULL (anonymous) */
  char *tenant_id; /* may be NULL (no tenant: sees public + all events) */
  int all_tenants; /* the script widened tenant isolation explicitly
                      (returned all_tenants = true) */
  int ref;         /* LUA_NOREF when there is no conn table */
  /* Private to the policy engine: what rebuilds the conn table in a state
   * loaded later (mw__policy_reload). A hook call with an identity of an
   * older generation rebuilds its conn table and updates `ref` and
   * `generation` in place (the identity belongs to the connection, on the
   * same thread). */
  char *conn_id;
  char *transport;
  json_t *claims;      /* the claims as returned (NULL: none) */
  unsigned generation; /* of the state that made `ref`; 0: none */
  /* Private: the tenant rules found for tenant_id in the state of
   * `tenant_generation` (a per-connection cache of the lookup). */
  const void *tenant_rules;
  unsigned tenant_generation;
} mw_policy_identity_t;

/* The result of one hook call. */
typedef struct mw_policy_result {
  mw_policy_status_t status;
  mw_policy_verdict_t verdict;
  int code;            /* deny: 401/403/429/... (default 403, connect 401) */
  char reason[160];    /* deny: the script's reason, or what failed */
  int presence;        /* subscribe: the script returned {presence = true} */
  json_t *out;         /* publish/deliver CHANGED: the new event as
                          {"event":..,"data":{..},"trace_id":..}; caller owns */
  const void *out_key; /* deliver CHANGED: identity of the returned Lua table
                          (equal keys within one event = equal results) */
} mw_policy_result_t;

/* The embedded default policy (scripts/default.lua compiled into the binary;
 * defined in a file CMake generates). */
extern const char mw__default_policy_lua[];

/* Loads `script` (a Lua file; NULL: the embedded default) into a new state,
 * plus the per-tenant rule files in `<dir of script>/tenants/<tenant>.lua`.
 * Returns NULL with `err` set (one line, script:line) when it does not load.
 * Main or worker thread. */
mw_policy_t *mw__policy_new(const char *script, const mw_policy_limits_t *lim,
                            char *err, size_t errlen);

/* Loads `script` again into a fresh state and swaps it in on success; on
 * failure keeps the old one and returns MW_EINVAL with `err` set. Identities
 * made by the old state stay valid (their conn tables are rebuilt). */
int mw__policy_reload(mw_policy_t *p, const char *script, char *err,
                      size_t errlen);

void mw__policy_free(mw_policy_t *p);

/* 1 if the script defines that hook. */
int mw__policy_has_connect(const mw_policy_t *p);
int mw__policy_has_subscribe(const mw_policy_t *p);
int mw__policy_has_publish(const mw_policy_t *p);
int mw__policy_has_deliver(const mw_policy_t *p);

/* on_connect(req). On ALLOW fills *id (caller frees with
 * mw__policy_identity_free); `conn_id` names the connection. Without the
 * hook: ALLOW, anonymous. */
void mw__policy_connect(mw_policy_t *p, const mw_policy_connect_req_t *req,
                        const char *conn_id, mw_policy_identity_t *id,
                        mw_policy_result_t *res);

/* on_subscribe(conn, topic). */
void mw__policy_subscribe(mw_policy_t *p, const mw_policy_identity_t *id,
                          const char *topic, mw_policy_result_t *res);

/* on_publish(conn, event): `id` NULL for the server API. `event` is
 * {"topic","event","data","trace_id"} (borrowed). CHANGED puts the new
 * {"event","data","trace_id"} in res->out. */
void mw__policy_publish(mw_policy_t *p, const mw_policy_identity_t *id,
                        const json_t *event, mw_policy_result_t *res);

/* on_deliver(conn, event) for one recipient of a sealed event. The event's
 * Lua table is built once per event and reused for every recipient (a
 * read-only view: writes are caught, see docs/lua.md); a hook that returns
 * it unmodified gives ALLOW (no re-encode). CHANGED results equal to one
 * already made for this event share its out_key, and res->out is then a
 * reference to the same JSON (read-only). Needs no memset of `res`. */
void mw__policy_deliver(mw_policy_t *p, const mw_policy_identity_t *id,
                        const mw_event_t *ev, const json_t *data,
                        mw_policy_result_t *res);

/* Publishes the hook call counts kept per state since the last flush
 * (deliver calls are counted in the state, not one atomic add per call).
 * The hub calls it after each fan-out; any other hook call flushes too. */
void mw__policy_flush(mw_policy_t *p);

/* on_disconnect(conn, reason); errors are logged and counted only. */
void mw__policy_disconnect(mw_policy_t *p, const mw_policy_identity_t *id,
                           const char *reason);

/* Per-tenant rules (from tenants/<tenant>.lua, or the script's global table
 * `tenants = { acme = {...} }`, the file winning): `max_connections`
 * (0 = no limit), `topics` (a list of patterns; none = every topic), and an
 * optional `transform(conn, event)` applied by mw__policy_deliver before
 * on_deliver. */
int64_t mw__policy_tenant_max_connections(const mw_policy_t *p,
                                          const char *tenant);

/* 1 if `tenant` may use `topic` (subscribe and publish), 0 if its patterns
 * exclude it. A NULL tenant or a tenant without rules may use every topic. */
int mw__policy_tenant_topic_allowed(const mw_policy_t *p, const char *tenant,
                                    const char *topic);

/* 1 if `tenant` has rules with a transform function. */
int mw__policy_tenant_has_transform(const mw_policy_t *p, const char *tenant);

/* 1 if `topic` matches `pattern`, where `*` matches any run of characters
 * (also empty) and every other character matches itself. */
int mw__topic_match(const char *pattern, const char *topic);

/* Releases what an identity holds (its conn table ref, strings). */
void mw__policy_identity_free(mw_policy_t *p, mw_policy_identity_t *id);

/* Frees res->out if set. */
void mw__policy_result_clear(mw_policy_result_t *res);

/* ---- shared by policy.c and policy_lib.c only ----
 *
 * The event handed to on_deliver (and its nested objects) are proxies: empty
 * tables whose metatable reads through to a backing table (`__index`) and
 * catches writes (`__newindex`: marks the tree dirty, then writes to the
 * backing table). Arrays stay plain tables (the `#` operator ignores
 * metatables in LuaJIT); the engine compares them after each call. The
 * sandbox's pairs, ipairs, next, rawget, unpack, getmetatable, setmetatable
 * and table.* see through proxies. */
struct lua_State;

/* The event tree being handed out: its id (proxies carry it) and whether a
 * write reached one of its proxies. */
typedef struct mw_lua_tree {
  unsigned id;
  int dirty;
} mw_lua_tree_t;

/* Registers `tree` (lives as long as the state) for the proxies' write
 * catcher. Allocates: protected mode. */
void mw__lua_tree_register(struct lua_State *L, mw_lua_tree_t *tree);

/* Pushes a proxy for the table at `backing` with the tree id `id`.
 * Allocates: protected mode. */
void mw__lua_push_proxy(struct lua_State *L, int backing, unsigned id);

/* Pushes the JSON `v` as a read-only view: objects become proxies (tree id
 * `id`), arrays plain tables as mw__lua_push_json makes them, each appended
 * to the Lua list at `arrays` (when not 0) with its JSON in `jarrays`
 * (grown with mw_xrealloc; *n entries, *cap allocated; owned by the
 * caller). Returns 0, or -1 (nothing pushed) past `maxdepth`. Allocates:
 * protected mode. */
int mw__lua_push_view(struct lua_State *L, const json_t *v, int maxdepth,
                      unsigned id, int arrays, const json_t ***jarrays,
                      size_t *n, size_t *cap);

/* If the value at `idx` is a proxy, pushes its backing table and returns
 * 1; else 0 (nothing pushed). Never allocates or raises. */
int mw__lua_unproxy(struct lua_State *L, int idx);

/* Replaces the sandbox's functions in the environment table at `env`
 * with proxy-aware ones (see above). Allocates: protected mode. */
void mw__lua_sandbox_wrap(struct lua_State *L, int env);

#endif
