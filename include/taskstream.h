/*
 * taskstream: run long tasks and stream their events over Server-Sent Events,
 * with a graceful shutdown that loses nothing.
 *
 * This is the whole public API of libtaskstream. Handles are opaque. Functions
 * return 0 on success or a negative errno value on failure (ts_strerror() turns
 * it into text). When a function that takes a callback returns an error, the
 * callback is never called.
 *
 * The library never installs signal handlers, never calls exit(), never reads
 * the environment (ts_config_parse() is handed the environment by its caller)
 * and keeps no mutable global state.
 *
 * A typical host (src/main.c is one):
 *
 *     ts_config_new(&cfg);  ts_config_parse(cfg, environ, argc, argv, ...);
 *     (or ts_config_set(cfg, "WORKERS", "8", ...) for each setting)
 *     ts_log_new_from_config(&log, STDERR_FILENO, cfg);  ts_coordinator_new(&coord);
 *     ts_server_new(&srv, cfg, coord, log);
 *     ts_server_register_kind(srv, &my_kind);
 *     ts_server_start(srv);
 *     ... on SIGTERM: ts_coordinator_request_shutdown(coord, "SIGTERM");
 *     ts_server_shutdown(srv, &report);   (waits, cancels what is left, stops)
 *     ts_server_free(srv); ts_coordinator_free(coord); ts_log_free(log);
 *     ts_config_free(cfg);
 *
 * The shared library's ABI is versioned by its SONAME (libtaskstream.so.0)
 * and exports only the TS_API functions of this header.
 */
#ifndef TASKSTREAM_H
#define TASKSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TS_API __attribute__((visibility("default")))

#define TS_VERSION "0.1.0"

/* Text for a return code of this library (a negative errno). Never NULL. */
TS_API const char *ts_strerror(int err);

/* ------------------------------------------------------------------------ */
/* Configuration                                                             */
/* ------------------------------------------------------------------------ */

enum ts_log_format { TS_LOG_FORMAT_JSON, TS_LOG_FORMAT_TEXT };

enum ts_log_level { TS_LOG_DEBUG, TS_LOG_INFO, TS_LOG_WARN, TS_LOG_ERROR };

/*
 * Every setting of taskstreamd, opaque so that settings can be added without
 * breaking the ABI. A setting is named by its environment variable (WORKERS,
 * LISTEN, ...: docs/configuration.md lists them all, with their values and
 * defaults) and given as text, exactly as in the environment.
 */
struct ts_config;

/* A config holding the defaults. Returns 0 or -ENOMEM. */
TS_API int ts_config_new(struct ts_config **out);

/* Free the config and what it owns (keys are wiped first). NULL is fine. */
TS_API void ts_config_free(struct ts_config *cfg);

/*
 * Set one setting: `name` is its environment variable, `value` its text
 * ("" unsets a key, a path or a URL). A *_FILE setting reads its file now.
 * Returns 0, or -EINVAL (unknown name, bad value, unreadable file) with a
 * one-line message in `err` (may be NULL) naming the setting and what is
 * allowed (a secret is never echoed), `cfg` unchanged; or -ENOMEM. Settings
 * that depend on each other (the stop budget, KINDS with COMMANDS_FILE) are
 * checked together by ts_server_new(). Not thread-safe on one config.
 */
TS_API int ts_config_set(struct ts_config *cfg, const char *name, const char *value, char *err,
                         size_t errlen);

/*
 * The stop budget: from the stop signal, the stop sequence takes at most
 * max(graceful_shutdown_timeout + kill_grace, shutdown_delay) +
 * TS_STOP_MARGIN_MS (streams flush for 5 s, C tasks that ignore
 * cancellation get 2 s, and slack for exiting). A supervisor must allow
 * this much before SIGKILL (termination_grace_period is checked against it).
 */
#define TS_STOP_MARGIN_MS 10000
TS_API int64_t ts_config_stop_budget_ms(const struct ts_config *cfg);

enum {
    TS_CONFIG_OK = 0,
    TS_CONFIG_HELP = 1,          /* --help was given: print ts_config_help() */
    TS_CONFIG_HELP_MARKDOWN = 2, /* --help-markdown: print ts_config_markdown() */
    TS_CONFIG_VERSION = 3,       /* --version, -V */
};

/*
 * Apply the environment `envp` (NULL-terminated "NAME=value" strings, may be
 * NULL), then the command line (argv[0] is skipped; flags win over the
 * environment) to `cfg`, then read key files and check the settings together.
 * `envp` is also the environment that command tasks' "env.allow" lists copy
 * from (once, in ts_server_new()): it must live until then. Returns one of
 * TS_CONFIG_* (>= 0), or -EINVAL with a one-line message in `err` naming the
 * setting, the value and what is allowed (secrets are never echoed); on
 * error `cfg` is unchanged.
 */
