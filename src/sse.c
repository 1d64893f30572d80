/*
 * SSE streams on libmicrohttpd.
 *
 * A stream is a cursor (`next_id`) into its task's event log, which holds
 * every event already encoded as an SSE frame. MHD pulls bytes through
 * read_stream(), the content-reader callback: it copies the frames from the
 * cursor on into MHD's buffer. When there is nothing to send, the stream adds
 * itself to the task's waiters and suspends its connection, both under the
 * task's lock; a worker appending an event calls wake() under that same lock,
 * which resumes the connection only if `suspended` says it is (MHD's resume
 * is undefined on a connection that is not). So a wake-up is never lost and
 * never doubled, and an idle stream costs no CPU at all.
 *
 * Memory is bounded by the logs, not by the readers: a reader that does not
 * read leaves MHD's buffer full, so read_stream() is not called; when it is
 * called again and its cursor has fallen behind the oldest retained event,
 * the stream is closed as a slow consumer (the client can resume with
 * Last-Event-ID and gets a "gap" event). A frame larger than MHD's buffer is
 * sent in pieces while the stream holds a reference to it.
 *
 * A client that stops reading altogether is never called back at all (its
 * socket buffer stays full), so the same check runs from the outside too:
 * ts_sse_heartbeat() looks for streams that are behind the log and have not
 * written for a heartbeat interval, and shuts their sockets down; MHD then
 * closes the connection on its own thread.
 *
 * A suspended connection never times out and never notices that its client
 * went away, so ts_sse_heartbeat() (every half heartbeat interval, from the
 * server's housekeeping thread) also wakes idle streams, which write a
 * comment line when they have been quiet for that long: dead clients are
 * found by the failed write.
 *
 * Threads: read_stream() and free_stream() run on the connection's MHD
 * thread; wake() runs on whichever thread changed the task. Fields marked
 * "task lock" are guarded by the task's mutex; the others belong to the MHD
 * thread. `streams_mu` guards the list of all streams and is taken before a
 * task's lock, never while holding one. A listed stream's socket is open:
 * MHD closes it only after free_stream() has unlisted the stream.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <utlist.h>

#include "sse.h"
#include "util.h"

#define STREAM_BLOCK_BYTES 1024

struct ts_sse {
    struct ts_sse_config cfg;
    atomic_uint active;
    atomic_bool closing; /* set before the tasks' locks are taken to wake */
    pthread_mutex_t idle_mu;
    pthread_cond_t idle_cv; /* broadcast when `active` drops to 0 */
    pthread_mutex_t streams_mu;
    struct stream *streams; /* every open stream; streams_mu */
    pthread_mutex_t notice_mu;
    struct ts_event *notice; /* the "draining" event, encoded once; notice_mu */
    int drain_sub;
    struct ts_series *events_sent;
    struct ts_series *slow_closed;
    struct ts_series *heartbeats;
};

struct stream {
    struct ts_task_waiter waiter; /* task lock */
    bool suspended;               /* task lock: the connection is suspended by us */
    bool cut;                     /* task lock: closed as a slow consumer, counted */
    int64_t last_write_ns;        /* task lock */
    struct stream *prev, *next;   /* utlist: the server's list; streams_mu */
    int fd;                       /* the connection's socket */

    struct ts_sse *sse;
    struct MHD_Connection *conn;
    struct ts_task *task; /* a reference */
    uint64_t next_id;     /* next log event to send */

    struct ts_event *cur; /* a frame being sent in pieces (a reference), or NULL */
    size_t cur_off;
    struct ts_event *gap; /* to send before the log's events, or NULL */
    char pending[64];     /* "retry:" hint, then heartbeats */
    size_t pending_len, pending_off;
    bool drain_sent;
};

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
    pthread_mutex_init(&sse->streams_mu, NULL);
    pthread_mutex_init(&sse->notice_mu, NULL);
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
    pthread_mutex_destroy(&sse->streams_mu);
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
    pthread_mutex_destroy(&sse->streams_mu);
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

/* Behind the log and silent for a heartbeat interval: the client stopped
 * reading. Task lock held. */
static bool
stalled_locked(const struct stream *s, int64_t now)
{
    return !s->cut && !s->suspended &&
           s->next_id < ts_event_log_first_id(ts_task_log_locked(s->task)) &&
           now - s->last_write_ns >= s->sse->cfg.heartbeat_ns;
}

