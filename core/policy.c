/* The Lua policy engine; see policy.h.
 *
 * One LuaJIT state per mw_policy_t, created with a counting allocator that
 * refuses growth past the memory cap. The JIT is off for the whole state:
 * compiled code does not run count hooks, and the count hook is what enforces
 * the time budget (every HOOK_COUNT instructions it compares uv_hrtime() with
 * the call's deadline; once past it, it raises at every instruction so a
 * script cannot pcall its way out).
 *
 * Every hook call runs inside a protected C function (the trampoline), so an
 * allocation failure while preparing arguments or reading results unwinds to
 * us instead of panicking; the script itself runs in a nested lua_pcall with
 * a message handler that adds script:line. C resources created inside the
 * trampoline are kept in the call context (or in the state) and freed by the
 * caller, so an unwind never leaks them. Reading results (type checks, deep
 * comparison, Lua -> JSON) does not allocate Lua memory.
 *
 * Reload builds a complete new state; identities remember the generation of
 * the state that made their conn table and get a fresh one on first use in a
 * newer state. */
#include "policy.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <luajit.h>
#include <lualib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>
#include <uv.h>

#include "event.h"
#include "log.h"
#include "metrics.h"
#include "moonwire/errno.h"
#include "policy_lib.h"

/* Measurements only: 1 keeps the JIT on, which breaks the time budget. */
#ifndef MW_POLICY_JIT
#define MW_POLICY_JIT 0
#endif

#define HOOK_COUNT 1000 /* instructions between budget checks */
#define DEFAULT_BUDGET_MS 50
#define DEFAULT_MEMORY ((size_t)64 << 20)
#define LOAD_BUDGET_MIN_MS 1000 /* running a script file at load */
#define CONV_DEPTH 64           /* nesting of event data we convert */
/* Conversions and comparisons use up to 3 slots per level, plus 2 for
 * seeing through a proxy. */
#define STACK_ROOM (5 * CONV_DEPTH + 16)
#define OUT_CACHE_MAX 256 /* deliver results kept per event */
#define OUT_RECENT 4      /* recent distinct results a new one is compared to */
#define LOG_INTERVAL_NS 1000000000ull

enum {
  H_CONNECT,
  H_SUBSCRIBE,
  H_PUBLISH,
  H_DELIVER,
  H_DISCONNECT,
  H_TRANSFORM,
  H_COUNT
};

static const char *const hook_names[H_COUNT] = {"on_connect",    "on_subscribe",
                                                "on_publish",    "on_deliver",
                                                "on_disconnect", "transform"};

static const char *const status_names[] = {"ok", "error", "timeout", "nomem",
                                           "badreturn"};

typedef struct tenant {
  char *id;
  int64_t max_connections;
  int has_topics;
  char **topics;
  size_t ntopics;
  int transform; /* registry ref or LUA_NOREF */
  UT_hash_handle hh;
} tenant_t;

/* A deliver result for the current event: the Lua table it came from and
 * the JSON made of it. Its address is the result's out_key. */
typedef struct outent {
  const void *table;
  json_t *out;             /* NULL once superseded or past the cache cap */
  struct outent *all_next; /* every entry of the event, freed together */
  UT_hash_handle hh;
} outent_t;

typedef struct pstate {
  lua_State *L;
  /* The event view handed to on_deliver: its id and whether a write
   * reached it (set by the proxies' __newindex; see policy.h). */
  mw_lua_tree_t tree;
  size_t used;
  size_t cap;
  int lifted;        /* cap lifted (cleanup collections, close) */
  int refused;       /* the allocator refused since last reset */
  uint64_t deadline; /* uv_hrtime() limit of the running call; 0: none */
  /* A hook call's clock starts at its first budget check (reading the clock
   * costs ~50 ns on a VM, as much as a whole on_deliver call): the check
   * sees a new call_no and sets the deadline from then. */
  uint64_t call_no, checked_no;
  uint64_t budget_ns;
  int timed_out;
  unsigned generation;
  int env, handler, tramp;
  int hooks[5]; /* H_CONNECT .. H_DISCONNECT: registry refs or LUA_NOREF */
  tenant_t *tenants;
  /* on_deliver: the event whose Lua table is cached (a reference is held,
   * so the pointer cannot be reused while cached), and its results. */
  mw_event_t *ev;
  int ev_ref;             /* the view (a proxy); LUA_NOREF: build it first */
  int arrays_ref;         /* Lua list of the view's arrays, or LUA_NOREF */
  const json_t **jarrays; /* ... and their JSON (borrowed from ev) */
  size_t narrays, caparrays;
  outent_t *outs;
  outent_t *outs_all;
  size_t nouts;
  outent_t *recent[OUT_RECENT]; /* the latest distinct results, newest first */
  size_t nrecent;
  uint64_t pending_calls; /* on_deliver calls not yet in the metric */
  /* The bottom of the state's stack holds, between calls, what every
   * on_deliver call needs: SLOT_HANDLER, SLOT_DELIVER (the hook or nil) and
   * SLOT_VIEW (the view of tree `slot_tree`; stale when that is not the
   * current tree). Every entry point leaves the stack as it found it. */
  unsigned slot_tree;
} pstate_t;

enum { SLOT_HANDLER = 1, SLOT_DELIVER = 2, SLOT_VIEW = 3 };

struct mw_policy {
  pstate_t *s;
  mw_policy_limits_t lim;
  unsigned next_generation;
  mw_metric_t *calls[H_COUNT];
  mw_metric_t *fails[H_COUNT][5];
  uint64_t last_log[H_COUNT];
  unsigned suppressed[H_COUNT];
};

/* ---- the state: allocator, budget hook, message handler ---- */

static void *state_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  pstate_t *s = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    s->used -= old;
    return NULL;
  }
  if (nsize > old && !s->lifted && s->used - old + nsize > s->cap) {
    s->refused = 1;
    return NULL;
  }
  void *n = realloc(ptr, nsize);
  if (!n) return NULL;
  s->used = s->used - old + nsize;
  return n;
}

static void budget_hook(lua_State *L, lua_Debug *ar) {
  pstate_t *s;
  lua_getallocf(L, (void **)&s);
  if (!s->deadline) return;
  if (s->checked_no != s->call_no) { /* the call's first check */
    s->checked_no = s->call_no;
    s->deadline = uv_hrtime() + s->budget_ns;
    return;
  }
  if (uv_hrtime() < s->deadline) return;
  s->timed_out = 1;
  /* From now on every instruction raises: a pcall inside the script cannot
   * swallow the timeout for long. Reset after the call. */
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
  if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
    lua_pushfstring(L, "%s:%d: time budget exceeded", ar->short_src,
                    ar->currentline);
  else
    lua_pushliteral(L, "time budget exceeded");
  lua_error(L);
}

/* 1 if `m` already holds a "chunk:line:" position. */
static int has_position(const char *m) {
  for (const char *c = strchr(m, ':'); c; c = strchr(c + 1, ':')) {
    const char *d = c + 1;
    if (*d < '0' || *d > '9') continue;
    while (*d >= '0' && *d <= '9')
      d++;
    if (*d == ':') return 1;
  }
  return 0;
}

/* The message handler: a one-line "script:line: message", no traceback. */
static int msg_handler(lua_State *L) {
  const char *m;
  if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER)
    m = lua_tostring(L, 1);
  else
    m = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  if (has_position(m)) return 1;
  lua_Debug ar;
  for (int level = 1; lua_getstack(L, level, &ar); level++) {
    if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
      lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, m);
      return 1;
    }
  }
  return 1;
}

static int lock_newindex(lua_State *L) {
  const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "?";
  return luaL_error(L, "assignment to undeclared global '%s'", k);
}

static int state_panic(lua_State *L) {
  const char *m = lua_tostring(L, -1);
  mw_log(MW_LOG_ERROR, "policy", "unprotected Lua error: %s",
         m ? m : "(not a string)");
  abort();
}

static void tenant_free(pstate_t *s, tenant_t *t) {
  if (s && s->L && t->transform != LUA_NOREF)
    luaL_unref(s->L, LUA_REGISTRYINDEX, t->transform);
  for (size_t i = 0; i < t->ntopics; i++)
    free(t->topics[i]);
  free(t->topics);
  free(t->id);
  free(t);
}

static void outs_clear(pstate_t *s) {
  HASH_CLEAR(hh, s->outs);
  for (outent_t *e = s->outs_all, *next; e; e = next) {
    next = e->all_next;
    json_decref(e->out);
    free(e);
  }
  s->outs_all = NULL;
  s->nouts = 0;
}

/* Forgets the event view; the next call builds a fresh one. */
static void view_drop(pstate_t *s) {
  if (s->ev_ref != LUA_NOREF) luaL_unref(s->L, LUA_REGISTRYINDEX, s->ev_ref);
  if (s->arrays_ref != LUA_NOREF)
    luaL_unref(s->L, LUA_REGISTRYINDEX, s->arrays_ref);
  s->ev_ref = s->arrays_ref = LUA_NOREF;
  s->narrays = 0;
  s->tree.dirty = 0;
  s->slot_tree = 0;
}

