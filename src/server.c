/*
 * The server: builds the services from a configuration, hands each its
 * dependencies (the drain view, the clock, the metrics registry, the log),
 * and carries out the stop sequence of docs/operations.md when its owner
 * asks (ts_server_shutdown).
 *
 * The server never decides to drain. Its owner (main.c) does, through the
 * coordinator; the admin listener's /drain is the one other trigger, an
 * authenticated request on the owner's behalf. Every service only reacts
 * to the view.
 *
 * Timers (heartbeats, header deadlines, idle connections) are the front's
 * own: each loop thread keeps them (http.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "listener.h"
#include "server.h"

/* Streams get this long to flush their final events before the listener
 * closes; a client that does not read by then is cut. */
#define FLUSH_BOUND_NS (5 * TS_NS_PER_S)

/* Descriptors held back so that the admin listener answers probes while the
 * public one has used up every other (listener.h). */
#define FD_RESERVE 8

/* A task that was cancelled at the deadline gets this long, beyond
 * KILL_GRACE, to return before it is abandoned. */
#define FINISH_MARGIN_NS (2 * TS_NS_PER_S)

/* What TS_STOP_MARGIN_MS promises to cover beyond kill_grace. */
_Static_assert(FLUSH_BOUND_NS + TS_NS_PER_S + FINISH_MARGIN_NS <= TS_STOP_MARGIN_MS * TS_NS_PER_MS,
               "the stop sequence outgrew TS_STOP_MARGIN_MS");

static const double shutdown_buckets[] = {0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200};

static double
draining_gauge(void *arg)
{
    struct ts_server *srv = arg;

    return ts_drain_is_draining(&srv->drain) ? 1 : 0;
}

/* Count each drain as it begins, and a signal that arrives during a manual
 * drain, by reason. */
static void
on_drain_change(void *arg, const struct ts_drain_status *st)
{
    struct ts_server *srv = arg;
    const char *reason = NULL;

    if (st->state == TS_STATE_SERVING) {
        srv->seen_draining = false;
        return;
    }
    if (!srv->seen_draining) {
        srv->seen_draining = true;
        reason = ts_drain_reason_name(st->reason);
        ts_log(srv->log, TS_LOG_INFO, "draining", TS_F_STR("reason", reason),
               TS_F_STR("signal", st->signal_name[0] != '\0' ? st->signal_name : NULL), TS_F_END);
    }
    if (st->shutdown_requested && !srv->seen_shutdown) {
        srv->seen_shutdown = true;
        if (reason == NULL)
            reason = ts_drain_reason_name(TS_DRAIN_REASON_SIGNAL);
    }
    if (reason != NULL) {
        struct ts_series *s = ts_family_series(srv->drain_requests, &reason);

        if (s != NULL)
            ts_series_inc(s);
    }
}

static int
register_metrics(struct ts_server *srv)
{
    static const char *const http_labels[] = {"listener", "route", "code"};
    static const char *const reason_label[] = {"reason"};
    static const char *const result_label[] = {"result"};
    static const char *const listener_label[] = {"listener"};
    static const char *const ok[] = {"ok"}, *const failed[] = {"failed"};
    struct ts_metrics *m = srv->metrics;
    struct ts_family *reloads;

    srv->http_requests = ts_metrics_family(m, TS_METRIC_COUNTER, "http_requests_total",
                                           "HTTP responses sent, by listener, route and status.", 3,
                                           http_labels, NULL, 0);
    srv->http_disconnects = ts_metrics_family(
        m, TS_METRIC_COUNTER, "http_client_disconnects_total",
        "Connections the client closed or reset while a request or response was under way "
        "(e.g. a reader of a stream that went away), by listener.",
        1, listener_label, NULL, 0);
    srv->drain_requests =
        ts_metrics_family(m, TS_METRIC_COUNTER, "graceful_shutdown_requests_total",
                          "Drains begun, by reason (signal or manual).", 1, reason_label, NULL, 0);
    srv->drain_auth_failures =
        ts_metrics_simple(m, TS_METRIC_COUNTER, "drain_auth_failures_total",
                          "Requests to /drain refused for a missing or wrong key.");
    reloads = ts_metrics_family(m, TS_METRIC_COUNTER, "config_reloads_total",
                                "Reloads (SIGHUP) of the key files and COMMANDS_FILE, by result.",
                                1, result_label, NULL, 0);
    srv->reloads_ok = reloads != NULL ? ts_family_series(reloads, ok) : NULL;
    srv->reloads_failed = reloads != NULL ? ts_family_series(reloads, failed) : NULL;
    srv->shutdown_duration = NULL;
    {
        struct ts_family *f =
            ts_metrics_family(m, TS_METRIC_HISTOGRAM, "task_graceful_shutdown_duration_seconds",
                              "Time from the start of a drain to the end of the stop sequence.", 0,
                              NULL, shutdown_buckets, TS_ARRAY_SIZE(shutdown_buckets));
        if (f != NULL)
            srv->shutdown_duration = ts_family_series(f, NULL);
    }
    /* Both reasons exist from the start, so a rate() over them works before
     * the first drain. */
    for (size_t i = 0; srv->drain_requests != NULL && i < 2; i++) {
        const char *reason =
            ts_drain_reason_name(i == 0 ? TS_DRAIN_REASON_SIGNAL : TS_DRAIN_REASON_MANUAL);

        if (ts_family_series(srv->drain_requests, &reason) == NULL)
            return -ENOMEM;
    }
    if (srv->http_requests == NULL || srv->http_disconnects == NULL ||
        srv->drain_requests == NULL || srv->drain_auth_failures == NULL ||
        srv->shutdown_duration == NULL || srv->reloads_ok == NULL || srv->reloads_failed == NULL)
        return -ENOMEM;
    return ts_metrics_gauge_fn(m, "graceful_shutdown_draining",
                               "1 while the process is draining or stopping, else 0.",
                               draining_gauge, srv);
}

