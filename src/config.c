/*
 * Configuration: one table, settings[], describes every field of struct
 * ts_config (environment variable, flag, type, default, range, help) and
 * everything else is driven by it: the defaults (ts_config_init() parses each
 * row's default text, so the documented default is the real one), the
 * environment and the command line, --help and docs/configuration.md.
 *
 * ts_config_parse() works in three steps. It first collects the text given
 * for each setting, borrowing from envp and argv (a flag replaces what the
 * environment said, so an environment value a flag overrides is never even
 * looked at). It then converts those texts into a copy of the config, reads
 * the key files and checks the settings together. Only when all of that
 * succeeded does the copy replace the caller's config, so a failed parse
 * leaves it as it was and leaks nothing.
 *
 * Error messages are one line: "ENV (--flag): <value> <what is wrong>; <what
 * is allowed>". Values are quoted with control characters escaped; secrets
 * are never shown, not even when they came in through a mistyped flag.
 *
 * No state outside the caller's struct; any thread.
 */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config.h"
#include "redis.h"
#include "util.h"

#define SECOND_MS INT64_C(1000)
#define MINUTE_MS (60 * SECOND_MS)
#define HOUR_MS (60 * MINUTE_MS)
/* Upper bound for durations the table does not bound more tightly: a week. */
#define DURATION_MAX_MS (168 * HOUR_MS)
#define KIB UINT64_C(1024)
#define MIB (1024 * KIB)
#define GIB (1024 * MIB)

/* A key file holds one key; anything larger is the wrong file. */
#define KEY_FILE_MAX 4096
/* Room for a quoted, escaped, possibly cut value in a message. */
#define SHOWN_MAX 96
/* T_TEXT values: names, not documents. */
#define TEXT_MAX 64

enum setting_type {
    T_ADDRESS,     /* "host:port", kept as text */
    T_DURATION,    /* milliseconds in an int64_t */
    T_UINT,        /* a count (or milliseconds, see unit) in [min, max] */
    T_SIZE,        /* bytes in a size_t; k, M, G suffixes */
    T_ENUM,        /* one of choices, stored as its value */
    T_SET,         /* a comma-separated subset of choices, stored as a bitmask */
    T_SECRET,      /* a key; "" is none (NULL); never echoed */
    T_SECRET_FILE, /* a file name, kept; the file holds the T_SECRET at `secret` */
    T_PATH,        /* a file name; "" is none (NULL) */
    T_TEXT,        /* printable ASCII without spaces, at most max (or 64) bytes; "" is none */
    T_URL,         /* a Redis URL (redis.h); "" is none; shown redacted (it may hold a password) */
};

struct choice {
    const char *name;
    int value;
};

struct setting {
    const char *name; /* the field of struct ts_config it sets */
    const char *env;
    const char *flag;
    enum setting_type type;
    const char *def;   /* the default as an operator would write it; "" is none */
    const char *unit;  /* what a T_UINT counts, for the docs; NULL for other types */
    uint64_t min, max; /* T_UINT, T_SIZE: the value; T_DURATION: ms; T_TEXT: max length */
    const struct choice *choices; /* T_ENUM, T_SET: ends with {NULL, 0} */
    size_t offset;                /* of the field in struct ts_config */
    size_t size;                  /* of the field */
    size_t secret;                /* T_SECRET_FILE: offset of the key it fills */
    const char *help;             /* sentences for --help and the docs */
};

#define FIELD(f) .offset = offsetof(struct ts_config, f), .size = sizeof(((struct ts_config *)0)->f)

static const struct choice log_formats[] = {
    {"json", TS_LOG_FORMAT_JSON},
    {"text", TS_LOG_FORMAT_TEXT},
    {NULL, 0},
};

static const struct choice log_levels[] = {
    {"debug", TS_LOG_DEBUG},
    {"info", TS_LOG_INFO},
    {"warn", TS_LOG_WARN},
    {"error", TS_LOG_ERROR},
    {NULL, 0},
};

static const struct choice builtin_kinds[] = {
    {"ticker", TS_KIND_TICKER},
    {"command", TS_KIND_COMMAND},
    {NULL, 0},
};

