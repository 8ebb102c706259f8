/* Configuration: see config.h. The file is a Lua chunk returning a table,
 * run in an empty sandbox (only os.getenv, string, math, table helpers). */
#include "config.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "log.h"
#include "moonwire/version.h"

typedef enum { K_STR, K_INT, K_LIST } key_type_t;

typedef struct known_key {
  const char *key;
  key_type_t type;
  int flag;          /* settable as --key-with-dashes */
  const char *later; /* non-NULL: not available yet, and why */
  const char *def;   /* default value, or NULL */
  const char *help;
} known_key_t;

static const known_key_t known[] = {
    {"listen", K_STR, 1, NULL, "127.0.0.1:8080", "ADDR:PORT to listen on"},
    {"workers", K_INT, 1, NULL, NULL,
     "event loops (threads; default: the number of cores)"},
    {"storage", K_STR, 1, NULL, "memory", "storage plugin: memory|redis"},
    {"redis", K_STR, 1, NULL, NULL,
     "redis://host:port[/db] for --storage redis"},
    {"redis_timeout_ms", K_INT, 1, NULL, "2000",
     "milliseconds a Redis command may take before its connection is reset"},
    {"redis_prefix", K_STR, 1, NULL, "mw:", "prefix of moonwire's Redis keys"},
    {"redis_max_pending", K_INT, 0, NULL, "4096", NULL},
    {"redis_max_pending_bytes", K_INT, 0, NULL, "67108864", NULL},
    {"policy", K_STR, 1, NULL, NULL,
     "Lua policy script (default: the built-in scripts/default.lua)"},
    {"plugin_dir", K_STR, 1, NULL, NULL, "directory of plugin *.so files"},
    {"api_key", K_STR, 1, NULL, NULL,
     "key for /api/* (or env MOONWIRE_API_KEY)"},
    {"log_level", K_STR, 1, NULL, "info", "error|warn|info|debug"},
    {"log_format", K_STR, 1, NULL, "text", "text|json"},
    {"drain_timeout", K_INT, 1, NULL, "10", "seconds to drain on SIGTERM"},
    {"history.size", K_INT, 0, NULL, "1000", NULL},
    {"history.ttl", K_INT, 0, NULL, "3600", NULL},
    {"limits.max_message_size", K_INT, 0, NULL, "1048576", NULL},
    {"limits.max_body_size", K_INT, 0, NULL, "1048576", NULL},
    {"limits.max_header_size", K_INT, 0, NULL, "16384", NULL},
    {"limits.max_request_line", K_INT, 0, NULL, "8192", NULL},
    {"limits.max_topics_per_connection", K_INT, 0, NULL, "256", NULL},
    {"limits.outbound_queue", K_INT, 0, NULL, "4194304", NULL},
    {"limits.idle_timeout", K_INT, 0, NULL, "60", NULL},
    {"limits.ping_interval", K_INT, 0, NULL, "25", NULL},
    {"limits.max_connections", K_INT, 0, NULL, "0", NULL},
    {"limits.max_connections_per_user", K_INT, 0, NULL, "0", NULL},
    {"limits.max_connections_per_tenant", K_INT, 0, NULL, "0", NULL},
    {"limits.hook_budget_ms", K_INT, 0, NULL, "50", NULL},
    {"limits.sse_heartbeat", K_INT, 0, NULL, "15", NULL},
    {"limits.poll_max_events", K_INT, 0, NULL, "1000", NULL},
    {"limits.lua_memory", K_INT, 0, NULL, "67108864", NULL},
    {"limits.publish_backlog", K_INT, 0, NULL, "16777216", NULL},
    {"limits.publish_lag_ms", K_INT, 0, NULL, "1000", NULL},
    {"limits.message_rate", K_INT, 0, "message rate limits", NULL, NULL},
    {"cors.origins", K_LIST, 0, NULL, NULL, NULL},
    {"presence_topics", K_LIST, 0, NULL, NULL, NULL},
};
#define KNOWN_COUNT (sizeof known / sizeof known[0])

static const known_key_t *find_known(const char *key) {
  for (size_t i = 0; i < KNOWN_COUNT; i++)
    if (strcmp(known[i].key, key) == 0) return &known[i];
  /* A table key like "cors" covers "cors.origins" etc. */
  for (size_t i = 0; i < KNOWN_COUNT; i++) {
    size_t n = strlen(known[i].key);
    if (known[i].type == K_LIST && strncmp(known[i].key, key, n) == 0 &&
        key[n] == '.')
      return &known[i];
  }
  return NULL;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return MW_CONFIG_EXIT_USAGE;
}

