"""The event stream: framing, fan-out to many readers, resume, gaps, 204 after
the end, heartbeats, cancellation, slow and dead consumers."""

import json
import random
import socket
import struct
import time

import pytest

from tshelpers import (SANITIZE, Background, RawStream, SSEStream, check_complete_stream,
                       curl_stream, http, parse_sse_bytes, scaled, split_response, wait_for)


def events_url(d, task_id, query=""):
    return f"{d.url}/v1/tasks/{task_id}/events{query}"


def test_stream_framing_and_headers(daemon):
    d = daemon({"SSE_RETRY_MS": "1234"})
    t = d.submit(count=5, interval_ms=20)
    with SSEStream(events_url(d, t["id"])) as s:
        assert s.status == 200
        assert s.headers["Content-Type"].split(";")[0].strip() == "text/event-stream"
        assert s.headers["Cache-Control"] == "no-cache"
        assert s.headers["X-Accel-Buffering"] == "no"
        events = s.read_all()
        assert s.clean_end, f"the response did not end cleanly: {s.error!r}"
    # The retry hint comes first, before any event.
    assert s.raw_head.startswith(b"retry: 1234\n"), s.raw_head[:40]
    assert s.parser.retry == 1234
    end = check_complete_stream(events, 5)
    assert end == {"status": "succeeded", "reason": None, "exit_code": 0}
    now_us = time.time() * 1e6
    for e in events[:-1]:
        data = e.json()
        assert set(data) == {"n", "count", "sent_us"}
        assert now_us - 60e6 < data["sent_us"] <= now_us + 1e6
        assert "\n" not in e.data  # compact JSON, one data line
    # A frame is exactly "id: n\nevent: tick\ndata: {...}\n\n".
    body = s.raw_head.decode()
    assert "\n\nid: 1\nevent: tick\ndata: {" in body, body


def test_replay_of_finished_task(daemon):
    d = daemon()
    t = d.submit(count=10, interval_ms=0)
    d.wait_task(t["id"])
    for _ in range(3):  # any number of times
        with SSEStream(events_url(d, t["id"])) as s:
            check_complete_stream(s.read_all(), 10)
            assert s.clean_end


def test_payload_bytes(daemon):
    d = daemon()
    t = d.submit(count=3, interval_ms=0, payload_bytes=100000)
    with SSEStream(events_url(d, t["id"])) as s:
        events = s.read_all()
    check_complete_stream(events, 3)
    for e in events[:-1]:
        assert e.json()["payload"] == "x" * 100000


def _read_thread(url):
    with SSEStream(url, timeout=scaled(30)) as s:
        events = s.read_all(scaled(60))
        return events, s.clean_end


def test_many_concurrent_streams_get_every_event_once(daemon):
    count = 40
    d = daemon({"SSE_HEARTBEAT_INTERVAL": "1s"})
    t = d.submit(count=count, interval_ms=50)  # about 2 s
    url = events_url(d, t["id"])
    readers = [Background(_read_thread, url) for _ in range(50)]
    curls = [curl_stream(url, scaled(60)) for _ in range(5)]
    # Some open after the task began: they replay from the log first.
    time.sleep(0.5)
    late = [Background(_read_thread, url) for _ in range(5)]
    for r in readers + late:
        events, clean = r.result(scaled(90))
        check_complete_stream(events, count)
        assert clean
    for c in curls:
        out, err = c.communicate(timeout=scaled(60))
        assert c.returncode == 0, err
        check_complete_stream(parse_sse_bytes(out), count)
    wait_for(lambda: d.metrics().value("sse_streams_active") == 0, scaled(5),
             what="sse_streams_active back to 0")
    m = d.metrics()
    # Every stream got count+1 events.
    assert m.value("sse_events_sent_total") == 60 * (count + 1)


@pytest.mark.parametrize("how", ["header", "query"])
def test_resume_from_random_points(daemon, how):
    count = 30
    d = daemon()
    t = d.submit(count=count, interval_ms=0)
    d.wait_task(t["id"])
    rng = random.Random(1234)
    for k in [0, 1, count - 1] + rng.sample(range(2, count - 1), 6):
        if how == "header":
            s = SSEStream(events_url(d, t["id"]), last_event_id=k)
        else:
            s = SSEStream(events_url(d, t["id"], f"?last_event_id={k}"))
        with s:
            assert s.status == 200, (k, s.status)
            events = s.read_all()
        if k == 0:
            check_complete_stream(events, count)
        else:
            check_complete_stream(events, count, first=k + 1)


