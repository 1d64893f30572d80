/*
 * Credentials and rights (docs/auth.md).
 *
 * A credential comes from the first of: "Authorization: Bearer", the
 * access_token query parameter (what an EventSource can send), the
 * AUTH_COOKIE cookie. It is the API key (compared in constant time), a JWT
 * of the operator's issuer, or a stream token minted here.
 *
 * JWTs: libjwt checks the signature; we decide everything else before it
 * runs. The algorithm is the configured key's (HS256 for a secret, RS256 or
 * ES256 for a public key) and the token's header must name exactly it, so
 * "none" and HS/RS confusion never reach a verifier. The claims (exp
 * required, nbf, iss, aud, sub and our "taskstream" claim) are read from
 * the payload we decoded ourselves: libjwt 1.10 checks none of them.
 *
 * Stream tokens are JWTs too, HS256 with a key of their own and the header
 * "kid": "taskstream-stream", so they never pass for a user's token and a
 * user's token never passes for one: each verifies with its own key.
 *
 * A failure is answered with one body whatever the reason (the client
 * learns nothing about our checks); the log line and auth_failures_total
 * say which. No token or key ever reaches the log.
 */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "auth.h"
#include "config.h"
#include "taskstream.h"
#include "util.h"

#define NS_PER_S INT64_C(1000000000)
#define NS_PER_MS INT64_C(1000000)
/* Longer than any token an issuer mints, short enough to parse cheaply. */
#define TOKEN_MAX 8192
#define KEY_FILE_MAX 16384
#define HMAC_KEY_MIN 32
#define STREAM_KID "taskstream-stream"
#define STREAM_ISS "taskstream"
#define REALM "taskstream"
#define PREFLIGHT_MAX_AGE "600"

static const char *const reason_names[TS_AUTH_NREASONS] = {
    [TS_AUTH_MISSING] = "missing",
    [TS_AUTH_INVALID_KEY] = "invalid_key",
    [TS_AUTH_MALFORMED] = "malformed",
    [TS_AUTH_ALGORITHM] = "algorithm",
    [TS_AUTH_SIGNATURE] = "signature",
    [TS_AUTH_EXPIRED] = "expired",
    [TS_AUTH_NOT_YET_VALID] = "not_yet_valid",
    [TS_AUTH_ISSUER] = "issuer",
    [TS_AUTH_AUDIENCE] = "audience",
    [TS_AUTH_CLAIMS] = "claims",
    [TS_AUTH_FORBIDDEN] = "forbidden",
    [TS_AUTH_ORIGIN] = "origin",
};

struct key {
    jwt_alg_t alg; /* JWT_ALG_NONE: no key */
    unsigned char *bytes;
    size_t len;
};

struct ts_auth {
    atomic_uint refs;
    char *api_key; /* NULL: none */
    struct key user, stream;
    bool stream_random;      /* drawn at start, not read from a file */
    char *issuer, *audience; /* NULL: not checked */
    int64_t leeway_ns, stream_ttl_ns;
    char *cookie;  /* NULL: cookies are not read */
    char *origins; /* "a,b,c" as configured; NULL: no CORS */
    bool any_origin;
    struct ts_auth_metrics metrics;
    struct ts_clock clock;
    struct ts_log *log;
};

int
ts_auth_metrics_init(struct ts_auth_metrics *m, struct ts_metrics *registry)
{
    static const char *const label[] = {"reason"};
    struct ts_family *f = ts_metrics_family(
        registry, TS_METRIC_COUNTER, "auth_failures_total",
        "Requests of the public API refused for their credential (401) or its rights (403), "
        "by reason.",
        1, label, NULL, 0);

    if (f == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < TS_AUTH_NREASONS; i++) {
        m->failures[i] = ts_family_series(f, &reason_names[i]);
        if (m->failures[i] == NULL)
            return -ENOMEM;
    }
    return 0;
}

/* ---- building the policy ---- */

