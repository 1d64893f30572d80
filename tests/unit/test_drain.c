/* The shutdown coordinator: state machine, reasons, notifications, no-op view. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "clock.h"
#include "drain.h"

struct fixture {
    struct ts_fake_clock clock;
    struct ts_coordinator *c;
    struct ts_drain_view view;
};

struct recorder {
    int calls;
    struct ts_drain_status last;
    bool saw_draining_in_view; /* the view already answers true inside the callback */
    struct ts_drain_view view;
};

static void
record(void *arg, const struct ts_drain_status *st)
{
    struct recorder *r = arg;

    r->calls++;
    r->last = *st;
    r->saw_draining_in_view = ts_drain_is_draining(&r->view);
}

static int
setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    ts_fake_clock_init(&f->clock, 1000 * TS_NS_PER_S);
    assert_int_equal(ts_coordinator_new_with_clock(&f->c, ts_fake_clock_view(&f->clock)), 0);
    f->view = ts_coordinator_view(f->c);
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *f = *state;

    ts_coordinator_free(f->c);
    ts_fake_clock_dispose(&f->clock);
    free(f);
    return 0;
}

static void
test_starts_serving(void **state)
{
    struct fixture *f = *state;
    struct ts_drain_status st;

    ts_coordinator_status(f->c, &st);
    assert_int_equal(st.state, TS_STATE_SERVING);
    assert_int_equal(st.reason, TS_DRAIN_REASON_NONE);
    assert_false(st.shutdown_requested);
    assert_false(st.forced);
    assert_int_equal(st.drain_started_ns, 0);
    assert_false(ts_drain_is_draining(&f->view));
}

static void
test_signal_drains_with_reason_and_time(void **state)
{
    struct fixture *f = *state;
    struct ts_drain_status st;

    ts_coordinator_request_shutdown(f->c, "SIGTERM");
    ts_coordinator_status(f->c, &st);
    assert_int_equal(st.state, TS_STATE_DRAINING);
    assert_int_equal(st.reason, TS_DRAIN_REASON_SIGNAL);
    assert_string_equal(st.signal_name, "SIGTERM");
    assert_true(st.shutdown_requested);
    assert_false(st.forced);
    assert_int_equal(st.drain_started_ns, 1000 * TS_NS_PER_S);
    assert_int_equal(st.shutdown_requested_ns, 1000 * TS_NS_PER_S);
    assert_true(ts_drain_is_draining(&f->view));

    /* A second signal forces; the reason and start stay. */
    ts_fake_clock_advance(&f->clock, 5 * TS_NS_PER_S);
    ts_coordinator_request_shutdown(f->c, "SIGINT");
    ts_coordinator_status(f->c, &st);
    assert_true(st.forced);
    assert_string_equal(st.signal_name, "SIGTERM");
    assert_int_equal(st.drain_started_ns, 1000 * TS_NS_PER_S);
}

static void
test_manual_drain_is_idempotent(void **state)
{
    struct fixture *f = *state;
    struct ts_drain_status st1, st2;

    ts_coordinator_drain(f->c);
    ts_coordinator_status(f->c, &st1);
    ts_fake_clock_advance(&f->clock, TS_NS_PER_S);
    ts_coordinator_drain(f->c);
    ts_coordinator_status(f->c, &st2);
    assert_int_equal(st1.state, TS_STATE_DRAINING);
    assert_int_equal(st1.reason, TS_DRAIN_REASON_MANUAL);
    assert_string_equal(st1.signal_name, "");
    assert_false(st1.shutdown_requested);
    assert_memory_equal(&st1, &st2, sizeof(st1));
}

static void
test_manual_then_signal_keeps_first_reason(void **state)
{
    struct fixture *f = *state;
    struct ts_drain_status st;

    ts_coordinator_drain(f->c);
    ts_fake_clock_advance(&f->clock, 7 * TS_NS_PER_S);
    ts_coordinator_request_shutdown(f->c, "SIGTERM");
    ts_coordinator_status(f->c, &st);
    assert_int_equal(st.reason, TS_DRAIN_REASON_MANUAL);
    assert_int_equal(st.drain_started_ns, 1000 * TS_NS_PER_S);
    assert_int_equal(st.shutdown_requested_ns, 1007 * TS_NS_PER_S);
    assert_true(st.shutdown_requested);
    assert_false(st.forced);
    /* Too late to undo. */
    assert_int_equal(ts_coordinator_undrain(f->c), -EBUSY);
}

