/*
 * sseload: the load client of the benchmarks (bench/run.py drives it).
 *
 * One process, one epoll loop, thousands of non-blocking connections. Three
 * modes:
 *
 *   sub   opens N event streams (GET), decodes the body (chunked, as
 *         taskstreamd sends it, or close-delimited, as nchan does), parses
 *         the SSE frames, checks that each stream's sequence has no gaps
 *         (the `id:` field, or for nchan, whose ids are not integers, the
 *         "n" of the data, apart for each publisher connection "p", as
 *         several publishers reach a channel in an order of their own) and
 *         measures each event's delivery latency as
 *         CLOCK_REALTIME now minus the "sent_us" stamp the sender put in the
 *         data (same host, same clock).
 *   pub   POSTs bodies at a paced rate over a few keep-alive connections: the
 *         nchan publisher ({"n":i,"p":conn,"sent_us":t}) and the
 *         task-submission load.
 *   poll  GETs one URL in a tight keep-alive loop and stamps the first
 *         answer that is not 200: the /readyz flip after SIGTERM.
 *
 * Everything is reported as JSON lines on stdout: sub prints a "ready" line
 * once every stream is established (or has failed), so the driver can take
 * the server's RSS or CPU time at that point, and a "done" line at the end.
 *
 * The measurement window of sub (--window) starts --warmup after all
 * streams are up:
 * events stamped inside it count as deliveries and go into the latency
 * histogram; events from before (connection set-up, replay) are checked for
 * gaps but not timed. After the window the client waits (at most --grace)
 * until every stream has seen an event stamped after the window, so a server
 * that falls behind shows it in the rate and the tail instead of hiding it.
 * The rate is deliveries / max(window, time of the last window delivery),
 * which is the offered rate when the server keeps up and less when it does
 * not.
 *
 * Latencies go into a log-linear histogram (32 sub-buckets per power of two,
 * about 3% resolution); the "done" line carries it sparse as [upper_us,
 * count] pairs so that the driver can merge several processes.
 *
 * Each stream's time to its first event goes into two more such histograms:
 * "ttfe_us" from that stream's own connect(), "ttfe_run_us" from the start
 * of all the connects (the first connect() of the process). --rate paces
 * the connects (stream i is due i/rate s after the start; without it they
 * go as fast as --conc lets them), --until-first ends the run once every
 * stream has settled and every open one has had its first event, and --bind
 * binds every socket to a source address (port 0) before connect(), so that
 * several processes on 127.0.0.2, 127.0.0.3, ... get past the ephemeral
 * ports of one source address. Connect errors are counted by cause
 * (err_ports, err_fds, err_memory, err_refused, err_timedout, err_other).
 *
 * A stream the client closes is closed with SO_LINGER 0 (a reset): the
 * measurement is over by then, and no TIME_WAIT entries pile up to exhaust
 * the ephemeral ports between scenarios.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_BUF (256 * 1024)
#define LINE_MAX_BYTES (4 * 1024 * 1024)
#define HEAD_MAX_BYTES (64 * 1024)
#define EVENT_NAME_MAX 16
/* Publishers whose sequences a stream tracks apart ("p" in the data). */
#define SEQ_SOURCES 8
#define SIG_TAG UINT64_MAX

/* Histogram: values below 64 us exactly, then 32 sub-buckets per power of
 * two up to 2^40 us. */
#define HIST_LINEAR 64
#define HIST_SUB 32
#define HIST_SUB_BITS 5
#define HIST_BUCKETS (HIST_LINEAR + (40 - 6) * HIST_SUB)

enum mode { MODE_SUB, MODE_PUB, MODE_POLL };
enum seq_mode { SEQ_NONE, SEQ_ID, SEQ_DATA };
enum conn_state { C_IDLE, C_CONNECTING, C_HEAD, C_BODY, C_DONE };
enum body_mode { B_NONE, B_CLOSE, B_LENGTH, B_CHUNKED };
enum chunk_state { CH_SIZE, CH_EXT, CH_DATA, CH_DATA_END, CH_TRAILER };
enum finish { F_NONE, F_ENDED, F_CLOSED, F_CUT, F_FAILED, F_HTTP_ERROR, F_LOCAL };

struct opts {
    enum mode mode;
    const char *host;
    unsigned port;
    char **paths;
    size_t npaths;
    unsigned streams; /* sub: streams; pub: connections */
    unsigned conc;    /* sub: connections being set up at once */
    enum seq_mode seq;
    double window_s; /* sub: measurement window, 0: none */
    double warmup_s; /* sub: from ready to the start of the window */
    double grace_s;  /* sub: catch-up time after the window */
    bool hold;       /* sub: after ready, wait for a signal or max-time */
    double max_time_s;
    double rate;       /* pub: requests per second in all; sub: connects per second;
                          0: as fast as possible */
    double duration_s; /* pub */
    uint64_t count;    /* pub: at most this many requests, 0: no cap */
    const char *body;  /* pub: template with %n %c %t %p %% */
    unsigned payload_bytes;
    double interval_us;    /* poll */
    const char *bind_host; /* bind every socket to this source address (port 0) */
    bool until_first;      /* sub: done once every open stream had its first event */
};

struct hist {
    uint64_t b[HIST_BUCKETS];
    uint64_t n;
    int64_t max;
};

struct conn {
    int fd;
    uint32_t path_idx;
    uint8_t state;
    uint8_t body_mode;
    uint8_t chunk_state;
    uint8_t finish;
    bool chunk_had_digit;
    bool trailer_line_empty;
    bool caught_up;
    bool got_end;
    bool conn_close; /* the response said Connection: close */
    bool got_first;  /* sub: the stream has had its first event */
    uint64_t left;   /* chunk or content bytes left */
    int64_t open_ns; /* monotonic time of the connect() */

    char *buf; /* a partial header block or SSE line */
    uint32_t len, cap;

    /* SSE frame being read */
    bool f_data, f_has_id, f_has_n, f_has_sent;
    uint64_t f_id;
    int64_t f_n, f_src, f_sent_us;
    char f_event[EVENT_NAME_MAX];

    uint8_t have_seq; /* a bit per source */
    uint64_t last_seq[SEQ_SOURCES];
    unsigned status;

    /* pub and poll */
    int64_t req_sent_ns;
    char *req;
    size_t req_len, req_off;
};

struct stats {
    uint64_t opened, failed, connect_errors, events, window_events, gaps, gap_runs, misordered,
        server_gaps, draining, ended, closed, cut, http_errors, comments, caught_up, local_closed,
        events_at_ready, setup_eof, setup_reset, send_failed, first_events;
    /* connect errors by cause */
    uint64_t err_ports, err_fds, err_memory, err_refused, err_timedout, err_other;
    uint64_t status[6]; /* 1xx..5xx by first digit; [0] other */
    uint64_t status_204;
    int64_t last_window_recv_us;
    struct hist lat;
    struct hist ttfe;     /* first event - the stream's own connect() */
    struct hist ttfe_run; /* first event - the start of all connects */
};

struct pub_stats {
    uint64_t sent, answered, reconnects, errors;
    uint64_t status[6];
    struct hist lat;
};

struct ctx {
    struct opts o;
    int ep, sigfd;
    struct sockaddr_in addr;
    struct sockaddr_in bind_addr;
    bool bind_set;
    struct conn *conns;
    unsigned nconns;
    char *rbuf;
    int64_t t0_ns;     /* monotonic start */
    int64_t now_rt_us; /* realtime at the last read */
    int64_t now_ns;    /* monotonic time at the last read */
    bool stop;