TS_API int ts_config_parse(struct ts_config *cfg, char *const envp[], int argc, char *const argv[],
                           char *err, size_t errlen);

/* Write the --help text / the Markdown reference (docs/configuration.md). */
TS_API void ts_config_help(FILE *out, const char *progname);
TS_API void ts_config_markdown(FILE *out);

/* ------------------------------------------------------------------------ */
/* Logging                                                                   */
/* ------------------------------------------------------------------------ */

/* A structured logger: one event per line, JSON or logfmt-like text, written
 * with one write(2) per line. Any thread. */
struct ts_log;

/* A logger writing to `fd`, which stays the caller's: the logger never closes
 * it, and it must stay open until ts_log_free(). */
TS_API int ts_log_new(struct ts_log **out, int fd, enum ts_log_format format,
                      enum ts_log_level level);

/* ts_log_new() with the config's LOG_FORMAT and LOG_LEVEL. */
TS_API int ts_log_new_from_config(struct ts_log **out, int fd, const struct ts_config *cfg);

TS_API void ts_log_free(struct ts_log *log);

/* ------------------------------------------------------------------------ */
/* Shutdown coordinator                                                      */
/* ------------------------------------------------------------------------ */

/*
 * The one owner of the process's lifecycle state: serving -> draining ->
 * stopping -> stopped. Created by the host (main.c) and handed to the server;
 * services only get a read-only view of it (src/drain.h).
 */
struct ts_coordinator;

enum ts_drain_state {
    TS_STATE_SERVING,
    TS_STATE_DRAINING,
    TS_STATE_STOPPING,
    TS_STATE_STOPPED,
};

enum ts_drain_reason {
    TS_DRAIN_REASON_NONE,
    TS_DRAIN_REASON_SIGNAL,
    TS_DRAIN_REASON_MANUAL,
};

#define TS_SIGNAL_NAME_LEN 16

/* New fields of the structs in this header are only ever added at their end,
 * and each function that fills or reads one is given its size. */
struct ts_drain_status {
    enum ts_drain_state state;
    enum ts_drain_reason reason;          /* why draining began; kept once set */
    char signal_name[TS_SIGNAL_NAME_LEN]; /* "SIGTERM" when reason is signal, else "" */
    bool shutdown_requested;              /* a signal asked the process to stop */
    char stop_signal[TS_SIGNAL_NAME_LEN]; /* the signal that asked, also after a manual drain */
    bool forced;                          /* a second signal: skip the remaining waits */
    char forced_by[TS_SIGNAL_NAME_LEN];   /* the signal that forced; "" for ts_coordinator_force */
    int64_t drain_started_ns;             /* monotonic; 0 while serving */
    int64_t drain_started_wall_ns;
    int64_t shutdown_requested_ns; /* monotonic; 0 until a signal asks to stop */
    int64_t stopping_ns;           /* monotonic; 0 until stopping */
    int64_t stopped_ns;            /* monotonic; 0 until stopped */
};

TS_API int ts_coordinator_new(struct ts_coordinator **out);
TS_API void ts_coordinator_free(struct ts_coordinator *c);

/* Begin a manual drain (POST /drain). Idempotent: a process already draining
 * keeps its first reason and start time. Any thread. */
TS_API void ts_coordinator_drain(struct ts_coordinator *c);

/* Return a manually drained process to serving (DELETE /drain). Returns 0,
 * or -EBUSY when a shutdown was requested or the state is past draining.
 * Serving already: 0. Any thread. */
TS_API int ts_coordinator_undrain(struct ts_coordinator *c);

/* A stop signal arrived (signal_name like "SIGTERM"). The first call begins
 * draining with reason signal (unless already draining: the first reason
 * stays) and marks the shutdown requested; a later call sets `forced`.
 * Async-signal-unsafe: call it from ordinary code. Any thread. */
TS_API void ts_coordinator_request_shutdown(struct ts_coordinator *c, const char *signal_name);

/* Skip the remaining waits of a shutdown (also what a second signal does). */
TS_API void ts_coordinator_force(struct ts_coordinator *c);

/* Block until a shutdown is requested. Any thread. */
TS_API void ts_coordinator_wait_shutdown(struct ts_coordinator *c);

/* Advance to stopping / stopped (the shutdown sequence calls these). */
TS_API void ts_coordinator_set_stopping(struct ts_coordinator *c);
TS_API void ts_coordinator_set_stopped(struct ts_coordinator *c);