static const struct setting settings[] = {
    {
        .name = "listen",
        .env = "LISTEN",
        .flag = "--listen",
        .type = T_ADDRESS,
        .def = "127.0.0.1:8080",
        FIELD(listen),
        .help = "Address of the public listener (task API and event streams). Port 0 picks a "
                "free port.",
    },
    {
        .name = "admin_listen",
        .env = "ADMIN_LISTEN",
        .flag = "--admin-listen",
        .type = T_ADDRESS,
        .def = "127.0.0.1:9090",
        FIELD(admin_listen),
        .help = "Address of the admin listener (/healthz, /readyz, /drain, /metrics).",
    },
    {
        .name = "graceful_shutdown_timeout",
        .env = "GRACEFUL_SHUTDOWN_TIMEOUT",
        .flag = "--graceful-shutdown-timeout",
        .type = T_DURATION,
        .def = "600s",
        .min = 0,
        .max = DURATION_MAX_MS,
        FIELD(graceful_shutdown_timeout_ms),
        .help = "After SIGTERM or SIGINT, how long running tasks may go on, counted from the "
                "start of the drain; then they are cancelled.",
    },
    {
        .name = "shutdown_delay",
        .env = "SHUTDOWN_DELAY",
        .flag = "--shutdown-delay",
        .type = T_DURATION,
        .def = "0s",
        .min = 0,
        .max = DURATION_MAX_MS,
        FIELD(shutdown_delay_ms),
        .help = "After a stop signal, keep the public listener open at least this long, so that "
                "load balancers stop sending new clients first.",
    },
    {
        .name = "kill_grace",
        .env = "KILL_GRACE",
        .flag = "--kill-grace",
        .type = T_DURATION,
        .def = "10s",
        .min = 0,
        .max = DURATION_MAX_MS,
        FIELD(kill_grace_ms),
        .help = "Time between SIGTERM and SIGKILL for the process group of a cancelled command "
                "task.",
    },
    {
        .name = "termination_grace_period",
        .env = "TERMINATION_GRACE_PERIOD",
        .flag = "--termination-grace-period",
        .type = T_DURATION,
        .def = "0",
        .min = 0,
        .max = DURATION_MAX_MS,
        FIELD(termination_grace_period_ms),
        .help = "The time the supervisor allows for the stop (Kubernetes "
                "terminationGracePeriodSeconds, systemd TimeoutStopSec). When set, start-up "
                "fails unless the stop budget, max(GRACEFUL_SHUTDOWN_TIMEOUT + KILL_GRACE, "
                "SHUTDOWN_DELAY) + 10s, fits inside it. 0: not known, no check.",
    },
    {
        .name = "drain_auth_key",
        .env = "DRAIN_AUTH_KEY",
        .flag = "--drain-auth-key",
        .type = T_SECRET,
        .def = "",
        FIELD(drain_auth_key),
        .help = "Bearer key for POST and DELETE /drain on the admin listener. Empty: no key, and "
                "/drain is refused.",
    },
    {
        .name = "drain_auth_key_file",
        .env = "DRAIN_AUTH_KEY_FILE",
        .flag = "--drain-auth-key-file",
        .type = T_SECRET_FILE,
        .def = "",
        FIELD(drain_auth_key_file),
        .secret = offsetof(struct ts_config, drain_auth_key),
        .help = "File holding DRAIN_AUTH_KEY; one trailing newline is stripped. Read again on "
                "SIGHUP. Set this or DRAIN_AUTH_KEY, not both.",
    },
    {
        .name = "api_auth_key",
        .env = "API_AUTH_KEY",
        .flag = "--api-auth-key",
        .type = T_SECRET,
        .def = "",
        FIELD(api_auth_key),
        .help = "Bearer key required on the public API. Empty: the API is open.",
    },
    {
        .name = "api_auth_key_file",
        .env = "API_AUTH_KEY_FILE",
        .flag = "--api-auth-key-file",
        .type = T_SECRET_FILE,
        .def = "",
        FIELD(api_auth_key_file),
        .secret = offsetof(struct ts_config, api_auth_key),
        .help = "File holding API_AUTH_KEY; one trailing newline is stripped. Read again on "
                "SIGHUP. Set this or API_AUTH_KEY, not both.",
    },
    {
        .name = "workers",
        .env = "WORKERS",
        .flag = "--workers",
        .type = T_UINT,
        .def = "4",
        .unit = "threads",
        .min = 1,
        .max = 1024,
        FIELD(workers),
        .help = "Worker threads running tasks.",
    },
    {
        .name = "max_queued_tasks",
        .env = "MAX_QUEUED_TASKS",
        .flag = "--max-queued-tasks",
        .type = T_UINT,
        .def = "1000",
        .unit = "tasks",
        .min = 0,
        .max = 1000000,
        FIELD(max_queued_tasks),
        .help = "Tasks accepted but not yet running; beyond this POST /v1/tasks answers 429.",
    },
    {
        .name = "task_retention",
        .env = "TASK_RETENTION",
        .flag = "--task-retention",
        .type = T_DURATION,
        .def = "10m",
        .min = 0,
        .max = DURATION_MAX_MS,
        FIELD(task_retention_ms),
        .help = "How long a finished task, its status and its events stay available.",
    },
    {
        .name = "retained_bytes",
        .env = "RETAINED_BYTES",
        .flag = "--retained-bytes",
        .type = T_SIZE,
        .def = "64M",
        .min = MIB,
        .max = 1024 * GIB,
        FIELD(retained_bytes),
        .help = "Encoded event bytes held by all tasks together. Past it the oldest finished "
                "tasks are forgotten first (checked as tasks end and are submitted, so running "
                "tasks may pass it by up to WORKERS x EVENT_LOG_BYTES); when running tasks alone "
                "hold it, POST /v1/tasks answers 503 with Retry-After.",
    },
    {
        .name = "kinds",
        .env = "KINDS",
        .flag = "--kinds",
        .type = T_SET,
        .def = "command",
        .choices = builtin_kinds,
        FIELD(kinds),
        .help = "The built-in task kinds clients may submit, comma-separated: ticker (a demo "
                "that emits ticks; `make run` turns it on) and command (the COMMANDS_FILE "
                "programs). Empty: none; kinds an embedding program registers are not "
                "affected.",
    },
    {
        .name = "event_log_events",
        .env = "EVENT_LOG_EVENTS",
        .flag = "--event-log-events",
        .type = T_UINT,
        .def = "1000",
        .unit = "events",
        .min = 1,
        .max = 1000000,
        FIELD(event_log_events),
        .help = "Events kept per task for replay; a client that asks for older ones gets a gap "
                "event.",
    },
    {
        .name = "event_log_bytes",
        .env = "EVENT_LOG_BYTES",
        .flag = "--event-log-bytes",
        .type = T_SIZE,
        .def = "1M",
        .min = KIB,
        .max = GIB,
        FIELD(event_log_bytes),
        .help = "Encoded event bytes kept per task for replay.",
    },
    {
        .name = "sse_heartbeat_interval",
        .env = "SSE_HEARTBEAT_INTERVAL",
        .flag = "--sse-heartbeat-interval",
        .type = T_DURATION,
        .def = "15s",
        .min = 100,
        .max = HOUR_MS,
        FIELD(sse_heartbeat_interval_ms),
        .help = "A comment line is sent on an event stream idle this long; it is also how dead "
                "clients are found.",
    },
    {
        .name = "sse_retry_ms",
        .env = "SSE_RETRY_MS",
        .flag = "--sse-retry-ms",
        .type = T_UINT,
        .def = "2000",
        .unit = "ms",
        .min = 0,
        .max = 600000,
        FIELD(sse_retry_ms),
        .help = "The retry: hint sent first on every event stream: how long a client waits "
                "before it reconnects, in milliseconds.",
    },
    {
        .name = "max_connections",
        .env = "MAX_CONNECTIONS",
        .flag = "--max-connections",
        .type = T_UINT,
        .def = "10000",
        .unit = "connections",
        .min = 1,
        .max = 1000000,
        FIELD(max_connections),
        .help = "Connections on the public listener, event streams included.",
    },
    {
        .name = "max_connections_per_ip",
        .env = "MAX_CONNECTIONS_PER_IP",
        .flag = "--max-connections-per-ip",
        .type = T_UINT,
        .def = "0",
        .unit = "connections",
        .min = 0,
        .max = 1000000,
        FIELD(max_connections_per_ip),
        .help = "Connections per client IP address on the public listener. 0: no cap.",
    },
    {
        .name = "max_body_bytes",
        .env = "MAX_BODY_BYTES",
        .flag = "--max-body-bytes",
        .type = T_SIZE,
        .def = "1M",
        .min = 1,
        .max = 64 * MIB,
        FIELD(max_body_bytes),
        .help = "Request body cap; a larger body gets 413.",
    },
    {
        .name = "max_header_bytes",
        .env = "MAX_HEADER_BYTES",
        .flag = "--max-header-bytes",
        .type = T_SIZE,
        .def = "8k",
        .min = 4 * KIB,
        .max = MIB,
        FIELD(max_header_bytes),
        .help = "The request line and headers must fit in this (else 414/431, then close). "
                "A connection holds a buffer of up to this size only while it reads a head; "
                "an open stream holds none.",
    },
    {
        .name = "idle_timeout",
        .env = "IDLE_TIMEOUT",
        .flag = "--idle-timeout",
        .type = T_DURATION,
        .def = "60s",
        .min = SECOND_MS,
        .max = HOUR_MS,
        FIELD(idle_timeout_ms),
        .help = "A connection idle this long is closed.",
    },
    {
        .name = "header_timeout",
        .env = "HEADER_TIMEOUT",
        .flag = "--header-timeout",
        .type = T_DURATION,
        .def = "10s",
        .min = 100,
        .max = 10 * MINUTE_MS,
        FIELD(header_timeout_ms),
        .help = "The request line and headers must arrive within this time (against slow "
                "clients holding connections).",
    },
    {
        .name = "http_threads",
        .env = "HTTP_THREADS",
        .flag = "--http-threads",
        .type = T_UINT,
        .def = "2",
        .unit = "threads",
        .min = 1,
        .max = 64,
        FIELD(http_threads),
        .help = "Threads serving the public listener.",
    },
    {
        .name = "commands_file",
        .env = "COMMANDS_FILE",
        .flag = "--commands-file",
        .type = T_PATH,
        .def = "",
        FIELD(commands_file),
        .help = "JSON file listing the command tasks clients may start. Empty: no command tasks.",
    },
    {
        .name = "redis_url",
        .env = "REDIS_URL",
        .flag = "--redis-url",
        .type = T_URL,
        .def = "",
        FIELD(redis_url),
        .help = "Cluster mode: the Redis that holds every task, its events and its lease, as "
                "redis://[:password@]host:port[/db] or unix:///path/redis.sock[?db=N]. Empty: "
                "tasks live in this process only (docs/cluster.md).",
    },
    {
        .name = "redis_password",
        .env = "REDIS_PASSWORD",
        .flag = "--redis-password",
        .type = T_SECRET,
        .def = "",
        FIELD(redis_password),
        .help = "Password for Redis (AUTH); overrides one in REDIS_URL. Prefer "
                "REDIS_PASSWORD_FILE.",
    },
    {
        .name = "redis_password_file",
        .env = "REDIS_PASSWORD_FILE",
        .flag = "--redis-password-file",
        .type = T_SECRET_FILE,
        .def = "",
        FIELD(redis_password_file),
        .secret = offsetof(struct ts_config, redis_password),
        .help = "File holding REDIS_PASSWORD; one trailing newline is stripped. Set this or "
                "REDIS_PASSWORD, not both.",
    },
    {
        .name = "redis_key_prefix",
        .env = "REDIS_KEY_PREFIX",
        .flag = "--redis-key-prefix",
        .type = T_TEXT,
        .def = "taskstream:",
        FIELD(redis_key_prefix),
        .help = "Prefix of every Redis key and channel: replicas sharing it form one cluster.",
    },
    {
        .name = "redis_timeout",
        .env = "REDIS_TIMEOUT",
        .flag = "--redis-timeout",
        .type = T_DURATION,
        .def = "2s",
        .min = 10,
        .max = 60 * SECOND_MS,
        FIELD(redis_timeout_ms),
        .help = "A Redis connect or command without an answer by then counts as Redis being "
                "unavailable: the connection is dropped and made again.",
    },
    {
        .name = "replica_id",
        .env = "REPLICA_ID",
        .flag = "--replica-id",
        .type = T_TEXT,
        .def = "",
        FIELD(replica_id),
        .help = "This replica's name in cluster mode (the task JSON's \"replica\"). Empty: "
                "hostname-pid.",
    },
    {
        .name = "task_lease",
        .env = "TASK_LEASE",
        .flag = "--task-lease",
        .type = T_DURATION,
        .def = "15s",
        .min = SECOND_MS,
        .max = HOUR_MS,
        FIELD(task_lease_ms),
        .help = "Cluster mode: how long a replica owns a running task without renewing (it renews "
                "every third of it); when it lapses, another replica takes the task over.",
    },
    {
        .name = "jwt_secret_file",
        .env = "JWT_SECRET_FILE",
        .flag = "--jwt-secret-file",
        .type = T_PATH,
        .def = "",
        FIELD(jwt_secret_file),
        .help = "Users' JWTs are HS256 with this secret: the file's bytes, one trailing newline "
                "stripped, at least 32. Read again on SIGHUP (docs/auth.md).",
    },
    {
        .name = "jwt_public_key_file",
        .env = "JWT_PUBLIC_KEY_FILE",
        .flag = "--jwt-public-key-file",
        .type = T_PATH,
        .def = "",
        FIELD(jwt_public_key_file),
        .help = "Users' JWTs are signed by the private half of this PEM public key: RS256 for "
                "an RSA key, ES256 for an EC P-256 key. Set this or JWT_SECRET_FILE. Read again "
                "on SIGHUP.",
    },
    {
        .name = "jwt_issuer",
        .env = "JWT_ISSUER",
        .flag = "--jwt-issuer",
        .type = T_TEXT,
        .def = "",
        .max = 512,
        FIELD(jwt_issuer),
        .help = "When set, a JWT's iss must be exactly this.",
    },
    {
        .name = "jwt_audience",
        .env = "JWT_AUDIENCE",
        .flag = "--jwt-audience",
        .type = T_TEXT,
        .def = "",
        .max = 512,
        FIELD(jwt_audience),
        .help = "When set, a JWT's aud (a string or an array) must hold this.",
    },
    {
        .name = "jwt_leeway",
        .env = "JWT_LEEWAY",
        .flag = "--jwt-leeway",
        .type = T_DURATION,
        .def = "30s",
        .min = 0,
        .max = 5 * MINUTE_MS,
        FIELD(jwt_leeway_ms),
        .help = "Clock skew allowed when checking a token's exp and nbf.",
    },
    {
        .name = "stream_token_ttl",
        .env = "STREAM_TOKEN_TTL",
        .flag = "--stream-token-ttl",
        .type = T_DURATION,
        .def = "1h",
        .min = 10 * SECOND_MS,
        .max = 24 * HOUR_MS,
        FIELD(stream_token_ttl_ms),
        .help = "Lifetime of the stream tokens POST /v1/tasks and GET /v1/tasks/{id} hand out "
                "(read-only, one task).",
    },
    {
        .name = "stream_token_secret_file",
        .env = "STREAM_TOKEN_SECRET_FILE",
        .flag = "--stream-token-secret-file",
        .type = T_PATH,
        .def = "",
        FIELD(stream_token_secret_file),
        .help = "HS256 key of the stream tokens (at least 32 bytes). Empty: a random key per "
                "process. Cluster mode with authentication needs it, the same on every replica.",
    },
    {
        .name = "auth_cookie",
        .env = "AUTH_COOKIE",
        .flag = "--auth-cookie",
        .type = T_TEXT,
        .def = "",
        FIELD(auth_cookie),
        .help = "Name of a cookie that may carry the credential (after the Authorization header "
                "and the access_token parameter). Empty: cookies are not read.",
    },
    {
        .name = "cors_origins",
        .env = "CORS_ORIGINS",
        .flag = "--cors-origins",
        .type = T_TEXT,
        .def = "",
        .max = 4096,
        FIELD(cors_origins),
        .help = "Origins whose pages may call the API and follow streams, comma-separated "
                "(http://app.example:8000), or * for any origin without credentials. Empty: no "
                "CORS headers.",
    },
    {
        .name = "log_format",
        .env = "LOG_FORMAT",
        .flag = "--log-format",
        .type = T_ENUM,
        .def = "json",
        .choices = log_formats,
        FIELD(log_format),
        .help = "Log lines as JSON objects or as key=value text.",
    },
    {
        .name = "log_level",
        .env = "LOG_LEVEL",
        .flag = "--log-level",
        .type = T_ENUM,
        .def = "info",
        .choices = log_levels,
        FIELD(log_level),
        .help = "The least severe level written to the log.",
    },
};