    /* sub */
    unsigned next_to_open, in_setup, settled, active;
    unsigned awaiting_first; /* open streams without their first event yet */
    int64_t start_ns;        /* the first connect() */
    bool ready;
    int64_t ready_ns, ready_rt_us, win_start_us, win_end_us, win_end_ns;
    bool in_grace;
    int64_t grace_end_ns;
    struct stats st;

    /* pub */
    uint64_t *path_seq;
    char *payload;
    uint64_t next_path;
    struct pub_stats ps;
    int64_t pub_end_ns;

    /* poll */
    int64_t last_ok_us, first_bad_us, first_bad_req_us;
    unsigned first_bad_status;
    uint64_t polls;
    int64_t next_poll_ns;
    bool poll_ready, poll_refused;
};

/* ---- small utilities ---- */

static int64_t
mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t
real_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double
cpu_seconds(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int
parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (s == NULL || *s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -EINVAL;
    *out = v;
    return 0;
}

static int
parse_double(const char *s, double *out)
{
    char *end;

    if (s == NULL || *s == '\0')
        return -EINVAL;
    errno = 0;
    *out = strtod(s, &end);
    if (errno != 0 || *end != '\0' || *out < 0)
        return -EINVAL;
    return 0;
}

/* A JSON integer after `key` (which includes the quotes and the colon) in
 * `s[0..n)`. */
static bool
find_int(const char *s, size_t n, const char *key, size_t klen, int64_t *out)
{
    const char *p = memmem(s, n, key, klen);
    const char *end = s + n;
    bool neg = false;
    int64_t v = 0;

    if (p == NULL)
        return false;
    p += klen;
    while (p < end && *p == ' ')
        p++;
    if (p < end && *p == '-') {
        neg = true;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9')
        return false;
    while (p < end && *p >= '0' && *p <= '9' && v < INT64_MAX / 10)
        v = v * 10 + (*p++ - '0');
    *out = neg ? -v : v;
    return true;
}

static int
grow(char **buf, uint32_t *cap, size_t want, size_t limit)
{
    size_t ncap = *cap != 0 ? *cap : 256;
    char *nb;

    if (want > limit)
        return -E2BIG;
    while (ncap < want)
        ncap *= 2;
    if (ncap > limit)
        ncap = limit;
    nb = realloc(*buf, ncap);
    if (nb == NULL)
        return -ENOMEM;
    *buf = nb;
    *cap = (uint32_t)ncap;
    return 0;
}

static int
append(struct conn *c, const char *p, size_t n, size_t limit)
{
    int rc;

    if (c->len + n > c->cap) {
        rc = grow(&c->buf, &c->cap, c->len + n, limit);
        if (rc != 0)
            return rc;
    }
    memcpy(c->buf + c->len, p, n);
    c->len += (uint32_t)n;
    return 0;
}

/* ---- histogram ---- */

static unsigned
hist_index(int64_t v)
{
    unsigned e;

    if (v < 0)
        v = 0;
    if (v < HIST_LINEAR)
        return (unsigned)v;
    e = 63u - (unsigned)__builtin_clzll((unsigned long long)v);
    if (e >= 40)
        return HIST_BUCKETS - 1;
    return HIST_LINEAR + (e - 6) * HIST_SUB +
           (unsigned)((v >> (e - HIST_SUB_BITS)) & (HIST_SUB - 1));
}

/* The largest value that falls into bucket `i`. */
static int64_t
hist_upper(unsigned i)
{
    unsigned e, sub;

    if (i < HIST_LINEAR)
        return i;
    e = (i - HIST_LINEAR) / HIST_SUB + 6;
    sub = (i - HIST_LINEAR) % HIST_SUB;
    return ((int64_t)(HIST_SUB + sub + 1) << (e - HIST_SUB_BITS)) - 1;
}

static void
hist_add(struct hist *h, int64_t v)
{
    h->b[hist_index(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

static int64_t
hist_quantile(const struct hist *h, double q)
{
    uint64_t want, seen = 0;

    if (h->n == 0)
        return 0;
    want = (uint64_t)(q * (double)h->n);
    if (want == 0)
        want = 1;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want)
            return hist_upper(i) < h->max ? hist_upper(i) : h->max;
    }
    return h->max;
}

static void
hist_print(FILE *f, const char *name, const struct hist *h)
{
    bool first = true;

    fprintf(f,
            "\"%s\":{\"n\":%" PRIu64 ",\"p50\":%" PRId64 ",\"p90\":%" PRId64 ",\"p99\":%" PRId64
            ",\"p999\":%" PRId64 ",\"max\":%" PRId64 ",\"hist\":[",
            name, h->n, hist_quantile(h, 0.50), hist_quantile(h, 0.90), hist_quantile(h, 0.99),
            hist_quantile(h, 0.999), h->max);
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        if (h->b[i] == 0)
            continue;
        fprintf(f, "%s[%" PRId64 ",%" PRIu64 "]", first ? "" : ",", hist_upper(i), h->b[i]);
        first = false;
    }
    fputs("]}", f);
}

/* ---- connections ---- */

static int
conn_open(struct ctx *x, struct conn *c)
{
    struct epoll_event ev = {.events = EPOLLOUT};
    int fd, rc, one = 1;

    c->open_ns = mono_ns();
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (x->bind_set) {
        /* the port is chosen at connect(), unique per destination
         * (without it bind() reserves one of the address's ports outright) */
#ifdef IP_BIND_ADDRESS_NO_PORT
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
#endif
        if (bind(fd, (const struct sockaddr *)&x->bind_addr, sizeof(x->bind_addr)) != 0) {
            rc = -errno;
            close(fd);
            return rc;
        }
    }
    rc = connect(fd, (struct sockaddr *)&x->addr, sizeof(x->addr));
    if (rc != 0 && errno != EINPROGRESS) {
        rc = -errno;
        close(fd);
        return rc;
    }
    c->fd = fd;
    c->state = C_CONNECTING;
    ev.data.u64 = (uint64_t)(c - x->conns);
    if (epoll_ctl(x->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        rc = -errno;
        close(fd);
        c->fd = -1;
        c->state = C_IDLE;
        return rc;
    }
    return 0;
}

static void
conn_close(struct ctx *x, struct conn *c, bool reset)
{
    if (c->fd >= 0) {
        if (reset) {
            struct linger l = {.l_onoff = 1, .l_linger = 0};

            setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        }
        epoll_ctl(x->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->len = 0;
}

static void
reset_response(struct conn *c)
{
    c->body_mode = B_NONE;
    c->chunk_state = CH_SIZE;
    c->chunk_had_digit = false;
    c->left = 0;
    c->len = 0;
    c->status = 0;
    c->conn_close = false;
}

static bool
header_is(const char *line, size_t n, const char *name)
{
    size_t k = strlen(name);

    return n > k && strncasecmp(line, name, k) == 0 && line[k] == ':';
}

static const char *
header_value(const char *line, size_t n, size_t *vlen, const char *name)
{
    const char *v = line + strlen(name) + 1;
    const char *end = line + n;

    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        end--;
    *vlen = (size_t)(end - v);
    return v;
}

/* Parse the status line and headers in c->buf[0..len). 0, or -EPROTO. */
static int
parse_head(struct conn *c, size_t len)
{
    const char *p = c->buf, *end = c->buf + len, *nl;
    uint64_t status;

    if (len < 12 || strncmp(p, "HTTP/1.", 7) != 0)
        return -EPROTO;
    status = (uint64_t)(p[9] - '0') * 100 + (uint64_t)(p[10] - '0') * 10 + (uint64_t)(p[11] - '0');
    if (status < 100 || status > 599)
        return -EPROTO;
    c->status = (unsigned)status;
    c->body_mode = B_CLOSE;
    nl = memchr(p, '\n', len);
    while (nl != NULL && nl + 1 < end) {
        const char *line = nl + 1;
        size_t n, vlen;
        const char *v;

        nl = memchr(line, '\n', (size_t)(end - line));
        n = nl != NULL ? (size_t)(nl - line) : (size_t)(end - line);
        if (header_is(line, n, "transfer-encoding")) {
            v = header_value(line, n, &vlen, "transfer-encoding");
            if (vlen >= 7 && strncasecmp(v + vlen - 7, "chunked", 7) == 0)
                c->body_mode = B_CHUNKED;
        } else if (header_is(line, n, "content-length") && c->body_mode != B_CHUNKED) {
            char num[24];

            v = header_value(line, n, &vlen, "content-length");
            if (vlen == 0 || vlen >= sizeof(num))
                return -EPROTO;
            memcpy(num, v, vlen);
            num[vlen] = '\0';
            if (parse_u64(num, &c->left) != 0)
                return -EPROTO;
            c->body_mode = B_LENGTH;
        } else if (header_is(line, n, "connection")) {
            v = header_value(line, n, &vlen, "connection");
            if (vlen == 5 && strncasecmp(v, "close", 5) == 0)
                c->conn_close = true;
        }
    }
    if (status == 204 || status == 304 || (status >= 100 && status < 200)) {
        c->body_mode = B_LENGTH;
        c->left = 0;
    }
    return 0;
}

/* ---- SSE ---- */

static void
frame_reset(struct conn *c)
{
    c->f_data = c->f_has_id = c->f_has_n = c->f_has_sent = false;
    c->f_src = 0;
    c->f_event[0] = '\0';
}

/* Each source's sequence must go up by one on every stream. Several
 * publishers (connections) reach one channel in an order that is theirs
 * alone, so each is checked apart. */
static void
seq_check(struct stats *st, struct conn *c, int64_t src, uint64_t seq)
{
    uint64_t *last;

    if (src < 0 || src >= SEQ_SOURCES) {
        st->misordered++;
        return;
    }
    last = &c->last_seq[src];
    if ((c->have_seq & (1u << src)) != 0) {
        if (seq == *last + 1) {
            /* the usual case */
        } else if (seq > *last + 1) {
            st->gaps += seq - *last - 1;
            st->gap_runs++;
        } else {
            st->misordered++;
        }
    }
    c->have_seq |= (uint8_t)(1u << src);
    *last = seq;
}

static void
dispatch(struct ctx *x, struct conn *c)
{
    struct stats *st = &x->st;

    if (!c->f_data) {
        frame_reset(c);
        return;
    }
    st->events++;
    if (!c->got_first) {
        c->got_first = true;
        st->first_events++;
        hist_add(&st->ttfe, (x->now_ns - c->open_ns) / 1000);
        hist_add(&st->ttfe_run, (x->now_ns - x->start_ns) / 1000);
        if (x->awaiting_first > 0)
            x->awaiting_first--;
    }
    if (strcmp(c->f_event, "end") == 0)
        c->got_end = true;
    else if (strcmp(c->f_event, "gap") == 0)
        st->server_gaps++;
    else if (strcmp(c->f_event, "draining") == 0)
        st->draining++;

    if (x->o.seq == SEQ_ID && c->f_has_id)
        seq_check(st, c, 0, c->f_id);
    else if (x->o.seq == SEQ_DATA && c->f_has_n && c->f_n >= 0)
        seq_check(st, c, c->f_src, (uint64_t)c->f_n);

    if (c->f_has_sent && x->win_start_us != 0) {
        if (c->f_sent_us >= x->win_start_us && c->f_sent_us < x->win_end_us) {
            st->window_events++;
            hist_add(&st->lat, x->now_rt_us - c->f_sent_us);
            st->last_window_recv_us = x->now_rt_us;
        } else if (c->f_sent_us >= x->win_end_us && !c->caught_up) {
            c->caught_up = true;
            st->caught_up++;
        }
    }
    frame_reset(c);
}

static void
sse_line(struct ctx *x, struct conn *c, const char *line, size_t n)
{
    const char *colon, *v;
    size_t flen, vlen;

    if (n > 0 && line[n - 1] == '\r')
        n--;
    if (n == 0) {
        dispatch(x, c);
        return;
    }
    if (line[0] == ':') {
        x->st.comments++;
        return;
    }
    colon = memchr(line, ':', n);
    flen = colon != NULL ? (size_t)(colon - line) : n;
    v = colon != NULL ? colon + 1 : line + n;
    vlen = (size_t)(line + n - v);
    if (vlen > 0 && *v == ' ')
        v++, vlen--;
    if (flen == 4 && memcmp(line, "data", 4) == 0) {
        c->f_data = true;
        if (find_int(v, vlen, "\"n\":", 4, &c->f_n))
            c->f_has_n = true;
        find_int(v, vlen, "\"p\":", 4, &c->f_src);
        if (find_int(v, vlen, "\"sent_us\":", 10, &c->f_sent_us))
            c->f_has_sent = true;
    } else if (flen == 2 && memcmp(line, "id", 2) == 0) {
        uint64_t id = 0;
        size_t i;

        for (i = 0; i < vlen && v[i] >= '0' && v[i] <= '9'; i++)
            id = id * 10 + (uint64_t)(v[i] - '0');
        c->f_has_id = i == vlen && vlen > 0;
        c->f_id = id;
    } else if (flen == 5 && memcmp(line, "event", 5) == 0) {
        size_t k = vlen < EVENT_NAME_MAX - 1 ? vlen : EVENT_NAME_MAX - 1;

        memcpy(c->f_event, v, k);
        c->f_event[k] = '\0';
    }
}

/* Body bytes of an event stream. 0, or a negative errno. */
static int
sse_feed(struct ctx *x, struct conn *c, const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t k;

        if (nl == NULL)
            return append(c, p, n, LINE_MAX_BYTES);
        k = (size_t)(nl - p);
        if (c->len > 0) {
            int rc = append(c, p, k, LINE_MAX_BYTES);

            if (rc != 0)
                return rc;
            sse_line(x, c, c->buf, c->len);
            c->len = 0;
        } else {
            sse_line(x, c, p, k);
        }
        p += k + 1;
        n -= k + 1;
    }
    return 0;
}

/* ---- body decoding ---- */

static int
payload(struct ctx *x, struct conn *c, const char *p, size_t n)
{
    if (x->o.mode == MODE_SUB)
        return sse_feed(x, c, p, n);
    return 0;
}

/* Feed body bytes; *used gets how many were taken. Returns 1 when the
 * response is complete, 0 when more is wanted, a negative errno on a
 * protocol error. */
static int
feed_body(struct ctx *x, struct conn *c, const char *p, size_t n, size_t *used)
{
    size_t i = 0;
    int rc;

    *used = n;
    switch (c->body_mode) {
    case B_CLOSE:
        return payload(x, c, p, n);
    case B_LENGTH: {
        size_t k = n < c->left ? n : (size_t)c->left;

        rc = payload(x, c, p, k);
        c->left -= k;
        *used = k;
        if (rc != 0)
            return rc;
        return c->left == 0 ? 1 : 0;
    }
    case B_CHUNKED:
        break;
    default:
        return -EPROTO;
    }
    while (i < n) {
        char ch = p[i];

        switch (c->chunk_state) {
        case CH_SIZE:
            if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')) {
                unsigned d = ch <= '9' ? (unsigned)(ch - '0') : (unsigned)((ch | 0x20) - 'a' + 10);

                if (c->left > (UINT64_MAX >> 4))
                    return -EPROTO;
                c->left = c->left * 16 + d;
                c->chunk_had_digit = true;
                i++;
                break;
            }
            if (!c->chunk_had_digit)
                return -EPROTO;
            c->chunk_state = CH_EXT;
            /* fall through */
        case CH_EXT:
            i++;
            if (ch == '\n') {
                c->chunk_had_digit = false;
                if (c->left == 0) {
                    c->chunk_state = CH_TRAILER;
                    c->trailer_line_empty = true;
                } else {
                    c->chunk_state = CH_DATA;
                }
            }
            break;
        case CH_DATA: {
            size_t k = n - i < c->left ? n - i : (size_t)c->left;

            rc = payload(x, c, p + i, k);
            if (rc != 0)
                return rc;
            i += k;
            c->left -= k;
            if (c->left == 0)
                c->chunk_state = CH_DATA_END;
            break;
        }
        case CH_DATA_END:
            i++;
            if (ch == '\n')
                c->chunk_state = CH_SIZE;
            else if (ch != '\r')
                return -EPROTO;
            break;
        case CH_TRAILER:
            i++;
            if (ch == '\n') {
                if (c->trailer_line_empty) {
                    *used = i;
                    return 1;
                }
                c->trailer_line_empty = true;
            } else if (ch != '\r') {
                c->trailer_line_empty = false;
            }
            break;
        }
    }
    return 0;
}

/* ---- sub mode ---- */

static void
sub_settle(struct ctx *x)
{
    x->settled++;
    if (x->in_setup > 0)
        x->in_setup--;
}

static void
sub_finish(struct ctx *x, struct conn *c, enum finish how)
{
    struct stats *st = &x->st;
    bool was_setup = c->state == C_CONNECTING || c->state == C_HEAD;

    if (c->state == C_DONE)
        return;
    switch (how) {
    case F_ENDED:
        if (c->got_end)
            st->ended++;
        else
            st->closed++;
        break;
    case F_CLOSED:
        st->closed++;
        break;
    case F_CUT:
        if (c->got_end)
            st->ended++; /* end arrived; the close raced the terminator */
        else
            st->cut++;
        break;
    case F_FAILED:
        st->failed++;
        break;
    case F_HTTP_ERROR:
        st->http_errors++;
        st->failed++;
        break;
    case F_LOCAL:
        st->local_closed++;
        break;
    case F_NONE:
        break;
    }
    if (was_setup)
        sub_settle(x);
    else if (x->active > 0)
        x->active--;
    if (c->state == C_BODY && !c->got_first && x->awaiting_first > 0)
        x->awaiting_first--;
    conn_close(x, c, true);
    c->state = C_DONE;
    c->finish = (uint8_t)how;
    free(c->buf);
    c->buf = NULL;
    c->cap = 0;
}

/* A connect error by its cause: the source address's ports, descriptors,
 * memory, or the server's answer. */
static void
count_connect_error(struct stats *st, int err)
{
    st->connect_errors++;
    switch (err) {
    case EADDRNOTAVAIL:
    case EADDRINUSE:
        st->err_ports++;
        break;
    case EMFILE:
    case ENFILE:
        st->err_fds++;
        break;
    case ENOMEM:
    case ENOBUFS:
        st->err_memory++;
        break;
    case ECONNREFUSED:
        st->err_refused++;
        break;
    case ETIMEDOUT:
        st->err_timedout++;
        break;
    default:
        st->err_other++;
        break;
    }
}

/* With --rate: the time the next stream is due. */
static int64_t
sub_due_ns(const struct ctx *x)
{
    return x->start_ns + (int64_t)((double)x->next_to_open * 1e9 / x->o.rate);
}

static void
sub_start_more(struct ctx *x)
{
    int64_t now = x->o.rate > 0 ? mono_ns() : 0;

    while (x->next_to_open < x->o.streams && x->in_setup < x->o.conc) {
        struct conn *c = &x->conns[x->next_to_open];
        int rc;

        if (x->o.rate > 0 && sub_due_ns(x) > now)
            break;
        c->path_idx = (uint32_t)(x->next_to_open % x->o.npaths);
        x->next_to_open++;
        x->in_setup++;
        rc = conn_open(x, c);
        if (rc != 0) {
            count_connect_error(&x->st, -rc);
            c->state = C_CONNECTING;
            sub_finish(x, c, F_FAILED);
        }
    }
}

static int
send_request(struct ctx *x, struct conn *c)
{
    char req[2048];
    int n;
    ssize_t w;

    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s:%u\r\nAccept: text/event-stream\r\n"
                 "Cache-Control: no-cache\r\n\r\n",
                 x->o.paths[c->path_idx], x->o.host, x->o.port);
    if (n <= 0 || (size_t)n >= sizeof(req))
        return -E2BIG;
    w = send(c->fd, req, (size_t)n, MSG_NOSIGNAL);
    if (w != n)
        return w < 0 ? -errno : -EAGAIN;
    return 0;
}

static void
print_ready(struct ctx *x)
{
    printf("{\"phase\":\"ready\",\"opened\":%" PRIu64 ",\"failed\":%" PRIu64
           ",\"establish_s\":%.6f,\"t_rt_us\":%" PRId64 "}\n",
           x->st.opened, x->st.failed, (double)(x->ready_ns - x->t0_ns) / 1e9, x->ready_rt_us);
    fflush(stdout);
}

static void
check_ready(struct ctx *x)
{
    if (x->ready || x->settled < x->o.streams)
        return;
    x->ready = true;
    x->ready_ns = mono_ns();
    x->ready_rt_us = real_us();
    x->st.events_at_ready = x->st.events;
    if (x->o.window_s > 0) {
        int64_t warm_us = (int64_t)(x->o.warmup_s * 1e6);

        x->win_start_us = x->ready_rt_us + warm_us;
        x->win_end_us = x->win_start_us + (int64_t)(x->o.window_s * 1e6);
        x->win_end_ns = x->ready_ns + (warm_us + (int64_t)(x->o.window_s * 1e6)) * 1000;
    }
    print_ready(x);
}

/* Bytes arrived on a stream. */
static void
sub_data(struct ctx *x, struct conn *c, const char *p, size_t n)
{
    while (n > 0) {
        size_t used;
        int rc;

        if (c->state == C_HEAD) {
            const char *end;
            size_t old = c->len, head_len;
            /* Only what can still be head: the body that follows it in
             * the same read (a replay can be far larger) is fed below. */
            size_t take = n < HEAD_MAX_BYTES - old ? n : HEAD_MAX_BYTES - old;

            if (take == 0 || append(c, p, take, HEAD_MAX_BYTES) != 0) {
                sub_finish(x, c, F_FAILED);
                return;
            }
            end = memmem(c->buf, c->len, "\r\n\r\n", 4);
            if (end == NULL) {
                if (take < n) /* a head of HEAD_MAX_BYTES and more */
                    sub_finish(x, c, F_FAILED);
                return;
            }
            head_len = (size_t)(end - c->buf) + 4;
            if (parse_head(c, head_len) != 0) {
                sub_finish(x, c, F_FAILED);
                return;
            }
            x->st.status[c->status / 100 <= 5 ? c->status / 100 : 0]++;
            if (c->status == 204)
                x->st.status_204++;
            if (c->status != 200) {
                sub_finish(x, c, F_HTTP_ERROR);
                return;
            }
            /* what followed the head in this read */
            used = head_len - old;
            p += used;
            n -= used;
            c->len = 0;
            c->state = C_BODY;
            x->st.opened++;
            x->active++;
            x->awaiting_first++;
            sub_settle(x);
            check_ready(x);
            continue;
        }
        rc = feed_body(x, c, p, n, &used);
        if (rc < 0) {
            sub_finish(x, c, F_CUT);
            return;
        }
        if (rc == 1) {
            sub_finish(x, c, F_ENDED);
            return;
        }
        p += used;
        n -= used;
    }
}

static void
sub_event(struct ctx *x, struct conn *c, uint32_t events)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        struct epoll_event ev = {.events = EPOLLIN};

        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP)) != 0) {
            count_connect_error(&x->st, err);
            sub_finish(x, c, F_FAILED);
            return;
        }
        ev.data.u64 = (uint64_t)(c - x->conns);
        if (send_request(x, c) != 0 || epoll_ctl(x->ep, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
            x->st.send_failed++;
            sub_finish(x, c, F_FAILED);
            return;
        }
        c->state = C_HEAD;
        return;
    }
    for (int round = 0; round < 4 && c->state != C_DONE; round++) {
        ssize_t r = recv(c->fd, x->rbuf, READ_BUF, 0);

        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            if (c->state != C_BODY)
                x->st.setup_reset++;
            sub_finish(x, c, c->state == C_BODY ? F_CUT : F_FAILED);
            return;
        }
        if (r == 0) {
            if (c->state != C_BODY) {
                x->st.setup_eof++;
                sub_finish(x, c, F_FAILED);
            } else if (c->body_mode == B_CLOSE)
                sub_finish(x, c, c->got_end ? F_ENDED : F_CLOSED);
            else
                sub_finish(x, c, F_CUT);
            return;
        }
        x->now_rt_us = real_us();
        x->now_ns = mono_ns();
        sub_data(x, c, x->rbuf, (size_t)r);
        if ((size_t)r < READ_BUF)
            return;
    }
}

