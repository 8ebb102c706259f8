/* Plugin loader: dlopen, ABI checks, plugin lists.
 *
 * Depends only on libc, libdl and the public headers (errors are written to
 * the caller's buffer, never logged here), so tests compile it standalone.
 * The loader never calls into a plugin: the core calls init and the rest of
 * the lifecycle later. */
#define _GNU_SOURCE
#include "plugin_loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The smallest struct an ABI 1.0 plugin can have: up to and including the
 * storage pointer (reserved[] may be cut by a future shrink, never fields). */
#define MW_PLUGIN_V1_MIN_SIZE                                                  \
  (offsetof(mw_plugin_v1_t, storage) + sizeof(void *))
/* The smallest storage ops table of ABI 1.0: up to and including healthy. */
#define MW_STORAGE_V1_MIN_SIZE                                                 \
  (offsetof(mw_storage_v1_t, healthy) + sizeof(void *))
/* The header every plugin struct of every ABI starts with. */
#define MW_PLUGIN_HEADER_SIZE (offsetof(mw_plugin_v1_t, kind))

#define FIX_TEXT "rebuild it against moonwire's headers"

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;

  if (err == NULL || errlen == 0) return;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

/* True when the field ending at `end` lies within the readable bytes. */
static int readable(size_t avail, size_t end) {
  return end <= avail;
}

/* Validates a plugin struct against this host's ABI (see the header). */
int mw__plugin_check(const mw_plugin_v1_t *p, size_t symbol_size,
                     const char *path, char *err, size_t errlen) {
  size_t avail;
  const char *name = NULL;
  char label[256];
  unsigned maj, min;

  if (path == NULL) path = "?";
  if (symbol_size != 0 && symbol_size < MW_PLUGIN_HEADER_SIZE) {
    set_err(err, errlen,
            "plugin (%s): symbol %s is only %zu bytes, too small for the "
            "plugin header (this moonwire speaks ABI %d.%d): " FIX_TEXT
            " (ABI %d.%d)",
            path, MW_PLUGIN_SYMBOL, symbol_size, MW_ABI_MAJOR, MW_ABI_MINOR,
            MW_ABI_MAJOR, MW_ABI_MINOR);
    return MW_EABI;
  }
  maj = p->abi_major;
  min = p->abi_minor;

  /* What may be read: struct_size, bounded by the object's own size. The
   * name is read only if it lies inside both. */
  avail = p->struct_size;
  if (symbol_size != 0 && symbol_size < avail) avail = symbol_size;
  if (readable(avail, offsetof(mw_plugin_v1_t, name) + sizeof(char *)))
    name = p->name;
  if (name != NULL && name[0] != '\0')
    snprintf(label, sizeof label, "plugin '%s' (%s)", name, path);
  else
    snprintf(label, sizeof label, "plugin (%s)", path);

  if (maj != MW_ABI_MAJOR || min > MW_ABI_MINOR) {
    set_err(
        err, errlen,
        "%s was built for ABI %u.%u, this moonwire speaks ABI %d.%d: " FIX_TEXT
        " (ABI %d.%d)",
        label, maj, min, MW_ABI_MAJOR, MW_ABI_MINOR, MW_ABI_MAJOR,
        MW_ABI_MINOR);
    return MW_EABI;
  }
  if (p->struct_size < MW_PLUGIN_V1_MIN_SIZE) {
    set_err(
        err, errlen,
        "%s: short struct (struct_size %u, ABI %d.0 needs at least %zu "
        "bytes); built for ABI %u.%u, this moonwire speaks ABI %d.%d: " FIX_TEXT
        " (ABI %d.%d)",
        label, (unsigned)p->struct_size, MW_ABI_MAJOR, MW_PLUGIN_V1_MIN_SIZE,
        maj, min, MW_ABI_MAJOR, MW_ABI_MINOR, MW_ABI_MAJOR, MW_ABI_MINOR);
    return MW_EABI;
  }
  if (symbol_size != 0 && p->struct_size > symbol_size) {
    set_err(err, errlen,
            "%s: struct_size %u is larger than the symbol %s itself (%zu "
            "bytes); built for ABI %u.%u, this moonwire speaks ABI %d.%d: "
            "set struct_size with MW_PLUGIN_V1_HEADER and " FIX_TEXT
            " (ABI %d.%d)",
            label, (unsigned)p->struct_size, MW_PLUGIN_SYMBOL, symbol_size, maj,
            min, MW_ABI_MAJOR, MW_ABI_MINOR, MW_ABI_MAJOR, MW_ABI_MINOR);
    return MW_EABI;
  }
  if (name == NULL || name[0] == '\0') {
    set_err(err, errlen,
            "%s has no name; built for ABI %u.%u, this moonwire speaks ABI "
            "%d.%d: give it a name with MW_PLUGIN_V1_HEADER and " FIX_TEXT
            " (ABI %d.%d)",
            label, maj, min, MW_ABI_MAJOR, MW_ABI_MINOR, MW_ABI_MAJOR,
            MW_ABI_MINOR);
    return MW_EABI;
  }
  if (p->kind != MW_PLUGIN_TRANSPORT && p->kind != MW_PLUGIN_STORAGE) {
    set_err(err, errlen,
            "%s has unknown kind %u (this moonwire knows %d = transport, %d = "
            "storage); built for ABI %u.%u, this moonwire speaks ABI %d.%d: "
            "fix its kind and " FIX_TEXT " (ABI %d.%d)",
            label, (unsigned)p->kind, MW_PLUGIN_TRANSPORT, MW_PLUGIN_STORAGE,
            maj, min, MW_ABI_MAJOR, MW_ABI_MINOR, MW_ABI_MAJOR, MW_ABI_MINOR);
    return MW_EABI;
  }
  if (p->init == NULL) {
    set_err(err, errlen,
            "%s has no init function; built for ABI %u.%u, this moonwire "
            "speaks ABI %d.%d: set .init and " FIX_TEXT " (ABI %d.%d)",
            label, maj, min, MW_ABI_MAJOR, MW_ABI_MINOR, MW_ABI_MAJOR,
            MW_ABI_MINOR);
    return MW_EABI;
  }
  if (p->kind == MW_PLUGIN_STORAGE) {
    const mw_storage_v1_t *s = p->storage;

    if (s == NULL) {
      set_err(err, errlen,
              "%s is a storage plugin without storage operations; built for "
              "ABI %u.%u, this moonwire speaks ABI %d.%d: point .storage at a "
              "mw_storage_v1_t and " FIX_TEXT " (ABI %d.%d)",
              label, maj, min, MW_ABI_MAJOR, MW_ABI_MINOR, MW_ABI_MAJOR,
              MW_ABI_MINOR);
      return MW_EABI;
    }
    if (s->struct_size < MW_STORAGE_V1_MIN_SIZE) {
      set_err(
          err, errlen,
          "%s: short storage struct (struct_size %u, ABI %d.0 needs at "
          "least %zu bytes); built for ABI %u.%u, this moonwire speaks "
          "ABI %d.%d: set .struct_size = sizeof(mw_storage_v1_t) and " FIX_TEXT
          " (ABI %d.%d)",
          label, (unsigned)s->struct_size, MW_ABI_MAJOR, MW_STORAGE_V1_MIN_SIZE,
          maj, min, MW_ABI_MAJOR, MW_ABI_MINOR, MW_ABI_MAJOR, MW_ABI_MINOR);
      return MW_EABI;
    }
    if (s->publish == NULL || s->position == NULL || s->history == NULL ||
        s->healthy == NULL) {
      set_err(err, errlen,
              "%s: storage operations incomplete (publish, position, history "
              "and healthy are required); built for ABI %u.%u, this moonwire "
              "speaks ABI %d.%d: set them and " FIX_TEXT " (ABI %d.%d)",
              label, maj, min, MW_ABI_MAJOR, MW_ABI_MINOR, MW_ABI_MAJOR,
              MW_ABI_MINOR);
      return MW_EABI;
    }
  }
  return 0;
}

