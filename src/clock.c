/*
 * Clocks: the real one (CLOCK_MONOTONIC for deadlines, CLOCK_REALTIME for
 * timestamps shown to users) and a fake one whose time moves only when a test
 * says so.
 *
 * Condition variables are created with CLOCK_MONOTONIC so that a timed wait
 * is not stretched or cut short when the wall clock is set. The fake clock's
 * wait ignores the real time entirely: it sleeps until the test advances the
 * clock past the deadline (or something else signals the condition).
 */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "clock.h"

static int64_t
read_clock(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * TS_NS_PER_S + ts.tv_nsec;
}

int64_t
ts_monotonic_ns(void)
{
    return read_clock(CLOCK_MONOTONIC);
}

static int64_t
real_now_ns(void *self)
{
    (void)self;
    return read_clock(CLOCK_MONOTONIC);
}

static int64_t
real_wall_ns(void *self)
{
    (void)self;
    return read_clock(CLOCK_REALTIME);
}

static int
real_wait(void *self, pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns)
{
    struct timespec ts;
    int err;

    (void)self;
    if (deadline_ns == TS_NO_DEADLINE)
        return pthread_cond_wait(cv, mu);
    if (deadline_ns < 0)
        deadline_ns = 0;
    ts.tv_sec = deadline_ns / TS_NS_PER_S;
    ts.tv_nsec = deadline_ns % TS_NS_PER_S;
    err = pthread_cond_timedwait(cv, mu, &ts);
    return err == ETIMEDOUT ? ETIMEDOUT : 0;
}

static const struct ts_clock_ops real_ops = {
    .now_ns = real_now_ns,
    .wall_ns = real_wall_ns,
    .wait = real_wait,
};

struct ts_clock
ts_clock_real(void)
{
    return (struct ts_clock){.ops = &real_ops, .self = NULL};
}

int
ts_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    int err;

    err = pthread_condattr_init(&attr);
    if (err != 0)
        return -err;
    err = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (err == 0)
        err = pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
    return -err;
}

static int64_t
fake_now_ns(void *self)
{
    struct ts_fake_clock *fc = self;
    int64_t now;

    pthread_mutex_lock(&fc->mu);
    now = fc->now_ns;
    pthread_mutex_unlock(&fc->mu);
    return now;
}

static int64_t
fake_wall_ns(void *self)
{
    struct ts_fake_clock *fc = self;
    int64_t now;

    pthread_mutex_lock(&fc->mu);
    now = fc->wall_ns;
    pthread_mutex_unlock(&fc->mu);
    return now;
}

static int
fake_wait(void *self, pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns)
{
    struct ts_fake_clock *fc = self;
    size_t slot = TS_FAKE_CLOCK_WAITERS;
    bool due;

    /* Register before checking the time: an advance() that lands between
     * the check and the wait then finds us and broadcasts under `mu`, which
     * it cannot take until pthread_cond_wait() has released it. */
    pthread_mutex_lock(&fc->mu);
    for (size_t i = 0; i < TS_FAKE_CLOCK_WAITERS && slot == TS_FAKE_CLOCK_WAITERS; i++)
        if (fc->waiting[i].cv == NULL)
            slot = i;
    if (slot < TS_FAKE_CLOCK_WAITERS) {
        fc->waiting[slot].cv = cv;
        fc->waiting[slot].mu = mu;
    }
    due = fc->now_ns >= deadline_ns;
    pthread_mutex_unlock(&fc->mu);
    if (!due)
        pthread_cond_wait(cv, mu);
    pthread_mutex_lock(&fc->mu);
    if (slot < TS_FAKE_CLOCK_WAITERS)
        fc->waiting[slot].cv = NULL;
    pthread_mutex_unlock(&fc->mu);
    return due ? ETIMEDOUT : 0;
}

