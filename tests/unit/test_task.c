/*
 * Unit tests for the task service, through task.h with a test kind whose
 * run() does what the request body says: emit events, fail, block until
 * cancelled, wait for a gate while ignoring cancellation (the C handler that
 * cannot be stopped), sleep on the service's clock, or try bad event names.
 *
 * Covered: kind registration, ids, the submit errors (a fake drain view for
 * -ESHUTDOWN), the state machine and its JSON, the "end" event as the last of
 * a gapless log, waiters, cancellation while queued and while running,
 * wait_idle with its interrupt, cancel_all and finish (abandoning, and free()
 * leaving an abandoned worker behind), and the cleanup thread on a fake
 * clock. Nothing here sleeps to let something happen except where the test
 * says why; waits are bounded (2 s) so a bug fails instead of hanging.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "task.h"
#include "util.h"
#include "task_helpers.h"

#define WAIT_NS (2 * TS_NS_PER_S)

/* ---- the test kind ---- */

/* run() executes on the service's worker threads, where a failing cmocka
 * assertion would longjmp across threads: it records what it saw here, and
 * the test thread asserts on that once the task has ended. */
struct env {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int started;  /* run() calls that began */
    int returned; /* run() calls that returned */
    bool open;    /* the gate of "gate" tasks */
    int late_rc;  /* what a "gate" task's emit returned after the gate opened */
    int emit_rc;  /* the first failure of an "emit" task's emit, 0 while none */
    int names_rc[4];
};

static void
env_bump(struct env *env, int *counter)
{
    pthread_mutex_lock(&env->mu);
    (*counter)++;
    pthread_cond_broadcast(&env->cv);
    pthread_mutex_unlock(&env->mu);
}

/* Wait (bounded) until *counter >= want. */
static void
env_wait(struct env *env, const int *counter, int want)
{
    struct ts_clock real = ts_clock_real();
    int64_t deadline = ts_monotonic_ns() + WAIT_NS;
    int got;

    pthread_mutex_lock(&env->mu);
    while (*counter < want) {
        if (ts_clock_wait(&real, &env->cv, &env->mu, deadline) == ETIMEDOUT)
            break;
    }
    got = *counter;
    pthread_mutex_unlock(&env->mu);
    assert_true(got >= want);
}

static void
env_emit_failed(struct env *env, int rc)
{
    pthread_mutex_lock(&env->mu);
    if (env->emit_rc == 0)
        env->emit_rc = rc;
    pthread_mutex_unlock(&env->mu);
}

static int
env_emit_rc(struct env *env)
{
    int rc;

    pthread_mutex_lock(&env->mu);
    rc = env->emit_rc;
    pthread_mutex_unlock(&env->mu);
    return rc;
}

static void
env_open_gate(struct env *env)
{
    pthread_mutex_lock(&env->mu);
    env->open = true;
    pthread_cond_broadcast(&env->cv);
    pthread_mutex_unlock(&env->mu);
}

static int
test_validate(void *arg, const json_t *params, char *err, size_t errlen)
{
    static const char *const modes[] = {"emit", "fail", "block", "gate", "sleep", "names"};
    const char *mode = json_string_value(json_object_get(params, "mode"));

    (void)arg;
    if (mode == NULL) {
        snprintf(err, errlen, "\"mode\" must be a string");
        return -EINVAL;
    }
    if (strcmp(mode, "missing") == 0) {
        snprintf(err, errlen, "no such mode");
        return -ENOENT;
    }
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        if (strcmp(mode, modes[i]) == 0)
            return 0;
    }
    snprintf(err, errlen, "\"mode\" is not one of the test modes");
    return -EINVAL;
}

static void
test_run(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *res)
{
    struct env *env = arg;
    const json_t *p = ts_task_params(ctx);
    const char *mode = json_string_value(json_object_get(p, "mode"));
    json_int_t n = json_integer_value(json_object_get(p, "n"));
    int rc;

    env_bump(env, &env->started);
    if (strcmp(mode, "emit") == 0) {
        for (json_int_t i = 0; i < n; i++) {
            rc = ts_task_emit(ctx, "step", json_pack("{s:I}", "i", i));
            if (rc != 0) {
                env_emit_failed(env, rc);
                break;
            }
        }
    } else if (strcmp(mode, "fail") == 0) {
        res->status = TS_TASK_FAILED;
        res->reason = "boom";
        res->exit_code = (int)n;
        res->signal = (int)json_integer_value(json_object_get(p, "signal"));
    } else if (strcmp(mode, "block") == 0) {
        while (!ts_task_sleep_ms(ctx, 60000))
            ;
    } else if (strcmp(mode, "gate") == 0) {
        /* Deaf to cancellation, like a handler stuck in a system call. */
        pthread_mutex_lock(&env->mu);
        while (!env->open)
            pthread_cond_wait(&env->cv, &env->mu);
        pthread_mutex_unlock(&env->mu);
        rc = ts_task_emit(ctx, "step", json_object());
        pthread_mutex_lock(&env->mu);
        env->late_rc = rc;
        pthread_mutex_unlock(&env->mu);
    } else if (strcmp(mode, "sleep") == 0) {
        if (!ts_task_sleep_ms(ctx, n))
            ts_task_emit(ctx, "woke", json_null());
    } else if (strcmp(mode, "names") == 0) {
        env->names_rc[0] = ts_task_emit(ctx, "bad name", json_null());
        env->names_rc[1] = ts_task_emit(ctx, "end", json_null());
        env->names_rc[2] = ts_task_emit(ctx, "fine", NULL);
        env->names_rc[3] = ts_task_emit(ctx, "ok.name-2_x", json_string("a\nb"));
    }
    env_bump(env, &env->returned);
}