#define NSETTINGS TS_ARRAY_SIZE(settings)

/* ---- messages ----------------------------------------------------------- */

static int fail(char *err, size_t errlen, const struct setting *s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Write "ENV (--flag): " (when `s` is given) and the message into `err`.
 * Returns -EINVAL, so that callers can return fail(...). */
static int
fail(char *err, size_t errlen, const struct setting *s, const char *fmt, ...)
{
    va_list ap;
    int n = 0;

    if (err == NULL || errlen == 0)
        return -EINVAL;
    if (s != NULL)
        n = snprintf(err, errlen, "%s (%s): ", s->env, s->flag);
    if (n < 0 || (size_t)n >= errlen)
        return -EINVAL;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int
out_of_memory(char *err, size_t errlen)
{
    fail(err, errlen, NULL, "out of memory while reading the configuration");
    return -ENOMEM;
}

/* The first `n` bytes of `v` in double quotes, with quotes, backslashes and
 * control characters escaped, so that the message stays one line; cut with
 * "..." when long. `out` has SHOWN_MAX bytes. */
static void
quote(const char *v, size_t n, char out[SHOWN_MAX])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    size_t i;

    out[o++] = '"';
    for (i = 0; i < n && v[i] != '\0'; i++) {
        unsigned char c = (unsigned char)v[i];

        /* Keep room for the longest escape, "...", the quote and the NUL. */
        if (o + 4 + 5 > SHOWN_MAX) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 0x0f];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
}

/* How a setting's value appears in a message. */
static void
show_value(const struct setting *s, const char *value, char out[SHOWN_MAX])
{
    if (s->type == T_SECRET || s->type == T_URL)
        snprintf(out, SHOWN_MAX, "<redacted>");
    else
        quote(value, strlen(value), out);
}

/* 0s, 100ms, 15s, 10m, 168h: the largest unit that divides evenly, or
 * seconds at most (for sums an operator should follow). */
static void
format_ms_in(int64_t ms, bool largest, char *out, size_t outlen)
{
    if (largest && ms != 0 && ms % HOUR_MS == 0)
        snprintf(out, outlen, "%lldh", (long long)(ms / HOUR_MS));
    else if (largest && ms != 0 && ms % MINUTE_MS == 0)
        snprintf(out, outlen, "%lldm", (long long)(ms / MINUTE_MS));
    else if (ms % SECOND_MS == 0)
        snprintf(out, outlen, "%llds", (long long)(ms / SECOND_MS));
    else
        snprintf(out, outlen, "%lldms", (long long)ms);
}

static void
format_ms(int64_t ms, char *out, size_t outlen)
{
    format_ms_in(ms, true, out, outlen);
}

static void
format_sum_ms(int64_t ms, char *out, size_t outlen)
{
    format_ms_in(ms, false, out, outlen);
}

static void
format_size(uint64_t n, char *out, size_t outlen)
{
    if (n != 0 && n % GIB == 0)
        snprintf(out, outlen, "%lluG", (unsigned long long)(n / GIB));
    else if (n != 0 && n % MIB == 0)
        snprintf(out, outlen, "%lluM", (unsigned long long)(n / MIB));
    else if (n != 0 && n % KIB == 0)
        snprintf(out, outlen, "%lluk", (unsigned long long)(n / KIB));
    else
        snprintf(out, outlen, "%llu", (unsigned long long)n);
}

/* What a setting accepts, as a phrase for messages and the docs; "" when the
 * type says it all. */
/* T_TEXT: the table's bound, or TEXT_MAX. */
static uint64_t
text_max(const struct setting *s)
{
    return s->max != 0 ? s->max : TEXT_MAX;
}

static void
describe_allowed(const struct setting *s, char *out, size_t outlen)
{
    char lo[24], hi[24];
    const struct choice *c;
    size_t n = 0;

    out[0] = '\0';
    switch (s->type) {
    case T_ADDRESS:
        snprintf(out, outlen, "host:port with an IPv4 address, localhost or [IPv6]; port 0-65535");
        break;
    case T_DURATION:
        format_ms((int64_t)s->min, lo, sizeof(lo));
        format_ms((int64_t)s->max, hi, sizeof(hi));
        snprintf(out, outlen, "%s..%s", lo, hi);
        break;
    case T_UINT:
        snprintf(out, outlen, "%llu..%llu %s", (unsigned long long)s->min,
                 (unsigned long long)s->max, s->unit);
        break;
    case T_SIZE:
        format_size(s->min, lo, sizeof(lo));
        format_size(s->max, hi, sizeof(hi));
        snprintf(out, outlen, "%s..%s bytes", lo, hi);
        break;
    case T_ENUM:
    case T_SET:
        if (s->type == T_SET)
            n = (size_t)snprintf(out, outlen, "a comma-separated list of ");
        for (c = s->choices; c->name != NULL && n < outlen; c++) {
            const char *sep = c == s->choices ? "" : c[1].name == NULL ? " and " : ", ";

            if (s->type == T_ENUM && c != s->choices && c[1].name == NULL)
                sep = " or ";
            int w = snprintf(out + n, outlen - n, "%s%s", sep, c->name);

            if (w < 0)
                break;
            n += (size_t)w;
        }
        break;
    case T_SECRET:
        snprintf(out, outlen, "printable ASCII without spaces");
        break;
    case T_TEXT:
        snprintf(out, outlen, "printable ASCII without spaces, at most %llu bytes",
                 (unsigned long long)text_max(s));
        break;
    case T_URL:
        snprintf(out, outlen, "redis://[:password@]host:port[/db] or unix:///path[?db=N]");
        break;
    case T_SECRET_FILE:
    case T_PATH:
        break;
    }
}

/* ---- values ------------------------------------------------------------- */

static bool
owns_string(const struct setting *s)
{
    return s->type == T_ADDRESS || s->type == T_SECRET || s->type == T_SECRET_FILE ||
           s->type == T_PATH || s->type == T_TEXT || s->type == T_URL;
}

static char **
string_field(struct ts_config *cfg, const struct setting *s)
{
    return (char **)(void *)((char *)cfg + s->offset);
}

static void
release_string(char **field, bool secret)
{
    if (*field == NULL)
        return;
    if (secret)
        explicit_bzero(*field, strlen(*field));
    free(*field);
    *field = NULL;
}

/* Replace the string field of `s` by `value` (NULL for none). */
static int
set_string(struct ts_config *cfg, const struct setting *s, const char *value, size_t len)
{
    char *copy = NULL;
    char **field = string_field(cfg, s);

    if (value != NULL) {
        copy = strndup(value, len);
        if (copy == NULL)
            return -ENOMEM;
    }
    release_string(field, s->type == T_SECRET || s->type == T_URL);
    *field = copy;
    return 0;
}

/* The T_SECRET that a T_SECRET_FILE fills. */
static const struct setting *
secret_of(const struct setting *file)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (settings[i].type == T_SECRET && settings[i].offset == file->secret)
            return &settings[i];
    return NULL;
}

