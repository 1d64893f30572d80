/*
 * The public API's routes (docs/design.md; the stream contract is
 * docs/streams.md): submit, list, read and cancel tasks, list the commands,
 * and follow a task's events over SSE.
 *
 * Handlers translate HTTP to the task service and back, or in cluster mode
 * to the store for what is global (submit, read, list, cancel, the first
 * follow of a task: cluster.h); every error is JSON {"error": code,
 * "message": sentence} and says what is wrong and where. While draining, a
 * single process answers submissions 503 with Retry-After (another instance
 * should take them), while a cluster replica still enqueues them (another
 * replica claims them); everything else keeps working: a client reconnecting
 * to its task must find it. Redis unavailable: 503 store_unavailable.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "command.h"
#include "dashboard.h"
#include "server.h"
#include "util.h"

#define RETRY_AFTER_DRAINING "5"
#define RETRY_AFTER_QUEUE_FULL "1"
#define RETRY_AFTER_STORE "1"

/* Optional API key. Returns true when the request may go on. */
static bool
api_authorized(struct ts_server *srv, struct ts_http_request *req)
{
    if (ts_server_check_key(srv, TS_SERVER_KEY_API, req) != -EACCES)
        return true;
    ts_http_reply_unauthorized(req, "taskstream", "API key");
    return false;
}

static void
reply_with_retry(struct ts_http_request *req, unsigned status, const char *retry_after,
                 const char *code, const char *msg)
{
    ts_http_add_header(req, "Retry-After", retry_after);
    ts_http_reply_error(req, status, code, "%s", msg);
}

/* Cluster mode: the store's errors that are Redis being unavailable. */
static bool
store_down(int rc)
{
    return rc == -ENOTCONN || rc == -EIO || rc == -ETIMEDOUT || rc == -EPROTO;
}

static void
reply_store_down(struct ts_http_request *req)
{
    reply_with_retry(req, 503, RETRY_AFTER_STORE, "store_unavailable",
                     "the task store (Redis) is unavailable; retry shortly");
}

static void
reply_unknown_task(struct ts_http_request *req, const char *id)
{
    ts_http_reply_error(req, 404, "unknown_task",
                        "no task with id \"%.64s\" (ids are 32 lowercase hex digits; "
                        "finished tasks are kept for a while, then forgotten)",
                        id);
}

static bool
is_json_type(const char *ctype)
{
    static const char json[] = "application/json";
    size_t n = sizeof(json) - 1;

    return ctype != NULL && strncasecmp(ctype, json, n) == 0 &&
           (ctype[n] == '\0' || ctype[n] == ';' || ctype[n] == ' ');
}

/* Takes `body`. */
static void
post_task_cluster(struct ts_server *srv, struct ts_http_request *req, json_t *body)
{
    char err[256], location[64];
    json_t *task;
    int rc;

    rc = ts_cluster_submit(srv->cluster, body, &task, err, sizeof(err));
    json_decref(body);
    if (rc == -ENOENT) {
        ts_http_reply_error(req, 404, "unknown_kind", "%s", err);
    } else if (rc == -EINVAL) {
        ts_http_reply_error(req, 422, "invalid_parameters", "%s", err);
    } else if (store_down(rc)) {
        reply_store_down(req);
    } else if (rc != 0) {
        ts_http_reply_error(req, 500, "internal", "cannot create the task: %s", ts_strerror(rc));
    } else {
        snprintf(location, sizeof(location), "/v1/tasks/%s",
                 json_string_value(json_object_get(task, "id")));
        ts_http_add_header(req, "Location", location);
        ts_http_reply_json(req, 202, task);
    }
}