static void
test_undrain(void **state)
{
    struct fixture *f = *state;
    struct ts_drain_status st;

    assert_int_equal(ts_coordinator_undrain(f->c), 0); /* serving already */
    ts_coordinator_drain(f->c);
    assert_true(ts_drain_is_draining(&f->view));
    assert_int_equal(ts_coordinator_undrain(f->c), 0);
    ts_coordinator_status(f->c, &st);
    assert_int_equal(st.state, TS_STATE_SERVING);
    assert_int_equal(st.reason, TS_DRAIN_REASON_NONE);
    assert_false(ts_drain_is_draining(&f->view));
    /* A later signal drains with its own reason. */
    ts_coordinator_request_shutdown(f->c, "SIGINT");
    ts_coordinator_status(f->c, &st);
    assert_int_equal(st.reason, TS_DRAIN_REASON_SIGNAL);
}

static void
test_states_only_move_forward(void **state)
{
    struct fixture *f = *state;
    struct ts_drain_status st;

    ts_coordinator_request_shutdown(f->c, "SIGTERM");
    ts_fake_clock_advance(&f->clock, 2 * TS_NS_PER_S);
    ts_coordinator_set_stopping(f->c);
    ts_fake_clock_advance(&f->clock, TS_NS_PER_S);
    ts_coordinator_set_stopped(f->c);
    ts_coordinator_set_stopping(f->c);
    ts_coordinator_drain(f->c);
    ts_coordinator_status(f->c, &st);
    assert_int_equal(st.state, TS_STATE_STOPPED);
    assert_int_equal(st.stopping_ns, 1002 * TS_NS_PER_S);
    assert_int_equal(st.stopped_ns, 1003 * TS_NS_PER_S);
    assert_int_equal(ts_coordinator_undrain(f->c), -EBUSY);
    assert_true(ts_drain_is_draining(&f->view));
}

static void
test_stopping_without_drain_records_a_start(void **state)
{
    struct fixture *f = *state;
    struct ts_drain_status st;

    ts_coordinator_set_stopping(f->c);
    ts_coordinator_status(f->c, &st);
    assert_int_equal(st.state, TS_STATE_STOPPING);
    assert_int_equal(st.drain_started_ns, 1000 * TS_NS_PER_S);
}

static void
test_subscribers_hear_each_change_once(void **state)
{
    struct fixture *f = *state;
    struct recorder r = {.view = f->view};
    int id;

    id = ts_drain_subscribe(&f->view, record, &r);
    assert_true(id >= 0);
    ts_coordinator_drain(f->c);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.last.state, TS_STATE_DRAINING);
    assert_true(r.saw_draining_in_view);
    ts_coordinator_drain(f->c); /* no change, no call */
    assert_int_equal(r.calls, 1);
    ts_coordinator_request_shutdown(f->c, "SIGTERM");
    assert_int_equal(r.calls, 2);
    assert_true(r.last.shutdown_requested);
    ts_coordinator_force(f->c);
    assert_int_equal(r.calls, 3);
    assert_true(r.last.forced);
    ts_coordinator_force(f->c);
    ts_coordinator_request_shutdown(f->c, "SIGTERM");
    assert_int_equal(r.calls, 3);

    ts_drain_unsubscribe(&f->view, id);
    ts_coordinator_set_stopping(f->c);
    assert_int_equal(r.calls, 3);
}

static void
test_subscriber_slots_are_bounded(void **state)
{
    struct fixture *f = *state;
    struct recorder r = {.view = f->view};
    int ids[64], n = 0;

    for (;;) {
        int id = ts_drain_subscribe(&f->view, record, &r);
        if (id < 0) {
            assert_int_equal(id, -ENOSPC);
            break;
        }
        ids[n++] = id;
        assert_true(n < 64);
    }
    assert_true(n >= 8);
    ts_drain_unsubscribe(&f->view, ids[0]);
    assert_true(ts_drain_subscribe(&f->view, record, &r) >= 0);
}

static void *
waiter(void *arg)
{
    ts_coordinator_wait_shutdown(arg);
    return NULL;
}

