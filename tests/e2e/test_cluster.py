"""Cluster mode on Redis: replicas sharing one redis-server (REDIS_URL, a key
prefix of their own per test) serve every task from every replica.

- A task submitted on one replica is read, listed, followed, resumed and
  cancelled on any other, also through nginx balancing round-robin with no
  stickiness and no retry on 404.
- An owner killed with SIGKILL: another replica takes the task over when its
  lease (TASK_LEASE 2s) lapses; a non-resumable task ends failed/lost.
- An owner frozen (SIGSTOP) past its lease loses the task; thawed, it notices
  ("lost ownership") and appends nothing more.
- Redis unreachable at start: the daemon runs, its probes answer 200, POST
  answers 503 store_unavailable with Retry-After until Redis comes up.

One redis-server serves the module (cluster.py); the whole module is skipped
when /usr/bin/redis-server is missing.
"""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

# The fixtures are used by name: importing them makes them this module's.
from cluster import (REDIS_SERVER, closed_port, cluster, have_redis, nginx_rr, redis,  # noqa: F401
                     redis_server, redis_servers, unique_prefix, wait_owner)
from tshelpers import (SSEStream, assert_json_error, check_complete_stream, http, parse_duration,
                       scaled, scrape, wait_for)

pytestmark = pytest.mark.skipif(not have_redis(),
                                reason=f"redis-server not installed at {REDIS_SERVER} "
                                       "(scripts/deps.sh test installs it)")

UNKNOWN_ID = "0" * 32
LEASE = "2s"


def task_url(d, task_id, tail=""):
    base = d if isinstance(d, str) else d.url
    return f"{base}/v1/tasks/{task_id}{tail}"


def get_task(d, task_id):
    r = http("GET", task_url(d, task_id))
    assert r.status == 200, (getattr(d, "replica_id", d), r)
    return r.json()


def listed_ids(base):
    r = http("GET", f"{base}/v1/tasks")
    assert r.status == 200, r
    return [t["id"] for t in r.json()["tasks"]]


def wait_state(d, task_id, states, timeout=None):
    """Wait until `d` reports the task in one of `states`; return its JSON."""
    found = {}

    def check():
        found["t"] = get_task(d, task_id)
        return found["t"]["state"] in states

    wait_for(check, scaled(5) if timeout is None else timeout,
             what=f"task {task_id} in {states} on replica {getattr(d, 'replica_id', d)}")
    return found["t"]


def ids_of(events):
    return [int(e.id) for e in events if e.id is not None]


def assert_strictly_increasing(ids):
    assert all(a < b for a, b in zip(ids, ids[1:])), f"ids not strictly increasing: {ids}"


