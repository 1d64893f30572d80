/*
 * Task request bodies as POST /v1/tasks reads them (json_loadb with
 * JSON_REJECT_DUPLICATES, src/api.c) through the validation of both built-in
 * kinds: the ticker's validate() and the command kind's validate() and
 * ts_command_prepare() against a fixed allow-list (the shape of
 * examples/commands.json, with patterns, defaults and an env allow-list).
 * Whatever the body, validation answers 0, -EINVAL or -ENOENT with a
 * sentence, never crashes, and a prepared command has its {param}s replaced.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "command.h"
#include "task.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char allow_list[] =
    "{\"commands\": {"
    " \"greet\": {\"argv\": [\"/bin/echo\", \"hello\", \"{who}\", \"x{who}y{n}\"],"
    "   \"params\": {\"who\": {\"pattern\": \"^[A-Za-z0-9 ;$()._-]{1,64}$\", \"default\": "
    "\"world\"},"
    "              \"n\": {\"pattern\": \"^[0-9]{1,3}$\"}},"
    "   \"env\": {\"allow\": [\"LANG\"], \"set\": {\"GREETING\": \"1\"}}, \"cwd\": \"/tmp\","
    "   \"timeout\": \"10s\", \"max_output_bytes\": 4096, \"max_concurrent\": 4},"
    " \"info\": {\"argv\": [\"/bin/uname\", \"-srm\"], \"timeout\": \"10s\"}"
    "}}";

static void
check_answer(int rc, const char *err)
{
    if (rc != 0 && rc != -EINVAL && rc != -ENOENT)
        abort();
    if (rc != 0 && err[0] == '\0')
        abort(); /* every refusal names what is wrong */
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *envp[] = {"LANG=C.UTF-8", "PATH=/usr/bin:/bin", NULL};
    const struct ts_task_kind *kind;
    struct ts_command_exec ex;
    struct ts_commands *cmds;
    json_error_t jerr;
    json_t *list, *body;
    char err[256];
    int rc;

    body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL)
        return 0;

    kind = ts_ticker_kind();
    err[0] = '\0';
    check_answer(kind->validate(kind->arg, body, err, sizeof(err)), err);

    list = json_loads(allow_list, 0, &jerr);
    if (list == NULL)
        abort();
    if (ts_commands_parse(&cmds, list, "fuzz.json", envp, 10000, NULL, err, sizeof(err)) != 0)
        abort();
    kind = ts_commands_kind(cmds);
    err[0] = '\0';
    check_answer(kind->validate(kind->arg, body, err, sizeof(err)), err);

    err[0] = '\0';
    rc = ts_command_prepare(cmds, body, &ex, err, sizeof(err));
    check_answer(rc, err);
    if (rc == 0) {
        if (ex.argc == 0 || ex.argv[ex.argc] != NULL || ex.argv[0] == NULL)
            abort();
        for (size_t i = 0; i < ex.argc; i++) {
            if (strstr(ex.argv[i], "{who}") != NULL || strstr(ex.argv[i], "{n}") != NULL)
                abort();
        }
        ts_command_exec_dispose(&ex);
    }
    ts_commands_free(cmds);
    json_decref(list);
    json_decref(body);
    return 0;
}
