/*
 * The metrics registry and its text rendering (Prometheus exposition format
 * 0.0.4).
 *
 * A registry is a list of families in registration order; a family is a list
 * of series in creation order. Both lists only grow: nothing is removed before
 * ts_metrics_free(), so a series pointer handed out stays valid and a reader
 * that took a snapshot of a list's head and tail under its mutex may walk the
 * nodes between them after dropping it (their links were written before the
 * snapshot, and later appends only touch the tail's link). The render uses
 * that, so a scrape never holds a family's mutex while it formats.
 *
 * Updates: counters are an atomic uint64_t; gauges keep a double's bits in an
 * atomic uint64_t and add with a compare-exchange loop; histograms take the
 * series' own mutex, so a scrape sees a bucket set, sum and count that agree.
 * Callback gauges have no series: their function runs on the scraping thread.
 *
 * Locking: the registry's `mu` guards its family list (registration against a
 * render); a family's `mu` guards its series list; a series' `mu` guards a
 * histogram's numbers. They are never held together except registry -> family
 * during a render's snapshot. Any thread may update and render.
 *
 * Numbers are formatted under the "C" numeric locale (uselocale() on the
 * rendering thread only), so an embedder's setlocale() cannot turn a decimal
 * point into a comma. The process_* set comes from /proc/self at render time;
 * a metric whose source cannot be read is left out rather than failing the
 * scrape.
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "metrics.h"
#include "util.h"

/* A rendering larger than this is refused (-E2BIG) instead of growing without
 * bound; ours is a few tens of KiB. */
#define RENDER_BYTES_MAX ((size_t)16 << 20)

/* Longest text format_double() produces ("-1.2345678901234567e-308"), with
 * room to spare. */
#define NUMBER_CHARS 40

struct ts_series {
    struct ts_series *next; /* creation order; written under family->mu */
    struct ts_family *family;
    uint64_t hash;                             /* of the label values, to skip most strcmp()s */
    const char *values[TS_METRICS_MAX_LABELS]; /* family->nlabels of them, immutable */
    _Atomic uint64_t value;                    /* counter: the count; gauge: the bits of a double */
    pthread_mutex_t mu;                        /* histograms: guards sum, count and counts[] */
    double sum;
    uint64_t count;
    uint64_t counts[]; /* histograms: observations per bucket, not cumulative;
                          counts[nbuckets] is the +Inf overflow */
};

struct ts_family {
    struct ts_family *next; /* registration order; written under registry->mu */
    enum ts_metric_type type;
    const char *name;
    const char *help; /* NULL: no HELP line */
    size_t nlabels;
    const char *labels[TS_METRICS_MAX_LABELS];
    ts_gauge_fn *fn; /* callback gauges only; they have no series */
    void *fn_arg;
    pthread_mutex_t mu; /* guards head, tail and every series' next */
    struct ts_series *head;
    struct ts_series *tail;
    size_t nbuckets;  /* finite upper bounds; the +Inf bucket is implicit */
    double buckets[]; /* strictly increasing */
};

struct ts_metrics {
    pthread_mutex_t mu; /* guards head, tail and every family's next */
    struct ts_family *head;
    struct ts_family *tail;
    locale_t c_numeric; /* for formatting and parsing numbers while rendering */
};

/* Names the process_* set renders; a registered family may not shadow them. */
static const char *const process_names[] = {
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
};

static const char *const plain_suffixes[] = {""};
static const char *const histogram_suffixes[] = {"", "_bucket", "_sum", "_count"};

static const char *const type_names[] = {
    [TS_METRIC_COUNTER] = "counter",
    [TS_METRIC_GAUGE] = "gauge",
    [TS_METRIC_HISTOGRAM] = "histogram",
};

static bool
is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool
is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool
valid_metric_name(const char *s)
{
    if (s == NULL || !(is_alpha(*s) || *s == '_' || *s == ':'))
        return false;
    for (s++; *s != '\0'; s++) {
        if (!(is_alpha(*s) || is_digit(*s) || *s == '_' || *s == ':'))
            return false;
    }
    return true;
}

