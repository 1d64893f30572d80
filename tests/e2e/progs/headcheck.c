/*
 * ts_headcheck: the request-head parser (src/http_head.h) as a filter, for
 * the differential test against h11 (tests/e2e/test_head_differential.py).
 *
 * Reads records from stdin, each a 4-byte big-endian length and that many
 * bytes, and answers each with one JSON line on stdout:
 *   {"ok":true,"head_len":N,"method":"...","target":"...","minor":1,
 *    "form":"origin|absolute|asterisk","path":"...","query":null|"...",
 *    "authority":"...","framing":"none|length|chunked","content_length":N,
 *    "keep_alive":true,"expect_continue":false,"fields":[["Name","value"],...]}
 *   {"ok":false,"status":400,"why":"..."}
 *   {"ok":null}                          the head is incomplete
 * The whole record is scanned at once (line_max 8192, head_max 65536) and,
 * when a head is complete, parsed; bytes after the head are ignored.
 *
 * Strings are latin-1 in JSON: every byte is one code point, and each byte
 * below 0x20, 0x7F and every byte from 0x80 on is written as \u00XX, so the
 * output is ASCII and `json.loads(line)[k].encode("latin-1")` gives back the
 * request's bytes exactly. Exits 0 at the end of input, 1 on a truncated
 * record or a write error.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_head.h"

#define RECORD_MAX (16u << 20) /* refuse absurd lengths rather than allocate them */

static const struct ts_http_limits limits = {.line_max = 8192, .head_max = 65536};

static void
put_str(FILE *out, const char *p, size_t len)
{
    static const char hex[] = "0123456789abcdef";

    fputc('"', out);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];

        if (c == '"' || c == '\\') {
            fputc('\\', out);
            fputc(c, out);
        } else if (c < 0x20 || c >= 0x7f) {
            fprintf(out, "\\u00%c%c", hex[c >> 4], hex[c & 0xf]);
        } else {
            fputc(c, out);
        }
    }
    fputc('"', out);
}

static void
put_field(FILE *out, const char *key, struct ts_http_str s)
{
    fprintf(out, ",\"%s\":", key);
    put_str(out, s.p, s.len);
}

static const char *
form_name(enum ts_http_target_form form)
{
    switch (form) {
    case TS_HTTP_ORIGIN_FORM:
        return "origin";
    case TS_HTTP_ABSOLUTE_FORM:
        return "absolute";
    case TS_HTTP_ASTERISK_FORM:
        return "asterisk";
    }
    return "?";
}

static const char *
framing_name(enum ts_http_framing framing)
{
    switch (framing) {
    case TS_HTTP_NO_BODY:
        return "none";
    case TS_HTTP_LENGTH:
        return "length";
    case TS_HTTP_CHUNKED:
        return "chunked";
    }
    return "?";
}

static void
put_head(FILE *out, const struct ts_http_head *h)
{
    fprintf(out, "{\"ok\":true,\"head_len\":%zu", h->head_len);
    put_field(out, "method", h->method);
    put_field(out, "target", h->target);
    fprintf(out, ",\"minor\":%d,\"form\":\"%s\"", h->version_minor, form_name(h->form));
    put_field(out, "path", h->path);
    if (h->has_query)
        put_field(out, "query", h->query);
    else
        fputs(",\"query\":null", out);
    put_field(out, "authority", h->authority);
    fprintf(out,
            ",\"framing\":\"%s\",\"content_length\":%" PRIu64
            ",\"keep_alive\":%s,\"expect_continue\":%s",
            framing_name(h->framing), h->content_length, h->keep_alive ? "true" : "false",
            h->expect_continue ? "true" : "false");
    fputs(",\"fields\":[", out);
    for (size_t i = 0; i < h->nfields; i++) {
        fputs(i == 0 ? "[" : ",[", out);
        put_str(out, h->fields[i].name.p, h->fields[i].name.len);
        fputc(',', out);
        put_str(out, h->fields[i].value.p, h->fields[i].value.len);
        fputc(']', out);
    }
    fputs("]}\n", out);
}

static void
put_error(FILE *out, int rc, const char *why)
{
    fprintf(out, "{\"ok\":false,\"status\":%d,\"why\":", -rc);
    put_str(out, why, strlen(why));
    fputs("}\n", out);
}

static void
check_one(FILE *out, const char *buf, size_t len)
{
    struct ts_http_scan sc = {0};
    struct ts_http_head *h;
    const char *why = NULL;
    int rc;

    rc = ts_http_head_scan(&sc, buf, len, &limits, &why);
    if (rc == 0) {
        fputs("{\"ok\":null}\n", out);
        return;
    }
    if (rc < 0) {
        put_error(out, rc, why);
        return;
    }
    /* struct ts_http_head holds TS_HTTP_FIELDS_MAX fields: keep it off the stack. */
    h = malloc(sizeof(*h));
    if (h == NULL) {
        fputs("ts_headcheck: out of memory\n", stderr);
        exit(1);
    }
    rc = ts_http_head_parse(h, &sc, buf, (size_t)rc, &limits, &why);
    if (rc < 0)
        put_error(out, rc, why);
    else
        put_head(out, h);
    free(h);
}

int
main(void)
{
    unsigned char hdr[4];
    size_t n;

    while ((n = fread(hdr, 1, sizeof(hdr), stdin)) == sizeof(hdr)) {
        size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
        char *buf;

        if (len > RECORD_MAX) {
            fprintf(stderr, "ts_headcheck: a record of %zu bytes is too large\n", len);
            return 1;
        }
        /* Exactly `len` bytes (one spare for len 0), so that ASan sees any read past them. */
        buf = malloc(len > 0 ? len : 1);
        if (buf == NULL) {
            fputs("ts_headcheck: out of memory\n", stderr);
            return 1;
        }
        if (fread(buf, 1, len, stdin) != len) {
            fputs("ts_headcheck: a truncated record\n", stderr);
            free(buf);
            return 1;
        }
        check_one(stdout, buf, len);
        free(buf);
    }
    if (n != 0) {
        fputs("ts_headcheck: a truncated record length\n", stderr);
        return 1;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        perror("ts_headcheck: stdout");
        return 1;
    }
    return 0;
}
