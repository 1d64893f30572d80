/*
 * Cluster mode: see cluster.h and docs/cluster.md.
 *
 * Keys, with P the prefix and {id} a task's id as a hash tag so that one
 * task's keys live in one slot (the scripts stay valid on Redis Cluster):
 *
 *   P{id}:meta    hash: kind, body, state, created, started, finished (ms),
 *                 reason, exit_code, signal, top (last event id), owner,
 *                 attempt (the fencing token), lease (ms, Redis' clock),
 *                 entry (its queue entry), cancel, sub (who submitted it)
 *   P{id}:events  stream, entry id "<event id>-0", field f: the SSE frame
 *                 as the owner encoded it (end: 1 on the last)
 *   P{id}:live    channel: "m<id>\n<frame>", "e<id>\n<frame>" for the end
 *   Ptasks        sorted set of every task by creation (microseconds)
 *   Pqueue        stream of task ids, consumer group "workers"
 *   Pnotify       channel: a task was queued
 *   Pctl:<replica> channel: "cancel <id>" for the tasks a replica runs
 *   Pepoch        a random value set once: a new one means Redis lost its data
 *
 * Every change to a task's meta is one of the scripts below, and every
 * script that changes a running task checks owner and attempt first: a
 * replica that lost its task (its lease lapsed, another took it over) has
 * its appends refused, so a stream never holds two events with one id.
 * Time in scripts is Redis' own (TIME), so replicas' clocks do not matter.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define HASH_NONFATAL_OOM 1
#include <uthash.h>

#include "cluster.h"
#include "redis.h"
#include "util.h"

#define GROUP "workers"
#define KEY_MAX 256
#define JANITOR_PAGES 8    /* XAUTOCLAIM pages per janitor round */
#define JANITOR_COUNT "16" /* entries per page */
#define RUNNING_MAX 1024   /* WORKERS' bound */
#define PROBE_NS (250 * TS_NS_PER_MS)

/* ---- scripts ---- */

static const char append_lua[] =
    "local m = redis.call('HMGET', KEYS[1], 'owner', 'attempt', 'top', 'state')\n"
    "if not m[4] then return -1 end\n"
    "if m[1] ~= ARGV[1] or m[2] ~= ARGV[2] or m[4] ~= 'running' then return 0 end\n"
    "local id, top = tonumber(ARGV[3]), tonumber(m[3])\n"
    "if id <= top then return 1 end\n"
    "if id ~= top + 1 then return redis.error_reply('ERR event ' .. id .. ' after ' .. top) end\n"
    "if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'top', id, 'checkpoint', ARGV[6])\n"
    "else redis.call('HSET', KEYS[1], 'top', id) end\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], id .. '-0', 'f', ARGV[4])\n"
    "redis.call('PUBLISH', KEYS[3], 'm' .. id .. '\\n' .. ARGV[4])\n"
    "return 1\n";

