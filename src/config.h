/* Configuration helpers for other modules (the API is in taskstream.h). */
#ifndef TS_CONFIG_H
#define TS_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "taskstream.h"

/* Built-in task kinds (ts_config.kinds). */
enum { TS_KIND_TICKER = 1u << 0, TS_KIND_COMMAND = 1u << 1 };

/*
 * Every setting of taskstreamd. One table in src/config.c describes each field
 * (environment variable, --flag, type, default, unit, help); --help and
 * docs/configuration.md are generated from it. Strings are owned by the config
 * and freed by ts_config_dispose(). Durations are milliseconds, sizes bytes.
 * The public API sees it opaque (taskstream.h): its layout may change.
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

/* Fill `cfg` with the defaults. Returns 0 or -ENOMEM. */
int ts_config_init(struct ts_config *cfg);

/* Free what `cfg` owns. `cfg` may then be initialised again. */
void ts_config_dispose(struct ts_config *cfg);

/* A deep copy of `src` into `dst` (uninitialised; dispose it). 0 or -ENOMEM,
 * with nothing to dispose on error. */
int ts_config_copy(struct ts_config *dst, const struct ts_config *src);

/* Read every key file named in `cfg` (*_auth_key_file) again into its key.
 * All or nothing: on error `cfg` is unchanged and `err` says which file and
 * why (never the key). Returns 0, -EINVAL or -ENOMEM. */
int ts_config_reread_key_files(struct ts_config *cfg, char *err, size_t errlen);

/* The checks of settings that depend on each other (the stop budget against
 * TERMINATION_GRACE_PERIOD, COMMANDS_FILE without the command kind): 0, or
 * -EINVAL with the reason in `err`. */
int ts_config_check(const struct ts_config *cfg, char *err, size_t errlen);

/*
 * Split a listen address as ts_config_parse() accepts it: "host:port" with an
 * IPv4 literal or "localhost", or "[IPv6]:port"; port 0..65535. `host` gets
 * the host without brackets (hostlen >= 46 fits any valid one). `host` may be
 * NULL to only validate. Returns 0 or -EINVAL. Any thread.
 */
int ts_config_address_split(const char *addr, char *host, size_t hostlen, uint16_t *port);

#endif