static void
print_sub_done(struct ctx *x, bool timed_out, bool signalled)
{
    struct stats *st = &x->st;
    int64_t now = mono_ns();
    double window = x->o.window_s, denom = window;
    uint64_t open_now = 0;

    for (unsigned i = 0; i < x->nconns; i++)
        if (x->conns[i].state == C_BODY)
            open_now++;
    if (st->last_window_recv_us != 0 && x->win_start_us != 0) {
        double span = (double)(st->last_window_recv_us - x->win_start_us) / 1e6;

        if (span > denom)
            denom = span;
    }
    printf("{\"phase\":\"done\",\"mode\":\"sub\",\"streams\":%u,\"opened\":%" PRIu64
           ",\"failed\":%" PRIu64 ",\"connect_errors\":%" PRIu64 ",\"http_errors\":%" PRIu64
           ",\"status_2xx\":%" PRIu64 ",\"status_204\":%" PRIu64 ",\"status_4xx\":%" PRIu64
           ",\"status_5xx\":%" PRIu64 ",\"setup_eof\":%" PRIu64 ",\"setup_reset\":%" PRIu64
           ",\"send_failed\":%" PRIu64 ",\"establish_s\":%.6f,\"ready\":%s",
           x->o.streams, st->opened, st->failed, st->connect_errors, st->http_errors, st->status[2],
           st->status_204, st->status[4], st->status[5], st->setup_eof, st->setup_reset,
           st->send_failed, x->ready ? (double)(x->ready_ns - x->t0_ns) / 1e9 : -1.0,
           x->ready ? "true" : "false");
    printf(",\"err_ports\":%" PRIu64 ",\"err_fds\":%" PRIu64 ",\"err_memory\":%" PRIu64
           ",\"err_refused\":%" PRIu64 ",\"err_timedout\":%" PRIu64 ",\"err_other\":%" PRIu64
           ",\"first_events\":%" PRIu64 ",\"no_first\":%" PRIu64 ",",
           st->err_ports, st->err_fds, st->err_memory, st->err_refused, st->err_timedout,
           st->err_other, st->first_events, st->opened - st->first_events);
    hist_print(stdout, "ttfe_us", &st->ttfe);
    putchar(',');
    hist_print(stdout, "ttfe_run_us", &st->ttfe_run);
    printf(",\"events\":%" PRIu64 ",\"window_s\":%.3f,\"window_events\":%" PRIu64
           ",\"delivery_rate\":%.1f,\"gaps\":%" PRIu64 ",\"gap_runs\":%" PRIu64
           ",\"misordered\":%" PRIu64 ",\"server_gaps\":%" PRIu64 ",\"draining_events\":%" PRIu64
           ",\"comments\":%" PRIu64 ",\"ended\":%" PRIu64 ",\"closed\":%" PRIu64 ",\"cut\":%" PRIu64
           ",\"open_at_exit\":%" PRIu64 ",\"caught_up\":%" PRIu64 ",\"events_after_ready\":%" PRIu64
           ",",
           st->events, window, st->window_events,
           denom > 0 ? (double)st->window_events / denom : 0.0, st->gaps, st->gap_runs,
           st->misordered, st->server_gaps, st->draining, st->comments, st->ended, st->closed,
           st->cut, open_now, st->caught_up, x->ready ? st->events - st->events_at_ready : 0);
    hist_print(stdout, "lat_us", &st->lat);
    printf(",\"duration_s\":%.6f,\"cpu_s\":%.3f,\"timed_out\":%s,\"signalled\":%s}\n",
           (double)(now - x->t0_ns) / 1e9, cpu_seconds(), timed_out ? "true" : "false",
           signalled ? "true" : "false");
    fflush(stdout);
}

