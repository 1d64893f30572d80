/*
 * HTTP listeners on libmicrohttpd (MHD).
 *
 * Each listener is an MHD daemon in epoll mode with every limit set
 * explicitly: connection cap (MHD's default of 1020 is never used), per-IP
 * cap, per-connection memory (which bounds the request line and headers:
 * MHD answers 431/414 past it), idle timeout, and two limits MHD does not
 * have: a request-body cap (ours, per route) and a deadline for the request
 * headers. MHD's idle timeout restarts on every byte, so a client dripping
 * one header byte a second would hold a connection forever; the housekeeping
 * thread calls ts_http_enforce_deadlines(), which shuts down the socket of
 * any connection whose headers are late. The deadline runs from accept, and
 * again from the end of each keep-alive request.
 *
 * Requests are routed by a const table; a handler runs once the whole body
 * is in. Every response goes through ts_http_queue(), which counts it in
 * http_requests_total{listener,route,code} and, on a listener that asks for
 * it, adds "Connection: close" while draining so keep-alive clients move to
 * another instance.
 *
 * Threads: handlers and MHD callbacks run on MHD's threads. `conns_mu`
 * guards the list of connections waiting for their headers, shared with the
 * housekeeping thread; MHD calls the "closed" notification before it closes
 * the socket, so a listed fd is always the connection's own.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <utlist.h>

#include "http.h"
#include "http_head.h"
#include "listener.h"

#define MAX_ID_LEN 64

/* A connection, from accept to close; guarded by conns_mu. */
struct conn_info {
    struct conn_info *prev, *next; /* utlist: the waiting list, while `waiting` */
    int fd;
    int64_t since_ns; /* accept, or end of the previous request */
    bool waiting;     /* linked: headers not yet complete */
};

struct ts_http {
    struct ts_http_config cfg;
    char *name;
    struct MHD_Daemon *daemon;
    int port;
    struct ts_listener *listener;  /* ours: accept, descriptor exhaustion, quiesce */
    struct ts_series *disconnects; /* http_client_disconnects_total{listener=name} */
    /* Connections handed to MHD and not yet closed: the cap is applied
     * before accept, so that the rest wait in the kernel's queue. */
    atomic_uint conns;

    pthread_mutex_t conns_mu;
    struct conn_info *waiting; /* connections whose headers are not in yet */
};

struct ts_http_request {
    struct ts_http *http;
    struct MHD_Connection *conn;
    char *target; /* the request target as sent, before MHD decodes it */
    bool begun;   /* begin_request() ran */
    const char *method;
    const struct ts_route *route; /* NULL: no route matched */
    char id[MAX_ID_LEN + 1];      /* the {id} segment, "" when none */
    bool has_id;
    struct ts_buf body; /* capped at the route's and the listener's limit */
    bool body_too_large;
    bool answered;
};

/* ---- the header deadline ---- */

static void
link_waiting(struct ts_http *h, struct conn_info *ci)
{
    DL_PREPEND(h->waiting, ci);
    ci->waiting = true;
}

static void
unlink_waiting(struct ts_http *h, struct conn_info *ci)
{
    if (!ci->waiting)
        return;
    DL_DELETE(h->waiting, ci);
    ci->waiting = false;
}

static void
on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
              enum MHD_ConnectionNotificationCode code)
{
    struct ts_http *h = cls;
    struct conn_info *ci;

    /* MHD closes a connection it could not set up without telling us: a
     * connection lost that way keeps its place in `conns` (memory only). */
    if (code == MHD_CONNECTION_NOTIFY_CLOSED &&
        atomic_fetch_sub(&h->conns, 1) == h->cfg.max_connections)
        ts_listener_resume(h->listener);
    if (h->cfg.header_timeout_ns <= 0)
        return;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info;

