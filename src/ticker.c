/*
 * The "ticker" task kind: `count` "tick" events, `interval_ms` apart, each
 * optionally padded with `payload_bytes` of 'x'. It does nothing else, which
 * makes it the load for demos, tests and benchmarks: every tick carries the
 * wall time it was sent at (sent_us), so a client can measure the delivery
 * latency of the whole path.
 *
 * The parameters are checked against one table, in validate() before the
 * task is accepted and again in run() to read them. run() stops at the first
 * tick after a cancellation and never sleeps through one. It is resumable:
 * its checkpoint is the last tick it emitted.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "task.h"
#include "util.h"

struct ticker_params {
    json_int_t count;
    json_int_t interval_ms;
    json_int_t payload_bytes;
};

static const struct ticker_field {
    const char *name;
    json_int_t min, max, def;
    size_t offset;
} fields[] = {
    {"count", 1, 1000000, 10, offsetof(struct ticker_params, count)},
    {"interval_ms", 0, 3600000, 1000, offsetof(struct ticker_params, interval_ms)},
    {"payload_bytes", 0, 1048576, 0, offsetof(struct ticker_params, payload_bytes)},
};

static json_int_t *
field_ptr(struct ticker_params *p, const struct ticker_field *f)
{
    return (json_int_t *)((char *)p + f->offset);
}

static const struct ticker_field *
find_field(const char *name)
{
    for (size_t i = 0; i < TS_ARRAY_SIZE(fields); i++) {
        if (strcmp(fields[i].name, name) == 0)
            return &fields[i];
    }
    return NULL;
}

/* Fill `p` from the request body (defaults for what is absent). -EINVAL with
 * a sentence in `err` for an unknown key or a value out of range. */
static int
parse_params(const json_t *params, struct ticker_params *p, char *err, size_t errlen)
{
    const struct ticker_field *f;
    const char *key;
    json_t *value;

    for (size_t i = 0; i < TS_ARRAY_SIZE(fields); i++)
        *field_ptr(p, &fields[i]) = fields[i].def;
    if (!json_is_object(params)) {
        snprintf(err, errlen, "the parameters must be a JSON object");
        return -EINVAL;
    }
    json_object_foreach((json_t *)params, key, value) {
        if (strcmp(key, "kind") == 0)
            continue;
        f = find_field(key);
        if (f == NULL) {
            snprintf(err, errlen,
                     "unknown parameter \"%.64s\" (allowed: count, interval_ms, payload_bytes)",
                     key);
            return -EINVAL;
        }
        if (!json_is_integer(value) || json_integer_value(value) < f->min ||
            json_integer_value(value) > f->max) {
            snprintf(err, errlen, "\"%s\" must be an integer from %lld to %lld", f->name,
                     (long long)f->min, (long long)f->max);
            return -EINVAL;
        }
        *field_ptr(p, f) = json_integer_value(value);
    }
    return 0;
}

static int
ticker_validate(void *arg, const json_t *params, char *err, size_t errlen)
{
    struct ticker_params p;

    (void)arg;
    return parse_params(params, &p, err, errlen);
}

static json_int_t
realtime_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (json_int_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
ticker_run(void *arg, struct ts_task_ctx *ctx, struct ts_task_result *result)
{
    const json_t *checkpoint;
    int64_t start_ms;
    json_int_t first;
    struct ticker_params p;
    json_t *payload = NULL;
    json_t *data;
    char err[128];
    char *pad;
    int rc;

    (void)arg;
    if (parse_params(ts_task_params(ctx), &p, err, sizeof(err)) != 0) {
        result->status = TS_TASK_FAILED;
        result->reason = "invalid parameters";
        return;
    }
    if (p.payload_bytes > 0) {
        /* Built once and shared by every tick (jansson values are
         * reference counted). */
        pad = malloc((size_t)p.payload_bytes);
        if (pad != NULL) {
            memset(pad, 'x', (size_t)p.payload_bytes);
            payload = json_stringn_nocheck(pad, (size_t)p.payload_bytes);
            free(pad);
        }
        if (payload == NULL) {
            result->status = TS_TASK_FAILED;
            result->reason = "out of memory";
            return;
        }
    }

    /* A later attempt (cluster mode) goes on after the last tick stored. */
    first = 1;
    checkpoint = ts_task_checkpoint_get(ctx);
    if (json_is_integer(json_object_get(checkpoint, "n")))
        first = json_integer_value(json_object_get(checkpoint, "n")) + 1;
    start_ms = ts_monotonic_ns() / TS_NS_PER_MS;
    for (json_int_t n = first; n <= p.count && !ts_task_cancelled(ctx); n++) {
        /* Stored with the tick itself: a resumed ticker never repeats one. */
        ts_task_checkpoint(ctx, json_pack("{s:I}", "n", n));
        data = json_pack("{s:I, s:I, s:I}", "n", n, "count", p.count, "sent_us", realtime_us());
        if (data != NULL && payload != NULL && json_object_set(data, "payload", payload) != 0) {
            json_decref(data);
            data = NULL;
        }
        rc = ts_task_emit(ctx, "tick", data);
        if (rc == -ECANCELED)
            break;
        if (rc != 0) {
            result->status = TS_TASK_FAILED;
            result->reason = "could not emit an event";
            break;
        }
        /* Tick n+1 is due at start + n * interval: sleeping only what is
         * left keeps the rate whatever emitting cost. */
        if (n < p.count) {
            int64_t left = start_ms + (n - first + 1) * p.interval_ms -
                           (int64_t)(ts_monotonic_ns() / TS_NS_PER_MS);

            if (left > 0 && ts_task_sleep_ms(ctx, left))
                break;
        }
    }
    json_decref(payload);
    /* The service reports a cancelled task as cancelled anyway; saying so
     * keeps the result true for whoever reads it first. */
    if (ts_task_cancelled(ctx))
        result->status = TS_TASK_CANCELLED;
}

static bool
ticker_resumable(void *arg, const json_t *params)
{
    (void)arg;
    (void)params;
    return true;
}

static const struct ts_task_kind ticker_kind = {
    .name = "ticker",
    .validate = ticker_validate,
    .run = ticker_run,
    .arg = NULL,
    .resumable = ticker_resumable,
};

const struct ts_task_kind *
ts_ticker_kind(void)
{
    return &ticker_kind;
}
