/*
 * taskstream: the command-line client of taskstreamd.
 *
 * The composition root of the client: it reads the command line and the
 * environment, sets up one HTTP client (client.c), runs one command and
 * maps the outcome to an exit status (client.h). Each command is a request
 * or two and a printer: human text by default, the server's own JSON with
 * --json. `follow` (follow.c) is the one long-running command; it alone
 * takes SIGINT, through a flag that its transfer and its waits look at.
 * Credentials are read from files or the environment, never printed, and a
 * --token given on the command line is overwritten in argv at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "client.h"
#include "follow.h"

#define DEFAULT_URL "http://127.0.0.1:8080"
#define DEFAULT_ADMIN_URL "http://127.0.0.1:9090"
#define SECRET_FILE_MAX 65536
#define MAX_PARAMS 256
#define STATUS_PAGES_MAX 100

/* Options that belong to one or a few commands: bits of `struct
 * command.opts`, checked after parsing. */
enum {
    O_PARAM = 1u << 0,
    O_JSON_PARAMS = 1u << 1,
    O_COMMAND = 1u << 2,
    O_FOLLOW = 1u << 3,
    O_LAST_EVENT_ID = 1u << 4,
    O_RECONNECT = 1u << 5,
    O_STATE = 1u << 6,
    O_LIMIT = 1u << 7,
    O_CURSOR = 1u << 8,
    O_UNDO = 1u << 9,
    O_DRAIN_KEY = 1u << 10,
    O_MAX_BACKOFF = 1u << 11,
};

#define O_FOLLOWING (O_LAST_EVENT_ID | O_RECONNECT | O_MAX_BACKOFF)

struct options {
    const char *url;
    const char *admin_url;
    char *token; /* owned copy, wiped at the end */
    const char *token_file;
    const char *drain_key_file;
    bool json;
    bool quiet;
    bool help;
    bool version;
    int64_t timeout_ms;
    const char *params[MAX_PARAMS];
    size_t nparams;
    const char *json_params;
    const char *command_name;
    bool follow;
    struct tsc_follow_opts fo;
    const char *state;
    const char *limit;
    const char *cursor;
    bool undo;
    unsigned used; /* O_* seen */
};

struct ctx {
    struct options *o;
    struct tsc_client *c;
    char **args; /* the command's own arguments */
    int nargs;
};

struct command {
    const char *name;
    int (*run)(struct ctx *x);
    unsigned opts;
    int min_args;
    int max_args;
    const char *usage;
    const char *help;
};

static volatile sig_atomic_t interrupted;

static void
on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* ------------------------------------------------------------------------ */
/* small helpers                                                            */
/* ------------------------------------------------------------------------ */

/* "500ms", "10s", "2m", "1h" or a bare number of seconds, in ms; -1 when it
 * is none of these. */
static int64_t
parse_duration_ms(const char *s)
{
    int64_t n = 0, unit = 1000;
    const char *p = s;

    if (*p < '0' || *p > '9')
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (n > INT64_MAX / 10 / 3600000)
            return -1;
        n = n * 10 + (*p - '0');
    }
    if (strcmp(p, "ms") == 0)
        unit = 1;
    else if (strcmp(p, "s") == 0 || *p == '\0')
        unit = 1000;
    else if (strcmp(p, "m") == 0)
        unit = 60000;
    else if (strcmp(p, "h") == 0)
        unit = 3600000;
    else
        return -1;
    return n * unit;
}

static bool
is_task_id(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return i == 32;
}

/* A small secret file: its bytes, one trailing newline (LF or CRLF) off.
 * Returns a new string, or NULL after saying why. */
static char *
read_secret_file(const char *path, const char *what)
{
    char *buf = malloc(SECRET_FILE_MAX + 1);
    size_t len = 0;
    ssize_t n;
    int fd;

    if (buf == NULL) {
        tsc_err("out of memory");
        return NULL;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tsc_err("cannot read the %s file %s: %s", what, path, strerror(errno));
        free(buf);
        return NULL;
    }
    for (;;) {
        n = read(fd, buf + len, SECRET_FILE_MAX + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len > SECRET_FILE_MAX)
            break;
    }
    close(fd);
    if (n < 0 || len > SECRET_FILE_MAX) {
        tsc_err("cannot read the %s file %s: %s", what, path,
                n < 0 ? strerror(errno) : "larger than 64 KiB");
        explicit_bzero(buf, len);
        free(buf);
        return NULL;
    }
    if (len > 0 && buf[len - 1] == '\n')
        len--;
    if (len > 0 && buf[len - 1] == '\r')
        len--;
    buf[len] = '\0';
    if (len == 0 || memchr(buf, '\0', len) != NULL) {
        tsc_err("the %s file %s is %s", what, path, len == 0 ? "empty" : "not text");
        explicit_bzero(buf, len);
        free(buf);
        return NULL;
    }
    return buf;
}

