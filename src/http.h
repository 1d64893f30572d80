/*
 * One HTTP listener on libmicrohttpd: limits, request bodies, routing by a
 * const table, JSON replies, per-request metrics and the request-header
 * deadline. The public and the admin listener are two of these with their
 * own route tables.
 */
#ifndef TS_HTTP_H
#define TS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <microhttpd.h>

#include "clock.h"
#include "drain.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

struct ts_fd_reserve;

struct ts_http;
struct ts_http_request;

/* Handles one request of a matched route. `id` is the "{id}" path segment
 * (NULL when the route has none). It must queue exactly one response with
 * ts_http_queue() (or a reply helper) before returning. MHD thread. */
typedef enum MHD_Result ts_http_handler(void *app, struct ts_http_request *req, const char *id);

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

    unsigned max_connections;
    unsigned max_connections_per_ip;
    size_t connection_memory; /* request line + headers + write buffer */
    size_t max_body;          /* the listener's request body cap */
    unsigned idle_timeout_s;
    int64_t header_timeout_ns; /* 0: none */
    unsigned threads;
    bool suspend_resume;           /* SSE needs it */
    bool serve_from_reserve;       /* accept with a reserve descriptor when out of them (admin) */
    struct ts_fd_reserve *reserve; /* the server's, shared by its listeners */
    bool close_when_draining;      /* answer "Connection: close" while draining */

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

/* Stop the listener and close every connection. No connection may be
 * suspended. Frees `h`. */
void ts_http_stop(struct ts_http *h);

/* Close connections whose request headers did not arrive within the header
 * deadline (slowloris). Returns how many were cut. Any thread. */
unsigned ts_http_enforce_deadlines(struct ts_http *h);

/* ---- for handlers (MHD thread) ---- */

struct MHD_Connection *ts_http_connection(const struct ts_http_request *req);
const char *ts_http_method(const struct ts_http_request *req);

/* The request body (may be empty, NUL-terminated). */
const char *ts_http_body(const struct ts_http_request *req, size_t *len);

/* A request header or query argument, NULL when absent. */
const char *ts_http_header(const struct ts_http_request *req, const char *name);
const char *ts_http_query(const struct ts_http_request *req, const char *name);

/* True when "Authorization: Bearer <key>" matches `key` (constant time). */
bool ts_http_bearer_ok(const struct ts_http_request *req, const char *key);

/* Queue 401 with a Bearer challenge for `realm`, telling the client to send
 * its `what` ("API key", "drain key") as a bearer token. */
enum MHD_Result ts_http_reply_unauthorized(struct ts_http_request *req, const char *realm,
                                           const char *what);

/* Queue `resp` with `status`, count it in http_requests_total, add
 * "Connection: close" while draining (public listener), and destroy our
 * reference to `resp`. */
enum MHD_Result ts_http_queue(struct ts_http_request *req, unsigned status,
                              struct MHD_Response *resp);

/* A JSON response (steals `body`); NULL on out of memory. */
struct MHD_Response *ts_http_json_response(json_t *body);

/* Queue a JSON reply (steals `body`). */
enum MHD_Result ts_http_reply_json(struct ts_http_request *req, unsigned status, json_t *body);

/* Queue {"error": code, "message": <formatted>}. */
enum MHD_Result ts_http_reply_error(struct ts_http_request *req, unsigned status, const char *code,
                                    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Build the same error body as a response, for callers adding headers. */
struct MHD_Response *ts_http_error_response(const char *code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