/* Cluster mode: a stream's close is its follow's lost reader. */
static void
stream_closed(void *arg, struct ts_task *task)
{
    struct ts_server *srv = arg;

    ts_cluster_unfollow(srv->cluster, ts_task_get_id(task));
}

int
ts_server_new(struct ts_server **out, const struct ts_config *cfg, struct ts_coordinator *coord,
              struct ts_log *log)
{
    return ts_server_new_with_clock(out, cfg, coord, log, ts_clock_real());
}

int
ts_server_new_with_clock(struct ts_server **out, const struct ts_config *cfg,
                         struct ts_coordinator *coord, struct ts_log *log, struct ts_clock clock)
{
    struct ts_server *srv;
    struct ts_task_service_config tcfg;
    struct ts_sse_config scfg;
    char why[512];
    int err;

    /* ts_config_parse() checked this already; ts_config_set() cannot. */
    err = ts_config_check(cfg, why, sizeof(why));
    if (err != 0) {
        ts_log(log, TS_LOG_ERROR, "bad configuration", TS_F_STR("error", why), TS_F_END);
        return err;
    }
    srv = calloc(1, sizeof(*srv));
    if (srv == NULL)
        return -ENOMEM;
    err = ts_config_copy(&srv->cfg, cfg);
    if (err != 0)
        goto out_free;
    pthread_mutex_init(&srv->keys_mu, NULL);
    srv->coord = coord;
    srv->drain = ts_coordinator_view(coord);
    srv->log = log;
    srv->clock = clock;
    srv->drain_sub = -1;
    err = ts_metrics_new(&srv->metrics);
    if (err != 0)
        goto out_dispose;
    err = register_metrics(srv);
    if (err == 0)
        err = ts_auth_metrics_init(&srv->auth_metrics, srv->metrics);
    if (err != 0)
        goto out_metrics;
    {
        char aerr[512];

        err = ts_auth_new(&srv->auth, cfg, cfg->redis_url != NULL, NULL, &srv->auth_metrics, clock,
                          log, aerr, sizeof(aerr));
        if (err != 0) {
            ts_log(log, TS_LOG_ERROR, "invalid authentication settings", TS_F_STR("error", aerr),
                   TS_F_END);
            goto out_metrics;
        }
    }