static void
free_secret(char *s)
{
    if (s != NULL) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* `s` without trailing slashes, as a new string (or NULL: out of memory). */
static char *
base_url(const char *s)
{
    size_t n = strlen(s);

    while (n > 0 && s[n - 1] == '/')
        n--;
    return strndup(s, n);
}

/* The server's JSON as it came, on stdout. */
static void
print_raw(const struct tsc_response *r)
{
    fwrite(r->body, 1, r->len, stdout);
    if (r->len == 0 || r->body[r->len - 1] != '\n')
        fputc('\n', stdout);
}

/* A JSON value as a table cell or a show line: a string as it is, null as
 * "-", the rest compact JSON. Returns a new string. */
static char *
cell(const json_t *v)
{
    if (v == NULL || json_is_null(v))
        return strdup("-");
    if (json_is_string(v))
        return strdup(json_string_value(v));
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

/* ------------------------------------------------------------------------ */
/* submit, follow                                                           */
/* ------------------------------------------------------------------------ */

/* For a kind's top-level parameters, a value that reads as a JSON number,
 * boolean or null is one; anything else is a string. */
static json_t *
param_value(const char *v, bool strings_only)
{
    json_t *j;

    if (strings_only)
        return json_string(v);
    j = json_loads(v, JSON_DECODE_ANY, NULL);
    if (j != NULL && (json_is_number(j) || json_is_boolean(j) || json_is_null(j)))
        return j;
    json_decref(j);
    return json_string(v);
}

/* The POST /v1/tasks body for the command line; NULL after saying why. */
static json_t *
submit_body(struct ctx *x)
{
    struct options *o = x->o;
    const char *kind = x->args[0];
    const char *name = o->command_name;
    bool command = strcmp(kind, "command") == 0;
    json_t *body, *params;
    size_t i;

    if (x->nargs > 1) {
        if (name != NULL) {
            tsc_err("give the command's name once: as an argument or with --command");
            return NULL;
        }
        name = x->args[1];
    }
    if (!command && name != NULL) {
        tsc_err("a command name goes with the kind \"command\" only (submit command NAME)");
        return NULL;
    }
    body = json_pack("{s:s}", "kind", kind);
    params = command ? json_object() : json_incref(body);
    if (body == NULL || params == NULL || json_string_value(json_object_get(body, "kind")) == NULL)
        goto bad_value;
    if (command && name != NULL && json_object_set_new(body, "command", json_string(name)) != 0)
        goto bad_value;
    if (o->json_params != NULL) {
        json_error_t jerr;
        json_t *extra = json_loads(o->json_params, 0, &jerr);

        if (!json_is_object(extra)) {
            tsc_err("--json-params must be a JSON object%s%s", extra == NULL ? ": " : "",
                    extra == NULL ? jerr.text : "");
            json_decref(extra);
            goto out;
        }
        if (json_object_get(extra, "kind") != NULL && !command) {
            tsc_err("--json-params may not set \"kind\": it is the first argument");
            json_decref(extra);
            goto out;
        }
        json_object_update(params, extra);
        json_decref(extra);
    }
    for (i = 0; i < o->nparams; i++) {
        const char *eq = strchr(o->params[i], '=');
        char *key;
        json_t *v;

        if (eq == NULL || eq == o->params[i]) {
            tsc_err("--param takes NAME=VALUE, not \"%s\"", o->params[i]);
            goto out;
        }
        key = strndup(o->params[i], (size_t)(eq - o->params[i]));
        if (key == NULL)
            goto bad_value;
        if (!command && strcmp(key, "kind") == 0) {
            tsc_err("--param may not set \"kind\": it is the first argument");
            free(key);
            goto out;
        }
        v = param_value(eq + 1, command);
        if (v == NULL || json_object_set_new(params, key, v) != 0) {
            free(key);
            goto bad_value;
        }
        free(key);
    }
    if (command && json_object_size(params) != 0)
        json_object_set(body, "params", params);
    json_decref(params);
    return body;

bad_value:
    tsc_err("the task cannot be encoded: names and values must be UTF-8");
out:
    json_decref(params);
    json_decref(body);
    return NULL;
}

static int
follow_task(struct ctx *x, const char *id)
{
    struct sigaction sa;
    int rc;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigint; /* no SA_RESTART: waits return at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    x->o->fo.json = x->o->json;
    x->o->fo.quiet = x->o->quiet;
    rc = tsc_follow(x->c, id, &x->o->fo, &interrupted);
    if (rc == TSC_EXIT_INTERRUPTED && !x->o->quiet)
        tsc_err("interrupted");
    return rc;
}

static int
cmd_submit(struct ctx *x)
{
    struct tsc_response r;
    json_t *body = submit_body(x);
    const char *id;
    char *copy;
    int rc;

    if (body == NULL)
        return TSC_EXIT_USAGE;
    rc = tsc_call(x->c, TSC_PUBLIC, "POST", "/v1/tasks", body, &r);
    json_decref(body);
    if (rc != 0)
        return rc;
    id = json_string_value(json_object_get(r.json, "id"));
    if (id == NULL || !is_task_id(id)) {
        tsc_err("the server's answer has no task id");
        tsc_response_dispose(&r);
        return TSC_EXIT_API;
    }
    if (!x->o->follow) {
        if (x->o->json)
            print_raw(&r);
        else
            printf("%s\n", id);
        tsc_response_dispose(&r);
        return TSC_EXIT_OK;
    }
    copy = strdup(id);
    tsc_response_dispose(&r);
    if (copy == NULL) {
        tsc_err("out of memory");
        return TSC_EXIT_API;
    }
    if (!x->o->quiet)
        tsc_err("submitted %s", copy);
    rc = follow_task(x, copy);
    free(copy);
    return rc;
}

static int
need_task_id(const char *id)
{
    if (is_task_id(id))
        return 0;
    tsc_err("\"%s\" is not a task id (32 lowercase hex digits)", id);
    return TSC_EXIT_USAGE;
}

static int
cmd_follow(struct ctx *x)
{
    const char *lei = x->o->fo.last_event_id;
    int rc = need_task_id(x->args[0]);

    if (rc != 0)
        return rc;
    if (lei != NULL && (lei[0] == '\0' || strspn(lei, "0123456789") != strlen(lei))) {
        tsc_err("--last-event-id takes an event id (a whole number)");
        return TSC_EXIT_USAGE;
    }
    return follow_task(x, x->args[0]);
}

/* ------------------------------------------------------------------------ */
/* list, show, cancel, commands                                             */
/* ------------------------------------------------------------------------ */

static const char *
str_or(const json_t *o, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, key));

    return s != NULL ? s : dflt;
}

/* The EXIT column: the exit code, "signal N", or "-". */
static void
exit_cell(const json_t *t, char *buf, size_t len)
{
    json_t *code = json_object_get(t, "exit_code"), *sig = json_object_get(t, "signal");

    if (json_is_integer(sig))
        snprintf(buf, len, "signal %" JSON_INTEGER_FORMAT, json_integer_value(sig));
    else if (json_is_integer(code))
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(code));
    else
        snprintf(buf, len, "-");
}

