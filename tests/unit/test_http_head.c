/*
 * The strict request-head parser: the scanner's early answers, every rule of
 * src/http_head.h by example, and the parsed fields of valid heads.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http_head.h"
#include "util.h"

static const struct ts_http_limits limits = {.line_max = 64, .head_max = 512};

/* Scan all of `text` (given length, may hold NUL), then parse. Returns the
 * scanner's or the parser's result; 0 is a parsed head. */
static int
parse_len(const char *text, size_t len, struct ts_http_head *h, const char **why)
{
    struct ts_http_scan sc = {0};
    int n = ts_http_head_scan(&sc, text, len, &limits, why);

    if (n <= 0)
        return n == 0 ? 1 : n; /* 1: incomplete */
    return ts_http_head_parse(h, &sc, text, (size_t)n, &limits, why);
}

static int
parse(const char *text, struct ts_http_head *h, const char **why)
{
    return parse_len(text, strlen(text), h, why);
}

static void
assert_str(struct ts_http_str s, const char *want)
{
    if (s.len != strlen(want) || memcmp(s.p, want, s.len) != 0)
        fail_msg("got \"%.*s\", want \"%s\"", (int)s.len, s.p, want);
}

static void
test_valid_heads(void **state)
{
    struct ts_http_head h;
    const char *why = NULL;

    (void)state;
    assert_int_equal(parse("GET /v1/tasks?state=running HTTP/1.1\r\nHost: x:8080\r\n"
                           "Accept:  text/event-stream \t\r\nX-Empty:\r\n\r\n",
                           &h, &why),
                     0);
    assert_str(h.method, "GET");
    assert_str(h.target, "/v1/tasks?state=running");
    assert_int_equal(h.form, TS_HTTP_ORIGIN_FORM);
    assert_str(h.path, "/v1/tasks");
    assert_true(h.has_query);
    assert_str(h.query, "state=running");
    assert_int_equal(h.version_minor, 1);
    assert_str(h.authority, "x:8080");
    assert_int_equal(h.nfields, 3);
    assert_str(h.fields[1].name, "Accept");
    assert_str(h.fields[1].value, "text/event-stream");
    assert_str(h.fields[2].value, "");
    assert_int_equal(h.framing, TS_HTTP_NO_BODY);
    assert_true(h.keep_alive);
    assert_false(h.expect_continue);
    assert_str(*ts_http_head_field(&h, "accept"), "text/event-stream");
    assert_null(ts_http_head_field(&h, "authorization"));

    /* Leading empty lines (RFC 9112 2.2), HTTP/1.0 without Host, keep-alive. */
    assert_int_equal(parse("\r\n\r\nGET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", &h, &why),
                     0);
    assert_int_equal(h.version_minor, 0);
    assert_true(h.keep_alive);
    assert_int_equal(h.authority.len, 0);
    assert_int_equal(parse("GET / HTTP/1.0\r\n\r\n", &h, &why), 0);
    assert_false(h.keep_alive);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: x, close\r\n\r\n", &h, &why),
                     0);
    assert_false(h.keep_alive);

    /* Framing. */
    assert_int_equal(
        parse("POST /v1/tasks HTTP/1.1\r\nHost: a\r\nContent-Length: 0042\r\n\r\n", &h, &why), 0);
    assert_int_equal(h.framing, TS_HTTP_LENGTH);
    assert_int_equal(h.content_length, 42);
    assert_int_equal(parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n"
                           "Expect: 100-Continue\r\n\r\n",
                           &h, &why),
                     0);
    assert_int_equal(h.framing, TS_HTTP_CHUNKED);
    assert_true(h.expect_continue);

    /* The absolute form: its authority stands in for Host. */
    assert_int_equal(
        parse("GET http://Example.org:81/v1/tasks?x HTTP/1.1\r\nHost: other\r\n\r\n", &h, &why), 0);
    assert_int_equal(h.form, TS_HTTP_ABSOLUTE_FORM);
    assert_str(h.authority, "Example.org:81");
    assert_str(h.path, "/v1/tasks");
    assert_str(h.query, "x");
    assert_int_equal(parse("GET http://a HTTP/1.1\r\nHost: a\r\n\r\n", &h, &why), 0);
    assert_str(h.path, "/");
    assert_false(h.has_query);

    /* The asterisk form, IPv6 and empty Host, obs-text in a value. */
    assert_int_equal(parse("OPTIONS * HTTP/1.1\r\nHost: [::1]:9090\r\n\r\n", &h, &why), 0);
    assert_int_equal(h.form, TS_HTTP_ASTERISK_FORM);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost:\r\nX: caf\xc3\xa9\r\n\r\n", &h, &why), 0);
    assert_int_equal(h.authority.len, 0);
    assert_int_equal(parse("GET /a%2Fb%20c HTTP/1.2\r\nHost: a\r\n\r\n", &h, &why), 0);
    assert_int_equal(h.version_minor, 2);

    /* Corners the differential test against h11 found. An IP literal in
     * the absolute form (RFC 3986 3.2.2); "close" wins wherever it is
     * (RFC 9112 9.3); 100-continue is ignored in HTTP/1.0 (RFC 9110
     * 10.1.1); methods are case-sensitive. */
    assert_int_equal(
        parse("GET http://[::1]:8080/x HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", &h, &why), 0);
    assert_str(h.authority, "[::1]:8080");
    assert_int_equal(
        parse("GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n", &h, &why),
        0);
    assert_false(h.keep_alive);
    assert_int_equal(
        parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", &h, &why), 0);
    assert_false(h.expect_continue);
}

