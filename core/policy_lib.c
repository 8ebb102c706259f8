/* The `moonwire` table of policy scripts and the Lua <-> jansson
 * conversions; see policy_lib.h.
 *
 * Everything here may run with the state at its memory cap, so C resources
 * (jansson values, malloc'd text) that live across a Lua allocation are kept
 * in a "box" userdata whose __gc frees them: an allocation error unwinds
 * without leaking. */
#include "policy_lib.h"

#include <lauxlib.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "policy.h"

#define EQUAL_MAX_DEPTH 64
#define COPY_MAX_DEPTH 100

/* Registry keys (their addresses). */
static const char array_mt_key;
static const char box_mt_key;
static const char tree_key;     /* the mw_lua_tree_t (light userdata) */
static const char newindex_key; /* the proxies' write catcher */
/* A proxy's metatable holds its tree id at this key (and its backing table
 * at [1]): that is what makes it a proxy. */
static const char proxy_key;

static int abs_index(lua_State *L, int idx) {
  return idx < 0 && idx > LUA_REGISTRYINDEX ? lua_gettop(L) + idx + 1 : idx;
}

/* ---- proxies: read-only views of an event ---- */

/* Pushes the backing table of a proxy at `idx` (1), or nothing (0). */
int mw__lua_unproxy(lua_State *L, int idx) {
  if (lua_type(L, idx) != LUA_TTABLE) return 0;
  idx = abs_index(L, idx);
  if (!lua_getmetatable(L, idx)) return 0;
  lua_pushlightuserdata(L, (void *)&proxy_key);
  lua_rawget(L, -2);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 2);
    return 0;
  }
  lua_pop(L, 1);
  lua_rawgeti(L, -1, 1);
  lua_remove(L, -2);
  return 1;
}

static int is_proxy(lua_State *L, int idx) {
  if (!mw__lua_unproxy(L, idx)) return 0;
  lua_pop(L, 1);
  return 1;
}