def test_header_wins_over_query(daemon):
    d = daemon()
    t = d.submit(count=10, interval_ms=0)
    d.wait_task(t["id"])
    with SSEStream(events_url(d, t["id"], "?last_event_id=2"), last_event_id=5) as s:
        check_complete_stream(s.read_all(), 10, first=6)


@pytest.mark.parametrize("value", ["abc", "-1", "1e3", " ", "0x5", "99999999999999999999999"])
def test_unusable_last_event_id_replays_from_start(daemon, value):
    d = daemon()
    t = d.submit(count=5, interval_ms=0)
    d.wait_task(t["id"])
    with SSEStream(events_url(d, t["id"]), last_event_id=value) as s:
        assert s.status == 200
        check_complete_stream(s.read_all(), 5)


def test_resume_mid_run_loses_nothing(daemon):
    count = 40
    d = daemon()
    t = d.submit(count=count, interval_ms=40)
    seen = []
    last = None
    # Reconnect three times mid-run, resuming after the last id received.
    for _ in range(3):
        with SSEStream(events_url(d, t["id"]), last_event_id=last) as s:
            for _ in range(5):
                ev = s.read_until(lambda e: e.type == "tick")
                seen.append(ev)
                last = ev.id
    with SSEStream(events_url(d, t["id"]), last_event_id=last) as s:
        seen += s.read_all()
    check_complete_stream(seen, count)


def test_gap_after_eviction(daemon):
    count = 20
    d = daemon({"EVENT_LOG_EVENTS": "5"})
    t = d.submit(count=count, interval_ms=0)
    d.wait_task(t["id"])
    end_id = count + 1
    oldest = end_id - 4  # 5 retained: 17..21
    # No id: from the oldest retained, no gap event (nothing was asked for).
    with SSEStream(events_url(d, t["id"])) as s:
        events = s.read_all()
    assert [e.type for e in events if e.type == "gap"] == []
    check_complete_stream(events, count, first=oldest)
    # An evicted id: an explicit gap first, without an id, then the rest.
    for last, how in ((3, "header"), (0, "header"), (15, "query")):
        if how == "header":
            s = SSEStream(events_url(d, t["id"]), last_event_id=last)
        else:
            s = SSEStream(events_url(d, t["id"], f"?last_event_id={last}"))
        with s:
            events = s.read_all()
        gap = events[0]
        if last == 0:
            # "0" means "I have seen nothing": the first missing is 1.
            assert gap.type == "gap", events[:3]
            assert gap.json() == {"first_missing": 1, "last_missing": oldest - 1}
        else:
            assert gap.type == "gap", events[:3]
            assert gap.json() == {"first_missing": last + 1, "last_missing": oldest - 1}
        assert gap.id is None, "a gap event must not carry an id"
        assert gap.last_event_id == ""  # and must not set one for the browser
        check_complete_stream(events[1:], count, first=oldest)
    # Right at the edge: no gap.
    with SSEStream(events_url(d, t["id"]), last_event_id=oldest - 1) as s:
        events = s.read_all()
    check_complete_stream(events, count, first=oldest)


@pytest.mark.parametrize("how", ["header", "query"])
def test_204_after_end(daemon, how):
    count = 5
    d = daemon()
    t = d.submit(count=count, interval_ms=0)
    d.wait_task(t["id"])
    for last in (count + 1, count + 50):
        if how == "header":
            r = http("GET", events_url(d, t["id"]), headers={"Last-Event-ID": str(last)})
        else:
            r = http("GET", events_url(d, t["id"], f"?last_event_id={last}"))
        assert r.status == 204, r
        assert r.body == b""
    # One before the end: just the end.
    with SSEStream(events_url(d, t["id"]), last_event_id=count) as s:
        events = s.read_all()
    assert [e.type for e in events] == ["end"]
    assert events[0].id == str(count + 1)