/* Names starting with "__" are reserved for Prometheus itself. */
static bool
valid_label_name(const char *s)
{
    if (s == NULL || !(is_alpha(*s) || *s == '_'))
        return false;
    if (s[0] == '_' && s[1] == '_')
        return false;
    for (s++; *s != '\0'; s++) {
        if (!(is_alpha(*s) || is_digit(*s) || *s == '_'))
            return false;
    }
    return true;
}

static size_t
series_suffixes(enum ts_metric_type type, const char *const **out)
{
    if (type == TS_METRIC_HISTOGRAM) {
        *out = histogram_suffixes;
        return TS_ARRAY_SIZE(histogram_suffixes);
    }
    *out = plain_suffixes;
    return TS_ARRAY_SIZE(plain_suffixes);
}

/* Whether a+sa and b+sb spell the same string. */
static bool
joined_equal(const char *a, const char *sa, const char *b, const char *sb)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t n = la + strlen(sa);
    size_t i;

    if (n != lb + strlen(sb))
        return false;
    for (i = 0; i < n; i++) {
        char ca = i < la ? a[i] : sa[i - la];
        char cb = i < lb ? b[i] : sb[i - lb];

        if (ca != cb)
            return false;
    }
    return true;
}

/* A histogram "x" also owns x_bucket, x_sum and x_count: a counter named
 * x_count next to it would make the exposition ambiguous, so the check covers
 * every name a family puts on the wire. Registry mutex held. */
static bool
name_taken(const struct ts_metrics *m, enum ts_metric_type type, const char *name)
{
    const char *const *mine, *const *theirs;
    size_t nmine = series_suffixes(type, &mine);
    const struct ts_family *f;
    size_t i, j, ntheirs;

    for (i = 0; i < nmine; i++) {
        for (j = 0; j < TS_ARRAY_SIZE(process_names); j++) {
            if (joined_equal(name, mine[i], process_names[j], ""))
                return true;
        }
    }
    for (f = m->head; f != NULL; f = f->next) {
        ntheirs = series_suffixes(f->type, &theirs);
        for (i = 0; i < nmine; i++) {
            for (j = 0; j < ntheirs; j++) {
                if (joined_equal(name, mine[i], f->name, theirs[j]))
                    return true;
            }
        }
    }
    return false;
}

static int
check_labels(enum ts_metric_type type, size_t nlabels, const char *const *labels)
{
    size_t i, j;

    if (nlabels > TS_METRICS_MAX_LABELS || (nlabels > 0 && labels == NULL))
        return -EINVAL;
    for (i = 0; i < nlabels; i++) {
        if (!valid_label_name(labels[i]))
            return -EINVAL;
        /* `le` is the bucket label the histogram adds itself. */
        if (type == TS_METRIC_HISTOGRAM && strcmp(labels[i], "le") == 0)
            return -EINVAL;
        for (j = 0; j < i; j++) {
            if (strcmp(labels[i], labels[j]) == 0)
                return -EINVAL;
        }
    }
    return 0;
}

/* Validates the bounds and returns how many to keep: a trailing +Inf is
 * dropped because the +Inf bucket is always there. */
static int
check_buckets(enum ts_metric_type type, const double *buckets, size_t nbuckets, size_t *keep)
{
    size_t i;

    if (type != TS_METRIC_HISTOGRAM)
        return buckets == NULL && nbuckets == 0 ? 0 : -EINVAL;
    if (nbuckets > 0 && buckets == NULL)
        return -EINVAL;
    if (nbuckets > 0 && buckets[nbuckets - 1] == (double)INFINITY)
        nbuckets--;
    for (i = 0; i < nbuckets; i++) {
        if (isnan(buckets[i]) || isinf(buckets[i]))
            return -EINVAL;
        if (i > 0 && !(buckets[i] > buckets[i - 1]))
            return -EINVAL;
    }
    *keep = nbuckets;
    return 0;
}