/* Marks the tree of the proxy at `idx` dirty if it is the current one. */
static void mark_dirty(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return;
  lua_pushlightuserdata(L, (void *)&proxy_key);
  lua_rawget(L, -2);
  lua_Number id = lua_tonumber(L, -1);
  lua_pop(L, 2);
  lua_pushlightuserdata(L, (void *)&tree_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  mw_lua_tree_t *t = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (t && (lua_Number)t->id == id) t->dirty = 1;
}

/* __newindex(proxy, k, v): the write happens (on the backing table), and
 * the tree is marked so the engine treats the event as changed. */
static int proxy_newindex(lua_State *L) {
  mark_dirty(L, 1);
  if (!mw__lua_unproxy(L, 1)) return 0;
  lua_pushvalue(L, 2);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  return 0;
}

/* Makes `tree` the one the proxies' write catcher marks. */
void mw__lua_tree_register(lua_State *L, mw_lua_tree_t *tree) {
  lua_pushlightuserdata(L, (void *)&tree_key);
  lua_pushlightuserdata(L, tree);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

/* Pushes a proxy of the table at `backing` for tree `id`. */
void mw__lua_push_proxy(lua_State *L, int backing, unsigned id) {
  backing = abs_index(L, backing);
  luaL_checkstack(L, 4, "proxy");
  lua_createtable(L, 0, 0);
  lua_createtable(L, 1, 4);
  lua_pushvalue(L, backing);
  lua_rawseti(L, -2, 1);
  lua_pushvalue(L, backing);
  lua_setfield(L, -2, "__index");
  lua_pushlightuserdata(L, (void *)&newindex_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_setfield(L, -2, "__newindex");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pushlightuserdata(L, (void *)&proxy_key);
  lua_pushnumber(L, (lua_Number)id);
  lua_rawset(L, -3);
  lua_setmetatable(L, -2);
}

/* ---- boxes: C resources owned by a userdata until released ---- */

typedef struct box {
  json_t *json;
  char *text;
} box_t;

static int box_gc(lua_State *L) {
  box_t *b = lua_touserdata(L, 1);
  if (b) {
    json_decref(b->json);
    free(b->text);
    b->json = NULL;
    b->text = NULL;
  }
  return 0;
}

/* Pushes an empty box (may raise before anything needs freeing). */
static box_t *box_push(lua_State *L) {
  box_t *b = lua_newuserdata(L, sizeof *b);
  b->json = NULL;
  b->text = NULL;
  lua_pushlightuserdata(L, (void *)&box_mt_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_setmetatable(L, -2);
  return b;
}

static void box_release(box_t *b) {
  json_decref(b->json);
  free(b->text);
  b->json = NULL;
  b->text = NULL;
}

/* ---- jansson -> Lua ---- */

static void set_array_mt(lua_State *L) {
  lua_pushlightuserdata(L, (void *)&array_mt_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_setmetatable(L, -2);
}

static int push_json(lua_State *L, const json_t *v, int depth, int maxdepth) {
  switch (json_typeof(v)) {
  case JSON_OBJECT: {
    if (depth >= maxdepth) return -1;
    luaL_checkstack(L, 4, "json");
    lua_createtable(L, 0, (int)json_object_size(v));
    const char *k;
    size_t klen;
    json_t *item;
    json_object_keylen_foreach((json_t *)v, k, klen, item) {
      lua_pushlstring(L, k, klen);
      if (push_json(L, item, depth + 1, maxdepth)) {
        lua_pop(L, 2);
        return -1;
      }
      lua_rawset(L, -3);
    }
    return 0;
  }
  case JSON_ARRAY: {
    if (depth >= maxdepth) return -1;
    luaL_checkstack(L, 4, "json");
    size_t n = json_array_size(v);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
      if (push_json(L, json_array_get(v, i), depth + 1, maxdepth)) {
        lua_pop(L, 1);
        return -1;
      }
      lua_rawseti(L, -2, (int)i + 1);
    }
    set_array_mt(L);
    return 0;
  }
  case JSON_STRING:
    lua_pushlstring(L, json_string_value(v), json_string_length(v));
    return 0;
  case JSON_INTEGER:
    lua_pushnumber(L, (lua_Number)json_integer_value(v));
    return 0;
  case JSON_REAL:
    lua_pushnumber(L, json_real_value(v));
    return 0;
  case JSON_TRUE:
    lua_pushboolean(L, 1);
    return 0;
  case JSON_FALSE:
    lua_pushboolean(L, 0);
    return 0;
  default:
    lua_pushlightuserdata(L, NULL);
    return 0;
  }
}

int mw__lua_push_json(lua_State *L, const json_t *v, int maxdepth) {
  return push_json(L, v, 0, maxdepth);
}

typedef struct view {
  int maxdepth;
  unsigned id;
  int arrays;
  const json_t ***jarrays;
  size_t *n, *cap;
} view_t;

static int push_view(lua_State *L, const json_t *v, int depth, view_t *c) {
  if (json_is_object(v)) {
    if (depth >= c->maxdepth) return -1;
    luaL_checkstack(L, 6, "json");
    lua_createtable(L, 0, (int)json_object_size(v));
    int b = lua_gettop(L);
    const char *k;
    size_t klen;
    json_t *item;
    json_object_keylen_foreach((json_t *)v, k, klen, item) {
      lua_pushlstring(L, k, klen);
      if (push_view(L, item, depth + 1, c)) {
        lua_settop(L, b - 1);
        return -1;
      }
      lua_rawset(L, b);
    }
    mw__lua_push_proxy(L, b, c->id);
    lua_remove(L, b);
    return 0;
  }
  if (push_json(L, v, depth, c->maxdepth)) return -1;
  if (json_is_array(v) && c->arrays) {
    if (*c->n == *c->cap) {
      *c->cap = *c->cap ? *c->cap * 2 : 8;
      *c->jarrays =
          mw_xrealloc((void *)*c->jarrays, *c->cap * sizeof **c->jarrays);
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, c->arrays, (int)*c->n + 1);
    (*c->jarrays)[(*c->n)++] = v;
  }
  return 0;
}

/* Pushes `v` as a read-only view (objects behind proxies). */
int mw__lua_push_view(lua_State *L, const json_t *v, int maxdepth, unsigned id,
                      int arrays, const json_t ***jarrays, size_t *n,
                      size_t *cap) {
  view_t c = {maxdepth, id, arrays ? abs_index(L, arrays) : 0, jarrays, n, cap};
  return push_view(L, v, 0, &c);
}

/* ---- Lua -> jansson ---- */

typedef struct tojson {
  lua_State *L;
  int maxdepth;
  const void *path[EQUAL_MAX_DEPTH + 1]; /* tables on the current path */
  char *err;
  size_t errlen;
} tojson_t;

static json_t *tj_value(tojson_t *c, int idx, int depth);

/* 1 if `d` is an integer that a double holds exactly (|d| < 2^53). */
static int is_int53(double d) {
  return d > -9007199254740992.0 && d < 9007199254740992.0 &&
         d == (double)(int64_t)d;
}

static int has_array_mt(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  lua_pushlightuserdata(L, (void *)&array_mt_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  int eq = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return eq;
}

static json_t *tj_table(tojson_t *c, int idx, int depth) {
  lua_State *L = c->L;
  if (depth >= c->maxdepth) {
    snprintf(c->err, c->errlen, "nested deeper than %d", c->maxdepth);
    return NULL;
  }
  const void *self = lua_topointer(L, idx);
  for (int i = 0; i < depth; i++) {
    if (c->path[i] == self) {
      snprintf(c->err, c->errlen, "table cycle");
      return NULL;
    }
  }
  c->path[depth] = self;
  /* A sequence 1..n (or an empty table marked as an array) is an array. */
  size_t n = 0;
  double max = 0;
  int allint = 1;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) == LUA_TNUMBER) {
      double k = lua_tonumber(L, -2);
      if (k >= 1 && is_int53(k)) {
        if (k > max) max = k;
      } else {
        allint = 0;
      }
    } else {
      allint = 0;
    }
    n++;
    lua_pop(L, 1);
  }
  int arr = allint && (double)n == max && (n > 0 || has_array_mt(L, idx));
  if (arr) {
    json_t *a = json_array();
    if (!a) mw_oom();
    for (size_t i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, (int)i);
      json_t *v = tj_value(c, lua_gettop(L), depth + 1);
      lua_pop(L, 1);
      if (!v) {
        json_decref(a);
        return NULL;
      }
      json_array_append_new(a, v);
    }
    return a;
  }
  json_t *o = json_object();
  if (!o) mw_oom();
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    char num[64];
    const char *k;
    size_t klen;
    if (lua_type(L, -2) == LUA_TSTRING) {
      k = lua_tolstring(L, -2, &klen);
    } else if (lua_type(L, -2) == LUA_TNUMBER) {
      double d = lua_tonumber(L, -2);
      if (is_int53(d))
        snprintf(num, sizeof num, "%lld", (long long)d);
      else
        snprintf(num, sizeof num, "%.14g", d);
      k = num;
      klen = strlen(num);
    } else {
      snprintf(c->err, c->errlen, "cannot encode a key of type %s",
               lua_typename(L, lua_type(L, -2)));
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    json_t *v = tj_value(c, lua_gettop(L), depth + 1);
    if (!v) {
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    if (json_object_setn_new(o, k, klen, v)) {
      snprintf(c->err, c->errlen, "invalid UTF-8 in a key");
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    lua_pop(L, 1);
  }
  return o;
}

static json_t *tj_value(tojson_t *c, int idx, int depth) {
  lua_State *L = c->L;
  json_t *v = NULL;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    v = json_null();
    break;
  case LUA_TBOOLEAN:
    v = json_boolean(lua_toboolean(L, idx));
    break;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) return json_null();
    snprintf(c->err, c->errlen, "cannot encode a userdata");
    return NULL;
  case LUA_TNUMBER: {
    double d = lua_tonumber(L, idx);
    if (isnan(d) || isinf(d)) {
      snprintf(c->err, c->errlen, "cannot encode NaN or infinity");
      return NULL;
    }
    if (is_int53(d))
      v = json_integer((json_int_t)d);
    else
      v = json_real(d);
    break;
  }
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    v = json_stringn(s, len);
    if (!v) {
      snprintf(c->err, c->errlen, "invalid UTF-8 in a string");
      return NULL;
    }
    return v;
  }
  case LUA_TTABLE:
    if (mw__lua_unproxy(L, idx)) {
      json_t *r = tj_table(c, lua_gettop(L), depth);
      lua_pop(L, 1);
      return r;
    }
    return tj_table(c, idx, depth);
  default:
    snprintf(c->err, c->errlen, "cannot encode a %s",
             lua_typename(L, lua_type(L, idx)));
    return NULL;
  }
  if (!v) mw_oom();
  return v;
}

