/*
 * The strict request-head parser; the rules and the reasons are in
 * http_head.h. Character classes follow RFC 9110 section 5.6.2 (token),
 * 5.5 (field values) and RFC 3986 section 3 (targets and authorities).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "http_head.h"

#define ERR(status, text)                                                                          \
    do {                                                                                           \
        *why = (text);                                                                             \
        return -(status);                                                                          \
    } while (0)

static const struct ts_http_str root_path = {"/", 1};

/* ---- character classes ---- */

static bool
is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool
is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int
hex_value(unsigned char c)
{
    if (is_digit(c))
        return c - '0';
    return (c | 0x20) - 'a' + 10;
}

/* tchar: "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" /
 * "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static bool
is_tchar(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool
is_unreserved(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

static bool
is_sub_delim(unsigned char c)
{
    return c != '\0' && strchr("!$&'()*+,;=", c) != NULL;
}

/* A byte of a request target other than '%': pchar, '/' and '?'. */
static bool
is_target_char(unsigned char c)
{
    return is_unreserved(c) || is_sub_delim(c) || c == ':' || c == '@' || c == '/' || c == '?';
}

/* field-vchar / SP / HTAB: VCHAR and obs-text. */
static bool
is_value_char(unsigned char c)
{
    return c == ' ' || c == '\t' || (c >= 0x21 && c != 0x7f);
}

static bool
str_is(struct ts_http_str s, const char *lit)
{
    size_t n = strlen(lit);

    return s.len == n && strncasecmp(s.p, lit, n) == 0;
}

/* ---- scanning ---- */

int
ts_http_head_scan(struct ts_http_scan *sc, const char *buf, size_t len,
                  const struct ts_http_limits *lim, const char **why)
{
    size_t i;

    for (i = sc->scanned; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        size_t line_begin = sc->line_end == 0 ? sc->start : sc->line_begin;

        if (i >= lim->head_max)
            ERR(sc->line_end == 0 ? 414 : 431, sc->line_end == 0
                                                   ? "the request line is longer than allowed"
                                                   : "the request head is larger than allowed");
        if (c == '\0')
            ERR(400, "a NUL byte in the request head");
        if (c == '\r') {
            if (i + 1 == len)
                break; /* its LF may come in the next read */
            if (buf[i + 1] != '\n')
                ERR(400, "a CR not followed by LF in the request head");
            continue;
        }
        if (c != '\n') {
            if (sc->line_end == 0 && i - sc->start >= lim->line_max)
                ERR(414, "the request line is longer than allowed");
            continue;
        }
        if (i == 0 || buf[i - 1] != '\r')
            ERR(400, "a line ends in LF without CR (RFC 9112 section 2.2)");
        if (i - 1 == line_begin) { /* an empty line */
            if (sc->line_end != 0) {
                sc->scanned = i + 1;
                return (int)(i + 1);
            }
            if (++sc->empties > TS_HTTP_EMPTY_LINES_MAX)
                ERR(400, "too many empty lines before the request line");
            sc->start = i + 1;
            continue;
        }
        if (sc->line_end == 0)
            sc->line_end = i - 1;
        sc->line_begin = i + 1;
    }
    sc->scanned = i;
    return 0;
}

/* ---- the request line ---- */

/* host [ ":" port ]: an IP literal in brackets, or a reg-name (which covers
 * IPv4); an empty Host is allowed (RFC 9112 section 3.2). */
bool
ts_http_authority_ok(struct ts_http_str a)
{
    const unsigned char *p = (const unsigned char *)a.p;
    size_t i = 0, host_end;

    if (a.len > 0 && p[0] == '[') {
        char lit[INET6_ADDRSTRLEN];
        unsigned char bin[16];
        const unsigned char *close = memchr(p, ']', a.len);
        size_t n;

        if (close == NULL)
            return false;
        n = (size_t)(close - p) - 1;
        if (n == 0 || n >= sizeof(lit))
            return false;
        memcpy(lit, p + 1, n);
        lit[n] = '\0';
        if (inet_pton(AF_INET6, lit, bin) != 1)
            return false;
        host_end = n + 2;
    } else {
        while (i < a.len && p[i] != ':') {
            if (p[i] == '%') {
                if (i + 2 >= a.len || !is_hex(p[i + 1]) || !is_hex(p[i + 2]))
                    return false;
                i += 3;
                continue;
            }
            if (!is_unreserved(p[i]) && !is_sub_delim(p[i]))
                return false;
            i++;
        }
        host_end = i;
    }
    if (host_end == a.len)
        return true;
    if (p[host_end] != ':' || a.len - host_end - 1 > 5)
        return false;
    {
        unsigned long port = 0;

        for (i = host_end + 1; i < a.len; i++) {
            if (!is_digit(p[i]))
                return false;
            port = port * 10 + (p[i] - '0');
        }
        return port <= 65535;
    }
}