def test_heartbeats_on_idle_stream(daemon):
    d = daemon({"SSE_HEARTBEAT_INTERVAL": "200ms"})
    t = d.submit(count=3, interval_ms=1500)  # 3 s, idle between ticks
    with SSEStream(events_url(d, t["id"])) as s:
        s.read_all(scaled(15))
        items = s.items
    comments = s.comments()
    assert len(comments) >= 4, f"only {len(comments)} heartbeat comments in 3 s"
    # Idle periods are broken up: no silence much longer than the interval.
    gaps = [b.at - a.at for a, b in zip(items, items[1:])]
    assert max(gaps) < scaled(1.0), f"longest silence {max(gaps):.2f}s"
    # Heartbeats come between the ticks, not only at the start.
    ticks = [i for i, x in enumerate(items) if getattr(x, "type", None) == "tick"]
    between = [x for x in items[ticks[0]:ticks[1]] if not hasattr(x, "type")]
    assert between, "no heartbeat between the first two ticks"
    assert d.metrics().value("sse_heartbeats_sent_total") >= len(comments)


def test_heartbeats_for_a_queued_task(daemon):
    d = daemon({"SSE_HEARTBEAT_INTERVAL": "200ms", "WORKERS": "1"})
    a = d.submit(count=1000, interval_ms=20)
    d.wait_task(a["id"], states=("running",))
    b = d.submit(count=2, interval_ms=0)
    with SSEStream(events_url(d, b["id"])) as s:
        first = s.next_item(scaled(2))
        assert first is not None and not hasattr(first, "type"), first  # a comment
        http("DELETE", f"{d.url}/v1/tasks/{a['id']}")
        events = s.read_all()
    check_complete_stream(events, 2)


def test_cancel_ends_stream_with_client_reason(daemon):
    d = daemon()
    t = d.submit(count=1000, interval_ms=20)
    with SSEStream(events_url(d, t["id"])) as s:
        for _ in range(3):
            s.read_until(lambda e: e.type == "tick")
        assert http("DELETE", f"{d.url}/v1/tasks/{t['id']}").status == 202
        events = s.read_all(scaled(5))
        assert s.clean_end
    ticks = [e for e in s.events() if e.type == "tick"]
    end = s.events()[-1]
    assert end.type == "end"
    assert end.json()["status"] == "cancelled"
    assert end.json()["reason"] == "client"
    assert [int(e.id) for e in ticks] == list(range(1, len(ticks) + 1))
    assert end.id == str(len(ticks) + 1)
    assert events[-1] is end
    # A reconnect after the end gets 204.
    r = http("GET", events_url(d, t["id"]), headers={"Last-Event-ID": end.id})
    assert r.status == 204


def test_cancel_queued_task_ends_its_stream(daemon):
    d = daemon({"WORKERS": "1"})
    a = d.submit(count=1000, interval_ms=20)
    d.wait_task(a["id"], states=("running",))
    b = d.submit(count=5, interval_ms=0)
    with SSEStream(events_url(d, b["id"])) as s:
        assert http("DELETE", f"{d.url}/v1/tasks/{b['id']}").status == 202
        events = s.read_all(scaled(5))
    assert [e.type for e in events] == ["end"]
    assert events[0].id == "1"
    assert events[0].json()["status"] == "cancelled"
    http("DELETE", f"{d.url}/v1/tasks/{a['id']}")


def test_dead_client_found_by_heartbeat(daemon):
    d = daemon({"SSE_HEARTBEAT_INTERVAL": "200ms"})
    t = d.submit(count=1000, interval_ms=1000)  # mostly idle
    s = SSEStream(events_url(d, t["id"]))
    s.read_until(lambda e: e.type == "tick")
    wait_for(lambda: d.metrics().value("sse_streams_active") == 1, scaled(2), what="1 stream")
    s.close()
    wait_for(lambda: d.metrics().value("sse_streams_active") == 0, scaled(5),
             what="the closed stream to be noticed")
    http("DELETE", f"{d.url}/v1/tasks/{t['id']}")


