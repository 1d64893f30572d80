/*
 * Command tasks: programs from the operator's allow-list (COMMANDS_FILE), run
 * without a shell, their output streamed line by line, stopped cleanly.
 *
 * Loading. The file is read and checked at start-up, where every mistake
 * stops the daemon with one sentence naming the file, the command and the
 * field, and again on ts_commands_reload() (SIGHUP), where a mistake keeps
 * the allow-list in force. Each load makes a new generation, a refcounted
 * command list that is immutable once loaded, so any thread may read it
 * without a lock: validate() and run() each hold the generation that was
 * current when they began, so a running task keeps the definition it
 * started with (a queued task gets the one current when it starts). The
 * count of running processes of a command lives in a `slots` shared by
 * every generation that has a command of that name, so max_concurrent holds
 * across a reload. The "env.allow" variables are copied out of the
 * environment given at start-up (envp), so nothing reads the live
 * environment.
 *
 * Client values. A request names a command and gives string parameters. Each
 * value must match its parameter's POSIX extended regex as the operator wrote
 * it (not anchored by us), must not contain NUL, and must not start with '-'
 * unless the parameter says "allow_leading_dash". A value replaces its
 * {placeholder} inside one argv element and never becomes more than that
 * element: there is no shell and no word splitting. argv[0], the environment
 * and the working directory are the operator's alone.
 *
 * Running, on a worker thread of the task service. Everything the child needs
 * (argv, envp, descriptors) is built before fork(), because a child of a
 * multi-threaded process may only call async-signal-safe functions: no malloc,
 * no locks, no stdio. The child gets its own process group, dies with the
 * daemon (PR_SET_PDEATHSIG), starts from default signal dispositions and an
 * empty mask, has /dev/null on stdin, a pipe each on stdout and stderr and no
 * other descriptor, the declared resource limits and the declared directory.
 * An exec that fails reports its errno through a close-on-exec pipe. The
 * worker then waits in poll() on the two pipes, a pidfd of the child and the
 * task's cancel eventfd, with a timeout only for a deadline that exists (the
 * time limit, the kill grace, the drain after exit): it never polls on a
 * timer (except on kernels without pidfd_open, see no_pidfd_period).
 *
 * Stopping. Cancellation (client, shutdown), the time limit and the output
 * limit all stop the same way: SIGTERM (and SIGCONT) to the process group,
 * SIGKILL to it after the command's kill grace. Once the child has been
 * reaped its pipes get DRAIN_AFTER_EXIT_NS to reach end-of-file (a grandchild
 * may hold them), then the rest of the process group is killed, so no
 * process of the group outlives its task, and the task ends. Every child is
 * reaped by waitpid() on its pid; nothing else of ours forks.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "command.h"
#include "task.h"
#include "util.h"

#define NAME_MAX_LEN 64
#define ENV_NAME_MAX_LEN 128
#define DEFAULT_CWD "/"
#define DEFAULT_TIMEOUT_MS (60 * 60 * INT64_C(1000))
#define DEFAULT_MAX_OUTPUT_BYTES (UINT64_C(1) << 20)
#define DEFAULT_MAX_LINE_BYTES 4096
#define MAX_LINE_BYTES_LIMIT (UINT64_C(1) << 20)
#define DEFAULT_MAX_CONCURRENT 1
#define MAX_CONCURRENT_LIMIT 100000
/* Linux's MAX_ARG_STRLEN: execve() refuses a longer argv element. */
#define ARG_MAX_BYTES (128 * 1024)
/* A reaped child's pipes get this long to reach end-of-file: long enough for
 * what was already written, short enough that a grandchild holding them
 * cannot hold the task. */
#define DRAIN_AFTER_EXIT_NS (100 * TS_NS_PER_MS)
#define READ_CHUNK 65536
/* Reads per descriptor per wake-up, so that a flood on one pipe cannot
 * starve the other nor the cancel. */
#define READS_PER_WAKE 4
#define CHILD_EXIT_SETUP 126 /* the child failed before exec (it reported why) */

static const char *const command_keys[] = {
    "description",
    "argv",
    "params",
    "env",
    "cwd",
    "timeout",
    "kill_grace",
    "max_output_bytes",
    "max_line_bytes",
    "max_concurrent",
    "rlimits",
    "restartable",
};
static const char *const param_keys[] = {"pattern", "default", "allow_leading_dash", "description"};
static const char *const env_keys[] = {"allow", "set"};
static const char *const body_keys[] = {"kind", "command", "params"};

static const struct rlimit_name {
    const char *key;
    int resource;
} rlimit_names[] = {
    {"cpu_seconds", RLIMIT_CPU},
    {"address_space_bytes", RLIMIT_AS},
    {"open_files", RLIMIT_NOFILE},
    {"file_size_bytes", RLIMIT_FSIZE},
};

struct param {
    char *name;
    char *pattern; /* as written, for messages */
    regex_t re;
    bool compiled;
    char *def; /* NULL: the client must give a value */
    bool allow_leading_dash;
};

struct limit {
    int resource;
    rlim_t value; /* soft and hard */
};

struct command {
    char *name;
    char **argv; /* templates with {placeholders}; argv[0] has none */
    size_t argc;
    struct param *params;
    size_t nparams;
    char **envp; /* the whole environment of the child, NULL-terminated */
    size_t nenv;
    char *cwd;
    int64_t timeout_ms;    /* > 0 */
    int64_t kill_grace_ms; /* 0..KILL_GRACE */
    uint64_t max_output_bytes;
    uint64_t max_line_bytes;
    unsigned max_concurrent;
    bool restartable; /* cluster mode: may run again from the start elsewhere */
    struct limit limits[TS_ARRAY_SIZE(rlimit_names)];
    size_t nlimits;
    json_t *info;        /* what GET /v1/commands shows: no argv, no env */
    struct slots *slots; /* shared with the same name in other generations */
};

/* Processes of one command name being supervised. */
struct slots {
    atomic_uint running;
    atomic_uint refs;
};

/* One generation of the allow-list; immutable once loaded. */
struct command_list {
    atomic_uint refs;
    struct command *cmds;
    size_t ncmds;
};

struct ts_commands {
    struct ts_task_kind kind; /* arg points back here */
    char *path;
    char *const *envp; /* borrowed; outlives us */
    int64_t kill_grace_ms;
    struct ts_log *log; /* borrowed */
    pthread_mutex_t mu;
    struct command_list *current; /* guarded by mu; holds a reference */
};

/* ------------------------------------------------------------------------ */
/* Loading                                                                   */
/* ------------------------------------------------------------------------ */

struct loader {
    const char *path;
    const char *command; /* the command being read; NULL outside one */
    char *const *envp;
    int64_t kill_grace_ms;
    struct ts_log *log;
    char *err;
    size_t errlen;
};

/* Write "COMMANDS_FILE <path>: command "<name>": field "<field>": <text>"
 * into the loader's buffer and return -EINVAL. */
