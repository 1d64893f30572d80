/* Unit tests for src/util.c: parsers, constant-time comparison, ids, the
 * UTF-8 validator, ts_buf. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "taskstream.h"
#include "util.h"

static void
test_ct_equal(void **state)
{
    static const struct {
        const char *a;
        size_t alen;
        const char *b;
        size_t blen;
        bool equal;
    } rows[] = {
        {"", 0, "", 0, true},
        {NULL, 0, NULL, 0, true},
        {"secret", 6, "secret", 6, true},
        {"secret", 6, "secreT", 6, false},
        {"secret", 6, "Secret", 6, false},
        {"secret", 6, "secre", 5, false},
        {"secre", 5, "secret", 6, false},
        {"", 0, "x", 1, false},
        {"x", 1, "", 0, false},
        /* A shorter side padded with zeros must not equal the longer one. */
        {"ab\0", 3, "ab", 2, false},
        {"a\0b", 3, "a\0b", 3, true},
        {"a\0b", 3, "a\0c", 3, false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        bool got = ts_ct_equal(rows[i].a, rows[i].alen, rows[i].b, rows[i].blen);

        if (got != rows[i].equal)
            fail_msg("row %zu: ts_ct_equal gave %d", i, got);
    }
}

static void
test_parse_duration(void **state)
{
    static const struct {
        const char *in;
        int rc;
        int64_t ms;
    } rows[] = {
        {"10s", 0, 10000},
        {"500ms", 0, 500},
        {"10m", 0, 600000},
        {"1h", 0, 3600000},
        {"0", 0, 0},
        {"0s", 0, 0},
        {"0ms", 0, 0},
        {"30", 0, 30000},
        {"007s", 0, 7000},
        {"1ms", 0, 1},
        {"168h", 0, INT64_C(168) * 3600000},
        {"9223372036854775807ms", 0, INT64_MAX},
        {"-1s", -EINVAL, 0},
        {"-1", -EINVAL, 0},
        {"+1s", -EINVAL, 0},
        {"10x", -EINVAL, 0},
        {"", -EINVAL, 0},
        {"s", -EINVAL, 0},
        {"ms", -EINVAL, 0},
        {" 10s", -EINVAL, 0},
        {"10s ", -EINVAL, 0},
        {"10 s", -EINVAL, 0},
        {"1.5s", -EINVAL, 0},
        {"10S", -EINVAL, 0},
        {"10sec", -EINVAL, 0},
        {"1h30m", -EINVAL, 0},
        {"ten", -EINVAL, 0},
        {"0x10", -EINVAL, 0},
        {"9223372036854775808ms", -EINVAL, 0},
        {"9223372036854776s", -EINVAL, 0},
        {"99999999999999999999", -EINVAL, 0},
        {"2562047788016h", -EINVAL, 0},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        int64_t ms = -42;
        int rc = ts_parse_duration_ms(rows[i].in, &ms);

        if (rc != rows[i].rc)
            fail_msg("\"%s\": rc %d, want %d", rows[i].in, rc, rows[i].rc);
        if (rc == 0 && ms != rows[i].ms)
            fail_msg("\"%s\": %lld ms, want %lld", rows[i].in, (long long)ms,
                     (long long)rows[i].ms);
        if (rc != 0 && ms != -42)
            fail_msg("\"%s\": output written on error", rows[i].in);
    }
    assert_int_equal(ts_parse_duration_ms(NULL, &(int64_t){0}), -EINVAL);
}

