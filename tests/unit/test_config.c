/* Unit tests for src/config.c: defaults, every kind of bad value, precedence,
 * key files, the shutdown budget, --help and the Markdown reference. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "redis.h"
#include "taskstream.h"
#include "util.h"

#define SECRET "Sup3r-Secret-Value"

/* Every setting the daemon must have, as the brief and DESIGN.md name them. */
static const struct {
    const char *env;
    const char *flag;
} all_settings[] = {
    {"LISTEN", "--listen"},
    {"ADMIN_LISTEN", "--admin-listen"},
    {"GRACEFUL_SHUTDOWN_TIMEOUT", "--graceful-shutdown-timeout"},
    {"SHUTDOWN_DELAY", "--shutdown-delay"},
    {"KILL_GRACE", "--kill-grace"},
    {"TERMINATION_GRACE_PERIOD", "--termination-grace-period"},
    {"DRAIN_AUTH_KEY", "--drain-auth-key"},
    {"DRAIN_AUTH_KEY_FILE", "--drain-auth-key-file"},
    {"API_AUTH_KEY", "--api-auth-key"},
    {"API_AUTH_KEY_FILE", "--api-auth-key-file"},
    {"WORKERS", "--workers"},
    {"MAX_QUEUED_TASKS", "--max-queued-tasks"},
    {"TASK_RETENTION", "--task-retention"},
    {"RETAINED_BYTES", "--retained-bytes"},
    {"KINDS", "--kinds"},
    {"EVENT_LOG_EVENTS", "--event-log-events"},
    {"EVENT_LOG_BYTES", "--event-log-bytes"},
    {"SSE_HEARTBEAT_INTERVAL", "--sse-heartbeat-interval"},
    {"SSE_RETRY_MS", "--sse-retry-ms"},
    {"MAX_CONNECTIONS", "--max-connections"},
    {"MAX_CONNECTIONS_PER_IP", "--max-connections-per-ip"},
    {"MAX_BODY_BYTES", "--max-body-bytes"},
    {"MAX_HEADER_BYTES", "--max-header-bytes"},
    {"IDLE_TIMEOUT", "--idle-timeout"},
    {"HEADER_TIMEOUT", "--header-timeout"},
    {"HTTP_THREADS", "--http-threads"},
    {"COMMANDS_FILE", "--commands-file"},
    {"REDIS_URL", "--redis-url"},
    {"REDIS_PASSWORD", "--redis-password"},
    {"REDIS_PASSWORD_FILE", "--redis-password-file"},
    {"REDIS_KEY_PREFIX", "--redis-key-prefix"},
    {"REDIS_TIMEOUT", "--redis-timeout"},
    {"REPLICA_ID", "--replica-id"},
    {"TASK_LEASE", "--task-lease"},
    {"JWT_SECRET_FILE", "--jwt-secret-file"},
    {"JWT_PUBLIC_KEY_FILE", "--jwt-public-key-file"},
    {"JWT_ISSUER", "--jwt-issuer"},
    {"JWT_AUDIENCE", "--jwt-audience"},
    {"JWT_LEEWAY", "--jwt-leeway"},
    {"STREAM_TOKEN_TTL", "--stream-token-ttl"},
    {"STREAM_TOKEN_SECRET_FILE", "--stream-token-secret-file"},
    {"AUTH_COOKIE", "--auth-cookie"},
    {"CORS_ORIGINS", "--cors-origins"},
    {"LOG_FORMAT", "--log-format"},
    {"LOG_LEVEL", "--log-level"},
};

/* argv[0] is added; `args` and `env` end with NULL (either may be NULL). */
static int
parse(struct ts_config *cfg, char **env, char **args, char *err, size_t errlen)
{
    char *argv[32];
    int argc = 0;

    argv[argc++] = "taskstreamd";
    while (args != NULL && *args != NULL && argc < 31)
        argv[argc++] = *args++;
    argv[argc] = NULL;
    return ts_config_parse(cfg, env, argc, argv, err, errlen);
}

