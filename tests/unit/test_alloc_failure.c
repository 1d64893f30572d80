/*
 * Allocation-failure injection, after curl's memory-failure tests: every
 * scenario below is re-run with its 1st, 2nd, 3rd, ... allocation failing,
 * until a run completes without reaching the armed allocation. Every run
 * that hits the failure must return an error (never crash, never abort), and
 * the number of live allocations after the scenario and its cleanup must
 * equal the number before: no failure path leaks.
 *
 * The test binary defines malloc, calloc, realloc and free itself and
 * forwards them to glibc's __libc_* entry points, so the library, glibc's own
 * internal users (strdup, regcomp, stdio) and jansson all go through them.
 * The counters are process globals: this is a test binary, not the library.
 * No sanitizer tolerates a replaced malloc, so CMake builds this test only
 * without SANITIZE.
 *
 * Threads: the task-service scenario allocates on worker threads too, so the
 * Nth allocation is whichever thread gets there; a failure inside run() is
 * the task's business (it fails), so there only the new/register/start/
 * submit return codes must report it, and leaks are counted after
 * ts_task_service_free(). Each scenario runs twice unarmed first, so that
 * one-time allocations (stdio buffers, glibc's thread-stack cache and its
 * TLS, jansson's seed) are made before counting starts.
 */
#include <errno.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <malloc.h>
#include <regex.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <setjmp.h>

#include <cmocka.h>
#include <jansson.h>

#include "clock.h"
#include "command.h"
#include "config.h"
#include "drain.h"
#include "event_log.h"
#include "log.h"
#include "metrics.h"
#include "task.h"
#include "taskstream.h"

/* Upper bound of N: far more allocations than any scenario makes. */
#define N_MAX 10000

void *__libc_malloc(size_t size);
void *__libc_calloc(size_t n, size_t size);
void *__libc_realloc(void *p, size_t size);
void __libc_free(void *p);
void *__libc_memalign(size_t align, size_t size);

/* > 0: the allocation that brings it to 0 fails; <= 0: disarmed. */
static atomic_long countdown;
static atomic_bool hit;
static atomic_long live;
/* While set, jansson's allocations are counted but never failed (see
 * test_commands_load_jansson_failing). */
static atomic_bool jansson_exempt;
/* > 0: inside a third-party call whose own failure paths are broken; its
 * allocations are counted but never failed. */
static atomic_int exempt;

static bool
should_fail(void)
{
    long v = atomic_load(&countdown);

    if (atomic_load(&exempt) > 0)
        return false;
    while (v > 0 && !atomic_compare_exchange_weak(&countdown, &v, v - 1))
        ;
    if (v == 1) {
        atomic_store(&hit, true);
        return true;
    }
    return false;
}

void *
malloc(size_t size)
{
    void *p;

    if (should_fail())
        return NULL;
    p = __libc_malloc(size);
    if (p != NULL)
        atomic_fetch_add(&live, 1);
    return p;
}

void *
calloc(size_t n, size_t size)
{
    void *p;

    if (should_fail())
        return NULL;
    p = __libc_calloc(n, size);
    if (p != NULL)
        atomic_fetch_add(&live, 1);
    return p;
}

void *
realloc(void *old, size_t size)
{
    void *p;

    if (old != NULL && size == 0) {
        atomic_fetch_sub(&live, 1);
        __libc_free(old);
        return NULL;
    }
    if (should_fail())
        return NULL;
    p = __libc_realloc(old, size);
    if (p != NULL && old == NULL)
        atomic_fetch_add(&live, 1);
    return p;
}

void
free(void *p)
{
    if (p == NULL)
        return;
    atomic_fetch_sub(&live, 1);
    __libc_free(p);
}

/* The aligned allocators, so that what they return is counted when freed. */
int
posix_memalign(void **out, size_t align, size_t size)
{
    void *p;

    if (should_fail())
        return ENOMEM;
    p = __libc_memalign(align, size);
    if (p == NULL)
        return ENOMEM;
    atomic_fetch_add(&live, 1);
    *out = p;
    return 0;
}