/* ---- pub mode ---- */

/* Expand the body template for one request into `out`. */
static int
expand_body(struct ctx *x, uint64_t n, unsigned src, char *out, size_t cap, size_t *len)
{
    const char *t = x->o.body;
    size_t k = 0;

    for (; *t != '\0'; t++) {
        int w = 0;

        if (*t != '%' || t[1] == '\0') {
            if (k + 1 >= cap)
                return -E2BIG;
            out[k++] = *t;
            continue;
        }
        t++;
        switch (*t) {
        case 'n':
            w = snprintf(out + k, cap - k, "%" PRIu64, n);
            break;
        case 'c':
            w = snprintf(out + k, cap - k, "%u", src);
            break;
        case 't':
            w = snprintf(out + k, cap - k, "%" PRId64, real_us());
            break;
        case 'p':
            if (k + x->o.payload_bytes >= cap)
                return -E2BIG;
            memcpy(out + k, x->payload, x->o.payload_bytes);
            w = (int)x->o.payload_bytes;
            break;
        default:
            w = snprintf(out + k, cap - k, "%c", *t);
            break;
        }
        if (w < 0 || (size_t)w >= cap - k)
            return -E2BIG;
        k += (size_t)w;
    }
    *len = k;
    return 0;
}

static int
pub_build(struct ctx *x, struct conn *c, uint32_t path_idx, uint64_t n)
{
    size_t cap = 1024 + x->o.payload_bytes + strlen(x->o.body), blen;
    char *body = malloc(cap);
    int hl, rc;

    if (body == NULL)
        return -ENOMEM;
    rc = expand_body(x, n, (unsigned)(c - x->conns), body, cap, &blen);
    if (rc != 0) {
        free(body);
        return rc;
    }
    free(c->req);
    c->req = malloc(cap + 512);
    if (c->req == NULL) {
        free(body);
        return -ENOMEM;
    }
    hl = snprintf(c->req, 512,
                  "POST %s HTTP/1.1\r\nHost: %s:%u\r\nContent-Type: application/json\r\n"
                  "Content-Length: %zu\r\n\r\n",
                  x->o.paths[path_idx], x->o.host, x->o.port, blen);
    if (hl <= 0 || hl >= 512) {
        free(body);
        return -E2BIG;
    }
    memcpy(c->req + hl, body, blen);
    free(body);
    c->req_len = (size_t)hl + blen;
    c->req_off = 0;
    return 0;
}

