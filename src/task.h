/*
 * The task service: a registry of task kinds, the tasks themselves (a hash
 * by id), a bounded queue, a pool of worker threads, and a cleanup thread
 * that forgets finished tasks after the retention time.
 *
 * Lifecycle: queued -> running -> succeeded | failed | cancelled. A task
 * cancelled while queued never runs. Every task ends with an "end" event
 * {"status": ..., "reason": ..., "exit_code": ...} appended by the service,
 * after which its event log is closed.
 *
 * Locks: svc->mu guards the registry, the queue and the counters; each task's
 * own mutex guards its state, its event log and its waiters. Order: svc->mu
 * before a task's mutex, never the reverse. Workers never touch sockets: they
 * append to the log and call each waiter's wake() under the task's lock.
 *
 * The service reacts to draining (submissions are refused) and never sets it.
 */
#ifndef TS_TASK_H
#define TS_TASK_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "clock.h"
#include "drain.h"
#include "event_log.h"
#include "log.h"
#include "metrics.h"
#include "taskstream.h"

struct ts_task_service;
struct ts_task;

enum ts_task_state {
    TS_TASK_QUEUED,
    TS_TASK_RUNNING,
    TS_TASK_DONE, /* see the status in ts_task_info */
};

struct ts_task_service_config {
    unsigned workers;
    unsigned max_queued;
    int64_t retention_ns;
    size_t log_events;
    size_t log_bytes;
    size_t retained_bytes; /* all tasks' logs; 0: no cap */
};

/* Registers its metrics in `metrics` (tasks_running, tasks_queued,
 * tasks_finished_total{kind,status}, task_forced_cancellations_total). All
 * dependencies are borrowed and must outlive the service. */
int ts_task_service_new(struct ts_task_service **out, const struct ts_task_service_config *cfg,
                        struct ts_drain_view drain, struct ts_clock clock,
                        struct ts_metrics *metrics, struct ts_log *log);

/* Before start only (-EBUSY after). -EEXIST for a taken name, -EINVAL for a
 * bad one ([a-z0-9_-]{1,64}). */
int ts_task_service_register(struct ts_task_service *svc, const struct ts_task_kind *kind);

/* Start workers and the cleanup thread. */
int ts_task_service_start(struct ts_task_service *svc);

/* Stop threads and free everything. Tasks still queued or running are
 * cancelled first and their workers joined; call ts_task_service_finish()
 * before this if run() may not return. */
void ts_task_service_free(struct ts_task_service *svc);

/*
 * Submit a task from a request body (an object with "kind"). On success
 * returns 0 and a new reference in *out. Errors, with a sentence in `err`:
 * -ESHUTDOWN draining, -ENOENT unknown kind (or the kind's validate said so),
 * -EINVAL invalid parameters (422), -EAGAIN queue full (429), -ENOSPC the
 * running tasks hold retained_bytes (503), -ENOMEM. `sub` (NULL: none) is
 * recorded as who submitted it.
 */
int ts_task_submit(struct ts_task_service *svc, const json_t *body, const char *sub,
                   struct ts_task **out, char *err, size_t errlen);

/* Look a task up by id: a new reference, or NULL. Any thread. */
struct ts_task *ts_task_find(struct ts_task_service *svc, const char *id);

struct ts_task *ts_task_ref(struct ts_task *t);
void ts_task_unref(struct ts_task *t);

const char *ts_task_get_id(const struct ts_task *t);
/* Who submitted it (ts_task_submit()'s `sub`), or NULL. */
const char *ts_task_submitter(const struct ts_task *t);

/* Ask a task to stop (reason "client"). 0: cancelled (a queued task ends at
 * once, a running one sees its flag); -EALREADY: already finished. */
int ts_task_cancel(struct ts_task_service *svc, struct ts_task *t);

/* The task as JSON: id, kind, params (the request without "kind"; for a
 * command task: command and its params), state ("queued", "running", "succeeded",
 * "failed", "cancelled"), created_at/started_at/finished_at (RFC 3339 UTC or
 * null), reason, exit_code, signal, events (last event id), submitted_by
 * (when known). New reference. */
json_t *ts_task_to_json(struct ts_task *t);

/* Add what a task was asked to do to `o`: "params" (the body without
 * "kind"), or for a command task "command" and its "params". */
void ts_task_request_json(json_t *o, const char *kind, const json_t *body);

/* Known tasks, newest first, as a JSON array: at most `limit`, only those
 * whose state is in `states` (a mask from ts_task_parse_states(); 0: all)
 * and, unless `sub` is NULL, that `sub` submitted. New reference. */
json_t *ts_task_service_list(struct ts_task_service *svc, unsigned states, const char *sub,
                             size_t limit);