/* Copies `s` to the bump area at `*p`. */
static const char *
stash(char **p, const char *s)
{
    size_t n = strlen(s) + 1;
    char *copy = *p;

    memcpy(copy, s, n);
    *p += n;
    return copy;
}

static int
add_family(struct ts_metrics *m, enum ts_metric_type type, const char *name, const char *help,
           size_t nlabels, const char *const *labels, const double *buckets, size_t nbuckets,
           ts_gauge_fn *fn, void *fn_arg, struct ts_family **out)
{
    struct ts_family *f;
    size_t keep = 0, size, i;
    char *strings;
    int err;

    if (m == NULL || (unsigned)type >= TS_ARRAY_SIZE(type_names) || !valid_metric_name(name))
        return -EINVAL;
    err = check_labels(type, nlabels, labels);
    if (err == 0)
        err = check_buckets(type, buckets, nbuckets, &keep);
    if (err != 0)
        return err;

    /* One block: the family, its bounds, then its strings. */
    size = sizeof(*f) + keep * sizeof(f->buckets[0]) + strlen(name) + 1;
    if (help != NULL)
        size += strlen(help) + 1;
    for (i = 0; i < nlabels; i++)
        size += strlen(labels[i]) + 1;
    f = calloc(1, size);
    if (f == NULL)
        return -ENOMEM;
    err = pthread_mutex_init(&f->mu, NULL);
    if (err != 0) {
        free(f);
        return -err;
    }
    f->type = type;
    f->nbuckets = keep;
    if (keep > 0)
        memcpy(f->buckets, buckets, keep * sizeof(f->buckets[0]));
    strings = (char *)&f->buckets[keep];
    f->name = stash(&strings, name);
    f->help = help != NULL ? stash(&strings, help) : NULL;
    f->nlabels = nlabels;
    for (i = 0; i < nlabels; i++)
        f->labels[i] = stash(&strings, labels[i]);
    f->fn = fn;
    f->fn_arg = fn_arg;

    pthread_mutex_lock(&m->mu);
    if (name_taken(m, type, name)) {
        pthread_mutex_unlock(&m->mu);
        err = -EEXIST;
        goto out_free_family;
    }
    if (m->tail != NULL)
        m->tail->next = f;
    else
        m->head = f;
    m->tail = f;
    pthread_mutex_unlock(&m->mu);
    *out = f;
    return 0;

out_free_family:
    pthread_mutex_destroy(&f->mu);
    free(f);
    return err;
}

int
ts_metrics_new(struct ts_metrics **out)
{
    struct ts_metrics *m;
    int err;

    m = calloc(1, sizeof(*m));
    if (m == NULL)
        return -ENOMEM;
    err = pthread_mutex_init(&m->mu, NULL);
    if (err != 0) {
        err = -err;
        goto out_free_registry;
    }
    m->c_numeric = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (m->c_numeric == (locale_t)0) {
        err = errno != 0 ? -errno : -ENOMEM;
        goto out_destroy_mutex;
    }
    *out = m;
    return 0;

out_destroy_mutex:
    pthread_mutex_destroy(&m->mu);
out_free_registry:
    free(m);
    return err;
}

