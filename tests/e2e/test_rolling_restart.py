"""A rolling restart under load loses nothing (cluster mode).

Three replicas share a redis-server; 30 tickers of mixed length (some much
longer than the 2 s grace period) have 10 readers each, 300 in all. The
replicas are replaced one at a time as a Deployment's surge does it: a fresh
replica starts and becomes ready, then the old one leaves the endpoints and
gets SIGTERM. A reader whose stream ends or breaks reconnects, with its
Last-Event-ID, to a replica picked at random among the ready ones, which is
what a Service's endpoints give a client.

Every reader must end with every event of its task exactly once and in
order (ids 1..end without a hole or a repeat, every tick once), exactly one
`end` (succeeded: a ticker resumes, it is never lost); no reader may see a
404 or a 5xx; every old replica exits 0; every task ends exactly once.
"""

import random
import signal
import threading
import time

import pytest

from cluster import REDIS_SERVER, cluster, have_redis, redis, redis_server  # noqa: F401
from tshelpers import SSEStream, http, scaled

pytestmark = pytest.mark.skipif(not have_redis(), reason=f"redis-server not installed at {REDIS_SERVER}")

TASKS = 30
READERS_PER_TASK = 10
GRACE = "2s"
LEASE = "2s"
# Ticks of 100 ms: 1 s, 3 s and 8 s of work; the 8 s ones outlive a grace.
COUNTS = (10, 30, 80)


class Endpoints:
    """The ready replicas, as a Service would list them."""

    def __init__(self, replicas):
        self._lock = threading.Lock()
        self._ready = list(replicas)

    def add(self, d):
        with self._lock:
            self._ready.append(d)

    def remove(self, d):
        with self._lock:
            self._ready.remove(d)

    def pick(self):
        with self._lock:
            return random.choice(self._ready)


class Reader(threading.Thread):
    def __init__(self, endpoints, task_id, deadline):
        super().__init__(daemon=True)
        self.endpoints = endpoints
        self.task_id = task_id
        self.deadline = deadline
        self.events = []  # every event with an id, in arrival order
        self.bad = []  # statuses a client must never see
        self.connects = 0
        self.ended = False

    def run(self):
        last = None
        while not self.ended and time.monotonic() < self.deadline:
            d = self.endpoints.pick()
            try:
                s = SSEStream(f"{d.url}/v1/tasks/{self.task_id}/events", last_event_id=last,
                              timeout=max(0.1, self.deadline - time.monotonic()))
            except OSError:
                continue  # it exited between the pick and the connect
            self.connects += 1
            with s:
                if s.status != 200:
                    self.bad.append((d.replica_id, s.status, s.body[:200]))
                    continue
                while time.monotonic() < self.deadline:
                    try:
                        ev = s.next_event(max(0.01, self.deadline - time.monotonic()))
                    except (TimeoutError, OSError):
                        break
                    if ev is None:
                        break
                    if ev.id is None:
                        continue
                    self.events.append(ev)
                    last = ev.id
                    if ev.type == "end":
                        self.ended = True
                        break


def check_reader(r, count):
    ids = [int(e.id) for e in r.events]
    assert ids == list(range(1, len(ids) + 1)), f"task {r.task_id}: ids {ids}"
    ticks = [e.json()["n"] for e in r.events if e.type == "tick"]
    assert ticks == list(range(1, count + 1)), f"task {r.task_id}: ticks {ticks}"
    types = [e.type for e in r.events]
    assert types.count("end") == 1 and types[-1] == "end", (r.task_id, types[-5:])
    assert set(types) <= {"tick", "resumed", "end"}, set(types)
    end = r.events[-1].json()
    assert end["status"] == "succeeded", (r.task_id, end)


def test_rolling_restart_under_load(cluster, daemon, redis):
    env = {"WORKERS": "4", "GRACEFUL_SHUTDOWN_TIMEOUT": GRACE, "TASK_LEASE": LEASE}
    group = cluster(3, env=env)
    endpoints = Endpoints(group)

    tasks = []
    for i in range(TASKS):
        count = COUNTS[i % len(COUNTS)]
        d = endpoints.pick()
        r = http("POST", f"{d.url}/v1/tasks",
                 {"kind": "ticker", "count": count, "interval_ms": 100})
        assert r.status == 202, r
        tasks.append((r.json()["id"], count))

    deadline = time.monotonic() + scaled(90)
    readers = [Reader(endpoints, tid, deadline) for tid, _ in tasks for _ in range(READERS_PER_TASK)]
    for r in readers:
        r.start()

    # Replace a, b, c by d, e, f, one at a time: the new one first.
    surge_env = dict(env, REDIS_URL=group.redis_url, REDIS_KEY_PREFIX=group.prefix)
    for old, rid in zip(list(group), "def"):
        new = daemon(env=dict(surge_env, REPLICA_ID=rid))
        new.replica_id = rid
        assert new.readyz() == 200
        endpoints.add(new)
        endpoints.remove(old)
        old.signal(signal.SIGTERM)
        assert old.wait_exit(old.stop_deadline()) == 0, old.raw_stderr()[-3000:]
        group.append(new)

    for r in readers:
        r.join(max(0.1, deadline - time.monotonic()))
    stuck = [r.task_id for r in readers if r.is_alive() or not r.ended]
    assert not stuck, f"{len(stuck)} readers did not get their end: tasks {sorted(set(stuck))[:5]}"
    bad = [b for r in readers for b in r.bad]
    assert not bad, f"readers saw {bad[:5]}"
    counts = dict(tasks)
    for r in readers:
        check_reader(r, counts[r.task_id])

    # Each task ended once: the same end, with the same id, for all its
    # readers and in the store.
    survivor = group[-1]
    for tid, count in tasks:
        ends = {(e.id, e.data) for r in readers if r.task_id == tid for e in r.events
                if e.type == "end"}
        assert len(ends) == 1, (tid, ends)
        t = http("GET", f"{survivor.url}/v1/tasks/{tid}").json()
        assert t["state"] == "succeeded" and t["events"] == int(next(iter(ends))[0]), t

    # Nothing is left in the queue: every entry was acknowledged and deleted.
    assert redis.command("XLEN", group.prefix + "queue") == 0
    assert redis.command("XPENDING", group.prefix + "queue", "workers")[0] == 0

    handed = sum(d.summary()["handed_off"] for d in group[:3])
    resumed = sum(1 for r in readers for e in r.events if e.type == "resumed")
    # The 8 s tickers outlive a 2 s grace: some were handed off and resumed.
    assert handed > 0 and resumed > 0, (handed, resumed)
    reconnects = sum(r.connects for r in readers) - len(readers)
    print(f"\n[rolling restart] {len(readers)} readers, {reconnects} reconnects, "
          f"{handed} hand-offs, {resumed} resumed events seen")