/* Integers of every width go through here; the table knows the width. */
static void
store_number(struct ts_config *cfg, const struct setting *s, uint64_t v)
{
    unsigned char *field = (unsigned char *)cfg + s->offset;

    if (s->size == sizeof(uint32_t)) {
        uint32_t n = (uint32_t)v;

        memcpy(field, &n, sizeof(n));
    } else {
        uint64_t n = v;

        assert(s->size == sizeof(uint64_t));
        memcpy(field, &n, sizeof(n));
    }
}

/* A key goes into an HTTP Authorization header: printable ASCII, no spaces. */
static bool
key_chars_ok(const char *key, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++)
        if (key[i] <= ' ' || key[i] > '~')
            return false;
    return true;
}

/* Read the key file `path` of setting `s` into the key it fills. */
static int
load_key_file(struct ts_config *cfg, const struct setting *s, const char *path, char *err,
              size_t errlen)
{
    char shown[SHOWN_MAX];
    char buf[KEY_FILE_MAX + 1];
    size_t len = 0;
    int rc = 0;
    int fd;

    if (*path == '\0')
        return 0;
    quote(path, strlen(path), shown);
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return fail(err, errlen, s, "cannot read %s: %s", shown, ts_strerror(-errno));
    while (len < sizeof(buf)) {
        ssize_t n = read(fd, buf + len, sizeof(buf) - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = fail(err, errlen, s, "cannot read %s: %s", shown, ts_strerror(-errno));
            goto out_close;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (len > KEY_FILE_MAX) {
        rc = fail(err, errlen, s, "%s is larger than %d bytes; it should hold only the key", shown,
                  KEY_FILE_MAX);
        goto out_close;
    }
    /* Editors and `echo` end the file with a newline that is not part of
     * the key; anything else is kept and checked. */
    if (len > 0 && buf[len - 1] == '\n') {
        len--;
        if (len > 0 && buf[len - 1] == '\r')
            len--;
    }
    if (len == 0) {
        rc = fail(err, errlen, s, "%s is empty", shown);
        goto out_close;
    }
    if (!key_chars_ok(buf, len)) {
        rc = fail(err, errlen, s,
                  "the key in %s holds a space, a control character or a second line; "
                  "use printable ASCII without spaces",
                  shown);
        goto out_close;
    }
    rc = set_string(cfg, secret_of(s), buf, len);

out_close:
    close(fd);
    explicit_bzero(buf, sizeof(buf));
    return rc;
}

/* Convert `value` for setting `s` and store it in `cfg`. */
static int
convert(struct ts_config *cfg, const struct setting *s, const char *value, char *err, size_t errlen)
{
    char shown[SHOWN_MAX];
    char allowed[128];
    const struct choice *c;
    int64_t ms;
    uint64_t n;

    show_value(s, value, shown);
    describe_allowed(s, allowed, sizeof(allowed));
    switch (s->type) {
    case T_ADDRESS:
        if (ts_config_address_split(value, NULL, 0, NULL) != 0)
            return fail(err, errlen, s, "%s is not an address; use %s", shown, allowed);
        return set_string(cfg, s, value, strlen(value));
    case T_DURATION:
        if (ts_parse_duration_ms(value, &ms) != 0)
            return fail(err, errlen, s,
                        "%s is not a duration; use e.g. 500ms, 10s, 10m, 1h (a bare number is "
                        "seconds); allowed %s",
                        shown, allowed);
        if ((uint64_t)ms < s->min || (uint64_t)ms > s->max)
            return fail(err, errlen, s, "%s is out of range; allowed %s", shown, allowed);
        store_number(cfg, s, (uint64_t)ms);
        return 0;
    case T_UINT:
        if (ts_parse_uint(value, 0, UINT64_MAX, &n) != 0)
            return fail(err, errlen, s, "%s is not a whole number; allowed %s", shown, allowed);
        if (n < s->min || n > s->max)
            return fail(err, errlen, s, "%s is out of range; allowed %s", shown, allowed);
        store_number(cfg, s, n);
        return 0;
    case T_SIZE:
        if (ts_parse_size(value, &n) != 0)
            return fail(err, errlen, s,
                        "%s is not a size; use bytes or a k, M or G suffix (e.g. 64k, 1M); "
                        "allowed %s",
                        shown, allowed);
        if (n < s->min || n > s->max)
            return fail(err, errlen, s, "%s is out of range; allowed %s", shown, allowed);
        store_number(cfg, s, n);
        return 0;
    case T_ENUM:
        for (c = s->choices; c->name != NULL; c++) {
            if (strcasecmp(value, c->name) == 0) {
                store_number(cfg, s, (uint64_t)c->value);
                return 0;
            }
        }
        return fail(err, errlen, s, "%s is not allowed; use %s", shown, allowed);
    case T_SET: {
        const char *p = value;
        uint64_t mask = 0;

        while (*p != '\0') {
            size_t len = strcspn(p, ",");

            for (c = s->choices; c->name != NULL; c++)
                if (strlen(c->name) == len && strncasecmp(p, c->name, len) == 0)
                    break;
            if (c->name == NULL)
                return fail(err, errlen, s, "%s is not allowed; use %s", shown, allowed);
            mask |= (uint64_t)c->value;
            p += len;
            if (*p == ',' && *++p == '\0')
                return fail(err, errlen, s, "%s ends with a comma; use %s", shown, allowed);
        }
        store_number(cfg, s, mask);
        return 0;
    }
    case T_SECRET:
        if (*value == '\0')
            return set_string(cfg, s, NULL, 0);
        if (!key_chars_ok(value, strlen(value)))
            return fail(err, errlen, s,
                        "%s holds a space, a control character or a newline; use %s", shown,
                        allowed);
        return set_string(cfg, s, value, strlen(value));
    case T_SECRET_FILE:
        if (set_string(cfg, s, *value != '\0' ? value : NULL, strlen(value)) != 0)
            return -ENOMEM;
        return load_key_file(cfg, s, value, err, errlen);
    case T_PATH:
        return set_string(cfg, s, *value != '\0' ? value : NULL, strlen(value));
    case T_TEXT:
        if (strlen(value) > text_max(s) || !key_chars_ok(value, strlen(value)))
            return fail(err, errlen, s, "%s is not allowed; use %s", shown, allowed);
        return set_string(cfg, s, *value != '\0' ? value : NULL, strlen(value));
    case T_URL:
        if (*value != '\0' && ts_redis_url_parse(value, NULL) != 0)
            return fail(err, errlen, s, "%s is not a Redis URL; use %s", shown, allowed);
        return set_string(cfg, s, *value != '\0' ? value : NULL, strlen(value));
    }
    return -EINVAL;
}

/* ---- addresses ---------------------------------------------------------- */

int
ts_config_address_split(const char *addr, char *host, size_t hostlen, uint16_t *port)
{
    char buf[INET6_ADDRSTRLEN];
    unsigned char bin[16];
    const char *h, *hend, *p;
    uint64_t portnum;
    size_t hlen;
    bool ok;

    if (addr == NULL)
        return -EINVAL;
    if (addr[0] == '[') {
        h = addr + 1;
        hend = strchr(h, ']');
        if (hend == NULL || hend[1] != ':')
            return -EINVAL;
        p = hend + 2;
    } else {
        h = addr;
        hend = strrchr(addr, ':');
        if (hend == NULL)
            return -EINVAL;
        p = hend + 1;
    }
    hlen = (size_t)(hend - h);
    if (hlen == 0 || hlen >= sizeof(buf))
        return -EINVAL;
    memcpy(buf, h, hlen);
    buf[hlen] = '\0';
    if (addr[0] == '[')
        ok = inet_pton(AF_INET6, buf, bin) == 1;
    else
        ok = strcmp(buf, "localhost") == 0 || inet_pton(AF_INET, buf, bin) == 1;
    if (!ok || ts_parse_uint(p, 0, 65535, &portnum) != 0)
        return -EINVAL;
    if (host != NULL) {
        if (hlen >= hostlen)
            return -EINVAL;
        memcpy(host, buf, hlen + 1);
    }
    if (port != NULL)
        *port = (uint16_t)portnum;
    return 0;
}

/* ---- the config as a whole ---------------------------------------------- */

#ifndef NDEBUG
/* The table's own invariants: names line up, each type fits its field. */
static bool
table_is_consistent(void)
{
    size_t i, j;

    for (i = 0; i < NSETTINGS; i++) {
        const struct setting *s = &settings[i];
        size_t len = strlen(s->name);

        if (strlen(s->env) != len || strlen(s->flag) != len + 2 || strncmp(s->flag, "--", 2) != 0)
            return false;
        for (j = 0; j < len; j++) {
            char c = s->name[j];

            if (s->env[j] != (c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c))
                return false;
            if (s->flag[j + 2] != (c == '_' ? '-' : c))
                return false;
        }
        switch (s->type) {
        case T_DURATION:
            if (s->size != sizeof(int64_t) || s->max > INT64_MAX)
                return false;
            break;
        case T_UINT:
        case T_SIZE:
            if (s->type == T_UINT && s->unit == NULL)
                return false;
            if (s->size != sizeof(uint32_t) && s->size != sizeof(uint64_t))
                return false;
            if (s->size == sizeof(uint32_t) && s->max > UINT32_MAX)
                return false;
            break;
        case T_ENUM:
            if (s->size != sizeof(int) || s->choices == NULL)
                return false;
            break;
        case T_SET:
            if (s->size != sizeof(uint32_t) || s->choices == NULL)
                return false;
            break;
        case T_SECRET_FILE:
            if (s->size != sizeof(char *) || secret_of(s) == NULL)
                return false;
            break;
        default:
            if (s->size != sizeof(char *))
                return false;
        }
    }
    return true;
}
#endif

int
ts_config_init(struct ts_config *cfg)
{
    char err[256];
    size_t i;
    int rc;

    assert(table_is_consistent());
    memset(cfg, 0, sizeof(*cfg));
    for (i = 0; i < NSETTINGS; i++) {
        if (settings[i].type == T_SECRET_FILE)
            continue;
        rc = convert(cfg, &settings[i], settings[i].def, err, sizeof(err));
        if (rc != 0) {
            /* The defaults are ours: only memory can make them fail. */
            assert(rc == -ENOMEM);
            ts_config_dispose(cfg);
            return -ENOMEM;
        }
    }
    return 0;
}

void
ts_config_dispose(struct ts_config *cfg)
{
    size_t i;

    for (i = 0; i < NSETTINGS; i++)
        if (owns_string(&settings[i]))
            release_string(string_field(cfg, &settings[i]),
                           settings[i].type == T_SECRET || settings[i].type == T_URL);
}

int
ts_config_copy(struct ts_config *dst, const struct ts_config *src)
{
    size_t i;

    *dst = *src;
    for (i = 0; i < NSETTINGS; i++)
        if (owns_string(&settings[i]))
            *string_field(dst, &settings[i]) = NULL;
    for (i = 0; i < NSETTINGS; i++) {
        const char *v;

        if (!owns_string(&settings[i]))
            continue;
        v = *string_field((struct ts_config *)src, &settings[i]);
        if (v != NULL && set_string(dst, &settings[i], v, strlen(v)) != 0) {
            ts_config_dispose(dst);
            return -ENOMEM;
        }
    }
    return 0;
}

static const struct setting *
find_env(const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < NSETTINGS; i++)
        if (strncmp(settings[i].env, name, len) == 0 && settings[i].env[len] == '\0')
            return &settings[i];
    return NULL;
}

static const struct setting *
find_flag(const char *arg, size_t len)
{
    size_t i;

    for (i = 0; i < NSETTINGS; i++)
        if (strncmp(settings[i].flag, arg, len) == 0 && settings[i].flag[len] == '\0')
            return &settings[i];
    return NULL;
}

static void
collect_env(const char *given[NSETTINGS], char *const envp[])
{
    char *const *e;

    for (e = envp; e != NULL && *e != NULL; e++) {
        const char *eq = strchr(*e, '=');
        const struct setting *s;

        if (eq == NULL)
            continue;
        s = find_env(*e, (size_t)(eq - *e));
        /* The first entry wins, as with getenv(). */
        if (s != NULL && given[s - settings] == NULL)
            given[s - settings] = eq + 1;
    }
}

static int
collect_args(const char *given[NSETTINGS], int argc, char *const argv[], char *err, size_t errlen)
{
    char shown[SHOWN_MAX];
    int i;

    for (i = 1; argv != NULL && i < argc && argv[i] != NULL; i++) {
        const char *arg = argv[i];
        const char *eq;
        const struct setting *s;
        size_t len;

        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0)
            return TS_CONFIG_HELP;
        if (strcmp(arg, "--help-markdown") == 0)
            return TS_CONFIG_HELP_MARKDOWN;
        if (strcmp(arg, "--version") == 0 || strcmp(arg, "-V") == 0)
            return TS_CONFIG_VERSION;
        /* Positional text may be a key that lost its flag: never echo it. */
        if (arg[0] != '-')
            return fail(err, errlen, NULL,
                        "unexpected argument %d; settings are flags like --workers 8 "
                        "(see --help)",
                        i);
        eq = strchr(arg, '=');
        len = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
        s = find_flag(arg, len);
        if (s == NULL) {
            /* Only the name: the text after '=' may be a key. */
            quote(arg, len, shown);
            return fail(err, errlen, NULL, "unknown flag %s (see --help)", shown);
        }
        if (eq != NULL) {
            given[s - settings] = eq + 1;
            continue;
        }
        /* A forgotten value would otherwise swallow the next flag. */
        if (i + 1 >= argc || argv[i + 1] == NULL || strncmp(argv[i + 1], "--", 2) == 0)
            return fail(err, errlen, s, "missing value; use %s VALUE or %s=VALUE", s->flag,
                        s->flag);
        given[s - settings] = argv[++i];
    }
    return TS_CONFIG_OK;
}