static int __attribute__((format(printf, 3, 4)))
load_error(struct loader *ld, const char *field, const char *fmt, ...)
{
    va_list ap;
    size_t used = 0;
    int n;

    if (ld->errlen == 0)
        return -EINVAL;
    if (ld->command != NULL && field != NULL)
        n = snprintf(ld->err, ld->errlen,
                     "COMMANDS_FILE %s: command \"%.64s\": field \"%s\": ", ld->path, ld->command,
                     field);
    else if (ld->command != NULL)
        n = snprintf(ld->err, ld->errlen, "COMMANDS_FILE %s: command \"%.64s\": ", ld->path,
                     ld->command);
    else if (field != NULL)
        n = snprintf(ld->err, ld->errlen, "COMMANDS_FILE %s: field \"%s\": ", ld->path, field);
    else
        n = snprintf(ld->err, ld->errlen, "COMMANDS_FILE %s: ", ld->path);
    if (n > 0)
        used = (size_t)n < ld->errlen ? (size_t)n : ld->errlen - 1;
    va_start(ap, fmt);
    vsnprintf(ld->err + used, ld->errlen - used, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static bool
name_valid(const char *s, size_t len)
{
    if (len == 0 || len > NAME_MAX_LEN)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* POSIX portable environment names: a letter or '_', then letters, digits,
 * '_'. */
static bool
env_name_valid(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        char c = s[i];
        bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';

        if (i == ENV_NAME_MAX_LEN || !(alpha || (i > 0 && c >= '0' && c <= '9')))
            return false;
    }
    return i > 0;
}

/* A JSON string without NUL (jansson allows "\u0000"; C strings do not). */
static const char *
plain_string(const json_t *v)
{
    const char *s = json_string_value(v);

    if (s == NULL || strlen(s) != json_string_length(v))
        return NULL;
    return s;
}

static int
check_keys(struct loader *ld, const json_t *obj, const char *prefix, const char *const *allowed,
           size_t nallowed)
{
    char field[160];
    char list[256];
    size_t used = 0;
    const char *key;
    json_t *v;

    json_object_foreach((json_t *)obj, key, v) {
        bool known = false;

        for (size_t i = 0; i < nallowed && !known; i++)
            known = strcmp(key, allowed[i]) == 0;
        if (known)
            continue;
        list[0] = '\0';
        for (size_t i = 0; i < nallowed && used < sizeof(list); i++) {
            int n =
                snprintf(list + used, sizeof(list) - used, "%s%s", i > 0 ? ", " : "", allowed[i]);
            if (n > 0)
                used += (size_t)n;
        }
        snprintf(field, sizeof(field), "%s%.64s", prefix, key);
        return load_error(ld, field, "is not a known field (allowed: %s)", list);
    }
    return 0;
}

/* A whole number in [min, max]: a JSON integer, or with `sizes` also a
 * string such as "16M". */
static int
get_number(struct loader *ld, const json_t *v, const char *field, bool sizes, uint64_t min,
           uint64_t max, uint64_t *out)
{
    uint64_t n = 0;

    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        n = (uint64_t)json_integer_value(v);
    } else if (sizes && json_is_string(v)) {
        if (ts_parse_size(json_string_value(v), &n) != 0)
            return load_error(ld, field, "\"%.64s\" is not a size such as 1048576 or \"16M\"",
                              json_string_value(v));
    } else {
        return load_error(ld, field, "must be a whole number%s",
                          sizes ? " of bytes (or a size such as \"16M\")" : "");
    }
    if (n < min || n > max)
        return load_error(ld, field, "%llu is out of range: allowed %llu to %llu",
                          (unsigned long long)n, (unsigned long long)min, (unsigned long long)max);
    *out = n;
    return 0;
}

/* An optional positive number field of `spec`; `def` when it is absent. */
static int
get_optional(struct loader *ld, const json_t *spec, const char *key, bool sizes, uint64_t max,
             uint64_t def, uint64_t *out)
{
    const json_t *v = json_object_get(spec, key);

    *out = def;
    return v != NULL ? get_number(ld, v, key, sizes, 1, max, out) : 0;
}

static int
get_duration(struct loader *ld, const json_t *v, const char *field, int64_t *out)
{
    const char *s = json_string_value(v);

    if (s == NULL || ts_parse_duration_ms(s, out) != 0)
        return load_error(ld, field, "must be a duration such as \"30s\", \"10m\" or \"1h\"");
    return 0;
}

static int
find_param(const struct command *cmd, const char *name, size_t len)
{
    for (size_t i = 0; i < cmd->nparams; i++) {
        if (strlen(cmd->params[i].name) == len && memcmp(cmd->params[i].name, name, len) == 0)
            return (int)i;
    }
    return -1;
}

/*
 * Walk an argv template: "{name}" of a declared parameter is a placeholder,
 * "{{" and "}}" are a literal brace, every other byte is itself. With `out`,
 * append the expansion (values[i] for parameter i); with `used`, mark the
 * parameters met. Returns 0, -ENOENT for a well-formed name that is not
 * declared (in *unknown, *unknown_len), -E2BIG past `out`'s cap, -ENOMEM.
 */
static int
expand(const struct command *cmd, const char *tpl, const char *const *values, struct ts_buf *out,
       bool *used, const char **unknown, size_t *unknown_len)
{
    static const char name_chars[] = "abcdefghijklmnopqrstuvwxyz0123456789_-";
    const char *p = tpl;
    int err = 0;

    while (*p != '\0' && err == 0) {
        size_t n;
        int idx;

        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            if (out != NULL)
                err = ts_buf_append(out, p, 1);
            p += 2;
            continue;
        }
        n = p[0] == '{' ? strspn(p + 1, name_chars) : 0;
        if (n == 0 || p[n + 1] != '}') {
            if (out != NULL)
                err = ts_buf_append(out, p, 1);
            p++;
            continue;
        }
        idx = find_param(cmd, p + 1, n);
        if (idx < 0) {
            *unknown = p + 1;
            *unknown_len = n;
            return -ENOENT;
        }
        if (used != NULL)
            used[idx] = true;
        if (out != NULL)
            err = ts_buf_append(out, values[idx], strlen(values[idx]));
        p += n + 2;
    }
    return err;
}

/* Whether `value` is acceptable for `p`. On refusal, `why` gets the end of
 * a sentence that starts with the parameter's name. */
static bool
value_ok(const struct param *p, const char *value, char *why, size_t whylen)
{
    if (value[0] == '-' && !p->allow_leading_dash) {
        snprintf(why, whylen, "must not start with \"-\"");
        return false;
    }
    if (regexec(&p->re, value, 0, NULL, 0) != 0) {
        snprintf(why, whylen, "does not match the pattern %s", p->pattern);
        return false;
    }
    return true;
}

/* Patterns are the operator's, but a typo must not take the daemon down at
 * start-up: glibc compiles stacked repetitions ("a{1,64}+++") into
 * automata of gigabytes (found by fuzzing the loader). */
#define PATTERN_MAX 512

static bool
stacked_quantifiers(const char *re)
{
    bool after_quantifier = false;

    for (const char *c = re; *c != '\0'; c++) {
        if (*c == '\\' && c[1] != '\0') {
            c++;
            after_quantifier = false;
            continue;
        }
        if (*c == '[') { /* a bracket expression: "[]a]" and "[^]a]" hold a ']' */
            const char *end = c + 1;

            if (*end == '^')
                end++;
            if (*end == ']')
                end++;
            end = strchr(end, ']');
            if (end == NULL)
                return false;
            c = end;
            after_quantifier = false;
            continue;
        }
        if (*c == '*' || *c == '+' || *c == '?' || *c == '{') {
            if (after_quantifier)
                return true;
            if (*c == '{') {
                c = strchr(c, '}');
                if (c == NULL)
                    return false; /* regcomp() will say what is wrong */
            }
            after_quantifier = true;
        } else {
            after_quantifier = false;
        }
    }
    return false;
}

static int
load_param(struct loader *ld, struct command *cmd, struct param *p, const char *name,
           const json_t *spec)
{
    char field[160];
    char msg[256];
    const json_t *v;
    int rc;

    snprintf(field, sizeof(field), "params.%.64s", name);
    if (!name_valid(name, strlen(name)))
        return load_error(ld, field, "a parameter name is 1 to 64 of a-z, 0-9, '_' and '-'");
    if (!json_is_object(spec))
        return load_error(ld, field, "must be an object with a \"pattern\"");
    snprintf(field, sizeof(field), "params.%.64s.", name);
    rc = check_keys(ld, spec, field, param_keys, TS_ARRAY_SIZE(param_keys));
    if (rc != 0)
        return rc;
    p->name = strdup(name);
    if (p->name == NULL)
        return -ENOMEM;

    snprintf(field, sizeof(field), "params.%.64s.pattern", name);
    v = json_object_get(spec, "pattern");
    if (v == NULL || plain_string(v) == NULL || json_string_length(v) == 0)
        return load_error(ld, field, "must be a non-empty string (a POSIX extended regex)");
    if (json_string_length(v) > PATTERN_MAX || stacked_quantifiers(json_string_value(v)))
        return load_error(ld, field,
                          "at most %d bytes and no quantifier right after another (e.g. "
                          "\"{1,64}+\"): glibc's regcomp() can take gigabytes for those",
                          PATTERN_MAX);
    p->pattern = strdup(json_string_value(v));
    if (p->pattern == NULL)
        return -ENOMEM;
    rc = regcomp(&p->re, p->pattern, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        regerror(rc, NULL, msg, sizeof(msg));
        return load_error(ld, field, "invalid regular expression: %s", msg);
    }
    p->compiled = true;
    if (p->pattern[0] != '^' || p->pattern[strlen(p->pattern) - 1] != '$')
        ts_log(ld->log, TS_LOG_WARN,
               "a command parameter pattern is not anchored at both ends: it accepts any value "
               "that merely contains a match",
               TS_F_STR("file", ld->path), TS_F_STR("command", ld->command),
               TS_F_STR("param", name), TS_F_STR("pattern", p->pattern), TS_F_END);

    v = json_object_get(spec, "allow_leading_dash");
    if (v != NULL && !json_is_boolean(v)) {
        snprintf(field, sizeof(field), "params.%.64s.allow_leading_dash", name);
        return load_error(ld, field, "must be true or false");
    }
    p->allow_leading_dash = json_is_true(v);

    v = json_object_get(spec, "default");
    if (v != NULL) {
        snprintf(field, sizeof(field), "params.%.64s.default", name);
        if (plain_string(v) == NULL)
            return load_error(ld, field, "must be a string without NUL");
        if (!value_ok(p, json_string_value(v), msg, sizeof(msg)))
            return load_error(ld, field, "\"%.64s\" %s", json_string_value(v), msg);
        p->def = strdup(json_string_value(v));
        if (p->def == NULL)
            return -ENOMEM;
    }
    v = json_object_get(spec, "description");
    if (v != NULL && !json_is_string(v)) {
        snprintf(field, sizeof(field), "params.%.64s.description", name);
        return load_error(ld, field, "must be a string");
    }
    if (json_object_set_new(json_object_get(cmd->info, "params"), name,
                            json_pack("{s:s, s:s?, s:O?, s:b}", "pattern", p->pattern, "default",
                                      p->def, "description", v, "allow_leading_dash",
                                      p->allow_leading_dash)) != 0)
        return -ENOMEM;
    return 0;
}