/* "running,queued" -> a mask of states for ts_task_service_list(): queued,
 * running, succeeded, failed, cancelled. 0 or -EINVAL. */
int ts_task_parse_states(const char *text, unsigned *out);

/* ---- for SSE streams ---- */

/*
 * A reader waiting for a task's next event. wake() is called once, with the
 * task's lock held, when an event is appended, when the task ends, or from
 * ts_task_service_wake_all(); the waiter is removed from the list before the
 * call. wake() must not block nor take the task's lock.
 */
struct ts_task_waiter {
    struct ts_task_waiter *prev, *next; /* utlist, valid only while linked; task lock */
    void (*wake)(struct ts_task_waiter *w);
    bool linked; /* in the task's list; task lock */
};

void ts_task_lock(struct ts_task *t);
void ts_task_unlock(struct ts_task *t);

/* The task's event log. Task lock held. */
const struct ts_event_log *ts_task_log_locked(const struct ts_task *t);

/* True once the "end" event is in the log (nothing more will be appended).
 * Task lock held. */
bool ts_task_ended_locked(const struct ts_task *t);

/* Id of the task's "end" event, 0 while it runs. Task lock held. */
uint64_t ts_task_end_id_locked(const struct ts_task *t);

/* Add / remove a waiter. Task lock held. Removing an unlinked waiter is a
 * no-op. */
void ts_task_wait_locked(struct ts_task *t, struct ts_task_waiter *w);
void ts_task_unwait_locked(struct ts_task *t, struct ts_task_waiter *w);

/* Wake every waiter of every task (heartbeats, the draining notice). */
void ts_task_service_wake_all(struct ts_task_service *svc);

/* ---- cluster mode (cluster.c): the store and the local cache ---- */

/*
 * Where events are kept besides the local log. With a store, ts_task_emit()
 * encodes each event with the task's next id and hands it to append() before
 * it joins the local log, and a task's end goes to end() before its readers
 * here see it; both are called on the task's worker thread with no lock
 * held. They return 0, -ESTALE when another replica owns the task now (it is
 * given up here: its run() is told to stop, its log becomes a cache of the
 * new owner's events), or another negative errno (not stored).
 * worker_free() is called, without locks, each time a worker becomes free.
 */
struct ts_task_store {
    /* `checkpoint`: JSON text stored with the event, or NULL. */
    int (*append)(void *arg, struct ts_task *t, const struct ts_event *ev, const char *checkpoint);
    int (*end)(void *arg, struct ts_task *t, const struct ts_event *ev, const char *status,
               const char *reason, const struct ts_task_result *res);
    /* Hand the task back for another replica to resume (a drain's end). */
    int (*release)(void *arg, struct ts_task *t, const char *checkpoint);
    void (*worker_free)(void *arg);
    void *arg;
};

/* Before start only. The store must outlive the service. */
void ts_task_service_set_store(struct ts_task_service *svc, const struct ts_task_store *store);

/* The checks of ts_task_submit() but draining: body, kind, validate(). 0,
 * -EINVAL, -ENOENT, with a sentence in `err`. Counts the submission in
 * tasks_submitted_total{kind} when `count` is true and it passes. */
int ts_task_validate(struct ts_task_service *svc, const json_t *body, bool count, char *err,
                     size_t errlen);

/*
 * The local cache of a task that is not running here (a "mirror"): a
 * registry entry without a run(), whose log the store fills. Returns a new
 * reference to the entry with that id, made if there is none (*created).
 * NULL on out of memory or an invalid id.
 */
struct ts_task *ts_task_mirror(struct ts_task_service *svc, const char *id, bool *created);

/* Add `ev` (the caller's reference is taken) to a mirror's log; `is_end`
 * marks its last event, which ends the mirror. 0: added; 1: not needed (an
 * id it has, a task running here, an ended mirror); -ERANGE: the event comes
 * after a hole (fetch from next_id first, see ts_task_next_id). */
int ts_task_mirror_push(struct ts_task_service *svc, struct ts_task *t, struct ts_event *ev,
                        bool is_end);

/* The id a mirror's next event must have. */
uint64_t ts_task_next_id(struct ts_task *t);

/* A mirror whose store has nothing before `next_id` any more: forget what it
 * holds and go on from there (readers behind get a gap). */
void ts_task_mirror_restart(struct ts_task *t, uint64_t next_id);

/* The attempt a task runs as here (cluster mode), 0 otherwise. */
unsigned ts_task_attempt(struct ts_task *t);

/* True for a mirror (nothing runs it here). */
bool ts_task_is_mirror(struct ts_task *t);

