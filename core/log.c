/* Logging to stderr as text or JSON lines; see log.h. */
#include "log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int log_threshold = MW_LOG_INFO;
static int log_json = 0;

static const char *level_names[] = {"error", "warn", "info", "debug"};

void mw__log_setup(int level, int json) {
  log_threshold = level;
  log_json = json;
}

int mw__log_level_parse(const char *s) {
  for (int i = 0; i < 4; i++)
    if (strcasecmp(s, level_names[i]) == 0) return i;
  if (strcasecmp(s, "warning") == 0) return MW_LOG_WARN;
  return -1;
}

void mw_log(int level, const char *subsystem, const char *fmt, ...) {
  if (level > log_threshold || level < 0) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[40];
  size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(tv.tv_usec / 1000));

  char line[2600];
  int len;
  if (log_json) {
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:s}", "ts", ts, "level", level_names[level],
                  "subsystem", subsystem, "msg", msg);
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    len = snprintf(line, sizeof line, "%s\n", text ? text : "{}");
    free(text);
    json_decref(o);
  } else {
    len = snprintf(line, sizeof line, "%s %-5s [%s] %s\n", ts,
                   level_names[level], subsystem, msg);
  }
  if (len > (int)sizeof line - 1) {
    len = (int)sizeof line - 1;
    line[len - 1] = '\n';
  }
  /* One write per line: lines of several threads do not interleave. */
  ssize_t w = write(STDERR_FILENO, line, (size_t)len);
  (void)w;
}

_Noreturn void mw_oom(void) {
  static const char m[] = "moonwire: out of memory\n";
  ssize_t w = write(STDERR_FILENO, m, sizeof m - 1);
  (void)w;
  abort();
}

void *mw_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) mw_oom();
  return p;
}

void *mw_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) mw_oom();
  return p;
}

void *mw_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) mw_oom();
  return q;
}

char *mw_xstrdup(const char *s) {
  char *p = strdup(s);
  if (!p) mw_oom();
  return p;
}

char *mw_xstrndup(const char *s, size_t n) {
  char *p = strndup(s, n);
  if (!p) mw_oom();
  return p;
}