void mw__config_set(mw_config_t *cfg, const char *key, const char *value) {
  for (size_t i = 0; i < cfg->count; i++) {
    if (strcmp(cfg->entries[i].key, key) == 0) {
      free(cfg->entries[i].value);
      cfg->entries[i].value = mw_xstrdup(value);
      return;
    }
  }
  cfg->entries =
      mw_xrealloc(cfg->entries, (cfg->count + 1) * sizeof *cfg->entries);
  cfg->entries[cfg->count].key = mw_xstrdup(key);
  cfg->entries[cfg->count].value = mw_xstrdup(value);
  cfg->count++;
}

const char *mw__config_string(const mw_config_t *cfg, const char *key,
                              const char *def) {
  for (size_t i = 0; i < cfg->count; i++)
    if (strcmp(cfg->entries[i].key, key) == 0) return cfg->entries[i].value;
  return def;
}

static int parse_int(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end) return -1;
  *out = v;
  return 0;
}

int64_t mw__config_int(const mw_config_t *cfg, const char *key, int64_t def) {
  const char *s = mw__config_string(cfg, key, NULL);
  int64_t v;
  if (!s || parse_int(s, &v)) return def;
  return v;
}

/* Checks and stores one key=value coming from the file or a flag. */
static int set_checked(mw_config_t *cfg, const char *origin, const char *key,
                       const char *value, char *err, size_t errlen) {
  const known_key_t *k = find_known(key);
  if (!k) return fail(err, errlen, "%s: unknown setting '%s'", origin, key);
  if (k->later)
    return fail(err, errlen,
                "%s: '%s' is not available yet in moonwire %s: it needs %s",
                origin, key, MW_VERSION_STRING, k->later);
  int64_t v;
  if (k->type == K_INT && parse_int(value, &v))
    return fail(err, errlen, "%s: '%s' must be an integer, got '%s'", origin,
                key, value);
  mw__config_set(cfg, key, value);
  return 0;
}

/* --- the Lua config file ------------------------------------------------ */

static int flatten(lua_State *L, int idx, const char *prefix, mw_config_t *cfg,
                   const char *origin, char *err, size_t errlen);

static int flatten_value(lua_State *L, const char *key, mw_config_t *cfg,
                         const char *origin, char *err, size_t errlen) {
  char buf[64];
  int t = lua_type(L, -1);
  if (t == LUA_TNUMBER) {
    double d = lua_tonumber(L, -1);
    if (d != (double)(long long)d)
      return fail(err, errlen, "%s: '%s' must be an integer", origin, key);
    snprintf(buf, sizeof buf, "%lld", (long long)d);
    return set_checked(cfg, origin, key, buf, err, errlen);
  }
  if (t == LUA_TSTRING)
    return set_checked(cfg, origin, key, lua_tostring(L, -1), err, errlen);
  if (t == LUA_TBOOLEAN)
    return set_checked(cfg, origin, key, lua_toboolean(L, -1) ? "1" : "0", err,
                       errlen);
  if (t == LUA_TTABLE) {
    /* A list of strings becomes "a,b"; a map recurses with "key." */
    if (lua_objlen(L, -1) > 0) {
      size_t n = lua_objlen(L, -1);
      int tidx = lua_gettop(L);
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, tidx, (int)i);
        if (!lua_isstring(L, -1)) {
          lua_pop(L, 1);
          return fail(err, errlen, "%s: '%s' must be a list of strings", origin,
                      key);
        }
        size_t l;
        const char *s = lua_tolstring(L, -1, &l);
        lua_pop(L, 1);
        if (i > 1) luaL_addchar(&b, ',');
        luaL_addlstring(&b, s, l);
      }
      luaL_pushresult(&b);
      int rc = set_checked(cfg, origin, key, lua_tostring(L, -1), err, errlen);
      lua_pop(L, 1);
      return rc;
    }
    return flatten(L, lua_gettop(L), key, cfg, origin, err, errlen);
  }
  return fail(err, errlen, "%s: '%s' has an unsupported type (%s)", origin, key,
              lua_typename(L, t));
}

