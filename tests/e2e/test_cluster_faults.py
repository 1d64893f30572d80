"""Cluster mode when Redis misbehaves (docs/cluster.md, "Failures").

- redis-server frozen (SIGSTOP, or CLIENT PAUSE ALL) under a running ticker: the owner's own
  readers keep getting ticks (the events wait in its log and are stored
  when Redis is back, task_events_unstored counts them), a POST answers 503
  store_unavailable with Retry-After, both replicas stay ready; after
  SIGCONT a reader on the other replica and the owner's reader end with
  every tick once and in order.
- A replica behind a proxy of our own that blackholes, resets and delays
  its Redis connections (no iptables: loopback only).
- Every client connection killed (CLIENT KILL, commands and subscriptions):
  the replicas reconnect, subscribe again and backfill; no event is lost or
  doubled for any reader.
"""

import threading
import time

import pytest

from cluster import (REDIS_SERVER, FaultProxy, cluster, have_redis, redis,  # noqa: F401
                     redis_server, wait_owner)
from tshelpers import SSEStream, assert_json_error, check_complete_stream, http, scaled, scrape

pytestmark = pytest.mark.skipif(not have_redis(), reason=f"redis-server not installed at {REDIS_SERVER}")


def events_url(d, task_id):
    return f"{d.url}/v1/tasks/{task_id}/events"


class Follower(threading.Thread):
    """Reads one stream to its end in the background."""

    def __init__(self, url, timeout):
        super().__init__(daemon=True)
        self.stream = SSEStream(url, timeout=timeout)
        self.timeout = timeout
        self.events = None
        self.ticks = threading.Semaphore(0)

    def run(self):
        s = self.stream
        while True:
            ev = s.next_event(self.timeout)
            if ev is None or ev.type == "end":
                break
            if ev.type == "tick":
                self.ticks.release()
        self.events = s.events()
        s.close()

    def wait_ticks(self, n, timeout):
        for _ in range(n):
            assert self.ticks.acquire(timeout=timeout), "no tick in time"


@pytest.mark.parametrize("freeze", ["sigstop", "client-pause"])
def test_redis_frozen_while_running(cluster, redis, freeze):
    # A lease far longer than the freeze: nobody takes the task over.
    group = cluster(2, env={"WORKERS": "1", "TASK_LEASE": "30s", "REDIS_TIMEOUT": "300ms"})
    count = 40
    t = group[0].submit(count=count, interval_ms=50)
    owner, _ = wait_owner(group, t["id"])
    other = group.others(owner)[0]
    local = Follower(events_url(owner, t["id"]), scaled(30))
    remote = Follower(events_url(other, t["id"]), scaled(30))
    assert local.stream.status == 200 and remote.stream.status == 200
    local.start()
    remote.start()
    local.wait_ticks(3, scaled(5))

    if freeze == "sigstop":
        redis.pause()
    else:
        # Every client's commands wait (the replicas' own and the next
        # connections' set-up, ours too: UNPAUSE would wait as well) until
        # the pause runs out.
        redis.command("CLIENT", "PAUSE", str(int(scaled(4) * 1000)), "ALL")
    try:
        # The owner's reader goes on while Redis is away.
        local.wait_ticks(8, scaled(10))
        unstored = scrape(owner).value("task_events_unstored")
        assert unstored > 0, unstored
        r = http("POST", f"{other.url}/v1/tasks", {"kind": "ticker", "count": 1})
        assert_json_error(r, 503, "store_unavailable")
        assert r.headers.get("Retry-After"), r.headers
        assert owner.readyz() == 200 and other.readyz() == 200
    finally:
        if freeze == "sigstop":
            redis.resume()

    local.join(scaled(30))
    remote.join(scaled(30))
    assert local.events is not None and remote.events is not None
    check_complete_stream(local.events, count)
    check_complete_stream(remote.events, count)
    assert scrape(owner).value("task_events_unstored") == 0
    done = other.wait_task(t["id"])
    assert done["state"] == "succeeded" and done["attempt"] == 1, done


def test_redis_kills_every_connection(cluster, redis):
    group = cluster(3, env={"WORKERS": "2"})
    count = 30
    tasks = [group[i % 3].submit(count=count, interval_ms=50) for i in range(3)]
    followers = [Follower(events_url(d, t["id"]), scaled(30)) for t in tasks for d in group]
    for f in followers:
        assert f.stream.status == 200
        f.start()
    followers[0].wait_ticks(5, scaled(5))
    for kind in ("normal", "pubsub"):
        redis.command("CLIENT", "KILL", "TYPE", kind)
    followers[0].wait_ticks(5, scaled(10))
    redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    for f in followers:
        f.join(scaled(30))
        assert f.events is not None, "a reader did not get its end"
        check_complete_stream(f.events, count)
    for t in tasks:
        done = group[0].wait_task(t["id"])
        assert done["state"] == "succeeded", done
    assert sum(scrape(d).value("redis_connects_total") for d in group) > 3 * 3