static void
test_wait_shutdown_returns_on_signal(void **state)
{
    struct fixture *f = *state;
    pthread_t t;

    assert_int_equal(pthread_create(&t, NULL, waiter, f->c), 0);
    ts_coordinator_drain(f->c); /* a manual drain does not end the wait */
    ts_coordinator_request_shutdown(f->c, "SIGTERM");
    assert_int_equal(pthread_join(t, NULL), 0);
}

static void
test_noop_view_never_drains(void **state)
{
    struct ts_drain_view v = ts_drain_noop();
    struct ts_drain_status st;
    struct recorder r;

    (void)state;
    assert_false(ts_drain_is_draining(&v));
    ts_drain_status(&v, &st);
    assert_int_equal(st.state, TS_STATE_SERVING);
    assert_int_equal(st.reason, TS_DRAIN_REASON_NONE);
    assert_true(ts_drain_subscribe(&v, record, &r) >= 0);
    ts_drain_unsubscribe(&v, 0);
}

static void
test_names(void **state)
{
    (void)state;
    assert_string_equal(ts_drain_state_name(TS_STATE_SERVING), "serving");
    assert_string_equal(ts_drain_state_name(TS_STATE_DRAINING), "draining");
    assert_string_equal(ts_drain_state_name(TS_STATE_STOPPING), "stopping");
    assert_string_equal(ts_drain_state_name(TS_STATE_STOPPED), "stopped");
    assert_string_equal(ts_drain_reason_name(TS_DRAIN_REASON_SIGNAL), "signal");
    assert_string_equal(ts_drain_reason_name(TS_DRAIN_REASON_MANUAL), "manual");
    assert_string_equal(ts_drain_reason_name(TS_DRAIN_REASON_NONE), "none");
}

/* Concurrent triggers from many threads leave one consistent state. */
static void *
storm(void *arg)
{
    for (int i = 0; i < 1000; i++) {
        ts_coordinator_request_shutdown(arg, "SIGTERM");
        ts_coordinator_drain(arg);
    }
    return NULL;
}

static void
test_signal_storm(void **state)
{
    struct fixture *f = *state;
    struct recorder r = {.view = f->view};
    struct ts_drain_status st;
    pthread_t t[4];

    ts_drain_subscribe(&f->view, record, &r);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, storm, f->c), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    ts_coordinator_status(f->c, &st);
    assert_int_equal(st.state, TS_STATE_DRAINING);
    assert_int_equal(st.reason, TS_DRAIN_REASON_SIGNAL);
    assert_true(st.forced);
    assert_int_equal(r.calls, 2); /* draining+requested, then forced */
}

/* A host built against an older, shorter struct ts_drain_status gets the
 * fields it knows and nothing is written past them. */
static void
test_status_fills_only_the_callers_size(void **state)
{
    struct fixture *f = *state;
    size_t known = offsetof(struct ts_drain_status, stopping_ns);
    struct ts_drain_status full;
    _Alignas(struct ts_drain_status) unsigned char buf[sizeof(struct ts_drain_status) + 16];

    ts_coordinator_request_shutdown(f->c, "SIGTERM");
    ts_coordinator_status(f->c, &full);
    memset(buf, 0xa5, sizeof(buf));
    ts_coordinator_status_sized(f->c, (struct ts_drain_status *)(void *)buf, known);
    {
        const struct ts_drain_status *old = (const void *)buf;

        assert_int_equal(old->state, full.state);
        assert_int_equal(old->reason, full.reason);
        assert_string_equal(old->signal_name, "SIGTERM");
        assert_true(old->shutdown_requested);
        assert_int_equal(old->drain_started_ns, full.drain_started_ns);
        assert_int_equal(old->shutdown_requested_ns, full.shutdown_requested_ns);
    }
    for (size_t i = known; i < sizeof(buf); i++)
        assert_int_equal(buf[i], 0xa5);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_starts_serving, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_fills_only_the_callers_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signal_drains_with_reason_and_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manual_drain_is_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manual_then_signal_keeps_first_reason, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_undrain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_states_only_move_forward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stopping_without_drain_records_a_start, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_subscribers_hear_each_change_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subscriber_slots_are_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wait_shutdown_returns_on_signal, setup, teardown),
        cmocka_unit_test(test_noop_view_never_drains),
        cmocka_unit_test(test_names),
        cmocka_unit_test_setup_teardown(test_signal_storm, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
