/* Loads plugins from a directory: dlopen, ABI checks, lifecycle calls.
 * Private to the core. */
#ifndef MW_PLUGIN_LOADER_H
#define MW_PLUGIN_LOADER_H

#include <stddef.h>

#include "moonwire/plugin.h"

/* One loaded plugin. `def` is a zero-filled copy of the plugin's struct, of
 * which only struct_size bytes were read. */
struct mw_plugin_handle {
  char *path;         /* owned */
  void *dl;           /* dlopen handle */
  mw_plugin_v1_t def; /* copy, fields past struct_size zeroed */
  void *state;        /* from init */
  void **wstates;     /* per worker, from worker_start (worker_count slots) */
  int initialized;    /* init returned 0 */
};

typedef struct mw_plugin_list {
  struct mw_plugin_handle **items; /* owned */
  size_t count;
} mw_plugin_list_t;

/* Checks a plugin struct found in `path` against this host's ABI. Returns 0,
 * or MW_EABI with a one-line message in `err` naming the plugin, both
 * versions and the fix. `symbol_size` is the size the object file declares
 * for the symbol (0 if unknown). */
int mw__plugin_check(const mw_plugin_v1_t *p, size_t symbol_size,
                     const char *path, char *err, size_t errlen);

/* Opens one shared object and checks its symbol. On success *out is a new
 * handle (caller owns; free with mw__plugin_unload). Returns 0, MW_ENOTFOUND
 * (cannot open / no symbol) or MW_EABI; `err` tells why. */
int mw__plugin_load_file(const char *path, struct mw_plugin_handle **out,
                         char *err, size_t errlen);

/* Loads every "*.so" of `dir`, sorted by name. Any refusal fails the whole
 * load (a server must not start with a plugin silently missing). Returns 0 or
 * the first error, with `err` set. */
int mw__plugin_load_dir(const char *dir, mw_plugin_list_t *out, char *err,
                        size_t errlen);

/* The first plugin of `kind` named `name`, or NULL. */
struct mw_plugin_handle *mw__plugin_find(const mw_plugin_list_t *list,
                                         mw_plugin_kind_t kind,
                                         const char *name);

/* dlcloses and frees one handle (does not call destroy). */
void mw__plugin_unload(struct mw_plugin_handle *h);

/* Unloads every plugin and empties the list. */
void mw__plugin_list_free(mw_plugin_list_t *list);

#endif
