/*
 * The event-stream parser of sse_parse.h. Bytes are split into lines at
 * CR, LF or CRLF (a CR that ends one feed and an LF that starts the next
 * are one line end: cr_pending); each complete line is interpreted at once,
 * so nothing but the current line and the current frame is ever held.
 */
#include "sse_parse.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char BOM[] = "\xef\xbb\xbf";

static int
buf_reserve(struct tsc_buf *b, size_t extra, size_t max)
{
    size_t want, cap;
    char *p;

    if (extra > max || b->len > max - extra)
        return -E2BIG;
    want = b->len + extra + 1;
    if (want <= b->cap)
        return 0;
    cap = b->cap != 0 ? b->cap : 64;
    while (cap < want)
        cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int
buf_append(struct tsc_buf *b, const char *s, size_t n, size_t max)
{
    int err = buf_reserve(b, n, max);

    if (err != 0)
        return err;
    if (n != 0)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int
buf_set(struct tsc_buf *b, const char *s, size_t n, size_t max)
{
    b->len = 0;
    return buf_append(b, s, n, max);
}

/* The string of `b`, "" when nothing was ever stored. */
static const char *
buf_str(const struct tsc_buf *b)
{
    return b->p != NULL ? b->p : "";
}

static void
buf_free(struct tsc_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void
tsc_sse_parser_init(struct tsc_sse_parser *p, tsc_sse_event_cb *cb, void *arg, size_t line_max)
{
    memset(p, 0, sizeof(*p));
    p->cb = cb;
    p->arg = arg;
    p->line_max = line_max;
    p->retry_ms = -1;
}

static void
reset_frame(struct tsc_sse_parser *p)
{
    p->data.len = 0;
    p->type.len = 0;
    p->frame_id.len = 0;
    p->has_data = false;
    p->has_frame_id = false;
}

void
tsc_sse_parser_reset(struct tsc_sse_parser *p)
{
    reset_frame(p);
    p->line.len = 0;
    p->bom_checked = false;
    p->cr_pending = false;
}

void
tsc_sse_parser_dispose(struct tsc_sse_parser *p)
{
    buf_free(&p->line);
    buf_free(&p->data);
    buf_free(&p->type);
    buf_free(&p->frame_id);
    buf_free(&p->last_id);
}

static int
dispatch(struct tsc_sse_parser *p)
{
    struct tsc_sse_event ev;
    int rc;

    /* The last event ID moves at every blank line that follows an id
     * field, whether or not an event is dispatched. */
    if (p->has_frame_id) {
        rc = buf_set(&p->last_id, buf_str(&p->frame_id), p->frame_id.len, p->line_max);
        if (rc != 0)
            return rc;
    }
    if (!p->has_data) {
        reset_frame(p);
        return 0;
    }
    ev.type = p->type.len != 0 ? p->type.p : "message";
    ev.data = buf_str(&p->data);
    ev.data_len = p->data.len;
    ev.id = p->has_frame_id ? buf_str(&p->frame_id) : NULL;
    ev.last_id = buf_str(&p->last_id);
    rc = p->cb(p->arg, &ev);
    reset_frame(p);
    return rc;
}

static bool
all_digits(const char *s, size_t n)
{
    size_t i;

    if (n == 0)
        return false;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
    }
    return true;
}

static int
field(struct tsc_sse_parser *p, const char *name, size_t name_len, const char *value,
      size_t value_len)
{
    int rc;

#define IS(lit) (name_len == sizeof(lit) - 1 && memcmp(name, lit, name_len) == 0)
    if (IS("event"))
        return buf_set(&p->type, value, value_len, p->line_max);
    if (IS("data")) {
        if (p->has_data) {
            rc = buf_append(&p->data, "\n", 1, p->line_max);
            if (rc != 0)
                return rc;
        }
        p->has_data = true;
        return buf_append(&p->data, value, value_len, p->line_max);
    }
    if (IS("id")) {
        if (memchr(value, '\0', value_len) != NULL)
            return 0;
        p->has_frame_id = true;
        return buf_set(&p->frame_id, value, value_len, p->line_max);
    }
    if (IS("retry")) {
        int64_t ms = 0;
        size_t i;

        if (!all_digits(value, value_len))
            return 0;
        for (i = 0; i < value_len; i++) {
            if (ms > (INT64_MAX - 9) / 10)
                return 0; /* absurdly long: keep the previous one */
            ms = ms * 10 + (value[i] - '0');
        }
        p->retry_ms = ms;
        return 0;
    }
#undef IS
    return 0; /* other fields are ignored */
}

static int
line(struct tsc_sse_parser *p)
{
    const char *s = buf_str(&p->line);
    size_t n = p->line.len;
    const char *colon;
    size_t name_len;

    if (n == 0)
        return dispatch(p);
    if (s[0] == ':') {
        p->comments++;
        return 0;
    }
    colon = memchr(s, ':', n);
    if (colon == NULL)
        return field(p, s, n, "", 0);
    name_len = (size_t)(colon - s);
    s = colon + 1;
    n -= name_len + 1;
    if (n != 0 && s[0] == ' ') {
        s++;
        n--;
    }
    return field(p, buf_str(&p->line), name_len, s, n);
}

/* Drop a byte order mark at the very start of the stream; it may arrive
 * over several feeds, so the first line's bytes are looked at once there
 * are three of them or the line ends. */
static void
check_bom(struct tsc_sse_parser *p, bool line_ended)
{
    if (p->bom_checked || (p->line.len < 3 && !line_ended))
        return;
    if (p->line.len >= 3 && memcmp(p->line.p, BOM, 3) == 0) {
        memmove(p->line.p, p->line.p + 3, p->line.len - 3 + 1);
        p->line.len -= 3;
    }
    p->bom_checked = true;
}

int
tsc_sse_parser_feed(struct tsc_sse_parser *p, const char *buf, size_t len)
{
    size_t i = 0;
    int rc;

    if (len != 0 && p->cr_pending && buf[0] == '\n')
        i = 1;
    p->cr_pending = false;
    while (i < len) {
        size_t start = i;

        while (i < len && buf[i] != '\r' && buf[i] != '\n')
            i++;
        rc = buf_append(&p->line, buf + start, i - start, p->line_max);
        if (rc != 0)
            return rc;
        if (i == len) {
            check_bom(p, false);
            break;
        }
        /* A line end: CR, LF, or CR LF. */
        if (buf[i] == '\r') {
            if (i + 1 < len && buf[i + 1] == '\n')
                i++;
            else if (i + 1 == len)
                p->cr_pending = true;
        }
        i++;
        check_bom(p, true);
        rc = line(p);
        p->line.len = 0;
        if (p->line.p != NULL)
            p->line.p[0] = '\0';
        if (rc != 0)
            return rc;
    }
    return 0;
}
