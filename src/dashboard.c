/*
 * The dashboard: the static page of web/ served from the binary.
 *
 * The build turns each file of web/ into the bytes of a C array (CMake runs
 * `xxd -i` into <build>/web/web_<name>.inc), so the daemon never reads a file at run
 * time and the page is exactly the one the binary was built with. The files
 * live in a const table; nothing here is mutable or allocated per request
 * beyond the response the front copies them into.
 *
 * Every answer carries a strict Content-Security-Policy (scripts and styles
 * only from this origin, no inline code, no framing), nosniff, and
 * "Cache-Control: no-cache" with an ETag, so a browser revalidates on every
 * load (a new binary's page is seen at once) and gets a small 304 when
 * nothing changed. The ETag is a hash of the bytes, computed per request:
 * the files are a few kilobytes.
 *
 * The page uses only the public API (GET/POST /v1/tasks and the event
 * streams) from the browser; it has no privileges of its own. Loop threads.
 */
#include <stdio.h>
#include <string.h>

#include "dashboard.h"

static const unsigned char index_html[] = {
#include "web_index_html.inc"
};
static const unsigned char app_js[] = {
#include "web_app_js.inc"
};
static const unsigned char style_css[] = {
#include "web_style_css.inc"
};
static const unsigned char icon_svg[] = {
#include "web_icon_svg.inc"
};

struct asset {
    const char *name;
    const char *type;
    const unsigned char *data;
    size_t len;
};

static const struct asset page = {"index.html", "text/html; charset=utf-8", index_html,
                                  sizeof(index_html)};

static const struct asset assets[] = {
    {"app.js", "text/javascript; charset=utf-8", app_js, sizeof(app_js)},
    {"style.css", "text/css; charset=utf-8", style_css, sizeof(style_css)},
    {"icon.svg", "image/svg+xml", icon_svg, sizeof(icon_svg)},
};

/* connect-src is covered by default-src: fetch and EventSource reach this
 * origin only. */
static const char csp[] = "default-src 'self'; base-uri 'none'; form-action 'self'; "
                          "frame-ancestors 'none'; object-src 'none'";

/* FNV-1a, 64 bits: an ETag needs to change with the bytes, not to resist
 * an adversary. */
static void
format_etag(const struct asset *a, char *buf, size_t len)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);

    for (size_t i = 0; i < a->len; i++) {
        h ^= a->data[i];
        h *= UINT64_C(0x100000001b3);
    }
    snprintf(buf, len, "\"%016llx-%zx\"", (unsigned long long)h, a->len);
}

/* True when If-None-Match lists `etag` (or is "*"). */
static bool
etag_matches(const char *if_none_match, const char *etag)
{
    size_t n = strlen(etag);
    const char *p = if_none_match;

    if (p == NULL)
        return false;
    while (*p != '\0') {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '*')
            return true;
        if (strncmp(p, "W/", 2) == 0)
            p += 2;
        if (strncmp(p, etag, n) == 0 && (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
            return true;
        p += strcspn(p, ",");
    }
    return false;
}

static void
add_headers(struct ts_http_request *req, const char *etag)
{
    ts_http_add_header(req, "Cache-Control", "no-cache");
    ts_http_add_header(req, "ETag", etag);
    ts_http_add_header(req, "Content-Security-Policy", csp);
    ts_http_add_header(req, "X-Content-Type-Options", "nosniff");
    ts_http_add_header(req, "Referrer-Policy", "no-referrer");
}

static void
serve(struct ts_http_request *req, const struct asset *a)
{
    char etag[48];

    format_etag(a, etag, sizeof(etag));
    add_headers(req, etag);
    if (etag_matches(ts_http_header(req, "If-None-Match"), etag))
        ts_http_reply(req, 304, NULL, NULL, 0);
    else
        ts_http_reply(req, 200, a->type, a->data, a->len);
}

void
ts_dashboard_page(void *app, struct ts_http_request *req, const char *id)
{
    (void)app;
    (void)id;
    serve(req, &page);
}

void
ts_dashboard_asset(void *app, struct ts_http_request *req, const char *id)
{
    (void)app;
    for (size_t i = 0; i < TS_ARRAY_SIZE(assets); i++) {
        if (strcmp(assets[i].name, id) == 0) {
            serve(req, &assets[i]);
            return;
        }
    }
    ts_http_reply_error(req, 404, "not_found", "no dashboard file \"%.64s\" (the page is at /)",
                        id);
}
