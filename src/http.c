/*
 * The HTTP/1.1 front: listeners, connections, requests, responses, streams.
 *
 * A listener (listener.c) accepts on its own thread and hands each
 * connection, round robin, to one of `threads` loop threads. A loop owns its
 * connections outright: one epoll set (edge-triggered, each socket added
 * once for reading, writing and the peer's hang-up), one eventfd through
 * which other threads hand it connections and posted work (written only when
 * its queue goes from empty to non-empty), and two lists: the connections
 * that are not streaming, swept four times a second for their deadlines,
 * and the streams, kept in the order they last wrote, so the stream due for
 * a heartbeat is always the first (a timer queue with one interval: no walk
 * of every stream).
 *
 * A connection reads a head (ts_http_head_scan() as bytes arrive, then
 * ts_http_head_parse() on a copy the request keeps), then its body
 * (Content-Length, or chunked, decoded here), runs the route's handler on the
 * loop thread, and writes the response it queued. Any error in the head or
 * the body framing is answered once and the connection closed: no byte after
 * a rejected head is ever read as a request. A close after a response is a
 * lingering one (our side shut for writing, what the client still sends read
 * and dropped for a while), so the client reads the answer rather than a
 * reset. Pipelined requests wait in the input buffer and are answered in
 * order.
 *
 * A handler may answer with a stream (ts_http_reply_stream()): the head is
 * written, and from then on the stream's pull() gives pieces (each with a
 * reference that keeps its bytes alive: the event log's pre-chunked frames)
 * that are written with one writev. When the socket is full the rest waits
 * (EPOLLOUT says when to go on); the stream is not pulled for more until it
 * has gone. A stream that ends returns its connection to reading requests.
 *
 * Memory: a connection that waits for nothing holds only its struct (input
 * buffers are freed when empty, the request when answered), which is all an
 * idle stream costs here.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uthash.h>
#include <utlist.h>

#include "http.h"
#include "http_head.h"
#include "listener.h"

#define MAX_ID_LEN 64
#define READ_CHUNK 16384              /* bytes asked of recv() at a time */
#define BODY_READ_AHEAD 65536         /* input buffered past the head, at most */
#define SWEEP_NS (250 * TS_NS_PER_MS) /* deadlines are checked this often */
#define LINGER_NS (2 * TS_NS_PER_S)   /* a closing connection drains its input this long */
#define EPOLL_EVENTS 256

enum conn_state {
    C_HEAD,   /* reading a request head */
    C_BODY,   /* reading its body */
    C_WRITE,  /* writing a response */
    C_STREAM, /* writing a streamed response */
    C_LINGER, /* shut for writing, reading what is left until the client closes */
    C_CLOSED, /* closed; freed at the end of the loop's turn */
};

/* Where the chunked decoder is (RFC 9112 section 7.1). */
enum chunk_state {
    CK_SIZE,
    CK_EXT,
    CK_SIZE_LF,
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TRAILER,
    CK_TRAILER_LF,
    CK_LAST_LF
};

struct ip_count {
    UT_hash_handle hh;
    unsigned char addr[16]; /* IPv4 as ::ffff:a.b.c.d */
    unsigned n;
};

struct conn {
    struct conn *prev, *next; /* utlist: the loop's `conns` or `streams` */
    struct ts_http_loop *loop;
    int fd;
    enum conn_state state;
    bool close_after; /* the response in writing says "Connection: close" */
    bool eof;         /* the client shut its side */
    bool blocked;     /* the socket is full: wait for EPOLLOUT */
    bool ending;      /* a stream's last piece is queued: then back to requests */
    bool chunked;     /* the streamed body is chunked (HTTP/1.1) */
    struct ip_count *ip;

    int64_t since_ns;  /* the header deadline runs from here */
    int64_t active_ns; /* last byte either way (the idle timeout) */

    char *in; /* bytes read and not yet consumed */
    size_t in_len, in_cap;
    struct ts_http_scan scan;

    struct ts_http_request *req; /* being read, run or answered */
    uint64_t body_left;          /* C_BODY with Content-Length */
    enum chunk_state ck;
    uint64_t ck_size;
    unsigned ck_digits;

    char *out; /* a response (or a stream's head) being written */
    size_t out_len, out_off;

    /* C_STREAM */
    const struct ts_http_stream_ops *ops;
    void *ctx;
    int64_t written_ns;                     /* the last write (silence is measured from it) */
    int64_t quiet_ns;                       /* the heartbeat timer: `streams` is ordered by it */
    struct iovec pend[TS_HTTP_OUT_MAX + 1]; /* and the chunked body's end */
    void *pref[TS_HTTP_OUT_MAX + 1];
    unsigned pend_first, pend_n;
};

/* An accepted connection on its way to a loop. */
struct handoff {
    int fd;
    struct ip_count *ip;
};

struct ts_http_loop {
    struct ts_http *h;
    pthread_t thread;
    int epfd, evfd;

    pthread_mutex_t mu;
    struct handoff *inbox; /* accepted connections to take; mu */
    size_t inbox_n, inbox_cap;
    struct handoff *spare; /* the loop's: swapped with `inbox` to take it */
    size_t spare_cap;
    struct ts_http_post *posts, *posts_tail; /* POST_QUEUED; mu */
    struct ts_http_post *batch;              /* POST_TAKEN: to run this turn; the thread's */
    bool signalled;                          /* evfd written and not yet read; mu */
    bool stop;                               /* mu */
    bool watching;                           /* loop_clock_moved() is the clock's watcher */

    /* the loop thread's own */
    struct conn *conns;   /* not streaming */
    struct conn *streams; /* streaming, by quiet_ns */
    struct conn *dead;    /* closed this turn, linked by `next` */
    int64_t now;
    int64_t next_sweep;
    time_t date_s;
    char date[40]; /* "Date: ...\r\n" */
};

struct ts_http {
    struct ts_http_config cfg;
    char *name;
    int port;
    struct ts_listener *listener;
    struct ts_series *disconnects;
    struct ts_http_loop *loops;
    unsigned nloops, next_loop;
    atomic_uint conns; /* connections open: the cap is applied before accept */
    struct ts_http_limits limits;

    pthread_mutex_t ip_mu;
    struct ip_count *ips; /* uthash; ip_mu */
};

struct qval {
    struct qval *next;
    char text[];
};

struct ts_http_request {
    struct conn *c;
    struct ts_http *h;
    struct ts_http_head head;
    const struct ts_route *route; /* NULL: no route matched */
    char id[MAX_ID_LEN + 1];
    bool has_id;
    bool is_head;
    bool answered;
    bool close; /* close the connection after the answer */
    struct ts_buf body;
    struct ts_buf hdrs; /* response headers added by the handler */
    struct qval *qvals;
    char raw[]; /* the head, as parsed (values NUL-terminated in place) */
};