SLOW_ENV = {"EVENT_LOG_EVENTS": "100", "EVENT_LOG_BYTES": "16M",
            "SSE_HEARTBEAT_INTERVAL": "500ms"}
SLOW_TASK = {"count": 400, "interval_ms": 10, "payload_bytes": 32768}  # 13 MB in 4 s


def test_slow_reader_is_closed_and_others_unaffected(daemon):
    d = daemon(SLOW_ENV)
    t = d.submit(**SLOW_TASK)
    path = f"/v1/tasks/{t['id']}/events"
    slow = RawStream("127.0.0.1", d.port, path)
    good = Background(_read_thread, events_url(d, t["id"]))
    # Reads about 1 MB/s against 3 MB/s produced: falls behind the log.
    slow_job = Background(slow.read_slowly, 1_000_000, scaled(30))
    rss = []

    def sample_rss():
        while good.is_alive():
            rss.append(d.rss_kib())
            time.sleep(0.1)

    sampler = Background(sample_rss)
    events, clean = good.result(scaled(60))
    check_complete_stream(events, SLOW_TASK["count"])
    assert clean
    sampler.result(scaled(5))
    slow_job.result(scaled(40))
    slow.close()
    assert slow.eof, "the slow reader was never cut off"
    status, headers, body, complete = split_response(slow.data)
    assert status == 200
    assert not complete, "a slow consumer must not see a clean end"
    got = [e for e in parse_sse_bytes(body) if e.id is not None]
    # What it got was a gapless prefix, without the end.
    assert [int(e.id) for e in got] == list(range(1, len(got) + 1))
    assert len(got) < SLOW_TASK["count"]
    m = d.metrics()
    assert m.value("sse_slow_consumers_closed_total") == 1
    assert d.logs("slow SSE consumer closed")
    if not SANITIZE:
        assert max(rss) < 200 * 1024, f"RSS peaked at {max(rss) // 1024} MB"
    # It can resume where it was cut, and learns about the gap.
    with SSEStream(events_url(d, t["id"]), last_event_id=got[-1].id) as s:
        events = s.read_all()
    assert events[0].type == "gap"
    assert events[0].json()["first_missing"] == len(got) + 1


def test_stalled_reader_is_closed(daemon):
    """A client that stops reading altogether falls behind the log just the
    same; it must be closed and counted, not kept until the task ends or the
    process stops."""
    d = daemon(SLOW_ENV)
    t = d.submit(**SLOW_TASK)
    path = f"/v1/tasks/{t['id']}/events"
    stalled = RawStream("127.0.0.1", d.port, path)  # never reads
    try:
        good = Background(_read_thread, events_url(d, t["id"]))
        events, clean = good.result(scaled(60))
        check_complete_stream(events, SLOW_TASK["count"])
        if not SANITIZE:
            assert d.rss_kib() < 200 * 1024
        # Behind the log since the task ended at the latest: give it a few
        # heartbeat intervals.
        wait_for(lambda: d.metrics().value("sse_slow_consumers_closed_total") >= 1, scaled(5),
                 interval=0.1, what="the stalled stream to be closed as a slow consumer")
        assert d.metrics().value("sse_streams_active") == 0
    finally:
        stalled.close()


def test_stream_of_unknown_task_is_404(daemon):
    d = daemon()
    r = http("GET", events_url(d, "0" * 32))
    assert r.status == 404
    assert json.loads(r.body)["error"]


def test_head_on_events_leaks_no_stream(daemon):
    d = daemon()
    t = d.submit(count=50, interval_ms=20)
    for _ in range(3):
        r = http("HEAD", events_url(d, t["id"]))
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.body == b""
    wait_for(lambda: d.metrics().value("sse_streams_active") == 0, scaled(5),
             what="no stream left open by HEAD")
    d.wait_task(t["id"])


def test_readers_that_go_away_are_counted_not_warned(daemon):
    """Readers that reset their connection mid-stream: no warning line each
    (a reconnect storm would flood the log), a count in
    http_client_disconnects_total instead; the task goes on."""
    d = daemon()
    t = d.submit(count=400, interval_ms=5, payload_bytes=2000)
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=scaled(5))
        s.sendall(f"GET /v1/tasks/{t['id']}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        # RST instead of FIN: the next write of the stream fails.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    wait_for(lambda: d.metrics().value("http_client_disconnects_total", listener="public") >= 5,
             scaled(10), what="five disconnects counted")
    assert d.metrics().value("http_client_disconnects_total", listener="admin") == 0
    assert not [e for e in d.logs() if e.get("level") == "warn"], d.raw_stderr()[-2000:]
    assert d.wait_task(t["id"], timeout=scaled(30))["state"] == "succeeded"


