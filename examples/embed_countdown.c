/*
 * Embedding libtaskstream: a program that registers its own task kind and
 * runs a server without taskstreamd's main.c.
 *
 *     build/embed_countdown            (LISTEN / ADMIN_LISTEN etc. as for taskstreamd)
 *     curl -XPOST localhost:8080/v1/tasks -H 'Content-Type: application/json' \
 *          -d '{"kind": "countdown", "from": 5}'
 *
 * The host owns the lifecycle: it takes SIGTERM/SIGINT itself (the library
 * never touches signals), asks the coordinator for a shutdown, and runs the
 * server's stop sequence.
 */
#define _POSIX_C_SOURCE 200809L /* sigwait, pthread_sigmask under -std=c11 */

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <taskstream.h>

extern char **environ;

static int
countdown_validate(void *arg, const json_t *params, char *err, size_t errlen)
{
    json_t *from = json_object_get(params, "from");

    (void)arg;
    if (!json_is_integer(from) || json_integer_value(from) < 1 || json_integer_value(from) > 1000) {
        snprintf(err, errlen, "\"from\" must be an integer from 1 to 1000");
        return -EINVAL;
    }
    return 0;
}

/* Emits "count" events from `from` down to 1, ten milliseconds apart. 13 is
 * unlucky: the task fails there, to show a failure in the end event. */
static void
countdown_run(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *result)
{
    json_int_t from = json_integer_value(json_object_get(ts_task_params(ctx), "from"));

    (void)arg;
    for (json_int_t n = from; n >= 1; n--) {
        if (n == 13) {
            result->status = TS_TASK_FAILED;
            result->reason = "unlucky";
            result->exit_code = 13;
            return;
        }
        ts_task_emit(ctx, "count", json_pack("{s:I}", "remaining", n));
        if (ts_task_sleep_ms(ctx, 10))
            return; /* cancelled: the service records it as such */
    }
}

static const struct ts_task_kind countdown = {
    .name = "countdown",
    .validate = countdown_validate,
    .run = countdown_run,
};

int
main(int argc, char **argv)
{
    struct ts_config *cfg = NULL;
    struct ts_log *log = NULL;
    struct ts_coordinator *coord = NULL;
    struct ts_server *srv = NULL;
    struct ts_shutdown_report rep;
    sigset_t set;
    char err[512];
    int sig, rc;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    if (ts_config_new(&cfg) != 0) {
        fprintf(stderr, "embed_countdown: out of memory\n");
        return 1;
    }
    /* Settings come from the environment and the command line, as
     * taskstreamd's do; ts_config_set() would set one from code. */
    rc = ts_config_parse(cfg, environ, argc, argv, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "embed_countdown: %s\n", err);
        ts_config_free(cfg);
        return 2;
    }
    rc = ts_log_new_from_config(&log, STDERR_FILENO, cfg);
    if (rc == 0)
        rc = ts_coordinator_new(&coord);
    if (rc == 0)
        rc = ts_server_new(&srv, cfg, coord, log);
    if (rc == 0)
        rc = ts_server_register_kind(srv, &countdown);
    if (rc == 0)
        rc = ts_server_start(srv);
    if (rc != 0) {
        fprintf(stderr, "embed_countdown: %s\n", ts_strerror(rc));
        return 1;
    }

    /* This host has nothing else to do: wait for a signal right here. */
    sigwait(&set, &sig);
    ts_coordinator_request_shutdown(coord, sig == SIGINT ? "SIGINT" : "SIGTERM");
    ts_server_shutdown(srv, &rep);
    printf("embed_countdown: stopped after %.3f s, %llu forced\n", rep.duration_s,
           (unsigned long long)rep.forced);

    ts_server_free(srv);
    ts_coordinator_free(coord);
    ts_log_free(log);
    ts_config_free(cfg);
    return 0;
}