/* Forgets the cached deliver event (its view and results). */
static void event_cache_drop(pstate_t *s) {
  view_drop(s);
  mw_event_unref(&s->ev);
  outs_clear(s);
  s->nrecent = 0;
}

static void state_free(pstate_t *s) {
  if (!s) return;
  tenant_t *t, *tmp;
  HASH_ITER(hh, s->tenants, t, tmp) {
    HASH_DEL(s->tenants, t);
    tenant_free(NULL, t);
  }
  outs_clear(s);
  mw_event_unref(&s->ev);
  if (s->L) {
    s->lifted = 1;
    lua_close(s->L);
  }
  free(s->jarrays);
  free(s);
}

/* ---- loading ---- */

/* Pushes t[key] without metamethods (a script's __index never runs outside
 * a budgeted call). */
static int rawfield(lua_State *L, int t, const char *key) {
  lua_pushstring(L, key);
  lua_rawget(L, t);
  return lua_type(L, -1);
}

typedef struct load {
  pstate_t *s;
  const char *script;
  uint64_t budget_ns;
  char *err;
  size_t errlen;
  int ok;
  struct dirent **names; /* tenants/ listing, freed by the caller */
  int nnames;
  char *buf; /* a tenant file being read, freed by the caller */
} load_t;

static void load_err(load_t *lc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void load_err(load_t *lc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(lc->err, lc->errlen, fmt, ap);
  va_end(ap);
}

/* Runs the chunk on top of the stack in the sandbox with the load budget;
 * 1 with `nres` results left in its place, or 0 with lc->err set. */
static int run_chunk(lua_State *L, load_t *lc, const char *name, int nres) {
  pstate_t *s = lc->s;
  int fn = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->env);
  lua_setfenv(L, fn);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->handler);
  lua_insert(L, fn);
  s->timed_out = 0;
  s->refused = 0;
  s->checked_no = ++s->call_no; /* measured from now */
  s->deadline = uv_hrtime() + lc->budget_ns;
  int rc = lua_pcall(L, 0, nres, fn);
  s->deadline = 0;
  if (s->timed_out) lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_COUNT);
  if (rc) {
    const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    if (rc == LUA_ERRMEM || (s->refused && !s->timed_out))
      load_err(lc, "%s: not enough memory (cap %zu bytes)", name, s->cap);
    else
      load_err(lc, "%s", m);
    lua_settop(L, fn - 1);
    return 0;
  }
  lua_remove(L, fn);
  return 1;
}

/* Validates the rules table at `idx` and stores them as tenant `id` (a
 * previous entry is replaced). `where` names the source for errors. */
static int tenant_load(lua_State *L, load_t *lc, const char *id, int idx,
                       const char *where) {
  pstate_t *s = lc->s;
  if (lua_type(L, idx) != LUA_TTABLE) {
    load_err(lc, "%s: rules must be a table (got %s)", where,
             luaL_typename(L, idx));
    return 0;
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    if (!k || (strcmp(k, "max_connections") && strcmp(k, "topics") &&
               strcmp(k, "transform"))) {
      load_err(lc,
               "%s: unknown key '%s' (expected max_connections, topics, "
               "transform)",
               where, k ? k : luaL_typename(L, -2));
      return 0;
    }
    lua_pop(L, 1);
  }
  tenant_t *old;
  HASH_FIND_STR(s->tenants, id, old);
  if (old) {
    HASH_DEL(s->tenants, old);
    tenant_free(s, old);
  }
  /* Owned by the state from here, so an unwind frees it. */
  tenant_t *t = mw_xcalloc(1, sizeof *t);
  t->id = mw_xstrdup(id);
  t->transform = LUA_NOREF;
  HASH_ADD_KEYPTR(hh, s->tenants, t->id, strlen(t->id), t);

  rawfield(L, idx, "max_connections");
  if (!lua_isnil(L, -1)) {
    double v = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
    if (v < 0 || v != (double)(int64_t)v) {
      load_err(lc, "%s: max_connections must be an integer >= 0", where);
      return 0;
    }
    t->max_connections = (int64_t)v;
  }
  lua_pop(L, 1);

  rawfield(L, idx, "topics");
  if (!lua_isnil(L, -1)) {
    int tp = lua_gettop(L);
    size_t n = lua_type(L, tp) == LUA_TTABLE ? lua_objlen(L, tp) : 0;
    size_t count = 0;
    int ok = lua_type(L, tp) == LUA_TTABLE;
    if (ok) {
      lua_pushnil(L);
      while (lua_next(L, tp)) {
        count++;
        lua_pop(L, 1);
      }
      ok = count == n;
    }
    if (ok) {
      t->has_topics = 1;
      t->topics = mw_xcalloc(n ? n : 1, sizeof *t->topics);
      for (size_t i = 1; i <= n && ok; i++) {
        lua_rawgeti(L, tp, (int)i);
        if (lua_type(L, -1) == LUA_TSTRING)
          t->topics[t->ntopics++] = mw_xstrdup(lua_tostring(L, -1));
        else
          ok = 0;
        lua_pop(L, 1);
      }
    }
    if (!ok) {
      load_err(lc, "%s: topics must be a list of pattern strings", where);
      return 0;
    }
  }
  lua_pop(L, 1);

  rawfield(L, idx, "transform");
  if (lua_type(L, -1) == LUA_TFUNCTION) {
    t->transform = luaL_ref(L, LUA_REGISTRYINDEX);
  } else if (!lua_isnil(L, -1)) {
    load_err(lc, "%s: transform must be a function", where);
    return 0;
  } else {
    lua_pop(L, 1);
  }
  return 1;
}

static int lua_file_filter(const struct dirent *d) {
  size_t n = strlen(d->d_name);
  return d->d_name[0] != '.' && n > 4 && strcmp(d->d_name + n - 4, ".lua") == 0;
}

/* Reads a whole file into lc->buf; 0 with lc->err set on failure. */
static int read_file(load_t *lc, const char *path, const char *where,
                     size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    load_err(lc, "%s: cannot open: %s", where, strerror(errno));
    return 0;
  }
  size_t cap = 4096, n = 0;
  lc->buf = mw_xmalloc(cap);
  for (;;) {
    n += fread(lc->buf + n, 1, cap - n, f);
    if (n < cap) break;
    cap *= 2;
    lc->buf = mw_xrealloc(lc->buf, cap);
  }
  int bad = ferror(f);
  fclose(f);
  if (bad) {
    load_err(lc, "%s: read error", where);
    return 0;
  }
  *len = n;
  return 1;
}

static int load_tenant_files(lua_State *L, load_t *lc) {
  const char *slash = strrchr(lc->script, '/');
  size_t dl = slash ? (size_t)(slash - lc->script) : 1;
  char dir[4096];
  if (dl + sizeof "/tenants" >= sizeof dir) return 1;
  memcpy(dir, slash ? lc->script : ".", dl);
  strcpy(dir + dl, "/tenants");
  lc->nnames = scandir(dir, &lc->names, lua_file_filter, alphasort);
  if (lc->nnames < 0) {
    lc->names = NULL;
    lc->nnames = 0;
    if (errno == ENOENT || errno == ENOTDIR) return 1;
    load_err(lc, "tenants/: %s", strerror(errno));
    return 0;
  }
  for (int i = 0; i < lc->nnames; i++) {
    const char *file = lc->names[i]->d_name;
    char path[4096 + 512], where[300], chunk[310], id[256];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    snprintf(where, sizeof where, "tenants/%s", file);
    snprintf(chunk, sizeof chunk, "@tenants/%s", file);
    size_t idl = strlen(file) - 4;
    if (idl >= sizeof id) idl = sizeof id - 1;
    memcpy(id, file, idl);
    id[idl] = '\0';
    size_t len;
    if (!read_file(lc, path, where, &len)) return 0;
    int rc = luaL_loadbuffer(L, lc->buf, len, chunk);
    free(lc->buf);
    lc->buf = NULL;
    if (rc) {
      load_err(lc, "%s", lua_tostring(L, -1));
      return 0;
    }
    if (!run_chunk(L, lc, where, 1)) return 0;
    if (!tenant_load(L, lc, id, lua_gettop(L), where)) return 0;
    lua_pop(L, 1);
  }
  return 1;
}

static void copy_table(lua_State *L, int from, int to, const char *skip) {
  lua_pushnil(L);
  while (lua_next(L, from)) {
    if (skip && lua_type(L, -2) == LUA_TSTRING &&
        strcmp(lua_tostring(L, -2), skip) == 0) {
      lua_pop(L, 1);
      continue;
    }
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, to);
  }
}

