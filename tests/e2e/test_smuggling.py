"""Request smuggling and message framing over raw sockets (RFC 9112), on
both listeners, each request delivered three ways:

- "whole": every byte in one send;
- "bytewise": one byte per send, TCP_NODELAY on;
- "split": two sends, cut at the CRLF that precedes the offending line (for a
  problem in the request target: at the '%' of the escape), with a short
  bounded read in between so that the first part arrives on its own.

What is tested is the required behaviour, not today's: a framing error gets
exactly ONE response (4xx/5xx) and then the server closes the connection, so
no byte after a refused head is ever answered as a request. Every read is
bounded and ends when the server closes; nothing sleeps to make a test pass.

Two daemons serve the whole module (module-scoped, built from conftest's
Daemon with the same teardown checks): "plain" (no keys) and "keyed"
(API_AUTH_KEY and DRAIN_AUTH_KEY set). A test that creates tasks on purpose
compares task lists before and after instead of expecting an empty list.
"""

import json
import re
import select
import socket
import time

import pytest

from conftest import DaemonPool
from tshelpers import http, scaled

API_KEY = "api-k3y-Smuggle9"
DRAIN_KEY = "dr41n-k3y-Smuggle9"
AUTH_API = b"Authorization: Bearer " + API_KEY.encode()
AUTH_DRAIN = b"Authorization: Bearer " + DRAIN_KEY.encode()
AUTH_WRONG = b"Authorization: Bearer wrong-key"

ENVS = {
    "plain": {},
    "keyed": {"API_AUTH_KEY": API_KEY, "DRAIN_AUTH_KEY": DRAIN_KEY},
}

TICKER = b'{"kind":"ticker","count":1,"interval_ms":1}'
CT_JSON = b"Content-Type: application/json"

LISTENERS = ("public", "admin")
PATH = {"public": b"/v1/tasks", "admin": b"/healthz"}
# Where a request with a body goes: /healthz takes no body (a body there is a
# 413 whatever the framing, which would hide a framing the server accepted);
# /drain reads one and, with no DRAIN_AUTH_KEY (the "plain" daemon), answers
# 403 and keeps the connection: accepted framing shows as a non-400 answer
# followed by an answer to the hidden request.
BODY_PATH = {"public": b"/v1/tasks", "admin": b"/drain"}
MODES = ("whole", "bytewise", "split")

# A status line anywhere: a response starts right after the last byte of the
# one before it, not necessarily at the start of a line.
STATUS_LINE_RE = re.compile(rb"HTTP/\d\.\d \d{3}[ \r]")


# --------------------------------------------------------------------------
# daemons: one of each kind for the whole module
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(binary, workdir):
    daemons = DaemonPool(binary, workdir, "test_smuggling")

    def get(name):
        return daemons(name, ENVS[name])

    get.daemons = daemons.daemons
    yield get
    daemons.finish()


@pytest.fixture(autouse=True)
def _show_daemon_stderr(request, pool):
    # conftest's report hook appends these daemons' stderr to a failure.
    request.node._ts_daemons = pool.daemons


@pytest.fixture
def plain(pool):
    return pool("plain")


@pytest.fixture
def keyed(pool):
    return pool("keyed")


