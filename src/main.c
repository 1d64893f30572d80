/*
 * taskstreamd: the composition root.
 *
 * Reads the configuration (environment, then flags), creates the logger, the
 * shutdown coordinator and the server, and decides when the process drains
 * and exits. It is the only code that touches signals, the environment,
 * resource limits and exit codes.
 *
 * Signals are blocked in every thread before any thread starts, and taken
 * in one place, a thread that sigwait()s for them (docs/operations.md has
 * the table). A signal that arrives during start-up stays pending and is
 * handled as soon as start-up completes.
 *   SIGTERM, SIGINT, SIGQUIT  the first requests the shutdown (reason
 *                             "signal", the first one taken is the one
 *                             named); any later one forces it (skip the
 *                             waits). SIGQUIT drains too, as in nginx: a
 *                             habit must not drop every task.
 *   SIGHUP                    reload: the key files and COMMANDS_FILE.
 *   SIGUSR1                   log one status line (state, tasks, streams).
 *   SIGUSR2                   logged and otherwise ignored.
 * The main thread waits for the request, runs the stop sequence, logs one
 * summary line and exits 0.
 *
 * Under systemd (Type=notify) it speaks the notify protocol through
 * libsystemd's sd_notify(), a no-op without NOTIFY_SOCKET: READY=1 once both
 * listeners are up, STOPPING=1 when a signal starts the shutdown, STATUS=
 * lines for every state change and, while the stop sequence waits for
 * tasks, the running count once a second with EXTEND_TIMEOUT_USEC, for as
 * long as the wait stays within our own budget.
 *
 * Exit codes: 0 after a shutdown, 2 for an invalid configuration (a setting,
 * a file, a listen address that is in use or not ours), 1 when start-up fails
 * otherwise.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "clock.h"
#include "config.h"
#include "log.h"
#include "taskstream.h"

extern char **environ;

/* Descriptors beyond the connection cap: listeners, epoll, eventfds, logs,
 * command pipes. */
#define FD_RESERVE 256

/* How often the supervisor hears about the progress of the stop. */
#define PROGRESS_EVERY_NS TS_NS_PER_S