void
ts_metrics_free(struct ts_metrics *m)
{
    struct ts_family *f, *fnext;
    struct ts_series *s, *snext;

    if (m == NULL)
        return;
    for (f = m->head; f != NULL; f = fnext) {
        fnext = f->next;
        for (s = f->head; s != NULL; s = snext) {
            snext = s->next;
            pthread_mutex_destroy(&s->mu);
            free(s);
        }
        pthread_mutex_destroy(&f->mu);
        free(f);
    }
    freelocale(m->c_numeric);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

struct ts_family *
ts_metrics_family(struct ts_metrics *m, enum ts_metric_type type, const char *name,
                  const char *help, size_t nlabels, const char *const *labels,
                  const double *buckets, size_t nbuckets)
{
    struct ts_family *f;

    if (add_family(m, type, name, help, nlabels, labels, buckets, nbuckets, NULL, NULL, &f) != 0)
        return NULL;
    return f;
}

int
ts_metrics_gauge_fn(struct ts_metrics *m, const char *name, const char *help, ts_gauge_fn *fn,
                    void *arg)
{
    struct ts_family *f;

    if (fn == NULL)
        return -EINVAL;
    return add_family(m, TS_METRIC_GAUGE, name, help, 0, NULL, NULL, 0, fn, arg, &f);
}

/* FNV-1a over the values, each followed by a byte that UTF-8 never uses, so
 * ("ab", "c") and ("a", "bc") differ. */
static uint64_t
hash_values(size_t n, const char *const *values)
{
    uint64_t h = UINT64_C(14695981039346656037);
    const unsigned char *p;
    size_t i;

    for (i = 0; i < n; i++) {
        for (p = (const unsigned char *)values[i]; *p != '\0'; p++)
            h = (h ^ *p) * UINT64_C(1099511628211);
        h = (h ^ 0xff) * UINT64_C(1099511628211);
    }
    return h;
}

static bool
series_matches(const struct ts_series *s, uint64_t hash, size_t n, const char *const *values)
{
    size_t i;

    if (s->hash != hash)
        return false;
    for (i = 0; i < n; i++) {
        if (strcmp(s->values[i], values[i]) != 0)
            return false;
    }
    return true;
}

static struct ts_series *
series_new(struct ts_family *f, const char *const *values, uint64_t hash)
{
    size_t ncounts = f->type == TS_METRIC_HISTOGRAM ? f->nbuckets + 1 : 0;
    struct ts_series *s;
    size_t size, i;
    char *strings;

    size = sizeof(*s) + ncounts * sizeof(s->counts[0]);
    for (i = 0; i < f->nlabels; i++)
        size += strlen(values[i]) + 1;
    s = calloc(1, size);
    if (s == NULL)
        return NULL;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return NULL;
    }
    s->family = f;
    s->hash = hash;
    strings = (char *)&s->counts[ncounts];
    for (i = 0; i < f->nlabels; i++)
        s->values[i] = stash(&strings, values[i]);
    /* calloc's zero bits are the double 0.0 for gauges and 0 for counters. */
    atomic_init(&s->value, 0);
    return s;
}

struct ts_series *
ts_family_series(struct ts_family *f, const char *const *values)
{
    struct ts_series *s;
    uint64_t hash;
    size_t i;

    if (f == NULL)
        return NULL;
    assert(f->fn == NULL);
    assert(f->nlabels == 0 || values != NULL);
    if (f->fn != NULL || (f->nlabels > 0 && values == NULL))
        return NULL;
    for (i = 0; i < f->nlabels; i++) {
        if (values[i] == NULL)
            return NULL;
    }
    hash = hash_values(f->nlabels, values);

    pthread_mutex_lock(&f->mu);
    for (s = f->head; s != NULL; s = s->next) {
        if (series_matches(s, hash, f->nlabels, values))
            goto out_unlock;
    }
    s = series_new(f, values, hash);
    if (s == NULL)
        goto out_unlock;
    if (f->tail != NULL)
        f->tail->next = s;
    else
        f->head = s;
    f->tail = s;
out_unlock:
    pthread_mutex_unlock(&f->mu);
    return s;
}

struct ts_series *
ts_metrics_simple(struct ts_metrics *m, enum ts_metric_type type, const char *name,
                  const char *help)
{
    return ts_family_series(ts_metrics_family(m, type, name, help, 0, NULL, NULL, 0), NULL);
}

static double
bits_to_double(uint64_t bits)
{
    double d;

    memcpy(&d, &bits, sizeof(d));
    return d;
}

static uint64_t
double_to_bits(double d)
{
    uint64_t bits;

    memcpy(&bits, &d, sizeof(bits));
    return bits;
}

