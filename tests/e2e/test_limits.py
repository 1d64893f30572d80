"""Connection limits on the public listener: the admin listener answers while
the public one is full, slow request headers are cut, oversized headers are
refused."""

import socket
import time

from tshelpers import SSEStream, http, scaled


def test_admin_answers_while_public_is_full(daemon):
    d = daemon({"MAX_CONNECTIONS": "4"})
    t = d.submit(count=1000, interval_ms=100)
    streams = [SSEStream(f"{d.url}/v1/tasks/{t['id']}/events") for _ in range(4)]
    try:
        for s in streams:
            s.read_until(lambda e: e.type == "tick")
        for _ in range(5):
            t0 = time.monotonic()
            assert d.healthz() == 200
            assert d.readyz() == 200
            assert time.monotonic() - t0 < scaled(1)
        assert d.metrics().value("sse_streams_active") == 4
    finally:
        for s in streams:
            s.close()
    http("DELETE", f"{d.url}/v1/tasks/{t['id']}")


def test_slow_request_headers_are_cut(daemon):
    d = daemon({"HEADER_TIMEOUT": "500ms"})
    s = socket.create_connection(("127.0.0.1", d.port), timeout=scaled(5))
    t0 = time.monotonic()
    closed_after = None
    try:
        # One byte every 100 ms: an idle timeout alone would never fire.
        for ch in b"GET /v1/tasks HTTP/1.1\r\nHost: x\r\nX-Drip: " + b"a" * 100:
            s.send(bytes([ch]))
            time.sleep(0.1)
            if time.monotonic() - t0 > scaled(5):
                break
    except (BrokenPipeError, ConnectionResetError):
        closed_after = time.monotonic() - t0
    if closed_after is None:
        try:
            s.settimeout(scaled(2))
            if s.recv(100) == b"":
                closed_after = time.monotonic() - t0
        except (ConnectionResetError, socket.timeout):
            closed_after = time.monotonic() - t0
    s.close()
    assert closed_after is not None, "the dripping connection was never closed"
    assert closed_after < scaled(3), closed_after
    # Everybody else is served as usual.
    assert http("GET", d.url + "/v1/tasks").status == 200


def test_oversized_request_headers_are_refused(daemon):
    d = daemon({"MAX_HEADER_BYTES": "4k"})
    r = http("GET", d.url + "/v1/tasks", headers={"X-Big": "a" * 8000})
    assert r.status == 431, r
    r = http("GET", d.url + "/v1/tasks/" + "a" * 8000)
    assert r.status in (414, 431), r
    assert http("GET", d.url + "/v1/tasks").status == 200
