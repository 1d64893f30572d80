/*
 * An incremental parser of the text/event-stream format, as the WHATWG HTML
 * standard (section 9.2.6, "Interpreting an event stream") defines it.
 *
 * Bytes go in as they arrive (any split: a line, a CRLF or a UTF-8 sequence
 * may straddle two feeds); each dispatched event comes out through a
 * callback. Lines end with CRLF, LF or CR; a leading byte order mark is
 * dropped; a line starting with ':' is a comment; "field:value" loses one
 * space after the colon; a line without a colon is a field with an empty
 * value; data lines are joined with LF; an id holding NUL is ignored; retry
 * takes ASCII digits only; unknown fields are ignored; an empty line
 * dispatches, and an event whose data is empty is not dispatched. Every
 * buffer is bounded by the line limit given at init. One thread at a time.
 */
#ifndef TSC_SSE_PARSE_H
#define TSC_SSE_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A growable byte string that always ends with a NUL past `len`. */
struct tsc_buf {
    char *p;
    size_t len;
    size_t cap;
};

/* A dispatched event. The strings belong to the parser and are valid only
 * during the callback; each ends with a NUL (data may hold NULs of its own:
 * use data_len). */
struct tsc_sse_event {
    const char *type; /* "message" when the frame named none */
    const char *data; /* the data lines joined with LF, no final LF */
    size_t data_len;
    const char *id;      /* this frame's own id field, or NULL when it had none */
    const char *last_id; /* the stream's last event ID after this frame */
};

/* Called for each event. Return 0 to go on; anything else stops the feed,
 * which returns that value. */
typedef int tsc_sse_event_cb(void *arg, const struct tsc_sse_event *ev);

struct tsc_sse_parser {
    tsc_sse_event_cb *cb;
    void *arg;
    size_t line_max;         /* bytes a line, and the data of one event, may hold */
    struct tsc_buf line;     /* the line being read */
    struct tsc_buf data;     /* this frame's data so far, lines joined with LF */
    struct tsc_buf type;     /* this frame's event type */
    struct tsc_buf frame_id; /* this frame's id field, when has_frame_id */
    struct tsc_buf last_id;  /* the last event ID buffer: kept across frames */
    bool has_data;           /* a data field was seen in this frame */
    bool has_frame_id;
    bool bom_checked;  /* the first bytes of the stream were looked at */
    bool cr_pending;   /* the last byte was a CR: an LF next belongs to it */
    int64_t retry_ms;  /* the last valid retry field, or -1 */
    uint64_t comments; /* comment lines seen (heartbeats) */
};

/* Set up `p` (caller memory) for a new stream. Never fails. */
void tsc_sse_parser_init(struct tsc_sse_parser *p, tsc_sse_event_cb *cb, void *arg,
                         size_t line_max);

/* Forget the partial frame and line, as for a new connection; the last
 * event ID and the retry time stay. */
void tsc_sse_parser_reset(struct tsc_sse_parser *p);

/* Feed `len` bytes. Returns 0; the callback's nonzero value when it asked to
 * stop; -E2BIG when a line or an event's data exceeds line_max; -ENOMEM.
 * After an error the parser must be reset before it is fed again. */
int tsc_sse_parser_feed(struct tsc_sse_parser *p, const char *buf, size_t len);

/* Free the buffers. */
void tsc_sse_parser_dispose(struct tsc_sse_parser *p);

#endif
