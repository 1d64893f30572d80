/*
 * Following one task's event stream, the way an EventSource does it and a
 * little more carefully.
 *
 * Each attempt is one GET of /v1/tasks/{id}/events with Last-Event-ID set
 * to the last id seen (the WHATWG "last event ID": events without an id,
 * such as draining and gap, do not move it). The body goes through the SSE
 * parser as curl hands it over; every event is printed as it is
 * dispatched, so a reader sees it at once. The `end` event stops the
 * transfer and decides the exit status. Anything else that ends an attempt
 * is either final (a 4xx, a broken event) or worth another try: a refused
 * or cut connection, a stream that ended without `end` (a replica handing
 * its task to another), 502/503/504 (a proxy without an upstream, a
 * draining or store-less replica). The wait between tries starts at the
 * server's `retry:` field, doubles with each try that got nowhere up to
 * max_backoff_ms, is at least a 503's Retry-After, and the tries stop when
 * reconnect_timeout_ms passes without a connection that brought an event.
 * Ids are decimal and increase; an event whose id is not above the highest
 * seen is a repeat and is dropped, so nothing is printed twice.
 */
#include "follow.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "sse_parse.h"

#define LINE_MAX_BYTES (16u << 20)
#define ERROR_BODY_MAX 65536
#define DEFAULT_RETRY_MS 1000
#define RETRY_AFTER_MAX_MS 60000
/* No byte for this long (the server sends a heartbeat at least every half
 * SSE_HEARTBEAT_INTERVAL, 15 s by default): the connection is dead. */
#define IDLE_TIMEOUT_S 120L

/* What the event callback returns to stop the transfer after `end`. */
#define STOP_END 1

struct follow {
    struct tsc_client *c;
    const char *id;
    const struct tsc_follow_opts *o;
    volatile sig_atomic_t *interrupted;
    struct tsc_sse_parser parser;
    uint64_t highest; /* the highest numeric id printed, when have_highest */
    bool have_highest;
    json_t *end; /* the end event's data, once it came */
};

/* One connection. */
struct attempt {
    struct follow *f;
    bool checked;    /* the status was looked at (first body bytes) */
    bool is_stream;  /* 200: the body is the event stream */
    unsigned events; /* events this connection brought */
    int parse_rc;    /* the parser's error, or 0 */
    long retry_after_ms;
    char *body; /* a non-stream answer, bounded by ERROR_BODY_MAX */
    size_t body_len;
};

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleep `ms`, or less when interrupted. */
static void
pause_ms(int64_t ms, volatile sig_atomic_t *interrupted)
{
    int64_t until = now_ms() + ms;

    while (!*interrupted) {
        int64_t left = until - now_ms();
        struct timespec ts;

        if (left <= 0)
            return;
        ts.tv_sec = left / 1000;
        ts.tv_nsec = (left % 1000) * 1000000;
        nanosleep(&ts, NULL); /* EINTR: look at the flag again */
    }
}

int
tsc_exit_status_of(const json_t *o)
{
    const char *status = json_string_value(json_object_get(o, "status"));
    json_t *code = json_object_get(o, "exit_code");
    json_t *sig = json_object_get(o, "signal");

    if (status == NULL)
        status = json_string_value(json_object_get(o, "state"));
    if (status == NULL)
        return -1;
    if (strcmp(status, "succeeded") == 0)
        return TSC_EXIT_OK;
    if (strcmp(status, "cancelled") == 0)
        return TSC_EXIT_CANCELLED;
    if (strcmp(status, "failed") != 0)
        return -1;
    if (json_is_integer(code) && json_integer_value(code) >= 1 && json_integer_value(code) <= 255)
        return (int)json_integer_value(code);
    if (json_is_integer(sig) && json_integer_value(sig) >= 1 && json_integer_value(sig) <= 64)
        return 128 + (int)json_integer_value(sig);
    return TSC_EXIT_FAILED;
}

/* A decimal id, or false. */
static bool
parse_id(const char *s, uint64_t *out)
{
    uint64_t n = 0;

    if (s == NULL || *s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9' || n > (UINT64_MAX - 9) / 10)
            return false;
        n = n * 10 + (uint64_t)(*s - '0');
    }
    *out = n;
    return true;
}

static void
print_json_event(const struct tsc_sse_event *ev, json_t *data)
{
    json_t *line = json_object();
    uint64_t n;
    json_t *id;

    if (line == NULL)
        return;
    if (ev->id == NULL)
        id = json_null();
    else if (parse_id(ev->id, &n) && n <= (uint64_t)INT64_MAX)
        id = json_integer((json_int_t)n);
    else
        id = json_string(ev->id);
    json_object_set_new(line, "id", id != NULL ? id : json_null());
    json_object_set_new(line, "event", json_string(ev->type));
    json_object_set(line, "data", data != NULL ? data : json_null());
    json_dumpf(line, stdout, JSON_COMPACT);
    fputc('\n', stdout);
    fflush(stdout);
    json_decref(line);
}