/* A snapshot of the status. Fills `size` bytes of `out` (the macro passes
 * the caller's sizeof: a host built against an older, shorter struct gets
 * the fields it knows). */
TS_API void ts_coordinator_status_sized(struct ts_coordinator *c, struct ts_drain_status *out,
                                        size_t size);
#define ts_coordinator_status(c, out) ts_coordinator_status_sized((c), (out), sizeof(*(out)))

/* Called after every state change, with a snapshot of the new status, on the
 * thread that made the change. It must not block, nor call subscribe or
 * unsubscribe; it may read the status. */
typedef void ts_drain_cb(void *arg, const struct ts_drain_status *st);

/* Hear about state changes (e.g. to tell a supervisor). Returns an id >= 0,
 * or -ENOSPC when all slots are taken. After ts_coordinator_unsubscribe()
 * returns, the callback is not running and will not run again. */
TS_API int ts_coordinator_subscribe(struct ts_coordinator *c, ts_drain_cb *cb, void *arg);
TS_API void ts_coordinator_unsubscribe(struct ts_coordinator *c, int id);

TS_API const char *ts_drain_state_name(enum ts_drain_state s);
TS_API const char *ts_drain_reason_name(enum ts_drain_reason r);

/* ------------------------------------------------------------------------ */
/* Task kinds                                                                */
/* ------------------------------------------------------------------------ */

/* What a running task sees: its parameters, its cancel flag, its event log. */
struct ts_task_ctx;

enum ts_task_status {
    TS_TASK_SUCCEEDED,
    TS_TASK_FAILED,
    TS_TASK_CANCELLED,
};

/* Filled by a kind's run(). Prefilled with succeeded, exit_code 0, reason
 * NULL. `reason` must be a static string or live until the task ends. When the
 * task was cancelled the status becomes cancelled whatever run() said. */
struct ts_task_result {
    enum ts_task_status status;
    const char *reason;
    int exit_code;
    int signal; /* terminating signal of a command, else 0 */
};

/*
 * A kind of task. `name` is what clients put in "kind". `validate` (optional)
 * checks the request's parameters before the task is accepted: return 0, or
 * -EINVAL with a message naming the parameter in `err` (answered 422), or
 * -ENOENT (answered 404, for a name that selects something unknown).
 * `run` executes on a worker thread; it should check ts_task_cancelled()
 * between steps.
 *
 * Threads: `validate` runs on the thread of the HTTP request that submits
 * the task, `run` and `resumable` on a worker thread; several of each may
 * run at once for different tasks (WORKERS, the listener's HTTP_THREADS),
 * so what they share through `arg` needs its own locking. `resumable` (optional; cluster mode,
 * docs/cluster.md) says whether a task with these parameters may run again on another replica when
 * its replica dies or hands it off at the end of a drain: run() then starts over with
 * ts_task_checkpoint_get() returning the last checkpoint, and its events go on in the same stream.
 * The server copies the struct and the name at registration; `arg` must outlive the server.
 */
struct ts_task_kind {
    const char *name;
    int (*validate)(void *arg, const json_t *params, char *err, size_t errlen);
    void (*run)(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *result);
    void *arg;
    bool (*resumable)(void *arg, const json_t *params);
};

/*
 * Record where a resumable task stands (any JSON value; the reference is
 * taken, even on error): a later attempt's run() reads it with
 * ts_task_checkpoint_get(). It is stored with the task's next event, in the
 * same step (in cluster mode, one Redis script), or at a hand-off: so a
 * checkpoint saved just before emitting event N is the state exactly when
 * N was the last event. Returns 0, -EINVAL (NULL) or -ENOMEM. Worker thread
 * of this task only.
 */
TS_API int ts_task_checkpoint(struct ts_task_ctx *ctx, json_t *state);

/* The checkpoint this attempt starts from (borrowed, valid during run()),
 * NULL on a first attempt. */
TS_API const json_t *ts_task_checkpoint_get(const struct ts_task_ctx *ctx);

/* The request body of the task (an object; borrowed, valid during run()). */
TS_API const json_t *ts_task_params(const struct ts_task_ctx *ctx);

/* The task's id, 32 lowercase hex digits. */
TS_API const char *ts_task_id(const struct ts_task_ctx *ctx);

/* Append an event named `event` (letters, digits, '_', '-', '.'; at most 64;
 * not "end", "gap" or "draining", which belong to the protocol) with `data` as
 * its payload; takes ownership of `data` (a new reference, any JSON value) even
 * on error. Never waits for readers. Returns 0, -EINVAL for a bad name or NULL
 * data, -ECANCELED once the task has ended (or was abandoned), -ENOMEM.
 * Worker thread of this task only. */
TS_API int ts_task_emit(struct ts_task_ctx *ctx, const char *event, json_t *data);