json_t *mw__lua_to_json(lua_State *L, int idx, int maxdepth, char *err,
                        size_t errlen) {
  tojson_t c;
  c.L = L;
  c.maxdepth = maxdepth > EQUAL_MAX_DEPTH ? EQUAL_MAX_DEPTH : maxdepth;
  c.err = err;
  c.errlen = errlen;
  if (errlen) err[0] = '\0';
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  return tj_value(&c, idx, 0);
}

/* ---- Lua == jansson, without allocating ---- */

static int equal(lua_State *L, int idx, const json_t *v, int depth) {
  if (depth > EQUAL_MAX_DEPTH) return 0;
  int t = lua_type(L, idx);
  if (t == LUA_TTABLE && mw__lua_unproxy(L, idx)) {
    int eq = equal(L, lua_gettop(L), v, depth);
    lua_pop(L, 1);
    return eq;
  }
  switch (json_typeof(v)) {
  case JSON_OBJECT: {
    if (t != LUA_TTABLE) return 0;
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      size_t klen = 0;
      const char *k =
          lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
      const json_t *jv = k ? json_object_getn(v, k, klen) : NULL;
      if (!jv || !equal(L, lua_gettop(L), jv, depth + 1)) {
        lua_pop(L, 2);
        return 0;
      }
      n++;
      lua_pop(L, 1);
    }
    return n == json_object_size(v);
  }
  case JSON_ARRAY: {
    if (t != LUA_TTABLE) return 0;
    size_t size = json_array_size(v);
    for (size_t i = 0; i < size; i++) {
      lua_rawgeti(L, idx, (int)i + 1);
      int eq = equal(L, lua_gettop(L), json_array_get(v, i), depth + 1);
      lua_pop(L, 1);
      if (!eq) return 0;
    }
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      n++;
      lua_pop(L, 1);
    }
    return n == size;
  }
  case JSON_STRING: {
    if (t != LUA_TSTRING) return 0;
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    return len == json_string_length(v) &&
           memcmp(s, json_string_value(v), len) == 0;
  }
  case JSON_INTEGER:
    return t == LUA_TNUMBER &&
           lua_tonumber(L, idx) == (lua_Number)json_integer_value(v);
  case JSON_REAL:
    return t == LUA_TNUMBER && lua_tonumber(L, idx) == json_real_value(v);
  case JSON_TRUE:
    return t == LUA_TBOOLEAN && lua_toboolean(L, idx);
  case JSON_FALSE:
    return t == LUA_TBOOLEAN && !lua_toboolean(L, idx);
  default:
    return t == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL;
  }
}

