/*
 * Unit tests for the metrics registry: exact text rendering, name rules,
 * series identity, concurrent updates, the process_* set, and promtool's
 * verdict on a rendering (when promtool is installed).
 */
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "metrics.h"
#include "util.h"

#define PROMTOOL "/usr/bin/promtool"

extern char **environ;

static char *
render(struct ts_metrics *m)
{
    char *text = NULL;
    size_t len = 0;

    assert_int_equal(ts_metrics_render(m, &text, &len), 0);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

/* The value on the line that starts with `sample` followed by a space. */
static bool
find_value(const char *text, const char *sample, double *out)
{
    size_t n = strlen(sample);
    const char *p = text;
    char *end;

    while (p != NULL && *p != '\0') {
        if (strncmp(p, sample, n) == 0 && p[n] == ' ') {
            *out = strtod(p + n + 1, &end);
            return end != p + n + 1 && *end == '\n';
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return false;
}

static double
seven(void *arg)
{
    (void)arg;
    return 7;
}

static void
test_render_exact(void **state)
{
    static const char *const http_labels[] = {"method", "path"};
    static const char *const route_label[] = {"route"};
    static const double bounds[] = {0.25, 0.5, 1};
    static const char expected[] =
        "# HELP jobs_total Jobs done.\\nSecond line with a \\\\ backslash.\n"
        "# TYPE jobs_total counter\n"
        "jobs_total 3\n"
        "# HELP http_requests_total Requests \"served\".\n"
        "# TYPE http_requests_total counter\n"
        "http_requests_total{method=\"GET\",path=\"a\\\"b\\\\c\\nd\"} 5\n"
        "http_requests_total{method=\"POST\",path=\"/x\"} 1\n"
        "# HELP temperature_celsius Temperature.\n"
        "# TYPE temperature_celsius gauge\n"
        "temperature_celsius 24.5\n"
        "# HELP queue_depth Queued items.\n"
        "# TYPE queue_depth gauge\n"
        "queue_depth 7\n"
        "# HELP request_duration_seconds Request latency.\n"
        "# TYPE request_duration_seconds histogram\n"
        "request_duration_seconds_bucket{route=\"/a\",le=\"0.25\"} 2\n"
        "request_duration_seconds_bucket{route=\"/a\",le=\"0.5\"} 3\n"
        "request_duration_seconds_bucket{route=\"/a\",le=\"1\"} 4\n"
        "request_duration_seconds_bucket{route=\"/a\",le=\"+Inf\"} 5\n"
        "request_duration_seconds_sum{route=\"/a\"} 3.5\n"
        "request_duration_seconds_count{route=\"/a\"} 5\n"
        "request_duration_seconds_bucket{route=\"/b\",le=\"0.25\"} 0\n"
        "request_duration_seconds_bucket{route=\"/b\",le=\"0.5\"} 0\n"
        "request_duration_seconds_bucket{route=\"/b\",le=\"1\"} 0\n"
        "request_duration_seconds_bucket{route=\"/b\",le=\"+Inf\"} 0\n"
        "request_duration_seconds_sum{route=\"/b\"} 0\n"
        "request_duration_seconds_count{route=\"/b\"} 0\n"
        "# HELP batch_size Items per batch.\n"
        "# TYPE batch_size histogram\n"
        "batch_size_bucket{le=\"+Inf\"} 1\n"
        "batch_size_sum 3\n"
        "batch_size_count 1\n";
    static const double observations[] = {0.125, 0.25, 0.375, 2, 0.75};
    const char *get[] = {"GET", "a\"b\\c\nd"};
    const char *post[] = {"POST", "/x"};
    const char *route_a[] = {"/a"};
    const char *route_b[] = {"/b"};
    struct ts_series *jobs, *temp, *hist, *batch;
    struct ts_family *http, *latency, *unused;
    struct ts_metrics *m;
    char *text;
    size_t i;

    (void)state;
    assert_int_equal(ts_metrics_new(&m), 0);
    jobs = ts_metrics_simple(m, TS_METRIC_COUNTER, "jobs_total",
                             "Jobs done.\nSecond line with a \\ backslash.");
    assert_non_null(jobs);
    http = ts_metrics_family(m, TS_METRIC_COUNTER, "http_requests_total", "Requests \"served\".", 2,
                             http_labels, NULL, 0);
    assert_non_null(http);
    unused = ts_metrics_family(m, TS_METRIC_COUNTER, "unused_total", "Never touched.", 1,
                               route_label, NULL, 0);
    assert_non_null(unused);
    temp = ts_metrics_simple(m, TS_METRIC_GAUGE, "temperature_celsius", "Temperature.");
    assert_non_null(temp);
    assert_int_equal(ts_metrics_gauge_fn(m, "queue_depth", "Queued items.", seven, NULL), 0);
    latency = ts_metrics_family(m, TS_METRIC_HISTOGRAM, "request_duration_seconds",
                                "Request latency.", 1, route_label, bounds, 3);
    assert_non_null(latency);
    batch = ts_metrics_simple(m, TS_METRIC_HISTOGRAM, "batch_size", "Items per batch.");
    assert_non_null(batch);

    ts_series_inc(jobs);
    ts_series_add(jobs, 2);
    ts_series_add(ts_family_series(http, get), 5);
    ts_series_inc(ts_family_series(http, post));
    ts_series_set(temp, 21.5);
    ts_series_add(temp, 3);
    ts_series_sub(temp, 1);
    ts_series_inc(temp);
    hist = ts_family_series(latency, route_a);
    assert_non_null(hist);
    for (i = 0; i < TS_ARRAY_SIZE(observations); i++)
        ts_series_observe(hist, observations[i]);
    assert_non_null(ts_family_series(latency, route_b));
    ts_series_observe(batch, 3);

    assert_true(ts_series_value(jobs) == 3);
    assert_true(ts_series_value(temp) == 24.5);
    assert_int_equal(ts_series_count(hist), 5);

    text = render(m);
    assert_memory_equal(text, expected, sizeof(expected) - 1);
    /* The process_* set follows the registered families. */
    assert_true(strncmp(text + sizeof(expected) - 1, "# HELP process_", 15) == 0);
    free(text);
    ts_metrics_free(m);
}

struct number_case {
    double v;
    const char *text;
};

static void
test_number_format(void **state)
{
    static const struct number_case cases[] = {
        {0, "0"},
        {-0.0, "0"},
        {1, "1"},
        {-2, "-2"},
        {2.5, "2.5"},
        {0.1, "0.1"},
        {0.1 + 0.2, "0.30000000000000004"},
        {1.0 / 3, "0.3333333333333333"},
        {1e-7, "1e-07"},
        {123456789012.0, "123456789012"},
        {9007199254740992.0, "9007199254740992"},
        {4611686018427387904.0, "4611686018427387904"},
        {1e20, "1e+20"},
        {1.7976931348623157e308, "1.7976931348623157e+308"},
        {INFINITY, "+Inf"},
        {-INFINITY, "-Inf"},
        {NAN, "NaN"},
    };
    struct ts_metrics *m;
    struct ts_series *g;
    char *text, line[128];
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(cases); i++) {
        assert_int_equal(ts_metrics_new(&m), 0);
        g = ts_metrics_simple(m, TS_METRIC_GAUGE, "g", "A gauge.");
        assert_non_null(g);
        ts_series_set(g, cases[i].v);
        text = render(m);
        snprintf(line, sizeof(line), "\ng %s\n", cases[i].text);
        if (strstr(text, line) == NULL)
            fail_msg("case %zu: want \"g %s\" in:\n%s", i, cases[i].text, text);
        free(text);
        ts_metrics_free(m);
    }
}

static void
test_escaping_invalid_utf8(void **state)
{
    static const char *const labels[] = {"v"};
    /* A lone continuation byte, a truncated sequence, an overlong '/', and
     * a surrogate: each byte that is not part of a valid sequence becomes
     * U+FFFD. Valid multibyte text passes unchanged. */
    const char *values[] = {
        "ok \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x80 \xc3 \xc0\xaf \xed\xa0\x80"};
    static const char expected[] =
        "# HELP weird_total Help with \xef\xbf\xbd.\n"
        "# TYPE weird_total counter\n"
        "weird_total{v=\"ok \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xef\xbf\xbd \xef\xbf\xbd "
        "\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"} 1\n";
    struct ts_family *f;
    struct ts_metrics *m;
    char *text;

    (void)state;
    assert_int_equal(ts_metrics_new(&m), 0);
    f = ts_metrics_family(m, TS_METRIC_COUNTER, "weird_total", "Help with \xff.", 1, labels, NULL,
                          0);
    assert_non_null(f);
    ts_series_inc(ts_family_series(f, values));
    text = render(m);
    assert_memory_equal(text, expected, sizeof(expected) - 1);
    free(text);
    ts_metrics_free(m);
}

struct name_case {
    enum ts_metric_type type;
    const char *name;
    size_t nlabels;
    const char *labels[TS_METRICS_MAX_LABELS + 1];
    size_t nbuckets;
    double buckets[4];
    bool ok;
};

static void
test_names(void **state)
{
    static const struct name_case cases[] = {
        {TS_METRIC_COUNTER, "a", 0, {NULL}, 0, {0}, true},
        {TS_METRIC_COUNTER, "_x", 0, {NULL}, 0, {0}, true},
        {TS_METRIC_COUNTER, ":y", 0, {NULL}, 0, {0}, true},
        {TS_METRIC_COUNTER, "ns:sub_name9_total", 0, {NULL}, 0, {0}, true},
        {TS_METRIC_COUNTER, "__reserved_is_fine_for_metrics", 0, {NULL}, 0, {0}, true},
        {TS_METRIC_COUNTER, "", 0, {NULL}, 0, {0}, false},
        {TS_METRIC_COUNTER, NULL, 0, {NULL}, 0, {0}, false},
        {TS_METRIC_COUNTER, "9lives", 0, {NULL}, 0, {0}, false},
        {TS_METRIC_COUNTER, "a-b", 0, {NULL}, 0, {0}, false},
        {TS_METRIC_COUNTER, "a b", 0, {NULL}, 0, {0}, false},
        {TS_METRIC_COUNTER, "a.b", 0, {NULL}, 0, {0}, false},
        {TS_METRIC_COUNTER, "caf\xc3\xa9", 0, {NULL}, 0, {0}, false},
        {TS_METRIC_GAUGE, "g", 4, {"a", "_b", "c9", "D"}, 0, {0}, true},
        {TS_METRIC_GAUGE, "g", 5, {"a", "b", "c", "d", "e"}, 0, {0}, false},
        {TS_METRIC_GAUGE, "g", 1, {"__x"}, 0, {0}, false},
        {TS_METRIC_GAUGE, "g", 1, {"9x"}, 0, {0}, false},
        {TS_METRIC_GAUGE, "g", 1, {"a-b"}, 0, {0}, false},
        {TS_METRIC_GAUGE, "g", 1, {"a:b"}, 0, {0}, false},
        {TS_METRIC_GAUGE, "g", 1, {""}, 0, {0}, false},
        {TS_METRIC_GAUGE, "g", 1, {NULL}, 0, {0}, false},
        {TS_METRIC_GAUGE, "g", 2, {"a", "a"}, 0, {0}, false},
        {TS_METRIC_COUNTER, "c_total", 1, {"le"}, 0, {0}, true},
        {TS_METRIC_HISTOGRAM, "h", 1, {"le"}, 1, {1}, false},
        {TS_METRIC_HISTOGRAM, "h", 1, {"route"}, 3, {0.1, 1, 10}, true},
        {TS_METRIC_HISTOGRAM, "h", 0, {NULL}, 0, {0}, true},
        {TS_METRIC_HISTOGRAM, "h", 0, {NULL}, 2, {1, INFINITY}, true},
        {TS_METRIC_HISTOGRAM, "h", 0, {NULL}, 2, {1, 1}, false},
        {TS_METRIC_HISTOGRAM, "h", 0, {NULL}, 2, {2, 1}, false},
        {TS_METRIC_HISTOGRAM, "h", 0, {NULL}, 2, {NAN, 1}, false},
        {TS_METRIC_HISTOGRAM, "h", 0, {NULL}, 2, {-INFINITY, 1}, false},
        {TS_METRIC_COUNTER, "c_total", 0, {NULL}, 1, {1}, false},
        {(enum ts_metric_type)7, "x", 0, {NULL}, 0, {0}, false},
    };
    struct ts_metrics *m;
    struct ts_family *f;
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(cases); i++) {
        const struct name_case *c = &cases[i];

        assert_int_equal(ts_metrics_new(&m), 0);
        f = ts_metrics_family(m, c->type, c->name, "Help.", c->nlabels,
                              c->nlabels > 0 ? c->labels : NULL,
                              c->nbuckets > 0 ? c->buckets : NULL, c->nbuckets);
        if ((f != NULL) != c->ok)
            fail_msg("case %zu (%s): want %s", i, c->name ? c->name : "NULL",
                     c->ok ? "accepted" : "refused");
        ts_metrics_free(m);
    }
}

