"""Cluster mode: a resumable task survives the replica that runs it.

- kill -9 of the owner of a ticker (resumable, its checkpoint is the last
  tick): when the lease lapses another replica resumes it, a reader on a
  third replica sees one `resumed` event {"attempt": 2, "from_replica": ...}
  and then the ticks after the last one stored: every tick once, every id
  once and in order, one `end` (succeeded).
- A drain that reaches its deadline hands a running ticker off instead of
  cancelling it: the draining replica's stream gets the draining notice and
  then ends without an `end`; the client resumes on another replica with its
  Last-Event-ID; the shutdown summary counts the hand-off.
- A command marked "restartable" runs again from its start on another
  replica after its owner dies; one that is not ends failed/lost
  (test_cluster.py).
"""

import json
import os
import signal

import pytest

from cluster import (REDIS_SERVER, cluster, have_redis, redis, redis_server,  # noqa: F401
                     wait_owner)
from tshelpers import SSEStream, http, parse_duration, scaled, wait_for

pytestmark = pytest.mark.skipif(not have_redis(), reason=f"redis-server not installed at {REDIS_SERVER}")

LEASE = "2s"


def events_url(d, task_id):
    return f"{d.url}/v1/tasks/{task_id}/events"


def check_resumed_ticker(events, count, from_replica, attempt=2):
    """Ids 1..end once and in order; ticks 1..count once and in order; one
    `resumed` (attempt, from_replica) between them; `end` succeeded last."""
    task_events = [e for e in events if e.id is not None]
    ids = [int(e.id) for e in task_events]
    assert ids == list(range(1, len(ids) + 1)), f"ids not 1..n once in order: {ids}"
    resumed = [e for e in task_events if e.type == "resumed"]
    assert len(resumed) == 1, [e.type for e in task_events]
    assert resumed[0].json() == {"attempt": attempt, "from_replica": from_replica}, resumed[0].data
    ticks = [e.json()["n"] for e in task_events if e.type == "tick"]
    assert ticks == list(range(1, count + 1)), f"ticks not 1..{count} once in order: {ticks}"
    assert [e.type for e in task_events].count("end") == 1
    assert task_events[-1].type == "end", task_events[-3:]
    end = task_events[-1].json()
    assert end["status"] == "succeeded", end
    return resumed[0]


def test_kill_owner_of_resumable_ticker(cluster):
    """The owner dies mid-task: the task completes elsewhere, its reader
    (on a replica that is neither) gets every tick once and one `resumed`."""
    group = cluster(3, env={"WORKERS": "1"})
    count = 30
    t = group[0].submit(count=count, interval_ms=100)
    owner, _ = wait_owner(group, t["id"])
    reader = [d for d in group if d is not owner][0]
    with SSEStream(events_url(reader, t["id"]), timeout=scaled(20)) as s:
        assert s.status == 200, s.body
        s.read_until(lambda e: e.type == "tick" and e.json()["n"] >= 5, timeout=scaled(10))
        owner.expected_exit = -signal.SIGKILL
        owner.signal(signal.SIGKILL)
        assert owner.wait_exit(scaled(5)) == -signal.SIGKILL
        s.read_until(lambda e: e.type == "end",
                     timeout=scaled(parse_duration(LEASE) + 5 + count * 0.1))
        events = s.events()
    resumed = check_resumed_ticker(events, count, owner.replica_id)
    done = reader.wait_task(t["id"])
    assert done["state"] == "succeeded" and done["attempt"] == 2, done
    assert done["replica"] != owner.replica_id and done["events"] == int(events[-1].id), done
    assert int(resumed.id) > 5
    # The replay is the same stream, id for id, from any replica.
    for d in group.alive():
        with SSEStream(events_url(d, t["id"]), timeout=scaled(10)) as again:
            replay = again.read_all(scaled(10))
        assert [(e.id, e.type, e.data) for e in replay] == \
            [(e.id, e.type, e.data) for e in events if e.id is not None]


