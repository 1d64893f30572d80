/*
 * Unit tests for command tasks: the COMMANDS_FILE loader (one row per
 * mistake, each with the exact sentence naming the file, the command and
 * the field), parameter checking and {placeholder} substitution (one row per
 * request), the environment built from the allow-list, the UTF-8 repair of
 * output lines, and two real runs through a task service: /bin/echo, and a
 * cancelled sleep that ends in SIGTERM.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "command.h"
#include "task.h"
#include "task_helpers.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define KILL_GRACE_MS 10000
#define PATH "/etc/taskstream/commands.json"

static int
parse_text(struct ts_commands **out, const char *text, char *const envp[], char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loads(text, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    int rc;

    if (root == NULL)
        fail_msg("test JSON does not parse: %s: %s", jerr.text, text);
    rc = ts_commands_parse(out, root, PATH, envp, KILL_GRACE_MS, NULL, err, errlen);
    json_decref(root);
    return rc;
}

/* ---- the loader ---- */

static void
test_load_errors(void **state)
{
    static const struct {
        const char *json;
        const char *message; /* after "COMMANDS_FILE <PATH>: " */
    } rows[] = {
        {"[]", "the file must hold a JSON object {\"commands\": {...}}"},
        {"{}", "field \"commands\": must be an object of command names"},
        {"{\"commands\": {}, \"extra\": 1}",
         "field \"extra\": is not a known field (allowed: commands)"},
        {"{\"commands\": {\"Bad\": {\"argv\": [\"/bin/echo\"]}}}",
         "command \"Bad\": a command name is 1 to 64 of a-z, 0-9, '_' and '-'"},
        {"{\"commands\": {\"a\": []}}", "command \"a\": must be an object with at least \"argv\""},
        {"{\"commands\": {\"a\": {}}}",
         "command \"a\": field \"argv\": must be a non-empty array of strings"},
        {"{\"commands\": {\"a\": {\"argv\": []}}}",
         "command \"a\": field \"argv\": must be a non-empty array of strings"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", 5]}}}",
         "command \"a\": field \"argv[1]\": must be a string without NUL"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"x\\u0000y\"]}}}",
         "command \"a\": field \"argv[1]\": must be a string without NUL"},
        {"{\"commands\": {\"greet\": {\"argv\": [\"/bin/nope\", \"hello\"]}}}",
         "command \"greet\": field \"argv[0]\": \"/bin/nope\" does not exist"},
        {"{\"commands\": {\"a\": {\"argv\": [\"echo\"]}}}",
         "command \"a\": field \"argv[0]\": \"echo\" is not an absolute path"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/tmp\"]}}}",
         "command \"a\": field \"argv[0]\": \"/tmp\" is not a regular file"},
        {"{\"commands\": {\"a\": {\"argv\": [\"@NOEXEC@\"]}}}",
         "command \"a\": field \"argv[0]\": \"@NOEXEC@\" is not executable"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/{x}\"], \"params\": {\"x\": {\"pattern\": "
         "\"^a$\"}}}}}",
         "command \"a\": field \"argv[0]\": \"/bin/{x}\": the executable is fixed; it cannot hold "
         "a placeholder or a brace"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"--name={who}\"]}}}",
         "command \"a\": field \"argv[1]\": placeholder {who} names no declared parameter "
         "(write {{ and }} for literal braces)"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"params\": {\"who\": {\"pattern\": "
         "\"^a$\"}}}}}",
         "command \"a\": field \"params.who\": is declared but no argv element uses {who}"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"{{who}}\"], \"params\": {\"who\": "
         "{\"pattern\": \"^a$\"}}}}}",
         "command \"a\": field \"params.who\": is declared but no argv element uses {who}"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"{Who}\"], \"params\": {\"Who\": "
         "{\"pattern\": \"^a$\"}}}}}",
         "command \"a\": field \"params.Who\": a parameter name is 1 to 64 of a-z, 0-9, '_' and "
         "'-'"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"{w}\"], \"params\": {\"w\": "
         "\"^a$\"}}}}",
         "command \"a\": field \"params.w\": must be an object with a \"pattern\""},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"{w}\"], \"params\": {\"w\": "
         "{\"pattern\": \"^[a-z]{1,64}++$\"}}}}}",
         "command \"a\": field \"params.w.pattern\": at most 512 bytes and no quantifier right "
         "after another (e.g. \"{1,64}+\"): glibc's regcomp() can take gigabytes for those"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"{w}\"], \"params\": {\"w\": {}}}}}",
         "command \"a\": field \"params.w.pattern\": must be a non-empty string (a POSIX "
         "extended regex)"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"{w}\"], \"params\": {\"w\": "
         "{\"pattern\": \"^a$\", \"regex\": 1}}}}}",
         "command \"a\": field \"params.w.regex\": is not a known field (allowed: pattern, "
         "default, allow_leading_dash, description)"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"{w}\"], \"params\": {\"w\": "
         "{\"pattern\": \"^a$\", \"allow_leading_dash\": \"yes\"}}}}}",
         "command \"a\": field \"params.w.allow_leading_dash\": must be true or false"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"{w}\"], \"params\": {\"w\": "
         "{\"pattern\": \"^[a-z]+$\", \"default\": \"A\"}}}}}",
         "command \"a\": field \"params.w.default\": \"A\" does not match the pattern ^[a-z]+$"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\", \"{w}\"], \"params\": {\"w\": "
         "{\"pattern\": \"^-?[a-z]+$\", \"default\": \"-x\"}}}}}",
         "command \"a\": field \"params.w.default\": \"-x\" must not start with \"-\""},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"env\": []}}}",
         "command \"a\": field \"env\": must be an object with \"allow\" and/or \"set\""},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"env\": {\"pass\": []}}}}",
         "command \"a\": field \"env.pass\": is not a known field (allowed: allow, set)"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"env\": {\"allow\": \"LANG\"}}}}",
         "command \"a\": field \"env.allow\": must be an array of variable names"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"env\": {\"allow\": [\"1X\"]}}}}",
         "command \"a\": field \"env.allow[0]\": must be a variable name (a letter or '_', then "
         "letters, digits and '_')"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"env\": {\"allow\": [\"A\", "
         "\"A\"]}}}}",
         "command \"a\": field \"env.allow[1]\": \"A\" is listed twice"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"env\": {\"allow\": [\"A\"], "
         "\"set\": {\"A\": \"1\"}}}}}",
         "command \"a\": field \"env.allow[0]\": \"A\" is also in env.set; keep one"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"env\": {\"set\": {\"A=B\": "
         "\"1\"}}}}}",
         "command \"a\": field \"env.set.A=B\": is not a variable name (a letter or '_', then "
         "letters, digits and '_')"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"env\": {\"set\": {\"A\": 1}}}}}",
         "command \"a\": field \"env.set.A\": must be a string without NUL"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"cwd\": \"tmp\"}}}",
         "command \"a\": field \"cwd\": \"tmp\" is not an absolute path"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"cwd\": \"/nonexistent/dir\"}}}",
         "command \"a\": field \"cwd\": \"/nonexistent/dir\" does not exist"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"cwd\": \"/bin/echo\"}}}",
         "command \"a\": field \"cwd\": \"/bin/echo\" is not a directory"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"timeout\": \"soon\"}}}",
         "command \"a\": field \"timeout\": must be a duration such as \"30s\", \"10m\" or "
         "\"1h\""},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"timeout\": 10}}}",
         "command \"a\": field \"timeout\": must be a duration such as \"30s\", \"10m\" or "
         "\"1h\""},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"timeout\": \"0s\"}}}",
         "command \"a\": field \"timeout\": must be longer than 0"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"kill_grace\": \"11s\"}}}",
         "command \"a\": field \"kill_grace\": 11000 ms is longer than KILL_GRACE (10000 ms), "
         "which bounds it"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"max_output_bytes\": 0}}}",
         "command \"a\": field \"max_output_bytes\": 0 is out of range: allowed 1 to "
         "9223372036854775807"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"max_output_bytes\": -5}}}",
         "command \"a\": field \"max_output_bytes\": must be a whole number of bytes (or a size "
         "such as \"16M\")"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"max_output_bytes\": \"lots\"}}}",
         "command \"a\": field \"max_output_bytes\": \"lots\" is not a size such as 1048576 or "
         "\"16M\""},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"max_line_bytes\": 2000000}}}",
         "command \"a\": field \"max_line_bytes\": 2000000 is out of range: allowed 1 to "
         "1048576"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"max_concurrent\": 0}}}",
         "command \"a\": field \"max_concurrent\": 0 is out of range: allowed 1 to 100000"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"max_concurrent\": 1.5}}}",
         "command \"a\": field \"max_concurrent\": must be a whole number"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"rlimits\": {\"cpu\": 1}}}}",
         "command \"a\": field \"rlimits.cpu\": is not a known field (allowed: cpu_seconds, "
         "address_space_bytes, open_files, file_size_bytes)"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"rlimits\": {\"open_files\": "
         "0}}}}",
         "command \"a\": field \"rlimits.open_files\": 0 is out of range: allowed 1 to "
         "9223372036854775807"},
        {"{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"], \"shell\": true}}}",
         "command \"a\": field \"shell\": is not a known field (allowed: description, argv, "
         "params, env, cwd, timeout, kill_grace, max_output_bytes, max_line_bytes, "
         "max_concurrent, rlimits, restartable)"},
    };
    char noexec[] = "/tmp/ts-test-command-XXXXXX";
    char json[1024], want[1024], err[1024];
    struct ts_commands *cmds;
    const char *at;
    int fd;

    (void)state;
    /* A regular file without execute permission. */
    fd = mkstemp(noexec);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(chmod(noexec, 0644), 0);

    for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
        at = strstr(rows[i].json, "@NOEXEC@");
        if (at != NULL)
            snprintf(json, sizeof(json), "%.*s%s%s", (int)(at - rows[i].json), rows[i].json, noexec,
                     at + strlen("@NOEXEC@"));
        else
            snprintf(json, sizeof(json), "%s", rows[i].json);
        at = strstr(rows[i].message, "@NOEXEC@");
        if (at != NULL)
            snprintf(want, sizeof(want), "COMMANDS_FILE %s: %.*s%s%s", PATH,
                     (int)(at - rows[i].message), rows[i].message, noexec, at + strlen("@NOEXEC@"));
        else
            snprintf(want, sizeof(want), "COMMANDS_FILE %s: %s", PATH, rows[i].message);
        cmds = NULL;
        if (parse_text(&cmds, json, NULL, err, sizeof(err)) != -EINVAL)
            fail_msg("row %zu loaded: %s", i, json);
        assert_null(cmds);
        if (strcmp(err, want) != 0)
            fail_msg("row %zu:\n  got  %s\n  want %s", i, err, want);
    }
    unlink(noexec);
}