static int flatten(lua_State *L, int idx, const char *prefix, mw_config_t *cfg,
                   const char *origin, char *err, size_t errlen) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      lua_pop(L, 2);
      return fail(err, errlen, "%s: keys must be strings", origin);
    }
    char key[256];
    snprintf(key, sizeof key, "%s%s%s", prefix ? prefix : "", prefix ? "." : "",
             lua_tostring(L, -2));
    int rc = flatten_value(L, key, cfg, origin, err, errlen);
    lua_pop(L, 1);
    if (rc) {
      lua_pop(L, 1);
      return rc;
    }
  }
  return 0;
}

static int load_file(mw_config_t *cfg, const char *path, char *err,
                     size_t errlen) {
  lua_State *L = luaL_newstate();
  if (!L) mw_oom();
  luaL_openlibs(L);
  int rc = 0;
  if (luaL_loadfile(L, path)) {
    rc = fail(err, errlen, "config %s: %s", path, lua_tostring(L, -1));
    goto done;
  }
  /* The chunk's environment: a few pure helpers and os.getenv only. */
  lua_newtable(L);
  static const char *globals[] = {"string",   "math",  "table",  "tostring",
                                  "tonumber", "pairs", "ipairs", "type"};
  for (size_t i = 0; i < sizeof globals / sizeof globals[0]; i++) {
    lua_getglobal(L, globals[i]);
    lua_setfield(L, -2, globals[i]);
  }
  lua_newtable(L);
  lua_getglobal(L, "os");
  lua_getfield(L, -1, "getenv");
  lua_setfield(L, -3, "getenv");
  lua_pop(L, 1);
  lua_setfield(L, -2, "os");
  lua_setfenv(L, -2);
  if (lua_pcall(L, 0, 1, 0)) {
    rc = fail(err, errlen, "config %s: %s", path, lua_tostring(L, -1));
    goto done;
  }
  if (!lua_istable(L, -1)) {
    rc = fail(err, errlen, "config %s: the file must return a table", path);
    goto done;
  }
  char origin[300];
  snprintf(origin, sizeof origin, "config %s", path);
  rc = flatten(L, lua_gettop(L), NULL, cfg, origin, err, errlen);
done:
  lua_close(L);
  return rc;
}

/* --- flags -------------------------------------------------------------- */

static void print_help(void) {
  printf("moonwire %s - realtime pub/sub server\n\n"
         "usage: moonwire [--config FILE] [flags]\n\n"
         "  --config FILE        Lua config file returning a table\n",
         MW_VERSION_STRING);
  for (size_t i = 0; i < KNOWN_COUNT; i++) {
    if (!known[i].flag) continue;
    char flag[64];
    snprintf(flag, sizeof flag, "--%s", known[i].key);
    for (char *p = flag + 2; *p; p++)
      if (*p == '_') *p = '-';
    printf("  %-20s %s%s%s%s\n", flag, known[i].help,
           known[i].def ? " (default " : "", known[i].def ? known[i].def : "",
           known[i].def ? ")" : "");
  }
  printf("  --help               this text\n"
         "  --version            print the version\n\n"
         "Nested settings (history, limits, ...) are set in the config file; "
         "see docs/configuration.md.\n");
}

static int resolve_listen(mw_config_t *cfg, char *err, size_t errlen) {
  const char *l = mw__config_string(cfg, "listen", "127.0.0.1:8080");
  const char *colon = strrchr(l, ':');
  if (!colon || colon == l)
    return fail(err, errlen, "--listen: expected ADDR:PORT, got '%s'", l);
  const char *h = l;
  size_t hl = (size_t)(colon - l);
  if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
    h++;
    hl -= 2;
  }
  int64_t port;
  if (hl == 0 || hl >= sizeof cfg->listen_host || parse_int(colon + 1, &port) ||
      port < 0 || port > 65535)
    return fail(err, errlen, "--listen: expected ADDR:PORT, got '%s'", l);
  memcpy(cfg->listen_host, h, hl);
  cfg->listen_host[hl] = 0;
  cfg->listen_port = (int)port;
  return 0;
}