static const char end_lua[] =
    "local m = redis.call('HMGET', KEYS[1], 'owner', 'attempt', 'top', 'state', 'entry')\n"
    "if not m[4] then return {-1, ''} end\n"
    "if m[1] ~= ARGV[1] or m[2] ~= ARGV[2] then return {0, ''} end\n"
    "if m[4] ~= 'running' then return {1, m[5] or ''} end\n"
    "local id = tonumber(ARGV[3])\n"
    "if id ~= tonumber(m[3]) + 1 then\n"
    "  return redis.error_reply('ERR end ' .. id .. ' after ' .. m[3])\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "redis.call('HSET', KEYS[1], 'top', id, 'state', ARGV[6], 'reason', ARGV[7], 'exit_code',\n"
    "  ARGV[8], 'signal', ARGV[9], 'finished', t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], id .. '-0', 'f', ARGV[4], 'end', '1')\n"
    "redis.call('PUBLISH', KEYS[3], 'e' .. id .. '\\n' .. ARGV[4])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[10])\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[10])\n"
    "return {1, m[5] or ''}\n";

static const char claim_lua[] =
    "local m = redis.call('HMGET', KEYS[1], 'state', 'owner', 'attempt', 'lease', 'top',\n"
    "  'body', 'cancel', 'checkpoint', 'from')\n"
    "if not m[1] then return {'gone'} end\n"
    "local t = redis.call('TIME')\n"
    "local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
    "if m[1] == 'running' then\n"
    "  if tonumber(m[4]) > now then return {'held'} end\n"
    "elseif m[1] ~= 'queued' then return {'done'} end\n"
    "local attempt = tonumber(m[3]) + 1\n"
    "redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[1], 'attempt', attempt,\n"
    "  'lease', now + tonumber(ARGV[2]), 'entry', ARGV[3])\n"
    "if m[1] == 'queued' then redis.call('HSET', KEYS[1], 'started', now) end\n"
    "local from = m[2] or ''\n"
    "if from == '' then from = m[9] or '' end\n"
    "return {'claimed', attempt, tonumber(m[5]), m[6], m[1], from, m[7] or '0', m[8] or ''}\n";

static const char renew_lua[] =
    "local m = redis.call('HMGET', KEYS[1], 'owner', 'attempt', 'state', 'cancel')\n"
    "if not m[3] then return -1 end\n"
    "if m[1] ~= ARGV[1] or m[2] ~= ARGV[2] or m[3] ~= 'running' then return 0 end\n"
    "local t = redis.call('TIME')\n"
    "redis.call('HSET', KEYS[1], 'lease', t[1] * 1000 + math.floor(t[2] / 1000) + ARGV[3])\n"
    "if m[4] == '1' then return 2 end\n"
    "return 1\n";

static const char release_lua[] =
    "local m = redis.call('HMGET', KEYS[1], 'owner', 'attempt', 'state')\n"
    "if m[1] ~= ARGV[1] or m[2] ~= ARGV[2] or m[3] ~= 'running' then return 0 end\n"
    "redis.call('HSET', KEYS[1], 'state', 'queued', 'owner', '', 'lease', 0, 'from', ARGV[1])\n"
    "if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'checkpoint', ARGV[3]) end\n"
    "return 1\n";

static const char cancel_lua[] =
    "local m = redis.call('HMGET', KEYS[1], 'state', 'owner', 'top')\n"
    "if not m[1] then return {'gone'} end\n"
    "if m[1] == 'running' then\n"
    "  redis.call('HSET', KEYS[1], 'cancel', 1)\n"
    "  return {'running', m[2]}\n"
    "end\n"
    "if m[1] ~= 'queued' then return {'done'} end\n"
    "local id = tonumber(m[3]) + 1\n"
    "local frame = 'id: ' .. id .. '\\nevent: end\\ndata: ' .. ARGV[1] .. '\\n\\n'\n"
    "local t = redis.call('TIME')\n"
    "redis.call('HSET', KEYS[1], 'top', id, 'state', 'cancelled', 'reason', 'client',\n"
    "  'exit_code', 0, 'signal', 0, 'cancel', 1, 'finished', t[1] * 1000 + math.floor(t[2] / "
    "1000))\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], id .. '-0', 'f', frame, 'end', '1')\n"
    "redis.call('PUBLISH', KEYS[3], 'e' .. id .. '\\n' .. frame)\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[3])\n"
    "return {'cancelled'}\n";

/* Put back a running task that Redis lost (a restart without its data). */
static const char restore_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
    "local t = redis.call('TIME')\n"
    "redis.call('HSET', KEYS[1], 'kind', ARGV[1], 'body', ARGV[2], 'state', 'running',\n"
    "  'owner', ARGV[3], 'attempt', ARGV[4], 'top', ARGV[5], 'entry', ARGV[7],\n"
    "  'lease', t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[6]),\n"
    "  'created', ARGV[8], 'started', ARGV[9])\n"
    "return 1\n";

enum { S_APPEND, S_END, S_CLAIM, S_RENEW, S_RELEASE, S_CANCEL, S_RESTORE, S_COUNT };

/* ---- state ---- */

enum follow_state { F_NEW, F_SUBSCRIBING, F_SYNCED };

/* A task this replica has readers of: one subscription, one backfill. */
struct follow {
    char id[33];
    struct ts_task *task; /* a reference */
    enum follow_state state;
    unsigned readers; /* streams here that ts_cluster_follow() handed it to */
    bool ended;       /* its end went by, or its last reader left: unsubscribe, forget */
    UT_hash_handle hh;
};

struct ts_cluster {
    char prefix[128];
    char replica[128];
    int64_t timeout_ns, lease_ns, retention_ns;
    char maxlen[24];
    struct ts_task_service *tasks;
    struct ts_drain_view drain;
    struct ts_clock clock;
    struct ts_log *log;
    struct ts_redis *redis;
    struct ts_redis_script scripts[S_COUNT];
    struct ts_series *claims, *takeovers;

    pthread_mutex_t mu;
    pthread_cond_t claim_cv;  /* a worker is free, a task was queued, or stopping */
    pthread_cond_t synced_cv; /* a follow is synced */
    /* Guarded by mu: */
    bool stopping, quiesced, wake_claimer;
    char epoch[33];         /* Redis' data as first seen here; claimer thread */
    int64_t lost_data_ns;   /* when Redis was seen to have lost its data; claimer */
    bool restore_pending;   /* the tasks running here are not all back yet; claimer */
    bool epoch_due;         /* look at the epoch at the next wake; mu */
    struct follow *follows; /* uthash by id */
    bool follows_changed;   /* a follow is new or ended: the subscriber has work */

    int efd; /* wakes the subscriber */
    pthread_t claimer, subscriber;
    bool started;
};

/* ---- keys ---- */

static void
task_key(const struct ts_cluster *cl, char out[KEY_MAX], const char *id, const char *what)
{
    snprintf(out, KEY_MAX, "%s{%.32s}:%.8s", cl->prefix, id, what);
}

static void
global_key(const struct ts_cluster *cl, char out[KEY_MAX], const char *what)
{
    snprintf(out, KEY_MAX, "%s%.8s", cl->prefix, what);
}

/* The control channel of a replica. */
static void
ctl_key(const struct ts_cluster *cl, char out[KEY_MAX], const char *replica)
{
    snprintf(out, KEY_MAX, "%sctl:%.100s", cl->prefix, replica);
}

static void
task_keys(const struct ts_cluster *cl, const char *id, char meta[KEY_MAX], char events[KEY_MAX],
          char live[KEY_MAX])
{
    task_key(cl, meta, id, "meta");
    task_key(cl, events, id, "events");
    task_key(cl, live, id, "live");
}

static bool
reply_is(const redisReply *r, int type)
{
    return r != NULL && r->type == type;
}

static bool
str_is(const redisReply *r, const char *s)
{
    return r != NULL && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
           strcmp(r->str, s) == 0;
}

static long long
int_of(const redisReply *r)
{
    if (r == NULL)
        return 0;
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (r->type == REDIS_REPLY_STRING)
        return strtoll(r->str, NULL, 10);
    return 0;
}

static void
log_reply_error(struct ts_cluster *cl, const char *what, const redisReply *r)
{
    ts_log(cl->log, TS_LOG_ERROR, "redis refused a command", TS_F_STR("command", what),
           TS_F_STR("error", reply_is(r, REDIS_REPLY_ERROR) ? r->str : "unexpected reply"),
           TS_F_END);
}

/* A queue entry is done with: acknowledged and deleted, so the queue
 * holds only what is waiting or running. */
static void
ack_entry(struct ts_cluster *cl, struct ts_redis_conn *c, const char *entry)
{
    char queue[KEY_MAX];

    global_key(cl, queue, "queue");
    if (ts_redis_appendf(c, "XACK %s " GROUP " %s", queue, entry) != 0 ||
        ts_redis_appendf(c, "XDEL %s %s", queue, entry) != 0)
        return;
    for (int i = 0; i < 2; i++) {
        redisReply *r;

        if (ts_redis_reply(c, &r) != 0)
            return;
        freeReplyObject(r);
    }
}

/* ---- the store the task service writes through ---- */

static int
store_append(void *arg, struct ts_task *t, const struct ts_event *ev, const char *checkpoint)
{
    struct ts_cluster *cl = arg;
    char meta[KEY_MAX], events[KEY_MAX], live[KEY_MAX], attempt[16], id[24];
    const char *argv[9];
    size_t lens[9];
    struct ts_redis_conn *c;
    redisReply *r;
    int rc;

    task_keys(cl, ts_task_get_id(t), meta, events, live);
    snprintf(attempt, sizeof(attempt), "%u", ts_task_attempt(t));
    snprintf(id, sizeof(id), "%" PRIu64, ev->id);
    argv[0] = meta;
    argv[1] = events;
    argv[2] = live;
    argv[3] = cl->replica;
    argv[4] = attempt;
    argv[5] = id;
    argv[6] = ev->frame;
    argv[7] = cl->maxlen;
    argv[8] = checkpoint != NULL ? checkpoint : "";
    for (int i = 0; i < 9; i++)
        lens[i] = strlen(argv[i]);
    lens[6] = ev->len;
    c = ts_redis_get(cl->redis);
    if (c == NULL)
        return -ENOMEM;
    rc = ts_redis_eval(c, &cl->scripts[S_APPEND], &r, 3, 9, argv, lens);
    ts_redis_put(cl->redis, c);
    if (rc != 0)
        return rc;
    /* -1: Redis lost the task (restarted without its data): like Redis
     * being away, the event waits here until the claimer puts it back. */
    if (reply_is(r, REDIS_REPLY_INTEGER))
        rc = r->integer == 1 ? 0 : r->integer == -1 ? -EIO : -ESTALE;
    else {
        log_reply_error(cl, "append", r);
        rc = -EPROTO;
    }
    freeReplyObject(r);
    return rc;
}

/* The END script for task `id` as (replica, attempt); then its queue entry
 * is acknowledged. */
static int
store_end_as(struct ts_cluster *cl, struct ts_redis_conn *c, const char *task, unsigned attempt,
             const struct ts_event *ev, const char *status, const char *reason, int exit_code,
             int sig)
{
    char meta[KEY_MAX], events[KEY_MAX], live[KEY_MAX];
    char att[16], id[24], code[16], signo[16], retention[24];
    const char *argv[13];
    size_t lens[13];
    redisReply *r;
    int rc;

    task_keys(cl, task, meta, events, live);
    snprintf(att, sizeof(att), "%u", attempt);
    snprintf(id, sizeof(id), "%" PRIu64, ev->id);
    snprintf(code, sizeof(code), "%d", exit_code);
    snprintf(signo, sizeof(signo), "%d", sig);
    /* PEXPIRE 0 would delete at once; a zero retention keeps a second. */
    snprintf(retention, sizeof(retention), "%" PRId64,
             cl->retention_ns / TS_NS_PER_MS > 0 ? cl->retention_ns / TS_NS_PER_MS : 1000);
    argv[0] = meta;
    argv[1] = events;
    argv[2] = live;
    argv[3] = cl->replica;
    argv[4] = att;
    argv[5] = id;
    argv[6] = ev->frame;
    argv[7] = cl->maxlen;
    argv[8] = status;
    argv[9] = reason != NULL ? reason : "";
    argv[10] = code;
    argv[11] = signo;
    argv[12] = retention;
    for (int i = 0; i < 13; i++)
        lens[i] = strlen(argv[i]);
    lens[6] = ev->len;
    rc = ts_redis_eval(c, &cl->scripts[S_END], &r, 3, 13, argv, lens);
    if (rc != 0)
        return rc;
    if (!reply_is(r, REDIS_REPLY_ARRAY) || r->elements != 2) {
        log_reply_error(cl, "end", r);
        freeReplyObject(r);
        return -EPROTO;
    }
    rc = int_of(r->element[0]) == 1 ? 0 : int_of(r->element[0]) == -1 ? -EIO : -ESTALE;
    if (rc == 0 && r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->len > 0)
        ack_entry(cl, c, r->element[1]->str);
    freeReplyObject(r);
    return rc;
}

static int
store_end(void *arg, struct ts_task *t, const struct ts_event *ev, const char *status,
          const char *reason, const struct ts_task_result *res)
{
    struct ts_cluster *cl = arg;
    struct ts_redis_conn *c = ts_redis_get(cl->redis);
    int rc;

    if (c == NULL)
        return -ENOMEM;
    rc = store_end_as(cl, c, ts_task_get_id(t), ts_task_attempt(t), ev, status, reason,
                      res->exit_code, res->signal);
    ts_redis_put(cl->redis, c);
    return rc;
}

static void
store_worker_free(void *arg)
{
    struct ts_cluster *cl = arg;

    pthread_mutex_lock(&cl->mu);
    cl->wake_claimer = true;
    pthread_cond_signal(&cl->claim_cv);
    pthread_mutex_unlock(&cl->mu);
}

/* ---- filling a local log from Redis ---- */

/* Push one stream entry ["<id>-0", [f, frame, (end, 1)]]. */
static int
push_entry(struct ts_cluster *cl, struct ts_task *t, const redisReply *e, bool *ended)
{
    const redisReply *fields;
    const redisReply *frame = NULL;
    struct ts_event *ev;
    bool is_end = false;
    uint64_t id;
    int rc;

    if (!reply_is(e, REDIS_REPLY_ARRAY) || e->elements != 2 ||
        !reply_is(e->element[0], REDIS_REPLY_STRING) || !reply_is(e->element[1], REDIS_REPLY_ARRAY))
        return -EPROTO;
    id = strtoull(e->element[0]->str, NULL, 10);
    fields = e->element[1];
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        if (str_is(fields->element[i], "f"))
            frame = fields->element[i + 1];
        else if (str_is(fields->element[i], "end"))
            is_end = true;
    }
    if (!reply_is(frame, REDIS_REPLY_STRING))
        return -EPROTO;
    ev = ts_event_from_frame(id, frame->str, frame->len);
    if (ev == NULL)
        return -EPROTO;
    if (ts_task_next_id(t) < id)
        ts_task_mirror_restart(t, id); /* trimmed (MAXLEN) or expired: a gap */
    rc = ts_task_mirror_push(cl->tasks, t, ev, is_end);
    if (is_end)
        *ended = true;
    return rc < 0 ? rc : 0;
}

/* XRANGE from the log's next id: the mirror then holds all Redis has. */
static int
backfill(struct ts_cluster *cl, struct ts_redis_conn *c, struct ts_task *t, bool *ended)
{
    char events[KEY_MAX], from[32];
    redisReply *r;
    int rc;

    *ended = false;
    task_key(cl, events, ts_task_get_id(t), "events");
    snprintf(from, sizeof(from), "%" PRIu64 "-0", ts_task_next_id(t));
    rc = ts_redis_call(c, &r, "XRANGE %s %s +", events, from);
    if (rc != 0)
        return rc;
    if (!reply_is(r, REDIS_REPLY_ARRAY)) {
        log_reply_error(cl, "XRANGE", r);
        freeReplyObject(r);
        return -EPROTO;
    }
    for (size_t i = 0; i < r->elements && rc == 0; i++)
        rc = push_entry(cl, t, r->element[i], ended);
    freeReplyObject(r);
    return rc;
}

