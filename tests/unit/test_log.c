/* Unit tests for src/log.c: the JSON and text line shapes, escaping, level
 * filtering, truncation, and a logger that outlives a dead or stuck reader. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "log.h"
#include "util.h"

#define LINE_CAP 8192

/* A logger writing into a pipe whose read end does not block. */
struct capture {
    int rfd, wfd;
    struct ts_log *log;
    char buf[1 << 16];
};

static struct capture *
capture_new(enum ts_log_format format, enum ts_log_level level)
{
    struct capture *c = calloc(1, sizeof(*c));
    int fds[2];

    assert_non_null(c);
    assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
    c->rfd = fds[0];
    c->wfd = fds[1];
    assert_int_equal(fcntl(c->rfd, F_SETFL, O_NONBLOCK), 0);
    assert_int_equal(ts_log_new(&c->log, c->wfd, format, level), 0);
    return c;
}

static void
capture_free(struct capture *c)
{
    ts_log_free(c->log);
    if (c->rfd >= 0)
        close(c->rfd);
    close(c->wfd);
    free(c);
}

/* Everything written so far, NUL-terminated. */
static const char *
capture_read(struct capture *c)
{
    size_t len = 0;

    for (;;) {
        ssize_t n = read(c->rfd, c->buf + len, sizeof(c->buf) - 1 - len);

        if (n <= 0)
            break;
        len += (size_t)n;
    }
    c->buf[len] = '\0';
    return c->buf;
}

/* Exactly one line, parsed; the caller json_decref()s it. */
static json_t *
read_json_line(struct capture *c)
{
    const char *line = capture_read(c);
    json_error_t jerr;
    json_t *obj;
    size_t len = strlen(line);

    if (len == 0 || line[len - 1] != '\n' || strchr(line, '\n') != line + len - 1)
        fail_msg("not exactly one line: %s", line);
    obj = json_loads(line, 0, &jerr);
    if (obj == NULL)
        fail_msg("invalid JSON (%s): %s", jerr.text, line);
    if (!json_is_object(obj))
        fail_msg("not an object: %s", line);
    return obj;
}

/* "2026-11-24T16:24:53.123Z", and close to now. */
static void
assert_timestamp(const char *ts)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    struct tm tm;
    time_t t;
    size_t i;

    assert_int_equal(strlen(ts), strlen(shape));
    for (i = 0; shape[i] != '\0'; i++) {
        if (shape[i] == 'd' ? ts[i] < '0' || ts[i] > '9' : ts[i] != shape[i])
            fail_msg("bad timestamp %s", ts);
    }
    memset(&tm, 0, sizeof(tm));
    assert_non_null(strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm));
    t = timegm(&tm);
    assert_true(llabs((long long)(t - time(NULL))) <= 5);
}

