/*
 * Unit tests for events and the bounded event log: frame bytes, refused
 * input, gapless ids across eviction by count and by bytes, lookups, the
 * reference count across eviction and threads, Last-Event-ID parsing, the
 * informational frames, and a round trip through a small SSE parser written
 * from the WHATWG rules, so the frames are checked against what a browser
 * would read rather than against our own encoder.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "event_log.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- a tiny SSE parser (WHATWG "Interpreting an event stream") ---- */

struct sse_event {
    char type[128];
    char data[1024];
    char last_id[32]; /* the stream's last event ID buffer after dispatch */
};

struct sse_parser {
    char type[128];
    char data[1024];
    size_t data_len;
    char last_id[32];
    struct sse_event events[8];
    size_t nevents;
};

static void
copy_value(char *dst, size_t dst_size, const char *v, size_t n)
{
    assert_true(n < dst_size);
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static void
sse_dispatch(struct sse_parser *p)
{
    struct sse_event *ev;

    /* The last event ID buffer survives a dispatch; type and data do not. */
    if (p->data_len == 0) {
        p->type[0] = '\0';
        return;
    }
    assert_true(p->nevents < ARRAY_SIZE(p->events));
    ev = &p->events[p->nevents++];
    p->data[p->data_len - 1] = '\0'; /* the last LF goes */
    snprintf(ev->data, sizeof(ev->data), "%s", p->data);
    snprintf(ev->type, sizeof(ev->type), "%s", p->type[0] != '\0' ? p->type : "message");
    snprintf(ev->last_id, sizeof(ev->last_id), "%s", p->last_id);
    p->data_len = 0;
    p->type[0] = '\0';
}

static void
sse_field(struct sse_parser *p, const char *line, size_t n)
{
    const char *colon = memchr(line, ':', n);
    const char *value = "";
    size_t name_len = n, value_len = 0;

    if (colon == line)
        return; /* a comment */
    if (colon != NULL) {
        name_len = (size_t)(colon - line);
        value = colon + 1;
        value_len = n - name_len - 1;
        if (value_len > 0 && value[0] == ' ') {
            value++;
            value_len--;
        }
    }
    if (name_len == 5 && memcmp(line, "event", 5) == 0) {
        copy_value(p->type, sizeof(p->type), value, value_len);
    } else if (name_len == 4 && memcmp(line, "data", 4) == 0) {
        assert_true(p->data_len + value_len + 1 < sizeof(p->data));
        memcpy(p->data + p->data_len, value, value_len);
        p->data_len += value_len;
        p->data[p->data_len++] = '\n';
    } else if (name_len == 2 && memcmp(line, "id", 2) == 0) {
        if (memchr(value, '\0', value_len) == NULL)
            copy_value(p->last_id, sizeof(p->last_id), value, value_len);
    }
    /* "retry" and unknown fields do not matter here. */
}

/* Feeds whole frames; only LF line ends, which is all we emit. */
static void
sse_feed(struct sse_parser *p, const char *buf, size_t len)
{
    size_t start = 0, i;

    for (i = 0; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (i == start)
            sse_dispatch(p);
        else
            sse_field(p, buf + start, i - start);
        start = i + 1;
    }
    /* A frame always ends its last line. */
    assert_int_equal(start, len);
}

/* The frame, and around it the HTTP/1.1 chunk that carries it: its size in
 * hex, CRLF, the frame, CRLF (RFC 9112 section 7.1). */
static void
assert_event_frame(const struct ts_event *ev)
{
    char head[32];
    int n;

    assert_non_null(ev);
    assert_true(ev->len >= 2);
    assert_memory_equal(ev->frame + ev->len - 2, "\n\n", 2);
    n = snprintf(head, sizeof(head), "%zx\r\n", ev->len);
    assert_int_equal(ev->chunk_len, (size_t)n + ev->len + 2);
    assert_memory_equal(ev->chunk, head, (size_t)n);
    assert_ptr_equal(ev->frame, ev->chunk + n);
    assert_memory_equal(ev->chunk + n + ev->len, "\r\n", 3); /* and its NUL */
    assert_int_equal(strlen(ev->chunk), ev->chunk_len);
}

/* The frame is not a C string (the chunk's CRLF follows it). */
#define assert_frame_equal(ev, want)                                                               \
    do {                                                                                           \
        assert_int_equal((ev)->len, strlen(want));                                                 \
        assert_memory_equal((ev)->frame, (want), (ev)->len);                                       \
    } while (0)

/* ---- frames ---- */

struct frame_row {
    uint64_t id;
    const char *name;
    const char *data;
    size_t data_len; /* SIZE_MAX: strlen(data) */
    const char *frame;
};

static const struct frame_row frame_rows[] = {
    {1, "tick", "{\"n\":1}", SIZE_MAX, "id: 1\nevent: tick\ndata: {\"n\":1}\n\n"},
    {42, "output", "{\"stream\":\"stdout\",\"line\":\"a: b\"}", SIZE_MAX,
     "id: 42\nevent: output\ndata: {\"stream\":\"stdout\",\"line\":\"a: b\"}\n\n"},
    {UINT64_MAX, "end", "{}", SIZE_MAX, "id: 18446744073709551615\nevent: end\ndata: {}\n\n"},
    {0, "gap", "{}", SIZE_MAX, "event: gap\ndata: {}\n\n"},
    {7, "e", "", SIZE_MAX, "id: 7\nevent: e\ndata: \n\n"},
    {7, "e", NULL, 0, "id: 7\nevent: e\ndata: \n\n"},
    /* Only data_len bytes count: the rest of the buffer may hold anything. */
    {3, "x", "[1,2]\n\r garbage", 5, "id: 3\nevent: x\ndata: [1,2]\n\n"},
    /* A leading space in the data survives the one space after "data:". */
    {9, "A-z_0.9", " \"s\"", SIZE_MAX, "id: 9\nevent: A-z_0.9\ndata:  \"s\"\n\n"},
    {10, "u", "\"\xc3\xa9\xe2\x80\xa8\"", SIZE_MAX,
     "id: 10\nevent: u\ndata: \"\xc3\xa9\xe2\x80\xa8\"\n\n"},
    {11, "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", "1", SIZE_MAX,
     "id: 11\nevent: nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn\ndata: "
     "1\n\n"},
};

static size_t
row_data_len(const struct frame_row *r)
{
    return r->data_len == SIZE_MAX ? strlen(r->data) : r->data_len;
}

static void
test_frame_bytes(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_SIZE(frame_rows); i++) {
        const struct frame_row *r = &frame_rows[i];
        struct ts_event *ev = ts_event_new(r->id, r->name, r->data, row_data_len(r));

        assert_event_frame(ev);
        assert_int_equal(ev->id, r->id);
        assert_int_equal(ev->refs, 1);
        assert_int_equal(ev->len, strlen(r->frame));
        assert_memory_equal(ev->frame, r->frame, ev->len);
        ts_event_unref(ev);
    }
}

