/*
 * Who may do what on the public API (docs/auth.md): the API key, user JWTs
 * verified with the operator's key, stream tokens minted here for one task,
 * and CORS.
 *
 * A struct ts_auth is built from the configuration and never changes: a
 * reload (SIGHUP) builds a new one and swaps it in, so loop threads share it
 * without a lock and hold a reference while they use it.
 */
#ifndef TS_AUTH_H
#define TS_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "clock.h"
#include "http.h"
#include "log.h"
#include "metrics.h"

struct ts_config;
struct ts_auth;

/* Why a request was refused: the label of auth_failures_total{reason}. */
enum ts_auth_reason {
    TS_AUTH_MISSING,
    TS_AUTH_INVALID_KEY,
    TS_AUTH_MALFORMED,
    TS_AUTH_ALGORITHM,
    TS_AUTH_SIGNATURE,
    TS_AUTH_EXPIRED,
    TS_AUTH_NOT_YET_VALID,
    TS_AUTH_ISSUER,
    TS_AUTH_AUDIENCE,
    TS_AUTH_CLAIMS,
    TS_AUTH_FORBIDDEN,
    TS_AUTH_ORIGIN,
    TS_AUTH_NREASONS,
};

/* The counters of auth_failures_total, one per reason; they outlive every
 * struct ts_auth a reload replaces. */
struct ts_auth_metrics {
    struct ts_series *failures[TS_AUTH_NREASONS];
};

int ts_auth_metrics_init(struct ts_auth_metrics *m, struct ts_metrics *registry);

/* Build the policy of `cfg`: reads the key files. 0, or -errno with `err`
 * saying which setting is wrong. `cluster`: stream tokens must verify on
 * every replica, so their key cannot be a random one. `prev` (a reload; NULL
 * at start) hands on its random stream key, so its tokens stay good. */
int ts_auth_new(struct ts_auth **out, const struct ts_config *cfg, bool cluster,
                const struct ts_auth *prev, const struct ts_auth_metrics *metrics,
                struct ts_clock clock, struct ts_log *log, char *err, size_t errlen);
struct ts_auth *ts_auth_ref(struct ts_auth *a);
void ts_auth_unref(struct ts_auth *a);

/* True when a request needs a credential (an API key or a JWT key is set). */
bool ts_auth_on(const struct ts_auth *a);

#define TS_SUB_MAX 255

/* Who made a request, and what it may do. */
struct ts_principal {
    enum {
        TS_PRINCIPAL_OPEN,   /* auth off: everything */
        TS_PRINCIPAL_KEY,    /* the API key: everything */
        TS_PRINCIPAL_USER,   /* a user JWT: its claim says */
        TS_PRINCIPAL_STREAM, /* a stream token: reads one task */
    } kind;
    bool admin;    /* USER: every right of the key */
    bool see_all;  /* USER: every task, not only its own */
    json_t *kinds; /* USER: globs of what it may submit (a reference) */
    char sub[TS_SUB_MAX + 1];
    char task[33];      /* STREAM: the one task */
    int64_t expires_ns; /* USER, STREAM: wall time of exp */
};

/*
 * Who is asking: 0 with `p` filled, or -EACCES after answering 401 (counted,
 * logged with the reason). Also adds the CORS headers the request's Origin
 * earns. A cookie credential on a POST or DELETE from a foreign Origin is
 * answered 403.
 */
int ts_auth_request(struct ts_auth *a, struct ts_http_request *req, struct ts_principal *p);
void ts_principal_dispose(struct ts_principal *p);

/* The check of one credential, without a request: 0 with `p` filled, or
 * -EACCES with *why. Tests and fuzzing; ts_auth_request() uses it. */
int ts_auth_verify(const struct ts_auth *a, const char *cred, size_t len, struct ts_principal *p,
                   enum ts_auth_reason *why);

/* Answer 403 for a right `p` lacks (counted and logged): `what` completes
 * "this credential may not ...". */
void ts_auth_forbid(struct ts_auth *a, struct ts_http_request *req, const struct ts_principal *p,
                    const char *what);

/* Every right: the key, an admin, or auth off. */
bool ts_principal_all(const struct ts_principal *p);
/* May it submit a task named `name` (a kind, or a command's name)? */
bool ts_principal_may_submit(const struct ts_principal *p, const char *name);
/* May it read the task `id` submitted by `sub` (NULL: by the key, or before
 * auth)? Cancel needs this and not being a stream token. */
bool ts_principal_may_see(const struct ts_principal *p, const char *id, const char *sub);
/* The submitter it records on a task: a user's sub, else NULL. */
const char *ts_principal_sub(const struct ts_principal *p);
/* What GET /v1/me says. */
json_t *ts_principal_to_json(const struct ts_principal *p);

/* A stream token for task `id` into `o` ("stream_token" and
 * "stream_token_expires_at"); nothing when auth is off or `p` holds a
 * stream token (it cannot renew itself). */
void ts_auth_add_stream_token(struct ts_auth *a, const struct ts_principal *p, json_t *o,
                              const char *id);

/* Answer an OPTIONS request (a CORS preflight) for a route allowing
 * `methods` ("GET, HEAD, POST"). */
void ts_auth_preflight(struct ts_auth *a, struct ts_http_request *req, const char *methods);

#endif