static int
load_params(struct loader *ld, struct command *cmd, const json_t *spec)
{
    const char *name;
    json_t *v;
    int rc;

    if (spec == NULL)
        return 0;
    if (!json_is_object(spec))
        return load_error(ld, "params", "must be an object of parameter names");
    cmd->params = calloc(json_object_size(spec) + 1, sizeof(*cmd->params));
    if (cmd->params == NULL)
        return -ENOMEM;
    json_object_foreach((json_t *)spec, name, v) {
        rc = load_param(ld, cmd, &cmd->params[cmd->nparams], name, v);
        /* Counted even on error: it may hold a compiled regex to free. */
        cmd->nparams++;
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int
check_executable(struct loader *ld, const char *path)
{
    struct stat st;

    if (path[0] != '/')
        return load_error(ld, "argv[0]", "\"%s\" is not an absolute path", path);
    if (stat(path, &st) != 0)
        return load_error(ld, "argv[0]", "\"%s\" %s", path,
                          errno == ENOENT ? "does not exist" : strerror(errno));
    if (!S_ISREG(st.st_mode))
        return load_error(ld, "argv[0]", "\"%s\" is not a regular file", path);
    if (access(path, X_OK) != 0)
        return load_error(ld, "argv[0]", "\"%s\" is not executable", path);
    /* Anyone who can rewrite the program can run code as the daemon. */
    if (st.st_mode & S_IWOTH)
        return load_error(ld, "argv[0]", "\"%s\" is writable by every user", path);
    return 0;
}

static int
load_argv(struct loader *ld, struct command *cmd, const json_t *spec)
{
    char field[96];
    const char *s, *unknown = NULL;
    size_t unknown_len = 0;
    bool *used;
    int rc = 0;

    if (!json_is_array(spec) || json_array_size(spec) == 0)
        return load_error(ld, "argv", "must be a non-empty array of strings");
    cmd->argv = calloc(json_array_size(spec) + 1, sizeof(*cmd->argv));
    if (cmd->argv == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < json_array_size(spec); i++) {
        snprintf(field, sizeof(field), "argv[%zu]", i);
        s = plain_string(json_array_get(spec, i));
        if (s == NULL)
            return load_error(ld, field, "must be a string without NUL");
        if (strlen(s) > ARG_MAX_BYTES)
            return load_error(ld, field, "is longer than %d bytes", ARG_MAX_BYTES);
        cmd->argv[i] = strdup(s);
        if (cmd->argv[i] == NULL)
            return -ENOMEM;
        cmd->argc++;
    }
    if (strpbrk(cmd->argv[0], "{}") != NULL)
        return load_error(ld, "argv[0]",
                          "\"%s\": the executable is fixed; it cannot hold a placeholder or a "
                          "brace",
                          cmd->argv[0]);
    rc = check_executable(ld, cmd->argv[0]);
    if (rc != 0)
        return rc;

    used = calloc(cmd->nparams + 1, sizeof(*used));
    if (used == NULL)
        return -ENOMEM;
    for (size_t i = 1; i < cmd->argc && rc == 0; i++) {
        rc = expand(cmd, cmd->argv[i], NULL, NULL, used, &unknown, &unknown_len);
        if (rc == -ENOENT) {
            snprintf(field, sizeof(field), "argv[%zu]", i);
            rc = load_error(ld, field,
                            "placeholder {%.*s} names no declared parameter (write {{ and }} "
                            "for literal braces)",
                            (int)(unknown_len < 64 ? unknown_len : 64), unknown);
        }
    }
    for (size_t i = 0; i < cmd->nparams && rc == 0; i++) {
        if (!used[i]) {
            snprintf(field, sizeof(field), "params.%.64s", cmd->params[i].name);
            rc = load_error(ld, field, "is declared but no argv element uses {%s}",
                            cmd->params[i].name);
        }
    }
    free(used);
    return rc;
}

static char *
find_env(char *const *envp, const char *name)
{
    size_t n = strlen(name);

    for (size_t i = 0; envp != NULL && envp[i] != NULL; i++) {
        if (strncmp(envp[i], name, n) == 0 && envp[i][n] == '=')
            return envp[i];
    }
    return NULL;
}

static int
load_env(struct loader *ld, struct command *cmd, const json_t *spec)
{
    char field[192];
    const json_t *allow, *set;
    const char *name;
    json_t *v;
    size_t cap;
    int rc;

    if (spec != NULL && !json_is_object(spec))
        return load_error(ld, "env", "must be an object with \"allow\" and/or \"set\"");
    if (spec != NULL) {
        rc = check_keys(ld, spec, "env.", env_keys, TS_ARRAY_SIZE(env_keys));
        if (rc != 0)
            return rc;
    }
    allow = spec != NULL ? json_object_get(spec, "allow") : NULL;
    set = spec != NULL ? json_object_get(spec, "set") : NULL;
    if (allow != NULL && !json_is_array(allow))
        return load_error(ld, "env.allow", "must be an array of variable names");
    if (set != NULL && !json_is_object(set))
        return load_error(ld, "env.set", "must be an object of variable names and values");
    cap = json_array_size(allow) + json_object_size(set) + 1;
    cmd->envp = calloc(cap, sizeof(*cmd->envp));
    if (cmd->envp == NULL)
        return -ENOMEM;

    for (size_t i = 0; i < json_array_size(allow); i++) {
        const char *found;

        snprintf(field, sizeof(field), "env.allow[%zu]", i);
        name = json_string_value(json_array_get(allow, i));
        if (name == NULL || !env_name_valid(name))
            return load_error(ld, field,
                              "must be a variable name (a letter or '_', then "
                              "letters, digits and '_')");
        if (set != NULL && json_object_get(set, name) != NULL)
            return load_error(ld, field, "\"%s\" is also in env.set; keep one", name);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(name, json_string_value(json_array_get(allow, j))) == 0)
                return load_error(ld, field, "\"%s\" is listed twice", name);
        }
        /* A variable the daemon does not have is simply not passed on. */
        found = find_env(ld->envp, name);
        if (found == NULL)
            continue;
        cmd->envp[cmd->nenv] = strdup(found);
        if (cmd->envp[cmd->nenv] == NULL)
            return -ENOMEM;
        cmd->nenv++;
    }
    json_object_foreach((json_t *)set, name, v) {
        struct ts_buf b;

        snprintf(field, sizeof(field), "env.set.%.64s", name);
        if (!env_name_valid(name))
            return load_error(ld, field,
                              "is not a variable name (a letter or '_', then "
                              "letters, digits and '_')");
        if (plain_string(v) == NULL)
            return load_error(ld, field, "must be a string without NUL");
        ts_buf_init(&b, SIZE_MAX);
        rc = ts_buf_printf(&b, "%s=%s", name, json_string_value(v));
        if (rc != 0) {
            ts_buf_dispose(&b);
            return -ENOMEM;
        }
        cmd->envp[cmd->nenv++] = ts_buf_take(&b, NULL);
    }
    return 0;
}

static int
load_cwd(struct loader *ld, struct command *cmd, const json_t *spec)
{
    struct stat st;
    const char *s = DEFAULT_CWD;

    if (spec != NULL) {
        s = plain_string(spec);
        if (s == NULL)
            return load_error(ld, "cwd", "must be a string");
        if (s[0] != '/')
            return load_error(ld, "cwd", "\"%s\" is not an absolute path", s);
        if (stat(s, &st) != 0)
            return load_error(ld, "cwd", "\"%s\" %s", s,
                              errno == ENOENT ? "does not exist" : strerror(errno));
        if (!S_ISDIR(st.st_mode))
            return load_error(ld, "cwd", "\"%s\" is not a directory", s);
    }
    cmd->cwd = strdup(s);
    return cmd->cwd != NULL ? 0 : -ENOMEM;
}

static int
load_rlimits(struct loader *ld, struct command *cmd, const json_t *spec)
{
    static const char *const keys[] = {"cpu_seconds", "address_space_bytes", "open_files",
                                       "file_size_bytes"};
    char field[64];
    struct rlimit cur;
    uint64_t n = 0;
    int rc;

    if (spec == NULL)
        return 0;
    if (!json_is_object(spec))
        return load_error(ld, "rlimits", "must be an object");
    rc = check_keys(ld, spec, "rlimits.", keys, TS_ARRAY_SIZE(keys));
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < TS_ARRAY_SIZE(rlimit_names); i++) {
        const json_t *v = json_object_get(spec, rlimit_names[i].key);

        if (v == NULL)
            continue;
        snprintf(field, sizeof(field), "rlimits.%s", rlimit_names[i].key);
        rc = get_number(ld, v, field, strstr(rlimit_names[i].key, "bytes") != NULL, 1,
                        (uint64_t)INT64_MAX, &n);
        if (rc != 0)
            return rc;
        /* The child could lower the limit but never raise it past the hard
         * one: say so now rather than at every spawn. */
        if (getrlimit(rlimit_names[i].resource, &cur) == 0 && cur.rlim_max != RLIM_INFINITY &&
            n > cur.rlim_max)
            return load_error(ld, field, "%llu is above the daemon's own hard limit %llu",
                              (unsigned long long)n, (unsigned long long)cur.rlim_max);
        cmd->limits[cmd->nlimits].resource = rlimit_names[i].resource;
        cmd->limits[cmd->nlimits].value = (rlim_t)n;
        cmd->nlimits++;
    }
    return 0;
}

