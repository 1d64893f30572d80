/*
 * SSE streams, written by the front (http.c).
 *
 * A stream is a cursor (`next_id`) into its task's event log, which holds
 * every event already encoded as an SSE frame inside its HTTP/1.1 chunk. To
 * write, a stream hands the front references to those frames (pull()); the
 * front writes them with one writev and drops the references once they are
 * on the wire. Nothing is copied per stream, and a frame stays alive while a
 * stream is halfway through it even if the log evicts it meanwhile.
 *
 * Waking is per task and loop, not per stream: the streams of one task on
 * one loop thread form a group, and only the group waits on the task (one
 * ts_task_waiter). An event appended to the task posts each of its groups to
 * its loop (one queue push each, under the task's lock; the loop's eventfd
 * is written only when its queue was empty), and the loop walks the streams
 * of the groups that changed. So an append costs O(loops), not O(readers),
 * under the task's lock, and a loop never looks at the streams of a task
 * that did not change. The group re-registers as a waiter before its streams
 * read the log, under the task's lock, so no event is missed between a walk
 * and the next append.
 *
 * Heartbeats, dead and stopped clients: the front asks a stream that has not
 * written for half the heartbeat interval for a heartbeat (a comment line;
 * a dead client is found by the failed write). A stream whose socket stays
 * full is asked too (PULL_BLOCKED): when its cursor has fallen behind the
 * oldest retained event and it has written nothing for a heartbeat interval,
 * it is cut as a slow consumer (the client resumes with Last-Event-ID and
 * gets a "gap" event). The same cut happens when a blocked stream gets room
 * again and finds itself behind. So memory is bounded by the logs, not by
 * the readers.
 *
 * Threads: a stream and its group's list belong to their loop thread (the
 * stream is opened by a handler on that thread and written by it); wake()
 * runs on whichever thread changed the task, under the task's lock, and only
 * posts. `groups_mu` guards the table of groups.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uthash.h>
#include <utlist.h>

#include "sse.h"
#include "util.h"

struct group_key {
    struct ts_task *task;
    struct ts_http_loop *loop;
};

/* The streams of one task on one loop. */
struct group {
    UT_hash_handle hh; /* sse->groups; groups_mu */
    struct group_key key;
    struct ts_task_waiter waiter; /* task lock */
    struct ts_http_post post;     /* the loop's */
    struct ts_sse *sse;
    struct stream *streams; /* utlist; the loop thread */
    unsigned refs;          /* the loop thread: streams, and a walk in progress */
};

struct stream {
    struct stream *prev, *next; /* utlist: the group's */
    struct group *g;
    struct ts_http_stream *st;
    uint64_t next_id;     /* next log event to send */
    struct ts_event *gap; /* to send before the log's events, or NULL */
    bool retry_sent;
    bool drain_sent;
};

/* Bytes every stream sends the same, plain and as a chunk. */
struct canned {
    char plain[32], chunk[48];
    size_t plain_len, chunk_len;
};

struct ts_sse {
    struct ts_sse_config cfg;
    atomic_uint active;
    atomic_bool closing; /* set before the tasks' locks are taken to wake */
    pthread_mutex_t idle_mu;
    pthread_cond_t idle_cv; /* broadcast when `active` drops to 0 */
    pthread_mutex_t groups_mu;
    struct group *groups; /* uthash by (task, loop); groups_mu */
    pthread_mutex_t notice_mu;
    struct ts_event *notice; /* the "draining" event, encoded once; notice_mu */
    int drain_sub;
    struct canned retry, heartbeat;
    struct ts_series *events_sent;
    struct ts_series *slow_closed;
    struct ts_series *heartbeats;
};

static void
can(struct canned *c, const char *text)
{
    c->plain_len = (size_t)snprintf(c->plain, sizeof(c->plain), "%s", text);
    c->chunk_len =
        (size_t)snprintf(c->chunk, sizeof(c->chunk), "%zx\r\n%s\r\n", c->plain_len, text);
}

static bool
add_canned(struct ts_http_out *out, const struct canned *c)
{
    return out->chunked ? ts_http_out_add(out, c->chunk, c->chunk_len, NULL)
                        : ts_http_out_add(out, c->plain, c->plain_len, NULL);
}

/* Add the event `ev` (a reference the front releases once it is written). */
static bool
add_event(struct ts_http_out *out, struct ts_event *ev)
{
    return out->chunked ? ts_http_out_add(out, ev->chunk, ev->chunk_len, ev)
                        : ts_http_out_add(out, ev->frame, ev->len, ev);
}

static double
active_gauge(void *arg)
{
    struct ts_sse *sse = arg;

    return (double)atomic_load(&sse->active);
}

