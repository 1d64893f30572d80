/*
 * A main() for the fuzz targets when libFuzzer is not linked (the gcc build
 * and the sanitizer builds of `make test`): each argument is a file or a
 * directory of files, and every file is handed once to
 * LLVMFuzzerTestOneInput(). This turns each corpus into a regression test
 * that any compiler can build; finding new inputs is libFuzzer's job
 * (cmake -DFUZZ=ON, make fuzz).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
run_file(const char *path)
{
    struct stat st;
    uint8_t *buf;
    size_t got = 0;
    ssize_t n;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    /* One spare byte so that an empty file still gets a valid pointer. */
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        close(fd);
        return -1;
    }
    while (got < (size_t)st.st_size && (n = read(fd, buf + got, (size_t)st.st_size - got)) > 0)
        got += (size_t)n;
    close(fd);
    LLVMFuzzerTestOneInput(buf, got);
    free(buf);
    return 0;
}

static int
run_path(const char *path, unsigned *count)
{
    char child[4096];
    struct dirent *de;
    struct stat st;
    DIR *dir;
    int rc = 0;

    if (stat(path, &st) != 0) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        (*count)++;
        return run_file(path);
    }
    dir = opendir(path);
    if (dir == NULL)
        return -1;
    while ((de = readdir(dir)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if ((size_t)snprintf(child, sizeof(child), "%s/%s", path, de->d_name) >= sizeof(child))
            continue;
        if (run_path(child, count) != 0)
            rc = -1;
    }
    closedir(dir);
    return rc;
}

int
main(int argc, char **argv)
{
    unsigned count = 0;
    int rc = 0;

    for (int i = 1; i < argc; i++) {
        if (argv[i][0] == '-')
            continue; /* libFuzzer flags, e.g. -runs=0: nothing to do here */
        if (run_path(argv[i], &count) != 0)
            rc = 1;
    }
    printf("%s: %u inputs run\n", argv[0], count);
    return rc;
}