/* A key and its file together would leave one of them silently unused. */
static int
check_exclusive(const char *given[NSETTINGS], char *err, size_t errlen)
{
    size_t i, j;

    for (i = 0; i < NSETTINGS; i++) {
        if (settings[i].type != T_SECRET_FILE || given[i] == NULL || *given[i] == '\0')
            continue;
        for (j = 0; j < NSETTINGS; j++) {
            if (settings[j].type == T_SECRET && settings[j].offset == settings[i].secret &&
                given[j] != NULL && *given[j] != '\0')
                return fail(err, errlen, &settings[i],
                            "set, and so is %s (%s); set only one of them", settings[j].env,
                            settings[j].flag);
        }
    }
    return 0;
}

int64_t
ts_config_stop_budget_ms(const struct ts_config *cfg)
{
    int64_t tasks = cfg->graceful_shutdown_timeout_ms + cfg->kill_grace_ms;

    return (tasks > cfg->shutdown_delay_ms ? tasks : cfg->shutdown_delay_ms) + TS_STOP_MARGIN_MS;
}

/* Everything the stop sequence may take must fit in what the supervisor
 * allows before it sends SIGKILL. */
static int
check_budget(const struct ts_config *cfg, char *err, size_t errlen)
{
    char tgp[24], gst[24], grace[24], delay[24], margin[24], need_s[24];
    int64_t need;

    if (cfg->termination_grace_period_ms == 0)
        return 0;
    need = ts_config_stop_budget_ms(cfg);
    if (need <= cfg->termination_grace_period_ms)
        return 0;
    format_sum_ms(cfg->termination_grace_period_ms, tgp, sizeof(tgp));
    format_sum_ms(cfg->graceful_shutdown_timeout_ms, gst, sizeof(gst));
    format_sum_ms(cfg->kill_grace_ms, grace, sizeof(grace));
    format_sum_ms(cfg->shutdown_delay_ms, delay, sizeof(delay));
    format_sum_ms(TS_STOP_MARGIN_MS, margin, sizeof(margin));
    format_sum_ms(need, need_s, sizeof(need_s));
    return fail(err, errlen, find_env("TERMINATION_GRACE_PERIOD", 24),
                "\"%s\" is too short: max(GRACEFUL_SHUTDOWN_TIMEOUT %s + KILL_GRACE %s, "
                "SHUTDOWN_DELAY %s) + %s margin = %s; raise it to at least %s or lower the others",
                tgp, gst, grace, delay, margin, need_s, need_s);
}