/* ---- claiming ---- */

/* Back to the queue: a claim this replica cannot run after all. */
static int
release(struct ts_cluster *cl, struct ts_redis_conn *c, const char *task, unsigned attempt,
        const char *entry, const char *checkpoint)
{
    char meta[KEY_MAX], queue[KEY_MAX], notify[KEY_MAX], att[16];
    const char *argv[4] = {meta, cl->replica, att, checkpoint != NULL ? checkpoint : ""};
    redisReply *r;
    int rc;

    task_key(cl, meta, task, "meta");
    global_key(cl, queue, "queue");
    global_key(cl, notify, "notify");
    snprintf(att, sizeof(att), "%u", attempt);
    rc = ts_redis_eval(c, &cl->scripts[S_RELEASE], &r, 1, 4, argv, NULL);
    if (rc != 0)
        return rc;
    rc = int_of(r) == 1 ? 0 : -ESTALE;
    if (rc == 0) {
        redisReply *x;

        if (ts_redis_call(c, &x, "XADD %s * t %s", queue, task) == 0)
            freeReplyObject(x);
        ack_entry(cl, c, entry);
        if (ts_redis_call(c, &x, "PUBLISH %s %s", notify, task) == 0)
            freeReplyObject(x);
    }
    freeReplyObject(r);
    return rc;
}

/* The queue entry a task was claimed with (its meta's "entry"). */
static int
task_entry(struct ts_cluster *cl, struct ts_redis_conn *c, const char *task, char out[64])
{
    char meta[KEY_MAX];
    redisReply *r;
    int rc;

    task_key(cl, meta, task, "meta");
    rc = ts_redis_call(c, &r, "HGET %s entry", meta);
    if (rc != 0)
        return rc;
    rc = reply_is(r, REDIS_REPLY_STRING) && r->len < 64 ? 0 : -ENOENT;
    if (rc == 0)
        memcpy(out, r->str, r->len + 1);
    freeReplyObject(r);
    return rc;
}

/* The store's release(): a drain's end hands a resumable task back. */
static int
store_release(void *arg, struct ts_task *t, const char *checkpoint)
{
    struct ts_cluster *cl = arg;
    struct ts_redis_conn *c = ts_redis_get(cl->redis);
    char entry[64];
    int rc;

    if (c == NULL)
        return -ENOMEM;
    rc = task_entry(cl, c, ts_task_get_id(t), entry);
    if (rc == 0)
        rc = release(cl, c, ts_task_get_id(t), ts_task_attempt(t), entry, checkpoint);
    ts_redis_put(cl->redis, c);
    return rc;
}

/* A task whose owner stopped renewing: no kind resumes yet, so it ends
 * (failed, "lost"; cancelled if a client asked) and no stream waits. */
static void
end_lost(struct ts_cluster *cl, struct ts_redis_conn *c, const char *task, unsigned attempt,
         uint64_t top, const char *from, bool cancel)
{
    struct ts_event *ev;
    char data[96];
    int n;

    n = snprintf(data, sizeof(data), "{\"status\":\"%s\",\"reason\":\"%s\",\"exit_code\":0}",
                 cancel ? "cancelled" : "failed", cancel ? "client" : "lost");
    ev = ts_event_new(top + 1, "end", data, (size_t)n);
    if (ev == NULL)
        return;
    if (store_end_as(cl, c, task, attempt, ev, cancel ? "cancelled" : "failed",
                     cancel ? "client" : "lost", 0, 0) == 0 &&
        !cancel)
        ts_log(cl->log, TS_LOG_WARN, "task lost: its replica stopped renewing and it cannot resume",
               TS_F_STR("task_id", task), TS_F_STR("from_replica", from), TS_F_END);
    ts_event_unref(ev);
}

/* Run a claimed task here: its log first gets what Redis has. A later
 * attempt of a resumable task starts from its checkpoint and says where it
 * came from in a "resumed" event. */
static void
start_here(struct ts_cluster *cl, struct ts_redis_conn *c, const char *task, unsigned attempt,
           const json_t *body, const char *entry, const redisReply *checkpoint, const char *from)
{
    char resumed[256];
    json_t *cp = NULL, *note;
    struct ts_task *t;
    bool created, ended = false;
    char *text = NULL;
    int rc = -ENOMEM;

    t = ts_task_mirror(cl->tasks, task, &created);
    if (reply_is(checkpoint, REDIS_REPLY_STRING) && checkpoint->len > 0)
        cp = json_loadb(checkpoint->str, checkpoint->len, JSON_DECODE_ANY, NULL);
    note = attempt > 1 ? json_pack("{s:I, s:s}", "attempt", (json_int_t)attempt, "from_replica",
                                   from != NULL ? from : "")
                       : NULL;
    if (note != NULL)
        text = json_dumps(note, JSON_COMPACT);
    json_decref(note);
    snprintf(resumed, sizeof(resumed), "%s", text != NULL ? text : "");
    free(text);
    if (t != NULL) {
        rc = backfill(cl, c, t, &ended);
        if (rc == 0)
            rc =
                ts_task_adopt(cl->tasks, t, body, attempt, cp, resumed[0] != '\0' ? resumed : NULL);
    }
    json_decref(cp);
    if (rc == 0) {
        ts_series_inc(cl->claims);
        ts_log(cl->log, TS_LOG_DEBUG, "task claimed", TS_F_STR("task_id", task),
               TS_F_UINT("attempt", attempt), TS_F_END);
    } else if (rc == -ENOENT) {
        struct ts_event *ev;
        char data[] = "{\"status\":\"failed\",\"reason\":\"unknown kind\",\"exit_code\":0}";

        ev = ts_event_new(ts_task_next_id(t), "end", data, sizeof(data) - 1);
        if (ev != NULL)
            store_end_as(cl, c, task, attempt, ev, "failed", "unknown kind", 0, 0);
        ts_event_unref(ev);
    } else {
        release(cl, c, task, attempt, entry, NULL);
    }
    ts_task_unref(t);
}

/* Run the claim script for the queue entry `entry` of `task`. */
static void
claim(struct ts_cluster *cl, struct ts_redis_conn *c, const char *entry, const char *task)
{
    char meta[KEY_MAX], lease[24];
    const char *argv[4] = {meta, cl->replica, lease, entry};
    redisReply *r;
    unsigned attempt;

    if (!ts_is_task_id(task))
        return;
    task_key(cl, meta, task, "meta");
    snprintf(lease, sizeof(lease), "%" PRId64, cl->lease_ns / TS_NS_PER_MS);
    if (ts_redis_eval(c, &cl->scripts[S_CLAIM], &r, 1, 4, argv, NULL) != 0)
        return;
    if (!reply_is(r, REDIS_REPLY_ARRAY) || r->elements < 1) {
        log_reply_error(cl, "claim", r);
    } else if (str_is(r->element[0], "gone") || str_is(r->element[0], "done")) {
        ack_entry(cl, c, entry);
    } else if (str_is(r->element[0], "claimed") && r->elements == 8) {
        const redisReply *text = r->element[3];
        const char *from = reply_is(r->element[5], REDIS_REPLY_STRING) ? r->element[5]->str : "";
        uint64_t top = (uint64_t)int_of(r->element[2]);
        bool was_running = str_is(r->element[4], "running");
        json_t *body = NULL;

        attempt = (unsigned)int_of(r->element[1]);
        if (reply_is(text, REDIS_REPLY_STRING))
            body = json_loadb(text->str, text->len, 0, NULL);
        if (str_is(r->element[6], "1"))
            end_lost(cl, c, task, attempt, top, from, true);
        else if (body == NULL || (was_running && !ts_task_service_resumable(cl->tasks, body)))
            end_lost(cl, c, task, attempt, top, from, false);
        else
            start_here(cl, c, task, attempt, body, entry, r->element[7],
                       was_running || attempt > 1 ? from : NULL);
        if (was_running)
            ts_series_inc(cl->takeovers);
        if (was_running)
            ts_log(cl->log, TS_LOG_INFO, "task taken over", TS_F_STR("task_id", task),
                   TS_F_STR("from_replica", from), TS_F_UINT("attempt", attempt), TS_F_END);
        json_decref(body);
    }
    freeReplyObject(r);
}

/* Claim every entry of an XREADGROUP / XAUTOCLAIM list [[id, [t, task]]]. */
static void
claim_entries(struct ts_cluster *cl, struct ts_redis_conn *c, const redisReply *list)
{
    for (size_t i = 0; reply_is(list, REDIS_REPLY_ARRAY) && i < list->elements; i++) {
        const redisReply *e = list->element[i];

        if (!reply_is(e, REDIS_REPLY_ARRAY) || e->elements != 2 ||
            !reply_is(e->element[0], REDIS_REPLY_STRING))
            continue;
        if (reply_is(e->element[1], REDIS_REPLY_ARRAY) && e->element[1]->elements == 2 &&
            reply_is(e->element[1]->element[1], REDIS_REPLY_STRING))
            claim(cl, c, e->element[0]->str, e->element[1]->element[1]->str);
    }
}

static bool
may_claim(struct ts_cluster *cl)
{
    bool ok;

    pthread_mutex_lock(&cl->mu);
    ok = !cl->stopping && !cl->quiesced;
    pthread_mutex_unlock(&cl->mu);
    return ok && !ts_drain_is_draining(&cl->drain);
}