static int failf(char *err, size_t errlen, const char *setting, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int
failf(char *err, size_t errlen, const char *setting, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(err, errlen, "%s: %s", setting, msg);
    return -EINVAL;
}

/* The bytes of a small file, one trailing newline stripped. */
static int
read_key_file(const char *setting, const char *path, struct key *k, char *err, size_t errlen)
{
    unsigned char *buf = malloc(KEY_FILE_MAX + 1);
    size_t len = 0;
    int fd, rc = 0;

    if (buf == NULL)
        return -ENOMEM;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        rc = failf(err, errlen, setting, "cannot read %s: %s", path, ts_strerror(-errno));
        goto out;
    }
    while (len <= KEY_FILE_MAX) {
        ssize_t n = read(fd, buf + len, KEY_FILE_MAX + 1 - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0)
                rc = failf(err, errlen, setting, "cannot read %s: %s", path, ts_strerror(-errno));
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    if (rc == 0 && len > KEY_FILE_MAX)
        rc = failf(err, errlen, setting, "%s is larger than %d bytes; it should hold one key", path,
                   KEY_FILE_MAX);
    if (rc != 0)
        goto out;
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    k->bytes = buf;
    k->len = len;
    return 0;
out:
    free(buf);
    return rc;
}

static int
load_secret(const char *setting, const char *path, struct key *k, char *err, size_t errlen)
{
    int rc = read_key_file(setting, path, k, err, errlen);

    if (rc != 0)
        return rc;
    if (k->len < HMAC_KEY_MIN)
        return failf(err, errlen, setting,
                     "%s holds %zu bytes; an HS256 key needs at least %d (e.g. "
                     "`head -c 32 /dev/urandom > %s`)",
                     path, k->len, HMAC_KEY_MIN, path);
    k->alg = JWT_ALG_HS256;
    return 0;
}

/* A PEM public key: its type decides the algorithm. */
static int
load_public_key(const char *setting, const char *path, struct key *k, char *err, size_t errlen)
{
    int rc = read_key_file(setting, path, k, err, errlen);
    EVP_PKEY *pkey = NULL;
    BIO *bio;

    if (rc != 0)
        return rc;
    bio = BIO_new_mem_buf(k->bytes, (int)k->len);
    if (bio != NULL)
        pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (pkey == NULL)
        return failf(err, errlen, setting, "%s holds no PEM public key (\"-----BEGIN PUBLIC KEY\")",
                     path);
    if (EVP_PKEY_base_id(pkey) == EVP_PKEY_RSA) {
        if (EVP_PKEY_get_bits(pkey) < 2048)
            rc = failf(err, errlen, setting, "the RSA key in %s has %d bits; RS256 needs 2048",
                       path, EVP_PKEY_get_bits(pkey));
        k->alg = JWT_ALG_RS256;
    } else if (EVP_PKEY_base_id(pkey) == EVP_PKEY_EC) {
        char group[64] = "";
        size_t glen;

        if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), &glen) != 1 ||
            strcmp(group, "prime256v1") != 0)
            rc = failf(err, errlen, setting, "the EC key in %s is on %s; ES256 needs P-256", path,
                       group[0] != '\0' ? group : "an unknown curve");
        k->alg = JWT_ALG_ES256;
    } else {
        rc = failf(err, errlen, setting, "the key in %s is neither RSA nor EC P-256", path);
    }
    EVP_PKEY_free(pkey);
    return rc;
}

/* "http://host[:port]" or "https://...", as a browser serializes it. */
static bool
origin_ok(const char *o, size_t len)
{
    size_t scheme = strncmp(o, "http://", 7) == 0 ? 7 : strncmp(o, "https://", 8) == 0 ? 8 : 0;

    if (scheme == 0 || len == scheme)
        return false;
    for (size_t i = scheme; i < len; i++)
        if (!((o[i] >= 'a' && o[i] <= 'z') || (o[i] >= '0' && o[i] <= '9') || o[i] == '.' ||
              o[i] == '-' || o[i] == ':' || o[i] == '[' || o[i] == ']'))
            return false;
    return true;
}

static int
load_origins(struct ts_auth *a, const char *list, char *err, size_t errlen)
{
    const char *p = list;

    if (strcmp(list, "*") == 0) {
        a->any_origin = true;
        return 0;
    }
    while (*p != '\0') {
        size_t n = strcspn(p, ",");

        if (!origin_ok(p, n))
            return failf(err, errlen, "CORS_ORIGINS",
                         "\"%.*s\" is not an origin; write scheme://host[:port] in lower case, "
                         "no path, separated by commas, or * alone",
                         (int)(n < 80 ? n : 80), p);
        p += n + (p[n] == ',');
    }
    a->origins = strdup(list);
    return a->origins != NULL ? 0 : -ENOMEM;
}

static bool
cookie_name_ok(const char *s)
{
    for (; *s != '\0'; s++)
        if (*s <= ' ' || *s >= 127 || strchr("()<>@,;:\\\"/[]?={}", *s) != NULL)
            return false;
    return true;
}

static void
auth_free(struct ts_auth *a)
{
    free(a->api_key);
    free(a->user.bytes);
    if (a->stream.bytes != NULL)
        OPENSSL_cleanse(a->stream.bytes, a->stream.len);
    free(a->stream.bytes);
    free(a->issuer);
    free(a->audience);
    free(a->cookie);
    free(a->origins);
    free(a);
}

static char *
dup_or_null(const char *s)
{
    return s != NULL && *s != '\0' ? strdup(s) : NULL;
}