static void
test_load_file(void **state)
{
    char path[] = "/tmp/ts-test-commands-XXXXXX";
    char err[512], want[600];
    struct ts_commands *cmds = NULL;
    FILE *f;
    int fd;

    (void)state;
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    fputs(
        "{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"]}, \"b\": {\"argv\": [\"/bin/echo\"]}}}",
        f);
    fclose(f);
    assert_int_equal(ts_commands_load(&cmds, path, NULL, KILL_GRACE_MS, NULL, err, sizeof(err)), 0);
    assert_int_equal(ts_commands_count(cmds), 2);
    assert_string_equal(ts_commands_kind(cmds)->name, "command");
    ts_commands_free(cmds);

    /* Anyone who can write the allow-list can run anything: refused. */
    assert_int_equal(chmod(path, 0666), 0);
    assert_int_equal(ts_commands_load(&cmds, path, NULL, KILL_GRACE_MS, NULL, err, sizeof(err)),
                     -EINVAL);
    snprintf(want, sizeof(want), "COMMANDS_FILE %s: the file is writable by every user", path);
    assert_string_equal(err, want);

    /* Duplicate keys would hide one command behind another. */
    assert_int_equal(chmod(path, 0600), 0);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"]},\n \"a\": {\"argv\": [\"/bin/"
          "true\"]}}}",
          f);
    fclose(f);
    assert_int_equal(ts_commands_load(&cmds, path, NULL, KILL_GRACE_MS, NULL, err, sizeof(err)),
                     -EINVAL);
    snprintf(want, sizeof(want), "COMMANDS_FILE %s: invalid JSON at line 2", path);
    assert_memory_equal(err, want, strlen(want));
    assert_non_null(strstr(err, "duplicate object key"));
    unlink(path);

    assert_int_equal(ts_commands_load(&cmds, path, NULL, KILL_GRACE_MS, NULL, err, sizeof(err)),
                     -EINVAL);
    snprintf(want, sizeof(want), "COMMANDS_FILE %s: unable to open %s: No such file or directory",
             path, path);
    assert_string_equal(err, want);

    /* An empty allow-list is valid: the kind exists and knows nothing. */
    assert_int_equal(parse_text(&cmds, "{\"commands\": {}}", NULL, err, sizeof(err)), 0);
    assert_int_equal(ts_commands_count(cmds), 0);
    ts_commands_free(cmds);
}

