/*
 * Events and the bounded per-task event log.
 *
 * An event is encoded into its complete SSE frame once, when it is created,
 * and never changes afterwards. A task's events are fanned out to every stream
 * that watches it, possibly thousands; encoding per stream would multiply the
 * formatting work and the allocations by the number of readers, and two
 * streams could disagree about the bytes of the same event. With one shared
 * frame a stream is only a cursor: sending an event is a copy of bytes that
 * already exist, and the memory held is bounded by the log, not by the
 * readers. Sharing is by reference count (h2o's shared memory chunks): the
 * log owns one reference to each retained event and a stream that is halfway
 * through writing a frame holds its own, so eviction never frees bytes under
 * a writer. The count is the only thing that changes after creation, and it
 * changes atomically, so events may be referenced and released on any thread.
 *
 * The log is a ring of `events_max` pointers. Ids are handed out 1, 2, 3, ...
 * and the retained events are always a contiguous run of them ending at
 * next_id - 1, so an id finds its slot by arithmetic from the oldest one.
 * Appending evicts from the old end while the log is full or while the new
 * frame would push the retained bytes over `bytes_max`, but it never evicts
 * the event being appended: an id that was handed out but never readable
 * would show every stream a gap for an event that never existed for it, and
 * the last event of a task (`end`) must reach its streams whatever its size.
 * So the byte cap can be exceeded by one event at most, and the producers cap
 * the size of a single event.
 *
 * The log has no lock of its own: its owner, the task, guards it with the
 * task's lock, which also orders appends against the streams' reads.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "event_log.h"

/* "id: " + 20 digits + "\nevent: " + 64 name bytes + "\ndata: " and a NUL. */
#define FRAME_HEAD_MAX 128
#define CHUNK_HEAD_MAX 18 /* 16 hex digits and CRLF */

