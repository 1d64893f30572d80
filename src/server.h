/*
 * The server: the library's composition of services (task service, SSE
 * streams, metrics, the two HTTP listeners), shared by server.c, api.c
 * (public routes) and admin.c (admin routes).
 */
#ifndef TS_SERVER_H
#define TS_SERVER_H

#include <pthread.h>

#include "auth.h"
#include "clock.h"
#include "cluster.h"
#include "config.h"
#include "drain.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "sse.h"
#include "task.h"
#include "taskstream.h"

struct ts_server {
    struct ts_config cfg;         /* a deep copy; its two keys are guarded by keys_mu */
    pthread_mutex_t keys_mu;      /* ts_server_reload() replaces the keys and `auth` */
    struct ts_auth *auth;         /* the public API's policy; keys_mu (ts_server_auth()) */
    struct ts_auth_metrics auth_metrics;
    struct ts_coordinator *coord; /* borrowed: the owner decides the lifecycle */
    struct ts_drain_view drain;
    struct ts_log *log; /* borrowed */
    struct ts_clock clock;

    struct ts_metrics *metrics;
    struct ts_task_service *tasks;
    struct ts_cluster *cluster;   /* REDIS_URL: cluster mode; NULL: memory */
    struct ts_commands *commands; /* COMMANDS_FILE; NULL without one; freed after tasks */
    struct ts_sse *sse;
    struct ts_http *public_http;
    struct ts_http *admin_http;
    struct ts_fd_reserve *fd_reserve; /* held back for the admin listener */
    bool started;

    int drain_sub;
    struct ts_family *http_requests;    /* http_requests_total{listener,route,code} */
    struct ts_family *http_disconnects; /* http_client_disconnects_total{listener} */
    struct ts_family *drain_requests;   /* graceful_shutdown_requests_total{reason} */
    struct ts_series *drain_auth_failures;
    struct ts_series *reloads_ok, *reloads_failed; /* config_reloads_total{result} */
    struct ts_series *shutdown_duration;           /* task_graceful_shutdown_duration_seconds */
    bool seen_draining;                            /* drain_sub callback state */
    bool seen_shutdown;
};

/* ts_server_new() on a given clock: every service, timer and deadline of the
 * server reads it (tests drive the stop sequence and the streams on a fake
 * clock). The clock must outlive the server. */
int ts_server_new_with_clock(struct ts_server **out, const struct ts_config *cfg,
                             struct ts_coordinator *coord, struct ts_log *log,
                             struct ts_clock clock);

extern const struct ts_route ts_api_routes[];
/* OPTIONS on a public route: the CORS preflight. */
void ts_api_options(void *app, struct ts_http_request *req, const char *methods);
extern const size_t ts_api_nroutes;
extern const struct ts_route ts_admin_routes[];
extern const size_t ts_admin_nroutes;

/* Does `req` carry the drain key (Bearer)? 0: yes; -EACCES: a missing or
 * wrong key; -ENOENT: no drain key is configured. Any thread. */
int ts_server_check_drain_key(struct ts_server *srv, const struct ts_http_request *req);

/* The public API's policy now (a reference: ts_auth_unref() it). Any
 * thread. */
struct ts_auth *ts_server_auth(struct ts_server *srv);

/* The drain state as JSON (POST/DELETE /drain). New reference. */
json_t *ts_server_state_json(struct ts_server *srv);

#endif