struct clash_case {
    enum ts_metric_type first_type;
    const char *first;
    enum ts_metric_type second_type;
    const char *second;
    bool ok;
};

static void
test_duplicates(void **state)
{
    static const struct clash_case cases[] = {
        {TS_METRIC_COUNTER, "x_total", TS_METRIC_COUNTER, "x_total", false},
        {TS_METRIC_COUNTER, "x_total", TS_METRIC_GAUGE, "x_total", false},
        {TS_METRIC_HISTOGRAM, "x", TS_METRIC_COUNTER, "x_count", false},
        {TS_METRIC_HISTOGRAM, "x", TS_METRIC_GAUGE, "x_sum", false},
        {TS_METRIC_HISTOGRAM, "x", TS_METRIC_GAUGE, "x_bucket", false},
        {TS_METRIC_GAUGE, "y_sum", TS_METRIC_HISTOGRAM, "y", false},
        {TS_METRIC_HISTOGRAM, "a_b", TS_METRIC_HISTOGRAM, "a", true},
        {TS_METRIC_HISTOGRAM, "x", TS_METRIC_GAUGE, "x_total", true},
        {TS_METRIC_COUNTER, "x_total", TS_METRIC_COUNTER, "x_total2", true},
        {TS_METRIC_GAUGE, "unrelated", TS_METRIC_GAUGE, "process_open_fds", false},
        {TS_METRIC_GAUGE, "unrelated", TS_METRIC_COUNTER, "process_cpu_seconds_total", false},
    };
    struct ts_metrics *m;
    struct ts_family *f;
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(cases); i++) {
        assert_int_equal(ts_metrics_new(&m), 0);
        assert_non_null(
            ts_metrics_family(m, cases[i].first_type, cases[i].first, "First.", 0, NULL, NULL, 0));
        f = ts_metrics_family(m, cases[i].second_type, cases[i].second, "Second.", 0, NULL, NULL,
                              0);
        if ((f != NULL) != cases[i].ok)
            fail_msg("case %zu: %s then %s: want %s", i, cases[i].first, cases[i].second,
                     cases[i].ok ? "accepted" : "refused");
        ts_metrics_free(m);
    }

    assert_int_equal(ts_metrics_new(&m), 0);
    assert_int_equal(ts_metrics_gauge_fn(m, "depth", "Depth.", seven, NULL), 0);
    assert_int_equal(ts_metrics_gauge_fn(m, "depth", "Depth.", seven, NULL), -EEXIST);
    assert_null(ts_metrics_simple(m, TS_METRIC_GAUGE, "depth", "Depth."));
    assert_int_equal(ts_metrics_gauge_fn(m, "bad-name", "Bad.", seven, NULL), -EINVAL);
    assert_int_equal(ts_metrics_gauge_fn(m, "no_fn", "No fn.", NULL, NULL), -EINVAL);
    ts_metrics_free(m);
}

