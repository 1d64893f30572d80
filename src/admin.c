/*
 * The admin listener's routes: liveness, readiness, manual drain, metrics.
 *
 * They live on their own listener so probes and scrapes never queue behind
 * thousands of streams. /readyz looks at the draining state and nothing
 * else: readiness says "send me new work", and a draining process must not
 * get any, whatever the health of its parts. /drain is authenticated with a
 * bearer key compared in constant time; with no key configured it is
 * refused (fail closed), since an open drain endpoint is a denial of service
 * waiting to happen. The key never reaches a log line.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "server.h"

#define DRAIN_BODY_MAX 4096

static void
get_healthz(void *app, struct ts_http_request *req, const char *id)
{
    (void)app;
    (void)id;
    ts_http_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

static void
get_readyz(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;

    (void)id;
    if (ts_drain_is_draining(&srv->drain)) {
        ts_http_reply_json(req, 503, json_pack("{s:s}", "status", "draining"));
        return;
    }
    ts_http_reply_json(req, 200, json_pack("{s:s}", "status", "ready"));
}

static void
get_metrics(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;
    char *text;
    size_t len;

    (void)id;
    if (ts_metrics_render(srv->metrics, &text, &len) != 0) {
        ts_http_reply_error(req, 500, "out_of_memory", "cannot render the metrics");
        return;
    }
    ts_http_reply(req, 200, TS_METRICS_CONTENT_TYPE, text, len);
    free(text);
}

/* Fail closed without a key; 401 with a challenge for a missing or wrong
 * one. Returns true when the request may go on; otherwise it was answered. */
static bool
authorized(struct ts_server *srv, struct ts_http_request *req)
{
    int rc = ts_server_check_drain_key(srv, req);

    if (rc == -ENOENT) {
        ts_http_reply_error(req, 403, "drain_disabled",
                            "no DRAIN_AUTH_KEY is configured, so /drain is disabled");
        return false;
    }
    if (rc == 0)
        return true;
    ts_series_inc(srv->drain_auth_failures);
    ts_log(srv->log, TS_LOG_WARN, "drain request refused: missing or wrong key",
           TS_F_STR("method", ts_http_method(req)), TS_F_END);
    ts_http_reply_unauthorized(req, "taskstream-admin", "drain key");
    return false;
}

static void
post_drain(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;

    (void)id;
    if (!authorized(srv, req))
        return;
    ts_coordinator_drain(srv->coord);
    ts_http_reply_json(req, 202, ts_server_state_json(srv));
}

static void
delete_drain(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;

    (void)id;
    if (!authorized(srv, req))
        return;
    if (ts_coordinator_undrain(srv->coord) != 0) {
        ts_http_reply_error(req, 409, "shutting_down",
                            "the process is shutting down and cannot return to serving");
        return;
    }
    ts_log(srv->log, TS_LOG_INFO, "manual drain cancelled, serving again", TS_F_END);
    ts_http_reply_json(req, 200, ts_server_state_json(srv));
}

const struct ts_route ts_admin_routes[] = {
    {.name = "healthz", .pattern = "/healthz", .get = get_healthz},
    {.name = "readyz", .pattern = "/readyz", .get = get_readyz},
    {.name = "drain",
     .pattern = "/drain",
     .post = post_drain,
     .del = delete_drain,
     .max_body = DRAIN_BODY_MAX},
    {.name = "metrics", .pattern = "/metrics", .get = get_metrics},
};
const size_t ts_admin_nroutes = sizeof(ts_admin_routes) / sizeof(ts_admin_routes[0]);