static void
assert_str_or_null_equal(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

static void
assert_config_equal(const struct ts_config *a, const struct ts_config *b)
{
    assert_str_or_null_equal(a->listen, b->listen);
    assert_str_or_null_equal(a->admin_listen, b->admin_listen);
    assert_int_equal(a->graceful_shutdown_timeout_ms, b->graceful_shutdown_timeout_ms);
    assert_int_equal(a->shutdown_delay_ms, b->shutdown_delay_ms);
    assert_int_equal(a->kill_grace_ms, b->kill_grace_ms);
    assert_int_equal(a->termination_grace_period_ms, b->termination_grace_period_ms);
    assert_str_or_null_equal(a->drain_auth_key, b->drain_auth_key);
    assert_str_or_null_equal(a->api_auth_key, b->api_auth_key);
    assert_int_equal(a->workers, b->workers);
    assert_int_equal(a->max_queued_tasks, b->max_queued_tasks);
    assert_int_equal(a->task_retention_ms, b->task_retention_ms);
    assert_int_equal(a->event_log_events, b->event_log_events);
    assert_int_equal(a->event_log_bytes, b->event_log_bytes);
    assert_int_equal(a->sse_heartbeat_interval_ms, b->sse_heartbeat_interval_ms);
    assert_int_equal(a->sse_retry_ms, b->sse_retry_ms);
    assert_int_equal(a->max_connections, b->max_connections);
    assert_int_equal(a->max_connections_per_ip, b->max_connections_per_ip);
    assert_int_equal(a->max_body_bytes, b->max_body_bytes);
    assert_int_equal(a->max_header_bytes, b->max_header_bytes);
    assert_int_equal(a->idle_timeout_ms, b->idle_timeout_ms);
    assert_int_equal(a->header_timeout_ms, b->header_timeout_ms);
    assert_int_equal(a->http_threads, b->http_threads);
    assert_str_or_null_equal(a->commands_file, b->commands_file);
    assert_str_or_null_equal(a->redis_url, b->redis_url);
    assert_str_or_null_equal(a->redis_password, b->redis_password);
    assert_str_or_null_equal(a->redis_key_prefix, b->redis_key_prefix);
    assert_str_or_null_equal(a->replica_id, b->replica_id);
    assert_int_equal(a->redis_timeout_ms, b->redis_timeout_ms);
    assert_int_equal(a->task_lease_ms, b->task_lease_ms);
    assert_int_equal(a->log_format, b->log_format);
    assert_int_equal(a->log_level, b->log_level);
}

static void
test_defaults(void **state)
{
    struct ts_config cfg;
    char err[256];

    (void)state;
    assert_int_equal(ts_config_init(&cfg), 0);
    assert_int_equal(parse(&cfg, NULL, NULL, err, sizeof(err)), TS_CONFIG_OK);
    assert_string_equal(err, "");
    assert_string_equal(cfg.listen, "127.0.0.1:8080");
    assert_string_equal(cfg.admin_listen, "127.0.0.1:9090");
    assert_int_equal(cfg.graceful_shutdown_timeout_ms, 600000);
    assert_int_equal(cfg.shutdown_delay_ms, 0);
    assert_int_equal(cfg.kill_grace_ms, 10000);
    assert_int_equal(cfg.termination_grace_period_ms, 0);
    assert_null(cfg.drain_auth_key);
    assert_null(cfg.api_auth_key);
    assert_int_equal(cfg.workers, 4);
    assert_int_equal(cfg.max_queued_tasks, 1000);
    assert_int_equal(cfg.task_retention_ms, 600000);
    assert_int_equal(cfg.event_log_events, 1000);
    assert_int_equal(cfg.event_log_bytes, 1 << 20);
    assert_int_equal(cfg.sse_heartbeat_interval_ms, 15000);
    assert_int_equal(cfg.sse_retry_ms, 2000);
    assert_int_equal(cfg.max_connections, 10000);
    assert_int_equal(cfg.max_connections_per_ip, 0);
    assert_int_equal(cfg.max_body_bytes, 1 << 20);
    assert_int_equal(cfg.max_header_bytes, 8 << 10);
    assert_int_equal(cfg.idle_timeout_ms, 60000);
    assert_int_equal(cfg.header_timeout_ms, 10000);
    assert_int_equal(cfg.http_threads, 2);
    assert_null(cfg.commands_file);
    assert_int_equal(cfg.log_format, TS_LOG_FORMAT_JSON);
    assert_int_equal(cfg.log_level, TS_LOG_INFO);
    ts_config_dispose(&cfg);
    assert_null(cfg.listen);

    /* Disposed, then initialised again. */
    assert_int_equal(ts_config_init(&cfg), 0);
    assert_string_equal(cfg.listen, "127.0.0.1:8080");
    ts_config_dispose(&cfg);
}

/* Valid values of every type, through the environment and through flags. */
static void
test_valid_values(void **state)
{
    static const struct {
        const char *env;
        const char *flag;
        const char *value;
    } rows[] = {
        {"LISTEN", "--listen", "0.0.0.0:0"},
        {"LISTEN", "--listen", "localhost:65535"},
        {"ADMIN_LISTEN", "--admin-listen", "[::1]:9091"},
        {"ADMIN_LISTEN", "--admin-listen", "[::]:80"},
        {"GRACEFUL_SHUTDOWN_TIMEOUT", "--graceful-shutdown-timeout", "30"},
        {"SHUTDOWN_DELAY", "--shutdown-delay", "5s"},
        {"KILL_GRACE", "--kill-grace", "500ms"},
        {"TASK_RETENTION", "--task-retention", "1h"},
        {"WORKERS", "--workers", "1024"},
        {"MAX_QUEUED_TASKS", "--max-queued-tasks", "0"},
        {"EVENT_LOG_BYTES", "--event-log-bytes", "1k"},
        {"EVENT_LOG_BYTES", "--event-log-bytes", "1G"},
        {"SSE_HEARTBEAT_INTERVAL", "--sse-heartbeat-interval", "100ms"},
        {"SSE_RETRY_MS", "--sse-retry-ms", "600000"},
        {"MAX_BODY_BYTES", "--max-body-bytes", "1"},
        {"MAX_BODY_BYTES", "--max-body-bytes", "64M"},
        {"MAX_HEADER_BYTES", "--max-header-bytes", "4096"},
        {"IDLE_TIMEOUT", "--idle-timeout", "1h"},
        {"HEADER_TIMEOUT", "--header-timeout", "10m"},
        {"HTTP_THREADS", "--http-threads", "64"},
        {"LOG_FORMAT", "--log-format", "text"},
        {"LOG_LEVEL", "--log-level", "WARN"},
        {"COMMANDS_FILE", "--commands-file", "/etc/taskstream/commands.json"},
        {"DRAIN_AUTH_KEY", "--drain-auth-key", SECRET},
        {"RETAINED_BYTES", "--retained-bytes", "1M"},
        {"RETAINED_BYTES", "--retained-bytes", "1024G"},
        {"KINDS", "--kinds", "ticker"},
        {"KINDS", "--kinds", "command,ticker"},
        {"KINDS", "--kinds", ""},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        struct ts_config cfg;
        char envbuf[256], flagbuf[256], err[512];
        char *env[] = {envbuf, NULL};
        char *args[] = {flagbuf, NULL};

        snprintf(envbuf, sizeof(envbuf), "%s=%s", rows[i].env, rows[i].value);
        snprintf(flagbuf, sizeof(flagbuf), "%s=%s", rows[i].flag, rows[i].value);
        assert_int_equal(ts_config_init(&cfg), 0);
        if (parse(&cfg, env, NULL, err, sizeof(err)) != 0)
            fail_msg("%s: %s", envbuf, err);
        if (parse(&cfg, NULL, args, err, sizeof(err)) != 0)
            fail_msg("%s: %s", flagbuf, err);
        ts_config_dispose(&cfg);
    }
}

static void
test_values_stored(void **state)
{
    struct ts_config cfg;
    char err[256];
    char *env[] = {
        "LISTEN=[::1]:0",
        "GRACEFUL_SHUTDOWN_TIMEOUT=90",
        "KILL_GRACE=1500ms",
        "EVENT_LOG_BYTES=64k",
        "LOG_LEVEL=Debug",
        "LOG_FORMAT=text",
        "COMMANDS_FILE=/c.json",
        "API_AUTH_KEY=" SECRET,
        "DRAIN_AUTH_KEY=",
        "SSE_RETRY_MS=0",
        NULL,
    };

    (void)state;
    assert_int_equal(ts_config_init(&cfg), 0);
    assert_int_equal(parse(&cfg, env, NULL, err, sizeof(err)), 0);
    assert_string_equal(cfg.listen, "[::1]:0");
    assert_int_equal(cfg.graceful_shutdown_timeout_ms, 90000);
    assert_int_equal(cfg.kill_grace_ms, 1500);
    assert_int_equal(cfg.event_log_bytes, 65536);
    assert_int_equal(cfg.log_level, TS_LOG_DEBUG);
    assert_int_equal(cfg.log_format, TS_LOG_FORMAT_TEXT);
    assert_string_equal(cfg.commands_file, "/c.json");
    assert_string_equal(cfg.api_auth_key, SECRET);
    assert_null(cfg.drain_auth_key);
    assert_int_equal(cfg.sse_retry_ms, 0);

    /* A second parse replaces the strings (ASan checks for leaks), and an
     * empty value clears them. */
    {
        char *env2[] = {"COMMANDS_FILE=", "API_AUTH_KEY=", "LISTEN=127.0.0.1:1", NULL};

        assert_int_equal(parse(&cfg, env2, NULL, err, sizeof(err)), 0);
        assert_null(cfg.commands_file);
        assert_null(cfg.api_auth_key);
        assert_string_equal(cfg.listen, "127.0.0.1:1");
    }
    ts_config_dispose(&cfg);
}

/* Every kind of invalid value fails with one line naming the variable, the
 * flag, the value and what is allowed, and leaves the config untouched. */
static void
test_invalid_values(void **state)
{
    static const struct {
        const char *env;
        const char *flag;
        const char *value;
        const char *want;  /* in the message */
        const char *shown; /* how the value appears; NULL: in quotes as is */
    } rows[] = {
        {"LISTEN", "--listen", "nohost", "is not an address; use host:port", NULL},
        {"LISTEN", "--listen", "example.com:80", "IPv4 address, localhost or [IPv6]", NULL},
        {"LISTEN", "--listen", ":8080", "is not an address", NULL},
        {"LISTEN", "--listen", "127.0.0.1:", "is not an address", NULL},
        {"LISTEN", "--listen", "127.0.0.1:65536", "port 0-65535", NULL},
        {"LISTEN", "--listen", "127.0.0.1:-1", "is not an address", NULL},
        {"LISTEN", "--listen", "127.0.0.1:80x", "is not an address", NULL},
        {"LISTEN", "--listen", "1.2.3:80", "is not an address", NULL},
        {"LISTEN", "--listen", "::1:80", "is not an address", NULL},
        {"LISTEN", "--listen", "[::1:80", "is not an address", NULL},
        {"LISTEN", "--listen", "[::1]80", "is not an address", NULL},
        {"LISTEN", "--listen", "[1.2.3.4]:80", "is not an address", NULL},
        {"LISTEN", "--listen", "", "is not an address", NULL},
        {"ADMIN_LISTEN", "--admin-listen", "localhost", "is not an address", NULL},
        {"ADMIN_LISTEN", "--admin-listen", "a\nb:1", "is not an address", "\"a\\x0ab:1\""},
        {"GRACEFUL_SHUTDOWN_TIMEOUT", "--graceful-shutdown-timeout", "ten",
         "is not a duration; use e.g. 500ms, 10s, 10m, 1h", NULL},
        {"GRACEFUL_SHUTDOWN_TIMEOUT", "--graceful-shutdown-timeout", "-1s", "is not a duration",
         NULL},
        {"GRACEFUL_SHUTDOWN_TIMEOUT", "--graceful-shutdown-timeout", "10x", "is not a duration",
         NULL},
        {"GRACEFUL_SHUTDOWN_TIMEOUT", "--graceful-shutdown-timeout", "", "is not a duration", NULL},
        {"GRACEFUL_SHUTDOWN_TIMEOUT", "--graceful-shutdown-timeout", "99999999999999999999h",
         "is not a duration", NULL},
        {"GRACEFUL_SHUTDOWN_TIMEOUT", "--graceful-shutdown-timeout", "169h",
         "is out of range; allowed 0s..168h", NULL},
        {"SHUTDOWN_DELAY", "--shutdown-delay", "1.5s", "is not a duration", NULL},
        {"KILL_GRACE", "--kill-grace", "10 s", "is not a duration", NULL},
        {"TERMINATION_GRACE_PERIOD", "--termination-grace-period", "x", "is not a duration", NULL},
        {"TASK_RETENTION", "--task-retention", "1d", "is not a duration", NULL},
        {"RETAINED_BYTES", "--retained-bytes", "1023k", "is out of range", NULL},
        {"KINDS", "--kinds", "ticker,shell",
         "is not allowed; use a comma-separated list of ticker and command", NULL},
        {"KINDS", "--kinds", "ticker,", "ends with a comma", NULL},
        {"KINDS", "--kinds", ",ticker", "is not allowed", NULL},
        {"SSE_HEARTBEAT_INTERVAL", "--sse-heartbeat-interval", "99ms",
         "is out of range; allowed 100ms..1h", NULL},
        {"SSE_HEARTBEAT_INTERVAL", "--sse-heartbeat-interval", "61m", "out of range", NULL},
        {"IDLE_TIMEOUT", "--idle-timeout", "999ms", "allowed 1s..1h", NULL},
        {"HEADER_TIMEOUT", "--header-timeout", "11m", "allowed 100ms..10m", NULL},
        {"WORKERS", "--workers", "0", "is out of range; allowed 1..1024", NULL},
        {"WORKERS", "--workers", "1025", "is out of range; allowed 1..1024", NULL},
        {"WORKERS", "--workers", "four", "is not a whole number; allowed 1..1024", NULL},
        {"WORKERS", "--workers", "-1", "is not a whole number", NULL},
        {"WORKERS", "--workers", " 4", "is not a whole number", NULL},
        {"WORKERS", "--workers", "99999999999999999999999", "is not a whole number", NULL},
        {"MAX_QUEUED_TASKS", "--max-queued-tasks", "1000001", "allowed 0..1000000", NULL},
        {"EVENT_LOG_EVENTS", "--event-log-events", "0", "allowed 1..1000000", NULL},
        {"MAX_CONNECTIONS", "--max-connections", "0", "allowed 1..1000000", NULL},
        {"MAX_CONNECTIONS_PER_IP", "--max-connections-per-ip", "1e3", "is not a whole number",
         NULL},
        {"HTTP_THREADS", "--http-threads", "65", "allowed 1..64", NULL},
        {"SSE_RETRY_MS", "--sse-retry-ms", "600001", "allowed 0..600000", NULL},
        {"SSE_RETRY_MS", "--sse-retry-ms", "2s", "is not a whole number", NULL},
        {"EVENT_LOG_BYTES", "--event-log-bytes", "1023", "is out of range; allowed 1k..1G", NULL},
        {"EVENT_LOG_BYTES", "--event-log-bytes", "2G", "allowed 1k..1G", NULL},
        {"EVENT_LOG_BYTES", "--event-log-bytes", "1T", "is not a size; use bytes or a k, M or G",
         NULL},
        {"MAX_BODY_BYTES", "--max-body-bytes", "0", "allowed 1..64M", NULL},
        {"MAX_BODY_BYTES", "--max-body-bytes", "65M", "allowed 1..64M", NULL},
        {"MAX_HEADER_BYTES", "--max-header-bytes", "4095", "allowed 4k..1M", NULL},
        {"MAX_HEADER_BYTES", "--max-header-bytes", "2M", "allowed 4k..1M", NULL},
        {"LOG_FORMAT", "--log-format", "xml", "is not allowed; use json or text", NULL},
        {"LOG_LEVEL", "--log-level", "verbose", "use debug, info, warn or error", NULL},
        {"LOG_LEVEL", "--log-level", "", "use debug, info, warn or error", NULL},
        {"DRAIN_AUTH_KEY", "--drain-auth-key", "Sup3r Secret", "<redacted> holds a space",
         "<redacted>"},
        {"API_AUTH_KEY", "--api-auth-key", "Sup3r\tSecret", "printable ASCII", "<redacted>"},
        {"API_AUTH_KEY", "--api-auth-key", "Sup3r-Secret\n", "<redacted>", "<redacted>"},
    };
    struct ts_config defaults;
    size_t i;
    int form;

    (void)state;
    assert_int_equal(ts_config_init(&defaults), 0);
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        for (form = 0; form < 3; form++) {
            struct ts_config cfg;
            char a[256], b[256], err[512], shown[256], named[128];
            char *env[] = {a, NULL};
            char *args_eq[] = {a, NULL};
            char *args_sep[] = {(char *)rows[i].flag, (char *)rows[i].value, NULL};
            int rc;

            assert_int_equal(ts_config_init(&cfg), 0);
            if (form == 0) {
                snprintf(a, sizeof(a), "%s=%s", rows[i].env, rows[i].value);
                rc = parse(&cfg, env, NULL, err, sizeof(err));
            } else if (form == 1) {
                snprintf(a, sizeof(a), "%s=%s", rows[i].flag, rows[i].value);
                rc = parse(&cfg, NULL, args_eq, err, sizeof(err));
            } else {
                rc = parse(&cfg, NULL, args_sep, err, sizeof(err));
            }
            snprintf(b, sizeof(b), "row %zu form %d (%s=%s)", i, form, rows[i].env, rows[i].value);
            if (rc != -EINVAL)
                fail_msg("%s: rc %d", b, rc);
            snprintf(named, sizeof(named), "%s (%s): ", rows[i].env, rows[i].flag);
            if (strncmp(err, named, strlen(named)) != 0)
                fail_msg("%s: message does not start with %s: %s", b, named, err);
            if (rows[i].shown != NULL)
                snprintf(shown, sizeof(shown), "%s", rows[i].shown);
            else
                snprintf(shown, sizeof(shown), "\"%s\"", rows[i].value);
            if (strstr(err, shown) == NULL)
                fail_msg("%s: value %s not in: %s", b, shown, err);
            if (strstr(err, rows[i].want) == NULL)
                fail_msg("%s: \"%s\" not in: %s", b, rows[i].want, err);
            if (strchr(err, '\n') != NULL)
                fail_msg("%s: more than one line: %s", b, err);
            if (strstr(err, "Secret") != NULL)
                fail_msg("%s: secret in message: %s", b, err);
            assert_config_equal(&cfg, &defaults);
            ts_config_dispose(&cfg);
        }
    }
    ts_config_dispose(&defaults);
}