static void
count_slow(struct stream *s)
{
    s->cut = true;
    ts_series_inc(s->sse->slow_closed);
    ts_log(s->sse->cfg.log, TS_LOG_INFO, "slow SSE consumer closed",
           TS_F_STR("task", ts_task_get_id(s->task)), TS_F_UINT("next_id", s->next_id),
           TS_F_UINT("oldest_retained", ts_event_log_first_id(ts_task_log_locked(s->task))),
           TS_F_END);
}

void
ts_sse_heartbeat(struct ts_sse *sse)
{
    int64_t now = ts_clock_now_ns(&sse->cfg.clock);
    struct stream *s;

    pthread_mutex_lock(&sse->streams_mu);
    DL_FOREACH(sse->streams, s) {
        ts_task_lock(s->task);
        if (stalled_locked(s, now)) {
            count_slow(s);
            shutdown(s->fd, SHUT_RDWR);
        }
        ts_task_unlock(s->task);
    }
    pthread_mutex_unlock(&sse->streams_mu);
    ts_task_service_wake_all(sse->cfg.tasks);
}

void
ts_sse_close_all(struct ts_sse *sse)
{
    atomic_store(&sse->closing, true);
    ts_task_service_wake_all(sse->cfg.tasks);
}

/* Task lock held (the task service calls it so). */
static void
wake(struct ts_task_waiter *w)
{
    struct stream *s = ts_container_of(w, struct stream, waiter);

    if (s->suspended) {
        s->suspended = false;
        MHD_resume_connection(s->conn);
    }
}

/* Copy what fits of `src[*off..len)` into `buf[*n..max)`. True when all of
 * it went. */
static bool
put(char *buf, size_t max, size_t *n, const char *src, size_t len, size_t *off)
{
    size_t room = max - *n, want = len - *off;
    size_t k = want < room ? want : room;

    memcpy(buf + *n, src + *off, k);
    *n += k;
    *off += k;
    return *off == len;
}

/* Send the frame `ev` (borrowed), keeping a reference if it does not fit. */
static void
put_event(struct stream *s, char *buf, size_t max, size_t *n, struct ts_event *ev)
{
    size_t off = 0;

    if (!put(buf, max, n, ev->frame, ev->len, &off)) {
        s->cur = ts_event_ref(ev);
        s->cur_off = off;
    }
}

/*
 * Fill `buf` from the stream's pending bytes and the log. Task lock held.
 * Returns bytes written, or a negative MHD end code in *end.
 */
static size_t
fill(struct stream *s, char *buf, size_t max, ssize_t *end, uint64_t *sent)
{
    struct ts_sse *sse = s->sse;
    const struct ts_event_log *log = ts_task_log_locked(s->task);
    size_t n = 0;

    *end = 0;
    if (s->pending_off < s->pending_len &&
        !put(buf, max, &n, s->pending, s->pending_len, &s->pending_off))
        return n;
    if (s->cur != NULL) {
        if (!put(buf, max, &n, s->cur->frame, s->cur->len, &s->cur_off))
            return n;
        ts_event_unref(s->cur);
        s->cur = NULL;
    }
    if (s->gap != NULL) {
        struct ts_event *gap = s->gap;

        s->gap = NULL;
        put_event(s, buf, max, &n, gap);
        ts_event_unref(gap);
        if (s->cur != NULL)
            return n;
    }
    if (!s->drain_sent && ts_drain_is_draining(&sse->cfg.drain)) {
        struct ts_event *ev = drain_notice(sse);

        s->drain_sent = true;
        if (ev != NULL) {
            put_event(s, buf, max, &n, ev);
            ts_event_unref(ev);
            if (s->cur != NULL)
                return n;
        }
    }
    if (s->next_id < ts_event_log_first_id(log)) {
        *end = MHD_CONTENT_READER_END_WITH_ERROR;
        if (!s->cut)
            count_slow(s);
        return 0;
    }
    while (n < max && s->next_id <= ts_event_log_last_id(log)) {
        put_event(s, buf, max, &n, ts_event_log_get(log, s->next_id));
        s->next_id++;
        (*sent)++;
        if (s->cur != NULL)
            break;
    }
    return n;
}