static void conn_close(struct conn *c);
static void start_stream(struct conn *c);

/* ---- small things ---- */

static const struct {
    unsigned status;
    const char *phrase;
} reasons[] = {
    {100, "Continue"},
    {200, "OK"},
    {202, "Accepted"},
    {204, "No Content"},
    {304, "Not Modified"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {409, "Conflict"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {417, "Expectation Failed"},
    {422, "Unprocessable Content"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {503, "Service Unavailable"},
    {505, "HTTP Version Not Supported"},
};

static const char *
reason_phrase(unsigned status)
{
    for (size_t i = 0; i < TS_ARRAY_SIZE(reasons); i++)
        if (reasons[i].status == status)
            return reasons[i].phrase;
    return "Unknown";
}

static void
count_disconnect(struct ts_http *h)
{
    if (h->disconnects != NULL)
        ts_series_inc(h->disconnects);
}

static const char *
date_header(struct ts_http_loop *l)
{
    time_t now = time(NULL);

    if (now != l->date_s) {
        struct tm tm;

        gmtime_r(&now, &tm);
        strftime(l->date, sizeof(l->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        l->date_s = now;
    }
    return l->date;
}

/* ---- routing ---- */

/*
 * Routing works on the raw path, split at '/' first and each segment
 * %-decoded after, with its length: "%2F" is a '/' inside a segment (never a
 * separator), and a decoded NUL or other control byte makes the request
 * invalid rather than cutting a C string short.
 */
#define SEGMENTS_MAX 8
#define SEGMENT_MAX 256

struct path {
    char seg[SEGMENTS_MAX][SEGMENT_MAX];
    size_t len[SEGMENTS_MAX];
    size_t n;
    bool too_deep; /* more segments, or longer ones, than any route has */
};

/* 0, or -EINVAL for a path no route could take and no client should send. */
static int
split_path(struct ts_http_str raw, struct ts_http_str query, struct path *p)
{
    size_t i = 1;

    memset(p, 0, sizeof(p->len));
    p->n = 0;
    p->too_deep = false;
    if (raw.len == 0 || raw.p[0] != '/')
        return -EINVAL;
    if (query.len > 0 && ts_http_segment_decode(query, NULL) < 0)
        return -EINVAL;
    for (;;) {
        const char *slash = memchr(raw.p + i, '/', raw.len - i);
        size_t seglen = (slash != NULL ? (size_t)(slash - raw.p) : raw.len) - i;
        struct ts_http_str seg = {raw.p + i, seglen};
        /* Past what any route has, still checked: a bad one is a 400 wherever it is. */
        bool keep = seglen < SEGMENT_MAX && p->n < SEGMENTS_MAX;
        long n = ts_http_segment_decode(seg, keep ? p->seg[p->n] : NULL);

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
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)
        return r->get;
    if (strcmp(method, "POST") == 0)
        return r->post;
    if (strcmp(method, "DELETE") == 0)
        return r->del;
    return NULL;
}

/* ---- requests, for handlers ---- */

const char *
ts_http_method(const struct ts_http_request *req)
{
    return req->head.method.p != NULL ? req->head.method.p : "";
}

const char *
ts_http_route_name(const struct ts_http_request *req)
{
    return req->route != NULL ? req->route->name : "";
}

bool
ts_http_is_head(const struct ts_http_request *req)
{
    return req->is_head;
}

struct ts_http_loop *
ts_http_request_loop(const struct ts_http_request *req)
{
    return req->c->loop;
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
    const struct ts_http_str *v = ts_http_head_field(&req->head, name);

    return v != NULL ? v->p : NULL;
}

/* Decode a query key or value: %XX and '+' for a space (HTML forms). */
static size_t
query_decode(const char *p, size_t len, char *out)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++) {
        if (p[i] == '+') {
            out[n++] = ' ';
        } else if (p[i] == '%' && i + 2 < len) {
            char hex[3] = {p[i + 1], p[i + 2], '\0'};

            out[n++] = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            out[n++] = p[i];
        }
    }
    out[n] = '\0';
    return n;
}

const char *
ts_http_query(struct ts_http_request *req, const char *name)
{
    const char *q = req->head.query.p, *end;
    size_t want = strlen(name);

    if (q == NULL)
        return NULL;
    end = q + req->head.query.len;
    /* split_path() has checked every escape of the query: each is %XX. */
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp != NULL ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        const char *ke = eq != NULL ? eq : pe;
        char key[128];

        if ((size_t)(ke - q) < sizeof(key) && query_decode(q, (size_t)(ke - q), key) == want &&
            memcmp(key, name, want) == 0) {
            const char *v = eq != NULL ? eq + 1 : pe;
            struct qval *qv = malloc(sizeof(*qv) + (size_t)(pe - v) + 1);

            if (qv == NULL)
                return NULL;
            query_decode(v, (size_t)(pe - v), qv->text);
            qv->next = req->qvals;
            req->qvals = qv;
            return qv->text;
        }
        q = pe + 1;
    }
    return NULL;
}

bool
ts_http_bearer_ok(const struct ts_http_request *req, const char *key)
{
    static const char prefix[] = "Bearer ";
    const char *auth = ts_http_header(req, "Authorization");

    if (key == NULL || auth == NULL || strncasecmp(auth, prefix, sizeof(prefix) - 1) != 0)
        return false;
    auth += sizeof(prefix) - 1;
    return ts_ct_equal(auth, strlen(auth), key, strlen(key));
}

void
ts_http_add_header(struct ts_http_request *req, const char *name, const char *value)
{
    if (strpbrk(name, "\r\n") != NULL || strpbrk(value, "\r\n") != NULL)
        return; /* a caller bug; never a split response */
    ts_buf_printf(&req->hdrs, "%s: %s\r\n", name, value);
}

bool
ts_http_out_add(struct ts_http_out *out, const void *p, size_t len, void *ref)
{
    if (out->n == TS_HTTP_OUT_MAX)
        return false;
    out->iov[out->n] = (struct iovec){(void *)p, len};
    out->ref[out->n] = ref;
    out->n++;
    return true;
}

/* ---- responses ---- */

static void
count_request(struct ts_http_request *req, unsigned status)
{
    struct ts_http *h = req->h;
    const char *labels[3];
    struct ts_series *s;
    char code[8];

    if (h->cfg.requests_total == NULL)
        return;
    snprintf(code, sizeof(code), "%u", status);
    labels[0] = h->name;
    labels[1] = req->route != NULL ? req->route->name : "other";
    labels[2] = code;
    s = ts_family_series(h->cfg.requests_total, labels);
    if (s != NULL)
        ts_series_inc(s);
}

/* Does this answer close the connection? */
static bool
closes(struct ts_http_request *req)
{
    struct ts_http *h = req->h;

    if (req->close || !req->head.keep_alive)
        return true;
    return h->cfg.close_when_draining && ts_drain_is_draining(&h->cfg.drain);
}

/* The status line and the fields every answer has. */
static int
put_head(struct ts_buf *b, struct ts_http_request *req, unsigned status)
{
    const char *date = date_header(req->c->loop);

    ts_buf_printf(b, "HTTP/1.1 %u %s\r\n", status, reason_phrase(status));
    ts_buf_append(b, date, strlen(date));
    if (req->hdrs.len > 0)
        ts_buf_append(b, req->hdrs.data, req->hdrs.len);
    if (req->close)
        ts_buf_append(b, "Connection: close\r\n", 19);
    else if (req->head.version_minor == 0)
        ts_buf_append(b, "Connection: keep-alive\r\n", 24);
    return 0;
}

void
ts_http_reply(struct ts_http_request *req, unsigned status, const char *content_type,
              const void *body, size_t len)
{
    struct conn *c = req->c;
    bool no_body = status == 204 || status == 304;
    struct ts_buf b;

    if (req->answered)
        return;
    req->answered = true;
    req->close = closes(req);
    ts_buf_init(&b, SIZE_MAX);
    put_head(&b, req, status);
    if (content_type != NULL && !no_body)
        ts_buf_printf(&b, "Content-Type: %s\r\n", content_type);
    if (!no_body)
        ts_buf_printf(&b, "Content-Length: %zu\r\n", len);
    if (ts_buf_append(&b, "\r\n", 2) != 0 ||
        (!no_body && !req->is_head && len > 0 && ts_buf_append(&b, body, len) != 0)) {
        ts_buf_dispose(&b);
        req->answered = false; /* out of memory: the connection is closed */
        return;
    }
    count_request(req, status);
    c->out = ts_buf_take(&b, &c->out_len);
    c->out_off = 0;
    c->close_after = req->close;
    c->state = C_WRITE;
}

void
ts_http_reply_json(struct ts_http_request *req, unsigned status, json_t *body)
{
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;

    json_decref(body);
    if (text == NULL)
        return;
    ts_http_add_header(req, "Cache-Control", "no-store");
    ts_http_reply(req, status, "application/json", text, strlen(text));
    free(text);
}

void
ts_http_reply_error(struct ts_http_request *req, unsigned status, const char *code, const char *fmt,
                    ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ts_http_reply_json(req, status, json_pack("{s:s, s:s}", "error", code, "message", msg));
}

void
ts_http_reply_unauthorized(struct ts_http_request *req, const char *realm, const char *what)
{
    char challenge[128];

    snprintf(challenge, sizeof(challenge), "Bearer realm=\"%s\"", realm);
    ts_http_add_header(req, "WWW-Authenticate", challenge);
    ts_http_reply_error(req, 401, "unauthorized", "send the %s as \"Authorization: Bearer <key>\"",
                        what);
}

/* "GET, HEAD, POST": the methods of route `r`. */
static void
route_methods(const struct ts_route *r, char *allow, size_t len)
{
    snprintf(allow, len, "%s%s%s", r->get != NULL ? "GET, HEAD, " : "",
             r->post != NULL ? "POST, " : "", r->del != NULL ? "DELETE, " : "");
    allow[strlen(allow) - 2] = '\0'; /* every route has at least one method */
}

static void
reply_method_not_allowed(struct ts_http_request *req)
{
    const struct ts_route *r = req->route;
    char allow[64];

    route_methods(r, allow, sizeof(allow));
    ts_http_add_header(req, "Allow", allow);
    ts_http_reply_error(req, 405, "method_not_allowed", "%s is not allowed on %s; allowed: %s",
                        ts_http_method(req), r->pattern, allow);
}

struct ts_http_stream *
ts_http_reply_stream(struct ts_http_request *req, const struct ts_http_stream_ops *ops, void *ctx)
{
    struct conn *c = req->c;
    struct ts_buf b;

    if (req->answered) {
        ops->closed(ctx);
        return NULL;
    }
    req->answered = true;
    c->chunked = req->head.version_minor >= 1;
    if (!c->chunked)
        req->close = true; /* HTTP/1.0: the body ends with the connection */
    req->close = closes(req);
    ts_buf_init(&b, SIZE_MAX);
    put_head(&b, req, 200);
    if (c->chunked)
        ts_buf_append(&b, "Transfer-Encoding: chunked\r\n", 28);
    if (ts_buf_append(&b, "\r\n", 2) != 0) {
        ts_buf_dispose(&b);
        req->answered = false;
        ops->closed(ctx);
        return NULL;
    }
    count_request(req, 200);
    c->out = ts_buf_take(&b, &c->out_len);
    c->out_off = 0;
    c->close_after = req->close;
    if (req->is_head) {
        c->state = C_WRITE;
        ops->closed(ctx);
        return NULL;
    }
    c->ops = ops;
    c->ctx = ctx;
    c->state = C_STREAM;
    return (struct ts_http_stream *)(void *)c;
}

/* ---- writing ---- */

/* A write failed (errno): the socket is full, or the connection is gone. */
static void
write_failed(struct conn *c)
{
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        c->blocked = true;
    else
        c->eof = true;
}

/* Write what is left of c->out. True when all of it went; false when the
 * socket is full (c->blocked) or the connection failed (c->eof). */
static bool
flush_out(struct conn *c)
{
    while (c->out != NULL && c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            write_failed(c);
            return false;
        }
        c->out_off += (size_t)n;
        c->active_ns = c->written_ns = c->loop->now;
    }
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_off = 0;
    return true;
}

static void
release_pending(struct conn *c)
{
    for (unsigned i = c->pend_first; i < c->pend_first + c->pend_n; i++)
        if (c->pref[i] != NULL)
            c->ops->unref(c->pref[i]);
    c->pend_first = c->pend_n = 0;
}

/* The stream's pending pieces, in one writev. Same returns as flush_out(). */
static bool
flush_pending(struct conn *c)
{
    while (c->pend_n > 0) {
        struct iovec *iov = c->pend + c->pend_first;
        ssize_t n = writev(c->fd, iov, (int)c->pend_n);
        size_t left;

        if (n < 0) {
            if (errno == EINTR)
                continue;
            write_failed(c);
            return false;
        }
        c->active_ns = c->written_ns = c->loop->now;
        left = (size_t)n;
        while (c->pend_n > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            if (c->pref[c->pend_first] != NULL)
                c->ops->unref(c->pref[c->pend_first]);
            c->pend_first++;
            c->pend_n--;
            iov++;
        }
        if (c->pend_n > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    c->pend_first = 0;
    return true;
}

/* ---- connections ---- */

static void
free_request(struct conn *c)
{
    struct ts_http_request *req = c->req;

    if (req == NULL)
        return;
    while (req->qvals != NULL) {
        struct qval *q = req->qvals;

        req->qvals = q->next;
        free(q);
    }
    ts_buf_dispose(&req->body);
    ts_buf_dispose(&req->hdrs);
    free(req);
    c->req = NULL;
}

/* Drop the first n bytes of the input. */
static void
consume(struct conn *c, size_t n)
{
    if (c->in == NULL)
        return;
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
    if (c->in_len == 0) {
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

/* Read what the socket has, up to `limit` bytes buffered. 1: read some; 0:
 * nothing now (or no room); -1: the client closed or the connection failed. */
static int
read_some(struct conn *c, size_t limit)
{
    ssize_t n;

    if (c->in_len >= limit)
        return 0;
    if (c->in_cap - c->in_len < READ_CHUNK && c->in_cap < limit) {
        size_t cap = c->in_cap == 0 ? READ_CHUNK : c->in_cap * 2;
        char *p;

        if (cap > limit)
            cap = limit;
        if (cap < c->in_len + 1)
            cap = c->in_len + 1;
        p = realloc(c->in, cap);
        if (p == NULL)
            return -1;
        c->in = p;
        c->in_cap = cap;
    }
    do
        n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) {
        c->in_len += (size_t)n;
        c->active_ns = c->loop->now;
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    c->eof = true;
    if (n < 0)
        count_disconnect(c->loop->h); /* reset */
    return -1;
}

/* A request without a parsed head: for answers to heads that did not parse. */
static struct ts_http_request *
bare_request(struct conn *c)
{
    struct ts_http_request *req = calloc(1, sizeof(*req));

    if (req == NULL)
        return NULL;
    req->c = c;
    req->h = c->loop->h;
    ts_buf_init(&req->hdrs, 4096);
    ts_buf_init(&req->body, 0);
    c->req = req;
    return req;
}

/* Answer `status` with `why` and close: the framing of what follows is
 * unknown, so nothing after it is read as a request. */
static void
fail(struct conn *c, unsigned status, const char *why)
{
    struct ts_http_request *req = c->req != NULL ? c->req : bare_request(c);

    if (req == NULL) {
        conn_close(c);
        return;
    }
    req->close = true;
    ts_http_reply_error(req, status,
                        status == 431   ? "header_too_large"
                        : status == 414 ? "uri_too_long"
                        : status == 413 ? "body_too_large"
                        : status == 501 ? "not_implemented"
                        : status == 505 ? "version_not_supported"
                        : status == 417 ? "expectation_failed"
                                        : "bad_request",
                        "%s", why);
    if (!req->answered)
        conn_close(c);
}

static void
dispatch(struct conn *c)
{
    struct ts_http_request *req = c->req;
    struct ts_http *h = c->loop->h;
    ts_http_handler *handler;

    if (req->route == NULL) {
        if (req->head.form == TS_HTTP_ASTERISK_FORM) {
            ts_http_add_header(req, "Allow", "GET, HEAD, POST, DELETE");
            ts_http_reply(req, 200, NULL, NULL, 0);
            return;
        }
        ts_http_reply_error(req, 404, "not_found", "no such resource: %.*s",
                            (int)(req->head.path.len < 200 ? req->head.path.len : 200),
                            req->head.path.p);
        return;
    }
    handler = handler_for(req->route, req->head.method.p);
    if (handler == NULL && h->cfg.options != NULL && strcmp(req->head.method.p, "OPTIONS") == 0) {
        char allow[64];

        route_methods(req->route, allow, sizeof(allow));
        h->cfg.options(h->cfg.app, req, allow);
    } else if (handler == NULL) {
        reply_method_not_allowed(req);
        return;
    } else {
        handler(h->cfg.app, req, req->has_id ? req->id : NULL);
    }
    if (!req->answered)
        conn_close(c); /* out of memory in the handler */
    else if (c->state == C_STREAM)
        start_stream(c);
}

/* The head is in: c->in[0..len). */
static void
begin_request(struct conn *c, size_t len)
{
    struct ts_http *h = c->loop->h;
    struct ts_http_request *req;
    struct path path;
    const char *why = NULL;
    size_t max_body;
    int rc;

    req = calloc(1, sizeof(*req) + len + 1);
    if (req == NULL) {
        conn_close(c);
        return;
    }
    req->c = c;
    req->h = h;
    ts_buf_init(&req->hdrs, 4096);
    ts_buf_init(&req->body, 0);
    memcpy(req->raw, c->in, len);
    c->req = req;
    rc = ts_http_head_parse(&req->head, &c->scan, req->raw, len, &h->limits, &why);
    consume(c, len);
    memset(&c->scan, 0, sizeof(c->scan));
    if (rc < 0) {
        memset(&req->head, 0, sizeof(req->head));
        fail(c, (unsigned)-rc, why);
        return;
    }
    /* Values are handed out as C strings: each ends at a CR, SP or HTAB of
     * our copy, which the parser no longer needs. */
    ((char *)req->head.method.p)[req->head.method.len] = '\0';
    for (size_t i = 0; i < req->head.nfields; i++)
        ((char *)req->head.fields[i].value.p)[req->head.fields[i].value.len] = '\0';
    req->is_head = strcmp(req->head.method.p, "HEAD") == 0;

    if (req->head.form == TS_HTTP_ASTERISK_FORM) {
        req->route = NULL;
    } else if (split_path(req->head.path, req->head.query, &path) != 0) {
        fail(c, 400,
             "the request target holds a bad %-escape or encodes a control character "
             "(%00 to %1F, %7F)");
        return;
    } else {
        req->route = find_route(h, &path, req);
    }
    max_body = req->route != NULL ? req->route->max_body : 0;
    if (max_body > h->cfg.max_body)
        max_body = h->cfg.max_body;
    ts_buf_init(&req->body, max_body);

    if (req->head.framing == TS_HTTP_NO_BODY ||
        (req->head.framing == TS_HTTP_LENGTH && req->head.content_length == 0)) {
        dispatch(c);
        return;
    }
    /* A body no handler takes is not read: answered, then closed. */
    if (req->route == NULL || handler_for(req->route, req->head.method.p) == NULL) {
        req->close = true;
        dispatch(c);
        return;
    }
    if (req->head.framing == TS_HTTP_LENGTH && req->head.content_length > max_body) {
        req->close = true;
        ts_http_reply_error(req, 413, "body_too_large",
                            "the request body is %llu bytes; the limit is %zu",
                            (unsigned long long)req->head.content_length, max_body);
        return;
    }
    if (req->head.expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

        /* Tiny and first on the connection: the socket takes it whole, or
         * the client sends its body anyway after a while (RFC 9110 10.1.1). */
        (void)!send(c->fd, cont, sizeof(cont) - 1, MSG_NOSIGNAL);
    }
    c->body_left = req->head.content_length;
    c->ck = CK_SIZE;
    c->ck_size = 0;
    c->ck_digits = 0;
    c->state = C_BODY;
}

static int
hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/*
 * Decode chunked bytes of c->in into the body. Returns 1 when the body is
 * complete (the bytes used consumed), 0 for more, or -status.
 */
static int
feed_chunked(struct conn *c, const char **why)
{
    struct ts_buf *body = &c->req->body;
    size_t i = 0;
    int rc = 0;

    while (i < c->in_len && rc == 0) {
        char ch = c->in[i];

        switch (c->ck) {
        case CK_SIZE:
            if (hexval(ch) >= 0 && c->ck_digits < 16) {
                c->ck_size = c->ck_size * 16 + (uint64_t)hexval(ch);
                c->ck_digits++;
            } else if (c->ck_digits > 0 && (ch == ';' || ch == ' ' || ch == '\t')) {
                c->ck = CK_EXT;
            } else if (c->ck_digits > 0 && ch == '\r') {
                c->ck = CK_SIZE_LF;
            } else {
                *why = "a chunk size is not 1 to 16 hex digits";
                rc = -400;
            }
            i++;
            break;
        case CK_EXT: /* chunk extensions are ignored (RFC 9112 7.1.1) */
            if (ch == '\r')
                c->ck = CK_SIZE_LF;
            else if (ch == '\n' || ch == '\0') {
                *why = "a bare LF or a NUL in a chunk extension";
                rc = -400;
            }
            i++;
            break;
        case CK_SIZE_LF:
            if (ch != '\n') {
                *why = "a chunk size line does not end with CRLF";
                rc = -400;
            } else if (c->ck_size == 0) {
                c->ck = CK_TRAILER;
            } else if (c->ck_size > body->max - body->len) {
                *why = "the request body is over the limit";
                rc = -413;
            } else {
                c->ck = CK_DATA;
            }
            i++;
            break;
        case CK_DATA: {
            size_t k = c->in_len - i < c->ck_size ? c->in_len - i : (size_t)c->ck_size;

            if (ts_buf_append(body, c->in + i, k) != 0) {
                *why = "the request body is over the limit";
                rc = -413;
                break;
            }
            i += k;
            c->ck_size -= k;
            if (c->ck_size == 0)
                c->ck = CK_DATA_CR;
            break;
        }
        case CK_DATA_CR:
        case CK_DATA_LF:
            if (ch != (c->ck == CK_DATA_CR ? '\r' : '\n')) {
                *why = "chunk data is not followed by CRLF";
                rc = -400;
            }
            c->ck = c->ck == CK_DATA_CR ? CK_DATA_LF : CK_SIZE;
            c->ck_digits = 0;
            i++;
            break;
        case CK_TRAILER: /* at the start of a trailer line, or of the final CRLF */
            c->ck = ch == '\r' ? CK_LAST_LF : CK_TRAILER_LF;
            if (ch == '\n' || ch == '\0') {
                *why = "a bare LF or a NUL in the trailer";
                rc = -400;
            }
            i++;
            break;
        case CK_TRAILER_LF: /* inside a trailer line, which is ignored */
            if (ch == '\n' && c->in[i - 1] == '\r')
                c->ck = CK_TRAILER;
            else if (ch == '\0' || (ch == '\n' && c->in[i - 1] != '\r')) {
                *why = "a bare LF or a NUL in the trailer";
                rc = -400;
            }
            i++;
            break;
        case CK_LAST_LF:
            if (ch != '\n') {
                *why = "the chunked body does not end with CRLF";
                rc = -400;
            } else {
                rc = 1;
            }
            i++;
            break;
        }
    }
    consume(c, i);
    return rc;
}

/* C_BODY: true when the request is answered (or failed). */
static bool
read_body(struct conn *c)
{
    struct ts_http_request *req = c->req;

    for (;;) {
        const char *why = NULL;
        int rc;

        if (req->head.framing == TS_HTTP_LENGTH) {
            size_t k = c->in_len < c->body_left ? c->in_len : (size_t)c->body_left;

            if (k > 0 && ts_buf_append(&req->body, c->in, k) != 0) {
                fail(c, 413, "the request body is over the limit");
                return true;
            }
            consume(c, k);
            c->body_left -= k;
            rc = c->body_left == 0;
        } else {
            rc = feed_chunked(c, &why);
        }
        if (rc < 0) {
            fail(c, (unsigned)-rc, why);
            return true;
        }
        if (rc == 1) {
            dispatch(c);
            return true;
        }
        /* Only as much as the body needs is buffered (one read ahead). */
        rc = read_some(c, BODY_READ_AHEAD);
        if (rc == 0)
            return false;
        if (rc < 0) {
            count_disconnect(c->loop->h);
            conn_close(c);
            return false;
        }
    }
}

/* The response went out: next request, or the close. */
static void
finish_response(struct conn *c)
{
    free_request(c);
    c->state = C_HEAD;
    c->since_ns = c->loop->now;
    if (c->close_after) {
        shutdown(c->fd, SHUT_WR);
        c->state = C_LINGER;
        c->since_ns = c->loop->now;
    }
}

/* C_HEAD: true when a request began (or failed). */
static bool
read_head(struct conn *c)
{
    struct ts_http *h = c->loop->h;

    for (;;) {
        const char *why = NULL;
        int rc = c->in_len > c->scan.scanned
                     ? ts_http_head_scan(&c->scan, c->in, c->in_len, &h->limits, &why)
                     : 0;

        if (rc < 0) {
            fail(c, (unsigned)-rc, why);
            return true;
        }
        if (rc > 0) {
            begin_request(c, (size_t)rc);
            return true;
        }
        if (c->eof) {
            if (c->in_len > 0)
                count_disconnect(h); /* gone in the middle of a head */
            conn_close(c);
            return false;
        }
        if (read_some(c, h->limits.head_max + 1) == 0)
            return false;
    }
}

static void
linger(struct conn *c)
{
    char sink[4096];

    for (;;) {
        ssize_t n = recv(c->fd, sink, sizeof(sink), 0);

        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        conn_close(c);
        return;
    }
}

/* Move a stream to the end of the heartbeat queue. */
static void
requeue_stream(struct conn *c)
{
    struct ts_http_loop *l = c->loop;

    DL_DELETE(l->streams, c);
    DL_APPEND(l->streams, c);
    c->quiet_ns = l->now;
}

/* A stream's body is complete and written: back to requests. */
static void
end_stream(struct conn *c)
{
    struct ts_http_loop *l = c->loop;
    const struct ts_http_stream_ops *ops = c->ops;

    c->ops = NULL;
    c->ending = false;
    ops->closed(c->ctx);
    c->ctx = NULL;
    DL_DELETE(l->streams, c);
    DL_APPEND(l->conns, c);
    c->close_after = c->close_after || !c->chunked;
    finish_response(c);
}

/* Write the stream's head and pending pieces. True when all went; false
 * when the socket is full (c->blocked) or the connection is gone (closed). */
static bool
stream_flush(struct conn *c)
{
    if (!c->blocked && (c->out == NULL || flush_out(c)) && (c->pend_n == 0 || flush_pending(c)))
        return true;
    if (c->eof) {
        count_disconnect(c->loop->h);
        conn_close(c);
    }
    return false;
}

/*
 * Write what the stream has, pulling while it fills its pieces to the brim,
 * until it has nothing more or the socket is full. May end the stream (the
 * connection is then back to C_HEAD or lingering) or close the connection.
 */
static void
stream_run(struct conn *c, enum ts_http_pull why)
{
    for (;;) {
        struct ts_http_out out;
        enum ts_http_more more;

        if (!stream_flush(c)) {
            if (c->state == C_STREAM && c->ops->pull(c->ctx, NULL, TS_HTTP_PULL_BLOCKED,
                                                     c->loop->now - c->written_ns) == TS_HTTP_ABORT)
                conn_close(c);
            return;
        }
        if (c->ending) {
            end_stream(c);
            return;
        }
        out.n = 0;
        out.chunked = c->chunked;
        more = c->ops->pull(c->ctx, &out, why, c->loop->now - c->written_ns);
        memcpy(c->pend, out.iov, out.n * sizeof(out.iov[0]));
        memcpy(c->pref, out.ref, out.n * sizeof(out.ref[0]));
        c->pend_first = 0;
        c->pend_n = out.n;
        if (more == TS_HTTP_ABORT) {
            conn_close(c);
            return;
        }
        if (more == TS_HTTP_END) {
            c->ending = true;
            if (c->chunked) {
                c->pend[c->pend_n] = (struct iovec){(void *)"0\r\n\r\n", 5};
                c->pref[c->pend_n++] = NULL;
            }
            continue;
        }
        if (out.n == 0)
            return;
        requeue_stream(c);
        if (out.n < TS_HTTP_OUT_MAX) {
            stream_flush(c); /* caught up: nothing more to pull now */
            return;
        }
        why = TS_HTTP_PULL_WAKE;
    }
}

/* Run the connection's state machine as far as it goes without waiting. */
static void conn_process(struct conn *c);

/* stream_run(), then, if the stream ended, what waits on the connection. */
static void
stream_kick(struct conn *c, enum ts_http_pull why)
{
    stream_run(c, why);
    if (c->state != C_STREAM && c->state != C_CLOSED)
        conn_process(c);
}

void
ts_http_stream_run(struct ts_http_stream *st)
{
    stream_kick((struct conn *)(void *)st, TS_HTTP_PULL_WAKE);
}

/* The handler answered with a stream: it moves to the streams and writes. */
static void
start_stream(struct conn *c)
{
    struct ts_http_loop *l = c->loop;

    free_request(c);
    DL_DELETE(l->conns, c);
    DL_APPEND(l->streams, c);
    c->quiet_ns = c->written_ns = l->now;
    stream_run(c, TS_HTTP_PULL_WAKE);
}

/* C_WRITE: true when the response is out (then the next state). */
static bool
write_response(struct conn *c)
{
    if (!flush_out(c)) {
        if (c->eof) {
            count_disconnect(c->loop->h);
            conn_close(c);
        }
        return false;
    }
    finish_response(c);
    return true;
}

static void
conn_process(struct conn *c)
{
    bool more = true;

    while (more) {
        switch (c->state) {
        case C_HEAD:
            more = read_head(c);
            break;
        case C_BODY:
            more = read_body(c);
            break;
        case C_WRITE:
            more = write_response(c);
            break;
        case C_LINGER:
            linger(c);
            more = false;
            break;
        case C_STREAM:
        case C_CLOSED:
            more = false;
            break;
        }
    }
}

static void
ip_release(struct ts_http *h, struct ip_count *ip)
{
    if (ip == NULL)
        return;
    pthread_mutex_lock(&h->ip_mu);
    if (--ip->n == 0) {
        HASH_DEL(h->ips, ip);
        free(ip);
    }
    pthread_mutex_unlock(&h->ip_mu);
}

/*
 * Close the connection. Its struct lives on until the loop's turn is over
 * (a later event of the same epoll_wait, or a caller up the stack, may still
 * hold it); C_CLOSED tells them.
 */
static void
conn_close(struct conn *c)
{
    struct ts_http_loop *l = c->loop;
    struct ts_http *h = l->h;

    if (c->state == C_CLOSED)
        return;
    if (c->ops != NULL) {
        release_pending(c);
        c->ops->closed(c->ctx);
        c->ops = NULL;
        DL_DELETE(l->streams, c);
    } else {
        DL_DELETE(l->conns, c);
    }
    c->state = C_CLOSED;
    /* Out of the set before the close: a child process between fork and
     * exec still holds the socket, and epoll would go on reporting it. */
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    free_request(c);
    free(c->in);
    c->in = NULL;
    free(c->out);
    c->out = NULL;
    ip_release(h, c->ip);
    c->ip = NULL;
    if (atomic_fetch_sub(&h->conns, 1) == h->cfg.max_connections)
        ts_listener_resume(h->listener);
    c->next = l->dead;
    l->dead = c;
}

static void
free_dead(struct ts_http_loop *l)
{
    while (l->dead != NULL) {
        struct conn *c = l->dead;

        l->dead = c->next;
        free(c);
    }
}

static void
conn_open(struct ts_http_loop *l, int fd, struct ip_count *ip)
{
    struct ts_http *h = l->h;
    struct conn *c = calloc(1, sizeof(*c));
    struct epoll_event ev;
    int one = 1;

    if (c == NULL) {
        close(fd);
        ip_release(h, ip);
        if (atomic_fetch_sub(&h->conns, 1) == h->cfg.max_connections)
            ts_listener_resume(h->listener);
        return;
    }
    c->loop = l;
    c->fd = fd;
    c->ip = ip;
    c->state = C_HEAD;
    c->since_ns = c->active_ns = l->now;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    DL_APPEND(l->conns, c);
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = c;
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        conn_close(c);
    /* epoll reports the socket at once if a request is already there. */
}

/* ---- loops ---- */

static void
loop_signal_locked(struct ts_http_loop *l)
{
    uint64_t one = 1;

    if (l->signalled)
        return;
    l->signalled = true;
    (void)!write(l->evfd, &one, sizeof(one));
}

/*
 * A post is idle, queued (on `posts`, which other threads append to), or
 * taken (on `batch`, which only the loop thread walks): a post that is
 * queued or taken is not queued again, as it has not run yet, and its `next`
 * is never touched by another thread while the loop walks its batch.
 */
enum { POST_IDLE, POST_QUEUED, POST_TAKEN };

void
ts_http_post(struct ts_http_loop *l, struct ts_http_post *p)
{
    pthread_mutex_lock(&l->mu);
    if (p->state == POST_IDLE) {
        p->state = POST_QUEUED;
        p->next = NULL;
        if (l->posts_tail != NULL)
            l->posts_tail->next = p;
        else
            l->posts = p;
        l->posts_tail = p;
        loop_signal_locked(l);
    }
    pthread_mutex_unlock(&l->mu);
}

/* Take `p` off the list `*head`; the previous entry, or NULL. */
static struct ts_http_post *
unlink_post(struct ts_http_post **head, struct ts_http_post *p)
{
    struct ts_http_post **pp = head, *prev = NULL;

    while (*pp != p) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    *pp = p->next;
    return prev;
}

void
ts_http_post_cancel(struct ts_http_loop *l, struct ts_http_post *p)
{
    pthread_mutex_lock(&l->mu);
    if (p->state == POST_QUEUED) {
        struct ts_http_post *prev = unlink_post(&l->posts, p);

        if (l->posts_tail == p)
            l->posts_tail = prev;
    } else if (p->state == POST_TAKEN) {
        unlink_post(&l->batch, p);
    }
    p->state = POST_IDLE;
    pthread_mutex_unlock(&l->mu);
}

/* Take what other threads handed over. False when the loop is to stop. */
static bool
loop_take(struct ts_http_loop *l)
{
    struct handoff *taken;
    size_t n, cap;
    uint64_t v;
    bool stop;

    (void)!read(l->evfd, &v, sizeof(v));
    pthread_mutex_lock(&l->mu);
    l->signalled = false;
    stop = l->stop;
    /* The accept thread fills one array while the loop opens the other. */
    taken = l->inbox;
    n = l->inbox_n;
    cap = l->inbox_cap;
    l->inbox = l->spare;
    l->inbox_cap = l->spare_cap;
    l->spare = taken;
    l->spare_cap = cap;
    l->inbox_n = 0;
    l->batch = l->posts;
    l->posts = l->posts_tail = NULL;
    for (struct ts_http_post *p = l->batch; p != NULL; p = p->next)
        p->state = POST_TAKEN;
    pthread_mutex_unlock(&l->mu);

    for (size_t i = 0; i < n; i++)
        conn_open(l, taken[i].fd, taken[i].ip);
    /* Each is idle again just before it runs: what is posted from then on
     * runs on a later turn. run() may cancel one still in the batch. */
    while (l->batch != NULL) {
        struct ts_http_post *p = l->batch;

        pthread_mutex_lock(&l->mu);
        l->batch = p->next;
        p->state = POST_IDLE;
        pthread_mutex_unlock(&l->mu);
        p->run(p);
    }
    return !stop;
}

/* Deadlines of the connections that are not streaming. */
static void
sweep(struct ts_http_loop *l)
{
    struct ts_http *h = l->h;
    struct conn *c, *tmp;
    unsigned slow = 0;

    DL_FOREACH_SAFE(l->conns, c, tmp) {
        bool idle = l->now - c->active_ns >= h->cfg.idle_timeout_ns;

        if (c->state == C_LINGER) {
            if (l->now - c->since_ns >= LINGER_NS)
                conn_close(c);
        } else if (c->state == C_HEAD && h->cfg.header_timeout_ns > 0 &&
                   l->now - c->since_ns >= h->cfg.header_timeout_ns) {
            if (c->in_len > 0)
                slow++;
            conn_close(c);
        } else if (idle && h->cfg.idle_timeout_ns > 0) {
            conn_close(c);
        }
    }
    if (slow > 0)
        ts_log(h->cfg.log, TS_LOG_INFO, "request headers too slow, connections closed",
               TS_F_STR("listener", h->name), TS_F_UINT("count", slow), TS_F_END);
}

/* Streams silent for stream_quiet_ns, oldest first: each is asked for a
 * heartbeat (and so requeued), or found stalled. */
static void
quiet_streams(struct ts_http_loop *l)
{
    int64_t quiet = l->h->cfg.stream_quiet_ns;

    while (l->streams != NULL && l->now - l->streams->quiet_ns >= quiet) {
        struct conn *c = l->streams;

        requeue_stream(c);
        stream_kick(c, TS_HTTP_PULL_QUIET);
    }
}

static int
loop_timeout_ms(struct ts_http_loop *l)
{
    int64_t next = l->now + TS_NS_PER_S;

    if (l->conns != NULL && l->next_sweep < next)
        next = l->next_sweep;
    if (l->streams != NULL && l->streams->quiet_ns + l->h->cfg.stream_quiet_ns < next)
        next = l->streams->quiet_ns + l->h->cfg.stream_quiet_ns;
    if (next <= l->now)
        return 0;
    return (int)((next - l->now + TS_NS_PER_MS - 1) / TS_NS_PER_MS);
}

static void *
loop_main(void *arg)
{
    struct ts_http_loop *l = arg;
    struct ts_http *h = l->h;
    struct epoll_event evs[EPOLL_EVENTS];
    bool running = true;

    l->now = ts_clock_now_ns(&h->cfg.clock);
    l->next_sweep = l->now + SWEEP_NS;
    while (running) {
        int n = epoll_wait(l->epfd, evs, EPOLL_EVENTS, loop_timeout_ms(l));

        l->now = ts_clock_now_ns(&h->cfg.clock);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;

            if (c == NULL) {
                running = loop_take(l);
                continue;
            }
            if (c->state == C_CLOSED)
                continue;
            if (c->state == C_STREAM) {
                if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                    count_disconnect(h);
                    conn_close(c);
                } else if (e & EPOLLOUT) {
                    c->blocked = false;
                    stream_kick(c, TS_HTTP_PULL_WAKE);
                }
                continue;
            }
            if (e & EPOLLOUT)
                c->blocked = false;
            conn_process(c);
        }
        if (l->now >= l->next_sweep) {
            sweep(l);
            l->next_sweep = l->now + SWEEP_NS;
        }
        quiet_streams(l);
        free_dead(l);
    }
    while (l->streams != NULL)
        conn_close(l->streams);
    while (l->conns != NULL)
        conn_close(l->conns);
    free_dead(l);
    return NULL;
}

/* ---- accepting ---- */

static struct ip_count *
ip_admit(struct ts_http *h, const struct sockaddr *sa, bool *ok)
{
    unsigned char addr[16] = {0};
    struct ip_count *ip;

    *ok = true;
    if (h->cfg.max_connections_per_ip == 0)
        return NULL;
    if (sa->sa_family == AF_INET) {
        addr[10] = addr[11] = 0xff;
        memcpy(addr + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(addr, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
    } else {
        return NULL;
    }
    pthread_mutex_lock(&h->ip_mu);
    HASH_FIND(hh, h->ips, addr, sizeof(addr), ip);
    if (ip == NULL) {
        ip = calloc(1, sizeof(*ip));
        if (ip != NULL) {
            memcpy(ip->addr, addr, sizeof(addr));
            HASH_ADD(hh, h->ips, addr, sizeof(ip->addr), ip);
        }
    }
    if (ip == NULL || ip->n >= h->cfg.max_connections_per_ip) {
        *ok = false;
        ip = NULL;
    } else {
        ip->n++;
    }
    pthread_mutex_unlock(&h->ip_mu);
    return ip;
}

/* The listener's thread: hand the connection to a loop, round robin. */
static void
on_accept(void *arg, int fd, const struct sockaddr *sa, socklen_t salen)
{
    struct ts_http *h = arg;
    struct ts_http_loop *l;
    struct ip_count *ip;
    bool ok;

    (void)salen;
    ip = ip_admit(h, sa, &ok);
    if (!ok) {
        close(fd); /* over the per-IP cap */
        return;
    }
    atomic_fetch_add(&h->conns, 1);
    l = &h->loops[h->next_loop++ % h->nloops];
    pthread_mutex_lock(&l->mu);
    if (l->inbox_n == l->inbox_cap) {
        size_t cap = l->inbox_cap == 0 ? 64 : l->inbox_cap * 2;
        struct handoff *grown = realloc(l->inbox, cap * sizeof(*grown));

        if (grown == NULL) {
            pthread_mutex_unlock(&l->mu);
            close(fd);
            ip_release(h, ip);
            if (atomic_fetch_sub(&h->conns, 1) == h->cfg.max_connections)
                ts_listener_resume(h->listener);
            return;
        }
        l->inbox = grown;
        l->inbox_cap = cap;
    }
    l->inbox[l->inbox_n++] = (struct handoff){fd, ip};
    loop_signal_locked(l);
    pthread_mutex_unlock(&l->mu);
}

static bool
admit(void *arg)
{
    struct ts_http *h = arg;

    return atomic_load(&h->conns) < h->cfg.max_connections;
}

/* ---- lifecycle ---- */

void
ts_http_quiesce(struct ts_http *h)
{
    ts_listener_close(h->listener);
}

/* A clock whose time jumps (a test's): look at the timers again. */
static void
loop_clock_moved(void *arg)
{
    struct ts_http_loop *l = arg;

    pthread_mutex_lock(&l->mu);
    loop_signal_locked(l);
    pthread_mutex_unlock(&l->mu);
}

static void
loop_dispose(struct ts_http_loop *l)
{
    if (l->watching)
        ts_clock_unwatch(&l->h->cfg.clock, loop_clock_moved, l);
    for (size_t i = 0; i < l->inbox_n; i++) {
        close(l->inbox[i].fd);
        ip_release(l->h, l->inbox[i].ip);
    }
    free(l->inbox);
    free(l->spare);
    if (l->evfd >= 0)
        close(l->evfd);
    if (l->epfd >= 0)
        close(l->epfd);
    pthread_mutex_destroy(&l->mu);
}

static int
loop_init(struct ts_http *h, struct ts_http_loop *l)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};

    l->h = h;
    pthread_mutex_init(&l->mu, NULL);
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->epfd < 0 || l->evfd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->evfd, &ev) != 0)
        return -errno;
    l->watching = ts_clock_watch(&h->cfg.clock, loop_clock_moved, l) == 0;
    return l->watching ? 0 : -ENOSPC;
}

static void
stop_loops(struct ts_http *h, unsigned started)
{
    for (unsigned i = 0; i < started; i++) {
        struct ts_http_loop *l = &h->loops[i];

        pthread_mutex_lock(&l->mu);
        l->stop = true;
        loop_signal_locked(l);
        pthread_mutex_unlock(&l->mu);
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(h->loops[i].thread, NULL);
}

static void
free_http(struct ts_http *h)
{
    struct ip_count *ip, *tmp;

    for (unsigned i = 0; i < h->nloops; i++)
        loop_dispose(&h->loops[i]);
    HASH_ITER(hh, h->ips, ip, tmp) {
        HASH_DEL(h->ips, ip);
        free(ip);
    }
    pthread_mutex_destroy(&h->ip_mu);
    free(h->loops);
    free(h->name);
    free(h);
}

int
ts_http_start(struct ts_http **out, const struct ts_http_config *cfg)
{
    struct ts_listener_config lcfg;
    struct ts_http *h;
    unsigned started = 0;
    char err[256];
    int fd, rc;

    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -ENOMEM;
    h->cfg = *cfg;
    pthread_mutex_init(&h->ip_mu, NULL);
    atomic_init(&h->conns, 0);
    h->nloops = cfg->threads > 0 ? cfg->threads : 1;
    h->name = strdup(cfg->name);
    h->loops = calloc(h->nloops, sizeof(*h->loops));
    if (h->name == NULL || h->loops == NULL) {
        h->nloops = 0;
        free_http(h);
        return -ENOMEM;
    }
    h->limits = (struct ts_http_limits){.line_max = cfg->max_head, .head_max = cfg->max_head};
    if (cfg->disconnects != NULL) {
        const char *label = cfg->name;

        h->disconnects = ts_family_series(cfg->disconnects, &label);
    }
    for (unsigned i = 0; i < h->nloops; i++)
        h->loops[i].epfd = h->loops[i].evfd = -1;
    for (unsigned i = 0; i < h->nloops; i++) {
        rc = loop_init(h, &h->loops[i]);
        if (rc != 0)
            goto out_free;
    }

    fd = ts_listen_socket(cfg->listen, cfg->setting, &h->port, err, sizeof(err));
    if (fd < 0) {
        rc = fd;
        ts_log(cfg->log, TS_LOG_ERROR, "cannot listen", TS_F_STR("listener", cfg->name),
               TS_F_STR("error", err), TS_F_END);
        goto out_free;
    }
    for (; started < h->nloops; started++) {
        rc = -pthread_create(&h->loops[started].thread, NULL, loop_main, &h->loops[started]);
        if (rc != 0) {
            close(fd);
            goto out_stop;
        }
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
    if (rc != 0)
        goto out_stop;
    *out = h;
    return 0;

out_stop:
    stop_loops(h, started);
out_free:
    free_http(h);
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
    ts_listener_close(h->listener); /* nothing is handed over after this */
    stop_loops(h, h->nloops);
    ts_listener_free(h->listener);
    free_http(h);
}