def test_redis_restarted_without_its_data(cluster, redis):
    """redis-server restarted empty under a running ticker: the owner sees
    the new epoch and puts the task back (meta, queue entry, the events its
    log holds); its events wait meanwhile; readers on both replicas end with
    every tick once. A task that had finished is gone (404), and says so."""
    group = cluster(2, env={"WORKERS": "1", "TASK_LEASE": "2s"})
    finished = group[0].submit(count=1, interval_ms=10)
    group[0].wait_task(finished["id"])
    count = 40
    t = group[0].submit(count=count, interval_ms=50)
    owner, _ = wait_owner(group, t["id"])
    other = group.others(owner)[0]
    local = Follower(events_url(owner, t["id"]), scaled(30))
    remote = Follower(events_url(other, t["id"]), scaled(30))
    assert local.stream.status == 200 and remote.stream.status == 200
    local.start()
    remote.start()
    remote.wait_ticks(5, scaled(5))
    redis.restart()
    local.join(scaled(30))
    remote.join(scaled(30))
    assert local.events is not None and remote.events is not None
    check_complete_stream(local.events, count)
    check_complete_stream(remote.events, count)
    owner.wait_log("task put back into redis", task_id=t["id"])
    owner.expect_error("redis lost its data")
    other.expect_error("redis lost its data")
    done = other.wait_task(t["id"])
    assert done["state"] == "succeeded" and done["replica"] == owner.replica_id, done
    # The replay from Redis is the stream the readers saw.
    with SSEStream(events_url(other, t["id"]), timeout=scaled(10)) as again:
        check_complete_stream(again.read_all(scaled(10)), count)
    for d in group:
        assert http("GET", f"{d.url}/v1/tasks/{finished['id']}").status == 404


def test_redis_behind_a_faulty_network(cluster, redis):
    """Replica A reaches Redis through a proxy that blackholes, resets and
    delays; B reaches it directly. During a blackhole A's own reader keeps
    getting ticks and A answers POST 503 at once after the first timeout
    while B accepts it; resets and delays cost nothing either; every reader
    ends with every tick once."""
    proxy = FaultProxy(redis.port)
    try:
        env = {"WORKERS": "1", "TASK_LEASE": "30s", "REDIS_TIMEOUT": "300ms"}
        a_group = cluster(1, env=dict(env, REPLICA_ID="a"), redis_url=proxy.url)
        a = a_group[0]
        count = 60
        t = a.submit(count=count, interval_ms=50)
        wait_owner(a_group, t["id"])  # A's: B starts once A has claimed it
        b = cluster(1, env=dict(env, REPLICA_ID="b"), prefix=a_group.prefix)[0]
        local = Follower(events_url(a, t["id"]), scaled(40))
        remote = Follower(events_url(b, t["id"]), scaled(40))
        assert local.stream.status == 200 and remote.stream.status == 200
        local.start()
        remote.start()
        local.wait_ticks(3, scaled(5))

        proxy.hold()
        try:
            local.wait_ticks(8, scaled(10))
            started = time.monotonic()
            r = http("POST", f"{a.url}/v1/tasks", {"kind": "ticker", "count": 1})
            assert_json_error(r, 503, "store_unavailable")
            assert time.monotonic() - started < scaled(1.5)
            assert http("POST", f"{b.url}/v1/tasks", {"kind": "ticker", "count": 1}).status == 202
            assert a.readyz() == 200
        finally:
            proxy.release()
        local.wait_ticks(5, scaled(10))
        proxy.reset()
        local.wait_ticks(5, scaled(10))
        proxy.delay(0.02)
        local.wait_ticks(5, scaled(10))
        proxy.delay(0)

        local.join(scaled(40))
        remote.join(scaled(40))
        assert local.events is not None and remote.events is not None
        check_complete_stream(local.events, count)
        check_complete_stream(remote.events, count)
        assert proxy.accepted > 1  # the reset made A connect again
    finally:
        proxy.close()


def test_outage_longer_than_the_log_fails_the_task(cluster, redis):
    """Events wait for Redis only as long as the log can hold them: past
    EVENT_LOG_EVENTS the emit fails and so does the task, with a reason;
    its end is stored once Redis is back and every replica reports it."""
    group = cluster(2, env={"WORKERS": "1", "TASK_LEASE": "30s", "REDIS_TIMEOUT": "300ms",
                            "EVENT_LOG_EVENTS": "10"})
    t = group[0].submit(count=1000, interval_ms=10)
    owner, _ = wait_owner(group, t["id"])
    other = group.others(owner)[0]
    local = Follower(events_url(owner, t["id"]), scaled(30))
    assert local.stream.status == 200
    local.start()
    local.wait_ticks(2, scaled(5))
    redis.pause()
    try:
        owner.wait_log("task ended while the store is unavailable; waiting", timeout=scaled(10),
                       task_id=t["id"])
    finally:
        redis.resume()
    local.join(scaled(30))
    assert local.events is not None
    end = local.events[-1]
    assert end.type == "end" and end.json()["status"] == "failed", end
    assert end.json()["reason"] == "could not emit an event", end.data
    for d in group:
        seen = d.wait_task(t["id"])
        assert (seen["state"], seen["reason"]) == ("failed", "could not emit an event"), seen
    with SSEStream(events_url(other, t["id"]), last_event_id=int(end.id) - 1,
                   timeout=scaled(10)) as s:
        tail = s.read_all(scaled(10))
    assert [(e.id, e.type) for e in tail] == [(end.id, "end")], tail
