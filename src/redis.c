/*
 * Redis connections: see redis.h. The shared part (`struct ts_redis`) holds
 * the target, the up/down state with its back-off, the idle pool and the
 * scripts' digests, under one mutex; a connection itself is never shared.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "clock.h"
#include "redis.h"
#include "util.h"

#define BACKOFF_MIN_NS (100 * TS_NS_PER_MS)
#define BACKOFF_MAX_NS (2 * TS_NS_PER_S)

static const double roundtrip_buckets[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                           0.005,  0.01,    0.025,  0.1,   1};

struct ts_redis_conn {
    struct ts_redis *r;
    redisContext *ctx;          /* NULL: not connected */
    unsigned pending;           /* replies owed for commands queued */
    bool probe;                 /* may reconnect while Redis is down */
    int64_t sent_ns;            /* when the first owed command was queued */
    struct ts_redis_conn *next; /* the idle pool */
};

struct ts_redis {
    struct ts_redis_target target;
    struct timeval timeout;
    struct ts_redis_script *scripts;
    size_t nscripts;
    struct ts_log *log;
    struct ts_series *up_gauge, *connects, *failures, *roundtrip;

    pthread_mutex_t mu;
    /* Guarded by mu: */
    bool up;             /* the last connect or command succeeded */
    atomic_bool down;    /* the last connect or command failed (not yet: unknown); read unlocked */
    bool trying;         /* a caller is connecting while down */
    int64_t retry_at_ns; /* while down: no connect before this */
    int64_t backoff_ns;  /* the next wait after a failure */
    struct ts_redis_conn *idle;
};

static int64_t
now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * TS_NS_PER_S + ts.tv_nsec;
}