/* A COMMANDS_FILE nobody could use is a mistake worth stopping for. */
static int
check_kinds(const struct ts_config *cfg, char *err, size_t errlen)
{
    if (cfg->commands_file == NULL || (cfg->kinds & TS_KIND_COMMAND) != 0)
        return 0;
    return fail(err, errlen, find_env("KINDS", 5),
                "leaves out command, but COMMANDS_FILE is set; add command to KINDS or unset "
                "COMMANDS_FILE");
}

int
ts_config_check(const struct ts_config *cfg, char *err, size_t errlen)
{
    int rc = check_budget(cfg, err, errlen);

    return rc != 0 ? rc : check_kinds(cfg, err, errlen);
}

int
ts_config_new(struct ts_config **out)
{
    struct ts_config *cfg = malloc(sizeof(*cfg));

    *out = NULL;
    if (cfg == NULL)
        return -ENOMEM;
    if (ts_config_init(cfg) != 0) {
        free(cfg);
        return -ENOMEM;
    }
    *out = cfg;
    return 0;
}

void
ts_config_free(struct ts_config *cfg)
{
    if (cfg == NULL)
        return;
    ts_config_dispose(cfg);
    free(cfg);
}

int
ts_config_set(struct ts_config *cfg, const char *name, const char *value, char *err, size_t errlen)
{
    char shown[SHOWN_MAX];
    const struct setting *s;
    struct ts_config next;
    int rc;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (cfg == NULL || name == NULL || value == NULL)
        return fail(err, errlen, NULL, "no config, name or value given");
    s = find_env(name, strlen(name));
    if (s == NULL) {
        quote(name, strlen(name), shown);
        return fail(err, errlen, NULL, "unknown setting %s (see docs/configuration.md)", shown);
    }
    if (ts_config_copy(&next, cfg) != 0)
        return out_of_memory(err, errlen);
    rc = convert(&next, s, value, err, errlen);
    /* A key given by value replaces the file it came from: a reload must
     * not read the file back over it. */
    for (size_t i = 0; rc == 0 && s->type == T_SECRET && i < NSETTINGS; i++)
        if (settings[i].type == T_SECRET_FILE && settings[i].secret == s->offset)
            rc = set_string(&next, &settings[i], NULL, 0);
    if (rc != 0) {
        ts_config_dispose(&next);
        return rc == -ENOMEM ? out_of_memory(err, errlen) : rc;
    }
    ts_config_dispose(cfg);
    *cfg = next;
    return 0;
}

