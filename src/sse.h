/*
 * Server-Sent Event streams: one per GET /v1/tasks/{id}/events, each a
 * cursor into its task's event log, written by the front (http.h).
 */
#ifndef TS_SSE_H
#define TS_SSE_H

#include <stdint.h>

#include "clock.h"
#include "drain.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "task.h"

struct ts_sse;

struct ts_sse_config {
    struct ts_task_service *tasks;
    struct ts_drain_view drain;
    struct ts_clock clock;
    struct ts_metrics *metrics;
    struct ts_log *log;
    int64_t heartbeat_ns;
    unsigned retry_ms;
    /* Optional, called on the loop thread when a stream opened by
     * ts_sse_open() closes (cluster mode: its follow loses a reader). */
    void (*stream_closed)(void *arg, struct ts_task *task);
    void *hook_arg;
};

/* Registers sse_* metrics and subscribes to the drain view (to send each
 * stream its "draining" notice). Dependencies are borrowed. */
int ts_sse_new(struct ts_sse **out, const struct ts_sse_config *cfg);
void ts_sse_free(struct ts_sse *sse);

/*
 * Answer a stream request for `task`. `last_id` is the client's
 * Last-Event-ID (has_last_id false: none or unparsable). 204 when the client
 * has already seen the task's "end" (it stops EventSource from
 * reconnecting), else the stream, holding a task reference until it ends.
 * The handler's loop thread. True when a stream was opened (its close is
 * reported to stream_closed), false when the request was answered otherwise.
 */
bool ts_sse_open(struct ts_sse *sse, struct ts_http_request *req, struct ts_task *task,
                 bool has_last_id, uint64_t last_id);

/* How long a stream may stay silent before it writes a heartbeat comment:
 * the front's stream_quiet_ns. */
int64_t ts_sse_quiet_ns(const struct ts_sse *sse);

/* End every stream now, even mid-task (the last step of a shutdown, after the
 * flush bound). */
void ts_sse_close_all(struct ts_sse *sse);

/* Block until no stream is open (0) or `until_ns` passes (-ETIMEDOUT). */
int ts_sse_wait_idle(struct ts_sse *sse, int64_t until_ns);

/* Streams open. Any thread. */
unsigned ts_sse_active(struct ts_sse *sse);

#endif