/* ---- requests ---- */

static const char commands_json[] =
    "{\"commands\": {"
    " \"greet\": {\"argv\": [\"/bin/echo\", \"hello\", \"{who}\"],"
    "   \"params\": {\"who\": {\"pattern\": \"^[A-Za-z0-9 ;$()._-]{1,64}$\"}},"
    "   \"env\": {\"allow\": [\"LANG\", \"TZ\"], \"set\": {\"GREETING\": \"1\"}},"
    "   \"cwd\": \"/tmp\", \"timeout\": \"10m\", \"max_output_bytes\": 1048576,"
    "   \"max_concurrent\": 4},"
    " \"copy\": {\"argv\": [\"/bin/echo\", \"--from={src}\", \"{src}:{dst}\", \"{{src}}\", "
    "\"{}\", \"{src\", \"{ src }\"],"
    "   \"params\": {\"src\": {\"pattern\": \"^[a-z]+$\"},"
    "              \"dst\": {\"pattern\": \"^-?[a-z]*$\", \"default\": \"out\","
    "                      \"allow_leading_dash\": true}}},"
    " \"open\": {\"argv\": [\"/bin/echo\", \"{v}\"], \"params\": {\"v\": {\"pattern\": "
    "\"^.*$\"}}}"
    "}}";