static int open_lib(lua_State *L, lua_CFunction f, const char *name) {
  lua_pushcfunction(L, f);
  lua_pushstring(L, name);
  lua_call(L, 1, 0);
  return 0;
}

/* Builds the sandbox environment, leaves nothing on the stack. */
static void build_env(lua_State *L, pstate_t *s) {
  static const char *const base[] = {
      "assert",       "error",  "ipairs",   "next",     "pairs",
      "pcall",        "select", "tonumber", "tostring", "type",
      "unpack",       "xpcall", "rawequal", "rawget",   "setmetatable",
      "getmetatable", NULL};
  lua_newtable(L);
  int env = lua_gettop(L);
  for (int i = 0; base[i]; i++) {
    lua_getglobal(L, base[i]);
    lua_setfield(L, env, base[i]);
  }
  /* string without dump; strings' own metatable points at the copy. */
  lua_getglobal(L, "string");
  lua_newtable(L);
  copy_table(L, lua_gettop(L) - 1, lua_gettop(L), "dump");
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 2);
  lua_setfield(L, env, "string");
  lua_pop(L, 1);
  static const char *const libs[] = {"table", "math", NULL};
  for (int i = 0; libs[i]; i++) {
    lua_getglobal(L, libs[i]);
    lua_newtable(L);
    copy_table(L, lua_gettop(L) - 1, lua_gettop(L), NULL);
    lua_setfield(L, env, libs[i]);
    lua_pop(L, 1);
  }
  lua_getglobal(L, "os");
  lua_createtable(L, 0, 4);
  /* os.getenv lets scripts read secrets (JWT keys) from the environment. */
  static const char *const os_fns[] = {"time", "clock", "date", "getenv", NULL};
  for (int i = 0; os_fns[i]; i++) {
    lua_getfield(L, -2, os_fns[i]);
    lua_setfield(L, -2, os_fns[i]);
  }
  lua_setfield(L, env, "os");
  lua_pop(L, 1);
  mw__policy_lib_push(L);
  lua_setfield(L, env, "moonwire");
  mw__lua_tree_register(L, &s->tree);
  mw__lua_sandbox_wrap(L, env);
  s->env = luaL_ref(L, LUA_REGISTRYINDEX);
}

static int tramp(lua_State *L);

static int load_body(lua_State *L) {
  load_t *lc = lua_touserdata(L, 1);
  pstate_t *s = lc->s;
  lua_settop(L, 0);
  open_lib(L, luaopen_base, "");
  open_lib(L, luaopen_string, LUA_STRLIBNAME);
  open_lib(L, luaopen_table, LUA_TABLIBNAME);
  open_lib(L, luaopen_math, LUA_MATHLIBNAME);
  open_lib(L, luaopen_os, LUA_OSLIBNAME);
  open_lib(L, luaopen_jit, LUA_JITLIBNAME);
#if !MW_POLICY_JIT
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
#endif
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_COUNT);
  build_env(L, s);
  lua_pushcfunction(L, msg_handler);
  s->handler = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushcfunction(L, tramp);
  s->tramp = luaL_ref(L, LUA_REGISTRYINDEX);

  const char *name = lc->script ? lc->script : "default.lua";
  int rc = lc->script ? luaL_loadfile(L, lc->script)
                      : luaL_loadbuffer(L, mw__default_policy_lua,
                                        strlen(mw__default_policy_lua),
                                        "=default.lua");
  if (rc) {
    load_err(lc, "%s",
             lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                            : "cannot load");
    return 0;
  }
  if (!run_chunk(L, lc, name, 0)) return 0;

  lua_rawgeti(L, LUA_REGISTRYINDEX, s->env);
  int env = lua_gettop(L);
  for (int h = 0; h <= H_DISCONNECT; h++) {
    rawfield(L, env, hook_names[h]);
    if (lua_type(L, -1) == LUA_TFUNCTION) {
      s->hooks[h] = luaL_ref(L, LUA_REGISTRYINDEX);
    } else if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
    } else {
      load_err(lc, "%s: %s must be a function (got %s)", name, hook_names[h],
               luaL_typename(L, -1));
      return 0;
    }
  }
  /* From now on, assigning an undeclared global raises. */
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, lock_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_setmetatable(L, env);

  rawfield(L, env, "tenants");
  if (lua_type(L, -1) == LUA_TTABLE) {
    int tt = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, tt)) {
      if (lua_type(L, -2) != LUA_TSTRING) {
        load_err(lc, "%s: tenants: keys must be tenant ids (strings)", name);
        return 0;
      }
      char where[300];
      snprintf(where, sizeof where, "%s: tenants.%s", name,
               lua_tostring(L, -2));
      if (!tenant_load(L, lc, lua_tostring(L, -2), lua_gettop(L), where))
        return 0;
      lua_pop(L, 1);
    }
  } else if (!lua_isnil(L, -1)) {
    load_err(lc, "%s: tenants must be a table (got %s)", name,
             luaL_typename(L, -1));
    return 0;
  }
  lua_pop(L, 1);
  if (lc->script && !load_tenant_files(L, lc)) return 0;
  lc->ok = 1;
  return 0;
}

static pstate_t *state_new(const char *script, const mw_policy_limits_t *lim,
                           unsigned generation, char *err, size_t errlen) {
  pstate_t *s = mw_xcalloc(1, sizeof *s);
  s->cap = lim->memory_bytes;
  s->budget_ns = lim->budget_ms * 1000000u;
  s->generation = generation;
  s->env = s->handler = s->tramp = s->ev_ref = s->arrays_ref = LUA_NOREF;
  for (int h = 0; h <= H_DISCONNECT; h++)
    s->hooks[h] = LUA_NOREF;
  s->L = lua_newstate(state_alloc, s);
  if (!s->L) {
    snprintf(err, errlen, "cannot create a Lua state");
    free(s);
    return NULL;
  }
  lua_atpanic(s->L, state_panic);
  uint64_t ms =
      lim->budget_ms > LOAD_BUDGET_MIN_MS ? lim->budget_ms : LOAD_BUDGET_MIN_MS;
  load_t lc = {.s = s,
               .script = script,
               .budget_ns = ms * 1000000u,
               .err = err,
               .errlen = errlen};
  if (errlen) err[0] = '\0';
  int rc = lua_cpcall(s->L, load_body, &lc);
  if (lc.names) {
    for (int i = 0; i < lc.nnames; i++)
      free(lc.names[i]);
    free(lc.names);
  }
  free(lc.buf);
  if (rc || !lc.ok) {
    if (rc == LUA_ERRMEM || (rc && s->refused))
      snprintf(err, errlen, "%s: not enough memory (cap %zu bytes)",
               script ? script : "default.lua", s->cap);
    else if (rc)
      snprintf(err, errlen, "%s",
               lua_type(s->L, -1) == LUA_TSTRING ? lua_tostring(s->L, -1)
                                                 : "cannot load the script");
    state_free(s);
    return NULL;
  }
  lua_settop(s->L, 0);
  /* The fixed slots (the stack has room for them: no allocation). */
  lua_rawgeti(s->L, LUA_REGISTRYINDEX, s->handler);
  if (s->hooks[H_DELIVER] != LUA_NOREF)
    lua_rawgeti(s->L, LUA_REGISTRYINDEX, s->hooks[H_DELIVER]);
  else
    lua_pushnil(s->L);
  lua_pushnil(s->L);
  s->lifted = 1;
  lua_gc(s->L, LUA_GCCOLLECT, 0);
  s->lifted = 0;
  return s;
}

/* ---- the policy object ---- */

static void register_metrics(mw_policy_t *p) {
  for (int h = 0; h < H_COUNT; h++) {
    char labels[96];
    snprintf(labels, sizeof labels, "hook=\"%s\"", hook_names[h]);
    p->calls[h] = mw__metric(MW_METRIC_COUNTER, "moonwire_policy_calls_total",
                             "Lua policy hook calls", labels);
    for (int st = 1; st <= MW_POLICY_BADRETURN; st++) {
      snprintf(labels, sizeof labels, "hook=\"%s\",status=\"%s\"",
               hook_names[h], status_names[st]);
      p->fails[h][st] = mw__metric(
          MW_METRIC_COUNTER, "moonwire_policy_failures_total",
          "Lua policy hook calls that failed (denied or dropped)", labels);
    }
  }
}

/* Creates a policy from `script` (NULL: the embedded default). */
mw_policy_t *mw__policy_new(const char *script, const mw_policy_limits_t *lim,
                            char *err, size_t errlen) {
  mw_policy_t *p = mw_xcalloc(1, sizeof *p);
  p->lim.budget_ms = lim && lim->budget_ms ? lim->budget_ms : DEFAULT_BUDGET_MS;
  p->lim.memory_bytes =
      lim && lim->memory_bytes ? lim->memory_bytes : DEFAULT_MEMORY;
  p->next_generation = 1;
  p->s = state_new(script, &p->lim, p->next_generation++, err, errlen);
  if (!p->s) {
    free(p);
    return NULL;
  }
  register_metrics(p);
  mw_log(MW_LOG_DEBUG, "policy", "loaded %s (%u tenant rule sets)",
         script ? script : "the default policy", HASH_COUNT(p->s->tenants));
  return p;
}

