/*
 * Small helpers shared by several modules: constant-time comparison of
 * secrets, the number parsers behind the configuration (durations, sizes,
 * bounded integers), random task ids, the UTF-8 validator, a byte buffer
 * with a fixed cap, and ts_strerror().
 *
 * Every parser here is strict on purpose: digits only, no sign, no spaces, no
 * strtoul() leniency (which accepts "-1" as a huge number and skips leading
 * blanks). A value an operator mistyped is rejected, never guessed at.
 *
 * Nothing here keeps state; every function is safe from any thread.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>

#include "taskstream.h"
#include "util.h"

const char *
ts_strerror(int err)
{
    const char *text;

    if (err == 0)
        return "Success";
    if (err == INT_MIN)
        return "Unknown error";
    /* strerrordesc_np() returns static text, unlike strerror(), which may
     * format an "Unknown error N" into a buffer shared between threads. */
    text = strerrordesc_np(err < 0 ? -err : err);
    return text != NULL ? text : "Unknown error";
}

bool
ts_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    const volatile unsigned char *pa = a;
    const volatile unsigned char *pb = b;
    size_t n = alen > blen ? alen : blen;
    unsigned diff = alen != blen;
    size_t i;

    /* Walk the longer length whatever happens, so that the time depends on
     * the lengths only; the shorter side reads as zeros past its end. */
    for (i = 0; i < n; i++) {
        unsigned char x = i < alen ? pa[i] : 0;
        unsigned char y = i < blen ? pb[i] : 0;

        diff |= (unsigned)(x ^ y);
    }
    return diff == 0;
}

/* Leading decimal digits of `s` into `out`; `end` gets the first non-digit.
 * At least one digit; overflow is an error. */
static int
parse_digits(const char *s, uint64_t *out, const char **end)
{
    uint64_t n = 0;
    const char *p;

    if (s == NULL || *s < '0' || *s > '9')
        return -EINVAL;
    for (p = s; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');

        if (n > (UINT64_MAX - d) / 10)
            return -EINVAL;
        n = n * 10 + d;
    }
    *out = n;
    *end = p;
    return 0;
}

struct unit {
    const char *suffix;
    uint64_t factor;
};

/* Digits followed by exactly one of `units` (whose suffix may be ""). */
static int
parse_with_unit(const char *s, const struct unit *units, size_t nunits, uint64_t max, uint64_t *out)
{
    const char *end;
    uint64_t n;
    size_t i;

    if (parse_digits(s, &n, &end) != 0)
        return -EINVAL;
    for (i = 0; i < nunits; i++) {
        if (strcmp(end, units[i].suffix) != 0)
            continue;
        if (n > max / units[i].factor)
            return -EINVAL;
        *out = n * units[i].factor;
        return 0;
    }
    return -EINVAL;
}

int
ts_parse_duration_ms(const char *s, int64_t *out_ms)
{
    static const struct unit units[] = {
        {"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 60 * 60 * 1000},
    };
    uint64_t ms;

    if (parse_with_unit(s, units, TS_ARRAY_SIZE(units), INT64_MAX, &ms) != 0)
        return -EINVAL;
    *out_ms = (int64_t)ms;
    return 0;
}

int
ts_parse_size(const char *s, uint64_t *out)
{
    static const struct unit units[] = {
        {"", 1},
        {"k", UINT64_C(1) << 10},
        {"K", UINT64_C(1) << 10},
        {"M", UINT64_C(1) << 20},
        {"G", UINT64_C(1) << 30},
    };

    return parse_with_unit(s, units, TS_ARRAY_SIZE(units), UINT64_MAX, out);
}

int
ts_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    const char *end;
    uint64_t n;

    if (parse_digits(s, &n, &end) != 0 || *end != '\0' || n < min || n > max)
        return -EINVAL;
    *out = n;
    return 0;
}

int
ts_random_id(char out[33])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[16];
    size_t got = 0;
    size_t i;

    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        got += (size_t)n;
    }
    for (i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 0x0f];
    }
    out[32] = '\0';
    return 0;
}

