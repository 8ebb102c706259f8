/* Logging: one line per call, text or JSON, to stderr. Thread-safe. */
#ifndef MW_LOG_H
#define MW_LOG_H

#include "moonwire/host.h"

/* Sets the threshold (MW_LOG_*) and the format (json = 1 for JSON lines). */
void mw__log_setup(int level, int json);

/* Logs one line at `level` for `subsystem` if the level passes. */
void mw_log(int level, const char *subsystem, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Parses "error|warn|info|debug"; returns the level or -1. */
int mw__log_level_parse(const char *s);

/* A failed small internal allocation: logs and aborts. */
_Noreturn void mw_oom(void);

/* malloc/calloc/realloc/strdup that abort on failure (small internal sizes). */
void *mw_xmalloc(size_t n);
void *mw_xcalloc(size_t n, size_t size);
void *mw_xrealloc(void *p, size_t n);
char *mw_xstrdup(const char *s);
char *mw_xstrndup(const char *s, size_t n);

/* The text for an MW_E* or libuv error code. */
const char *mw_strerror(int code);

#endif
