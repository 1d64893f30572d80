/* Small helpers shared by several modules. */
#ifndef TS_UTIL_H
#define TS_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TS_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* The `type` whose `member` `ptr` points to. A `ptr` of another type than
 * the member's draws a warning (an error with -Werror): it is compared, in
 * sizeof and so never evaluated, with a pointer to the member. */
#define ts_container_of(ptr, type, member)                                                         \
    ((type *)(void *)(((char *)(ptr)) - offsetof(type, member) -                                   \
                      0 * sizeof((ptr) == &((type *)0)->member)))

/* Compare two secrets in time that depends only on the lengths, never on
 * where they differ. */
bool ts_ct_equal(const void *a, size_t alen, const void *b, size_t blen);

/* "500ms", "10s", "10m", "1h", or a bare number of seconds. Negative values
 * and overflow are errors. Returns 0 or -EINVAL. */
int ts_parse_duration_ms(const char *s, int64_t *out_ms);

/* "1048576", "64k", "16M", "1G" (powers of 1024). Returns 0 or -EINVAL. */
int ts_parse_size(const char *s, uint64_t *out);

/* Unsigned decimal, no sign, no spaces, within [min, max]. 0 or -EINVAL. */
int ts_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* A wall-clock time (nanoseconds since the epoch) as RFC 3339 UTC with
 * milliseconds: "2026-11-24T16:24:53.123Z". Returns `buf`. */
#define TS_TIME_LEN 32
const char *ts_format_time(int64_t wall_ns, char buf[TS_TIME_LEN]);

/* 128 random bits as 32 lowercase hex digits plus NUL. 0 or negative errno. */
int ts_random_id(char out[33]);

/* True for exactly 32 lowercase hex digits. */
bool ts_is_task_id(const char *s);

/* The longest UTF-8 sequence, in bytes. */
#define TS_UTF8_MAX 4

/* Length of the well-formed UTF-8 sequence at `s` (RFC 3629: no overlong
 * forms, no surrogates, nothing past U+10FFFF), 1 for any byte below 0x80
 * (NUL included), or 0 when there is none, also when it would need more than
 * the `left` bytes there are. Reads nothing past s[left - 1]. A NUL-terminated
 * string passes strnlen(s, TS_UTF8_MAX). */
size_t ts_utf8_sequence(const unsigned char *s, size_t left);

/*
 * A byte buffer that grows up to a cap fixed at init (curl's dynbuf).
 * Appending past the cap fails with -E2BIG and leaves the buffer as it was.
 */
struct ts_buf {
    char *data; /* NUL-terminated when len > 0 */
    size_t len;
    size_t alloc;
    size_t max;
};

void ts_buf_init(struct ts_buf *b, size_t max);
void ts_buf_dispose(struct ts_buf *b);
int ts_buf_append(struct ts_buf *b, const void *p, size_t n);
int ts_buf_printf(struct ts_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hand the bytes to the caller (free() them); the buffer is empty after. */
char *ts_buf_take(struct ts_buf *b, size_t *len);

/*
 * "unknown <what> "<name>" (allowed: a, b)", as much as fits in err: begin,
 * add each name that exists, end ("none" when none was added). Any thread.
 */
void ts_unknown_begin(char *err, size_t errlen, const char *what, const char *name);
void ts_unknown_add(char *err, size_t errlen, const char *allowed);
void ts_unknown_end(char *err, size_t errlen);

#endif