int
ts_auth_new(struct ts_auth **out, const struct ts_config *cfg, bool cluster,
            const struct ts_auth *prev, const struct ts_auth_metrics *metrics,
            struct ts_clock clock, struct ts_log *log, char *err, size_t errlen)
{
    struct ts_auth *a = calloc(1, sizeof(*a));
    int rc = 0;

    *out = NULL;
    err[0] = '\0';
    if (a == NULL)
        return -ENOMEM;
    atomic_init(&a->refs, 1);
    a->metrics = *metrics;
    a->clock = clock;
    a->log = log;
    a->leeway_ns = cfg->jwt_leeway_ms * NS_PER_MS;
    a->stream_ttl_ns = cfg->stream_token_ttl_ms * NS_PER_MS;
    a->api_key = dup_or_null(cfg->api_auth_key);
    a->issuer = dup_or_null(cfg->jwt_issuer);
    a->audience = dup_or_null(cfg->jwt_audience);
    a->cookie = dup_or_null(cfg->auth_cookie);
    if (cfg->jwt_secret_file != NULL && cfg->jwt_public_key_file != NULL)
        rc = failf(err, errlen, "JWT_SECRET_FILE",
                   "set it or JWT_PUBLIC_KEY_FILE, not both: the key decides the algorithm");
    else if (cfg->jwt_secret_file != NULL)
        rc = load_secret("JWT_SECRET_FILE", cfg->jwt_secret_file, &a->user, err, errlen);
    else if (cfg->jwt_public_key_file != NULL)
        rc =
            load_public_key("JWT_PUBLIC_KEY_FILE", cfg->jwt_public_key_file, &a->user, err, errlen);
    if (rc == 0 && cfg->stream_token_secret_file != NULL) {
        rc = load_secret("STREAM_TOKEN_SECRET_FILE", cfg->stream_token_secret_file, &a->stream, err,
                         errlen);
    } else if (rc == 0 && cluster && ts_auth_on(a)) {
        rc = failf(err, errlen, "STREAM_TOKEN_SECRET_FILE",
                   "cluster mode with authentication needs it: every replica must accept the "
                   "stream tokens of the others");
    } else if (rc == 0) {
        /* One process: a key of its own; its tokens die with it, as do
         * its tasks. */
        a->stream_random = true;
        a->stream.alg = JWT_ALG_HS256;
        a->stream.len = HMAC_KEY_MIN;
        a->stream.bytes = malloc(a->stream.len);
        if (a->stream.bytes == NULL)
            rc = -ENOMEM;
        else if (prev != NULL && prev->stream_random)
            memcpy(a->stream.bytes, prev->stream.bytes, a->stream.len);
        else if (getrandom(a->stream.bytes, a->stream.len, 0) != (ssize_t)a->stream.len)
            rc = failf(err, errlen, "STREAM_TOKEN_SECRET_FILE", "cannot draw a random key: %s",
                       ts_strerror(-errno));
    }
    if (rc == 0 && a->cookie != NULL && !cookie_name_ok(a->cookie))
        rc = failf(err, errlen, "AUTH_COOKIE", "\"%s\" is not a cookie name", a->cookie);
    if (rc == 0 && cfg->cors_origins != NULL)
        rc = load_origins(a, cfg->cors_origins, err, errlen);
    if (rc == 0 && ((cfg->api_auth_key != NULL && a->api_key == NULL) ||
                    (cfg->jwt_issuer != NULL && a->issuer == NULL) ||
                    (cfg->jwt_audience != NULL && a->audience == NULL) ||
                    (cfg->auth_cookie != NULL && a->cookie == NULL)))
        rc = -ENOMEM;
    if (rc != 0) {
        if (rc == -ENOMEM && err[0] == '\0')
            snprintf(err, errlen, "out of memory");
        auth_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

struct ts_auth *
ts_auth_ref(struct ts_auth *a)
{
    atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
    return a;
}

void
ts_auth_unref(struct ts_auth *a)
{
    if (a != NULL && atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) == 1)
        auth_free(a);
}

bool
ts_auth_on(const struct ts_auth *a)
{
    return a->api_key != NULL || a->user.alg != JWT_ALG_NONE;
}

/* ---- CORS ---- */

static bool
origin_allowed(const struct ts_auth *a, const char *origin)
{
    size_t n = strlen(origin);

    if (a->any_origin)
        return true;
    for (const char *p = a->origins; p != NULL && *p != '\0';) {
        size_t len = strcspn(p, ",");

        if (len == n && memcmp(p, origin, n) == 0)
            return true;
        p += len + (p[len] == ',');
    }
    return false;
}

/* The headers an allowed Origin earns; true when it is allowed. */
static bool
add_cors(const struct ts_auth *a, struct ts_http_request *req)
{
    const char *origin = ts_http_header(req, "Origin");

    if (a->origins == NULL && !a->any_origin)
        return false;
    if (!a->any_origin)
        ts_http_add_header(req, "Vary", "Origin"); /* the answer depends on it */
    if (origin == NULL || !origin_allowed(a, origin))
        return false;
    ts_http_add_header(req, "Access-Control-Allow-Origin", a->any_origin ? "*" : origin);
    if (!a->any_origin)
        ts_http_add_header(req, "Access-Control-Allow-Credentials", "true");
    return true;
}

/* The headers of an answer a page on an allowed origin may read. */
static void
add_cors_answer(const struct ts_auth *a, struct ts_http_request *req)
{
    if (add_cors(a, req))
        ts_http_add_header(req, "Access-Control-Expose-Headers",
                           "Location, Retry-After, WWW-Authenticate");
}

void
ts_auth_preflight(struct ts_auth *a, struct ts_http_request *req, const char *methods)
{
    ts_http_add_header(req, "Allow", methods);
    if (ts_http_header(req, "Access-Control-Request-Method") != NULL && add_cors(a, req)) {
        ts_http_add_header(req, "Access-Control-Allow-Methods", methods);
        ts_http_add_header(req, "Access-Control-Allow-Headers",
                           "Authorization, Content-Type, Last-Event-ID");
        ts_http_add_header(req, "Access-Control-Max-Age", PREFLIGHT_MAX_AGE);
    }
    ts_http_reply(req, 204, NULL, NULL, 0);
}

/* ---- answers ---- */

enum source { FROM_HEADER, FROM_QUERY, FROM_COOKIE };
static const char *const source_names[] = {"header", "query", "cookie"};

struct check {
    enum ts_auth_reason reason;
    char detail[128]; /* for the log: never the token */
};

static int refuse(struct check *c, enum ts_auth_reason reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
refuse(struct check *c, enum ts_auth_reason reason, const char *fmt, ...)
{
    va_list ap;

    c->reason = reason;
    va_start(ap, fmt);
    vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
    va_end(ap);
    return -EACCES;
}

static void
log_refusal(struct ts_auth *a, struct ts_http_request *req, enum ts_auth_reason reason,
            const char *source, const char *detail, const char *sub)
{
    ts_series_inc(a->metrics.failures[reason]);
    ts_log(a->log, TS_LOG_INFO, "request refused", TS_F_STR("reason", reason_names[reason]),
           TS_F_STR("detail", detail), TS_F_STR("method", ts_http_method(req)),
           TS_F_STR("route", ts_http_route_name(req)), TS_F_STR("credential", source),
           TS_F_STR("sub", sub), TS_F_END);
}

static void
challenge(struct ts_http_request *req, const char *error)
{
    char value[96];

    if (error != NULL)
        snprintf(value, sizeof(value), "Bearer realm=\"%s\", error=\"%s\"", REALM, error);
    else
        snprintf(value, sizeof(value), "Bearer realm=\"%s\"", REALM);
    ts_http_add_header(req, "WWW-Authenticate", value);
}

void
ts_auth_forbid(struct ts_auth *a, struct ts_http_request *req, const struct ts_principal *p,
               const char *what)
{
    log_refusal(a, req, TS_AUTH_FORBIDDEN, NULL, what, p->sub[0] != '\0' ? p->sub : NULL);
    challenge(req, "insufficient_scope");
    ts_http_reply_error(req, 403, "forbidden", "this credential may not %s", what);
}

/* ---- tokens ---- */

static int
b64url_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '-')
        return 62;
    if (ch == '_')
        return 63;
    return -1;
}