static void
test_precedence(void **state)
{
    static const struct {
        const char *env[4];
        const char *args[6];
        unsigned workers;
    } rows[] = {
        {{NULL}, {NULL}, 4},
        {{"WORKERS=8", NULL}, {NULL}, 8},
        {{NULL}, {"--workers", "16", NULL}, 16},
        {{NULL}, {"--workers=3", NULL}, 3},
        {{"WORKERS=8", NULL}, {"--workers", "16", NULL}, 16},
        {{"WORKERS=8", NULL}, {"--workers=16", NULL}, 16},
        /* The last flag wins; the first environment entry wins (getenv). */
        {{NULL}, {"--workers=3", "--workers", "5", NULL}, 5},
        {{"WORKERS=7", "WORKERS=9", NULL}, {NULL}, 7},
        /* A flag overrides a bad environment value, which is never read. */
        {{"WORKERS=lots", NULL}, {"--workers=2", NULL}, 2},
        /* Unknown variables and entries without '=' are ignored. */
        {{"PATH=/usr/bin", "workers=9", "WORKERS", NULL}, {NULL}, 4},
        {{"WORKERSX=9", "WORKER=9", NULL}, {NULL}, 4},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        struct ts_config cfg;
        char err[256];
        int rc;

        assert_int_equal(ts_config_init(&cfg), 0);
        rc = parse(&cfg, (char **)rows[i].env, (char **)rows[i].args, err, sizeof(err));
        if (rc != 0)
            fail_msg("row %zu: %s", i, err);
        if (cfg.workers != rows[i].workers)
            fail_msg("row %zu: workers %u, want %u", i, cfg.workers, rows[i].workers);
        ts_config_dispose(&cfg);
    }
}