int mw__lua_json_equal(lua_State *L, int idx, const json_t *v) {
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  return equal(L, idx, v, 0);
}

/* ---- moonwire.json ---- */

static int l_json_encode(lua_State *L) {
  char err[128];
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  luaL_checkstack(L, 5 * MW_POLICY_JSON_DEPTH + 8, "json.encode");
  box_t *b = box_push(L);
  b->json = mw__lua_to_json(L, 1, MW_POLICY_JSON_DEPTH, err, sizeof err);
  if (!b->json) return luaL_error(L, "json.encode: %s", err);
  b->text =
      json_dumps(b->json, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
  if (!b->text) mw_oom();
  lua_pushstring(L, b->text);
  box_release(b);
  return 1;
}

static int l_json_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  box_t *b = box_push(L);
  json_error_t jerr;
  b->json = json_loadb(s, len, JSON_DECODE_ANY, &jerr);
  if (!b->json) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s at position %d", jerr.text, jerr.position);
    return 2;
  }
  if (mw__lua_push_json(L, b->json, MW_POLICY_JSON_DEPTH)) {
    box_release(b);
    lua_pushnil(L);
    lua_pushfstring(L, "nested deeper than %d", MW_POLICY_JSON_DEPTH);
    return 2;
  }
  box_release(b);
  return 1;
}

/* ---- moonwire.jwt ---- */

