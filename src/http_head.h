/*
 * A strict HTTP/1.1 request-head parser (RFC 9112, RFC 9110), written here
 * because Debian 12 packages no maintained one (no llhttp or picohttpparser;
 * libhttp-parser 2.9.4 is archived upstream and lenient where a server in
 * front of proxies must not be). It is fuzzed (tests/fuzz/fuzz_http_head.c,
 * every split of the input) and tested against an independent parser, h11
 * (tests/e2e/test_head_differential.py).
 *
 * Two steps over one contiguous buffer, zero-copy (every pointer below points
 * into the caller's buffer, but for `path` of an absolute form without one,
 * which is a static "/"):
 *   ts_http_head_scan()  as bytes arrive: finds the end of the head, and
 *                        rejects at once what can never become a valid one
 *                        (a bare CR or LF, a NUL, a line over the limit), so a
 *                        broken request is answered, not left to time out;
 *   ts_http_head_parse() once the head is complete: the request line, every
 *                        field line, framing (Content-Length, Transfer-
 *                        Encoding), Host, Connection, Expect.
 * An error is an HTTP status (400, 414, 417, 431, 501, 505) and a sentence;
 * after any error the connection must answer once and close: no byte after a
 * rejected head is ever read as a request (RFC 9112 section 9.6 and 11.2).
 *
 * What is refused that some parsers accept: obs-fold (a line starting with SP
 * or HTAB, RFC 9112 5.2), whitespace between a field name and its colon
 * (5.1), bare CR or LF as a line end (2.2), NUL and other controls in a
 * value, more than one Content-Length or a list of them, Transfer-Encoding
 * other than exactly "chunked" (501) or together with Content-Length, or in
 * HTTP/1.0, a missing (HTTP/1.1), duplicated or malformed Host (3.2),
 * duplicates of the singleton fields (Host, Content-Length,
 * Transfer-Encoding, Authorization, Content-Type, Last-Event-ID), request
 * targets with characters RFC 3986 does not allow or a bad %-escape, the
 * asterisk form but for OPTIONS, the authority form (CONNECT). Accepted: the
 * absolute form "http://authority/path" (3.2.2: its authority stands in for
 * Host), obs-text (bytes 0x80-0xFF) in values, up to TS_HTTP_EMPTY_LINES_MAX
 * empty lines before the request line (2.2), HTTP/1.x for any x (1.1
 * semantics for x >= 1).
 *
 * No state outside the caller's structs; any thread.
 */
#ifndef TS_HTTP_HEAD_H
#define TS_HTTP_HEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TS_HTTP_FIELDS_MAX 100    /* field lines in one head; more: 431 */
#define TS_HTTP_EMPTY_LINES_MAX 8 /* CRLFs before the request line */

struct ts_http_limits {
    size_t line_max; /* request line, without CRLF; longer: 414 */
    size_t head_max; /* the whole head, empty lines and final CRLF included; larger: 431 */
};

/* Where ts_http_head_scan() got to; zero it before the first call. */
struct ts_http_scan {
    size_t scanned;    /* bytes looked at */
    size_t line_end;   /* end of the request line (its CR), 0 until seen */
    size_t start;      /* where the request line begins (after empty lines) */
    size_t line_begin; /* where the field line being scanned begins */
    unsigned empties;  /* empty lines skipped */
};

struct ts_http_str {
    const char *p; /* into the caller's buffer; not NUL-terminated */
    size_t len;
};

struct ts_http_field {
    struct ts_http_str name;  /* as sent (compare case-insensitively) */
    struct ts_http_str value; /* without leading and trailing SP/HTAB */
};

enum ts_http_target_form {
    TS_HTTP_ORIGIN_FORM,   /* /path?query */
    TS_HTTP_ABSOLUTE_FORM, /* http://authority/path?query */
    TS_HTTP_ASTERISK_FORM, /* * (OPTIONS only) */
};

enum ts_http_framing {
    TS_HTTP_NO_BODY, /* neither Content-Length nor Transfer-Encoding */
    TS_HTTP_LENGTH,  /* Content-Length: content_length */
    TS_HTTP_CHUNKED, /* Transfer-Encoding: chunked */
};

struct ts_http_head {
    size_t head_len; /* bytes of the head, through the final CRLF CRLF */
    struct ts_http_str method;
    struct ts_http_str target; /* as sent */
    enum ts_http_target_form form;
    struct ts_http_str path;  /* raw (still %-encoded), begins with '/'; "*" for asterisk */
    struct ts_http_str query; /* after '?', without it; len 0 (p NULL) when absent */
    bool has_query;
    int version_minor;            /* HTTP/1.<minor> */
    struct ts_http_str authority; /* Host, or the absolute form's authority */
    struct ts_http_field fields[TS_HTTP_FIELDS_MAX];
    size_t nfields;
    enum ts_http_framing framing;
    uint64_t content_length;
    bool keep_alive;      /* by version and Connection */
    bool expect_continue; /* Expect: 100-continue */
};

/*
 * Look at the bytes of buf[0..len) that earlier calls have not seen (the
 * buffer only grows between calls; `sc` remembers). Returns the length of
 * the head once its final CRLF CRLF is in, 0 when more bytes are needed, or
 * -status with a sentence in *why (static text): -400 for a bare CR or LF, a
 * NUL, or too many empty lines; -414 for a request line over
 * lim->line_max; -431 for a head over lim->head_max.
 */
int ts_http_head_scan(struct ts_http_scan *sc, const char *buf, size_t len,
                      const struct ts_http_limits *lim, const char **why);

/*
 * Parse the complete head buf[0..head_len) (as ts_http_head_scan() found it,
 * with `sc` from that scan). Returns 0, or -status (400, 414, 417, 431, 501,
 * 505) with a sentence in *why (static text, never containing request
 * bytes). On error `h` holds nothing useful.
 */
int ts_http_head_parse(struct ts_http_head *h, const struct ts_http_scan *sc, const char *buf,
                       size_t head_len, const struct ts_http_limits *lim, const char **why);

/* The fields that decide framing, routing or authentication, which may
 * appear once: Host, Content-Length, Transfer-Encoding, Authorization,
 * Content-Type, Last-Event-ID. Returns the field's index among them (below
 * TS_HTTP_SINGLETONS), or -1 for any other name (case-insensitive). */
#define TS_HTTP_SINGLETONS 6
int ts_http_singleton(struct ts_http_str name);

/* Is `a` host[:port] as RFC 9112 section 3.2 takes it (an IP literal in
 * brackets or a reg-name, an optional port up to 65535; empty is allowed)? */
bool ts_http_authority_ok(struct ts_http_str a);

/* The value of the field named `name` (case-insensitive), the first if there
 * are several; NULL when absent. */
const struct ts_http_str *ts_http_head_field(const struct ts_http_head *h, const char *name);

/*
 * Decode the %-escapes of one path segment `seg` (no '/' in it) into `out`
 * (room for seg.len bytes; NULL only checks). A segment is the text between two '/' of the raw
 * path, so "%2F" is a '/' inside a segment, never a separator. Returns the
 * decoded length, or -EINVAL for a bad escape or a decoded control byte
 * (0x00-0x1F, 0x7F), which no route takes.
 */
long ts_http_segment_decode(struct ts_http_str seg, char *out);

#endif