    tcfg = (struct ts_task_service_config){
        .workers = cfg->workers,
        .max_queued = cfg->max_queued_tasks,
        .retention_ns = cfg->task_retention_ms * TS_NS_PER_MS,
        .log_events = cfg->event_log_events,
        .log_bytes = cfg->event_log_bytes,
        .retained_bytes = cfg->retained_bytes,
    };
    err = ts_task_service_new(&srv->tasks, &tcfg, srv->drain, srv->clock, srv->metrics, log);
    if (err != 0)
        goto out_metrics;
    if (cfg->kinds & TS_KIND_TICKER) {
        err = ts_task_service_register(srv->tasks, ts_ticker_kind());
        if (err != 0)
            goto out_tasks;
    }
    if ((cfg->kinds & TS_KIND_COMMAND) && cfg->commands_file != NULL &&
        cfg->commands_file[0] != '\0') {
        char cerr[512];

        err = ts_commands_load(&srv->commands, cfg->commands_file, cfg->env, cfg->kill_grace_ms,
                               log, cerr, sizeof(cerr));
        if (err != 0) {
            ts_log(log, TS_LOG_ERROR, "invalid COMMANDS_FILE", TS_F_STR("error", cerr), TS_F_END);
            goto out_tasks;
        }
        err = ts_task_service_register(srv->tasks, ts_commands_kind(srv->commands));
        if (err != 0)
            goto out_tasks;
        ts_log(log, TS_LOG_INFO, "commands loaded", TS_F_STR("file", cfg->commands_file),
               TS_F_UINT("count", ts_commands_count(srv->commands)), TS_F_END);
    }

    if (cfg->redis_url != NULL) {
        struct ts_cluster_config ccfg = {
            .url = cfg->redis_url,
            .password = cfg->redis_password,
            .prefix = cfg->redis_key_prefix != NULL ? cfg->redis_key_prefix : "",
            .replica = cfg->replica_id,
            .timeout_ns = cfg->redis_timeout_ms * TS_NS_PER_MS,
            .lease_ns = cfg->task_lease_ms * TS_NS_PER_MS,
            .retention_ns = cfg->task_retention_ms * TS_NS_PER_MS,
            .log_events = cfg->event_log_events,
            .tasks = srv->tasks,
            .drain = srv->drain,
            .clock = srv->clock,
            .metrics = srv->metrics,
            .log = log,
        };

        err = ts_cluster_new(&srv->cluster, &ccfg);
        if (err != 0)
            goto out_tasks;
    }

    scfg = (struct ts_sse_config){
        .tasks = srv->tasks,
        .drain = srv->drain,
        .clock = srv->clock,
        .metrics = srv->metrics,
        .log = log,
        .heartbeat_ns = cfg->sse_heartbeat_interval_ms * TS_NS_PER_MS,
        .retry_ms = (unsigned)cfg->sse_retry_ms,
        .stream_closed = srv->cluster != NULL ? stream_closed : NULL,
        .hook_arg = srv,
    };
    err = ts_sse_new(&srv->sse, &scfg);
    if (err != 0)
        goto out_tasks;
    srv->drain_sub = ts_drain_subscribe(&srv->drain, on_drain_change, srv);
    if (srv->drain_sub < 0) {
        err = srv->drain_sub;
        goto out_sse;
    }
    *out = srv;
    return 0;

out_sse:
    ts_sse_free(srv->sse);
out_tasks:
    ts_cluster_stop(srv->cluster);
    ts_task_service_free(srv->tasks);
    ts_cluster_free(srv->cluster);
    ts_commands_free(srv->commands); /* after the service: its kind outlives it */
out_metrics:
    ts_auth_unref(srv->auth);
    ts_metrics_free(srv->metrics);
out_dispose:
    pthread_mutex_destroy(&srv->keys_mu);
    ts_config_dispose(&srv->cfg);
out_free:
    free(srv);
    return err;
}

int
ts_server_register_kind_sized(struct ts_server *srv, const struct ts_task_kind *kind, size_t size)
{
    struct ts_task_kind k;

    if (srv->started)
        return -EBUSY;
    if (kind == NULL)
        return -EINVAL;
    /* A host built against an older, shorter struct: the rest is zero. */
    memset(&k, 0, sizeof(k));
    memcpy(&k, kind, size < sizeof(k) ? size : sizeof(k));
    return ts_task_service_register(srv->tasks, &k);
}

static void
log_listening(struct ts_server *srv, const char *name, const char *addr, int port)
{
    ts_log(srv->log, TS_LOG_INFO, "listening", TS_F_STR("listener", name),
           TS_F_STR("address", addr), TS_F_INT("port", port), TS_F_END);
}