static void
print_task_table(const json_t *tasks)
{
    size_t i, kw = 4, sw = 5;
    json_t *t;

    json_array_foreach(tasks, i, t) {
        size_t k = strlen(str_or(t, "kind", "-")), s = strlen(str_or(t, "state", "-"));

        kw = k > kw ? k : kw;
        sw = s > sw ? s : sw;
    }
    printf("%-32s  %-*s  %-*s  %-8s  %-24s  %6s  %s\n", "ID", (int)kw, "KIND", (int)sw, "STATE",
           "EXIT", "CREATED", "EVENTS", "COMMAND");
    json_array_foreach(tasks, i, t) {
        char ex[32];

        exit_cell(t, ex, sizeof(ex));
        printf("%-32s  %-*s  %-*s  %-8s  %-24s  %6" JSON_INTEGER_FORMAT "  %s\n",
               str_or(t, "id", "-"), (int)kw, str_or(t, "kind", "-"), (int)sw,
               str_or(t, "state", "-"), ex, str_or(t, "created_at", "-"),
               json_integer_value(json_object_get(t, "events")), str_or(t, "command", ""));
    }
}

/* Append "&name=<escaped value>" (or "?..." first) to `q`. */
static int
query_add(CURL *curl, char *q, size_t len, const char *name, const char *value)
{
    char *esc;
    size_t used = strlen(q);

    if (value == NULL)
        return 0;
    esc = curl_easy_escape(curl, value, 0);
    if (esc == NULL)
        return -ENOMEM;
    snprintf(q + used, len - used, "%c%s=%s", strchr(q, '?') != NULL ? '&' : '?', name, esc);
    curl_free(esc);
    return strlen(q) + 1 < len ? 0 : -E2BIG;
}

static int
cmd_list(struct ctx *x)
{
    struct options *o = x->o;
    struct tsc_response r;
    json_t *tasks;
    char path[2048] = "/v1/tasks";
    const char *next;
    int rc;

    if (query_add(x->c->curl, path, sizeof(path), "state", o->state) != 0 ||
        query_add(x->c->curl, path, sizeof(path), "limit", o->limit) != 0 ||
        query_add(x->c->curl, path, sizeof(path), "cursor", o->cursor) != 0) {
        tsc_err("the options of list are too long");
        return TSC_EXIT_USAGE;
    }
    rc = tsc_call(x->c, TSC_PUBLIC, "GET", path, NULL, &r);
    if (rc != 0)
        return rc;
    tasks = json_object_get(r.json, "tasks");
    if (!json_is_array(tasks)) {
        tsc_err("the server's answer has no task list");
        tsc_response_dispose(&r);
        return TSC_EXIT_API;
    }
    if (o->json)
        print_raw(&r);
    else
        print_task_table(tasks);
    next = json_string_value(json_object_get(r.json, "next_cursor"));
    if (next != NULL && !o->json && !o->quiet)
        tsc_err("more tasks: add --cursor %s", next);
    tsc_response_dispose(&r);
    return TSC_EXIT_OK;
}

static void
print_show(const json_t *t)
{
    static const char *const order[] = {"id",           "kind",       "command",     "state",
                                        "created_at",   "started_at", "finished_at", "reason",
                                        "exit_code",    "signal",     "events",      "params",
                                        "submitted_by", "replica",    "attempt"};
    const char *key;
    json_t *v;
    size_t i;

    for (i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        char *s;

        v = json_object_get(t, order[i]);
        if (v == NULL)
            continue;
        s = cell(v);
        printf("%-13s %s\n", order[i], s != NULL ? s : "?");
        free(s);
    }
    json_object_foreach((json_t *)t, key, v) {
        bool known = false;
        char *s;

        for (i = 0; i < sizeof(order) / sizeof(order[0]) && !known; i++)
            known = strcmp(key, order[i]) == 0;
        /* A stream token is a credential: only --json shows it. */
        if (known || strncmp(key, "stream_token", 12) == 0)
            continue;
        s = cell(v);
        printf("%-13s %s\n", key, s != NULL ? s : "?");
        free(s);
    }
}

/* `method` on /v1/tasks/ID, the answer in `r` (dispose it). */
static int
task_call(struct ctx *x, const char *method, struct tsc_response *r)
{
    char path[128];
    int rc = need_task_id(x->args[0]);

    if (rc != 0)
        return rc;
    snprintf(path, sizeof(path), "/v1/tasks/%s", x->args[0]);
    return tsc_call(x->c, TSC_PUBLIC, method, path, NULL, r);
}