static void
test_frame_round_trip(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_SIZE(frame_rows); i++) {
        const struct frame_row *r = &frame_rows[i];
        struct ts_event *ev = ts_event_new(r->id, r->name, r->data, row_data_len(r));
        struct sse_parser p;
        char want_id[32] = "";

        assert_non_null(ev);
        memset(&p, 0, sizeof(p));
        sse_feed(&p, ev->frame, ev->len);
        assert_int_equal(p.nevents, 1);
        assert_string_equal(p.events[0].type, r->name);
        assert_int_equal(strlen(p.events[0].data), row_data_len(r));
        if (row_data_len(r) > 0)
            assert_memory_equal(p.events[0].data, r->data, row_data_len(r));
        if (r->id != 0)
            snprintf(want_id, sizeof(want_id), "%" PRIu64, r->id);
        assert_string_equal(p.events[0].last_id, want_id);
        ts_event_unref(ev);
    }
}

/* Events without an id must not move the client's Last-Event-ID, or a
 * reconnect after a "gap" or "draining" would lose its place. */
static void
test_round_trip_informational_keeps_last_id(void **state)
{
    struct ts_event *evs[4];
    struct sse_parser p;
    size_t i;

    (void)state;
    evs[0] = ts_event_new(5, "tick", "{\"n\":5}", 7);
    evs[1] = ts_event_gap(6, 9);
    evs[2] = ts_event_draining("signal");
    evs[3] = ts_event_new(10, "tick", "{\"n\":10}", 8);
    memset(&p, 0, sizeof(p));
    for (i = 0; i < ARRAY_SIZE(evs); i++) {
        assert_non_null(evs[i]);
        sse_feed(&p, evs[i]->frame, evs[i]->len);
    }
    assert_int_equal(p.nevents, 4);
    assert_string_equal(p.events[0].last_id, "5");
    assert_string_equal(p.events[1].type, "gap");
    assert_string_equal(p.events[1].data, "{\"first_missing\":6,\"last_missing\":9}");
    assert_string_equal(p.events[1].last_id, "5");
    assert_string_equal(p.events[2].type, "draining");
    assert_string_equal(p.events[2].data, "{\"reason\":\"signal\"}");
    assert_string_equal(p.events[2].last_id, "5");
    assert_string_equal(p.events[3].last_id, "10");
    for (i = 0; i < ARRAY_SIZE(evs); i++) {
        ts_event_unref(evs[i]);
    }
}