static void
test_series_identity(void **state)
{
    static const char *const labels[] = {"a", "b"};
    const char *v1[] = {"ab", "c"};
    const char *v2[] = {"a", "bc"};
    char a_copy[] = "ab", b_copy[] = "c";
    const char *v1_copy[] = {a_copy, b_copy};
    struct ts_series *s1, *s2, *s3, *plain1, *plain2;
    struct ts_family *f, *nolabels;
    struct ts_metrics *m;

    (void)state;
    assert_int_equal(ts_metrics_new(&m), 0);
    f = ts_metrics_family(m, TS_METRIC_COUNTER, "pairs_total", "Pairs.", 2, labels, NULL, 0);
    assert_non_null(f);
    s1 = ts_family_series(f, v1);
    s2 = ts_family_series(f, v2);
    s3 = ts_family_series(f, v1_copy);
    assert_non_null(s1);
    assert_non_null(s2);
    assert_ptr_equal(s1, s3);
    assert_ptr_not_equal(s1, s2);
    /* The registry keeps its own copy of the values. */
    a_copy[0] = 'z';
    assert_ptr_equal(ts_family_series(f, v1), s1);
    assert_ptr_not_equal(ts_family_series(f, v1_copy), s1);

    nolabels = ts_metrics_family(m, TS_METRIC_GAUGE, "one", "One.", 0, NULL, NULL, 0);
    assert_non_null(nolabels);
    plain1 = ts_family_series(nolabels, NULL);
    plain2 = ts_family_series(nolabels, NULL);
    assert_non_null(plain1);
    assert_ptr_equal(plain1, plain2);
    assert_null(ts_family_series(NULL, NULL));
    ts_metrics_free(m);
}

