"""The embedding example (examples/embed_countdown.c): a program of its own
that registers a task kind, runs the server without taskstreamd's main.c, and
drains it on SIGTERM through the public API."""

import os
import signal

import pytest

from conftest import Daemon, base_env
from tshelpers import SSEStream, http, scaled


@pytest.fixture
def example(binary, workdir):
    path = os.path.join(os.path.dirname(binary), "embed_countdown")
    if not os.access(path, os.X_OK):
        pytest.fail(f"the example is not built next to the daemon: {path}")
    started = []

    def start(env=None):
        d = Daemon(path, base_env(env), (), os.path.join(workdir, f"example.{len(started)}.stderr"))
        started.append(d)
        d.wait_listening(scaled(10))
        return d

    yield start
    problems = [p for d in started for p in d.finish()]
    assert not problems, problems


def submit(d, body):
    return http("POST", d.url + "/v1/tasks", body)


def test_own_kind_runs_and_streams(example):
    d = example()
    r = submit(d, {"kind": "countdown", "from": 5})
    assert r.status == 202, r
    task = r.json()
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        events = s.read_all(scaled(10))
    counts = [e.json() for e in events if e.type == "count"]
    assert [c["remaining"] for c in counts] == [5, 4, 3, 2, 1]
    assert [int(e.id) for e in events if e.id] == list(range(1, 7))
    assert events[-1].type == "end"
    assert events[-1].json() == {"status": "succeeded", "reason": None, "exit_code": 0}


def test_own_kind_validates_and_fails(example):
    d = example()
    r = submit(d, {"kind": "countdown", "from": 0})
    assert r.status == 422
    assert "from" in r.json()["message"]
    # The built-in kinds are there too.
    assert submit(d, {"kind": "ticker", "count": 1, "interval_ms": 0}).status == 202
    task = submit(d, {"kind": "countdown", "from": 14}).json()
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        events = s.read_all(scaled(10))
    assert events[-1].json() == {"status": "failed", "reason": "unlucky", "exit_code": 13}


def test_host_drains_through_the_public_api(example):
    d = example({"GRACEFUL_SHUTDOWN_TIMEOUT": "10s"})
    task = submit(d, {"kind": "countdown", "from": 12}).json()  # 13 would fail
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        s.next_event(scaled(5))
        d.signal(signal.SIGTERM)
        events = s.read_all(scaled(15))
    assert any(e.type == "draining" for e in events)
    assert events[-1].json()["status"] == "succeeded", "the running task was waited for"
    assert d.wait_exit(scaled(15)) == 0
    assert b"stopped after" in d._stdout
    assert b"0 forced" in d._stdout