struct reject_row {
    const char *name;
    const char *data;
    size_t data_len;
};

static const struct reject_row reject_rows[] = {
    {"tick", "{\"a\":\n1}", 8},
    {"tick", "\n", 1},
    {"tick", "{}\n", 3},
    {"tick", "{\"a\":\r1}", 8},
    {"tick", "\r", 1},
    {"tick", "{}\r\n", 4},
    {"tick", "{\0}", 3}, /* NUL within data_len */
    {"tick", NULL, 1},
    {NULL, "{}", 2},
    {"", "{}", 2},
    {"ti ck", "{}", 2},
    {"tick\n", "{}", 2},
    {"ti:ck", "{}", 2},
    {"tick\r", "{}", 2},
    {"t\xc3\xa9", "{}", 2},
    {"a/b", "{}", 2},
    {"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", "{}", 2}, /* 65 */
};

static void
test_new_rejects(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_SIZE(reject_rows); i++) {
        const struct reject_row *r = &reject_rows[i];

        assert_null(ts_event_new(1, r->name, r->data, r->data_len));
        assert_null(ts_event_new(0, r->name, r->data, r->data_len));
    }
}

static void
test_new_huge_len_rejected(void **state)
{
    (void)state;
    /* Would overflow the allocation size: refused before data is read. */
    assert_null(ts_event_new(1, "x", "ab", SIZE_MAX));
    assert_null(ts_event_new(0, "x", "ab", SIZE_MAX - 8));
}

struct name_row {
    const char *name;
    bool valid;
};

static const struct name_row name_rows[] = {
    {"a", true},
    {"tick", true},
    {"Z9_.-", true},
    {"-", true},
    {"..", true},
    {"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", true}, /* 64 */
    {"nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", false},
    {"", false},
    {NULL, false},
    {" a", false},
    {"a b", false},
    {"a:b", false},
    {"a\tb", false},
    {"a+b", false},
    {"\xff", false},
};

static void
test_name_valid(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_SIZE(name_rows); i++) {
        assert_int_equal(ts_event_name_valid(name_rows[i].name), name_rows[i].valid);
    }
}

/* ---- the log ---- */

static void
test_init_rejects_zero_events(void **state)
{
    struct ts_event_log log;

    (void)state;
    assert_int_equal(ts_event_log_init(&log, 0, 1024), -EINVAL);
    ts_event_log_dispose(&log); /* harmless after a failed init */
}

static void
test_empty_log(void **state)
{
    struct ts_event_log log;

    (void)state;
    assert_int_equal(ts_event_log_init(&log, 4, 1024), 0);
    assert_int_equal(ts_event_log_first_id(&log), 1);
    assert_int_equal(ts_event_log_last_id(&log), 0);
    assert_null(ts_event_log_get(&log, 0));
    assert_null(ts_event_log_get(&log, 1));
    assert_null(ts_event_log_get(&log, UINT64_MAX));
    ts_event_log_dispose(&log);
    ts_event_log_dispose(&log); /* twice is harmless */
}