/* Unpadded base64url (RFC 7515 2) of [p, p+len) into out (len * 3 / 4 + 1
 * bytes). Returns the length, or -1. */
static ssize_t
b64url_decode(const char *p, size_t len, unsigned char *out)
{
    uint32_t acc = 0;
    size_t n = 0;
    unsigned bits = 0;

    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_value((unsigned char)p[i]);

        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    /* The leftover bits of the last character must be zero (canonical). */
    if ((acc & ((1u << bits) - 1)) != 0)
        return -1;
    return (ssize_t)n;
}

static bool
b64url_ok(const char *p, size_t len)
{
    unsigned char *buf = malloc(len * 3 / 4 + 1);
    bool ok = buf != NULL && len > 0 && b64url_decode(p, len, buf) >= 0;

    free(buf);
    return ok;
}

static json_t *
b64url_json(const char *p, size_t len)
{
    unsigned char *buf = malloc(len * 3 / 4 + 1);
    ssize_t n = buf != NULL ? b64url_decode(p, len, buf) : -1;
    json_t *o =
        n >= 0 ? json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL) : NULL;

    free(buf);
    if (o != NULL && !json_is_object(o)) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

static const char *
alg_name(jwt_alg_t alg)
{
    return alg == JWT_ALG_HS256   ? "HS256"
           : alg == JWT_ALG_RS256 ? "RS256"
           : alg == JWT_ALG_ES256 ? "ES256"
                                  : "none";
}

