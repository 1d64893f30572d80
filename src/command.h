/*
 * Command tasks: the operator's allow-list of programs (COMMANDS_FILE), the
 * "command" task kind that runs them, and the pieces of it that tests reach
 * directly (argv/envp preparation, the UTF-8 repair of output lines).
 *
 * The allow-list is loaded and validated at start-up and again on
 * ts_commands_reload(); each load is an immutable generation, held by every
 * validate() and run() that began under it. docs/commands.md is the
 * operator's reference.
 */
#ifndef TS_COMMAND_H
#define TS_COMMAND_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "log.h"
#include "taskstream.h"

struct ts_commands;
struct command_list;

/*
 * Load the allow-list from the JSON file at `path`. `envp` (NULL-terminated
 * "NAME=value" strings, may be NULL) is the environment the "env.allow" lists
 * take their values from, read once here. `kill_grace_ms` is KILL_GRACE: the
 * default grace of each command and the most a command may ask for. `log`
 * (borrowed, may be NULL) is where the kind logs spawns and failures.
 * Returns 0, -EINVAL with one sentence in `err` naming the file, the command
 * and the field (`COMMANDS_FILE /etc/x.json: command "greet": field
 * "argv[0]": "/bin/nope" does not exist`), or -ENOMEM.
 */
int ts_commands_load(struct ts_commands **out, const char *path, char *const envp[],
                     int64_t kill_grace_ms, struct ts_log *log, char *err, size_t errlen);

/* The same from an already parsed document; `path` only names it in errors.
 * `root` is borrowed. */
int ts_commands_parse(struct ts_commands **out, const json_t *root, const char *path,
                      char *const envp[], int64_t kill_grace_ms, struct ts_log *log, char *err,
                      size_t errlen);

/*
 * Read the file again (the `path` given at load) and, only if all of it is
 * valid, make it the allow-list for tasks that start from now on; running
 * tasks keep the definition they started with. Returns 0, or -EINVAL /
 * -ENOMEM with the sentence in `err`, the allow-list unchanged. One thread at
 * a time (the host's); any thread may run tasks meanwhile.
 */
int ts_commands_reload(struct ts_commands *cmds, char *err, size_t errlen);

/* Free the allow-list. Only once no task of its kind can run any more (after
 * the task service is freed). NULL is fine. */
void ts_commands_free(struct ts_commands *cmds);

/* How many commands the current allow-list declares. Any thread. */
size_t ts_commands_count(struct ts_commands *cmds);

/* The current allow-list as GET /v1/commands shows it: an array of {name,
 * description, params: {name: {pattern, default, description,
 * allow_leading_dash}}, timeout_ms, max_concurrent}; never argv, env or cwd.
 * New reference, NULL without memory. Any thread. */
json_t *ts_commands_to_json(struct ts_commands *cmds);

/* The "command" kind, to register with the task service; it lives as long as
 * `cmds`. */
const struct ts_task_kind *ts_commands_kind(struct ts_commands *cmds);

/*
 * What one run executes, prepared from a request body {"kind": "command",
 * "command": NAME, "params": {...}} before anything is forked: the
 * executable, argv with every {param} replaced by its validated value, and
 * the complete environment. The struct owns both arrays and the argv
 * strings; the envp strings are the allow-list generation's, which the
 * struct holds until it is disposed.
 */
struct ts_command_exec {
    const char *command; /* the command's name; borrowed from the allow-list */
    char **argv;         /* NULL-terminated; argv[0] is the executable */
    char **envp;         /* NULL-terminated "NAME=value" */
    size_t argc;
    struct command_list *list; /* the generation the strings belong to, held */
};

/* Check the body and build `out`. Returns 0, -ENOENT for an unknown command,
 * -EINVAL for a bad body or parameter (the sentence in `err` names it), or
 * -ENOMEM. On error `out` holds nothing to dispose. Any thread. */
int ts_command_prepare(struct ts_commands *cmds, const json_t *body, struct ts_command_exec *out,
                       char *err, size_t errlen);

void ts_command_exec_dispose(struct ts_command_exec *ex);

/*
 * Copy `len` bytes of `in` to `out`, replacing every byte that does not
 * belong to a well-formed UTF-8 sequence (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF) with U+FFFD. `out` must have room for
 * 3 * len bytes. Returns the length written.
 */
size_t ts_utf8_repair(const char *in, size_t len, char *out);

#endif
