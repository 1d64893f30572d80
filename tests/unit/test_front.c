/*
 * The stream state machine and the stop sequence on a fake clock: the real
 * server (front, SSE streams, task service, coordinator) with every clock the
 * test's, and a client on a real loopback socket. Time moves only when the
 * test moves it, so heartbeats, the slow-consumer cut and the shutdown
 * deadline are checked at exact instants instead of after real waits.
 *
 * The task kind "driven" emits `initial` events of `bytes` payload at once,
 * then one more each time the test asks, until it is cancelled; "hold" does
 * the same and then only sleeps until cancelled (on the service's clock).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "clock.h"
#include "drain.h"
#include "server.h"
#include "task.h"

#define HEARTBEAT_S 10
#define READ_LIMIT_MS 5000 /* a bound for what must come, never a wait for it */

struct env {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned asked; /* events the test asked for beyond `initial` */
    unsigned done;  /* of those, emitted */
    bool started;   /* the initial events are in */
    bool stop;      /* driven: return (after a cancel) */
};

struct fixture {
    struct ts_fake_clock fake;
    struct ts_coordinator *coord;
    struct ts_server *srv;
    struct ts_task_kind driven, hold;
    struct env env;
};

static void
emit_n(struct ts_task_ctx *ctx, unsigned from, unsigned n, size_t bytes)
{
    char *pad = calloc(1, bytes + 1);

    assert_non_null(pad);
    memset(pad, 'x', bytes);
    for (unsigned i = 0; i < n; i++)
        assert_int_equal(
            ts_task_emit(ctx, "step", json_pack("{s:i, s:s}", "n", from + i, "pad", pad)), 0);
    free(pad);
}

static void
run_kind(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *result, bool hold)
{
    struct env *env = arg;
    const json_t *p = ts_task_params(ctx);
    unsigned initial = (unsigned)json_integer_value(json_object_get(p, "initial"));
    size_t bytes = (size_t)json_integer_value(json_object_get(p, "bytes"));
    unsigned done = 0;

    (void)result;
    emit_n(ctx, 1, initial, bytes);
    pthread_mutex_lock(&env->mu);
    env->started = true;
    pthread_cond_broadcast(&env->cv);
    if (hold) {
        pthread_mutex_unlock(&env->mu);
        while (!ts_task_sleep_ms(ctx, 3600 * 1000))
            ;
        return;
    }
    while (!env->stop) {
        while (done < env->asked) {
            pthread_mutex_unlock(&env->mu);
            emit_n(ctx, initial + done + 1, 1, bytes);
            pthread_mutex_lock(&env->mu);
            env->done = ++done;
            pthread_cond_broadcast(&env->cv);
        }
        if (!env->stop)
            pthread_cond_wait(&env->cv, &env->mu);
    }
    pthread_mutex_unlock(&env->mu);
}

static void
run_driven(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *result)
{
    run_kind(arg, ctx, result, false);
}

static void
run_hold(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *result)
{
    run_kind(arg, ctx, result, true);
}

static struct fixture *
fixture_new(const char *extra_env)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    char *envp[16] = {"LISTEN=127.0.0.1:0", "ADMIN_LISTEN=127.0.0.1:0",
                      "LOG_LEVEL=error",    "SSE_HEARTBEAT_INTERVAL=10s",
                      "SSE_RETRY=2s",       "EVENT_LOG_EVENTS=8",
                      "KINDS=ticker",       NULL};
    struct ts_config cfg;
    char err[256];
    size_t n = 7;

    assert_non_null(fx);
    if (extra_env != NULL) {
        char *copy = strdup(extra_env), *save = NULL;

        for (char *tok = strtok_r(copy, " ", &save); tok != NULL && n < 15;
             tok = strtok_r(NULL, " ", &save))
            envp[n++] = strdup(tok);
        envp[n] = NULL;
        free(copy);
    }
    pthread_mutex_init(&fx->env.mu, NULL);
    assert_int_equal(ts_cond_init(&fx->env.cv), 0);
    ts_fake_clock_init(&fx->fake, TS_NS_PER_S);
    assert_int_equal(ts_coordinator_new_with_clock(&fx->coord, ts_fake_clock_view(&fx->fake)), 0);
    assert_int_equal(ts_config_init(&cfg), 0);
    assert_true(ts_config_parse(&cfg, envp, 0, NULL, err, sizeof(err)) >= 0);
    for (size_t i = 7; i < n; i++)
        free(envp[i]);
    assert_int_equal(
        ts_server_new_with_clock(&fx->srv, &cfg, fx->coord, NULL, ts_fake_clock_view(&fx->fake)),
        0);
    ts_config_dispose(&cfg);
    fx->driven = (struct ts_task_kind){.name = "driven", .run = run_driven, .arg = &fx->env};
    fx->hold = (struct ts_task_kind){.name = "hold", .run = run_hold, .arg = &fx->env};
    assert_int_equal(ts_server_register_kind(fx->srv, &fx->driven), 0);
    assert_int_equal(ts_server_register_kind(fx->srv, &fx->hold), 0);
    assert_int_equal(ts_server_start(fx->srv), 0);
    return fx;
}