static void
test_json_line(void **state)
{
    struct capture *c = capture_new(TS_LOG_FORMAT_JSON, TS_LOG_DEBUG);
    json_t *obj;

    (void)state;
    ts_log(c->log, TS_LOG_INFO, "listening", TS_F_STR("listener", "public"), TS_F_INT("port", 8080),
           TS_F_INT("neg", INT64_MIN), TS_F_UINT("big", 42), TS_F_DBL("ratio", 0.25),
           TS_F_BOOL("tls", false), TS_F_BOOL("ok", true), TS_F_STR("none", NULL), TS_F_END);
    obj = read_json_line(c);
    assert_timestamp(json_string_value(json_object_get(obj, "ts")));
    assert_string_equal(json_string_value(json_object_get(obj, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(obj, "msg")), "listening");
    assert_string_equal(json_string_value(json_object_get(obj, "listener")), "public");
    assert_int_equal(json_integer_value(json_object_get(obj, "port")), 8080);
    assert_true(json_integer_value(json_object_get(obj, "neg")) == INT64_MIN);
    assert_int_equal(json_integer_value(json_object_get(obj, "big")), 42);
    assert_true(json_real_value(json_object_get(obj, "ratio")) == 0.25);
    assert_true(json_is_false(json_object_get(obj, "tls")));
    assert_true(json_is_true(json_object_get(obj, "ok")));
    assert_true(json_is_null(json_object_get(obj, "none")));
    assert_null(json_object_get(obj, "truncated"));
    assert_int_equal(json_object_size(obj), 11);
    /* The fixed order of the head. */
    assert_int_equal(strncmp(c->buf, "{\"ts\":\"", 7), 0);
    assert_non_null(strstr(c->buf, "Z\",\"level\":\"info\",\"msg\":\"listening\",\"listener\""));
    json_decref(obj);

    /* jansson's integers are signed and stop at INT64_MAX: check the text. */
    ts_log(c->log, TS_LOG_INFO, "u", TS_F_UINT("big", UINT64_MAX), TS_F_END);
    assert_non_null(strstr(capture_read(c), ",\"big\":18446744073709551615}\n"));

    ts_log(c->log, TS_LOG_ERROR, "bare", TS_F_END);
    obj = read_json_line(c);
    assert_int_equal(json_object_size(obj), 3);
    assert_string_equal(json_string_value(json_object_get(obj, "level")), "error");
    json_decref(obj);

    ts_log(c->log, TS_LOG_WARN, NULL, TS_F_END);
    obj = read_json_line(c);
    assert_string_equal(json_string_value(json_object_get(obj, "msg")), "");
    json_decref(obj);
    capture_free(c);
}

/* Whatever a string holds, it comes back intact (or with U+FFFD for bytes
 * that are not UTF-8), and the line stays one line. */
static void
test_json_escaping(void **state)
{
    static const struct {
        const char *in;
        const char *out;
    } rows[] = {
        {"plain", "plain"},
        {"", ""},
        {"say \"hi\"", "say \"hi\""},
        {"back\\slash", "back\\slash"},
        {"two\nlines\r\n", "two\nlines\r\n"},
        {"tab\there", "tab\there"},
        {"\x01\x02\x1f\x7f", "\x01\x02\x1f\x7f"},
        {"\b\f", "\b\f"},
        {"}\n{\"level\":\"error\"", "}\n{\"level\":\"error\""},
        {"h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80",
         "h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80"},
        {"\xff", "\xef\xbf\xbd"},
        {"a\xfe"
         "b",
         "a\xef\xbf\xbd"
         "b"},
        {"cut \xc3", "cut \xef\xbf\xbd"},
        {"\xc3(", "\xef\xbf\xbd("},
        /* overlong '/' */
        {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        /* a surrogate */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        /* past U+10FFFF */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
        {"\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf"},
        {"\xef\xbf\xbf", "\xef\xbf\xbf"},
        {"\x80", "\xef\xbf\xbd"},
    };
    struct capture *c = capture_new(TS_LOG_FORMAT_JSON, TS_LOG_DEBUG);
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        json_t *obj;
        const char *p;

        ts_log(c->log, TS_LOG_INFO, rows[i].in, TS_F_STR("value", rows[i].in),
               TS_F_STR(rows[i].in, "key"), TS_F_END);
        obj = read_json_line(c);
        for (p = c->buf; *p != '\n'; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                fail_msg("row %zu: raw control character 0x%02x in %s", i, *p, c->buf);
        if (strcmp(json_string_value(json_object_get(obj, "value")), rows[i].out) != 0)
            fail_msg("row %zu: got %s", i, c->buf);
        assert_string_equal(json_string_value(json_object_get(obj, "msg")), rows[i].out);
        assert_non_null(json_object_get(obj, rows[i].out));
        json_decref(obj);
    }
    capture_free(c);
}

static void
test_doubles(void **state)
{
    static const struct {
        double d;
        const char *json;
        const char *text;
    } rows[] = {
        {0.25, "0.25", "0.25"},
        {-3.0, "-3", "-3"},
        {123456789.0, "1.23457e+08", "1.23457e+08"},
        {1e-7, "1e-07", "1e-07"},
        {NAN, "null", "nan"},
        {INFINITY, "null", "inf"},
        {-INFINITY, "null", "-inf"},
    };
    struct capture *j = capture_new(TS_LOG_FORMAT_JSON, TS_LOG_DEBUG);
    struct capture *t = capture_new(TS_LOG_FORMAT_TEXT, TS_LOG_DEBUG);
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        char want[64];
        json_t *obj;

        ts_log(j->log, TS_LOG_INFO, "d", TS_F_DBL("v", rows[i].d), TS_F_END);
        obj = read_json_line(j);
        snprintf(want, sizeof(want), "\"v\":%s}\n", rows[i].json);
        if (strstr(j->buf, want) == NULL)
            fail_msg("row %zu: want %s in %s", i, want, j->buf);
        json_decref(obj);

        ts_log(t->log, TS_LOG_INFO, "d", TS_F_DBL("v", rows[i].d), TS_F_END);
        snprintf(want, sizeof(want), " v=%s\n", rows[i].text);
        if (strstr(capture_read(t), want) == NULL)
            fail_msg("row %zu: want %s in %s", i, want, t->buf);
    }
    capture_free(j);
    capture_free(t);
}

static void
test_level_filter(void **state)
{
    static const struct {
        enum ts_log_level min, level;
        bool written;
    } rows[] = {
        {TS_LOG_DEBUG, TS_LOG_DEBUG, true}, {TS_LOG_INFO, TS_LOG_DEBUG, false},
        {TS_LOG_INFO, TS_LOG_INFO, true},   {TS_LOG_INFO, TS_LOG_ERROR, true},
        {TS_LOG_WARN, TS_LOG_INFO, false},  {TS_LOG_WARN, TS_LOG_WARN, true},
        {TS_LOG_ERROR, TS_LOG_WARN, false}, {TS_LOG_ERROR, TS_LOG_ERROR, true},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        struct capture *c = capture_new(TS_LOG_FORMAT_JSON, rows[i].min);

        assert_int_equal(ts_log_enabled(c->log, rows[i].level), rows[i].written);
        ts_log(c->log, rows[i].level, "x", TS_F_END);
        if ((capture_read(c)[0] != '\0') != rows[i].written)
            fail_msg("row %zu: wrote \"%s\"", i, c->buf);
        capture_free(c);
    }
    /* A NULL logger is a no-op. */
    ts_log(NULL, TS_LOG_ERROR, "nothing", TS_F_STR("k", "v"), TS_F_END);
    assert_false(ts_log_enabled(NULL, TS_LOG_ERROR));
    assert_int_equal(ts_log_write_errors(NULL), 0);
}

static void
test_text_format(void **state)
{
    static const struct {
        const char *msg;
        const char *value;
        const char *want; /* after the timestamp */
    } rows[] = {
        {"listening", "public", " INFO listening k=public\n"},
        {"listening", "a b", " INFO listening k=\"a b\"\n"},
        {"listening", "a\"b", " INFO listening k=\"a\\\"b\"\n"},
        {"listening", "a=b", " INFO listening k=\"a=b\"\n"},
        {"listening", "a\\b", " INFO listening k=\"a\\\\b\"\n"},
        {"listening", "", " INFO listening k=\"\"\n"},
        {"listening", "line\nbreak", " INFO listening k=\"line\\nbreak\"\n"},
        {"listening", "\x01", " INFO listening k=\"\\u0001\"\n"},
        {"listening", "h\xc3\xa9llo", " INFO listening k=h\xc3\xa9llo\n"},
        {"listening", "bad\xff", " INFO listening k=\"bad\\ufffd\"\n"},
        {"listening", NULL, " INFO listening k=null\n"},
        {"shutdown complete", "x", " INFO \"shutdown complete\" k=x\n"},
        {"", "x", " INFO \"\" k=x\n"},
        {"forged\n2026-01-01T00:00:00.000Z ERROR x", "y",
         " INFO \"forged\\n2026-01-01T00:00:00.000Z ERROR x\" k=y\n"},
    };
    struct capture *c = capture_new(TS_LOG_FORMAT_TEXT, TS_LOG_DEBUG);
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        const char *line;
        char ts[32];

        ts_log(c->log, TS_LOG_INFO, rows[i].msg, TS_F_STR("k", rows[i].value), TS_F_END);
        line = capture_read(c);
        if (strlen(line) < 24 || strcmp(line + 24, rows[i].want) != 0)
            fail_msg("row %zu: got \"%s\", want \"%s\"", i, line, rows[i].want);
        memcpy(ts, line, 24);
        ts[24] = '\0';
        assert_timestamp(ts);
    }

    ts_log(c->log, TS_LOG_WARN, "listening", TS_F_STR("listener", "public"), TS_F_INT("port", 8080),
           TS_F_UINT("u", 7), TS_F_BOOL("b", true), TS_F_STR("a key", "v"), TS_F_END);
    assert_string_equal(capture_read(c) + 24,
                        " WARN listening listener=public port=8080 u=7 b=true \"a key\"=v\n");
    ts_log(c->log, TS_LOG_DEBUG, "d", TS_F_END);
    assert_string_equal(capture_read(c) + 24, " DEBUG d\n");
    ts_log(c->log, TS_LOG_ERROR, "e", TS_F_END);
    assert_string_equal(capture_read(c) + 24, " ERROR e\n");
    capture_free(c);
}

