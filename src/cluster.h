/*
 * Cluster mode: tasks, their events and their owners kept in Redis
 * (docs/cluster.md), so that every replica serves every task.
 *
 * The store fills the local task service's logs, which stay what SSE
 * readers are cursors into (DESIGN.md §10): the owner's worker appends
 * through it (a fenced Lua script, then the local log), and every other
 * replica with readers of a task follows it with one subscription and one
 * backfill, however many readers it has. Request handlers call it in place
 * of the task service for what is global: submit, read, list, cancel.
 *
 * Threads: the claimer (claims queued tasks while this replica is serving
 * and has a free worker, renews the leases of its running tasks, takes over
 * tasks whose lease lapsed) and the subscriber (live events, cancel requests
 * for this replica, the queue's "new task" notices). Both react to the drain
 * view; neither sets it.
 */
#ifndef TS_CLUSTER_H
#define TS_CLUSTER_H

#include <jansson.h>

#include "clock.h"
#include "drain.h"
#include "log.h"
#include "metrics.h"
#include "task.h"

struct ts_cluster;

struct ts_cluster_config {
    const char *url;
    const char *password; /* NULL: the URL's */
    const char *prefix;
    const char *replica; /* NULL: hostname-pid */
    int64_t timeout_ns;
    int64_t lease_ns;
    int64_t retention_ns;
    size_t log_events; /* MAXLEN of each task's stream */
    struct ts_task_service *tasks;
    struct ts_drain_view drain;
    struct ts_clock clock;
    struct ts_metrics *metrics;
    struct ts_log *log;
};

/* Sets the task service's store; nothing connects yet. Before the task
 * service starts. 0, -EINVAL (bad URL), -ENOMEM. */
int ts_cluster_new(struct ts_cluster **out, const struct ts_cluster_config *cfg);
/* Start the claimer and the subscriber. */
int ts_cluster_start(struct ts_cluster *cl);
/* Stop claiming (the first step of a stop). */
void ts_cluster_quiesce(struct ts_cluster *cl);
/* Stop the claimer and the subscriber (before the task service is freed:
 * they call it). The store stays usable for the workers' last ends. */
void ts_cluster_stop(struct ts_cluster *cl);
/* After the task service is freed. */
void ts_cluster_free(struct ts_cluster *cl);

const char *ts_cluster_replica(const struct ts_cluster *cl);

/* Errors of the calls below: -ENOTCONN / -EIO Redis is unavailable (503),
 * -ENOENT no such task, -ENOMEM; others as documented. */

/* Validate and enqueue, recording `sub` (NULL: none) as who submitted it.
 * *out: the task JSON (queued). -EINVAL / -ENOENT (kind) with `err`. */
int ts_cluster_submit(struct ts_cluster *cl, const json_t *body, const char *sub, json_t **out,
                      char *err, size_t errlen);

/* The task as JSON (like ts_task_to_json, with "replica" and "attempt"). */
int ts_cluster_get(struct ts_cluster *cl, const char *id, json_t **out);

/* Newest first, at most `limit`, states as ts_task_parse_states, only
 * those `sub` submitted unless it is NULL; `cursor` (NULL: from the newest)
 * as returned in *next (NULL at the end; free()). */
int ts_cluster_list(struct ts_cluster *cl, unsigned states, const char *sub, size_t limit,
                    const char *cursor, json_t **out, char **next);

/* Cancel from any replica: a queued task ends here at once, a running one
 * is told through its owner. *out: the task JSON after. -EALREADY: it had
 * ended. */
int ts_cluster_cancel(struct ts_cluster *cl, const char *id, json_t **out);

/* The local cache of a task, complete and followed, for a stream: a new
 * reference in *out. Waits (at most twice the Redis timeout) for the first
 * backfill. */
int ts_cluster_follow(struct ts_cluster *cl, const char *id, struct ts_task **out);

/* A reader that ts_cluster_follow() served is gone (its stream closed, or
 * it was answered without one). With no reader left here, the task's
 * subscription goes. Never blocks. */
void ts_cluster_unfollow(struct ts_cluster *cl, const char *id);

#endif
