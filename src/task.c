/*
 * The task service: a registry of task kinds, the tasks (a hash by id and a
 * newest-first list), a FIFO run queue, a pool of worker threads and a
 * cleanup thread that forgets finished tasks `retention_ns` after they ended.
 *
 * A task goes queued -> running -> done, and every way of getting to done
 * (run() returned, cancelled while queued, abandoned at shutdown) goes through
 * end_task_locked(), which appends the task's "end" event exactly once, wakes
 * its readers and does the service's accounting. After that the task's log
 * never changes again, so "end" is always its last event.
 *
 * Threads and locks: svc->mu guards the registry, the queue, the expiry FIFO,
 * the counters and each worker's `current`; each task's `mu` guards its
 * state, result, event log and waiters. svc->mu is taken before a task's mu,
 * never after. A task's `state` is written with both held, so either one is
 * enough to read it. The cancel flag is an atomic so that run() can poll it
 * without a lock. Workers never touch sockets: they append to the log and
 * call each waiter's wake() under the task's lock.
 *
 * Finished tasks join the expiry FIFO in the order they finish; with one
 * retention time for all, its head is always the next to expire, so the
 * cleanup thread sleeps until exactly that moment, or until a task finishes
 * into an empty FIFO, or until shutdown. Nothing polls.
 *
 * Memory: `log_bytes` counts the encoded bytes of every registered task's
 * log (each task adds what its appends changed); `finished_bytes` the part
 * held by finished tasks. When log_bytes passes retained_bytes, the cleanup
 * thread forgets finished tasks from the head of the expiry FIFO (the
 * oldest finished) until it fits again; it is woken when a task ends or is
 * submitted over the cap, not on every event, so running tasks can pass the
 * cap by at most what their own logs hold. A submission is refused only
 * when the running tasks alone hold the cap.
 *
 * A C run() cannot be stopped from outside. When one ignores cancellation
 * past the shutdown deadline, ts_task_service_finish() ends its task for the
 * readers ("abandoned") and ts_task_service_free() leaves its worker thread
 * detached with the task: that is why the context run() sees holds only the
 * task and a copy of the clock, never the service.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* uthash calls exit() on out of memory unless told otherwise; a library
 * returns the error instead. A failed add leaves the element's hh.tbl NULL. */
#define HASH_NONFATAL_OOM 1
#include <uthash.h>
#include <utlist.h>

#include "task.h"
#include "util.h"

#define KIND_NAME_MAX 64
#define CANCEL_REASON_MAX 64

/* Event names the SSE protocol gives a meaning of its own: a task emitting
 * one would make its stream lie. */
static const char *const reserved_events[] = {"end", "gap", "draining", "resumed"};

static const char *const status_names[] = {
    [TS_TASK_SUCCEEDED] = "succeeded",
    [TS_TASK_FAILED] = "failed",
    [TS_TASK_CANCELLED] = "cancelled",
};

struct kind_entry {
    const struct ts_task_kind *kind;                   /* &copy */
    struct ts_task_kind copy;                          /* the registered kind, its name our own */
    struct ts_series *submitted;                       /* tasks_submitted_total{kind} */
    struct ts_series *finished[TS_TASK_CANCELLED + 1]; /* tasks_finished_total{kind,status} */
};

/* What run() sees; see the top of the file for why it has no service. */
struct ts_task_ctx {
    struct ts_task *task;
    struct ts_clock clock;
};

struct ts_task {
    atomic_uint refs;
    char id[33];                     /* immutable */
    const struct ts_task_kind *kind; /* immutable; outlives the service */
    const struct kind_entry *entry;  /* immutable; owned by the service */
    json_t *params;                  /* the request body, a reference; immutable */
    char *sub;                       /* who submitted it (a JWT's sub); NULL: the key; immutable */
    int64_t created_wall_ns;         /* immutable */
    atomic_bool cancel;              /* set once, never cleared */

    pthread_mutex_t mu;
    pthread_cond_t sleep_cv; /* ts_task_sleep_ms() waits on it; a cancel signals it */
    /* Guarded by mu (state: written under svc->mu too): */
    enum ts_task_state state;
    enum ts_task_status status;            /* once done */
    char *reason;                          /* once done; owned, may be NULL */
    int exit_code, signal;                 /* once done */
    int64_t started_wall_ns;               /* 0 until running */
    int64_t started_ns;                    /* monotonic; 0 until running */
    int64_t finished_wall_ns;              /* 0 until done */
    int64_t finished_ns;                   /* monotonic; 0 until done */
    char cancel_reason[CANCEL_REASON_MAX]; /* once `cancel` is set; written under svc->mu too */
    int cancel_fd;                         /* eventfd, -1 until ts_task_cancel_fd() asks */
    struct ts_event_log log;
    size_t counted;           /* of log.bytes, what log_bytes includes */
    atomic_size_t *log_bytes; /* the service's (own_bytes once forgotten) */
    atomic_size_t own_bytes;  /* a forgotten mirror's count: the service's is not its any more */
    uint64_t end_id;          /* 0 until done (or if appending "end" ran out of memory) */
    struct ts_task_waiter *waiters;    /* utlist of readers */
    bool returned;                     /* run() has returned */
    bool orphaned;                     /* the service is gone: its worker must not reach it */
    bool mirror;                       /* cluster mode: a cache of a task running elsewhere */
    bool lost;                         /* cluster mode: given up, another replica owns it */
    bool handoff;                      /* cluster mode: asked to stop and go back to the store */
    bool handed_off;                   /* cluster mode: went back; streams here end */
    json_t *checkpoint_in;             /* this attempt's start; immutable once queued */
    char *checkpoint_out;              /* to store with the next event; owned */
    char *resumed;                     /* the "resumed" event's data to emit first; owned */
    struct unstored *unstored;         /* cluster mode: events the store did not take yet */
    size_t nunstored;                  /* worker thread only */
    atomic_size_t *unstored_total;     /* the service's */
    unsigned attempt;                  /* cluster mode: the claim's fencing token */
    uint64_t next_seq;                 /* cluster mode: the id the next emit gets */
    const struct ts_task_store *store; /* NULL: memory mode; set before run() */

    /* Guarded by svc->mu: */
    bool abandoned; /* ended by finish() while run() went on */
    UT_hash_handle hh;
    struct ts_task *newer, *older; /* utlist: the newest-first list of every known task */
    struct ts_task *qprev, *qnext; /* utlist: the run queue, while queued */
    struct ts_task *expiry_next;   /* the expiry FIFO, once done */
    int64_t expires_ns;            /* monotonic, once done */
};

/* An event in the local log that the store has not taken yet (Redis was
 * unavailable), with the checkpoint that goes with it. */
struct unstored {
    struct ts_event *ev;
    char *checkpoint;
};

struct worker {
    struct ts_task_service *svc;
    pthread_t thread;
    struct ts_task *current; /* in run(), with the worker's reference; svc->mu */
    bool detach;             /* left to a run() that never returned; svc->mu */
};

struct ts_task_service {
    struct ts_task_service_config cfg;
    struct ts_drain_view drain;
    struct ts_clock clock;
    struct ts_log *log;
    struct ts_series *running;   /* tasks_running */
    struct ts_series *queued;    /* tasks_queued */
    struct ts_series *forced;    /* task_forced_cancellations_total */
    struct ts_family *finished;  /* tasks_finished_total{kind,status} */
    struct ts_family *submitted; /* tasks_submitted_total{kind} */
    struct ts_series *evicted;   /* tasks_evicted_total */
    struct ts_series *handoffs;  /* tasks_handed_off_total */
    atomic_size_t log_bytes;     /* every registered task's log; see the top */
    atomic_size_t unstored;      /* events waiting for the store (cluster mode) */

    pthread_mutex_t mu;
    pthread_cond_t work_cv;    /* a task was queued, or stopping */
    pthread_cond_t idle_cv;    /* nothing runs any more, or an interrupt */
    pthread_cond_t cleanup_cv; /* a new earliest expiry, or stopping */

    /* Guarded by mu: */
    struct kind_entry **kinds;
    size_t nkinds;
    struct ts_task *by_id;      /* uthash; holds the registry's reference */
    struct ts_task *newest;     /* utlist by newer/older */
    struct ts_task *queue_head; /* utlist by qprev/qnext, oldest first */
    struct ts_task *expiry_head, *expiry_tail;
    unsigned nqueued, nrunning; /* nrunning leaves out abandoned tasks */
    size_t finished_bytes;      /* of log_bytes, held by finished tasks */
    bool started, stopping, interrupted;

    struct ts_task_store store; /* append NULL: memory mode */
    struct worker *workers;     /* cfg.workers of them */
    unsigned nthreads;          /* workers started; start() and free() only */
    bool cleanup_started;
    pthread_t cleanup_thread;
};

static const struct ts_task_result cancelled_result = {.status = TS_TASK_CANCELLED};

/* The kind of a mirror until it is adopted: nothing runs it here. */
static void
mirror_run(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *res)
{
    (void)arg;
    (void)ctx;
    res->status = TS_TASK_FAILED;
}
static const struct ts_task_kind mirror_kind = {.name = "remote", .run = mirror_run};

/* ---- small helpers ---- */