static int
cmd_show(struct ctx *x)
{
    struct tsc_response r;
    int rc = task_call(x, "GET", &r);

    if (rc != 0)
        return rc;
    if (x->o->json)
        print_raw(&r);
    else
        print_show(r.json);
    tsc_response_dispose(&r);
    return TSC_EXIT_OK;
}

static int
cmd_cancel(struct ctx *x)
{
    struct tsc_response r;
    int rc = task_call(x, "DELETE", &r);

    if (rc != 0)
        return rc;
    if (x->o->json)
        print_raw(&r);
    else
        printf("cancelling %s (%s)\n", x->args[0], str_or(r.json, "state", "state unknown"));
    tsc_response_dispose(&r);
    return TSC_EXIT_OK;
}

static int
cmd_commands(struct ctx *x)
{
    struct tsc_response r;
    json_t *cmds, *cmd;
    size_t i, nw = 4;
    int rc = tsc_call(x->c, TSC_PUBLIC, "GET", "/v1/commands", NULL, &r);

    if (rc != 0)
        return rc;
    cmds = json_object_get(r.json, "commands");
    if (x->o->json) {
        print_raw(&r);
        tsc_response_dispose(&r);
        return TSC_EXIT_OK;
    }
    json_array_foreach(cmds, i, cmd) {
        size_t n = strlen(str_or(cmd, "name", ""));

        nw = n > nw ? n : nw;
    }
    printf("%-*s  %-24s  %s\n", (int)nw, "NAME", "PARAMS", "DESCRIPTION");
    json_array_foreach(cmds, i, cmd) {
        char params[1024] = "";
        const char *pname;
        json_t *p;

        json_object_foreach(json_object_get(cmd, "params"), pname, p) {
            const char *dflt = json_string_value(json_object_get(p, "default"));
            size_t used = strlen(params);

            snprintf(params + used, sizeof(params) - used, "%s%s%s%s", used != 0 ? " " : "", pname,
                     dflt != NULL ? "=" : "", dflt != NULL ? dflt : "");
        }
        printf("%-*s  %-24s  %s\n", (int)nw, str_or(cmd, "name", "?"),
               params[0] != '\0' ? params : "-", str_or(cmd, "description", ""));
    }
    tsc_response_dispose(&r);
    return TSC_EXIT_OK;
}

/* ------------------------------------------------------------------------ */
/* drain, status (the admin listener)                                       */
/* ------------------------------------------------------------------------ */

static int
load_drain_key(struct ctx *x)
{
    const char *file = x->o->drain_key_file;
    char *key;
    int rc;

    if (file == NULL)
        file = getenv("TASKSTREAM_DRAIN_KEY_FILE");
    if (file == NULL || file[0] == '\0')
        return -ENOENT;
    key = read_secret_file(file, "drain key");
    if (key == NULL)
        return -EINVAL;
    rc = tsc_client_set_bearer(&x->c->drain_header, key);
    free_secret(key);
    if (rc == -EINVAL)
        tsc_err("the drain key file %s holds a space or a control character", file);
    else if (rc != 0)
        tsc_err("out of memory");
    return rc;
}

static int
cmd_drain(struct ctx *x)
{
    struct tsc_response r;
    int rc = load_drain_key(x);

    if (rc == -ENOENT) {
        tsc_err("drain needs the drain key: --drain-key-file FILE or TASKSTREAM_DRAIN_KEY_FILE");
        return TSC_EXIT_USAGE;
    }
    if (rc != 0)
        return TSC_EXIT_USAGE;
    rc = tsc_call(x->c, TSC_ADMIN, x->o->undo ? "DELETE" : "POST", "/drain", NULL, &r);
    if (rc != 0)
        return rc;
    if (x->o->json) {
        print_raw(&r);
    } else if (x->o->undo) {
        printf("serving again (state: %s)\n", str_or(r.json, "state", "unknown"));
    } else {
        printf("draining (state: %s, tasks active: %" JSON_INTEGER_FORMAT ")\n",
               str_or(r.json, "state", "unknown"),
               json_integer_value(json_object_get(r.json, "tasks_active")));
    }
    tsc_response_dispose(&r);
    return TSC_EXIT_OK;
}

/* How many tasks are in `state`, following pages in cluster mode. Returns 0
 * or an exit code (reported). */
static int
count_tasks(struct ctx *x, const char *state, json_int_t *count, bool *more)
{
    char *cursor = NULL;
    int page, rc = 0;

    *count = 0;
    *more = false;
    for (page = 0; page < STATUS_PAGES_MAX; page++) {
        char path[2048] = "/v1/tasks";
        struct tsc_response r;
        const char *next;

        if (query_add(x->c->curl, path, sizeof(path), "state", state) != 0 ||
            query_add(x->c->curl, path, sizeof(path), "limit", "10000") != 0 ||
            query_add(x->c->curl, path, sizeof(path), "cursor", cursor) != 0) {
            tsc_err("a cursor of the server is too long");
            rc = TSC_EXIT_API;
            break;
        }
        rc = tsc_call(x->c, TSC_PUBLIC, "GET", path, NULL, &r);
        if (rc != 0)
            break;
        *count += (json_int_t)json_array_size(json_object_get(r.json, "tasks"));
        next = json_string_value(json_object_get(r.json, "next_cursor"));
        free(cursor);
        cursor = next != NULL ? strdup(next) : NULL;
        tsc_response_dispose(&r);
        if (cursor == NULL)
            break;
    }
    if (cursor != NULL)
        *more = true;
    free(cursor);
    return rc;
}