void *
aligned_alloc(size_t align, size_t size)
{
    void *p;

    if (should_fail())
        return NULL;
    p = __libc_memalign(align, size);
    if (p != NULL)
        atomic_fetch_add(&live, 1);
    return p;
}

void *
memalign(size_t align, size_t size)
{
    return aligned_alloc(align, size);
}

/* jansson's allocator (json_set_alloc_funcs), counted like the others. */
static void *
jansson_malloc(size_t size)
{
    void *p;

    if (!atomic_load(&jansson_exempt))
        return malloc(size);
    atomic_fetch_add(&exempt, 1);
    p = malloc(size);
    atomic_fetch_sub(&exempt, 1);
    return p;
}

static void
jansson_free(void *p)
{
    free(p);
}

/*
 * glibc 2.36's regcomp() double-frees in free_workarea_compile() when one
 * of its allocations fails (seen with "^[a-z ]{1,64}$": "free(): double
 * free detected in tcache 2" from re_compile_internal). A failing regcomp()
 * is simulated instead: it counts as one allocation and, when that one is
 * the armed one, returns REG_ESPACE without running.
 */
int
regcomp(regex_t *restrict preg, const char *restrict pattern, int cflags)
{
    int (*real)(regex_t *, const char *, int);
    int rc;

    if (should_fail())
        return REG_ESPACE;
    *(void **)&real = dlsym(RTLD_NEXT, "regcomp");
    if (real == NULL)
        return REG_ESPACE;
    atomic_fetch_add(&exempt, 1);
    rc = real(preg, pattern, cflags);
    atomic_fetch_sub(&exempt, 1);
    return rc;
}

/* ---- the scenarios ---- */

struct scenario {
    const char *name;
    int (*run)(void *arg);
    /* A hit may be absorbed, the result then being checked (-EPROTO):
     * glibc's stdio falls back to an unbuffered FILE, the process_* metrics
     * are best effort, and worker threads allocate behind the caller. */
    bool hit_may_succeed;
    /* A known src/ bug: the loop still runs; its findings are reported and
     * the case is skipped (see the comment at the row). */
    const char *known_bug;
};

struct files {
    char dir[64];
    char key[96];
    char commands[96];
};

static struct files files;

static int
write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t len = strlen(text);

    if (fd < 0)
        return -errno;
    if (write(fd, text, len) != (ssize_t)len) {
        close(fd);
        return -EIO;
    }
    return close(fd) == 0 ? 0 : -errno;
}

static int
scenario_config(void *arg)
{
    char key_env[128];
    char commands_env[128];
    char *envp[] = {
        "LISTEN=127.0.0.1:18080",
        "ADMIN_LISTEN=127.0.0.1:18081",
        "GRACEFUL_SHUTDOWN_TIMEOUT=30s",
        "SHUTDOWN_DELAY=1s",
        "KILL_GRACE=5s",
        key_env,
        "API_AUTH_KEY=api-key-0123456789",
        "WORKERS=3",
        "MAX_QUEUED_TASKS=50",
        "TASK_RETENTION=10m",
        "EVENT_LOG_EVENTS=100",
        "EVENT_LOG_BYTES=2M",
        "SSE_HEARTBEAT_INTERVAL=15s",
        "SSE_RETRY_MS=2000",
        "MAX_CONNECTIONS=100",
        "MAX_CONNECTIONS_PER_IP=10",
        "MAX_BODY_BYTES=64K",
        "IDLE_TIMEOUT=30s",
        "HEADER_TIMEOUT=10s",
        commands_env,
        "LOG_FORMAT=text",
        "LOG_LEVEL=debug",
        "UNRELATED=ignored",
        NULL,
    };
    char *argv[] = {"taskstreamd", "--workers", "4", "--kill-grace=3s", NULL};
    struct ts_config cfg;
    char err[512];
    int rc;

    (void)arg;
    snprintf(key_env, sizeof(key_env), "DRAIN_AUTH_KEY_FILE=%s", files.key);
    snprintf(commands_env, sizeof(commands_env), "COMMANDS_FILE=%s", files.commands);
    rc = ts_config_init(&cfg);
    if (rc != 0)
        return rc;
    rc = ts_config_parse(&cfg, envp, 4, argv, err, sizeof(err));
    if (rc == 0 && (cfg.workers != 4 || cfg.drain_auth_key == NULL))
        rc = -EPROTO; /* a "success" that lost a setting */
    ts_config_dispose(&cfg);
    return rc < 0 ? rc : 0;
}

