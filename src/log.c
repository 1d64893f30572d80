/*
 * Structured logging: each call renders one line (JSON or logfmt-like text)
 * into a fixed 8 KiB buffer on the caller's stack and hands it to the file
 * descriptor with one write(2).
 *
 * Invariants:
 * - A line is always well formed. When the fields do not fit, the string that
 *   overflows is cut at a character boundary, the fields after it are
 *   dropped, and the line ends with truncated=true. Strings are escaped so
 *   that nothing a caller passes (newlines, quotes, control characters,
 *   invalid UTF-8) can forge a field or a second line.
 * - Logging never fails the caller and never waits long: when the descriptor
 *   stays unwritable for WRITE_TIMEOUT_MS the line is dropped, and until a
 *   write succeeds again later lines are dropped without waiting. Dropped and
 *   failed lines are counted. A closed pipe gives EPIPE, not SIGPIPE: the
 *   signal is blocked in the writing thread for the duration of the write, so
 *   the host's disposition is never touched.
 * - errno is the same after ts_log() as before it.
 *
 * Threads: any. The settings are fixed at creation; write_mu serialises the
 * writes so that lines never interleave, even when a write is partial.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define LINE_MAX_BYTES 8192
/* Kept free while fields are added: room for the truncation marker and the
 * end of the line. */
#define LINE_TAIL_BYTES 32
#define WRITE_TIMEOUT_MS 1000

struct ts_log {
    int fd; /* borrowed: the caller closes it after ts_log_free() */
    enum ts_log_format format;
    enum ts_log_level level;  /* lines below it are not written */
    pthread_mutex_t write_mu; /* serialises writes to fd */
    bool stalled;             /* guarded by write_mu: the last write timed out */
    atomic_uint_fast64_t write_errors;
};

/* One line being rendered. len never passes limit. */
struct line {
    char buf[LINE_MAX_BYTES];
    size_t len;
    size_t limit;
    bool cut; /* something did not fit */
};

static const char *const level_names[] = {
    [TS_LOG_DEBUG] = "debug",
    [TS_LOG_INFO] = "info",
    [TS_LOG_WARN] = "warn",
    [TS_LOG_ERROR] = "error",
};

static const char *const level_names_upper[] = {
    [TS_LOG_DEBUG] = "DEBUG",
    [TS_LOG_INFO] = "INFO",
    [TS_LOG_WARN] = "WARN",
    [TS_LOG_ERROR] = "ERROR",
};

static bool
level_valid(enum ts_log_level level)
{
    return (unsigned)level < sizeof(level_names) / sizeof(level_names[0]);
}

const char *
ts_log_level_name(enum ts_log_level level)
{
    return level_valid(level) ? level_names[level] : "unknown";
}

int
ts_log_new(struct ts_log **out, int fd, enum ts_log_format format, enum ts_log_level level)
{
    struct ts_log *log;
    int err;

    if (fd < 0)
        return -EBADF;
    if ((format != TS_LOG_FORMAT_JSON && format != TS_LOG_FORMAT_TEXT) || !level_valid(level))
        return -EINVAL;
    log = calloc(1, sizeof(*log));
    if (log == NULL)
        return -ENOMEM;
    err = pthread_mutex_init(&log->write_mu, NULL);
    if (err != 0)
        goto out_free_log;
    log->fd = fd;
    log->format = format;
    log->level = level;
    atomic_init(&log->write_errors, 0);
    *out = log;
    return 0;

out_free_log:
    free(log);
    return -err;
}

void
ts_log_free(struct ts_log *log)
{
    if (log == NULL)
        return;
    pthread_mutex_destroy(&log->write_mu);
    free(log);
}

bool
ts_log_enabled(const struct ts_log *log, enum ts_log_level level)
{
    return log != NULL && level >= log->level;
}

uint64_t
ts_log_write_errors(const struct ts_log *log)
{
    if (log == NULL)
        return 0;
    /* C11 atomic_load() takes a non-const pointer; reading does not modify. */
    return atomic_load_explicit((atomic_uint_fast64_t *)&log->write_errors, memory_order_relaxed);
}

/* ---- rendering ---------------------------------------------------------- */

/* All of `s` or nothing. */
static bool
put(struct line *l, const char *s, size_t n)
{
    if (n > l->limit - l->len)
        return false;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    return true;
}

static bool
put_str(struct line *l, const char *s)
{
    return put(l, s, strlen(s));
}

