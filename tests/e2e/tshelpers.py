"""Helpers for the end-to-end tests: timeouts scaled for sanitizers, a tiny
HTTP client, an SSE parser that follows the WHATWG rules, SSE readers over
http.client and curl, and a Prometheus text parser.

Standard library only (http.client, socket, subprocess, threading).
"""

import http.client as httpclient
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse

SANITIZE = os.environ.get("TS_SANITIZE", "").strip()
#: Every wait in the suite is multiplied by this: sanitizers slow the daemon
#: down a lot (TSan most), and a noisy 2-core machine does the rest.
SLOW = 1.0 if not SANITIZE else (5.0 if "thread" in SANITIZE else 3.0)


def scaled(seconds):
    """A timeout in seconds, stretched under sanitizers."""
    return seconds * SLOW


TASK_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def parse_duration(text):
    """Seconds for a duration as the daemon takes it ("500ms", "10s", "2m",
    "1h", a bare number of seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text or "")
    if m is None:
        return None
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def _stop_margin_s():
    """TS_STOP_MARGIN_MS from the public header: one constant, read here
    rather than written again."""
    header = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "include",
                          "taskstream.h")
    with open(header) as f:
        m = re.search(r"^#define TS_STOP_MARGIN_MS (\d+)$", f.read(), re.M)
    assert m, "TS_STOP_MARGIN_MS not found in include/taskstream.h"
    return int(m.group(1)) / 1000


STOP_MARGIN_S = _stop_margin_s()


def stop_budget_s(env):
    """The daemon's stop budget (ts_config_stop_budget_ms) for settings
    `env`: max(GRACEFUL_SHUTDOWN_TIMEOUT + KILL_GRACE, SHUTDOWN_DELAY) +
    the margin, in seconds."""
    def seconds(name, default):
        v = parse_duration(env.get(name, default))
        assert v is not None, f"{name}={env.get(name)!r} is not a duration"
        return v

    tasks = seconds("GRACEFUL_SHUTDOWN_TIMEOUT", "600s") + seconds("KILL_GRACE", "10s")
    return max(tasks, seconds("SHUTDOWN_DELAY", "0s")) + STOP_MARGIN_S


# --- OpenAPI recorder (run by hand, not in CI; see openapi_check.py) ---
# With TS_OPENAPI_RECORD=<file>, http() and SSEStream append each answer
# there as a JSON line for openapi_check.py to check against docs/openapi.yaml.
RECORD_PATH = os.environ.get("TS_OPENAPI_RECORD")


def record(line):
    """Append one JSON line to TS_OPENAPI_RECORD (no-op when unset)."""
    if RECORD_PATH:
        with open(RECORD_PATH, "a") as f:
            f.write(json.dumps(line) + "\n")


def _record_answer(method, url, status, headers, body):
    if RECORD_PATH:
        import base64

        u = urllib.parse.urlsplit(url)
        record({"method": method, "port": u.port,
                "path": (u.path or "/") + ("?" + u.query if u.query else ""), "status": status,
                "headers": list(headers.items()),
                "body": None if body is None else base64.b64encode(body).decode(),
                "test": os.environ.get("PYTEST_CURRENT_TEST", "")})


def wait_for(predicate, timeout, interval=0.02, what="condition"):
    """Poll `predicate` until it returns something truthy; return that.
    Raises AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class Response:
    """status, headers (http.client.HTTPMessage, case-insensitive) and body
    (bytes). Unpacks as (status, headers, body)."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def __iter__(self):
        return iter((self.status, self.headers, self.body))

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"<Response {self.status} {self.body[:300]!r}>"


def _split(url):
    u = urllib.parse.urlsplit(url)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    return u.hostname, u.port, path


def http(method, url, body=None, headers=None, timeout=None):
    """One request on a fresh connection. `body` may be bytes, str, or a
    JSON-able value (sent as application/json unless a Content-Type is
    given). The path part of `url` is sent exactly as written."""
    host, port, path = _split(url)
    hdrs = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    conn = httpclient.HTTPConnection(host, port, timeout=timeout or scaled(10))
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        _record_answer(method, url, r.status, r.headers, data)  # OpenAPI recorder
        return Response(r.status, r.headers, data)
    finally:
        conn.close()


def raw_request(host, port, data, timeout=None):
    """Send raw bytes, read until the server closes or a full response with
    Content-Length is in; return the bytes. For requests http.client would
    not send as written. A server that answers and closes before it has
    read everything (a head past its limit) breaks the send: what it
    answered is still read."""
    s = socket.create_connection((host, port), timeout=timeout or scaled(10))
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m and len(rest) >= int(m.group(1)):
                    break
        return buf
    finally:
        s.close()


def assert_json_error(resp, status, code=None):
    """The response is `status` with a JSON {"error", "message"} body."""
    assert resp.status == status, resp
    assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers
    doc = resp.json()
    assert isinstance(doc.get("error"), str) and doc["error"], doc
    assert isinstance(doc.get("message"), str) and doc["message"], doc
    if code is not None:
        assert doc["error"] == code, doc
    return doc


# --------------------------------------------------------------------------
# Server-Sent Events
# --------------------------------------------------------------------------


class SSEEvent:
    """A dispatched event. `id` is the id field of this very frame (None when
    the frame had none: draining and gap events must not have one);
    `last_event_id` is the WHATWG "last event ID" after this frame."""

    __slots__ = ("type", "data", "id", "last_event_id", "at")

    def __init__(self, type_, data, id_, last_event_id, at):
        self.type = type_
        self.data = data
        self.id = id_
        self.last_event_id = last_event_id
        self.at = at

    def json(self):
        return json.loads(self.data)

    def __repr__(self):
        return f"<SSEEvent {self.type} id={self.id} {self.data[:80]!r}>"


class SSEComment:
    __slots__ = ("text", "at")

    def __init__(self, text, at):
        self.text = text
        self.at = at

    def __repr__(self):
        return f"<SSEComment {self.text!r}>"


class SSEParser:
    """The event-stream interpretation of the WHATWG HTML standard
    (section 9.2.6): lines end with CRLF, LF or CR; a leading BOM is dropped;
    ":" starts a comment; "field: value" loses one leading space; an empty
    line dispatches; data lines are joined with LF; an id with NUL is
    ignored; retry takes ASCII digits only; an event with empty data is not
    dispatched. feed() returns the new items (SSEEvent / SSEComment)."""

    def __init__(self):
        self._buf = b""
        self._first = True
        self._cr_pending = False  # the last chunk ended with CR: drop a following LF
        self.last_event_id = ""
        self.retry = None
        self.retry_fields = []
        self._reset_frame()

    def _reset_frame(self):
        self._type = ""
        self._data = []
        self._frame_id = None

    def feed(self, data):
        out = []
        if self._cr_pending and data.startswith(b"\n"):
            data = data[1:]
        self._cr_pending = False
        self._buf += data
        if self._first and len(self._buf) >= 3:
            if self._buf.startswith(b"\xef\xbb\xbf"):
                self._buf = self._buf[3:]
            self._first = False
        while True:
            m = re.search(rb"\r\n|\n|\r", self._buf)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == len(self._buf):
                # CR at the end of what we have: a line end either way; an
                # LF arriving next belongs to it.
                self._cr_pending = True
            line = self._buf[: m.start()].decode("utf-8", "replace")
            self._buf = self._buf[m.end():]
            self._line(line, out)
        return out

    def _line(self, line, out):
        now = time.monotonic()
        if line == "":
            if self._frame_id is not None:
                self.last_event_id = self._frame_id
            if self._data:
                data = "\n".join(self._data)
                out.append(SSEEvent(self._type or "message", data, self._frame_id,
                                    self.last_event_id, now))
            self._reset_frame()
            return
        if line.startswith(":"):
            out.append(SSEComment(line[1:], now))
            return
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._type = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self._frame_id = value
        elif field == "retry":
            self.retry_fields.append(value)
            if value.isdigit() and value.isascii():
                self.retry = int(value)
        # other fields are ignored


class SSEStream:
    """A GET on an event stream over http.client (which undoes chunked
    encoding). Read with next_item()/read_until()/read_all(); close() stops
    on demand. After the response ends, `eof` is True and `clean_end` says
    whether it ended properly (false when the server cut the chunked body)."""

    def __init__(self, url, last_event_id=None, headers=None, timeout=None):
        host, port, path = _split(url)
        self.timeout = timeout or scaled(20)
        self.conn = httpclient.HTTPConnection(host, port, timeout=self.timeout)
        hdrs = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            hdrs["Last-Event-ID"] = str(last_event_id)
        hdrs.update(headers or {})
        self.conn.request("GET", path, headers=hdrs)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = self.resp.headers
        self.parser = SSEParser()
        self.items = []  # every event and comment, in order
        self.raw_head = b""  # the first bytes of the body, as sent
        self.nbytes = 0
        self._queue = []
        self.eof = False
        self.clean_end = None
        self.error = None
        if self.status != 200:
            self.body = self.resp.read()
            self.eof = True
            self.clean_end = True
        # OpenAPI recorder: the head (and the body of an answer that is not a stream).
        _record_answer("GET", url, self.status, self.headers, getattr(self, "body", None))

    # -- reading --

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("SSE read deadline passed")
        sock = self.conn.sock
        if sock is not None:
            sock.settimeout(min(remaining, self.timeout))
        try:
            chunk = self.resp.read1(65536)
        except socket.timeout as e:
            raise TimeoutError("SSE read timed out") from e
        except (httpclient.IncompleteRead, ConnectionError, ValueError) as e:
            # A cut chunked body or a reset: the server ended the stream
            # without finishing it.
            self.eof = True
            self.clean_end = False
            self.error = e
            return
        if not chunk:
            self.eof = True
            self.clean_end = True
            return
        if len(self.raw_head) < 256:
            self.raw_head += chunk[:256 - len(self.raw_head)]
        self.nbytes += len(chunk)
        new = self.parser.feed(chunk)
        self.items.extend(new)
        self._queue.extend(new)

    def next_item(self, timeout=None):
        """The next event or comment, or None at the end of the stream."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not self._queue:
            if self.eof:
                return None
            self._fill(deadline)
        return self._queue.pop(0)

    def next_event(self, timeout=None):
        """The next event (comments skipped), or None at the end."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            item = self.next_item(max(0.001, deadline - time.monotonic()))
            if item is None or isinstance(item, SSEEvent):
                return item

    def read_until(self, predicate, timeout=None):
        """Read events until predicate(event) is true; return that event."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            ev = self.next_event(max(0.001, deadline - time.monotonic()))
            if ev is None:
                raise AssertionError(f"stream ended before the awaited event; got {self.events()[-5:]}")
            if predicate(ev):
                return ev

    def read_all(self, timeout=None):
        """Read to the end of the response; return every event."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not self.eof:
            self._fill(deadline)
        self._queue.clear()
        return self.events()

    def events(self):
        return [i for i in self.items if isinstance(i, SSEEvent)]

    def comments(self):
        return [i for i in self.items if isinstance(i, SSEComment)]

    def close(self):
        try:
            self.resp.close()
        finally:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_complete_stream(events, count, first=1, status="succeeded", reason=None):
    """`events` are ticks first..count, each once and in order, with ids
    equal to n (draining events, which carry no id, may be anywhere), then
    exactly one `end` with id count+1 and the given status; nothing after."""
    task_events = [e for e in events if e.type != "draining"]
    for e in events:
        if e.type == "draining":
            assert e.id is None, f"draining event carries an id: {e!r}"
            assert "reason" in e.json()
    assert task_events, "no events at all"
    assert task_events[-1].type == "end", f"last event is not end: {task_events[-3:]}"
    ticks = task_events[:-1]
    ids = [int(e.id) for e in ticks]
    assert ids == list(range(first, count + 1)), (
        f"tick ids are not {first}..{count} exactly once in order: {ids[:5]}...{ids[-5:]} ({len(ids)})")
    for e in ticks:
        assert e.type == "tick", e
        d = e.json()
        assert d["n"] == int(e.id) and d["count"] == count, d
    end = task_events[-1]
    assert end.id == str(count + 1), f"end id {end.id!r}, expected {count + 1}"
    d = end.json()
    assert d["status"] == status, d
    if reason is not None:
        assert d["reason"] == reason, d
    assert "exit_code" in d, d
    return d


def curl_stream(url, max_time, headers=()):
    """Start `curl -N` on an event stream; returns the Popen (stdout bytes)."""
    cmd = ["curl", "-sS", "-N", "--max-time", str(int(max_time))]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(url)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def split_response(raw):
    """(status, headers dict lower-cased, body bytes undone from chunked,
    complete) for a raw HTTP/1.1 response read off a socket."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, b"", False
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return status, headers, rest, True
    body = b""
    pos = 0
    while True:
        eol = rest.find(b"\r\n", pos)
        if eol < 0:
            return status, headers, body, False
        size = int(rest[pos:eol].split(b";")[0] or b"0", 16)
        if size == 0:
            return status, headers, body, rest[eol + 2:eol + 4] == b"\r\n"
        start = eol + 2
        body += rest[start:start + size]
        if len(rest) < start + size + 2:
            return status, headers, body, False
        pos = start + size + 2