def children_of(pid):
    """(pid, argv) of the live processes whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:-1]
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append((int(entry), [a.decode(errors="replace") for a in argv]))
    return out


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


# --------------------------------------------------------------------------
# every replica serves every task
# --------------------------------------------------------------------------


def test_submit_on_a_read_everywhere(cluster):
    """POST on A: B and C know the task at once, report its end, its owner
    and its first attempt; every replica lists the tasks submitted on each."""
    a, b, c = group = cluster(3)
    t = a.submit(count=5, interval_ms=50)
    # Queued: no owner yet (null); after that, the owner.
    assert "replica" in t and t["replica"] in (None, "a", "b", "c"), t
    for d in (b, c):
        seen = get_task(d, t["id"])
        assert (seen["id"], seen["kind"]) == (t["id"], "ticker"), seen
        assert seen["state"] in ("queued", "running", "succeeded"), seen
        assert "replica" in seen and seen["replica"] in (None, "a", "b", "c"), seen

    done = wait_state(c, t["id"], ("succeeded", "failed", "cancelled"), timeout=scaled(10))
    assert done["state"] == "succeeded", done
    assert done.get("replica") in ("a", "b", "c") and done.get("attempt") == 1, done
    assert done["events"] == 6, done
    for d in group:
        same = get_task(d, t["id"])
        assert (same["state"], same["replica"], same["attempt"], same["events"]) == (
            "succeeded", done["replica"], 1, 6), (d.replica_id, same)

    ids = [t["id"]] + [d.submit(count=1, interval_ms=10)["id"] for d in group]
    for d in group:
        listed = listed_ids(d.url)
        assert set(ids) <= set(listed), (d.replica_id, ids, listed)


def test_follow_on_b_resume_on_c(cluster):
    """Follow on B up to id 8, reconnect on C with Last-Event-ID: 8: the
    stream goes on at 9 and the two parts are the whole stream, once."""
    a, b, c = cluster(3)
    count = 20
    t = a.submit(count=count, interval_ms=50)
    with SSEStream(task_url(b, t["id"], "/events"), timeout=scaled(10)) as s:
        assert s.status == 200, s.body
        s.read_until(lambda e: e.id == "8", timeout=scaled(10))
        first = [e for e in s.events() if e.id is not None and int(e.id) <= 8]
    with SSEStream(task_url(c, t["id"], "/events"), last_event_id=8, timeout=scaled(10)) as s:
        assert s.status == 200, s.body
        rest = s.read_all(scaled(10))
        assert s.clean_end, s.error
    assert rest and rest[0].id == "9", rest[:3]
    check_complete_stream(first + rest, count)


def test_cancel_from_another_replica(cluster):
    """DELETE on a replica that does not run the task: 202; a stream on the
    third replica ends cancelled/client; every replica says cancelled. The
    lease is long (renewed every 20 s): the cancel must reach the owner by
    its control channel, not by the renewal that also carries it."""
    group = cluster(3, env={"TASK_LEASE": "60s"})
    t = group[0].submit(count=1000, interval_ms=50)
    owner, _ = wait_owner(group, t["id"])
    canceller, watcher = group.others(owner)
    with SSEStream(task_url(watcher, t["id"], "/events"), timeout=scaled(10)) as s:
        assert s.status == 200, s.body
        s.read_until(lambda e: e.type == "tick", timeout=scaled(5))
        r = http("DELETE", task_url(canceller, t["id"]))
        assert r.status == 202, r
        end = s.read_until(lambda e: e.type == "end", timeout=scaled(5))
        events = s.events()
    d = end.json()
    assert (d["status"], d["reason"]) == ("cancelled", "client"), d
    ids = ids_of(events)
    assert ids == list(range(1, len(ids) + 1)), ids
    assert end is events[-1] and events[-1].type == "end"
    for replica in group:
        seen = wait_state(replica, t["id"], ("cancelled",))
        assert seen["reason"] == "client" and seen["replica"] == owner.replica_id, seen
        assert seen["events"] == int(end.id), seen


def test_unknown_and_ended(cluster):
    """An unknown id is 404 everywhere; an ended task's stream resumed after
    its end is 204 on a replica that did not run it."""
    group = cluster(3)
    for d in group:
        assert_json_error(http("GET", task_url(d, UNKNOWN_ID)), 404, "unknown_task")
        assert_json_error(http("GET", task_url(d, UNKNOWN_ID, "/events")), 404, "unknown_task")

    count = 3
    t = group[0].submit(count=count, interval_ms=10)
    with SSEStream(task_url(group[1], t["id"], "/events"), timeout=scaled(10)) as s:
        assert s.status == 200, s.body
        end = check_complete_stream(s.read_all(scaled(10)), count)
        end_id = s.events()[-1].id
    assert end["status"] == "succeeded" and end_id == str(count + 1)
    done = wait_state(group[0], t["id"], ("succeeded",))
    other = [d for d in group if d.replica_id != done["replica"]]
    assert len(other) == 2, (done, [d.replica_id for d in group])
    for d in other:
        r = http("GET", task_url(d, t["id"], "/events"), headers={"Last-Event-ID": end_id})
        assert r.status == 204, (d.replica_id, r)


def test_round_robin_nginx(cluster, nginx_rr):
    """Three replicas behind nginx round-robin (no stickiness, no retry on
    404): the task answers wherever a request lands, and its stream is whole."""
    group = cluster(3)
    base = nginx_rr(group)
    count = 10
    r = http("POST", f"{base}/v1/tasks", {"kind": "ticker", "count": count, "interval_ms": 50})
    assert r.status == 202, r
    tid = r.json()["id"]
    path = f"/v1/tasks/{tid}"
    statuses = [http("GET", base + path).status for _ in range(30)]
    assert statuses == [200] * 30, statuses
    # The GETs really went round: each replica answered some (nginx logs a
    # request once it has ended).
    logged = wait_for(lambda: len(base.upstreams(path)) >= 30 and base.upstreams(path), scaled(5),
                      what="30 GETs in nginx's log")
    assert {addr for _, _, _, addr in logged} == {f"127.0.0.1:{d.port}" for d in group}, logged

    with SSEStream(f"{base}{path}/events", timeout=scaled(10)) as s:
        assert s.status == 200, s.body
        events = s.read_all(scaled(15))
        assert s.clean_end, s.error
    check_complete_stream(events, count)
    assert tid in listed_ids(base)


# --------------------------------------------------------------------------
# owners that die or freeze
# --------------------------------------------------------------------------


def test_kill_owner_of_command_task(cluster, tmp_path):
    """kill -9 the owner of a running command: within TASK_LEASE + 5 s a
    stream on another replica ends failed/lost, a survivor says so and logs
    the takeover; the command's process does not outlive its daemon."""
    commands = tmp_path / "commands.json"
    commands.write_text(json.dumps({"commands": {
        "sleeper": {"argv": ["/bin/sleep", "30"], "timeout": "60s"}}}))
    os.chmod(commands, 0o600)
    group = cluster(3, env={"COMMANDS_FILE": str(commands), "WORKERS": "1"})
    r = http("POST", f"{group[0].url}/v1/tasks", {"kind": "command", "command": "sleeper"})
    assert r.status == 202, r
    tid = r.json()["id"]
    owner, _ = wait_owner(group, tid)
    watcher = group.others(owner)[0]
    sleepers = wait_for(lambda: [p for p, argv in children_of(owner.pid)
                                 if argv[:1] == ["/bin/sleep"]],
                        scaled(5), what="the owner's /bin/sleep")
    try:
        with SSEStream(task_url(watcher, tid, "/events"), timeout=scaled(10)) as s:
            assert s.status == 200, s.body
            owner.expected_exit = -signal.SIGKILL
            owner.signal(signal.SIGKILL)
            killed_at = time.monotonic()
            assert owner.wait_exit(scaled(5)) == -signal.SIGKILL
            budget = scaled(parse_duration(LEASE) + 5)
            end = s.read_until(lambda e: e.type == "end", timeout=budget)
            took = time.monotonic() - killed_at
        d = end.json()
        assert (d["status"], d["reason"]) == ("failed", "lost"), d
        assert took <= budget, f"end after {took:.1f}s"
        for survivor in group.others(owner):
            seen = wait_state(survivor, tid, ("failed",))
            assert seen["reason"] == "lost", seen
        takeover = wait_for(lambda: [e for sv in group.others(owner)
                                     for e in sv.logs("task taken over", task_id=tid)],
                            scaled(5), what="a 'task taken over' log line on a survivor")
        assert len(takeover) == 1 and takeover[0]["from_replica"] == owner.replica_id, takeover
        # PR_SET_PDEATHSIG: the command died with its daemon.
        wait_for(lambda: not any(alive(p) for p in sleepers), scaled(5),
                 what="the orphan sleep gone")
    finally:
        for p in sleepers:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_stale_owner_append_refused(cluster):
    """Freeze the owner (SIGSTOP) past its lease: the other replica takes the
    task over (failed/lost, or it goes on if ticker ever resumes); ids never
    repeat. Thawed, the old owner logs "lost ownership" and adds no event;
    it then stops cleanly."""
    group = cluster(2, env={"WORKERS": "1", "TASK_LEASE": LEASE})
    t = group[0].submit(count=200, interval_ms=100)
    owner, _ = wait_owner(group, t["id"])
    survivor = group.others(owner)[0]
    frozen = False
    try:
        with SSEStream(task_url(survivor, t["id"], "/events"), timeout=scaled(10)) as s:
            assert s.status == 200, s.body
            s.read_until(lambda e: e.type == "tick", timeout=scaled(5))
            owner.signal(signal.SIGSTOP)
            frozen = True
            deadline = time.monotonic() + scaled(parse_duration(LEASE) + 5)
            resumed = False
            while True:
                ev = s.next_event(max(0.001, deadline - time.monotonic()))
                assert ev is not None, f"stream ended without an end event: {s.events()[-5:]}"
                if ev.type == "end":
                    break
                if ev.type == "tick" and not resumed:
                    # A tick while the owner is frozen comes from a new
                    # owner: the task resumed elsewhere.
                    now = get_task(survivor, t["id"])
                    if now["attempt"] >= 2:
                        assert now["replica"] == survivor.replica_id, now
                        resumed = True
                        assert http("DELETE", task_url(survivor, t["id"])).status == 202
            live = s.events()
        end = live[-1].json()
        if resumed:
            assert end["status"] == "cancelled", end
        else:
            assert (end["status"], end["reason"]) == ("failed", "lost"), end
        assert_strictly_increasing(ids_of(live))
        final = wait_state(survivor, t["id"], ("failed", "cancelled"))
        assert final["events"] == int(live[-1].id), final

        owner.signal(signal.SIGCONT)
        frozen = False
        owner.wait_log("lost ownership", timeout=scaled(10), task_id=t["id"])
        assert owner.logs("lost ownership", task_id=t["id"])[0]["level"] == "warn"
        # Whatever the old owner tried to append after it woke up was
        # refused: the count stays what it was at the end, for a second.
        window = time.monotonic() + 1.0
        while time.monotonic() < window:
            now = get_task(survivor, t["id"])
            assert (now["state"], now["events"]) == (final["state"], final["events"]), now
            time.sleep(0.1)
        assert get_task(owner, t["id"])["events"] == final["events"]
        # The stored stream is the one the survivor's client saw.
        with SSEStream(task_url(survivor, t["id"], "/events"), timeout=scaled(10)) as replay:
            again = replay.read_all(scaled(10))
        assert [(e.id, e.type) for e in again] == [(e.id, e.type) for e in live if e.id is not None]
    finally:
        if frozen:
            owner.signal(signal.SIGCONT)
    assert owner.stop(timeout=owner.stop_deadline()) == 0