/* Loads `script` into a new state and swaps it in on success. */
int mw__policy_reload(mw_policy_t *p, const char *script, char *err,
                      size_t errlen) {
  pstate_t *s = state_new(script, &p->lim, p->next_generation, err, errlen);
  if (!s) {
    mw_log(MW_LOG_DEBUG, "policy", "reload failed, keeping the old script: %s",
           err);
    return MW_EINVAL;
  }
  p->next_generation++;
  mw__policy_flush(p);
  state_free(p->s);
  p->s = s;
  mw_log(MW_LOG_DEBUG, "policy", "reloaded %s (%u tenant rule sets)",
         script ? script : "the default policy", HASH_COUNT(s->tenants));
  return 0;
}

/* Frees the policy and its state. */
void mw__policy_free(mw_policy_t *p) {
  if (!p) return;
  mw__policy_flush(p);
  state_free(p->s);
  free(p);
}

/* 1 if the script defines on_connect. */
int mw__policy_has_connect(const mw_policy_t *p) {
  return p->s->hooks[H_CONNECT] != LUA_NOREF;
}

/* 1 if the script defines on_subscribe. */
int mw__policy_has_subscribe(const mw_policy_t *p) {
  return p->s->hooks[H_SUBSCRIBE] != LUA_NOREF;
}

/* 1 if the script defines on_publish. */
int mw__policy_has_publish(const mw_policy_t *p) {
  return p->s->hooks[H_PUBLISH] != LUA_NOREF;
}

/* 1 if the script defines on_deliver. */
int mw__policy_has_deliver(const mw_policy_t *p) {
  return p->s->hooks[H_DELIVER] != LUA_NOREF;
}

/* ---- one hook call ---- */

typedef struct call call_t;
typedef void (*body_fn)(lua_State *L, call_t *c);

struct call {
  mw_policy_t *p;
  pstate_t *s;
  body_fn body;
  int hook; /* the hook being prepared or called */
  mw_policy_verdict_t fail_verdict;
  int fail_code;
  mw_policy_result_t *res;
  int need_gc;
  /* inputs */
  const mw_policy_connect_req_t *req;
  const char *conn_id;
  const mw_policy_identity_t *id;
  const char *topic;
  const json_t *event;
  const mw_event_t *ev;
  const json_t *data;
  const char *reason;
  /* on_connect: the identity being made (freed by the caller on failure) */
  mw_policy_identity_t nid;
  int made;
  /* on_deliver: the event view must be rebuilt after this call */
  int dirty;
};

static void res_init(mw_policy_result_t *r) {
  r->status = MW_POLICY_OK;
  r->verdict = MW_VERDICT_ALLOW;
  r->code = 0;
  r->reason[0] = '\0';
  r->presence = 0;
  r->out = NULL;
  r->out_key = NULL;
}

/* Starts a hook call's time budget (armed; the clock starts at the first
 * check, see budget_hook). */
static void budget_start(mw_policy_t *p, pstate_t *s) {
  (void)p;
  s->timed_out = 0;
  s->refused = 0;
  s->call_no++;
  s->deadline = UINT64_MAX;
}

/* Publishes the state's pending call count. */
static void calls_flush(mw_policy_t *p) {
  if (p->s && p->s->pending_calls) {
    mw__metric_add(p->calls[H_DELIVER], (int64_t)p->s->pending_calls);
    p->s->pending_calls = 0;
  }
}

/* Records a failure of hook `hook` in the result, counts and logs it (at
 * most one line per hook per second, with the number suppressed). */
static void fail(call_t *c, int hook, mw_policy_status_t st, const char *fmt,
                 ...) __attribute__((format(printf, 4, 5)));
static void fail(call_t *c, int hook, mw_policy_status_t st, const char *fmt,
                 ...) {
  mw_policy_result_t *r = c->res;
  mw__policy_result_clear(r);
  r->status = st;
  r->verdict = c->fail_verdict;
  r->code = c->fail_code;
  r->presence = 0;
  r->out_key = NULL;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->reason, sizeof r->reason, fmt, ap);
  va_end(ap);
  mw__metric_add(c->p->fails[hook][st], 1);
  uint64_t now = uv_hrtime();
  if (c->p->last_log[hook] && now - c->p->last_log[hook] < LOG_INTERVAL_NS) {
    c->p->suppressed[hook]++;
    return;
  }
  if (c->p->suppressed[hook])
    mw_log(MW_LOG_WARN, "policy",
           "%s failed (%s): %s (%u similar failures "
           "not logged)",
           hook_names[hook], status_names[st], r->reason,
           c->p->suppressed[hook]);
  else
    mw_log(MW_LOG_WARN, "policy", "%s failed (%s): %s", hook_names[hook],
           status_names[st], r->reason);
  c->p->last_log[hook] = now;
  c->p->suppressed[hook] = 0;
}

/* The protected trampoline: (call, args...); the body sees the args at
 * 1.. (none for most bodies). */
static int tramp(lua_State *L) {
  call_t *c = lua_touserdata(L, 1);
  lua_remove(L, 1);
  luaL_checkstack(L, STACK_ROOM, "policy");
  c->body(L, c);
  return 0;
}

/* Runs c->body in protected mode with the `nargs` values on top of the
 * stack as its arguments (popped). */
static void run_n(call_t *c, int nargs) {
  pstate_t *s = c->s;
  lua_State *L = s->L;
  int top = lua_gettop(L) - nargs;
  s->refused = 0;
  calls_flush(c->p);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->tramp);
  lua_insert(L, top + 1);
  lua_pushlightuserdata(L, c);
  lua_insert(L, top + 2);
  int rc = lua_pcall(L, nargs + 1, 0, 0);
  if (rc) {
    /* Our own preparation or reading failed (out of memory, in practice). */
    int nomem = rc == LUA_ERRMEM || s->refused;
    fail(c, c->hook, nomem ? MW_POLICY_NOMEM : MW_POLICY_ERROR, "%s: %s",
         hook_names[c->hook],
         nomem                            ? "not enough memory"
         : lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                          : "error");
    c->need_gc = 1;
  }
  lua_settop(L, top);
  if (c->need_gc || s->refused) {
    s->lifted = 1;
    lua_gc(L, LUA_GCCOLLECT, 0);
    s->lifted = 0;
  }
}

/* Runs c->body in protected mode. */
static void run(call_t *c) {
  run_n(c, 0);
}

static void call_failed(lua_State *L, call_t *c, int hook, int rc);

/* Calls the function below its `nargs` arguments on top of the stack with
 * the time budget. Returns the index of the first result (results up to the
 * top), or 0 after recording the failure. */
static int script_call(lua_State *L, call_t *c, int hook, int nargs) {
  pstate_t *s = c->s;
  int fn = lua_gettop(L) - nargs;
  c->hook = hook;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->handler);
  lua_insert(L, fn);
  mw__metric_add(c->p->calls[hook], 1);
  budget_start(c->p, s);
  int rc = lua_pcall(L, nargs, LUA_MULTRET, fn);
  s->deadline = 0;
  if (s->timed_out) lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_COUNT);
  if (rc == 0) {
    lua_remove(L, fn);
    luaL_checkstack(L, STACK_ROOM, "policy");
    return fn;
  }
  call_failed(L, c, hook, rc);
  lua_settop(L, fn - 1);
  return 0;
}

/* Records why a script call failed (its error message on top). */
static void call_failed(lua_State *L, call_t *c, int hook, int rc) {
  pstate_t *s = c->s;
  const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
  if (s->timed_out) {
    fail(c, hook, MW_POLICY_TIMEOUT, "%s (%llu ms)", m,
         (unsigned long long)c->p->lim.budget_ms);
  } else if (rc == LUA_ERRMEM || s->refused) {
    c->need_gc = 1;
    fail(c, hook, MW_POLICY_NOMEM, "%s: not enough memory (cap %zu bytes)",
         hook_names[hook], s->cap);
  } else {
    fail(c, hook, MW_POLICY_ERROR, "%s", m);
  }
}

#define BADRETURN(c, hook, ...) fail(c, hook, MW_POLICY_BADRETURN, __VA_ARGS__)