/* A JSON number as seconds since the epoch, into nanoseconds. */
static bool
json_time_ns(const json_t *v, int64_t *ns)
{
    double s;

    if (!json_is_number(v))
        return false;
    s = json_number_value(v);
    if (!(s > -9e9 && s < 9e9)) /* fits in int64_t nanoseconds; not NaN */
        return false;
    *ns = (int64_t)(s * 1e9);
    return true;
}

static bool
audience_holds(const json_t *aud, const char *want)
{
    size_t i;
    json_t *v;

    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    json_array_foreach(aud, i, v)
        if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
            return true;
    return false;
}

/* Our claim: {"kinds": [globs], "see": "own"|"all", "admin": bool,
 * "task": id}. Absent: no right but reading one's own tasks. */
static int
read_rights(const json_t *claim, struct ts_principal *p, struct check *c)
{
    const json_t *kinds, *see, *admin, *task;
    size_t i;
    json_t *v;

    if (claim == NULL)
        return 0;
    if (!json_is_object(claim))
        return refuse(c, TS_AUTH_CLAIMS, "the taskstream claim is not an object");
    kinds = json_object_get(claim, "kinds");
    see = json_object_get(claim, "see");
    admin = json_object_get(claim, "admin");
    task = json_object_get(claim, "task");
    if (kinds != NULL && !json_is_array(kinds))
        return refuse(c, TS_AUTH_CLAIMS, "taskstream.kinds is not an array");
    json_array_foreach(kinds, i, v)
        if (!json_is_string(v))
            return refuse(c, TS_AUTH_CLAIMS, "taskstream.kinds holds a non-string");
    if (see != NULL && !(json_is_string(see) && (strcmp(json_string_value(see), "own") == 0 ||
                                                 strcmp(json_string_value(see), "all") == 0)))
        return refuse(c, TS_AUTH_CLAIMS, "taskstream.see is neither \"own\" nor \"all\"");
    if (admin != NULL && !json_is_boolean(admin))
        return refuse(c, TS_AUTH_CLAIMS, "taskstream.admin is not a boolean");
    if (task != NULL) {
        if (!json_is_string(task) || !ts_is_task_id(json_string_value(task)))
            return refuse(c, TS_AUTH_CLAIMS, "taskstream.task is not a task id");
        p->kind = TS_PRINCIPAL_STREAM;
        snprintf(p->task, sizeof(p->task), "%s", json_string_value(task));
        return 0;
    }
    p->kinds = kinds != NULL ? json_incref((json_t *)kinds) : NULL;
    p->see_all = see != NULL && strcmp(json_string_value(see), "all") == 0;
    p->admin = json_is_true(admin);
    return 0;
}

static int
check_claims(const struct ts_auth *a, const json_t *claims, bool ours, struct ts_principal *p,
             struct check *c)
{
    int64_t now = ts_clock_wall_ns(&a->clock), exp, nbf;
    const json_t *nbf_v = json_object_get(claims, "nbf");
    const json_t *sub = json_object_get(claims, "sub");
    const json_t *iss = json_object_get(claims, "iss");
    const char *want_iss = ours ? STREAM_ISS : a->issuer;

