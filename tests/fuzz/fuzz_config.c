/*
 * Configuration values: durations, sizes, unsigned numbers and listen
 * addresses through their parsers, then the whole input as a synthetic
 * environment and command line through ts_config_parse().
 *
 * Input: lines. The first line is one value for each of the small parsers
 * (with invariants checked: a duration is never negative, a size is what its
 * suffix says). Every following line "NAME=value" goes to envp, "--flag..."
 * to argv. Settings that name files (*_FILE) are dropped: the fuzzer must not
 * read whatever path it invents.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "taskstream.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_LINES 64

static void
small_parsers(const char *s)
{
    char host[64];
    uint16_t port;
    uint64_t u;
    int64_t ms;

    if (ts_parse_duration_ms(s, &ms) == 0 && ms < 0)
        abort();
    if (ts_parse_size(s, &u) == 0 && s[0] == '\0')
        abort();
    if (ts_parse_uint(s, 1, 1000, &u) == 0 && (u < 1 || u > 1000))
        abort();
    if (ts_config_address_split(s, host, sizeof(host), &port) == 0 &&
        strnlen(host, sizeof(host)) == sizeof(host))
        abort();
    ts_config_address_split(s, NULL, 0, &port);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *envp[MAX_LINES + 1], *argv[MAX_LINES + 2];
    int nenv = 0, argc = 1;
    struct ts_config cfg;
    char err[512];
    char *text, *line, *next;
    int rc;

    text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    argv[0] = "taskstreamd";

    line = text;
    next = strchr(line, '\n');
    if (next != NULL)
        *next++ = '\0';
    small_parsers(line);
    for (line = next; line != NULL && nenv < MAX_LINES && argc < MAX_LINES + 1; line = next) {
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        if (strstr(line, "FILE") != NULL || strstr(line, "file") != NULL)
            continue;
        if (line[0] == '-')
            argv[argc++] = line;
        else
            envp[nenv++] = line;
    }
    envp[nenv] = NULL;
    argv[argc] = NULL;

    if (ts_config_init(&cfg) != 0)
        abort();
    err[0] = '\0';
    rc = ts_config_parse(&cfg, envp, argc, argv, err, sizeof(err));
    if (rc < 0 && (rc != -EINVAL || err[0] == '\0'))
        abort();
    if (rc == TS_CONFIG_OK && (cfg.listen == NULL || cfg.graceful_shutdown_timeout_ms < 0))
        abort();
    ts_config_dispose(&cfg);
    free(text);
    return 0;
}