/* True when a text value must be quoted to be read back unambiguously. */
static bool
text_needs_quotes(const char *s)
{
    const unsigned char *p;
    size_t n;

    if (*s == '\0')
        return true;
    for (p = (const unsigned char *)s; *p != '\0'; p += n) {
        n = 1;
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
            return true;
        if (*p >= 0x80) {
            n = ts_utf8_sequence(p, strnlen((const char *)p, TS_UTF8_MAX));
            if (n == 0)
                return true;
        }
    }
    return false;
}

/*
 * `s` as a string: in quotes and escaped (JSON rules; invalid UTF-8 bytes
 * become \ufffd), or bare when `quoted` is false (the caller has checked that
 * nothing needs escaping). When the rest does not fit, it is cut at a
 * character boundary, the quote is still closed and the line marked cut.
 * False only when not even the empty string fits.
 */
static bool
put_string(struct line *l, const char *s, bool quoted)
{
    static const char hex[] = "0123456789abcdef";
    size_t tail = quoted ? 1 : 0; /* the closing quote */
    const unsigned char *p;
    size_t used;

    if (quoted) {
        if (l->limit - l->len < 2)
            return false;
        l->buf[l->len++] = '"';
    }
    for (p = (const unsigned char *)s; *p != '\0'; p += used) {
        char esc[6];
        const char *unit = esc;
        size_t n;

        used = 1;
        switch (*p) {
        case '"':
        case '\\':
            esc[0] = '\\';
            esc[1] = (char)*p;
            n = 2;
            break;
        case '\n':
            unit = "\\n";
            n = 2;
            break;
        case '\r':
            unit = "\\r";
            n = 2;
            break;
        case '\t':
            unit = "\\t";
            n = 2;
            break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[*p >> 4];
                esc[5] = hex[*p & 0x0f];
                n = 6;
            } else if (*p < 0x80) {
                unit = (const char *)p;
                n = 1;
            } else {
                n = ts_utf8_sequence(p, strnlen((const char *)p, TS_UTF8_MAX));
                if (n == 0) {
                    unit = "\\ufffd";
                    n = 6;
                } else {
                    unit = (const char *)p;
                    used = n;
                }
            }
        }
        if (n + tail > l->limit - l->len) {
            l->cut = true;
            break;
        }
        memcpy(l->buf + l->len, unit, n);
        l->len += n;
    }
    if (quoted)
        l->buf[l->len++] = '"';
    return true;
}

static bool
put_double(struct line *l, double d, bool json)
{
    char num[32];
    char *c;

    /* JSON has no NaN or infinities. */
    if (json && !isfinite(d))
        return put_str(l, "null");
    snprintf(num, sizeof(num), "%.6g", d);
    /* A host that called setlocale() may have made the decimal point ','. */
    c = strchr(num, ',');
    if (c != NULL)
        *c = '.';
    return put_str(l, num);
}

static bool
put_value(struct line *l, const struct ts_log_field *f, bool json)
{
    char num[24];

    switch (f->type) {
    case TS_LF_STR:
        if (f->v.s == NULL)
            return put_str(l, "null");
        return put_string(l, f->v.s, json || text_needs_quotes(f->v.s));
    case TS_LF_INT:
        snprintf(num, sizeof(num), "%lld", (long long)f->v.i);
        return put_str(l, num);
    case TS_LF_UINT:
        snprintf(num, sizeof(num), "%llu", (unsigned long long)f->v.u);
        return put_str(l, num);
    case TS_LF_DBL:
        return put_double(l, f->v.d, json);
    case TS_LF_BOOL:
        return put_str(l, f->v.b ? "true" : "false");
    case TS_LF_END:
        break;
    }
    return put_str(l, "null");
}

/* One field, whole or not at all (but for a cut string value). False when
 * the line is full and no more fields should be tried. */
static bool
put_field(struct line *l, const struct ts_log_field *f, bool json)
{
    const char *key = f->key != NULL ? f->key : "";
    size_t mark = l->len;
    bool ok;

    if (json)
        ok = put(l, ",", 1) && put_string(l, key, true) && put(l, ":", 1);
    else
        ok = put(l, " ", 1) && put_string(l, key, text_needs_quotes(key)) && put(l, "=", 1);
    /* A cut key is not worth a value. */
    ok = ok && !l->cut && put_value(l, f, json);
    if (!ok) {
        l->len = mark;
        l->cut = true;
    }
    return !l->cut;
}