static int b64url_val(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

/* Strict unpadded base64url: returns the decoded length or -1. `out` holds
 * at least n * 3 / 4 + 1 bytes. */
static long b64url_decode(const char *in, size_t n, unsigned char *out) {
  if (n % 4 == 1) return -1;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    int v = b64url_val((unsigned char)in[i]);
    if (v < 0) return -1;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  if (acc != 0) return -1; /* non-canonical trailing bits */
  return (long)o;
}

static int jwt_fail(lua_State *L, const char *reason) {
  lua_pushnil(L);
  lua_pushstring(L, reason);
  return 2;
}

/* Decodes one segment into a Lua-owned buffer; NULL if malformed. */
static unsigned char *jwt_segment(lua_State *L, const char *s, size_t n,
                                  size_t *outlen) {
  unsigned char *buf = lua_newuserdata(L, n * 3 / 4 + 1);
  long len = b64url_decode(s, n, buf);
  if (len < 0) return NULL;
  *outlen = (size_t)len;
  return buf;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)(ts.tv_nsec / 1000000) / 1000.0;
}

static int l_jwt_verify(lua_State *L) {
  size_t tlen, klen;
  const char *key = luaL_checklstring(L, 2, &klen);
  if (klen == 0) return luaL_argerror(L, 2, "empty secret");
  if (lua_type(L, 1) != LUA_TSTRING) return jwt_fail(L, "malformed token");
  const char *tok = lua_tolstring(L, 1, &tlen);
  const char *d1 = memchr(tok, '.', tlen);
  const char *d2 =
      d1 ? memchr(d1 + 1, '.', tlen - (size_t)(d1 + 1 - tok)) : NULL;
  if (!d2 || memchr(d2 + 1, '.', tlen - (size_t)(d2 + 1 - tok)) || d1 == tok ||
      d2 == d1 + 1)
    return jwt_fail(L, "malformed token");
  box_t *b = box_push(L);
  size_t hlen, plen, slen;
  unsigned char *h = jwt_segment(L, tok, (size_t)(d1 - tok), &hlen);
  if (!h) return jwt_fail(L, "malformed token");
  b->json = json_loadb((const char *)h, hlen, 0, NULL);
  if (!json_is_object(b->json)) return jwt_fail(L, "malformed token");
  const char *alg = json_string_value(json_object_get(b->json, "alg"));
  const EVP_MD *md = NULL;
  if (alg && strcmp(alg, "HS256") == 0)
    md = EVP_sha256();
  else if (alg && strcmp(alg, "HS384") == 0)
    md = EVP_sha384();
  else if (alg && strcmp(alg, "HS512") == 0)
    md = EVP_sha512();
  box_release(b);
  if (!md) return jwt_fail(L, "unsupported alg");

  const char *sig_text = d2 + 1;
  unsigned char *sig =
      jwt_segment(L, sig_text, tlen - (size_t)(sig_text - tok), &slen);
  if (!sig) return jwt_fail(L, "malformed token");
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int maclen = 0;
  if (!HMAC(md, key, (int)klen, (const unsigned char *)tok, (size_t)(d2 - tok),
            mac, &maclen))
    return jwt_fail(L, "bad signature");
  if (slen != maclen || CRYPTO_memcmp(sig, mac, maclen) != 0)
    return jwt_fail(L, "bad signature");

  unsigned char *pl = jwt_segment(L, d1 + 1, (size_t)(d2 - d1 - 1), &plen);
  if (!pl) return jwt_fail(L, "malformed token");
  b->json = json_loadb((const char *)pl, plen, 0, NULL);
  if (!json_is_object(b->json)) {
    box_release(b);
    return jwt_fail(L, "malformed token");
  }
  double now = now_seconds();
  json_t *exp = json_object_get(b->json, "exp");
  json_t *nbf = json_object_get(b->json, "nbf");
  const char *bad = NULL;
  if ((exp && !json_is_number(exp)) || (nbf && !json_is_number(nbf)))
    bad = "malformed token";
  else if (exp && now >= json_number_value(exp))
    bad = "expired";
  else if (nbf && now < json_number_value(nbf))
    bad = "not yet valid";
  if (bad) {
    box_release(b);
    return jwt_fail(L, bad);
  }
  if (mw__lua_push_json(L, b->json, MW_POLICY_JSON_DEPTH)) {
    box_release(b);
    return jwt_fail(L, "malformed token");
  }
  box_release(b);
  return 1;
}

/* ---- log, now, match, copy ---- */