/* A deny: results `first` .. `last` are (nil|false, code?, reason?). */
static int parse_deny(lua_State *L, call_t *c, int hook, int first, int last,
                      int defcode, const char *defreason) {
  mw_policy_result_t *r = c->res;
  int code = defcode;
  if (first + 1 <= last && !lua_isnil(L, first + 1)) {
    double d =
        lua_type(L, first + 1) == LUA_TNUMBER ? lua_tonumber(L, first + 1) : 0;
    if (d < 100 || d > 999 || d != (double)(int)d) {
      BADRETURN(c, hook,
                "%s: the deny code must be an integer 100..999 (got "
                "%s)",
                hook_names[hook], luaL_typename(L, first + 1));
      return 0;
    }
    code = (int)d;
  }
  const char *reason = defreason;
  if (first + 2 <= last && !lua_isnil(L, first + 2)) {
    if (lua_type(L, first + 2) != LUA_TSTRING) {
      BADRETURN(c, hook, "%s: the deny reason must be a string (got %s)",
                hook_names[hook], luaL_typename(L, first + 2));
      return 0;
    }
    reason = lua_tostring(L, first + 2);
  }
  r->verdict = MW_VERDICT_DENY;
  r->code = code;
  snprintf(r->reason, sizeof r->reason, "%s", reason);
  return 1;
}

static int is_falsy(lua_State *L, int idx, int top) {
  return idx > top || lua_isnil(L, idx) ||
         (lua_type(L, idx) == LUA_TBOOLEAN && !lua_toboolean(L, idx));
}

/* Pushes a conn table. `claims_idx` (a stack slot) or `claims` (JSON). */
static void push_conn_table(lua_State *L, const char *conn_id,
                            const char *transport, const char *user_id,
                            const char *tenant_id, int all_tenants,
                            int claims_idx, const json_t *claims) {
  lua_createtable(L, 0, 6);
  if (conn_id) {
    lua_pushstring(L, conn_id);
    lua_setfield(L, -2, "id");
  }
  if (transport) {
    lua_pushstring(L, transport);
    lua_setfield(L, -2, "transport");
  }
  if (user_id) {
    lua_pushstring(L, user_id);
    lua_setfield(L, -2, "user_id");
  }
  if (tenant_id) {
    lua_pushstring(L, tenant_id);
    lua_setfield(L, -2, "tenant_id");
  }
  if (all_tenants) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "all_tenants");
  }
  if (claims_idx) {
    lua_pushvalue(L, claims_idx);
    lua_setfield(L, -2, "claims");
  } else if (claims && mw__lua_push_json(L, claims, CONV_DEPTH) == 0) {
    lua_setfield(L, -2, "claims");
  }
}

/* Pushes the conn table of `id` (nil without one), rebuilding it if the
 * identity was made by an older state. */
static void push_identity(lua_State *L, call_t *c,
                          const mw_policy_identity_t *id) {
  pstate_t *s = c->s;
  if (!id || id->ref == LUA_NOREF || id->generation == 0) {
    lua_pushnil(L);
    return;
  }
  if (id->generation == s->generation) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, id->ref);
    return;
  }
  push_conn_table(L, id->conn_id, id->transport, id->user_id, id->tenant_id,
                  id->all_tenants, 0, id->claims);
  lua_pushvalue(L, -1);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  /* The identity belongs to the connection (not a const object). */
  mw_policy_identity_t *mid = (mw_policy_identity_t *)id;
  mid->ref = ref;
  mid->generation = s->generation;
}

static void push_pairs(lua_State *L, const mw_policy_pair_t *v, size_t n,
                       int lower, int join) {
  lua_createtable(L, 0, (int)n);
  int t = lua_gettop(L);
  for (size_t i = 0; i < n; i++) {
    if (!v[i].name || !v[i].value) continue;
    size_t nl = strlen(v[i].name);
    if (lower) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (size_t j = 0; j < nl; j++) {
        char ch = v[i].name[j];
        luaL_addchar(&b, ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch);
      }
      luaL_pushresult(&b);
    } else {
      lua_pushlstring(L, v[i].name, nl);
    }
    lua_pushvalue(L, -1);
    lua_rawget(L, t);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushstring(L, v[i].value);
      lua_rawset(L, t);
    } else if (join) { /* a repeated header: "a, b" */
      lua_pushliteral(L, ", ");
      lua_pushstring(L, v[i].value);
      lua_concat(L, 3);
      lua_rawset(L, t);
    } else { /* repeated query parameter or cookie: the first wins */
      lua_pop(L, 2);
    }
  }
}

static void push_req(lua_State *L, const mw_policy_connect_req_t *rq) {
  lua_createtable(L, 0, 7);
  int t = lua_gettop(L);
  if (rq->transport) {
    lua_pushstring(L, rq->transport);
    lua_setfield(L, t, "transport");
  }
  if (rq->remote_addr) {
    lua_pushstring(L, rq->remote_addr);
    lua_setfield(L, t, "remote_addr");
  }
  push_pairs(L, rq->headers, rq->headers ? rq->nheaders : 0, 1, 1);
  lua_setfield(L, t, "headers");
  push_pairs(L, rq->query, rq->query ? rq->nquery : 0, 0, 0);
  lua_setfield(L, t, "query");
  push_pairs(L, rq->cookies, rq->cookies ? rq->ncookies : 0, 0, 0);
  lua_setfield(L, t, "cookies");
  if (rq->token) {
    lua_pushstring(L, rq->token);
    lua_setfield(L, t, "token");
  }
}

static void identity_clear(mw_policy_identity_t *id) {
  free(id->user_id);
  free(id->tenant_id);
  free(id->conn_id);
  free(id->transport);
  json_decref(id->claims);
  memset(id, 0, sizeof *id);
  id->ref = LUA_NOREF;
}

static void body_connect(lua_State *L, call_t *c) {
  pstate_t *s = c->s;
  const mw_policy_connect_req_t *rq = c->req;
  mw_policy_identity_t *nid = &c->nid;
  int claims_idx = 0;
  c->hook = H_CONNECT;
  if (s->hooks[H_CONNECT] != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->hooks[H_CONNECT]);
    push_req(L, rq);
    int r = script_call(L, c, H_CONNECT, 1);
    if (!r) return;
    int top = lua_gettop(L);
    if (is_falsy(L, r, top)) {
      parse_deny(L, c, H_CONNECT, r, top, 401, "unauthorized");
      return;
    }
    if (lua_type(L, r) != LUA_TTABLE) {
      BADRETURN(c, H_CONNECT,
                "on_connect: returned a %s (expected a table, "
                "or nil, code, reason)",
                luaL_typename(L, r));
      return;
    }
    int t = rawfield(L, r, "user_id");
    if (t == LUA_TNUMBER || t == LUA_TSTRING) {
      nid->user_id = mw_xstrdup(lua_tostring(L, -1));
    } else if (t != LUA_TNIL) {
      BADRETURN(c, H_CONNECT,
                "on_connect: user_id must be a string or a "
                "number (got %s)",
                lua_typename(L, t));
      return;
    }
    t = rawfield(L, r, "tenant_id");
    if (t == LUA_TSTRING) {
      nid->tenant_id = mw_xstrdup(lua_tostring(L, -1));
    } else if (t != LUA_TNIL) {
      BADRETURN(c, H_CONNECT,
                "on_connect: tenant_id must be a string (got "
                "%s)",
                lua_typename(L, t));
      return;
    }
    t = rawfield(L, r, "all_tenants");
    if (t == LUA_TBOOLEAN) {
      nid->all_tenants = lua_toboolean(L, -1);
    } else if (t != LUA_TNIL) {
      BADRETURN(c, H_CONNECT,
                "on_connect: all_tenants must be a boolean (got "
                "%s)",
                lua_typename(L, t));
      return;
    }
    t = rawfield(L, r, "claims");
    if (t == LUA_TTABLE) {
      char err[128];
      claims_idx = lua_gettop(L);
      nid->claims = mw__lua_to_json(L, claims_idx, CONV_DEPTH, err, sizeof err);
      if (!nid->claims) {
        BADRETURN(c, H_CONNECT, "on_connect: claims: %s", err);
        return;
      }
    } else if (t != LUA_TNIL) {
      BADRETURN(c, H_CONNECT, "on_connect: claims must be a table (got %s)",
                lua_typename(L, t));
      return;
    }
  }
  nid->conn_id = c->conn_id ? mw_xstrdup(c->conn_id) : NULL;
  nid->transport = rq->transport ? mw_xstrdup(rq->transport) : NULL;
  push_conn_table(L, nid->conn_id, nid->transport, nid->user_id, nid->tenant_id,
                  nid->all_tenants, claims_idx, NULL);
  nid->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  nid->generation = s->generation;
  c->made = 1;
}

/* on_connect(req): see policy.h. */
void mw__policy_connect(mw_policy_t *p, const mw_policy_connect_req_t *req,
                        const char *conn_id, mw_policy_identity_t *id,
                        mw_policy_result_t *res) {
  res_init(res);
  memset(id, 0, sizeof *id);
  id->ref = LUA_NOREF;
  call_t c = {.p = p,
              .s = p->s,
              .body = body_connect,
              .res = res,
              .fail_verdict = MW_VERDICT_DENY,
              .fail_code = 401,
              .req = req,
              .conn_id = conn_id};
  memset(&c.nid, 0, sizeof c.nid);
  c.nid.ref = LUA_NOREF;
  run(&c);
  if (c.made && res->status == MW_POLICY_OK) {
    *id = c.nid;
  } else {
    if (c.nid.ref != LUA_NOREF && c.nid.generation == p->s->generation)
      luaL_unref(p->s->L, LUA_REGISTRYINDEX, c.nid.ref);
    identity_clear(&c.nid);
  }
}