static int
poll_build(struct ctx *x, struct conn *c)
{
    free(c->req);
    c->req = malloc(1024);
    if (c->req == NULL)
        return -ENOMEM;
    c->req_len = (size_t)snprintf(c->req, 1024, "GET %s HTTP/1.1\r\nHost: %s:%u\r\n\r\n",
                                  x->o.paths[0], x->o.host, x->o.port);
    c->req_off = 0;
    return 0;
}

/* Write what is left of the request. 0 when all went, 1 when the socket is
 * full, a negative errno. */
static int
flush_req(struct ctx *x, struct conn *c)
{
    struct epoll_event ev = {.events = EPOLLIN};

    while (c->req_off < c->req_len) {
        ssize_t w = send(c->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EAGAIN) {
                ev.events = EPOLLIN | EPOLLOUT;
                ev.data.u64 = (uint64_t)(c - x->conns);
                epoll_ctl(x->ep, EPOLL_CTL_MOD, c->fd, &ev);
                return 1;
            }
            return -errno;
        }
        c->req_off += (size_t)w;
    }
    ev.data.u64 = (uint64_t)(c - x->conns);
    epoll_ctl(x->ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

/* The request pace: the time request number `sent` is due. */
static int64_t
pub_due_ns(struct ctx *x)
{
    if (x->o.rate <= 0)
        return x->t0_ns;
    return x->t0_ns + (int64_t)((double)x->ps.sent * 1e9 / x->o.rate);
}

static bool
pub_more(struct ctx *x, int64_t now)
{
    if (x->o.count != 0 && x->ps.sent >= x->o.count)
        return false;
    return now < x->pub_end_ns;
}

/* Start a request on an idle connection if one is due. */
static void
client_send_due(struct ctx *x, int64_t now)
{
    for (unsigned i = 0; i < x->nconns; i++) {
        struct conn *c = &x->conns[i];
        int rc;

        if (c->state != C_IDLE || c->fd < 0)
            continue;
        if (x->o.mode == MODE_PUB) {
            uint32_t pi;

            if (!pub_more(x, now) || pub_due_ns(x) > now)
                return;
            pi = (uint32_t)(x->next_path++ % x->o.npaths);
            rc = pub_build(x, c, pi, ++x->path_seq[(size_t)pi * x->nconns + i]);
            x->ps.sent++;
        } else {
            if (now < x->next_poll_ns)
                return;
            x->next_poll_ns = now + (int64_t)(x->o.interval_us * 1e3);
            rc = poll_build(x, c);
            x->polls++;
        }
        if (rc != 0) {
            x->ps.errors++;
            x->stop = true;
            return;
        }
        reset_response(c);
        c->req_sent_ns = mono_ns();
        c->state = C_HEAD;
        rc = flush_req(x, c);
        if (rc < 0) {
            x->ps.errors++;
            conn_close(x, c, true);
            c->state = C_IDLE;
        }
    }
}

static void
poll_answer(struct ctx *x, struct conn *c)
{
    int64_t now = real_us();

    if (c->status == 200) {
        x->last_ok_us = now;
        if (!x->poll_ready) {
            x->poll_ready = true;
            printf("{\"phase\":\"ready\",\"t_rt_us\":%" PRId64 "}\n", now);
            fflush(stdout);
        }
        return;
    }
    x->first_bad_us = now;
    x->first_bad_req_us = now - (mono_ns() - c->req_sent_ns) / 1000;
    x->first_bad_status = c->status;
    x->stop = true;
}

static void
client_answer(struct ctx *x, struct conn *c)
{
    int64_t lat_us = (mono_ns() - c->req_sent_ns) / 1000;

    if (x->o.mode == MODE_PUB) {
        x->ps.answered++;
        x->ps.status[c->status / 100 <= 5 ? c->status / 100 : 0]++;
        hist_add(&x->ps.lat, lat_us);
    } else {
        poll_answer(x, c);
    }
}

static void
client_reconnect(struct ctx *x, struct conn *c)
{
    conn_close(x, c, true);
    c->state = C_IDLE;
    x->ps.reconnects++;
    if (conn_open(x, c) != 0) {
        if (x->o.mode == MODE_POLL && x->poll_ready) {
            /* the server is gone: the flip was never seen on this socket */
            x->poll_refused = true;
            x->first_bad_us = real_us();
            x->stop = true;
        }
        x->ps.errors++;
    }
}

static void
client_event(struct ctx *x, struct conn *c, uint32_t events)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        struct epoll_event ev = {.events = EPOLLIN};

        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP)) != 0) {
            x->ps.errors++;
            conn_close(x, c, true);
            c->state = C_IDLE;
            if (x->o.mode == MODE_POLL && x->poll_ready) {
                x->poll_refused = true;
                x->first_bad_us = real_us();
                x->stop = true;
            }
            return;
        }
        ev.data.u64 = (uint64_t)(c - x->conns);
        epoll_ctl(x->ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->state = C_IDLE;
        return;
    }
    if ((events & EPOLLOUT) != 0 && c->req_off < c->req_len) {
        if (flush_req(x, c) < 0) {
            client_reconnect(x, c);
            return;
        }
    }
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) == 0)
        return;
    for (;;) {
        ssize_t r = recv(c->fd, x->rbuf, READ_BUF, 0);
        const char *p = x->rbuf;
        size_t n;

        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (r <= 0) {
            if (c->state == C_BODY && c->body_mode == B_CLOSE)
                client_answer(x, c);
            else if (c->state == C_HEAD || c->state == C_BODY)
                x->ps.errors++;
            client_reconnect(x, c);
            return;
        }
        n = (size_t)r;
        while (n > 0) {
            size_t used;
            int rc;

            if (c->state == C_IDLE) {
                n = 0; /* unsolicited bytes: ignore */
                break;
            }
            if (c->state == C_HEAD) {
                const char *end;
                size_t old = c->len, head_len;

                if (append(c, p, n, HEAD_MAX_BYTES) != 0) {
                    client_reconnect(x, c);
                    return;
                }
                end = memmem(c->buf, c->len, "\r\n\r\n", 4);
                if (end == NULL)
                    break;
                head_len = (size_t)(end - c->buf) + 4;
                if (parse_head(c, head_len) != 0) {
                    x->ps.errors++;
                    client_reconnect(x, c);
                    return;
                }
                used = head_len - old;
                p += used;
                n -= used;
                c->len = 0;
                c->state = C_BODY;
                if (c->body_mode == B_LENGTH && c->left == 0) {
                    client_answer(x, c);
                    if (c->conn_close) {
                        client_reconnect(x, c);
                        return;
                    }
                    c->state = C_IDLE;
                }
                continue;
            }
            rc = feed_body(x, c, p, n, &used);
            if (rc < 0) {
                x->ps.errors++;
                client_reconnect(x, c);
                return;
            }
            p += used;
            n -= used;
            if (rc == 1) {
                client_answer(x, c);
                if (c->conn_close) {
                    client_reconnect(x, c);
                    return;
                }
                c->state = C_IDLE;
            }
        }
        if (x->stop)
            return;
    }
}

