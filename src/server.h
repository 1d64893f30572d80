/*
 * The server: the library's composition of services (task service, SSE
 * streams, metrics, the two HTTP listeners), shared by server.c, api.c
 * (public routes) and admin.c (admin routes).
 */
#ifndef TS_SERVER_H
#define TS_SERVER_H

#include <pthread.h>

#include "clock.h"
#include "drain.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "sse.h"
#include "task.h"
#include "taskstream.h"

struct ts_server {
    struct ts_config cfg;         /* a deep copy */
    struct ts_coordinator *coord; /* borrowed: the owner decides the lifecycle */
    struct ts_drain_view drain;
    struct ts_log *log; /* borrowed */
    struct ts_clock clock;

    struct ts_metrics *metrics;
    struct ts_task_service *tasks;
    struct ts_commands *commands; /* COMMANDS_FILE; NULL without one; freed after tasks */
    struct ts_sse *sse;
    struct ts_http *public_http;
    struct ts_http *admin_http;
    bool started;

    int drain_sub;
    struct ts_family *http_requests;  /* http_requests_total{listener,route,code} */
    struct ts_family *drain_requests; /* graceful_shutdown_requests_total{reason} */
    struct ts_series *drain_auth_failures;
    struct ts_series *shutdown_duration; /* task_graceful_shutdown_duration_seconds */
    bool seen_draining;                  /* drain_sub callback state */
    bool seen_shutdown;

    pthread_t housekeeper;
    pthread_mutex_t hk_mu;
    pthread_cond_t hk_cv;
    bool hk_stop; /* guarded by hk_mu */
};

extern const struct ts_route ts_api_routes[];
extern const size_t ts_api_nroutes;
extern const struct ts_route ts_admin_routes[];
extern const size_t ts_admin_nroutes;

/* The drain state as JSON (POST/DELETE /drain). New reference. */
json_t *ts_server_state_json(struct ts_server *srv);

#endif