static void
test_rejected_heads(void **state)
{
    static const struct {
        const char *text;
        int status;
        const char *why; /* a part of the sentence */
    } rows[] = {
        /* line ends */
        {"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "LF without CR"},
        {"GET / HTTP/1.1\r\nHost: a\n\n", 400, "LF without CR"},
        {"GET / HTTP/1.1\rHost: a\r\n\r\n", 400, "CR not followed by LF"},
        {"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, "CR not followed by LF"},
        {"\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n", 400, "empty lines"},
        /* the request line */
        {"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "one space each"},
        {"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "one space each"},
        {"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request line"},
        {"GET /\r\nHost: a\r\n\r\n", 400, "request line"},
        {"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "not a token"},
        {"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400, "not HTTP/1.1"},
        {"GET / http/1.1\r\nHost: a\r\n\r\n", 400, "not HTTP/1.1"},
        {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "only HTTP/1.0"},
        {"GET / HTTP/0.9\r\nHost: a\r\n\r\n", 505, "only HTTP/1.0"},
        /* targets */
        {"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "RFC 3986"},
        {"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "RFC 3986"},
        {"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400, "RFC 3986"},
        {"GET /%0 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "two hex digits"},
        {"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400, "two hex digits"},
        {"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "only for OPTIONS"},
        {"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 501, "CONNECT"},
        {"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "neither a path"},
        {"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "neither a path"},
        {"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "authority"},
        {"GET http:/// HTTP/1.1\r\nHost: a\r\n\r\n", 400, "authority"},
        {"GET http://:80/ HTTP/1.1\r\nHost: :80\r\n\r\n", 400, "authority"},
        {"GET /[x] HTTP/1.1\r\nHost: a\r\n\r\n", 400, "RFC 3986"},
        {"options * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "only for OPTIONS"},
        /* field lines */
        {"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400, "obs-fold"},
        {"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n", 400, "obs-fold"},
        {"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "obs-fold"},
        {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "field name"},
        {"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", 400, "field name"},
        {"GET / HTTP/1.1\r\nHost a\r\n\r\n", 400, "field name"},
        {"GET / HTTP/1.1\r\nHosta\r\n\r\n", 400, "no colon"},
        {"GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n", 400, "empty name"},
        {"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", 400, "control character"},
        {"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", 400, "control character"},
        /* Host */
        {"GET / HTTP/1.1\r\n\r\n", 400, "without a Host"},
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "more than one Host"},
        {"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400, "Host field is not"},
        {"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", 400, "Host field is not"},
        {"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, "Host field is not"},
        {"GET / HTTP/1.1\r\nHost: [zz]\r\n\r\n", 400, "Host field is not"},
        /* framing */
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400,
         "framing field"},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", 400, "not a number"},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", 400, "not a number"},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "not a number"},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400, "not a number"},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400,
         "too large"},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
         400, "both"},
        {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "HTTP/1.0"},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "only"},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 501, "only"},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 501, "only"},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501, "only"},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         "Transfer-Encoding: chunked\r\n\r\n",
         400, "framing field"},
        /* singletons */
        {"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k\r\nauthorization: Bearer j\r\n\r\n",
         400, "may appear once"},
        {"GET / HTTP/1.1\r\nHost: a\r\nLast-Event-ID: 1\r\nLast-Event-ID: 2\r\n\r\n", 400,
         "may appear once"},
        {"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: a\r\nContent-Type: a\r\n\r\n", 400,
         "may appear once"},
        {"GET / HTTP/1.1\r\nHost: a\r\nExpect: x\r\n\r\n", 417, "100-continue"},
    };
    struct ts_http_head h;

    (void)state;
    for (size_t i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        const char *why = NULL;
        int rc = parse(rows[i].text, &h, &why);

        if (rc != -rows[i].status || why == NULL || strstr(why, rows[i].why) == NULL)
            fail_msg("row %zu: %d (%s), want -%d (%s)", i, rc, why != NULL ? why : "-",
                     rows[i].status, rows[i].why);
    }
}

static void
test_nul_and_limits(void **state)
{
    static const char nul_value[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
    char big[1024];
    struct ts_http_head h;
    const char *why = NULL;
    int n;

    (void)state;
    assert_int_equal(parse_len(nul_value, sizeof(nul_value) - 1, &h, &why), -400);
    assert_non_null(strstr(why, "NUL"));

    /* The request line: 64 bytes pass, 65 get 414, even before its CRLF. */
    n = snprintf(big, sizeof(big), "GET /%0*d HTTP/1.1", 64 - 14, 0);
    assert_int_equal(n, 64);
    memcpy(big + n, "\r\nHost: a\r\n\r\n", 14);
    assert_int_equal(parse(big, &h, &why), 0);
    snprintf(big, sizeof(big), "GET /%0*d", 60, 0);
    assert_int_equal(parse(big, &h, &why), -414);

    /* The whole head: 431 past head_max, also without a final CRLF. */
    n = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: a\r\n");
    while (n < 520)
        n += snprintf(big + n, sizeof(big) - (size_t)n, "X-Pad: 0123456789\r\n");
    assert_int_equal(parse(big, &h, &why), -431);
}

static void
test_too_many_fields(void **state)
{
    static const struct ts_http_limits roomy = {.line_max = 64, .head_max = 8192};
    char buf[8192];
    struct ts_http_scan sc = {0};
    struct ts_http_head h;
    const char *why = NULL;
    int n, len;

    (void)state;
    len = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 1; i < TS_HTTP_FIELDS_MAX + 1; i++)
        len += snprintf(buf + len, sizeof(buf) - (size_t)len, "X%d: y\r\n", i);
    len += snprintf(buf + len, sizeof(buf) - (size_t)len, "\r\n");
    n = ts_http_head_scan(&sc, buf, (size_t)len, &roomy, &why);
    assert_int_equal(n, len);
    assert_int_equal(ts_http_head_parse(&h, &sc, buf, (size_t)n, &roomy, &why), -431);
}

/* Bytes arriving one at a time give the verdict the whole buffer gives, and
 * a broken line is refused as soon as its bad byte is in. */
static void
test_scan_incremental(void **state)
{
    static const char head[] = "\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
    static const char broken[] = "GET / HTTP/1.1\r\nHost: a\nX: never read\r\n";
    struct ts_http_scan sc = {0};
    const char *why = NULL;
    size_t i;
    int n = 0;

    (void)state;
    for (i = 1; i <= sizeof(head) - 1 && n == 0; i++)
        n = ts_http_head_scan(&sc, head, i, &limits, &why);
    assert_int_equal(n, sizeof(head) - 1 - 3); /* the body is not the head's */
    assert_int_equal(i - 1, (size_t)n);        /* answered at its last byte */
    assert_int_equal(sc.empties, 1);

    memset(&sc, 0, sizeof(sc));
    for (i = 1, n = 0; i <= sizeof(broken) - 1 && n == 0; i++)
        n = ts_http_head_scan(&sc, broken, i, &limits, &why);
    assert_int_equal(n, -400);
    assert_int_equal(i - 1, strlen("GET / HTTP/1.1\r\nHost: a\n"));

    /* A CR at the end of what arrived waits for the next byte. */
    memset(&sc, 0, sizeof(sc));
    assert_int_equal(ts_http_head_scan(&sc, "GET / HTTP/1.1\r", 15, &limits, &why), 0);
    assert_int_equal(ts_http_head_scan(&sc, "GET / HTTP/1.1\rX", 16, &limits, &why), -400);
}

static void
test_segment_decode(void **state)
{
    static const struct {
        const char *seg;
        long len; /* -EINVAL or the decoded length */
        const char *want;
    } rows[] = {
        {"abc", 3, "abc"},
        {"a%2Fb", 3, "a/b"},
        {"%41%62", 2, "Ab"},
        {"caf%C3%A9", 5, "caf\xc3\xa9"},
        {"", 0, ""},
        {"%00", -EINVAL, NULL},
        {"a%00b", -EINVAL, NULL},
        {"%1f", -EINVAL, NULL},
        {"%7F", -EINVAL, NULL},
        {"%", -EINVAL, NULL},
        {"%4", -EINVAL, NULL},
        {"%g0", -EINVAL, NULL},
    };
    char out[32];

    (void)state;
    for (size_t i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        struct ts_http_str seg = {rows[i].seg, strlen(rows[i].seg)};
        long n = ts_http_segment_decode(seg, out);

        if (n != rows[i].len || (n >= 0 && memcmp(out, rows[i].want, (size_t)n) != 0))
            fail_msg("row %zu (%s): %ld", i, rows[i].seg, n);
        assert_int_equal(ts_http_segment_decode(seg, NULL), n); /* only checking */
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_heads),      cmocka_unit_test(test_rejected_heads),
        cmocka_unit_test(test_nul_and_limits),   cmocka_unit_test(test_too_many_fields),
        cmocka_unit_test(test_scan_incremental), cmocka_unit_test(test_segment_decode),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