static void body_subscribe(lua_State *L, call_t *c) {
  pstate_t *s = c->s;
  c->hook = H_SUBSCRIBE;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->hooks[H_SUBSCRIBE]);
  push_identity(L, c, c->id);
  lua_pushstring(L, c->topic);
  int r = script_call(L, c, H_SUBSCRIBE, 2);
  if (!r) return;
  int top = lua_gettop(L);
  if (is_falsy(L, r, top)) {
    parse_deny(L, c, H_SUBSCRIBE, r, top, 403, "forbidden");
    return;
  }
  if (lua_type(L, r) != LUA_TBOOLEAN) {
    BADRETURN(c, H_SUBSCRIBE,
              "on_subscribe: returned a %s (expected true, or "
              "false, code, reason)",
              luaL_typename(L, r));
    return;
  }
  /* `return ok, 403, "why"` is the natural idiom: with ok true, a code
   * (and reason) after it are ignored. */
  if (r + 1 <= top && lua_type(L, r + 1) == LUA_TNUMBER &&
      (r + 2 > top || lua_isnil(L, r + 2) || lua_type(L, r + 2) == LUA_TSTRING))
    top = r;
  if (r + 1 <= top && !lua_isnil(L, r + 1)) {
    if (lua_type(L, r + 1) != LUA_TTABLE) {
      BADRETURN(c, H_SUBSCRIBE,
                "on_subscribe: the second result must be a "
                "table such as {presence = true} (got %s)",
                luaL_typename(L, r + 1));
      return;
    }
    int t = rawfield(L, r + 1, "presence");
    if (t == LUA_TBOOLEAN) {
      c->res->presence = lua_toboolean(L, -1);
    } else if (t != LUA_TNIL) {
      BADRETURN(c, H_SUBSCRIBE,
                "on_subscribe: presence must be a boolean "
                "(got %s)",
                lua_typename(L, t));
      return;
    }
  }
  c->res->verdict = MW_VERDICT_ALLOW;
}

/* on_subscribe(conn, topic): see policy.h. */
void mw__policy_subscribe(mw_policy_t *p, const mw_policy_identity_t *id,
                          const char *topic, mw_policy_result_t *res) {
  res_init(res);
  if (p->s->hooks[H_SUBSCRIBE] == LUA_NOREF) return;
  call_t c = {.p = p,
              .s = p->s,
              .body = body_subscribe,
              .res = res,
              .fail_verdict = MW_VERDICT_DENY,
              .fail_code = 403,
              .id = id,
              .topic = topic ? topic : ""};
  run(&c);
}

/* 1 if the Lua value at `idx` is a string equal to `s` (NULL: nil). */
static int lua_str_eq(lua_State *L, int idx, const char *s) {
  if (!s) return lua_isnil(L, idx);
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  size_t len;
  const char *v = lua_tolstring(L, idx, &len);
  return len == strlen(s) && memcmp(v, s, len) == 0;
}

/* Builds {"event","data","trace_id"} from the event table at `idx`;
 * NULL after recording a BADRETURN. A missing trace_id keeps `def_trace`. */
static json_t *make_out(lua_State *L, call_t *c, int hook, int idx,
                        const char *def_trace) {
  const char *hn = hook_names[hook];
  int top0 = lua_gettop(L);
  if (mw__lua_unproxy(L, idx)) idx = lua_gettop(L);
  int t = rawfield(L, idx, "event");
  if (t != LUA_TSTRING) {
    BADRETURN(c, hook, "%s: event.event must be a string (got %s)", hn,
              lua_typename(L, t));
    return NULL;
  }
  int ev_idx = lua_gettop(L);
  t = rawfield(L, idx, "trace_id");
  if (t != LUA_TSTRING && t != LUA_TNIL) {
    BADRETURN(c, hook, "%s: event.trace_id must be a string (got %s)", hn,
              lua_typename(L, t));
    return NULL;
  }
  int tr_idx = lua_gettop(L);
  t = rawfield(L, idx, "data");
  if (t != LUA_TTABLE) {
    BADRETURN(c, hook, "%s: event.data must be a table (got %s)", hn,
              lua_typename(L, t));
    return NULL;
  }
  char err[128];
  json_t *data = mw__lua_to_json(L, lua_gettop(L), CONV_DEPTH, err, sizeof err);
  if (!data) {
    BADRETURN(c, hook, "%s: event.data: %s", hn, err);
    return NULL;
  }
  if (json_is_array(data)) {
    if (json_array_size(data) > 0) {
      json_decref(data);
      BADRETURN(c, hook, "%s: event.data must be an object, not a list", hn);
      return NULL;
    }
    json_decref(data);
    data = json_object();
  }
  size_t len;
  const char *name = lua_tolstring(L, ev_idx, &len);
  json_t *out = json_object();
  json_t *jname = json_stringn(name, len);
  if (!out || !data) mw_oom();
  if (!jname) {
    json_decref(out);
    json_decref(data);
    BADRETURN(c, hook, "%s: event.event is not valid UTF-8", hn);
    return NULL;
  }
  json_object_set_new(out, "event", jname);
  json_object_set_new(out, "data", data);
  const char *trace = lua_type(L, tr_idx) == LUA_TSTRING
                          ? lua_tolstring(L, tr_idx, &len)
                          : def_trace;
  if (trace) {
    json_t *jt = lua_type(L, tr_idx) == LUA_TSTRING ? json_stringn(trace, len)
                                                    : json_string(trace);
    if (!jt) {
      json_decref(out);
      BADRETURN(c, hook, "%s: event.trace_id is not valid UTF-8", hn);
      return NULL;
    }
    json_object_set_new(out, "trace_id", jt);
  }
  lua_settop(L, top0);
  return out;
}

/* 1 if the event table at `idx` has the same event, data and trace_id as
 * the JSON `ref` ({"event","data","trace_id"}); a nil trace_id in the table
 * stands for `def_trace`. No allocation but the key strings. */
static int fields_equal(lua_State *L, int idx, const json_t *ref,
                        const char *def_trace) {
  int top = lua_gettop(L);
  int eq = 0;
  if (mw__lua_unproxy(L, idx)) idx = lua_gettop(L);
  rawfield(L, idx, "event");
  const json_t *je = json_object_get(ref, "event");
  if (!je || !mw__lua_json_equal(L, -1, je)) goto out;
  rawfield(L, idx, "data");
  const json_t *jd = json_object_get(ref, "data");
  if (!jd || !mw__lua_json_equal(L, -1, jd)) goto out;
  rawfield(L, idx, "trace_id");
  const json_t *jt = json_object_get(ref, "trace_id");
  if (lua_isnil(L, -1)) {
    const char *want = json_string_value(jt);
    eq = (!want && !def_trace) ||
         (want && def_trace && strcmp(want, def_trace) == 0);
  } else {
    eq = jt && mw__lua_json_equal(L, -1, jt);
  }
out:
  lua_settop(L, top);
  return eq;
}

static void body_publish(lua_State *L, call_t *c) {
  pstate_t *s = c->s;
  c->hook = H_PUBLISH;
  if (!json_is_object(c->event) || mw__lua_push_json(L, c->event, CONV_DEPTH)) {
    fail(c, H_PUBLISH, MW_POLICY_ERROR,
         "on_publish: the event is not a JSON "
         "object of depth <= %d",
         CONV_DEPTH);
    return;
  }
  int e = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->hooks[H_PUBLISH]);
  push_identity(L, c, c->id);
  lua_pushvalue(L, e);
  int r = script_call(L, c, H_PUBLISH, 2);
  if (!r) return;
  int top = lua_gettop(L);
  if (is_falsy(L, r, top)) {
    parse_deny(L, c, H_PUBLISH, r, top, 403, "forbidden");
    return;
  }
  if (lua_type(L, r) != LUA_TTABLE) {
    BADRETURN(c, H_PUBLISH,
              "on_publish: returned a %s (expected the event, "
              "a new event table, or nil, code, reason)",
              luaL_typename(L, r));
    return;
  }
  const char *trace = json_string_value(json_object_get(c->event, "trace_id"));
  if (lua_rawequal(L, r, e) && fields_equal(L, r, c->event, trace)) return;
  json_t *out = make_out(L, c, H_PUBLISH, r, trace);
  if (!out) return;
  c->res->out = out;
  c->res->verdict = MW_VERDICT_CHANGED;
}