/*
 * Run a mirror here: this replica claimed it in the store as `attempt`, its
 * log holds everything the store has (the next event gets next_id). It is
 * queued for an idle worker. A later attempt of a resumable task gets its
 * `checkpoint` (a reference is taken; may be NULL) and emits `resumed` (JSON
 * text; NULL on a first attempt) before its run() starts. -EBUSY: no idle
 * worker; -ENOENT: unknown kind; -EALREADY: not a mirror, or ended;
 * -ESHUTDOWN: the service stops.
 */
int ts_task_adopt(struct ts_task_service *svc, struct ts_task *t, const json_t *body,
                  unsigned attempt, json_t *checkpoint, const char *resumed);

/* Does the kind of `body` resume on another replica (ts_task_kind's
 * resumable)? False for an unknown kind. */
bool ts_task_service_resumable(struct ts_task_service *svc, const json_t *body);

/* The end of a drain in cluster mode: ask every running resumable task to
 * stop and hand it back to the store instead of ending it. Returns how
 * many; ts_task_service_cancel_all() then cancels the rest. */
uint64_t ts_task_service_hand_off(struct ts_task_service *svc);

/* The last step of a drain in cluster mode: every mirror is treated as
 * handed off, so the streams of tasks running elsewhere end here too (their
 * clients resume on another replica) instead of being cut at the flush
 * bound. */
void ts_task_service_detach_mirrors(struct ts_task_service *svc);

/* For putting a running task back into a store that lost it (Redis
 * restarted without its data): the id of its last stored event, its
 * request body (a new reference), its creation and start (ms since the
 * epoch). */
uint64_t ts_task_stored_last(struct ts_task *t, json_t **body, int64_t *created_ms,
                             int64_t *started_ms);

/* New references to the events of `t`'s log with ids from..to that it
 * still holds, in order, at most `max`. Returns how many. */
size_t ts_task_events(struct ts_task *t, uint64_t from, uint64_t to, struct ts_event **out,
                      size_t max);

/* Take a mirror that is not ended out of the registry (nothing will keep
 * it up to date: its follow went); those holding a reference keep it. */
void ts_task_forget_mirror(struct ts_task_service *svc, struct ts_task *t);

/* A mirror whose task the store no longer has: its streams here end once
 * they have sent what it holds (a reconnecting client then learns the task
 * is gone). */
void ts_task_mirror_detach(struct ts_task *t);

/* A task handed off from here: its streams here end once they have sent
 * what the log holds (the client resumes elsewhere). Task lock held. */
bool ts_task_handed_off_locked(const struct ts_task *t);

/* Workers neither running nor about to run a task. */
unsigned ts_task_service_idle(struct ts_task_service *svc);

/* The tasks running here with their attempts, as new references, at most
 * `max`. Returns how many. */
size_t ts_task_service_running(struct ts_task_service *svc, struct ts_task **tasks,
                               unsigned *attempts, size_t max);

/* Another replica owns `t` now: tell its run() to stop ("lost"); its end is
 * not stored, and its log becomes a cache. */
void ts_task_give_up(struct ts_task *t);

/* ---- for the shutdown sequence ---- */

/* Tasks queued or running. Any thread. */
unsigned ts_task_service_active(struct ts_task_service *svc);

/* Block until no task is queued or running (0), `until_ns` passes on the
 * service's clock (-ETIMEDOUT), or ts_task_service_interrupt() (-EINTR). */
int ts_task_service_wait_idle(struct ts_task_service *svc, int64_t until_ns);

/* Make current and future ts_task_service_wait_idle() calls return -EINTR
 * until the next wait_idle returns. Any thread, never blocks. */
void ts_task_service_interrupt(struct ts_task_service *svc);

/* Cancel every queued and running task with `reason` (e.g. "shutdown").
 * Returns how many were cancelled. */
uint64_t ts_task_service_cancel_all(struct ts_task_service *svc, const char *reason);

/*
 * After cancel_all: wait until every run() has returned or `until_ns` passes.
 * Tasks whose run() is still going then get their "end" event (cancelled,
 * with the cancel reason) so their streams finish; they are abandoned (their
 * later events are dropped). Returns how many were abandoned.
 */
uint64_t ts_task_service_finish(struct ts_task_service *svc, int64_t until_ns);

/* A descriptor that becomes readable, and stays so, once the task is
 * cancelled: for a run() that waits in poll() on descriptors of its own
 * (command tasks). Created on the first call, closed when run() returns;
 * the caller neither reads nor closes it. Returns the descriptor or a
 * negative errno. Worker thread of this task only, inside run(). */
int ts_task_cancel_fd(struct ts_task_ctx *ctx);

/* The "ticker" kind (ticker.c): count, interval_ms, payload_bytes. */
const struct ts_task_kind *ts_ticker_kind(void);

#endif