    if (!json_time_ns(json_object_get(claims, "exp"), &exp))
        return refuse(c, TS_AUTH_CLAIMS, "no numeric exp");
    if (now > exp + a->leeway_ns)
        return refuse(c, TS_AUTH_EXPIRED, "expired %" PRId64 " s ago", (now - exp) / NS_PER_S);
    if (nbf_v != NULL && !json_time_ns(nbf_v, &nbf))
        return refuse(c, TS_AUTH_CLAIMS, "nbf is not a number");
    if (nbf_v != NULL && now + a->leeway_ns < nbf)
        return refuse(c, TS_AUTH_NOT_YET_VALID, "valid in %" PRId64 " s", (nbf - now) / NS_PER_S);
    if (want_iss != NULL && !(json_is_string(iss) && strcmp(json_string_value(iss), want_iss) == 0))
        return refuse(c, TS_AUTH_ISSUER, "iss is not %.64s", want_iss);
    if (!ours && a->audience != NULL &&
        !audience_holds(json_object_get(claims, "aud"), a->audience))
        return refuse(c, TS_AUTH_AUDIENCE, "aud does not hold %.64s", a->audience);
    if (sub != NULL && !(json_is_string(sub) && json_string_length(sub) > 0 &&
                         json_string_length(sub) <= TS_SUB_MAX))
        return refuse(c, TS_AUTH_CLAIMS, "sub is not a string of 1 to %d bytes", TS_SUB_MAX);
    if (sub != NULL)
        snprintf(p->sub, sizeof(p->sub), "%s", json_string_value(sub));
    p->kind = TS_PRINCIPAL_USER;
    p->expires_ns = exp;
    if (read_rights(json_object_get(claims, "taskstream"), p, c) != 0)
        return -EACCES;
    if (ours && p->kind != TS_PRINCIPAL_STREAM)
        return refuse(c, TS_AUTH_CLAIMS, "a stream token without its task");
    if (p->kind == TS_PRINCIPAL_USER && p->sub[0] == '\0')
        return refuse(c, TS_AUTH_CLAIMS, "no sub: tasks could not be told apart by owner");
    return 0;
}

static int
check_jwt(const struct ts_auth *a, const char *token, size_t len, struct ts_principal *p,
          struct check *c)
{
    const char *dot1 = memchr(token, '.', len), *dot2;
    const struct key *key;
    json_t *head, *claims;
    const char *alg, *kid, *typ;
    jwt_t *jwt = NULL;
    char *copy;
    bool ours;
    int rc;

    dot2 = dot1 != NULL ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL)
        return refuse(c, TS_AUTH_MALFORMED, "not three base64url parts");
    head = b64url_json(token, (size_t)(dot1 - token));
    if (head == NULL)
        return refuse(c, TS_AUTH_MALFORMED, "the header is not base64url JSON");
    alg = json_string_value(json_object_get(head, "alg"));
    kid = json_string_value(json_object_get(head, "kid"));
    typ = json_string_value(json_object_get(head, "typ"));
    ours = kid != NULL && strcmp(kid, STREAM_KID) == 0;
    key = ours ? &a->stream : &a->user;
    if (key->alg == JWT_ALG_NONE)
        rc = refuse(c, TS_AUTH_SIGNATURE, "a JWT, and no JWT key is configured");
    else if (alg == NULL || strcmp(alg, alg_name(key->alg)) != 0)
        rc = refuse(c, TS_AUTH_ALGORITHM, "alg %.16s where %s is configured",
                    alg != NULL ? alg : "(none)", alg_name(key->alg));
    else if (json_object_get(head, "crit") != NULL)
        rc = refuse(c, TS_AUTH_MALFORMED, "a crit header, which no extension here understands");
    else if (typ != NULL && strcasecmp(typ, "JWT") != 0)
        rc = refuse(c, TS_AUTH_MALFORMED, "typ %.16s, not JWT", typ);
    else
        rc = 0;
    json_decref(head);
    if (rc != 0)
        return rc;
    /* libjwt's decoder skips what is not base64: the signature is checked
     * here, so that nothing can be appended to a good token. */
    if (!b64url_ok(dot2 + 1, len - (size_t)(dot2 + 1 - token)))
        return refuse(c, TS_AUTH_MALFORMED, "the signature is not base64url");
    claims = b64url_json(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    if (claims == NULL)
        return refuse(c, TS_AUTH_MALFORMED, "the payload is not base64url JSON");
    /* Everything but the signature is known to be well formed: a refusal
     * from here is the signature's. */
    /* libjwt reads up to a NUL; a cookie's value ends at its ';'. */
    copy = strndup(token, len);
    rc = copy != NULL ? jwt_decode(&jwt, copy, key->bytes, (int)key->len) : ENOMEM;
    free(copy);
    jwt_free(jwt);
    if (rc != 0)
        rc = refuse(c, TS_AUTH_SIGNATURE, "the signature does not verify (%s)", alg_name(key->alg));
    else
        rc = check_claims(a, claims, ours, p, c);
    json_decref(claims);
    return rc;
}

/* The value of cookie `name` in a Cookie header, into out; false if none. */
static bool
find_cookie(const char *header, const char *name, const char **val, size_t *len)
{
    size_t nlen = strlen(name);

    for (const char *p = header; p != NULL && *p != '\0';) {
        p += strspn(p, " \t");
        size_t n = strcspn(p, ";");

        if (n > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
            *val = p + nlen + 1;
            *len = n - nlen - 1;
            if (*len >= 2 && (*val)[0] == '"' && (*val)[*len - 1] == '"') {
                (*val)++;
                *len -= 2;
            }
            return true;
        }
        p += n + (p[n] == ';');
    }
    return false;
}

