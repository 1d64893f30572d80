/*
 * Unit tests for the "ticker" kind: its parameter rules (one row per good or
 * bad value, each bad one named in the message), then real runs on a task
 * service with the real clock: five ticks 1 ms apart and their "end", the
 * payload, and a cancellation cutting a long interval short.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "task.h"
#include "task_helpers.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static void
test_validate(void **state)
{
    static const struct {
        const char *body;
        int want;
        const char *message; /* NULL when valid */
    } rows[] = {
        {"{\"kind\":\"ticker\"}", 0, NULL},
        {"{\"kind\":\"ticker\",\"count\":1,\"interval_ms\":0,\"payload_bytes\":0}", 0, NULL},
        {"{\"kind\":\"ticker\",\"count\":1000000,\"interval_ms\":3600000,\"payload_bytes\":"
         "1048576}",
         0, NULL},
        {"{\"kind\":\"ticker\",\"count\":0}", -EINVAL,
         "\"count\" must be an integer from 1 to 1000000"},
        {"{\"kind\":\"ticker\",\"count\":1000001}", -EINVAL,
         "\"count\" must be an integer from 1 to 1000000"},
        {"{\"kind\":\"ticker\",\"count\":\"5\"}", -EINVAL,
         "\"count\" must be an integer from 1 to 1000000"},
        {"{\"kind\":\"ticker\",\"count\":2.5}", -EINVAL,
         "\"count\" must be an integer from 1 to 1000000"},
        {"{\"kind\":\"ticker\",\"count\":true}", -EINVAL,
         "\"count\" must be an integer from 1 to 1000000"},
        {"{\"kind\":\"ticker\",\"count\":null}", -EINVAL,
         "\"count\" must be an integer from 1 to 1000000"},
        {"{\"kind\":\"ticker\",\"interval_ms\":-1}", -EINVAL,
         "\"interval_ms\" must be an integer from 0 to 3600000"},
        {"{\"kind\":\"ticker\",\"interval_ms\":3600001}", -EINVAL,
         "\"interval_ms\" must be an integer from 0 to 3600000"},
        {"{\"kind\":\"ticker\",\"payload_bytes\":-1}", -EINVAL,
         "\"payload_bytes\" must be an integer from 0 to 1048576"},
        {"{\"kind\":\"ticker\",\"payload_bytes\":1048577}", -EINVAL,
         "\"payload_bytes\" must be an integer from 0 to 1048576"},
        {"{\"kind\":\"ticker\",\"colour\":\"red\"}", -EINVAL,
         "unknown parameter \"colour\" (allowed: count, interval_ms, payload_bytes)"},
    };
    const struct ts_task_kind *kind = ts_ticker_kind();
    json_error_t jerr;
    json_t *body;
    char err[256];

    (void)state;
    assert_string_equal(kind->name, "ticker");
    assert_non_null(kind->run);
    for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
        body = json_loads(rows[i].body, 0, &jerr);
        assert_non_null(body);
        err[0] = '\0';
        assert_int_equal(kind->validate(kind->arg, body, err, sizeof(err)), rows[i].want);
        if (rows[i].message != NULL)
            assert_string_equal(err, rows[i].message);
        json_decref(body);
    }
}

/* ---- real runs ---- */

struct fixture {
    struct ts_metrics *metrics;
    struct ts_task_service *svc;
};

static int
setup(void **state)
{
    struct ts_task_service_config cfg = {
        .workers = 2,
        .max_queued = 8,
        .retention_ns = 60 * TS_NS_PER_S,
        .log_events = 64,
        .log_bytes = 1 << 20,
    };
    struct fixture *fx = calloc(1, sizeof(*fx));

    assert_non_null(fx);
    assert_int_equal(ts_metrics_new(&fx->metrics), 0);
    assert_int_equal(
        ts_task_service_new(&fx->svc, &cfg, ts_drain_noop(), ts_clock_real(), fx->metrics, NULL),
        0);
    assert_int_equal(ts_task_service_register(fx->svc, ts_ticker_kind()), 0);
    assert_int_equal(ts_task_service_start(fx->svc), 0);
    *state = fx;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *fx = *state;

    ts_task_service_free(fx->svc);
    ts_metrics_free(fx->metrics);
    free(fx);
    return 0;
}