static void
note_end(const struct follow *f, const json_t *d)
{
    const char *status = json_string_value(json_object_get(d, "status"));
    const char *reason = json_string_value(json_object_get(d, "reason"));
    json_t *code = json_object_get(d, "exit_code");
    json_t *sig = json_object_get(d, "signal");
    char detail[128] = "";

    if (json_is_integer(code) && json_integer_value(code) != 0)
        snprintf(detail, sizeof(detail), ", exit code %" JSON_INTEGER_FORMAT,
                 json_integer_value(code));
    else if (json_is_integer(sig))
        snprintf(detail, sizeof(detail), ", signal %" JSON_INTEGER_FORMAT, json_integer_value(sig));
    tsc_err("task %s %s%s%s%s%s", f->id, status != NULL ? status : "ended", detail,
            reason != NULL ? " (" : "", reason != NULL ? reason : "", reason != NULL ? ")" : "");
}

static void
print_text_event(const struct follow *f, const struct tsc_sse_event *ev, const json_t *d)
{
    bool quiet = f->o->quiet;

    if (strcmp(ev->type, "output") == 0 && json_is_string(json_object_get(d, "line"))) {
        const char *stream = json_string_value(json_object_get(d, "stream"));
        json_t *line = json_object_get(d, "line");
        FILE *out = stream != NULL && strcmp(stream, "stderr") == 0 ? stderr : stdout;

        fwrite(json_string_value(line), 1, json_string_length(line), out);
        fputc('\n', out);
        fflush(out);
    } else if (strcmp(ev->type, "end") == 0) {
        if (!quiet)
            note_end(f, d);
    } else if (strcmp(ev->type, "gap") == 0) {
        if (!quiet)
            tsc_err("events %" JSON_INTEGER_FORMAT " to %" JSON_INTEGER_FORMAT
                    " were evicted before they could be read",
                    json_integer_value(json_object_get(d, "first_missing")),
                    json_integer_value(json_object_get(d, "last_missing")));
    } else if (strcmp(ev->type, "draining") == 0) {
        if (!quiet)
            tsc_err("the server is draining; the stream goes on");
    } else if (strcmp(ev->type, "resumed") == 0) {
        const char *from = json_string_value(json_object_get(d, "from_replica"));

        if (!quiet)
            tsc_err("task resumed: attempt %" JSON_INTEGER_FORMAT "%s%s",
                    json_integer_value(json_object_get(d, "attempt")),
                    from != NULL ? ", taken over from replica " : "", from != NULL ? from : "");
    } else if (ev->id != NULL) {
        printf("%s %s\n", ev->type, ev->data);
        fflush(stdout);
    } else if (!quiet) {
        tsc_err("%s %s", ev->type, ev->data);
    }
}

static int
on_event(void *arg, const struct tsc_sse_event *ev)
{
    struct attempt *a = arg;
    struct follow *f = a->f;
    json_t *data;
    uint64_t n;

    if (ev->id != NULL && parse_id(ev->id, &n)) {
        if (f->have_highest && n <= f->highest)
            return 0; /* a repeat */
        f->highest = n;
        f->have_highest = true;
    }
    a->events++;
    data = json_loadb(ev->data, ev->data_len, JSON_DECODE_ANY, NULL);
    if (f->o->json) {
        if (data == NULL)
            data = json_stringn(ev->data, ev->data_len);
        print_json_event(ev, data);
    } else {
        print_text_event(f, ev, data);
    }
    if (strcmp(ev->type, "end") == 0) {
        f->end = data != NULL ? data : json_object();
        return STOP_END;
    }
    json_decref(data);
    return 0;
}

static size_t
on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct attempt *a = arg;
    size_t n = size * nmemb;

    if (!a->checked) {
        long status = 0;

        curl_easy_getinfo(a->f->c->curl, CURLINFO_RESPONSE_CODE, &status);
        a->is_stream = status == 200;
        a->checked = true;
    }
    if (a->is_stream) {
        int rc = tsc_sse_parser_feed(&a->f->parser, data, n);

        if (rc != 0) {
            a->parse_rc = rc;
            return 0; /* stop the transfer */
        }
        return n;
    }
    if (a->body_len + n > ERROR_BODY_MAX)
        n = ERROR_BODY_MAX - a->body_len;
    if (n != 0) {
        char *p = realloc(a->body, a->body_len + n + 1);

        if (p == NULL)
            return 0;
        a->body = p;
        memcpy(a->body + a->body_len, data, n);
        a->body_len += n;
        a->body[a->body_len] = '\0';
    }
    return size * nmemb;
}

