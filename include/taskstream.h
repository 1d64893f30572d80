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
 *     ts_config_init(&cfg);  ts_config_parse(&cfg, environ, argc, argv, ...);
 *     ts_log_new(&log, ...);  ts_coordinator_new(&coord);
 *     ts_server_new(&srv, &cfg, coord, log);
 *     ts_server_register_kind(srv, &my_kind);
 *     ts_server_start(srv);
 *     ... on SIGTERM: ts_coordinator_request_shutdown(coord, "SIGTERM");
 *     ts_server_shutdown(srv, &report);   (waits, cancels what is left, stops)
 *     ts_server_free(srv); ts_coordinator_free(coord); ts_log_free(log);
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

/* Built-in task kinds (ts_config.kinds). */
enum { TS_KIND_TICKER = 1u << 0, TS_KIND_COMMAND = 1u << 1 };
enum ts_log_level { TS_LOG_DEBUG, TS_LOG_INFO, TS_LOG_WARN, TS_LOG_ERROR };

/*
 * Every setting of taskstreamd. One table in src/config.c describes each field
 * (environment variable, --flag, type, default, unit, help); --help and
 * docs/configuration.md are generated from it. Strings are owned by the config
 * and freed by ts_config_dispose(). Durations are milliseconds, sizes bytes.
 */
struct ts_config {
    char *listen;       /* public listener, "host:port" (port 0: ephemeral) */
    char *admin_listen; /* admin listener, "host:port" */

    int64_t graceful_shutdown_timeout_ms; /* wait for tasks after a signal */
    int64_t shutdown_delay_ms;            /* keep the public listener open at least this long */
    int64_t kill_grace_ms;                /* SIGTERM -> SIGKILL for command tasks */
    int64_t termination_grace_period_ms;  /* 0: unknown; else our budget must fit in it */

    char *drain_auth_key;      /* NULL: no key, POST /drain is refused (fail closed) */
    char *drain_auth_key_file; /* where drain_auth_key was read from; NULL: not a file */
    char *api_auth_key;        /* NULL: the public API is open */
    char *api_auth_key_file;   /* where api_auth_key was read from; NULL: not a file */

    unsigned workers;          /* worker threads running tasks */
    unsigned max_queued_tasks; /* queued (not yet running) tasks; more get 429 */
    int64_t task_retention_ms; /* finished tasks are forgotten after this */

    size_t retained_bytes; /* event bytes of all tasks; the oldest finished go first */
    unsigned kinds;        /* TS_KIND_* built-in kinds ts_server_new() registers */

    unsigned event_log_events; /* per-task event log: events kept */
    size_t event_log_bytes;    /* per-task event log: encoded bytes kept */

    int64_t sse_heartbeat_interval_ms; /* comment line on an idle stream */
    int64_t sse_retry_ms;              /* "retry:" hint sent first on each stream */

    unsigned max_connections;        /* public listener connection cap */
    unsigned max_connections_per_ip; /* 0: no per-IP cap */
    size_t max_body_bytes;           /* request body cap */
    size_t max_header_bytes;         /* per-connection memory for request line + headers */
    int64_t idle_timeout_ms;         /* idle keep-alive / stalled connection */
    int64_t header_timeout_ms;       /* request line + headers must arrive within this */
    unsigned http_threads;           /* loop threads of the public listener */

    char *commands_file; /* JSON allow-list of command tasks; NULL: none */
    /* The environment that command tasks' "env.allow" lists copy from, once,
     * when the server is created: NULL-terminated "NAME=value" strings,
     * borrowed (ts_config_parse() sets it to the envp it was given); NULL for
     * none. Not a setting: the library never reads the environment itself. */
    char *const *env;

    /* Cluster mode (docs/cluster.md); redis_url NULL: tasks live in this
     * process only. */
    char *redis_url;           /* redis://[:password@]host:port[/db], unix:///path[?db=N] */
    char *redis_password;      /* NULL: none, or the URL's */
    char *redis_password_file; /* where redis_password was read from; NULL: not a file */
    char *redis_key_prefix;    /* of every key and channel */
    char *replica_id;          /* NULL: hostname-pid */
    int64_t redis_timeout_ms;  /* connect and command deadline */
    int64_t task_lease_ms;     /* a task's owner renews within this */

