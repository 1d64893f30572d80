"""taskstreamd behind a real nginx (Debian's), started by the test from a
private prefix on loopback with nginx's DEFAULT buffering settings.

- Events pass through one by one: the daemon's "X-Accel-Buffering: no" turns
  buffering off for the stream, so per-event latency through the proxy stays
  far below the ticker's interval.
- Heartbeats keep a stream alive past a short proxy_read_timeout; a daemon
  with a long heartbeat interval behind the same timeout is cut.
- Two daemons behind one upstream, one drains: its /readyz fails, new tasks
  go to the other (nginx retries the 503 POST: proxy_next_upstream http_503
  non_idempotent), a task's stream finds its instance wherever it lives
  (http_404), and the draining instance's streams run to their end.

The measured latency is written to tests/e2e/artifacts/nginx-latency.txt.
"""

import os
import statistics
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser"))

from tsclients import Nginx, artifact_path  # noqa: E402
from tshelpers import (SANITIZE, SSEStream, Background, check_complete_stream, http,  # noqa: E402
                       scaled, scrape)

KEY = "nginx-drain-key"

# What docs/deployment.md recommends, verbatim apart from the upstream.
PROXY_SETTINGS = """
        proxy_pass http://taskstream;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_next_upstream error http_503 http_404 non_idempotent;
"""


@pytest.fixture
def nginx():
    started = []

    def start(http_block):
        n = Nginx(http_block)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


def wall_offset():
    """time.time() - time.monotonic(), to turn SSEEvent.at into wall time."""
    return time.time() - time.monotonic()


def tick_latencies(events, offset):
    """Seconds from each tick's sent_us to its arrival."""
    return [e.at + offset - e.json()["sent_us"] / 1e6 for e in events if e.type == "tick"]


def read_stream(url, timeout):
    with SSEStream(url, timeout=timeout) as s:
        assert s.status == 200, s.body
        events = s.read_all(timeout)
        return s, events


def test_events_pass_nginx_one_by_one(daemon, nginx):
    """Default proxy_buffering: each tick reaches the client right after it
    is sent, long before the next one (interval 200 ms, latency < 150 ms)."""
    d = daemon()
    n = nginx(f"""
    upstream taskstream {{ server 127.0.0.1:{d.port} max_fails=0; }}
    server {{
        listen 127.0.0.1:PORT;
        location / {{ {PROXY_SETTINGS} }}
    }}""")
    count, interval_ms = 15, 200
    task = http("POST", n.url + "/v1/tasks",
                {"kind": "ticker", "count": count, "interval_ms": interval_ms}).json()
    offset = wall_offset()
    s, events = read_stream(f"{n.url}/v1/tasks/{task['id']}/events", scaled(30))
    # nginx acts on X-Accel-Buffering and does not pass it on.
    assert s.headers["Content-Type"] == "text/event-stream" and "X-Accel-Buffering" not in s.headers
    check_complete_stream(events, count)
    lat = tick_latencies(events, offset)
    # The first tick can be in the log before the stream opens (replayed).
    live = lat[1:]
    gaps = [b.at - a.at for a, b in zip(events[:count], events[1:count])]
    summary = (f"through nginx {n.url} (proxy_buffering on, X-Accel-Buffering: no), "
               f"{count} ticks {interval_ms} ms apart{' [' + SANITIZE + ']' if SANITIZE else ''}: "
               f"latency min {min(live) * 1000:.2f} ms, median {statistics.median(live) * 1000:.2f} ms, "
               f"max {max(live) * 1000:.2f} ms; arrival gaps min {min(gaps) * 1000:.0f} ms\n")
    with open(artifact_path("nginx-latency.txt"), "a") as f:
        f.write(summary)
    print(summary)
    assert max(live) < 0.150, f"an event was held back by the proxy: {summary}"
    assert min(gaps) > interval_ms / 1000 / 2, f"events arrived in batches: {summary}"