# --------------------------------------------------------------------------
# Redis down
# --------------------------------------------------------------------------


def test_redis_down_at_start(redis_servers, daemon):
    """REDIS_URL to a closed port: the daemon starts, its probes answer 200,
    POST answers 503 store_unavailable with Retry-After; once a redis-server
    listens there, POST succeeds and the task runs. (redis_servers comes
    first: its teardown runs after the daemon's.)"""
    port = closed_port()
    d = daemon(env={"REDIS_URL": f"redis://127.0.0.1:{port}/0", "REDIS_KEY_PREFIX": unique_prefix(),
                    "REPLICA_ID": "a", "TASK_LEASE": LEASE})
    # Adjust to what the daemon really logs about an unreachable store (an
    # error-level line must be declared here or teardown fails).
    d.expect_error("redis unavailable")
    assert d.healthz() == 200 and d.readyz() == 200
    body = {"kind": "ticker", "count": 2, "interval_ms": 10}
    r = http("POST", f"{d.url}/v1/tasks", body)
    assert_json_error(r, 503, "store_unavailable")
    assert r.headers.get("Retry-After", "").isdigit(), r.headers

    redis_servers(port=port)
    accepted = {}

    def submitted():
        r = http("POST", f"{d.url}/v1/tasks", body)
        if r.status == 202:
            accepted["t"] = r.json()
            return True
        assert_json_error(r, 503, "store_unavailable")
        return False

    wait_for(submitted, scaled(10), interval=0.1, what="POST 202 once redis is up")
    d.wait_log("redis connected", timeout=scaled(5))
    done = d.wait_task(accepted["t"]["id"], timeout=scaled(10))
    assert (done["state"], done["replica"], done["attempt"]) == ("succeeded", "a", 1), done
    assert d.healthz() == 200 and d.readyz() == 200
    # Stopped while its Redis is still there (the fixture stops Redis later).
    assert d.stop() == 0


