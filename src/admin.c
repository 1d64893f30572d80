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

static enum MHD_Result
get_healthz(void *app, struct ts_http_request *req, const char *id)
{
    (void)app;
    (void)id;
    return ts_http_reply_json(req, MHD_HTTP_OK, json_pack("{s:s}", "status", "ok"));
}

static enum MHD_Result
get_readyz(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;

    (void)id;
    if (ts_drain_is_draining(&srv->drain))
        return ts_http_reply_json(req, MHD_HTTP_SERVICE_UNAVAILABLE,
                                  json_pack("{s:s}", "status", "draining"));
    return ts_http_reply_json(req, MHD_HTTP_OK, json_pack("{s:s}", "status", "ready"));
}

static enum MHD_Result
get_metrics(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;
    struct MHD_Response *resp;
    char *text;
    size_t len;

    (void)id;
    if (ts_metrics_render(srv->metrics, &text, &len) != 0)
        return ts_http_reply_error(req, MHD_HTTP_INTERNAL_SERVER_ERROR, "out_of_memory",
                                   "cannot render the metrics");
    resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (resp == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, TS_METRICS_CONTENT_TYPE);
    return ts_http_queue(req, MHD_HTTP_OK, resp);
}

/* Fail closed without a key; 401 with a challenge for a missing or wrong
 * one. Returns true when the request may go on; otherwise it was answered. */
static bool
authorized(struct ts_server *srv, struct ts_http_request *req, enum MHD_Result *ret)
{
    int rc = ts_server_check_key(srv, TS_SERVER_KEY_DRAIN, req);

    if (rc == -ENOENT) {
        *ret = ts_http_reply_error(req, MHD_HTTP_FORBIDDEN, "drain_disabled",
                                   "no DRAIN_AUTH_KEY is configured, so /drain is disabled");
        return false;
    }
    if (rc == 0)
        return true;
    ts_series_inc(srv->drain_auth_failures);
    ts_log(srv->log, TS_LOG_WARN, "drain request refused: missing or wrong key",
           TS_F_STR("method", ts_http_method(req)), TS_F_END);
    *ret = ts_http_reply_unauthorized(req, "taskstream-admin", "drain key");
    return false;
}

static enum MHD_Result
post_drain(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;
    enum MHD_Result ret;

    (void)id;
    if (!authorized(srv, req, &ret))
        return ret;
    ts_coordinator_drain(srv->coord);
    return ts_http_reply_json(req, MHD_HTTP_ACCEPTED, ts_server_state_json(srv));
}

static enum MHD_Result
delete_drain(void *app, struct ts_http_request *req, const char *id)
{
    struct ts_server *srv = app;
    enum MHD_Result ret;

    (void)id;
    if (!authorized(srv, req, &ret))
        return ret;
    if (ts_coordinator_undrain(srv->coord) != 0)
        return ts_http_reply_error(req, MHD_HTTP_CONFLICT, "shutting_down",
                                   "the process is shutting down and cannot return to serving");
    ts_log(srv->log, TS_LOG_INFO, "manual drain cancelled, serving again", TS_F_END);
    return ts_http_reply_json(req, MHD_HTTP_OK, ts_server_state_json(srv));
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