static size_t
on_header(char *data, size_t size, size_t nitems, void *arg)
{
    static const char name[] = "retry-after:";
    struct attempt *a = arg;
    size_t n = size * nitems;

    if (n > sizeof(name) - 1 && strncasecmp(data, name, sizeof(name) - 1) == 0) {
        size_t i = sizeof(name) - 1;
        long s = 0;

        while (i < n && data[i] == ' ')
            i++;
        for (; i < n && data[i] >= '0' && data[i] <= '9' && s < RETRY_AFTER_MAX_MS / 1000; i++)
            s = s * 10 + (data[i] - '0');
        a->retry_after_ms = s * 1000;
    }
    return n;
}

static int
on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    struct follow *f = arg;

    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return *f->interrupted ? 1 : 0;
}

/* What the last attempt ended with, for the next step. */
enum outcome {
    OUT_END,       /* the end event came */
    OUT_ENDED,     /* 204: the task had ended before */
    OUT_RETRY,     /* worth another try */
    OUT_FATAL,     /* reported; give up with `rc` */
    OUT_INTERRUPT, /* SIGINT */
};

/* One GET of the stream. Sets `why` for a retry, `rc` for OUT_FATAL. */
static enum outcome
attempt(struct follow *f, struct attempt *a, char *why, size_t why_len, int *rc)
{
    struct tsc_client *c = f->c;
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    const char *resume = f->parser.last_id.len != 0 ? f->parser.last_id.p : f->o->last_event_id;
    char url[1024], path[256], lei[300];
    long status = 0, os_errno = 0;
    enum outcome out;
    CURLcode cc;

    snprintf(path, sizeof(path), "/v1/tasks/%s/events", f->id);
    snprintf(url, sizeof(url), "%s%s", c->url, path);
    if (!tsc_header_add(&headers, "Accept: text/event-stream") ||
        (c->auth_header != NULL && !tsc_header_add(&headers, c->auth_header))) {
        curl_slist_free_all(headers);
        tsc_err("out of memory");
        *rc = TSC_EXIT_API;
        return OUT_FATAL;
    }
    if (resume != NULL && resume[0] != '\0') {
        snprintf(lei, sizeof(lei), "Last-Event-ID: %.256s", resume);
        if (!tsc_header_add(&headers, lei)) {
            curl_slist_free_all(headers);
            tsc_err("out of memory");
            *rc = TSC_EXIT_API;
            return OUT_FATAL;
        }
    }
    tsc_sse_parser_reset(&f->parser);

    curl_easy_reset(c->curl);
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_TIME, IDLE_TIMEOUT_S);
    curl_easy_setopt(c->curl, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(c->curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c->curl, CURLOPT_HEADERDATA, a);
    curl_easy_setopt(c->curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c->curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c->curl, CURLOPT_XFERINFODATA, f);
    curl_easy_setopt(c->curl, CURLOPT_USERAGENT, "taskstream/" TSC_VERSION);
    cc = curl_easy_perform(c->curl);
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(c->curl, CURLINFO_OS_ERRNO, &os_errno);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(headers);

    if (f->end != NULL)
        return OUT_END;
    if (*f->interrupted)
        return OUT_INTERRUPT;
    if (a->parse_rc != 0) {
        tsc_err("%s: %s", url,
                a->parse_rc == -E2BIG ? "an event is larger than 16 MiB" : strerror(-a->parse_rc));
        *rc = TSC_EXIT_API;
        return OUT_FATAL;
    }
    if (status == 0 || (status == 200 && cc != CURLE_OK)) {
        /* No answer, or a stream that broke off. */
        if (!tsc_transient(cc)) {
            tsc_report_transfer_error(url, cc, os_errno, errbuf);
            *rc = TSC_EXIT_CONNECT;
            return OUT_FATAL;
        }
        if (cc == CURLE_COULDNT_CONNECT && os_errno != 0)
            snprintf(why, why_len, "cannot connect to %s: %s", c->url, strerror((int)os_errno));
        else if (status == 200)
            snprintf(why, why_len, "the stream was cut: %s",
                     errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc));
        else
            snprintf(why, why_len, "%s: %s", c->url,
                     errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc));
        return OUT_RETRY;
    }
    if (status == 200) {
        snprintf(why, why_len, "the stream ended before the task did");
        return OUT_RETRY;
    }
    if (status == 204)
        return OUT_ENDED;
    {
        struct tsc_response resp = {.status = status, .body = a->body, .len = a->body_len};

        resp.json = a->body != NULL ? json_loadb(a->body, a->body_len, 0, NULL) : NULL;
        if (status == 502 || status == 503 || status == 504 || status == 429) {
            const char *msg = json_string_value(json_object_get(resp.json, "message"));

            snprintf(why, why_len, "HTTP %ld%s%s", status, msg != NULL ? ": " : "",
                     msg != NULL ? msg : "");
            out = OUT_RETRY;
        } else {
            *rc = tsc_report_http_error(c, "GET", path, &resp);
            out = OUT_FATAL;
        }
        json_decref(resp.json);
    }
    return out;
}

