"""The stop sequence with live tasks and streams: drain lets running work
finish and every stream get its end; the deadline and a second signal cancel
what is left; nobody is left hanging."""

import signal
import time

from tshelpers import (Background, RawStream, SSEStream, assert_json_error, check_complete_stream,
                       http, scaled, wait_for)


def events_url(d, task_id):
    return f"{d.url}/v1/tasks/{task_id}/events"


def _read_all(url):
    with SSEStream(url, timeout=scaled(30)) as s:
        return s.read_all(scaled(60)), s.clean_end


def test_drain_with_live_streams_completes_everything(daemon):
    count = 30
    d = daemon({"GRACEFUL_SHUTDOWN_TIMEOUT": "60s"})
    t = d.submit(count=count, interval_ms=100)  # 3 s
    a = SSEStream(events_url(d, t["id"]))
    for _ in range(3):
        a.read_until(lambda e: e.type == "tick")

    d.signal(signal.SIGTERM)
    t_signal = time.monotonic()
    # Readiness drops at once; liveness stays.
    wait_for(lambda: d.readyz() == 503, scaled(0.5), interval=0.01, what="/readyz 503")
    assert d.healthz() == 200
    # New work is refused with a hint when to retry elsewhere.
    r = http("POST", d.url + "/v1/tasks", {"kind": "ticker", "count": 1})
    assert_json_error(r, 503)
    assert int(r.headers["Retry-After"]) > 0
    assert r.headers.get("Connection", "").lower() == "close"
    # Reads keep working.
    assert d.task(t["id"])["state"] == "running"
    # A client reconnecting to its task finds it: a new stream still opens
    # and runs to the end.
    b = Background(_read_all, events_url(d, t["id"]))

    # The open stream is told, without an id, and goes on to the end.
    events = a.read_all(scaled(20))
    a.close()
    assert a.clean_end
    draining = [e for e in a.events() if e.type == "draining"]
    assert len(draining) == 1, [e.type for e in a.events()]
    assert draining[0].id is None
    assert draining[0].json()["reason"] == "signal"
    check_complete_stream(a.events(), count, status="succeeded")
    assert events[-1].type == "end"

    b_events, b_clean = b.result(scaled(30))
    assert b_clean
    check_complete_stream(b_events, count, status="succeeded")
    assert [e.type for e in b_events].count("draining") == 1

    assert d.wait_exit(scaled(15)) == 0
    s = d.summary()
    assert s["reason"] == "signal" and s["signal"] == "SIGTERM"
    assert s["forced_cancellations"] == 0
    assert s["abandoned"] == 0
    assert s["streams_cut"] == 0
    assert 0 < s["duration_seconds"] <= time.monotonic() - t_signal + 0.5
    assert [f["status"] for f in d.logs("task finished", task_id=t["id"])] == ["succeeded"]


def test_deadline_cancels_running_task(daemon):
    d = daemon({"GRACEFUL_SHUTDOWN_TIMEOUT": "1s"})
    t = d.submit(count=100000, interval_ms=100)
    s = SSEStream(events_url(d, t["id"]))
    s.read_until(lambda e: e.type == "tick")
    m = d.metrics()
    assert m.value("task_forced_cancellations_total") == 0
    assert m.types["task_graceful_shutdown_duration_seconds"] == "histogram"

    t_signal = time.monotonic()
    d.signal(signal.SIGTERM)
    end = s.read_until(lambda e: e.type == "end", scaled(10))
    t_end = time.monotonic() - t_signal
    assert end.json()["status"] == "cancelled"
    assert end.json()["reason"] == "shutdown"
    ticks = [e for e in s.events() if e.type == "tick"]
    assert [int(e.id) for e in ticks] == list(range(1, len(ticks) + 1))
    assert end.id == str(len(ticks) + 1)
    assert 0.9 <= t_end <= scaled(1) + 2, t_end
    assert s.next_event(scaled(5)) is None and s.clean_end
    s.close()

    # The admin listener outlives the public one: scrape the counter if it
    # is still there, otherwise rely on the summary line.
    scraped = None
    try:
        scraped = d.metrics()
    except OSError:
        pass
    assert d.wait_exit(scaled(15)) == 0
    summary = d.summary()
    assert summary["forced_cancellations"] == 1
    assert summary["abandoned"] == 0
    assert 1.0 <= summary["duration_seconds"] <= scaled(1) + 6
    if scraped is not None:
        assert scraped.value("task_forced_cancellations_total") == 1
        assert scraped.value("tasks_finished_total", kind="ticker", status="cancelled") == 1
    assert d.logs("cancelling tasks still running")
    fin = d.logs("task finished", task_id=t["id"])
    assert [(f["status"], f["reason"]) for f in fin] == [("cancelled", "shutdown")]