    /* Who may do what (docs/auth.md). Files are read by the server, again
     * on SIGHUP. */
    char *jwt_secret_file;          /* HS256 secret; NULL: none */
    char *jwt_public_key_file;      /* PEM, RS256 or ES256; NULL: none */
    char *jwt_issuer;               /* NULL: iss not checked */
    char *jwt_audience;             /* NULL: aud not checked */
    int64_t jwt_leeway_ms;          /* clock skew allowed on exp and nbf */
    int64_t stream_token_ttl_ms;    /* lifetime of the stream tokens we mint */
    char *stream_token_secret_file; /* their HS256 key; NULL: a random one */
    char *auth_cookie;              /* cookie that may carry a credential; NULL: none */
    char *cors_origins;             /* "origin,origin" or "*"; NULL: no CORS */

    enum ts_log_format log_format;
    enum ts_log_level log_level;
};

/*
 * The stop budget: from the stop signal, the stop sequence takes at most
 * max(graceful_shutdown_timeout + kill_grace, shutdown_delay) +
 * TS_STOP_MARGIN_MS (streams flush for 5 s, C tasks that ignore
 * cancellation get 2 s, and slack for exiting). A supervisor must allow
 * this much before SIGKILL (termination_grace_period is checked against it).
 */
#define TS_STOP_MARGIN_MS 10000
TS_API int64_t ts_config_stop_budget_ms(const struct ts_config *cfg);

/* Fill `cfg` with the defaults. Returns 0 or -ENOMEM. */
TS_API int ts_config_init(struct ts_config *cfg);

/* Free what `cfg` owns. `cfg` may then be initialised again. */
TS_API void ts_config_dispose(struct ts_config *cfg);

/* A deep copy of `src` into `dst` (uninitialised; dispose it). 0 or -ENOMEM,
 * with nothing to dispose on error. */
TS_API int ts_config_copy(struct ts_config *dst, const struct ts_config *src);

/* Read every key file named in `cfg` (*_auth_key_file) again into its key.
 * All or nothing: on error `cfg` is unchanged and `err` says which file and
 * why (never the key). Returns 0, -EINVAL or -ENOMEM. */
TS_API int ts_config_reread_key_files(struct ts_config *cfg, char *err, size_t errlen);

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
 * Returns one of TS_CONFIG_* (>= 0), or -EINVAL with a one-line message in
 * `err` naming the setting, the value and what is allowed (secrets are never
 * echoed).
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

TS_API int ts_log_new(struct ts_log **out, int fd, enum ts_log_format format,
                      enum ts_log_level level);
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

TS_API void ts_coordinator_status(struct ts_coordinator *c, struct ts_drain_status *out);

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
 * between steps. `resumable` (optional; cluster mode, docs/cluster.md) says
 * whether a task with these parameters may run again on another replica
 * when its replica dies or hands it off at the end of a drain: run() then
 * starts over with ts_task_checkpoint_get() returning the last checkpoint,
 * and its events go on in the same stream. The kind struct must outlive the
 * server.
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
 * The built-in kinds cfg->kinds names ("ticker"; "command" when
 * cfg->commands_file is set too) are registered here.
 */
TS_API int ts_server_new(struct ts_server **out, const struct ts_config *cfg,
                         struct ts_coordinator *coord, struct ts_log *log);

/* Register a task kind before ts_server_start(). -EEXIST for a taken name. */
TS_API int ts_server_register_kind(struct ts_server *srv, const struct ts_task_kind *kind);

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
TS_API int ts_server_shutdown(struct ts_server *srv, struct ts_shutdown_report *report);

/* Free the server. After ts_server_shutdown(), or before ts_server_start(). */
TS_API void ts_server_free(struct ts_server *srv);

#ifdef __cplusplus
}
#endif
#endif /* TASKSTREAM_H */