/* on_publish(conn, event): see policy.h. */
void mw__policy_publish(mw_policy_t *p, const mw_policy_identity_t *id,
                        const json_t *event, mw_policy_result_t *res) {
  res_init(res);
  if (p->s->hooks[H_PUBLISH] == LUA_NOREF) return;
  call_t c = {.p = p,
              .s = p->s,
              .body = body_publish,
              .res = res,
              .fail_verdict = MW_VERDICT_DENY,
              .fail_code = 403,
              .id = id,
              .event = event};
  run(&c);
  if (res->status != MW_POLICY_OK) mw__policy_result_clear(res);
}

static tenant_t *tenant_find(const pstate_t *s, const char *id) {
  if (!id || !s->tenants) return NULL;
  tenant_t *t;
  HASH_FIND_STR(s->tenants, id, t);
  return t;
}

/* The tenant rules of an identity, looked up once per state. */
static tenant_t *identity_tenant(const pstate_t *s,
                                 const mw_policy_identity_t *id) {
  if (!id || !id->tenant_id || !s->tenants) return NULL;
  if (id->tenant_generation == s->generation)
    return (tenant_t *)id->tenant_rules;
  tenant_t *t = tenant_find(s, id->tenant_id);
  /* The identity belongs to the connection (not a const object). */
  mw_policy_identity_t *mid = (mw_policy_identity_t *)id;
  mid->tenant_rules = t;
  mid->tenant_generation = s->generation;
  return t;
}

/* Builds the view of the event handed to on_deliver (see policy.h):
 * {type, topic, event, seq, id, data, trace_id} behind a proxy, nested
 * objects behind proxies, arrays plain and listed for the after-call check.
 * Stores it in s->ev_ref. */
static void view_build(lua_State *L, pstate_t *s, const mw_event_t *ev,
                       const json_t *data) {
  view_drop(s);
  if (++s->tree.id == 0) s->tree.id = 1; /* 0: no view in SLOT_VIEW */
  lua_createtable(L, 0, 0);
  int arrays = lua_gettop(L);
  lua_createtable(L, 0, 7);
  int t = lua_gettop(L);
  lua_pushliteral(L, "event");
  lua_setfield(L, t, "type");
  lua_pushstring(L, ev->topic);
  lua_setfield(L, t, "topic");
  lua_pushstring(L, ev->name);
  lua_setfield(L, t, "event");
  lua_pushnumber(L, (lua_Number)ev->seq);
  lua_setfield(L, t, "seq");
  char seq[32];
  snprintf(seq, sizeof seq, "%llu", (unsigned long long)ev->seq);
  lua_pushstring(L, ev->topic);
  lua_pushliteral(L, ":");
  lua_pushstring(L, seq);
  lua_concat(L, 3);
  lua_setfield(L, t, "id");
  if (mw__lua_push_view(L, data, CONV_DEPTH, s->tree.id, arrays, &s->jarrays,
                        &s->narrays, &s->caparrays) == 0)
    lua_setfield(L, t, "data");
  if (ev->trace_id) {
    lua_pushstring(L, ev->trace_id);
    lua_setfield(L, t, "trace_id");
  }
  mw__lua_push_proxy(L, t, s->tree.id);
  int view = luaL_ref(L, LUA_REGISTRYINDEX);
  if (s->narrays) {
    lua_pushvalue(L, arrays);
    s->arrays_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  s->ev_ref = view;
  s->tree.dirty = 0;
  lua_settop(L, arrays - 1);
}

/* 1 if an array of the view no longer equals the event's (arrays are plain
 * tables: writes to them are found by comparing). No allocation. */
static int view_arrays_changed(lua_State *L, pstate_t *s) {
  if (!s->narrays) return 0;
  if (s->arrays_ref == LUA_NOREF) return 1;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->arrays_ref);
  int a = lua_gettop(L), changed = 0;
  for (size_t i = 0; i < s->narrays && !changed; i++) {
    lua_rawgeti(L, a, (int)i + 1);
    changed = !mw__lua_json_equal(L, -1, s->jarrays[i]);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return changed;
}

/* 1 if the (written) view at `idx` still has the event's event, data and
 * trace_id (other fields cannot change what is sent). No allocation but
 * the key strings. */
static int same_as_event(lua_State *L, int idx, const mw_event_t *ev,
                         const json_t *data) {
  int top = lua_gettop(L);
  if (mw__lua_unproxy(L, idx)) idx = lua_gettop(L);
  int eq = 0;
  rawfield(L, idx, "event");
  if (!lua_str_eq(L, -1, ev->name)) goto out;
  rawfield(L, idx, "data");
  if (!mw__lua_json_equal(L, -1, data)) goto out;
  rawfield(L, idx, "trace_id");
  eq = lua_isnil(L, -1) || lua_str_eq(L, -1, ev->trace_id);
out:
  lua_settop(L, top);
  return eq;
}

static void result_hit(call_t *c, outent_t *e) {
  c->res->out = json_incref(e->out);
  c->res->out_key = e;
  c->res->verdict = MW_VERDICT_CHANGED;
}

static void recent_push(pstate_t *s, outent_t *e) {
  size_t i = 0;
  while (i < s->nrecent && s->recent[i] != e)
    i++;
  if (i == s->nrecent && s->nrecent < OUT_RECENT) s->nrecent++;
  if (i == OUT_RECENT) i = OUT_RECENT - 1;
  memmove(&s->recent[1], &s->recent[0], i * sizeof s->recent[0]);
  s->recent[0] = e;
}

/* A CHANGED deliver result from the table at `idx`. Equal results share one
 * entry (and out_key, so the hub encodes them once): the same table coming
 * back with the same content, or a new table equal to one of the latest
 * distinct results (a fresh moonwire.copy per recipient, redacted the same
 * way). res->out is a reference to the entry's JSON. */
static void deliver_changed(lua_State *L, call_t *c, int hook, int idx) {
  pstate_t *s = c->s;
  if (mw__lua_unproxy(L, idx)) idx = lua_gettop(L);
  const void *tp = lua_topointer(L, idx);
  const char *trace = c->ev->trace_id;
  outent_t *e;
  HASH_FIND_PTR(s->outs, &tp, e);
  if (e && e->out && fields_equal(L, idx, e->out, trace)) {
    result_hit(c, e);
    recent_push(s, e);
    return;
  }
  for (size_t i = 0; i < s->nrecent; i++) {
    outent_t *r = s->recent[i];
    if (r != e && r->out && fields_equal(L, idx, r->out, trace)) {
      result_hit(c, r);
      recent_push(s, r);
      return;
    }
  }
  json_t *out = make_out(L, c, hook, idx, trace);
  if (!out) return;
  outent_t *ne = mw_xcalloc(1, sizeof *ne);
  ne->table = tp;
  ne->all_next = s->outs_all;
  s->outs_all = ne;
  if (e) { /* same table, new content: a new key */
    HASH_DEL(s->outs, e);
    json_decref(e->out);
    e->out = NULL;
    s->nouts--;
  }
  c->res->out_key = ne;
  c->res->verdict = MW_VERDICT_CHANGED;
  if (s->nouts < OUT_CACHE_MAX) {
    ne->out = out;
    HASH_ADD_PTR(s->outs, table, ne);
    s->nouts++;
    recent_push(s, ne);
    c->res->out = json_incref(out);
  } else {
    c->res->out = out;
  }
}

/* One deliver stage (transform or on_deliver) on the stack: fn, conn,
 * event. Returns the index of its result table, 0 for a drop or failure. */
static int deliver_stage(lua_State *L, call_t *c, int hook) {
  int r = script_call(L, c, hook, 2);
  if (!r) return 0;
  int top = lua_gettop(L);
  if (is_falsy(L, r, top)) {
    c->res->verdict = MW_VERDICT_DROP;
    return 0;
  }
  if (lua_type(L, r) != LUA_TTABLE) {
    BADRETURN(c, hook,
              "%s: returned a %s (expected the event, a changed "
              "event table, or nil to drop)",
              hook_names[hook], luaL_typename(L, r));
    return 0;
  }
  lua_settop(L, r);
  return r;
}

/* The result of on_deliver (after the transform) at `cur`, the view at
 * `e`: the event unchanged, or a changed one. */
static void deliver_result(lua_State *L, call_t *c, int e, int cur) {
  if (lua_rawequal(L, cur, e) &&
      (!c->dirty || same_as_event(L, cur, c->ev, c->data))) {
    c->res->verdict = MW_VERDICT_ALLOW;
    return;
  }
  deliver_changed(L, c, c->hook, cur);
}

/* The general path: builds the view if needed, runs the tenant's transform
 * and on_deliver. */
static void body_deliver(lua_State *L, call_t *c) {
  pstate_t *s = c->s;
  const mw_event_t *ev = c->ev;
  c->hook = H_DELIVER;
  c->dirty = 1; /* until the calls are over */
  if (s->ev != ev) {
    event_cache_drop(s);
    s->ev = mw_event_ref((mw_event_t *)ev);
  }
  if (s->ev_ref == LUA_NOREF || s->tree.dirty) view_build(L, s, ev, c->data);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ev_ref);
  int e = lua_gettop(L);
  push_identity(L, c, c->id);
  int conn = lua_gettop(L);
  int cur = e;
  tenant_t *t = identity_tenant(s, c->id);
  if (t && t->transform != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->transform);
    lua_pushvalue(L, conn);
    lua_pushvalue(L, cur);
    cur = deliver_stage(L, c, H_TRANSFORM);
  }
  if (cur && s->hooks[H_DELIVER] != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->hooks[H_DELIVER]);
    lua_pushvalue(L, conn);
    lua_pushvalue(L, cur);
    cur = deliver_stage(L, c, H_DELIVER);
  }
  /* Whatever happened, the next recipient must get the event as it is. */
  c->dirty = c->res->status != MW_POLICY_OK || s->tree.dirty ||
             view_arrays_changed(L, s);
  if (!cur || c->res->status != MW_POLICY_OK) return;
  deliver_result(L, c, e, cur);
}