static bool
name_char_valid(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

bool
ts_event_name_valid(const char *name)
{
    size_t i;

    if (name == NULL)
        return false;
    for (i = 0; name[i] != '\0'; i++) {
        if (i == TS_EVENT_NAME_MAX || !name_char_valid((unsigned char)name[i]))
            return false;
    }
    return i > 0;
}

/* A CR, LF or NUL would end the data: line early, or let the data forge
 * fields of its own. */
static bool
data_valid(const char *data, size_t data_len)
{
    size_t i;

    if (data == NULL)
        return data_len == 0;
    for (i = 0; i < data_len; i++) {
        if (data[i] == '\n' || data[i] == '\r' || data[i] == '\0')
            return false;
    }
    return true;
}

/* An event of one reference whose `len` frame bytes the caller writes at
 * ev->frame, inside its chunk: the chunk head and the closing CRLF (and a
 * NUL) are in place. The caller has checked that len leaves room. */
static struct ts_event *
event_alloc(uint64_t id, size_t len)
{
    struct ts_event *ev = malloc(sizeof(*ev) + CHUNK_HEAD_MAX + len + 3);
    int n;

    if (ev == NULL)
        return NULL;
    ev->refs = 1;
    ev->id = id;
    ev->len = len;
    n = snprintf(ev->chunk, CHUNK_HEAD_MAX + 1, "%zx\r\n", len);
    assert(n > 0 && n <= CHUNK_HEAD_MAX);
    ev->frame = ev->chunk + n;
    memcpy(ev->chunk + n + len, "\r\n", 3);
    ev->chunk_len = (size_t)n + len + 2;
    return ev;
}

struct ts_event *
ts_event_new(uint64_t id, const char *name, const char *data, size_t data_len)
{
    char head[FRAME_HEAD_MAX];
    struct ts_event *ev;
    size_t head_len, len;
    char *frame;
    int n;

    if (!ts_event_name_valid(name))
        return NULL;

    if (id != 0)
        n = snprintf(head, sizeof(head), "id: %" PRIu64 "\nevent: %s\ndata: ", id, name);
    else
        n = snprintf(head, sizeof(head), "event: %s\ndata: ", name);
    assert(n > 0 && (size_t)n < sizeof(head));
    head_len = (size_t)n;

    /* The chunk head, the trailing "\n\n", the NUL, then the chunk's CRLF. */
    if (data_len > SIZE_MAX - sizeof(*ev) - head_len - CHUNK_HEAD_MAX - 5 ||
        !data_valid(data, data_len))
        return NULL;
    len = head_len + data_len + 2;
    ev = event_alloc(id, len);
    if (ev == NULL)
        return NULL;
    frame = (char *)ev->frame;
    memcpy(frame, head, head_len);
    if (data_len > 0)
        memcpy(frame + head_len, data, data_len);
    memcpy(frame + head_len + data_len, "\n\n", 2);
    return ev;
}

struct ts_event *
ts_event_ref(struct ts_event *ev)
{
    if (ev != NULL)
        __atomic_add_fetch(&ev->refs, 1, __ATOMIC_ACQ_REL);
    return ev;
}

void
ts_event_unref(struct ts_event *ev)
{
    unsigned left;

    if (ev == NULL)
        return;
    /* acq_rel: every holder's reads of the frame happen before the free. */
    left = __atomic_sub_fetch(&ev->refs, 1, __ATOMIC_ACQ_REL);
    assert(left != (unsigned)-1);
    if (left == 0)
        free(ev);
}

int
ts_event_log_init(struct ts_event_log *log, size_t events_max, size_t bytes_max)
{
    memset(log, 0, sizeof(*log));
    log->next_id = 1;
    if (events_max == 0)
        return -EINVAL;
    log->ring = calloc(events_max, sizeof(*log->ring));
    if (log->ring == NULL)
        return -ENOMEM;
    log->events_max = events_max;
    log->bytes_max = bytes_max;
    return 0;
}

static void
evict_oldest(struct ts_event_log *log)
{
    struct ts_event *ev = log->ring[log->head];

    log->ring[log->head] = NULL;
    log->head = (log->head + 1) % log->events_max;
    log->count--;
    log->bytes -= ev->len;
    log->evicted++;
    ts_event_unref(ev);
}

void
ts_event_log_dispose(struct ts_event_log *log)
{
    while (log->count > 0) {
        evict_oldest(log);
    }
    free(log->ring);
    log->ring = NULL;
    log->events_max = 0;
    log->head = 0;
}

/* Frames from the store (cluster mode) are those an owner encoded with
 * ts_event_new(): "id: <id>\n" first and "\n\n" last. */
struct ts_event *
ts_event_from_frame(uint64_t id, const char *frame, size_t len)
{
    char head[32];
    struct ts_event *ev;
    int n;

    n = snprintf(head, sizeof(head), "id: %" PRIu64 "\n", id);
    if (id == 0 || len < (size_t)n + 2 || len > SIZE_MAX - sizeof(*ev) - CHUNK_HEAD_MAX - 3 ||
        memcmp(frame, head, (size_t)n) != 0 || memcmp(frame + len - 2, "\n\n", 2) != 0 ||
        memchr(frame, '\0', len) != NULL)
        return NULL;
    ev = event_alloc(id, len);
    if (ev != NULL)
        memcpy((char *)ev->frame, frame, len);
    return ev;
}

void
ts_event_log_push(struct ts_event_log *log, struct ts_event *ev)
{
    assert(ev->id == log->next_id);
    while (log->count == log->events_max ||
           (log->count > 0 && log->bytes + ev->len > log->bytes_max)) {
        evict_oldest(log);
    }
    log->ring[(log->head + log->count) % log->events_max] = ev;
    log->count++;
    log->bytes += ev->len;
    log->next_id++;
}

void
ts_event_log_restart(struct ts_event_log *log, uint64_t next_id)
{
    while (log->count > 0) {
        evict_oldest(log);
    }
    log->evicted += next_id - log->next_id;
    log->next_id = next_id;
}

uint64_t
ts_event_log_append(struct ts_event_log *log, const char *name, const char *data, size_t data_len)
{
    struct ts_event *ev;
    uint64_t id = log->next_id;

    /* Encoded before anything is evicted, so a failure leaves the log as it
     * was and the id unused. */
    ev = ts_event_new(id, name, data, data_len);
    if (ev == NULL)
        return 0;
    ts_event_log_push(log, ev);
    return id;
}

uint64_t
ts_event_log_first_id(const struct ts_event_log *log)
{
    return log->next_id - log->count;
}

uint64_t
ts_event_log_last_id(const struct ts_event_log *log)
{
    return log->next_id - 1;
}

struct ts_event *
ts_event_log_get(const struct ts_event_log *log, uint64_t id)
{
    uint64_t first = ts_event_log_first_id(log);
    uint64_t offset;

    if (id < first || id >= log->next_id)
        return NULL;
    offset = id - first;
    return log->ring[(log->head + (size_t)offset) % log->events_max];
}

static bool
is_blank(char c)
{
    return c == ' ' || c == '\t';
}

int
ts_parse_last_event_id(const char *s, uint64_t *out)
{
    const uint64_t max = INT64_MAX;
    uint64_t v = 0;
    size_t digits = 0;

    if (s == NULL)
        return -EINVAL;
    while (is_blank(*s)) {
        s++;
    }
    for (; *s >= '0' && *s <= '9'; s++, digits++) {
        unsigned d = (unsigned)(*s - '0');

        if (v > (max - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    while (is_blank(*s)) {
        s++;
    }
    if (digits == 0 || *s != '\0')
        return -EINVAL;
    *out = v;
    return 0;
}

struct ts_event *
ts_event_gap(uint64_t first_missing, uint64_t last_missing)
{
    char data[96];
    int n;

    n = snprintf(data, sizeof(data), "{\"first_missing\":%" PRIu64 ",\"last_missing\":%" PRIu64 "}",
                 first_missing, last_missing);
    assert(n > 0 && (size_t)n < sizeof(data));
    return ts_event_new(0, "gap", data, (size_t)n);
}

struct ts_event *
ts_event_draining(const char *reason)
{
    struct ts_event *ev = NULL;
    json_t *obj;
    char *data;

    /* jansson escapes quotes, backslashes and control characters, and fails
     * on a NULL or non-UTF-8 reason. */
    obj = json_pack("{s:s}", "reason", reason);
    if (obj == NULL)
        return NULL;
    data = json_dumps(obj, JSON_COMPACT);
    if (data == NULL)
        goto out_put_obj;
    ev = ts_event_new(0, "draining", data, strlen(data));
    free(data);
out_put_obj:
    json_decref(obj);
    return ev;
}