/* "2026-11-24T16:24:53.123Z" */
static void
format_timestamp(char out[TS_TIME_LEN])
{
    struct timespec now;

    clock_gettime(CLOCK_REALTIME, &now);
    ts_format_time((int64_t)now.tv_sec * 1000000000 + now.tv_nsec, out);
}

static void
render(struct line *l, const struct ts_log *log, enum ts_log_level level, const char *msg,
       va_list ap)
{
    bool json = log->format == TS_LOG_FORMAT_JSON;
    char ts[TS_TIME_LEN];
    bool more;

    l->len = 0;
    l->limit = sizeof(l->buf) - LINE_TAIL_BYTES;
    l->cut = false;
    if (msg == NULL)
        msg = "";
    format_timestamp(ts);
    /* The fixed head always fits: the timestamp and level are short. */
    if (json) {
        put_str(l, "{\"ts\":\"");
        put_str(l, ts);
        put_str(l, "\",\"level\":\"");
        put_str(l, level_names[level]);
        put_str(l, "\",\"msg\":");
        put_string(l, msg, true);
    } else {
        put_str(l, ts);
        put_str(l, " ");
        put_str(l, level_names_upper[level]);
        put_str(l, " ");
        put_string(l, msg, text_needs_quotes(msg));
    }
    more = !l->cut;
    while (more) {
        struct ts_log_field f = va_arg(ap, struct ts_log_field);

        if (f.type == TS_LF_END)
            break;
        more = put_field(l, &f, json);
    }
    l->limit = sizeof(l->buf);
    if (l->cut)
        put_str(l, json ? ",\"truncated\":true" : " truncated=true");
    if (json)
        put_str(l, "}");
    put_str(l, "\n");
}

/* ---- writing ------------------------------------------------------------ */

static int64_t
monotonic_ms(void)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Wait until fd takes bytes, at most WRITE_TIMEOUT_MS, or not at all while
 * the descriptor is known to be stalled. Caller holds write_mu. */
static bool
wait_writable(struct ts_log *log)
{
    int64_t deadline = monotonic_ms() + (log->stalled ? 0 : WRITE_TIMEOUT_MS);
    struct pollfd pfd = {.fd = log->fd, .events = POLLOUT};

    for (;;) {
        int64_t left = deadline - monotonic_ms();
        int n = poll(&pfd, 1, left > 0 ? (int)left : 0);

        if (n > 0)
            return true; /* writable, or an error write(2) will report */
        if (n == 0) {
            log->stalled = true;
            return false;
        }
        if (errno != EINTR)
            return true;
    }
}

static void
block_sigpipe(sigset_t *old, bool *was_pending)
{
    sigset_t set, pending;

    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, old);
    sigpending(&pending);
    *was_pending = sigismember(&pending, SIGPIPE) == 1;
}

/* Consume the SIGPIPE our own write raised (one that was pending before
 * belongs to someone else and stays), then restore the thread's mask. */
static void
restore_sigpipe(const sigset_t *old, bool was_pending, bool got_epipe)
{
    if (got_epipe && !was_pending) {
        static const struct timespec zero = {0, 0};
        sigset_t set;

        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, old, NULL);
}

static void
write_line(struct ts_log *log, const char *p, size_t n)
{
    bool failed = false;
    bool epipe = false;
    bool was_pending;
    sigset_t old;

    pthread_mutex_lock(&log->write_mu);
    block_sigpipe(&old, &was_pending);
    while (n > 0) {
        ssize_t w;

        if (!wait_writable(log)) {
            failed = true;
            break;
        }
        w = write(log->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            epipe = w < 0 && errno == EPIPE;
            failed = true;
            break;
        }
        p += w;
        n -= (size_t)w;
    }
    if (!failed)
        log->stalled = false;
    restore_sigpipe(&old, was_pending, epipe);
    pthread_mutex_unlock(&log->write_mu);
    if (failed)
        atomic_fetch_add_explicit(&log->write_errors, 1, memory_order_relaxed);
}

void
ts_log(struct ts_log *log, enum ts_log_level level, const char *msg, ...)
{
    struct line l;
    va_list ap;
    int saved_errno;

    if (!ts_log_enabled(log, level) || !level_valid(level))
        return;
    saved_errno = errno;
    va_start(ap, msg);
    render(&l, log, level, msg, ap);
    va_end(ap);
    write_line(log, l.buf, l.len);
    errno = saved_errno;
}