/* The size the object file declares for the symbol at `addr`, 0 if unknown. */
static size_t symbol_size_of(const void *addr) {
#ifdef __GLIBC__ /* dladdr1 and RTLD_DL_SYMENT (an enum, not a macro) */
  Dl_info info;
  const ElfW(Sym) *sym = NULL;

  if (dladdr1(addr, &info, (void **)&sym, RTLD_DL_SYMENT) == 0) return 0;
  if (sym == NULL || info.dli_saddr != addr) return 0;
  return (size_t)sym->st_size;
#else
  (void)addr;
  return 0;
#endif
}

/* dlopens `path`, finds and checks its symbol, copies it into a handle. */
int mw__plugin_load_file(const char *path, struct mw_plugin_handle **out,
                         char *err, size_t errlen) {
  struct mw_plugin_handle *h = NULL;
  const mw_plugin_v1_t *p;
  const char *dlerr;
  size_t symsize, n;
  void *dl;
  int rc;

  *out = NULL;
  dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (dl == NULL) {
    dlerr = dlerror();
    set_err(err, errlen, "plugin (%s) cannot be loaded: %s", path,
            dlerr ? dlerr : "unknown dlopen error");
    return MW_ENOTFOUND;
  }
  dlerror(); /* clear */
  p = dlsym(dl, MW_PLUGIN_SYMBOL);
  if (p == NULL) {
    dlerr = dlerror();
    set_err(err, errlen,
            "plugin (%s) does not export %s (%s): a moonwire plugin must "
            "export `const mw_plugin_v1_t mw_plugin_v1` with default "
            "visibility (this moonwire speaks ABI %d.%d); " FIX_TEXT
            " (ABI %d.%d)",
            path, MW_PLUGIN_SYMBOL, dlerr ? dlerr : "symbol is NULL",
            MW_ABI_MAJOR, MW_ABI_MINOR, MW_ABI_MAJOR, MW_ABI_MINOR);
    rc = MW_ENOTFOUND;
    goto fail;
  }
  symsize = symbol_size_of(p);
  rc = mw__plugin_check(p, symsize, path, err, errlen);
  if (rc != 0) goto fail;

  h = calloc(1, sizeof *h);
  if (h == NULL || (h->path = strdup(path)) == NULL) {
    set_err(err, errlen, "plugin (%s): out of memory", path);
    rc = MW_ENOMEM;
    goto fail;
  }
  h->dl = dl;
  /* Read only what the plugin declared; the rest of def stays zero. */
  n = p->struct_size < sizeof h->def ? p->struct_size : sizeof h->def;
  memcpy(&h->def, p, n);
  *out = h;
  return 0;

fail:
  if (h != NULL) {
    free(h->path);
    free(h);
  }
  dlclose(dl);
  return rc;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ends_with_so(const char *s) {
  size_t n = strlen(s);

  return n > 3 && strcmp(s + n - 3, ".so") == 0;
}

/* Loads every *.so of `dir` in name order; all or nothing. */
int mw__plugin_load_dir(const char *dir, mw_plugin_list_t *out, char *err,
                        size_t errlen) {
  char **names = NULL, **tmp;
  size_t nnames = 0, cap = 0, i, j;
  struct mw_plugin_handle *h, **items;
  struct dirent *de;
  char *path = NULL;
  DIR *d;
  int rc = 0;

  out->items = NULL;
  out->count = 0;
  d = opendir(dir);
  if (d == NULL) {
    set_err(err, errlen, "plugin dir %s cannot be opened: %s", dir,
            strerror(errno));
    return MW_ENOTFOUND;
  }
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.' || !ends_with_so(de->d_name)) continue;
    if (nnames == cap) {
      cap = cap ? cap * 2 : 16;
      tmp = realloc(names, cap * sizeof *names);
      if (tmp == NULL) goto oom;
      names = tmp;
    }
    if ((names[nnames] = strdup(de->d_name)) == NULL) goto oom;
    nnames++;
  }
  closedir(d);
  d = NULL;
  if (nnames > 1) qsort(names, nnames, sizeof *names, cmp_names);

  for (i = 0; i < nnames; i++) {
    size_t len = strlen(dir) + strlen(names[i]) + 2;

    free(path);
    if ((path = malloc(len)) == NULL) goto oom;
    snprintf(path, len, "%s/%s", dir, names[i]);
    rc = mw__plugin_load_file(path, &h, err, errlen);
    if (rc != 0) goto fail;
    for (j = 0; j < out->count; j++) {
      const mw_plugin_v1_t *o = &out->items[j]->def;

      if (o->kind == h->def.kind && strcmp(o->name, h->def.name) == 0) {
        set_err(err, errlen,
                "plugin '%s' (%s): a %s plugin of that name was already "
                "loaded from %s; remove one of them",
                h->def.name, path,
                h->def.kind == MW_PLUGIN_STORAGE ? "storage" : "transport",
                out->items[j]->path);
        mw__plugin_unload(h);
        rc = MW_EEXIST;
        goto fail;
      }
    }
    items = realloc(out->items, (out->count + 1) * sizeof *items);
    if (items == NULL) {
      mw__plugin_unload(h);
      goto oom;
    }
    out->items = items;
    out->items[out->count++] = h;
  }
  rc = 0;
  goto done;

oom:
  set_err(err, errlen, "loading plugins from %s: out of memory", dir);
  rc = MW_ENOMEM;
fail:
  mw__plugin_list_free(out);
done:
  if (d != NULL) closedir(d);
  for (i = 0; i < nnames; i++)
    free(names[i]);
  free(names);
  free(path);
  return rc;
}

/* Linear search by kind and name; the list is short. */
struct mw_plugin_handle *mw__plugin_find(const mw_plugin_list_t *list,
                                         mw_plugin_kind_t kind,
                                         const char *name) {
  size_t i;

  for (i = 0; i < list->count; i++) {
    struct mw_plugin_handle *h = list->items[i];

    if (h->def.kind == (uint32_t)kind && h->def.name != NULL &&
        strcmp(h->def.name, name) == 0)
      return h;
  }
  return NULL;
}

/* dlcloses and frees one handle. Also frees the wstates array (the core
 * allocates it with malloc); the per-worker states themselves belong to the
 * plugin (worker_stop). */
void mw__plugin_unload(struct mw_plugin_handle *h) {
  if (h == NULL) return;
  if (h->dl != NULL) dlclose(h->dl);
  free(h->wstates);
  free(h->path);
  free(h);
}

/* Unloads every handle and empties the list. */
void mw__plugin_list_free(mw_plugin_list_t *list) {
  size_t i;

  for (i = 0; i < list->count; i++)
    mw__plugin_unload(list->items[i]);
  free(list->items);
  list->items = NULL;
  list->count = 0;
}