/* ---- a drain view the test controls ---- */

struct fake_drain {
    atomic_bool draining;
};

static bool
fake_is_draining(void *self)
{
    return atomic_load(&((struct fake_drain *)self)->draining);
}

static void
fake_status(void *self, struct ts_drain_status *out)
{
    memset(out, 0, sizeof(*out));
    out->state = fake_is_draining(self) ? TS_STATE_DRAINING : TS_STATE_SERVING;
}

static int
fake_subscribe(void *self, ts_drain_cb *cb, void *arg)
{
    (void)self;
    (void)cb;
    (void)arg;
    return 0;
}

static void
fake_unsubscribe(void *self, int id)
{
    (void)self;
    (void)id;
}

static const struct ts_drain_ops fake_drain_ops = {
    .is_draining = fake_is_draining,
    .status = fake_status,
    .subscribe = fake_subscribe,
    .unsubscribe = fake_unsubscribe,
};

/* ---- fixture ---- */

struct fixture {
    struct env env;
    struct ts_task_kind kind;
    struct ts_metrics *metrics;
    struct ts_task_service *svc;
    struct fake_drain drain;
    struct ts_fake_clock fake;
    bool use_fake_clock;
};

/* A service with the test kind registered, not started. */
static struct fixture *
fixture_new(unsigned workers, unsigned max_queued, bool fake_clock)
{
    struct ts_task_service_config cfg = {
        .workers = workers,
        .max_queued = max_queued,
        .retention_ns = 10 * TS_NS_PER_S,
        .log_events = 64,
        .log_bytes = 1 << 16,
    };
    struct fixture *fx = calloc(1, sizeof(*fx));

    assert_non_null(fx);
    pthread_mutex_init(&fx->env.mu, NULL);
    assert_int_equal(ts_cond_init(&fx->env.cv), 0);
    fx->kind = (struct ts_task_kind){
        .name = "test", .validate = test_validate, .run = test_run, .arg = &fx->env};
    atomic_init(&fx->drain.draining, false);
    fx->use_fake_clock = fake_clock;
    ts_fake_clock_init(&fx->fake, TS_NS_PER_S);
    assert_int_equal(ts_metrics_new(&fx->metrics), 0);
    assert_int_equal(
        ts_task_service_new(&fx->svc, &cfg, (struct ts_drain_view){&fake_drain_ops, &fx->drain},
                            fake_clock ? ts_fake_clock_view(&fx->fake) : ts_clock_real(),
                            fx->metrics, NULL),
        0);
    assert_int_equal(ts_task_service_register(fx->svc, &fx->kind), 0);
    return fx;
}

static struct fixture *
fixture_start(unsigned workers, unsigned max_queued)
{
    struct fixture *fx = fixture_new(workers, max_queued, false);

    assert_int_equal(ts_task_service_start(fx->svc), 0);
    return fx;
}

/* Also checks, once the service is freed, that no "emit" task failed to emit. */
static void
fixture_free(struct fixture *fx)
{
    int emit_rc;

    ts_task_service_free(fx->svc);
    emit_rc = env_emit_rc(&fx->env);
    ts_metrics_free(fx->metrics);
    ts_fake_clock_dispose(&fx->fake);
    pthread_cond_destroy(&fx->env.cv);
    pthread_mutex_destroy(&fx->env.mu);
    free(fx);
    assert_int_equal(emit_rc, 0);
}

static int
try_submit(struct fixture *fx, const char *body_text, struct ts_task **out, char *err,
           size_t errlen)
{
    json_error_t jerr;
    json_t *body = json_loads(body_text, JSON_DECODE_ANY, &jerr);
    int rc;

    assert_non_null(body);
    *out = NULL;
    rc = ts_task_submit(fx->svc, body, NULL, out, err, errlen);
    json_decref(body);
    return rc;
}

static struct ts_task *
submit(struct fixture *fx, const char *body_text)
{
    struct ts_task *t;
    char err[256];

    assert_int_equal(try_submit(fx, body_text, &t, err, sizeof(err)), 0);
    assert_non_null(t);
    return t;
}

static int64_t
deadline_in_ms(int64_t ms)
{
    return ts_monotonic_ns() + ms * TS_NS_PER_MS;
}

/* ---- reading tasks ---- */

struct test_waiter {
    struct ts_task_waiter w;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wakes;
};

static void
on_wake(struct ts_task_waiter *w)
{
    struct test_waiter *tw = ts_container_of(w, struct test_waiter, w);

    pthread_mutex_lock(&tw->mu);
    tw->wakes++;
    pthread_cond_broadcast(&tw->cv);
    pthread_mutex_unlock(&tw->mu);
}