static void
on_drain_change(void *arg, const struct ts_drain_status *st)
{
    struct ts_sse *sse = arg;
    struct ts_event *old = NULL;

    if (st->state == TS_STATE_SERVING) { /* undrained: a later drain may have another reason */
        pthread_mutex_lock(&sse->notice_mu);
        old = sse->notice;
        sse->notice = NULL;
        pthread_mutex_unlock(&sse->notice_mu);
        ts_event_unref(old);
    } else if (st->state == TS_STATE_DRAINING) {
        ts_task_service_wake_all(sse->cfg.tasks);
    }
}

/* The "draining" notice, a new reference: encoded once for every stream. */
static struct ts_event *
drain_notice(struct ts_sse *sse)
{
    struct ts_drain_status st;
    struct ts_event *ev;

    pthread_mutex_lock(&sse->notice_mu);
    if (sse->notice == NULL) {
        ts_drain_status(&sse->cfg.drain, &st);
        sse->notice = ts_event_draining(ts_drain_reason_name(st.reason));
    }
    ev = sse->notice != NULL ? ts_event_ref(sse->notice) : NULL;
    pthread_mutex_unlock(&sse->notice_mu);
    return ev;
}

int
ts_sse_new(struct ts_sse **out, const struct ts_sse_config *cfg)
{
    struct ts_sse *sse;
    int err;

    sse = calloc(1, sizeof(*sse));
    if (sse == NULL)
        return -ENOMEM;
    sse->cfg = *cfg;
    atomic_init(&sse->active, 0);
    atomic_init(&sse->closing, false);
    pthread_mutex_init(&sse->idle_mu, NULL);
    pthread_mutex_init(&sse->groups_mu, NULL);
    pthread_mutex_init(&sse->notice_mu, NULL);
    {
        char retry[32];

        snprintf(retry, sizeof(retry), "retry: %u\n\n", cfg->retry_ms);
        can(&sse->retry, retry);
        can(&sse->heartbeat, ":\n\n");
    }
    err = ts_cond_init(&sse->idle_cv);
    if (err != 0)
        goto out_free;
    sse->events_sent = ts_metrics_simple(cfg->metrics, TS_METRIC_COUNTER, "sse_events_sent_total",
                                         "Task events delivered to SSE streams.");
    sse->slow_closed =
        ts_metrics_simple(cfg->metrics, TS_METRIC_COUNTER, "sse_slow_consumers_closed_total",
                          "SSE streams closed because they fell behind the event log.");
    sse->heartbeats =
        ts_metrics_simple(cfg->metrics, TS_METRIC_COUNTER, "sse_heartbeats_sent_total",
                          "Heartbeat comments written to idle SSE streams.");
    err = ts_metrics_gauge_fn(cfg->metrics, "sse_streams_active", "SSE streams open.", active_gauge,
                              sse);
    if (sse->events_sent == NULL || sse->slow_closed == NULL || sse->heartbeats == NULL ||
        err != 0) {
        err = -ENOMEM;
        goto out_cond;
    }
    sse->drain_sub = ts_drain_subscribe(&cfg->drain, on_drain_change, sse);
    if (sse->drain_sub < 0) {
        err = sse->drain_sub;
        goto out_cond;
    }
    *out = sse;
    return 0;

out_cond:
    pthread_cond_destroy(&sse->idle_cv);
out_free:
    pthread_mutex_destroy(&sse->notice_mu);
    pthread_mutex_destroy(&sse->groups_mu);
    pthread_mutex_destroy(&sse->idle_mu);
    free(sse);
    return err;
}

void
ts_sse_free(struct ts_sse *sse)
{
    if (sse == NULL)
        return;
    ts_drain_unsubscribe(&sse->cfg.drain, sse->drain_sub);
    ts_event_unref(sse->notice);
    pthread_cond_destroy(&sse->idle_cv);
    pthread_mutex_destroy(&sse->notice_mu);
    pthread_mutex_destroy(&sse->groups_mu);
    pthread_mutex_destroy(&sse->idle_mu);
    free(sse);
}

unsigned
ts_sse_active(struct ts_sse *sse)
{
    return atomic_load(&sse->active);
}

int
ts_sse_wait_idle(struct ts_sse *sse, int64_t until_ns)
{
    int rc = 0;

    pthread_mutex_lock(&sse->idle_mu);
    while (atomic_load(&sse->active) > 0 && rc == 0)
        rc = ts_clock_wait(&sse->cfg.clock, &sse->idle_cv, &sse->idle_mu, until_ns);
    pthread_mutex_unlock(&sse->idle_mu);
    return atomic_load(&sse->active) == 0 ? 0 : -ETIMEDOUT;
}

