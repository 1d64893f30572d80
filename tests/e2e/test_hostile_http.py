"""Hostile HTTP requests over a raw socket, one row each: what is sent, the
configuration, and the answer expected -- a status, or "close" when the
connection is dropped without a reply. After every row the
daemon is still healthy: /healthz answers 200 and a ticker runs to its end.

A plain HTTP client would normalise most of these requests, so they are
written byte for byte. docs/security.md lists the same cases with their
answers."""

import json
import re
import socket
import time

import pytest

from tshelpers import http, scaled

CLOSE = "close"  # connection closed with no response bytes at all


def exchange(port, data, timeout=None, chunks=None):
    """Send `data` (or each of `chunks`), then read until the server closes
    or goes quiet. Returns (bytes received, closed by the server)."""
    timeout = scaled(5) if timeout is None else timeout
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    closed = False
    try:
        try:
            for part in chunks if chunks is not None else [data]:
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early; its answer may still be there
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                s.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
                chunk = s.recv(65536)
            except socket.timeout:
                if buf and complete_responses(buf)[1]:
                    break
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            buf += chunk
        return buf, closed
    finally:
        s.close()


def complete_responses(buf):
    """([(status, headers, body)], all complete) for the responses in buf
    (Content-Length or chunked bodies)."""
    out = []
    pos = 0
    while pos < len(buf):
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return out, False
        lines = buf[pos:end].decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
        if not m:
            return out, False
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        body_start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            p = body_start
            while True:
                eol = buf.find(b"\r\n", p)
                if eol < 0:
                    return out, False
                size = int(buf[p:eol].split(b";")[0] or b"0", 16)
                if size == 0:
                    pos = eol + 4
                    break
                body += buf[eol + 2:eol + 2 + size]
                p = eol + 2 + size + 2
                if p > len(buf):
                    return out, False
        else:
            n = int(headers.get("content-length", "0"))
            if len(buf) < body_start + n:
                return out, False
            body = buf[body_start:body_start + n]
            pos = body_start + n
        out.append((int(m.group(1)), headers, body))
    return out, True


def assert_healthy(d):
    assert d.healthz() == 200
    t = d.submit(count=2, interval_ms=1)
    assert d.wait_task(t["id"])["state"] == "succeeded"


def post(body, extra=b"", path=b"/v1/tasks", version=b"HTTP/1.1", ctype=b"application/json"):
    if isinstance(body, str):
        body = body.encode()
    return (b"POST " + path + b" " + version + b"\r\nHost: x\r\nContent-Type: " + ctype +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def get(path, extra=b"", version=b"HTTP/1.1"):
    return b"GET " + path + b" " + version + b"\r\nHost: x\r\n" + extra + b"\r\n"


def chunked(parts, terminator=b"0\r\n\r\n"):
    return b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts) + terminator