static void
fixture_free(struct fixture *fx)
{
    pthread_mutex_lock(&fx->env.mu);
    fx->env.stop = true;
    pthread_cond_broadcast(&fx->env.cv);
    pthread_mutex_unlock(&fx->env.mu);
    ts_server_free(fx->srv);
    ts_coordinator_free(fx->coord);
    ts_fake_clock_dispose(&fx->fake);
    pthread_cond_destroy(&fx->env.cv);
    pthread_mutex_destroy(&fx->env.mu);
    free(fx);
}

/* Submit a task of `kind` and wait until its initial events are in. */
static struct ts_task *
submit(struct fixture *fx, const char *kind, int initial, int bytes)
{
    json_t *body = json_pack("{s:s, s:i, s:i}", "kind", kind, "initial", initial, "bytes", bytes);
    struct ts_task *t = NULL;
    char err[256];

    assert_int_equal(ts_task_submit(fx->srv->tasks, body, NULL, &t, err, sizeof(err)), 0);
    json_decref(body);
    pthread_mutex_lock(&fx->env.mu);
    while (!fx->env.started)
        pthread_cond_wait(&fx->env.cv, &fx->env.mu);
    fx->env.started = false;
    pthread_mutex_unlock(&fx->env.mu);
    return t;
}

/* Ask the driven task for `n` more events and wait until they are in. */
static void
ask_events(struct fixture *fx, unsigned n)
{
    pthread_mutex_lock(&fx->env.mu);
    fx->env.asked += n;
    pthread_cond_broadcast(&fx->env.cv);
    while (fx->env.done < fx->env.asked)
        pthread_cond_wait(&fx->env.cv, &fx->env.mu);
    pthread_mutex_unlock(&fx->env.mu);
}

static void
ask_event(struct fixture *fx)
{
    ask_events(fx, 1);
}

/* Cancel a driven task: it ends with its "end" event. */
static void
cancel(struct fixture *fx, struct ts_task *t)
{
    assert_int_equal(ts_task_cancel(fx->srv->tasks, t), 0);
    pthread_mutex_lock(&fx->env.mu);
    fx->env.stop = true;
    pthread_cond_broadcast(&fx->env.cv);
    pthread_mutex_unlock(&fx->env.mu);
}

/* ---- the client ---- */

struct client {
    int fd;
    char buf[1 << 16];
    size_t len;
    bool closed;
};

static void
client_open(struct client *c, struct fixture *fx, int rcvbuf)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    if (rcvbuf > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    sa.sin_port = htons((uint16_t)ts_server_port(fx->srv));
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
}