        ci = calloc(1, sizeof(*ci));
        if (ci == NULL)
            return; /* this connection simply has no header deadline */
        info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        ci->fd = info != NULL ? info->connect_fd : -1;
        ci->since_ns = ts_clock_now_ns(&h->cfg.clock);
        pthread_mutex_lock(&h->conns_mu);
        link_waiting(h, ci);
        pthread_mutex_unlock(&h->conns_mu);
        *socket_context = ci;
        return;
    }
    ci = *socket_context;
    if (ci == NULL)
        return;
    pthread_mutex_lock(&h->conns_mu);
    unlink_waiting(h, ci);
    pthread_mutex_unlock(&h->conns_mu);
    free(ci);
    *socket_context = NULL;
}

static struct conn_info *
conn_info_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *info;

    info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info != NULL ? info->socket_context : NULL;
}

static void
headers_arrived(struct ts_http *h, struct MHD_Connection *conn)
{
    struct conn_info *ci = conn_info_of(conn);

    if (ci == NULL)
        return;
    pthread_mutex_lock(&h->conns_mu);
    unlink_waiting(h, ci);
    pthread_mutex_unlock(&h->conns_mu);
}

static void
request_finished(struct ts_http *h, struct MHD_Connection *conn)
{
    struct conn_info *ci = conn_info_of(conn);

    if (ci == NULL)
        return;
    pthread_mutex_lock(&h->conns_mu);
    if (!ci->waiting) {
        ci->since_ns = ts_clock_now_ns(&h->cfg.clock);
        link_waiting(h, ci);
    }
    pthread_mutex_unlock(&h->conns_mu);
}

unsigned
ts_http_enforce_deadlines(struct ts_http *h)
{
    struct conn_info *ci, *next;
    int64_t cutoff;
    unsigned cut = 0;

    if (h->cfg.header_timeout_ns <= 0)
        return 0;
    cutoff = ts_clock_now_ns(&h->cfg.clock) - h->cfg.header_timeout_ns;
    pthread_mutex_lock(&h->conns_mu);
    DL_FOREACH_SAFE(h->waiting, ci, next) {
        if (ci->since_ns > cutoff || ci->fd < 0)
            continue;
        /* MHD sees the shutdown as a closed peer and cleans up on its own
         * thread; we only stop tracking. */
        shutdown(ci->fd, SHUT_RDWR);
        unlink_waiting(h, ci);
        cut++;
    }
    pthread_mutex_unlock(&h->conns_mu);
    if (cut > 0)
        ts_log(h->cfg.log, TS_LOG_INFO, "request headers too slow, connections closed",
               TS_F_STR("listener", h->name), TS_F_UINT("count", cut), TS_F_END);
    return cut;
}

/* ---- responses ---- */

struct MHD_Connection *
ts_http_connection(const struct ts_http_request *req)
{
    return req->conn;
}

const char *
ts_http_method(const struct ts_http_request *req)
{
    return req->method;
}

const char *
ts_http_body(const struct ts_http_request *req, size_t *len)
{
    *len = req->body.len;
    return req->body.len > 0 ? req->body.data : "";
}