static int
scenario_event_log(void *arg)
{
    struct ts_event_log log;
    struct ts_event *ev;
    char data[96];
    int rc;

    (void)arg;
    rc = ts_event_log_init(&log, 4, 256);
    if (rc != 0)
        return rc;
    for (int i = 0; i < 10; i++) {
        int n = snprintf(data, sizeof(data), "{\"n\":%d,\"pad\":\"%.*s\"}", i, i * 4,
                         "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");

        if (ts_event_log_append(&log, "tick", data, (size_t)n) == 0) {
            rc = -ENOMEM;
            goto out_log;
        }
    }
    ev = ts_event_gap(1, ts_event_log_first_id(&log) - 1);
    if (ev == NULL) {
        rc = -ENOMEM;
        goto out_log;
    }
    ts_event_unref(ev);
    ev = ts_event_draining("signal");
    if (ev == NULL) {
        rc = -ENOMEM;
        goto out_log;
    }
    ts_event_unref(ev);
    if (ts_event_log_last_id(&log) != 10 || log.evicted == 0)
        rc = -EPROTO;

out_log:
    ts_event_log_dispose(&log);
    return rc;
}

static double
gauge_value(void *arg)
{
    return 42.0;
}

static int
scenario_metrics(void *arg)
{
    static const char *const labels[] = {"method", "status"};
    static const char *const values[][2] = {{"GET", "200"}, {"POST", "202"}, {"GET", "a\"b\\c\n"}};
    static const char *const kind_label[] = {"kind"};
    static const char *const kind_value[] = {"ticker"};
    static const double buckets[] = {0.1, 1, 10};
    static const char *const rendered[] = {
        "http_requests_total{method=\"GET\",status=\"200\"} 1\n",
        "http_requests_total{method=\"POST\",status=\"202\"} 2\n",
        "http_requests_total{method=\"GET\",status=\"a\\\"b\\\\c\\n\"} 3\n",
        "tasks_running 3\n",
        "draining 42\n",
        "task_duration_seconds_bucket{kind=\"ticker\",le=\"+Inf\"} 2\n",
        "task_duration_seconds_count{kind=\"ticker\"} 2\n",
    };
    struct ts_metrics *m;
    struct ts_family *f;
    struct ts_series *s;
    char *text = NULL;
    size_t len;
    int rc;

    (void)arg;
    rc = ts_metrics_new(&m);
    if (rc != 0)
        return rc;
    rc = -ENOMEM;
    f = ts_metrics_family(m, TS_METRIC_COUNTER, "http_requests_total", "Requests.", 2, labels, NULL,
                          0);
    if (f == NULL)
        goto out_metrics;
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        s = ts_family_series(f, values[i]);
        if (s == NULL)
            goto out_metrics;
        ts_series_add(s, i + 1);
    }
    s = ts_metrics_simple(m, TS_METRIC_GAUGE, "tasks_running", "Running.");
    if (s == NULL)
        goto out_metrics;
    ts_series_set(s, 3);
    f = ts_metrics_family(m, TS_METRIC_HISTOGRAM, "task_duration_seconds", "Durations.", 1,
                          kind_label, buckets, 3);
    if (f == NULL)
        goto out_metrics;
    s = ts_family_series(f, kind_value);
    if (s == NULL)
        goto out_metrics;
    ts_series_observe(s, 0.5);
    ts_series_observe(s, 50);
    rc = ts_metrics_gauge_fn(m, "draining", "Draining.", gauge_value, NULL);
    if (rc != 0)
        goto out_metrics;
    rc = ts_metrics_render(m, &text, &len);
    /* The process_* set is best effort (a /proc read that fails leaves its
     * metric out), but everything registered must be there. */
    for (size_t i = 0; rc == 0 && i < sizeof(rendered) / sizeof(rendered[0]); i++)
        if (strstr(text, rendered[i]) == NULL)
            rc = -EPROTO;
    free(text);