def test_subscription_follows_readers(cluster, redis):
    """A replica subscribes to a task while it has readers of it, and only
    then: 20 readers on one replica make one subscription; when they have
    all left, the subscription goes; a new reader then gets the whole
    stream again, every event once."""
    group = cluster(2, env={"WORKERS": "1"})
    a, b = group
    count = 60
    t = a.submit(count=count, interval_ms=50)
    channel = f"{group.prefix}{{{t['id']}}}:live"

    def subscribers():
        reply = redis.command("PUBSUB", "NUMSUB", channel)
        return int(reply[1])

    streams = [SSEStream(task_url(b, t["id"], "/events"), timeout=scaled(10)) for _ in range(20)]
    try:
        for s in streams:
            assert s.status == 200, s.body
            s.read_until(lambda e: e.type == "tick", timeout=scaled(5))
        assert subscribers() == 1
    finally:
        for s in streams:
            s.close()
    wait_for(lambda: subscribers() == 0, scaled(5), what="the subscription gone with its readers")
    with SSEStream(task_url(b, t["id"], "/events"), timeout=scaled(15)) as s:
        assert s.status == 200, s.body
        assert subscribers() == 1
        check_complete_stream(s.read_all(scaled(15)), count)
    wait_for(lambda: subscribers() == 0, scaled(5), what="no subscription after the end")