static void
test_parse_size(void **state)
{
    static const struct {
        const char *in;
        int rc;
        uint64_t n;
    } rows[] = {
        {"0", 0, 0},
        {"1048576", 0, 1048576},
        {"64k", 0, 65536},
        {"64K", 0, 65536},
        {"16M", 0, 16777216},
        {"1G", 0, 1073741824},
        {"18446744073709551615", 0, UINT64_MAX},
        {"17179869183G", 0, UINT64_C(17179869183) << 30},
        {"18446744073709551616", -EINVAL, 0},
        {"17179869184G", -EINVAL, 0},
        {"", -EINVAL, 0},
        {"k", -EINVAL, 0},
        {"-1", -EINVAL, 0},
        {"1.5M", -EINVAL, 0},
        {"1m", -EINVAL, 0},
        {"1T", -EINVAL, 0},
        {"1MB", -EINVAL, 0},
        {"1 M", -EINVAL, 0},
        {" 1", -EINVAL, 0},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        uint64_t n = 42;
        int rc = ts_parse_size(rows[i].in, &n);

        if (rc != rows[i].rc)
            fail_msg("\"%s\": rc %d, want %d", rows[i].in, rc, rows[i].rc);
        if (rc == 0 && n != rows[i].n)
            fail_msg("\"%s\": %llu, want %llu", rows[i].in, (unsigned long long)n,
                     (unsigned long long)rows[i].n);
    }
}

static void
test_parse_uint(void **state)
{
    static const struct {
        const char *in;
        uint64_t min, max;
        int rc;
        uint64_t n;
    } rows[] = {
        {"0", 0, 10, 0, 0},
        {"10", 0, 10, 0, 10},
        {"010", 0, 10, 0, 10},
        {"11", 0, 10, -EINVAL, 0},
        {"0", 1, 10, -EINVAL, 0},
        {"1", 1, 1, 0, 1},
        {"18446744073709551615", 0, UINT64_MAX, 0, UINT64_MAX},
        {"18446744073709551616", 0, UINT64_MAX, -EINVAL, 0},
        {"", 0, 10, -EINVAL, 0},
        {"-1", 0, 10, -EINVAL, 0},
        {"+1", 0, 10, -EINVAL, 0},
        {" 1", 0, 10, -EINVAL, 0},
        {"1 ", 0, 10, -EINVAL, 0},
        {"1k", 0, 10000, -EINVAL, 0},
        {"0x1", 0, 10, -EINVAL, 0},
        {"four", 0, 10, -EINVAL, 0},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        uint64_t n = 42;
        int rc = ts_parse_uint(rows[i].in, rows[i].min, rows[i].max, &n);

        if (rc != rows[i].rc)
            fail_msg("\"%s\" in [%llu, %llu]: rc %d, want %d", rows[i].in,
                     (unsigned long long)rows[i].min, (unsigned long long)rows[i].max, rc,
                     rows[i].rc);
        if (rc == 0 && n != rows[i].n)
            fail_msg("\"%s\": %llu, want %llu", rows[i].in, (unsigned long long)n,
                     (unsigned long long)rows[i].n);
        if (rc != 0 && n != 42)
            fail_msg("\"%s\": output written on error", rows[i].in);
    }
    assert_int_equal(ts_parse_uint(NULL, 0, 1, &(uint64_t){0}), -EINVAL);
}