static int
cmd_status(struct ctx *x)
{
    struct tsc_response ready, drain = {0};
    json_int_t running = 0, queued = 0;
    bool more_running = false, more_queued = false, have_drain = false;
    const char *rstate;
    int rc;

    /* A drain key, when one is configured, lets GET /drain answer on a
     * server that guards it; it is optional here. */
    rc = load_drain_key(x);
    if (rc != 0 && rc != -ENOENT)
        return TSC_EXIT_USAGE;
    rc = tsc_request(x->c, TSC_ADMIN, "GET", "/readyz", NULL, &ready);
    if (rc != 0)
        return rc;
    if (ready.status != 200 && ready.status != 503) {
        rc = tsc_report_http_error(x->c, "GET", "/readyz", &ready);
        tsc_response_dispose(&ready);
        return rc;
    }
    /* GET /drain says more than /readyz (the reason, since when) where the
     * server has it; without it the readiness is the drain state. */
    if (tsc_request(x->c, TSC_ADMIN, "GET", "/drain", NULL, &drain) == 0 && drain.status == 200 &&
        json_is_object(drain.json))
        have_drain = true;
    rc = count_tasks(x, "running", &running, &more_running);
    if (rc == 0)
        rc = count_tasks(x, "queued", &queued, &more_queued);
    if (rc != 0)
        goto out;

    rstate = str_or(ready.json, "status", ready.status == 200 ? "ready" : "draining");
    if (x->o->json) {
        json_t *o = json_pack("{s:b, s:s, s:O?, s:I, s:I}", "ready", ready.status == 200,
                              "readiness", rstate, "drain", have_drain ? drain.json : NULL,
                              "running", (json_int_t)running, "queued", (json_int_t)queued);

        if (o != NULL) {
            json_dumpf(o, stdout, JSON_COMPACT);
            fputc('\n', stdout);
            json_decref(o);
        }
    } else {
        printf("%-9s %s\n", "api", x->c->url);
        printf("%-9s %s (%s)\n", "admin", x->c->admin_url, rstate);
        if (have_drain) {
            const char *since = str_or(drain.json, "draining_since", NULL);
            const char *reason = str_or(drain.json, "reason", NULL);

            printf("%-9s %s%s%s%s%s\n", "drain", str_or(drain.json, "state", "?"),
                   reason != NULL ? ", reason " : "", reason != NULL ? reason : "",
                   since != NULL ? ", since " : "", since != NULL ? since : "");
        } else {
            printf("%-9s %s\n", "drain", ready.status == 200 ? "serving" : "draining");
        }
        printf("%-9s %" JSON_INTEGER_FORMAT "%s\n", "running", running, more_running ? "+" : "");
        printf("%-9s %" JSON_INTEGER_FORMAT "%s\n", "queued", queued, more_queued ? "+" : "");
    }
out:
    tsc_response_dispose(&ready);
    tsc_response_dispose(&drain);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* the command line                                                         */
/* ------------------------------------------------------------------------ */

static int cmd_help(struct ctx *x);

static const struct command commands[] = {
    {"submit", cmd_submit, O_PARAM | O_JSON_PARAMS | O_COMMAND | O_FOLLOW | O_FOLLOWING, 1, 2,
     "submit KIND [NAME] [--param NAME=VALUE]... [--json-params JSON] [--follow]",
     "Submit a task of KIND and print its id (--json: the task as the server answered).\n"
     "For a command task, KIND is \"command\" and NAME (or --command NAME) the allow-listed\n"
     "command; its parameters go in \"params\" and are strings. For other kinds the\n"
     "parameters are fields of the task, and a value that reads as a JSON number, true,\n"
     "false or null is one.\n"
     "\n"
     "  -p, --param NAME=VALUE  a parameter (repeatable)\n"
     "      --json-params JSON  parameters as one JSON object (--param entries win)\n"
     "  -c, --command NAME      the command to run (kind \"command\")\n"
     "  -f, --follow            follow the task at once, as `follow` does, and exit\n"
     "                          with its status; the options of follow apply\n"},
    {"follow", cmd_follow, O_FOLLOWING, 1, 1,
     "follow ID [--json] [--last-event-id N] [--reconnect-timeout DURATION]",
     "Print the events of task ID as they happen, from its first (or after\n"
     "--last-event-id), and exit with the task's status: 0 succeeded, 5 cancelled,\n"
     "a failed task's own exit code (1 when it has none, 128+N for signal N).\n"
     "The stream is resumed with Last-Event-ID whenever it breaks (a restart, a\n"
     "replica handing the task to another, a proxy, 503): every event is printed\n"
     "once, in order. Text output: a command's output lines as they are (stderr lines\n"
     "on stderr), other events as \"TYPE DATA\"; notes about the stream on stderr.\n"
     "--json: one line per event, {\"id\": N|null, \"event\": TYPE, \"data\": ...}.\n"
     "\n"
     "      --last-event-id N           start after event N\n"
     "      --reconnect-timeout DURATION  give up when retries get nowhere for this\n"
     "                                  long (default 2m)\n"
     "      --max-backoff DURATION      the longest wait between retries (default 10s)\n"},
    {"list", cmd_list, O_STATE | O_LIMIT | O_CURSOR, 0, 0,
     "list [--state STATE[,STATE...]] [--limit N] [--cursor CURSOR]",
     "List the tasks, newest first.\n"
     "\n"
     "      --state S,...   only these states: queued, running, succeeded, failed,\n"
     "                      cancelled\n"
     "      --limit N       at most N tasks\n"
     "      --cursor C      the next page (cluster mode prints the cursor on stderr)\n"},
    {"show", cmd_show, 0, 1, 1, "show ID", "Show task ID: its state, times, result, parameters.\n"},
    {"cancel", cmd_cancel, 0, 1, 1, "cancel ID",
     "Cancel task ID (a queued task ends at once, a running one is stopped).\n"
     "A task that has already finished is an error (exit 3).\n"},
    {"commands", cmd_commands, 0, 0, 0, "commands",
     "List the allow-listed commands, with their parameters (NAME=DEFAULT).\n"},
    {"drain", cmd_drain, O_UNDO | O_DRAIN_KEY, 0, 0, "drain [--undo] [--drain-key-file FILE]",
     "Ask the server to drain (POST /drain on the admin listener): it stops taking\n"
     "new tasks and reports not ready, and goes on serving streams. --undo makes a\n"
     "manually drained server serve again (DELETE /drain).\n"
     "\n"
     "      --undo                 serve again\n"
     "      --drain-key-file FILE  the drain key (TASKSTREAM_DRAIN_KEY_FILE)\n"},
    {"status", cmd_status, O_DRAIN_KEY, 0, 0, "status",
     "Show the server's readiness and drain state (admin listener) and how many\n"
     "tasks run and wait (public API).\n"},
    {"help", cmd_help, 0, 0, 1, "help [COMMAND]", "Show the help, or a command's.\n"},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static const struct command *
find_command(const char *name)
{
    size_t i;

    for (i = 0; i < NCOMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    }
    return NULL;
}

static void
usage(FILE *out)
{
    size_t i;

    fputs("Usage: taskstream [OPTIONS] COMMAND [ARGS]\n"
          "\n"
          "The command-line client of taskstreamd: submit tasks, follow their events,\n"
          "list, show and cancel them, drain the server.\n"
          "\n"
          "Commands:\n",
          out);
    for (i = 0; i < NCOMMANDS; i++)
        fprintf(out, "  %s\n", commands[i].usage);
    fputs("\n"
          "Options (anywhere on the line):\n"
          "  -u, --url URL          the API (default " DEFAULT_URL "; TASKSTREAM_URL)\n"
          "      --admin-url URL    the admin listener (default " DEFAULT_ADMIN_URL ";\n"
          "                         TASKSTREAM_ADMIN_URL)\n"
          "      --token-file FILE  read the API token from FILE (TASKSTREAM_TOKEN_FILE)\n"
          "      --token TOKEN      the API token (TASKSTREAM_TOKEN); prefer a file: a command\n"
          "                         line can be read by any local user\n"
          "      --json             print the server's JSON (follow: a JSON object per event)\n"
          "  -q, --quiet            no notes on stderr (errors still are)\n"
          "      --timeout DURATION the longest a request may take (default 30s)\n"
          "  -h, --help             this help (COMMAND --help: the command's)\n"
          "  -V, --version          the version\n"
          "\n"
          "Exit status: 0 done (follow: the task succeeded), 1 the task failed, 2 usage,\n"
          "3 the server answered with an error, 4 the server could not be reached, 5 the\n"
          "task was cancelled, 130 interrupted. follow passes a failed task's exit code on.\n"
          "See taskstream(1).\n",
          out);
}

static void
command_help(const struct command *cmd)
{
    printf("Usage: taskstream %s\n\n%s\nThe global options apply too (taskstream --help).\n",
           cmd->usage, cmd->help);
}

static int
cmd_help(struct ctx *x)
{
    const struct command *cmd;

    if (x->nargs == 0) {
        usage(stdout);
        return TSC_EXIT_OK;
    }
    cmd = find_command(x->args[0]);
    if (cmd == NULL) {
        tsc_err("no command \"%s\" (taskstream --help lists them)", x->args[0]);
        return TSC_EXIT_USAGE;
    }
    command_help(cmd);
    return TSC_EXIT_OK;
}

enum {
    OPT_ADMIN_URL = 256,
    OPT_TOKEN,
    OPT_TOKEN_FILE,
    OPT_JSON,
    OPT_TIMEOUT,
    OPT_JSON_PARAMS,
    OPT_LAST_EVENT_ID,
    OPT_RECONNECT,
    OPT_MAX_BACKOFF,
    OPT_STATE,
    OPT_LIMIT,
    OPT_CURSOR,
    OPT_UNDO,
    OPT_DRAIN_KEY_FILE,
};

static const struct option long_options[] = {
    {"url", required_argument, NULL, 'u'},
    {"admin-url", required_argument, NULL, OPT_ADMIN_URL},
    {"token", required_argument, NULL, OPT_TOKEN},
    {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
    {"json", no_argument, NULL, OPT_JSON},
    {"quiet", no_argument, NULL, 'q'},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {"param", required_argument, NULL, 'p'},
    {"json-params", required_argument, NULL, OPT_JSON_PARAMS},
    {"command", required_argument, NULL, 'c'},
    {"follow", no_argument, NULL, 'f'},
    {"last-event-id", required_argument, NULL, OPT_LAST_EVENT_ID},
    {"reconnect-timeout", required_argument, NULL, OPT_RECONNECT},
    {"max-backoff", required_argument, NULL, OPT_MAX_BACKOFF},
    {"state", required_argument, NULL, OPT_STATE},
    {"limit", required_argument, NULL, OPT_LIMIT},
    {"cursor", required_argument, NULL, OPT_CURSOR},
    {"undo", no_argument, NULL, OPT_UNDO},
    {"drain-key-file", required_argument, NULL, OPT_DRAIN_KEY_FILE},
    {NULL, 0, NULL, 0},
};

/* The name of the per-command option with bit `bit`, for messages. */
static const char *
option_name(unsigned bit)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {
        {O_PARAM, "--param"},
        {O_JSON_PARAMS, "--json-params"},
        {O_COMMAND, "--command"},
        {O_FOLLOW, "--follow"},
        {O_LAST_EVENT_ID, "--last-event-id"},
        {O_RECONNECT, "--reconnect-timeout"},
        {O_MAX_BACKOFF, "--max-backoff"},
        {O_STATE, "--state"},
        {O_LIMIT, "--limit"},
        {O_CURSOR, "--cursor"},
        {O_UNDO, "--undo"},
        {O_DRAIN_KEY, "--drain-key-file"},
    };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (names[i].bit == bit)
            return names[i].name;
    }
    return "?";
}

static int
duration_opt(const char *name, const char *value, int64_t *out)
{
    int64_t ms = parse_duration_ms(value);

    if (ms < 0) {
        tsc_err("%s takes a duration such as 500ms, 10s, 2m, not \"%s\"", name, value);
        return TSC_EXIT_USAGE;
    }
    *out = ms;
    return 0;
}

/* Parse argv into `o`; the first non-option argument is the command, and
 * *first is the index of it in the permuted argv. Returns 0 or an exit
 * code. */
static int
parse_args(int argc, char **argv, struct options *o, int *first)
{
    int ch, rc;

    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":u:qhVp:c:f", long_options, NULL)) != -1) {
        switch (ch) {
        case 'u':
            o->url = optarg;
            break;
        case OPT_ADMIN_URL:
            o->admin_url = optarg;
            break;
        case OPT_TOKEN:
            free_secret(o->token);
            o->token = strdup(optarg);
            if (o->token == NULL) {
                tsc_err("out of memory");
                return TSC_EXIT_USAGE;
            }
            /* Out of `ps` from now on (it was there for a moment). */
            memset(optarg, '*', strlen(optarg));
            break;
        case OPT_TOKEN_FILE:
            o->token_file = optarg;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case 'q':
            o->quiet = true;
            break;
        case OPT_TIMEOUT:
            rc = duration_opt("--timeout", optarg, &o->timeout_ms);
            if (rc != 0)
                return rc;
            if (o->timeout_ms == 0) {
                tsc_err("--timeout must be more than 0");
                return TSC_EXIT_USAGE;
            }
            break;
        case 'h':
            o->help = true;
            break;
        case 'V':
            o->version = true;
            break;
        case 'p':
            if (o->nparams == MAX_PARAMS) {
                tsc_err("at most %d --param", MAX_PARAMS);
                return TSC_EXIT_USAGE;
            }
            o->params[o->nparams++] = optarg;
            o->used |= O_PARAM;
            break;
        case OPT_JSON_PARAMS:
            o->json_params = optarg;
            o->used |= O_JSON_PARAMS;
            break;
        case 'c':
            o->command_name = optarg;
            o->used |= O_COMMAND;
            break;
        case 'f':
            o->follow = true;
            o->used |= O_FOLLOW;
            break;
        case OPT_LAST_EVENT_ID:
            o->fo.last_event_id = optarg;
            o->used |= O_LAST_EVENT_ID;
            break;
        case OPT_RECONNECT:
            rc = duration_opt("--reconnect-timeout", optarg, &o->fo.reconnect_timeout_ms);
            if (rc != 0)
                return rc;
            o->used |= O_RECONNECT;
            break;
        case OPT_MAX_BACKOFF:
            rc = duration_opt("--max-backoff", optarg, &o->fo.max_backoff_ms);
            if (rc != 0)
                return rc;
            if (o->fo.max_backoff_ms == 0) {
                tsc_err("--max-backoff must be more than 0");
                return TSC_EXIT_USAGE;
            }
            o->used |= O_MAX_BACKOFF;
            break;
        case OPT_STATE:
            o->state = optarg;
            o->used |= O_STATE;
            break;
        case OPT_LIMIT:
            if (optarg[0] == '\0' || strspn(optarg, "0123456789") != strlen(optarg)) {
                tsc_err("--limit takes a whole number, not \"%s\"", optarg);
                return TSC_EXIT_USAGE;
            }
            o->limit = optarg;
            o->used |= O_LIMIT;
            break;
        case OPT_CURSOR:
            o->cursor = optarg;
            o->used |= O_CURSOR;
            break;
        case OPT_UNDO:
            o->undo = true;
            o->used |= O_UNDO;
            break;
        case OPT_DRAIN_KEY_FILE:
            o->drain_key_file = optarg;
            o->used |= O_DRAIN_KEY;
            break;
        case ':':
            tsc_err("option %s needs a value", argv[optind - 1]);
            return TSC_EXIT_USAGE;
        default:
            if (optopt != 0)
                tsc_err("unknown option -%c (taskstream --help lists them)", optopt);
            else
                tsc_err("unknown option %s (taskstream --help lists them)", argv[optind - 1]);
            return TSC_EXIT_USAGE;
        }
    }
    *first = optind;
    return 0;
}