static const struct {
    int sig;
    const char *name;
} taken_signals[] = {
    {SIGTERM, "SIGTERM"}, {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"},
    {SIGHUP, "SIGHUP"},   {SIGUSR1, "SIGUSR1"}, {SIGUSR2, "SIGUSR2"},
};

struct signal_thread {
    pthread_t thread;
    sigset_t set;
    atomic_bool quit; /* set by main before it wakes the thread to end it */
    struct ts_coordinator *coord;
    struct ts_server *srv;
    struct ts_log *log;
};

static const char *
signal_name(int sig)
{
    for (size_t i = 0; i < sizeof(taken_signals) / sizeof(taken_signals[0]); i++)
        if (taken_signals[i].sig == sig)
            return taken_signals[i].name;
    return "signal";
}

static void
log_status(struct signal_thread *st)
{
    struct ts_drain_status ds;

    ts_coordinator_status(st->coord, &ds);
    ts_log(st->log, TS_LOG_INFO, "status", TS_F_STR("state", ts_drain_state_name(ds.state)),
           TS_F_UINT("tasks_active", ts_server_tasks_active(st->srv)),
           TS_F_UINT("streams", ts_server_streams_open(st->srv)), TS_F_END);
}

static void *
take_signals(void *arg)
{
    struct signal_thread *st = arg;
    int sig;

    for (;;) {
        if (sigwait(&st->set, &sig) != 0 || atomic_load(&st->quit))
            return NULL;
        switch (sig) {
        case SIGHUP:
            ts_log(st->log, TS_LOG_INFO, "signal received", TS_F_STR("signal", "SIGHUP"),
                   TS_F_STR("action", "reload"), TS_F_END);
            ts_server_reload(st->srv, NULL, 0); /* it logs the outcome */
            break;
        case SIGUSR1:
            log_status(st);
            break;
        case SIGUSR2:
            ts_log(st->log, TS_LOG_INFO, "signal received", TS_F_STR("signal", "SIGUSR2"),
                   TS_F_STR("action", "none"), TS_F_END);
            break;
        default:
            /* Drain first, log after: /readyz must flip as soon as possible. */
            ts_coordinator_request_shutdown(st->coord, signal_name(sig));
            ts_log(st->log, TS_LOG_INFO, "signal received", TS_F_STR("signal", signal_name(sig)),
                   TS_F_END);
        }
    }
}

/* Tell systemd about each lifecycle change (coordinator callback). */
static void
notify_state(void *arg, const struct ts_drain_status *st)
{
    (void)arg;
    if (st->state == TS_STATE_SERVING)
        sd_notify(0, "STATUS=serving");
    else if (st->state == TS_STATE_DRAINING && st->shutdown_requested)
        sd_notifyf(0, "STOPPING=1\nSTATUS=draining (%s%s%s): waiting for running tasks",
                   ts_drain_reason_name(st->reason), st->signal_name[0] != '\0' ? " " : "",
                   st->signal_name);
    else if (st->state == TS_STATE_DRAINING)
        sd_notify(0, "STATUS=draining (manual): not taking new tasks");
    else if (st->state == TS_STATE_STOPPING)
        sd_notify(0, "STATUS=stopping: cancelling what is left, flushing streams");
}

struct progress {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done; /* guarded by mu */
    struct ts_server *srv;
    int64_t budget_end_ns; /* monotonic: the end of our own stop budget */
};

/* While the stop sequence runs: the running-task count, and more time from
 * systemd as long as we are within our budget. */
static void *
report_progress(void *arg)
{
    struct progress *p = arg;
    struct timespec ts;
    int64_t next = ts_monotonic_ns();

    /* Sending under our own mutex (a datagram, it does not block) leaves no
     * window in which `done` could be set and its signal missed. */
    pthread_mutex_lock(&p->mu);
    while (!p->done) {
        if (p->budget_end_ns > ts_monotonic_ns())
            sd_notifyf(0, "STATUS=draining: %u tasks running\nEXTEND_TIMEOUT_USEC=%lld",
                       ts_server_tasks_active(p->srv), (long long)(3 * PROGRESS_EVERY_NS / 1000));
        next += PROGRESS_EVERY_NS;
        ts.tv_sec = next / TS_NS_PER_S;
        ts.tv_nsec = next % TS_NS_PER_S;
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void
shutdown_with_progress(struct ts_server *srv, const struct ts_config *cfg,
                       struct ts_shutdown_report *rep)
{
    struct progress p = {.srv = srv};
    bool reporting;

    p.budget_end_ns = ts_monotonic_ns() + ts_config_stop_budget_ms(cfg) * TS_NS_PER_MS;
    pthread_mutex_init(&p.mu, NULL);
    reporting =
        ts_cond_init(&p.cv) == 0 && pthread_create(&p.thread, NULL, report_progress, &p) == 0;
    ts_server_shutdown(srv, rep);
    if (reporting) {
        pthread_mutex_lock(&p.mu);
        p.done = true;
        pthread_cond_signal(&p.cv);
        pthread_mutex_unlock(&p.mu);
        pthread_join(p.thread, NULL);
        pthread_cond_destroy(&p.cv);
    }
    pthread_mutex_destroy(&p.mu);
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
    int status = 1; /* the exit status if start-up fails */
    int rc;

    /* Before any thread exists, so every thread inherits the mask. */
    sigemptyset(&sigs.set);
    for (size_t i = 0; i < sizeof(taken_signals) / sizeof(taken_signals[0]); i++)
        sigaddset(&sigs.set, taken_signals[i].sig);
    pthread_sigmask(SIG_BLOCK, &sigs.set, NULL);
    atomic_init(&sigs.quit, false);
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
    if (rc == -EINVAL)
        status = 2; /* a configuration file is wrong: the server logged which and where */
    if (rc != 0)
        goto out_fail;
    rc = ts_server_start(srv);
    /* The address is the operator's to fix, like any other setting. */
    if (rc == -EADDRINUSE || rc == -EADDRNOTAVAIL || rc == -EACCES || rc == -EINVAL)
        status = 2;
    if (rc != 0)
        goto out_fail;
    ts_log(log, TS_LOG_INFO, "started", TS_F_STR("version", TS_VERSION),
           TS_F_UINT("workers", cfg.workers),
           TS_F_INT("graceful_shutdown_timeout_ms", cfg.graceful_shutdown_timeout_ms),
           TS_F_BOOL("drain_key_configured", cfg.drain_auth_key != NULL),
           TS_F_BOOL("api_key_configured", cfg.api_auth_key != NULL),
           TS_F_BOOL("jwt_configured",
                     cfg.jwt_secret_file != NULL || cfg.jwt_public_key_file != NULL),
           TS_F_BOOL("cors_configured", cfg.cors_origins != NULL), TS_F_END);

    /* Start-up is complete: from here a signal drains. */
    sigs.coord = coord;
    sigs.srv = srv;
    sigs.log = log;
    rc = -pthread_create(&sigs.thread, NULL, take_signals, &sigs);
    if (rc != 0)
        goto out_fail;
    ts_coordinator_subscribe(coord, notify_state, NULL);
    sd_notifyf(0, "READY=1\nSTATUS=serving\nMAINPID=%lu", (unsigned long)getpid());

    ts_coordinator_wait_shutdown(coord);
    shutdown_with_progress(srv, &cfg, &rep);
    ts_log(
        log, TS_LOG_INFO, "shutdown complete", TS_F_STR("reason", ts_drain_reason_name(rep.reason)),
        TS_F_STR("signal", rep.signal_name[0] != '\0' ? rep.signal_name : NULL),
        TS_F_STR("stop_signal", rep.stop_signal[0] != '\0' ? rep.stop_signal : NULL),
        TS_F_STR("forced_by", rep.forced_by[0] != '\0' ? rep.forced_by : NULL),
        TS_F_DBL("duration_seconds", rep.duration_s), TS_F_UINT("forced_cancellations", rep.forced),
        TS_F_UINT("handed_off", rep.handed_off), TS_F_UINT("abandoned", rep.abandoned),
        TS_F_UINT("streams_cut", rep.streams_closed), TS_F_END);

    atomic_store(&sigs.quit, true);
    pthread_kill(sigs.thread, SIGUSR2);
    pthread_join(sigs.thread, NULL);
    /* Also after an abandoned task: its worker is detached, not joined
     * (tests/e2e/test_stubborn.py frees a server with one). */
    ts_server_free(srv);
    ts_coordinator_free(coord);
    ts_log_free(log);
    ts_config_dispose(&cfg);
    return 0;

out_fail:
    /* With status 2 the line above already said which setting or file and
     * why: an errno's text ("Invalid argument") would only blur it. */
    ts_log(log, TS_LOG_ERROR,
           status == 2 ? "start-up failed: invalid configuration" : "start-up failed",
           TS_F_STR("error", status == 2 ? NULL : ts_strerror(rc)), TS_F_INT("exit_status", status),
           TS_F_END);
    ts_server_free(srv);
    ts_coordinator_free(coord);
    ts_log_free(log);
out_config:
    ts_config_dispose(&cfg);
    return status;
}