const char *
ts_http_header(const struct ts_http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *
ts_http_query(const struct ts_http_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

bool
ts_http_bearer_ok(const struct ts_http_request *req, const char *key)
{
    static const char prefix[] = "Bearer ";
    const char *auth = ts_http_header(req, MHD_HTTP_HEADER_AUTHORIZATION);

    if (key == NULL || auth == NULL || strncasecmp(auth, prefix, sizeof(prefix) - 1) != 0)
        return false;
    auth += sizeof(prefix) - 1;
    return ts_ct_equal(auth, strlen(auth), key, strlen(key));
}

enum MHD_Result
ts_http_queue(struct ts_http_request *req, unsigned status, struct MHD_Response *resp)
{
    struct ts_http *h = req->http;
    enum MHD_Result ret;
    char code[8];

    if (resp == NULL)
        return MHD_NO; /* out of memory: MHD closes the connection */
    if (h->cfg.close_when_draining && ts_drain_is_draining(&h->cfg.drain))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    ret = MHD_queue_response(req->conn, status, resp);
    MHD_destroy_response(resp);
    req->answered = true;

    if (h->cfg.requests_total != NULL) {
        const char *labels[3] = {h->name, req->route != NULL ? req->route->name : "other", code};
        struct ts_series *s;

        snprintf(code, sizeof(code), "%u", status);
        s = ts_family_series(h->cfg.requests_total, labels);
        if (s != NULL)
            ts_series_inc(s);
    }
    return ret;
}

struct MHD_Response *
ts_http_json_response(json_t *body)
{
    struct MHD_Response *resp;
    char *text;
    size_t len;

    text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(body);
    if (text == NULL)
        return NULL;
    len = strlen(text);
    resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(text);
        return NULL;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    return resp;
}

enum MHD_Result
ts_http_reply_json(struct ts_http_request *req, unsigned status, json_t *body)
{
    return ts_http_queue(req, status, ts_http_json_response(body));
}

static struct MHD_Response *verror_response(const char *code, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static struct MHD_Response *
verror_response(const char *code, const char *fmt, va_list ap)
{
    char msg[512];

    vsnprintf(msg, sizeof(msg), fmt, ap);
    return ts_http_json_response(json_pack("{s:s, s:s}", "error", code, "message", msg));
}

struct MHD_Response *
ts_http_error_response(const char *code, const char *fmt, ...)
{
    struct MHD_Response *resp;
    va_list ap;

    va_start(ap, fmt);
    resp = verror_response(code, fmt, ap);
    va_end(ap);
    return resp;
}

enum MHD_Result
ts_http_reply_error(struct ts_http_request *req, unsigned status, const char *code, const char *fmt,
                    ...)
{
    struct MHD_Response *resp;
    va_list ap;

    va_start(ap, fmt);
    resp = verror_response(code, fmt, ap);
    va_end(ap);
    return ts_http_queue(req, status, resp);
}

enum MHD_Result
ts_http_reply_unauthorized(struct ts_http_request *req, const char *realm, const char *what)
{
    struct MHD_Response *resp;
    char challenge[128];

    resp = ts_http_error_response("unauthorized", "send the %s as \"Authorization: Bearer <key>\"",
                                  what);
    snprintf(challenge, sizeof(challenge), "Bearer realm=\"%s\"", realm);
    if (resp != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, challenge);
    return ts_http_queue(req, MHD_HTTP_UNAUTHORIZED, resp);
}

/* ---- routing ---- */

/*
 * Routing works on the request target as sent, split at '/' first and each
 * segment %-decoded after, with its length: "%2F" is a '/' inside a segment
 * (never a separator), and a decoded NUL or other control byte makes the
 * request invalid rather than cutting a C string short.
 */
#define SEGMENTS_MAX 8
#define SEGMENT_MAX 256

struct path {
    char seg[SEGMENTS_MAX][SEGMENT_MAX];
    size_t len[SEGMENTS_MAX];
    size_t n;
    bool too_deep; /* more segments, or longer ones, than any route has */
};

/* 0, or -EINVAL for a target no route could take and no client should send
 * (a bad escape, a decoded control byte): that is a 400. */
static int
split_target(const char *target, struct path *p)
{
    const char *q = strchr(target, '?');
    size_t end = q != NULL ? (size_t)(q - target) : strlen(target);
    size_t i = 1;

    memset(p, 0, sizeof(*p));
    if (end == 0 || target[0] != '/')
        return -EINVAL;
    /* The query is MHD's to parse, but must be as clean. */
    if (q != NULL && ts_http_segment_decode((struct ts_http_str){q + 1, strlen(q + 1)}, NULL) < 0)
        return -EINVAL;
    for (;;) {
        const char *slash = memchr(target + i, '/', end - i);
        size_t seglen = (slash != NULL ? (size_t)(slash - target) : end) - i;
        struct ts_http_str raw = {target + i, seglen};
        /* Past what any route has, still checked: a bad one is a 400 wherever it is. */
        bool keep = seglen < SEGMENT_MAX && p->n < SEGMENTS_MAX;
        long n = ts_http_segment_decode(raw, keep ? p->seg[p->n] : NULL);

        if (n < 0)
            return -EINVAL;
        if (keep)
            p->len[p->n++] = (size_t)n;
        else
            p->too_deep = true;
        if (slash == NULL)
            return 0;
        i += seglen + 1;
    }
}

/* Match the split path against `pattern`; "{id}" takes one non-empty
 * segment of at most MAX_ID_LEN bytes. */
static bool
match_route(const char *pattern, const struct path *p, char id[MAX_ID_LEN + 1], bool *has_id)
{
    size_t k = 0;

    *has_id = false;
    if (p->too_deep)
        return false;
    for (const char *s = pattern + 1;; k++) {
        const char *e = strchr(s, '/');
        size_t len = e != NULL ? (size_t)(e - s) : strlen(s);

        if (k == p->n)
            return false;
        if (len == 4 && strncmp(s, "{id}", 4) == 0) {
            if (p->len[k] == 0 || p->len[k] > MAX_ID_LEN || memchr(p->seg[k], '/', p->len[k]))
                return false;
            memcpy(id, p->seg[k], p->len[k]);
            id[p->len[k]] = '\0';
            *has_id = true;
        } else if (p->len[k] != len || memcmp(p->seg[k], s, len) != 0) {
            return false;
        }
        if (e == NULL)
            return k + 1 == p->n;
        s = e + 1;
    }
}

static const struct ts_route *
find_route(const struct ts_http *h, const struct path *p, struct ts_http_request *req)
{
    for (size_t i = 0; i < h->cfg.nroutes; i++) {
        if (match_route(h->cfg.routes[i].pattern, p, req->id, &req->has_id))
            return &h->cfg.routes[i];
    }
    req->id[0] = '\0';
    req->has_id = false;
    return NULL;
}

static ts_http_handler *
handler_for(const struct ts_route *r, const char *method)
{
    if (strcmp(method, MHD_HTTP_METHOD_GET) == 0 || strcmp(method, MHD_HTTP_METHOD_HEAD) == 0)
        return r->get;
    if (strcmp(method, MHD_HTTP_METHOD_POST) == 0)
        return r->post;
    if (strcmp(method, MHD_HTTP_METHOD_DELETE) == 0)
        return r->del;
    return NULL;
}

static enum MHD_Result
reply_method_not_allowed(struct ts_http_request *req)
{
    const struct ts_route *r = req->route;
    struct MHD_Response *resp;
    char allow[64];

    snprintf(allow, sizeof(allow), "%s%s%s", r->get != NULL ? "GET, HEAD, " : "",
             r->post != NULL ? "POST, " : "", r->del != NULL ? "DELETE, " : "");
    allow[strlen(allow) - 2] = '\0'; /* every route has at least one method */
    resp = ts_http_error_response("method_not_allowed", "%s is not allowed on %s; allowed: %s",
                                  req->method, r->pattern, allow);
    if (resp != NULL)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    return ts_http_queue(req, MHD_HTTP_METHOD_NOT_ALLOWED, resp);
}

/* What check_header() found wrong, if anything. */
struct header_check {
    const char *content_length; /* the first one seen */
    bool transfer_encoding;
    unsigned singletons[TS_HTTP_SINGLETONS]; /* a second one is read differently by two
                                              * parsers (nginx refuses a second
                                              * Authorization too) */
    const char *problem;
};

static enum MHD_Result
check_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
             const char *value, size_t value_size)
{
    struct header_check *hc = cls;
    int s;

    (void)kind;
    if (strlen(key) != key_size || strlen(value) != value_size ||
        memchr(value, '\r', value_size) != NULL) {
        hc->problem = "a header holds a NUL or a bare CR";
        return MHD_NO;
    }
    if (strpbrk(key, " \t") != NULL) {
        hc->problem = "whitespace in a header name";
        return MHD_NO;
    }
    s = ts_http_singleton((struct ts_http_str){key, key_size});
    if (s >= 0 && hc->singletons[s]++ > 0) {
        hc->problem = "a header that may appear once appears twice (Host, Authorization, "
                      "Content-Type, Last-Event-ID, Transfer-Encoding or Content-Length)";
        return MHD_NO;
    }
    if (strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0 &&
        !ts_http_authority_ok((struct ts_http_str){value, value_size})) {
        hc->problem = "the Host header is not host[:port] (RFC 9112 section 3.2)";
        return MHD_NO;
    }
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
        hc->content_length = value;
    else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0)
        hc->transfer_encoding = true;
    return MHD_YES;
}

/*
 * Refuse the framing ambiguities RFC 9112 says a server must refuse, which
 * libmicrohttpd 0.9.75 lets through even in strict mode: behind a proxy that
 * reads them differently they are how requests get smuggled. Returns NULL or
 * what is wrong.
 */
static const char *
framing_problem(struct MHD_Connection *conn)
{
    struct header_check hc = {0};

    MHD_get_connection_values_n(conn, MHD_HEADER_KIND, check_header, &hc);
    if (hc.problem == NULL && hc.transfer_encoding && hc.content_length != NULL)
        hc.problem = "both Transfer-Encoding and Content-Length";
    return hc.problem;
}

/* First call for a request: headers are in, no body yet. */
static enum MHD_Result
begin_request(struct ts_http *h, struct MHD_Connection *conn, struct ts_http_request *req,
              const char *method)
{
    const char *clen, *problem;
    struct path path;
    size_t max_body;
    bool bad_target;

    headers_arrived(h, conn);
    req->begun = true;
    req->http = h;
    req->conn = conn;
    req->method = method;
    bad_target = req->target == NULL || split_target(req->target, &path) != 0;
    req->route = bad_target ? NULL : find_route(h, &path, req);
    max_body = req->route != NULL ? req->route->max_body : 0;
    if (max_body > h->cfg.max_body)
        max_body = h->cfg.max_body;
    ts_buf_init(&req->body, max_body);

    problem = framing_problem(conn);
    if (problem == NULL && bad_target)
        problem = "the request target is not a path, holds a bad %-escape, or encodes a "
                  "control character (%00 to %1F, %7F)";
    if (problem != NULL) {
        struct MHD_Response *resp = ts_http_error_response("bad_request", "%s", problem);

        if (resp != NULL)
            MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
        return ts_http_queue(req, MHD_HTTP_BAD_REQUEST, resp);
    }
    /* A declared body over the cap is refused before it is read. */
    clen = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (clen != NULL && req->route != NULL && handler_for(req->route, method) != NULL) {
        uint64_t n;

        if (ts_parse_uint(clen, 0, UINT64_MAX, &n) == 0 && n > max_body)
            return ts_http_reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
                                       "the request body is %llu bytes; the limit is %zu",
                                       (unsigned long long)n, max_body);
    }
    return MHD_YES;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
           const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls)
{
    struct ts_http *h = cls;
    struct ts_http_request *req = *req_cls;
    ts_http_handler *handler;

    (void)version;
    if (req == NULL)
        return MHD_NO; /* on_uri() ran out of memory */
    if (!req->begun)
        return begin_request(h, conn, req, method);
    if (req->answered) {
        *upload_data_size = 0; /* an early answer: discard the body */
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        /* Past the cap the rest is read and dropped, then answered 413: MHD
         * can only queue a response before or after the body. */
        if (!req->body_too_large && ts_buf_append(&req->body, upload_data, *upload_data_size) != 0)
            req->body_too_large = true;
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (req->route == NULL)
        return ts_http_reply_error(req, MHD_HTTP_NOT_FOUND, "not_found", "no such resource: %s",
                                   url);
    handler = handler_for(req->route, method);
    if (handler == NULL)
        return reply_method_not_allowed(req);
    if (req->body_too_large)
        return ts_http_reply_error(req, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
                                   "the request body is over the limit of %zu bytes",
                                   req->body.max);
    return handler(h->cfg.app, req, req->has_id ? req->id : NULL);
}

static void
on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
             enum MHD_RequestTerminationCode code)
{
    struct ts_http *h = cls;
    struct ts_http_request *req = *req_cls;