static void
print_pub_done(struct ctx *x)
{
    double secs = (double)(mono_ns() - x->t0_ns) / 1e9;

    printf("{\"phase\":\"done\",\"mode\":\"pub\",\"sent\":%" PRIu64 ",\"answered\":%" PRIu64
           ",\"status_2xx\":%" PRIu64 ",\"status_4xx\":%" PRIu64 ",\"status_5xx\":%" PRIu64
           ",\"errors\":%" PRIu64 ",\"reconnects\":%" PRIu64 ",\"duration_s\":%.6f"
           ",\"rate\":%.1f,\"ok_rate\":%.1f,",
           x->ps.sent, x->ps.answered, x->ps.status[2], x->ps.status[4], x->ps.status[5],
           x->ps.errors, x->ps.reconnects, secs, secs > 0 ? (double)x->ps.answered / secs : 0.0,
           secs > 0 ? (double)x->ps.status[2] / secs : 0.0);
    hist_print(stdout, "lat_us", &x->ps.lat);
    printf(",\"cpu_s\":%.3f}\n", cpu_seconds());
    fflush(stdout);
}

static void
print_poll_done(struct ctx *x)
{
    printf("{\"phase\":\"done\",\"mode\":\"poll\",\"polls\":%" PRIu64 ",\"last_ok_us\":%" PRId64
           ",\"first_bad_us\":%" PRId64 ",\"first_bad_req_us\":%" PRId64
           ",\"first_bad_status\":%u,\"refused\":%s,\"errors\":%" PRIu64 "}\n",
           x->polls, x->last_ok_us, x->first_bad_us, x->first_bad_req_us, x->first_bad_status,
           x->poll_refused ? "true" : "false", x->ps.errors);
    fflush(stdout);
}