static void
gauge_add(struct ts_series *s, double delta)
{
    uint64_t old = atomic_load_explicit(&s->value, memory_order_relaxed);
    uint64_t new;

    /* A failed exchange reloads `old`; retry with what another thread left. */
    do {
        new = double_to_bits(bits_to_double(old) + delta);
    } while (!atomic_compare_exchange_weak_explicit(&s->value, &old, new, memory_order_relaxed,
                                                    memory_order_relaxed));
}

void
ts_series_add(struct ts_series *s, uint64_t n)
{
    switch (s->family->type) {
    case TS_METRIC_COUNTER:
        atomic_fetch_add_explicit(&s->value, n, memory_order_relaxed);
        break;
    case TS_METRIC_GAUGE:
        gauge_add(s, (double)n);
        break;
    case TS_METRIC_HISTOGRAM:
        assert(!"ts_series_add on a histogram");
        break;
    }
}

void
ts_series_inc(struct ts_series *s)
{
    ts_series_add(s, 1);
}

void
ts_series_sub(struct ts_series *s, uint64_t n)
{
    assert(s->family->type == TS_METRIC_GAUGE);
    /* A counter that went down would read as a restart to rate(). */
    if (s->family->type == TS_METRIC_GAUGE)
        gauge_add(s, -(double)n);
}

void
ts_series_set(struct ts_series *s, double v)
{
    assert(s->family->type == TS_METRIC_GAUGE);
    if (s->family->type == TS_METRIC_GAUGE)
        atomic_store_explicit(&s->value, double_to_bits(v), memory_order_relaxed);
}

