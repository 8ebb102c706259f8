/* Metrics registry: counters and gauges with fixed labels, rendered in the
 * Prometheus text format. Values are atomic; registration takes a lock and
 * may happen at any time (results are meant to be cached by callers). */
#ifndef MW_METRICS_H
#define MW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "moonwire/host.h"

/* Finds or registers the series `name{labels}`; `labels` is NULL or
 * `k="v",...`. Never NULL (aborts when the registry is full: a bug). */
mw_metric_t *mw__metric(mw_metric_type_t type, const char *name,
                        const char *help, const char *labels);

/* Adds `delta` (may be negative for gauges). */
void mw__metric_add(mw_metric_t *m, int64_t delta);

/* Current value. */
int64_t mw__metric_value(const mw_metric_t *m);

/* Renders every series; returns a malloc'd string (caller frees), *len set. */
char *mw__metrics_render(size_t *len);

/* Frees the registry (at exit). */
void mw__metrics_free(void);

#endif