static void
post_task(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;
    struct ts_task *task;
    json_error_t jerr;
    json_t *body;
    const char *text;
    char err[256], location[64];
    size_t len;
    int rc;

    (void)id;
    if (!api_authorized(srv, req))
        return;
    /* In cluster mode a draining replica still enqueues: another claims. */
    if (srv->cluster == NULL && ts_drain_is_draining(&srv->drain)) {
        reply_with_retry(req, 503, RETRY_AFTER_DRAINING, "draining",
                         "the server is draining; retry on another instance");
        return;
    }
    if (!is_json_type(ts_http_header(req, "Content-Type"))) {
        ts_http_reply_error(req, 415, "unsupported_media_type",
                            "send the task as Content-Type: application/json");
        return;
    }
    text = ts_http_body(req, &len);
    body = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL) {
        ts_http_reply_error(req, 400, "invalid_json", "invalid JSON at line %d, column %d: %s",
                            jerr.line, jerr.column, jerr.text);
        return;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        ts_http_reply_error(req, 422, "invalid_task",
                            "the body must be a JSON object with a \"kind\"");
        return;
    }

    if (srv->cluster != NULL) {
        post_task_cluster(srv, req, body);
        return;
    }
    rc = ts_task_submit(srv->tasks, body, &task, err, sizeof(err));
    json_decref(body);
    switch (rc) {
    case 0:
        break;
    case -ESHUTDOWN:
        reply_with_retry(req, 503, RETRY_AFTER_DRAINING, "draining", err);
        return;
    case -EAGAIN:
        reply_with_retry(req, 429, RETRY_AFTER_QUEUE_FULL, "queue_full", err);
        return;
    case -ENOSPC:
        reply_with_retry(req, 503, RETRY_AFTER_QUEUE_FULL, "retained_bytes", err);
        return;
    case -ENOENT:
        ts_http_reply_error(req, 404, "unknown_kind", "%s", err);
        return;
    case -EINVAL:
        ts_http_reply_error(req, 422, "invalid_parameters", "%s", err);
        return;
    default:
        ts_http_reply_error(req, 500, "internal", "cannot create the task: %s", ts_strerror(rc));
        return;
    }

    snprintf(location, sizeof(location), "/v1/tasks/%s", ts_task_get_id(task));
    ts_http_add_header(req, "Location", location);
    ts_http_reply_json(req, 202, ts_task_to_json(task));
    ts_task_unref(task);
}

#define LIST_LIMIT_MAX 10000

/* GET /v1/tasks[?state=running[,queued...]][&limit=N]: newest first. */
static void
get_tasks(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;
    const char *state = ts_http_query(req, "state");
    const char *limit = ts_http_query(req, "limit");
    uint64_t n = LIST_LIMIT_MAX;
    unsigned states = 0;

    (void)id;
    if (!api_authorized(srv, req))
        return;
    if (state != NULL && ts_task_parse_states(state, &states) != 0) {
        ts_http_reply_error(req, 400, "invalid_query",
                            "state must be a comma-separated list of queued, running, "
                            "succeeded, failed, cancelled");
        return;
    }
    if (limit != NULL && ts_parse_uint(limit, 1, LIST_LIMIT_MAX, &n) != 0) {
        ts_http_reply_error(req, 400, "invalid_query", "limit must be a whole number from 1 to %d",
                            LIST_LIMIT_MAX);
        return;
    }
    if (srv->cluster != NULL) {
        const char *cursor = ts_http_query(req, "cursor");
        json_t *list;
        char *next;
        int rc = ts_cluster_list(srv->cluster, states, (size_t)n, cursor, &list, &next);

        if (rc == -EINVAL)
            ts_http_reply_error(req, 400, "invalid_query",
                                "cursor must be a next_cursor of an earlier page");
        else if (rc != 0)
            reply_store_down(req);
        else
            ts_http_reply_json(req, 200,
                               json_pack("{s:o, s:s?}", "tasks", list, "next_cursor", next));
        free(next);
        return;
    }
    ts_http_reply_json(
        req, 200, json_pack("{s:o}", "tasks", ts_task_service_list(srv->tasks, states, (size_t)n)));
}

/* GET /v1/commands: the allow-listed commands and their parameters (no
 * argv, no environment: those are the operator's). */
