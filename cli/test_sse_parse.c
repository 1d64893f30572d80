/*
 * The SSE parser of the command-line client against a table of cases, each
 * fed whole, one byte at a time, and split in two at every position: the
 * events must come out the same every way. No framework: a failing case
 * prints what it got and the program exits 1.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sse_parse.h"

/* Each event is written as "type|id|data;" (id "-" when the frame had none,
 * a NUL in data as "\0"), so that a case's expectation is one string. */
struct sink {
    char out[4096];
    size_t len;
    int stop_after; /* stop the feed after this many events; 0: never */
    int events;
};

static int
on_event(void *arg, const struct tsc_sse_event *ev)
{
    struct sink *s = arg;
    size_t i;

    s->len += (size_t)snprintf(s->out + s->len, sizeof(s->out) - s->len, "%s|%s|", ev->type,
                               ev->id != NULL ? ev->id : "-");
    for (i = 0; i < ev->data_len && s->len + 3 < sizeof(s->out); i++) {
        if (ev->data[i] == '\0') {
            s->out[s->len++] = '\\';
            s->out[s->len++] = '0';
        } else {
            s->out[s->len++] = ev->data[i];
        }
    }
    s->len += (size_t)snprintf(s->out + s->len, sizeof(s->out) - s->len, ";");
    s->events++;
    return s->stop_after != 0 && s->events >= s->stop_after ? 7 : 0;
}

struct sse_case {
    const char *name;
    const char *in;
    size_t in_len; /* 0: strlen(in) */
    const char *want;
    const char *last_id;
    int64_t retry_ms;
    uint64_t comments;
};

static const struct sse_case cases[] = {
    {"one event", "id: 1\nevent: tick\ndata: {\"n\":1}\n\n", 0, "tick|1|{\"n\":1};", "1", -1, 0},
    {"default type", "data: x\n\n", 0, "message|-|x;", "", -1, 0},
    {"CRLF", "id: 2\r\nevent: e\r\ndata: a\r\n\r\n", 0, "e|2|a;", "2", -1, 0},
    {"CR", "id: 3\revent: e\rdata: a\r\r", 0, "e|3|a;", "3", -1, 0},
    {"mixed ends", "data: a\r\ndata: b\rdata: c\n\r\n", 0, "message|-|a\nb\nc;", "", -1, 0},
    {"no space strip", "data:x\n\n", 0, "message|-|x;", "", -1, 0},
    {"one space only", "data:  x\n\n", 0, "message|-| x;", "", -1, 0},
    {"empty data line", "data\n\n", 0, "message|-|;", "", -1, 0},
    {"empty data dropped", "event: e\n\n", 0, "", "", -1, 0},
    {"two data lines", "data: a\ndata: b\n\n", 0, "message|-|a\nb;", "", -1, 0},
    {"trailing empty data", "data: a\ndata\n\n", 0, "message|-|a\n;", "", -1, 0},
    {"comment", ": hi\n:\ndata: x\n\n", 0, "message|-|x;", "", -1, 2},
    {"retry", "retry: 2000\n\n", 0, "", "", 2000, 0},
    {"retry not digits", "retry: 20s\nretry: -1\nretry:\n\n", 0, "", "", -1, 0},
    {"retry last wins", "retry: 10\nretry: x\nretry: 30\n", 0, "", "", 30, 0},
    {"unknown field", "foo: bar\ndata: x\n\n", 0, "message|-|x;", "", -1, 0},
    {"id kept across frames", "id: 5\ndata: a\n\nevent: draining\ndata: b\n\n", 0,
     "message|5|a;draining|-|b;", "5", -1, 0},
    {"id without data moves last id", "id: 9\n\n", 0, "", "9", -1, 0},
    {"empty id resets", "id: 4\ndata: a\n\nid\ndata: b\n\n", 0, "message|4|a;message||b;", "", -1,
     0},
    {"id with NUL ignored", "id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n", 32,
     "message|1|a;message|-|b;", "1", -1, 0},
    {"NUL in data", "data: a\0b\n\n", 11, "message|-|a\\0b;", "", -1, 0},
    {"BOM",
     "\xef\xbb\xbf"
     "data: x\n\n",
     0, "message|-|x;", "", -1, 0},
    {"BOM only once",
     "\xef\xbb\xbf\xef\xbb\xbf"
     "data: x\n\n",
     0, "", "", -1, 0},
    {"no final blank line", "data: x\n", 0, "", "", -1, 0},
    {"colon in value", "data: a:b\n\n", 0, "message|-|a:b;", "", -1, 0},
    {"event then default", "event: e\ndata: 1\n\ndata: 2\n\n", 0, "e|-|1;message|-|2;", "", -1, 0},
    {"field name case", "Data: x\n\n", 0, "", "", -1, 0},
    {"end", "retry: 2000\n\nid: 4\nevent: end\ndata: {\"status\":\"succeeded\"}\n\n", 0,
     "end|4|{\"status\":\"succeeded\"};", "4", 2000, 0},
};