static void
test_append_refused_leaves_log_unchanged(void **state)
{
    struct ts_event_log log;

    (void)state;
    assert_int_equal(ts_event_log_init(&log, 2, 1024), 0);
    assert_int_equal(ts_event_log_append(&log, "a", "1", 1), 1);
    assert_int_equal(ts_event_log_append(&log, "a", "2", 1), 2);
    assert_int_equal(ts_event_log_append(&log, "a", "x\ny", 3), 0);
    assert_int_equal(ts_event_log_append(&log, "bad name", "3", 1), 0);
    assert_int_equal(log.count, 2);
    assert_int_equal(log.evicted, 0);
    assert_int_equal(ts_event_log_first_id(&log), 1);
    assert_int_equal(ts_event_log_append(&log, "a", "3", 1), 3);
    assert_int_equal(ts_event_log_first_id(&log), 2);
    ts_event_log_dispose(&log);
}

static void
test_ids_gapless_evict_by_count(void **state)
{
    enum { N_APPENDS = 10000, EVENTS_MAX = 37 };
    struct ts_event_log log;
    char data[32];
    uint64_t i, id;

    (void)state;
    assert_int_equal(ts_event_log_init(&log, EVENTS_MAX, SIZE_MAX), 0);
    for (i = 1; i <= N_APPENDS; i++) {
        int n = snprintf(data, sizeof(data), "{\"n\":%" PRIu64 "}", i);

        id = ts_event_log_append(&log, "tick", data, (size_t)n);
        assert_int_equal(id, i);
        assert_int_equal(ts_event_log_last_id(&log), i);
        assert_int_equal(log.count, i < EVENTS_MAX ? i : EVENTS_MAX);
        assert_int_equal(log.evicted, i > EVENTS_MAX ? i - EVENTS_MAX : 0);
        assert_int_equal(ts_event_log_first_id(&log), i > EVENTS_MAX ? i - EVENTS_MAX + 1 : 1);
    }
    /* Every retained id is there, in order, with its own payload. */
    for (id = N_APPENDS - EVENTS_MAX + 1; id <= N_APPENDS; id++) {
        struct ts_event *ev = ts_event_log_get(&log, id);
        char want[64];

        assert_non_null(ev);
        assert_int_equal(ev->id, id);
        snprintf(want, sizeof(want), "id: %" PRIu64 "\nevent: tick\ndata: {\"n\":%" PRIu64 "}\n\n",
                 id, id);
        assert_int_equal(ev->len, strlen(want));
        assert_memory_equal(ev->frame, want, ev->len);
    }
    assert_null(ts_event_log_get(&log, N_APPENDS - EVENTS_MAX));
    assert_null(ts_event_log_get(&log, N_APPENDS + 1));
    ts_event_log_dispose(&log);
}

static size_t
frame_len(uint64_t id, const char *name, size_t data_len)
{
    struct ts_event *ev;
    char *data = malloc(data_len + 1);
    size_t len;

    assert_non_null(data);
    memset(data, 'x', data_len);
    ev = ts_event_new(id, name, data, data_len);
    free(data);
    assert_non_null(ev);
    len = ev->len;
    ts_event_unref(ev);
    return len;
}

struct bytes_row {
    size_t bytes_max;
    size_t data_len; /* of every event appended */
    size_t appends;
};

static const struct bytes_row bytes_rows[] = {
    {100, 10, 50},     {1000, 10, 500}, {1000, 100, 300},
    {4096, 1000, 100}, {64, 10, 20}, /* frames of 33 or 34 bytes: one fits, never two */
    {10, 100, 20},                   /* every frame alone over the cap: the newest kept alone */
    {0, 0, 5},
};

static void
test_evict_by_bytes(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_SIZE(bytes_rows); i++) {
        const struct bytes_row *r = &bytes_rows[i];
        struct ts_event_log log;
        char *data = malloc(r->data_len + 1);
        uint64_t id;

        assert_non_null(data);
        memset(data, 'x', r->data_len);
        assert_int_equal(ts_event_log_init(&log, 1000000, r->bytes_max), 0);
        for (id = 1; id <= r->appends; id++) {
            size_t sum = 0, kept_if_one_more;
            uint64_t k;

            assert_int_equal(ts_event_log_append(&log, "b", data, r->data_len), id);
            assert_int_equal(ts_event_log_last_id(&log), id);
            assert_true(log.count >= 1);
            assert_int_equal(log.evicted + log.count, id);
            assert_int_equal(ts_event_log_first_id(&log), id - log.count + 1);
            for (k = ts_event_log_first_id(&log); k <= id; k++) {
                sum += ts_event_log_get(&log, k)->len;
            }
            assert_int_equal(sum, log.bytes);
            /* Within the cap unless the newest alone is over it... */
            assert_true(log.bytes <= r->bytes_max || log.count == 1);
            /* ...and nothing was evicted that would have fitted. */
            if (log.evicted > 0) {
                kept_if_one_more =
                    log.bytes + frame_len(ts_event_log_first_id(&log) - 1, "b", r->data_len);
                assert_true(kept_if_one_more > r->bytes_max);
            }
        }
        ts_event_log_dispose(&log);
        free(data);
    }
}