int
ts_server_start(struct ts_server *srv)
{
    struct ts_http_config pub, adm;
    int err;

    pub = (struct ts_http_config){
        .name = "public",
        .listen = srv->cfg.listen,
        .setting = "LISTEN",
        .routes = ts_api_routes,
        .nroutes = ts_api_nroutes,
        .app = srv,
        .options = ts_api_options,
        .max_connections = srv->cfg.max_connections,
        .max_connections_per_ip = srv->cfg.max_connections_per_ip,
        .max_head = srv->cfg.max_header_bytes,
        .max_body = srv->cfg.max_body_bytes,
        .idle_timeout_ns = srv->cfg.idle_timeout_ms * TS_NS_PER_MS,
        .header_timeout_ns = srv->cfg.header_timeout_ms * TS_NS_PER_MS,
        .stream_quiet_ns = ts_sse_quiet_ns(srv->sse),
        .threads = srv->cfg.http_threads,
        .close_when_draining = true,
        .drain = srv->drain,
        .clock = srv->clock,
        .requests_total = srv->http_requests,
        .disconnects = srv->http_disconnects,
        .log = srv->log,
    };
    /* Probes and scrapes: few connections, small requests, one thread. */
    adm = pub;
    adm.name = "admin";
    adm.listen = srv->cfg.admin_listen;
    adm.setting = "ADMIN_LISTEN";
    adm.routes = ts_admin_routes;
    adm.nroutes = ts_admin_nroutes;
    adm.options = NULL;
    adm.max_connections = 64;
    adm.max_connections_per_ip = 0;
    adm.max_head = 32 * 1024;
    adm.threads = 1;
    adm.close_when_draining = false;
    adm.serve_from_reserve = true;

    err = ts_fd_reserve_new(&srv->fd_reserve, FD_RESERVE);
    if (err != 0)
        return err;
    pub.reserve = adm.reserve = srv->fd_reserve;
    err = ts_task_service_start(srv->tasks);
    if (err != 0)
        return err;
    if (srv->cluster != NULL) {
        err = ts_cluster_start(srv->cluster);
        if (err != 0)
            return err;
    }
    err = ts_http_start(&srv->admin_http, &adm);
    if (err != 0)
        return err;
    err = ts_http_start(&srv->public_http, &pub);
    if (err != 0)
        goto out_admin;
    srv->started = true;
    log_listening(srv, "admin", srv->cfg.admin_listen, ts_http_port(srv->admin_http));
    log_listening(srv, "public", srv->cfg.listen, ts_http_port(srv->public_http));
    return 0;

out_admin:
    ts_http_stop(srv->admin_http);
    srv->admin_http = NULL;
    return err;
}

unsigned
ts_server_tasks_active(struct ts_server *srv)
{
    return ts_task_service_active(srv->tasks);
}

unsigned
ts_server_streams_open(struct ts_server *srv)
{
    return ts_sse_active(srv->sse);
}

int
ts_server_port(const struct ts_server *srv)
{
    return srv->public_http != NULL ? ts_http_port(srv->public_http) : 0;
}

int
ts_server_admin_port(const struct ts_server *srv)
{
    return srv->admin_http != NULL ? ts_http_port(srv->admin_http) : 0;
}

json_t *
ts_server_state_json(struct ts_server *srv)
{
    struct ts_drain_status st;
    char since[TS_TIME_LEN];

    ts_coordinator_status(srv->coord, &st);
    return json_pack(
        "{s:s, s:s?, s:s?, s:s?, s:b, s:i}", "state", ts_drain_state_name(st.state), "reason",
        st.reason != TS_DRAIN_REASON_NONE ? ts_drain_reason_name(st.reason) : NULL, "signal",
        st.signal_name[0] != '\0' ? st.signal_name : NULL, "draining_since",
        st.drain_started_wall_ns != 0 ? ts_format_time(st.drain_started_wall_ns, since) : NULL,
        "shutdown_requested", st.shutdown_requested, "tasks_active",
        (json_int_t)ts_task_service_active(srv->tasks));
}

/* Wait for running tasks until the deadline, or until the coordinator is
 * forced. Each wake-up is a task ending or the force: never a poll. */
static void
wait_for_tasks(struct ts_server *srv, int64_t deadline)
{
    struct ts_drain_status st;

    for (;;) {
        int64_t now = ts_clock_now_ns(&srv->clock);
        unsigned active = ts_task_service_active(srv->tasks);

        ts_coordinator_status(srv->coord, &st);
        if (st.forced || now >= deadline || active == 0)
            return;
        ts_log(srv->log, TS_LOG_INFO, "waiting for tasks", TS_F_UINT("active", active),
               TS_F_DBL("seconds_left", (double)(deadline - now) / TS_NS_PER_S), TS_F_END);
        if (ts_task_service_wait_idle(srv->tasks, deadline) == 0)
            return;
    }
}

/*
 * Close the public listener: refuse new connections, give the streams
 * FLUSH_BOUND_NS to send their final events, then cut the rest. Returns how
 * many were cut.
 */