#define THREADS 4
#define ITERATIONS 100000

struct worker {
    struct ts_series *counter;
    struct ts_series *gauge;
    struct ts_series *hist;
    struct ts_family *labelled;
    unsigned id;
};

static void *
hammer(void *arg)
{
    static const char *const shards[] = {"0", "1", "2", "3", "4", "5", "6", "7"};
    struct worker *w = arg;
    const char *value[1];
    int i;

    for (i = 0; i < ITERATIONS; i++) {
        ts_series_inc(w->counter);
        ts_series_add(w->gauge, 2);
        ts_series_sub(w->gauge, 1);
        ts_series_observe(w->hist, (double)(i % 4));
        value[0] = shards[(w->id + (unsigned)i) % TS_ARRAY_SIZE(shards)];
        ts_series_inc(ts_family_series(w->labelled, value));
    }
    return NULL;
}

/* Not render(): a failing cmocka assertion off the test's thread would
 * longjmp across threads. Returns `m`, or NULL once a render went wrong. */
static void *
scrape(void *arg)
{
    struct ts_metrics *m = arg;
    char *text;
    size_t len;
    bool ok;
    int i;

    for (i = 0; i < 20; i++) {
        text = NULL;
        ok = ts_metrics_render(m, &text, &len) == 0 && text != NULL && strlen(text) == len;
        free(text);
        if (!ok)
            return NULL;
    }
    return m;
}