int mw__config_load(mw_config_t *cfg, int argc, char **argv, char *err,
                    size_t errlen) {
  memset(cfg, 0, sizeof *cfg);
  err[0] = 0;
  for (size_t i = 0; i < KNOWN_COUNT; i++)
    if (known[i].def) mw__config_set(cfg, known[i].key, known[i].def);

  /* Pass 1: --help, --version, --config. */
  const char *config_path = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      print_help();
      return MW_CONFIG_EXIT_OK;
    }
    if (!strcmp(argv[i], "--version")) {
      printf("moonwire %s (plugin ABI %d.%d)\n", MW_VERSION_STRING,
             MW_ABI_MAJOR, MW_ABI_MINOR);
      return MW_CONFIG_EXIT_OK;
    }
    if (!strcmp(argv[i], "--config")) {
      if (i + 1 >= argc) return fail(err, errlen, "--config needs a FILE");
      config_path = argv[++i];
    } else if (!strncmp(argv[i], "--config=", 9)) {
      config_path = argv[i] + 9;
    }
  }
  const char *env_key = getenv("MOONWIRE_API_KEY");
  if (env_key && *env_key) mw__config_set(cfg, "api_key", env_key);
  if (config_path) {
    int rc = load_file(cfg, config_path, err, errlen);
    if (rc) return rc;
  }

  /* Pass 2: flags beat the file. */
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--config")) {
      i++;
      continue;
    }
    if (!strncmp(a, "--config=", 9)) continue;
    if (strncmp(a, "--", 2) != 0 || !a[2])
      return fail(err, errlen, "unexpected argument '%s' (see --help)", a);
    char key[64];
    const char *eq = strchr(a, '=');
    size_t kl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
    if (kl >= sizeof key)
      return fail(err, errlen, "unknown flag '%s' (see --help)", a);
    memcpy(key, a + 2, kl);
    key[kl] = 0;
    for (char *p = key; *p; p++)
      if (*p == '-') *p = '_';
    const known_key_t *k = find_known(key);
    if (!k || !k->flag)
      return fail(err, errlen, "unknown flag '%s' (see --help)", a);
    const char *value;
    if (eq) {
      value = eq + 1;
    } else {
      if (i + 1 >= argc) return fail(err, errlen, "%s needs a value", a);
      value = argv[++i];
    }
    char origin[80];
    snprintf(origin, sizeof origin, "--%.*s", (int)kl, a + 2);
    int rc = set_checked(cfg, origin, key, value, err, errlen);
    if (rc) return rc;
  }

  /* Resolve and validate. */
  if (resolve_listen(cfg, err, errlen)) return MW_CONFIG_EXIT_USAGE;
  /* Default: one loop per core the process may run on (SPEC §1). */
  unsigned cores = uv_available_parallelism();
  int64_t workers = mw__config_int(cfg, "workers",
                                   cores < 1    ? 1
                                   : cores > 64 ? 64
                                                : cores);
  if (workers < 1 || workers > 64)
    return fail(err, errlen, "--workers: must be 1..64, got %lld",
                (long long)workers);
  cfg->workers = (int)workers;
  cfg->log_level = mw__log_level_parse(mw__config_string(cfg, "log_level", ""));
  if (cfg->log_level < 0)
    return fail(err, errlen, "--log-level: expected error|warn|info|debug");
  const char *fmt = mw__config_string(cfg, "log_format", "text");
  if (strcmp(fmt, "text") && strcmp(fmt, "json"))
    return fail(err, errlen, "--log-format: expected text|json, got '%s'", fmt);
  cfg->log_json = !strcmp(fmt, "json");
  static const char *positive[] = {"history.size",
                                   "history.ttl",
                                   "limits.max_message_size",
                                   "limits.max_body_size",
                                   "limits.max_header_size",
                                   "limits.max_request_line",
                                   "limits.max_topics_per_connection",
                                   "limits.outbound_queue",
                                   "limits.idle_timeout",
                                   "limits.ping_interval",
                                   "drain_timeout",
                                   "limits.hook_budget_ms",
                                   "limits.lua_memory",
                                   "redis_timeout_ms",
                                   "redis_max_pending",
                                   "redis_max_pending_bytes"};
  for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++)
    if (mw__config_int(cfg, positive[i], 1) < 1)
      return fail(err, errlen, "'%s' must be a positive integer", positive[i]);
  if (mw__config_int(cfg, "limits.max_connections", 0) < 0)
    return fail(err, errlen, "'limits.max_connections' must be >= 0");
  return MW_CONFIG_RUN;
}

void mw__config_free(mw_config_t *cfg) {
  for (size_t i = 0; i < cfg->count; i++) {
    free(cfg->entries[i].key);
    free(cfg->entries[i].value);
  }
  free(cfg->entries);
  cfg->entries = NULL;
  cfg->count = 0;
}
