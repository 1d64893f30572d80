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

/* The system clocks (CLOCK_MONOTONIC, CLOCK_REALTIME). */
struct ts_clock ts_clock_real(void);

/* Initialise a condition variable whose timed waits use CLOCK_MONOTONIC.
 * Returns 0 or a negative errno. */
int ts_cond_init(pthread_cond_t *cv);

/* Monotonic now, without going through an interface (for main.c's own use). */
int64_t ts_monotonic_ns(void);

/*
 * A fake clock for tests: time moves only when ts_fake_clock_advance() is
 * called, which also wakes the waiters whose deadline has come. Any thread.
 */
struct ts_fake_clock {
    pthread_mutex_t mu;
    int64_t now_ns;             /* guarded by mu */
    int64_t wall_ns;            /* guarded by mu */
    pthread_cond_t *waiting_cv; /* the one waiter a test may have; guarded by mu */
    pthread_mutex_t *waiting_mu;
};

void ts_fake_clock_init(struct ts_fake_clock *fc, int64_t start_ns);
void ts_fake_clock_dispose(struct ts_fake_clock *fc);
struct ts_clock ts_fake_clock_view(struct ts_fake_clock *fc);
void ts_fake_clock_advance(struct ts_fake_clock *fc, int64_t delta_ns);

#endif