static int
load_command(struct loader *ld, struct command *cmd, const char *name, const json_t *spec)
{
    const json_t *v;
    uint64_t n = 0;
    int rc;

    ld->command = name;
    if (!name_valid(name, strlen(name)))
        return load_error(ld, NULL, "a command name is 1 to 64 of a-z, 0-9, '_' and '-'");
    if (!json_is_object(spec))
        return load_error(ld, NULL, "must be an object with at least \"argv\"");
    rc = check_keys(ld, spec, "", command_keys, TS_ARRAY_SIZE(command_keys));
    if (rc != 0)
        return rc;
    cmd->name = strdup(name);
    if (cmd->name == NULL)
        return -ENOMEM;

    v = json_object_get(spec, "description");
    if (v != NULL && !json_is_string(v))
        return load_error(ld, "description", "must be a string");
    cmd->info = json_pack("{s:s, s:O?, s:{}}", "name", name, "description", v, "params");
    if (cmd->info == NULL)
        return -ENOMEM;
    /* Parameters first: argv refers to them. */
    rc = load_params(ld, cmd, json_object_get(spec, "params"));
    if (rc == 0)
        rc = load_argv(ld, cmd, json_object_get(spec, "argv"));
    if (rc == 0)
        rc = load_env(ld, cmd, json_object_get(spec, "env"));
    if (rc == 0)
        rc = load_cwd(ld, cmd, json_object_get(spec, "cwd"));
    if (rc == 0)
        rc = load_rlimits(ld, cmd, json_object_get(spec, "rlimits"));
    if (rc != 0)
        return rc;

    cmd->timeout_ms = DEFAULT_TIMEOUT_MS;
    v = json_object_get(spec, "timeout");
    if (v != NULL) {
        rc = get_duration(ld, v, "timeout", &cmd->timeout_ms);
        if (rc != 0)
            return rc;
        if (cmd->timeout_ms <= 0)
            return load_error(ld, "timeout", "must be longer than 0");
    }
    cmd->kill_grace_ms = ld->kill_grace_ms;
    v = json_object_get(spec, "kill_grace");
    if (v != NULL) {
        rc = get_duration(ld, v, "kill_grace", &cmd->kill_grace_ms);
        if (rc != 0)
            return rc;
        /* The shutdown budget (GRACEFUL_SHUTDOWN_TIMEOUT + KILL_GRACE) must
         * hold for every command. */
        if (cmd->kill_grace_ms > ld->kill_grace_ms)
            return load_error(ld, "kill_grace",
                              "%lld ms is longer than KILL_GRACE (%lld ms), which bounds it",
                              (long long)cmd->kill_grace_ms, (long long)ld->kill_grace_ms);
    }

    rc = get_optional(ld, spec, "max_output_bytes", true, (uint64_t)INT64_MAX,
                      DEFAULT_MAX_OUTPUT_BYTES, &cmd->max_output_bytes);
    if (rc == 0)
        rc = get_optional(ld, spec, "max_line_bytes", true, MAX_LINE_BYTES_LIMIT,
                          DEFAULT_MAX_LINE_BYTES, &cmd->max_line_bytes);
    if (rc == 0)
        rc = get_optional(ld, spec, "max_concurrent", false, MAX_CONCURRENT_LIMIT,
                          DEFAULT_MAX_CONCURRENT, &n);
    if (rc != 0)
        return rc;
    cmd->max_concurrent = (unsigned)n;
    v = json_object_get(spec, "restartable");
    if (v != NULL && !json_is_boolean(v))
        return load_error(ld, "restartable", "must be true or false");
    cmd->restartable = json_is_true(v);
    if (json_object_set_new(cmd->info, "restartable", json_boolean(cmd->restartable)) != 0 ||
        json_object_set_new(cmd->info, "timeout_ms", json_integer(cmd->timeout_ms)) != 0 ||
        json_object_set_new(cmd->info, "max_concurrent", json_integer(cmd->max_concurrent)) != 0)
        return -ENOMEM;
    ld->command = NULL;
    return 0;
}

static void
slots_unref(struct slots *sl)
{
    if (sl != NULL && atomic_fetch_sub(&sl->refs, 1) == 1)
        free(sl);
}

static void
command_dispose(struct command *cmd)
{
    for (size_t i = 0; i < cmd->argc; i++)
        free(cmd->argv[i]);
    free(cmd->argv);
    for (size_t i = 0; i < cmd->nparams; i++) {
        struct param *p = &cmd->params[i];

        if (p->compiled)
            regfree(&p->re);
        free(p->name);
        free(p->pattern);
        free(p->def);
    }
    free(cmd->params);
    for (size_t i = 0; i < cmd->nenv; i++)
        free(cmd->envp[i]);
    free(cmd->envp);
    free(cmd->cwd);
    free(cmd->name);
    json_decref(cmd->info);
    slots_unref(cmd->slots);
}

static void
list_unref(struct command_list *list)
{
    if (list == NULL || atomic_fetch_sub(&list->refs, 1) != 1)
        return;
    for (size_t i = 0; i < list->ncmds; i++)
        command_dispose(&list->cmds[i]);
    free(list->cmds);
    free(list);
}

/* The current generation, with a reference for the caller. */
static struct command_list *list_acquire(struct ts_commands *cmds);
static int find_command(const struct command_list *list, const char *name);

/* A restartable command runs again from its start on another replica when
 * its own dies or drains (cluster mode): the kind's resumable(). */
static bool
command_restartable(void *arg, const json_t *body)
{
    const char *name = json_string_value(json_object_get(body, "command"));
    struct command_list *list;
    bool restartable = false;
    int i;

    if (name == NULL)
        return false;
    list = list_acquire(arg);
    i = find_command(list, name);
    if (i >= 0)
        restartable = list->cmds[i].restartable;
    list_unref(list);
    return restartable;
}

static struct command_list *
list_acquire(struct ts_commands *cmds)
{
    struct command_list *list;

    pthread_mutex_lock(&cmds->mu);
    list = cmds->current;
    atomic_fetch_add(&list->refs, 1);
    pthread_mutex_unlock(&cmds->mu);
    return list;
}

static int
find_command(const struct command_list *list, const char *name)
{
    for (size_t i = 0; i < list->ncmds; i++) {
        if (strcmp(list->cmds[i].name, name) == 0)
            return (int)i;
    }
    return -1;
}

/* A command's process count: the one of the same name in `prev`, so that
 * max_concurrent counts across generations, or a new one. */
static int
attach_slots(struct command *cmd, const struct command_list *prev)
{
    int i = prev != NULL ? find_command(prev, cmd->name) : -1;

    if (i >= 0) {
        cmd->slots = prev->cmds[i].slots;
        atomic_fetch_add(&cmd->slots->refs, 1);
        return 0;
    }
    cmd->slots = calloc(1, sizeof(*cmd->slots));
    if (cmd->slots == NULL)
        return -ENOMEM;
    atomic_init(&cmd->slots->running, 0);
    atomic_init(&cmd->slots->refs, 1);
    return 0;
}

void
ts_commands_free(struct ts_commands *cmds)
{
    if (cmds == NULL)
        return;
    list_unref(cmds->current);
    pthread_mutex_destroy(&cmds->mu);
    free(cmds->path);
    free(cmds);
}

static int command_validate(void *arg, const json_t *body, char *err, size_t errlen);
static void command_run(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *result);

/* Build a generation from a parsed document. */
static int
parse_list(struct command_list **out, const json_t *root, const char *path, char *const envp[],
           int64_t kill_grace_ms, struct ts_log *log, const struct command_list *prev, char *err,
           size_t errlen)
{
    struct loader ld = {
        .path = path,
        .envp = envp,
        .kill_grace_ms = kill_grace_ms,
        .log = log,
        .err = err,
        .errlen = errlen,
    };
    static const char *const top_keys[] = {"commands"};
    struct command_list *list;
    const json_t *cmds, *spec;
    const char *name;
    int rc;

    if (errlen > 0)
        err[0] = '\0';
    if (!json_is_object(root))
        return load_error(&ld, NULL, "the file must hold a JSON object {\"commands\": {...}}");
    rc = check_keys(&ld, root, "", top_keys, TS_ARRAY_SIZE(top_keys));
    if (rc != 0)
        return rc;
    cmds = json_object_get(root, "commands");
    if (!json_is_object(cmds))
        return load_error(&ld, "commands", "must be an object of command names");

    list = calloc(1, sizeof(*list));
    if (list == NULL)
        return -ENOMEM;
    atomic_init(&list->refs, 1);
    list->cmds = calloc(json_object_size(cmds) + 1, sizeof(*list->cmds));
    if (list->cmds == NULL) {
        rc = -ENOMEM;
        goto out_free;
    }
    json_object_foreach((json_t *)cmds, name, spec) {
        struct command *cmd = &list->cmds[list->ncmds++];

        /* Counted before loading: a half-loaded command is disposed too. */
        rc = load_command(&ld, cmd, name, spec);
        if (rc == 0)
            rc = attach_slots(cmd, prev);
        if (rc == -ENOMEM)
            snprintf(err, errlen, "COMMANDS_FILE %s: out of memory", path);
        if (rc != 0)
            goto out_free;
    }
    *out = list;
    return 0;

out_free:
    list_unref(list);
    return rc;
}

int
ts_commands_parse(struct ts_commands **out, const json_t *root, const char *path,
                  char *const envp[], int64_t kill_grace_ms, struct ts_log *log, char *err,
                  size_t errlen)
{
    struct ts_commands *cmds;
    int rc;

    cmds = calloc(1, sizeof(*cmds));
    if (cmds == NULL)
        return -ENOMEM;
    cmds->path = strdup(path);
    if (cmds->path == NULL) {
        free(cmds);
        return -ENOMEM;
    }
    rc = parse_list(&cmds->current, root, path, envp, kill_grace_ms, log, NULL, err, errlen);
    if (rc != 0) {
        free(cmds->path);
        free(cmds);
        return rc;
    }
    cmds->envp = envp;
    cmds->kill_grace_ms = kill_grace_ms;
    cmds->log = log;
    pthread_mutex_init(&cmds->mu, NULL);
    cmds->kind = (struct ts_task_kind){
        .name = "command",
        .validate = command_validate,
        .run = command_run,
        .arg = cmds,
        .resumable = command_restartable,
    };
    *out = cmds;
    return 0;
}