static void
test_single_event_over_cap_kept_alone(void **state)
{
    struct ts_event_log log;
    char big[300];
    struct ts_event *ev;

    (void)state;
    memset(big, 'y', sizeof(big));
    assert_int_equal(ts_event_log_init(&log, 8, 100), 0);
    assert_int_equal(ts_event_log_append(&log, "s", "1", 1), 1);
    assert_int_equal(ts_event_log_append(&log, "s", "2", 1), 2);
    assert_int_equal(ts_event_log_append(&log, "big", big, sizeof(big)), 3);
    assert_int_equal(log.count, 1);
    assert_int_equal(log.evicted, 2);
    assert_true(log.bytes > log.bytes_max);
    assert_int_equal(ts_event_log_first_id(&log), 3);
    assert_int_equal(ts_event_log_last_id(&log), 3);
    ev = ts_event_log_get(&log, 3);
    assert_non_null(ev);
    assert_int_equal(ev->len, log.bytes);
    assert_null(ts_event_log_get(&log, 2));
    /* The next small one pushes the big one out. */
    assert_int_equal(ts_event_log_append(&log, "s", "4", 1), 4);
    assert_int_equal(log.count, 1);
    assert_int_equal(ts_event_log_first_id(&log), 4);
    assert_int_equal(ts_event_log_append(&log, "s", "5", 1), 5);
    assert_int_equal(log.count, 2);
    ts_event_log_dispose(&log);
}

static void
test_get_evicted_current_future(void **state)
{
    struct ts_event_log log;
    uint64_t id;

    (void)state;
    assert_int_equal(ts_event_log_init(&log, 3, SIZE_MAX), 0);
    for (id = 1; id <= 5; id++) {
        assert_int_equal(ts_event_log_append(&log, "g", "0", 1), id);
    }
    /* Retained: 3, 4, 5, with the ring wrapped. */
    assert_int_equal(ts_event_log_first_id(&log), 3);
    assert_int_equal(ts_event_log_last_id(&log), 5);
    assert_null(ts_event_log_get(&log, 0));
    assert_null(ts_event_log_get(&log, 1));
    assert_null(ts_event_log_get(&log, 2));
    for (id = 3; id <= 5; id++) {
        assert_non_null(ts_event_log_get(&log, id));
        assert_int_equal(ts_event_log_get(&log, id)->id, id);
    }
    assert_null(ts_event_log_get(&log, 6));
    assert_null(ts_event_log_get(&log, UINT64_MAX));
    ts_event_log_dispose(&log);
}

static void
test_writer_ref_survives_eviction(void **state)
{
    struct ts_event_log log;
    struct ts_event *held;
    char frame[64];

    (void)state;
    assert_int_equal(ts_event_log_init(&log, 2, SIZE_MAX), 0);
    assert_int_equal(ts_event_log_append(&log, "w", "{\"k\":1}", 7), 1);
    /* A stream halfway through writing event 1. */
    held = ts_event_ref(ts_event_log_get(&log, 1));
    assert_int_equal(held->refs, 2);
    snprintf(frame, sizeof(frame), "%.*s", (int)held->len, held->frame);

    assert_int_equal(ts_event_log_append(&log, "w", "2", 1), 2);
    assert_int_equal(ts_event_log_append(&log, "w", "3", 1), 3);
    assert_null(ts_event_log_get(&log, 1));
    assert_int_equal(held->refs, 1);
    /* Under ASan, a read of freed memory here would abort. */
    assert_frame_equal(held, frame);
    assert_int_equal(held->id, 1);

    ts_event_log_dispose(&log);
    assert_frame_equal(held, "id: 1\nevent: w\ndata: {\"k\":1}\n\n");
    ts_event_unref(held); /* the last reference: freed (ASan reports a leak otherwise) */
}

