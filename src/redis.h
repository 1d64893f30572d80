/*
 * Redis connections for cluster mode (docs/cluster.md), on hiredis' blocking
 * API.
 *
 * Every thread that talks to Redis holds a connection of its own for as long
 * as it talks (a worker for its appends, the claimer, the subscriber) or
 * borrows one from the pool (request handlers). A connection is a hiredis
 * context with socket timeouts: a connect, a write or a reply that takes
 * longer than the configured timeout fails, and the connection is dropped
 * and made again on its next use. That is the deadline hiredis 0.14 does not
 * have for commands; blocking calls on our own threads need no event-loop
 * adapter, and no context is ever shared between threads.
 *
 * Redis being down is shared knowledge: after a failed connect or command,
 * every connection fails at once (-ENOTCONN) until one of the probes (the
 * connections of ts_redis_conn_new(), which background threads hold) gets
 * through; they try one at a time, with a back-off of 100 ms doubling to
 * 2 s. The pool's connections (request handlers, workers) never try while
 * Redis is down, so an outage costs them no waiting, only a clear error.
 *
 * Scripts are loaded (SCRIPT LOAD) on each new connection and called with
 * EVALSHA; a Redis that lost its script cache (a restart) gets them again.
 */
#ifndef TS_REDIS_H
#define TS_REDIS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "log.h"
#include "metrics.h"

#define TS_REDIS_HOST_MAX 256
#define TS_REDIS_PATH_MAX 108 /* sun_path */
#define TS_REDIS_PASSWORD_MAX 512

struct ts_redis_target {
    char host[TS_REDIS_HOST_MAX]; /* "" for a unix socket */
    int port;
    char path[TS_REDIS_PATH_MAX]; /* unix socket, or "" */
    char password[TS_REDIS_PASSWORD_MAX];
    int db;
};

/*
 * redis://[:password@]host[:port][/db] (port 6379, db 0 by default; an IPv6
 * host in brackets) or unix:///path[?db=N]. The password may be
 * percent-encoded. Returns 0 or -EINVAL; `out` may be NULL (just check).
 */
int ts_redis_url_parse(const char *url, struct ts_redis_target *out);

struct ts_redis;
struct ts_redis_conn;

/* A Lua script run with ts_redis_eval(). `sha` is filled on the first
 * connection. The caller keeps the scripts alive as long as the client. */
struct ts_redis_script {
    const char *name; /* for logs */
    const char *source;
    char sha[41];
};

struct ts_redis_config {
    const char *url;
    const char *password; /* overrides the URL's; NULL: the URL's, if any */
    int64_t timeout_ns;
    struct ts_redis_script *scripts; /* loaded on every new connection */
    size_t nscripts;
    struct ts_metrics *metrics; /* redis_up, redis_connects_total, redis_failures_total,
                                   redis_roundtrip_seconds */
    struct ts_log *log;
};

/* Nothing connects yet. Returns 0, -EINVAL (bad URL) or -ENOMEM. */
int ts_redis_new(struct ts_redis **out, const struct ts_redis_config *cfg);
/* Every connection must have been freed or put back. */
void ts_redis_free(struct ts_redis *r);

/* The last thing any connection learnt: connected, or failed. */
bool ts_redis_up(struct ts_redis *r);

/* A connection of one's own, connected on first use. */
struct ts_redis_conn *ts_redis_conn_new(struct ts_redis *r);
void ts_redis_conn_free(struct ts_redis_conn *c);

/* Borrow a connection from the pool (one is made when none is idle), give
 * it back. NULL only on out of memory. */
struct ts_redis_conn *ts_redis_get(struct ts_redis *r);
void ts_redis_put(struct ts_redis *r, struct ts_redis_conn *c);

/*
 * Queue a command (hiredis format: %s a string, %b a pointer and a length)
 * or an argv; replies come back in order from ts_redis_reply(). Queued
 * commands are sent by the first ts_redis_reply(), so a batch is one round
 * trip. Returns 0, -ENOTCONN (Redis is down: the batch is dropped) or
 * -ENOMEM.
 */
int ts_redis_appendf(struct ts_redis_conn *c, const char *fmt, ...);
int ts_redis_appendv(struct ts_redis_conn *c, int argc, const char **argv, const size_t *lens);

/* The next reply (free it with freeReplyObject; an error reply is a reply).
 * A timeout or a broken connection returns -EIO and drops the connection
 * and every reply still owed. */
int ts_redis_reply(struct ts_redis_conn *c, redisReply **out);

/* appendf + reply. */
int ts_redis_call(struct ts_redis_conn *c, redisReply **out, const char *fmt, ...);

/* EVALSHA of `script` with numkeys keys then args (argv form: keys first).
 * Reloads the script once if Redis forgot it. Same returns as call. */
int ts_redis_eval(struct ts_redis_conn *c, struct ts_redis_script *script, redisReply **out,
                  int numkeys, int argc, const char **argv, const size_t *lens);
/* Queue an EVALSHA; its reply comes from ts_redis_reply(). A NOSCRIPT
 * error is the caller's (it follows a Redis restart: the next connection
 * loads the scripts again). */
int ts_redis_append_eval(struct ts_redis_conn *c, struct ts_redis_script *script, int numkeys,
                         int argc, const char **argv, const size_t *lens);

/* For a subscriber's own loop: connect if needed (0 or -ENOTCONN/-EIO),
 * the socket, send what is queued without waiting for replies, read what
 * arrived (after poll said readable), take one parsed reply (0 with *out
 * NULL when none is complete). Errors drop the connection. */
int ts_redis_conn_ensure(struct ts_redis_conn *c);
int ts_redis_conn_fd(struct ts_redis_conn *c);
int ts_redis_conn_flush(struct ts_redis_conn *c);
int ts_redis_conn_read(struct ts_redis_conn *c);
int ts_redis_conn_next(struct ts_redis_conn *c, redisReply **out);
/* True while connected; a new connection starts without subscriptions. */
bool ts_redis_conn_connected(const struct ts_redis_conn *c);

#endif
