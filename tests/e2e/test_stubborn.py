"""A C task that ignores cancellation (tests/e2e/progs/stubborn.c, built as
ts_stubborn next to taskstreamd): at the shutdown deadline it is cancelled,
it does not return, and after KILL_GRACE plus the 2 s finish margin it is
abandoned: its stream still gets `end` (cancelled, shutdown), the summary
counts it, an error line is logged, and the host frees the server and exits
0 without waiting for the thread (docs/operations.md, "Finish"): the worker is
detached, not joined, and under ASan nothing leaks (the task stays reachable
from the thread that still runs it)."""

import os
import signal
import time

import pytest

from conftest import Daemon, base_env
from tshelpers import SSEStream, http, scaled

GRACE_S = 1.0
KILL_GRACE_S = 1.0
FINISH_MARGIN_S = 2.0  # src/server.c FINISH_MARGIN_NS
BOUND_S = 5.0  # streams flush, the listeners close, the process exits


def stubborn_binary(binary):
    build = os.environ.get("TS_BUILD_DIR") or os.path.dirname(binary)
    return os.path.join(build, "ts_stubborn")


@pytest.fixture
def stubborn(binary, workdir):
    path = stubborn_binary(binary)
    if not os.access(path, os.X_OK):
        pytest.fail(f"ts_stubborn is not built next to the daemon: {path}")
    started = []

    def start(env=None):
        extra = {"GRACEFUL_SHUTDOWN_TIMEOUT": f"{GRACE_S:g}s", "KILL_GRACE": f"{KILL_GRACE_S:g}s"}
        extra.update(env or {})
        d = Daemon(path, base_env(extra), (),
                   os.path.join(workdir, f"stubborn.{len(started)}.stderr"))
        started.append(d)
        d.wait_listening(scaled(15))
        return d

    yield start
    problems = [p for d in started for p in d.finish()]
    assert not problems, problems


def submit(d, seconds):
    r = http("POST", d.url + "/v1/tasks", {"kind": "stubborn", "seconds": seconds})
    assert r.status == 202, r
    return r.json()


def test_task_ignoring_cancellation_is_abandoned_and_process_exits(stubborn):
    d = stubborn()
    d.expect_error("tasks ignored cancellation and were abandoned")
    task = submit(d, 60)
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events", timeout=scaled(30)) as s:
        first = s.next_event(scaled(10))
        assert first is not None and first.type == "started", first
        assert first.json() == {"seconds": 60}
        sent = time.monotonic()
        d.signal(signal.SIGTERM)
        events = s.read_all(GRACE_S + KILL_GRACE_S + FINISH_MARGIN_S + scaled(BOUND_S))
        ended = time.monotonic()
    assert events[-1].type == "end", events
    assert events[-1].json() == {"status": "cancelled", "reason": "shutdown", "exit_code": 0}, \
        events[-1].json()
    # The end came from abandonment: only after the deadline, KILL_GRACE and
    # the margin, since run() never returned.
    assert ended - sent >= 0.9 * (GRACE_S + KILL_GRACE_S + FINISH_MARGIN_S), ended - sent

    limit = GRACE_S + KILL_GRACE_S + FINISH_MARGIN_S + scaled(BOUND_S)
    assert d.wait_exit(max(0.1, limit - (time.monotonic() - sent))) == 0
    took = time.monotonic() - sent
    assert took <= limit, f"exited {took:.1f}s after SIGTERM, limit {limit:.1f}s"

    summary = d.summary()
    assert summary["abandoned"] == 1, summary
    assert summary["forced_cancellations"] == 1, summary
    assert summary["reason"] == "signal" and summary["signal"] == "SIGTERM", summary
    errors = [e for e in d.logs() if e.get("level") == "error"]
    assert [e["msg"] for e in errors] == ["tasks ignored cancellation and were abandoned"], errors
    assert errors[0]["count"] == 1


def test_stubborn_task_that_finishes_in_time_is_not_abandoned(stubborn):
    """The same host with a task that ends before the deadline: nothing is
    abandoned and the host frees the server as usual."""
    d = stubborn()
    task = submit(d, 0)
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        events = s.read_all(scaled(10))
    assert [e.type for e in events] == ["started", "end"], events
    assert events[-1].json()["status"] == "succeeded"
    assert d.stop(timeout=scaled(15)) == 0
    summary = d.summary()
    assert summary["abandoned"] == 0 and summary["forced_cancellations"] == 0, summary