/* 204: the task ended before this stream; its state says how. */
static int
ended_before(struct follow *f)
{
    struct tsc_response resp;
    char path[128];
    int rc;

    snprintf(path, sizeof(path), "/v1/tasks/%s", f->id);
    rc = tsc_call(f->c, TSC_PUBLIC, "GET", path, NULL, &resp);
    if (rc != 0)
        return rc;
    rc = tsc_exit_status_of(resp.json);
    if (rc < 0) {
        tsc_err("the stream of task %s has ended, but the task is %s", f->id,
                json_string_value(json_object_get(resp.json, "state")) != NULL
                    ? json_string_value(json_object_get(resp.json, "state"))
                    : "in an unknown state");
        rc = TSC_EXIT_API;
    } else if (!f->o->quiet) {
        tsc_err("task %s had already ended: %s", f->id,
                json_string_value(json_object_get(resp.json, "state")));
    }
    tsc_response_dispose(&resp);
    return rc;
}

int
tsc_follow(struct tsc_client *c, const char *id, const struct tsc_follow_opts *o,
           volatile sig_atomic_t *interrupted)
{
    struct follow f = {.c = c, .id = id, .o = o, .interrupted = interrupted};
    int64_t window_start = now_ms();
    unsigned failures = 0;
    char why[512];
    int rc = 0;

    tsc_sse_parser_init(&f.parser, on_event, NULL, LINE_MAX_BYTES);
    if (o->last_event_id != NULL && parse_id(o->last_event_id, &f.highest))
        f.have_highest = true;
    for (;;) {
        struct attempt a = {.f = &f};
        enum outcome out;
        int64_t retry, delay;

        f.parser.arg = &a;
        why[0] = '\0';
        out = attempt(&f, &a, why, sizeof(why), &rc);
        free(a.body);
        if (out == OUT_END) {
            rc = tsc_exit_status_of(f.end);
            if (rc < 0)
                rc = TSC_EXIT_FAILED;
            break;
        }
        if (out == OUT_ENDED) {
            rc = ended_before(&f);
            break;
        }
        if (out == OUT_INTERRUPT) {
            rc = TSC_EXIT_INTERRUPTED;
            break;
        }
        if (out == OUT_FATAL)
            break;

        /* A retry. A connection that brought events was progress: the
         * wait starts over at the server's retry time. */
        if (a.events != 0) {
            failures = 0;
            window_start = now_ms();
        }
        retry = f.parser.retry_ms >= 0 ? f.parser.retry_ms : DEFAULT_RETRY_MS;
        if (retry > o->max_backoff_ms)
            retry = o->max_backoff_ms;
        delay = retry;
        for (unsigned i = 0; i < failures && delay < o->max_backoff_ms; i++)
            delay *= 2;
        if (delay > o->max_backoff_ms)
            delay = o->max_backoff_ms;
        if (a.retry_after_ms > delay)
            delay = a.retry_after_ms;
        failures++;
        if (now_ms() + delay - window_start > o->reconnect_timeout_ms) {
            tsc_err("%s; giving up after %.1f s of retries", why,
                    (double)(now_ms() - window_start) / 1000);
            rc = strncmp(why, "HTTP ", 5) == 0 ? TSC_EXIT_API : TSC_EXIT_CONNECT;
            break;
        }
        if (!o->quiet) {
            const char *from = f.parser.last_id.len != 0 ? f.parser.last_id.p : o->last_event_id;

            if (from != NULL && from[0] != '\0')
                tsc_err("%s; resuming after event %s in %.1f s", why, from, (double)delay / 1000);
            else
                tsc_err("%s; retrying in %.1f s", why, (double)delay / 1000);
        }
        pause_ms(delay, interrupted);
        if (*interrupted) {
            rc = TSC_EXIT_INTERRUPTED;
            break;
        }
    }
    json_decref(f.end);
    tsc_sse_parser_dispose(&f.parser);
    return rc;
}