static void
test_prepare(void **state)
{
    static const struct {
        const char *body;
        int want;
        const char *result; /* argv joined by '|', or the error message */
    } rows[] = {
        {"{\"kind\":\"command\",\"command\":\"greet\",\"params\":{\"who\":\"world\"}}", 0,
         "/bin/echo|hello|world"},
        /* Injection attempts are one element, as written. */
        {"{\"command\":\"greet\",\"params\":{\"who\":\"a; rm -rf .\"}}", 0,
         "/bin/echo|hello|a; rm -rf ."},
        {"{\"command\":\"greet\",\"params\":{\"who\":\"$(id)\"}}", 0, "/bin/echo|hello|$(id)"},
        {"{\"command\":\"open\",\"params\":{\"v\":\"a\\nb\"}}", 0, "/bin/echo|a\nb"},
        {"{\"command\":\"open\",\"params\":{\"v\":\"{v}\"}}", 0, "/bin/echo|{v}"},
        {"{\"command\":\"open\",\"params\":{\"v\":\"\"}}", 0, "/bin/echo|"},
        /* Placeholders inside elements, escapes, and what is not a placeholder. */
        {"{\"command\":\"copy\",\"params\":{\"src\":\"abc\",\"dst\":\"xyz\"}}", 0,
         "/bin/echo|--from=abc|abc:xyz|{src}|{}|{src|{ src }"},
        {"{\"command\":\"copy\",\"params\":{\"src\":\"abc\"}}", 0,
         "/bin/echo|--from=abc|abc:out|{src}|{}|{src|{ src }"},
        {"{\"command\":\"copy\",\"params\":{\"src\":\"abc\",\"dst\":\"-x\"}}", 0,
         "/bin/echo|--from=abc|abc:-x|{src}|{}|{src|{ src }"},
        /* Refusals. */
        {"{\"command\":\"greet\",\"params\":{\"who\":\"-n\"}}", -EINVAL,
         "parameter \"who\" must not start with \"-\""},
        {"{\"command\":\"open\",\"params\":{\"v\":\"--help\"}}", -EINVAL,
         "parameter \"v\" must not start with \"-\""},
        {"{\"command\":\"greet\",\"params\":{\"who\":\"a/b\"}}", -EINVAL,
         "parameter \"who\" does not match the pattern ^[A-Za-z0-9 ;$()._-]{1,64}$"},
        {"{\"command\":\"greet\",\"params\":{\"who\":\"a\\nb\"}}", -EINVAL,
         "parameter \"who\" does not match the pattern ^[A-Za-z0-9 ;$()._-]{1,64}$"},
        {"{\"command\":\"greet\",\"params\":{\"who\":\"\"}}", -EINVAL,
         "parameter \"who\" does not match the pattern ^[A-Za-z0-9 ;$()._-]{1,64}$"},
        {"{\"command\":\"greet\",\"params\":{\"who\":\"a\\u0000b\"}}", -EINVAL,
         "parameter \"who\" must not contain NUL"},
        {"{\"command\":\"greet\",\"params\":{\"who\":5}}", -EINVAL,
         "parameter \"who\" must be a string"},
        {"{\"command\":\"greet\",\"params\":{\"who\":null}}", -EINVAL,
         "parameter \"who\" must be a string"},
        {"{\"command\":\"greet\"}", -EINVAL, "missing parameter \"who\" for command \"greet\""},
        {"{\"command\":\"greet\",\"params\":{}}", -EINVAL,
         "missing parameter \"who\" for command \"greet\""},
        {"{\"command\":\"greet\",\"params\":{\"who\":\"x\",\"how\":\"y\"}}", -EINVAL,
         "unknown parameter \"how\" for command \"greet\" (allowed: who)"},
        {"{\"command\":\"copy\",\"params\":{\"src\":\"a\",\"x\":\"y\"}}", -EINVAL,
         "unknown parameter \"x\" for command \"copy\" (allowed: src, dst)"},
        {"{\"command\":\"greet\",\"params\":[\"x\"]}", -EINVAL, "\"params\" must be an object"},
        {"{\"command\":\"greet\",\"params\":{\"who\":\"x\"},\"argv\":[\"/bin/sh\"]}", -EINVAL,
         "unknown field \"argv\" (allowed: kind, command, params)"},
        {"{\"params\":{}}", -EINVAL, "\"command\" must be a string naming a command"},
        {"{\"command\":7}", -EINVAL, "\"command\" must be a string naming a command"},
        {"{\"command\":\"rm\"}", -ENOENT, "unknown command \"rm\" (allowed: greet, copy, open)"},
        {"[]", -EINVAL, "the request must be a JSON object"},
    };
    struct ts_commands *cmds = NULL;
    struct ts_command_exec ex;
    json_error_t jerr;
    char err[512], joined[512];
    json_t *body;

    (void)state;
    assert_int_equal(parse_text(&cmds, commands_json, NULL, err, sizeof(err)), 0);
    for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
        size_t used = 0;
        int rc;

        body = json_loads(rows[i].body, JSON_ALLOW_NUL, &jerr);
        assert_non_null(body);
        rc = ts_command_prepare(cmds, body, &ex, err, sizeof(err));
        json_decref(body);
        if (rc != rows[i].want)
            fail_msg("row %zu: %d (%s), want %d", i, rc, err, rows[i].want);
        if (rc != 0) {
            assert_string_equal(err, rows[i].result);
            assert_null(ex.argv);
            continue;
        }
        joined[0] = '\0';
        for (size_t a = 0; a < ex.argc; a++)
            used += (size_t)snprintf(joined + used, sizeof(joined) - used, "%s%s", a > 0 ? "|" : "",
                                     ex.argv[a]);
        assert_null(ex.argv[ex.argc]);
        if (strcmp(joined, rows[i].result) != 0)
            fail_msg("row %zu:\n  got  %s\n  want %s", i, joined, rows[i].result);
        ts_command_exec_dispose(&ex);
    }
    ts_commands_free(cmds);
}

