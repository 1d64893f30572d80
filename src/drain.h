/*
 * The read-only view of the shutdown coordinator that every service receives.
 * Services react to draining; only the coordinator's owner (main.c, or an
 * embedding host) changes it.
 */
#ifndef TS_DRAIN_H
#define TS_DRAIN_H

#include <stdbool.h>

#include "clock.h"
#include "taskstream.h"

struct ts_drain_ops {
    bool (*is_draining)(void *self); /* draining, stopping or stopped */
    void (*status)(void *self, struct ts_drain_status *out);
    /* Returns a subscription id >= 0, or a negative errno (-ENOSPC). */
    int (*subscribe)(void *self, ts_drain_cb *cb, void *arg);
    /* After it returns, the callback is not running and will not run again. */
    void (*unsubscribe)(void *self, int id);
};

struct ts_drain_view {
    const struct ts_drain_ops *ops;
    void *self;
};

static inline bool
ts_drain_is_draining(const struct ts_drain_view *d)
{
    return d->ops->is_draining(d->self);
}

static inline void
ts_drain_status(const struct ts_drain_view *d, struct ts_drain_status *out)
{
    d->ops->status(d->self, out);
}

static inline int
ts_drain_subscribe(const struct ts_drain_view *d, ts_drain_cb *cb, void *arg)
{
    return d->ops->subscribe(d->self, cb, arg);
}

static inline void
ts_drain_unsubscribe(const struct ts_drain_view *d, int id)
{
    d->ops->unsubscribe(d->self, id);
}

/* The view of a coordinator. Valid while the coordinator lives. */
struct ts_drain_view ts_coordinator_view(struct ts_coordinator *c);

/* Never drains. For unit tests, and for embedders without a lifecycle. */
struct ts_drain_view ts_drain_noop(void);

/* Block until the coordinator is forced (true) or `until_ns` passes on its
 * clock (false). The stop sequence's SHUTDOWN_DELAY. Any thread. */
bool ts_coordinator_wait_forced(struct ts_coordinator *c, int64_t until_ns);

/* A coordinator on a given clock (tests). */
int ts_coordinator_new_with_clock(struct ts_coordinator **out, struct ts_clock clock);

#endif