/* New entries while there is a free worker. */
static void
claim_new(struct ts_cluster *cl, struct ts_redis_conn *c)
{
    char queue[KEY_MAX], count[16];
    unsigned idle;
    redisReply *r;

    global_key(cl, queue, "queue");
    while (may_claim(cl) && (idle = ts_task_service_idle(cl->tasks)) > 0) {
        snprintf(count, sizeof(count), "%u", idle);
        if (ts_redis_call(c, &r, "XREADGROUP GROUP " GROUP " %s COUNT %s STREAMS %s >", cl->replica,
                          count, queue) != 0)
            return;
        if (reply_is(r, REDIS_REPLY_ERROR) && strncmp(r->str, "NOGROUP", 7) == 0) {
            /* Redis lost the group (a restart without persistence). */
            redisReply *g;

            if (ts_redis_call(c, &g, "XGROUP CREATE %s " GROUP " 0 MKSTREAM", queue) == 0)
                freeReplyObject(g);
            freeReplyObject(r);
            return;
        }
        if (!reply_is(r, REDIS_REPLY_ARRAY) || r->elements == 0 ||
            !reply_is(r->element[0], REDIS_REPLY_ARRAY) || r->element[0]->elements != 2 ||
            r->element[0]->element[1]->elements == 0) {
            freeReplyObject(r);
            return;
        }
        claim_entries(cl, c, r->element[0]->element[1]);
        freeReplyObject(r);
    }
}

/* One pipelined round trip renews every lease held here; a task found lost
 * is given up, a cancel that came while its message was missed is done. */
static void
renew(struct ts_cluster *cl, struct ts_redis_conn *c)
{
    struct ts_task *tasks[RUNNING_MAX];
    unsigned attempts[RUNNING_MAX];
    char lease[24];
    size_t n, sent = 0;

    n = ts_task_service_running(cl->tasks, tasks, attempts, RUNNING_MAX);
    snprintf(lease, sizeof(lease), "%" PRId64, cl->lease_ns / TS_NS_PER_MS);
    for (size_t i = 0; i < n; i++) {
        char meta[KEY_MAX], att[16];
        const char *argv[4] = {meta, cl->replica, att, lease};

        task_key(cl, meta, ts_task_get_id(tasks[i]), "meta");
        snprintf(att, sizeof(att), "%u", attempts[i]);
        if (ts_redis_append_eval(c, &cl->scripts[S_RENEW], 1, 4, argv, NULL) != 0)
            break;
        sent++;
    }
    for (size_t i = 0; i < sent; i++) {
        redisReply *r;

        if (ts_redis_reply(c, &r) != 0)
            break;
        if (reply_is(r, REDIS_REPLY_INTEGER) && r->integer == 0)
            ts_task_give_up(tasks[i]);
        else if (reply_is(r, REDIS_REPLY_INTEGER) && r->integer == 2)
            ts_task_cancel(cl->tasks, tasks[i]);
        else if (reply_is(r, REDIS_REPLY_ERROR))
            log_reply_error(cl, "renew", r);
        freeReplyObject(r);
    }
    for (size_t i = 0; i < n; i++)
        ts_task_unref(tasks[i]);
}

/* Entries whose consumer went quiet for a lease: their tasks were claimed
 * and never finished, or never started. The claim script decides. */
static void
janitor(struct ts_cluster *cl, struct ts_redis_conn *c)
{
    char queue[KEY_MAX], idle[24], cursor[64] = "0-0";
    redisReply *r;

    global_key(cl, queue, "queue");
    snprintf(idle, sizeof(idle), "%" PRId64, cl->lease_ns / TS_NS_PER_MS);
    for (int page = 0; page < JANITOR_PAGES && may_claim(cl); page++) {
        if (ts_redis_call(c, &r, "XAUTOCLAIM %s " GROUP " %s %s %s COUNT " JANITOR_COUNT, queue,
                          cl->replica, idle, cursor) != 0)
            return;
        if (!reply_is(r, REDIS_REPLY_ARRAY) || r->elements < 2 ||
            !reply_is(r->element[0], REDIS_REPLY_STRING)) {
            freeReplyObject(r);
            return;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        claim_entries(cl, c, r->element[1]);
        freeReplyObject(r);
        if (strcmp(cursor, "0-0") == 0)
            return;
    }
}

static bool
epoch_due(struct ts_cluster *cl)
{
    bool due;

    pthread_mutex_lock(&cl->mu);
    due = cl->epoch_due;
    cl->epoch_due = false;
    pthread_mutex_unlock(&cl->mu);
    return due;
}

/*
 * Redis' data has an epoch: a random value set once (SET NX) by the first
 * replica to connect. A different or missing value later means Redis lost
 * everything (a restart without persistence, a flush): returns true once
 * for each such loss. Claimer thread.
 */
static bool
check_epoch(struct ts_cluster *cl, struct ts_redis_conn *c)
{
    char key[KEY_MAX], mine[33];
    redisReply *r;
    bool lost = false;

    global_key(cl, key, "epoch");
    if (ts_random_id(mine) != 0 || ts_redis_appendf(c, "SET %s %s NX", key, mine) != 0 ||
        ts_redis_appendf(c, "GET %s", key) != 0)
        return false;
    if (ts_redis_reply(c, &r) != 0)
        return false;
    freeReplyObject(r);
    if (ts_redis_reply(c, &r) != 0)
        return false;
    if (reply_is(r, REDIS_REPLY_STRING) && r->len == 32) {
        if (cl->epoch[0] != '\0' && strcmp(cl->epoch, r->str) != 0) {
            lost = true;
            cl->lost_data_ns = ts_clock_now_ns(&cl->clock);
            cl->restore_pending = true;
            ts_log(cl->log, TS_LOG_ERROR,
                   "redis lost its data: putting back the tasks running here; tasks queued or "
                   "running elsewhere are gone",
                   TS_F_END);
        }
        memcpy(cl->epoch, r->str, 33);
    }
    freeReplyObject(r);
    return lost;
}

/* Put one running task back: its meta (owner, attempt and the last stored
 * id as they are here), a queue entry pending for this replica (so the
 * janitors still watch its lease), its place in the list, and the events
 * this replica's log still has, so that readers elsewhere miss only what it
 * no longer holds (they get a gap for that). */
static int
restore_task(struct ts_cluster *cl, struct ts_redis_conn *c, struct ts_task *t, unsigned attempt)
{
    char meta[KEY_MAX], events[KEY_MAX], queue[KEY_MAX], tasks[KEY_MAX];
    char att[16], top[24], lease[24], created[24], started[24], entry[64];
    const char *id = ts_task_get_id(t);
    int64_t created_ms, started_ms;
    struct ts_event *evs[64];
    json_t *body = NULL;
    const char *kind;
    redisReply *r;
    char *text;
    uint64_t last, from = 1;
    int rc;

    last = ts_task_stored_last(t, &body, &created_ms, &started_ms);
    kind = json_string_value(json_object_get(body, "kind"));
    text = kind != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL)
        return -ENOMEM;
    task_key(cl, meta, id, "meta");
    task_key(cl, events, id, "events");
    global_key(cl, queue, "queue");
    global_key(cl, tasks, "tasks");
    rc = ts_redis_call(c, &r, "XADD %s * t %s", queue, id);
    if (rc == 0) {
        rc = reply_is(r, REDIS_REPLY_STRING) && r->len < sizeof(entry) ? 0 : -EPROTO;
        if (rc == 0)
            memcpy(entry, r->str, r->len + 1);
        freeReplyObject(r);
    }
    if (rc == 0) {
        const char *argv[10] = {meta, kind,  text,  cl->replica, att,
                                top,  lease, entry, created,     started};

        snprintf(att, sizeof(att), "%u", attempt);
        snprintf(top, sizeof(top), "%" PRIu64, last);
        snprintf(lease, sizeof(lease), "%" PRId64, cl->lease_ns / TS_NS_PER_MS);
        snprintf(created, sizeof(created), "%" PRId64, created_ms);
        snprintf(started, sizeof(started), "%" PRId64, started_ms);
        rc = ts_redis_eval(c, &cl->scripts[S_RESTORE], &r, 1, 10, argv, NULL);
        if (rc == 0 && int_of(r) != 1) {
            /* Already back (a round before this one got that far): the
             * entry just added is one too many. */
            redisReply *d;

            if (ts_redis_call(c, &d, "XDEL %s %s", queue, entry) == 0)
                freeReplyObject(d);
            freeReplyObject(r);
            free(text);
            return 0;
        }
        if (rc == 0)
            freeReplyObject(r);
    }
    free(text);
    if (rc != 0)
        return rc;
    /* FORCE: the entry becomes this replica's pending one without a read. */
    if (ts_redis_call(c, &r, "XCLAIM %s " GROUP " %s 0 %s FORCE JUSTID", queue, cl->replica,
                      entry) == 0)
        freeReplyObject(r);
    if (ts_redis_call(c, &r, "ZADD %s %" PRId64 " %s", tasks, created_ms * 1000, id) == 0)
        freeReplyObject(r);
    for (;;) {
        size_t n = ts_task_events(t, from, last, evs, TS_ARRAY_SIZE(evs));

        if (n == 0)
            break;
        for (size_t i = 0; i < n; i++) {
            char eid[32];

            snprintf(eid, sizeof(eid), "%" PRIu64 "-0", evs[i]->id);
            rc = ts_redis_appendf(c, "XADD %s MAXLEN %s %s f %b", events, cl->maxlen, eid,
                                  evs[i]->frame, evs[i]->len);
            from = evs[i]->id + 1;
        }
        for (size_t i = 0; i < n; i++) {
            if (rc == 0 && ts_redis_reply(c, &r) == 0)
                freeReplyObject(r);
            ts_event_unref(evs[i]);
        }
        if (rc != 0)
            return rc;
    }
    ts_log(cl->log, TS_LOG_WARN, "task put back into redis", TS_F_STR("task_id", id),
           TS_F_UINT("last_event", last), TS_F_END);
    return 0;
}