static void
waiter_init(struct test_waiter *tw)
{
    memset(tw, 0, sizeof(*tw));
    tw->w.wake = on_wake;
    pthread_mutex_init(&tw->mu, NULL);
    assert_int_equal(ts_cond_init(&tw->cv), 0);
}

static void
waiter_dispose(struct test_waiter *tw)
{
    pthread_cond_destroy(&tw->cv);
    pthread_mutex_destroy(&tw->mu);
}

static int
waiter_wakes(struct test_waiter *tw)
{
    int n;

    pthread_mutex_lock(&tw->mu);
    n = tw->wakes;
    pthread_mutex_unlock(&tw->mu);
    return n;
}

/* Wait (bounded) until the waiter has been woken more than `seen` times. */
static bool
waiter_wait(struct test_waiter *tw, int seen)
{
    struct ts_clock real = ts_clock_real();
    int64_t deadline = ts_monotonic_ns() + WAIT_NS;
    bool woken;

    pthread_mutex_lock(&tw->mu);
    while (tw->wakes == seen) {
        if (ts_clock_wait(&real, &tw->cv, &tw->mu, deadline) == ETIMEDOUT)
            break;
    }
    woken = tw->wakes != seen;
    pthread_mutex_unlock(&tw->mu);
    return woken;
}

/* Wait (bounded) for the task's end the way a stream does: as a waiter. */
static void
wait_ended(struct ts_task *t)
{
    struct test_waiter tw;
    bool ended = false;
    int seen;

    waiter_init(&tw);
    for (;;) {
        seen = waiter_wakes(&tw);
        ts_task_lock(t);
        ended = ts_task_ended_locked(t);
        if (!ended)
            ts_task_wait_locked(t, &tw.w);
        ts_task_unlock(t);
        if (ended || !waiter_wait(&tw, seen))
            break;
    }
    ts_task_lock(t);
    ts_task_unwait_locked(t, &tw.w);
    ts_task_unlock(t);
    waiter_dispose(&tw);
    assert_true(ended);
}

static json_t *
field(struct ts_task *t, const char *key)
{
    json_t *o = ts_task_to_json(t);
    json_t *v;

    assert_non_null(o);
    v = json_incref(json_object_get(o, key));
    json_decref(o);
    assert_non_null(v);
    return v;
}

static void
assert_string_field(struct ts_task *t, const char *key, const char *want)
{
    json_t *v = field(t, key);

    if (want == NULL) {
        assert_true(json_is_null(v));
    } else {
        assert_true(json_is_string(v));
        assert_string_equal(json_string_value(v), want);
    }
    json_decref(v);
}

static void
assert_state(struct ts_task *t, const char *state)
{
    assert_string_field(t, "state", state);
}

/* null, or an integer equal to *want */
static void
assert_int_field(struct ts_task *t, const char *key, const json_int_t *want)
{
    json_t *v = field(t, key);

    if (want == NULL) {
        assert_true(json_is_null(v));
    } else {
        assert_true(json_is_integer(v));
        assert_int_equal(json_integer_value(v), *want);
    }
    json_decref(v);
}

/* "2026-11-24T16:24:53.123Z", or null when `set` is false. */
static void
assert_time_field(struct ts_task *t, const char *key, bool set)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    json_t *v = field(t, key);
    const char *s;

    if (!set) {
        assert_true(json_is_null(v));
        json_decref(v);
        return;
    }
    s = json_string_value(v);
    assert_non_null(s);
    assert_int_equal(strlen(s), strlen(shape));
    for (size_t i = 0; shape[i] != '\0'; i++) {
        if (shape[i] == 'd')
            assert_true(s[i] >= '0' && s[i] <= '9');
        else
            assert_int_equal(s[i], shape[i]);
    }
    json_decref(v);
}

/* The frame of event `id` (a copy), or NULL when not in the log. */
static char *
frame(struct ts_task *t, uint64_t id)
{
    struct ts_event *ev;
    char *copy = NULL;

    ts_task_lock(t);
    ev = ts_event_log_get(ts_task_log_locked(t), id);
    if (ev != NULL)
        copy = strndup(ev->frame, ev->len);
    ts_task_unlock(t);
    return copy;
}

static uint64_t
end_id(struct ts_task *t)
{
    uint64_t id;

    ts_task_lock(t);
    id = ts_task_end_id_locked(t);
    ts_task_unlock(t);
    return id;
}