static int
cmp_ids(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void
test_random_id(void **state)
{
    enum { N = 1000 };
    char(*ids)[33] = calloc(N, sizeof(*ids));
    size_t i;

    (void)state;
    assert_non_null(ids);
    for (i = 0; i < N; i++) {
        assert_int_equal(ts_random_id(ids[i]), 0);
        assert_int_equal(strlen(ids[i]), 32);
        assert_true(ts_is_task_id(ids[i]));
    }
    qsort(ids, N, sizeof(*ids), cmp_ids);
    for (i = 1; i < N; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    free(ids);
}

static void
test_is_task_id(void **state)
{
    static const struct {
        const char *in;
        bool ok;
    } rows[] = {
        {"0123456789abcdef0123456789abcdef", true},
        {"00000000000000000000000000000000", true},
        {"0123456789ABCDEF0123456789abcdef", false},
        {"0123456789abcdef0123456789abcde", false},
        {"0123456789abcdef0123456789abcdef0", false},
        {"0123456789abcdeg0123456789abcdef", false},
        {"0123456789abcdef0123456789abcde ", false},
        {"../../etc/passwd", false},
        {"", false},
        {NULL, false},
    };
    size_t i;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++)
        if (ts_is_task_id(rows[i].in) != rows[i].ok)
            fail_msg("\"%s\": want %d", rows[i].in ? rows[i].in : "(null)", rows[i].ok);
}

static void
test_buf_cap(void **state)
{
    struct ts_buf b;
    char *p;
    size_t len;

    (void)state;
    ts_buf_init(&b, 10);
    assert_int_equal(ts_buf_append(&b, "hello", 5), 0);
    assert_int_equal(ts_buf_append(&b, "world!", 6), -E2BIG);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "hello");
    assert_int_equal(ts_buf_printf(&b, "%s", "123456"), -E2BIG);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "hello");
    assert_int_equal(ts_buf_printf(&b, "%d%s", 12, "345"), 0);
    assert_int_equal(b.len, 10);
    assert_string_equal(b.data, "hello12345");
    assert_true(b.alloc <= 11);
    assert_int_equal(ts_buf_append(&b, "x", 1), -E2BIG);
    assert_int_equal(ts_buf_append(&b, "", 0), 0);
    assert_int_equal(ts_buf_printf(&b, "%s", ""), 0);

    p = ts_buf_take(&b, &len);
    assert_non_null(p);
    assert_int_equal(len, 10);
    assert_string_equal(p, "hello12345");
    free(p);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.max, 10);

    /* Empty: still a string, so that NULL only means out of memory. */
    p = ts_buf_take(&b, &len);
    assert_non_null(p);
    assert_int_equal(len, 0);
    assert_string_equal(p, "");
    free(p);
    ts_buf_dispose(&b);
}