static int
fake_watch(void *self, void (*fn)(void *arg), void *arg)
{
    struct ts_fake_clock *fc = self;
    int rc = -ENOSPC;

    pthread_mutex_lock(&fc->mu);
    for (size_t i = 0; i < TS_FAKE_CLOCK_WATCHERS && rc != 0; i++) {
        if (fc->watchers[i].fn == NULL) {
            fc->watchers[i].fn = fn;
            fc->watchers[i].arg = arg;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&fc->mu);
    return rc;
}

static void
fake_unwatch(void *self, void (*fn)(void *arg), void *arg)
{
    struct ts_fake_clock *fc = self;

    pthread_mutex_lock(&fc->mu);
    for (size_t i = 0; i < TS_FAKE_CLOCK_WATCHERS; i++)
        if (fc->watchers[i].fn == fn && fc->watchers[i].arg == arg)
            fc->watchers[i].fn = NULL;
    pthread_mutex_unlock(&fc->mu);
}

static const struct ts_clock_ops fake_ops = {
    .now_ns = fake_now_ns,
    .wall_ns = fake_wall_ns,
    .wait = fake_wait,
    .watch = fake_watch,
    .unwatch = fake_unwatch,
};

void
ts_fake_clock_init(struct ts_fake_clock *fc, int64_t start_ns)
{
    memset(fc, 0, sizeof(*fc));
    pthread_mutex_init(&fc->mu, NULL);
    fc->now_ns = start_ns;
    fc->wall_ns = INT64_C(1700000000) * TS_NS_PER_S + start_ns;
}

void
ts_fake_clock_dispose(struct ts_fake_clock *fc)
{
    pthread_mutex_destroy(&fc->mu);
}

struct ts_clock
ts_fake_clock_view(struct ts_fake_clock *fc)
{
    return (struct ts_clock){.ops = &fake_ops, .self = fc};
}

/*
 * Each waiter is woken under its own mutex, which is never taken with the
 * clock's: the list is copied first. A waiter cannot go away while it is
 * listed, as it unlists itself before it returns, and its mutex is taken
 * here only while it is listed... or just after: a waiter's mutex and cv
 * must outlive the clock's last advance() (they do in every test: both live
 * in the service that waits).
 */
void
ts_fake_clock_advance(struct ts_fake_clock *fc, int64_t delta_ns)
{
    pthread_cond_t *cvs[TS_FAKE_CLOCK_WAITERS];
    pthread_mutex_t *mus[TS_FAKE_CLOCK_WAITERS];
    void (*fns[TS_FAKE_CLOCK_WATCHERS])(void *);
    void *args[TS_FAKE_CLOCK_WATCHERS];
    size_t n = 0, nw = 0;

    pthread_mutex_lock(&fc->mu);
    fc->now_ns += delta_ns;
    fc->wall_ns += delta_ns;
    for (size_t i = 0; i < TS_FAKE_CLOCK_WAITERS; i++) {
        if (fc->waiting[i].cv != NULL) {
            cvs[n] = fc->waiting[i].cv;
            mus[n++] = fc->waiting[i].mu;
        }
    }
    for (size_t i = 0; i < TS_FAKE_CLOCK_WATCHERS; i++) {
        if (fc->watchers[i].fn != NULL) {
            fns[nw] = fc->watchers[i].fn;
            args[nw++] = fc->watchers[i].arg;
        }
    }
    pthread_mutex_unlock(&fc->mu);
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(mus[i]);
        pthread_cond_broadcast(cvs[i]);
        pthread_mutex_unlock(mus[i]);
    }
    for (size_t i = 0; i < nw; i++)
        fns[i](args[i]);
}

unsigned
ts_fake_clock_waiters(struct ts_fake_clock *fc)
{
    unsigned n = 0;

    pthread_mutex_lock(&fc->mu);
    for (size_t i = 0; i < TS_FAKE_CLOCK_WAITERS; i++)
        n += fc->waiting[i].cv != NULL;
    pthread_mutex_unlock(&fc->mu);
    return n;
}
