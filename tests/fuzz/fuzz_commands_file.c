/*
 * COMMANDS_FILE loading: the input is the file's bytes, written to a memfd
 * and loaded through its /proc/self/fd path with ts_commands_load(), as the
 * daemon does at start-up. A file is either accepted (and then its kind
 * exists and the count is what the object declares) or refused with one
 * sentence naming the file; nothing in between crashes or leaks.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "command.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *envp[] = {"LANG=C.UTF-8", "HOME=/root", "PATH=/usr/bin:/bin", "EMPTY=", NULL};
    struct ts_commands *cmds = NULL;
    char path[64], err[512];
    size_t off = 0;
    ssize_t n;
    int fd, rc;

    fd = memfd_create("commands.json", MFD_CLOEXEC);
    /* A memfd is created 0777; the loader refuses a world-writable file. */
    if (fd < 0 || fchmod(fd, 0600) != 0)
        abort();
    while (off < size) {
        n = write(fd, data + off, size - off);
        if (n <= 0)
            abort();
        off += (size_t)n;
    }
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    err[0] = '\0';
    rc = ts_commands_load(&cmds, path, envp, 10000, NULL, err, sizeof(err));
    if (rc == 0) {
        if (cmds == NULL || ts_commands_kind(cmds) == NULL)
            abort();
        ts_commands_free(cmds);
    } else if (rc == -EINVAL) {
        if (strstr(err, path) == NULL)
            abort(); /* the sentence names the file */
    } else if (rc != -ENOMEM) {
        abort();
    }
    close(fd);
    return 0;
}