/* The API token: --token or --token-file, else TASKSTREAM_TOKEN or
 * TASKSTREAM_TOKEN_FILE; both of one pair is a mistake. Returns 0 or an
 * exit code. */
static int
load_token(struct options *o, struct tsc_client *c)
{
    const char *file = o->token_file;
    char *token = o->token;
    int rc;

    if (token != NULL && file != NULL) {
        tsc_err("give --token or --token-file, not both");
        return TSC_EXIT_USAGE;
    }
    if (token == NULL && file == NULL) {
        const char *env = getenv("TASKSTREAM_TOKEN");
        const char *env_file = getenv("TASKSTREAM_TOKEN_FILE");

        if (env != NULL && env[0] == '\0')
            env = NULL;
        if (env_file != NULL && env_file[0] == '\0')
            env_file = NULL;
        if (env != NULL && env_file != NULL) {
            tsc_err("set TASKSTREAM_TOKEN or TASKSTREAM_TOKEN_FILE, not both");
            return TSC_EXIT_USAGE;
        }
        if (env != NULL) {
            token = strdup(env);
            if (token == NULL) {
                tsc_err("out of memory");
                return TSC_EXIT_USAGE;
            }
            o->token = token;
        }
        file = env_file;
    }
    if (token == NULL && file != NULL) {
        token = read_secret_file(file, "token");
        if (token == NULL)
            return TSC_EXIT_USAGE;
        o->token = token;
    }
    if (token == NULL)
        return 0;
    rc = tsc_client_set_bearer(&c->auth_header, token);
    if (rc == -EINVAL) {
        tsc_err("the token holds a space or a control character");
        return TSC_EXIT_USAGE;
    }
    if (rc != 0) {
        tsc_err("out of memory");
        return TSC_EXIT_USAGE;
    }
    c->have_token = true;
    return 0;
}