static unsigned
stop_public(struct ts_server *srv)
{
    unsigned left;

    ts_http_quiesce(srv->public_http);
    ts_sse_wait_idle(srv->sse, ts_clock_now_ns(&srv->clock) + FLUSH_BOUND_NS);
    left = ts_sse_active(srv->sse);
    if (left > 0) {
        ts_sse_close_all(srv->sse);
        ts_sse_wait_idle(srv->sse, ts_clock_now_ns(&srv->clock) + TS_NS_PER_S);
    }
    ts_http_stop(srv->public_http);
    srv->public_http = NULL;
    return left;
}

static void
on_force(void *arg, const struct ts_drain_status *st)
{
    struct ts_server *srv = arg;

    if (st->forced)
        ts_task_service_interrupt(srv->tasks);
}

static int
server_shutdown(struct ts_server *srv, struct ts_shutdown_report *report)
{
    struct ts_drain_status st;
    int64_t start, now, wait_from;
    uint64_t forced, abandoned, handed;
    unsigned cut;
    int sub;

    memset(report, 0, sizeof(*report));
    ts_coordinator_drain(srv->coord); /* no-op when already draining */
    sub = ts_drain_subscribe(&srv->drain, on_force, srv);
    ts_coordinator_status(srv->coord, &st);
    start = st.drain_started_ns;
    /* The budget runs from the signal, which is when the platform's own
     * grace period starts, even if a manual drain began earlier. */
    wait_from = st.shutdown_requested_ns != 0 ? st.shutdown_requested_ns : start;

    wait_for_tasks(srv, wait_from + srv->cfg.graceful_shutdown_timeout_ms * TS_NS_PER_MS);
    if (sub >= 0)
        ts_drain_unsubscribe(&srv->drain, sub);

    ts_coordinator_set_stopping(srv->coord);
    /* Cluster mode: what can resume elsewhere goes back to the queue; the
     * rest is cancelled as in a single process. */
    handed = srv->cluster != NULL ? ts_task_service_hand_off(srv->tasks) : 0;
    if (handed > 0)
        ts_log(srv->log, TS_LOG_INFO, "handing off resumable tasks", TS_F_UINT("count", handed),
               TS_F_END);
    forced = ts_task_service_cancel_all(srv->tasks, "shutdown");
    if (forced > 0)
        ts_log(srv->log, TS_LOG_WARN, "cancelling tasks still running", TS_F_UINT("count", forced),
               TS_F_END);
    now = ts_clock_now_ns(&srv->clock);
    abandoned = ts_task_service_finish(srv->tasks, now + srv->cfg.kill_grace_ms * TS_NS_PER_MS +
                                                       FINISH_MARGIN_NS);
    if (abandoned > 0)
        ts_log(srv->log, TS_LOG_ERROR, "tasks ignored cancellation and were abandoned",
               TS_F_UINT("count", abandoned), TS_F_END);

    /* SHUTDOWN_DELAY runs beside the wait for tasks, not after it: the
     * public listener stays open at least that long from the signal, for
     * the load balancers that still send clients here. */
    ts_coordinator_wait_forced(srv->coord, wait_from + srv->cfg.shutdown_delay_ms * TS_NS_PER_MS);
    if (srv->cluster != NULL)
        ts_task_service_detach_mirrors(srv->tasks);
    cut = stop_public(srv);

    ts_coordinator_set_stopped(srv->coord);
    ts_coordinator_status(srv->coord, &st);
    report->reason = st.reason;
    memcpy(report->signal_name, st.signal_name, sizeof(report->signal_name));
    memcpy(report->stop_signal, st.stop_signal, sizeof(report->stop_signal));
    memcpy(report->forced_by, st.forced_by, sizeof(report->forced_by));
    report->duration_s = (double)(st.stopped_ns - start) / TS_NS_PER_S;
    report->forced = forced;
    report->handed_off = handed;
    report->abandoned = abandoned;
    report->streams_closed = cut;
    ts_series_observe(srv->shutdown_duration, report->duration_s);
    return 0;
}

int
ts_server_shutdown_sized(struct ts_server *srv, struct ts_shutdown_report *out, size_t size)
{
    struct ts_shutdown_report rep;
    int rc = server_shutdown(srv, &rep);

    memcpy(out, &rep, size < sizeof(rep) ? size : sizeof(rep));
    return rc;
}

