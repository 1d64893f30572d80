/* Reading a task's event log from unit tests (test_task, test_ticker,
 * test_command). Include after <cmocka.h>. */
#ifndef TS_TEST_TASK_HELPERS_H
#define TS_TEST_TASK_HELPERS_H

#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "task.h"

/* Id of the task's newest event. */
static inline uint64_t
last_id(struct ts_task *t)
{
    uint64_t id;

    ts_task_lock(t);
    id = ts_event_log_last_id(ts_task_log_locked(t));
    ts_task_unlock(t);
    return id;
}

/* Event `id`: its name into `name`, its data parsed (a new reference). */
static inline json_t *
event(struct ts_task *t, uint64_t id, char *name, size_t namelen)
{
    const char *ev_line, *data_line, *nl;
    struct ts_event *ev;
    json_error_t jerr;
    json_t *data = NULL;

    ts_task_lock(t);
    ev = ts_event_log_get(ts_task_log_locked(t), id);
    if (ev != NULL) {
        ev_line = strstr(ev->frame, "\nevent: ");
        data_line = strstr(ev->frame, "\ndata: ");
        if (ev_line != NULL && data_line != NULL) {
            ev_line += strlen("\nevent: ");
            snprintf(name, namelen, "%.*s", (int)(strchr(ev_line, '\n') - ev_line), ev_line);
            data_line += strlen("\ndata: ");
            nl = strchr(data_line, '\n');
            data = json_loadb(data_line, (size_t)(nl - data_line), JSON_DECODE_ANY, &jerr);
        }
    }
    ts_task_unlock(t);
    assert_non_null(data);
    return data;
}

#endif