static void
get_commands(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;

    (void)id;
    if (!api_authorized(srv, req))
        return;
    ts_http_reply_json(
        req, 200,
        json_pack("{s:o}", "commands",
                  srv->commands != NULL ? ts_commands_to_json(srv->commands) : json_array()));
}

/* The task named by the path, or NULL after answering 404. */
static struct ts_task *
find_task(struct ts_server *srv, struct ts_http_request *req, const char *id)
{
    struct ts_task *task = NULL;

    if (ts_is_task_id(id))
        task = ts_task_find(srv->tasks, id);
    if (task == NULL)
        reply_unknown_task(req, id);
    return task;
}

static void
get_task(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;
    struct ts_task *task;

    if (!api_authorized(srv, req))
        return;
    if (srv->cluster != NULL) {
        json_t *o;
        int rc = ts_cluster_get(srv->cluster, id, &o);

        if (rc == -ENOENT)
            reply_unknown_task(req, id);
        else if (rc != 0)
            reply_store_down(req);
        else
            ts_http_reply_json(req, 200, o);
        return;
    }
    task = find_task(srv, req, id);
    if (task == NULL)
        return;
    ts_http_reply_json(req, 200, ts_task_to_json(task));
    ts_task_unref(task);
}

static void
delete_task(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;
    struct ts_task *task;

    if (!api_authorized(srv, req))
        return;
    if (srv->cluster != NULL) {
        json_t *o;
        int rc = ts_cluster_cancel(srv->cluster, id, &o);

        if (rc == -ENOENT)
            reply_unknown_task(req, id);
        else if (rc == -EALREADY)
            ts_http_reply_error(req, 409, "already_finished", "task %s has already finished", id);
        else if (rc != 0)
            reply_store_down(req);
        else
            ts_http_reply_json(req, 202, o);
        return;
    }
    task = find_task(srv, req, id);
    if (task == NULL)
        return;
    if (ts_task_cancel(srv->tasks, task) == -EALREADY)
        ts_http_reply_error(req, 409, "already_finished", "task %s has already finished", id);
    else
        ts_http_reply_json(req, 202, ts_task_to_json(task));
    ts_task_unref(task);
}

static void
get_events(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;
    struct ts_task *task;
    const char *lei;
    uint64_t last_id = 0;
    bool has_last_id;

    if (!api_authorized(srv, req))
        return;
    if (srv->cluster != NULL) {
        int rc = ts_is_task_id(id) ? ts_cluster_follow(srv->cluster, id, &task) : -ENOENT;

        if (rc == -ENOENT) {
            reply_unknown_task(req, id);
            return;
        }
        if (rc != 0) {
            reply_store_down(req);
            return;
        }
    } else {
        task = find_task(srv, req, id);
        if (task == NULL)
            return;
    }
    /* The header wins: it is what a reconnecting EventSource sends. */
    lei = ts_http_header(req, "Last-Event-ID");
    if (lei == NULL)
        lei = ts_http_query(req, "last_event_id");
    has_last_id = lei != NULL && ts_parse_last_event_id(lei, &last_id) == 0;

    if (!ts_sse_open(srv->sse, req, task, has_last_id, last_id) && srv->cluster != NULL)
        ts_cluster_unfollow(srv->cluster, id); /* answered 204: no stream to close */
    ts_task_unref(task);
}

const struct ts_route ts_api_routes[] = {
    {.name = "tasks",
     .pattern = "/v1/tasks",
     .get = get_tasks,
     .post = post_task,
     .max_body = SIZE_MAX}, /* the configured cap is applied in server.c */
    {.name = "task", .pattern = "/v1/tasks/{id}", .get = get_task, .del = delete_task},
    {.name = "commands", .pattern = "/v1/commands", .get = get_commands},
    {.name = "events", .pattern = "/v1/tasks/{id}/events", .get = get_events},
    {.name = "dashboard", .pattern = "/", .get = ts_dashboard_page},
    {.name = "assets", .pattern = "/assets/{id}", .get = ts_dashboard_asset},
};
const size_t ts_api_nroutes = sizeof(ts_api_routes) / sizeof(ts_api_routes[0]);