static void
test_special_flags(void **state)
{
    static const struct {
        const char *args[4];
        int rc;
        const char *want; /* in the message, for errors */
    } rows[] = {
        {{"--help", NULL}, TS_CONFIG_HELP, NULL},
        {{"-h", NULL}, TS_CONFIG_HELP, NULL},
        {{"--workers=2", "--help", NULL}, TS_CONFIG_HELP, NULL},
        {{"--help-markdown", NULL}, TS_CONFIG_HELP_MARKDOWN, NULL},
        {{"--version", NULL}, TS_CONFIG_VERSION, NULL},
        {{"--bogus", NULL}, -EINVAL, "unknown flag \"--bogus\""},
        {{"--bogus=1", NULL}, -EINVAL, "unknown flag \"--bogus\""},
        {{"-workers", "4", NULL}, -EINVAL, "unknown flag \"-workers\""},
        {{"--", NULL}, -EINVAL, "unknown flag \"--\""},
        {{"--LISTEN=1.2.3.4:5", NULL}, -EINVAL, "unknown flag \"--LISTEN\""},
        {{"--help=yes", NULL}, -EINVAL, "unknown flag \"--help\""},
        {{"serve", NULL}, -EINVAL, "unexpected argument 1"},
        {{"--workers", "4", "extra", NULL}, -EINVAL, "unexpected argument 3"},
        {{"--workers", NULL}, -EINVAL, "WORKERS (--workers): missing value"},
        {{"--workers", "--listen", "1.2.3.4:5", NULL},
         -EINVAL,
         "WORKERS (--workers): missing value"},
        {{"--log-level", "", NULL}, -EINVAL, "LOG_LEVEL (--log-level): \"\" is not allowed"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        struct ts_config cfg;
        char err[256];
        int rc;

        assert_int_equal(ts_config_init(&cfg), 0);
        rc = parse(&cfg, NULL, (char **)rows[i].args, err, sizeof(err));
        if (rc != rows[i].rc)
            fail_msg("row %zu: rc %d, want %d (%s)", i, rc, rows[i].rc, err);
        if (rows[i].want != NULL && strstr(err, rows[i].want) == NULL)
            fail_msg("row %zu: \"%s\" not in: %s", i, rows[i].want, err);
        assert_int_equal(cfg.workers, 4);
        ts_config_dispose(&cfg);
    }
}

/* A failed parse leaves everything as it was, including earlier settings
 * that were valid. */
static void
test_failure_keeps_config(void **state)
{
    struct ts_config cfg;
    char err[256];
    char *env[] = {"WORKERS=8", "LISTEN=0.0.0.0:1", "LOG_LEVEL=loud", NULL};
    char *good[] = {"--workers=6", NULL};

    (void)state;
    assert_int_equal(ts_config_init(&cfg), 0);
    assert_int_equal(parse(&cfg, NULL, good, err, sizeof(err)), 0);
    assert_int_equal(parse(&cfg, env, NULL, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "LOG_LEVEL"));
    assert_int_equal(cfg.workers, 6);
    assert_string_equal(cfg.listen, "127.0.0.1:8080");

    /* Messages are cut to the buffer, never past it; NULL is allowed. */
    memset(err, 'x', sizeof(err));
    assert_int_equal(parse(&cfg, env, NULL, err, 8), -EINVAL);
    assert_int_equal(strlen(err), 7);
    assert_int_equal(err[8], 'x');
    assert_int_equal(parse(&cfg, env, NULL, NULL, 0), -EINVAL);
    ts_config_dispose(&cfg);
}

static char tmpdir[64];

static int
setup_tmpdir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_config.XXXXXX");
    return mkdtemp(tmpdir) != NULL ? 0 : -1;
}

static int
teardown_tmpdir(void **state)
{
    char cmd[128];

    (void)state;
    /* Only files this test wrote, in a directory it created. */
    snprintf(cmd, sizeof(cmd), "%s/key", tmpdir);
    unlink(cmd);
    snprintf(cmd, sizeof(cmd), "%s/unreadable", tmpdir);
    unlink(cmd);
    snprintf(cmd, sizeof(cmd), "%s/handle.key", tmpdir);
    unlink(cmd);
    return rmdir(tmpdir);
}

static void
write_file(const char *path, const char *content, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    close(fd);
}

