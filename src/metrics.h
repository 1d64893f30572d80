/*
 * A Prometheus metrics registry: counters, gauges and histograms with labels,
 * rendered in the text exposition format 0.0.4.
 *
 * A family (name, help, type, label names) holds series, one per combination
 * of label values. Hot paths look a series up once and keep the pointer:
 * series live as long as the registry, and updating one is lock-free for
 * counters and gauges (atomics) and takes the series' own mutex for
 * histograms. Gauges whose value belongs to another module (the draining
 * state, running tasks) are callbacks read at scrape time, so the metrics code
 * never holds or sets another module's state.
 *
 * Registration happens at start-up (not thread-safe against a concurrent
 * render); updates and ts_metrics_render() are safe from any thread.
 */
#ifndef TS_METRICS_H
#define TS_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct ts_metrics;
struct ts_family;
struct ts_series;

enum ts_metric_type { TS_METRIC_COUNTER, TS_METRIC_GAUGE, TS_METRIC_HISTOGRAM };

#define TS_METRICS_MAX_LABELS 4

int ts_metrics_new(struct ts_metrics **out);
void ts_metrics_free(struct ts_metrics *m);

/*
 * Register a family. `labels` holds `nlabels` label names (may be NULL when
 * 0). For histograms, `buckets` holds `nbuckets` increasing upper bounds (the
 * +Inf bucket is implicit); NULL/0 for other types. Names are checked against
 * the Prometheus grammar. Returns the family (owned by the registry) or NULL
 * (bad name, duplicate name, out of memory). A name is also a duplicate when it
 * clashes with a histogram's _bucket/_sum/_count or a process_* metric. A
 * family without series is left out of the rendering.
 */
struct ts_family *ts_metrics_family(struct ts_metrics *m, enum ts_metric_type type,
                                    const char *name, const char *help, size_t nlabels,
                                    const char *const *labels, const double *buckets,
                                    size_t nbuckets);

/* The series with these label values (as many as the family's labels; NULL
 * when it has none), created on first use. Values are escaped on output. The
 * series lives as long as the registry. NULL on out of memory. Any thread. */
struct ts_series *ts_family_series(struct ts_family *f, const char *const *values);

/* Shorthand for a family without labels: register and return its one series. */
struct ts_series *ts_metrics_simple(struct ts_metrics *m, enum ts_metric_type type,
                                    const char *name, const char *help);

void ts_series_inc(struct ts_series *s);               /* counter or gauge */
void ts_series_add(struct ts_series *s, uint64_t n);   /* counter or gauge */
void ts_series_sub(struct ts_series *s, uint64_t n);   /* gauge */
void ts_series_set(struct ts_series *s, double v);     /* gauge */
void ts_series_observe(struct ts_series *s, double v); /* histogram */
double ts_series_value(struct ts_series *s);           /* counter or gauge (tests) */
uint64_t ts_series_count(struct ts_series *s);         /* histogram observations (tests) */

/* A gauge (no labels) whose value is fn(arg) at scrape time. `fn` is called
 * from the scraping thread and must not block for long nor call into the
 * registry. Returns 0, -EINVAL (bad name, NULL fn), -EEXIST or -ENOMEM. */
typedef double ts_gauge_fn(void *arg);
int ts_metrics_gauge_fn(struct ts_metrics *m, const char *name, const char *help, ts_gauge_fn *fn,
                        void *arg);

/* Render every family (and the process_* set read from /proc/self) in the
 * text format. `*out` is malloc'd, NUL-terminated; the caller frees it.
 * Returns 0, -ENOMEM, or -E2BIG when the text would pass 16 MiB. */
int ts_metrics_render(struct ts_metrics *m, char **out, size_t *len);

/* The content type to serve the rendering with. */
#define TS_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

#endif