/* Split `rest` (empty, or from its first '/' or '?' on) into path and
 * query; an empty path is "/". */
static void
split_path(struct ts_http_head *h, struct ts_http_str rest)
{
    const char *q = memchr(rest.p, '?', rest.len);

    if (q == NULL) {
        h->path = rest;
    } else {
        h->path = (struct ts_http_str){rest.p, (size_t)(q - rest.p)};
        h->query = (struct ts_http_str){q + 1, rest.len - h->path.len - 1};
        h->has_query = true;
    }
    if (h->path.len == 0)
        h->path = root_path; /* "http://host?x" */
}

/* Methods are case-sensitive (RFC 9110 section 9.1). */
static bool
method_is(const struct ts_http_head *h, const char *name)
{
    return h->method.len == strlen(name) && memcmp(h->method.p, name, h->method.len) == 0;
}

/* The bytes of t[from, to) are target characters or %-escapes; '[' and ']'
 * only where `brackets` (an absolute form's authority, RFC 3986 3.2.2). */
static int
check_target_chars(struct ts_http_str t, size_t from, size_t to, bool brackets, const char **why)
{
    const unsigned char *p = (const unsigned char *)t.p;

    for (size_t i = from; i < to; i++) {
        if (p[i] == '%') {
            if (i + 2 >= to || !is_hex(p[i + 1]) || !is_hex(p[i + 2]))
                ERR(400, "a % in the request target is not followed by two hex digits");
            i += 2;
        } else if (!is_target_char(p[i]) && !(brackets && (p[i] == '[' || p[i] == ']'))) {
            ERR(400, "the request target holds a character RFC 3986 does not allow (send it "
                     "%-encoded)");
        }
    }
    return 0;
}

static int
parse_target(struct ts_http_head *h, const char **why)
{
    struct ts_http_str t = h->target;
    const unsigned char *p = (const unsigned char *)t.p;
    int rc;

    if (t.len == 1 && p[0] == '*') {
        if (!method_is(h, "OPTIONS"))
            ERR(400, "the asterisk form of a request target is only for OPTIONS");
        h->form = TS_HTTP_ASTERISK_FORM;
        h->path = t;
        return 0;
    }
    if (p[0] == '/') {
        rc = check_target_chars(t, 0, t.len, false, why);
        if (rc != 0)
            return rc;
        h->form = TS_HTTP_ORIGIN_FORM;
        split_path(h, t);
        return 0;
    }
    if (method_is(h, "CONNECT"))
        ERR(501, "CONNECT is not implemented");
    {
        size_t scheme = t.len > 7 && strncasecmp(t.p, "http://", 7) == 0    ? 7
                        : t.len > 8 && strncasecmp(t.p, "https://", 8) == 0 ? 8
                                                                            : 0;
        size_t end = scheme;

        if (scheme == 0)
            ERR(400, "the request target is neither a path nor an http URI");
        while (end < t.len && p[end] != '/' && p[end] != '?')
            end++;
        rc = check_target_chars(t, scheme, end, true, why);
        if (rc == 0)
            rc = check_target_chars(t, end, t.len, false, why);
        if (rc != 0)
            return rc;
        h->authority = (struct ts_http_str){t.p + scheme, end - scheme};
        /* An http URI with an empty host is invalid (RFC 9110 4.2.1). */
        if (h->authority.len == 0 || h->authority.p[0] == ':' ||
            memchr(h->authority.p, '@', h->authority.len) != NULL ||
            !ts_http_authority_ok(h->authority))
            ERR(400, "the authority of the request target is not host[:port]");
        h->form = TS_HTTP_ABSOLUTE_FORM;
        split_path(h, (struct ts_http_str){t.p + end, t.len - end});
        return 0;
    }
}

