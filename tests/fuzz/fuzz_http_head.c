/*
 * Request heads through ts_http_head_scan() and ts_http_head_parse()
 * (src/http_head.h). The scanner runs over the input at once, then again with
 * the input delivered in two reads split at every position (every k up to
 * SPLIT_ALL, a stride beyond) and, for inputs up to BYTEWISE_MAX, one byte
 * per read: each must give the verdict, the head length and the positions of
 * the one-shot run, since a reader cannot choose where the network splits a
 * head. The first read of a split gets a buffer of exactly k bytes, so that
 * ASan catches a look past what has arrived. A complete head is parsed and
 * the result checked: statuses and sentences, every pointer inside the head,
 * the field limits, no CR, LF or NUL in a name or value, values trimmed,
 * chunked only in HTTP/1.1, the path's shape, and each path segment decoded
 * by ts_http_segment_decode() to no control byte.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_head.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SPLIT_ALL 512     /* split at every k up to this */
#define SPLIT_STRIDE 61   /* and then at every 61st */
#define BYTEWISE_MAX 2048 /* one byte per read up to this size */

static const struct ts_http_limits limits = {.line_max = 2048, .head_max = 8192};

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

struct verdict {
    int rc; /* head length, 0 (incomplete) or -status */
    struct ts_http_scan sc;
};

static void
check_scan_answer(int rc, const char *why)
{
    if (rc < 0) {
        CHECK(rc == -400 || rc == -414 || rc == -431);
        CHECK(why != NULL && why[0] != '\0');
    }
}

static void
same_verdict(const struct verdict *want, const struct verdict *got)
{
    CHECK(got->rc == want->rc);
    if (want->rc > 0) {
        /* ts_http_head_parse() reads these: they must not depend on the reads. */
        CHECK(got->sc.line_end == want->sc.line_end);
        CHECK(got->sc.start == want->sc.start);
        CHECK(got->sc.empties == want->sc.empties);
    }
}

/* The first k bytes in a buffer of exactly k bytes, then the whole input. */
static void
scan_split(const uint8_t *data, size_t size, size_t k, const struct verdict *want)
{
    struct verdict v = {0};
    const char *why = NULL;
    char *first;

    first = malloc(k > 0 ? k : 1);
    if (first == NULL)
        return;
    memcpy(first, data, k);
    v.rc = ts_http_head_scan(&v.sc, first, k, &limits, &why);
    free(first);
    check_scan_answer(v.rc, why);
    if (v.rc == 0) {
        CHECK(v.sc.scanned <= k);
        v.rc = ts_http_head_scan(&v.sc, (const char *)data, size, &limits, &why);
        check_scan_answer(v.rc, why);
    }
    same_verdict(want, &v);
}

static void
scan_bytewise(const uint8_t *data, size_t size, const struct verdict *want)
{
    struct verdict v = {0};
    const char *why = NULL;
    size_t len = 0;

    do {
        v.rc = ts_http_head_scan(&v.sc, (const char *)data, len, &limits, &why);
        check_scan_answer(v.rc, why);
        CHECK(v.rc <= 0 || (size_t)v.rc <= len);
    } while (v.rc == 0 && len++ < size);
    same_verdict(want, &v);
}

/* Is `s` inside buf[0..len)? An absent string (NULL, 0) is. */
static bool
inside(struct ts_http_str s, const char *buf, size_t len)
{
    uintptr_t b = (uintptr_t)buf, p = (uintptr_t)s.p;

    if (s.p == NULL)
        return s.len == 0;
    return p >= b && p <= b + len && s.len <= b + len - p;
}

static bool
has_byte(struct ts_http_str s, unsigned char c)
{
    return s.len > 0 && memchr(s.p, c, s.len) != NULL;
}

static bool
is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static void
check_segments(struct ts_http_str path)
{
    size_t i = 0;

    while (i <= path.len) {
        const char *slash = memchr(path.p + i, '/', path.len - i);
        size_t end = slash != NULL ? (size_t)(slash - path.p) : path.len;
        struct ts_http_str seg = {path.p + i, end - i};
        /* Room for exactly seg.len bytes, as the contract says. */
        char *out = malloc(seg.len > 0 ? seg.len : 1);
        long n;

        if (out == NULL)
            return;
        n = ts_http_segment_decode(seg, out);
        CHECK(n == -EINVAL || (n >= 0 && (size_t)n <= seg.len));
        for (long j = 0; j < n; j++) {
            unsigned char c = (unsigned char)out[j];

            CHECK(c >= 0x20 && c != 0x7f);
        }
        free(out);
        i = end + 1;
    }
}