int64_t
ts_sse_quiet_ns(const struct ts_sse *sse)
{
    return sse->cfg.heartbeat_ns / 2;
}

void
ts_sse_close_all(struct ts_sse *sse)
{
    atomic_store(&sse->closing, true);
    ts_task_service_wake_all(sse->cfg.tasks);
}

/* ---- groups ---- */

/* Task lock held (the task service calls it so): hand the group to its loop. */
static void
wake(struct ts_task_waiter *w)
{
    struct group *g = ts_container_of(w, struct group, waiter);

    ts_http_post(g->key.loop, &g->post);
}

static void group_put(struct group *g);

/* The loop thread: the task changed (or a wake-all); write what there is. */
static void
group_run(struct ts_http_post *p)
{
    struct group *g = ts_container_of(p, struct group, post);
    struct stream *s, *tmp;

    g->refs++; /* a stream closed in the walk may be the group's last */
    ts_task_lock(g->key.task);
    ts_task_wait_locked(g->key.task, &g->waiter);
    ts_task_unlock(g->key.task);
    DL_FOREACH_SAFE(g->streams, s, tmp)
        ts_http_stream_run(s->st);
    group_put(g);
}

/* The group of (task, loop), a new reference; NULL on out of memory. */
static struct group *
group_get(struct ts_sse *sse, struct ts_task *task, struct ts_http_loop *loop)
{
    struct group_key key;
    struct group *g;

    memset(&key, 0, sizeof(key));
    key.task = task;
    key.loop = loop;
    pthread_mutex_lock(&sse->groups_mu);
    HASH_FIND(hh, sse->groups, &key, sizeof(key), g);
    if (g == NULL) {
        g = calloc(1, sizeof(*g));
        if (g == NULL) {
            pthread_mutex_unlock(&sse->groups_mu);
            return NULL;
        }
        g->key = key;
        g->key.task = ts_task_ref(task);
        g->waiter.wake = wake;
        g->post.run = group_run;
        g->sse = sse;
        HASH_ADD(hh, sse->groups, key, sizeof(g->key), g);
    }
    g->refs++;
    pthread_mutex_unlock(&sse->groups_mu);
    if (g->refs == 1) {
        ts_task_lock(task);
        ts_task_wait_locked(task, &g->waiter);
        ts_task_unlock(task);
    }
    return g;
}

/* The loop thread. The last reference unhooks the group from its task
 * first, so no wake can post it after it is taken off its loop's queue. */
static void
group_put(struct group *g)
{
    struct ts_sse *sse = g->sse;

    if (--g->refs > 0)
        return;
    ts_task_lock(g->key.task);
    ts_task_unwait_locked(g->key.task, &g->waiter);
    ts_task_unlock(g->key.task);
    ts_http_post_cancel(g->key.loop, &g->post);
    pthread_mutex_lock(&sse->groups_mu);
    HASH_DEL(sse->groups, g);
    pthread_mutex_unlock(&sse->groups_mu);
    ts_task_unref(g->key.task);
    free(g);
}

/* ---- streams ---- */

static void
count_slow(struct stream *s, const struct ts_event_log *log)
{
    ts_series_inc(s->g->sse->slow_closed);
    ts_log(s->g->sse->cfg.log, TS_LOG_INFO, "slow SSE consumer closed",
           TS_F_STR("task", ts_task_get_id(s->g->key.task)), TS_F_UINT("next_id", s->next_id),
           TS_F_UINT("oldest_retained", ts_event_log_first_id(log)), TS_F_END);
}

static void
unref_piece(void *ref)
{
    ts_event_unref(ref);
}

/* What the front writes next: pending notices, then the log from the cursor. */
static enum ts_http_more
pull_events(struct stream *s, struct ts_http_out *out)
{
    struct ts_sse *sse = s->g->sse;
    struct ts_task *task = s->g->key.task;
    const struct ts_event_log *log;
    uint64_t sent = 0, last, end_id;
    bool handed_off;

    if (!s->retry_sent && add_canned(out, &sse->retry))
        s->retry_sent = true;
    if (s->gap != NULL && add_event(out, s->gap))
        s->gap = NULL; /* its reference now goes with the piece */

    ts_task_lock(task);
    log = ts_task_log_locked(task);
    if (!s->drain_sent && ts_drain_is_draining(&sse->cfg.drain)) {
        struct ts_event *ev = drain_notice(sse);

        if (ev == NULL || add_event(out, ev))
            s->drain_sent = true;
        else
            ts_event_unref(ev);
    }
    if (s->next_id < ts_event_log_first_id(log)) {
        count_slow(s, log);
        ts_task_unlock(task);
        return TS_HTTP_ABORT;
    }
    last = ts_event_log_last_id(log);
    while (s->next_id <= last && out->n < TS_HTTP_OUT_MAX) {
        add_event(out, ts_event_ref(ts_event_log_get(log, s->next_id)));
        s->next_id++;
        sent++;
    }
    end_id = ts_task_end_id_locked(task);
    /* Handed off at the end of a drain: the rest is another replica's, and
     * a client that reconnects with its Last-Event-ID gets it there. */
    handed_off = ts_task_handed_off_locked(task) && s->next_id > last;
    ts_task_unlock(task);

    if (sent > 0)
        ts_series_add(sse->events_sent, sent);
    if ((end_id != 0 && s->next_id > end_id) || handed_off)
        return TS_HTTP_END; /* "end" is among these pieces, or was sent */
    return TS_HTTP_MORE;
}

