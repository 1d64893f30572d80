/*
 * Following a task's event stream to its end, across reconnects: the
 * client's EventSource. Single-threaded; the interrupt flag is the only
 * thing another context (a signal handler) touches.
 */
#ifndef TSC_FOLLOW_H
#define TSC_FOLLOW_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "client.h"

struct tsc_follow_opts {
    bool json;                    /* one JSON object a line per event, on stdout */
    bool quiet;                   /* no notes on stderr (reconnects, the end) */
    const char *last_event_id;    /* start right after this id, or NULL: from the start */
    int64_t reconnect_timeout_ms; /* give up after this long without getting anywhere */
    int64_t max_backoff_ms;       /* the longest wait between two attempts */
};

/* Follow task `id` until its `end` event (or, on a 204 answer, until its
 * final state is read) and return the exit status that stands for it (see
 * tsc_exit_status_of), or a TSC_EXIT_* code for an error, already reported.
 * Returns TSC_EXIT_INTERRUPTED soon after *interrupted becomes nonzero. */
int tsc_follow(struct tsc_client *c, const char *id, const struct tsc_follow_opts *o,
               volatile sig_atomic_t *interrupted);

/* The exit status for a finished task: `o` is an `end` event's data
 * ("status") or a task's JSON ("state"). succeeded: 0; cancelled:
 * TSC_EXIT_CANCELLED; failed: its exit_code when 1..255, else 128 + its
 * signal when it died of one, else TSC_EXIT_FAILED. -1 when `o` says the
 * task has not finished. */
int tsc_exit_status_of(const json_t *o);

#endif
