/* Per-user and per-tenant connection counts: see conn_limits.h. */
#include "conn_limits.h"

#include <stdlib.h>
#include <string.h>
#include <uthash.h>
#include <uv.h>

#include "log.h"
#include "moonwire/errno.h"

typedef struct counter {
  char *name;
  int64_t count;
  UT_hash_handle hh;
} counter_t;

static counter_t *users, *tenants;
static uv_mutex_t lock;
static uv_once_t once = UV_ONCE_INIT;

static void init_lock(void) {
  if (uv_mutex_init(&lock)) mw_oom();
}

static counter_t *find(counter_t **table, const char *name, int create) {
  counter_t *c;
  HASH_FIND_STR(*table, name, c);
  if (!c && create) {
    c = mw_xcalloc(1, sizeof *c);
    c->name = mw_xstrdup(name);
    HASH_ADD_KEYPTR(hh, *table, c->name, strlen(c->name), c);
  }
  return c;
}

static void drop(counter_t **table, const char *name) {
  counter_t *c = find(table, name, 0);
  if (!c) return;
  if (--c->count <= 0) {
    HASH_DEL(*table, c);
    free(c->name);
    free(c);
  }
}

int mw__conn_limits_acquire(const char *user, const char *tenant,
                            int64_t max_user, int64_t max_tenant,
                            const char **which) {
  uv_once(&once, init_lock);
  uv_mutex_lock(&lock);
  counter_t *u = user ? find(&users, user, 0) : NULL;
  counter_t *t = tenant ? find(&tenants, tenant, 0) : NULL;
  int rc = 0;
  if (user && max_user > 0 && u && u->count >= max_user) {
    *which = "user";
    rc = MW_ELIMIT;
  } else if (tenant && max_tenant > 0 && t && t->count >= max_tenant) {
    *which = "tenant";
    rc = MW_ELIMIT;
  } else {
    if (user) find(&users, user, 1)->count++;
    if (tenant) find(&tenants, tenant, 1)->count++;
  }
  uv_mutex_unlock(&lock);
  return rc;
}

void mw__conn_limits_release(const char *user, const char *tenant) {
  uv_once(&once, init_lock);
  uv_mutex_lock(&lock);
  if (user) drop(&users, user);
  if (tenant) drop(&tenants, tenant);
  uv_mutex_unlock(&lock);
}

int64_t mw__conn_limits_count(const char *kind, const char *name) {
  uv_once(&once, init_lock);
  uv_mutex_lock(&lock);
  counter_t *c = find(strcmp(kind, "user") == 0 ? &users : &tenants, name, 0);
  int64_t n = c ? c->count : 0;
  uv_mutex_unlock(&lock);
  return n;
}

void mw__conn_limits_free(void) {
  uv_once(&once, init_lock);
  uv_mutex_lock(&lock);
  counter_t *c, *tmp;
  HASH_ITER(hh, users, c, tmp) {
    HASH_DEL(users, c);
    free(c->name);
    free(c);
  }
  HASH_ITER(hh, tenants, c, tmp) {
    HASH_DEL(tenants, c);
    free(c->name);
    free(c);
  }
  uv_mutex_unlock(&lock);
}