out_metrics:
    ts_metrics_free(m);
    return rc;
}

static int
scenario_commands(void *arg)
{
    char *envp[] = {"LANG=C.UTF-8", "TZ=UTC", "SECRET=no", NULL};
    struct ts_commands *cmds;
    char err[512];
    int rc;

    (void)arg;
    atomic_store(&jansson_exempt, true);
    rc = ts_commands_load(&cmds, files.commands, envp, 5000, NULL, err, sizeof(err));
    atomic_store(&jansson_exempt, false);
    if (rc != 0)
        return rc;
    if (ts_commands_count(cmds) != 2)
        rc = -EPROTO;
    ts_commands_free(cmds);
    return rc;
}

struct task_env {
    int log_fd;
    bool hung;
};

static int
scenario_task_service(void *arg)
{
    struct ts_task_service_config cfg = {
        .workers = 2,
        .max_queued = 8,
        .retention_ns = 60 * TS_NS_PER_S,
        .log_events = 16,
        .log_bytes = 65536,
    };
    struct ts_clock clock = ts_clock_real();
    struct ts_metrics *metrics;
    struct ts_log *log;
    struct ts_task_service *svc;
    struct ts_task *task;
    json_t *body;
    struct task_env *env = arg;
    char err[256];
    int rc;

    rc = ts_metrics_new(&metrics);
    if (rc != 0)
        return rc;
    /* A logger on /dev/null: failure paths log, and logging allocates. */
    rc = ts_log_new(&log, env->log_fd, TS_LOG_FORMAT_JSON, TS_LOG_DEBUG);
    if (rc != 0)
        goto out_metrics;
    rc = ts_task_service_new(&svc, &cfg, ts_drain_noop(), clock, metrics, log);
    if (rc != 0)
        goto out_log;
    rc = ts_task_service_register(svc, ts_ticker_kind());
    if (rc != 0)
        goto out_service;
    rc = ts_task_service_start(svc);
    if (rc != 0)
        goto out_service;
    body = json_pack("{s:s, s:i, s:i, s:i}", "kind", "ticker", "count", 3, "interval_ms", 0,
                     "payload_bytes", 8);
    if (body == NULL) {
        rc = -ENOMEM;
        goto out_service;
    }
    rc = ts_task_submit(svc, body, NULL, &task, err, sizeof(err));
    json_decref(body);
    if (rc != 0)
        goto out_service;
    if (ts_task_service_wait_idle(svc, ts_clock_now_ns(&clock) + 5 * TS_NS_PER_S) != 0)
        env->hung = true; /* the task never ended: reported by the caller */
    ts_task_unref(task);

out_service:
    ts_task_service_free(svc);
out_log:
    ts_log_free(log);
out_metrics:
    ts_metrics_free(metrics);
    return rc;
}

static int
scenario_coordinator(void *arg)
{
    struct ts_coordinator *c;
    struct ts_drain_status st;
    int rc;

    (void)arg;
    rc = ts_coordinator_new(&c);
    if (rc != 0)
        return rc;
    ts_coordinator_drain(c);
    ts_coordinator_status(c, &st);
    if (st.state != TS_STATE_DRAINING)
        rc = -EPROTO;
    ts_coordinator_free(c);
    return rc;
}