/* The task's last event is "end" with exactly `data`. */
static void
assert_end(struct ts_task *t, const char *data)
{
    char want[512];
    uint64_t id = last_id(t);
    char *got = frame(t, id);

    assert_int_equal(end_id(t), id);
    snprintf(want, sizeof(want), "id: %llu\nevent: end\ndata: %s\n\n", (unsigned long long)id,
             data);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static void
assert_metric(struct fixture *fx, const char *line)
{
    char *text;
    size_t len;

    assert_int_equal(ts_metrics_render(fx->metrics, &text, &len), 0);
    if (strstr(text, line) == NULL)
        fail_msg("no line \"%s\" in:\n%s", line, text);
    free(text);
}

/* ---- tests ---- */

static void
test_register(void **state)
{
    static const struct {
        const char *name;
        int want;
    } rows[] = {
        {"", -EINVAL},
        {"Upper", -EINVAL},
        {"a b", -EINVAL},
        {"a.b", -EINVAL},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", -EINVAL}, /* 65 */
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0},        /* 64 */
        {"ok_kind-2", 0},
        {"test", -EEXIST},
    };
    struct fixture *fx = fixture_new(1, 4, false);
    struct ts_task_kind kinds[sizeof(rows) / sizeof(rows[0])]; /* must outlive the service */
    struct ts_task_kind kind = fx->kind;

    (void)state;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        kinds[i] = fx->kind;
        kinds[i].name = rows[i].name;
        assert_int_equal(ts_task_service_register(fx->svc, &kinds[i]), rows[i].want);
    }
    kind.name = NULL;
    assert_int_equal(ts_task_service_register(fx->svc, &kind), -EINVAL);
    kind.name = "no_run";
    kind.run = NULL;
    assert_int_equal(ts_task_service_register(fx->svc, &kind), -EINVAL);

    assert_int_equal(ts_task_service_start(fx->svc), 0);
    kind = fx->kind;
    kind.name = "late";
    assert_int_equal(ts_task_service_register(fx->svc, &kind), -EBUSY);
    /* Every registered kind has its series from the start. */
    assert_metric(fx, "tasks_finished_total{kind=\"ok_kind-2\",status=\"cancelled\"} 0\n");
    assert_metric(fx, "tasks_submitted_total{kind=\"test\"} 0\n");
    fixture_free(fx);
}

static void
test_ids(void **state)
{
    enum { N = 64 };
    struct fixture *fx = fixture_start(2, N);
    struct ts_task *tasks[N];
    struct ts_task *found;

    (void)state;
    for (int i = 0; i < N; i++) {
        tasks[i] = submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\"}");
        assert_true(ts_is_task_id(ts_task_get_id(tasks[i])));
        assert_string_field(tasks[i], "id", ts_task_get_id(tasks[i]));
        for (int j = 0; j < i; j++)
            assert_string_not_equal(ts_task_get_id(tasks[i]), ts_task_get_id(tasks[j]));
    }
    found = ts_task_find(fx->svc, ts_task_get_id(tasks[7]));
    assert_ptr_equal(found, tasks[7]);
    ts_task_unref(found);
    assert_null(ts_task_find(fx->svc, "0123456789abcdef0123456789abcdef"));
    assert_null(ts_task_find(fx->svc, "not an id"));
    assert_int_equal(ts_task_service_wait_idle(fx->svc, deadline_in_ms(2000)), 0);
    assert_metric(fx, "tasks_submitted_total{kind=\"test\"} 64\n");
    assert_metric(fx, "tasks_finished_total{kind=\"test\",status=\"succeeded\"} 64\n");
    for (int i = 0; i < N; i++)
        ts_task_unref(tasks[i]);
    fixture_free(fx);
}

static void
test_submit_errors(void **state)
{
    static const struct {
        const char *body;
        int want;
        const char *message;
    } rows[] = {
        {"[1]", -EINVAL, "the request body must be a JSON object"},
        {"{}", -EINVAL, "\"kind\" must be a string"},
        {"{\"kind\":3}", -EINVAL, "\"kind\" must be a string"},
        {"{\"kind\":\"nope\"}", -ENOENT, "unknown task kind \"nope\" (allowed: test)"},
        {"{\"kind\":\"test\"}", -EINVAL, "\"mode\" must be a string"},
        {"{\"kind\":\"test\",\"mode\":\"what\"}", -EINVAL, "\"mode\" is not one of the test modes"},
        {"{\"kind\":\"test\",\"mode\":\"missing\"}", -ENOENT, "no such mode"},
    };
    struct fixture *fx = fixture_start(1, 4);
    struct ts_task *t;
    json_t *list;
    char err[256];

    (void)state;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        assert_int_equal(try_submit(fx, rows[i].body, &t, err, sizeof(err)), rows[i].want);
        assert_null(t);
        assert_string_equal(err, rows[i].message);
    }
    list = ts_task_service_list(fx->svc, 0, NULL, SIZE_MAX);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    assert_metric(fx, "tasks_submitted_total{kind=\"test\"} 0\n");
    fixture_free(fx);
}

static void
test_queue_full(void **state)
{
    struct fixture *fx = fixture_start(1, 2);
    struct ts_task *running, *a, *b, *refused, *after;
    char err[256];

    (void)state;
    running = submit(fx, "{\"kind\":\"test\",\"mode\":\"gate\"}");
    env_wait(&fx->env, &fx->env.started, 1);
    a = submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\"}");
    b = submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\"}");
    assert_int_equal(
        try_submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\"}", &refused, err, sizeof(err)),
        -EAGAIN);
    assert_null(refused);
    assert_string_equal(err, "the task queue is full (2 queued)");
    assert_int_equal(ts_task_service_active(fx->svc), 3);
    assert_metric(fx, "tasks_queued 2\n");
    assert_metric(fx, "tasks_running 1\n");

    env_open_gate(&fx->env);
    assert_int_equal(ts_task_service_wait_idle(fx->svc, deadline_in_ms(2000)), 0);
    after = submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\"}");
    wait_ended(after);
    assert_metric(fx, "tasks_queued 0\n");
    assert_metric(fx, "tasks_running 0\n");
    ts_task_unref(running);
    ts_task_unref(a);
    ts_task_unref(b);
    ts_task_unref(after);
    fixture_free(fx);
}

