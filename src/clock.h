/*
 * Clocks as an interface, so that drain deadlines, heartbeats and task
 * retention can be tested with a fake clock. Monotonic time is int64_t
 * nanoseconds; wall time (shown to users) is nanoseconds since the epoch.
 */
#ifndef TS_CLOCK_H
#define TS_CLOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define TS_NS_PER_MS INT64_C(1000000)
#define TS_NS_PER_S INT64_C(1000000000)
#define TS_NO_DEADLINE INT64_MAX

struct ts_clock_ops {
    int64_t (*now_ns)(void *self);  /* monotonic */
    int64_t (*wall_ns)(void *self); /* since the epoch */
    /* With `mu` held, wait on `cv` until signalled or until now_ns() reaches
     * `deadline_ns` (TS_NO_DEADLINE: no deadline). `cv` must come from
     * ts_cond_init(). Returns 0 when woken, ETIMEDOUT at the deadline.
     * Spurious wake-ups are possible: callers loop on their own predicate. */
    int (*wait)(void *self, pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns);
    /* Optional (NULL for the real clock, whose time moves by itself): call
     * fn(arg) whenever time jumps, so that a thread sleeping in a system call
     * with a timeout (epoll_wait) looks at the clock again. Returns 0 or
     * -ENOSPC; unwatch() takes the same pair. */
    int (*watch)(void *self, void (*fn)(void *arg), void *arg);
    void (*unwatch)(void *self, void (*fn)(void *arg), void *arg);
};

struct ts_clock {
    const struct ts_clock_ops *ops;
    void *self;
};

static inline int64_t
ts_clock_now_ns(const struct ts_clock *c)
{
    return c->ops->now_ns(c->self);
}

static inline int64_t
ts_clock_wall_ns(const struct ts_clock *c)
{
    return c->ops->wall_ns(c->self);
}

static inline int
ts_clock_wait(const struct ts_clock *c, pthread_cond_t *cv, pthread_mutex_t *mu,
              int64_t deadline_ns)
{
    return c->ops->wait(c->self, cv, mu, deadline_ns);
}

static inline int
ts_clock_watch(const struct ts_clock *c, void (*fn)(void *arg), void *arg)
{
    return c->ops->watch != NULL ? c->ops->watch(c->self, fn, arg) : 0;
}

static inline void
ts_clock_unwatch(const struct ts_clock *c, void (*fn)(void *arg), void *arg)
{
    if (c->ops->unwatch != NULL)
        c->ops->unwatch(c->self, fn, arg);
}

/* The system clocks (CLOCK_MONOTONIC, CLOCK_REALTIME). */
struct ts_clock ts_clock_real(void);

/* Initialise a condition variable whose timed waits use CLOCK_MONOTONIC.
 * Returns 0 or a negative errno. */
int ts_cond_init(pthread_cond_t *cv);

/* Monotonic now, without going through an interface (for main.c's own use). */
int64_t ts_monotonic_ns(void);

/*
 * A fake clock for tests: time moves only when ts_fake_clock_advance() is
 * called, which wakes every thread waiting on it (they look at their own
 * deadlines: spurious wake-ups are allowed) and calls its watchers. Any
 * thread.
 */
#define TS_FAKE_CLOCK_WAITERS 32
#define TS_FAKE_CLOCK_WATCHERS 8

struct ts_fake_clock {
    pthread_mutex_t mu;
    int64_t now_ns;  /* guarded by mu */
    int64_t wall_ns; /* guarded by mu */
    struct {
        pthread_cond_t *cv;
        pthread_mutex_t *mu;
    } waiting[TS_FAKE_CLOCK_WAITERS]; /* guarded by mu; cv NULL: a free slot */
    struct {
        void (*fn)(void *arg);
        void *arg;
    } watchers[TS_FAKE_CLOCK_WATCHERS]; /* guarded by mu; fn NULL: a free slot */
};

void ts_fake_clock_init(struct ts_fake_clock *fc, int64_t start_ns);
void ts_fake_clock_dispose(struct ts_fake_clock *fc);
struct ts_clock ts_fake_clock_view(struct ts_fake_clock *fc);
void ts_fake_clock_advance(struct ts_fake_clock *fc, int64_t delta_ns);

/* Threads waiting on the clock now (a test waits for a sleeper to be one
 * before it moves time past the sleeper's deadline). */
unsigned ts_fake_clock_waiters(struct ts_fake_clock *fc);

#endif