/* ---- the loop ---- */

struct outcome {
    long runs;         /* armed runs that hit their failure */
    long bad_success;  /* hits that returned 0 where an error was due */
    long leaks;        /* runs whose live count changed */
    long first_leak_n; /* N of the first leaking run, 0: none */
    long leak_delta;   /* its change in live allocations */
    long first_bad_n;  /* N of the first bad success */
    long wrong;        /* runs that returned a wrong result (-EPROTO) */
    long first_wrong_n;
    long hangs; /* task-service runs whose task never ended */
    long first_hang_n;
    bool finished; /* a run completed without reaching its failure */
};

static int
run_armed(const struct scenario *sc, void *arg, long n)
{
    int rc;

    atomic_store(&hit, false);
    atomic_store(&countdown, n);
    rc = sc->run(arg);
    atomic_store(&countdown, 0);
    return rc;
}

static void
loop(const struct scenario *sc, void *arg, bool *hang, struct outcome *out)
{
    memset(out, 0, sizeof(*out));
    /* Warm-up: one-time allocations happen here, unarmed. */
    for (int i = 0; i < 2; i++)
        assert_int_equal(sc->run(arg), 0);
    for (long n = 1; n <= N_MAX; n++) {
        long before = atomic_load(&live);
        long after;
        int rc;

        if (hang != NULL)
            *hang = false;
        rc = run_armed(sc, arg, n);
        after = atomic_load(&live);
        if (hang != NULL && *hang && out->hangs++ == 0)
            out->first_hang_n = n;
        if (after != before && out->leaks++ == 0) {
            out->first_leak_n = n;
            out->leak_delta = after - before;
        }
        if (!atomic_load(&hit)) {
            assert_int_equal(rc, 0); /* nothing failed: it must work */
            out->finished = true;
            return;
        }
        if (rc == -EPROTO && out->wrong++ == 0)
            out->first_wrong_n = n;
        out->runs++;
        if (rc == 0 && !sc->hit_may_succeed && out->bad_success++ == 0)
            out->first_bad_n = n;
    }
}

static void
check(const struct scenario *sc, void *arg, bool *hang)
{
    struct outcome o;

    loop(sc, arg, hang, &o);
    print_message("[alloc] %s: %ld failure points, %ld leaking runs (first N=%ld, %+ld), "
                  "%ld silent successes (first N=%ld), %ld wrong results (first N=%ld), "
                  "%ld hangs (first N=%ld)\n",
                  sc->name, o.runs, o.leaks, o.first_leak_n, o.leak_delta, o.bad_success,
                  o.first_bad_n, o.wrong, o.first_wrong_n, o.hangs, o.first_hang_n);
    assert_true(o.finished);
    assert_true(o.runs > 0);
    if (sc->known_bug != NULL &&
        (o.leaks != 0 || o.bad_success != 0 || o.wrong != 0 || o.hangs != 0)) {
        print_message("[alloc] %s: skipped, known bug: %s\n", sc->name, sc->known_bug);
        skip();
    }
    assert_int_equal(o.leaks, 0);
    assert_int_equal(o.bad_success, 0);
    assert_int_equal(o.wrong, 0);
    assert_int_equal(o.hangs, 0);
}

static const struct scenario scenarios[] = {
    {"config", scenario_config, false, NULL},
    {"event_log", scenario_event_log, false, NULL},
    {"metrics", scenario_metrics, true, NULL},
    {"commands_load", scenario_commands, true, NULL},
    {"task_service", scenario_task_service, true, NULL},
    {"coordinator", scenario_coordinator, false, NULL},
};

static void
test_config(void **state)
{
    check(&scenarios[0], NULL, NULL);
}

static void
test_event_log(void **state)
{
    check(&scenarios[1], NULL, NULL);
}