/* Read and parse the file; a new reference in *root. */
static int
read_file(const char *path, json_t **root, char *err, size_t errlen)
{
    json_error_t jerr;
    struct stat st;

    /* Whoever can write the allow-list can run any program as the daemon. */
    if (stat(path, &st) == 0 && (st.st_mode & S_IWOTH)) {
        snprintf(err, errlen, "COMMANDS_FILE %s: the file is writable by every user", path);
        return -EINVAL;
    }
    *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (*root == NULL) {
        if (jerr.line > 0)
            snprintf(err, errlen, "COMMANDS_FILE %s: invalid JSON at line %d, column %d: %s", path,
                     jerr.line, jerr.column, jerr.text);
        else
            snprintf(err, errlen, "COMMANDS_FILE %s: %s", path, jerr.text);
        return -EINVAL;
    }
    return 0;
}

int
ts_commands_load(struct ts_commands **out, const char *path, char *const envp[],
                 int64_t kill_grace_ms, struct ts_log *log, char *err, size_t errlen)
{
    json_t *root;
    int rc;

    rc = read_file(path, &root, err, errlen);
    if (rc != 0)
        return rc;
    rc = ts_commands_parse(out, root, path, envp, kill_grace_ms, log, err, errlen);
    json_decref(root);
    return rc;
}

int
ts_commands_reload(struct ts_commands *cmds, char *err, size_t errlen)
{
    struct command_list *prev, *next;
    json_t *root;
    int rc;

    rc = read_file(cmds->path, &root, err, errlen);
    if (rc != 0)
        return rc;
    /* Loads run on one thread (the host's), so `current` cannot change
     * between this read and the swap below but by this function. */
    prev = list_acquire(cmds);
    rc = parse_list(&next, root, cmds->path, cmds->envp, cmds->kill_grace_ms, cmds->log, prev, err,
                    errlen);
    json_decref(root);
    if (rc == 0) {
        pthread_mutex_lock(&cmds->mu);
        cmds->current = next;
        pthread_mutex_unlock(&cmds->mu);
        list_unref(prev); /* the reference `current` held */
    }
    list_unref(prev);
    return rc;
}

size_t
ts_commands_count(struct ts_commands *cmds)
{
    struct command_list *list = list_acquire(cmds);
    size_t n = list->ncmds;

    list_unref(list);
    return n;
}