def test_list_pages_and_filters(cluster):
    """GET /v1/tasks is the cluster's list, newest first, in pages joined
    by next_cursor (every task once), filtered by ?state=."""
    group = cluster(2)
    a, b = group
    ids = []
    for i in range(7):
        ids.append((a if i % 2 else b).submit(count=1, interval_ms=1)["id"])
    for tid in ids:
        a.wait_task(tid)
    long_one = a.submit(count=1000, interval_ms=50)["id"]
    wait_owner(group, long_one)
    seen, cursor = [], None
    while True:
        url = f"{b.url}/v1/tasks?limit=3" + (f"&cursor={cursor}" if cursor else "")
        r = http("GET", url)
        assert r.status == 200, r
        page = r.json()
        assert len(page["tasks"]) <= 3
        seen += [t["id"] for t in page["tasks"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == [long_one] + ids[::-1], seen
    running = http("GET", f"{a.url}/v1/tasks?state=running").json()["tasks"]
    assert [t["id"] for t in running] == [long_one], running
    done = http("GET", f"{a.url}/v1/tasks?state=succeeded&limit=100").json()["tasks"]
    assert [t["id"] for t in done] == ids[::-1], done
    assert http("GET", f"{a.url}/v1/tasks?cursor=nonsense").status == 400
    assert http("DELETE", task_url(b, long_one)).status == 202


def test_cluster_metrics_pass_promtool(cluster):
    """A cluster replica's scrape, with the Redis and cluster series, is what
    promtool accepts."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (scripts/deps.sh test installs prometheus)"
    a, b = cluster(2)
    t = a.submit(count=3, interval_ms=10)
    a.wait_task(t["id"])
    for d in (a, b):
        text = http("GET", d.admin_url + "/metrics").text
        for name in ("redis_up", "redis_connects_total", "redis_roundtrip_seconds_bucket",
                     "cluster_claims_total", "cluster_takeovers_total", "tasks_handed_off_total",
                     "task_events_unstored"):
            assert name in text, name
        proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=scaled(20))
        assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (
            proc.stdout + proc.stderr)
    claims = sum(scrape(d).value("cluster_claims_total") for d in (a, b))
    assert claims == 1, claims