static void
test_draining(void **state)
{
    struct fixture *fx = fixture_start(1, 4);
    struct ts_task *t;
    char err[256];

    (void)state;
    atomic_store(&fx->drain.draining, true);
    assert_int_equal(try_submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\"}", &t, err, sizeof(err)),
                     -ESHUTDOWN);
    assert_null(t);
    assert_string_equal(err, "the server is draining; retry on another instance");
    /* The check comes first: even a bad body gets the draining answer. */
    assert_int_equal(try_submit(fx, "{}", &t, err, sizeof(err)), -ESHUTDOWN);

    atomic_store(&fx->drain.draining, false);
    t = submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\"}");
    wait_ended(t);
    ts_task_unref(t);
    fixture_free(fx);
}

static void
test_state_machine(void **state)
{
    static const json_int_t zero = 0, three = 3, two_events = 3;
    struct fixture *fx = fixture_start(1, 8);
    struct ts_task *gate, *fail, *emit;
    json_t *list;

    (void)state;
    gate = submit(fx, "{\"kind\":\"test\",\"mode\":\"gate\"}");
    env_wait(&fx->env, &fx->env.started, 1);
    fail = submit(fx, "{\"kind\":\"test\",\"mode\":\"fail\",\"n\":3}");
    emit = submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\",\"n\":2}");

    assert_state(gate, "running");
    assert_string_field(gate, "kind", "test");
    assert_time_field(gate, "created_at", true);
    assert_time_field(gate, "started_at", true);
    assert_time_field(gate, "finished_at", false);
    assert_int_field(gate, "exit_code", NULL);
    assert_state(fail, "queued");
    assert_time_field(fail, "started_at", false);
    assert_int_field(fail, "events", &zero);

    /* Newest first. */
    list = ts_task_service_list(fx->svc, 0, NULL, SIZE_MAX);
    assert_int_equal(json_array_size(list), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "id")),
                        ts_task_get_id(emit));
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 2), "id")),
                        ts_task_get_id(gate));
    json_decref(list);

    env_open_gate(&fx->env);
    wait_ended(gate);
    wait_ended(fail);
    wait_ended(emit);
    assert_state(gate, "succeeded");
    assert_time_field(gate, "finished_at", true);
    assert_int_field(gate, "exit_code", &zero);
    assert_string_field(gate, "reason", NULL);
    assert_int_field(gate, "signal", NULL);
    assert_state(fail, "failed");
    assert_int_field(fail, "exit_code", &three);
    assert_string_field(fail, "reason", "boom");
    assert_state(emit, "succeeded");
    assert_int_field(emit, "events", &two_events);
    assert_metric(fx, "tasks_finished_total{kind=\"test\",status=\"failed\"} 1\n");
    ts_task_unref(gate);
    ts_task_unref(fail);
    ts_task_unref(emit);
    fixture_free(fx);
}

static void
test_end_event(void **state)
{
    static const struct {
        const char *body;
        uint64_t events; /* including "end" */
        const char *end;
    } rows[] = {
        {"{\"kind\":\"test\",\"mode\":\"emit\",\"n\":3}", 4,
         "{\"status\":\"succeeded\",\"reason\":null,\"exit_code\":0}"},
        {"{\"kind\":\"test\",\"mode\":\"emit\"}", 1,
         "{\"status\":\"succeeded\",\"reason\":null,\"exit_code\":0}"},
        {"{\"kind\":\"test\",\"mode\":\"fail\",\"n\":2}", 1,
         "{\"status\":\"failed\",\"reason\":\"boom\",\"exit_code\":2}"},
        {"{\"kind\":\"test\",\"mode\":\"fail\",\"n\":137,\"signal\":9}", 1,
         "{\"status\":\"failed\",\"reason\":\"boom\",\"exit_code\":137,\"signal\":9}"},
    };
    struct fixture *fx = fixture_start(2, 8);
    struct ts_task *t;
    char want[128];
    char *got;

    (void)state;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        t = submit(fx, rows[i].body);
        wait_ended(t);
        assert_int_equal(env_emit_rc(&fx->env), 0);
        assert_int_equal(last_id(t), rows[i].events);
        /* Gapless from 1, and the steps in the order emitted. */
        for (uint64_t id = 1; id < rows[i].events; id++) {
            snprintf(want, sizeof(want), "id: %llu\nevent: step\ndata: {\"i\":%llu}\n\n",
                     (unsigned long long)id, (unsigned long long)(id - 1));
            got = frame(t, id);
            assert_non_null(got);
            assert_string_equal(got, want);
            free(got);
        }
        assert_end(t, rows[i].end);
        ts_task_unref(t);
    }
    fixture_free(fx);
}