int
ts_log_new_from_config(struct ts_log **out, int fd, const struct ts_config *cfg)
{
    return ts_log_new(out, fd, cfg->log_format, cfg->log_level);
}

int
ts_config_parse(struct ts_config *cfg, char *const envp[], int argc, char *const argv[], char *err,
                size_t errlen)
{
    const char *given[NSETTINGS];
    struct ts_config next;
    size_t i;
    int rc;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    memset(given, 0, sizeof(given));
    collect_env(given, envp);
    rc = collect_args(given, argc, argv, err, errlen);
    if (rc != TS_CONFIG_OK)
        return rc;
    rc = check_exclusive(given, err, errlen);
    if (rc != 0)
        return rc;
    if (ts_config_copy(&next, cfg) != 0)
        return out_of_memory(err, errlen);
    for (i = 0; i < NSETTINGS; i++) {
        if (given[i] == NULL)
            continue;
        rc = convert(&next, &settings[i], given[i], err, errlen);
        if (rc != 0)
            goto out_dispose_next;
    }
    rc = ts_config_check(&next, err, errlen);
    if (rc != 0)
        goto out_dispose_next;
    next.env = envp;
    ts_config_dispose(cfg);
    *cfg = next;
    return TS_CONFIG_OK;

out_dispose_next:
    ts_config_dispose(&next);
    if (rc == -ENOMEM)
        return out_of_memory(err, errlen);
    return rc;
}

int
ts_config_reread_key_files(struct ts_config *cfg, char *err, size_t errlen)
{
    struct ts_config next;
    size_t i;
    int rc;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (ts_config_copy(&next, cfg) != 0)
        return out_of_memory(err, errlen);
    for (i = 0; i < NSETTINGS; i++) {
        const char *path;

        if (settings[i].type != T_SECRET_FILE)
            continue;
        path = *string_field(&next, &settings[i]);
        if (path == NULL)
            continue;
        rc = load_key_file(&next, &settings[i], path, err, errlen);
        if (rc != 0) {
            ts_config_dispose(&next);
            return rc == -ENOMEM ? out_of_memory(err, errlen) : rc;
        }
    }
    ts_config_dispose(cfg);
    *cfg = next;
    return 0;
}

/* ---- help and docs ------------------------------------------------------ */

static void
metavar(const struct setting *s, char *out, size_t outlen)
{
    static const char *const names[] = {
        [T_ADDRESS] = "HOST:PORT",
        [T_DURATION] = "DURATION",
        [T_UINT] = "N",
        [T_SIZE] = "SIZE",
        [T_ENUM] = "",
        [T_SET] = "",
        [T_SECRET] = "KEY",
        [T_SECRET_FILE] = "PATH",
        [T_PATH] = "PATH",
        [T_TEXT] = "TEXT",
        [T_URL] = "URL",
    };
    const struct choice *c;
    size_t n = 0;

    snprintf(out, outlen, "%s", names[s->type]);
    if (s->type != T_ENUM && s->type != T_SET)
        return;
    for (c = s->choices; c->name != NULL && n < outlen; c++) {
        int w = snprintf(out + n, outlen - n, "%s%s",
                         c == s->choices    ? ""
                         : s->type == T_SET ? ","
                                            : "|",
                         c->name);

        if (w < 0)
            break;
        n += (size_t)w;
    }
}

/* `text` as words filling lines of `width` columns, each indented. */
static void
put_wrapped(FILE *out, const char *text, int indent, int width)
{
    const char *p = text;
    int col = 0;

    while (*p != '\0') {
        const char *end = strchr(p, ' ');
        int wlen = end != NULL ? (int)(end - p) : (int)strlen(p);

        if (col > 0 && col + 1 + wlen > width) {
            fputc('\n', out);
            col = 0;
        }
        if (col == 0) {
            fprintf(out, "%*s", indent, "");
            col = indent;
        } else {
            fputc(' ', out);
            col++;
        }
        fwrite(p, 1, (size_t)wlen, out);
        col += wlen;
        p += wlen;
        while (*p == ' ')
            p++;
    }
    if (col > 0)
        fputc('\n', out);
}