/* Every task running here, until all are back. */
static void
restore_owned(struct ts_cluster *cl, struct ts_redis_conn *c)
{
    struct ts_task *tasks[RUNNING_MAX];
    unsigned attempts[RUNNING_MAX];
    size_t n = ts_task_service_running(cl->tasks, tasks, attempts, RUNNING_MAX);
    bool done = true;

    for (size_t i = 0; i < n; i++) {
        if (done && restore_task(cl, c, tasks[i], attempts[i]) != 0)
            done = false;
        ts_task_unref(tasks[i]);
    }
    if (done)
        cl->restore_pending = false;
}

static void mark_ended(struct ts_cluster *cl, const char *id);

/* A lease after Redis lost its data, every owner that survived has put its
 * tasks back: a followed task still missing is gone, and its streams here
 * end (a reconnecting client gets 404) rather than wait forever. */
static void
forget_lost_follows(struct ts_cluster *cl, struct ts_redis_conn *c)
{
    char ids[256][33];
    size_t n = 0;
    struct follow *f, *tmp;

    cl->lost_data_ns = 0;
    pthread_mutex_lock(&cl->mu);
    HASH_ITER(hh, cl->follows, f, tmp) {
        if (n < TS_ARRAY_SIZE(ids) && !f->ended)
            memcpy(ids[n++], f->id, 33);
    }
    pthread_mutex_unlock(&cl->mu);
    for (size_t i = 0; i < n; i++) {
        char meta[KEY_MAX];
        redisReply *r;
        struct ts_task *t;

        task_key(cl, meta, ids[i], "meta");
        if (ts_redis_call(c, &r, "EXISTS %s", meta) != 0)
            return;
        if (int_of(r) == 0 && (t = ts_task_find(cl->tasks, ids[i])) != NULL) {
            ts_task_mirror_detach(t);
            ts_task_unref(t);
            mark_ended(cl, ids[i]);
            ts_log(cl->log, TS_LOG_WARN, "task lost with redis' data", TS_F_STR("task_id", ids[i]),
                   TS_F_END);
        }
        freeReplyObject(r);
    }
}

static void *
claimer_main(void *arg)
{
    struct ts_cluster *cl = arg;
    struct ts_redis_conn *c = ts_redis_conn_new(cl->redis);
    int64_t tick = cl->lease_ns / 3, next = 0;
    char queue[KEY_MAX];
    redisReply *r;
    bool grouped = false;

    global_key(cl, queue, "queue");
    pthread_mutex_lock(&cl->mu);
    while (c != NULL && !cl->stopping) {
        int64_t now = ts_clock_now_ns(&cl->clock);
        bool round = now >= next;

        if (!round && !cl->wake_claimer) {
            /* While Redis is down this thread's connection is the probe
             * that finds it back (the pool's never try): it looks again
             * every PROBE_NS, the client's back-off deciding what that
             * costs. */
            int64_t until = next;

            if (!ts_redis_up(cl->redis) && now + PROBE_NS < until)
                until = now + PROBE_NS;
            if (ts_clock_wait(&cl->clock, &cl->claim_cv, &cl->mu, until) == ETIMEDOUT &&
                until != next)
                cl->wake_claimer = true;
            continue;
        }
        cl->wake_claimer = false;
        pthread_mutex_unlock(&cl->mu);
        /* Each round, and at once when the subscriber reconnected (a Redis
         * that restarted closes every connection). */
        if ((round || epoch_due(cl)) && check_epoch(cl, c))
            grouped = false; /* the group went with the data */
        if (!grouped && ts_redis_call(c, &r, "XGROUP CREATE %s " GROUP " 0 MKSTREAM", queue) == 0) {
            grouped = true; /* BUSYGROUP: another replica made it */
            freeReplyObject(r);
        }
        if (grouped && cl->restore_pending)
            restore_owned(cl, c);
        if (grouped)
            claim_new(cl, c);
        if (round) {
            renew(cl, c);
            if (grouped)
                janitor(cl, c);
            if (cl->lost_data_ns != 0 &&
                ts_clock_now_ns(&cl->clock) - cl->lost_data_ns >= cl->lease_ns)
                forget_lost_follows(cl, c);
            next = ts_clock_now_ns(&cl->clock) + tick;
        }
        pthread_mutex_lock(&cl->mu);
    }
    pthread_mutex_unlock(&cl->mu);
    ts_redis_conn_free(c);
    return NULL;
}

/* ---- the subscriber ---- */

/* The task id of a "P{id}:live" channel, or NULL. */
static const char *
channel_task(const struct ts_cluster *cl, const redisReply *ch, char id[33])
{
    size_t plen = strlen(cl->prefix);

    if (!reply_is(ch, REDIS_REPLY_STRING) || ch->len != plen + 32 + 7 ||
        memcmp(ch->str, cl->prefix, plen) != 0 || ch->str[plen] != '{' ||
        strcmp(ch->str + plen + 33, "}:live") != 0)
        return NULL;
    memcpy(id, ch->str + plen + 1, 32);
    id[32] = '\0';
    return ts_is_task_id(id) ? id : NULL;
}

static void
mark_ended(struct ts_cluster *cl, const char *id)
{
    struct follow *f;

    pthread_mutex_lock(&cl->mu);
    HASH_FIND_STR(cl->follows, id, f);
    if (f != NULL && !f->ended) {
        f->ended = true;
        cl->follows_changed = true;
    }
    pthread_cond_broadcast(&cl->synced_cv);
    pthread_mutex_unlock(&cl->mu);
}

/* Subscribed: fill the log from the stream, then live messages follow. */
static int
on_subscribed(struct ts_cluster *cl, struct ts_redis_conn *cmd, const char *id)
{
    struct ts_task *t = NULL;
    struct follow *f;
    bool ended = false;
    int rc;

    pthread_mutex_lock(&cl->mu);
    HASH_FIND_STR(cl->follows, id, f);
    if (f != NULL)
        t = ts_task_ref(f->task);
    pthread_mutex_unlock(&cl->mu);
    if (t == NULL)
        return 0;
    rc = backfill(cl, cmd, t, &ended);
    ts_task_unref(t);
    if (rc == -ENOTCONN || rc == -EIO)
        return rc;
    pthread_mutex_lock(&cl->mu);
    HASH_FIND_STR(cl->follows, id, f);
    if (f != NULL)
        f->state = F_SYNCED;
    pthread_cond_broadcast(&cl->synced_cv);
    pthread_mutex_unlock(&cl->mu);
    if (ended)
        mark_ended(cl, id);
    return 0;
}

/* "m<id>\n<frame>" or "e<id>\n<frame>". */
static int
on_live(struct ts_cluster *cl, struct ts_redis_conn *cmd, const char *id, const redisReply *msg)
{
    struct ts_task *t = NULL;
    struct ts_event *ev;
    struct follow *f;
    const char *nl;
    bool is_end, ended = false;
    uint64_t eid;
    int rc;

    if (!reply_is(msg, REDIS_REPLY_STRING) || msg->len < 3 ||
        (msg->str[0] != 'm' && msg->str[0] != 'e'))
        return 0;
    nl = memchr(msg->str, '\n', msg->len);
    if (nl == NULL)
        return 0;
    is_end = msg->str[0] == 'e';
    eid = strtoull(msg->str + 1, NULL, 10);
    pthread_mutex_lock(&cl->mu);
    HASH_FIND_STR(cl->follows, id, f);
    if (f != NULL && f->state == F_SYNCED)
        t = ts_task_ref(f->task);
    pthread_mutex_unlock(&cl->mu);
    if (t == NULL)
        return 0; /* not synced yet: the backfill will have it */
    ev = ts_event_from_frame(eid, nl + 1, msg->len - (size_t)(nl + 1 - msg->str));
    rc = ev != NULL ? ts_task_mirror_push(cl->tasks, t, ev, is_end) : 0;
    if (rc == -ERANGE)
        rc = backfill(cl, cmd, t, &ended); /* a message went missing */
    ts_task_unref(t);
    if (is_end || ended)
        mark_ended(cl, id);
    return rc == -ENOTCONN || rc == -EIO ? rc : 0;
}

static void
on_control(struct ts_cluster *cl, const redisReply *msg)
{
    struct ts_task *t;
    char id[33];

    if (!reply_is(msg, REDIS_REPLY_STRING) || msg->len != 7 + 32 ||
        strncmp(msg->str, "cancel ", 7) != 0)
        return;
    memcpy(id, msg->str + 7, 33);
    t = ts_task_find(cl->tasks, id);
    if (t != NULL && !ts_task_is_mirror(t))
        ts_task_cancel(cl->tasks, t);
    ts_task_unref(t);
}

static int
on_reply(struct ts_cluster *cl, struct ts_redis_conn *cmd, const redisReply *r)
{
    char id[33], ctl[KEY_MAX], notify[KEY_MAX];

    if (!reply_is(r, REDIS_REPLY_ARRAY) || r->elements != 3)
        return 0;
    ctl_key(cl, ctl, cl->replica);
    global_key(cl, notify, "notify");
    if (str_is(r->element[0], "subscribe")) {
        if (channel_task(cl, r->element[1], id) != NULL)
            return on_subscribed(cl, cmd, id);
    } else if (str_is(r->element[0], "message")) {
        if (channel_task(cl, r->element[1], id) != NULL)
            return on_live(cl, cmd, id, r->element[2]);
        if (str_is(r->element[1], ctl))
            on_control(cl, r->element[2]);
        else if (str_is(r->element[1], notify))
            store_worker_free(cl); /* wakes the claimer */
    }
    return 0;
}