static void
test_emit_names(void **state)
{
    struct fixture *fx = fixture_start(1, 4);
    struct ts_task *t;
    char *got;

    (void)state;
    t = submit(fx, "{\"kind\":\"test\",\"mode\":\"names\"}");
    wait_ended(t);
    assert_int_equal(fx->env.names_rc[0], -EINVAL); /* not a name */
    assert_int_equal(fx->env.names_rc[1], -EINVAL); /* reserved */
    assert_int_equal(fx->env.names_rc[2], -EINVAL); /* no data */
    assert_int_equal(fx->env.names_rc[3], 0);
    assert_int_equal(last_id(t), 2);
    /* A newline inside a string stays escaped: it cannot forge a field. */
    got = frame(t, 1);
    assert_string_equal(got, "id: 1\nevent: ok.name-2_x\ndata: \"a\\nb\"\n\n");
    free(got);
    ts_task_unref(t);
    fixture_free(fx);
}

static void
test_waiters(void **state)
{
    struct fixture *fx = fixture_start(2, 4);
    struct test_waiter w1, w2, w3;
    struct ts_task *t, *blocked;

    (void)state;
    waiter_init(&w1);
    waiter_init(&w2);
    waiter_init(&w3);
    t = submit(fx, "{\"kind\":\"test\",\"mode\":\"gate\"}");
    env_wait(&fx->env, &fx->env.started, 1);

    ts_task_lock(t);
    ts_task_wait_locked(t, &w1.w);
    ts_task_wait_locked(t, &w2.w);
    ts_task_wait_locked(t, &w1.w); /* already there: no double link */
    ts_task_wait_locked(t, &w3.w);
    ts_task_unwait_locked(t, &w3.w);
    ts_task_unwait_locked(t, &w3.w); /* unlinked: no-op */
    assert_false(w3.w.linked);
    ts_task_unlock(t);

    /* The gate lets the task emit one event, then end. */
    env_open_gate(&fx->env);
    assert_true(waiter_wait(&w1, 0));
    assert_true(waiter_wait(&w2, 0));
    ts_task_lock(t);
    assert_false(w1.w.linked);
    assert_false(w2.w.linked);
    ts_task_unlock(t);
    wait_ended(t);
    assert_int_equal(waiter_wakes(&w1), 1);
    assert_int_equal(waiter_wakes(&w2), 1);
    assert_int_equal(waiter_wakes(&w3), 0);

    /* wake_all reaches a waiter that nothing else would wake. */
    blocked = submit(fx, "{\"kind\":\"test\",\"mode\":\"block\"}");
    env_wait(&fx->env, &fx->env.started, 2);
    ts_task_lock(blocked);
    ts_task_wait_locked(blocked, &w3.w);
    ts_task_unlock(blocked);
    ts_task_service_wake_all(fx->svc);
    assert_int_equal(waiter_wakes(&w3), 1);
    assert_false(w3.w.linked);

    /* The end wakes too. */
    ts_task_lock(blocked);
    ts_task_wait_locked(blocked, &w3.w);
    ts_task_unlock(blocked);
    assert_int_equal(ts_task_cancel(fx->svc, blocked), 0);
    assert_true(waiter_wait(&w3, 1));
    wait_ended(blocked);

    ts_task_unref(t);
    ts_task_unref(blocked);
    waiter_dispose(&w1);
    waiter_dispose(&w2);
    waiter_dispose(&w3);
    fixture_free(fx);
}

static void
test_cancel(void **state)
{
    struct fixture *fx = fixture_start(1, 4);
    struct ts_task *running, *queued;
    int rc;

    (void)state;
    running = submit(fx, "{\"kind\":\"test\",\"mode\":\"block\"}");
    env_wait(&fx->env, &fx->env.started, 1);
    queued = submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\",\"n\":5}");

    /* Queued: ends at once, never runs. */
    assert_int_equal(ts_task_cancel(fx->svc, queued), 0);
    assert_state(queued, "cancelled");
    assert_string_field(queued, "reason", "client");
    assert_time_field(queued, "started_at", false);
    assert_time_field(queued, "finished_at", true);
    assert_int_equal(last_id(queued), 1);
    assert_end(queued, "{\"status\":\"cancelled\",\"reason\":\"client\",\"exit_code\":0}");
    assert_int_equal(ts_task_cancel(fx->svc, queued), -EALREADY);
    assert_int_equal(ts_task_service_active(fx->svc), 1);

    /* Running: the flag cuts its sleep short. */
    assert_int_equal(ts_task_cancel(fx->svc, running), 0);
    rc = ts_task_cancel(fx->svc, running); /* harmless while it winds down */
    assert_true(rc == 0 || rc == -EALREADY);
    wait_ended(running);
    assert_state(running, "cancelled");
    assert_end(running, "{\"status\":\"cancelled\",\"reason\":\"client\",\"exit_code\":0}");
    assert_int_equal(ts_task_cancel(fx->svc, running), -EALREADY);

    assert_int_equal(ts_task_service_wait_idle(fx->svc, deadline_in_ms(2000)), 0);
    assert_int_equal(fx->env.started, 1);
    assert_metric(fx, "tasks_finished_total{kind=\"test\",status=\"cancelled\"} 2\n");
    assert_metric(fx, "task_forced_cancellations_total 0\n");
    ts_task_unref(running);
    ts_task_unref(queued);
    fixture_free(fx);
}