static void
test_metrics(void **state)
{
    check(&scenarios[2], NULL, NULL);
}

static void
test_commands(void **state)
{
    check(&scenarios[3], NULL, NULL);
}

/*
 * Known bug, not ours: jansson 2.14 (Debian's libjansson4 2.14-2) corrupts
 * its heap when an allocation fails while json_load_file() lexes the file
 * (its lexer ignores a failed append to its token buffer): with the commands
 * file of this test, failing the 33rd allocation of ts_commands_load() ends
 * in "free(): invalid next size (fast)" inside json_loadf(), and an
 * allocator given to json_set_alloc_funcs() that fails its Nth call
 * reproduces it without taskstream (ASan: SEGV on a write inside
 * libjansson.so.4). So test_commands keeps jansson's allocations from
 * failing and fails only ours and glibc's; this case stands for jansson's
 * until jansson is fixed or its lexer avoided.
 */
static void
test_commands_load_jansson_failing(void **state)
{
    skip();
}

static void
test_task_service(void **state)
{
    struct task_env env = {.log_fd = open("/dev/null", O_WRONLY | O_CLOEXEC)};

    assert_true(env.log_fd >= 0);
    check(&scenarios[4], &env, &env.hung);
    close(env.log_fd);
}

static void
test_coordinator(void **state)
{
    check(&scenarios[5], NULL, NULL);
}

static int
setup_files(void **state)
{
    static const char commands[] =
        "{\"commands\": {\n"
        "  \"greet\": {\n"
        "    \"description\": \"Say hello.\",\n"
        "    \"argv\": [\"/bin/echo\", \"hello\", \"{who}\"],\n"
        "    \"params\": {\"who\": {\"pattern\": \"^[a-z ]{1,64}$\", \"default\": \"world\"}},\n"
        "    \"env\": {\"allow\": [\"LANG\", \"TZ\"], \"set\": {\"GREETING\": \"1\"}},\n"
        "    \"cwd\": \"/tmp\",\n"
        "    \"timeout\": \"10m\",\n"
        "    \"max_output_bytes\": 1048576,\n"
        "    \"max_concurrent\": 4\n"
        "  },\n"
        "  \"count\": {\n"
        "    \"argv\": [\"/bin/echo\", \"--n={n}\", \"{level}\"],\n"
        "    \"params\": {\"n\": {\"pattern\": \"^[0-9]+$\"},\n"
        "               \"level\": {\"pattern\": \"^-?[0-9]$\", \"default\": \"1\",\n"
        "                         \"allow_leading_dash\": true}},\n"
        "    \"kill_grace\": \"2s\",\n"
        "    \"max_output_bytes\": \"16M\",\n"
        "    \"rlimits\": {\"cpu_seconds\": 60, \"open_files\": 64}\n"
        "  }\n"
        "}}\n";

    (void)state;
    snprintf(files.dir, sizeof(files.dir), "/tmp/ts-alloc-XXXXXX");
    if (mkdtemp(files.dir) == NULL)
        return -1;
    snprintf(files.key, sizeof(files.key), "%s/drain.key", files.dir);
    snprintf(files.commands, sizeof(files.commands), "%s/commands.json", files.dir);
    if (write_file(files.key, "drain-key-0123456789abcdef\n") != 0 ||
        write_file(files.commands, commands) != 0)
        return -1;
    return 0;
}

static int
teardown_files(void **state)
{
    (void)state;
    unlink(files.key);
    unlink(files.commands);
    rmdir(files.dir);
    return 0;
}

/* An argument selects tests by name (cmocka's filter), to debug one. */
int
main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_event_log),
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_commands),
        cmocka_unit_test(test_commands_load_jansson_failing),
        cmocka_unit_test(test_task_service),
        cmocka_unit_test(test_coordinator),
    };

    json_set_alloc_funcs(jansson_malloc, jansson_free);
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, setup_files, teardown_files);
}
