/*
 * Events and the bounded per-task event log.
 *
 * An event is encoded into its SSE frame once, when it is appended
 * ("id: 7\nevent: tick\ndata: {...}\n\n"), already wrapped as the HTTP/1.1
 * chunk a stream writes ("2c\r\n" frame "\r\n"), and is immutable afterwards. The
 * log owns one reference to each retained event; a stream that is halfway
 * through sending a frame holds its own reference, so eviction never pulls
 * bytes from under a writer. Every stream of a task reads the same frames.
 *
 * Ids are 1, 2, 3, ... without gaps. The log keeps at most `events_max`
 * events and `bytes_max` frame bytes, evicting the oldest; the newest event is
 * always kept, even if it alone is over the byte cap.
 *
 * The log has no lock of its own: its owner (the task) guards it.
 */
#ifndef TS_EVENT_LOG_H
#define TS_EVENT_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ts_event {
    unsigned refs;     /* atomic; the log's reference and writers' */
    uint64_t id;       /* 0: an informational event sent without an id */
    size_t len;        /* bytes in frame */
    const char *frame; /* the whole SSE frame (len bytes, no NUL): inside `chunk` */
    size_t chunk_len;  /* bytes of chunk, without the NUL */
    char chunk[];      /* the frame as one HTTP/1.1 chunk, "<hex>\r\n" frame "\r\n" */
};

#define TS_EVENT_NAME_MAX 64

/* True when `name` is 1..64 of [A-Za-z0-9_.-]. */
bool ts_event_name_valid(const char *name);

/*
 * Encode a new event with one reference. `data` must be compact JSON text
 * without a newline (json_dumps with JSON_COMPACT never emits one); `id` 0
 * leaves out the id: line. NULL on out of memory, on a CR, LF or NUL within
 * `data_len` bytes of `data`, or on an invalid name (caller bugs, but not
 * asserted: fuzzers feed anything).
 */
struct ts_event *ts_event_new(uint64_t id, const char *name, const char *data, size_t data_len);
struct ts_event *ts_event_ref(struct ts_event *ev);
void ts_event_unref(struct ts_event *ev);

struct ts_event_log {
    struct ts_event **ring; /* capacity events_max */
    size_t events_max;
    size_t bytes_max;
    size_t head;      /* index of the oldest retained event */
    size_t count;     /* retained events */
    size_t bytes;     /* frame bytes retained */
    uint64_t next_id; /* id the next append gets; starts at 1 */
    uint64_t evicted; /* events evicted so far */
};

/* events_max >= 1. Returns 0 or -ENOMEM / -EINVAL. */
int ts_event_log_init(struct ts_event_log *log, size_t events_max, size_t bytes_max);
void ts_event_log_dispose(struct ts_event_log *log);

/* Encode and append an event with the next id, evicting the oldest as the
 * caps require. Returns the new id (>= 1), or 0 on out of memory or when
 * ts_event_new() refuses name or data; then the log is unchanged. */
uint64_t ts_event_log_append(struct ts_event_log *log, const char *name, const char *data,
                             size_t data_len);

/* An event from its encoded frame, as an owner made it with ts_event_new()
 * and the store kept it (cluster mode): one reference, or NULL when the
 * frame does not start with "id: <id>\n" and end with "\n\n", or on out of
 * memory. */
struct ts_event *ts_event_from_frame(uint64_t id, const char *frame, size_t len);

/* Append an encoded event whose id is next_id, taking the caller's
 * reference, evicting as ts_event_log_append() does. */
void ts_event_log_push(struct ts_event_log *log, struct ts_event *ev);

/* Forget every event and go on from `next_id` (>= next_id): the events
 * before it count as evicted. For a cache that learnt it is behind. */
void ts_event_log_restart(struct ts_event_log *log, uint64_t next_id);

/* Id of the oldest retained event; next_id when the log is empty. */
uint64_t ts_event_log_first_id(const struct ts_event_log *log);

/* Id of the newest event, 0 when none was ever appended. */
uint64_t ts_event_log_last_id(const struct ts_event_log *log);

/* The retained event with this id, borrowed (valid until the log changes;
 * take a reference to keep it). NULL when evicted or not yet appended. */
struct ts_event *ts_event_log_get(const struct ts_event_log *log, uint64_t id);

/*
 * Parse a Last-Event-ID value (header or query): a decimal event id of this
 * server, 0 .. 2^63-1, optionally surrounded by spaces. Anything else
 * (empty, negative, garbage, overflow) returns -EINVAL and the caller treats
 * the request as carrying no id (the stream replays from the oldest event),
 * as the SSE spec has clients send whatever they last saw.
 */
int ts_parse_last_event_id(const char *s, uint64_t *out);

/* Informational events without an id ("gap", "draining"), one reference. */
struct ts_event *ts_event_gap(uint64_t first_missing, uint64_t last_missing);
struct ts_event *ts_event_draining(const char *reason);

#endif