static void *
interrupt_later(void *arg)
{
    struct timespec ts = {0, 20 * 1000 * 1000};

    nanosleep(&ts, NULL);
    ts_task_service_interrupt(arg);
    return NULL;
}

static void
test_wait_idle(void **state)
{
    struct fixture *fx = fixture_start(1, 4);
    struct ts_task *t;
    pthread_t thread;

    (void)state;
    assert_int_equal(ts_task_service_wait_idle(fx->svc, deadline_in_ms(2000)), 0);
    t = submit(fx, "{\"kind\":\"test\",\"mode\":\"gate\"}");
    assert_int_equal(ts_task_service_active(fx->svc), 1);
    assert_int_equal(ts_task_service_wait_idle(fx->svc, deadline_in_ms(20)), -ETIMEDOUT);

    /* Sticky until one wait_idle has returned -EINTR. */
    ts_task_service_interrupt(fx->svc);
    assert_int_equal(ts_task_service_wait_idle(fx->svc, TS_NO_DEADLINE), -EINTR);
    assert_int_equal(ts_task_service_wait_idle(fx->svc, deadline_in_ms(20)), -ETIMEDOUT);

    /* And it reaches a wait already under way. */
    assert_int_equal(pthread_create(&thread, NULL, interrupt_later, fx->svc), 0);
    assert_int_equal(ts_task_service_wait_idle(fx->svc, TS_NO_DEADLINE), -EINTR);
    pthread_join(thread, NULL);

    env_open_gate(&fx->env);
    assert_int_equal(ts_task_service_wait_idle(fx->svc, deadline_in_ms(2000)), 0);
    assert_int_equal(ts_task_service_active(fx->svc), 0);
    ts_task_unref(t);
    fixture_free(fx);
}

static void
test_cancel_all_and_finish(void **state)
{
    struct fixture *fx = fixture_start(2, 4);
    struct ts_task *blocked, *deaf, *queued;
    uint64_t deaf_end;

    (void)state;
    blocked = submit(fx, "{\"kind\":\"test\",\"mode\":\"block\"}");
    deaf = submit(fx, "{\"kind\":\"test\",\"mode\":\"gate\"}");
    env_wait(&fx->env, &fx->env.started, 2);
    queued = submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\",\"n\":1}");

    assert_int_equal(ts_task_service_cancel_all(fx->svc, "shutdown"), 3);
    assert_metric(fx, "task_forced_cancellations_total 3\n");
    /* The queued one ended at once. */
    assert_state(queued, "cancelled");
    assert_end(queued, "{\"status\":\"cancelled\",\"reason\":\"shutdown\",\"exit_code\":0}");

    /* The cooperative one returns; the deaf one is abandoned at the deadline. */
    assert_int_equal(ts_task_service_finish(fx->svc, deadline_in_ms(100)), 1);
    wait_ended(blocked);
    assert_end(blocked, "{\"status\":\"cancelled\",\"reason\":\"shutdown\",\"exit_code\":0}");
    assert_state(deaf, "cancelled");
    assert_end(deaf, "{\"status\":\"cancelled\",\"reason\":\"shutdown\",\"exit_code\":0}");
    deaf_end = end_id(deaf);
    assert_int_equal(ts_task_service_active(fx->svc), 0);
    assert_int_equal(ts_task_service_wait_idle(fx->svc, deadline_in_ms(20)), 0);
    assert_int_equal(ts_task_cancel(fx->svc, deaf), -EALREADY);
    assert_int_equal(ts_task_service_finish(fx->svc, deadline_in_ms(20)), 0);

    /* When the deaf run() finally returns, its late event and its worker's
     * end are both dropped; free() joins that worker normally. */
    env_open_gate(&fx->env);
    env_wait(&fx->env, &fx->env.returned, 2);
    ts_task_service_free(fx->svc);
    fx->svc = NULL;
    assert_int_equal(fx->env.late_rc, -ECANCELED);
    assert_int_equal(last_id(deaf), deaf_end);
    assert_end(deaf, "{\"status\":\"cancelled\",\"reason\":\"shutdown\",\"exit_code\":0}");
    ts_task_unref(blocked);
    ts_task_unref(deaf);
    ts_task_unref(queued);
    fixture_free(fx);
}

static void
test_free_leaves_orphan(void **state)
{
    struct fixture *fx = fixture_start(1, 4);
    struct timespec settle = {0, 50 * 1000 * 1000};
    struct ts_task *deaf;
    int late_rc;

    (void)state;
    deaf = submit(fx, "{\"kind\":\"test\",\"mode\":\"gate\"}");
    env_wait(&fx->env, &fx->env.started, 1);
    assert_int_equal(ts_task_service_cancel_all(fx->svc, "shutdown"), 1);
    assert_int_equal(ts_task_service_finish(fx->svc, deadline_in_ms(20)), 1);

    /* Must not wait for the deaf run(). */
    ts_task_service_free(fx->svc);
    fx->svc = NULL;
    assert_end(deaf, "{\"status\":\"cancelled\",\"reason\":\"shutdown\",\"exit_code\":0}");

    /* Its worker, still alive, may return later and touch only the task. */
    env_open_gate(&fx->env);
    env_wait(&fx->env, &fx->env.returned, 1);
    pthread_mutex_lock(&fx->env.mu);
    late_rc = fx->env.late_rc;
    pthread_mutex_unlock(&fx->env.mu);
    assert_int_equal(late_rc, -ECANCELED);
    /* The detached worker drops its reference right after run() returns;
     * give it a moment so that its thread is gone before ours ends. */
    nanosleep(&settle, NULL);
    ts_task_unref(deaf);
    fixture_free(fx);
}