static bool
kind_name_valid(const char *name)
{
    size_t i;

    if (name == NULL)
        return false;
    for (i = 0; name[i] != '\0'; i++) {
        char c = name[i];

        if (i == KIND_NAME_MAX ||
            !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return i > 0;
}

static bool
event_name_reserved(const char *name)
{
    for (size_t i = 0; i < TS_ARRAY_SIZE(reserved_events); i++) {
        if (strcmp(name, reserved_events[i]) == 0)
            return true;
    }
    return false;
}

/* RFC 3339 UTC with milliseconds, or null for a time that has not come. */
static json_t *
json_time(int64_t wall_ns)
{
    char buf[TS_TIME_LEN];

    if (wall_ns <= 0)
        return json_null();
    return json_string(ts_format_time(wall_ns, buf));
}

/* Add without overflowing past "never". */
static int64_t
add_ns(int64_t t, int64_t delta)
{
    return delta >= TS_NO_DEADLINE - t ? TS_NO_DEADLINE : t + delta;
}

/* Timed waits go through the service's clock (a fake one in tests); an
 * untimed wait has nothing to ask of it. svc->mu held. */
static int
wait_until(struct ts_task_service *svc, pthread_cond_t *cv, int64_t deadline_ns)
{
    if (deadline_ns == TS_NO_DEADLINE)
        return pthread_cond_wait(cv, &svc->mu);
    return ts_clock_wait(&svc->clock, cv, &svc->mu, deadline_ns);
}

/* ---- tasks ---- */

static int
task_new(struct ts_task_service *svc, const struct kind_entry *entry, const json_t *body,
         struct ts_task **out)
{
    struct ts_task *t;
    int err;

    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    err = ts_random_id(t->id);
    if (err != 0)
        goto out_free;
    err = ts_event_log_init(&t->log, svc->cfg.log_events, svc->cfg.log_bytes);
    if (err != 0)
        goto out_free;
    err = -pthread_mutex_init(&t->mu, NULL);
    if (err != 0)
        goto out_dispose_log;
    err = ts_cond_init(&t->sleep_cv);
    if (err != 0)
        goto out_destroy_mu;
    atomic_init(&t->refs, 1);
    atomic_init(&t->cancel, false);
    t->cancel_fd = -1;
    t->kind = entry->kind;
    t->entry = entry;
    t->log_bytes = &svc->log_bytes;
    /* The body is never changed once parsed, so a reference is as good as a
     * copy (jansson's reference counts are atomic). */
    t->params = json_incref((json_t *)body);
    t->created_wall_ns = ts_clock_wall_ns(&svc->clock);
    t->state = TS_TASK_QUEUED;
    *out = t;
    return 0;

out_destroy_mu:
    pthread_mutex_destroy(&t->mu);
out_dispose_log:
    ts_event_log_dispose(&t->log);
out_free:
    free(t);
    return err;
}

static void drop_unstored(struct ts_task *t);

struct ts_task *
ts_task_ref(struct ts_task *t)
{
    atomic_fetch_add(&t->refs, 1);
    return t;
}

/* Frees only what the task owns: an orphaned task is freed by its worker
 * after the service is gone. */
void
ts_task_unref(struct ts_task *t)
{
    if (t == NULL || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    if (t->cancel_fd >= 0)
        close(t->cancel_fd);
    pthread_cond_destroy(&t->sleep_cv);
    pthread_mutex_destroy(&t->mu);
    ts_event_log_dispose(&t->log);
    json_decref(t->params);
    free(t->sub);
    json_decref(t->checkpoint_in);
    free(t->checkpoint_out);
    free(t->resumed);
    drop_unstored(t);
    free(t->unstored);
    free(t->reason);
    free(t);
}

const char *
ts_task_submitter(const struct ts_task *t)
{
    return t->sub;
}

const char *
ts_task_get_id(const struct ts_task *t)
{
    return t->id;
}

void
ts_task_lock(struct ts_task *t)
{
    pthread_mutex_lock(&t->mu);
}

void
ts_task_unlock(struct ts_task *t)
{
    pthread_mutex_unlock(&t->mu);
}

const struct ts_event_log *
ts_task_log_locked(const struct ts_task *t)
{
    return &t->log;
}

bool
ts_task_ended_locked(const struct ts_task *t)
{
    return t->state == TS_TASK_DONE;
}

uint64_t
ts_task_end_id_locked(const struct ts_task *t)
{
    return t->end_id;
}

void
ts_task_wait_locked(struct ts_task *t, struct ts_task_waiter *w)
{
    if (w->linked)
        return;
    DL_PREPEND(t->waiters, w);
    w->linked = true;
}

void
ts_task_unwait_locked(struct ts_task *t, struct ts_task_waiter *w)
{
    if (!w->linked)
        return;
    DL_DELETE(t->waiters, w);
    w->linked = false;
}

/* One at a time, unlinked first: a wake() may unwait another waiter. */
static void
wake_waiters_locked(struct ts_task *t)
{
    struct ts_task_waiter *w;

    for (w = t->waiters; w != NULL; w = t->waiters) {
        ts_task_unwait_locked(t, w);
        w->wake(w);
    }
}

/* Raise the cancel flag with `reason` and cut a ts_task_sleep_ms() short.
 * Returns false when the flag was already up (the first reason stays). */
static bool
request_cancel(struct ts_task *t, const char *reason)
{
    bool first;

    pthread_mutex_lock(&t->mu);
    first = !atomic_load(&t->cancel);
    if (first) {
        snprintf(t->cancel_reason, sizeof(t->cancel_reason), "%s", reason);
        atomic_store(&t->cancel, true);
        pthread_cond_broadcast(&t->sleep_cv);
        if (t->cancel_fd >= 0)
            eventfd_write(t->cancel_fd, 1);
    }
    pthread_mutex_unlock(&t->mu);
    return first;
}

/* The "end" event {"status", "reason", "exit_code"[, "signal"]} with `id`,
 * or NULL on out of memory. */
static struct ts_event *
encode_end(uint64_t id, enum ts_task_status status, const char *reason,
           const struct ts_task_result *res)
{
    struct ts_event *ev = NULL;
    char *text = NULL;
    json_t *data;

    data = json_pack("{s:s, s:o?, s:i}", "status", status_names[status], "reason",
                     reason != NULL ? json_string(reason) : NULL, "exit_code", res->exit_code);
    if (data != NULL && res->signal != 0)
        json_object_set_new(data, "signal", json_integer(res->signal));
    if (data != NULL)
        text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (text != NULL)
        ev = ts_event_new(id, "end", text, strlen(text));
    free(text);
    return ev;
}

/* Append {"status", "reason", "exit_code"[, "signal"]} as "end". Task lock
 * held. */
static void
append_end_locked(struct ts_task *t, enum ts_task_status status, const char *reason,
                  const struct ts_task_result *res)
{
    char fallback[96];
    char *text = NULL;
    json_t *data;

    /* "o?" turns a reason that is not UTF-8 into null rather than no event. */
    data = json_pack("{s:s, s:o?, s:i}", "status", status_names[status], "reason",
                     reason != NULL ? json_string(reason) : NULL, "exit_code", res->exit_code);
    if (data != NULL && res->signal != 0)
        json_object_set_new(data, "signal", json_integer(res->signal));
    if (data != NULL)
        text = json_dumps(data, JSON_COMPACT);
    json_decref(data);
    if (text != NULL) {
        t->end_id = ts_event_log_append(&t->log, "end", text, strlen(text));
        free(text);
        return;
    }
    /* Out of memory: the streams still need their end, so say what can be
     * said without jansson. */
    snprintf(fallback, sizeof(fallback), "{\"status\":\"%s\",\"reason\":null,\"exit_code\":%d}",
             status_names[status], res->exit_code);
    t->end_id = ts_event_log_append(&t->log, "end", fallback, strlen(fallback));
}

/* Bring the service's byte count up to date with this task's log. Task
 * lock held; never after the task is done (then the log is frozen). */
static void
count_bytes_locked(struct ts_task *t)
{
    if (t->log.bytes >= t->counted)
        atomic_fetch_add(t->log_bytes, t->log.bytes - t->counted);
    else
        atomic_fetch_sub(t->log_bytes, t->counted - t->log.bytes);
    t->counted = t->log.bytes;
}

static bool
over_cap_locked(const struct ts_task_service *svc)
{
    return svc->cfg.retained_bytes != 0 && atomic_load(&svc->log_bytes) > svc->cfg.retained_bytes;
}

static void
expiry_push_locked(struct ts_task_service *svc, struct ts_task *t)
{
    t->expires_ns = add_ns(t->finished_ns, svc->cfg.retention_ns);
    t->expiry_next = NULL;
    if (svc->expiry_tail != NULL) {
        svc->expiry_tail->expiry_next = t;
    } else {
        svc->expiry_head = t;
        /* Only a task finishing into an empty FIFO moves the next expiry. */
        pthread_cond_signal(&svc->cleanup_cv);
    }
    svc->expiry_tail = t;
}

/*
 * The one way a task ends: count it, record the result (cancelled, with the
 * cancel reason, whenever the flag is up), append "end", wake the readers and
 * hand the task to the cleanup thread. svc->mu held; a queued task must
 * already be off the queue.
 */
static void finish_locked(struct ts_task_service *svc, struct ts_task *t,
                          enum ts_task_status status, const char *reason,
                          const struct ts_task_result *res, struct ts_event *end);

static void
end_task_locked(struct ts_task_service *svc, struct ts_task *t, const struct ts_task_result *res)
{
    /* Every request_cancel() runs under svc->mu, so the flag and its reason
     * hold still while we use them. */
    bool cancelled = atomic_load(&t->cancel);
    enum ts_task_status status = cancelled ? TS_TASK_CANCELLED : res->status;
    const char *reason = cancelled ? t->cancel_reason : res->reason;

    finish_locked(svc, t, status, reason, res, NULL);
}

/* end_task_locked() with the outcome decided: `end`, when not NULL, is the
 * "end" event already encoded (and stored), its reference taken. */
static void
finish_locked(struct ts_task_service *svc, struct ts_task *t, enum ts_task_status status,
              const char *reason, const struct ts_task_result *res, struct ts_event *end)
{
    /* Counted first: a client that has seen "end" must not then scrape the
     * task as still running. */
    if (t->state == TS_TASK_QUEUED) {
        svc->nqueued--;
        ts_series_sub(svc->queued, 1);
    } else {
        svc->nrunning--;
        ts_series_sub(svc->running, 1);
    }
    ts_series_inc(t->entry->finished[status]);

    pthread_mutex_lock(&t->mu);
    t->state = TS_TASK_DONE;
    t->status = status;
    /* Copied: run()'s reason need only live until the task ends. Out of
     * memory leaves it null in the JSON; the end event has it anyway. */
    t->reason = reason != NULL ? strdup(reason) : NULL;
    t->exit_code = res->exit_code;
    t->signal = res->signal;
    t->finished_wall_ns = ts_clock_wall_ns(&svc->clock);
    t->finished_ns = ts_clock_now_ns(&svc->clock);
    if (end == NULL) {
        append_end_locked(t, status, reason, res);
    } else if (end->id == t->log.next_id) {
        ts_event_log_push(&t->log, end);
        t->end_id = end->id;
    } else {
        ts_event_unref(end); /* cannot happen: the worker is the only writer */
    }
    count_bytes_locked(t);
    svc->finished_bytes += t->counted;
    wake_waiters_locked(t);
    pthread_mutex_unlock(&t->mu);

    expiry_push_locked(svc, t);
    if (over_cap_locked(svc))
        pthread_cond_signal(&svc->cleanup_cv);
    /* wait_idle() and finish() both wait for this. */
    if (svc->nrunning == 0)
        pthread_cond_broadcast(&svc->idle_cv);
}

static void
log_finished(struct ts_task_service *svc, struct ts_task *t)
{
    enum ts_task_status status;
    int64_t duration_ns = 0;
    char reason[CANCEL_REASON_MAX];

    pthread_mutex_lock(&t->mu);
    status = t->status;
    snprintf(reason, sizeof(reason), "%s", t->reason != NULL ? t->reason : "");
    if (t->started_ns != 0)
        duration_ns = t->finished_ns - t->started_ns;
    pthread_mutex_unlock(&t->mu);
    ts_log(svc->log, TS_LOG_INFO, "task finished", TS_F_STR("task_id", t->id),
           TS_F_STR("kind", t->kind->name), TS_F_STR("status", status_names[status]),
           TS_F_STR("reason", reason[0] != '\0' ? reason : NULL),
           TS_F_INT("duration_ms", duration_ns / TS_NS_PER_MS), TS_F_END);
}

/* ---- the run queue and the registry (svc->mu held) ---- */

static void
queue_push_locked(struct ts_task_service *svc, struct ts_task *t)
{
    DL_APPEND2(svc->queue_head, t, qprev, qnext);
}

static void
queue_remove_locked(struct ts_task_service *svc, struct ts_task *t)
{
    DL_DELETE2(svc->queue_head, t, qprev, qnext);
}

/* Into the hash (with a fresh id on the off chance of a collision, which
 * would hand one client's task to another) and the newest-first list. */
static int
registry_add_locked(struct ts_task_service *svc, struct ts_task *t)
{
    struct ts_task *dup;
    int err;

    for (;;) {
        HASH_FIND_STR(svc->by_id, t->id, dup);
        if (dup == NULL)
            break;
        err = ts_random_id(t->id);
        if (err != 0)
            return err;
    }
    HASH_ADD_STR(svc->by_id, id, t);
    if (t->hh.tbl == NULL)
        return -ENOMEM;
    DL_PREPEND2(svc->newest, t, newer, older);
    return 0;
}

/* Only finished tasks leave the registry before the service is freed. */
static void
registry_remove_locked(struct ts_task_service *svc, struct ts_task *t)
{
    HASH_DEL(svc->by_id, t);
    DL_DELETE2(svc->newest, t, newer, older);
    atomic_fetch_sub(&svc->log_bytes, t->counted);
    svc->finished_bytes -= t->counted;
}

static const struct kind_entry *
find_kind_locked(struct ts_task_service *svc, const char *name)
{
    for (size_t i = 0; i < svc->nkinds; i++) {
        if (strcmp(svc->kinds[i]->kind->name, name) == 0)
            return svc->kinds[i];
    }
    return NULL;
}

/* svc->mu held. */
static void
unknown_kind_locked(const struct ts_task_service *svc, const char *name, char *err, size_t errlen)
{
    ts_unknown_begin(err, errlen, "task kind", name);
    for (size_t i = 0; i < svc->nkinds; i++)
        ts_unknown_add(err, errlen, svc->kinds[i]->kind->name);
    ts_unknown_end(err, errlen);
}

/* ---- submit, find, cancel ---- */

/* Workers not inside a run(). svc->mu held. */
static unsigned
idle_workers_locked(const struct ts_task_service *svc)
{
    unsigned idle = 0;

    for (unsigned i = 0; i < svc->cfg.workers; i++)
        idle += svc->workers[i].current == NULL;
    return idle;
}

/* The checks of a submission; the kind's entry, or NULL with `rc` set. */
static const struct kind_entry *
check_submission(struct ts_task_service *svc, const json_t *body, int *rc, char *err, size_t errlen)
{
    const struct kind_entry *entry;
    const char *kind_name;

    *rc = -EINVAL;
    if (!json_is_object(body)) {
        snprintf(err, errlen, "the request body must be a JSON object");
        return NULL;
    }
    kind_name = json_string_value(json_object_get(body, "kind"));
    if (kind_name == NULL) {
        snprintf(err, errlen, "\"kind\" must be a string");
        return NULL;
    }
    pthread_mutex_lock(&svc->mu);
    entry = find_kind_locked(svc, kind_name);
    if (entry == NULL)
        unknown_kind_locked(svc, kind_name, err, errlen);
    pthread_mutex_unlock(&svc->mu);
    if (entry == NULL) {
        *rc = -ENOENT;
        return NULL;
    }
    if (entry->kind->validate != NULL) {
        *rc = entry->kind->validate(entry->kind->arg, body, err, errlen);
        if (*rc != 0)
            return NULL;
    }
    *rc = 0;
    return entry;
}

int
ts_task_validate(struct ts_task_service *svc, const json_t *body, bool count, char *err,
                 size_t errlen)
{
    const struct kind_entry *entry;
    int rc;

    if (errlen > 0)
        err[0] = '\0';
    entry = check_submission(svc, body, &rc, err, errlen);
    if (entry != NULL && count)
        ts_series_inc(entry->submitted);
    return rc;
}

int
ts_task_submit(struct ts_task_service *svc, const json_t *body, const char *sub,
               struct ts_task **out, char *err, size_t errlen)
{
    const struct kind_entry *entry;
    struct ts_task *t;
    int rc;

    *out = NULL;
    if (errlen > 0)
        err[0] = '\0';
    if (ts_drain_is_draining(&svc->drain)) {
        snprintf(err, errlen, "the server is draining; retry on another instance");
        return -ESHUTDOWN;
    }
    entry = check_submission(svc, body, &rc, err, errlen);
    if (entry == NULL)
        return rc;
    rc = task_new(svc, entry, body, &t);
    if (rc == 0 && sub != NULL && (t->sub = strdup(sub)) == NULL) {
        ts_task_unref(t);
        rc = -ENOMEM;
    }
    if (rc != 0) {
        snprintf(err, errlen, "could not create the task: %s", ts_strerror(rc));
        return rc;
    }

    pthread_mutex_lock(&svc->mu);
    if (svc->stopping) {
        snprintf(err, errlen, "the task service is stopping");
        rc = -ESHUTDOWN;
        goto out_unlock;
    }
    /* The queue bounds tasks that wait: those an idle worker is about to
     * take do not count, so a burst no larger than the idle workers always
     * gets in, even with MAX_QUEUED_TASKS=0. */
    if (svc->nqueued >= svc->cfg.max_queued + idle_workers_locked(svc)) {
        snprintf(err, errlen, "the task queue is full (%u queued)", svc->nqueued);
        rc = -EAGAIN;
        goto out_unlock;
    }
    if (over_cap_locked(svc)) {
        pthread_cond_signal(&svc->cleanup_cv); /* finished tasks can make room */
        if (atomic_load(&svc->log_bytes) - svc->finished_bytes >= svc->cfg.retained_bytes) {
            snprintf(err, errlen,
                     "the running tasks hold %zu bytes of events, RETAINED_BYTES is %zu; retry "
                     "when some have finished",
                     atomic_load(&svc->log_bytes) - svc->finished_bytes, svc->cfg.retained_bytes);
            rc = -ENOSPC;
            goto out_unlock;
        }
    }
    rc = registry_add_locked(svc, t);
    if (rc != 0) {
        snprintf(err, errlen, "could not register the task: %s", ts_strerror(rc));
        goto out_unlock;
    }
    queue_push_locked(svc, t);
    svc->nqueued++;
    ts_series_inc(svc->queued);
    ts_series_inc(entry->submitted);
    pthread_cond_signal(&svc->work_cv);
    /* Taken under the lock: once it is released, a cancel and a zero
     * retention could forget the task before we return it. */
    *out = ts_task_ref(t);
    t = NULL;
out_unlock:
    pthread_mutex_unlock(&svc->mu);
    if (t != NULL) {
        ts_task_unref(t);
        return rc;
    }
    ts_log(svc->log, TS_LOG_DEBUG, "task submitted", TS_F_STR("task_id", (*out)->id),
           TS_F_STR("kind", entry->kind->name), TS_F_END);
    return 0;
}

struct ts_task *
ts_task_find(struct ts_task_service *svc, const char *id)
{
    struct ts_task *t;

    if (!ts_is_task_id(id))
        return NULL;
    pthread_mutex_lock(&svc->mu);
    HASH_FIND_STR(svc->by_id, id, t);
    if (t != NULL)
        ts_task_ref(t);
    pthread_mutex_unlock(&svc->mu);
    return t;
}

int
ts_task_cancel(struct ts_task_service *svc, struct ts_task *t)
{
    bool ended = false;
    int err = 0;

    pthread_mutex_lock(&svc->mu);
    switch (t->state) {
    case TS_TASK_QUEUED:
        queue_remove_locked(svc, t);
        request_cancel(t, "client");
        end_task_locked(svc, t, &cancelled_result);
        ended = true;
        break;
    case TS_TASK_RUNNING:
        request_cancel(t, "client");
        break;
    case TS_TASK_DONE:
        err = -EALREADY;
        break;
    }
    pthread_mutex_unlock(&svc->mu);
    if (ended)
        log_finished(svc, t);
    return err;
}

/* ---- threads ---- */

static int emit_stored(struct ts_task *t, const char *event, char *text);
static bool store_unavailable(int err);
static int flush_unstored(struct ts_task *t);

static void
svc_worker_free(struct ts_task_service *svc)
{
    if (svc->store.worker_free != NULL)
        svc->store.worker_free(svc->store.arg);
}

/*
 * Before a task's end is stored, what it emitted while the store was away
 * must be: wait for the store, trying again with a back-off (100 ms to 1 s),
 * until it takes them, refuses them (-ESTALE), or the service stops. The
 * task's readers here have all of it meanwhile, and its end comes once it is
 * stored, so no replica ever shows an end the store does not have.
 */
static int
flush_before_end(struct ts_task_service *svc, struct ts_task *t)
{
    int64_t wait_ns = 100 * TS_NS_PER_MS;
    bool logged = false;
    int err;

    for (;;) {
        bool stopping;

        err = flush_unstored(t);
        if (!store_unavailable(err))
            return err;
        pthread_mutex_lock(&svc->mu);
        stopping = svc->stopping || t->abandoned;
        pthread_mutex_unlock(&svc->mu);
        if (stopping)
            return err;
        if (!logged) {
            ts_log(svc->log, TS_LOG_WARN, "task ended while the store is unavailable; waiting",
                   TS_F_STR("task_id", t->id), TS_F_UINT("unstored", t->nunstored), TS_F_END);
            logged = true;
        }
        pthread_mutex_lock(&t->mu);
        ts_clock_wait(&svc->clock, &t->sleep_cv, &t->mu, ts_clock_now_ns(&svc->clock) + wait_ns);
        pthread_mutex_unlock(&t->mu);
        wait_ns = wait_ns * 2 > TS_NS_PER_S ? TS_NS_PER_S : wait_ns * 2;
    }
}

/*
 * Cluster mode: the end of a run goes to the store first. Refused (-ESTALE:
 * another replica took the task over) or given up before, the task is no
 * longer ours: it becomes a mirror, fed with the new owner's events. A store
 * that fails otherwise (Redis down) leaves the end to the local readers
 * only; the lease lapses and another replica ends the task as lost.
 */
static bool
run_task_stored_end(struct worker *w, struct ts_task *t, const struct ts_task_result *res)
{
    struct ts_task_service *svc = w->svc;
    char reason[256];
    enum ts_task_status status;
    struct ts_event *end = NULL;
    char *checkpoint;
    bool lost, abandoned, handoff;
    uint64_t id;
    int rc = 0;

    /* The flag and its reason are written under the task's lock too. */
    pthread_mutex_lock(&t->mu);
    if (atomic_load(&t->cancel)) {
        status = TS_TASK_CANCELLED;
        snprintf(reason, sizeof(reason), "%s", t->cancel_reason);
    } else {
        status = res->status;
        snprintf(reason, sizeof(reason), "%s", res->reason != NULL ? res->reason : "");
    }
    lost = t->lost;
    handoff = t->handoff;
    checkpoint = t->checkpoint_out;
    t->checkpoint_out = NULL;
    id = t->next_seq;
    pthread_mutex_unlock(&t->mu);
    if (!lost) {
        rc = flush_before_end(svc, t);
        if (rc == -ESTALE)
            lost = true;
    }
    if (handoff && !lost) {
        /* Whatever the store says, this replica is done with the task: a
         * failed release leaves it to lapse, and another replica resumes. */
        rc = t->store->release(t->store->arg, t, checkpoint);
        if (rc != 0 && rc != -ESTALE)
            ts_log(svc->log, TS_LOG_WARN, "hand-off not stored; the lease will lapse",
                   TS_F_STR("task_id", t->id), TS_F_STR("error", ts_strerror(rc)), TS_F_END);
        lost = true;
    } else if (!lost) {
        end = encode_end(id, status, reason[0] != '\0' ? reason : NULL, res);
        rc = end != NULL ? t->store->end(t->store->arg, t, end, status_names[status],
                                         reason[0] != '\0' ? reason : NULL, res)
                         : -ENOMEM;
        if (rc != 0 && rc != -ESTALE)
            ts_log(svc->log, TS_LOG_ERROR, "task end not stored", TS_F_STR("task_id", t->id),
                   TS_F_STR("error", ts_strerror(rc)), TS_F_END);
    }

    pthread_mutex_lock(&svc->mu);
    w->current = NULL;
    abandoned = t->abandoned;
    if (!abandoned && (lost || rc == -ESTALE)) {
        svc->nrunning--;
        ts_series_sub(svc->running, 1);
        pthread_mutex_lock(&t->mu);
        t->lost = true;
        t->mirror = true;
        t->handed_off = handoff;
        if (handoff)
            wake_waiters_locked(t);
        pthread_mutex_unlock(&t->mu);
        if (svc->nrunning == 0)
            pthread_cond_broadcast(&svc->idle_cv);
    } else if (!abandoned) {
        finish_locked(svc, t, status, reason[0] != '\0' ? reason : NULL, res, end);
        end = NULL;
    }
    pthread_mutex_unlock(&svc->mu);
    ts_event_unref(end);
    free(checkpoint);
    if (abandoned)
        ts_log(svc->log, TS_LOG_INFO, "abandoned task returned", TS_F_STR("task_id", t->id),
               TS_F_END);
    else if (handoff)
        ts_log(svc->log, TS_LOG_INFO, "task handed off", TS_F_STR("task_id", t->id),
               TS_F_STR("kind", t->kind->name), TS_F_UINT("attempt", t->attempt), TS_F_END);
    else if (lost || rc == -ESTALE)
        ts_log(svc->log, TS_LOG_WARN, "lost ownership", TS_F_STR("task_id", t->id),
               TS_F_STR("kind", t->kind->name), TS_F_UINT("attempt", t->attempt), TS_F_END);
    else
        log_finished(svc, t);
    ts_task_unref(t);
    svc_worker_free(svc);
    return true;
}

/* Run `t` (taken off the queue, with this worker's reference) and end it.
 * Returns false when the service was freed meanwhile: then neither it nor
 * `w` may be touched again. */
static bool
run_task(struct worker *w, struct ts_task *t)
{
    struct ts_task_service *svc = w->svc;
    struct ts_task_ctx ctx = {.task = t, .clock = svc->clock};
    struct ts_task_result res = {.status = TS_TASK_SUCCEEDED};
    bool orphaned, abandoned;

    ts_log(svc->log, TS_LOG_DEBUG, "task started", TS_F_STR("task_id", t->id),
           TS_F_STR("kind", t->kind->name), TS_F_END);
    if (t->resumed != NULL) {
        char *text = t->resumed;

        t->resumed = NULL;
        emit_stored(t, "resumed", text);
    }
    t->kind->run(t->kind->arg, &ctx, &res);

    pthread_mutex_lock(&t->mu);
    t->returned = true;
    orphaned = t->orphaned;
    /* Only run() waits on it: a retained task keeps no descriptor. */
    if (t->cancel_fd >= 0) {
        close(t->cancel_fd);
        t->cancel_fd = -1;
    }
    pthread_mutex_unlock(&t->mu);
    if (orphaned) {
        ts_task_unref(t);
        return false;
    }
    if (t->store != NULL)
        return run_task_stored_end(w, t, &res);

    pthread_mutex_lock(&svc->mu);
    w->current = NULL;
    abandoned = t->abandoned;
    if (!abandoned)
        end_task_locked(svc, t, &res);
    pthread_mutex_unlock(&svc->mu);
    if (abandoned)
        ts_log(svc->log, TS_LOG_INFO, "abandoned task returned", TS_F_STR("task_id", t->id),
               TS_F_END);
    else
        log_finished(svc, t);
    ts_task_unref(t);
    svc_worker_free(svc);
    return true;
}

static void *
worker_main(void *arg)
{
    struct worker *w = arg;
    struct ts_task_service *svc = w->svc;
    struct ts_task *t;

    pthread_mutex_lock(&svc->mu);
    while (!svc->stopping) {
        t = svc->queue_head;
        if (t == NULL) {
            pthread_cond_wait(&svc->work_cv, &svc->mu);
            continue;
        }
        queue_remove_locked(svc, t);
        svc->nqueued--;
        svc->nrunning++;
        ts_series_sub(svc->queued, 1);
        ts_series_inc(svc->running);
        pthread_mutex_lock(&t->mu);
        t->state = TS_TASK_RUNNING;
        t->started_wall_ns = ts_clock_wall_ns(&svc->clock);
        t->started_ns = ts_clock_now_ns(&svc->clock);
        pthread_mutex_unlock(&t->mu);
        w->current = ts_task_ref(t);
        pthread_mutex_unlock(&svc->mu);

        if (!run_task(w, t))
            return NULL;
        pthread_mutex_lock(&svc->mu);
    }
    pthread_mutex_unlock(&svc->mu);
    return NULL;
}

/* Take the expired tasks off the FIFO and out of the registry, chained by
 * expiry_next. svc->mu held. */
static struct ts_task *
take_expired_locked(struct ts_task_service *svc, int64_t now_ns)
{
    struct ts_task *expired = NULL, **tail = &expired;
    struct ts_task *t;

    for (t = svc->expiry_head; t != NULL && (t->expires_ns <= now_ns || over_cap_locked(svc));
         t = svc->expiry_head) {
        if (t->expires_ns > now_ns)
            ts_series_inc(svc->evicted);
        svc->expiry_head = t->expiry_next;
        if (svc->expiry_head == NULL)
            svc->expiry_tail = NULL;
        registry_remove_locked(svc, t);
        t->expiry_next = NULL;
        *tail = t;
        tail = &t->expiry_next;
    }
    return expired;
}

static void *
cleanup_main(void *arg)
{
    struct ts_task_service *svc = arg;
    struct ts_task *expired, *t;

    pthread_mutex_lock(&svc->mu);
    while (!svc->stopping) {
        expired = take_expired_locked(svc, ts_clock_now_ns(&svc->clock));
        if (expired != NULL) {
            /* Released outside the lock, which submissions and streams
             * need; then look again, as time went on. */
            pthread_mutex_unlock(&svc->mu);
            while (expired != NULL) {
                t = expired;
                expired = t->expiry_next;
                ts_task_unref(t);
            }
            pthread_mutex_lock(&svc->mu);
            continue;
        }
        wait_until(svc, &svc->cleanup_cv,
                   svc->expiry_head != NULL ? svc->expiry_head->expires_ns : TS_NO_DEADLINE);
    }
    pthread_mutex_unlock(&svc->mu);
    return NULL;
}

/* ---- cluster mode ---- */

void
ts_task_service_set_store(struct ts_task_service *svc, const struct ts_task_store *store)
{
    svc->store = *store;
}

struct ts_task *
ts_task_mirror(struct ts_task_service *svc, const char *id, bool *created)
{
    struct ts_task *t;

    *created = false;
    if (!ts_is_task_id(id))
        return NULL;
    pthread_mutex_lock(&svc->mu);
    HASH_FIND_STR(svc->by_id, id, t);
    if (t != NULL) {
        ts_task_ref(t);
        goto out_unlock;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        goto out_unlock;
    if (ts_event_log_init(&t->log, svc->cfg.log_events, svc->cfg.log_bytes) != 0) {
        free(t);
        t = NULL;
        goto out_unlock;
    }
    pthread_mutex_init(&t->mu, NULL);
    if (ts_cond_init(&t->sleep_cv) != 0) {
        ts_event_log_dispose(&t->log);
        pthread_mutex_destroy(&t->mu);
        free(t);
        t = NULL;
        goto out_unlock;
    }
    memcpy(t->id, id, sizeof(t->id));
    atomic_init(&t->refs, 1);
    atomic_init(&t->cancel, false);
    t->cancel_fd = -1;
    t->kind = &mirror_kind;
    t->log_bytes = &svc->log_bytes;
    t->created_wall_ns = ts_clock_wall_ns(&svc->clock);
    t->state = TS_TASK_RUNNING;
    t->mirror = true;
    HASH_ADD_STR(svc->by_id, id, t);
    if (t->hh.tbl == NULL) {
        ts_task_unref(t);
        t = NULL;
        goto out_unlock;
    }
    DL_PREPEND2(svc->newest, t, newer, older);
    ts_task_ref(t); /* the registry's */
    *created = true;
out_unlock:
    pthread_mutex_unlock(&svc->mu);
    return t;
}

int
ts_task_mirror_push(struct ts_task_service *svc, struct ts_task *t, struct ts_event *ev,
                    bool is_end)
{
    int rc = 0;

    /* An end also moves the task to the expiry FIFO: svc->mu first. */
    if (is_end)
        pthread_mutex_lock(&svc->mu);
    pthread_mutex_lock(&t->mu);
    if (!t->mirror || t->handed_off || t->state == TS_TASK_DONE || ev->id < t->log.next_id) {
        rc = 1;
    } else if (ev->id > t->log.next_id) {
        rc = -ERANGE;
    } else {
        ts_event_log_push(&t->log, ev);
        ev = NULL;
        count_bytes_locked(t);
        if (is_end) {
            t->state = TS_TASK_DONE;
            t->end_id = t->log.next_id - 1;
            t->finished_wall_ns = ts_clock_wall_ns(&svc->clock);
            t->finished_ns = ts_clock_now_ns(&svc->clock);
            if (t->hh.tbl != NULL) /* registered (not forgotten) */
                svc->finished_bytes += t->counted;
        }
        wake_waiters_locked(t);
    }
    pthread_mutex_unlock(&t->mu);
    if (is_end && rc == 0 && t->hh.tbl != NULL)
        expiry_push_locked(svc, t);
    if (is_end)
        pthread_mutex_unlock(&svc->mu);
    ts_event_unref(ev);
    return rc;
}

uint64_t
ts_task_next_id(struct ts_task *t)
{
    uint64_t id;

    pthread_mutex_lock(&t->mu);
    id = t->log.next_id;
    pthread_mutex_unlock(&t->mu);
    return id;
}

void
ts_task_mirror_restart(struct ts_task *t, uint64_t next_id)
{
    pthread_mutex_lock(&t->mu);
    if (t->mirror && t->state != TS_TASK_DONE && next_id > t->log.next_id) {
        ts_event_log_restart(&t->log, next_id);
        count_bytes_locked(t);
        wake_waiters_locked(t);
    }
    pthread_mutex_unlock(&t->mu);
}

unsigned
ts_task_attempt(struct ts_task *t)
{
    unsigned attempt;

    pthread_mutex_lock(&t->mu);
    attempt = t->attempt;
    pthread_mutex_unlock(&t->mu);
    return attempt;
}

bool
ts_task_is_mirror(struct ts_task *t)
{
    bool mirror;

    pthread_mutex_lock(&t->mu);
    mirror = t->mirror;
    pthread_mutex_unlock(&t->mu);
    return mirror;
}

/* svc->mu held. */
static unsigned
free_workers_locked(const struct ts_task_service *svc)
{
    unsigned busy = svc->nqueued + svc->nrunning;

    return busy < svc->cfg.workers ? svc->cfg.workers - busy : 0;
}

unsigned
ts_task_service_idle(struct ts_task_service *svc)
{
    unsigned n;

    pthread_mutex_lock(&svc->mu);
    n = svc->stopping ? 0 : free_workers_locked(svc);
    pthread_mutex_unlock(&svc->mu);
    return n;
}

int
ts_task_adopt(struct ts_task_service *svc, struct ts_task *t, const json_t *body, unsigned attempt,
              json_t *checkpoint, const char *resumed)
{
    const struct kind_entry *entry;
    const char *kind = json_string_value(json_object_get(body, "kind"));
    int rc = 0;

    pthread_mutex_lock(&svc->mu);
    entry = kind != NULL ? find_kind_locked(svc, kind) : NULL;
    if (svc->stopping)
        rc = -ESHUTDOWN;
    else if (free_workers_locked(svc) == 0)
        rc = -EBUSY;
    else if (entry == NULL)
        rc = -ENOENT;
    if (rc != 0)
        goto out_unlock;
    pthread_mutex_lock(&t->mu);
    if (!t->mirror || t->state == TS_TASK_DONE || t->hh.tbl == NULL) {
        rc = -EALREADY;
    } else {
        /* Written before any worker can see the task (it is queued under
         * svc->mu below), read by that worker after. A copy that ran here
         * before (given up, handed off) starts clean: its run() returned
         * before it became a mirror. */
        t->mirror = false;
        t->lost = false;
        t->handoff = false;
        t->handed_off = false;
        t->returned = false;
        atomic_store(&t->cancel, false);
        t->cancel_reason[0] = '\0';
        free(t->checkpoint_out);
        t->checkpoint_out = NULL;
        drop_unstored(t);
        t->kind = entry->kind;
        t->entry = entry;
        json_decref(t->params);
        t->params = json_incref((json_t *)body);
        t->attempt = attempt;
        t->next_seq = t->log.next_id;
        json_decref(t->checkpoint_in);
        t->checkpoint_in = json_incref(checkpoint);
        free(t->resumed);
        t->resumed = resumed != NULL ? strdup(resumed) : NULL;
        t->store = &svc->store;
        t->unstored_total = &svc->unstored;
        t->state = TS_TASK_QUEUED;
    }
    pthread_mutex_unlock(&t->mu);
    if (rc != 0)
        goto out_unlock;
    queue_push_locked(svc, t);
    svc->nqueued++;
    ts_series_inc(svc->queued);
    pthread_cond_signal(&svc->work_cv);
out_unlock:
    pthread_mutex_unlock(&svc->mu);
    return rc;
}

size_t
ts_task_service_running(struct ts_task_service *svc, struct ts_task **tasks, unsigned *attempts,
                        size_t max)
{
    size_t n = 0;

    pthread_mutex_lock(&svc->mu);
    for (unsigned i = 0; i < svc->cfg.workers && n < max; i++) {
        struct ts_task *t = svc->workers[i].current;

        if (t == NULL || t->abandoned)
            continue;
        pthread_mutex_lock(&t->mu);
        if (!t->lost) {
            tasks[n] = ts_task_ref(t);
            attempts[n++] = t->attempt;
        }
        pthread_mutex_unlock(&t->mu);
    }
    pthread_mutex_unlock(&svc->mu);
    return n;
}

bool
ts_task_service_resumable(struct ts_task_service *svc, const json_t *body)
{
    const char *kind = json_string_value(json_object_get(body, "kind"));
    const struct kind_entry *entry;

    pthread_mutex_lock(&svc->mu);
    entry = kind != NULL ? find_kind_locked(svc, kind) : NULL;
    pthread_mutex_unlock(&svc->mu);
    return entry != NULL && entry->kind->resumable != NULL &&
           entry->kind->resumable(entry->kind->arg, body);
}

uint64_t
ts_task_service_hand_off(struct ts_task_service *svc)
{
    uint64_t n = 0;

    pthread_mutex_lock(&svc->mu);
    for (unsigned i = 0; svc->store.release != NULL && i < svc->cfg.workers; i++) {
        struct ts_task *t = svc->workers[i].current;
        bool go;

        if (t == NULL || t->abandoned || t->store == NULL || t->kind->resumable == NULL ||
            !t->kind->resumable(t->kind->arg, t->params))
            continue;
        pthread_mutex_lock(&t->mu);
        go = !t->lost && !atomic_load(&t->cancel);
        t->handoff = go;
        pthread_mutex_unlock(&t->mu);
        if (go && request_cancel(t, "handoff")) {
            ts_log(svc->log, TS_LOG_INFO, "handing off task", TS_F_STR("task_id", t->id),
                   TS_F_STR("kind", t->kind->name), TS_F_END);
            n++;
        }
    }
    pthread_mutex_unlock(&svc->mu);
    ts_series_add(svc->handoffs, n);
    return n;
}

/* Its streams here end once they have sent what it holds. Task lock held. */
static void
detach_locked(struct ts_task *t)
{
    if (t->mirror && t->state != TS_TASK_DONE && !t->handed_off) {
        t->handed_off = true;
        wake_waiters_locked(t);
    }
}

void
ts_task_service_detach_mirrors(struct ts_task_service *svc)
{
    struct ts_task *t;

    pthread_mutex_lock(&svc->mu);
    DL_FOREACH2(svc->newest, t, older) {
        pthread_mutex_lock(&t->mu);
        detach_locked(t);
        pthread_mutex_unlock(&t->mu);
    }
    pthread_mutex_unlock(&svc->mu);
}

uint64_t
ts_task_stored_last(struct ts_task *t, json_t **body, int64_t *created_ms, int64_t *started_ms)
{
    uint64_t last;

    pthread_mutex_lock(&t->mu);
    last = t->log.next_id - 1 - t->nunstored;
    *body = json_incref(t->params);
    *created_ms = t->created_wall_ns / TS_NS_PER_MS;
    *started_ms = t->started_wall_ns / TS_NS_PER_MS;
    pthread_mutex_unlock(&t->mu);
    return last;
}

size_t
ts_task_events(struct ts_task *t, uint64_t from, uint64_t to, struct ts_event **out, size_t max)
{
    size_t n = 0;

    pthread_mutex_lock(&t->mu);
    if (from < ts_event_log_first_id(&t->log))
        from = ts_event_log_first_id(&t->log);
    for (uint64_t id = from; id <= to && n < max; id++) {
        struct ts_event *ev = ts_event_log_get(&t->log, id);

        if (ev == NULL)
            break;
        out[n++] = ts_event_ref(ev);
    }
    pthread_mutex_unlock(&t->mu);
    return n;
}

void
ts_task_forget_mirror(struct ts_task_service *svc, struct ts_task *t)
{
    bool forget;

    pthread_mutex_lock(&svc->mu);
    pthread_mutex_lock(&t->mu);
    forget = t->mirror && t->state != TS_TASK_DONE && t->hh.tbl != NULL;
    if (forget) {
        HASH_DEL(svc->by_id, t);
        DL_DELETE2(svc->newest, t, newer, older);
        t->hh.tbl = NULL; /* not registered: never in the expiry FIFO */
        atomic_fetch_sub(&svc->log_bytes, t->counted);
        atomic_init(&t->own_bytes, t->counted);
        t->log_bytes = &t->own_bytes;
    }
    pthread_mutex_unlock(&t->mu);
    pthread_mutex_unlock(&svc->mu);
    if (forget)
        ts_task_unref(t); /* the registry's */
}

void
ts_task_mirror_detach(struct ts_task *t)
{
    pthread_mutex_lock(&t->mu);
    detach_locked(t);
    pthread_mutex_unlock(&t->mu);
}

bool
ts_task_handed_off_locked(const struct ts_task *t)
{
    return t->handed_off;
}

void
ts_task_give_up(struct ts_task *t)
{
    pthread_mutex_lock(&t->mu);
    t->lost = true;
    pthread_mutex_unlock(&t->mu);
    request_cancel(t, "lost");
}

/* ---- the service ---- */

static double
unstored_gauge(void *arg)
{
    struct ts_task_service *svc = arg;

    return (double)atomic_load(&svc->unstored);
}

static double
log_bytes_gauge(void *arg)
{
    struct ts_task_service *svc = arg;

    return (double)atomic_load(&svc->log_bytes);
}

static int
register_metrics(struct ts_task_service *svc, struct ts_metrics *m)
{
    static const char *const finished_labels[] = {"kind", "status"};
    static const char *const submitted_labels[] = {"kind"};

    svc->running = ts_metrics_simple(m, TS_METRIC_GAUGE, "tasks_running",
                                     "Tasks whose run() is executing on a worker thread.");
    svc->queued = ts_metrics_simple(m, TS_METRIC_GAUGE, "tasks_queued",
                                    "Tasks accepted and waiting for a free worker thread.");
    svc->forced = ts_metrics_simple(
        m, TS_METRIC_COUNTER, "task_forced_cancellations_total",
        "Tasks still queued or running when the service cancelled them at shutdown.");
    svc->finished = ts_metrics_family(m, TS_METRIC_COUNTER, "tasks_finished_total",
                                      "Tasks that ended, by kind and final status.", 2,
                                      finished_labels, NULL, 0);
    svc->submitted =
        ts_metrics_family(m, TS_METRIC_COUNTER, "tasks_submitted_total",
                          "Tasks accepted for running, by kind.", 1, submitted_labels, NULL, 0);
    svc->evicted =
        ts_metrics_simple(m, TS_METRIC_COUNTER, "tasks_evicted_total",
                          "Finished tasks forgotten before TASK_RETENTION to keep RETAINED_BYTES.");
    svc->handoffs = ts_metrics_simple(
        m, TS_METRIC_COUNTER, "tasks_handed_off_total",
        "Resumable tasks still running at the end of a drain that went back to the cluster's "
        "queue for another replica to resume (cluster mode).");
    if (svc->running == NULL || svc->queued == NULL || svc->forced == NULL ||
        svc->finished == NULL || svc->submitted == NULL || svc->evicted == NULL ||
        svc->handoffs == NULL)
        return -ENOMEM;
    if (ts_metrics_gauge_fn(m, "task_events_unstored",
                            "Events of running tasks kept here because the cluster's store "
                            "(Redis) could not take them yet; stored on reconnect.",
                            unstored_gauge, svc) != 0)
        return -ENOMEM;
    return ts_metrics_gauge_fn(m, "task_event_log_bytes",
                               "Encoded event bytes held by the logs of every known task.",
                               log_bytes_gauge, svc);
}

int
ts_task_service_new(struct ts_task_service **out, const struct ts_task_service_config *cfg,
                    struct ts_drain_view drain, struct ts_clock clock, struct ts_metrics *metrics,
                    struct ts_log *log)
{
    struct ts_task_service *svc;
    int err;

    if (cfg->workers == 0 || cfg->log_events == 0 || cfg->retention_ns < 0 || metrics == NULL)
        return -EINVAL;
    svc = calloc(1, sizeof(*svc));
    if (svc == NULL)
        return -ENOMEM;
    svc->cfg = *cfg;
    atomic_init(&svc->log_bytes, 0);
    atomic_init(&svc->unstored, 0);
    svc->drain = drain;
    svc->clock = clock;
    svc->log = log;
    svc->workers = calloc(cfg->workers, sizeof(*svc->workers));
    if (svc->workers == NULL) {
        err = -ENOMEM;
        goto out_free_svc;
    }
    err = -pthread_mutex_init(&svc->mu, NULL);
    if (err != 0)
        goto out_free_workers;
    err = ts_cond_init(&svc->work_cv);
    if (err != 0)
        goto out_destroy_mu;
    err = ts_cond_init(&svc->idle_cv);
    if (err != 0)
        goto out_destroy_work_cv;
    err = ts_cond_init(&svc->cleanup_cv);
    if (err != 0)
        goto out_destroy_idle_cv;
    /* Last: the registry cannot take a family back. */
    err = register_metrics(svc, metrics);
    if (err != 0)
        goto out_destroy_cleanup_cv;
    *out = svc;
    return 0;

out_destroy_cleanup_cv:
    pthread_cond_destroy(&svc->cleanup_cv);
out_destroy_idle_cv:
    pthread_cond_destroy(&svc->idle_cv);
out_destroy_work_cv:
    pthread_cond_destroy(&svc->work_cv);
out_destroy_mu:
    pthread_mutex_destroy(&svc->mu);
out_free_workers:
    free(svc->workers);
out_free_svc:
    free(svc);
    return err;
}

/* svc->mu held. */
static int
add_kind_locked(struct ts_task_service *svc, const struct ts_task_kind *kind)
{
    struct kind_entry *e, **kinds;

    e = calloc(1, sizeof(*e));
    if (e == NULL)
        return -ENOMEM;
    e->copy = *kind;
    e->copy.name = strdup(kind->name);
    if (e->copy.name == NULL)
        goto out_free_entry;
    e->kind = &e->copy;
    /* Every series exists from the start, so a scrape shows zeros rather
     * than nothing for a kind that has not run yet. */
    e->submitted = ts_family_series(svc->submitted, (const char *const[]){kind->name});
    if (e->submitted == NULL)
        goto out_free_entry;
    for (size_t s = 0; s < TS_ARRAY_SIZE(e->finished); s++) {
        e->finished[s] =
            ts_family_series(svc->finished, (const char *const[]){kind->name, status_names[s]});
        if (e->finished[s] == NULL)
            goto out_free_entry;
    }
    kinds = realloc(svc->kinds, (svc->nkinds + 1) * sizeof(*kinds));
    if (kinds == NULL)
        goto out_free_entry;
    kinds[svc->nkinds++] = e;
    svc->kinds = kinds;
    return 0;

out_free_entry:
    free((char *)e->copy.name);
    free(e);
    return -ENOMEM;
}

int
ts_task_service_register(struct ts_task_service *svc, const struct ts_task_kind *kind)
{
    int err;

    if (kind == NULL || kind->run == NULL || !kind_name_valid(kind->name))
        return -EINVAL;
    pthread_mutex_lock(&svc->mu);
    if (svc->started)
        err = -EBUSY;
    else if (find_kind_locked(svc, kind->name) != NULL)
        err = -EEXIST;
    else
        err = add_kind_locked(svc, kind);
    pthread_mutex_unlock(&svc->mu);
    return err;
}

/* Stop and join every thread, except workers left to a run() that never
 * returned. */
static void
stop_threads(struct ts_task_service *svc)
{
    pthread_mutex_lock(&svc->mu);
    svc->stopping = true;
    pthread_cond_broadcast(&svc->work_cv);
    pthread_cond_broadcast(&svc->cleanup_cv);
    pthread_mutex_unlock(&svc->mu);
    for (unsigned i = 0; i < svc->nthreads; i++) {
        if (svc->workers[i].detach)
            pthread_detach(svc->workers[i].thread);
        else
            pthread_join(svc->workers[i].thread, NULL);
    }
    svc->nthreads = 0;
    if (svc->cleanup_started)
        pthread_join(svc->cleanup_thread, NULL);
    svc->cleanup_started = false;
}

int
ts_task_service_start(struct ts_task_service *svc)
{
    int err;

    pthread_mutex_lock(&svc->mu);
    err = svc->started ? -EALREADY : 0;
    svc->started = true;
    pthread_mutex_unlock(&svc->mu);
    if (err != 0)
        return err;

    err = -pthread_create(&svc->cleanup_thread, NULL, cleanup_main, svc);
    if (err != 0)
        return err;
    svc->cleanup_started = true;
    for (unsigned i = 0; i < svc->cfg.workers; i++) {
        svc->workers[i].svc = svc;
        err = -pthread_create(&svc->workers[i].thread, NULL, worker_main, &svc->workers[i]);
        if (err != 0)
            goto out_stop_threads;
        svc->nthreads++;
    }
    return 0;

out_stop_threads:
    stop_threads(svc);
    return err;
}

/* svc->mu held. Queued tasks end at once; running ones see their flag. */
static uint64_t
cancel_all_locked(struct ts_task_service *svc, const char *reason)
{
    struct ts_task *t;
    uint64_t n = 0;

    for (t = svc->queue_head; t != NULL; t = svc->queue_head) {
        queue_remove_locked(svc, t);
        request_cancel(t, reason);
        end_task_locked(svc, t, &cancelled_result);
        log_finished(svc, t);
        n++;
    }
    for (unsigned i = 0; i < svc->cfg.workers; i++) {
        t = svc->workers[i].current;
        if (t == NULL || t->abandoned || !request_cancel(t, reason))
            continue;
        ts_log(svc->log, TS_LOG_WARN, "cancelling running task", TS_F_STR("task_id", t->id),
               TS_F_STR("kind", t->kind->name), TS_F_STR("reason", reason), TS_F_END);
        n++;
    }
    ts_series_add(svc->forced, n);
    return n;
}

void
ts_task_service_free(struct ts_task_service *svc)
{
    struct ts_task *t, *tmp;
    struct worker *w;

    if (svc == NULL)
        return;
    pthread_mutex_lock(&svc->mu);
    cancel_all_locked(svc, "shutdown");
    /*
     * A worker whose abandoned task is still in run() cannot be joined: a C
     * function that ignores cancellation cannot be stopped from outside. Its
     * thread is detached and the task is left to it, with the worker's
     * reference: freed if run() ever returns, deliberately leaked if not.
     * `orphaned` tells the worker the service is gone.
     */
    for (unsigned i = 0; i < svc->cfg.workers; i++) {
        w = &svc->workers[i];
        t = w->current;
        if (t == NULL || !t->abandoned)
            continue;
        pthread_mutex_lock(&t->mu);
        if (!t->returned) {
            t->orphaned = true;
            w->detach = true;
        }
        pthread_mutex_unlock(&t->mu);
    }
    pthread_mutex_unlock(&svc->mu);
    stop_threads(svc);

    HASH_ITER(hh, svc->by_id, t, tmp) {
        HASH_DEL(svc->by_id, t);
        ts_task_unref(t);
    }
    for (size_t i = 0; i < svc->nkinds; i++) {
        free((char *)svc->kinds[i]->copy.name);
        free(svc->kinds[i]);
    }
    free(svc->kinds);
    pthread_cond_destroy(&svc->cleanup_cv);
    pthread_cond_destroy(&svc->idle_cv);
    pthread_cond_destroy(&svc->work_cv);
    pthread_mutex_destroy(&svc->mu);
    free(svc->workers);
    free(svc);
}

/* ---- what run() calls ---- */

const json_t *
ts_task_params(const struct ts_task_ctx *ctx)
{
    return ctx->task->params;
}

const char *
ts_task_id(const struct ts_task_ctx *ctx)
{
    return ctx->task->id;
}

/* An event joins the local log once the store has it, unless the echo of
 * the store's publication came first with the same bytes. Task lock held. */
static void
push_own_locked(struct ts_task *t, struct ts_event *ev)
{
    if (ev->id < t->log.next_id) {
        ts_event_unref(ev);
        return;
    }
    if (ev->id > t->log.next_id)
        ts_event_log_restart(&t->log, ev->id);
    ts_event_log_push(&t->log, ev);
    count_bytes_locked(t);
    wake_waiters_locked(t);
}

/* The store could not be reached (Redis down, a timeout): worth keeping
 * the event and trying again, unlike a refusal. */
static bool
store_unavailable(int err)
{
    return err == -ENOTCONN || err == -EIO || err == -ETIMEDOUT;
}

/* Forget the events kept for the store (they are another attempt's). */
static void
drop_unstored(struct ts_task *t)
{
    for (size_t i = 0; i < t->nunstored; i++) {
        ts_event_unref(t->unstored[i].ev);
        free(t->unstored[i].checkpoint);
    }
    if (t->nunstored > 0)
        atomic_fetch_sub(t->unstored_total, t->nunstored);
    t->nunstored = 0;
}

/* Store the events kept while the store was unavailable, oldest first. 0
 * when none is left; the first error otherwise (-ESTALE: the task is not
 * ours any more). Worker thread. */
static int
flush_unstored(struct ts_task *t)
{
    size_t done = 0;
    int err = 0;

    while (done < t->nunstored) {
        struct unstored *u = &t->unstored[done];

        err = t->store->append(t->store->arg, t, u->ev, u->checkpoint);
        if (err != 0)
            break;
        ts_event_unref(u->ev);
        free(u->checkpoint);
        done++;
    }
    if (done > 0) {
        memmove(t->unstored, t->unstored + done, (t->nunstored - done) * sizeof(*t->unstored));
        pthread_mutex_lock(&t->mu); /* the count is read by ts_task_stored_last() */
        t->nunstored -= done;
        pthread_mutex_unlock(&t->mu);
        atomic_fetch_sub(t->unstored_total, done);
    }
    return err;
}

/*
 * The store is unavailable: `ev` joins the local log anyway (this
 * replica's readers go on) and waits, with its checkpoint, for the next
 * flush. At most the log's capacity waits: past it an unstored event would
 * be evicted here before anyone stored it, so the emit fails instead
 * (-ENOSPC) and the task with it. Takes *checkpoint. Worker thread.
 */
static int
keep_unstored(struct ts_task *t, struct ts_event *ev, char **checkpoint)
{
    struct unstored *grown;

    if (t->nunstored >= t->log.events_max)
        return -ENOSPC;
    grown = realloc(t->unstored, (t->nunstored + 1) * sizeof(*grown));
    if (grown == NULL)
        return -ENOMEM;
    t->unstored = grown;
    t->unstored[t->nunstored].ev = ts_event_ref(ev);
    t->unstored[t->nunstored].checkpoint = *checkpoint;
    *checkpoint = NULL;
    pthread_mutex_lock(&t->mu);
    t->nunstored++;
    pthread_mutex_unlock(&t->mu);
    atomic_fetch_add(t->unstored_total, 1);
    return 0;
}

/* ts_task_emit() in cluster mode; takes `text`. */
static int
emit_stored(struct ts_task *t, const char *event, char *text)
{
    struct ts_event *ev = NULL;
    char *checkpoint;
    uint64_t id;
    int err = 0;

    pthread_mutex_lock(&t->mu);
    if (t->state == TS_TASK_DONE)
        err = -ECANCELED;
    else if (t->lost)
        err = -ESTALE;
    id = t->next_seq;
    checkpoint = t->checkpoint_out;
    t->checkpoint_out = NULL;
    pthread_mutex_unlock(&t->mu);
    if (err == 0) {
        ev = ts_event_new(id, event, text, strlen(text));
        err = ev != NULL ? flush_unstored(t) : -ENOMEM;
        if (err == 0)
            err = t->store->append(t->store->arg, t, ev, checkpoint);
        if (store_unavailable(err))
            err = keep_unstored(t, ev, &checkpoint);
    }
    free(text);
    if (err != 0 && checkpoint != NULL) {
        /* Not stored: it goes with the next event, unless a newer came. */
        pthread_mutex_lock(&t->mu);
        if (t->checkpoint_out == NULL) {
            t->checkpoint_out = checkpoint;
            checkpoint = NULL;
        }
        pthread_mutex_unlock(&t->mu);
    }
    free(checkpoint);
    if (err == -ESTALE)
        ts_task_give_up(t);
    if (err != 0) {
        ts_event_unref(ev);
        return err;
    }
    pthread_mutex_lock(&t->mu);
    t->next_seq = id + 1;
    push_own_locked(t, ev);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

int
ts_task_emit(struct ts_task_ctx *ctx, const char *event, json_t *data)
{
    struct ts_task *t = ctx->task;
    char *text;
    int err = 0;

    if (data == NULL)
        return -EINVAL;
    text = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(data);
    if (!ts_event_name_valid(event) || event_name_reserved(event)) {
        free(text);
        return -EINVAL;
    }
    if (text == NULL)
        return -ENOMEM;

    if (t->store != NULL)
        return emit_stored(t, event, text);
    pthread_mutex_lock(&t->mu);
    if (t->state == TS_TASK_DONE)
        err = -ECANCELED; /* abandoned: "end" must stay the last event */
    else if (ts_event_log_append(&t->log, event, text, strlen(text)) == 0)
        err = -ENOMEM;
    else {
        count_bytes_locked(t);
        wake_waiters_locked(t);
    }
    pthread_mutex_unlock(&t->mu);
    free(text);
    return err;
}

int
ts_task_checkpoint(struct ts_task_ctx *ctx, json_t *state)
{
    struct ts_task *t = ctx->task;
    char *text;

    if (state == NULL)
        return -EINVAL;
    text = json_dumps(state, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(state);
    if (text == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&t->mu);
    free(t->checkpoint_out);
    t->checkpoint_out = text;
    pthread_mutex_unlock(&t->mu);
    return 0;
}

const json_t *
ts_task_checkpoint_get(const struct ts_task_ctx *ctx)
{
    return ctx->task->checkpoint_in;
}

bool
ts_task_cancelled(const struct ts_task_ctx *ctx)
{
    return atomic_load(&ctx->task->cancel);
}

int
ts_task_cancel_fd(struct ts_task_ctx *ctx)
{
    struct ts_task *t = ctx->task;
    int fd;

    pthread_mutex_lock(&t->mu);
    if (t->cancel_fd < 0) {
        fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0) {
            fd = -errno;
            goto out_unlock;
        }
        /* Raised before anyone asked: readable from the start. */
        if (atomic_load(&t->cancel))
            eventfd_write(fd, 1);
        t->cancel_fd = fd;
    }
    fd = t->cancel_fd;
out_unlock:
    pthread_mutex_unlock(&t->mu);
    return fd;
}

bool
ts_task_sleep_ms(struct ts_task_ctx *ctx, int64_t ms)
{
    struct ts_task *t = ctx->task;
    int64_t deadline;
    bool cancelled;

    if (ms <= 0)
        return ts_task_cancelled(ctx);
    deadline = add_ns(ts_clock_now_ns(&ctx->clock),
                      ms > TS_NO_DEADLINE / TS_NS_PER_MS ? TS_NO_DEADLINE : ms * TS_NS_PER_MS);
    pthread_mutex_lock(&t->mu);
    while (!atomic_load(&t->cancel)) {
        if (ts_clock_wait(&ctx->clock, &t->sleep_cv, &t->mu, deadline) == ETIMEDOUT)
            break;
    }
    cancelled = atomic_load(&t->cancel);
    pthread_mutex_unlock(&t->mu);
    return cancelled;
}

/* ---- JSON ---- */

/* What the task was asked to do: "params", the body without "kind"; for a
 * command task "command" and its "params". Immutable, so no lock. */
void
ts_task_request_json(json_t *o, const char *kind, const json_t *body)
{
    const json_t *command = json_object_get(body, "command");
    json_t *params;

    if (strcmp(kind, "command") == 0 && json_is_string(command)) {
        json_object_set(o, "command", (json_t *)command);
        params = json_object_get(body, "params");
        json_object_set_new(o, "params", params != NULL ? json_incref(params) : json_object());
        return;
    }
    params = json_copy((json_t *)body); /* shallow: the values are shared, read-only */
    if (params != NULL)
        json_object_del(params, "kind");
    json_object_set_new(o, "params", params != NULL ? params : json_object());
}

static void
add_request_json(json_t *o, const struct ts_task *t)
{
    ts_task_request_json(o, t->kind->name, t->params);
    if (t->sub != NULL)
        json_object_set_new(o, "submitted_by", json_string(t->sub));
}

json_t *
ts_task_to_json(struct ts_task *t)
{
    static const char *const state_names[] = {
        [TS_TASK_QUEUED] = "queued",
        [TS_TASK_RUNNING] = "running",
    };
    bool done;
    json_t *o;

    pthread_mutex_lock(&t->mu);
    done = t->state == TS_TASK_DONE;
    /* "o?" makes a NULL (not done yet, or out of memory) a JSON null. One
     * key per line: */
    /* clang-format off */
    o = json_pack("{s:s, s:s, s:s, s:o?, s:o?, s:o?, s:o?, s:o?, s:o?, s:I}",
                  "id", t->id,
                  "kind", t->kind->name,
                  "state", done ? status_names[t->status] : state_names[t->state],
                  "created_at", json_time(t->created_wall_ns),
                  "started_at", json_time(t->started_wall_ns),
                  "finished_at", json_time(t->finished_wall_ns),
                  "reason", done && t->reason != NULL ? json_string(t->reason) : NULL,
                  "exit_code", done ? json_integer(t->exit_code) : NULL,
                  "signal", done && t->signal != 0 ? json_integer(t->signal) : NULL,
                  "events", (json_int_t)ts_event_log_last_id(&t->log));
    /* clang-format on */
    pthread_mutex_unlock(&t->mu);
    if (o != NULL)
        add_request_json(o, t);
    return o;
}

/* The public state of a task, as a bit of TS_TASK_STATE_* masks. */
static unsigned
state_bit(struct ts_task *t)
{
    unsigned bit;

    pthread_mutex_lock(&t->mu);
    bit = t->state != TS_TASK_DONE ? 1u << t->state : 1u << (2 + t->status);
    pthread_mutex_unlock(&t->mu);
    return bit;
}

int
ts_task_parse_states(const char *text, unsigned *out)
{
    static const char *const names[] = {"queued", "running", "succeeded", "failed", "cancelled"};
    unsigned mask = 0;
    const char *p = text;

    for (;;) {
        size_t len = strcspn(p, ",");
        size_t i;

        for (i = 0; i < TS_ARRAY_SIZE(names); i++)
            if (strlen(names[i]) == len && strncmp(p, names[i], len) == 0)
                break;
        if (i == TS_ARRAY_SIZE(names))
            return -EINVAL;
        mask |= 1u << i;
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
    *out = mask;
    return 0;
}

json_t *
ts_task_service_list(struct ts_task_service *svc, unsigned states, const char *sub, size_t limit)
{
    struct ts_task *t;
    json_t *list;

    list = json_array();
    if (list == NULL)
        return NULL;
    pthread_mutex_lock(&svc->mu);
    for (t = svc->newest; t != NULL && json_array_size(list) < limit; t = t->older) {
        if (states != 0 && (state_bit(t) & states) == 0)
            continue;
        if (sub != NULL && (t->sub == NULL || strcmp(t->sub, sub) != 0))
            continue;
        if (json_array_append_new(list, ts_task_to_json(t)) != 0) {
            json_decref(list);
            list = NULL;
            break;
        }
    }
    pthread_mutex_unlock(&svc->mu);
    return list;
}

void
ts_task_service_wake_all(struct ts_task_service *svc)
{
    struct ts_task *t;

    pthread_mutex_lock(&svc->mu);
    DL_FOREACH2(svc->newest, t, older) {
        pthread_mutex_lock(&t->mu);
        wake_waiters_locked(t);
        pthread_mutex_unlock(&t->mu);
    }
    pthread_mutex_unlock(&svc->mu);
}

/* ---- the shutdown sequence ---- */

unsigned
ts_task_service_active(struct ts_task_service *svc)
{
    unsigned n;

    pthread_mutex_lock(&svc->mu);
    n = svc->nqueued + svc->nrunning;
    pthread_mutex_unlock(&svc->mu);
    return n;
}

int
ts_task_service_wait_idle(struct ts_task_service *svc, int64_t until_ns)
{
    int err;

    pthread_mutex_lock(&svc->mu);
    for (;;) {
        if (svc->interrupted) {
            svc->interrupted = false;
            err = -EINTR;
            break;
        }
        if (svc->nqueued + svc->nrunning == 0) {
            err = 0;
            break;
        }
        if (wait_until(svc, &svc->idle_cv, until_ns) == ETIMEDOUT) {
            err = -ETIMEDOUT;
            break;
        }
    }
    pthread_mutex_unlock(&svc->mu);
    return err;
}

void
ts_task_service_interrupt(struct ts_task_service *svc)
{
    pthread_mutex_lock(&svc->mu);
    svc->interrupted = true;
    pthread_cond_broadcast(&svc->idle_cv);
    pthread_mutex_unlock(&svc->mu);
}

uint64_t
ts_task_service_cancel_all(struct ts_task_service *svc, const char *reason)
{
    uint64_t n;

    pthread_mutex_lock(&svc->mu);
    n = cancel_all_locked(svc, reason);
    pthread_mutex_unlock(&svc->mu);
    return n;
}

uint64_t
ts_task_service_finish(struct ts_task_service *svc, int64_t until_ns)
{
    struct ts_task *t;
    uint64_t n = 0;

    pthread_mutex_lock(&svc->mu);
    while (svc->nrunning > 0) {
        if (wait_until(svc, &svc->idle_cv, until_ns) == ETIMEDOUT)
            break;
    }
    for (unsigned i = 0; i < svc->cfg.workers; i++) {
        t = svc->workers[i].current;
        if (t == NULL || t->abandoned)
            continue;
        /* Normally raised by cancel_all() already, with its reason. */
        request_cancel(t, "shutdown");
        t->abandoned = true;
        end_task_locked(svc, t, &cancelled_result);
        ts_log(svc->log, TS_LOG_WARN, "task abandoned: its run() ignored cancellation",
               TS_F_STR("task_id", t->id), TS_F_STR("kind", t->kind->name), TS_F_END);
        n++;
    }
    pthread_mutex_unlock(&svc->mu);
    return n;
}