/* Reads a changed result (stack: view, result) in protected mode. */
static void body_deliver_result(lua_State *L, call_t *c) {
  deliver_result(L, c, 1, 2);
}

/* on_deliver alone, the view built and clean (and in SLOT_VIEW), the conn
 * table current: one lua_pcall straight into the hook, no trampoline
 * (pushing values onto a stack with room does not allocate). Results that
 * need converting go through the trampoline. */
static void deliver_fast(call_t *c) {
  pstate_t *s = c->s;
  lua_State *L = s->L;
  mw_policy_result_t *res = c->res;
  int top = lua_gettop(L);
  c->hook = H_DELIVER;
  /* Three more slots are always there (LuaJIT never shrinks a stack below
   * 40 slots); comparing arrays needs more. */
  if ((s->narrays || top > 16) && !lua_checkstack(L, STACK_ROOM)) {
    fail(c, H_DELIVER, MW_POLICY_NOMEM, "on_deliver: not enough memory");
    return;
  }
  lua_pushvalue(L, SLOT_DELIVER);
  if (c->id && c->id->ref != LUA_NOREF && c->id->generation)
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->id->ref);
  else
    lua_pushnil(L);
  lua_pushvalue(L, SLOT_VIEW);
  s->pending_calls++;
  budget_start(c->p, s);
  int rc = lua_pcall(L, 2, 1, SLOT_HANDLER);
  s->deadline = 0;
  if (s->timed_out) lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_COUNT);
  if (rc) {
    call_failed(L, c, H_DELIVER, rc);
    view_drop(s);
    lua_settop(L, top);
    if (c->need_gc || s->refused) {
      s->lifted = 1;
      lua_gc(L, LUA_GCCOLLECT, 0);
      s->lifted = 0;
    }
    return;
  }
  int r = top + 1;
  c->dirty = s->tree.dirty || view_arrays_changed(L, s);
  int t = lua_type(L, r);
  if (t == LUA_TTABLE) {
    if (!c->dirty && lua_rawequal(L, r, SLOT_VIEW)) {
      res->verdict = MW_VERDICT_ALLOW;
    } else {
      lua_pushvalue(L, SLOT_VIEW);
      lua_pushvalue(L, r);
      c->body = body_deliver_result;
      run_n(c, 2);
    }
  } else if (t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, r))) {
    res->verdict = MW_VERDICT_DROP;
  } else {
    BADRETURN(c, H_DELIVER,
              "on_deliver: returned a %s (expected the event, a changed "
              "event table, or nil to drop)",
              luaL_typename(L, r));
  }
  if (c->dirty) view_drop(s);
  lua_settop(L, top);
}

/* on_deliver(conn, event) (after the tenant's transform): see policy.h. */
void mw__policy_deliver(mw_policy_t *p, const mw_policy_identity_t *id,
                        const mw_event_t *ev, const json_t *data,
                        mw_policy_result_t *res) {
  res_init(res);
  pstate_t *s = p->s;
  tenant_t *t = identity_tenant(s, id);
  int transform = t && t->transform != LUA_NOREF;
  if (s->hooks[H_DELIVER] == LUA_NOREF && !transform) return;
  /* Only what the deliver paths read (zeroing the whole call_t, with its
   * on_connect identity, is a tenth of a pass-through call). */
  call_t c;
  c.p = p;
  c.s = s;
  c.body = body_deliver;
  c.hook = H_DELIVER;
  c.fail_verdict = MW_VERDICT_DROP;
  c.fail_code = 0;
  c.res = res;
  c.need_gc = 0;
  c.id = id;
  c.ev = ev;
  c.data = data ? data : mw__event_data(ev);
  c.dirty = 0;
  if (!transform && s->ev == ev && s->ev_ref != LUA_NOREF && !s->tree.dirty &&
      s->slot_tree == s->tree.id &&
      (!id || id->ref == LUA_NOREF || !id->generation ||
       id->generation == s->generation)) {
    deliver_fast(&c);
  } else {
    run(&c);
    if (c.dirty || res->status != MW_POLICY_OK) {
      view_drop(s);
    } else if (s->ev_ref != LUA_NOREF && s->slot_tree != s->tree.id) {
      /* The view for the fast path of the next recipients. */
      lua_rawgeti(s->L, LUA_REGISTRYINDEX, s->ev_ref);
      lua_replace(s->L, SLOT_VIEW);
      s->slot_tree = s->tree.id;
    }
  }
  if (res->status != MW_POLICY_OK) mw__policy_result_clear(res);
}

/* Publishes the pending on_deliver call count. */
void mw__policy_flush(mw_policy_t *p) {
  if (p) calls_flush(p);
}

static void body_disconnect(lua_State *L, call_t *c) {
  c->hook = H_DISCONNECT;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->s->hooks[H_DISCONNECT]);
  push_identity(L, c, c->id);
  if (c->reason)
    lua_pushstring(L, c->reason);
  else
    lua_pushnil(L);
  script_call(L, c, H_DISCONNECT, 2);
}

/* on_disconnect(conn, reason): see policy.h. */
void mw__policy_disconnect(mw_policy_t *p, const mw_policy_identity_t *id,
                           const char *reason) {
  if (p->s->hooks[H_DISCONNECT] == LUA_NOREF) return;
  mw_policy_result_t res;
  res_init(&res);
  call_t c = {.p = p,
              .s = p->s,
              .body = body_disconnect,
              .res = &res,
              .fail_verdict = MW_VERDICT_ALLOW,
              .id = id,
              .reason = reason};
  run(&c);
  mw__policy_result_clear(&res);
}

/* ---- tenants, topics, identities, results ---- */

/* The tenant's max_connections (0: no limit or no rules). */
int64_t mw__policy_tenant_max_connections(const mw_policy_t *p,
                                          const char *tenant) {
  tenant_t *t = tenant_find(p->s, tenant);
  return t ? t->max_connections : 0;
}

/* 1 if `tenant` has rules with a transform function. */
int mw__policy_tenant_has_transform(const mw_policy_t *p, const char *tenant) {
  tenant_t *t = tenant ? tenant_find(p->s, tenant) : NULL;
  return t && t->transform != LUA_NOREF;
}

/* 1 if `tenant` may use `topic` under its rules' patterns. */
int mw__policy_tenant_topic_allowed(const mw_policy_t *p, const char *tenant,
                                    const char *topic) {
  tenant_t *t = tenant_find(p->s, tenant);
  if (!t || !t->has_topics) return 1;
  for (size_t i = 0; i < t->ntopics; i++)
    if (mw__topic_match(t->topics[i], topic ? topic : "")) return 1;
  return 0;
}

/* `*` matches any run of characters: the two-pointer wildcard match (on a
 * mismatch, retry from the last star one character further), linear in
 * practice and never exponential. */
int mw__topic_match(const char *pattern, const char *topic) {
  if (!pattern || !topic) return 0;
  const char *p = pattern, *t = topic, *star = NULL, *mark = NULL;
  while (*t) {
    if (*p == '*') {
      star = p++;
      mark = t;
    } else if (*p == *t) {
      p++;
      t++;
    } else if (star) {
      p = star + 1;
      t = ++mark;
    } else {
      return 0;
    }
  }
  while (*p == '*')
    p++;
  return *p == '\0';
}

/* Frees the identity's strings and claims and its conn table ref. */
void mw__policy_identity_free(mw_policy_t *p, mw_policy_identity_t *id) {
  if (!id) return;
  if (p && p->s && id->generation && id->generation == p->s->generation &&
      id->ref >= 0)
    luaL_unref(p->s->L, LUA_REGISTRYINDEX, id->ref);
  identity_clear(id);
}

/* Frees res->out. */
void mw__policy_result_clear(mw_policy_result_t *res) {
  json_decref(res->out);
  res->out = NULL;
}