static int l_log(lua_State *L) {
  int level = mw__log_level_parse(luaL_checkstring(L, 1));
  if (level < 0) return luaL_argerror(L, 1, "error|warn|info|debug expected");
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_where(L, 1);
  luaL_addvalue(&b);
  for (int i = 2; i <= n; i++) {
    if (i > 2) luaL_addchar(&b, ' ');
    switch (lua_type(L, i)) {
    case LUA_TSTRING:
    case LUA_TNUMBER:
      lua_pushvalue(L, i);
      break;
    case LUA_TNIL:
      lua_pushliteral(L, "nil");
      break;
    case LUA_TBOOLEAN:
      lua_pushstring(L, lua_toboolean(L, i) ? "true" : "false");
      break;
    default:
      lua_pushfstring(L, "%s: %p", luaL_typename(L, i), lua_topointer(L, i));
      break;
    }
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  mw_log(level, "lua", "%s", lua_tostring(L, -1));
  return 0;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, now_seconds());
  return 1;
}

static int l_match(lua_State *L) {
  const char *pattern = luaL_checkstring(L, 1);
  const char *topic = luaL_checkstring(L, 2);
  lua_pushboolean(L, mw__topic_match(pattern, topic));
  return 1;
}

/* Pushes a deep copy of the value at idx; `seen` maps originals to copies
 * (shared subtables and cycles stay shared). Metatables are kept. */
static void copy_value(lua_State *L, int idx, int seen, int depth) {
  if (lua_type(L, idx) != LUA_TTABLE) {
    lua_pushvalue(L, idx);
    return;
  }
  lua_pushvalue(L, idx);
  lua_rawget(L, seen);
  if (!lua_isnil(L, -1)) return;
  lua_pop(L, 1);
  if (depth > COPY_MAX_DEPTH) luaL_error(L, "copy: nested too deep");
  luaL_checkstack(L, 8, "copy");
  /* A proxy (the event's read-only view) is copied as its backing table,
   * without the proxy's metatable: the copy is a plain, writable table. */
  int src = idx, proxy = mw__lua_unproxy(L, idx);
  if (proxy) src = lua_gettop(L);
  /* Sized up front: growing a table key by key rehashes it every power of
   * two. Keys 1..n go to the array part. */
  int narr = 0, nrec = 0;
  lua_pushnil(L);
  while (lua_next(L, src)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == narr + 1)
      narr++;
    else
      nrec++;
  }
  lua_createtable(L, narr, nrec);
  int t = lua_gettop(L);
  lua_pushvalue(L, idx);
  lua_pushvalue(L, t);
  lua_rawset(L, seen);
  lua_pushnil(L);
  while (lua_next(L, src)) {
    int kv = lua_gettop(L);
    lua_pushvalue(L, kv - 1);
    copy_value(L, kv, seen, depth + 1);
    lua_rawset(L, t);
    lua_pop(L, 1);
  }
  if (!proxy && lua_getmetatable(L, idx)) lua_setmetatable(L, t);
  if (proxy) lua_remove(L, src);
}

static int l_copy(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  lua_createtable(L, 0, 4);
  copy_value(L, 1, 2, 0);
  return 1;
}

void mw__policy_lib_push(lua_State *L) {
  /* The box metatable and the array metatable, in the registry. */
  lua_pushlightuserdata(L, (void *)&box_mt_key);
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, box_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, (void *)&array_mt_key);
  lua_newtable(L);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, (void *)&newindex_key);
  lua_pushcfunction(L, proxy_newindex);
  lua_rawset(L, LUA_REGISTRYINDEX);

  lua_createtable(L, 0, 8);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, l_jwt_verify);
  lua_setfield(L, -2, "verify");
  lua_setfield(L, -2, "jwt");
  lua_createtable(L, 0, 4);
  lua_pushcfunction(L, l_json_encode);
  lua_setfield(L, -2, "encode");
  lua_pushcfunction(L, l_json_decode);
  lua_setfield(L, -2, "decode");
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
  lua_pushlightuserdata(L, (void *)&array_mt_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_setfield(L, -2, "array_mt");
  lua_setfield(L, -2, "json");
  lua_pushcfunction(L, l_log);
  lua_setfield(L, -2, "log");
  lua_pushcfunction(L, l_now);
  lua_setfield(L, -2, "now");
  lua_pushcfunction(L, l_match);
  lua_setfield(L, -2, "match");
  lua_pushcfunction(L, l_copy);
  lua_setfield(L, -2, "copy");
}