static int failures;

static void
check(const struct sse_case *c, const char *how, const struct sink *s,
      const struct tsc_sse_parser *p, int rc)
{
    const char *last = p->last_id.p != NULL ? p->last_id.p : "";

    if (rc != 0 || strcmp(s->out, c->want) != 0 || strcmp(last, c->last_id) != 0 ||
        p->retry_ms != c->retry_ms || p->comments != c->comments) {
        fprintf(stderr,
                "FAIL %s (%s): rc %d\n  got  %s last_id \"%s\" retry %" PRId64 " comments %" PRIu64
                "\n  want %s last_id \"%s\" retry %" PRId64 " comments %" PRIu64 "\n",
                c->name, how, rc, s->out, last, p->retry_ms, p->comments, c->want, c->last_id,
                c->retry_ms, c->comments);
        failures++;
    }
}

static void
run_split(const struct sse_case *c, size_t len, size_t step, size_t cut)
{
    struct tsc_sse_parser p;
    struct sink s = {{0}, 0, 0, 0};
    char how[64];
    size_t i;
    int rc = 0;

    tsc_sse_parser_init(&p, on_event, &s, 1024);
    if (step != 0) {
        for (i = 0; i < len && rc == 0; i += step)
            rc = tsc_sse_parser_feed(&p, c->in + i, len - i < step ? len - i : step);
        snprintf(how, sizeof(how), "%zu byte(s) at a time", step);
    } else {
        rc = tsc_sse_parser_feed(&p, c->in, cut);
        if (rc == 0)
            rc = tsc_sse_parser_feed(&p, c->in + cut, len - cut);
        snprintf(how, sizeof(how), "split at %zu", cut);
    }
    check(c, how, &s, &p, rc);
    tsc_sse_parser_dispose(&p);
}

static void
test_limits(void)
{
    struct tsc_sse_parser p;
    struct sink s = {{0}, 0, 0, 0};
    char big[100];
    int rc;

    memset(big, 'a', sizeof(big));
    tsc_sse_parser_init(&p, on_event, &s, 64);
    rc = tsc_sse_parser_feed(&p, "data: ", 6);
    if (rc == 0)
        rc = tsc_sse_parser_feed(&p, big, sizeof(big));
    if (rc != -E2BIG) {
        fprintf(stderr, "FAIL a line over the limit: rc %d, want -E2BIG\n", rc);
        failures++;
    }
    /* The data of one event is bounded too, however short its lines. */
    tsc_sse_parser_reset(&p);
    rc = 0;
    for (int i = 0; i < 40 && rc == 0; i++)
        rc = tsc_sse_parser_feed(&p, "data: 0123\n", 11);
    if (rc != -E2BIG) {
        fprintf(stderr, "FAIL data over the limit: rc %d, want -E2BIG\n", rc);
        failures++;
    }
    /* After a reset the parser works again and keeps its last id. */
    tsc_sse_parser_reset(&p);
    rc = tsc_sse_parser_feed(&p, "id: 7\ndata: x\n\n", 15);
    tsc_sse_parser_reset(&p);
    if (rc == 0)
        rc = tsc_sse_parser_feed(&p, "data: y\n", 8);
    tsc_sse_parser_reset(&p);
    if (rc == 0)
        rc = tsc_sse_parser_feed(&p, "data: z\n\n", 9);
    if (rc != 0 || strcmp(s.out, "message|7|x;message|-|z;") != 0 ||
        strcmp(p.last_id.p, "7") != 0) {
        fprintf(stderr, "FAIL reset: rc %d, got %s\n", rc, s.out);
        failures++;
    }
    tsc_sse_parser_dispose(&p);
}

static void
test_stop(void)
{
    struct tsc_sse_parser p;
    struct sink s = {{0}, 0, 1, 0};
    static const char in[] = "data: a\n\ndata: b\n\n";
    int rc;

    tsc_sse_parser_init(&p, on_event, &s, 64);
    rc = tsc_sse_parser_feed(&p, in, sizeof(in) - 1);
    if (rc != 7 || strcmp(s.out, "message|-|a;") != 0) {
        fprintf(stderr, "FAIL stop: rc %d, got %s\n", rc, s.out);
        failures++;
    }
    tsc_sse_parser_dispose(&p);
}

int
main(void)
{
    size_t i, cut;
    unsigned ran = 0;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct sse_case *c = &cases[i];
        size_t len = c->in_len != 0 ? c->in_len : strlen(c->in);

        run_split(c, len, len != 0 ? len : 1, 0);
        run_split(c, len, 1, 0);
        run_split(c, len, 3, 0);
        for (cut = 0; cut <= len; cut++)
            run_split(c, len, 0, cut);
        ran++;
    }
    test_limits();
    test_stop();
    if (failures != 0) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("sse_parse: %u cases, every split: ok\n", ran);
    return 0;
}