    (void)code;
    if (req != NULL) {
        ts_buf_dispose(&req->body);
        free(req->target);
        free(req);
        *req_cls = NULL;
    }
    request_finished(h, conn);
}

/* libmicrohttpd's words (0.9.75, connection.c) for a peer that closed or
 * reset the connection under a request or a response. */
static bool
client_went_away(const char *msg)
{
    static const char *const gone[] = {
        "The connection was forcibly closed by remote peer",
        "The socket is no longer available for sending",
        "The socket is not connected",
        "Connection was closed by remote side with incomplete request",
    };

    for (size_t i = 0; i < TS_ARRAY_SIZE(gone); i++)
        if (strstr(msg, gone[i]) != NULL)
            return true;
    return false;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void
on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct ts_http *h = cls;
    char msg[512];
    size_t n;

    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    /* A client that goes away is no warning: thousands leave in a storm.
     * It is counted, and logged only at debug. */
    if (client_went_away(msg)) {
        if (h->disconnects != NULL)
            ts_series_inc(h->disconnects);
        ts_log(h->cfg.log, TS_LOG_DEBUG, "client went away", TS_F_STR("listener", h->name),
               TS_F_STR("detail", msg), TS_F_END);
        return;
    }
    ts_log(h->cfg.log, TS_LOG_WARN, "http library", TS_F_STR("listener", h->name),
           TS_F_STR("detail", msg), TS_F_END);
}