def test_deadline_counts_from_the_signal_after_a_manual_drain(daemon):
    key = "k-deadline-1"
    d = daemon({"GRACEFUL_SHUTDOWN_TIMEOUT": "1500ms", "DRAIN_AUTH_KEY": key})
    t = d.submit(count=100000, interval_ms=100)
    s = SSEStream(events_url(d, t["id"]))
    s.read_until(lambda e: e.type == "tick")
    assert d.drain(key).status == 202
    # A manual drain never stops the process by itself.
    time.sleep(2)
    assert d.running()
    assert d.task(t["id"])["state"] == "running"
    t_signal = time.monotonic()
    d.signal(signal.SIGTERM)
    end = s.read_until(lambda e: e.type == "end", scaled(10))
    s.close()
    assert end.json()["reason"] == "shutdown"
    # The budget runs from the signal (the platform's grace period), so the
    # task still got its 1.5 s.
    assert time.monotonic() - t_signal >= 1.4
    assert d.wait_exit(scaled(15)) == 0
    assert d.summary()["reason"] == "manual"
    assert d.summary()["forced_cancellations"] == 1


def test_second_signal_forces_at_once(daemon):
    d = daemon({"GRACEFUL_SHUTDOWN_TIMEOUT": "60s"})
    t = d.submit(count=100000, interval_ms=50)
    s = SSEStream(events_url(d, t["id"]))
    s.read_until(lambda e: e.type == "tick")
    d.signal(signal.SIGTERM)
    s.read_until(lambda e: e.type == "draining")
    # Still running and streaming after the first signal.
    n0 = len(s.events())
    time.sleep(0.5)
    s.read_until(lambda e: e.type == "tick")
    assert d.running()
    t_force = time.monotonic()
    d.signal(signal.SIGTERM)
    end = s.read_until(lambda e: e.type == "end", scaled(5))
    assert time.monotonic() - t_force < scaled(2)
    assert end.json()["status"] == "cancelled" and end.json()["reason"] == "shutdown"
    assert len(s.events()) > n0
    s.close()
    assert d.wait_exit(scaled(10)) == 0
    summary = d.summary()
    assert summary["forced_cancellations"] == 1
    assert time.monotonic() - t_force < scaled(8)


def test_queued_tasks_at_the_deadline_end_too(daemon):
    d = daemon({"GRACEFUL_SHUTDOWN_TIMEOUT": "1s", "WORKERS": "1"})
    a = d.submit(count=100000, interval_ms=100)
    d.wait_task(a["id"], states=("running",))
    b = d.submit(count=3, interval_ms=0)
    assert d.task(b["id"])["state"] == "queued"
    sa = SSEStream(events_url(d, a["id"]))
    sb = SSEStream(events_url(d, b["id"]))
    d.signal(signal.SIGTERM)
    ea = sa.read_until(lambda e: e.type == "end", scaled(10))
    eb = sb.read_until(lambda e: e.type == "end", scaled(10))
    sa.close()
    sb.close()
    assert ea.json()["status"] == "cancelled" and ea.json()["reason"] == "shutdown"
    assert eb.json()["status"] == "cancelled"
    assert d.wait_exit(scaled(15)) == 0
    assert d.summary()["forced_cancellations"] == 2


def test_manual_drain_streams_get_draining_and_tasks_run_on(daemon):
    key = "k-manual-2"
    d = daemon({"DRAIN_AUTH_KEY": key})
    t = d.submit(count=10, interval_ms=50)
    with SSEStream(events_url(d, t["id"])) as s:
        s.read_until(lambda e: e.type == "tick")
        assert d.drain(key).status == 202
        ev = s.read_until(lambda e: e.type == "draining")
        assert ev.id is None and ev.json()["reason"] == "manual"
        check_complete_stream(s.read_all(), 10)
    # A stream opened while draining also says so, before the events.
    with SSEStream(events_url(d, t["id"])) as s2:
        events = s2.read_all()
    assert [e.type for e in events].count("draining") == 1
    check_complete_stream(events, 10)
    assert d.running() and d.readyz() == 503


def test_client_not_reading_at_shutdown_is_cut_within_bound(daemon):
    d = daemon({"EVENT_LOG_EVENTS": "100", "EVENT_LOG_BYTES": "16M"})
    t = d.submit(count=200, interval_ms=0, payload_bytes=65536)
    d.wait_task(t["id"])
    stuck = RawStream("127.0.0.1", d.port, f"/v1/tasks/{t['id']}/events")
    try:
        wait_for(lambda: d.metrics().value("sse_streams_active") == 1, scaled(5), what="stream")
        t0 = time.monotonic()
        assert d.stop(timeout=scaled(20)) == 0
        # The stop waits a bounded time for streams, then cuts them.
        assert time.monotonic() - t0 < scaled(8)
        assert d.summary()["streams_cut"] == 1
    finally:
        stuck.close()