/* ---- the loop ---- */

static int
next_timeout_ms(struct ctx *x, int64_t now, int64_t deadline)
{
    int64_t next = deadline;

    if (x->o.mode == MODE_PUB && pub_more(x, now)) {
        int64_t due = pub_due_ns(x);

        if (due < next)
            next = due;
    }
    if (x->o.mode == MODE_POLL && x->next_poll_ns > now && x->next_poll_ns < next)
        next = x->next_poll_ns;
    if (x->o.mode == MODE_SUB && x->o.rate > 0 && x->next_to_open < x->o.streams &&
        x->in_setup < x->o.conc) {
        int64_t due = sub_due_ns(x);

        if (due < next)
            next = due;
    }
    if (x->win_end_ns != 0 && !x->in_grace && x->win_end_ns < next)
        next = x->win_end_ns;
    if (x->in_grace && x->grace_end_ns < next)
        next = x->grace_end_ns;
    if (next <= now)
        return 0;
    return (int)((next - now + 999999) / 1000000);
}

static bool
sub_done(struct ctx *x, int64_t now)
{
    if (x->settled >= x->o.streams && x->active == 0)
        return true;
    if (x->o.until_first && x->settled >= x->o.streams && x->awaiting_first == 0)
        return true;
    if (x->o.hold || x->win_end_ns == 0)
        return false;
    if (!x->in_grace && now >= x->win_end_ns) {
        x->in_grace = true;
        x->grace_end_ns = now + (int64_t)(x->o.grace_s * 1e9);
    }
    if (!x->in_grace)
        return false;
    return now >= x->grace_end_ns || x->st.caught_up >= x->active;
}

static int
run(struct ctx *x)
{
    struct epoll_event evs[512];
    int64_t deadline = x->t0_ns + (int64_t)(x->o.max_time_s * 1e9);
    bool timed_out = false, signalled = false;

    if (x->o.mode == MODE_SUB) {
        x->start_ns = mono_ns();
        sub_start_more(x);
        check_ready(x);
    } else {
        for (unsigned i = 0; i < x->nconns; i++) {
            if (conn_open(x, &x->conns[i]) != 0)
                x->ps.errors++;
        }
    }
    while (!x->stop) {
        int64_t now = mono_ns();
        int n;

        if (now >= deadline) {
            timed_out = true;
            break;
        }
        if (x->o.mode == MODE_SUB && sub_done(x, now))
            break;
        if (x->o.mode == MODE_PUB) {
            client_send_due(x, now);
            if (!pub_more(x, now)) {
                bool busy = false;

                for (unsigned i = 0; i < x->nconns; i++)
                    busy |= x->conns[i].state == C_HEAD || x->conns[i].state == C_BODY;
                if (!busy || now >= x->pub_end_ns + 2000000000LL)
                    break;
            }
        } else if (x->o.mode == MODE_POLL) {
            client_send_due(x, now);
        }
        n = epoll_wait(x->ep, evs, (int)(sizeof(evs) / sizeof(evs[0])),
                       next_timeout_ms(x, now, deadline));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n && !x->stop; i++) {
            if (evs[i].data.u64 == SIG_TAG) {
                struct signalfd_siginfo si;

                if (read(x->sigfd, &si, sizeof(si)) > 0) {
                    signalled = true;
                    x->stop = true;
                }
                continue;
            }
            if (x->o.mode == MODE_SUB)
                sub_event(x, &x->conns[evs[i].data.u64], evs[i].events);
            else
                client_event(x, &x->conns[evs[i].data.u64], evs[i].events);
        }
        if (x->o.mode == MODE_SUB) {
            sub_start_more(x);
            check_ready(x);
        }
    }
    if (x->o.mode == MODE_SUB) {
        for (unsigned i = 0; i < x->nconns; i++)
            if (x->conns[i].state != C_DONE && x->conns[i].state != C_IDLE)
                sub_finish(x, &x->conns[i], F_LOCAL);
        print_sub_done(x, timed_out, signalled);
    } else if (x->o.mode == MODE_PUB) {
        print_pub_done(x);
    } else {
        print_poll_done(x);
    }
    return 0;
}

/* ---- set-up ---- */

static void
usage(FILE *f)
{
    fputs("usage: sseload sub|pub|poll [options]\n"
          "  --host ADDR           server address (127.0.0.1)\n"
          "  --port N              server port (required)\n"
          "  --path P              request path (repeatable: streams or requests go round-robin)\n"
          "  --paths-file F        request paths, one a line\n"
          "  --max-time S          stop after S seconds in any case (60)\n"
          "  --bind ADDR           bind every socket to this IPv4 source address, port 0\n"
          " sub:\n"
          "  -n N                  streams to open (1)\n"
          "  --conc N              connections being set up at once (256, at most 100000)\n"
          "  --rate R              connects per second, stream i due i/R s after the start\n"
          "                        (0: as fast as --conc lets them)\n"
          "  --until-first         done once every stream has settled and every open one\n"
          "                        has had its first event (per-stream ttfe_us)\n"
          "  --seq id|data|none    check per-stream gaps on the id field or data's \"n\" (id)\n"
          "  --window S            measurement window (0: none)\n"
          "  --warmup S            from all streams up to the start of the window (0)\n"
          "  --grace S             time to catch up after the window (3)\n"
          "  --hold                after ready, hold the streams until a signal or max-time\n"
          " pub:\n"
          "  -c N                  keep-alive connections (1)\n"
          "  --rate R              requests per second in all (0: as fast as possible)\n"
          "  --duration S          how long to send (5)\n"
          "  --count N             at most N requests (0: no cap)\n"
          "  --body T              body template: %n sequence per path and connection, %c the\n"
          "                        connection, %t CLOCK_REALTIME us, %p payload ('x' *\n"
          "                        --payload-bytes) ({\"n\":%n,\"p\":%c,\"sent_us\":%t})\n"
          "  --payload-bytes N     size of %p (0)\n"
          " poll:\n"
          "  --interval-us N       pause between requests (0)\n"
          "Output: JSON lines on stdout (\"ready\", then \"done\").\n",
          f);
}

static int
read_paths_file(struct opts *o, const char *file)
{
    FILE *f = fopen(file, "r");
    char line[4096];

    if (f == NULL)
        return -errno;
    while (fgets(line, sizeof(line), f) != NULL) {
        size_t n = strcspn(line, "\r\n");
        char **np;

        line[n] = '\0';
        if (n == 0)
            continue;
        np = realloc(o->paths, (o->npaths + 1) * sizeof(*np));
        if (np == NULL) {
            fclose(f);
            return -ENOMEM;
        }
        o->paths = np;
        o->paths[o->npaths] = strdup(line);
        if (o->paths[o->npaths] == NULL) {
            fclose(f);
            return -ENOMEM;
        }
        o->npaths++;
    }
    fclose(f);
    return 0;
}

