/* Metrics registry and Prometheus rendering; see metrics.h. */
#include "metrics.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "log.h"

#define MW_METRICS_MAX 512

struct mw_metric {
  mw_metric_type_t type;
  char *name;
  char *help;
  char *labels;
  _Atomic int64_t value;
};

static struct mw_metric *series[MW_METRICS_MAX];
static size_t series_count;
static uv_once_t lock_once = UV_ONCE_INIT;
static uv_mutex_t lock;

static void lock_init(void) {
  if (uv_mutex_init(&lock)) mw_oom();
}

mw_metric_t *mw__metric(mw_metric_type_t type, const char *name,
                        const char *help, const char *labels) {
  uv_once(&lock_once, lock_init);
  const char *lb = labels ? labels : "";
  uv_mutex_lock(&lock);
  for (size_t i = 0; i < series_count; i++) {
    if (strcmp(series[i]->name, name) == 0 &&
        strcmp(series[i]->labels, lb) == 0) {
      uv_mutex_unlock(&lock);
      return series[i];
    }
  }
  if (series_count == MW_METRICS_MAX) {
    uv_mutex_unlock(&lock);
    mw_log(MW_LOG_ERROR, "metrics", "registry full registering %s", name);
    abort();
  }
  struct mw_metric *m = mw_xcalloc(1, sizeof *m);
  m->type = type;
  m->name = mw_xstrdup(name);
  m->help = mw_xstrdup(help ? help : "");
  m->labels = mw_xstrdup(lb);
  atomic_init(&m->value, 0);
  series[series_count++] = m;
  uv_mutex_unlock(&lock);
  return m;
}

void mw__metric_add(mw_metric_t *m, int64_t delta) {
  atomic_fetch_add_explicit(&m->value, delta, memory_order_relaxed);
}

int64_t mw__metric_value(const mw_metric_t *m) {
  return atomic_load_explicit(&((mw_metric_t *)m)->value, memory_order_relaxed);
}

static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void append(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < *cap - *len) {
      *len += (size_t)n;
      return;
    }
    *cap *= 2;
    *buf = mw_xrealloc(*buf, *cap);
  }
}

char *mw__metrics_render(size_t *out_len) {
  uv_once(&lock_once, lock_init);
  size_t cap = 8192, len = 0;
  char *buf = mw_xmalloc(cap);
  buf[0] = 0;
  uv_mutex_lock(&lock);
  /* Group series by name: HELP and TYPE once per name. */
  char *done = mw_xcalloc(series_count + 1, 1);
  for (size_t i = 0; i < series_count; i++) {
    if (done[i]) continue;
    struct mw_metric *m = series[i];
    append(&buf, &len, &cap, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help,
           m->name, m->type == MW_METRIC_COUNTER ? "counter" : "gauge");
    for (size_t j = i; j < series_count; j++) {
      struct mw_metric *s = series[j];
      if (done[j] || strcmp(s->name, m->name) != 0) continue;
      done[j] = 1;
      long long v = (long long)mw__metric_value(s);
      if (s->labels[0])
        append(&buf, &len, &cap, "%s{%s} %lld\n", s->name, s->labels, v);
      else
        append(&buf, &len, &cap, "%s %lld\n", s->name, v);
    }
  }
  free(done);
  uv_mutex_unlock(&lock);
  *out_len = len;
  return buf;
}

void mw__metrics_free(void) {
  uv_once(&lock_once, lock_init);
  uv_mutex_lock(&lock);
  for (size_t i = 0; i < series_count; i++) {
    free(series[i]->name);
    free(series[i]->help);
    free(series[i]->labels);
    free(series[i]);
  }
  series_count = 0;
  uv_mutex_unlock(&lock);
}
