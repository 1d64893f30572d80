/*
 * The shutdown coordinator: the one owner of the process's lifecycle state
 * (serving -> draining -> stopping -> stopped), of why draining began
 * (a signal, with its name, or a manual POST /drain) and of when.
 *
 * Only the host (main.c, or an embedding program) and the shutdown sequence
 * it runs change the state; services get a read-only view
 * (ts_coordinator_view) that answers is_draining and lets them subscribe to
 * changes. A manual drain can be undone (DELETE /drain) until a signal asks
 * for a shutdown; after that the state only moves forward.
 *
 * Threads: any. `mu` guards the status; `draining` mirrors "state >=
 * draining" in an atomic so that /readyz and every submission can ask without
 * a lock. Subscribers are called after the change, outside `mu` but under
 * `notify_mu`, which serialises notifications with unsubscribe (after
 * unsubscribe returns, the callback is not running), so callbacks may read
 * the view but must not subscribe or unsubscribe.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "drain.h"

#define MAX_SUBSCRIBERS 16

struct subscriber {
    ts_drain_cb *cb; /* NULL: free slot */
    void *arg;
};

struct ts_coordinator {
    struct ts_clock clock;
    atomic_bool draining; /* state >= draining */

    pthread_mutex_t mu;            /* guards status */
    pthread_cond_t shutdown_cv;    /* broadcast when shutdown_requested or forced is set */
    struct ts_drain_status status; /* guarded by mu */

    pthread_mutex_t notify_mu; /* guards subs and serialises callbacks */
    struct subscriber subs[MAX_SUBSCRIBERS];
};

int
ts_coordinator_new_with_clock(struct ts_coordinator **out, struct ts_clock clock)
{
    struct ts_coordinator *c;
    int err;

    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->clock = clock;
    atomic_init(&c->draining, false);
    c->status.state = TS_STATE_SERVING;
    c->status.reason = TS_DRAIN_REASON_NONE;
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->notify_mu, NULL);
    err = ts_cond_init(&c->shutdown_cv);
    if (err != 0)
        goto out_free;
    *out = c;
    return 0;

out_free:
    pthread_mutex_destroy(&c->notify_mu);
    pthread_mutex_destroy(&c->mu);
    free(c);
    return err;
}

int
ts_coordinator_new(struct ts_coordinator **out)
{
    return ts_coordinator_new_with_clock(out, ts_clock_real());
}