static int
parse_request_line(struct ts_http_head *h, const char *line, size_t len, const char **why)
{
    const char *sp1 = memchr(line, ' ', len), *sp2;
    const char *version;
    size_t i;

    if (sp1 == NULL)
        ERR(400, "the request line is not METHOD TARGET HTTP/1.1");
    sp2 = memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - line));
    if (sp2 == NULL || memchr(sp2 + 1, ' ', len - (size_t)(sp2 + 1 - line)) != NULL)
        ERR(400, "the request line is not METHOD TARGET HTTP/1.1 (one space each)");
    h->method = (struct ts_http_str){line, (size_t)(sp1 - line)};
    h->target = (struct ts_http_str){sp1 + 1, (size_t)(sp2 - sp1 - 1)};
    version = sp2 + 1;
    if (h->method.len == 0 || h->target.len == 0)
        ERR(400, "the request line is not METHOD TARGET HTTP/1.1 (one space each)");
    for (i = 0; i < h->method.len; i++)
        if (!is_tchar((unsigned char)line[i]))
            ERR(400, "the method is not a token");
    if ((size_t)(line + len - version) != 8 || strncmp(version, "HTTP/", 5) != 0 ||
        !is_digit((unsigned char)version[5]) || version[6] != '.' ||
        !is_digit((unsigned char)version[7]))
        ERR(400, "the protocol version is not HTTP/1.1");
    if (version[5] != '1')
        ERR(505, "only HTTP/1.0 and HTTP/1.1 are supported");
    h->version_minor = version[7] - '0';
    return parse_target(h, why);
}

/* ---- field lines ---- */

static int
parse_field(struct ts_http_head *h, const char *line, size_t len, const char **why)
{
    const unsigned char *p = (const unsigned char *)line;
    struct ts_http_field *f;
    size_t i = 0, vb, ve;

    if (p[0] == ' ' || p[0] == '\t')
        ERR(400, "a field line starts with a space or tab (obs-fold, RFC 9112 section 5.2)");
    while (i < len && p[i] != ':') {
        if (!is_tchar(p[i]))
            ERR(400, "a field name holds a space or a character that is not a token "
                     "(RFC 9112 section 5.1)");
        i++;
    }
    if (i == len)
        ERR(400, "a field line has no colon");
    if (i == 0)
        ERR(400, "a field line has an empty name");
    if (h->nfields == TS_HTTP_FIELDS_MAX)
        ERR(431, "the request has too many header fields");
    for (vb = i + 1; vb < len && (p[vb] == ' ' || p[vb] == '\t'); vb++)
        ;
    for (ve = len; ve > vb && (p[ve - 1] == ' ' || p[ve - 1] == '\t'); ve--)
        ;
    for (size_t j = vb; j < ve; j++)
        if (!is_value_char(p[j]))
            ERR(400, "a field value holds a control character");
    f = &h->fields[h->nfields++];
    f->name = (struct ts_http_str){line, i};
    f->value = (struct ts_http_str){line + vb, ve - vb};
    return 0;
}