/* Send what the follows need: SUBSCRIBE for new ones (all of them after a
 * reconnect), UNSUBSCRIBE for ended ones, which are then forgotten. */
static int
sync_follows(struct ts_cluster *cl, struct ts_redis_conn *sub, bool all)
{
    struct follow *f, *tmp, *gone = NULL;
    char live[KEY_MAX];
    int rc = 0;

    pthread_mutex_lock(&cl->mu);
    cl->follows_changed = false;
    HASH_ITER(hh, cl->follows, f, tmp) {
        task_key(cl, live, f->id, "live");
        if (f->ended) {
            HASH_DEL(cl->follows, f);
            f->hh.next = gone;
            gone = f;
            if (!all && rc == 0)
                rc = ts_redis_appendf(sub, "UNSUBSCRIBE %s", live);
        } else if (all || f->state == F_NEW) {
            f->state = F_SUBSCRIBING;
            if (rc == 0)
                rc = ts_redis_appendf(sub, "SUBSCRIBE %s", live);
        }
    }
    pthread_mutex_unlock(&cl->mu);
    while (gone != NULL) {
        f = gone;
        gone = f->hh.next;
        /* Its last reader left before its end: nothing keeps the cache up
         * to date any more, so it goes (a new reader makes another). */
        ts_task_forget_mirror(cl->tasks, f->task);
        ts_task_unref(f->task);
        free(f);
    }
    return rc == 0 ? ts_redis_conn_flush(sub) : rc;
}

static int
subscribe_base(struct ts_cluster *cl, struct ts_redis_conn *sub)
{
    char ctl[KEY_MAX], notify[KEY_MAX];
    int rc;

    ctl_key(cl, ctl, cl->replica);
    global_key(cl, notify, "notify");
    rc = ts_redis_appendf(sub, "SUBSCRIBE %s %s", ctl, notify);
    return rc == 0 ? ts_redis_conn_flush(sub) : rc;
}

static bool
sub_stopping(struct ts_cluster *cl, bool *changed)
{
    bool stop;

    pthread_mutex_lock(&cl->mu);
    stop = cl->stopping;
    *changed = cl->follows_changed;
    pthread_mutex_unlock(&cl->mu);
    return stop;
}

static void *
subscriber_main(void *arg)
{
    struct ts_cluster *cl = arg;
    struct ts_redis_conn *sub = ts_redis_conn_new(cl->redis);
    struct ts_redis_conn *cmd = ts_redis_conn_new(cl->redis);
    bool changed;

    while (sub != NULL && cmd != NULL && !sub_stopping(cl, &changed)) {
        struct pollfd fds[2] = {{.fd = cl->efd, .events = POLLIN}, {.fd = -1, .events = POLLIN}};
        redisReply *r;
        uint64_t v;
        int rc = 0;

        if (!ts_redis_conn_connected(sub)) {
            /* A new connection has no subscriptions: all again, and every
             * follow is backfilled again from where its log is. */
            if (ts_redis_conn_ensure(sub) == 0 && subscribe_base(cl, sub) == 0) {
                rc = sync_follows(cl, sub, true);
                pthread_mutex_lock(&cl->mu);
                cl->epoch_due = true; /* the claimer looks at Redis' epoch now */
                pthread_mutex_unlock(&cl->mu);
                store_worker_free(cl);
            }
            if (!ts_redis_conn_connected(sub) || rc != 0) {
                poll(fds, 1, 250); /* the client's back-off decides when to try */
                if (fds[0].revents & POLLIN)
                    (void)!read(cl->efd, &v, sizeof(v));
                continue;
            }
        } else if (changed) {
            sync_follows(cl, sub, false);
        }
        fds[1].fd = ts_redis_conn_fd(sub);
        if (fds[1].fd < 0 || poll(fds, 2, -1) < 0)
            continue;
        if (fds[0].revents & POLLIN)
            (void)!read(cl->efd, &v, sizeof(v));
        if ((fds[1].revents & (POLLIN | POLLHUP | POLLERR)) == 0)
            continue;
        if (ts_redis_conn_read(sub) != 0)
            continue;
        while (ts_redis_conn_next(sub, &r) == 0 && r != NULL) {
            rc = on_reply(cl, cmd, r);
            freeReplyObject(r);
            if (rc != 0) {
                /* The backfill failed: start over on a new connection. */
                ts_redis_conn_free(sub);
                sub = ts_redis_conn_new(cl->redis);
                break;
            }
        }
    }
    ts_redis_conn_free(cmd);
    ts_redis_conn_free(sub);
    return NULL;
}

static void
wake_subscriber(struct ts_cluster *cl)
{
    (void)!eventfd_write(cl->efd, 1);
}

/* ---- what request handlers call ---- */

int
ts_cluster_follow(struct ts_cluster *cl, const char *id, struct ts_task **out)
{
    struct ts_task *t;
    struct follow *f;
    int64_t deadline;
    bool created, ended;
    int rc = 0;

    *out = NULL;
    t = ts_task_find(cl->tasks, id);
    if (t == NULL) {
        char meta[KEY_MAX];
        struct ts_redis_conn *c = ts_redis_get(cl->redis);
        redisReply *r;

        if (c == NULL)
            return -ENOMEM;
        task_key(cl, meta, id, "meta");
        rc = ts_redis_call(c, &r, "EXISTS %s", meta);
        ts_redis_put(cl->redis, c);
        if (rc != 0)
            return rc;
        rc = int_of(r) == 1 ? 0 : -ENOENT;
        freeReplyObject(r);
        if (rc != 0)
            return rc;
        t = ts_task_mirror(cl->tasks, id, &created);
        if (t == NULL)
            return -ENOMEM;
    }
    ts_task_lock(t);
    ended = ts_task_ended_locked(t);
    ts_task_unlock(t);
    if (ended) {
        *out = t;
        return 0;
    }

    pthread_mutex_lock(&cl->mu);
    HASH_FIND_STR(cl->follows, id, f);
    if (f == NULL) {
        f = calloc(1, sizeof(*f));
        if (f == NULL) {
            rc = -ENOMEM;
            goto out_unlock;
        }
        memcpy(f->id, ts_task_get_id(t), sizeof(f->id));
        f->task = ts_task_ref(t);
        f->state = F_NEW;
        HASH_ADD_STR(cl->follows, id, f);
        if (f->hh.tbl == NULL) {
            ts_task_unref(f->task);
            free(f);
            rc = -ENOMEM;
            goto out_unlock;
        }
        cl->follows_changed = true;
        wake_subscriber(cl);
    }
    /* A reader coming just as the last one left keeps the subscription. */
    if (f->ended && !ended) {
        f->ended = false;
    }
    f->readers++;
    /* Single flight: the first reader's follow is everyone's; each waits
     * for its backfill, or its end (then it is gone and the log whole). */
    deadline = ts_clock_now_ns(&cl->clock) + 2 * cl->timeout_ns;
    for (;;) {
        HASH_FIND_STR(cl->follows, id, f);
        if (f == NULL || f->state == F_SYNCED || cl->stopping)
            break;
        if (ts_clock_wait(&cl->clock, &cl->synced_cv, &cl->mu, deadline) == ETIMEDOUT) {
            rc = -ETIMEDOUT;
            break;
        }
    }
out_unlock:
    pthread_mutex_unlock(&cl->mu);
    if (rc != 0) {
        if (rc != -ENOMEM)
            ts_cluster_unfollow(cl, id);
        ts_task_unref(t);
        return rc;
    }
    *out = t;
    return 0;
}

void
ts_cluster_unfollow(struct ts_cluster *cl, const char *id)
{
    struct follow *f;

    pthread_mutex_lock(&cl->mu);
    HASH_FIND_STR(cl->follows, id, f);
    if (f != NULL && f->readers > 0 && --f->readers == 0 && !f->ended) {
        /* Redis' cost follows this replica's readers: none, no subscription
         * (the mirror keeps its log; a new reader backfills from there). */
        f->ended = true;
        cl->follows_changed = true;
        wake_subscriber(cl);
    }
    pthread_mutex_unlock(&cl->mu);
}