TICKER = b'{"kind":"ticker","count":1,"interval_ms":1}'
CHUNKED_HEAD = (b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")

# (id, env, request bytes, expected: status | tuple of statuses | CLOSE)
ROWS = [
    # -- sizes --
    ("request-line-over-header-memory", {"MAX_HEADER_BYTES": "4k"},
     get(b"/v1/tasks/" + b"a" * 8000), 414),
    ("headers-over-header-memory", {"MAX_HEADER_BYTES": "4k"},
     get(b"/v1/tasks", b"X-Big: " + b"a" * 8000 + b"\r\n"), 431),
    ("many-small-headers", {"MAX_HEADER_BYTES": "4k"},
     get(b"/v1/tasks", b"".join(b"X-%d: y\r\n" % i for i in range(1000))), 431),
    ("body-over-cap-by-content-length", {"MAX_BODY_BYTES": "1k"},
     post(b'{"kind":"ticker","pad":"' + b"a" * 2000 + b'"}'), 413),
    ("content-length-over-cap-no-body-sent", {"MAX_BODY_BYTES": "1k"},
     b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"Content-Length: 99999999999\r\n\r\n", 413),
    ("chunked-body-growing-past-cap", {"MAX_BODY_BYTES": "1k"},
     CHUNKED_HEAD + chunked([b'{"kind":"ticker","pad":"'] + [b"a" * 100] * 30 + [b'"}']), 413),
    ("chunked-body-within-cap", {},
     CHUNKED_HEAD + chunked([TICKER[:10], TICKER[10:]]), 202),
    # -- framing --
    # RFC 9112 6.1: Transfer-Encoding wins over Content-Length (or 400), and
    # the server MUST close the connection after answering; we refuse it.
    ("transfer-encoding-and-content-length", {},
     b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked([TICKER]),
     (400, CLOSE)),  # refused by src/http_head.c
    ("duplicate-content-length-differing", {},
     post(TICKER, b"Content-Length: 7\r\n"), (400, CLOSE)),  # refused by src/http_head.c
    ("content-length-not-a-number", {},
     b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n" + TICKER, (400, CLOSE)),
    ("content-length-negative", {},
     b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n" + TICKER, (400, CLOSE)),
    ("content-length-overflow", {},
     b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
     (400, 413, CLOSE)),
    ("chunk-size-not-hex", {},
     CHUNKED_HEAD + b"zz\r\n" + TICKER + b"\r\n0\r\n\r\n", (400, CLOSE)),
    ("chunk-size-overflow", {},
     CHUNKED_HEAD + b"ffffffffffffffffffff\r\n" + TICKER + b"\r\n0\r\n\r\n", (400, 413, CLOSE)),
    ("chunk-size-negative", {},
     CHUNKED_HEAD + b"-5\r\n" + TICKER + b"\r\n0\r\n\r\n", (400, CLOSE)),
    # RFC 9112 6.3: a coding the server does not know is 501, at once, then close.
    ("transfer-encoding-unknown", {},
     b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n" + TICKER, 501),
    # -- header bytes --
    ("nul-in-header-value", {}, get(b"/v1/tasks", b"X-A: a\x00b\r\n"), 400),
    ("bare-cr-in-header", {}, get(b"/v1/tasks", b"X-A: a\rX-B: b\r\n"), (400, CLOSE)),  # refused by src/http_head.c
    ("space-before-colon", {}, get(b"/v1/tasks", b"X-A : b\r\n"), (400, CLOSE)),  # refused by src/http_head.c
    ("header-without-colon", {}, get(b"/v1/tasks", b"NoColonHere\r\n"), (400, CLOSE)),
    ("obsolete-line-folding", {}, get(b"/v1/tasks", b"X-A: a\r\n b\r\n"), 400),  # RFC 9112 5.2
    ("http11-without-host", {}, b"GET /v1/tasks HTTP/1.1\r\n\r\n", 400),
    # -- request line --
    ("http-version-2", {}, get(b"/v1/tasks", version=b"HTTP/2.0"), (505, CLOSE)),
    ("http-version-garbage", {}, get(b"/v1/tasks", version=b"HTTP/x.y"), (400, 505, CLOSE)),
    ("http-version-missing-http09", {}, b"GET /v1/tasks\r\n\r\n", (400, CLOSE)),
    ("method-unknown", {}, get(b"/v1/tasks").replace(b"GET", b"BREW", 1), 405),
    ("method-lowercase", {}, get(b"/v1/tasks").replace(b"GET", b"get", 1), (400, 405, 501)),
    ("request-line-only-spaces", {}, b"   \r\n\r\n", (400, CLOSE)),
    ("binary-garbage", {}, bytes(range(256)) * 4, (400, CLOSE)),
    # -- Last-Event-ID --
    ("last-event-id-huge", {}, None, 200),
    ("last-event-id-not-numeric", {}, None, 200),
    # -- bodies --
    ("invalid-utf8-in-json", {}, post(b'{"kind":"ticker","x":"\xff\xfe"}'), 400),
    ("deeply-nested-json", {}, post(b'{"kind":"ticker","x":' + b"[" * 100000 + b"]" * 100000 + b"}",
                                   ), (400, 413)),
    ("deeply-nested-json-within-cap", {"MAX_BODY_BYTES": "4M"},
     post(b'{"kind":"ticker","x":' + b"[" * 100000 + b"]" * 100000 + b"}"), (400, 422)),
    ("json-with-nul-escape", {}, post(b'{"kind":"ticker\\u0000x"}'), (400, 404, 422)),
    ("json-duplicate-keys", {}, post(b'{"kind":"ticker","count":1,"count":2}'), 400),
    ("json-trailing-garbage", {}, post(TICKER + b"xyz"), 400),
    ("json-not-an-object", {}, post(b"[1,2,3]"), (400, 422)),
    ("wrong-content-type", {}, post(TICKER, ctype=b"text/plain"), 415),
    ("json-string-10mb-default-cap", {},
     post(b'{"kind":"ticker","x":"' + b"a" * (10 << 20) + b'"}'), 413),
    ("json-string-10mb-raised-cap", {"MAX_BODY_BYTES": "16M"},
     post(b'{"kind":"ticker","x":"' + b"a" * (10 << 20) + b'"}'), 422),
    # -- paths and ids --
    ("path-traversal", {}, get(b"/v1/tasks/../../etc/passwd"), 404),
    ("path-traversal-encoded", {}, get(b"/v1/tasks/%2e%2e%2f%2e%2e%2fetc%2fpasswd"), 404),
    ("task-id-percent-encoded", {}, None, (200, 404)),
    ("task-id-uppercase", {}, get(b"/v1/tasks/" + b"A" * 32), 404),
    ("task-id-with-nul-escape", {}, get(b"/v1/tasks/%00" + b"a" * 31), (400, 404)),
    ("task-id-too-long", {}, get(b"/v1/tasks/" + b"a" * 5000), 404),
    ("double-slash", {}, get(b"//v1//tasks"), 404),
    ("absolute-form-target", {}, get(b"http://evil.example/v1/tasks"), (200, 400, 404)),
    ("asterisk-target", {}, get(b"*"), (400, 404)),
    # A bad %-escape anywhere in the target is no URI (RFC 3986 2.1): 400.
    ("query-garbage", {}, get(b"/v1/tasks?%zz=%&&==&" + b"a" * 1000), (400, CLOSE)),
    ("query-odd-but-valid", {}, get(b"/v1/tasks?&&==&x=%41&" + b"a" * 1000), 200),
]


def request_for(row_id, d):
    """Rows whose request depends on a live task."""
    t = d.submit(count=3, interval_ms=1)
    d.wait_task(t["id"])
    tid = t["id"].encode()
    if row_id == "last-event-id-huge":
        return get(b"/v1/tasks/" + tid + b"/events", b"Last-Event-ID: " + b"9" * 3000 + b"\r\n")
    if row_id == "last-event-id-not-numeric":
        return get(b"/v1/tasks/" + tid + b"/events", b"Last-Event-ID: 1; DROP\xff\r\n")
    if row_id == "task-id-percent-encoded":
        return get(b"/v1/tasks/" + b"".join(b"%%%02x" % c for c in tid))
    raise AssertionError(row_id)


# Refusals after which the connection must not carry another request: the
# request line or headers were not read to their end, or the body was not.
MUST_CLOSE = {"request-line-over-header-memory", "headers-over-header-memory",
              "many-small-headers", "content-length-over-cap-no-body-sent",
              "transfer-encoding-and-content-length", "transfer-encoding-unknown",
              "nul-in-header-value", "obsolete-line-folding", "bare-cr-in-header",
              "space-before-colon", "header-without-colon", "http11-without-host",
              "content-length-not-a-number", "content-length-negative",
              "duplicate-content-length-differing", "chunk-size-not-hex", "chunk-size-negative"}


@pytest.mark.parametrize("row_id,env,data,expected", ROWS,
                         ids=[r[0] if isinstance(r, tuple) else None for r in ROWS])
def test_hostile_request(daemon, row_id, env, data, expected):
    d = daemon(env)
    if data is None:
        data = request_for(row_id, d)
    buf, closed = exchange(d.port, data, timeout=scaled(10) if len(data) > 1 << 20 else None)
    responses, complete = complete_responses(buf)
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if not responses:
        got = CLOSE if closed and not buf else f"incomplete {buf[:200]!r}"
    else:
        got = responses[0][0]
    assert got in allowed, f"{row_id}: got {got}, expected {allowed}; raw {buf[:300]!r}"
    if got != CLOSE:
        status, headers, body = responses[0]
        if status >= 400 and headers.get("content-type", "").startswith("application/json"):
            err = json.loads(body)
            assert "error" in err and "message" in err, err
    if row_id in MUST_CLOSE and got != CLOSE:
        # One answer, then the close: nothing after a refused head or body
        # is read as a request (RFC 9112 9.6).
        assert closed and "close" in responses[0][1].get("connection", "").lower(), row_id
        assert len(responses) == 1 and complete, (row_id, buf[:500])
    if row_id in ("last-event-id-huge", "last-event-id-not-numeric"):
        # Treated as no id: the whole stream is replayed from the first event.
        body = responses[0][2] if responses else buf
        assert b"id: 1\n" in body and b"event: end" in body, buf[-500:]
    assert_healthy(d)


def test_pipelined_requests_are_answered_in_order(daemon):
    d = daemon()
    reqs = [get(b"/v1/tasks"), post(TICKER), get(b"/v1/tasks/" + b"0" * 32),
            get(b"/v1/tasks", b"Connection: close\r\n")]
    buf, closed = exchange(d.port, b"".join(reqs))
    responses, complete = complete_responses(buf)
    assert complete and closed
    assert [r[0] for r in responses] == [200, 202, 404, 200], buf[:500]
    assert_healthy(d)


def test_pipelined_request_after_a_refused_one_is_not_served(daemon):
    """A request smuggled behind a refused body must not be run."""
    d = daemon({"MAX_BODY_BYTES": "1k"})
    big = post(b'{"kind":"ticker","pad":"' + b"a" * 2000 + b'"}')
    smuggled = post(b'{"kind":"ticker","count":1,"interval_ms":1}')
    buf, closed = exchange(d.port, big + smuggled)
    responses, _ = complete_responses(buf)
    assert responses and responses[0][0] == 413
    assert all(r[0] != 202 for r in responses[1:]), buf[:500]
    assert http("GET", d.url + "/v1/tasks").json()["tasks"] == []
    assert_healthy(d)


def test_content_length_smuggling_runs_no_hidden_task(daemon):
    """Transfer-Encoding plus Content-Length: whatever the answer, the task
    hidden in the chunked body is not submitted as a second request."""
    d = daemon()
    hidden = post(TICKER)
    body = chunked([hidden])
    data = (b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    exchange(d.port, data)
    assert http("GET", d.url + "/v1/tasks").json()["tasks"] == []
    assert_healthy(d)


# -- duplicate singleton headers, Host syntax, encoded control bytes: both
# listeners, whole and split at every few bytes --------------------------

KEY = "drain-key-x"


def both_ways(port, data):
    """The first response status, for `data` sent whole and in 3-byte
    pieces; both must agree and the server must close after a 400."""
    statuses = []
    for chunks in ([data], [data[i:i + 3] for i in range(0, len(data), 3)]):
        buf, closed = exchange(port, None, chunks=chunks)
        responses, _ = complete_responses(buf)
        assert responses, buf[:200]
        status, headers = responses[0][0], responses[0][1]
        if status == 400:
            assert len(responses) == 1, buf[:500]
            assert closed or headers.get("connection", "").lower() == "close", headers
        statuses.append(status)
    assert statuses[0] == statuses[1], statuses
    return statuses[0]


def admin_get(path, extra=b""):
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def drain_post(extra):
    return (b"POST /drain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + extra + b"\r\n")


@pytest.mark.parametrize("extra", [
    b"Authorization: Bearer " + KEY.encode() + b"\r\nAuthorization: Bearer wrong\r\n",
    b"Authorization: Bearer wrong\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n",
    b"Authorization: Bearer " + KEY.encode() + b"\r\nauthorization: Bearer " + KEY.encode() + b"\r\n",
], ids=["right-then-wrong", "wrong-then-right", "twice-right"])
def test_duplicate_authorization_never_drains(daemon, extra):
    d = daemon({"DRAIN_AUTH_KEY": KEY})
    assert both_ways(d.admin_port, drain_post(extra)) == 400
    assert d.readyz() == 200, "a request with two Authorization headers drained the process"
    assert d.metrics().value("graceful_shutdown_requests_total", reason="manual") == 0
    # One header is fine.
    assert d.drain(KEY).status == 202


@pytest.mark.parametrize("extra", [
    b"Authorization: Bearer k1\r\nAuthorization: Bearer k1\r\n",
    b"Last-Event-ID: 1\r\nLast-Event-ID: 2\r\n",
    b"Content-Type: application/json\r\nContent-Type: text/plain\r\n",
    b"Host: y\r\n",
    b"Content-Length: 0\r\nContent-Length: 0\r\n",
], ids=["authorization", "last-event-id", "content-type", "host", "content-length"])
def test_duplicate_singleton_headers_are_400_on_both_listeners(daemon, extra):
    d = daemon({"API_AUTH_KEY": "k1"})
    assert both_ways(d.port, get(b"/v1/tasks", extra)) == 400
    assert both_ways(d.admin_port, admin_get(b"/healthz", extra)) == 400
    assert_healthy_with_key(d, "k1")


def assert_healthy_with_key(d, key):
    assert d.healthz() == 200
    r = http("POST", d.url + "/v1/tasks", {"kind": "ticker", "count": 1, "interval_ms": 1},
             headers={"Authorization": f"Bearer {key}"})
    assert r.status == 202, r


@pytest.mark.parametrize("host", [b"a b/c", b"a/b", b"x:99999", b"x:1:2", b"[::1", b"u@x", b"x\x7f"])
def test_invalid_host_is_400_on_both_listeners(daemon, host):
    d = daemon()
    data = b"GET /v1/tasks HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    assert both_ways(d.port, data) == 400
    assert both_ways(d.admin_port, data.replace(b"/v1/tasks", b"/healthz")) == 400
    assert_healthy(d)


@pytest.mark.parametrize("path", [b"/drain%00", b"/drain%00x", b"/healthz%00", b"/readyz%0a",
                                  b"/metrics%7f", b"/healthz?x=%00", b"/he%zzalthz", b"/healthz%"])
def test_encoded_control_bytes_in_admin_paths_are_400(daemon, path):
    d = daemon({"DRAIN_AUTH_KEY": KEY})
    auth = b"Authorization: Bearer " + KEY.encode() + b"\r\n"
    method_line = b"POST " if path.startswith(b"/drain") else b"GET "
    data = method_line + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + auth + b"\r\n"
    assert both_ways(d.admin_port, data) == 400
    assert d.readyz() == 200


def test_encoded_control_bytes_in_public_paths_are_400(daemon):
    d = daemon()
    t = d.submit(count=1, interval_ms=1)
    d.wait_task(t["id"])
    tid = t["id"].encode()
    for path in (b"/v1/tasks/" + tid + b"/events%00", b"/v1/tasks/" + tid + b"%00",
                 b"/v1/tasks%00/" + tid, b"/v1/tasks/" + tid + b"/events?last_event_id=1%00",
                 b"/v1/tasks/%1b[31m"):
        assert both_ways(d.port, get(path)) == 400, path
    assert_healthy(d)


def test_encoded_slash_is_inside_a_segment(daemon):
    """%2F decodes to a '/' inside one segment; it never separates two, so
    /v1%2Ftasks is not /v1/tasks, and an id with an encoded '/' is not an id."""
    d = daemon()
    t = d.submit(count=1, interval_ms=1)
    d.wait_task(t["id"])
    tid = t["id"].encode()
    assert both_ways(d.port, get(b"/v1%2Ftasks")) == 404
    assert both_ways(d.port, get(b"/v1/tasks/" + tid[:16] + b"%2F" + tid[16:])) == 404
    assert both_ways(d.port, get(b"/v1/tasks/" + tid + b"%2Fevents")) == 404
    # Encoded letters are the letters.
    assert both_ways(d.port, get(b"/v1/%74asks/" + tid)) == 200
    assert both_ways(d.admin_port, admin_get(b"/h%65althz")) == 200