/* Does the comma-separated list `v` hold the token `tok`? */
static bool
list_has(struct ts_http_str v, const char *tok)
{
    size_t i = 0;

    while (i < v.len) {
        size_t b, e;

        while (i < v.len && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
            i++;
        b = i;
        while (i < v.len && v.p[i] != ',')
            i++;
        for (e = i; e > b && (v.p[e - 1] == ' ' || v.p[e - 1] == '\t'); e--)
            ;
        if (e > b && str_is((struct ts_http_str){v.p + b, e - b}, tok))
            return true;
    }
    return false;
}

/* The fields that decide framing, routing or authentication: exactly one
 * meaning each, so they may appear at most once. */
static const char *const singletons[TS_HTTP_SINGLETONS] = {
    "host", "content-length", "transfer-encoding", "authorization", "content-type", "last-event-id",
};

int
ts_http_singleton(struct ts_http_str name)
{
    for (int i = 0; i < TS_HTTP_SINGLETONS; i++)
        if (str_is(name, singletons[i]))
            return i;
    return -1;
}

static int
check_fields(struct ts_http_head *h, const char **why)
{
    const struct ts_http_str *host = NULL, *cl = NULL, *te = NULL;
    unsigned seen[TS_HTTP_SINGLETONS] = {0};
    bool close = false, keep_alive = false;

    for (size_t i = 0; i < h->nfields; i++) {
        const struct ts_http_field *f = &h->fields[i];
        int s = ts_http_singleton(f->name);

        if (s >= 0 && seen[s]++ > 0) {
            if (s == 0)
                ERR(400, "the request has more than one Host field (RFC 9112 section 3.2)");
            if (s == 1 || s == 2)
                ERR(400, "the request repeats a framing field (Content-Length or "
                         "Transfer-Encoding)");
            ERR(400, "the request repeats a field that may appear once (Authorization, "
                     "Content-Type or Last-Event-ID)");
        }
        if (s == 0)
            host = &f->value;
        else if (s == 1)
            cl = &f->value;
        else if (s == 2)
            te = &f->value;
        else if (str_is(f->name, "connection")) {
            close |= list_has(f->value, "close");
            keep_alive |= list_has(f->value, "keep-alive");
        } else if (str_is(f->name, "expect")) {
            if (!str_is(f->value, "100-continue"))
                ERR(417, "the only expectation supported is 100-continue");
            /* A 1.0 client cannot read a 100 (RFC 9110 10.1.1: ignore it). */
            h->expect_continue = h->version_minor >= 1;
        }
    }
    /* "close" wins, wherever it is (RFC 9112 9.3). */
    h->keep_alive = !close && (h->version_minor >= 1 || keep_alive);
    if (host == NULL && h->version_minor >= 1)
        ERR(400, "an HTTP/1.1 request without a Host field (RFC 9112 section 3.2)");
    if (host != NULL && !ts_http_authority_ok(*host))
        ERR(400, "the Host field is not host[:port] (RFC 9112 section 3.2)");
    if (h->form != TS_HTTP_ABSOLUTE_FORM && host != NULL)
        h->authority = *host;
    if (te != NULL) {
        if (h->version_minor == 0)
            ERR(400, "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 section 6.1)");
        if (cl != NULL)
            ERR(400, "both Transfer-Encoding and Content-Length (RFC 9112 section 6.1)");
        if (!str_is(*te, "chunked"))
            ERR(501, "the only Transfer-Encoding supported is chunked");
        h->framing = TS_HTTP_CHUNKED;
    } else if (cl != NULL) {
        uint64_t n = 0;

        if (cl->len == 0)
            ERR(400, "Content-Length is not a number");
        for (size_t i = 0; i < cl->len; i++) {
            unsigned char c = (unsigned char)cl->p[i];

            if (!is_digit(c))
                ERR(400, "Content-Length is not a number");
            if (n > (UINT64_C(1) << 62) / 10)
                ERR(400, "Content-Length is too large");
            n = n * 10 + (c - '0');
        }
        h->framing = TS_HTTP_LENGTH;
        h->content_length = n;
    }
    return 0;
}

int
ts_http_head_parse(struct ts_http_head *h, const struct ts_http_scan *sc, const char *buf,
                   size_t head_len, const struct ts_http_limits *lim, const char **why)
{
    size_t pos;
    int rc;

    memset(h, 0, sizeof(*h));
    h->head_len = head_len;
    if (sc->line_end == 0 || head_len < sc->line_end + 4)
        ERR(400, "the request head is incomplete");
    if (sc->line_end - sc->start > lim->line_max)
        ERR(414, "the request line is longer than allowed");
    rc = parse_request_line(h, buf + sc->start, sc->line_end - sc->start, why);
    if (rc != 0)
        return rc;
    h->keep_alive = h->version_minor >= 1;
    /* Field lines run from after the request line's CRLF to the final CRLF. */
    for (pos = sc->line_end + 2; pos < head_len - 2;) {
        const char *eol = memchr(buf + pos, '\r', head_len - 2 - pos);
        size_t n = eol != NULL ? (size_t)(eol - (buf + pos)) : head_len - 2 - pos;

        rc = parse_field(h, buf + pos, n, why);
        if (rc != 0)
            return rc;
        pos += n + 2;
    }
    return check_fields(h, why);
}

const struct ts_http_str *
ts_http_head_field(const struct ts_http_head *h, const char *name)
{
    for (size_t i = 0; i < h->nfields; i++)
        if (str_is(h->fields[i].name, name))
            return &h->fields[i].value;
    return NULL;
}

long
ts_http_segment_decode(struct ts_http_str seg, char *out)
{
    const unsigned char *p = (const unsigned char *)seg.p;
    size_t n = 0;

    for (size_t i = 0; i < seg.len; i++) {
        unsigned char c = p[i];

        if (c == '%') {
            if (i + 2 >= seg.len || !is_hex(p[i + 1]) || !is_hex(p[i + 2]))
                return -EINVAL;
            c = (unsigned char)(hex_value(p[i + 1]) << 4 | hex_value(p[i + 2]));
            i += 2;
        }
        if (c < 0x20 || c == 0x7f)
            return -EINVAL;
        if (out != NULL)
            out[n] = (char)c;
        n++;
    }
    return (long)n;
}