@pytest.fixture(scope="module")
def keyed_task(pool):
    """The id of a finished task on the keyed daemon."""
    d = pool("keyed")
    r = http("POST", d.url + "/v1/tasks", {"kind": "ticker", "count": 2, "interval_ms": 1},
             headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status == 202, r
    tid = r.json()["id"]
    deadline = time.monotonic() + scaled(15)
    while True:
        t = http("GET", f"{d.url}/v1/tasks/{tid}",
                 headers={"Authorization": f"Bearer {API_KEY}"}).json()
        if t["state"] in ("succeeded", "failed", "cancelled"):
            return tid
        assert time.monotonic() < deadline, f"task {tid} did not finish: {t}"
        time.sleep(0.02)


def port_of(d, listener):
    return d.port if listener == "public" else d.admin_port


def task_ids(d, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = http("GET", d.url + "/v1/tasks", headers=headers)
    assert r.status == 200, r
    return {t["id"] for t in r.json()["tasks"]}


def assert_healthy(d):
    assert d.healthz() == 200, "the daemon is not healthy after the variant"


# --------------------------------------------------------------------------
# requests
# --------------------------------------------------------------------------


def head(method, target, *lines, host=b"x", version=b"HTTP/1.1"):
    """A request head: request line, `Host: x` first (unless host=None),
    each of `lines` (no CRLF), the blank line."""
    out = method + b" " + target + b" " + version + b"\r\n"
    if host is not None:
        out += b"Host: " + host + b"\r\n"
    return out + b"".join(ln + b"\r\n" for ln in lines) + b"\r\n"


def chunked(*parts):
    return b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def post_ticker(*extra, target=b"/v1/tasks"):
    return head(b"POST", target, CT_JSON, b"Content-Length: %d" % len(TICKER), *extra) + TICKER


def hidden(listener):
    """What a desynchronised server would run as the next request: on the
    public listener a task submission and a list, on the admin one a probe."""
    if listener == "public":
        return post_ticker() + head(b"GET", b"/v1/tasks")
    return head(b"GET", b"/healthz")


def cut_before(data, line_start):
    """The offset of the CRLF that precedes the last head line starting
    with `line_start`."""
    head_end = data.index(b"\r\n\r\n")
    i = data.rfind(b"\r\n" + line_start, 0, head_end + 2)
    assert i > 0, (line_start, data[:200])
    return i


def cut_at(data, needle):
    i = data.index(needle)
    assert i > 0
    return i


# --------------------------------------------------------------------------
# the exchange and the response parser
# --------------------------------------------------------------------------


class Exchange:
    """What one connection brought back: `buf` (every byte received),
    `closed` (the server closed or reset it), `first_byte_s` (seconds from
    the end of sending to the first byte; 0 if it came earlier)."""

    def __init__(self):
        self.buf = b""
        self.closed = False
        self.first_byte_s = None
        self._sent_at = None

    def _recv(self, s, wait):
        """Wait up to `wait` for bytes; take them. False once closed."""
        if self.closed:
            return False
        try:
            ready, _, _ = select.select([s], [], [], max(0.0, wait))
        except (OSError, ValueError):
            self.closed = True
            return False
        if not ready:
            return True
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, ConnectionAbortedError):
            self.closed = True
            return False
        except (socket.timeout, BlockingIOError):
            return True
        if not chunk:
            self.closed = True
            return False
        if self.first_byte_s is None:
            self.first_byte_s = 0.0 if self._sent_at is None else time.monotonic() - self._sent_at
        self.buf += chunk
        return True

    def describe(self):
        return f"closed={self.closed} received={self.buf[:700]!r}"


def converse(port, data, mode="whole", cut=None, bodyless=(), timeout=None, linger=None):
    """Send `data` as `mode` says, then read until the server closes, at
    most `timeout` seconds; once what came in parses as complete responses,
    wait at most `linger` more for the close (or for more responses)."""
    timeout = scaled(3) if timeout is None else timeout
    linger = scaled(1) if linger is None else linger
    if mode == "whole":
        pieces = [data]
    elif mode == "bytewise":
        pieces = [data[i:i + 1] for i in range(len(data))]
    elif mode == "split":
        assert cut is not None and 0 < cut < len(data), cut
        pieces = [data[:cut], data[cut:]]
    else:
        raise AssertionError(mode)
    x = Exchange()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, piece in enumerate(pieces):
            try:
                s.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused early: its answer may still be in the buffer
            if mode == "split" and i == 0 and not x._recv(s, scaled(0.05)):
                break
        x._sent_at = time.monotonic()
        deadline = x._sent_at + timeout
        settled_at = None
        while not x.closed:
            now = time.monotonic()
            limit = deadline if settled_at is None else min(deadline, settled_at + linger)
            if now >= limit:
                break
            before = len(x.buf)
            x._recv(s, limit - now)
            if len(x.buf) != before:
                resps, rest = parse_responses(x.buf, bodyless)
                if resps and not rest and resps[-1].framing != "close":
                    settled_at = time.monotonic()
        return x
    finally:
        s.close()


class Resp:
    def __init__(self, version, status, headers, head, body, framing):
        self.version = version
        self.status = status
        self.headers = headers  # [(lower-cased name, value)] in order
        self.head = head
        self.body = body
        self.framing = framing  # "length", "chunked", "none" (HEAD, 204, 304), "close"

    def values(self, name):
        return [v for k, v in self.headers if k == name]

    def header(self, name):
        v = self.values(name)
        return v[0] if v else None

    def __repr__(self):
        return f"<Resp {self.status} {self.framing} {self.head[:200]!r} body={self.body[:200]!r}>"


def parse_responses(buf, bodyless=()):
    """Every complete response at the start of `buf`, framed by
    Content-Length or chunked (a response with neither runs to the close);
    the responses whose index is in `bodyless` (answers to HEAD) have no
    body. Returns (responses, the bytes left: incomplete or not a response)."""
    out = []
    pos = 0
    while pos < len(buf):
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head_bytes = buf[pos:end]
        lines = head_bytes.decode("latin-1").split("\r\n")
        m = re.fullmatch(r"(HTTP/1\.[01]) (\d{3})(?: .*)?", lines[0])
        if m is None:
            break
        headers = []
        for ln in lines[1:]:
            k, sep, v = ln.partition(":")
            if not sep:
                return out, buf[pos:]
            headers.append((k.strip().lower(), v.strip()))
        status = int(m.group(2))
        start = end + 4
        te = [v for k, v in headers if k == "transfer-encoding"]
        cl = [v for k, v in headers if k == "content-length"]
        if len(out) in bodyless or status in (204, 304) or 100 <= status < 200:
            body, nxt, framing = b"", start, "none"
        elif te and te[-1].lower() == "chunked":
            body = b""
            p = start
            while True:
                eol = buf.find(b"\r\n", p)
                if eol < 0:
                    return out, buf[pos:]
                size_txt = buf[p:eol].split(b";")[0].strip()
                if not re.fullmatch(rb"[0-9a-fA-F]+", size_txt):
                    return out, buf[pos:]
                size = int(size_txt, 16)
                if size == 0:
                    q = eol + 2
                    while True:  # trailer section, then the blank line
                        e2 = buf.find(b"\r\n", q)
                        if e2 < 0:
                            return out, buf[pos:]
                        if e2 == q:
                            nxt = e2 + 2
                            break
                        q = e2 + 2
                    break
                data_end = eol + 2 + size
                if len(buf) < data_end + 2:
                    return out, buf[pos:]
                if buf[data_end:data_end + 2] != b"\r\n":
                    return out, buf[pos:]
                body += buf[eol + 2:data_end]
                p = data_end + 2
            framing = "chunked"
        elif cl:
            if not cl[0].isdigit():
                return out, buf[pos:]
            n = int(cl[0])
            if len(buf) < start + n:
                return out, buf[pos:]
            body, nxt, framing = buf[start:start + n], start + n, "length"
        else:
            body, nxt, framing = buf[start:], len(buf), "close"
        out.append(Resp(m.group(1), status, headers, head_bytes, body, framing))
        pos = nxt
    return out, buf[pos:]


def status_lines(buf):
    return len(STATUS_LINE_RE.findall(buf))


def assert_refused(x, statuses=None, require_length=False):
    """Exactly one response, a 4xx/5xx (or one of `statuses`), well framed,
    nothing after it, and the connection closed by the server."""
    assert x.buf, f"no response at all ({x.describe()})"
    n = status_lines(x.buf)
    assert n == 1, (f"{n} status lines: bytes after the refused head were answered as a "
                    f"request ({x.describe()})")
    resps, rest = parse_responses(x.buf)
    assert len(resps) == 1 and rest == b"", (
        f"not exactly one complete response with nothing after it: {resps} rest={rest[:200]!r}")
    r = resps[0]
    if statuses is not None:
        assert r.status in statuses, f"status {r.status}, expected one of {statuses}: {r}"
    else:
        assert 400 <= r.status <= 599, f"status {r.status} for a framing error: {r}"
    if require_length:
        cl = r.values("content-length")
        assert len(cl) == 1, f"the refusal has no single Content-Length: {r}"
        assert r.framing == "length" and len(r.body) == int(cl[0]), r
    assert x.closed, f"the server kept the connection open after the refusal ({x.describe()})"
    return r


def assert_one_answer(x, statuses):
    """Exactly one complete, length- or chunk-framed response with a status
    in `statuses`, then the close (the request said Connection: close)."""
    assert x.buf, f"no response at all ({x.describe()})"
    resps, rest = parse_responses(x.buf)
    assert status_lines(x.buf) == 1 and len(resps) == 1 and rest == b"", (
        f"not exactly one response: {resps} rest={rest[:200]!r} ({x.describe()})")
    r = resps[0]
    assert r.status in statuses, f"status {r.status}, expected one of {statuses}: {r}"
    assert r.framing in ("length", "chunked"), f"response not framed: {r}"
    assert x.closed, f"not closed after Connection: close ({x.describe()})"
    return r


def modes_param():
    return pytest.mark.parametrize("mode", MODES)


def listeners_param():
    return pytest.mark.parametrize("listener", LISTENERS)


# --------------------------------------------------------------------------
# 1. desync
# --------------------------------------------------------------------------


def _desync_variants():
    """id -> builder(listener) -> (bytes, cut)."""

    def ct(listener):
        return (CT_JSON,) if listener == "public" else ()

    def get_inside(listener):
        return head(b"GET", PATH[listener])

    def http10_te_body_holds_request(L):
        data = (head(b"POST", BODY_PATH[L], b"Connection: keep-alive", *ct(L),
                     b"Transfer-Encoding: chunked", version=b"HTTP/1.0")
                + chunked(get_inside(L)))
        return data, cut_before(data, b"Transfer-Encoding")

    def http10_te_request_after_body(L):
        data = (head(b"POST", BODY_PATH[L], b"Connection: keep-alive", *ct(L),
                     b"Transfer-Encoding: chunked", version=b"HTTP/1.0")
                + b"0\r\n\r\n" + hidden(L))
        return data, cut_before(data, b"Transfer-Encoding")

    def cl_folded(L):
        data = (head(b"POST", BODY_PATH[L], *ct(L), b"Content-Length: 1", b" 0")
                + b"x" * 10 + hidden(L))
        return data, cut_before(data, b" 0")

    def cl_then_te(L):
        h = hidden(L)
        data = (head(b"POST", BODY_PATH[L], *ct(L), b"Content-Length: %d" % (5 + len(h)),
                     b"Transfer-Encoding: chunked") + b"0\r\n\r\n" + h)
        return data, cut_before(data, b"Transfer-Encoding")

    def te_then_cl(L):
        h = hidden(L)
        size_line = b"%x\r\n" % len(h)
        data = (head(b"POST", BODY_PATH[L], *ct(L), b"Transfer-Encoding: chunked",
                     b"Content-Length: %d" % len(size_line)) + chunked(h))
        return data, cut_before(data, b"Content-Length")

    def two_content_lengths(L):
        h = hidden(L)
        data = (head(b"POST", BODY_PATH[L], *ct(L), b"Content-Length: 0",
                     b"Content-Length: %d" % len(h)) + h)
        return data, cut_before(data, b"Content-Length")

    def cl_abc(L):
        data = head(b"POST", BODY_PATH[L], *ct(L), b"Content-Length: abc") + hidden(L)
        return data, cut_before(data, b"Content-Length")

    def cl_plus(L):
        data = (head(b"POST", BODY_PATH[L], *ct(L), b"Content-Length: +%d" % len(TICKER))
                + TICKER + hidden(L))
        return data, cut_before(data, b"Content-Length")

    def cl_list(L):
        data = (head(b"POST", BODY_PATH[L], *ct(L),
                     b"Content-Length: %d, %d" % (len(TICKER), len(TICKER))) + TICKER + hidden(L))
        return data, cut_before(data, b"Content-Length")

    return {
        "http10-keepalive-te-body-holds-request": (http10_te_body_holds_request, (400,)),
        "http10-keepalive-te-request-after-body": (http10_te_request_after_body, (400,)),
        "content-length-folded": (cl_folded, None),
        "content-length-then-transfer-encoding": (cl_then_te, None),
        "transfer-encoding-then-content-length": (te_then_cl, None),
        "two-content-lengths": (two_content_lengths, None),
        "content-length-abc": (cl_abc, None),
        "content-length-plus": (cl_plus, None),
        "content-length-list": (cl_list, None),
    }


DESYNC = _desync_variants()


class TestDesync:
    @modes_param()
    @pytest.mark.parametrize("variant", list(DESYNC))
    @listeners_param()
    def test_framing_error_gets_one_response_then_close(self, plain, listener, variant, mode):
        """Class 1, RFC 9112 section 6.1 (Transfer-Encoding in HTTP/1.0, with
        Content-Length), 6.3 (invalid Content-Length) and 9.6 (close after a
        framing error): one 4xx/5xx, the close, nothing hidden is run. The
        requests carry a body, so on the admin listener they go to /drain
        (which reads one) rather than /healthz (which refuses any body)."""
        build, statuses = DESYNC[variant]
        data, cut = build(listener)
        before = task_ids(plain)
        x = converse(port_of(plain, listener), data, mode, cut)
        assert_refused(x, statuses)
        assert task_ids(plain) == before, "a request hidden behind a framing error created a task"
        assert_healthy(plain)


# --------------------------------------------------------------------------
# 2. obs-fold
# --------------------------------------------------------------------------


def _fold_variants():
    def ordinary_sp(L):
        data = head(b"GET", PATH[L], b"X-A: a", b" b")
        return data, cut_before(data, b" b")

    def ordinary_htab(L):
        data = head(b"GET", PATH[L], b"X-A: a", b"\tb")
        return data, cut_before(data, b"\tb")

    def after_request_line(L):
        data = b"GET " + PATH[L] + b" HTTP/1.1\r\n X-A: b\r\nHost: x\r\n\r\n"
        return data, cut_before(data, b" X-A")

    def folded_host(L):
        data = head(b"GET", PATH[L], b" y")
        return data, cut_before(data, b" y")

    def last_line_folded(L):
        data = head(b"GET", PATH[L], b"X-A: a", b"X-B: b", b" c")
        return data, cut_before(data, b" c")

    def te_fold_then_cl(L):
        ct = (CT_JSON,) if L == "public" else ()
        data = (head(b"POST", BODY_PATH[L], *ct, b"Transfer-Encoding: identity", b" chunked",
                     b"Content-Length: %d" % len(TICKER)) + TICKER + hidden(L))
        return data, cut_before(data, b" chunked")

    def cl_then_te_fold_htab(L):
        ct = (CT_JSON,) if L == "public" else ()
        data = (head(b"POST", BODY_PATH[L], *ct, b"Content-Length: %d" % len(TICKER),
                     b"Transfer-Encoding: identity", b"\tchunked") + TICKER + hidden(L))
        return data, cut_before(data, b"\tchunked")

    return {
        "ordinary-header-sp": ordinary_sp,
        "ordinary-header-htab": ordinary_htab,
        "right-after-request-line": after_request_line,
        "host-folded": folded_host,
        "last-header-folded": last_line_folded,
        "transfer-encoding-folded-with-content-length": te_fold_then_cl,
        "content-length-with-transfer-encoding-folded-htab": cl_then_te_fold_htab,
    }


FOLDS = _fold_variants()


class TestObsFold:
    @modes_param()
    @pytest.mark.parametrize("variant", list(FOLDS))
    @listeners_param()
    def test_line_starting_with_whitespace_is_400_then_close(self, plain, listener, variant, mode):
        """Class 2, RFC 9112 section 5.2 (obs-fold outside message/http: 400)
        and 2.2 (whitespace after the start-line): one 400, the close; a
        folded framing header creates no task."""
        data, cut = FOLDS[variant](listener)
        before = task_ids(plain)
        x = converse(port_of(plain, listener), data, mode, cut)
        assert_refused(x, (400,))
        assert task_ids(plain) == before, "a request with a folded header line created a task"
        assert_healthy(plain)


# --------------------------------------------------------------------------
# 3. Transfer-Encoding other than chunked
# --------------------------------------------------------------------------

TE_REFUSED = {
    "xchunked": b"xchunked",
    "chunked-chunked": b"chunked, chunked",
    "gzip": b"gzip",
    "gzip-chunked": b"gzip, chunked",
    "identity": b"identity",
    "chunked-gzip": b"chunked, gzip",
}
TE_ACCEPTED = {
    "Chunked": b"Chunked",
    "CHUNKED": b"CHUNKED",
    "chunked-with-ows": b" \tchunked \t",
}


def _te_head(listener, value, *extra):
    if listener == "public":
        return head(b"POST", b"/v1/tasks", CT_JSON, b"Transfer-Encoding: " + value, *extra)
    return head(b"GET", b"/healthz", b"Transfer-Encoding: " + value, *extra)


class TestTransferEncoding:
    @modes_param()
    @pytest.mark.parametrize("variant", list(TE_REFUSED))
    @listeners_param()
    def test_not_chunked_is_refused_at_once(self, plain, listener, variant, mode):
        """Class 3, RFC 9112 section 6.1 (a coding not understood: 501) and
        6.3 (chunked not final: 400, close): the head alone, no body, is
        answered 501 or 400 within scaled(2) s, far below IDLE_TIMEOUT, then
        the connection is closed."""
        data = _te_head(listener, TE_REFUSED[variant])
        x = converse(port_of(plain, listener), data, mode, cut_before(data, b"Transfer-Encoding"))
        assert x.first_byte_s is not None and x.first_byte_s <= scaled(2), (
            f"not answered at once: first byte after {x.first_byte_s} s ({x.describe()})")
        assert_refused(x, (400, 501))
        assert_healthy(plain)

    @modes_param()
    @pytest.mark.parametrize("variant", list(TE_ACCEPTED))
    @listeners_param()
    def test_chunked_in_any_case_is_accepted(self, plain, listener, variant, mode):
        """Class 3, RFC 9112 section 7 (transfer-coding names are
        case-insensitive) and RFC 9110 section 5.5 (OWS around a field value
        is not part of it): exactly "chunked" is the chunked coding. The body
        is read to its last chunk and the request answered (202 for a task;
        /healthz takes no body, so it gets the empty chunked body), and the
        GET pipelined behind it is answered next: the framing was consumed
        exactly."""
        body = chunked(TICKER[:10], TICKER[10:]) if listener == "public" else chunked()
        data = (_te_head(listener, TE_ACCEPTED[variant]) + body
                + head(b"GET", PATH[listener], b"Connection: close"))
        x = converse(port_of(plain, listener), data, mode, cut_before(data, b"Transfer-Encoding"))
        resps, rest = parse_responses(x.buf)
        want = [202, 200] if listener == "public" else [200, 200]
        assert [r.status for r in resps] == want and rest == b"", (
            f"expected {want}: {resps} rest={rest[:200]!r} ({x.describe()})")
        assert all(r.framing in ("length", "chunked") for r in resps), resps
        assert status_lines(x.buf) == 2, x.describe()
        assert x.closed, f"not closed after Connection: close ({x.describe()})"
        assert_healthy(plain)


# --------------------------------------------------------------------------
# 4. HEAD
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_task(pool):
    d = pool("plain")
    t = d.submit(count=3, interval_ms=1)
    d.wait_task(t["id"])
    return t["id"]


class TestHead:
    def _head_then_get(self, d, listener, target, mode, expect_type=None):
        first = head(b"HEAD", target)
        follow = head(b"GET", PATH[listener], b"Connection: close")
        data = first + follow
        x = converse(port_of(d, listener), data, mode, cut=len(first) - 2, bodyless=(0,))
        assert x.buf, f"no response to HEAD ({x.describe()})"
        end = x.buf.find(b"\r\n\r\n")
        assert end > 0, f"no complete head for HEAD ({x.describe()})"
        resps, rest = parse_responses(x.buf, bodyless=(0,))
        assert resps and resps[0].status == 200, f"HEAD {target!r}: {resps} ({x.describe()})"
        if expect_type is not None:
            ctype = resps[0].header("content-type") or ""
            assert ctype.startswith(expect_type), f"HEAD of a stream: Content-Type {ctype!r}"
        after = x.buf[end + 4:]
        assert after.startswith(b"HTTP/1.1 200"), (
            f"HEAD {target!r}: the bytes after its head are not the next response "
            f"(body bytes sent for HEAD, or the pipelined GET not answered): {after[:300]!r}")
        assert len(resps) == 2 and rest == b"", f"not two framed responses: {resps} rest={rest[:200]!r}"
        second = resps[1]
        assert second.framing in ("length", "chunked"), second
        doc = json.loads(second.body)
        if listener == "public":
            assert isinstance(doc.get("tasks"), list), doc
        else:
            assert doc.get("status") == "ok", doc
        assert status_lines(x.buf) == 2, x.describe()
        assert x.closed, f"not closed after Connection: close ({x.describe()})"
        return resps[0]

    @modes_param()
    def test_head_of_running_stream(self, plain, mode):
        """Class 4, RFC 9110 section 9.3.2 and RFC 9112 section 6.3 (rule 1: a
        HEAD response ends with its head): HEAD of a running task's stream has
        the stream's head (200, text/event-stream) and no body byte; the GET
        pipelined in the same write is the very next response."""
        t = plain.submit(count=2000, interval_ms=10)
        try:
            plain.wait_task(t["id"], states=("running",))
            self._head_then_get(plain, "public", b"/v1/tasks/" + t["id"].encode() + b"/events",
                                mode, expect_type="text/event-stream")
        finally:
            http("DELETE", f"{plain.url}/v1/tasks/{t['id']}")
        plain.wait_task(t["id"])
        assert_healthy(plain)

    @modes_param()
    def test_head_of_finished_stream(self, plain, finished_task, mode):
        """Class 4, RFC 9110 section 9.3.2 and RFC 9112 section 6.3 (rule 1):
        HEAD of a finished task's stream: 200, text/event-stream, no body
        (not the replayed events); the pipelined GET is answered next."""
        self._head_then_get(plain, "public", b"/v1/tasks/" + finished_task.encode() + b"/events",
                            mode, expect_type="text/event-stream")
        assert_healthy(plain)

    @modes_param()
    @listeners_param()
    def test_head_of_plain_resource(self, plain, listener, mode):
        """Class 4, RFC 9110 section 9.3.2 and RFC 9112 section 6.3 (rule 1):
        HEAD /v1/tasks and HEAD /healthz: no body (Content-Length may be
        there), the pipelined GET is the next response."""
        self._head_then_get(plain, listener, PATH[listener], mode)
        assert_healthy(plain)


# --------------------------------------------------------------------------
# 5. duplicate singleton headers
# --------------------------------------------------------------------------


def _public_post(*lines, host=b"x"):
    return head(b"POST", b"/v1/tasks", CT_JSON, b"Content-Length: %d" % len(TICKER), *lines,
                host=host) + TICKER


def _admin_drain(*lines, host=b"x"):
    return head(b"POST", b"/drain", b"Content-Length: 0", *lines, host=host)


# id -> (listener, builder(task_id) -> bytes, needle of the second line)
DUPLICATES = {
    "public-authorization-right-then-wrong":
        ("public", lambda tid: _public_post(AUTH_API, AUTH_WRONG), AUTH_WRONG),
    "public-authorization-wrong-then-right":
        ("public", lambda tid: _public_post(AUTH_WRONG, AUTH_API), AUTH_API),
    "public-authorization-case":
        ("public", lambda tid: _public_post(AUTH_API, AUTH_API.lower()), AUTH_API.lower()),
    "public-last-event-id":
        ("public", lambda tid: head(b"GET", b"/v1/tasks/" + tid + b"/events", AUTH_API,
                                    b"Last-Event-ID: 1", b"Last-Event-ID: 2"), b"Last-Event-ID: 2"),
    "public-content-type":
        ("public", lambda tid: _public_post(AUTH_API, b"Content-Type: text/plain"),
         b"Content-Type: text/plain"),
    "public-content-type-json-twice":
        ("public", lambda tid: head(b"POST", b"/v1/tasks", b"Content-Type: text/plain", CT_JSON,
                                    b"Content-Length: %d" % len(TICKER), AUTH_API) + TICKER,
         CT_JSON),
    "public-host":
        ("public", lambda tid: _public_post(AUTH_API, b"Host: y"), b"Host: y"),
    "public-host-lowercase":
        ("public", lambda tid: _public_post(AUTH_API, b"host: x"), b"host: x"),
    "public-host-uppercase":
        ("public", lambda tid: _public_post(b"HOST: x", AUTH_API, b"host: y", host=None),
         b"host: y"),
    "admin-authorization-right-then-wrong":
        ("admin", lambda tid: _admin_drain(AUTH_DRAIN, AUTH_WRONG), AUTH_WRONG),
    "admin-authorization-wrong-then-right":
        ("admin", lambda tid: _admin_drain(AUTH_WRONG, AUTH_DRAIN), AUTH_DRAIN),
    "admin-authorization-case":
        ("admin", lambda tid: _admin_drain(AUTH_DRAIN, b"AUTHORIZATION: Bearer " + DRAIN_KEY.encode()),
         b"AUTHORIZATION"),
    "admin-last-event-id":
        ("admin", lambda tid: _admin_drain(AUTH_DRAIN, b"Last-Event-ID: 1", b"Last-Event-ID: 2"),
         b"Last-Event-ID: 2"),
    "admin-content-type":
        ("admin", lambda tid: _admin_drain(AUTH_DRAIN, CT_JSON, b"Content-Type: text/plain"),
         b"Content-Type: text/plain"),
    "admin-host":
        ("admin", lambda tid: _admin_drain(AUTH_DRAIN, b"Host: y"), b"Host: y"),
    "admin-host-lowercase":
        ("admin", lambda tid: _admin_drain(AUTH_DRAIN, b"host: x"), b"host: x"),
    "admin-host-uppercase":
        ("admin", lambda tid: _admin_drain(b"HOST: x", AUTH_DRAIN, b"host: y", host=None),
         b"host: y"),
}


class TestDuplicateSingletons:
    @modes_param()
    @pytest.mark.parametrize("variant", list(DUPLICATES))
    def test_duplicate_singleton_is_400_then_close(self, keyed, keyed_task, variant, mode):
        """Class 5, RFC 9112 section 3.2 (more than one Host: 400) and RFC
        9110 section 5.3 (a singleton field may not be combined): one 400,
        the close; a doubled Authorization neither drains the process (readyz
        stays 200) nor creates a task."""
        listener, build, needle = DUPLICATES[variant]
        data = build(keyed_task.encode())
        before = task_ids(keyed, API_KEY)
        try:
            x = converse(port_of(keyed, listener), data, mode, cut_before(data, needle))
            assert_refused(x, (400,))
            assert keyed.readyz() == 200, "a request with a doubled header drained the process"
        finally:
            if keyed.readyz() != 200:  # keep the shared daemon serving for the next tests
                keyed.drain(DRAIN_KEY, "DELETE")
        assert task_ids(keyed, API_KEY) == before, "a request with a doubled header created a task"
        assert_healthy(keyed)


# --------------------------------------------------------------------------
# 6. percent-encoded controls and %2F
# --------------------------------------------------------------------------

# id -> (listener, builder(task_id) -> bytes)
ENCODED_CONTROLS = {
    "admin-drain-nul": ("admin", lambda tid: head(b"POST", b"/drain%00", b"Content-Length: 0",
                                                  AUTH_DRAIN)),
    "admin-drain-nul-x": ("admin", lambda tid: head(b"POST", b"/drain%00x", b"Content-Length: 0",
                                                    AUTH_DRAIN)),
    "admin-healthz-nul": ("admin", lambda tid: head(b"GET", b"/healthz%00")),
    "admin-readyz-lf": ("admin", lambda tid: head(b"GET", b"/readyz%0A")),
    "public-events-nul": ("public", lambda tid: head(b"GET", b"/v1/tasks/" + tid + b"/events%00",
                                                     AUTH_API)),
    "public-tasks-soh": ("public", lambda tid: head(b"GET", b"/v1/tasks%01", AUTH_API)),
    "public-tasks-del": ("public", lambda tid: head(b"GET", b"/v1/tasks%7F", AUTH_API)),
    "public-tasks-del-lowercase": ("public", lambda tid: head(b"GET", b"/v1/tasks%7f", AUTH_API)),
    "public-post-tasks-nul": ("public", lambda tid: post_ticker(AUTH_API, target=b"/v1/tasks%00")),
}

# id -> (listener, builder(task_id) -> target, expected status)
ENCODED_ROUTES = {
    "public-v1-2F-tasks": ("public", lambda tid: b"/v1%2Ftasks", 404),
    "public-id-2F-events": ("public", lambda tid: b"/v1/tasks/" + tid + b"%2Fevents", 404),
    "public-tasks-trailing-2F": ("public", lambda tid: b"/v1/tasks%2F", 404),
    "public-escaped-letter": ("public", lambda tid: b"/v1/%74asks", 200),
    "admin-escaped-letter": ("admin", lambda tid: b"/heal%74hz", 200),
    "admin-2F-healthz": ("admin", lambda tid: b"/%2Fhealthz", 404),
    "admin-healthz-trailing-2F": ("admin", lambda tid: b"/healthz%2F", 404),
}


class TestPercentEncoding:
    @modes_param()
    @pytest.mark.parametrize("variant", list(ENCODED_CONTROLS))
    def test_encoded_control_byte_is_400(self, keyed, keyed_task, variant, mode):
        """Class 6, RFC 9112 section 3.2 and RFC 3986 section 2.1: a target
        whose escape decodes to NUL or another control byte is a 400 (then
        close), never a shorter path: /drain%00 with the right key does not
        drain, POST /v1/tasks%00 creates no task."""
        listener, build = ENCODED_CONTROLS[variant]
        data = build(keyed_task.encode())
        before = task_ids(keyed, API_KEY)
        try:
            x = converse(port_of(keyed, listener), data, mode, cut_at(data, b"%"))
            assert_refused(x, (400,))
            assert keyed.readyz() == 200, "an encoded control byte reached /drain"
        finally:
            if keyed.readyz() != 200:
                keyed.drain(DRAIN_KEY, "DELETE")
        assert task_ids(keyed, API_KEY) == before
        assert_healthy(keyed)

    @modes_param()
    @pytest.mark.parametrize("variant", list(ENCODED_ROUTES))
    def test_encoded_slash_stays_in_its_segment(self, keyed, keyed_task, variant, mode):
        """Class 6, RFC 3986 section 2.2 and 3.3 (a %2F is data, not a
        delimiter) and RFC 9112 section 3.2.1: the target is split at '/'
        first and each segment decoded after, so /v1%2Ftasks and
        /v1/tasks/<id>%2Fevents match nothing (404: not the list, not the
        task, not a stream), while an escaped letter is the letter (200)."""
        listener, build, expected = ENCODED_ROUTES[variant]
        tid = keyed_task.encode()
        target = build(tid)
        auth = (AUTH_API,) if listener == "public" else ()
        data = head(b"GET", target, *auth, b"Connection: close")
        x = converse(port_of(keyed, listener), data, mode, cut_at(data, b"%"))
        r = assert_one_answer(x, (expected,))
        ctype = r.header("content-type") or ""
        assert not ctype.startswith("text/event-stream"), f"{target!r} opened a stream: {r}"
        if expected == 404:
            doc = json.loads(r.body)
            assert "tasks" not in doc and doc.get("id") != keyed_task, f"{target!r} was routed: {doc}"
        elif listener == "public":
            assert isinstance(json.loads(r.body).get("tasks"), list), r
        else:
            assert json.loads(r.body).get("status") == "ok", r
        assert keyed.readyz() == 200
        assert_healthy(keyed)


# --------------------------------------------------------------------------
# 7. exactly one well-framed response to a bad request
# --------------------------------------------------------------------------


def _bad_requests():
    def no_host(L):
        data = head(b"GET", PATH[L], host=None)
        return data, data.index(b"\r\n\r\n")

    def cl_abc(L):
        data = head(b"GET", PATH[L], b"Content-Length: abc")
        return data, cut_before(data, b"Content-Length")

    def dup_host(L):
        data = head(b"GET", PATH[L], b"Host: y")
        return data, cut_before(data, b"Host: y")

    def host_space_slash(L):
        data = head(b"GET", PATH[L], host=b"a b/c")
        return data, cut_before(data, b"Host")

    def host_open_bracket(L):
        data = head(b"GET", PATH[L], host=b"[::1")
        return data, cut_before(data, b"Host")

    return {
        "http11-without-host": no_host,
        "content-length-abc": cl_abc,
        "duplicate-host": dup_host,
        "host-with-space-and-slash": host_space_slash,
        "host-unclosed-bracket": host_open_bracket,
    }


BAD_REQUESTS = _bad_requests()


class TestOneResponse:
    @modes_param()
    @pytest.mark.parametrize("variant", list(BAD_REQUESTS))
    @listeners_param()
    def test_bad_request_gets_one_framed_400_then_close(self, plain, listener, variant, mode):
        """Class 7, RFC 9112 section 3.2 (Host: 400), 6.3 (invalid
        Content-Length: 400 and close) and 9.6 (close after the response):
        exactly one 400 whose body is as long as its Content-Length, nothing
        after it (a valid request pipelined behind it is not answered), and
        the close."""
        data, cut = BAD_REQUESTS[variant](listener)
        data += head(b"GET", PATH[listener])
        x = converse(port_of(plain, listener), data, mode, cut)
        assert_refused(x, (400,), require_length=True)
        assert_healthy(plain)


# --------------------------------------------------------------------------
# 8. absolute form and asterisk form
# --------------------------------------------------------------------------


class TestTargetForms:
    @modes_param()
    @listeners_param()
    def test_absolute_form_is_routed_on_its_path(self, plain, listener, mode):
        """Class 8, RFC 9112 section 3.2.2: a server MUST accept the
        absolute form; the request is routed on its path (200 and the task
        list on the public listener, 200 from /healthz on the admin one)."""
        if listener == "public":
            authority = b"127.0.0.1:%d" % plain.port
            data = head(b"GET", b"http://" + authority + b"/v1/tasks", b"Connection: close",
                        host=authority)
        else:
            data = head(b"GET", b"http://x/healthz", b"Connection: close")
        x = converse(port_of(plain, listener), data, mode, cut_before(data, b"Host"))
        r = assert_one_answer(x, (200,))
        doc = json.loads(r.body)
        if listener == "public":
            assert isinstance(doc.get("tasks"), list), doc
            assert {t["id"] for t in doc["tasks"]} == task_ids(plain), "not the task list"
        else:
            assert doc.get("status") == "ok", doc
        assert_healthy(plain)

    @modes_param()
    @listeners_param()
    def test_asterisk_form_for_get_is_400(self, plain, listener, mode):
        """Class 8, RFC 9112 section 3.2.4: the asterisk form is only for
        OPTIONS; GET * is a 400 (one response, then close)."""
        data = head(b"GET", b"*") + head(b"GET", PATH[listener])
        x = converse(port_of(plain, listener), data, mode, cut_before(data, b"Host"))
        assert_refused(x, (400,))
        assert_healthy(plain)

    @modes_param()
    @listeners_param()
    def test_options_asterisk_is_answered_with_allow(self, plain, listener, mode):
        """Class 8, RFC 9112 section 3.2.4 and RFC 9110 section 9.3.7:
        OPTIONS * asks about the server itself: a 2xx (200 or 204) with an
        Allow header."""
        data = head(b"OPTIONS", b"*", b"Connection: close")
        x = converse(port_of(plain, listener), data, mode, cut_before(data, b"Host"))
        assert x.buf, f"no response ({x.describe()})"
        resps, rest = parse_responses(x.buf)
        assert len(resps) == 1 and rest == b"" and status_lines(x.buf) == 1, x.describe()
        r = resps[0]
        assert r.status in (200, 204), r
        assert r.header("allow"), f"no Allow header: {r}"
        assert x.closed, x.describe()
        assert_healthy(plain)