static void
test_key_file(void **state)
{
    static const struct {
        const char *content;
        size_t len;
        const char *key;  /* expected key; NULL: an error */
        const char *want; /* in the message */
    } rows[] = {
        {SECRET, sizeof(SECRET) - 1, SECRET, NULL},
        {SECRET "\n", sizeof(SECRET), SECRET, NULL},
        {SECRET "\r\n", sizeof(SECRET) + 1, SECRET, NULL},
        {"", 0, NULL, "is empty"},
        {"\n", 1, NULL, "is empty"},
        {"\r\n", 2, NULL, "is empty"},
        {SECRET "\n\n", sizeof(SECRET) + 1, NULL, "a second line"},
        {SECRET "\r", sizeof(SECRET), NULL, "control character"},
        {SECRET "\nSecretLine2", sizeof(SECRET) + 11, NULL, "a second line"},
        {"Secret with spaces\n", 19, NULL, "a space"},
        {"Secret\0nul", 10, NULL, "control character"},
    };
    char path[128];
    size_t i;
    int which;

    (void)state;
    snprintf(path, sizeof(path), "%s/key", tmpdir);
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        for (which = 0; which < 2; which++) {
            const char *env = which == 0 ? "DRAIN_AUTH_KEY_FILE" : "API_AUTH_KEY_FILE";
            struct ts_config cfg;
            char envbuf[256], err[512];
            char *envp[] = {envbuf, NULL};
            char *key;
            int rc;

            write_file(path, rows[i].content, rows[i].len);
            snprintf(envbuf, sizeof(envbuf), "%s=%s", env, path);
            assert_int_equal(ts_config_init(&cfg), 0);
            rc = parse(&cfg, envp, NULL, err, sizeof(err));
            key = which == 0 ? cfg.drain_auth_key : cfg.api_auth_key;
            if (rows[i].key != NULL) {
                if (rc != 0)
                    fail_msg("row %zu %s: %s", i, env, err);
                assert_non_null(key);
                assert_string_equal(key, rows[i].key);
            } else {
                if (rc != -EINVAL)
                    fail_msg("row %zu %s: rc %d", i, env, rc);
                assert_null(key);
                if (strncmp(err, env, strlen(env)) != 0 || strstr(err, path) == NULL ||
                    strstr(err, rows[i].want) == NULL)
                    fail_msg("row %zu: want %s, the path and \"%s\" in: %s", i, env, rows[i].want,
                             err);
                if (strstr(err, "Secret") != NULL)
                    fail_msg("row %zu: secret in message: %s", i, err);
            }
            ts_config_dispose(&cfg);
        }
    }
}

/* Every owned string set, then copied: the copy must own its own strings
 * (under ASan a shared one is a use after free or a double free here). */
static void
test_copy(void **state)
{
    char path[128], drain_env[160], api_env[160];
    char *envp[] = {"LISTEN=127.0.0.1:1",
                    "ADMIN_LISTEN=[::1]:2",
                    drain_env,
                    api_env,
                    "COMMANDS_FILE=/etc/taskstream/commands.json",
                    NULL};
    struct ts_config cfg, copy;
    char *const *src_fields[] = {
        &cfg.listen,       &cfg.admin_listen,      &cfg.drain_auth_key, &cfg.drain_auth_key_file,
        &cfg.api_auth_key, &cfg.api_auth_key_file, &cfg.commands_file};
    char *const *dst_fields[] = {&copy.listen,         &copy.admin_listen,
                                 &copy.drain_auth_key, &copy.drain_auth_key_file,
                                 &copy.api_auth_key,   &copy.api_auth_key_file,
                                 &copy.commands_file};
    char saved[TS_ARRAY_SIZE(src_fields)][128];
    char err[512];
    size_t i;

    (void)state;
    snprintf(path, sizeof(path), "%s/key", tmpdir);
    write_file(path, SECRET "\n", sizeof(SECRET));
    snprintf(drain_env, sizeof(drain_env), "DRAIN_AUTH_KEY_FILE=%s", path);
    snprintf(api_env, sizeof(api_env), "API_AUTH_KEY_FILE=%s", path);
    assert_int_equal(ts_config_init(&cfg), 0);
    if (parse(&cfg, envp, NULL, err, sizeof(err)) != 0)
        fail_msg("%s", err);
    for (i = 0; i < TS_ARRAY_SIZE(src_fields); i++) {
        assert_non_null(*src_fields[i]);
        snprintf(saved[i], sizeof(saved[i]), "%s", *src_fields[i]);
    }
    assert_string_equal(cfg.drain_auth_key_file, path);
    assert_string_equal(cfg.api_auth_key, SECRET);

    assert_int_equal(ts_config_copy(&copy, &cfg), 0);
    for (i = 0; i < TS_ARRAY_SIZE(src_fields); i++)
        assert_ptr_not_equal(*dst_fields[i], *src_fields[i]);
    ts_config_dispose(&cfg);
    for (i = 0; i < TS_ARRAY_SIZE(dst_fields); i++)
        assert_string_equal(*dst_fields[i], saved[i]);
    assert_int_equal(copy.workers, 4);
    ts_config_dispose(&copy);
    ts_config_dispose(&copy); /* disposing twice is harmless: the fields are NULL */
}

/* SIGHUP's part in the config: the key files are read again, all or
 * nothing. */
static void
test_reread_key_files(void **state)
{
    char path[128], envbuf[160], err[512];
    char *envp[] = {envbuf, "API_AUTH_KEY=Direct-Key", NULL};
    struct ts_config cfg;

    (void)state;
    snprintf(path, sizeof(path), "%s/key", tmpdir);
    write_file(path, "First-Key\n", 10);
    snprintf(envbuf, sizeof(envbuf), "DRAIN_AUTH_KEY_FILE=%s", path);
    assert_int_equal(ts_config_init(&cfg), 0);
    assert_int_equal(parse(&cfg, envp, NULL, err, sizeof(err)), 0);
    assert_string_equal(cfg.drain_auth_key, "First-Key");

    write_file(path, "Second-Key\n", 11);
    assert_int_equal(ts_config_reread_key_files(&cfg, err, sizeof(err)), 0);
    assert_string_equal(cfg.drain_auth_key, "Second-Key");
    assert_string_equal(cfg.api_auth_key, "Direct-Key"); /* not from a file: kept */

    write_file(path, "Two words\n", 10);
    assert_int_equal(ts_config_reread_key_files(&cfg, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "DRAIN_AUTH_KEY_FILE"));
    assert_null(strstr(err, "words"));
    assert_string_equal(cfg.drain_auth_key, "Second-Key");

    unlink(path);
    assert_int_equal(ts_config_reread_key_files(&cfg, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "cannot read"));
    assert_string_equal(cfg.drain_auth_key, "Second-Key");
    ts_config_dispose(&cfg);
}

static void
test_key_file_errors(void **state)
{
    char path[128], missing[128], unreadable[128], arg[256], err[512];
    struct ts_config cfg;

    (void)state;
    snprintf(path, sizeof(path), "%s/key", tmpdir);
    snprintf(missing, sizeof(missing), "%s/missing", tmpdir);
    snprintf(unreadable, sizeof(unreadable), "%s/unreadable", tmpdir);
    write_file(path, SECRET "\n", sizeof(SECRET));
    assert_int_equal(ts_config_init(&cfg), 0);

    /* Missing file: the setting, the path and the errno text. */
    snprintf(arg, sizeof(arg), "--drain-auth-key-file=%s", missing);
    assert_int_equal(parse(&cfg, NULL, (char *[]){arg, NULL}, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "DRAIN_AUTH_KEY_FILE (--drain-auth-key-file)"));
    assert_non_null(strstr(err, missing));
    assert_non_null(strstr(err, "No such file or directory"));

    /* A directory. */
    snprintf(arg, sizeof(arg), "--api-auth-key-file=%s", tmpdir);
    assert_int_equal(parse(&cfg, NULL, (char *[]){arg, NULL}, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "API_AUTH_KEY_FILE (--api-auth-key-file)"));
    assert_non_null(strstr(err, "Is a directory"));

    /* No permission (root reads anything, so only check when it failed). */
    write_file(unreadable, "k\n", 2);
    chmod(unreadable, 0);
    snprintf(arg, sizeof(arg), "--api-auth-key-file=%s", unreadable);
    if (parse(&cfg, NULL, (char *[]){arg, NULL}, err, sizeof(err)) != 0)
        assert_non_null(strstr(err, "Permission denied"));

    /* Too large to be a key. */
    {
        char *big = malloc(5000);

        assert_non_null(big);
        memset(big, 'k', 5000);
        write_file(path, big, 5000);
        free(big);
        snprintf(arg, sizeof(arg), "--drain-auth-key-file=%s", path);
        assert_int_equal(parse(&cfg, NULL, (char *[]){arg, NULL}, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "larger than 4096 bytes"));
        assert_null(strstr(err, "kkkk"));
    }

    /* An empty path is the same as not set. */
    assert_int_equal(parse(&cfg, (char *[]){"DRAIN_AUTH_KEY_FILE=", NULL}, NULL, err, sizeof(err)),
                     0);
    assert_null(cfg.drain_auth_key);
    ts_config_dispose(&cfg);
}

