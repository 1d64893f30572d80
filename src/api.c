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

/* Who is asking, for the length of one handler: the policy in force when
 * the request came (a reload may swap it meanwhile) and what it grants. */
struct caller {
    struct ts_auth *auth;
    struct ts_principal p;
};

typedef void api_handler(struct ts_server *srv, struct caller *who, struct ts_http_request *req,
                         const char *id);

/* Run `fn` for an authenticated request; anything else is answered here. */
static void
as_caller(void *app, struct ts_http_request *req, const char *id, api_handler *fn)
{
    struct ts_server *srv = app;
    struct caller who = {.auth = ts_server_auth(srv)};

    if (ts_auth_request(who.auth, req, &who.p) == 0)
        fn(srv, &who, req, id);
    ts_principal_dispose(&who.p);
    ts_auth_unref(who.auth);
}

/* A stream token reads its task and nothing else. */
static bool
refuse_stream_token(struct caller *who, struct ts_http_request *req, const char *what)
{
    if (who->p.kind != TS_PRINCIPAL_STREAM)
        return false;
    ts_auth_forbid(who->auth, req, &who->p, what);
    return true;
}

/* Does deciding whether `who` may see a task need to know who submitted it? */
static bool
needs_submitter(const struct caller *who)
{
    return who->p.kind == TS_PRINCIPAL_USER && !ts_principal_all(&who->p) && !who->p.see_all;
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

/* The task's JSON of an answer, with a stream token for it. */
static void
reply_task(struct caller *who, struct ts_http_request *req, unsigned status, json_t *task)
{
    ts_auth_add_stream_token(who->auth, &who->p, task,
                             json_string_value(json_object_get(task, "id")));
    ts_http_reply_json(req, status, task);
}

static void
reply_submitted(struct caller *who, struct ts_http_request *req, json_t *task)
{
    char location[64];

    snprintf(location, sizeof(location), "/v1/tasks/%s",
             json_string_value(json_object_get(task, "id")));
    ts_http_add_header(req, "Location", location);
    reply_task(who, req, 202, task);
}

/* Takes `body`. */
static void
submit_cluster(struct ts_server *srv, struct caller *who, struct ts_http_request *req, json_t *body)
{
    char err[256];
    json_t *task;
    int rc;

    rc = ts_cluster_submit(srv->cluster, body, ts_principal_sub(&who->p), &task, err, sizeof(err));
    json_decref(body);
    if (rc == -ENOENT)
        ts_http_reply_error(req, 404, "unknown_kind", "%s", err);
    else if (rc == -EINVAL)
        ts_http_reply_error(req, 422, "invalid_parameters", "%s", err);
    else if (store_down(rc))
        reply_store_down(req);
    else if (rc != 0)
        ts_http_reply_error(req, 500, "internal", "cannot create the task: %s", ts_strerror(rc));
    else
        reply_submitted(who, req, task);
}

/* Takes `body`. */
static void
submit_local(struct ts_server *srv, struct caller *who, struct ts_http_request *req, json_t *body)
{
    struct ts_task *task;
    char err[256];
    int rc;

    rc = ts_task_submit(srv->tasks, body, ts_principal_sub(&who->p), &task, err, sizeof(err));
    json_decref(body);
    switch (rc) {
    case 0:
        reply_submitted(who, req, ts_task_to_json(task));
        ts_task_unref(task);
        return;
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
}

/* What a submission is named by for the rights: its kind, or for a
 * command task the command's name. */
static const char *
submission_name(const json_t *body)
{
    const char *kind = json_string_value(json_object_get(body, "kind"));

    if (kind != NULL && strcmp(kind, "command") == 0)
        return json_string_value(json_object_get(body, "command"));
    return kind;
}

static void
submit(struct ts_server *srv, struct caller *who, struct ts_http_request *req, const char *id)
{
    json_error_t jerr;
    json_t *body;
    const char *text, *name;
    char what[128];
    size_t len;

    (void)id;
    if (refuse_stream_token(who, req, "submit tasks (a stream token reads its one task)"))
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
    name = submission_name(body);
    if (!ts_principal_may_submit(&who->p, name)) {
        snprintf(what, sizeof(what), "submit \"%.64s\" (its kinds claim does not match it)",
                 name != NULL ? name : "");
        ts_auth_forbid(who->auth, req, &who->p, what);
        json_decref(body);
        return;
    }
    if (srv->cluster != NULL)
        submit_cluster(srv, who, req, body);
    else
        submit_local(srv, who, req, body);
}

#define LIST_LIMIT_MAX 10000

/* GET /v1/tasks[?state=running[,queued...]][&limit=N]: newest first, those
 * the caller may see. */
static void
list(struct ts_server *srv, struct caller *who, struct ts_http_request *req, const char *id)
{
    const char *state = ts_http_query(req, "state");
    const char *limit = ts_http_query(req, "limit");
    const char *sub = needs_submitter(who) ? who->p.sub : NULL;
    uint64_t n = LIST_LIMIT_MAX;
    unsigned states = 0;

    (void)id;
    if (refuse_stream_token(who, req, "list tasks (a stream token reads its one task)"))
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
        json_t *tasks;
        char *next;
        int rc = ts_cluster_list(srv->cluster, states, sub, (size_t)n, cursor, &tasks, &next);

        if (rc == -EINVAL)
            ts_http_reply_error(req, 400, "invalid_query",
                                "cursor must be a next_cursor of an earlier page");
        else if (rc != 0)
            reply_store_down(req);
        else
            ts_http_reply_json(req, 200,
                               json_pack("{s:o, s:s?}", "tasks", tasks, "next_cursor", next));
        free(next);
        return;
    }
    ts_http_reply_json(
        req, 200,
        json_pack("{s:o}", "tasks", ts_task_service_list(srv->tasks, states, sub, (size_t)n)));
}

/* GET /v1/commands: the allow-listed commands the caller may start, and
 * their parameters (no argv, no environment: those are the operator's). */
static void
commands(struct ts_server *srv, struct caller *who, struct ts_http_request *req, const char *id)
{
    json_t *all, *mine;
    size_t i;
    json_t *cmd;

    (void)id;
    if (refuse_stream_token(who, req, "list commands (a stream token reads its one task)"))
        return;
    all = srv->commands != NULL ? ts_commands_to_json(srv->commands) : json_array();
    mine = json_array();
    json_array_foreach(all, i, cmd) {
        if (ts_principal_may_submit(&who->p, json_string_value(json_object_get(cmd, "name"))))
            json_array_append(mine, cmd);
    }
    json_decref(all);
    ts_http_reply_json(req, 200, json_pack("{s:o}", "commands", mine));
}

/* GET /v1/me: who the credential says the caller is. */
static void
me(struct ts_server *srv, struct caller *who, struct ts_http_request *req, const char *id)
{
    (void)srv;
    (void)id;
    ts_http_reply_json(req, 200, ts_principal_to_json(&who->p));
}

/* The task named by the path if `who` may see it, or NULL after answering
 * 404: a task it may not see is one that does not exist. */
static struct ts_task *
find_task(struct ts_server *srv, struct caller *who, struct ts_http_request *req, const char *id)
{
    struct ts_task *task = NULL;

    if (ts_is_task_id(id))
        task = ts_task_find(srv->tasks, id);
    if (task != NULL && !ts_principal_may_see(&who->p, id, ts_task_submitter(task))) {
        ts_task_unref(task);
        task = NULL;
    }
    if (task == NULL)
        reply_unknown_task(req, id);
    return task;
}

/* Cluster mode: the task's JSON if `who` may see it; otherwise NULL after
 * answering (404 as above, or 503). */
static json_t *
find_task_cluster(struct ts_server *srv, struct caller *who, struct ts_http_request *req,
                  const char *id)
{
    json_t *o = NULL;
    int rc = ts_cluster_get(srv->cluster, id, &o);

    if (rc == 0 &&
        !ts_principal_may_see(&who->p, id, json_string_value(json_object_get(o, "submitted_by")))) {
        json_decref(o);
        rc = -ENOENT;
    }
    if (rc == -ENOENT)
        reply_unknown_task(req, id);
    else if (rc != 0)
        reply_store_down(req);
    return rc == 0 ? o : NULL;
}

static void
show(struct ts_server *srv, struct caller *who, struct ts_http_request *req, const char *id)
{
    struct ts_task *task;
    json_t *o;

    if (srv->cluster != NULL) {
        o = find_task_cluster(srv, who, req, id);
        if (o != NULL)
            reply_task(who, req, 200, o);
        return;
    }
    task = find_task(srv, who, req, id);
    if (task == NULL)
        return;
    reply_task(who, req, 200, ts_task_to_json(task));
    ts_task_unref(task);
}

static void
cancel(struct ts_server *srv, struct caller *who, struct ts_http_request *req, const char *id)
{
    struct ts_task *task;

    if (refuse_stream_token(who, req, "cancel tasks (a stream token only reads)"))
        return;
    if (srv->cluster != NULL) {
        json_t *o;
        int rc;

        if (needs_submitter(who)) {
            o = find_task_cluster(srv, who, req, id);
            if (o == NULL)
                return;
            json_decref(o);
        }
        rc = ts_cluster_cancel(srv->cluster, id, &o);
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
    task = find_task(srv, who, req, id);
    if (task == NULL)
        return;
    if (ts_task_cancel(srv->tasks, task) == -EALREADY)
        ts_http_reply_error(req, 409, "already_finished", "task %s has already finished", id);
    else
        ts_http_reply_json(req, 202, ts_task_to_json(task));
    ts_task_unref(task);
}

/* Cluster mode: the task's local copy to stream from (the first reader of
 * a task here subscribes to it), or NULL after answering. */
static struct ts_task *
follow_cluster(struct ts_server *srv, struct caller *who, struct ts_http_request *req,
               const char *id)
{
    struct ts_task *task = NULL;
    int rc;

    if (needs_submitter(who)) {
        json_t *o = find_task_cluster(srv, who, req, id);

        if (o == NULL)
            return NULL;
        json_decref(o);
    } else if (!ts_principal_may_see(&who->p, id, NULL)) {
        reply_unknown_task(req, id); /* a stream token for another task */
        return NULL;
    }
    rc = ts_is_task_id(id) ? ts_cluster_follow(srv->cluster, id, &task) : -ENOENT;
    if (rc == -ENOENT)
        reply_unknown_task(req, id);
    else if (rc != 0)
        reply_store_down(req);
    return rc == 0 ? task : NULL;
}

static void
events(struct ts_server *srv, struct caller *who, struct ts_http_request *req, const char *id)
{
    struct ts_task *task;
    const char *lei;
    uint64_t last_id = 0;
    bool has_last_id;

    task = srv->cluster != NULL ? follow_cluster(srv, who, req, id) : find_task(srv, who, req, id);
    if (task == NULL)
        return;
    /* The header wins: it is what a reconnecting EventSource sends. */
    lei = ts_http_header(req, "Last-Event-ID");
    if (lei == NULL)
        lei = ts_http_query(req, "last_event_id");
    has_last_id = lei != NULL && ts_parse_last_event_id(lei, &last_id) == 0;

    if (!ts_sse_open(srv->sse, req, task, has_last_id, last_id) && srv->cluster != NULL)
        ts_cluster_unfollow(srv->cluster, id); /* answered 204: no stream to close */
    ts_task_unref(task);
}

/* The routes' entries: each runs its handler as an authenticated caller. */
static void
post_tasks(void *app, struct ts_http_request *req, const char *id)
{
    as_caller(app, req, id, submit);
}

static void
get_tasks(void *app, struct ts_http_request *req, const char *id)
{
    as_caller(app, req, id, list);
}

static void
get_commands(void *app, struct ts_http_request *req, const char *id)
{
    as_caller(app, req, id, commands);
}

static void
get_me(void *app, struct ts_http_request *req, const char *id)
{
    as_caller(app, req, id, me);
}

static void
get_task(void *app, struct ts_http_request *req, const char *id)
{
    as_caller(app, req, id, show);
}

static void
delete_task(void *app, struct ts_http_request *req, const char *id)
{
    as_caller(app, req, id, cancel);
}

static void
get_events(void *app, struct ts_http_request *req, const char *id)
{
    as_caller(app, req, id, events);
}

void
ts_api_options(void *app, struct ts_http_request *req, const char *methods)
{
    struct ts_auth *auth = ts_server_auth(app);

    ts_auth_preflight(auth, req, methods);
    ts_auth_unref(auth);
}

const struct ts_route ts_api_routes[] = {
    {.name = "tasks",
     .pattern = "/v1/tasks",
     .get = get_tasks,
     .post = post_tasks,
     .max_body = SIZE_MAX}, /* the configured cap is applied in server.c */
    {.name = "task", .pattern = "/v1/tasks/{id}", .get = get_task, .del = delete_task},
    {.name = "commands", .pattern = "/v1/commands", .get = get_commands},
    {.name = "me", .pattern = "/v1/me", .get = get_me},
    {.name = "events", .pattern = "/v1/tasks/{id}/events", .get = get_events},
    {.name = "dashboard", .pattern = "/", .get = ts_dashboard_page},
    {.name = "assets", .pattern = "/assets/{id}", .get = ts_dashboard_asset},
};
const size_t ts_api_nroutes = sizeof(ts_api_routes) / sizeof(ts_api_routes[0]);
