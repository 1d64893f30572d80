/*
 * Requests of the command-line client over libcurl. One easy handle serves a
 * whole run, reset between requests (curl_easy_reset keeps the connection
 * cache, so consecutive requests reuse a connection). Answers are read into
 * memory up to RESPONSE_MAX; errors are printed once, here, with the URL and
 * what the server or the system said. The credentials live only in the
 * header strings of struct tsc_client, which are wiped when freed.
 */
#include "client.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RESPONSE_MAX (64u << 20)

void
tsc_err(const char *fmt, ...)
{
    va_list ap;

    fputs("taskstream: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int
tsc_client_init(struct tsc_client *c)
{
    memset(c, 0, sizeof(*c));
    c->timeout_ms = 30000;
    c->connect_timeout_ms = 10000;
    c->curl = curl_easy_init();
    return c->curl != NULL ? 0 : -ENOMEM;
}

static void
wipe_free(char *s)
{
    if (s == NULL)
        return;
    explicit_bzero(s, strlen(s));
    free(s);
}

void
tsc_client_dispose(struct tsc_client *c)
{
    wipe_free(c->auth_header);
    wipe_free(c->drain_header);
    c->auth_header = c->drain_header = NULL;
    if (c->curl != NULL)
        curl_easy_cleanup(c->curl);
    c->curl = NULL;
}

int
tsc_client_set_bearer(char **header, const char *secret)
{
    static const char prefix[] = "Authorization: Bearer ";
    size_t n = strlen(secret), i;
    char *h;

    if (n == 0)
        return -EINVAL;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)secret[i];

        if (ch <= ' ' || ch == 0x7f)
            return -EINVAL;
    }
    h = malloc(sizeof(prefix) + n);
    if (h == NULL)
        return -ENOMEM;
    memcpy(h, prefix, sizeof(prefix) - 1);
    memcpy(h + sizeof(prefix) - 1, secret, n + 1);
    wipe_free(*header);
    *header = h;
    return 0;
}

const char *
tsc_client_base(const struct tsc_client *c, enum tsc_target target)
{
    return target == TSC_ADMIN ? c->admin_url : c->url;
}

struct body_sink {
    char *p;
    size_t len;
    size_t cap;
    bool too_big;
};

static size_t
on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct body_sink *b = arg;
    size_t n = size * nmemb;
    char *p;

    if (n > RESPONSE_MAX - b->len) {
        b->too_big = true;
        return 0;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 4096;

        while (cap < b->len + n + 1)
            cap *= 2;
        p = realloc(b->p, cap);
        if (p == NULL)
            return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return n;
}

bool
tsc_header_add(struct curl_slist **list, const char *header)
{
    struct curl_slist *l = curl_slist_append(*list, header);

    if (l == NULL)
        return false;
    *list = l;
    return true;
}

bool
tsc_transient(CURLcode cc)
{
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
        return true;
    default:
        return false;
    }
}

void
tsc_report_transfer_error(const char *url, CURLcode cc, long os_errno, const char *errbuf)
{
    const char *why = errbuf != NULL && errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc);

    if (cc == CURLE_COULDNT_CONNECT && os_errno != 0)
        tsc_err("cannot connect to %s: %s", url, strerror((int)os_errno));
    else if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST)
        tsc_err("cannot connect to %s: %s", url, why);
    else
        tsc_err("request to %s failed: %s", url, why);
}

int
tsc_request(struct tsc_client *c, enum tsc_target target, const char *method, const char *path,
            const json_t *body, struct tsc_response *resp)
{
    const char *base = tsc_client_base(c, target);
    const char *cred = target == TSC_ADMIN ? c->drain_header : c->auth_header;
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    struct body_sink sink = {0};
    char *url = NULL, *text = NULL;
    long os_errno = 0;
    CURLcode cc;
    int rc = TSC_EXIT_CONNECT;
    size_t n;

    memset(resp, 0, sizeof(*resp));
    n = strlen(base) + strlen(path) + 1;
    url = malloc(n);
    if (url == NULL) {
        tsc_err("out of memory");
        return TSC_EXIT_CONNECT;
    }
    snprintf(url, n, "%s%s", base, path);

    if (!tsc_header_add(&headers, "Accept: application/json") ||
        (cred != NULL && !tsc_header_add(&headers, cred)) ||
        (body != NULL && !tsc_header_add(&headers, "Content-Type: application/json")) ||
        !tsc_header_add(&headers, "Expect:")) {
        tsc_err("out of memory");
        goto out;
    }
    if (body != NULL) {
        text = json_dumps(body, JSON_COMPACT);
        if (text == NULL) {
            tsc_err("out of memory");
            goto out;
        }
    }

    curl_easy_reset(c->curl);
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c->curl, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(c->curl, CURLOPT_USERAGENT, "taskstream/" TSC_VERSION);
    if (text != NULL) {
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, text);
        curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(text));
    }
    cc = curl_easy_perform(c->curl);
    if (cc != CURLE_OK) {
        if (sink.too_big) {
            tsc_err("the answer of %s is larger than %u MiB", url, RESPONSE_MAX >> 20);
        } else {
            curl_easy_getinfo(c->curl, CURLINFO_OS_ERRNO, &os_errno);
            tsc_report_transfer_error(url, cc, os_errno, errbuf);
        }
        goto out;
    }
    curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &resp->status);
    if (sink.p == NULL) {
        sink.p = calloc(1, 1);
        if (sink.p == NULL) {
            tsc_err("out of memory");
            goto out;
        }
    }
    resp->body = sink.p;
    resp->len = sink.len;
    sink.p = NULL;
    resp->json = json_loadb(resp->body, resp->len, 0, NULL);
    rc = 0;

out:
    /* The request is done with the header list: curl must not keep it. */
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(headers);
    free(sink.p);
    free(text);
    free(url);
    return rc;
}

void
tsc_response_dispose(struct tsc_response *resp)
{
    free(resp->body);
    json_decref(resp->json);
    memset(resp, 0, sizeof(*resp));
}

int
tsc_report_http_error(const struct tsc_client *c, const char *method, const char *path,
                      const struct tsc_response *resp)
{
    const char *code = json_string_value(json_object_get(resp->json, "error"));
    const char *msg = json_string_value(json_object_get(resp->json, "message"));

    if (msg != NULL)
        tsc_err("%s (HTTP %ld%s%s)", msg, resp->status, code != NULL ? " " : "",
                code != NULL ? code : "");
    else if (code != NULL)
        tsc_err("%s %s: HTTP %ld %s", method, path, resp->status, code);
    else
        tsc_err("%s %s: HTTP %ld without an error message", method, path, resp->status);
    if (resp->status == 401 && !c->have_token && path[0] == '/' && strncmp(path, "/v1/", 4) == 0)
        tsc_err("the API needs a token: pass --token-file FILE, or set TASKSTREAM_TOKEN_FILE "
                "or TASKSTREAM_TOKEN");
    return TSC_EXIT_API;
}

int
tsc_call(struct tsc_client *c, enum tsc_target target, const char *method, const char *path,
         const json_t *body, struct tsc_response *resp)
{
    int rc = tsc_request(c, target, method, path, body, resp);

    if (rc != 0)
        return rc;
    if (resp->status >= 200 && resp->status < 300)
        return 0;
    rc = tsc_report_http_error(c, method, path, resp);
    tsc_response_dispose(resp);
    return rc;
}