static void
test_environment(void **state)
{
    char *envp[] = {"PATH=/usr/bin", "LANG=C.UTF-8", "SECRET=hunter2", "LANGUAGE=de", NULL};
    struct ts_commands *cmds = NULL;
    struct ts_command_exec ex;
    json_t *body;
    char err[256];

    (void)state;
    /* LANG is allowed and set; TZ is allowed but absent; GREETING is set;
     * SECRET, PATH and LANGUAGE (LANG is a prefix of it) stay out. */
    assert_int_equal(parse_text(&cmds, commands_json, envp, err, sizeof(err)), 0);
    body = json_pack("{s:s, s:{s:s}}", "command", "greet", "params", "who", "x");
    assert_int_equal(ts_command_prepare(cmds, body, &ex, err, sizeof(err)), 0);
    assert_string_equal(ex.envp[0], "LANG=C.UTF-8");
    assert_string_equal(ex.envp[1], "GREETING=1");
    assert_null(ex.envp[2]);
    ts_command_exec_dispose(&ex);
    json_decref(body);

    /* No env at all: an empty environment. */
    body = json_pack("{s:s, s:{s:s}}", "command", "open", "params", "v", "x");
    assert_int_equal(ts_command_prepare(cmds, body, &ex, err, sizeof(err)), 0);
    assert_null(ex.envp[0]);
    ts_command_exec_dispose(&ex);
    json_decref(body);
    ts_commands_free(cmds);
}