json_t *
ts_commands_to_json(struct ts_commands *cmds)
{
    struct command_list *list = list_acquire(cmds);
    json_t *arr = json_array();

    for (size_t i = 0; arr != NULL && i < list->ncmds; i++) {
        if (json_array_append(arr, list->cmds[i].info) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    list_unref(list);
    return arr;
}

const struct ts_task_kind *
ts_commands_kind(struct ts_commands *cmds)
{
    return &cmds->kind;
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                  */
/* ------------------------------------------------------------------------ */

static void
list_params(const struct command *cmd, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < cmd->nparams && used < len; i++) {
        int n = snprintf(buf + used, len - used, "%s%s", i > 0 ? ", " : "", cmd->params[i].name);
        if (n > 0)
            used += (size_t)n;
    }
    if (cmd->nparams == 0)
        snprintf(buf, len, "none");
}

/* Check the request's parameters; values[i] is then parameter i's value
 * (borrowed from the body or the allow-list). */
static int
check_values(const struct command *cmd, const json_t *params, const char **values, char *err,
             size_t errlen)
{
    char allowed[256];
    char why[320];
    const char *key;
    json_t *v;

    json_object_foreach((json_t *)params, key, v) {
        if (find_param(cmd, key, strlen(key)) >= 0)
            continue;
        list_params(cmd, allowed, sizeof(allowed));
        snprintf(err, errlen, "unknown parameter \"%.64s\" for command \"%s\" (allowed: %s)", key,
                 cmd->name, allowed);
        return -EINVAL;
    }
    for (size_t i = 0; i < cmd->nparams; i++) {
        const struct param *p = &cmd->params[i];

        v = json_object_get(params, p->name);
        if (v == NULL && p->def == NULL) {
            snprintf(err, errlen, "missing parameter \"%s\" for command \"%s\"", p->name,
                     cmd->name);
            return -EINVAL;
        }
        if (v == NULL) {
            values[i] = p->def;
            continue;
        }
        if (!json_is_string(v)) {
            snprintf(err, errlen, "parameter \"%s\" must be a string", p->name);
            return -EINVAL;
        }
        if (plain_string(v) == NULL) {
            snprintf(err, errlen, "parameter \"%s\" must not contain NUL", p->name);
            return -EINVAL;
        }
        if (!value_ok(p, json_string_value(v), why, sizeof(why))) {
            snprintf(err, errlen, "parameter \"%s\" %s", p->name, why);
            return -EINVAL;
        }
        values[i] = json_string_value(v);
    }
    return 0;
}

static int
build_argv(const struct command *cmd, const char **values, struct ts_command_exec *ex, char *err,
           size_t errlen)
{
    const char *unknown;
    size_t unknown_len;
    struct ts_buf b;
    int rc;

    ex->argv = calloc(cmd->argc + 1, sizeof(*ex->argv));
    if (ex->argv == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < cmd->argc; i++) {
        ts_buf_init(&b, ARG_MAX_BYTES);
        rc = i == 0 ? ts_buf_append(&b, cmd->argv[0], strlen(cmd->argv[0]))
                    : expand(cmd, cmd->argv[i], values, &b, NULL, &unknown, &unknown_len);
        if (rc == 0)
            ex->argv[i] = ts_buf_take(&b, NULL);
        ts_buf_dispose(&b);
        if (rc == -E2BIG) {
            snprintf(err, errlen, "the parameters make argv[%zu] longer than %d bytes", i,
                     ARG_MAX_BYTES);
            return -EINVAL;
        }
        if (rc != 0 || ex->argv[i] == NULL)
            return -ENOMEM;
        ex->argc++;
    }
    return 0;
}

static void
unknown_command(const struct command_list *list, const char *name, char *err, size_t errlen)
{
    ts_unknown_begin(err, errlen, "command", name);
    for (size_t i = 0; i < list->ncmds; i++)
        ts_unknown_add(err, errlen, list->cmds[i].name);
    ts_unknown_end(err, errlen);
}

/* ts_command_prepare(), also telling which command (an index). */
static int
prepare(const struct command_list *list, const json_t *body, struct ts_command_exec *ex,
        size_t *index, char *err, size_t errlen)
{
    const struct command *cmd;
    const json_t *params;
    const char **values;
    const char *name, *key;
    json_t *v;
    int idx, rc;

    memset(ex, 0, sizeof(*ex));
    if (errlen > 0)
        err[0] = '\0';
    if (!json_is_object(body)) {
        snprintf(err, errlen, "the request must be a JSON object");
        return -EINVAL;
    }
    json_object_foreach((json_t *)body, key, v) {
        bool known = false;

        for (size_t i = 0; i < TS_ARRAY_SIZE(body_keys) && !known; i++)
            known = strcmp(key, body_keys[i]) == 0;
        if (!known) {
            snprintf(err, errlen, "unknown field \"%.64s\" (allowed: kind, command, params)", key);
            return -EINVAL;
        }
    }
    name = json_string_value(json_object_get(body, "command"));
    if (name == NULL) {
        snprintf(err, errlen, "\"command\" must be a string naming a command");
        return -EINVAL;
    }
    idx = find_command(list, name);
    if (idx < 0) {
        unknown_command(list, name, err, errlen);
        return -ENOENT;
    }
    cmd = &list->cmds[idx];
    params = json_object_get(body, "params");
    if (params != NULL && !json_is_object(params)) {
        snprintf(err, errlen, "\"params\" must be an object");
        return -EINVAL;
    }
    values = calloc(cmd->nparams + 1, sizeof(*values));
    if (values == NULL)
        return -ENOMEM;
    rc = check_values(cmd, params, values, err, errlen);
    if (rc == 0)
        rc = build_argv(cmd, values, ex, err, errlen);
    free(values);
    if (rc == 0) {
        /* The strings stay the allow-list's; the array is ours. */
        ex->envp = calloc(cmd->nenv + 1, sizeof(*ex->envp));
        if (ex->envp == NULL)
            rc = -ENOMEM;
        else
            memcpy(ex->envp, cmd->envp, cmd->nenv * sizeof(*ex->envp));
    }
    if (rc != 0) {
        if (rc == -ENOMEM)
            snprintf(err, errlen, "out of memory");
        ts_command_exec_dispose(ex);
        return rc;
    }
    ex->command = cmd->name;
    *index = (size_t)idx;
    return 0;
}

int
ts_command_prepare(struct ts_commands *cmds, const json_t *body, struct ts_command_exec *out,
                   char *err, size_t errlen)
{
    struct command_list *list = list_acquire(cmds);
    size_t index;
    int rc;

    rc = prepare(list, body, out, &index, err, errlen);
    /* The exec borrows the command's name and environment strings: keep the
     * generation until it is disposed. */
    if (rc == 0)
        out->list = list;
    else
        list_unref(list);
    return rc;
}

void
ts_command_exec_dispose(struct ts_command_exec *ex)
{
    if (ex->argv != NULL) {
        for (size_t i = 0; i < ex->argc; i++)
            free(ex->argv[i]);
        free(ex->argv);
    }
    free(ex->envp);
    list_unref(ex->list);
    memset(ex, 0, sizeof(*ex));
}

static int
command_validate(void *arg, const json_t *body, char *err, size_t errlen)
{
    struct command_list *list = list_acquire(arg);
    struct ts_command_exec ex;
    const struct command *cmd;
    size_t index;
    int rc;

    rc = prepare(list, body, &ex, &index, err, errlen);
    if (rc != 0)
        goto out;
    ts_command_exec_dispose(&ex);
    cmd = &list->cmds[index];
    /* Counts the runs in progress only: a task accepted meanwhile that finds
     * no free slot when it starts fails (see take_slot). */
    if (atomic_load(&cmd->slots->running) >= cmd->max_concurrent) {
        snprintf(err, errlen,
                 "command \"%s\" is already running %u time%s, its max_concurrent; "
                 "retry later",
                 cmd->name, cmd->max_concurrent, cmd->max_concurrent == 1 ? "" : "s");
        rc = -EAGAIN;
    }
out:
    list_unref(list);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Output                                                                    */
/* ------------------------------------------------------------------------ */

size_t
ts_utf8_repair(const char *in, size_t len, char *out)
{
    static const char replacement[] = "\xef\xbf\xbd";
    const unsigned char *s = (const unsigned char *)in;
    size_t i = 0, o = 0, n;

    while (i < len) {
        n = ts_utf8_sequence(s + i, len - i);
        if (n == 0) {
            memcpy(out + o, replacement, 3);
            o += 3;
            i++;
            continue;
        }
        memcpy(out + o, s + i, n);
        o += n;
        i += n;
    }
    return o;
}

/* How many of the `len` bytes of a line being cut to keep, so that the cut
 * does not split a character: a well-formed start of a sequence at the very
 * end is dropped rather than turned into U+FFFD. */
static size_t
utf8_cut(const char *p, size_t len)
{
    const unsigned char *s = (const unsigned char *)p;

    for (size_t back = 1; back <= 3 && back <= len; back++) {
        unsigned char c = s[len - back];
        size_t need;

        if ((c & 0xc0) == 0x80)
            continue;
        if (c < 0xc2 || c > 0xf4)
            return len;
        need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        return need > back ? len - back : len;
    }
    return len;
}

/* ------------------------------------------------------------------------ */
/* Running                                                                   */
/* ------------------------------------------------------------------------ */

enum stop_cause { STOP_NONE, STOP_CANCEL, STOP_TIMEOUT, STOP_OUTPUT_LIMIT };

static const char *const stop_cause_names[] = {
    [STOP_NONE] = "none",
    [STOP_CANCEL] = "cancel",
    [STOP_TIMEOUT] = "timeout",
    [STOP_OUTPUT_LIMIT] = "output_limit",
};

/* Where the child was when it failed before exec. */
enum child_stage { STAGE_SETUP, STAGE_RLIMIT, STAGE_CHDIR, STAGE_EXEC };

struct child_report {
    int stage; /* enum child_stage */
    int err;   /* errno */
};

/* All the child reads, prepared before fork(). */
struct child_setup {
    char *const *argv;
    char *const *envp;
    const char *cwd;
    const struct limit *limits;
    size_t nlimits;
    pid_t parent;
    int devnull, out_w, err_w, report_w; /* all >= 3, all close-on-exec */
};

struct stream {
    const char *name; /* "stdout" or "stderr" */
    int fd;           /* read end, non-blocking; -1 once closed */
    char *line;       /* the line being gathered, max_line_bytes */
    size_t len;
    bool skipping; /* a line was cut: drop bytes up to its newline */
};

struct run {
    struct ts_commands *cmds;
    const struct command *cmd;
    struct ts_task_ctx *ctx;
    struct stream out, err;
    char *fixed;      /* 3 * max_line_bytes: a line made valid UTF-8 */
    uint64_t total;   /* bytes read from both pipes */
    bool limited;     /* max_output_bytes passed: the rest is read and dropped */
    bool emit_closed; /* the task was ended for its readers: emit no more */
    pid_t pid;        /* also the process group id */
    int pidfd;        /* -1 when pidfd_open() is not available */
    int cancel_fd;
    bool reaped;
    int wstatus;
    int64_t deadline_ns; /* the time limit */
    enum stop_cause cause;
    int64_t term_ns;   /* when SIGTERM was sent */
    int64_t kill_ns;   /* when SIGKILL is due, once stopping */
    bool killed;       /* SIGKILL was sent */
    int64_t exited_ns; /* when the child was reaped */
    bool pipes_held;   /* the pipes were still open DRAIN_AFTER_EXIT_NS after the exit */
};

static void
emit_line(struct run *r, struct stream *s, bool truncated)
{
    size_t n;
    json_t *data;

    if (r->emit_closed)
        return;
    n = ts_utf8_repair(s->line, truncated ? utf8_cut(s->line, s->len) : s->len, r->fixed);
    /* Repaired just above, which is all json_stringn checks for. */
    data = json_pack("{s:s, s:o}", "stream", s->name, "line", json_stringn_nocheck(r->fixed, n));
    if (data != NULL && truncated)
        json_object_set_new(data, "truncated", json_true());
    if (data != NULL && ts_task_emit(r->ctx, "output", data) == -ECANCELED)
        r->emit_closed = true;
}

/* A line without its newline at the end of output (or at the limit). */
static void
flush_partial(struct run *r, struct stream *s, bool truncated)
{
    if (s->len > 0 && !s->skipping)
        emit_line(r, s, truncated);
    s->len = 0;
    s->skipping = false;
}

/* Split `n` bytes into lines: each complete line is emitted; a line longer
 * than max_line_bytes is emitted cut, marked, and the rest of it dropped. */
static void
split_lines(struct run *r, struct stream *s, const char *p, size_t n)
{
    size_t max = r->cmd->max_line_bytes;

    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t seg = nl != NULL ? (size_t)(nl - p) : n;

        if (!s->skipping) {
            size_t room = max - s->len;

            if (seg > room) {
                memcpy(s->line + s->len, p, room);
                s->len = max;
                emit_line(r, s, true);
                s->len = 0;
                s->skipping = true;
            } else {
                memcpy(s->line + s->len, p, seg);
                s->len += seg;
            }
        }
        if (nl == NULL)
            return;
        if (!s->skipping)
            emit_line(r, s, false);
        s->len = 0;
        s->skipping = false;
        p = nl + 1;
        n -= seg + 1;
    }
}

static int64_t
add_ms(int64_t t, int64_t ms)
{
    return ms >= (TS_NO_DEADLINE - t) / TS_NS_PER_MS ? TS_NO_DEADLINE : t + ms * TS_NS_PER_MS;
}

/* SIGTERM to the whole group (SIGCONT too, or a stopped process would never
 * see it), SIGKILL after the grace. The group exists: the child created it
 * before exec and it has not been reaped. */
static void
begin_stop(struct run *r, enum stop_cause cause, int64_t now)
{
    r->cause = cause;
    r->term_ns = now;
    r->kill_ns = add_ms(now, r->cmd->kill_grace_ms);
    kill(-r->pid, SIGTERM);
    kill(-r->pid, SIGCONT);
    if (r->cmd->kill_grace_ms == 0) {
        kill(-r->pid, SIGKILL);
        r->killed = true;
    }
}

static void
on_output_limit(struct run *r, int64_t now)
{
    r->limited = true;
    flush_partial(r, &r->out, true);
    flush_partial(r, &r->err, true);
    if (!r->emit_closed &&
        ts_task_emit(r->ctx, "output_limit",
                     json_pack("{s:I}", "max_output_bytes",
                               (json_int_t)r->cmd->max_output_bytes)) == -ECANCELED)
        r->emit_closed = true;
    if (!r->reaped && r->cause == STOP_NONE)
        begin_stop(r, STOP_OUTPUT_LIMIT, now);
}

static void
close_stream(struct run *r, struct stream *s)
{
    if (s->fd < 0)
        return;
    flush_partial(r, s, false);
    close(s->fd);
    s->fd = -1;
}

static void
read_stream(struct run *r, struct stream *s)
{
    char buf[READ_CHUNK];
    ssize_t n;

    for (int i = 0; i < READS_PER_WAKE && s->fd >= 0; i++) {
        n = read(s->fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            close_stream(r, s);
            return;
        }
        if (r->limited)
            continue; /* read only so that the child never blocks on a full pipe */
        if ((uint64_t)n > r->cmd->max_output_bytes - r->total) {
            split_lines(r, s, buf, (size_t)(r->cmd->max_output_bytes - r->total));
            r->total = r->cmd->max_output_bytes;
            on_output_limit(r, ts_monotonic_ns());
            continue;
        }
        r->total += (uint64_t)n;
        split_lines(r, s, buf, (size_t)n);
    }
}

static void
try_reap(struct run *r)
{
    pid_t p;

    do {
        p = waitpid(r->pid, &r->wstatus, WNOHANG);
    } while (p < 0 && errno == EINTR);
    if (p == r->pid) {
        r->reaped = true;
        r->exited_ns = ts_monotonic_ns();
    }
}

static int
poll_timeout_ms(int64_t now, int64_t until)
{
    int64_t ms;

    if (until == TS_NO_DEADLINE)
        return -1;
    if (until <= now)
        return 0;
    /* Rounded up: waking a little late beats spinning just before. */
    ms = (until - now + TS_NS_PER_MS - 1) / TS_NS_PER_MS;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

/*
 * Without pidfd_open() (Linux before 5.3) nothing wakes poll() when the child
 * exits while a grandchild holds its pipes, so look every so often.
 */
static const int64_t no_pidfd_period_ns = 100 * TS_NS_PER_MS;

/* Supervise the child until it is reaped and its pipes are done with. */
static void
supervise(struct run *r)
{
    struct pollfd pfd[4];
    struct stream *streams[2] = {&r->out, &r->err};

    for (;;) {
        int64_t now, wake = TS_NO_DEADLINE;
        nfds_t n = 0;
        int rc;

        if (!r->reaped)
            try_reap(r);
        now = ts_monotonic_ns();
        if (r->reaped) {
            if (r->out.fd < 0 && r->err.fd < 0)
                return;
            if (now >= r->exited_ns + DRAIN_AFTER_EXIT_NS) {
                r->pipes_held = true;
                return;
            }
            wake = r->exited_ns + DRAIN_AFTER_EXIT_NS;
        } else {
            if (r->cause == STOP_NONE && ts_task_cancelled(r->ctx))
                begin_stop(r, STOP_CANCEL, now);
            else if (r->cause == STOP_NONE && now >= r->deadline_ns)
                begin_stop(r, STOP_TIMEOUT, now);
            if (r->cause != STOP_NONE && !r->killed && now >= r->kill_ns) {
                kill(-r->pid, SIGKILL);
                r->killed = true;
            }
            if (r->cause == STOP_NONE) {
                wake = r->deadline_ns;
                pfd[n++] = (struct pollfd){.fd = r->cancel_fd, .events = POLLIN};
            } else if (!r->killed) {
                wake = r->kill_ns;
            }
            if (r->pidfd >= 0)
                pfd[n++] = (struct pollfd){.fd = r->pidfd, .events = POLLIN};
            else if (now + no_pidfd_period_ns < wake)
                wake = now + no_pidfd_period_ns;
        }
        for (int i = 0; i < 2; i++) {
            if (streams[i]->fd >= 0)
                pfd[n++] = (struct pollfd){.fd = streams[i]->fd, .events = POLLIN};
        }
        rc = poll(pfd, n, poll_timeout_ms(now, wake));
        if (rc < 0 && errno != EINTR) {
            ts_log(r->cmds->log, TS_LOG_ERROR, "poll failed while supervising a command",
                   TS_F_STR("task_id", ts_task_id(r->ctx)), TS_F_STR("error", strerror(errno)),
                   TS_F_END);
            return;
        }
        for (nfds_t i = 0; rc > 0 && i < n; i++) {
            if (pfd[i].revents == 0)
                continue;
            if (pfd[i].fd == r->out.fd)
                read_stream(r, &r->out);
            else if (pfd[i].fd == r->err.fd)
                read_stream(r, &r->err);
        }
    }
}

/* ---- the child ---- */

static void __attribute__((noreturn)) child_fail(int report_fd, enum child_stage stage)
{
    struct child_report rep = {.stage = stage, .err = errno};
    ssize_t n;

    do {
        n = write(report_fd, &rep, sizeof(rep));
    } while (n < 0 && errno == EINTR);
    _exit(CHILD_EXIT_SETUP);
}

static void
close_from(int lowfd)
{
    struct rlimit rl;
    long max = 65536;

    if (close_range((unsigned)lowfd, ~0U, 0) == 0)
        return;
    /* Kernels before 5.9: the slow way. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        max = rl.rlim_cur < (1 << 20) ? (long)rl.rlim_cur : (1 << 20);
    for (long fd = lowfd; fd < max; fd++)
        close((int)fd);
}

/*
 * glibc keeps two real-time signals (32 and 33) for itself and refuses to
 * touch them, but an ignored one is inherited through fork and exec like any
 * other: reset it with the system call. The kernel's struct sigaction (the
 * generic layout with a restorer, as on x86-64 and arm64), not glibc's.
 */
static void
reset_reserved_signal(int sig)
{
    struct {
        void (*handler)(int);
        unsigned long flags;
        void (*restorer)(void);
        uint64_t mask;
    } ksa = {.handler = SIG_DFL};

    syscall(SYS_rt_sigaction, sig, &ksa, NULL, sizeof(ksa.mask));
}

/*
 * After fork(), in the child: async-signal-safe calls only. Never returns.
 */
static void __attribute__((noreturn)) child_main(const struct child_setup *cs)
{
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    int report = cs->report_w;
    sigset_t none;

    if (setpgid(0, 0) != 0)
        child_fail(report, STAGE_SETUP);
    /*
     * The death signal fires when the *thread* that forked us exits, not
     * the process. Our forks happen on the task service's worker threads,
     * which live as long as the process, so here it means "when the daemon
     * dies", even by SIGKILL. The daemon may already have died before the
     * prctl: then our parent is someone else.
     */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        child_fail(report, STAGE_SETUP);
    if (getppid() != cs->parent)
        _exit(CHILD_EXIT_SETUP);

    /* execve() keeps ignored signals ignored (the daemon ignores SIGPIPE)
     * and the mask (it blocks SIGTERM and SIGINT). Handled ones it resets
     * itself, but a handler might be installed by a sanitizer runtime. */
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP && sigaction(sig, &dfl, NULL) != 0)
            reset_reserved_signal(sig);
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (dup2(cs->devnull, STDIN_FILENO) < 0 || dup2(cs->out_w, STDOUT_FILENO) < 0 ||
        dup2(cs->err_w, STDERR_FILENO) < 0)
        child_fail(report, STAGE_SETUP);
    /* The report pipe moves to 3 (still close-on-exec), everything above
     * goes: whatever another thread opened without O_CLOEXEC included. */
    if (report != 3) {
        if (dup3(report, 3, O_CLOEXEC) < 0)
            child_fail(report, STAGE_SETUP);
        report = 3;
    }
    close_from(4);

    for (size_t i = 0; i < cs->nlimits; i++) {
        struct rlimit rl = {.rlim_cur = cs->limits[i].value, .rlim_max = cs->limits[i].value};

        if (setrlimit(cs->limits[i].resource, &rl) != 0)
            child_fail(report, STAGE_RLIMIT);
    }
    if (chdir(cs->cwd) != 0)
        child_fail(report, STAGE_CHDIR);
    execve(cs->argv[0], cs->argv, cs->envp);
    child_fail(report, STAGE_EXEC);
}

/* ---- the parent's side of the spawn ---- */

/* The task's end reason must outlive run(): these are literals. */
static const char *
spawn_reason(const struct child_report *rep)
{
    switch (rep->stage) {
    case STAGE_EXEC:
        switch (rep->err) {
        case ENOENT:
            return "exec failed: No such file or directory";
        case EACCES:
            return "exec failed: Permission denied";
        case ENOEXEC:
            return "exec failed: Exec format error";
        case ETXTBSY:
            return "exec failed: Text file busy";
        case E2BIG:
            return "exec failed: Argument list too long";
        case ENOMEM:
            return "exec failed: Cannot allocate memory";
        case ELOOP:
            return "exec failed: Too many levels of symbolic links";
        case ENOTDIR:
            return "exec failed: Not a directory";
        case EPERM:
            return "exec failed: Operation not permitted";
        }
        return "exec failed";
    case STAGE_CHDIR:
        switch (rep->err) {
        case ENOENT:
            return "chdir failed: No such file or directory";
        case EACCES:
            return "chdir failed: Permission denied";
        case ENOTDIR:
            return "chdir failed: Not a directory";
        }
        return "chdir failed";
    case STAGE_RLIMIT:
        return rep->err == EPERM ? "setrlimit failed: Operation not permitted" : "setrlimit failed";
    }
    return "child setup failed";
}

/* Move `fd` above 0-2 (close-on-exec), so that the child's dup2() onto
 * 0-2 can never clobber another of its descriptors. */
static int
above_stdio(int *fd)
{
    int moved;

    if (*fd > STDERR_FILENO)
        return 0;
    moved = fcntl(*fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    if (moved < 0)
        return -errno;
    close(*fd);
    *fd = moved;
    return 0;
}

static void
close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static int
open_pidfd(pid_t pid)
{
#ifdef SYS_pidfd_open
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);

    if (fd >= 0)
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    return fd;
#else
    (void)pid;
    return -1;
#endif
}

/*
 * Fork and exec `ex`. Returns 0 with r->pid, r->pidfd and the pipes set, or
 * a negative errno with *reason set (a literal) when nothing runs.
 */
static int
spawn(struct run *r, const struct ts_command_exec *ex, const char **reason,
      struct child_report *rep)
{
    struct child_setup cs;
    int out[2] = {-1, -1}, err[2] = {-1, -1}, report[2] = {-1, -1};
    int devnull;
    ssize_t n;
    pid_t pid;
    int rc;

    *reason = "cannot open /dev/null";
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0)
        return -errno;
    *reason = "cannot create the pipes";
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0 || pipe2(report, O_CLOEXEC) != 0) {
        rc = -errno;
        goto out_close;
    }
    rc = above_stdio(&devnull);
    if (rc == 0)
        rc = above_stdio(&out[1]);
    if (rc == 0)
        rc = above_stdio(&err[1]);
    if (rc == 0)
        rc = above_stdio(&report[1]);
    if (rc != 0)
        goto out_close;
    if (fcntl(out[0], F_SETFL, O_NONBLOCK) != 0 || fcntl(err[0], F_SETFL, O_NONBLOCK) != 0) {
        rc = -errno;
        goto out_close;
    }
    cs = (struct child_setup){
        .argv = ex->argv,
        .envp = ex->envp,
        .cwd = r->cmd->cwd,
        .limits = r->cmd->limits,
        .nlimits = r->cmd->nlimits,
        .parent = getpid(),
        .devnull = devnull,
        .out_w = out[1],
        .err_w = err[1],
        .report_w = report[1],
    };

    pid = fork();
    if (pid < 0) {
        rc = -errno;
        *reason = "fork failed";
        goto out_close;
    }
    if (pid == 0)
        child_main(&cs);

    close_fd(&devnull);
    close_fd(&out[1]);
    close_fd(&err[1]);
    close_fd(&report[1]);
    /* The child does the same; doing it here too means the group exists
     * before we might signal it. EACCES once the child has exec'd: fine. */
    setpgid(pid, pid);
    r->pid = pid;
    r->pidfd = open_pidfd(pid);

    /* End-of-file at exec (close-on-exec), a report if it failed before. */
    do {
        n = read(report[0], rep, sizeof(*rep));
    } while (n < 0 && errno == EINTR);
    close_fd(&report[0]);
    if (n == (ssize_t)sizeof(*rep)) {
        while (waitpid(pid, &r->wstatus, 0) < 0 && errno == EINTR)
            ;
        r->reaped = true;
        close_fd(&r->pidfd);
        *reason = spawn_reason(rep);
        rc = -rep->err;
        goto out_close;
    }
    r->out.fd = out[0];
    r->err.fd = err[0];
    return 0;

out_close:
    close_fd(&devnull);
    close_fd(&out[0]);
    close_fd(&out[1]);
    close_fd(&err[0]);
    close_fd(&err[1]);
    close_fd(&report[0]);
    close_fd(&report[1]);
    return rc != 0 ? rc : -EIO;
}

/* Kill what is left of the child's process group and reap those that are
 * ours. The group id cannot have been reused: Linux keeps a pid number
 * while it still names a live group. Only when the daemon is PID 1 (or a
 * subreaper) do orphaned grandchildren become our children; then
 * waitpid(-pgid) reaps them, else it says ECHILD at once. */
static void
kill_group(struct run *r)
{
    pid_t p;

    if (kill(-r->pid, SIGKILL) != 0)
        return;
    for (;;) {
        p = waitpid(-r->pid, NULL, 0);
        if (p < 0 && errno != EINTR)
            return;
    }
}

static bool
take_slot(struct command *cmd)
{
    unsigned n = atomic_load(&cmd->slots->running);

    do {
        if (n >= cmd->max_concurrent)
            return false;
    } while (!atomic_compare_exchange_weak(&cmd->slots->running, &n, n + 1));
    return true;
}

static void
fill_result(struct run *r, struct ts_task_result *res)
{
    if (WIFEXITED(r->wstatus)) {
        res->exit_code = WEXITSTATUS(r->wstatus);
    } else if (WIFSIGNALED(r->wstatus)) {
        /* The shell's convention (137 for SIGKILL), and the signal itself. */
        res->signal = WTERMSIG(r->wstatus);
        res->exit_code = 128 + res->signal;
    }
    switch (r->cause) {
    case STOP_CANCEL:
        /* The task service replaces these with cancelled and its reason. */
        res->status = TS_TASK_CANCELLED;
        res->reason = "cancelled";
        return;
    case STOP_TIMEOUT:
        res->status = TS_TASK_FAILED;
        res->reason = "timeout";
        return;
    case STOP_OUTPUT_LIMIT:
        res->status = TS_TASK_FAILED;
        res->reason = "output limit";
        return;
    case STOP_NONE:
        break;
    }
    if (res->signal != 0) {
        res->status = TS_TASK_FAILED;
        res->reason = "killed by signal";
    } else if (res->exit_code != 0) {
        res->status = TS_TASK_FAILED;
        res->reason = "nonzero exit";
    }
}

/* The "stopped" event: which of our signals ended it and how long it took. */
static void
emit_stopped(struct run *r)
{
    int64_t after = (r->exited_ns - r->term_ns) / TS_NS_PER_MS;

    if (r->emit_closed)
        return;
    ts_task_emit(r->ctx, "stopped",
                 json_pack("{s:s, s:s, s:I, s:I}", "cause", stop_cause_names[r->cause], "how",
                           r->killed ? "killed" : "terminated", "grace_ms",
                           (json_int_t)r->cmd->kill_grace_ms, "after_ms", (json_int_t)after));
}

static int
run_init(struct run *r, struct ts_commands *cmds, const struct command *cmd,
         struct ts_task_ctx *ctx)
{
    memset(r, 0, sizeof(*r));
    r->cmds = cmds;
    r->cmd = cmd;
    r->ctx = ctx;
    r->pid = -1;
    r->pidfd = -1;
    r->out = (struct stream){.name = "stdout", .fd = -1};
    r->err = (struct stream){.name = "stderr", .fd = -1};
    r->out.line = malloc(cmd->max_line_bytes);
    r->err.line = malloc(cmd->max_line_bytes);
    r->fixed = malloc(3 * cmd->max_line_bytes);
    if (r->out.line == NULL || r->err.line == NULL || r->fixed == NULL)
        return -ENOMEM;
    r->cancel_fd = ts_task_cancel_fd(ctx);
    return r->cancel_fd >= 0 ? 0 : r->cancel_fd;
}

static void
run_dispose(struct run *r)
{
    close_fd(&r->out.fd);
    close_fd(&r->err.fd);
    close_fd(&r->pidfd);
    free(r->out.line);
    free(r->err.line);
    free(r->fixed);
}

static void
command_run(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *res)
{
    struct ts_commands *cmds = arg;
    struct command_list *list = list_acquire(cmds); /* held until the end */
    struct ts_command_exec ex;
    struct child_report rep = {0};
    struct command *cmd;
    struct run r;
    const char *reason;
    char err[256];
    size_t index;
    int rc;

    rc = prepare(list, ts_task_params(ctx), &ex, &index, err, sizeof(err));
    if (rc != 0) {
        /* validate() accepted this very body, against the generation
         * current then: a reload since may have removed or changed it. */
        ts_log(cmds->log, TS_LOG_WARN, "command task not started",
               TS_F_STR("task_id", ts_task_id(ctx)), TS_F_STR("error", err), TS_F_END);
        res->status = TS_TASK_FAILED;
        res->reason = rc == -ENOMEM   ? "out of memory"
                      : rc == -ENOENT ? "command no longer allowed"
                                      : "invalid parameters";
        list_unref(list);
        return;
    }
    cmd = &list->cmds[index];
    if (!take_slot(cmd)) {
        res->status = TS_TASK_FAILED;
        res->reason = "max_concurrent reached";
        goto out_dispose_exec;
    }
    rc = run_init(&r, cmds, cmd, ctx);
    if (rc != 0) {
        res->status = TS_TASK_FAILED;
        res->reason = "out of resources";
        goto out_dispose_run;
    }
    if (ts_task_cancelled(ctx))
        goto out_dispose_run; /* the service ends it as cancelled */

    r.deadline_ns = add_ms(ts_monotonic_ns(), cmd->timeout_ms);
    rc = spawn(&r, &ex, &reason, &rep);
    if (rc != 0) {
        ts_log(cmds->log, TS_LOG_WARN, "command failed to start",
               TS_F_STR("task_id", ts_task_id(ctx)), TS_F_STR("command", cmd->name),
               TS_F_STR("executable", ex.argv[0]), TS_F_STR("reason", reason),
               TS_F_STR("error", strerror(-rc)), TS_F_END);
        res->status = TS_TASK_FAILED;
        res->reason = reason;
        goto out_dispose_run;
    }
    ts_log(cmds->log, TS_LOG_INFO, "command started", TS_F_STR("task_id", ts_task_id(ctx)),
           TS_F_STR("command", cmd->name), TS_F_INT("pid", r.pid), TS_F_END);

    supervise(&r);
    if (!r.reaped) {
        /* Only after a poll() failure: end it the hard way. */
        kill(-r.pid, SIGKILL);
        while (waitpid(r.pid, &r.wstatus, 0) < 0 && errno == EINTR)
            ;
        r.reaped = true;
        r.exited_ns = ts_monotonic_ns();
    }
    close_stream(&r, &r.out);
    close_stream(&r, &r.err);
    kill_group(&r);
    if (r.pipes_held)
        ts_log(cmds->log, TS_LOG_INFO,
               "command exited while its process group held the output open: group killed",
               TS_F_STR("task_id", ts_task_id(ctx)), TS_F_STR("command", cmd->name), TS_F_END);
    if (r.cause != STOP_NONE)
        emit_stopped(&r);
    fill_result(&r, res);

out_dispose_run:
    run_dispose(&r);
    atomic_fetch_sub(&cmd->slots->running, 1);
out_dispose_exec:
    ts_command_exec_dispose(&ex);
    list_unref(list);
}