void
ts_server_free(struct ts_server *srv)
{
    if (srv == NULL)
        return;
    if (srv->public_http != NULL) {
        /* Started but never shut down: end the tasks without waiting. */
        ts_task_service_cancel_all(srv->tasks, "shutdown");
        ts_task_service_finish(srv->tasks, ts_clock_now_ns(&srv->clock) + FINISH_MARGIN_NS);
        stop_public(srv);
    }
    ts_http_stop(srv->admin_http);
    ts_fd_reserve_free(srv->fd_reserve);
    if (srv->drain_sub >= 0)
        ts_drain_unsubscribe(&srv->drain, srv->drain_sub);
    ts_cluster_stop(srv->cluster); /* its threads call the task service */
    ts_sse_free(srv->sse);
    ts_task_service_free(srv->tasks);
    ts_cluster_free(srv->cluster); /* after the workers' last ends */
    ts_commands_free(srv->commands);
    ts_auth_unref(srv->auth);
    ts_metrics_free(srv->metrics);
    pthread_mutex_destroy(&srv->keys_mu);
    ts_config_dispose(&srv->cfg);
    free(srv);
}

/* ---- keys and reloading ---- */

int
ts_server_check_drain_key(struct ts_server *srv, const struct ts_http_request *req)
{
    const char *key;
    int rc;

    pthread_mutex_lock(&srv->keys_mu);
    key = srv->cfg.drain_auth_key;
    rc = key == NULL ? -ENOENT : ts_http_bearer_ok(req, key) ? 0 : -EACCES;
    pthread_mutex_unlock(&srv->keys_mu);
    return rc;
}

struct ts_auth *
ts_server_auth(struct ts_server *srv)
{
    struct ts_auth *a;

    pthread_mutex_lock(&srv->keys_mu);
    a = ts_auth_ref(srv->auth);
    pthread_mutex_unlock(&srv->keys_mu);
    return a;
}

int
ts_server_reload(struct ts_server *srv, char *err, size_t errlen)
{
    struct ts_config next;
    struct ts_auth *auth = NULL;
    const char *result = "failed";
    char buf[512];
    int rc;

    if (err == NULL || errlen == 0) {
        err = buf;
        errlen = sizeof(buf);
    }
    /* Everything is read and checked before anything is swapped: the
     * key files into a copy first, then the allow-list, which swaps itself
     * only when all of it is valid; the keys follow, which cannot fail. */
    pthread_mutex_lock(&srv->keys_mu);
    rc = ts_config_copy(&next, &srv->cfg);
    pthread_mutex_unlock(&srv->keys_mu);
    if (rc != 0) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    rc = ts_config_reread_key_files(&next, err, errlen);
    if (rc == 0) {
        struct ts_auth *now = ts_server_auth(srv);

        rc = ts_auth_new(&auth, &next, srv->cluster != NULL, now, &srv->auth_metrics, srv->clock,
                         srv->log, err, errlen);
        ts_auth_unref(now);
    }
    if (rc == 0 && srv->commands != NULL)
        rc = ts_commands_reload(srv->commands, err, errlen);
    if (rc == 0) {
        char *api = next.api_auth_key, *drain = next.drain_auth_key;
        struct ts_auth *old;

        pthread_mutex_lock(&srv->keys_mu);
        next.api_auth_key = srv->cfg.api_auth_key;
        next.drain_auth_key = srv->cfg.drain_auth_key;
        srv->cfg.api_auth_key = api;
        srv->cfg.drain_auth_key = drain;
        old = srv->auth;
        srv->auth = auth;
        auth = old;
        pthread_mutex_unlock(&srv->keys_mu);
        result = "ok";
    }
    ts_auth_unref(auth);      /* the old policy, or the unused new one */
    ts_config_dispose(&next); /* the old keys, or the unused new ones */

out:
    ts_series_inc(rc == 0 ? srv->reloads_ok : srv->reloads_failed);
    if (rc == 0)
        ts_log(srv->log, TS_LOG_INFO, "reload", TS_F_STR("result", result),
               TS_F_BOOL("drain_key_file", srv->cfg.drain_auth_key_file != NULL),
               TS_F_BOOL("api_key_file", srv->cfg.api_auth_key_file != NULL),
               TS_F_STR("commands_file", srv->commands != NULL ? srv->cfg.commands_file : NULL),
               TS_F_UINT("commands", srv->commands != NULL ? ts_commands_count(srv->commands) : 0),
               TS_F_END);
    else
        ts_log(srv->log, TS_LOG_ERROR, "reload", TS_F_STR("result", result), TS_F_STR("error", err),
               TS_F_STR("effect", "nothing was changed: the previous configuration stays in force"),
               TS_F_END);
    return rc;
}