/* A meta hash (HGETALL's flat array) as task JSON. */
static json_t *
meta_json(const char *id, const redisReply *r)
{
    const char *kind = NULL, *state = NULL, *reason = NULL, *owner = NULL, *sub = NULL;
    const redisReply *body = NULL;
    long long created = 0, started = 0, finished = 0, top = 0, attempt = 0, code = 0, sig = 0;
    char buf[TS_TIME_LEN];
    json_t *o, *params = NULL;
    bool done;

    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];

        if (!reply_is(k, REDIS_REPLY_STRING) || !reply_is(v, REDIS_REPLY_STRING))
            continue;
        if (strcmp(k->str, "kind") == 0)
            kind = v->str;
        else if (strcmp(k->str, "state") == 0)
            state = v->str;
        else if (strcmp(k->str, "reason") == 0)
            reason = v->str;
        else if (strcmp(k->str, "owner") == 0)
            owner = v->str;
        else if (strcmp(k->str, "sub") == 0)
            sub = v->str;
        else if (strcmp(k->str, "body") == 0)
            body = v;
        else if (strcmp(k->str, "created") == 0)
            created = int_of(v);
        else if (strcmp(k->str, "started") == 0)
            started = int_of(v);
        else if (strcmp(k->str, "finished") == 0)
            finished = int_of(v);
        else if (strcmp(k->str, "top") == 0)
            top = int_of(v);
        else if (strcmp(k->str, "attempt") == 0)
            attempt = int_of(v);
        else if (strcmp(k->str, "exit_code") == 0)
            code = int_of(v);
        else if (strcmp(k->str, "signal") == 0)
            sig = int_of(v);
    }
    if (kind == NULL || state == NULL)
        return NULL;
    done = strcmp(state, "queued") != 0 && strcmp(state, "running") != 0;
    /* clang-format off */
    o = json_pack("{s:s, s:s, s:s, s:o?, s:o?, s:o?, s:o?, s:o?, s:o?, s:I, s:o?, s:I}",
                  "id", id,
                  "kind", kind,
                  "state", state,
                  "created_at", created > 0 ? json_string(ts_format_time(created * TS_NS_PER_MS, buf)) : NULL,
                  "started_at", started > 0 ? json_string(ts_format_time(started * TS_NS_PER_MS, buf)) : NULL,
                  "finished_at", finished > 0 ? json_string(ts_format_time(finished * TS_NS_PER_MS, buf)) : NULL,
                  "reason", done && reason != NULL && reason[0] != '\0' ? json_string(reason) : NULL,
                  "exit_code", done ? json_integer(code) : NULL,
                  "signal", done && sig != 0 ? json_integer(sig) : NULL,
                  "events", (json_int_t)top,
                  "replica", owner != NULL && owner[0] != '\0' ? json_string(owner) : NULL,
                  "attempt", (json_int_t)attempt);
    /* clang-format on */
    if (o == NULL)
        return NULL;
    if (body != NULL)
        params = json_loadb(body->str, body->len, 0, NULL);
    ts_task_request_json(o, kind, params != NULL ? params : json_object());
    json_decref(params);
    if (sub != NULL)
        json_object_set_new(o, "submitted_by", json_string(sub));
    return o;
}

int
ts_cluster_get(struct ts_cluster *cl, const char *id, json_t **out)
{
    char meta[KEY_MAX];
    struct ts_redis_conn *c;
    redisReply *r;
    int rc;

    *out = NULL;
    if (!ts_is_task_id(id))
        return -ENOENT;
    c = ts_redis_get(cl->redis);
    if (c == NULL)
        return -ENOMEM;
    task_key(cl, meta, id, "meta");
    rc = ts_redis_call(c, &r, "HGETALL %s", meta);
    ts_redis_put(cl->redis, c);
    if (rc != 0)
        return rc;
    if (reply_is(r, REDIS_REPLY_ARRAY) && r->elements > 0) {
        *out = meta_json(id, r);
        rc = *out != NULL ? 0 : -ENOENT;
    } else {
        rc = -ENOENT;
    }
    freeReplyObject(r);
    return rc;
}

int
ts_cluster_submit(struct ts_cluster *cl, const json_t *body, const char *sub, json_t **out,
                  char *err, size_t errlen)
{
    char id[33], meta[KEY_MAX], tasks[KEY_MAX], queue[KEY_MAX], notify[KEY_MAX], created[24];
    char score[24];
    int64_t now_us = ts_clock_wall_ns(&cl->clock) / 1000;
    const char *kind = json_string_value(json_object_get(body, "kind"));
    struct ts_redis_conn *c;
    char *text;
    int rc;

    *out = NULL;
    rc = ts_task_validate(cl->tasks, body, false, err, errlen);
    if (rc != 0)
        return rc;
    rc = ts_random_id(id);
    if (rc != 0)
        return rc;
    text = json_dumps(body, JSON_COMPACT);
    if (text == NULL)
        return -ENOMEM;
    task_key(cl, meta, id, "meta");
    global_key(cl, tasks, "tasks");
    global_key(cl, queue, "queue");
    global_key(cl, notify, "notify");
    /* The list's order: microseconds (exact in a double), so that tasks
     * submitted one after the other never share a score. */
    snprintf(created, sizeof(created), "%" PRId64, now_us / 1000);
    snprintf(score, sizeof(score), "%" PRId64, now_us);
    c = ts_redis_get(cl->redis);
    if (c == NULL) {
        free(text);
        return -ENOMEM;
    }
    /* One round trip; the meta first, so a claimer never finds an entry
     * without its task. */
    if (sub != NULL)
        rc = ts_redis_appendf(c,
                              "HSET %s kind %s body %s state queued created %s top 0 attempt 0 "
                              "sub %s",
                              meta, kind, text, created, sub);
    else
        rc = ts_redis_appendf(c, "HSET %s kind %s body %s state queued created %s top 0 attempt 0",
                              meta, kind, text, created);
    if (rc == 0)
        rc = ts_redis_appendf(c, "ZADD %s %s %s", tasks, score, id);
    if (rc == 0)
        rc = ts_redis_appendf(c, "XADD %s * t %s", queue, id);
    if (rc == 0)
        rc = ts_redis_appendf(c, "PUBLISH %s %s", notify, id);
    for (int i = 0; i < 4 && rc == 0; i++) {
        redisReply *r;

        rc = ts_redis_reply(c, &r);
        if (rc == 0 && reply_is(r, REDIS_REPLY_ERROR)) {
            log_reply_error(cl, "submit", r);
            rc = -EPROTO;
        }
        freeReplyObject(r);
    }
    ts_redis_put(cl->redis, c);
    free(text);
    if (rc != 0)
        return rc;
    ts_task_validate(cl->tasks, body, true, err, errlen); /* counts it */
    ts_log(cl->log, TS_LOG_DEBUG, "task submitted", TS_F_STR("task_id", id), TS_F_STR("kind", kind),
           TS_F_END);
    return ts_cluster_get(cl, id, out) == 0 ? 0 : -EIO;
}

int
ts_cluster_cancel(struct ts_cluster *cl, const char *id, json_t **out)
{
    static const char data[] = "{\"status\":\"cancelled\",\"reason\":\"client\",\"exit_code\":0}";
    char meta[KEY_MAX], events[KEY_MAX], live[KEY_MAX], retention[24];
    const char *argv[6] = {meta, events, live, data, cl->maxlen, retention};
    struct ts_redis_conn *c;
    redisReply *r;
    int rc;

    *out = NULL;
    if (!ts_is_task_id(id))
        return -ENOENT;
    task_keys(cl, id, meta, events, live);
    snprintf(retention, sizeof(retention), "%" PRId64,
             cl->retention_ns / TS_NS_PER_MS > 0 ? cl->retention_ns / TS_NS_PER_MS : 1000);
    c = ts_redis_get(cl->redis);
    if (c == NULL)
        return -ENOMEM;
    rc = ts_redis_eval(c, &cl->scripts[S_CANCEL], &r, 3, 6, argv, NULL);
    if (rc == 0) {
        if (!reply_is(r, REDIS_REPLY_ARRAY) || r->elements < 1) {
            log_reply_error(cl, "cancel", r);
            rc = -EPROTO;
        } else if (str_is(r->element[0], "gone")) {
            rc = -ENOENT;
        } else if (str_is(r->element[0], "done")) {
            rc = -EALREADY;
        } else if (str_is(r->element[0], "running") && r->elements == 2 &&
                   reply_is(r->element[1], REDIS_REPLY_STRING)) {
            char ctl[KEY_MAX], msg[48];
            redisReply *p;

            /* The owner is told; it also sees the flag at its next renewal,
             * should it miss the message. One argument: "PUBLISH %s cancel
             * %s" would be four, which Redis refuses. */
            ctl_key(cl, ctl, r->element[1]->str);
            snprintf(msg, sizeof(msg), "cancel %s", id);
            if (ts_redis_call(c, &p, "PUBLISH %s %s", ctl, msg) == 0)
                freeReplyObject(p);
        }
        freeReplyObject(r);
    }
    ts_redis_put(cl->redis, c);
    if (rc != 0)
        return rc;
    return ts_cluster_get(cl, id, out);
}

/* "<ms>:<id>" of the last task a page showed. */
static int
parse_cursor(const char *cursor, long long *score, char id[33])
{
    char *end;

    *score = strtoll(cursor, &end, 10);
    if (end == cursor || *end != ':' || strlen(end + 1) != 32 || !ts_is_task_id(end + 1))
        return -EINVAL;
    memcpy(id, end + 1, 33);
    return 0;
}

/* Does the listed task `o` pass ts_cluster_list()'s filters? */
static bool
list_match(const json_t *o, unsigned states, const char *sub)
{
    static const char *const names[] = {"queued", "running", "succeeded", "failed", "cancelled"};
    const char *st = json_string_value(json_object_get(o, "state"));
    const char *by = json_string_value(json_object_get(o, "submitted_by"));
    unsigned bit = 0;

    for (unsigned k = 0; st != NULL && k < TS_ARRAY_SIZE(names); k++)
        if (strcmp(st, names[k]) == 0)
            bit = 1u << k;
    return (states == 0 || (bit & states) != 0) &&
           (sub == NULL || (by != NULL && strcmp(by, sub) == 0));
}

