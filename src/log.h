/*
 * Structured logging: one event per line, a message and typed fields.
 *
 *     ts_log(log, TS_LOG_INFO, "listening",
 *            TS_F_STR("listener", "public"), TS_F_INT("port", 8080), TS_F_END);
 *
 * JSON:
 * {"ts":"2026-11-24T16:24:53.123Z","level":"info","msg":"listening","listener":"public","port":8080}
 * text:  2026-11-24T16:24:53.123Z INFO listening listener=public port=8080
 *
 * Each line is written with one write(2) (lines are capped at 8 KiB, longer
 * values are cut), so concurrent threads never interleave. Write errors
 * (EPIPE, ENOSPC) are counted and otherwise ignored: logging never fails the
 * caller. Secrets are never passed to the logger. Any thread.
 */
#ifndef TS_LOG_H
#define TS_LOG_H

#include <stdbool.h>
#include <stdint.h>

#include "taskstream.h"

enum ts_log_ftype { TS_LF_END, TS_LF_STR, TS_LF_INT, TS_LF_UINT, TS_LF_DBL, TS_LF_BOOL };

struct ts_log_field {
    const char *key;
    enum ts_log_ftype type;
    union {
        const char *s; /* NULL is written as null */
        int64_t i;
        uint64_t u;
        double d;
        bool b;
    } v;
};

#define TS_F_STR(k, val) ((struct ts_log_field){.key = (k), .type = TS_LF_STR, .v.s = (val)})
#define TS_F_INT(k, val) ((struct ts_log_field){.key = (k), .type = TS_LF_INT, .v.i = (val)})
#define TS_F_UINT(k, val) ((struct ts_log_field){.key = (k), .type = TS_LF_UINT, .v.u = (val)})
#define TS_F_DBL(k, val) ((struct ts_log_field){.key = (k), .type = TS_LF_DBL, .v.d = (val)})
#define TS_F_BOOL(k, val) ((struct ts_log_field){.key = (k), .type = TS_LF_BOOL, .v.b = (val)})
#define TS_F_END ((struct ts_log_field){.key = NULL, .type = TS_LF_END})

/* Log `msg` with the fields that follow, ended by TS_F_END. `log` may be NULL
 * (nothing is written). */
void ts_log(struct ts_log *log, enum ts_log_level level, const char *msg, ...);

bool ts_log_enabled(const struct ts_log *log, enum ts_log_level level);

/* Lines that could not be written (EPIPE, ENOSPC, ...). */
uint64_t ts_log_write_errors(const struct ts_log *log);

const char *ts_log_level_name(enum ts_log_level level);

#endif