static int
add_path(struct opts *o, const char *p)
{
    char **np = realloc(o->paths, (o->npaths + 1) * sizeof(*np));

    if (np == NULL)
        return -ENOMEM;
    o->paths = np;
    o->paths[o->npaths] = strdup(p);
    if (o->paths[o->npaths] == NULL)
        return -ENOMEM;
    o->npaths++;
    return 0;
}

static int
parse_args(struct opts *o, int argc, char **argv)
{
    *o = (struct opts){
        .host = "127.0.0.1",
        .streams = 1,
        .conc = 256,
        .seq = SEQ_ID,
        .grace_s = 3,
        .max_time_s = 60,
        .duration_s = 5,
        .body = "{\"n\":%n,\"p\":%c,\"sent_us\":%t}",
    };
    if (argc < 2)
        return -EINVAL;
    if (strcmp(argv[1], "sub") == 0)
        o->mode = MODE_SUB;
    else if (strcmp(argv[1], "pub") == 0)
        o->mode = MODE_PUB;
    else if (strcmp(argv[1], "poll") == 0)
        o->mode = MODE_POLL;
    else
        return -EINVAL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t u = 0;
        int rc = 0;

        if (strcmp(a, "--hold") == 0) {
            o->hold = true;
            continue;
        }
        if (strcmp(a, "--until-first") == 0) {
            o->until_first = true;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "sseload: %s needs a value\n", a);
            return -EINVAL;
        }
        i++;
        if (strcmp(a, "--host") == 0) {
            o->host = v;
        } else if (strcmp(a, "--bind") == 0) {
            o->bind_host = v;
        } else if (strcmp(a, "--port") == 0) {
            rc = parse_u64(v, &u);
            o->port = (unsigned)u;
            if (u == 0 || u > 65535)
                rc = -EINVAL;
        } else if (strcmp(a, "--path") == 0) {
            rc = add_path(o, v);
        } else if (strcmp(a, "--paths-file") == 0) {
            rc = read_paths_file(o, v);
        } else if (strcmp(a, "-n") == 0 || strcmp(a, "-c") == 0) {
            rc = parse_u64(v, &u);
            if (u == 0 || u > 1000000)
                rc = -EINVAL;
            o->streams = (unsigned)u;
        } else if (strcmp(a, "--conc") == 0) {
            rc = parse_u64(v, &u);
            if (u == 0 || u > 100000)
                rc = -EINVAL;
            o->conc = (unsigned)u;
        } else if (strcmp(a, "--seq") == 0) {
            if (strcmp(v, "id") == 0)
                o->seq = SEQ_ID;
            else if (strcmp(v, "data") == 0)
                o->seq = SEQ_DATA;
            else if (strcmp(v, "none") == 0)
                o->seq = SEQ_NONE;
            else
                rc = -EINVAL;
        } else if (strcmp(a, "--window") == 0) {
            rc = parse_double(v, &o->window_s);
        } else if (strcmp(a, "--warmup") == 0) {
            rc = parse_double(v, &o->warmup_s);
        } else if (strcmp(a, "--grace") == 0) {
            rc = parse_double(v, &o->grace_s);
        } else if (strcmp(a, "--max-time") == 0) {
            rc = parse_double(v, &o->max_time_s);
        } else if (strcmp(a, "--rate") == 0) {
            rc = parse_double(v, &o->rate);
        } else if (strcmp(a, "--duration") == 0) {
            rc = parse_double(v, &o->duration_s);
        } else if (strcmp(a, "--count") == 0) {
            rc = parse_u64(v, &o->count);
        } else if (strcmp(a, "--body") == 0) {
            o->body = v;
        } else if (strcmp(a, "--payload-bytes") == 0) {
            rc = parse_u64(v, &u);
            if (u > 16 * 1024 * 1024)
                rc = -EINVAL;
            o->payload_bytes = (unsigned)u;
        } else if (strcmp(a, "--interval-us") == 0) {
            rc = parse_double(v, &o->interval_us);
        } else {
            fprintf(stderr, "sseload: unknown option %s\n", a);
            return -EINVAL;
        }
        if (rc != 0) {
            fprintf(stderr, "sseload: invalid value for %s: %s\n", a, v);
            return -EINVAL;
        }
    }
    if (o->port == 0 || o->npaths == 0) {
        fprintf(stderr, "sseload: --port and --path (or --paths-file) are required\n");
        return -EINVAL;
    }
    if (o->mode == MODE_POLL)
        o->streams = 1;
    return 0;
}

static void
raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int
setup(struct ctx *x)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = SIG_TAG};
    sigset_t set;

    x->addr.sin_family = AF_INET;
    x->addr.sin_port = htons((uint16_t)x->o.port);
    if (inet_pton(AF_INET, x->o.host, &x->addr.sin_addr) != 1) {
        fprintf(stderr, "sseload: --host must be an IPv4 address\n");
        return -EINVAL;
    }
    if (x->o.bind_host != NULL) {
        x->bind_addr.sin_family = AF_INET;
        x->bind_addr.sin_port = 0;
        if (inet_pton(AF_INET, x->o.bind_host, &x->bind_addr.sin_addr) != 1) {
            fprintf(stderr, "sseload: --bind must be an IPv4 address\n");
            return -EINVAL;
        }
        x->bind_set = true;
    }
    x->ep = epoll_create1(EPOLL_CLOEXEC);
    if (x->ep < 0)
        return -errno;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    x->sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (x->sigfd < 0 || epoll_ctl(x->ep, EPOLL_CTL_ADD, x->sigfd, &ev) != 0)
        return -errno;
    x->nconns = x->o.streams;
    x->conns = calloc(x->nconns, sizeof(*x->conns));
    x->rbuf = malloc(READ_BUF);
    x->path_seq = calloc(x->o.npaths * x->nconns, sizeof(*x->path_seq));
    x->payload = malloc(x->o.payload_bytes + 1);
    if (x->conns == NULL || x->rbuf == NULL || x->path_seq == NULL || x->payload == NULL)
        return -ENOMEM;
    memset(x->payload, 'x', x->o.payload_bytes);
    for (unsigned i = 0; i < x->nconns; i++)
        x->conns[i].fd = -1;
    x->t0_ns = mono_ns();
    x->pub_end_ns = x->t0_ns + (int64_t)(x->o.duration_s * 1e9);
    return 0;
}

static void
teardown(struct ctx *x)
{
    if (x->conns != NULL) {
        for (unsigned i = 0; i < x->nconns; i++) {
            conn_close(x, &x->conns[i], true);
            free(x->conns[i].buf);
            free(x->conns[i].req);
        }
    }
    free(x->conns);
    free(x->rbuf);
    free(x->path_seq);
    free(x->payload);
    for (size_t i = 0; i < x->o.npaths; i++)
        free(x->o.paths[i]);
    free(x->o.paths);
    if (x->sigfd >= 0)
        close(x->sigfd);
    if (x->ep >= 0)
        close(x->ep);
}

int
main(int argc, char **argv)
{
    struct ctx x = {.ep = -1, .sigfd = -1};
    int rc;

    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (parse_args(&x.o, argc, argv) != 0) {
        usage(stderr);
        teardown(&x);
        return 2;
    }
    raise_nofile();
    rc = setup(&x);
    if (rc != 0) {
        fprintf(stderr, "sseload: set-up failed: %s\n", strerror(-rc));
        teardown(&x);
        return 1;
    }
    rc = run(&x);
    teardown(&x);
    return rc;
}