static void
test_key_and_file(void **state)
{
    char path[128], envfile[256], flagfile[256], err[512];
    char envkey[] = "DRAIN_AUTH_KEY=" SECRET;
    char flagkey[] = "--drain-auth-key=" SECRET;
    struct ts_config cfg;

    (void)state;
    snprintf(path, sizeof(path), "%s/key", tmpdir);
    write_file(path, "from-file\n", 10);
    snprintf(envfile, sizeof(envfile), "DRAIN_AUTH_KEY_FILE=%s", path);
    snprintf(flagfile, sizeof(flagfile), "--drain-auth-key-file=%s", path);
    assert_int_equal(ts_config_init(&cfg), 0);

    /* Both, whichever way each is given. */
    assert_int_equal(parse(&cfg, (char *[]){envkey, envfile, NULL}, NULL, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "DRAIN_AUTH_KEY_FILE"));
    assert_non_null(strstr(err, "DRAIN_AUTH_KEY (--drain-auth-key)"));
    assert_non_null(strstr(err, "only one"));
    assert_null(strstr(err, SECRET));
    assert_int_equal(
        parse(&cfg, (char *[]){envkey, NULL}, (char *[]){flagfile, NULL}, err, sizeof(err)),
        -EINVAL);
    assert_int_equal(
        parse(&cfg, (char *[]){envfile, NULL}, (char *[]){flagkey, NULL}, err, sizeof(err)),
        -EINVAL);
    assert_null(strstr(err, SECRET));
    assert_null(cfg.drain_auth_key);

    /* An empty key is no key: the file is used. */
    assert_int_equal(
        parse(&cfg, (char *[]){"DRAIN_AUTH_KEY=", envfile, NULL}, NULL, err, sizeof(err)), 0);
    assert_string_equal(cfg.drain_auth_key, "from-file");

    /* The drain key and the API key are independent. */
    assert_int_equal(
        parse(&cfg, (char *[]){"API_AUTH_KEY=api", envfile, NULL}, NULL, err, sizeof(err)), 0);
    assert_string_equal(cfg.api_auth_key, "api");
    assert_string_equal(cfg.drain_auth_key, "from-file");
    ts_config_dispose(&cfg);
}

/* However a key is mistyped, it never shows up in a message. */
static void
test_secret_never_echoed(void **state)
{
    static const char *const rows[][4] = {
        {"--drain-auth-kye=" SECRET, NULL},
        {"--drain-auth-key", SECRET " x", NULL},
        {"--api-auth-key=" SECRET "\n", NULL},
        {"-drain-auth-key=" SECRET, NULL},
        {"--drain-auth-key=", SECRET, NULL},
        {"--drain-auth-key", SECRET, SECRET, NULL},
        {"--drain-auth-key", SECRET, "--bogus=" SECRET, NULL},
        {"--drain-auth-key", SECRET, "--workers=0", NULL},
        {"--drain-auth-key", SECRET, "--termination-grace-period=1s", NULL},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        struct ts_config cfg;
        char err[512];
        int rc;

        assert_int_equal(ts_config_init(&cfg), 0);
        rc = parse(&cfg, NULL, (char **)rows[i], err, sizeof(err));
        if (rc != -EINVAL)
            fail_msg("row %zu: rc %d", i, rc);
        if (strstr(err, "Secret") != NULL || strstr(err, "Sup3r") != NULL)
            fail_msg("row %zu: secret in message: %s", i, err);
        ts_config_dispose(&cfg);
    }
}

/* The built-in kinds: only command by default; a COMMANDS_FILE without the
 * command kind is refused. */
static void
test_kinds(void **state)
{
    char *ticker[] = {"KINDS=ticker", NULL};
    char *unused[] = {"KINDS=ticker", "COMMANDS_FILE=/etc/taskstream/commands.json", NULL};
    struct ts_config cfg;
    char err[512];

    (void)state;
    assert_int_equal(ts_config_init(&cfg), 0);
    assert_int_equal(cfg.kinds, TS_KIND_COMMAND);
    assert_int_equal(parse(&cfg, ticker, NULL, err, sizeof(err)), 0);
    assert_int_equal(cfg.kinds, TS_KIND_TICKER);
    assert_int_equal(parse(&cfg, unused, NULL, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "KINDS (--kinds): leaves out command, but COMMANDS_FILE is set"));
    assert_int_equal(cfg.kinds, TS_KIND_TICKER);
    ts_config_dispose(&cfg);
}