int
ts_cluster_list(struct ts_cluster *cl, unsigned states, const char *sub, size_t limit,
                const char *cursor, json_t **out, char **next)
{
    char tasks[KEY_MAX], max[32] = "+inf", after[33] = "";
    long long after_score = 0;
    struct ts_redis_conn *c;
    json_t *list;
    int rc = 0;
    bool more = true;

    *out = NULL;
    *next = NULL;
    if (cursor != NULL) {
        if (parse_cursor(cursor, &after_score, after) != 0)
            return -EINVAL;
        snprintf(max, sizeof(max), "%lld", after_score);
    }
    list = json_array();
    c = ts_redis_get(cl->redis);
    if (list == NULL || c == NULL) {
        json_decref(list);
        ts_redis_put(cl->redis, c);
        return -ENOMEM;
    }
    global_key(cl, tasks, "tasks");
    /* Pages of ids, newest first; each page's metas in one round trip. A
     * filter may need several pages; ids whose task expired are dropped
     * from the set on the way. */
    while (rc == 0 && more && json_array_size(list) < limit) {
        redisReply *ids;
        size_t page = limit * 2 < 100 ? 100 : limit * 2 > 1000 ? 1000 : limit * 2;
        size_t zrems = 0;
        char count[24];

        snprintf(count, sizeof(count), "%zu", page);
        rc = ts_redis_call(c, &ids, "ZREVRANGEBYSCORE %s %s -inf WITHSCORES LIMIT 0 %s", tasks, max,
                           count);
        if (rc != 0)
            break;
        if (!reply_is(ids, REDIS_REPLY_ARRAY)) {
            freeReplyObject(ids);
            rc = -EPROTO;
            break;
        }
        more = ids->elements / 2 == page;
        size_t first = 0;
        /* Skip what the cursor (or the previous page) already showed: same
         * score, id not below it (members of one score come in reverse
         * order). */
        while (after[0] != '\0' && first + 1 < ids->elements &&
               int_of(ids->element[first + 1]) == after_score &&
               strcmp(ids->element[first]->str, after) >= 0)
            first += 2;
        for (size_t i = first; i + 1 < ids->elements; i += 2)
            ts_redis_appendf(c, "HGETALL %s{%s}:meta", cl->prefix, ids->element[i]->str);
        for (size_t i = first; i + 1 < ids->elements && rc == 0; i += 2) {
            redisReply *m;
            const char *id = ids->element[i]->str;

            rc = ts_redis_reply(c, &m);
            if (rc != 0)
                break;
            after_score = int_of(ids->element[i + 1]);
            snprintf(after, sizeof(after), "%s", id);
            if (reply_is(m, REDIS_REPLY_ARRAY) && m->elements == 0) {
                /* Expired: its metas are gone, its place in the set too
                 * (the reply comes after this page's metas). */
                if (ts_redis_appendf(c, "ZREM %s %s", tasks, id) == 0)
                    zrems++;
            } else if (reply_is(m, REDIS_REPLY_ARRAY) && json_array_size(list) < limit) {
                json_t *o = meta_json(id, m);

                if (o != NULL && list_match(o, states, sub))
                    json_array_append_new(list, o);
                else
                    json_decref(o);
            }
            freeReplyObject(m);
            if (json_array_size(list) == limit) {
                /* Replies still owed are read and dropped. */
                for (size_t j = i + 2; j + 1 < ids->elements; j += 2) {
                    if (ts_redis_reply(c, &m) == 0)
                        freeReplyObject(m);
                }
                more = more || i + 2 < ids->elements;
                break;
            }
        }
        for (; zrems > 0; zrems--) {
            redisReply *z;

            if (ts_redis_reply(c, &z) == 0)
                freeReplyObject(z);
        }
        snprintf(max, sizeof(max), "%lld", after_score);
        freeReplyObject(ids);
    }
    ts_redis_put(cl->redis, c);
    if (rc != 0) {
        json_decref(list);
        return rc;
    }
    if (more && json_array_size(list) == limit && after[0] != '\0') {
        char buf[64];

        snprintf(buf, sizeof(buf), "%lld:%s", after_score, after);
        *next = strdup(buf);
    }
    *out = list;
    return 0;
}

/* ---- life ---- */

const char *
ts_cluster_replica(const struct ts_cluster *cl)
{
    return cl->replica;
}

int
ts_cluster_new(struct ts_cluster **out, const struct ts_cluster_config *cfg)
{
    static const char *const sources[S_COUNT] = {
        [S_APPEND] = append_lua,   [S_END] = end_lua,         [S_CLAIM] = claim_lua,
        [S_RENEW] = renew_lua,     [S_RELEASE] = release_lua, [S_CANCEL] = cancel_lua,
        [S_RESTORE] = restore_lua,
    };
    static const char *const names[S_COUNT] = {
        [S_APPEND] = "append",   [S_END] = "end",         [S_CLAIM] = "claim",
        [S_RENEW] = "renew",     [S_RELEASE] = "release", [S_CANCEL] = "cancel",
        [S_RESTORE] = "restore",
    };
    struct ts_redis_config rcfg;
    struct ts_task_store store;
    struct ts_cluster *cl;
    int err;

    cl = calloc(1, sizeof(*cl));
    if (cl == NULL)
        return -ENOMEM;
    snprintf(cl->prefix, sizeof(cl->prefix), "%s", cfg->prefix != NULL ? cfg->prefix : "");
    if (cfg->replica != NULL && cfg->replica[0] != '\0') {
        snprintf(cl->replica, sizeof(cl->replica), "%s", cfg->replica);
    } else {
        char host[64] = "localhost";

        gethostname(host, sizeof(host) - 1);
        snprintf(cl->replica, sizeof(cl->replica), "%s-%d", host, (int)getpid());
    }
    cl->timeout_ns = cfg->timeout_ns;
    cl->lease_ns = cfg->lease_ns;
    cl->retention_ns = cfg->retention_ns;
    snprintf(cl->maxlen, sizeof(cl->maxlen), "%zu", cfg->log_events);
    cl->tasks = cfg->tasks;
    cl->drain = cfg->drain;
    cl->clock = cfg->clock;
    cl->log = cfg->log;
    for (int i = 0; i < S_COUNT; i++) {
        cl->scripts[i].name = names[i];
        cl->scripts[i].source = sources[i];
    }
    cl->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (cl->efd < 0) {
        err = -errno;
        free(cl);
        return err;
    }
    pthread_mutex_init(&cl->mu, NULL);
    ts_cond_init(&cl->claim_cv);
    ts_cond_init(&cl->synced_cv);
    cl->claims = ts_metrics_simple(cfg->metrics, TS_METRIC_COUNTER, "cluster_claims_total",
                                   "Queued tasks this replica claimed and started.");
    cl->takeovers = ts_metrics_simple(
        cfg->metrics, TS_METRIC_COUNTER, "cluster_takeovers_total",
        "Tasks of another replica whose lease lapsed that this replica took over (resumed, or "
        "ended as lost).");
    rcfg = (struct ts_redis_config){
        .url = cfg->url,
        .password = cfg->password,
        .timeout_ns = cfg->timeout_ns,
        .scripts = cl->scripts,
        .nscripts = S_COUNT,
        .metrics = cfg->metrics,
        .log = cfg->log,
    };
    err = cl->claims == NULL || cl->takeovers == NULL ? -ENOMEM : ts_redis_new(&cl->redis, &rcfg);
    if (err != 0) {
        ts_cluster_free(cl);
        return err;
    }
    store = (struct ts_task_store){
        .append = store_append,
        .end = store_end,
        .release = store_release,
        .worker_free = store_worker_free,
        .arg = cl,
    };
    ts_task_service_set_store(cl->tasks, &store);
    *out = cl;
    return 0;
}

int
ts_cluster_start(struct ts_cluster *cl)
{
    int err;

    err = -pthread_create(&cl->subscriber, NULL, subscriber_main, cl);
    if (err != 0)
        return err;
    err = -pthread_create(&cl->claimer, NULL, claimer_main, cl);
    if (err != 0) {
        pthread_mutex_lock(&cl->mu);
        cl->stopping = true;
        pthread_mutex_unlock(&cl->mu);
        wake_subscriber(cl);
        pthread_join(cl->subscriber, NULL);
        return err;
    }
    cl->started = true;
    ts_log(cl->log, TS_LOG_INFO, "cluster mode", TS_F_STR("replica", cl->replica),
           TS_F_STR("key_prefix", cl->prefix), TS_F_INT("lease_ms", cl->lease_ns / TS_NS_PER_MS),
           TS_F_END);
    return 0;
}

void
ts_cluster_quiesce(struct ts_cluster *cl)
{
    pthread_mutex_lock(&cl->mu);
    cl->quiesced = true;
    pthread_mutex_unlock(&cl->mu);
}

void
ts_cluster_stop(struct ts_cluster *cl)
{
    if (cl != NULL && cl->started) {
        pthread_mutex_lock(&cl->mu);
        cl->stopping = true;
        pthread_cond_broadcast(&cl->claim_cv);
        pthread_cond_broadcast(&cl->synced_cv);
        pthread_mutex_unlock(&cl->mu);
        wake_subscriber(cl);
        pthread_join(cl->claimer, NULL);
        pthread_join(cl->subscriber, NULL);
        cl->started = false;
    }
}

void
ts_cluster_free(struct ts_cluster *cl)
{
    struct follow *f, *tmp;

    if (cl == NULL)
        return;
    ts_cluster_stop(cl);
    HASH_ITER(hh, cl->follows, f, tmp) {
        HASH_DEL(cl->follows, f);
        ts_task_unref(f->task);
        free(f);
    }
    ts_redis_free(cl->redis);
    pthread_cond_destroy(&cl->synced_cv);
    pthread_cond_destroy(&cl->claim_cv);
    pthread_mutex_destroy(&cl->mu);
    close(cl->efd);
    free(cl);
}