void
ts_coordinator_free(struct ts_coordinator *c)
{
    if (c == NULL)
        return;
    pthread_cond_destroy(&c->shutdown_cv);
    pthread_mutex_destroy(&c->notify_mu);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Tell every subscriber about `st`. Called without `mu`. */
static void
notify(struct ts_coordinator *c, const struct ts_drain_status *st)
{
    pthread_mutex_lock(&c->notify_mu);
    for (size_t i = 0; i < MAX_SUBSCRIBERS; i++) {
        if (c->subs[i].cb != NULL)
            c->subs[i].cb(c->subs[i].arg, st);
    }
    pthread_mutex_unlock(&c->notify_mu);
}

static void
copy_name(char dst[TS_SIGNAL_NAME_LEN], const char *name)
{
    size_t n = name != NULL ? strnlen(name, TS_SIGNAL_NAME_LEN - 1) : 0;

    memcpy(dst, name != NULL ? name : "", n);
    dst[n] = '\0';
}

/* Enter draining if serving. `mu` held. Returns true when the state changed. */
static bool
begin_drain_locked(struct ts_coordinator *c, enum ts_drain_reason reason, const char *signal_name)
{
    struct ts_drain_status *st = &c->status;

    if (st->state != TS_STATE_SERVING)
        return false;
    st->state = TS_STATE_DRAINING;
    st->reason = reason;
    copy_name(st->signal_name, signal_name);
    st->drain_started_ns = ts_clock_now_ns(&c->clock);
    st->drain_started_wall_ns = ts_clock_wall_ns(&c->clock);
    atomic_store(&c->draining, true);
    return true;
}

void
ts_coordinator_drain(struct ts_coordinator *c)
{
    struct ts_drain_status snap;
    bool changed;

    pthread_mutex_lock(&c->mu);
    changed = begin_drain_locked(c, TS_DRAIN_REASON_MANUAL, NULL);
    snap = c->status;
    pthread_mutex_unlock(&c->mu);
    if (changed)
        notify(c, &snap);
}

int
ts_coordinator_undrain(struct ts_coordinator *c)
{
    struct ts_drain_status snap;
    bool changed = false;
    int err = 0;

    pthread_mutex_lock(&c->mu);
    if (c->status.shutdown_requested || c->status.state > TS_STATE_DRAINING) {
        err = -EBUSY;
    } else if (c->status.state == TS_STATE_DRAINING) {
        c->status.state = TS_STATE_SERVING;
        c->status.reason = TS_DRAIN_REASON_NONE;
        c->status.drain_started_ns = 0;
        c->status.drain_started_wall_ns = 0;
        atomic_store(&c->draining, false);
        changed = true;
    }
    snap = c->status;
    pthread_mutex_unlock(&c->mu);
    if (changed)
        notify(c, &snap);
    return err;
}

void
ts_coordinator_request_shutdown(struct ts_coordinator *c, const char *signal_name)
{
    struct ts_drain_status snap;
    bool changed = true;

    pthread_mutex_lock(&c->mu);
    if (c->status.shutdown_requested) {
        changed = !c->status.forced;
        if (changed)
            copy_name(c->status.forced_by, signal_name);
        c->status.forced = true;
        pthread_cond_broadcast(&c->shutdown_cv);
    } else {
        begin_drain_locked(c, TS_DRAIN_REASON_SIGNAL, signal_name);
        copy_name(c->status.stop_signal, signal_name);
        c->status.shutdown_requested = true;
        c->status.shutdown_requested_ns = ts_clock_now_ns(&c->clock);
        pthread_cond_broadcast(&c->shutdown_cv);
    }
    snap = c->status;
    pthread_mutex_unlock(&c->mu);
    if (changed)
        notify(c, &snap);
}

void
ts_coordinator_force(struct ts_coordinator *c)
{
    struct ts_drain_status snap;
    bool changed;

    pthread_mutex_lock(&c->mu);
    changed = !c->status.forced;
    c->status.forced = true;
    pthread_cond_broadcast(&c->shutdown_cv);
    snap = c->status;
    pthread_mutex_unlock(&c->mu);
    if (changed)
        notify(c, &snap);
}

void
ts_coordinator_wait_shutdown(struct ts_coordinator *c)
{
    pthread_mutex_lock(&c->mu);
    while (!c->status.shutdown_requested)
        pthread_cond_wait(&c->shutdown_cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

bool
ts_coordinator_wait_forced(struct ts_coordinator *c, int64_t until_ns)
{
    bool forced;

    pthread_mutex_lock(&c->mu);
    while (!c->status.forced &&
           ts_clock_wait(&c->clock, &c->shutdown_cv, &c->mu, until_ns) != ETIMEDOUT)
        ;
    forced = c->status.forced;
    pthread_mutex_unlock(&c->mu);
    return forced;
}

/* Move forward to `state` (never back). A drain that was never begun gets
 * its start time now, so durations are always measured from a real start. */
static void
advance(struct ts_coordinator *c, enum ts_drain_state state)
{
    struct ts_drain_status snap;
    bool changed = false;
    int64_t now = ts_clock_now_ns(&c->clock);

    pthread_mutex_lock(&c->mu);
    if (c->status.state == TS_STATE_SERVING)
        begin_drain_locked(c, TS_DRAIN_REASON_MANUAL, NULL);
    if (c->status.state < state) {
        if (state >= TS_STATE_STOPPING && c->status.stopping_ns == 0)
            c->status.stopping_ns = now;
        if (state == TS_STATE_STOPPED)
            c->status.stopped_ns = now;
        c->status.state = state;
        changed = true;
    }
    snap = c->status;
    pthread_mutex_unlock(&c->mu);
    if (changed)
        notify(c, &snap);
}

void
ts_coordinator_set_stopping(struct ts_coordinator *c)
{
    advance(c, TS_STATE_STOPPING);
}

void
ts_coordinator_set_stopped(struct ts_coordinator *c)
{
    advance(c, TS_STATE_STOPPED);
}

void
ts_coordinator_status_sized(struct ts_coordinator *c, struct ts_drain_status *out, size_t size)
{
    struct ts_drain_status st;

    pthread_mutex_lock(&c->mu);
    st = c->status;
    pthread_mutex_unlock(&c->mu);
    memcpy(out, &st, size < sizeof(st) ? size : sizeof(st));
}

const char *
ts_drain_state_name(enum ts_drain_state s)
{
    switch (s) {
    case TS_STATE_SERVING:
        return "serving";
    case TS_STATE_DRAINING:
        return "draining";
    case TS_STATE_STOPPING:
        return "stopping";
    case TS_STATE_STOPPED:
        return "stopped";
    }
    return "unknown";
}

const char *
ts_drain_reason_name(enum ts_drain_reason r)
{
    switch (r) {
    case TS_DRAIN_REASON_NONE:
        return "none";
    case TS_DRAIN_REASON_SIGNAL:
        return "signal";
    case TS_DRAIN_REASON_MANUAL:
        return "manual";
    }
    return "unknown";
}

/* ---- the view ---- */

static bool
view_is_draining(void *self)
{
    struct ts_coordinator *c = self;

    return atomic_load(&c->draining);
}

static void
view_status(void *self, struct ts_drain_status *out)
{
    ts_coordinator_status(self, out);
}

int
ts_coordinator_subscribe(struct ts_coordinator *c, ts_drain_cb *cb, void *arg)
{
    int id = -ENOSPC;

    pthread_mutex_lock(&c->notify_mu);
    for (size_t i = 0; i < MAX_SUBSCRIBERS; i++) {
        if (c->subs[i].cb == NULL) {
            c->subs[i].cb = cb;
            c->subs[i].arg = arg;
            id = (int)i;
            break;
        }
    }
    pthread_mutex_unlock(&c->notify_mu);
    return id;
}

void
ts_coordinator_unsubscribe(struct ts_coordinator *c, int id)
{
    if (id < 0 || id >= MAX_SUBSCRIBERS)
        return;
    pthread_mutex_lock(&c->notify_mu);
    c->subs[id].cb = NULL;
    c->subs[id].arg = NULL;
    pthread_mutex_unlock(&c->notify_mu);
}

static int
view_subscribe(void *self, ts_drain_cb *cb, void *arg)
{
    return ts_coordinator_subscribe(self, cb, arg);
}

static void
view_unsubscribe(void *self, int id)
{
    ts_coordinator_unsubscribe(self, id);
}

static const struct ts_drain_ops coordinator_ops = {
    .is_draining = view_is_draining,
    .status = view_status,
    .subscribe = view_subscribe,
    .unsubscribe = view_unsubscribe,
};

struct ts_drain_view
ts_coordinator_view(struct ts_coordinator *c)
{
    return (struct ts_drain_view){.ops = &coordinator_ops, .self = c};
}

/* ---- the no-op view: never drains ---- */

static bool
noop_is_draining(void *self)
{
    (void)self;
    return false;
}

static void
noop_status(void *self, struct ts_drain_status *out)
{
    (void)self;
    memset(out, 0, sizeof(*out));
    out->state = TS_STATE_SERVING;
    out->reason = TS_DRAIN_REASON_NONE;
}

static int
noop_subscribe(void *self, ts_drain_cb *cb, void *arg)
{
    (void)self;
    (void)cb;
    (void)arg;
    return 0;
}

static void
noop_unsubscribe(void *self, int id)
{
    (void)self;
    (void)id;
}

static const struct ts_drain_ops noop_ops = {
    .is_draining = noop_is_draining,
    .status = noop_status,
    .subscribe = noop_subscribe,
    .unsubscribe = noop_unsubscribe,
};

struct ts_drain_view
ts_drain_noop(void)
{
    return (struct ts_drain_view){.ops = &noop_ops, .self = NULL};
}
