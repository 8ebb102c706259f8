/* Connection counts per user and per tenant across all workers, for the
 * limits limits.max_connections_per_user / _per_tenant and the tenant rules'
 * max_connections. Thread-safe (one mutex; taken once per connect and once
 * per disconnect, never on the delivery path). */
#ifndef MW_CONN_LIMITS_H
#define MW_CONN_LIMITS_H

#include <stdint.h>

/* Counts one more connection for `user` and `tenant` (either may be NULL)
 * unless that would pass `max_user` or `max_tenant` (0 = no limit). Returns
 * 0 (counted) or MW_ELIMIT with *which set to "user" or "tenant". */
int mw__conn_limits_acquire(const char *user, const char *tenant,
                            int64_t max_user, int64_t max_tenant,
                            const char **which);

/* Uncounts a connection counted by mw__conn_limits_acquire. */
void mw__conn_limits_release(const char *user, const char *tenant);

/* Current count for a user or tenant (tests, metrics). */
int64_t mw__conn_limits_count(const char *kind, const char *name);

/* Frees the tables (at exit). */
void mw__conn_limits_free(void);

#endif
