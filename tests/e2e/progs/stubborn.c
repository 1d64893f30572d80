/*
 * ts_stubborn: a host embedding libtaskstream whose one task kind ignores
 * cancellation, for tests/e2e/test_stubborn.py.
 *
 * The "stubborn" kind emits one event, then sleeps for `seconds` (default
 * 30) in plain nanosleep() calls without ever looking at ts_task_cancelled():
 * the C task the library cannot stop from outside its thread. The host is
 * main.c in small: configuration from the environment and flags, JSON or
 * text logs on stderr as taskstreamd writes them, SIGTERM/SIGINT taken by one
 * sigwait() thread (the first requests the shutdown, a second forces it),
 * the stop sequence, one "shutdown complete" summary line, exit 0. The
 * server is freed as usual, also when a task was abandoned: its worker
 * thread is detached, not joined, and keeps only the task, so the process
 * exits with it still sleeping, as docs/operations.md describes.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "taskstream.h"

extern char **environ;

#define SECONDS_DEFAULT 30
#define SECONDS_MAX 3600

/* Sent by main to the signal thread to end it. */
#define SIG_QUIT_WAITER SIGUSR1

struct signal_thread {
    pthread_t thread;
    sigset_t set;
    struct ts_coordinator *coord;
    struct ts_log *log;
};

static int
stubborn_validate(void *arg, const json_t *params, char *err, size_t errlen)
{
    json_t *seconds = json_object_get(params, "seconds");

    (void)arg;
    if (seconds == NULL)
        return 0;
    if (!json_is_integer(seconds) || json_integer_value(seconds) < 0 ||
        json_integer_value(seconds) > SECONDS_MAX) {
        snprintf(err, errlen, "\"seconds\" must be an integer from 0 to %d", SECONDS_MAX);
        return -EINVAL;
    }
    return 0;
}

static void
stubborn_run(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *result)
{
    json_t *p = json_object_get(ts_task_params(ctx), "seconds");
    json_int_t seconds = p != NULL ? json_integer_value(p) : SECONDS_DEFAULT;
    struct timespec left;

    (void)arg;
    (void)result;
    ts_task_emit(ctx, "started", json_pack("{s:I}", "seconds", seconds));
    /* Deliberately deaf to cancellation: no ts_task_cancelled(), no
     * ts_task_sleep_ms(). */
    left.tv_sec = (time_t)seconds;
    left.tv_nsec = 0;
    while (nanosleep(&left, &left) != 0 && errno == EINTR)
        ;
}

static const struct ts_task_kind stubborn = {
    .name = "stubborn",
    .validate = stubborn_validate,
    .run = stubborn_run,
};

static const char *
signal_name(int sig)
{
    return sig == SIGINT ? "SIGINT" : "SIGTERM";
}

static void *
take_signals(void *arg)
{
    struct signal_thread *st = arg;
    int sig;

    for (;;) {
        if (sigwait(&st->set, &sig) != 0 || sig == SIG_QUIT_WAITER)
            return NULL;
        ts_log(st->log, TS_LOG_INFO, "signal received", TS_F_STR("signal", signal_name(sig)),
               TS_F_END);
        ts_coordinator_request_shutdown(st->coord, signal_name(sig));
    }
}

int
main(int argc, char **argv)
{
    struct ts_config cfg;
    struct ts_log *log = NULL;
    struct ts_coordinator *coord = NULL;
    struct ts_server *srv = NULL;
    struct ts_shutdown_report rep;
    struct signal_thread sigs;
    struct sigaction ign = {.sa_handler = SIG_IGN};
    char err[512];
    int rc;

    /* Before any thread exists, so every thread inherits the mask. */
    sigemptyset(&sigs.set);
    sigaddset(&sigs.set, SIGTERM);
    sigaddset(&sigs.set, SIGINT);
    sigaddset(&sigs.set, SIG_QUIT_WAITER);
    pthread_sigmask(SIG_BLOCK, &sigs.set, NULL);
    sigaction(SIGPIPE, &ign, NULL);

    if (ts_config_init(&cfg) != 0) {
        fprintf(stderr, "ts_stubborn: out of memory\n");
        return 1;
    }
    rc = ts_config_parse(&cfg, environ, argc, argv, err, sizeof(err));
    if (rc != TS_CONFIG_OK) {
        fprintf(stderr, "ts_stubborn: invalid configuration: %s\n",
                rc < 0 ? err : "flags other than settings are not supported");
        ts_config_dispose(&cfg);
        return 2;
    }
    rc = ts_log_new(&log, STDERR_FILENO, cfg.log_format, cfg.log_level);
    if (rc != 0) {
        fprintf(stderr, "ts_stubborn: cannot create the logger: %s\n", ts_strerror(rc));
        goto out_config;
    }
    rc = ts_coordinator_new(&coord);
    if (rc == 0)
        rc = ts_server_new(&srv, &cfg, coord, log);
    if (rc == 0)
        rc = ts_server_register_kind(srv, &stubborn);
    if (rc == 0)
        rc = ts_server_start(srv);
    if (rc == 0) {
        sigs.coord = coord;
        sigs.log = log;
        rc = -pthread_create(&sigs.thread, NULL, take_signals, &sigs);
    }
    if (rc != 0)
        goto out_fail;

    ts_coordinator_wait_shutdown(coord);
    ts_server_shutdown(srv, &rep);
    ts_log(log, TS_LOG_INFO, "shutdown complete",
           TS_F_STR("reason", ts_drain_reason_name(rep.reason)),
           TS_F_STR("signal", rep.signal_name[0] != '\0' ? rep.signal_name : NULL),
           TS_F_DBL("duration_seconds", rep.duration_s),
           TS_F_UINT("forced_cancellations", rep.forced), TS_F_UINT("abandoned", rep.abandoned),
           TS_F_UINT("streams_cut", rep.streams_closed), TS_F_END);

    pthread_kill(sigs.thread, SIG_QUIT_WAITER);
    pthread_join(sigs.thread, NULL);
    ts_server_free(srv); /* does not wait for an abandoned task */
    ts_coordinator_free(coord);
    ts_log_free(log);
    ts_config_dispose(&cfg);
    return 0;

out_fail:
    ts_log(log, TS_LOG_ERROR, "start-up failed", TS_F_STR("error", ts_strerror(rc)), TS_F_END);
    ts_server_free(srv);
    ts_coordinator_free(coord);
    ts_log_free(log);
out_config:
    ts_config_dispose(&cfg);
    return 1;
}