def _read_until(sock, pred, limit_s):
    """Read from `sock` until pred(buffer) holds or the server closes; the
    bytes read. Bounded by `limit_s`."""
    sock.settimeout(limit_s)
    buf = b""
    deadline = time.monotonic() + limit_s
    while not pred(buf) and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return buf


def _ticker_post(count=3, interval_ms=5):
    body = json.dumps({"kind": "ticker", "count": count, "interval_ms": interval_ms}).encode()
    return (b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


@pytest.mark.parametrize("pipelined", [False, True], ids=["in-turn", "pipelined"])
def test_post_then_stream_on_one_keepalive_connection(daemon, pipelined):
    """What a browser does: submit, then follow the task on the connection it
    keeps. The stream is correct, ends with the chunked body's end, and the
    connection then serves the reconnect's 204."""
    d = daemon()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=scaled(10))
    try:
        s.sendall(_ticker_post())
        first = _read_until(s, lambda b: b"\r\n\r\n" in b and b.endswith(b"}"), scaled(10))
        status, headers, body, complete = split_response(first)
        assert status == 202 and complete, first[:300]
        tid = json.loads(body)["id"]
        get = b"GET /v1/tasks/%s/events HTTP/1.1\r\nHost: x\r\n\r\n" % tid.encode()
        reconnect = (b"GET /v1/tasks/%s/events HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 4\r\n\r\n"
                     % tid.encode())
        s.sendall(get + reconnect if pipelined else get)
        raw = _read_until(s, lambda b: b"\n\n\r\n0\r\n\r\n" in b, scaled(10))
        status, headers, body, complete = split_response(raw)
        assert status == 200 and complete, raw[-300:]
        assert headers["content-type"] == "text/event-stream"
        check_complete_stream(parse_sse_bytes(body), 3)
        rest = raw[raw.index(b"\n\n\r\n0\r\n\r\n") + 9:]
        if not pipelined:
            s.sendall(reconnect)
        if b"\r\n\r\n" not in rest:
            rest += _read_until(s, lambda b: b"\r\n\r\n" in rest + b, scaled(10))
        assert rest.startswith(b"HTTP/1.1 204 No Content\r\n"), rest[:200]
    finally:
        s.close()


def test_http10_stream_is_not_chunked_and_ends_with_the_connection(daemon):
    """HTTP/1.0 has no chunked coding: the body is the frames themselves, and
    the server closes the connection after "end"."""
    d = daemon()
    t = d.submit(count=3, interval_ms=5)
    s = socket.create_connection(("127.0.0.1", d.port), timeout=scaled(10))
    try:
        s.sendall(b"GET /v1/tasks/%s/events HTTP/1.0\r\n\r\n" % t["id"].encode())
        raw = _read_until(s, lambda b: False, scaled(10))  # to the close
    finally:
        s.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body.startswith(b"retry: "), body[:50]
    check_complete_stream(parse_sse_bytes(body), 3)


def test_expect_100_continue_gets_continue_then_the_answer(daemon):
    """curl sends Expect: 100-continue for large bodies and waits for the
    interim answer before the body."""
    d = daemon()
    body = json.dumps({"kind": "ticker", "count": 1, "interval_ms": 1}).encode()
    s = socket.create_connection(("127.0.0.1", d.port), timeout=scaled(10))
    try:
        s.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        interim = _read_until(s, lambda b: b"\r\n\r\n" in b, scaled(10))
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        s.sendall(body)
        raw = _read_until(s, lambda b: b"\r\n\r\n" in b and b.endswith(b"}"), scaled(10))
    finally:
        s.close()
    status, _, answer, complete = split_response(raw)
    assert status == 202 and complete and json.loads(answer)["kind"] == "ticker"
