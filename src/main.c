/*
 * taskstreamd: the composition root.
 *
 * Reads the configuration (environment, then flags), creates the logger, the
 * shutdown coordinator and the server, and decides when the process drains
 * and exits. It is the only code that touches signals, the environment,
 * resource limits and exit codes.
 *
 * Signals: SIGTERM and SIGINT are blocked in every thread before any thread
 * starts, and taken in one place, a thread that sigwait()s for them. A
 * signal that arrives during start-up stays pending and is handled as soon
 * as start-up completes (the process then drains at once and exits 0). The
 * first signal requests the shutdown (reason "signal"); a second one forces
 * it (skip the waits). The main thread waits for the request, runs the stop
 * sequence, logs one summary line and exits 0.
 *
 * Exit codes: 0 after a shutdown, 1 when start-up fails (e.g. a port is
 * taken), 2 for an invalid configuration.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "log.h"
#include "taskstream.h"

extern char **environ;

/* Sent by main to the signal thread to end it; never expected from outside. */
#define SIG_QUIT_WAITER SIGUSR1

/* Descriptors beyond the connection cap: listeners, epoll, eventfds, logs,
 * command pipes. */
#define FD_RESERVE 256

struct signal_thread {
    pthread_t thread;
    sigset_t set;
    struct ts_coordinator *coord;
    struct ts_log *log;
};

static const char *
signal_name(int sig)
{
    switch (sig) {
    case SIGTERM:
        return "SIGTERM";
    case SIGINT:
        return "SIGINT";
    }
    return "signal";
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

/* Raise the soft descriptor limit to the hard one and warn when the
 * connection cap cannot be honoured. */
static void
raise_fd_limit(struct ts_log *log, unsigned max_connections)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t)max_connections + FD_RESERVE)
        ts_log(log, TS_LOG_WARN, "the descriptor limit is below MAX_CONNECTIONS",
               TS_F_UINT("nofile", (uint64_t)rl.rlim_cur),
               TS_F_UINT("max_connections", max_connections),
               TS_F_STR("effect", "connections past the limit are refused"), TS_F_END);
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
    sigaction(SIGPIPE, &ign, NULL); /* a closed log pipe must not kill us */

    if (ts_config_init(&cfg) != 0) {
        fprintf(stderr, "taskstreamd: out of memory\n");
        return 1;
    }
    rc = ts_config_parse(&cfg, environ, argc, argv, err, sizeof(err));
    switch (rc) {
    case TS_CONFIG_OK:
        break;
    case TS_CONFIG_HELP:
        ts_config_help(stdout, argv[0]);
        ts_config_dispose(&cfg);
        return 0;
    case TS_CONFIG_HELP_MARKDOWN:
        ts_config_markdown(stdout);
        ts_config_dispose(&cfg);
        return 0;
    case TS_CONFIG_VERSION:
        printf("taskstreamd %s\n", TS_VERSION);
        ts_config_dispose(&cfg);
        return 0;
    default:
        fprintf(stderr, "taskstreamd: invalid configuration: %s\n", err);
        ts_config_dispose(&cfg);
        return 2;
    }

    rc = ts_log_new(&log, STDERR_FILENO, cfg.log_format, cfg.log_level);
    if (rc != 0) {
        fprintf(stderr, "taskstreamd: cannot create the logger: %s\n", ts_strerror(rc));
        goto out_config;
    }
    raise_fd_limit(log, cfg.max_connections);
    rc = ts_coordinator_new(&coord);
    if (rc != 0)
        goto out_fail;
    rc = ts_server_new(&srv, &cfg, coord, log);
    if (rc != 0)
        goto out_fail;
    rc = ts_server_start(srv);
    if (rc != 0)
        goto out_fail;
    ts_log(log, TS_LOG_INFO, "started", TS_F_STR("version", TS_VERSION),
           TS_F_UINT("workers", cfg.workers),
           TS_F_INT("graceful_shutdown_timeout_ms", cfg.graceful_shutdown_timeout_ms),
           TS_F_BOOL("drain_key_configured", cfg.drain_auth_key != NULL), TS_F_END);

    /* Start-up is complete: from here a signal drains. */
    sigs.coord = coord;
    sigs.log = log;
    rc = -pthread_create(&sigs.thread, NULL, take_signals, &sigs);
    if (rc != 0)
        goto out_fail;

    ts_coordinator_wait_shutdown(coord);
    ts_server_shutdown(srv, &rep);
    ts_log(log, TS_LOG_INFO, "shutdown complete", TS_F_STR("reason", ts_drain_reason_name(rep.reason)),
           TS_F_STR("signal", rep.signal_name[0] != '\0' ? rep.signal_name : NULL),
           TS_F_DBL("duration_seconds", rep.duration_s), TS_F_UINT("forced_cancellations", rep.forced),
           TS_F_UINT("abandoned", rep.abandoned), TS_F_UINT("streams_cut", rep.streams_closed),
           TS_F_END);

    pthread_kill(sigs.thread, SIG_QUIT_WAITER);
    pthread_join(sigs.thread, NULL);
    /* A C task that ignored cancellation still owns a worker thread and its
     * task: freeing the server would wait for it forever. Exit instead. */
    if (rep.abandoned == 0)
        ts_server_free(srv);
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