static struct ts_task *
submit(struct fixture *fx, const char *text)
{
    json_error_t jerr;
    json_t *body = json_loads(text, 0, &jerr);
    struct ts_task *t = NULL;
    char err[256];

    assert_non_null(body);
    assert_int_equal(ts_task_submit(fx->svc, body, NULL, &t, err, sizeof(err)), 0);
    json_decref(body);
    return t;
}

static void
wait_idle(struct fixture *fx)
{
    assert_int_equal(ts_task_service_wait_idle(fx->svc, ts_monotonic_ns() + 5 * TS_NS_PER_S), 0);
}

static void
test_five_ticks(void **state)
{
    struct fixture *fx = *state;
    struct ts_task *t = submit(fx, "{\"kind\":\"ticker\",\"count\":5,\"interval_ms\":1}");
    int64_t before_us = (int64_t)time(NULL) * 1000000;
    char name[65];
    json_t *data;

    wait_idle(fx);
    assert_int_equal(last_id(t), 6);
    for (uint64_t id = 1; id <= 5; id++) {
        data = event(t, id, name, sizeof(name));
        assert_string_equal(name, "tick");
        assert_int_equal(json_integer_value(json_object_get(data, "n")), id);
        assert_int_equal(json_integer_value(json_object_get(data, "count")), 5);
        /* Microseconds of the wall clock, not of some other clock. */
        assert_true(json_integer_value(json_object_get(data, "sent_us")) >= before_us - 2000000);
        assert_null(json_object_get(data, "payload"));
        assert_int_equal(json_object_size(data), 3);
        json_decref(data);
    }
    data = event(t, 6, name, sizeof(name));
    assert_string_equal(name, "end");
    assert_string_equal(json_string_value(json_object_get(data, "status")), "succeeded");
    assert_true(json_is_null(json_object_get(data, "reason")));
    assert_int_equal(json_integer_value(json_object_get(data, "exit_code")), 0);
    json_decref(data);
    ts_task_unref(t);
}

static void
test_payload(void **state)
{
    struct fixture *fx = *state;
    struct ts_task *t =
        submit(fx, "{\"kind\":\"ticker\",\"count\":2,\"interval_ms\":0,\"payload_bytes\":16}");
    char name[65];
    json_t *data;

    wait_idle(fx);
    assert_int_equal(last_id(t), 3);
    for (uint64_t id = 1; id <= 2; id++) {
        data = event(t, id, name, sizeof(name));
        assert_string_equal(json_string_value(json_object_get(data, "payload")),
                            "xxxxxxxxxxxxxxxx");
        json_decref(data);
    }
    ts_task_unref(t);
}

static void
test_cancel_cuts_the_interval(void **state)
{
    struct fixture *fx = *state;
    struct ts_task *t = submit(fx, "{\"kind\":\"ticker\",\"count\":1000,\"interval_ms\":3600000}");
    struct timespec step = {0, 1000 * 1000};
    char name[65];
    json_t *data;

    /* The first tick comes at once; the second would come in an hour. */
    for (int i = 0; i < 2000 && last_id(t) == 0; i++)
        nanosleep(&step, NULL);
    assert_int_equal(last_id(t), 1);
    assert_int_equal(ts_task_cancel(fx->svc, t), 0);
    wait_idle(fx);
    assert_int_equal(last_id(t), 2);
    data = event(t, 2, name, sizeof(name));
    assert_string_equal(name, "end");
    assert_string_equal(json_string_value(json_object_get(data, "status")), "cancelled");
    assert_string_equal(json_string_value(json_object_get(data, "reason")), "client");
    json_decref(data);
    ts_task_unref(t);
}

static void
test_submit_refuses_bad_parameters(void **state)
{
    struct fixture *fx = *state;
    json_t *body = json_pack("{s:s, s:i}", "kind", "ticker", "count", 0);
    struct ts_task *t = NULL;
    char err[256];

    assert_int_equal(ts_task_submit(fx->svc, body, NULL, &t, err, sizeof(err)), -EINVAL);
    assert_null(t);
    assert_string_equal(err, "\"count\" must be an integer from 1 to 1000000");
    json_decref(body);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validate),
        cmocka_unit_test_setup_teardown(test_five_ticks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_payload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_cuts_the_interval, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_refuses_bad_parameters, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