def test_drain_hands_off_resumable(cluster):
    """SIGTERM to the owner with a 1 s grace: at the deadline the ticker goes
    back to the queue, not to `cancelled`. The stream on the draining owner
    ends without `end`; resumed on the other replica it goes on to the end;
    the summary says handed_off 1; exit 0."""
    group = cluster(2, env={"WORKERS": "1", "GRACEFUL_SHUTDOWN_TIMEOUT": "1s"})
    count = 40
    t = group[0].submit(count=count, interval_ms=100)
    owner, _ = wait_owner(group, t["id"])
    other = group.others(owner)[0]
    with SSEStream(events_url(owner, t["id"]), timeout=scaled(20)) as s:
        assert s.status == 200, s.body
        s.read_until(lambda e: e.type == "tick", timeout=scaled(5))
        owner.signal(signal.SIGTERM)
        s.read_all(scaled(15))
        first = s.events()
        assert s.eof and s.clean_end, s.error
    assert owner.wait_exit(owner.stop_deadline()) == 0
    summary = owner.summary()
    assert summary["handed_off"] == 1 and summary["forced_cancellations"] == 0, summary
    assert owner.logs("task handed off", task_id=t["id"]), owner.raw_stderr()[-2000:]
    types = [e.type for e in first]
    assert "draining" in types and "end" not in types, types
    last = [e for e in first if e.id is not None][-1]
    assert last.type == "tick", last

    with SSEStream(events_url(other, t["id"]), last_event_id=last.id, timeout=scaled(20)) as s:
        assert s.status == 200, s.body
        rest = s.read_all(scaled(15))
    check_resumed_ticker(first + rest, count, owner.replica_id)
    done = other.wait_task(t["id"])
    assert (done["state"], done["replica"], done["attempt"]) == ("succeeded", other.replica_id, 2)


def test_restartable_command_runs_again(cluster, tmp_path):
    """kill -9 of the owner of a restartable command: another replica runs it
    again from the start, after a `resumed` event, and it succeeds."""
    commands = tmp_path / "commands.json"
    commands.write_text(json.dumps({"commands": {
        "steps": {"argv": ["/bin/sh", "-c", "for i in 1 2 3 4 5 6; do echo step $i; sleep 0.3; done"],
                  "timeout": "60s", "restartable": True}}}))
    os.chmod(commands, 0o600)
    group = cluster(3, env={"COMMANDS_FILE": str(commands), "WORKERS": "1"})
    r = http("POST", f"{group[0].url}/v1/tasks", {"kind": "command", "command": "steps"})
    assert r.status == 202, r
    tid = r.json()["id"]
    owner, _ = wait_owner(group, tid)
    reader = group.others(owner)[0]
    listed = http("GET", f"{reader.url}/v1/commands").json()["commands"]
    assert [c.get("restartable") for c in listed if c["name"] == "steps"] == [True], listed
    with SSEStream(events_url(reader, tid), timeout=scaled(20)) as s:
        assert s.status == 200, s.body
        s.read_until(lambda e: e.type == "output", timeout=scaled(5))
        owner.expected_exit = -signal.SIGKILL
        owner.signal(signal.SIGKILL)
        s.read_until(lambda e: e.type == "end", timeout=scaled(parse_duration(LEASE) + 10))
        events = [e for e in s.events() if e.id is not None]
    ids = [int(e.id) for e in events]
    assert ids == list(range(1, len(ids) + 1)), ids
    kinds = [e.type for e in events]
    assert kinds.count("resumed") == 1 and kinds[-1] == "end", kinds
    after = kinds[kinds.index("resumed") + 1:]
    lines = [e.json()["line"] for e in events[kinds.index("resumed") + 1:] if e.type == "output"]
    assert lines == [f"step {i}" for i in range(1, 7)], (lines, after)
    assert events[-1].json()["status"] == "succeeded", events[-1].data