void
ts_series_observe(struct ts_series *s, double v)
{
    const struct ts_family *f = s->family;
    size_t lo = 0, hi = f->nbuckets, mid;

    assert(f->type == TS_METRIC_HISTOGRAM);
    if (f->type != TS_METRIC_HISTOGRAM)
        return;
    /* The first bound >= v; NaN compares false and lands in +Inf. */
    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        if (v <= f->buckets[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    pthread_mutex_lock(&s->mu);
    s->counts[lo]++;
    s->count++;
    s->sum += v;
    pthread_mutex_unlock(&s->mu);
}

double
ts_series_value(struct ts_series *s)
{
    uint64_t v = atomic_load_explicit(&s->value, memory_order_relaxed);
    double sum;

    switch (s->family->type) {
    case TS_METRIC_COUNTER:
        return (double)v;
    case TS_METRIC_GAUGE:
        return bits_to_double(v);
    case TS_METRIC_HISTOGRAM:
        break;
    }
    pthread_mutex_lock(&s->mu);
    sum = s->sum;
    pthread_mutex_unlock(&s->mu);
    return sum;
}

uint64_t
ts_series_count(struct ts_series *s)
{
    uint64_t n;

    if (s->family->type != TS_METRIC_HISTOGRAM)
        return 0;
    pthread_mutex_lock(&s->mu);
    n = s->count;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/*
 * Rendering. `struct out` keeps the first error so that the formatting code
 * reads straight through; the caller checks once at the end.
 */
struct out {
    struct ts_buf *buf;
    int err;
};

static void
put(struct out *o, const char *s, size_t n)
{
    if (o->err == 0 && n > 0)
        o->err = ts_buf_append(o->buf, s, n);
}

static void
put_str(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void
put_u64(struct out *o, uint64_t v)
{
    if (o->err == 0)
        o->err = ts_buf_printf(o->buf, "%" PRIu64, v);
}

/*
 * Integers print without an exponent; other values print with the fewest
 * digits that read back as the same double (so 0.1 is "0.1", not
 * "0.10000000000000001"). Caller has the "C" numeric locale in force.
 */
static void
format_double(char out[NUMBER_CHARS], double v)
{
    int prec;

    if (isnan(v)) {
        memcpy(out, "NaN", 4);
    } else if (isinf(v)) {
        memcpy(out, v > 0 ? "+Inf" : "-Inf", 5);
    } else if (v > -0x1p63 && v < 0x1p63 && v == (double)(int64_t)v) {
        snprintf(out, NUMBER_CHARS, "%" PRId64, (int64_t)v);
    } else {
        for (prec = 15; prec < 17; prec++) {
            snprintf(out, NUMBER_CHARS, "%.*g", prec, v);
            if (strtod(out, NULL) == v)
                return;
        }
        snprintf(out, NUMBER_CHARS, "%.17g", v);
    }
}

static void
put_double(struct out *o, double v)
{
    char num[NUMBER_CHARS];

    format_double(num, v);
    put_str(o, num);
}

/*
 * Help text escapes backslash and newline; label values also escape the
 * double quote. The format requires UTF-8 and Prometheus rejects the whole
 * scrape otherwise, so a stray invalid byte becomes U+FFFD instead.
 */
static void
put_escaped(struct out *o, const char *text, bool label_value)
{
    const unsigned char *p = (const unsigned char *)text;
    const unsigned char *run = p;
    const char *rep;
    size_t n;

    while (*p != '\0') {
        if (*p == '\\') {
            rep = "\\\\";
        } else if (*p == '\n') {
            rep = "\\n";
        } else if (*p == '"' && label_value) {
            rep = "\\\"";
        } else if (*p >= 0x80) {
            n = ts_utf8_sequence(p, strnlen((const char *)p, TS_UTF8_MAX));
            if (n > 0) {
                p += n;
                continue;
            }
            rep = "\xef\xbf\xbd";
        } else {
            p++;
            continue;
        }
        put(o, (const char *)run, (size_t)(p - run));
        put_str(o, rep);
        p++;
        run = p;
    }
    put(o, (const char *)run, (size_t)(p - run));
}

static void
put_header(struct out *o, const char *name, const char *help, enum ts_metric_type type)
{
    if (help != NULL) {
        put_str(o, "# HELP ");
        put_str(o, name);
        put_str(o, " ");
        put_escaped(o, help, false);
        put_str(o, "\n");
    }
    put_str(o, "# TYPE ");
    put_str(o, name);
    put_str(o, " ");
    put_str(o, type_names[type]);
    put_str(o, "\n");
}

/* `name``suffix`{labels[,le="le"]} followed by a space; the value follows. */
static void
put_sample_start(struct out *o, const struct ts_family *f, const char *suffix,
                 const struct ts_series *s, const char *le)
{
    size_t i;

    put_str(o, f->name);
    put_str(o, suffix);
    if (f->nlabels > 0 || le != NULL) {
        put_str(o, "{");
        for (i = 0; i < f->nlabels; i++) {
            if (i > 0)
                put_str(o, ",");
            put_str(o, f->labels[i]);
            put_str(o, "=\"");
            put_escaped(o, s->values[i], true);
            put_str(o, "\"");
        }
        if (le != NULL) {
            if (f->nlabels > 0)
                put_str(o, ",");
            put_str(o, "le=\"");
            put_str(o, le);
            put_str(o, "\"");
        }
        put_str(o, "}");
    }
    put_str(o, " ");
}

static void
render_histogram(struct out *o, const struct ts_family *f, struct ts_series *s, uint64_t *snapshot)
{
    char le[NUMBER_CHARS];
    uint64_t count, cumulative = 0;
    double sum;
    size_t i;

    /* Copy under the lock so that buckets, sum and count agree. */
    pthread_mutex_lock(&s->mu);
    memcpy(snapshot, s->counts, (f->nbuckets + 1) * sizeof(snapshot[0]));
    sum = s->sum;
    count = s->count;
    pthread_mutex_unlock(&s->mu);

    for (i = 0; i < f->nbuckets; i++) {
        cumulative += snapshot[i];
        format_double(le, f->buckets[i]);
        put_sample_start(o, f, "_bucket", s, le);
        put_u64(o, cumulative);
        put_str(o, "\n");
    }
    put_sample_start(o, f, "_bucket", s, "+Inf");
    put_u64(o, count);
    put_str(o, "\n");
    put_sample_start(o, f, "_sum", s, NULL);
    put_double(o, sum);
    put_str(o, "\n");
    put_sample_start(o, f, "_count", s, NULL);
    put_u64(o, count);
    put_str(o, "\n");
}

static void
render_family(struct out *o, struct ts_family *f)
{
    struct ts_series *first, *last, *s;
    uint64_t *snapshot = NULL;

    if (f->fn != NULL) {
        put_header(o, f->name, f->help, f->type);
        put_str(o, f->name);
        put_str(o, " ");
        put_double(o, f->fn(f->fn_arg));
        put_str(o, "\n");
        return;
    }

    pthread_mutex_lock(&f->mu);
    first = f->head;
    last = f->tail;
    pthread_mutex_unlock(&f->mu);
    /* Like the Go client, a family without series is not shown at all. */
    if (first == NULL)
        return;

    if (f->type == TS_METRIC_HISTOGRAM) {
        snapshot = malloc((f->nbuckets + 1) * sizeof(*snapshot));
        if (snapshot == NULL) {
            if (o->err == 0)
                o->err = -ENOMEM;
            return;
        }
    }
    put_header(o, f->name, f->help, f->type);
    for (s = first; s != NULL; s = s == last ? NULL : s->next) {
        switch (f->type) {
        case TS_METRIC_COUNTER:
            put_sample_start(o, f, "", s, NULL);
            put_u64(o, atomic_load_explicit(&s->value, memory_order_relaxed));
            put_str(o, "\n");
            break;
        case TS_METRIC_GAUGE:
            put_sample_start(o, f, "", s, NULL);
            put_double(o, bits_to_double(atomic_load_explicit(&s->value, memory_order_relaxed)));
            put_str(o, "\n");
            break;
        case TS_METRIC_HISTOGRAM:
            render_histogram(o, f, s, snapshot);
            break;
        }
    }
    free(snapshot);
}

/*
 * The process_* set, with the names and help texts of the official client
 * libraries so that dashboards built for them work unchanged.
 */
static void
put_process_metric(struct out *o, const char *name, const char *help, enum ts_metric_type type,
                   double v)
{
    put_header(o, name, help, type);
    put_str(o, name);
    put_str(o, " ");
    put_double(o, v);
    put_str(o, "\n");
}

/* Reads a small /proc file whole into `buf` (NUL-terminated). 0 or -errno. */
static int
read_small_file(const char *path, char *buf, size_t size)
{
    size_t len = 0;
    ssize_t n;
    int fd, err = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    while (len < size - 1) {
        n = read(fd, buf + len, size - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = -errno;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return err;
}

/* Seconds since the epoch at which the system booted ("btime" in
 * /proc/stat, whose "intr" line can be long: hence getline). */
static int
read_boot_time(uint64_t *out)
{
    char *line = NULL, *end;
    size_t cap = 0;
    int err = -ENOENT;
    FILE *fp;

    fp = fopen("/proc/stat", "re");
    if (fp == NULL)
        return -errno;
    while (getline(&line, &cap, fp) >= 0) {
        if (strncmp(line, "btime ", 6) == 0) {
            errno = 0;
            *out = strtoull(line + 6, &end, 10);
            if (errno == 0 && end != line + 6)
                err = 0;
            break;
        }
    }
    free(line);
    fclose(fp);
    return err;
}

struct self_stat {
    uint64_t utime_ticks;
    uint64_t stime_ticks;
    uint64_t start_ticks; /* since boot */
    uint64_t vsize_bytes;
    uint64_t rss_pages;
};

/* Fields of /proc/self/stat (proc(5) numbers them from 1). */
enum {
    STAT_UTIME = 14,
    STAT_STIME = 15,
    STAT_STARTTIME = 22,
    STAT_VSIZE = 23,
    STAT_RSS = 24,
};

static int
read_self_stat(struct self_stat *st)
{
    char buf[2048], *p, *end;
    uint64_t v;
    int field, err;

    err = read_small_file("/proc/self/stat", buf, sizeof(buf));
    if (err != 0)
        return err;
    /* Field 2 is the command name in parentheses, and it may hold spaces and
     * parentheses itself: field 3 starts after the last ')'. */
    p = strrchr(buf, ')');
    if (p == NULL)
        return -EINVAL;
    p++;
    for (field = 3; field <= STAT_RSS; field++) {
        while (*p == ' ')
            p++;
        if (*p == '\0')
            return -EINVAL;
        errno = 0;
        v = strtoull(p, &end, 10);
        if (end == p || errno != 0)
            v = 0; /* field 3, the state, is a letter */
        switch (field) {
        case STAT_UTIME:
            st->utime_ticks = v;
            break;
        case STAT_STIME:
            st->stime_ticks = v;
            break;
        case STAT_STARTTIME:
            st->start_ticks = v;
            break;
        case STAT_VSIZE:
            st->vsize_bytes = v;
            break;
        case STAT_RSS:
            st->rss_pages = v;
            break;
        default:
            break;
        }
        while (*p != ' ' && *p != '\0')
            p++;
    }
    return 0;
}

/* Open descriptors, not counting the one that reads the directory. */
static int
count_open_fds(uint64_t *out)
{
    char self[24];
    struct dirent *e;
    uint64_t n = 0;
    DIR *dir;

    dir = opendir("/proc/self/fd");
    if (dir == NULL)
        return -errno;
    snprintf(self, sizeof(self), "%d", dirfd(dir));
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, self) == 0)
            continue;
        n++;
    }
    closedir(dir);
    *out = n;
    return 0;
}

static void
render_process(struct out *o)
{
    long ticks = sysconf(_SC_CLK_TCK);
    long page = sysconf(_SC_PAGESIZE);
    struct self_stat st = {0};
    bool have_stat = read_self_stat(&st) == 0;
    struct rlimit rl;
    uint64_t boot = 0, fds = 0;

    if (have_stat && ticks > 0)
        put_process_metric(o, "process_cpu_seconds_total",
                           "Total user and system CPU time spent in seconds.", TS_METRIC_COUNTER,
                           (double)(st.utime_ticks + st.stime_ticks) / (double)ticks);
    if (count_open_fds(&fds) == 0)
        put_process_metric(o, "process_open_fds", "Number of open file descriptors.",
                           TS_METRIC_GAUGE, (double)fds);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        put_process_metric(o, "process_max_fds", "Maximum number of open file descriptors.",
                           TS_METRIC_GAUGE, (double)rl.rlim_cur);
    if (have_stat)
        put_process_metric(o, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
                           TS_METRIC_GAUGE, (double)st.vsize_bytes);
    if (have_stat && page > 0)
        put_process_metric(o, "process_resident_memory_bytes", "Resident memory size in bytes.",
                           TS_METRIC_GAUGE, (double)st.rss_pages * (double)page);
    if (have_stat && ticks > 0 && read_boot_time(&boot) == 0)
        put_process_metric(o, "process_start_time_seconds",
                           "Start time of the process since unix epoch in seconds.",
                           TS_METRIC_GAUGE, (double)boot + (double)st.start_ticks / (double)ticks);
}

int
ts_metrics_render(struct ts_metrics *m, char **out, size_t *len)
{
    struct ts_buf buf;
    struct out o = {.buf = &buf, .err = 0};
    struct ts_family *f;
    locale_t saved;
    size_t n = 0;
    char *text;

    ts_buf_init(&buf, RENDER_BYTES_MAX);
    saved = uselocale(m->c_numeric);
    pthread_mutex_lock(&m->mu);
    for (f = m->head; f != NULL && o.err == 0; f = f->next)
        render_family(&o, f);
    pthread_mutex_unlock(&m->mu);
    if (o.err == 0)
        render_process(&o);
    uselocale(saved);
    if (o.err != 0) {
        ts_buf_dispose(&buf);
        return o.err;
    }

    text = ts_buf_take(&buf, &n);
    if (text == NULL)
        return -ENOMEM;
    *out = text;
    if (len != NULL)
        *len = n;
    return 0;
}