/* ---- URLs ---- */

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..len) into out (NUL-terminated, at most max - 1). */
static int
decode(const char *s, size_t len, char *out, size_t max)
{
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (c == '%') {
            int hi, lo;

            if (i + 2 >= len)
                return -EINVAL;
            hi = hexval(s[i + 1]);
            lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -EINVAL;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (o + 1 >= max)
            return -EINVAL;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

static int
parse_db(const char *s, size_t len, int *db)
{
    uint64_t v;
    char buf[8];

    if (len == 0 || len >= sizeof(buf))
        return len == 0 ? 0 : -EINVAL;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (ts_parse_uint(buf, 0, 65535, &v) != 0)
        return -EINVAL;
    *db = (int)v;
    return 0;
}

static int
parse_unix(const char *rest, struct ts_redis_target *t)
{
    const char *q = strchr(rest, '?');
    size_t plen = q != NULL ? (size_t)(q - rest) : strlen(rest);

    if (plen == 0 || rest[0] != '/' || decode(rest, plen, t->path, sizeof(t->path)) != 0)
        return -EINVAL;
    if (q != NULL) {
        if (strncmp(q, "?db=", 4) != 0 || parse_db(q + 4, strlen(q + 4), &t->db) != 0 ||
            q[4] == '\0')
            return -EINVAL;
    }
    return 0;
}

static int
parse_tcp(const char *rest, struct ts_redis_target *t)
{
    const char *at = strrchr(rest, '@'), *host, *end, *slash, *colon;
    uint64_t port = 6379;

    slash = strchr(at != NULL ? at : rest, '/');
    if (at != NULL && slash != NULL && slash < at)
        return -EINVAL;
    if (at != NULL) {
        const char *pw = memchr(rest, ':', (size_t)(at - rest));

        /* redis://:password@ or redis://user:password@: only the password
         * counts (Redis 5 has no users; ACL users are not supported). */
        if (pw == NULL ||
            decode(pw + 1, (size_t)(at - pw - 1), t->password, sizeof(t->password)) != 0)
            return -EINVAL;
        host = at + 1;
    } else {
        host = rest;
    }
    end = slash != NULL ? slash : host + strlen(host);
    if (*host == '[') {
        const char *close = memchr(host, ']', (size_t)(end - host));

        if (close == NULL || close == host + 1 || (size_t)(close - host - 1) >= sizeof(t->host))
            return -EINVAL;
        memcpy(t->host, host + 1, (size_t)(close - host - 1));
        t->host[close - host - 1] = '\0';
        colon = close + 1 < end ? close + 1 : NULL;
        if (colon != NULL && *colon != ':')
            return -EINVAL;
    } else {
        colon = memchr(host, ':', (size_t)(end - host));
        size_t hlen = (size_t)((colon != NULL ? colon : end) - host);

        if (hlen == 0 || hlen >= sizeof(t->host))
            return -EINVAL;
        memcpy(t->host, host, hlen);
        t->host[hlen] = '\0';
    }
    for (const char *p = t->host; *p != '\0'; p++) {
        if (*p == ' ' || *p == '@' || *p == '/' || *p == '?' || *p == '#')
            return -EINVAL;
    }
    if (colon != NULL) {
        char buf[8];
        size_t plen = (size_t)(end - colon - 1);

        if (plen == 0 || plen >= sizeof(buf))
            return -EINVAL;
        memcpy(buf, colon + 1, plen);
        buf[plen] = '\0';
        if (ts_parse_uint(buf, 1, 65535, &port) != 0)
            return -EINVAL;
    }
    t->port = (int)port;
    if (slash != NULL)
        return parse_db(slash + 1, strlen(slash + 1), &t->db);
    return 0;
}

int
ts_redis_url_parse(const char *url, struct ts_redis_target *out)
{
    struct ts_redis_target t;
    int err;

    memset(&t, 0, sizeof(t));
    if (url == NULL)
        return -EINVAL;
    if (strncasecmp(url, "redis://", 8) == 0)
        err = parse_tcp(url + 8, &t);
    else if (strncasecmp(url, "unix://", 7) == 0)
        err = parse_unix(url + 7, &t);
    else
        err = -EINVAL;
    if (err == 0 && out != NULL)
        *out = t;
    explicit_bzero(&t, sizeof(t));
    return err;
}

/* ---- the shared part ---- */

int
ts_redis_new(struct ts_redis **out, const struct ts_redis_config *cfg)
{
    struct ts_redis *r;

    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -ENOMEM;
    if (ts_redis_url_parse(cfg->url, &r->target) != 0) {
        free(r);
        return -EINVAL;
    }
    if (cfg->password != NULL && cfg->password[0] != '\0')
        snprintf(r->target.password, sizeof(r->target.password), "%s", cfg->password);
    r->timeout.tv_sec = cfg->timeout_ns / TS_NS_PER_S;
    r->timeout.tv_usec = (cfg->timeout_ns % TS_NS_PER_S) / 1000;
    r->scripts = cfg->scripts;
    r->nscripts = cfg->nscripts;
    r->log = cfg->log;
    r->backoff_ns = BACKOFF_MIN_NS;
    atomic_init(&r->down, false);
    pthread_mutex_init(&r->mu, NULL);
    if (cfg->metrics != NULL) {
        struct ts_family *f;

        r->up_gauge = ts_metrics_simple(cfg->metrics, TS_METRIC_GAUGE, "redis_up",
                                        "1 while the last Redis connect or command succeeded.");
        r->connects = ts_metrics_simple(cfg->metrics, TS_METRIC_COUNTER, "redis_connects_total",
                                        "Connections made to Redis (reconnects included).");
        r->failures = ts_metrics_simple(
            cfg->metrics, TS_METRIC_COUNTER, "redis_failures_total",
            "Redis connects and commands that failed or timed out (the connection was dropped).");
        f = ts_metrics_family(cfg->metrics, TS_METRIC_HISTOGRAM, "redis_roundtrip_seconds",
                              "Time from sending a batch of Redis commands to its first reply.", 0,
                              NULL, roundtrip_buckets, TS_ARRAY_SIZE(roundtrip_buckets));
        r->roundtrip = f != NULL ? ts_family_series(f, NULL) : NULL;
        if (r->up_gauge == NULL || r->connects == NULL || r->failures == NULL ||
            r->roundtrip == NULL) {
            ts_redis_free(r);
            return -ENOMEM;
        }
    }
    *out = r;
    return 0;
}

void
ts_redis_free(struct ts_redis *r)
{
    struct ts_redis_conn *c;

    if (r == NULL)
        return;
    while ((c = r->idle) != NULL) {
        r->idle = c->next;
        ts_redis_conn_free(c);
    }
    pthread_mutex_destroy(&r->mu);
    explicit_bzero(&r->target, sizeof(r->target));
    free(r);
}

bool
ts_redis_up(struct ts_redis *r)
{
    bool up;

    pthread_mutex_lock(&r->mu);
    up = r->up;
    pthread_mutex_unlock(&r->mu);
    return up;
}

/* A success after a failure (or the first) is logged once: a new
 * connection's set-up, or a reply on a connection that outlived the outage
 * (SIGSTOP, CLIENT PAUSE: nothing was closed), which must tell the other
 * connections just the same. */
static void
mark_up(struct ts_redis *r, bool connected)
{
    bool was;

    pthread_mutex_lock(&r->mu);
    was = r->up;
    r->up = true;
    atomic_store(&r->down, false);
    r->trying = false;
    r->backoff_ns = BACKOFF_MIN_NS;
    pthread_mutex_unlock(&r->mu);
    if (connected)
        ts_series_inc(r->connects);
    if (!was) {
        ts_series_set(r->up_gauge, 1);
        ts_log(r->log, TS_LOG_INFO, "redis connected",
               TS_F_STR("address", r->target.path[0] != '\0' ? r->target.path : r->target.host),
               TS_F_INT("port", r->target.port), TS_F_INT("db", r->target.db), TS_F_END);
    }
}

static void
mark_down(struct ts_redis *r, const char *what, const char *why)
{
    bool was;

    pthread_mutex_lock(&r->mu);
    was = r->up;
    r->up = false;
    atomic_store(&r->down, true);
    r->trying = false;
    r->retry_at_ns = now_ns() + r->backoff_ns;
    r->backoff_ns = r->backoff_ns * 2 > BACKOFF_MAX_NS ? BACKOFF_MAX_NS : r->backoff_ns * 2;
    pthread_mutex_unlock(&r->mu);
    ts_series_inc(r->failures);
    if (was) {
        ts_series_set(r->up_gauge, 0);
        ts_log(r->log, TS_LOG_WARN, "redis unavailable", TS_F_STR("step", what),
               TS_F_STR("error", why), TS_F_END);
    }
}

/* May this connection try to connect now? Any may until a connect or a
 * command fails; while Redis is down, only a probe (a background thread's
 * own connection: a request handler never waits for a dead Redis), one at a
 * time and once the back-off has passed. */
static bool
may_connect(struct ts_redis *r, bool probe)
{
    bool ok;

    pthread_mutex_lock(&r->mu);
    ok = !atomic_load(&r->down) || (probe && !r->trying && now_ns() >= r->retry_at_ns);
    if (ok && atomic_load(&r->down))
        r->trying = true;
    pthread_mutex_unlock(&r->mu);
    return ok;
}

/* ---- connections ---- */

struct ts_redis_conn *
ts_redis_conn_new(struct ts_redis *r)
{
    struct ts_redis_conn *c = calloc(1, sizeof(*c));

    if (c != NULL) {
        c->r = r;
        c->probe = true;
    }
    return c;
}

static void
drop(struct ts_redis_conn *c)
{
    if (c->ctx != NULL)
        redisFree(c->ctx);
    c->ctx = NULL;
    c->pending = 0;
}

void
ts_redis_conn_free(struct ts_redis_conn *c)
{
    if (c == NULL)
        return;
    drop(c);
    free(c);
}

bool
ts_redis_conn_connected(const struct ts_redis_conn *c)
{
    return c->ctx != NULL;
}

static int
fail(struct ts_redis_conn *c, const char *what)
{
    char why[128];

    snprintf(why, sizeof(why), "%s",
             c->ctx != NULL && c->ctx->errstr[0] != '\0' ? c->ctx->errstr : "connection lost");
    drop(c);
    mark_down(c->r, what, why);
    return -EIO;
}

/* A reply that must be +OK-like (not an error); consumed. */
static int
setup_call(struct ts_redis_conn *c, redisReply **out, const char *fmt, ...)
{
    redisReply *reply;
    va_list ap;

    va_start(ap, fmt);
    reply = redisvCommand(c->ctx, fmt, ap);
    va_end(ap);
    if (reply == NULL)
        return -EIO;
    if (reply->type == REDIS_REPLY_ERROR) {
        ts_log(c->r->log, TS_LOG_ERROR, "redis refused the connection's set-up",
               TS_F_STR("error", reply->str), TS_F_END);
        freeReplyObject(reply);
        return -EACCES;
    }
    if (out != NULL)
        *out = reply;
    else
        freeReplyObject(reply);
    return 0;
}

static int
load_scripts(struct ts_redis_conn *c)
{
    for (size_t i = 0; i < c->r->nscripts; i++) {
        struct ts_redis_script *s = &c->r->scripts[i];
        redisReply *reply;
        int err = setup_call(c, &reply, "SCRIPT LOAD %s", s->source);

        if (err != 0)
            return err;
        if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
            freeReplyObject(reply);
            return -EPROTO;
        }
        /* The same digest every time: writing it again is harmless, but it
         * is shared, so under the lock. */
        pthread_mutex_lock(&c->r->mu);
        memcpy(s->sha, reply->str, 41);
        pthread_mutex_unlock(&c->r->mu);
        freeReplyObject(reply);
    }
    return 0;
}

int
ts_redis_conn_ensure(struct ts_redis_conn *c)
{
    struct ts_redis *r = c->r;
    const struct ts_redis_target *t = &r->target;
    int err;

    if (c->ctx != NULL)
        return 0;
    if (!may_connect(r, c->probe))
        return -ENOTCONN;
    c->ctx = t->path[0] != '\0' ? redisConnectUnixWithTimeout(t->path, r->timeout)
                                : redisConnectWithTimeout(t->host, t->port, r->timeout);
    if (c->ctx == NULL || c->ctx->err != 0 || redisSetTimeout(c->ctx, r->timeout) != REDIS_OK) {
        fail(c, "connect");
        return -ENOTCONN;
    }
    redisEnableKeepAlive(c->ctx);
    err = t->password[0] != '\0' ? setup_call(c, NULL, "AUTH %s", t->password) : 0;
    if (err == 0 && t->db != 0)
        err = setup_call(c, NULL, "SELECT %d", t->db);
    if (err == 0)
        err = load_scripts(c);
    if (err != 0) {
        fail(c, "set-up");
        return -ENOTCONN;
    }
    mark_up(r, true);
    return 0;
}

int
ts_redis_conn_fd(struct ts_redis_conn *c)
{
    return c->ctx != NULL ? c->ctx->fd : -1;
}

static void
owe(struct ts_redis_conn *c)
{
    if (c->pending++ == 0)
        c->sent_ns = now_ns();
}

static int
vappend(struct ts_redis_conn *c, const char *fmt, va_list ap)
{
    int rc = ts_redis_conn_ensure(c);

    if (rc != 0)
        return rc;
    if (redisvAppendCommand(c->ctx, fmt, ap) != REDIS_OK)
        return -ENOMEM;
    owe(c);
    return 0;
}

int
ts_redis_appendf(struct ts_redis_conn *c, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = vappend(c, fmt, ap);
    va_end(ap);
    return rc;
}

int
ts_redis_appendv(struct ts_redis_conn *c, int argc, const char **argv, const size_t *lens)
{
    int rc = ts_redis_conn_ensure(c);

    if (rc != 0)
        return rc;
    if (redisAppendCommandArgv(c->ctx, argc, argv, lens) != REDIS_OK)
        return -ENOMEM;
    owe(c);
    return 0;
}

int
ts_redis_reply(struct ts_redis_conn *c, redisReply **out)
{
    void *reply = NULL;
    bool first;

    *out = NULL;
    if (c->ctx == NULL || c->pending == 0)
        return -EIO;
    first = c->ctx->obuf != NULL && c->ctx->obuf[0] != '\0';
    if (redisGetReply(c->ctx, &reply) != REDIS_OK || reply == NULL)
        return fail(c, "command");
    if (first)
        ts_series_observe(c->r->roundtrip, (double)(now_ns() - c->sent_ns) / TS_NS_PER_S);
    c->pending--;
    if (atomic_load(&c->r->down))
        mark_up(c->r, false);
    *out = reply;
    return 0;
}

int
ts_redis_call(struct ts_redis_conn *c, redisReply **out, const char *fmt, ...)
{
    va_list ap;
    int rc;

    *out = NULL;
    va_start(ap, fmt);
    rc = vappend(c, fmt, ap);
    va_end(ap);
    return rc == 0 ? ts_redis_reply(c, out) : rc;
}

/* EVALSHA sha numkeys argv...: argv form, as keys and args are binary. */
static int
append_evalsha(struct ts_redis_conn *c, const char *cmd, const char *body, int numkeys, int argc,
               const char **argv, const size_t *lens)
{
    const char *av[32];
    size_t al[32];
    char nk[12];
    int n = 0;

    if (argc + 3 > (int)TS_ARRAY_SIZE(av))
        return -E2BIG;
    snprintf(nk, sizeof(nk), "%d", numkeys);
    av[n] = cmd;
    al[n++] = strlen(cmd);
    av[n] = body;
    al[n++] = strlen(body);
    av[n] = nk;
    al[n++] = strlen(nk);
    for (int i = 0; i < argc; i++, n++) {
        av[n] = argv[i];
        al[n] = lens != NULL ? lens[i] : strlen(argv[i]);
    }
    return ts_redis_appendv(c, n, av, al);
}

int
ts_redis_append_eval(struct ts_redis_conn *c, struct ts_redis_script *script, int numkeys, int argc,
                     const char **argv, const size_t *lens)
{
    char sha[41];
    int rc = ts_redis_conn_ensure(c); /* loads the scripts on a new connection */

    if (rc != 0)
        return rc;
    pthread_mutex_lock(&c->r->mu);
    memcpy(sha, script->sha, sizeof(sha));
    pthread_mutex_unlock(&c->r->mu);
    return append_evalsha(c, "EVALSHA", sha, numkeys, argc, argv, lens);
}

int
ts_redis_eval(struct ts_redis_conn *c, struct ts_redis_script *script, redisReply **out,
              int numkeys, int argc, const char **argv, const size_t *lens)
{
    int rc;

    *out = NULL;
    rc = ts_redis_append_eval(c, script, numkeys, argc, argv, lens);
    if (rc == 0)
        rc = ts_redis_reply(c, out);
    if (rc != 0 || (*out)->type != REDIS_REPLY_ERROR || strncmp((*out)->str, "NOSCRIPT", 8) != 0)
        return rc;
    /* Redis restarted without us noticing (the connection survived a
     * failover, say): EVAL puts the script back in its cache. */
    freeReplyObject(*out);
    *out = NULL;
    rc = append_evalsha(c, "EVAL", script->source, numkeys, argc, argv, lens);
    return rc == 0 ? ts_redis_reply(c, out) : rc;
}

/* ---- the pool ---- */

/* An idle connection has nothing to read: data or an end of file means
 * Redis closed it meanwhile (CLIENT KILL, a restart, its timeout), and a
 * command sent on it would fail for nothing. */
static void
drop_if_closed(struct ts_redis_conn *c)
{
    struct pollfd p = {.fd = c->ctx != NULL ? c->ctx->fd : -1, .events = POLLIN};

    if (p.fd >= 0 && poll(&p, 1, 0) != 0)
        drop(c);
}

struct ts_redis_conn *
ts_redis_get(struct ts_redis *r)
{
    struct ts_redis_conn *c;

    pthread_mutex_lock(&r->mu);
    c = r->idle;
    if (c != NULL)
        r->idle = c->next;
    pthread_mutex_unlock(&r->mu);
    if (c == NULL) {
        c = ts_redis_conn_new(r);
        if (c != NULL)
            c->probe = false; /* the pool's wait for the probes to find Redis */
        return c;
    }
    drop_if_closed(c);
    return c;
}

void
ts_redis_put(struct ts_redis *r, struct ts_redis_conn *c)
{
    if (c == NULL)
        return;
    /* A caller that left replies unread leaves a connection nobody can
     * use: replies would come back out of order. */
    if (c->pending != 0)
        drop(c);
    pthread_mutex_lock(&r->mu);
    c->next = r->idle;
    r->idle = c;
    pthread_mutex_unlock(&r->mu);
}

/* ---- a subscriber's own loop ---- */

int
ts_redis_conn_flush(struct ts_redis_conn *c)
{
    int done = 0;

    if (c->ctx == NULL)
        return -EIO;
    while (!done) {
        if (redisBufferWrite(c->ctx, &done) != REDIS_OK)
            return fail(c, "write");
    }
    return 0;
}

int
ts_redis_conn_read(struct ts_redis_conn *c)
{
    if (c->ctx == NULL)
        return -EIO;
    if (redisBufferRead(c->ctx) != REDIS_OK)
        return fail(c, "read");
    return 0;
}

int
ts_redis_conn_next(struct ts_redis_conn *c, redisReply **out)
{
    void *reply = NULL;

    *out = NULL;
    if (c->ctx == NULL)
        return -EIO;
    if (redisGetReplyFromReader(c->ctx, &reply) != REDIS_OK)
        return fail(c, "parse");
    if (reply != NULL && atomic_load(&c->r->down))
        mark_up(c->r, false);
    *out = reply;
    return 0;
}