static void
test_dispose_drops_log_refs_only(void **state)
{
    struct ts_event_log log;
    struct ts_event *held;

    (void)state;
    assert_int_equal(ts_event_log_init(&log, 4, SIZE_MAX), 0);
    assert_int_equal(ts_event_log_append(&log, "d", "1", 1), 1);
    assert_int_equal(ts_event_log_append(&log, "d", "2", 1), 2);
    held = ts_event_ref(ts_event_log_get(&log, 2));
    ts_event_log_dispose(&log);
    assert_int_equal(held->refs, 1);
    assert_frame_equal(held, "id: 2\nevent: d\ndata: 2\n\n");
    ts_event_unref(held);
}

static void
test_ref_unref_null(void **state)
{
    (void)state;
    assert_null(ts_event_ref(NULL));
    ts_event_unref(NULL);
}

enum { REF_THREADS = 8, REF_ROUNDS = 20000 };

static void *
ref_worker(void *arg)
{
    struct ts_event *ev = arg;
    int i;

    for (i = 0; i < REF_ROUNDS; i++) {
        ts_event_ref(ev);
        if (ev->frame[0] != 'i')
            return NULL;
        ts_event_unref(ev);
    }
    return ev;
}

/* Streams on other threads take and drop references while the log drops
 * its own; run under TSan this checks the count is really atomic. */
static void
test_refs_across_threads(void **state)
{
    pthread_t th[REF_THREADS];
    struct ts_event *ev;
    void *ret;
    int i;

    (void)state;
    ev = ts_event_new(1, "t", "{}", 2);
    assert_non_null(ev);
    for (i = 0; i < REF_THREADS; i++) {
        ts_event_ref(ev); /* handed to the thread */
        assert_int_equal(pthread_create(&th[i], NULL, ref_worker, ev), 0);
    }
    ts_event_unref(ev); /* the creator's, while the threads run */
    for (i = 0; i < REF_THREADS; i++) {
        assert_int_equal(pthread_join(th[i], &ret), 0);
        assert_ptr_equal(ret, ev);
    }
    assert_int_equal(__atomic_load_n(&ev->refs, __ATOMIC_ACQUIRE), REF_THREADS);
    for (i = 0; i < REF_THREADS; i++) {
        ts_event_unref(ev);
    }
}

/* ---- Last-Event-ID ---- */

struct leid_row {
    const char *in;
    int err;
    uint64_t want;
};

static const struct leid_row leid_rows[] = {
    {"0", 0, 0},
    {"1", 0, 1},
    {"  42 ", 0, 42},
    {"\t7\t", 0, 7},
    {"007", 0, 7},
    {"9223372036854775807", 0, INT64_MAX},
    {"9223372036854775808", -EINVAL, 0},
    {"18446744073709551615", -EINVAL, 0},
    {"18446744073709551616", -EINVAL, 0},
    {"-1", -EINVAL, 0},
    {"-0", -EINVAL, 0},
    {"+1", -EINVAL, 0},
    {"1e3", -EINVAL, 0},
    {"abc", -EINVAL, 0},
    {"", -EINVAL, 0},
    {" ", -EINVAL, 0},
    {"\t \t", -EINVAL, 0},
    {"12abc", -EINVAL, 0},
    {"0x10", -EINVAL, 0},
    {"1 2", -EINVAL, 0},
    {"1.0", -EINVAL, 0},
    {"1\n", -EINVAL, 0},
    {"\n1", -EINVAL, 0},
    {"\v1", -EINVAL, 0},
    {"\xd9\xa1", -EINVAL, 0}, /* ARABIC-INDIC DIGIT ONE */
    {NULL, -EINVAL, 0},
};

static void
test_parse_last_event_id(void **state)
{
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_SIZE(leid_rows); i++) {
        const struct leid_row *r = &leid_rows[i];
        uint64_t out = 12345;

        assert_int_equal(ts_parse_last_event_id(r->in, &out), r->err);
        if (r->err == 0)
            assert_int_equal(out, r->want);
        else
            assert_int_equal(out, 12345); /* untouched on error */
    }
}

