/*
 * HTTP/1.1 listeners of our own (the "front"): accept, the strict head parser
 * (http_head.h), request bodies, routing by a const table, responses, and
 * long-lived streamed responses (SSE) written with writev from refcounted
 * buffers. The public and the admin listener are two of these with their own
 * route tables. Why not libmicrohttpd: docs/design.md, "The front".
 *
 * Handlers see only what this header declares.
 */
#ifndef TS_HTTP_H
#define TS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <jansson.h>

#include "clock.h"
#include "drain.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

struct ts_fd_reserve;

struct ts_http;
struct ts_http_request;

/* Handles one request of a matched route. `id` is the "{id}" path segment
 * (NULL when the route has none). It answers with exactly one ts_http_reply*()
 * call; a request it leaves unanswered (out of memory) has its connection
 * closed. On the connection's loop thread. */
typedef void ts_http_handler(void *app, struct ts_http_request *req, const char *id);

struct ts_route {
    const char *name;    /* the route label in http_requests_total */
    const char *pattern; /* "/v1/tasks/{id}/events": "{id}" matches one segment */
    ts_http_handler *get;
    ts_http_handler *post;
    ts_http_handler *del;
    size_t max_body; /* body cap for this route (0: no body), within the listener's */
};

struct ts_http_config {
    const char *name;    /* "public" or "admin" */
    const char *listen;  /* host:port */
    const char *setting; /* the setting it came from, for messages: "LISTEN" */
    const struct ts_route *routes;
    size_t nroutes;
    void *app; /* handed to every handler */
    /* OPTIONS on a route (a CORS preflight); its `id` is the route's methods
     * ("GET, HEAD, POST"). NULL: 405. */
    ts_http_handler *options;

    unsigned max_connections;
    unsigned max_connections_per_ip; /* 0: no cap */
    size_t max_head;                 /* request line and fields; past it 414 / 431 */
    size_t max_body;                 /* the listener's request body cap */
    int64_t idle_timeout_ns;         /* no byte either way for this long: closed */
    int64_t header_timeout_ns;       /* the whole head within this (0: none) */
    int64_t stream_quiet_ns;         /* a stream silent this long is asked for a heartbeat */
    unsigned threads;                /* loop threads */
    bool serve_from_reserve;         /* accept with a reserve descriptor when out of them (admin) */
    struct ts_fd_reserve *reserve;   /* the server's, shared by its listeners */
    bool close_when_draining;        /* answer "Connection: close" while draining */

    struct ts_drain_view drain;
    struct ts_clock clock;
    struct ts_family *requests_total; /* http_requests_total{listener,route,code} */
    struct ts_family *disconnects;    /* http_client_disconnects_total{listener} */
    struct ts_log *log;
};

/* Bind and start serving. Returns 0 or a negative errno (logged). */
int ts_http_start(struct ts_http **out, const struct ts_http_config *cfg);

/* The bound port. */
int ts_http_port(const struct ts_http *h);

/* Stop accepting: new connection attempts are refused at once, established
 * connections go on. */
void ts_http_quiesce(struct ts_http *h);

/* Close every connection (streams too: their `closed` runs) and free `h`. */
void ts_http_stop(struct ts_http *h);

/* ---- for handlers (loop thread) ---- */

const char *ts_http_method(const struct ts_http_request *req);
/* The matched route's name ("tasks"), or "" when none matched. */
const char *ts_http_route_name(const struct ts_http_request *req);
bool ts_http_is_head(const struct ts_http_request *req);

/* The request body (may be empty, NUL-terminated). */
const char *ts_http_body(const struct ts_http_request *req, size_t *len);

/* A request header (its first occurrence) or query argument (decoded), NUL-
 * terminated, valid until the handler returns; NULL when absent. */
const char *ts_http_header(const struct ts_http_request *req, const char *name);
const char *ts_http_query(struct ts_http_request *req, const char *name);

/* True when "Authorization: Bearer <key>" matches `key` (constant time). */
bool ts_http_bearer_ok(const struct ts_http_request *req, const char *key);

/* Add a response header to the reply that follows (name and value are
 * copied; no CR or LF in them). */