/* ---- output ---- */

#define UTF8_ROW(in, out)                                                                          \
    {                                                                                              \
        in, sizeof(in) - 1, out, sizeof(out) - 1                                                   \
    }

static void
test_utf8_repair(void **state)
{
    static const struct {
        const char *in;
        size_t len;
        const char *out;
        size_t outlen;
    } rows[] = {
        UTF8_ROW("plain", "plain"),
        UTF8_ROW("caf\xc3\xa9", "caf\xc3\xa9"),
        UTF8_ROW("\xe2\x82\xac", "\xe2\x82\xac"),
        UTF8_ROW("\xf0\x9f\x98\x80", "\xf0\x9f\x98\x80"),
        UTF8_ROW("\xf4\x8f\xbf\xbf", "\xf4\x8f\xbf\xbf"), /* U+10FFFF */
        /* Never valid: */
        UTF8_ROW("a\xff"
                 "b",
                 "a\xef\xbf\xbd"
                 "b"),
        /* Overlong '/', in two and three bytes: */
        UTF8_ROW("\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"),
        UTF8_ROW("\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
        /* A UTF-16 surrogate; past U+10FFFF: */
        UTF8_ROW("\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
        UTF8_ROW("\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"),
        /* Cut short; a lone continuation byte: */
        UTF8_ROW("\xe2\x82", "\xef\xbf\xbd\xef\xbf\xbd"),
        UTF8_ROW("\x80", "\xef\xbf\xbd"),
        /* NUL is valid UTF-8 (JSON carries it as \u0000): */
        UTF8_ROW("a\0b", "a\0b"),
        UTF8_ROW("", ""),
    };
    char out[64];
    size_t n;

    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
        n = ts_utf8_repair(rows[i].in, rows[i].len, out);
        if (n != rows[i].outlen || memcmp(out, rows[i].out, n) != 0)
            fail_msg("row %zu: %zu bytes, want %zu", i, n, rows[i].outlen);
    }
}

/* ---- real runs ---- */

struct fixture {
    struct ts_metrics *metrics;
    struct ts_task_service *svc;
    struct ts_commands *cmds;
};

static int
setup(void **state)
{
    struct ts_task_service_config cfg = {
        .workers = 2,
        .max_queued = 8,
        .retention_ns = 60 * TS_NS_PER_S,
        .log_events = 64,
        .log_bytes = 1 << 20,
    };
    struct fixture *fx = calloc(1, sizeof(*fx));
    char err[512];

    assert_non_null(fx);
    assert_int_equal(
        parse_text(
            &fx->cmds,
            "{\"commands\": {"
            " \"echo\": {\"argv\": [\"/bin/echo\", \"{text}\"],"
            "   \"params\": {\"text\": {\"pattern\": \"^[a-z ]*$\"}}},"
            " \"sleep\": {\"argv\": [\"/bin/sh\", \"-c\", \"echo ready; exec /bin/sleep 60\"],"
            "   \"kill_grace\": \"5s\"}"
            "}}",
            NULL, err, sizeof(err)),
        0);
    assert_int_equal(ts_metrics_new(&fx->metrics), 0);
    assert_int_equal(
        ts_task_service_new(&fx->svc, &cfg, ts_drain_noop(), ts_clock_real(), fx->metrics, NULL),
        0);
    assert_int_equal(ts_task_service_register(fx->svc, ts_commands_kind(fx->cmds)), 0);
    assert_int_equal(ts_task_service_start(fx->svc), 0);
    *state = fx;
    return 0;
}

static int
teardown(void **state)
{
    struct fixture *fx = *state;

    ts_task_service_free(fx->svc);
    ts_commands_free(fx->cmds);
    ts_metrics_free(fx->metrics);
    free(fx);
    return 0;
}

static struct ts_task *
submit(struct fixture *fx, json_t *body)
{
    struct ts_task *t = NULL;
    char err[256];

    if (ts_task_submit(fx->svc, body, NULL, &t, err, sizeof(err)) != 0)
        fail_msg("submit: %s", err);
    json_decref(body);
    return t;
}

static void
test_run_echo(void **state)
{
    struct fixture *fx = *state;
    struct ts_task *t;
    char name[65];
    json_t *data;

    t = submit(fx, json_pack("{s:s, s:s, s:{s:s}}", "kind", "command", "command", "echo", "params",
                             "text", "hello there"));
    assert_int_equal(ts_task_service_wait_idle(fx->svc, ts_monotonic_ns() + 10 * TS_NS_PER_S), 0);
    assert_int_equal(last_id(t), 2);
    data = event(t, 1, name, sizeof(name));
    assert_string_equal(name, "output");
    assert_string_equal(json_string_value(json_object_get(data, "stream")), "stdout");
    assert_string_equal(json_string_value(json_object_get(data, "line")), "hello there");
    assert_null(json_object_get(data, "truncated"));
    json_decref(data);
    data = event(t, 2, name, sizeof(name));
    assert_string_equal(name, "end");
    assert_string_equal(json_string_value(json_object_get(data, "status")), "succeeded");
    assert_int_equal(json_integer_value(json_object_get(data, "exit_code")), 0);
    json_decref(data);
    ts_task_unref(t);
}

static void
test_run_cancelled(void **state)
{
    struct fixture *fx = *state;
    struct timespec step = {0, 1000 * 1000};
    struct ts_task *t;
    char name[65];
    json_t *data;

    t = submit(fx, json_pack("{s:s, s:s}", "kind", "command", "command", "sleep"));
    /* "ready" is out: the shell has become sleep, or is about to. */
    for (int i = 0; i < 10000 && last_id(t) == 0; i++)
        nanosleep(&step, NULL);
    assert_int_equal(last_id(t), 1);
    assert_int_equal(ts_task_cancel(fx->svc, t), 0);
    assert_int_equal(ts_task_service_wait_idle(fx->svc, ts_monotonic_ns() + 10 * TS_NS_PER_S), 0);
    assert_int_equal(last_id(t), 3);
    data = event(t, 2, name, sizeof(name));
    assert_string_equal(name, "stopped");
    assert_string_equal(json_string_value(json_object_get(data, "cause")), "cancel");
    /* sleep dies of the SIGTERM at once, well within the grace. */
    assert_string_equal(json_string_value(json_object_get(data, "how")), "terminated");
    assert_int_equal(json_integer_value(json_object_get(data, "grace_ms")), 5000);
    json_decref(data);
    data = event(t, 3, name, sizeof(name));
    assert_string_equal(name, "end");
    assert_string_equal(json_string_value(json_object_get(data, "status")), "cancelled");
    assert_string_equal(json_string_value(json_object_get(data, "reason")), "client");
    assert_int_equal(json_integer_value(json_object_get(data, "signal")), 15);
    assert_int_equal(json_integer_value(json_object_get(data, "exit_code")), 143);
    json_decref(data);
    ts_task_unref(t);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_prepare),
        cmocka_unit_test(test_environment),
        cmocka_unit_test(test_utf8_repair),
        cmocka_unit_test_setup_teardown(test_run_echo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_cancelled, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