/* True once the task should stop (client DELETE, shutdown deadline). */
TS_API bool ts_task_cancelled(const struct ts_task_ctx *ctx);

/* Sleep up to `ms` milliseconds, returning early (true) when cancelled. */
TS_API bool ts_task_sleep_ms(struct ts_task_ctx *ctx, int64_t ms);

/* ------------------------------------------------------------------------ */
/* Server                                                                    */
/* ------------------------------------------------------------------------ */

struct ts_server;

/* What ts_server_shutdown() did, for the summary line and the metrics. */
struct ts_shutdown_report {
    enum ts_drain_reason reason;
    char signal_name[TS_SIGNAL_NAME_LEN]; /* the signal that began the drain, "" if manual */
    char stop_signal[TS_SIGNAL_NAME_LEN]; /* the signal that asked to stop, "" if none */
    char forced_by[TS_SIGNAL_NAME_LEN];   /* the signal that forced the stop, "" if none */
    double duration_s;                    /* from drain start to stopped */
    uint64_t forced;                      /* tasks cancelled at the deadline */
    uint64_t abandoned;                   /* of those, tasks whose run() never returned */
    uint64_t streams_closed;              /* streams still open when the listener closed */
    uint64_t handed_off; /* cluster mode: resumable tasks handed back at the deadline */
};

/*
 * Create a server from `cfg` (copied), reacting to `coord` (borrowed, must
 * outlive the server) and logging to `log` (borrowed). Nothing listens yet.
 * The built-in kinds KINDS names ("ticker"; "command" when COMMANDS_FILE is
 * set too) are registered here. Returns 0, -EINVAL when settings conflict
 * (the reason is logged), -ENOMEM, or the error of a Redis URL, a key or
 * commands file that cannot be used (logged too).
 */
TS_API int ts_server_new(struct ts_server **out, const struct ts_config *cfg,
                         struct ts_coordinator *coord, struct ts_log *log);

/* Register a task kind before ts_server_start(): 0, -EEXIST for a taken
 * name, -EINVAL for a bad name or no run(), -EBUSY once started, -ENOMEM.
 * The macro passes the caller's sizeof (fields added to the struct later
 * read as zero for a host built without them). */
TS_API int ts_server_register_kind_sized(struct ts_server *srv, const struct ts_task_kind *kind,
                                         size_t size);
#define ts_server_register_kind(srv, kind)                                                         \
    ts_server_register_kind_sized((srv), (kind), sizeof(*(kind)))

/* Start the workers and both listeners. Logs one "listening" line per
 * listener with its bound address. */
TS_API int ts_server_start(struct ts_server *srv);

/*
 * Read the key files (DRAIN_AUTH_KEY_FILE, API_AUTH_KEY_FILE) and
 * COMMANDS_FILE again (what SIGHUP does). Everything is checked first and
 * swapped only if all of it is valid; running tasks keep the definition
 * they started with. Logs a "reload" line and counts
 * config_reloads_total{result}. Returns 0, or -EINVAL / -ENOMEM with the
 * reason in `err` (may be NULL), the previous configuration still in force.
 * Any thread but one at a time, between ts_server_new() and ts_server_free().
 */
TS_API int ts_server_reload(struct ts_server *srv, char *err, size_t errlen);

/* Tasks queued or running. Any thread. */
TS_API unsigned ts_server_tasks_active(struct ts_server *srv);

/* Event streams open. Any thread. */
TS_API unsigned ts_server_streams_open(struct ts_server *srv);

/* Bound ports (useful with port 0). 0 before start. */
TS_API int ts_server_port(const struct ts_server *srv);
TS_API int ts_server_admin_port(const struct ts_server *srv);

/*
 * The stop sequence, to call once the coordinator is draining (normally after
 * ts_coordinator_request_shutdown()). Keeps serving for at least
 * shutdown_delay and while tasks run, up to graceful_shutdown_timeout from the
 * start of the drain (a forced coordinator skips the waits); then cancels what
 * is left, lets every stream send its final event, closes the listeners,
 * observes task_graceful_shutdown_duration_seconds and fills `report`.
 * Returns 0. Calling thread blocks; not from a server callback.
 */
TS_API int ts_server_shutdown_sized(struct ts_server *srv, struct ts_shutdown_report *report,
                                    size_t size);
#define ts_server_shutdown(srv, report) ts_server_shutdown_sized((srv), (report), sizeof(*(report)))

/* Free the server. After ts_server_shutdown(), or before ts_server_start(). */
TS_API void ts_server_free(struct ts_server *srv);

#ifdef __cplusplus
}
#endif
#endif /* TASKSTREAM_H */