def test_heartbeats_outlive_a_short_proxy_read_timeout(daemon, nginx):
    """proxy_read_timeout 1s: a stream whose ticks come 3 s apart survives
    thanks to heartbeats every 400 ms; the same stream from a daemon that
    heartbeats every 10 s is cut by nginx."""
    beating = daemon(env={"SSE_HEARTBEAT_INTERVAL": "400ms"})
    quiet = daemon(env={"SSE_HEARTBEAT_INTERVAL": "10s"})
    n = nginx(f"""
    upstream beating {{ server 127.0.0.1:{beating.port}; }}
    upstream quiet {{ server 127.0.0.1:{quiet.port}; }}
    server {{
        listen 127.0.0.1:PORT;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_read_timeout 1s;
        location /beating/ {{ proxy_pass http://beating/; }}
        location /quiet/ {{ proxy_pass http://quiet/; }}
    }}""")
    count = 3
    t1 = http("POST", n.url + "/beating/v1/tasks", {"kind": "ticker", "count": count,
                                                      "interval_ms": 3000}).json()
    t2 = http("POST", n.url + "/quiet/v1/tasks", {"kind": "ticker", "count": count,
                                                    "interval_ms": 3000}).json()
    cut = Background(read_stream, f"{n.url}/quiet/v1/tasks/{t2['id']}/events", scaled(30))
    started = time.monotonic()
    s, events = read_stream(f"{n.url}/beating/v1/tasks/{t1['id']}/events", scaled(30))
    assert time.monotonic() - started >= 5.5
    assert s.clean_end, s.error
    check_complete_stream(events, count)
    assert len(s.comments()) >= 10, f"only {len(s.comments())} heartbeats in 6 s"

    qs, qevents = cut.result(scaled(30))
    assert [e.type for e in qevents] == ["tick"], qevents  # tick 1, then silence
    assert not qs.clean_end, "nginx should have cut the stream with no heartbeats"
    assert "upstream timed out" in n.error_log()
    quiet.wait_task(t2["id"], timeout=scaled(15))  # the task itself is unaffected


def test_two_daemons_one_drains(daemon, nginx):
    """A and B behind one upstream. A drains: /readyz 503, every new task
    lands on B (A's 503 is retried there), streams of A's tasks, old and new,
    run to their end through nginx with a draining notice."""
    a = daemon(env={"DRAIN_AUTH_KEY": KEY, "SSE_HEARTBEAT_INTERVAL": "1s"})
    b = daemon(env={"DRAIN_AUTH_KEY": KEY, "SSE_HEARTBEAT_INTERVAL": "1s"})
    n = nginx(f"""
    upstream taskstream {{
        server 127.0.0.1:{a.port} max_fails=0;
        server 127.0.0.1:{b.port} max_fails=0;
    }}
    server {{
        listen 127.0.0.1:PORT;
        location / {{ {PROXY_SETTINGS} }}
    }}""")

    count = 30
    tasks = [http("POST", n.url + "/v1/tasks", {"kind": "ticker", "count": count,
                                                "interval_ms": 100}) for _ in range(4)]
    assert all(r.status == 202 for r in tasks), tasks
    ids = [r.json()["id"] for r in tasks]
    on_a = [i for i in ids if http("GET", f"{a.url}/v1/tasks/{i}").status == 200]
    on_b = [i for i in ids if http("GET", f"{b.url}/v1/tasks/{i}").status == 200]
    assert on_a and on_b and sorted(on_a + on_b) == sorted(ids), (on_a, on_b)
    # Every task's stream opens through nginx wherever the task lives.
    readers = {i: Background(read_stream, f"{n.url}/v1/tasks/{i}/events", scaled(30)) for i in ids}
    time.sleep(0.5)

    assert a.drain(KEY).status == 202
    assert a.readyz() == 503 and b.readyz() == 200 and a.healthz() == 200

    new = [http("POST", n.url + "/v1/tasks", {"kind": "ticker", "count": 3, "interval_ms": 10})
           for _ in range(6)]
    assert [r.status for r in new] == [202] * 6, new
    for r in new:
        tid = r.json()["id"]
        assert http("GET", f"{b.url}/v1/tasks/{tid}").status == 200
        assert http("GET", f"{a.url}/v1/tasks/{tid}").status == 404
    refused = scrape(a).get("http_requests_total", 0.0, listener="public", route="tasks", code="503")
    assert refused >= 1, "nginx never tried the draining instance: the retry went untested"

    # A new stream for a task of A, opened during the drain, resumes there.
    with SSEStream(f"{n.url}/v1/tasks/{on_a[0]}/events", last_event_id=5,
                   timeout=scaled(30)) as late:
        assert late.status == 200
        check_complete_stream(late.read_all(), count, first=6)

    for i, reader in readers.items():
        s, events = reader.result(scaled(30))
        assert s.clean_end, (i, s.error)
        check_complete_stream(events, count)
        draining = [e for e in events if e.type == "draining"]
        assert len(draining) == (1 if i in on_a else 0), (i, [e.type for e in events])
    for r in new:
        with SSEStream(f"{n.url}/v1/tasks/{r.json()['id']}/events", timeout=scaled(10)) as s:
            check_complete_stream(s.read_all(), 3)

    # A has nothing left to do: a stop signal ends it at once, cleanly.
    assert a.stop(timeout=scaled(15)) == 0
    assert b.readyz() == 200