/* Lines are capped; what is cut is cut at a character boundary and said so. */
static void
test_truncation(void **state)
{
    static const struct {
        const char *unit; /* repeated to make a long value */
        size_t count;
    } rows[] = {
        {"a", 20000},   {"\xc3\xa9", 6000}, {"\xf0\x9f\x98\x80", 3000},
        {"\x01", 3000}, {"\"", 6000},       {"\xff", 3000},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        struct capture *j = capture_new(TS_LOG_FORMAT_JSON, TS_LOG_DEBUG);
        struct capture *t = capture_new(TS_LOG_FORMAT_TEXT, TS_LOG_DEBUG);
        size_t ulen = strlen(rows[i].unit);
        char *big = malloc(ulen * rows[i].count + 1);
        const char *v;
        json_t *obj;
        size_t k;

        assert_non_null(big);
        for (k = 0; k < rows[i].count; k++)
            memcpy(big + k * ulen, rows[i].unit, ulen);
        big[ulen * rows[i].count] = '\0';

        ts_log(j->log, TS_LOG_INFO, "long", TS_F_STR("first", "kept"), TS_F_STR("big", big),
               TS_F_STR("after", "dropped"), TS_F_END);
        obj = read_json_line(j);
        if (strlen(j->buf) > LINE_CAP)
            fail_msg("row %zu: line of %zu bytes", i, strlen(j->buf));
        assert_true(strlen(j->buf) > LINE_CAP - 64);
        assert_true(json_is_true(json_object_get(obj, "truncated")));
        assert_string_equal(json_string_value(json_object_get(obj, "first")), "kept");
        assert_null(json_object_get(obj, "after"));
        v = json_string_value(json_object_get(obj, "big"));
        assert_non_null(v);
        assert_true(strlen(v) > 0);
        if (rows[i].unit[0] != '\xff')
            assert_int_equal(strncmp(v, big, strlen(v)), 0);
        json_decref(obj);

        /* A message too long for the line. */
        ts_log(j->log, TS_LOG_INFO, big, TS_F_STR("after", "dropped"), TS_F_END);
        obj = read_json_line(j);
        assert_true(strlen(j->buf) <= LINE_CAP);
        assert_true(json_is_true(json_object_get(obj, "truncated")));
        assert_null(json_object_get(obj, "after"));
        json_decref(obj);

        ts_log(t->log, TS_LOG_INFO, "long", TS_F_STR("big", big), TS_F_STR("after", "x"), TS_F_END);
        capture_read(t);
        assert_true(strlen(t->buf) <= LINE_CAP);
        assert_non_null(strstr(t->buf, " truncated=true\n"));
        assert_null(strstr(t->buf, "after="));
        assert_ptr_equal(strchr(t->buf, '\n'), t->buf + strlen(t->buf) - 1);
        free(big);
        capture_free(j);
        capture_free(t);
    }
}