/* Poll (bounded) until the task is forgotten: the cleanup thread has no
 * hook to wait on, and 1 ms steps keep this fast. */
static bool
forgotten(struct fixture *fx, const char *id)
{
    struct timespec step = {0, 1000 * 1000};
    struct ts_task *t;

    for (int i = 0; i < 2000; i++) {
        t = ts_task_find(fx->svc, id);
        if (t == NULL)
            return true;
        ts_task_unref(t);
        nanosleep(&step, NULL);
    }
    return false;
}

static bool
known(struct fixture *fx, const char *id)
{
    struct ts_task *t = ts_task_find(fx->svc, id);

    ts_task_unref(t);
    return t != NULL;
}

static void
test_cleanup_retention(void **state)
{
    struct fixture *fx = fixture_new(1, 4, true); /* retention 10 s on a fake clock */
    struct timespec settle = {0, 20 * 1000 * 1000};
    struct ts_task *a, *b;
    char a_id[33], b_id[33];
    json_t *list;

    (void)state;
    assert_int_equal(ts_task_service_start(fx->svc), 0);
    a = submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\",\"n\":1}");
    assert_int_equal(ts_task_service_wait_idle(fx->svc, TS_NO_DEADLINE), 0);
    snprintf(a_id, sizeof(a_id), "%s", ts_task_get_id(a));
    ts_task_unref(a);

    ts_fake_clock_advance(&fx->fake, 5 * TS_NS_PER_S);
    b = submit(fx, "{\"kind\":\"test\",\"mode\":\"emit\",\"n\":1}");
    assert_int_equal(ts_task_service_wait_idle(fx->svc, TS_NO_DEADLINE), 0);
    snprintf(b_id, sizeof(b_id), "%s", ts_task_get_id(b));
    ts_task_unref(b);

    /* 1 ms before a's expiry: a wrong deadline would have acted by now. */
    ts_fake_clock_advance(&fx->fake, 5 * TS_NS_PER_S - TS_NS_PER_MS);
    nanosleep(&settle, NULL);
    assert_true(known(fx, a_id));
    assert_true(known(fx, b_id));

    /* Past it: a goes, b (finished 5 s later) stays. */
    ts_fake_clock_advance(&fx->fake, 2 * TS_NS_PER_MS);
    assert_true(forgotten(fx, a_id));
    nanosleep(&settle, NULL);
    assert_true(known(fx, b_id));

    ts_fake_clock_advance(&fx->fake, 5 * TS_NS_PER_S);
    assert_true(forgotten(fx, b_id));
    list = ts_task_service_list(fx->svc, 0, NULL, SIZE_MAX);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    fixture_free(fx);
}

static bool
fake_clock_has_waiter(struct fixture *fx)
{
    struct timespec step = {0, 1000 * 1000};
    bool waiting = false;

    for (int i = 0; i < 2000 && !waiting; i++) {
        waiting = ts_fake_clock_waiters(&fx->fake) > 0;
        if (!waiting)
            nanosleep(&step, NULL);
    }
    return waiting;
}

static void
test_sleep_on_service_clock(void **state)
{
    struct fixture *fx = fixture_new(1, 4, true);
    struct timespec settle = {0, 20 * 1000 * 1000};
    struct ts_task *t;
    char *got;

    (void)state;
    assert_int_equal(ts_task_service_start(fx->svc), 0);
    t = submit(fx, "{\"kind\":\"test\",\"mode\":\"sleep\",\"n\":1000}");
    env_wait(&fx->env, &fx->env.started, 1);
    /* Advancing before the sleep has read the clock would move its deadline
     * along with it: wait until it is the clock's waiter (the cleanup
     * thread's wait has no deadline yet, so it is not). */
    assert_true(fake_clock_has_waiter(fx));
    ts_fake_clock_advance(&fx->fake, 999 * TS_NS_PER_MS);
    nanosleep(&settle, NULL);
    assert_int_equal(last_id(t), 0);
    ts_fake_clock_advance(&fx->fake, TS_NS_PER_MS);
    wait_ended(t);
    got = frame(t, 1);
    assert_string_equal(got, "id: 1\nevent: woke\ndata: null\n\n");
    free(got);
    ts_task_unref(t);
    fixture_free(fx);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register),
        cmocka_unit_test(test_ids),
        cmocka_unit_test(test_submit_errors),
        cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_draining),
        cmocka_unit_test(test_state_machine),
        cmocka_unit_test(test_end_event),
        cmocka_unit_test(test_emit_names),
        cmocka_unit_test(test_waiters),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_wait_idle),
        cmocka_unit_test(test_cancel_all_and_finish),
        cmocka_unit_test(test_free_leaves_orphan),
        cmocka_unit_test(test_cleanup_retention),
        cmocka_unit_test(test_sleep_on_service_clock),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
