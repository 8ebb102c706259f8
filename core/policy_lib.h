/* The `moonwire` table handed to policy scripts (SPEC §4: jwt.verify,
 * json.encode/decode, log, now, match, copy) and the Lua <-> jansson
 * conversions the policy engine uses for hook arguments and results.
 * Private to the core (core/policy.c). */
#ifndef MW_POLICY_LIB_H
#define MW_POLICY_LIB_H

#include <jansson.h>
#include <lua.h>
#include <stddef.h>

/* Deepest nesting json.encode / json.decode accept from scripts. */
#define MW_POLICY_JSON_DEPTH 32

/* Pushes a new `moonwire` table (with json.null and json.array_mt) and
 * registers the array metatable in the registry. Allocates: call it in
 * protected mode. */
void mw__policy_lib_push(lua_State *L);

/* Pushes `v` as a Lua value: objects and arrays become tables (arrays carry
 * moonwire.json.array_mt so they encode back as arrays even when empty),
 * null becomes moonwire.json.null (a NULL light userdata). Returns 0, or -1
 * (nothing pushed) when `v` nests deeper than `maxdepth`. Raises a Lua error
 * when out of memory: call it in protected mode. */
int mw__lua_push_json(lua_State *L, const json_t *v, int maxdepth);

/* Converts the value at `idx` to a new jansson value (caller owns it):
 * tables whose keys are exactly 1..n (or that carry the array metatable)
 * become arrays, other tables objects (number keys as text), an empty table
 * {}. Never raises and never allocates Lua memory, provided the caller made
 * room for 3 * maxdepth + 8 stack slots (lua_checkstack). Returns NULL with
 * `err` set for functions, userdata, cycles, NaN/inf, invalid UTF-8, keys of
 * other types, or nesting deeper than `maxdepth`. */
json_t *mw__lua_to_json(lua_State *L, int idx, int maxdepth, char *err,
                        size_t errlen);

/* 1 if the Lua value at `idx` equals `v` as JSON (tables compared key by
 * key; an empty table equals both {} and []). Never raises or allocates (same
 * stack condition as mw__lua_to_json, with `maxdepth` 64). */
int mw__lua_json_equal(lua_State *L, int idx, const json_t *v);

#endif