void
ts_config_help(FILE *out, const char *progname)
{
    size_t i;

    fprintf(out, "Usage: %s [--flag VALUE | --flag=VALUE]...\n\n",
            progname != NULL ? progname : "taskstreamd");
    fputs("Runs long tasks and streams their events over Server-Sent Events.\n"
          "\n"
          "Every setting is an environment variable and a flag; a flag wins over the\n"
          "environment. Durations: 500ms, 10s, 10m, 1h, or a bare number of seconds.\n"
          "Sizes: bytes, or a k, M or G suffix (powers of 1024).\n"
          "\n"
          "Settings:\n",
          out);
    for (i = 0; i < NSETTINGS; i++) {
        const struct setting *s = &settings[i];
        char allowed[128], meta[64], line[256];

        describe_allowed(s, allowed, sizeof(allowed));
        metavar(s, meta, sizeof(meta));
        fprintf(out, "  %s %s\n", s->flag, meta);
        snprintf(line, sizeof(line), "env %s; default %s%s%s", s->env,
                 *s->def != '\0' ? s->def : "none", *allowed != '\0' ? "; allowed " : "", allowed);
        put_wrapped(out, line, 6, 79);
        put_wrapped(out, s->help, 6, 79);
    }
    fputs("\nOther flags:\n"
          "  -h, --help       print this text\n"
          "  --help-markdown  print the configuration reference in Markdown\n"
          "  -V, --version    print the version\n",
          out);
}

/* Table cells must not contain a bare '|'. */
static void
put_cell(FILE *out, const char *text)
{
    for (; *text != '\0'; text++) {
        if (*text == '|')
            fputc('\\', out);
        fputc(*text, out);
    }
}

static int64_t
default_ms(const char *env)
{
    const struct setting *s = find_env(env, strlen(env));
    int64_t ms = 0;

    if (s != NULL)
        ts_parse_duration_ms(s->def, &ms);
    return ms;
}

void
ts_config_markdown(FILE *out)
{
    struct ts_config defaults = {
        .graceful_shutdown_timeout_ms = default_ms("GRACEFUL_SHUTDOWN_TIMEOUT"),
        .kill_grace_ms = default_ms("KILL_GRACE"),
        .shutdown_delay_ms = default_ms("SHUTDOWN_DELAY"),
    };
    int64_t gst = defaults.graceful_shutdown_timeout_ms, grace = defaults.kill_grace_ms;
    int64_t delay = defaults.shutdown_delay_ms, need = ts_config_stop_budget_ms(&defaults);
    char gst_s[24], grace_s[24], delay_s[24], margin_s[24], need_s[24];
    size_t i;

    fputs("# Configuration\n"
          "\n"
          "<!-- Generated by `taskstreamd --help-markdown` from the settings table in\n"
          "     src/config.c; do not edit by hand: run `make docs`. -->\n"
          "\n"
          "This page is generated by `taskstreamd --help-markdown`.\n"
          "\n"
          "Every setting is an environment variable and a command-line flag, given as\n"
          "`--flag VALUE` or `--flag=VALUE`; a flag wins over the environment. Unknown\n"
          "flags are errors; environment variables not listed here are ignored. An invalid\n"
          "value stops start-up with one line naming the setting, the value and what is\n"
          "allowed.\n"
          "\n"
          "- **Durations** take a suffix `ms`, `s`, `m` or `h`: `500ms`, `10s`, `10m`, `1h`.\n"
          "  A bare number is seconds (`30` is `30s`).\n"
          "- **Sizes** are bytes, or take a suffix `k`, `M` or `G` (powers of 1024): `32k`,\n"
          "  `1M`, `1G`.\n"
          "- **Addresses** are `host:port` with an IPv4 address, `localhost` or `[IPv6]`;\n"
          "  port 0 picks a free port.\n"
          "- **Keys** (`DRAIN_AUTH_KEY`, `API_AUTH_KEY`) are printable ASCII without spaces\n"
          "  and never appear in messages or logs. Each may instead be read from a file\n"
          "  (`*_KEY_FILE`, e.g. a mounted Kubernetes Secret): one trailing newline (`\\n` or\n"
          "  `\\r\\n`) is stripped; a missing, unreadable or empty file stops start-up, and\n"
          "  so does setting both the key and its file. Prefer the file or the environment\n"
          "  to the flag: any local user can read a command line with `ps`.\n"
          "\n"
          "| Variable | Flag | Default | Description |\n"
          "| --- | --- | --- | --- |\n",
          out);
    for (i = 0; i < NSETTINGS; i++) {
        const struct setting *s = &settings[i];
        char allowed[128];

        describe_allowed(s, allowed, sizeof(allowed));
        fprintf(out, "| `%s` | `%s` | ", s->env, s->flag);
        if (*s->def != '\0')
            fprintf(out, "`%s`", s->def);
        else
            fputs("none", out);
        fputs(" | ", out);
        put_cell(out, s->help);
        if (*allowed != '\0') {
            fputs(" Allowed: ", out);
            put_cell(out, allowed);
            fputs(".", out);
        }
        fputs(" |\n", out);
    }

    format_sum_ms(gst, gst_s, sizeof(gst_s));
    format_sum_ms(grace, grace_s, sizeof(grace_s));
    format_sum_ms(delay, delay_s, sizeof(delay_s));
    format_sum_ms(TS_STOP_MARGIN_MS, margin_s, sizeof(margin_s));
    format_sum_ms(need, need_s, sizeof(need_s));
    fprintf(out,
            "\n"
            "## Shutdown budget\n"
            "\n"
            "After SIGTERM the process drains: running tasks go on for up to\n"
            "`GRACEFUL_SHUTDOWN_TIMEOUT`, then cancelled command tasks get `KILL_GRACE`\n"
            "between SIGTERM and SIGKILL. Beside that, counted from the same signal, the\n"
            "public listener stays open for at least `SHUTDOWN_DELAY`. Then the last events\n"
            "flush. The margin covers that flush (5 s), C tasks that ignore cancellation\n"
            "(2 s) and exiting. The supervisor must wait at least that long before it sends\n"
            "SIGKILL:\n"
            "\n"
            "    max(GRACEFUL_SHUTDOWN_TIMEOUT + KILL_GRACE, SHUTDOWN_DELAY) + %s\n"
            "        <= terminationGracePeriodSeconds (Kubernetes) or TimeoutStopSec (systemd)\n"
            "\n"
            "With the defaults that is max(%s + %s, %s) + %s = %s, so set\n"
            "`terminationGracePeriodSeconds: %lld` or more. Set `TERMINATION_GRACE_PERIOD` to\n"
            "the same value and taskstreamd refuses to start when the budget does not fit.\n"
            "\n"
            "## Other flags\n"
            "\n"
            "| Flag | Description |\n"
            "| --- | --- |\n"
            "| `--help`, `-h` | Print the settings and exit. |\n"
            "| `--help-markdown` | Print this page and exit. |\n"
            "| `--version`, `-V` | Print the version and exit. |\n",
            margin_s, gst_s, grace_s, delay_s, margin_s, need_s,
            (long long)((need + SECOND_MS - 1) / SECOND_MS));
}