static void
test_buf_grows(void **state)
{
    struct ts_buf b;
    char chunk[100];
    size_t i;

    (void)state;
    memset(chunk, 'a', sizeof(chunk));
    ts_buf_init(&b, 1 << 20);
    for (i = 0; i < 1000; i++)
        assert_int_equal(ts_buf_append(&b, chunk, sizeof(chunk)), 0);
    assert_int_equal(b.len, 100000);
    assert_int_equal(b.data[b.len], '\0');
    for (i = 0; i < 1000; i++)
        assert_int_equal(ts_buf_printf(&b, "%03zu", i), 0);
    assert_int_equal(b.len, 103000);
    assert_memory_equal(b.data + 100000, "000001002", 9);
    assert_string_equal(b.data + 102997, "999");
    ts_buf_dispose(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

static void
test_buf_zero_cap(void **state)
{
    struct ts_buf b;

    (void)state;
    ts_buf_init(&b, 0);
    assert_int_equal(ts_buf_append(&b, "x", 1), -E2BIG);
    assert_int_equal(ts_buf_printf(&b, "x"), -E2BIG);
    assert_int_equal(ts_buf_append(&b, "", 0), 0);
    assert_null(b.data);
    ts_buf_dispose(&b);
}

/* Each row is `left` bytes; a sequence that needs more than that is 0. */
static void
test_utf8_sequence(void **state)
{
    static const struct {
        const char *in;
        size_t left;
        size_t want;
    } rows[] = {
        /* Every boundary between lengths, and the end of Unicode. */
        {"\x00", 1, 1},
        {"\x7f", 1, 1},             /* U+007F */
        {"\xc2\x80", 2, 2},         /* U+0080 */
        {"\xdf\xbf", 2, 2},         /* U+07FF */
        {"\xe0\xa0\x80", 3, 3},     /* U+0800 */
        {"\xef\xbf\xbf", 3, 3},     /* U+FFFF */
        {"\xf0\x90\x80\x80", 4, 4}, /* U+10000 */
        {"\xf4\x8f\xbf\xbf", 4, 4}, /* U+10FFFF */
        {"\xf4\x90\x80\x80", 4, 0}, /* U+110000 */
        {"\xe2\x82\xacx", 4, 3},    /* more room than the sequence needs */
        /* Overlong forms. */
        {"\xc0\x80", 2, 0},
        {"\xc1\xbf", 2, 0},
        {"\xe0\x80\x80", 3, 0},
        {"\xe0\x9f\xbf", 3, 0},
        {"\xf0\x80\x80\x80", 4, 0},
        {"\xf0\x8f\xbf\xbf", 4, 0},
        /* Surrogates, and their neighbours. */
        {"\xed\x9f\xbf", 3, 3}, /* U+D7FF */
        {"\xed\xa0\x80", 3, 0}, /* U+D800 */
        {"\xed\xbf\xbf", 3, 0}, /* U+DFFF */
        {"\xee\x80\x80", 3, 3}, /* U+E000 */
        /* Truncated: `left` too small, or a byte that does not continue. */
        {"x", 0, 0},
        {"\xc2\x80", 1, 0},
        {"\xe2\x82\xac", 1, 0},
        {"\xe2\x82\xac", 2, 0},
        {"\xf0\x90\x80\x80", 3, 0},
        {"\xe2\x82x", 3, 0},
        {"\xe2\x82\x00", 3, 0},
        {"\xf0\x90\x80x", 4, 0},
        {"\xc2\xc2\x80", 3, 0},
        /* Stray continuation bytes. */
        {"\x80", 1, 0},
        {"\xbf", 1, 0},
        {"\x80\x80\x80\x80", 4, 0},
        /* Lead bytes no sequence may start with. */
        {"\xf5\x80\x80\x80", 4, 0},
        {"\xf7\xbf\xbf\xbf", 4, 0},
        {"\xf8\x88\x80\x80", 4, 0},
        {"\xfc\x84\x80\x80", 4, 0},
        {"\xfe", 1, 0},
        {"\xff", 1, 0},
    };
    unsigned char *copy;
    size_t i, got;

    (void)state;
    for (i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        /* Exactly `left` bytes on the heap: ASan sees a read past them. */
        copy = malloc(rows[i].left);
        if (rows[i].left > 0) {
            assert_non_null(copy);
            memcpy(copy, rows[i].in, rows[i].left);
        }
        got = ts_utf8_sequence(copy, rows[i].left);
        free(copy);
        if (got != rows[i].want)
            fail_msg("row %zu: ts_utf8_sequence gave %zu, want %zu", i, got, rows[i].want);
    }
}

/* The way NUL-terminated callers bound it: the terminator ends a sequence. */
static void
test_utf8_sequence_string(void **state)
{
    static const struct {
        const char *in;
        size_t want;
    } rows[] = {
        {"x", 1},        {"\xc3\xa9x", 2},    {"\xe2\x82\xac", 3},
        {"\xe2\x82", 0}, {"\xf0\x9f\x98", 0}, {"\xc2", 0},
    };

    (void)state;
    for (size_t i = 0; i < TS_ARRAY_SIZE(rows); i++) {
        const unsigned char *s = (const unsigned char *)rows[i].in;

        assert_int_equal(ts_utf8_sequence(s, strnlen(rows[i].in, TS_UTF8_MAX)), rows[i].want);
    }
}

static void
test_strerror(void **state)
{
    (void)state;
    assert_string_equal(ts_strerror(-ENOENT), "No such file or directory");
    assert_string_equal(ts_strerror(-EINVAL), "Invalid argument");
    assert_string_equal(ts_strerror(-E2BIG), "Argument list too long");
    assert_non_null(ts_strerror(0));
    assert_non_null(ts_strerror(-99999));
    assert_non_null(ts_strerror(INT32_MIN));
    assert_non_null(ts_strerror(12345));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_uint),
        cmocka_unit_test(test_random_id),
        cmocka_unit_test(test_is_task_id),
        cmocka_unit_test(test_buf_cap),
        cmocka_unit_test(test_buf_grows),
        cmocka_unit_test(test_buf_zero_cap),
        cmocka_unit_test(test_utf8_sequence),
        cmocka_unit_test(test_utf8_sequence_string),
        cmocka_unit_test(test_strerror),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