static void
test_termination_budget(void **state)
{
    static const struct {
        const char *env[5];
        int rc;
        const char *want;
    } rows[] = {
        {{"TERMINATION_GRACE_PERIOD=0", NULL}, 0, NULL},
        {{"TERMINATION_GRACE_PERIOD=620", NULL}, 0, NULL},
        {{"TERMINATION_GRACE_PERIOD=619999ms", NULL},
         -EINVAL,
         "max(GRACEFUL_SHUTDOWN_TIMEOUT 600s + KILL_GRACE 10s, SHUTDOWN_DELAY 0s) + 10s margin = "
         "620s"},
        {{"TERMINATION_GRACE_PERIOD=30", NULL},
         -EINVAL,
         "TERMINATION_GRACE_PERIOD (--termination-grace-period): \"30s\" is too short"},
        {{"TERMINATION_GRACE_PERIOD=30", "GRACEFUL_SHUTDOWN_TIMEOUT=10s", NULL}, 0, NULL},
        /* SHUTDOWN_DELAY runs beside the wait for tasks: it counts only when
         * it is the longer of the two. */
        {{"TERMINATION_GRACE_PERIOD=30", "GRACEFUL_SHUTDOWN_TIMEOUT=10s", "SHUTDOWN_DELAY=20s",
          NULL},
         0,
         NULL},
        {{"TERMINATION_GRACE_PERIOD=30", "GRACEFUL_SHUTDOWN_TIMEOUT=10s", "SHUTDOWN_DELAY=21s",
          NULL},
         -EINVAL,
         "max(GRACEFUL_SHUTDOWN_TIMEOUT 10s + KILL_GRACE 10s, SHUTDOWN_DELAY 21s) + 10s margin = "
         "31s; raise it to at least 31s"},
        {{"TERMINATION_GRACE_PERIOD=29", "GRACEFUL_SHUTDOWN_TIMEOUT=10s", "SHUTDOWN_DELAY=1s",
          NULL},
         -EINVAL,
         "max(GRACEFUL_SHUTDOWN_TIMEOUT 10s + KILL_GRACE 10s, SHUTDOWN_DELAY 1s) + 10s margin = "
         "30s"},
        {{"TERMINATION_GRACE_PERIOD=1h", "GRACEFUL_SHUTDOWN_TIMEOUT=3585", "KILL_GRACE=5000ms",
          "SHUTDOWN_DELAY=1h", NULL},
         -EINVAL,
         NULL},
        {{"TERMINATION_GRACE_PERIOD=1h", "GRACEFUL_SHUTDOWN_TIMEOUT=3585", "KILL_GRACE=5000ms",
          "SHUTDOWN_DELAY=500ms", NULL},
         0,
         NULL},
        {{"TERMINATION_GRACE_PERIOD=1h", "GRACEFUL_SHUTDOWN_TIMEOUT=3585", "KILL_GRACE=5001ms",
          "SHUTDOWN_DELAY=500ms", NULL},
         -EINVAL,
         "3585s + KILL_GRACE 5001ms, SHUTDOWN_DELAY 500ms) + 10s margin = 3600001ms"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        struct ts_config cfg;
        char err[512];
        int rc;

        assert_int_equal(ts_config_init(&cfg), 0);
        rc = parse(&cfg, (char **)rows[i].env, NULL, err, sizeof(err));
        if (rc != rows[i].rc)
            fail_msg("row %zu: rc %d, want %d (%s)", i, rc, rows[i].rc, err);
        if (rows[i].want != NULL && strstr(err, rows[i].want) == NULL)
            fail_msg("row %zu: \"%s\" not in: %s", i, rows[i].want, err);
        ts_config_dispose(&cfg);
    }
}

static void
test_address_split(void **state)
{
    static const struct {
        const char *in;
        int rc;
        const char *host;
        uint16_t port;
    } rows[] = {
        {"127.0.0.1:8080", 0, "127.0.0.1", 8080},
        {"0.0.0.0:0", 0, "0.0.0.0", 0},
        {"localhost:65535", 0, "localhost", 65535},
        {"[::1]:80", 0, "::1", 80},
        {"[2001:db8::1]:443", 0, "2001:db8::1", 443},
        {"[::ffff:192.0.2.1]:1", 0, "::ffff:192.0.2.1", 1},
        {"127.0.0.1", -EINVAL, NULL, 0},
        {"127.0.0.1:65536", -EINVAL, NULL, 0},
        {"127.0.0.1:", -EINVAL, NULL, 0},
        {"256.0.0.1:1", -EINVAL, NULL, 0},
        {"host.example:1", -EINVAL, NULL, 0},
        {"LOCALHOST:1", -EINVAL, NULL, 0},
        {"[::1]", -EINVAL, NULL, 0},
        {"[]:1", -EINVAL, NULL, 0},
        {"[fe80::1%eth0]:1", -EINVAL, NULL, 0},
        {"::1", -EINVAL, NULL, 0},
        {"", -EINVAL, NULL, 0},
        {NULL, -EINVAL, NULL, 0},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        char host[64] = "";
        uint16_t port = 1234;
        int rc = ts_config_address_split(rows[i].in, host, sizeof(host), &port);

        if (rc != rows[i].rc)
            fail_msg("\"%s\": rc %d, want %d", rows[i].in ? rows[i].in : "(null)", rc, rows[i].rc);
        if (rc == 0) {
            assert_string_equal(host, rows[i].host);
            assert_int_equal(port, rows[i].port);
        }
    }
    /* Too small a host buffer. */
    {
        char host[4];

        assert_int_equal(ts_config_address_split("127.0.0.1:1", host, sizeof(host), NULL), -EINVAL);
        assert_int_equal(ts_config_address_split("127.0.0.1:1", NULL, 0, NULL), 0);
    }
}

static char *
capture(void (*fn)(FILE *, void *), void *arg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    assert_non_null(f);
    fn(f, arg);
    fclose(f);
    return text;
}

static void
write_help(FILE *f, void *arg)
{
    ts_config_help(f, arg);
}

static void
write_markdown(FILE *f, void *arg)
{
    (void)arg;
    ts_config_markdown(f);
}

static char *
next_line(char *p)
{
    p += strcspn(p, "\n");
    return *p == '\n' ? p + 1 : p;
}

static void
test_help(void **state)
{
    char *text = capture(write_help, "taskstreamd-test");
    char *line;
    size_t i;

    (void)state;
    assert_non_null(strstr(text, "Usage: taskstreamd-test "));
    assert_non_null(strstr(text, "--help-markdown"));
    assert_non_null(strstr(text, "--version"));
    assert_non_null(strstr(text, "500ms, 10s, 10m, 1h, or a bare number of seconds"));
    for (i = 0; i < TS_ARRAY_SIZE(all_settings); i++) {
        char want[128];

        snprintf(want, sizeof(want), "env %s;", all_settings[i].env);
        if (strstr(text, want) == NULL)
            fail_msg("help lacks %s", want);
        snprintf(want, sizeof(want), "  %s ", all_settings[i].flag);
        if (strstr(text, want) == NULL)
            fail_msg("help lacks %s", want);
    }
    for (line = text; *line != '\0'; line = next_line(line)) {
        size_t len = strcspn(line, "\n");

        if (len > 80)
            fail_msg("help line longer than 80 columns: %.*s", (int)len, line);
    }
    free(text);

    text = capture(write_help, NULL);
    assert_non_null(strstr(text, "Usage: taskstreamd "));
    free(text);
}

static void
test_markdown(void **state)
{
    char *text = capture(write_markdown, NULL);
    size_t i;
    size_t rows = 0;
    char *p;

    (void)state;
    assert_int_equal(strncmp(text, "# Configuration\n", 16), 0);
    assert_non_null(strstr(text, "generated by `taskstreamd --help-markdown`"));
    assert_non_null(strstr(text, "`ms`, `s`, `m` or `h`"));
    assert_non_null(strstr(text, "A bare number is seconds"));
    assert_non_null(strstr(text, "`k`, `M` or `G`"));
    assert_non_null(strstr(text, "| Variable | Flag | Default | Description |\n"));
    assert_non_null(strstr(text, "max(600s + 10s, 0s) + 10s = 620s"));
    for (i = 0; i < TS_ARRAY_SIZE(all_settings); i++) {
        char want[128];

        snprintf(want, sizeof(want), "\n| `%s` | `%s` | ", all_settings[i].env,
                 all_settings[i].flag);
        if (strstr(text, want) == NULL)
            fail_msg("markdown lacks the row %s", want);
    }
    assert_non_null(strstr(text, "| `GRACEFUL_SHUTDOWN_TIMEOUT` | `--graceful-shutdown-timeout` "
                                 "| `600s` |"));
    assert_non_null(strstr(text, "| `EVENT_LOG_BYTES` | `--event-log-bytes` | `1M` |"));
    /* Exactly one row per setting: "| `ENV` | `--flag` | ...". */
    for (p = text; *p != '\0'; p = next_line(p)) {
        size_t len = strcspn(p, "\n");
        const char *cell = strstr(p, "` | `--");

        if (strncmp(p, "| `", 3) == 0 && cell != NULL && cell < p + len)
            rows++;
    }
    assert_int_equal(rows, TS_ARRAY_SIZE(all_settings));
    free(text);
}

/* Cluster settings: defaults, a URL that is checked and never echoed, names
 * that are names, a lease of at least a second. */
static void
test_cluster_settings(void **state)
{
    static const char *const bad_urls[] = {
        "http://127.0.0.1:6379", "redis://",      "redis://:6379",        "redis://h:0",
        "redis://h:65536",       "redis://h:12x", "redis://h/db",         "redis://h/70000",
        "redis://:pw%zz@h",      "unix://",       "unix://relative.sock", "unix:///s.sock?db=",
        "unix:///s.sock?x=1",    "redis://[::1",  "redis://a b:1",
    };
    struct ts_redis_target t;
    struct ts_config cfg;
    char err[512];

    (void)state;
    assert_int_equal(ts_config_init(&cfg), 0);
    assert_null(cfg.redis_url);
    assert_string_equal(cfg.redis_key_prefix, "taskstream:");
    assert_null(cfg.replica_id);
    assert_int_equal(cfg.task_lease_ms, 15000);
    assert_int_equal(cfg.redis_timeout_ms, 2000);
    assert_int_equal(parse(&cfg,
                           (char *[]){"REDIS_URL=redis://:s3cret@10.0.0.7:6380/2", "REPLICA_ID=a-1",
                                      "TASK_LEASE=2s", NULL},
                           NULL, err, sizeof(err)),
                     TS_CONFIG_OK);
    assert_string_equal(cfg.redis_url, "redis://:s3cret@10.0.0.7:6380/2");
    assert_string_equal(cfg.replica_id, "a-1");
    assert_int_equal(cfg.task_lease_ms, 2000);
    for (size_t i = 0; i < TS_ARRAY_SIZE(bad_urls); i++) {
        char env[128];

        snprintf(env, sizeof(env), "REDIS_URL=%s", bad_urls[i]);
        assert_int_equal(parse(&cfg, (char *[]){env, NULL}, NULL, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "REDIS_URL"));
        assert_non_null(strstr(err, "<redacted>")); /* a URL may hold a password */
        assert_null(strstr(err, "pw%zz"));
    }
    assert_int_equal(parse(&cfg, (char *[]){"REPLICA_ID=a b", NULL}, NULL, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(parse(&cfg, (char *[]){"TASK_LEASE=500ms", NULL}, NULL, err, sizeof(err)),
                     -EINVAL);
    ts_config_dispose(&cfg);

    assert_int_equal(ts_redis_url_parse("redis://:p%40ss@[::1]:7000/3", &t), 0);
    assert_string_equal(t.host, "::1");
    assert_int_equal(t.port, 7000);
    assert_int_equal(t.db, 3);
    assert_string_equal(t.password, "p@ss");
    assert_int_equal(ts_redis_url_parse("redis://localhost", &t), 0);
    assert_string_equal(t.host, "localhost");
    assert_int_equal(t.port, 6379);
    assert_int_equal(t.db, 0);
    assert_string_equal(t.password, "");
    assert_int_equal(ts_redis_url_parse("unix:///run/redis/redis.sock?db=5", &t), 0);
    assert_string_equal(t.path, "/run/redis/redis.sock");
    assert_int_equal(t.db, 5);
    for (size_t i = 0; i < TS_ARRAY_SIZE(bad_urls); i++)
        assert_int_equal(ts_redis_url_parse(bad_urls[i], NULL), -EINVAL);
}

/* The opaque handle of the public API: new, set one setting by its
 * environment name, free. */
static void
test_handle_set(void **state)
{
    struct ts_config *cfg = NULL;
    char path[512], err[512];

    (void)state;
    assert_int_equal(ts_config_new(&cfg), 0);
    assert_non_null(cfg);
    assert_int_equal(cfg->workers, 4);
    assert_int_equal(ts_config_set(cfg, "WORKERS", "8", err, sizeof(err)), 0);
    assert_int_equal(cfg->workers, 8);
    assert_int_equal(ts_config_set(cfg, "GRACEFUL_SHUTDOWN_TIMEOUT", "2m", err, sizeof(err)), 0);
    assert_int_equal(cfg->graceful_shutdown_timeout_ms, 120000);

    /* A bad value: -EINVAL, the message names the setting, nothing changes. */
    assert_int_equal(ts_config_set(cfg, "WORKERS", "many", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "WORKERS"));
    assert_int_equal(cfg->workers, 8);
    assert_int_equal(ts_config_set(cfg, "NO_SUCH_SETTING", "1", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "NO_SUCH_SETTING"));
    assert_int_equal(ts_config_set(cfg, "--workers", "1", NULL, 0), -EINVAL);
    assert_int_equal(ts_config_set(cfg, "WORKERS", NULL, err, sizeof(err)), -EINVAL);

    /* A key file is read at once; a key given by value replaces the file,
     * so a reload cannot bring the file's key back; a bad key is never
     * echoed. */
    snprintf(path, sizeof(path), "%s/handle.key", tmpdir);
    write_file(path, SECRET "\n", sizeof(SECRET));
    assert_int_equal(ts_config_set(cfg, "API_AUTH_KEY_FILE", path, err, sizeof(err)), 0);
    assert_string_equal(cfg->api_auth_key, SECRET);
    assert_string_equal(cfg->api_auth_key_file, path);
    assert_int_equal(ts_config_set(cfg, "API_AUTH_KEY", "other-key", err, sizeof(err)), 0);
    assert_string_equal(cfg->api_auth_key, "other-key");
    assert_null(cfg->api_auth_key_file);
    assert_int_equal(ts_config_set(cfg, "API_AUTH_KEY", SECRET " x", err, sizeof(err)), -EINVAL);
    assert_null(strstr(err, SECRET));
    assert_string_equal(cfg->api_auth_key, "other-key");
    assert_int_equal(ts_config_set(cfg, "API_AUTH_KEY", "", err, sizeof(err)), 0);
    assert_null(cfg->api_auth_key);

    /* Settings that depend on each other are not checked one by one (the
     * order of calls must not matter), but together by ts_config_check(),
     * which ts_server_new() calls. */
    assert_int_equal(ts_config_set(cfg, "TERMINATION_GRACE_PERIOD", "30s", err, sizeof(err)), 0);
    assert_int_equal(ts_config_check(cfg, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "TERMINATION_GRACE_PERIOD"));
    assert_int_equal(ts_config_set(cfg, "GRACEFUL_SHUTDOWN_TIMEOUT", "10s", err, sizeof(err)), 0);
    assert_int_equal(ts_config_check(cfg, err, sizeof(err)), 0);
    ts_config_free(cfg);
    ts_config_free(NULL);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_valid_values),
        cmocka_unit_test(test_values_stored),
        cmocka_unit_test(test_invalid_values),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_special_flags),
        cmocka_unit_test(test_failure_keeps_config),
        cmocka_unit_test(test_key_file),
        cmocka_unit_test(test_key_file_errors),
        cmocka_unit_test(test_key_and_file),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_reread_key_files),
        cmocka_unit_test(test_secret_never_echoed),
        cmocka_unit_test(test_termination_budget),
        cmocka_unit_test(test_kinds),
        cmocka_unit_test(test_address_split),
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_markdown),
        cmocka_unit_test(test_cluster_settings),
        cmocka_unit_test(test_handle_set),
    };

    return cmocka_run_group_tests(tests, setup_tmpdir, teardown_tmpdir);
}