void ts_http_add_header(struct ts_http_request *req, const char *name, const char *value);

/* Answer with `status` and `body` (copied; NULL for none). Counts the
 * request in http_requests_total and adds "Connection: close" while draining
 * (public listener). A HEAD request gets the same head and no body. */
void ts_http_reply(struct ts_http_request *req, unsigned status, const char *content_type,
                   const void *body, size_t len);

/* A JSON reply (steals `body`). */
void ts_http_reply_json(struct ts_http_request *req, unsigned status, json_t *body);

/* {"error": code, "message": <formatted>}. */
void ts_http_reply_error(struct ts_http_request *req, unsigned status, const char *code,
                         const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* 401 with a Bearer challenge for `realm`, telling the client to send its
 * `what` ("API key", "drain key") as a bearer token. */
void ts_http_reply_unauthorized(struct ts_http_request *req, const char *realm, const char *what);

/* ---- streamed responses ---- */

/*
 * What a stream gives to be written: pieces of bytes, each with an optional
 * reference that keeps them alive until they are on the wire (then the
 * stream's unref() releases it). A piece is added whole or not at all.
 */
#define TS_HTTP_OUT_MAX 16
struct ts_http_out {
    struct iovec iov[TS_HTTP_OUT_MAX];
    void *ref[TS_HTTP_OUT_MAX];
    unsigned n;
    bool chunked; /* HTTP/1.1: pieces must be chunks; HTTP/1.0: the body bytes as they are */
};

/* False when `out` is full (the piece is not added, `ref` not taken). */
bool ts_http_out_add(struct ts_http_out *out, const void *p, size_t len, void *ref);

enum ts_http_pull {
    TS_HTTP_PULL_WAKE,    /* woken, or the socket took what was pending: add what there is */
    TS_HTTP_PULL_QUIET,   /* nothing written for stream_quiet_ns: a heartbeat */
    TS_HTTP_PULL_BLOCKED, /* woken or quiet with the socket still full: `out` is NULL */
};

enum ts_http_more {
    TS_HTTP_MORE,  /* call again on the next wake */
    TS_HTTP_END,   /* the body is complete with these pieces: end it (the connection
                    * may be reused) */
    TS_HTTP_ABORT, /* cut the connection without ending the body */
};

struct ts_http_stream_ops {
    /* Fill `out`; `silent_ns` is how long nothing was written. Called again
     * at once while it fills `out` to the brim. */
    enum ts_http_more (*pull)(void *ctx, struct ts_http_out *out, enum ts_http_pull why,
                              int64_t silent_ns);
    /* The stream is over (ended, cut, or its client gone): free ctx. */
    void (*closed)(void *ctx);
    void (*unref)(void *ref);
};

struct ts_http_stream; /* the connection while it streams */
struct ts_http_loop;   /* the loop thread a connection belongs to */

/* The loop thread the request's connection belongs to (and its stream will). */
struct ts_http_loop *ts_http_request_loop(const struct ts_http_request *req);

/*
 * Answer 200 with the headers added so far and a body written over time: from
 * here `ops` drives the connection and ctx belongs to it (closed() runs once,
 * also on failure). A HEAD request gets the head only: then NULL is returned
 * and closed() has already run. The first pull comes after the handler returns.
 */
struct ts_http_stream *ts_http_reply_stream(struct ts_http_request *req,
                                            const struct ts_http_stream_ops *ops, void *ctx);

/* Pull and write now. The stream's loop thread only. */
void ts_http_stream_run(struct ts_http_stream *st);

/*
 * Work handed to a loop thread from any thread: queued once however often it
 * is posted before it runs (one eventfd write when the loop's queue goes from
 * empty to non-empty). run() is called on the loop thread.
 */
struct ts_http_post {
    struct ts_http_post *next; /* the loop's lock, or its thread once taken */
    unsigned char state;       /* the loop's lock; 0: neither queued nor taken */
    void (*run)(struct ts_http_post *p);
};

void ts_http_post(struct ts_http_loop *loop, struct ts_http_post *p);
/* Take `p` off the queue if it is on it. The loop thread only. */
void ts_http_post_cancel(struct ts_http_loop *loop, struct ts_http_post *p);

#endif