static enum ts_http_more
pull(void *ctx, struct ts_http_out *out, enum ts_http_pull why, int64_t silent_ns)
{
    struct stream *s = ctx;
    struct ts_sse *sse = s->g->sse;

    if (atomic_load(&sse->closing))
        return TS_HTTP_ABORT;
    if (why == TS_HTTP_PULL_BLOCKED) {
        struct ts_task *task = s->g->key.task;
        bool behind;

        if (silent_ns < sse->cfg.heartbeat_ns)
            return TS_HTTP_MORE;
        ts_task_lock(task);
        behind = s->next_id < ts_event_log_first_id(ts_task_log_locked(task));
        if (behind)
            count_slow(s, ts_task_log_locked(task));
        ts_task_unlock(task);
        return behind ? TS_HTTP_ABORT : TS_HTTP_MORE;
    }
    if (why == TS_HTTP_PULL_QUIET) {
        if (add_canned(out, &sse->heartbeat))
            ts_series_inc(sse->heartbeats);
        return TS_HTTP_MORE;
    }
    return pull_events(s, out);
}

static void
closed(void *ctx)
{
    struct stream *s = ctx;
    struct ts_sse *sse = s->g->sse;

    DL_DELETE(s->g->streams, s);
    ts_event_unref(s->gap);
    if (sse->cfg.stream_closed != NULL)
        sse->cfg.stream_closed(sse->cfg.hook_arg, s->g->key.task);
    group_put(s->g);
    free(s);
    if (atomic_fetch_sub(&sse->active, 1) == 1) {
        pthread_mutex_lock(&sse->idle_mu);
        pthread_cond_broadcast(&sse->idle_cv);
        pthread_mutex_unlock(&sse->idle_mu);
    }
}

static const struct ts_http_stream_ops stream_ops = {
    .pull = pull,
    .closed = closed,
    .unref = unref_piece,
};

bool
ts_sse_open(struct ts_sse *sse, struct ts_http_request *req, struct ts_task *task, bool has_last_id,
            uint64_t last_id)
{
    const struct ts_event_log *log;
    uint64_t first, last, end_id;
    struct ts_http_stream *st;
    struct stream *s;
    struct group *g;

    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return false;
    ts_task_lock(task);
    log = ts_task_log_locked(task);
    first = ts_event_log_first_id(log);
    last = ts_event_log_last_id(log);
    end_id = ts_task_end_id_locked(task);
    if (has_last_id && end_id != 0 && last_id >= end_id) {
        ts_task_unlock(task);
        free(s);
        ts_http_reply(req, 204, NULL, NULL, 0);
        return false;
    }
    /* An id from the future (another task, another server) is not ours:
     * replay from the oldest event as for a client without an id. */
    if (!has_last_id || last_id > last) {
        s->next_id = first;
    } else if (last_id + 1 < first) {
        s->gap = ts_event_gap(last_id + 1, first - 1);
        s->next_id = first;
    } else {
        s->next_id = last_id + 1;
    }
    ts_task_unlock(task);

    g = group_get(sse, task, ts_http_request_loop(req));
    if (g == NULL) {
        ts_event_unref(s->gap);
        free(s);
        return false;
    }
    s->g = g;
    DL_APPEND(g->streams, s);
    atomic_fetch_add(&sse->active, 1);
    ts_http_add_header(req, "Content-Type", "text/event-stream");
    ts_http_add_header(req, "Cache-Control", "no-cache");
    ts_http_add_header(req, "X-Accel-Buffering", "no");
    st = ts_http_reply_stream(req, &stream_ops, s);
    if (st != NULL) /* NULL: closed() has run (a HEAD request, or out of memory) */
        s->st = st;
    return true;
}