/*
 * Our listener closes its socket, so new connections are refused by the
 * kernel and clients fail fast. Not MHD_quiesce_daemon(): with a thread pool
 * in epoll mode it races the workers' own epoll bookkeeping in 0.9.75 and can
 * abort the process ("Failed to remove listen FD from epoll set").
 */
void
ts_http_quiesce(struct ts_http *h)
{
    ts_listener_close(h->listener);
}

/* Before MHD decodes the target: keep it as sent, for routing. What this
 * returns is the request's context (req_cls); MHD calls on_completed() for
 * it whatever happens next. */
static void *
on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct ts_http_request *req = calloc(1, sizeof(*req));

    (void)cls;
    (void)conn;
    if (req != NULL)
        req->target = strdup(uri); /* NULL: answered as a bad target */
    return req;
}

/* The listener's thread hands each connection to MHD (its ITC wakes the
 * daemon's threads); MHD closes it if it cannot take it (its caps). */
static void
on_accept(void *arg, int fd, const struct sockaddr *sa, socklen_t salen)
{
    struct ts_http *h = arg;

    atomic_fetch_add(&h->conns, 1);
    if (MHD_add_connection(h->daemon, fd, sa, salen) != MHD_YES)
        atomic_fetch_sub(&h->conns, 1); /* refused (per-IP cap, memory); closed by MHD */
}