class RawStream:
    """An event stream over a plain socket with a small receive buffer, for
    clients that read slowly or not at all."""

    def __init__(self, host, port, path, rcvbuf=4096, headers=()):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, port))
        extra = "".join(f"{h}\r\n" for h in headers)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        self.data = b""
        self.eof = False
        self.reset = False

    def read_slowly(self, rate_bytes_per_s, deadline_s, step=0.05):
        """Read about `rate` bytes a second until EOF/reset or the deadline."""
        end = time.monotonic() + deadline_s
        per_step = max(1, int(rate_bytes_per_s * step))
        while time.monotonic() < end:
            t0 = time.monotonic()
            budget = per_step
            while budget > 0:
                left = step - (time.monotonic() - t0)
                if left <= 0:
                    break
                self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(min(budget, 65536))
                except socket.timeout:
                    break
                except (ConnectionResetError, BrokenPipeError):
                    self.reset = True
                    self.eof = True
                    return
                if not chunk:
                    self.eof = True
                    return
                self.data += chunk
                budget -= len(chunk)
            spent = time.monotonic() - t0
            if spent < step:
                time.sleep(step - spent)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def parse_sse_bytes(data):
    p = SSEParser()
    return [i for i in p.feed(data) if isinstance(i, SSEEvent)]