static const char *
env_or(const char *value, const char *name, const char *dflt)
{
    const char *env;

    if (value != NULL)
        return value;
    env = getenv(name);
    return env != NULL && env[0] != '\0' ? env : dflt;
}

static int
run(int argc, char **argv, struct options *o, struct tsc_client *c, char **urls)
{
    const struct command *cmd;
    struct ctx x = {.o = o, .c = c};
    int first, rc, nargs;

    rc = parse_args(argc, argv, o, &first);
    if (rc != 0)
        return rc;
    if (o->version) {
        printf("taskstream %s (libcurl %s, jansson %s)\n", TSC_VERSION,
               curl_version_info(CURLVERSION_NOW)->version, jansson_version_str());
        return TSC_EXIT_OK;
    }
    if (first >= argc) {
        if (o->help) {
            usage(stdout);
            return TSC_EXIT_OK;
        }
        usage(stderr);
        return TSC_EXIT_USAGE;
    }
    cmd = find_command(argv[first]);
    if (cmd == NULL) {
        tsc_err("no command \"%s\" (taskstream --help lists them)", argv[first]);
        return TSC_EXIT_USAGE;
    }
    if (o->help) {
        command_help(cmd);
        return TSC_EXIT_OK;
    }
    nargs = argc - first - 1;
    if (nargs < cmd->min_args || nargs > cmd->max_args) {
        tsc_err("usage: taskstream %s", cmd->usage);
        return TSC_EXIT_USAGE;
    }
    if ((o->used & ~cmd->opts) != 0) {
        unsigned bad = o->used & ~cmd->opts;

        tsc_err("%s does not apply to %s (taskstream %s --help)", option_name(bad & (~bad + 1)),
                cmd->name, cmd->name);
        return TSC_EXIT_USAGE;
    }
    if ((o->used & O_FOLLOWING) != 0 && strcmp(cmd->name, "submit") == 0 && !o->follow) {
        tsc_err("the options of follow go with submit --follow");
        return TSC_EXIT_USAGE;
    }
    x.args = argv + first + 1;
    x.nargs = nargs;
    if (cmd->run == cmd_help)
        return cmd_help(&x);

    urls[0] = base_url(env_or(o->url, "TASKSTREAM_URL", DEFAULT_URL));
    urls[1] = base_url(env_or(o->admin_url, "TASKSTREAM_ADMIN_URL", DEFAULT_ADMIN_URL));
    if (urls[0] == NULL || urls[1] == NULL) {
        tsc_err("out of memory");
        return TSC_EXIT_USAGE;
    }
    if (urls[0][0] == '\0' || urls[1][0] == '\0') {
        tsc_err("the URLs may not be empty");
        return TSC_EXIT_USAGE;
    }
    if (tsc_client_init(c) != 0) {
        tsc_err("cannot set up libcurl");
        return TSC_EXIT_CONNECT;
    }
    c->url = urls[0];
    c->admin_url = urls[1];
    if (o->timeout_ms != 0)
        c->timeout_ms = (long)(o->timeout_ms < 24 * 3600000 ? o->timeout_ms : 24 * 3600000);
    rc = load_token(o, c);
    if (rc != 0)
        return rc;
    return cmd->run(&x);
}

int
main(int argc, char **argv)
{
    struct options o = {0};
    struct tsc_client c = {0};
    char *urls[2] = {NULL, NULL};
    int rc;

    o.fo.reconnect_timeout_ms = 120000;
    o.fo.max_backoff_ms = 10000;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        tsc_err("cannot set up libcurl");
        return TSC_EXIT_CONNECT;
    }
    rc = run(argc, argv, &o, &c, urls);
    tsc_client_dispose(&c);
    free_secret(o.token);
    free(urls[0]);
    free(urls[1]);
    curl_global_cleanup();
    if (fflush(stdout) != 0 && rc == 0) {
        tsc_err("cannot write the output: %s", strerror(errno));
        rc = TSC_EXIT_USAGE;
    }
    return rc;
}