bool
ts_is_task_id(const char *s)
{
    size_t i;

    if (s == NULL)
        return false;
    for (i = 0; i < 32; i++) {
        bool digit = s[i] >= '0' && s[i] <= '9';
        bool lower = s[i] >= 'a' && s[i] <= 'f';

        if (!digit && !lower)
            return false;
    }
    return s[32] == '\0';
}

size_t
ts_utf8_sequence(const unsigned char *s, size_t left)
{
    uint32_t cp;
    size_t n;

    if (left == 0)
        return 0;
    if (s[0] < 0x80)
        return 1;
    /* C0 and C1 could only start overlong forms of ASCII. */
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        n = 2;
        cp = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        n = 3;
        cp = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        n = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n > left)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

void
ts_buf_init(struct ts_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->alloc = 0;
    b->max = max;
}

void
ts_buf_dispose(struct ts_buf *b)
{
    free(b->data);
    ts_buf_init(b, b->max);
}

/* Make room for `n` more bytes and the NUL. Leaves the contents alone. */
static int
buf_reserve(struct ts_buf *b, size_t n)
{
    size_t need;
    size_t alloc;
    char *p;

    if (n > b->max - b->len || b->len + n == SIZE_MAX)
        return -E2BIG;
    need = b->len + n + 1;
    if (need <= b->alloc)
        return 0;
    alloc = b->alloc != 0 ? b->alloc : 64;
    while (alloc < need)
        alloc = alloc > SIZE_MAX / 2 ? need : alloc * 2;
    /* Doubling must not take more memory than the cap can ever use. */
    if (b->max < SIZE_MAX && alloc > b->max + 1)
        alloc = b->max + 1;
    p = realloc(b->data, alloc);
    if (p == NULL)
        return -ENOMEM;
    b->data = p;
    b->alloc = alloc;
    return 0;
}

int
ts_buf_append(struct ts_buf *b, const void *p, size_t n)
{
    int err;

    if (n == 0)
        return 0;
    err = buf_reserve(b, n);
    if (err != 0)
        return err;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int
ts_buf_printf(struct ts_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    int err;

    /* First pass measures, so that a line over the cap leaves no half of it
     * behind. */
    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if (n == 0)
        return 0;
    err = buf_reserve(b, (size_t)n);
    if (err != 0)
        return err;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

char *
ts_buf_take(struct ts_buf *b, size_t *len)
{
    char *p = b->data;

    if (len != NULL)
        *len = b->len;
    /* An empty buffer still hands out a string, so that NULL always means
     * out of memory to the caller. */
    if (p == NULL)
        p = calloc(1, 1);
    ts_buf_init(b, b->max);
    return p;
}

const char *
ts_format_time(int64_t wall_ns, char buf[TS_TIME_LEN])
{
    time_t secs = (time_t)(wall_ns / 1000000000);
    struct tm tm;
    size_t n;

    if (gmtime_r(&secs, &tm) == NULL) {
        snprintf(buf, TS_TIME_LEN, "invalid time");
        return buf;
    }
    n = strftime(buf, TS_TIME_LEN, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, TS_TIME_LEN - n, ".%03dZ", (int)(wall_ns % 1000000000 / 1000000));
    return buf;
}

void
ts_unknown_begin(char *err, size_t errlen, const char *what, const char *name)
{
    snprintf(err, errlen, "unknown %s \"%.64s\" (allowed: ", what, name);
}

void
ts_unknown_add(char *err, size_t errlen, const char *allowed)
{
    size_t used = strlen(err);

    if (used + 1 < errlen)
        snprintf(err + used, errlen - used, "%s%s", err[used - 1] == ' ' ? "" : ", ", allowed);
}

void
ts_unknown_end(char *err, size_t errlen)
{
    size_t used = strlen(err);

    if (used + 1 < errlen)
        snprintf(err + used, errlen - used, "%s)", err[used - 1] == ' ' ? "none" : "");
}