static void
log_to_closed_pipe(struct capture *c)
{
    close(c->rfd);
    c->rfd = -1;
    errno = 1234;
    ts_log(c->log, TS_LOG_ERROR, "nobody reads", TS_F_END);
    assert_int_equal(errno, 1234);
    ts_log(c->log, TS_LOG_ERROR, "still nobody", TS_F_END);
    assert_int_equal(ts_log_write_errors(c->log), 2);
}

/* The way a host should run: SIGPIPE ignored. */
static void
test_closed_pipe_sigpipe_ignored(void **state)
{
    struct sigaction ign = {.sa_handler = SIG_IGN}, old;
    struct capture *c = capture_new(TS_LOG_FORMAT_JSON, TS_LOG_DEBUG);

    (void)state;
    sigemptyset(&ign.sa_mask);
    assert_int_equal(sigaction(SIGPIPE, &ign, &old), 0);
    log_to_closed_pipe(c);
    assert_int_equal(sigaction(SIGPIPE, &old, NULL), 0);
    capture_free(c);
}

/* A host that left SIGPIPE at its default (death) survives too, and no
 * SIGPIPE is left pending. In a child, so that a failure cannot kill the
 * test runner. */
static void
test_closed_pipe_sigpipe_default(void **state)
{
    int status;
    pid_t pid;

    (void)state;
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        struct capture *c;
        sigset_t pending;

        sigemptyset(&dfl.sa_mask);
        sigaction(SIGPIPE, &dfl, NULL);
        c = capture_new(TS_LOG_FORMAT_TEXT, TS_LOG_DEBUG);
        close(c->rfd);
        c->rfd = -1;
        ts_log(c->log, TS_LOG_ERROR, "nobody reads", TS_F_END);
        ts_log(c->log, TS_LOG_ERROR, "still nobody", TS_F_END);
        sigpending(&pending);
        _exit(ts_log_write_errors(c->log) == 2 && !sigismember(&pending, SIGPIPE) ? 0 : 3);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("child: %s %d", WIFSIGNALED(status) ? "signal" : "exit",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}

static int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A reader that stopped reading costs one bounded wait, then lines are
 * dropped at once until the pipe drains. */
static void
test_stuck_reader(void **state)
{
    struct capture *c = capture_new(TS_LOG_FORMAT_JSON, TS_LOG_DEBUG);
    char fill[4096];
    int64_t t0, took;
    json_t *obj;

    (void)state;
    memset(fill, 'f', sizeof(fill));
    fcntl(c->wfd, F_SETPIPE_SZ, 4096);
    assert_int_equal(fcntl(c->wfd, F_SETFL, O_NONBLOCK), 0);
    while (write(c->wfd, fill, sizeof(fill)) > 0)
        ;
    while (write(c->wfd, fill, 1) > 0)
        ;
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(fcntl(c->wfd, F_SETFL, 0), 0);

    t0 = now_ms();
    ts_log(c->log, TS_LOG_INFO, "stuck", TS_F_END);
    took = now_ms() - t0;
    assert_true(took >= 500 && took < 5000);
    assert_int_equal(ts_log_write_errors(c->log), 1);

    t0 = now_ms();
    ts_log(c->log, TS_LOG_INFO, "still stuck", TS_F_END);
    assert_true(now_ms() - t0 < 400);
    assert_int_equal(ts_log_write_errors(c->log), 2);

    /* Drained: lines flow again. */
    capture_read(c);
    ts_log(c->log, TS_LOG_INFO, "flowing", TS_F_END);
    obj = read_json_line(c);
    assert_string_equal(json_string_value(json_object_get(obj, "msg")), "flowing");
    assert_int_equal(ts_log_write_errors(c->log), 2);
    json_decref(obj);
    capture_free(c);
}

enum { THREADS = 8, LINES_PER_THREAD = 300 };

struct writer {
    struct ts_log *log;
    int id;
};

static void *
write_lines(void *arg)
{
    struct writer *w = arg;
    char payload[600];
    int i;

    memset(payload, 'a' + w->id, sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = '\0';
    for (i = 0; i < LINES_PER_THREAD; i++)
        ts_log(w->log, TS_LOG_INFO, "line", TS_F_INT("thread", w->id), TS_F_INT("i", i),
               TS_F_STR("payload", payload), TS_F_END);
    return NULL;
}

/* Lines from many threads never interleave. */
static void
test_threads(void **state)
{
    pthread_t threads[THREADS];
    struct writer writers[THREADS];
    int seen[THREADS] = {0};
    struct ts_log *log;
    char *data, *line, *next;
    off_t size;
    int fd, i, lines = 0;

    (void)state;
    fd = memfd_create("test_log", MFD_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(ts_log_new(&log, fd, TS_LOG_FORMAT_JSON, TS_LOG_INFO), 0);
    for (i = 0; i < THREADS; i++) {
        writers[i] = (struct writer){.log = log, .id = i};
        assert_int_equal(pthread_create(&threads[i], NULL, write_lines, &writers[i]), 0);
    }
    for (i = 0; i < THREADS; i++)
        pthread_join(threads[i], NULL);
    assert_int_equal(ts_log_write_errors(log), 0);
    ts_log_free(log);

    size = lseek(fd, 0, SEEK_END);
    assert_true(size > 0);
    data = malloc((size_t)size + 1);
    assert_non_null(data);
    assert_int_equal(pread(fd, data, (size_t)size, 0), size);
    data[size] = '\0';
    for (line = data; *line != '\0'; line = next) {
        json_error_t jerr;
        json_t *obj;
        json_int_t id, n;

        next = strchr(line, '\n');
        assert_non_null(next);
        *next++ = '\0';
        obj = json_loads(line, 0, &jerr);
        if (obj == NULL)
            fail_msg("line %d: %s", lines, jerr.text);
        id = json_integer_value(json_object_get(obj, "thread"));
        n = json_integer_value(json_object_get(obj, "i"));
        assert_true(id >= 0 && id < THREADS);
        /* Each thread's lines arrive in its order. */
        assert_int_equal(n, seen[id]);
        seen[id]++;
        assert_int_equal(strlen(json_string_value(json_object_get(obj, "payload"))), 599);
        json_decref(obj);
        lines++;
    }
    assert_int_equal(lines, THREADS * LINES_PER_THREAD);
    free(data);
    close(fd);
}

static void
test_new_and_names(void **state)
{
    struct ts_log *log = NULL;

    (void)state;
    assert_int_equal(ts_log_new(&log, -1, TS_LOG_FORMAT_JSON, TS_LOG_INFO), -EBADF);
    assert_int_equal(ts_log_new(&log, 2, (enum ts_log_format)7, TS_LOG_INFO), -EINVAL);
    assert_int_equal(ts_log_new(&log, 2, TS_LOG_FORMAT_TEXT, (enum ts_log_level)9), -EINVAL);
    assert_null(log);
    ts_log_free(NULL);

    assert_string_equal(ts_log_level_name(TS_LOG_DEBUG), "debug");
    assert_string_equal(ts_log_level_name(TS_LOG_INFO), "info");
    assert_string_equal(ts_log_level_name(TS_LOG_WARN), "warn");
    assert_string_equal(ts_log_level_name(TS_LOG_ERROR), "error");
    assert_string_equal(ts_log_level_name((enum ts_log_level)42), "unknown");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_line),
        cmocka_unit_test(test_json_escaping),
        cmocka_unit_test(test_doubles),
        cmocka_unit_test(test_level_filter),
        cmocka_unit_test(test_text_format),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_closed_pipe_sigpipe_ignored),
        cmocka_unit_test(test_closed_pipe_sigpipe_default),
        cmocka_unit_test(test_stuck_reader),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_new_and_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