/* The credential and where it came from; false if none. */
static bool
find_credential(const struct ts_auth *a, struct ts_http_request *req, const char **cred,
                size_t *len, enum source *src)
{
    const char *h = ts_http_header(req, "Authorization");
    const char *cookies;

    if (h != NULL) {
        *src = FROM_HEADER;
        if (strncasecmp(h, "Bearer ", 7) != 0) {
            *cred = "";
            *len = 0;
            return true;
        }
        *cred = h + 7 + strspn(h + 7, " ");
        *len = strlen(*cred);
        return true;
    }
    *cred = ts_http_query(req, "access_token");
    if (*cred != NULL) {
        *src = FROM_QUERY;
        *len = strlen(*cred);
        return true;
    }
    cookies = ts_http_header(req, "Cookie");
    if (a->cookie != NULL && cookies != NULL && find_cookie(cookies, a->cookie, cred, len)) {
        *src = FROM_COOKIE;
        return true;
    }
    return false;
}

static int
check_credential(const struct ts_auth *a, const char *cred, size_t len, struct ts_principal *p,
                 struct check *c)
{
    if (len == 0)
        return refuse(c, TS_AUTH_MALFORMED, "empty, or not a Bearer credential");
    if (len > TOKEN_MAX)
        return refuse(c, TS_AUTH_MALFORMED, "%zu bytes; at most %d are read", len, TOKEN_MAX);
    if (a->api_key != NULL && ts_ct_equal(cred, len, a->api_key, strlen(a->api_key))) {
        p->kind = TS_PRINCIPAL_KEY;
        return 0;
    }
    if (memchr(cred, '.', len) == NULL)
        return refuse(c, a->api_key != NULL ? TS_AUTH_INVALID_KEY : TS_AUTH_MALFORMED,
                      a->api_key != NULL ? "not the API key" : "not a JWT");
    return check_jwt(a, cred, len, p, c);
}

int
ts_auth_verify(const struct ts_auth *a, const char *cred, size_t len, struct ts_principal *p,
               enum ts_auth_reason *why)
{
    struct check c = {.reason = TS_AUTH_MISSING, .detail = ""};
    int rc;

    memset(p, 0, sizeof(*p));
    rc = check_credential(a, cred, len, p, &c);
    if (rc != 0) {
        ts_principal_dispose(p);
        *why = c.reason;
    }
    return rc;
}

/* A cookie rides along on any request a browser makes to us, including one
 * a foreign page provokes: a POST or DELETE that a cookie authorizes must
 * come from our own origin or an allowed one. (Such requests also need a
 * CORS preflight, which a foreign origin does not pass: this holds without
 * it.) */
static bool
origin_may_use_cookie(const struct ts_auth *a, struct ts_http_request *req)
{
    const char *origin = ts_http_header(req, "Origin");
    const char *host = ts_http_header(req, "Host");
    const char *method = ts_http_method(req);

    if (strcmp(method, "POST") != 0 && strcmp(method, "DELETE") != 0)
        return true;
    if (origin == NULL)
        return true; /* not a browser's cross-site request */
    if (host != NULL && strncmp(origin, "http://", 7) == 0 && strcmp(origin + 7, host) == 0)
        return true;
    return a->origins != NULL && origin_allowed(a, origin);
}

int
ts_auth_request(struct ts_auth *a, struct ts_http_request *req, struct ts_principal *p)
{
    struct check c = {.reason = TS_AUTH_MISSING, .detail = ""};
    enum source src = FROM_HEADER;
    const char *cred;
    size_t len;

    memset(p, 0, sizeof(*p));
    add_cors_answer(a, req);
    if (!ts_auth_on(a)) {
        p->kind = TS_PRINCIPAL_OPEN;
        return 0;
    }
    if (!find_credential(a, req, &cred, &len, &src)) {
        log_refusal(a, req, TS_AUTH_MISSING, NULL, "no credential", NULL);
        challenge(req, NULL);
        ts_http_reply_error(req, 401, "unauthorized",
                            "send a credential as \"Authorization: Bearer <token>\"%s",
                            a->cookie != NULL ? ", the access_token parameter or the cookie"
                                              : " or the access_token parameter");
        return -EACCES;
    }
    if (check_credential(a, cred, len, p, &c) != 0) {
        ts_principal_dispose(p);
        log_refusal(a, req, c.reason, source_names[src], c.detail, NULL);
        challenge(req, "invalid_token");
        ts_http_reply_error(req, 401, "invalid_token", "the credential is invalid or expired");
        return -EACCES;
    }
    if (src == FROM_COOKIE && !origin_may_use_cookie(a, req)) {
        log_refusal(a, req, TS_AUTH_ORIGIN, source_names[src],
                    "a cookie on a POST or DELETE from a foreign Origin", p->sub);
        ts_principal_dispose(p);
        ts_http_reply_error(req, 403, "forbidden",
                            "a cookie does not authorize a %s from another origin",
                            ts_http_method(req));
        return -EACCES;
    }
    return 0;
}

