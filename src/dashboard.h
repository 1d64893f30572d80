/*
 * The dashboard: a static page (web/index.html, app.js, style.css) compiled
 * into the binary and served on the public listener at "/" and
 * "/assets/{name}".
 */
#ifndef TS_DASHBOARD_H
#define TS_DASHBOARD_H

#include "http.h"

/* GET "/": the page. `app` and `id` are unused. loop thread. */
void ts_dashboard_page(void *app, struct ts_http_request *req, const char *id);

/* GET "/assets/{id}": one of the page's files by name, 404 for any other
 * name. loop thread. */
void ts_dashboard_asset(void *app, struct ts_http_request *req, const char *id);

#endif