# --------------------------------------------------------------------------
# Prometheus text
# --------------------------------------------------------------------------

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


class Metrics:
    """Parsed exposition: samples {(name, frozenset(labels.items())): value},
    types {family: type}."""

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.types = {}
        self.helps = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, typ = line.split(None, 3)
                self.types[name] = typ.strip()
                continue
            if line.startswith("# HELP "):
                parts = line.split(None, 3)
                self.helps[parts[2]] = parts[3] if len(parts) > 3 else ""
                continue
            if not line.strip() or line.startswith("#"):
                continue
            m = _SAMPLE_RE.match(line)
            assert m, f"unparsable metrics line: {line!r}"
            labels = {}
            if m.group(3):
                pos = 0
                body = m.group(3)
                while pos < len(body):
                    lm = _LABEL_RE.match(body, pos)
                    assert lm, f"bad labels in {line!r}"
                    labels[lm.group(1)] = lm.group(2)
                    pos = lm.end()
            self.samples[(m.group(1), frozenset(labels.items()))] = float(m.group(4))

    def get(self, name, default=None, **labels):
        return self.samples.get((name, frozenset(labels.items())), default)

    def value(self, name, **labels):
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels}; have: " + ", ".join(
            sorted({n for n, _ in self.samples}))
        return self.samples[key]

    def find(self, name, **labels):
        """Samples of `name` whose labels include `labels`."""
        want = set(labels.items())
        return {k[1]: v for k, v in self.samples.items() if k[0] == name and want <= k[1]}

    def names(self):
        return {n for n, _ in self.samples}


def scrape(daemon):
    r = http("GET", daemon.admin_url + "/metrics")
    assert r.status == 200, r
    return Metrics(r.text)


class Background(threading.Thread):
    """Run fn(*args) in a thread; result()/exception after join."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.value = None
        self.exc = None
        self.start()

    def run(self):
        try:
            self.value = self.fn(*self.args)
        except BaseException as e:  # reported by result()
            self.exc = e

    def result(self, timeout):
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"background job {self.fn.__name__} did not finish in {timeout:.1f}s")
        if self.exc is not None:
            raise self.exc
        return self.value