static bool
admit(void *arg)
{
    struct ts_http *h = arg;

    return atomic_load(&h->conns) < h->cfg.max_connections;
}

/* ---- lifecycle ---- */

int
ts_http_start(struct ts_http **out, const struct ts_http_config *cfg)
{
    struct ts_listener_config lcfg;
    struct ts_http *h;
    unsigned flags;
    char err[256];
    int fd, rc;

    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -ENOMEM;
    h->cfg = *cfg;
    h->name = strdup(cfg->name);
    if (h->name == NULL) {
        rc = -ENOMEM;
        goto out_free;
    }
    pthread_mutex_init(&h->conns_mu, NULL);
    atomic_init(&h->conns, 0);
    if (cfg->disconnects != NULL) {
        const char *label = cfg->name;

        h->disconnects = ts_family_series(cfg->disconnects, &label);
    }

    fd = ts_listen_socket(cfg->listen, cfg->setting, &h->port, err, sizeof(err));
    if (fd < 0) {
        rc = fd;
        ts_log(cfg->log, TS_LOG_ERROR, "cannot listen", TS_F_STR("listener", cfg->name),
               TS_F_STR("error", err), TS_F_END);
        goto out_free_name;
    }

    /* MHD serves the connections our listener accepts (MHD_add_connection). */
    flags =
        MHD_USE_EPOLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | MHD_USE_ITC | MHD_USE_NO_LISTEN_SOCKET;
    if (cfg->suspend_resume)
        flags |= MHD_ALLOW_SUSPEND_RESUME;

    {
        /* The logger first, so MHD routes every message through it. */
        struct MHD_OptionItem opts[] = {
            {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_log, h},
            /* Our listener applies the cap (admit()); MHD counts a closed
             * connection a little later than its "closed" notice, so its
             * own limit must not be the one that bites. */
            {MHD_OPTION_CONNECTION_LIMIT, 2 * cfg->max_connections + 64, NULL},
            {MHD_OPTION_PER_IP_CONNECTION_LIMIT, cfg->max_connections_per_ip, NULL},
            {MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)cfg->connection_memory, NULL},
            {MHD_OPTION_CONNECTION_TIMEOUT, cfg->idle_timeout_s, NULL},
            {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, h},
            {MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)on_uri, h},
            {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, h},
            {MHD_OPTION_SIGPIPE_HANDLED_BY_APP, 1, NULL},
            /* Refuse what RFC 9112 says a server must refuse (conflicting
             * Content-Length, bare CR, no Host, ...): behind a proxy, a
             * lenient parser is a request-smuggling risk. */
            {MHD_OPTION_STRICT_FOR_CLIENT, 1, NULL},
            {MHD_OPTION_END, 0, NULL}, /* room for the thread pool */
            {MHD_OPTION_END, 0, NULL},
        };

        if (cfg->threads > 1)
            opts[TS_ARRAY_SIZE(opts) - 2] =
                (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, cfg->threads, NULL};
        h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_ARRAY, opts,
                                     MHD_OPTION_END);
    }
    if (h->daemon == NULL) {
        rc = -ENOMEM;
        close(fd);
        ts_log(cfg->log, TS_LOG_ERROR, "cannot start listener", TS_F_STR("listener", cfg->name),
               TS_F_STR("address", cfg->listen), TS_F_END);
        goto out_free_name;
    }
    lcfg = (struct ts_listener_config){
        .name = cfg->name,
        .fd = fd,
        .serve_from_reserve = cfg->serve_from_reserve,
        .reserve = cfg->reserve,
        .on_accept = on_accept,
        .admit = admit,
        .arg = h,
        .log = cfg->log,
    };
    rc = ts_listener_start(&h->listener, &lcfg); /* it owns fd from here */
    if (rc != 0) {
        MHD_stop_daemon(h->daemon);
        goto out_free_name;
    }
    *out = h;
    return 0;

out_free_name:
    pthread_mutex_destroy(&h->conns_mu);
    free(h->name);
out_free:
    free(h);
    return rc;
}

int
ts_http_port(const struct ts_http *h)
{
    return h->port;
}

void
ts_http_stop(struct ts_http *h)
{
    if (h == NULL)
        return;
    ts_listener_close(h->listener); /* nothing is handed to MHD after this */
    MHD_stop_daemon(h->daemon);
    ts_listener_free(h->listener); /* after MHD's last "closed", which resumes it */
    pthread_mutex_destroy(&h->conns_mu);
    free(h->name);
    free(h);
}