void
ts_principal_dispose(struct ts_principal *p)
{
    json_decref(p->kinds);
    p->kinds = NULL;
}

/* ---- rights ---- */

bool
ts_principal_all(const struct ts_principal *p)
{
    return p->kind == TS_PRINCIPAL_OPEN || p->kind == TS_PRINCIPAL_KEY ||
           (p->kind == TS_PRINCIPAL_USER && p->admin);
}

bool
ts_principal_may_submit(const struct ts_principal *p, const char *name)
{
    size_t i;
    json_t *v;

    if (ts_principal_all(p))
        return true;
    if (p->kind != TS_PRINCIPAL_USER || name == NULL)
        return false;
    json_array_foreach(p->kinds, i, v)
        if (fnmatch(json_string_value(v), name, 0) == 0)
            return true;
    return false;
}

bool
ts_principal_may_see(const struct ts_principal *p, const char *id, const char *sub)
{
    if (ts_principal_all(p))
        return true;
    if (p->kind == TS_PRINCIPAL_STREAM)
        return strcmp(p->task, id) == 0;
    return p->see_all || (sub != NULL && strcmp(sub, p->sub) == 0);
}

const char *
ts_principal_sub(const struct ts_principal *p)
{
    return p->kind == TS_PRINCIPAL_USER && p->sub[0] != '\0' ? p->sub : NULL;
}

json_t *
ts_principal_to_json(const struct ts_principal *p)
{
    static const char *const kinds[] = {"open", "key", "jwt", "stream"};
    char when[TS_TIME_LEN];
    json_t *o = json_pack("{s:s}", "auth", kinds[p->kind]);

    if (o == NULL)
        return NULL;
    if (p->sub[0] != '\0')
        json_object_set_new(o, "sub", json_string(p->sub));
    if (p->expires_ns != 0)
        json_object_set_new(o, "expires_at", json_string(ts_format_time(p->expires_ns, when)));
    if (p->kind == TS_PRINCIPAL_STREAM) {
        json_object_set_new(o, "task", json_string(p->task));
    } else {
        json_object_set_new(o, "admin", json_boolean(ts_principal_all(p)));
        json_object_set_new(o, "see",
                            json_string(ts_principal_all(p) || p->see_all ? "all" : "own"));
        if (p->kind == TS_PRINCIPAL_USER && !p->admin)
            json_object_set_new(o, "kinds",
                                p->kinds != NULL ? json_incref(p->kinds) : json_array());
    }
    return o;
}

/* ---- stream tokens ---- */

static char *
mint_stream_token(const struct ts_auth *a, const char *id, const char *sub, int64_t exp_ns)
{
    char claim[64];
    jwt_t *jwt = NULL;
    char *token = NULL;

    snprintf(claim, sizeof(claim), "{\"taskstream\":{\"task\":\"%s\"}}", id);
    if (jwt_new(&jwt) != 0)
        return NULL;
    if (jwt_set_alg(jwt, JWT_ALG_HS256, a->stream.bytes, (int)a->stream.len) == 0 &&
        jwt_add_header(jwt, "kid", STREAM_KID) == 0 && jwt_add_grant(jwt, "iss", STREAM_ISS) == 0 &&
        (sub == NULL || jwt_add_grant(jwt, "sub", sub) == 0) &&
        jwt_add_grant_int(jwt, "exp", (long)(exp_ns / NS_PER_S)) == 0 &&
        jwt_add_grants_json(jwt, claim) == 0)
        token = jwt_encode_str(jwt);
    jwt_free(jwt);
    return token;
}

void
ts_auth_add_stream_token(struct ts_auth *a, const struct ts_principal *p, json_t *o, const char *id)
{
    int64_t exp = ts_clock_wall_ns(&a->clock) + a->stream_ttl_ns;
    char when[TS_TIME_LEN];
    char *token;

    if (!ts_auth_on(a) || p->kind == TS_PRINCIPAL_STREAM || o == NULL)
        return;
    exp -= exp % NS_PER_S; /* exp is whole seconds */
    token = mint_stream_token(a, id, ts_principal_sub(p), exp);
    if (token == NULL)
        return; /* out of memory: the answer goes without it */
    json_object_set_new(o, "stream_token", json_string(token));
    json_object_set_new(o, "stream_token_expires_at", json_string(ts_format_time(exp, when)));
    free(token); /* libjwt 1.10 allocates it with malloc */
}
