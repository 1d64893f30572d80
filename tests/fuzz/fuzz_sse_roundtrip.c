/*
 * SSE encoding round trip: an event built by ts_event_new() and read back by
 * a parser written from the WHATWG HTML "event stream interpretation" rules
 * must give exactly one event with the same id, type and data. And
 * ts_event_new() must refuse exactly what cannot round-trip: an invalid name,
 * or a CR, LF or NUL in the data.
 *
 * Input: 8 bytes of id (little endian; 0 leaves the id line out), the name
 * up to the first NUL, the data after it.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event_log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct parsed {
    unsigned dispatched;
    char type[128];
    char id[32];
    bool id_seen;
    char *data;  /* the data buffer */
    size_t len;  /* bytes in it */
    char *event; /* the data of the first dispatched event */
    size_t event_len;
    char event_type[128];
};

static void
bounded_copy(char *dst, size_t dstlen, const char *src, size_t n)
{
    if (n >= dstlen)
        abort(); /* longer than any name or id the encoder may write */
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void
field(struct parsed *p, const char *line, size_t n)
{
    const char *colon = memchr(line, ':', n);
    size_t name_len = colon ? (size_t)(colon - line) : n;
    const char *value = colon ? colon + 1 : line + n;
    size_t value_len = colon ? n - name_len - 1 : 0;

    if (value_len > 0 && value[0] == ' ') {
        value++;
        value_len--;
    }
    if (name_len == 5 && memcmp(line, "event", 5) == 0) {
        bounded_copy(p->type, sizeof(p->type), value, value_len);
    } else if (name_len == 4 && memcmp(line, "data", 4) == 0) {
        p->data = realloc(p->data, p->len + value_len + 1);
        if (p->data == NULL)
            abort();
        memcpy(p->data + p->len, value, value_len);
        p->len += value_len;
        p->data[p->len++] = '\n';
    } else if (name_len == 2 && memcmp(line, "id", 2) == 0) {
        if (memchr(value, '\0', value_len) == NULL) {
            bounded_copy(p->id, sizeof(p->id), value, value_len);
            p->id_seen = true;
        }
    }
}

static void
dispatch(struct parsed *p)
{
    if (p->len > 0) {
        p->dispatched++;
        if (p->dispatched == 1) {
            p->event = p->data;
            p->event_len = p->len - 1; /* without the last LF */
            memcpy(p->event_type, p->type, sizeof(p->type));
            p->data = NULL;
        }
    }
    free(p->data);
    p->data = NULL;
    p->len = 0;
    p->type[0] = '\0';
}

static void
parse(struct parsed *p, const char *s, size_t n)
{
    size_t start = 0, i = 0;

    while (i < n) {
        if (s[i] != '\r' && s[i] != '\n') {
            i++;
            continue;
        }
        if (i == start)
            dispatch(p);
        else if (s[start] != ':')
            field(p, s + start, i - start);
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
            i++;
        start = ++i;
    }
    /* Bytes after the last line end are an incomplete line: ignored. */
    free(p->data);
    p->data = NULL;
}

static bool
name_ok(const char *name)
{
    size_t n = strlen(name);

    if (n == 0 || n > TS_EVENT_NAME_MAX)
        return false;
    return strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct parsed p = {0};
    char name[TS_EVENT_NAME_MAX + 16];
    const uint8_t *nul, *payload;
    struct ts_event *ev;
    char idtext[32];
    size_t name_len, payload_len;
    uint64_t id = 0;
    bool expect_ok;

    if (size < 8)
        return 0;
    for (int i = 0; i < 8; i++)
        id |= (uint64_t)data[i] << (8 * i);
    data += 8;
    size -= 8;
    nul = memchr(data, '\0', size);
    name_len = nul ? (size_t)(nul - data) : size;
    if (name_len >= sizeof(name))
        return 0;
    memcpy(name, data, name_len);
    name[name_len] = '\0';
    payload = nul ? nul + 1 : data + size;
    payload_len = nul ? size - name_len - 1 : 0;

    expect_ok = name_ok(name) && memchr(payload, '\r', payload_len) == NULL &&
                memchr(payload, '\n', payload_len) == NULL &&
                memchr(payload, '\0', payload_len) == NULL;
    ev = ts_event_new(id, name, (const char *)payload, payload_len);
    if ((ev != NULL) != expect_ok)
        abort();
    if (ev == NULL)
        return 0;

    if (ev->id != id || ev->frame + ev->len + 2 != ev->chunk + ev->chunk_len || ev->len < 2 ||
        memcmp(ev->frame + ev->len - 2, "\n\n", 2) != 0)
        abort();
    parse(&p, ev->frame, ev->len);
    if (p.dispatched != 1 || strcmp(p.event_type, name) != 0 || p.event_len != payload_len ||
        memcmp(p.event, payload, payload_len) != 0)
        abort();
    if (id != 0) {
        snprintf(idtext, sizeof(idtext), "%" PRIu64, id);
        if (!p.id_seen || strcmp(p.id, idtext) != 0)
            abort();
    } else if (p.id_seen) {
        abort();
    }
    free(p.event);
    ts_event_unref(ev);
    return 0;
}