static void
test_concurrency(void **state)
{
    static const char *const labels[] = {"shard"};
    static const double bounds[] = {0.5, 1.5, 2.5};
    struct worker workers[THREADS];
    pthread_t threads[THREADS], scraper;
    struct ts_series *counter, *gauge, *hist;
    struct ts_family *labelled;
    struct ts_metrics *m;
    double v, total = 0;
    char *text, sample[64];
    void *scraped;
    unsigned i;

    (void)state;
    assert_int_equal(ts_metrics_new(&m), 0);
    counter = ts_metrics_simple(m, TS_METRIC_COUNTER, "hits_total", "Hits.");
    gauge = ts_metrics_simple(m, TS_METRIC_GAUGE, "level", "Level.");
    hist = ts_family_series(ts_metrics_family(m, TS_METRIC_HISTOGRAM, "sizes", "Sizes.", 0, NULL,
                                              bounds, TS_ARRAY_SIZE(bounds)),
                            NULL);
    labelled =
        ts_metrics_family(m, TS_METRIC_COUNTER, "shard_hits_total", "Hits.", 1, labels, NULL, 0);
    assert_non_null(counter);
    assert_non_null(gauge);
    assert_non_null(hist);
    assert_non_null(labelled);

    for (i = 0; i < THREADS; i++) {
        workers[i] = (struct worker){counter, gauge, hist, labelled, i};
        assert_int_equal(pthread_create(&threads[i], NULL, hammer, &workers[i]), 0);
    }
    assert_int_equal(pthread_create(&scraper, NULL, scrape, m), 0);
    for (i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    assert_int_equal(pthread_join(scraper, &scraped), 0);
    assert_ptr_equal(scraped, m);

    assert_true(ts_series_value(counter) == THREADS * ITERATIONS);
    assert_true(ts_series_value(gauge) == THREADS * ITERATIONS);
    assert_int_equal(ts_series_count(hist), THREADS * ITERATIONS);
    /* i % 4 is 0, 1, 2, 3 equally often: sum 1.5 per observation. */
    assert_true(ts_series_value(hist) == 1.5 * THREADS * ITERATIONS);

    text = render(m);
    assert_true(find_value(text, "hits_total", &v));
    assert_true(v == THREADS * ITERATIONS);
    assert_true(find_value(text, "sizes_bucket{le=\"0.5\"}", &v));
    assert_true(v == THREADS * ITERATIONS / 4);
    assert_true(find_value(text, "sizes_bucket{le=\"2.5\"}", &v));
    assert_true(v == 3 * THREADS * ITERATIONS / 4);
    assert_true(find_value(text, "sizes_bucket{le=\"+Inf\"}", &v));
    assert_true(v == THREADS * ITERATIONS);
    for (i = 0; i < 8; i++) {
        snprintf(sample, sizeof(sample), "shard_hits_total{shard=\"%u\"}", i);
        assert_true(find_value(text, sample, &v));
        total += v;
    }
    assert_true(total == THREADS * ITERATIONS);
    free(text);
    ts_metrics_free(m);
}

static void
test_process_metrics(void **state)
{
    static const struct {
        const char *name;
        const char *type;
    } expected[] = {
        {"process_cpu_seconds_total", "counter"},
        {"process_open_fds", "gauge"},
        {"process_max_fds", "gauge"},
        {"process_virtual_memory_bytes", "gauge"},
        {"process_resident_memory_bytes", "gauge"},
        {"process_start_time_seconds", "gauge"},
    };
    double v[TS_ARRAY_SIZE(expected)];
    char line[128];
    struct ts_metrics *m;
    char *text;
    time_t now = time(NULL);
    size_t i;

    (void)state;
    assert_int_equal(ts_metrics_new(&m), 0);
    text = render(m);
    for (i = 0; i < TS_ARRAY_SIZE(expected); i++) {
        snprintf(line, sizeof(line), "# HELP %s ", expected[i].name);
        assert_non_null(strstr(text, line));
        snprintf(line, sizeof(line), "# TYPE %s %s\n", expected[i].name, expected[i].type);
        assert_non_null(strstr(text, line));
        if (!find_value(text, expected[i].name, &v[i]))
            fail_msg("no parseable %s in:\n%s", expected[i].name, text);
        assert_true(isfinite(v[i]) && v[i] >= 0);
    }
    assert_true(v[1] >= 3);                  /* stdin, stdout, stderr at least */
    assert_true(v[2] >= v[1]);               /* max_fds >= open_fds */
    assert_true(v[3] >= v[4] && v[4] > 0);   /* virtual >= resident > 0 */
    assert_true(v[5] <= (double)now + 1);    /* started in the past... */
    assert_true(v[5] > (double)now - 86400); /* ...but not long ago */
    free(text);
    ts_metrics_free(m);
}

/* The rendering is capped (16 MiB): past it, an error and nothing leaked. */
static void
test_render_too_big(void **state)
{
    static const char *const labels[] = {"blob"};
    const size_t size = (size_t)1 << 20;
    struct ts_family *f;
    struct ts_metrics *m;
    const char *value[1];
    char *blob, *text = NULL;
    size_t i, len = 0;

    (void)state;
    blob = malloc(size + 1);
    assert_non_null(blob);
    memset(blob, 'x', size);
    blob[size] = '\0';
    value[0] = blob;
    assert_int_equal(ts_metrics_new(&m), 0);
    f = ts_metrics_family(m, TS_METRIC_COUNTER, "blobs_total", "Big labels.", 1, labels, NULL, 0);
    assert_non_null(f);
    for (i = 0; i < 17; i++) {
        blob[0] = (char)('a' + i);
        assert_non_null(ts_family_series(f, value));
    }
    assert_int_equal(ts_metrics_render(m, &text, &len), -E2BIG);
    assert_null(text);
    free(blob);
    ts_metrics_free(m);
}

/* A caller's locale must not change the decimal point. */
static void
test_locale_independent(void **state)
{
    static const char *const candidates[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8"};
    struct ts_metrics *m;
    struct ts_series *g;
    char *text;
    size_t i;
    bool switched = false;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(candidates) && !switched; i++)
        switched = setlocale(LC_NUMERIC, candidates[i]) != NULL;
    if (!switched)
        skip();
    assert_int_equal(ts_metrics_new(&m), 0);
    g = ts_metrics_simple(m, TS_METRIC_GAUGE, "g", "A gauge.");
    ts_series_set(g, 2.5);
    text = render(m);
    setlocale(LC_NUMERIC, "C");
    assert_non_null(strstr(text, "\ng 2.5\n"));
    free(text);
    ts_metrics_free(m);
}

/* Feeds `input` to `promtool check metrics` and returns its exit status;
 * whatever it printed lands in `output`. */
static int
run_promtool(const char *input, char *output, size_t size)
{
    char *const argv[] = {"promtool", "check", "metrics", NULL};
    struct sigaction ignore = {.sa_handler = SIG_IGN}, saved;
    posix_spawn_file_actions_t actions;
    int in[2], out[2], status;
    size_t len = strlen(input), off = 0, got = 0;
    ssize_t n;
    pid_t pid;

    /* If promtool died early, a write would otherwise kill the test. */
    assert_int_equal(sigaction(SIGPIPE, &ignore, &saved), 0);
    assert_int_equal(pipe2(in, O_CLOEXEC), 0);
    assert_int_equal(pipe2(out, O_CLOEXEC), 0);
    assert_int_equal(posix_spawn_file_actions_init(&actions), 0);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, out[1], 2);
    assert_int_equal(posix_spawn(&pid, PROMTOOL, &actions, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    close(in[0]);
    close(out[1]);

    while (off < len) {
        n = write(in[1], input + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        off += (size_t)n;
    }
    close(in[1]);
    for (;;) {
        n = read(out[0], output + got, size - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        if (got == size - 1)
            break;
    }
    output[got] = '\0';
    close(out[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    sigaction(SIGPIPE, &saved, NULL);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static double
one(void *arg)
{
    (void)arg;
    return 1;
}

static void
test_promtool(void **state)
{
    static const char *const http_labels[] = {"listener", "route", "code"};
    static const char *const reason_label[] = {"reason"};
    static const double bounds[] = {0.005, 0.1, 1, 10, 60, 600};
    const char *req[] = {"public", "/v1/tasks", "202"};
    const char *odd[] = {"admin", "/a \"quoted\"\\path\n", "404"};
    const char *sig[] = {"signal"};
    struct ts_family *http, *requests, *duration;
    struct ts_series *running;
    struct ts_metrics *m;
    char *text, output[8192];
    int status;

    (void)state;
    if (access(PROMTOOL, X_OK) != 0)
        skip();
    assert_int_equal(ts_metrics_new(&m), 0);
    http = ts_metrics_family(m, TS_METRIC_COUNTER, "http_requests_total",
                             "HTTP requests by listener, route and status code.", 3, http_labels,
                             NULL, 0);
    requests = ts_metrics_family(m, TS_METRIC_COUNTER, "graceful_shutdown_requests_total",
                                 "Drain requests by reason.", 1, reason_label, NULL, 0);
    running = ts_metrics_simple(m, TS_METRIC_GAUGE, "tasks_running", "Tasks running now.");
    duration =
        ts_metrics_family(m, TS_METRIC_HISTOGRAM, "task_graceful_shutdown_duration_seconds",
                          "Time from drain start to exit.", 0, NULL, bounds, TS_ARRAY_SIZE(bounds));
    assert_int_equal(
        ts_metrics_gauge_fn(m, "graceful_shutdown_draining", "1 while draining.", one, NULL), 0);
    assert_non_null(http);
    assert_non_null(requests);
    assert_non_null(running);
    assert_non_null(duration);
    ts_series_add(ts_family_series(http, req), 12);
    ts_series_inc(ts_family_series(http, odd));
    ts_series_inc(ts_family_series(requests, sig));
    ts_series_set(running, 3);
    ts_series_observe(ts_family_series(duration, NULL), 4.25);

    text = render(m);
    status = run_promtool(text, output, sizeof(output));
    if (status != 0 || output[0] != '\0')
        fail_msg("promtool exit %d, said:\n%s\non:\n%s", status, output, text);
    free(text);
    ts_metrics_free(m);
}

/* The check itself works: promtool flags a counter without _total. */
static void
test_promtool_notices_problems(void **state)
{
    struct ts_metrics *m;
    char *text, output[8192];

    (void)state;
    if (access(PROMTOOL, X_OK) != 0)
        skip();
    assert_int_equal(ts_metrics_new(&m), 0);
    ts_series_inc(ts_metrics_simple(m, TS_METRIC_COUNTER, "bad_counter", "No suffix."));
    text = render(m);
    run_promtool(text, output, sizeof(output));
    assert_non_null(strstr(output, "bad_counter"));
    free(text);
    ts_metrics_free(m);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_exact),
        cmocka_unit_test(test_number_format),
        cmocka_unit_test(test_escaping_invalid_utf8),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_series_identity),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_process_metrics),
        cmocka_unit_test(test_render_too_big),
        cmocka_unit_test(test_locale_independent),
        cmocka_unit_test(test_promtool),
        cmocka_unit_test(test_promtool_notices_problems),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