static void
check_head(const struct ts_http_head *h, const char *buf, size_t head_len)
{
    static const char version[] = "HTTP/1.";

    CHECK(h->head_len == head_len);
    CHECK(inside(h->method, buf, head_len) && h->method.len > 0);
    CHECK(inside(h->target, buf, head_len) && h->target.len > 0);
    CHECK(inside(h->query, buf, head_len));
    CHECK(h->has_query || (h->query.p == NULL && h->query.len == 0));
    CHECK(inside(h->authority, buf, head_len));
    CHECK(h->version_minor >= 0 && h->version_minor <= 9);
    /* The request line is METHOD SP TARGET SP HTTP/1.x, as the pointers say. */
    CHECK(h->target.p == h->method.p + h->method.len + 1 && h->method.p[h->method.len] == ' ');
    CHECK(h->target.p[h->target.len] == ' ' &&
          memcmp(h->target.p + h->target.len + 1, version, sizeof(version) - 1) == 0);

    /* The absolute form without a path ("http://host", "http://host?q")
     * gets the parser's own static "/": the one pointer that does not point
     * into the buffer, which the header's "zero-copy" does not mention. */
    if (!(h->form == TS_HTTP_ABSOLUTE_FORM && h->path.len == 1 && h->path.p[0] == '/'))
        CHECK(inside(h->path, buf, head_len));
    CHECK(h->path.len > 0);
    if (h->form == TS_HTTP_ASTERISK_FORM)
        CHECK(h->path.len == 1 && h->path.p[0] == '*');
    else
        CHECK(h->path.p[0] == '/');
    if (h->form == TS_HTTP_ORIGIN_FORM)
        CHECK(h->path.p == h->target.p);
    CHECK(!has_byte(h->path, '?'));
    if (h->form != TS_HTTP_ASTERISK_FORM)
        check_segments(h->path);

    CHECK(h->nfields <= TS_HTTP_FIELDS_MAX);
    for (size_t i = 0; i < h->nfields; i++) {
        const struct ts_http_field *f = &h->fields[i];

        CHECK(inside(f->name, buf, head_len) && inside(f->value, buf, head_len));
        CHECK(f->name.len > 0 && f->name.p[f->name.len] == ':');
        CHECK(!has_byte(f->name, '\r') && !has_byte(f->name, '\n') && !has_byte(f->name, '\0'));
        CHECK(!has_byte(f->name, ' ') && !has_byte(f->name, '\t'));
        CHECK(!has_byte(f->value, '\r') && !has_byte(f->value, '\n') && !has_byte(f->value, '\0'));
        if (f->value.len > 0)
            CHECK(!is_blank(f->value.p[0]) && !is_blank(f->value.p[f->value.len - 1]));
    }

    switch (h->framing) {
    case TS_HTTP_NO_BODY:
        CHECK(h->content_length == 0);
        CHECK(ts_http_head_field(h, "content-length") == NULL);
        CHECK(ts_http_head_field(h, "transfer-encoding") == NULL);
        break;
    case TS_HTTP_LENGTH:
        CHECK(ts_http_head_field(h, "content-length") != NULL);
        CHECK(ts_http_head_field(h, "transfer-encoding") == NULL);
        break;
    case TS_HTTP_CHUNKED:
        CHECK(h->version_minor >= 1);
        CHECK(ts_http_head_field(h, "content-length") == NULL);
        break;
    default:
        CHECK(0);
    }
    if (h->version_minor >= 1)
        CHECK(ts_http_head_field(h, "host") != NULL);
    if (h->version_minor == 0 && ts_http_head_field(h, "connection") == NULL)
        CHECK(!h->keep_alive);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct verdict want = {0};
    struct ts_http_head *h;
    const char *why = NULL;
    int rc;

    want.rc = ts_http_head_scan(&want.sc, (const char *)data, size, &limits, &why);
    check_scan_answer(want.rc, why);
    CHECK(want.rc <= 0 || (size_t)want.rc <= size);
    CHECK(want.rc <= 0 || (size_t)want.rc <= limits.head_max);

    for (size_t k = 0; k <= size; k += k < SPLIT_ALL ? 1 : SPLIT_STRIDE)
        scan_split(data, size, k, &want);
    if (size <= BYTEWISE_MAX)
        scan_bytewise(data, size, &want);

    if (want.rc <= 0)
        return 0;
    h = malloc(sizeof(*h));
    if (h == NULL)
        return 0;
    why = NULL;
    rc = ts_http_head_parse(h, &want.sc, (const char *)data, (size_t)want.rc, &limits, &why);
    if (rc != 0) {
        CHECK(rc == -400 || rc == -414 || rc == -417 || rc == -431 || rc == -501 || rc == -505);
        CHECK(why != NULL && why[0] != '\0');
    } else {
        check_head(h, (const char *)data, (size_t)want.rc);
    }
    free(h);
    return 0;
}