static void client_send(struct client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
client_send(struct client *c, const char *fmt, ...)
{
    char req[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(req, sizeof(req), fmt, ap);
    va_end(ap);
    assert_int_equal(send(c->fd, req, (size_t)n, MSG_NOSIGNAL), n);
}

/* Read until `want` is among the bytes (true), the peer closes, or
 * `limit_ms` of real time pass (false). The bytes before it are kept. */
static bool
client_until(struct client *c, const char *want, int limit_ms)
{
    size_t wlen = strlen(want);

    for (;;) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        ssize_t n;

        if (c->len >= wlen && memmem(c->buf, c->len, want, wlen) != NULL)
            return true;
        if (c->closed || poll(&pfd, 1, limit_ms) <= 0)
            return false;
        if (c->len == sizeof(c->buf)) { /* keep the tail: we look for what is new */
            memmove(c->buf, c->buf + sizeof(c->buf) / 2, sizeof(c->buf) / 2);
            c->len = sizeof(c->buf) / 2;
        }
        n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
        if (n <= 0)
            c->closed = true;
        else
            c->len += (size_t)n;
    }
}

/* Where `s` is among the bytes read, or NULL. */
static const char *
find(const struct client *c, const char *s)
{
    return memmem(c->buf, c->len, s, strlen(s));
}

/* Forget what was read so far. */
static void
client_clear(struct client *c)
{
    c->len = 0;
}

static void
client_close(struct client *c)
{
    close(c->fd);
}

static void
open_stream(struct client *c, struct ts_task *t, const char *extra)
{
    client_send(c, "GET /v1/tasks/%s/events HTTP/1.1\r\nHost: x\r\n%s\r\n", ts_task_get_id(t),
                extra != NULL ? extra : "");
}

/* Open a stream of `t` and read up to its first event. */
static void
follow(struct client *c, struct fixture *fx, struct ts_task *t, int rcvbuf)
{
    client_open(c, fx, rcvbuf);
    open_stream(c, t, NULL);
    assert_true(client_until(c, "id: 1\n", READ_LIMIT_MS));
}

/* The end of a test of a driven task. */
static void
finish(struct client *c, struct fixture *fx, struct ts_task *t)
{
    client_close(c);
    cancel(fx, t);
    ts_task_unref(t);
    fixture_free(fx);
}

static void
advance_s(struct fixture *fx, int64_t s)
{
    ts_fake_clock_advance(&fx->fake, s * TS_NS_PER_S);
}

static bool
metric_is(struct fixture *fx, const char *line)
{
    char *text;
    size_t len;
    bool found;

    assert_int_equal(ts_metrics_render(fx->srv->metrics, &text, &len), 0);
    found = strstr(text, line) != NULL;
    free(text);
    return found;
}

/* ---- the stream state machine ---- */

/* Replay, a live event, the end, the chunked body's end, and the 204 of the
 * reconnect on the same keep-alive connection. */
static void
test_replay_live_end_then_204(void **state)
{
    struct fixture *fx = fixture_new(NULL);
    struct ts_task *t = submit(fx, "driven", 2, 1);
    struct client c;

    (void)state;
    client_open(&c, fx, 0);
    open_stream(&c, t, NULL);
    assert_true(client_until(&c, "id: 2\nevent: step", READ_LIMIT_MS));
    assert_non_null(find(&c, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(find(&c, "Content-Type: text/event-stream\r\n"));
    assert_non_null(find(&c, "Transfer-Encoding: chunked\r\n"));
    /* Each frame is one chunk: its size in hex, CRLF, the frame, CRLF. */
    assert_non_null(find(&c, "\r\n\r\nd\r\nretry: 2000\n\n\r\n"));
    assert_non_null(find(&c, "id: 1\nevent: step"));

    client_clear(&c);
    ask_event(fx);
    assert_true(client_until(&c, "id: 3\nevent: step", READ_LIMIT_MS));

    client_clear(&c);
    cancel(fx, t);
    assert_true(client_until(&c, "id: 4\nevent: end", READ_LIMIT_MS));
    assert_true(client_until(&c, "\n\n\r\n0\r\n\r\n", READ_LIMIT_MS));
    assert_false(c.closed);

    client_clear(&c);
    open_stream(&c, t, "Last-Event-ID: 4\r\n");
    assert_true(client_until(&c, "HTTP/1.1 204 No Content\r\n", READ_LIMIT_MS));
    client_close(&c);
    ts_task_unref(t);
    fixture_free(fx);
}

/* A client behind the oldest retained event gets "gap", then the log. */
static void
test_gap_then_the_retained_events(void **state)
{
    struct fixture *fx = fixture_new(NULL);
    struct ts_task *t = submit(fx, "driven", 12, 1); /* 8 retained: 5..12 */
    struct client c;

    (void)state;
    client_open(&c, fx, 0);
    open_stream(&c, t, "Last-Event-ID: 1\r\n");
    assert_true(client_until(&c, "id: 12\n", READ_LIMIT_MS));
    assert_non_null(find(&c, "event: gap\ndata: {\"first_missing\":2,\"last_missing\":4}"));
    assert_true(find(&c, "event: gap") < find(&c, "id: 5\n"));
    assert_null(find(&c, "id: 4\n"));
    finish(&c, fx, t);
}

/* A silent stream writes a heartbeat at half the interval, not before. */
static void
test_heartbeat_at_half_the_interval(void **state)
{
    struct fixture *fx = fixture_new(NULL);
    struct ts_task *t = submit(fx, "driven", 1, 1);
    struct client c;

    (void)state;
    follow(&c, fx, t, 0);
    client_clear(&c);

    ts_fake_clock_advance(&fx->fake, HEARTBEAT_S * TS_NS_PER_S / 2 - TS_NS_PER_MS);
    assert_false(client_until(&c, "3\r\n:\n\n\r\n", 100)); /* nothing may come yet */
    assert_int_equal(c.len, 0);
    ts_fake_clock_advance(&fx->fake, TS_NS_PER_MS);
    assert_true(client_until(&c, "3\r\n:\n\n\r\n", READ_LIMIT_MS));
    assert_true(metric_is(fx, "sse_heartbeats_sent_total 1\n"));

    /* And again half an interval after that one. */
    client_clear(&c);
    advance_s(fx, HEARTBEAT_S / 2);
    assert_true(client_until(&c, "3\r\n:\n\n\r\n", READ_LIMIT_MS));
    finish(&c, fx, t);
}

/* A drain gives every open stream its "draining" notice; the stream goes on. */
static void
test_draining_notice_then_more_events(void **state)
{
    struct fixture *fx = fixture_new(NULL);
    struct ts_task *t = submit(fx, "driven", 1, 1);
    struct client c;

    (void)state;
    follow(&c, fx, t, 0);
    ts_coordinator_drain(fx->coord);
    assert_true(client_until(&c, "event: draining\ndata: {\"reason\":\"manual\"}", READ_LIMIT_MS));
    client_clear(&c);
    ask_event(fx);
    assert_true(client_until(&c, "id: 2\nevent: step", READ_LIMIT_MS));
    finish(&c, fx, t);
}

/* A client that stops reading while its task writes past the log is cut as
 * a slow consumer: when its socket takes bytes again and its cursor is
 * behind the log, or, if the socket stays full, once it has been silent a
 * whole heartbeat interval. Never with the body's end. */
static void
test_slow_consumer_cut_after_a_heartbeat_interval(void **state)
{
    struct fixture *fx = fixture_new(NULL);
    struct ts_task *t = submit(fx, "driven", 1, 32768);
    struct client c;

    (void)state;
    follow(&c, fx, t, 4096);
    /* 300 x 32 KiB: more than the socket buffers on both sides hold, and the
     * log keeps 8, so the stream is left behind with its socket full. */
    ask_events(fx, 300);
    advance_s(fx, HEARTBEAT_S);
    /* Read what the socket holds (a few MB at most) to the cut. */
    for (int i = 0; i < 1000 && !c.closed; i++) {
        client_clear(&c);
        assert_false(client_until(&c, "\r\n0\r\n\r\n", READ_LIMIT_MS)); /* cut, never ended */
    }
    assert_true(c.closed);
    assert_true(metric_is(fx, "sse_slow_consumers_closed_total 1\n"));
    finish(&c, fx, t);
}

/* ---- the stop sequence ---- */

struct shutdown_call {
    struct fixture *fx;
    struct ts_shutdown_report report;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
};

static void *
shutdown_thread(void *arg)
{
    struct shutdown_call *sc = arg;

    ts_coordinator_request_shutdown(sc->fx->coord, "SIGTERM");
    assert_int_equal(ts_server_shutdown(sc->fx->srv, &sc->report), 0);
    pthread_mutex_lock(&sc->mu);
    sc->done = true;
    pthread_cond_broadcast(&sc->cv);
    pthread_mutex_unlock(&sc->mu);
    return NULL;
}

/* A task that outlives GRACEFUL_SHUTDOWN_TIMEOUT: the stream gets "draining",
 * the shutdown waits exactly to the deadline, then the task is cancelled and
 * counted, and its stream gets "end" and its body's end before the stop. */
static void
test_stop_sequence_waits_to_the_deadline(void **state)
{
    struct fixture *fx = fixture_new("GRACEFUL_SHUTDOWN_TIMEOUT=30s SHUTDOWN_DELAY=0s");
    struct ts_task *t = submit(fx, "hold", 1, 1);
    struct shutdown_call sc = {.fx = fx};
    struct client c;
    pthread_t th;

    (void)state;
    pthread_mutex_init(&sc.mu, NULL);
    pthread_cond_init(&sc.cv, NULL);
    follow(&c, fx, t, 0);
    assert_int_equal(pthread_create(&th, NULL, shutdown_thread, &sc), 0);
    assert_true(client_until(&c, "event: draining\ndata: {\"reason\":\"signal\"}", READ_LIMIT_MS));

    advance_s(fx, 29);
    assert_false(client_until(&c, "event: end", 100)); /* the task still runs */
    pthread_mutex_lock(&sc.mu);
    assert_false(sc.done);
    pthread_mutex_unlock(&sc.mu);

    advance_s(fx, 2);
    assert_true(client_until(
        &c, "event: end\ndata: {\"status\":\"cancelled\",\"reason\":\"shutdown\"", READ_LIMIT_MS));
    assert_true(client_until(&c, "\r\n0\r\n\r\n", READ_LIMIT_MS));
    pthread_join(th, NULL);
    assert_true(sc.done);
    assert_int_equal(sc.report.forced, 1);
    assert_int_equal(sc.report.streams_closed, 0);
    assert_true(sc.report.duration_s >= 30.0 && sc.report.duration_s < 32.0);
    client_close(&c);
    pthread_cond_destroy(&sc.cv);
    pthread_mutex_destroy(&sc.mu);
    ts_task_unref(t);
    fixture_free(fx);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replay_live_end_then_204),
        cmocka_unit_test(test_gap_then_the_retained_events),
        cmocka_unit_test(test_heartbeat_at_half_the_interval),
        cmocka_unit_test(test_draining_notice_then_more_events),
        cmocka_unit_test(test_slow_consumer_cut_after_a_heartbeat_interval),
        cmocka_unit_test(test_stop_sequence_waits_to_the_deadline),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
