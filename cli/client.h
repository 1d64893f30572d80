/*
 * The HTTP side of the command-line client: one libcurl easy handle reused
 * for every request of a run (keep-alive), the credentials that go with each
 * listener, and the client's exit codes. Single-threaded.
 */
#ifndef TSC_CLIENT_H
#define TSC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <curl/curl.h>
#include <jansson.h>

/* Exit statuses of taskstream (docs/cli.md, "Exit status"). */
#define TSC_EXIT_OK 0
#define TSC_EXIT_FAILED 1        /* the task failed without an exit code of its own */
#define TSC_EXIT_USAGE 2         /* bad command line, unreadable token file */
#define TSC_EXIT_API 3           /* the server answered with an error */
#define TSC_EXIT_CONNECT 4       /* the server could not be reached */
#define TSC_EXIT_CANCELLED 5     /* the followed task was cancelled */
#define TSC_EXIT_INTERRUPTED 130 /* SIGINT during follow */

/* Which listener a request goes to. The API's token is sent only to the
 * public listener, the drain key only to the admin listener. */
enum tsc_target {
    TSC_PUBLIC,
    TSC_ADMIN,
};

struct tsc_client {
    const char *url;       /* public API base, without a trailing slash */
    const char *admin_url; /* admin listener base, without a trailing slash */
    char *auth_header;     /* "Authorization: Bearer ..." or NULL; owned, never printed */
    char *drain_header;    /* the same with the drain key, or NULL; owned */
    long timeout_ms;       /* a whole request (not a stream) */
    long connect_timeout_ms;
    bool have_token; /* for the hint after a 401 */
    CURL *curl;      /* owned */
};

/* A finished request. `body` is NUL-terminated (owned); `json` is the body
 * parsed when it is JSON, else NULL (owned). */
struct tsc_response {
    long status;
    char *body;
    size_t len;
    json_t *json;
};

/* Set up `c` (caller memory). Returns 0, or -ENOMEM. */
int tsc_client_init(struct tsc_client *c);

/* Free what `c` owns, wiping the credentials first. */
void tsc_client_dispose(struct tsc_client *c);

/* Set `c->*header` to "Authorization: Bearer <secret>". Returns 0, or
 * -EINVAL for a secret with a control character or a space (it would break
 * the header), -ENOMEM. */
int tsc_client_set_bearer(char **header, const char *secret);

/* Send one request to `target` + `path` (which starts with '/'), with `body`
 * as JSON when not NULL. Returns 0 with `resp` filled for any HTTP answer;
 * TSC_EXIT_CONNECT after printing why when no answer came. Release `resp`
 * with tsc_response_dispose(). */
int tsc_request(struct tsc_client *c, enum tsc_target target, const char *method, const char *path,
                const json_t *body, struct tsc_response *resp);

void tsc_response_dispose(struct tsc_response *resp);

/* Print the server's error answer on stderr: its message, the status and the
 * error code, and a hint for 401. Returns TSC_EXIT_API. */
int tsc_report_http_error(const struct tsc_client *c, const char *method, const char *path,
                          const struct tsc_response *resp);

/* tsc_request(), then: a 2xx answer is 0 with `resp` kept; any other is
 * reported (tsc_report_http_error) and disposed. Returns 0 or an exit code. */
int tsc_call(struct tsc_client *c, enum tsc_target target, const char *method, const char *path,
             const json_t *body, struct tsc_response *resp);

/* The base URL of `target`. */
const char *tsc_client_base(const struct tsc_client *c, enum tsc_target target);

/* Print "cannot connect to URL: why" for a transfer that failed with `cc`.
 * `os_errno` is CURLINFO_OS_ERRNO, or 0. */
void tsc_report_transfer_error(const char *url, CURLcode cc, long os_errno, const char *errbuf);

/* Is `cc` a failure a reconnect may cure (refused, reset, cut, timed out)? */
bool tsc_transient(CURLcode cc);

/* Append a copy of `header` to `*list`. Returns false when out of memory
 * (the list is unchanged). */
bool tsc_header_add(struct curl_slist **list, const char *header);

/* Print "taskstream: " and the message on stderr. */
void tsc_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