static void
test_parse_last_event_id_long(void **state)
{
    enum { DIGITS = 10000 };
    char *s = malloc(DIGITS + 3);
    uint64_t out = 12345;

    (void)state;
    assert_non_null(s);
    memset(s, '9', DIGITS);
    s[DIGITS] = '\0';
    assert_int_equal(ts_parse_last_event_id(s, &out), -EINVAL);
    /* Leading zeros do not overflow anything. */
    memset(s, '0', DIGITS);
    memcpy(s + DIGITS, "42", 3);
    assert_int_equal(ts_parse_last_event_id(s, &out), 0);
    assert_int_equal(out, 42);
    free(s);
}

/* ---- informational events ---- */

static void
test_gap_frame(void **state)
{
    static const struct {
        uint64_t first, last;
        const char *frame;
    } rows[] = {
        {1, 1, "event: gap\ndata: {\"first_missing\":1,\"last_missing\":1}\n\n"},
        {3, 17, "event: gap\ndata: {\"first_missing\":3,\"last_missing\":17}\n\n"},
        {UINT64_MAX, UINT64_MAX,
         "event: gap\ndata: "
         "{\"first_missing\":18446744073709551615,\"last_missing\":18446744073709551615}\n\n"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_SIZE(rows); i++) {
        struct ts_event *ev = ts_event_gap(rows[i].first, rows[i].last);

        assert_event_frame(ev);
        assert_int_equal(ev->id, 0);
        assert_int_equal(ev->refs, 1);
        assert_frame_equal(ev, rows[i].frame);
        ts_event_unref(ev);
    }
}

static void
test_draining_frame(void **state)
{
    static const struct {
        const char *reason;
        const char *frame;
    } rows[] = {
        {"signal", "event: draining\ndata: {\"reason\":\"signal\"}\n\n"},
        {"manual", "event: draining\ndata: {\"reason\":\"manual\"}\n\n"},
        {"", "event: draining\ndata: {\"reason\":\"\"}\n\n"},
        {"say \"bye\"", "event: draining\ndata: {\"reason\":\"say \\\"bye\\\"\"}\n\n"},
        {"a\\b", "event: draining\ndata: {\"reason\":\"a\\\\b\"}\n\n"},
        {"two\nlines\r", "event: draining\ndata: {\"reason\":\"two\\nlines\\r\"}\n\n"},
        {"caf\xc3\xa9", "event: draining\ndata: {\"reason\":\"caf\xc3\xa9\"}\n\n"},
    };
    size_t i;

    (void)state;
    for (i = 0; i < ARRAY_SIZE(rows); i++) {
        struct ts_event *ev = ts_event_draining(rows[i].reason);

        assert_event_frame(ev);
        assert_int_equal(ev->id, 0);
        assert_int_equal(ev->refs, 1);
        assert_frame_equal(ev, rows[i].frame);
        ts_event_unref(ev);
    }
    /* jansson refuses these, so no frame with a broken payload exists. */
    assert_null(ts_event_draining(NULL));
    assert_null(ts_event_draining("\xff\xfe"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frame_bytes),
        cmocka_unit_test(test_frame_round_trip),
        cmocka_unit_test(test_round_trip_informational_keeps_last_id),
        cmocka_unit_test(test_new_rejects),
        cmocka_unit_test(test_new_huge_len_rejected),
        cmocka_unit_test(test_name_valid),
        cmocka_unit_test(test_init_rejects_zero_events),
        cmocka_unit_test(test_empty_log),
        cmocka_unit_test(test_append_refused_leaves_log_unchanged),
        cmocka_unit_test(test_ids_gapless_evict_by_count),
        cmocka_unit_test(test_evict_by_bytes),
        cmocka_unit_test(test_single_event_over_cap_kept_alone),
        cmocka_unit_test(test_get_evicted_current_future),
        cmocka_unit_test(test_writer_ref_survives_eviction),
        cmocka_unit_test(test_dispose_drops_log_refs_only),
        cmocka_unit_test(test_ref_unref_null),
        cmocka_unit_test(test_refs_across_threads),
        cmocka_unit_test(test_parse_last_event_id),
        cmocka_unit_test(test_parse_last_event_id_long),
        cmocka_unit_test(test_gap_frame),
        cmocka_unit_test(test_draining_frame),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