static ssize_t
read_stream(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct stream *s = cls;
    struct ts_sse *sse = s->sse;
    int64_t now = ts_clock_now_ns(&sse->cfg.clock);
    uint64_t sent = 0;
    ssize_t end;
    size_t n;

    (void)pos;
    ts_task_lock(s->task);
    /* Checked under the task lock: ts_sse_close_all() sets the flag, then
     * takes every task's lock to wake, so a stream either sees the flag or
     * is suspended in time to be woken. */
    if (atomic_load(&sse->closing)) {
        ts_task_unlock(s->task);
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    n = fill(s, buf, max, &end, &sent);
    if (n == 0 && end == 0) {
        uint64_t end_id = ts_task_end_id_locked(s->task);

        if (end_id != 0 && s->next_id > end_id) {
            end = MHD_CONTENT_READER_END_OF_STREAM;
        } else if (now - s->last_write_ns >= sse->cfg.heartbeat_ns / 2 && max >= 3) {
            memcpy(buf, ":\n\n", 3);
            n = 3;
            ts_series_inc(sse->heartbeats);
        } else {
            /* Nothing to send: wait for the task, suspended. Suspending
             * here, under the lock, is what lets wake() trust `suspended`. */
            ts_task_wait_locked(s->task, &s->waiter);
            s->suspended = true;
            MHD_suspend_connection(s->conn);
        }
    }
    if (n > 0)
        s->last_write_ns = now;
    ts_task_unlock(s->task);

    if (sent > 0)
        ts_series_add(sse->events_sent, sent);
    return end != 0 ? end : (ssize_t)n;
}

static void
free_stream(void *cls)
{
    struct stream *s = cls;
    struct ts_sse *sse = s->sse;

    pthread_mutex_lock(&sse->streams_mu);
    DL_DELETE(sse->streams, s);
    pthread_mutex_unlock(&sse->streams_mu);

    ts_task_lock(s->task);
    ts_task_unwait_locked(s->task, &s->waiter);
    ts_task_unlock(s->task);
    ts_event_unref(s->cur);
    ts_event_unref(s->gap);
    ts_task_unref(s->task);
    if (atomic_fetch_sub(&s->sse->active, 1) == 1) {
        pthread_mutex_lock(&s->sse->idle_mu);
        pthread_cond_broadcast(&s->sse->idle_cv);
        pthread_mutex_unlock(&s->sse->idle_mu);
    }
    free(s);
}

unsigned
ts_sse_open(struct ts_sse *sse, struct MHD_Connection *conn, struct ts_task *task, bool has_last_id,
            uint64_t last_id, struct MHD_Response **resp)
{
    const union MHD_ConnectionInfo *info;
    struct stream *s;
    const struct ts_event_log *log;
    uint64_t first, last, end_id;
    int len;

    *resp = NULL;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return 0;
    s->sse = sse;
    s->conn = conn;
    s->waiter.wake = wake;
    s->last_write_ns = ts_clock_now_ns(&sse->cfg.clock);
    len = snprintf(s->pending, sizeof(s->pending), "retry: %u\n\n", sse->cfg.retry_ms);
    s->pending_len = (size_t)len;

    ts_task_lock(task);
    log = ts_task_log_locked(task);
    first = ts_event_log_first_id(log);
    last = ts_event_log_last_id(log);
    end_id = ts_task_end_id_locked(task);
    if (has_last_id && end_id != 0 && last_id >= end_id) {
        ts_task_unlock(task);
        free(s);
        *resp = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        return *resp != NULL ? MHD_HTTP_NO_CONTENT : 0;
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

    /* The block is a buffer MHD allocates with every response but fills only
     * for HTTP/1.0 clients (chunked replies are written straight into the
     * connection's own buffer): kept small, it is memory every held stream
     * would otherwise carry. */
    *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK_BYTES, read_stream, s,
                                              free_stream);
    if (*resp == NULL) {
        ts_event_unref(s->gap);
        free(s);
        return 0;
    }
    s->task = ts_task_ref(task);
    info = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    s->fd = info != NULL ? info->connect_fd : -1;
    pthread_mutex_lock(&sse->streams_mu);
    DL_PREPEND(sse->streams, s);
    pthread_mutex_unlock(&sse->streams_mu);
    atomic_fetch_add(&sse->active, 1);
    MHD_add_response_header(*resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(*resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(*resp, "X-Accel-Buffering", "no");
    return MHD_HTTP_OK;
}