/* ---- the sandbox's proxy-aware functions ---- */

/* next(t, k), raw, through proxies. */
static int w_next(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  if (mw__lua_unproxy(L, 1)) lua_replace(L, 1);
  if (lua_next(L, 1)) return 2;
  lua_pushnil(L);
  return 1;
}

/* pairs(t): the built-in next (upvalue 2) for plain tables, w_next
 * (upvalue 1) over a proxy (its backing table is never handed out). */
static int w_pairs(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushvalue(L, lua_upvalueindex(is_proxy(L, 1) ? 1 : 2));
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

static int w_inext(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer i = luaL_checkinteger(L, 2) + 1;
  if (mw__lua_unproxy(L, 1)) lua_replace(L, 1);
  lua_rawgeti(L, 1, (int)i);
  if (lua_isnil(L, -1)) return 0;
  lua_pushinteger(L, i);
  lua_insert(L, -2);
  return 2;
}

/* ipairs(t): the built-in ipairs (upvalue 2) for plain tables. */
static int w_ipairs(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  if (is_proxy(L, 1)) {
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 0);
    return 3;
  }
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_call(L, 1, 3);
  return 3;
}

static int w_rawget(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  if (mw__lua_unproxy(L, 1)) lua_replace(L, 1);
  lua_rawget(L, 1);
  return 1;
}

/* getmetatable: nil for a proxy (as for the plain table it stands for). */
static int w_getmetatable(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (is_proxy(L, 1)) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

static int w_setmetatable(lua_State *L) {
  if (is_proxy(L, 1))
    return luaL_error(L, "setmetatable: the event is read-only "
                         "(change a moonwire.copy(event) instead)");
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

/* Calls upvalue 1 with the arguments, a proxy first argument replaced by
 * its backing table; upvalue 2 true: the call writes to it (the tree is
 * marked dirty). */
static int w_through(lua_State *L) {
  int n = lua_gettop(L);
  if (n >= 1 && lua_type(L, 1) == LUA_TTABLE && mw__lua_unproxy(L, 1)) {
    if (lua_toboolean(L, lua_upvalueindex(2))) mark_dirty(L, 1);
    lua_replace(L, 1);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

static void wrap_through(lua_State *L, int t, const char *name, int writes) {
  lua_getfield(L, t, name);
  if (!lua_isfunction(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  lua_pushboolean(L, writes);
  lua_pushcclosure(L, w_through, 2);
  lua_setfield(L, t, name);
}

/* Installs the proxy-aware pairs, ipairs, next, rawget, unpack,
 * getmetatable, setmetatable and table.* in the environment `env`. */
void mw__lua_sandbox_wrap(lua_State *L, int env) {
  env = abs_index(L, env);
  lua_pushcfunction(L, w_next);
  lua_pushvalue(L, -1);
  lua_setfield(L, env, "next");
  lua_getglobal(L, "next");
  lua_pushcclosure(L, w_pairs, 2);
  lua_setfield(L, env, "pairs");
  lua_pushcfunction(L, w_inext);
  lua_getglobal(L, "ipairs");
  lua_pushcclosure(L, w_ipairs, 2);
  lua_setfield(L, env, "ipairs");
  lua_pushcfunction(L, w_rawget);
  lua_setfield(L, env, "rawget");
  lua_getglobal(L, "getmetatable");
  lua_pushcclosure(L, w_getmetatable, 1);
  lua_setfield(L, env, "getmetatable");
  lua_getglobal(L, "setmetatable");
  lua_pushcclosure(L, w_setmetatable, 1);
  lua_setfield(L, env, "setmetatable");
  wrap_through(L, env, "unpack", 0);
  lua_getfield(L, env, "table");
  if (lua_istable(L, -1)) {
    int t = lua_gettop(L);
    static const char *const writes[] = {"insert", "remove", "sort", NULL};
    static const char *const reads[] = {"concat", "foreach", "foreachi",
                                        "getn",   "maxn",    NULL};
    for (int i = 0; writes[i]; i++)
      wrap_through(L, t, writes[i], 1);
    for (int i = 0; reads[i]; i++)
      wrap_through(L, t, reads[i], 0);
  }
  lua_pop(L, 1);
}
