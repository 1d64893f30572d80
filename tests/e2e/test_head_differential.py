"""The request-head parser (src/http_head.h) against an independent one, h11
(Debian python3-h11 0.14), through ts_headcheck (tests/e2e/progs/headcheck.c,
built next to taskstreamd): one process reads every case as a record (a
4-byte big-endian length, then the bytes) and answers each with a JSON line
whose strings are latin-1 (every byte one \\u00XX-or-ASCII code point), so
`.encode("latin-1")` gives the request's bytes back.

The cases are about a hundred hand-written heads, one or more for every rule
in the header comment of src/http_head.h, each with the verdict our parser
must give, and a few thousand generated ones (random.Random(SEED)): valid
heads built from parts, then mutated (bytes inserted, deleted or replaced
from an alphabet of separators, controls and obs-text; a line duplicated or
folded; names recased; tokens spliced in; the head cut short).

Each case is fed to h11 once, whole, without end of input (receive_data(b"")
would say the peer closed), and the two verdicts are compared:
  - both accept: method, target, version, head length, the field list (h11
    lowercases names and Transfer-Encoding's value), framing, keep-alive
    (HTTP/1.1; h11 treats every HTTP/1.0 request as closing) and
    100-continue must agree; form, path, query and authority must be what
    the target and Host say;
  - h11 rejects: we must reject too, but for LENIENT below;
  - we reject and h11 accepts (or still waits): the input must break one of
    the strictness rules of src/http_head.h, found by violations(), an
    independent reading of the input, and the rule must be the one our
    answer names; anything else fails and prints the input and both
    verdicts;
  - "needs more bytes" must agree, but for h11's early refusal of a request
    line starting with a byte below 0x21.
`pytest -s` prints the counts per class. test_rfc_corner_cases holds the
inputs this comparison once found our parser wrong on (now fixed), each
with the RFC rule.
"""

import collections
import ipaddress
import json
import os
import random
import re
import struct
import subprocess

import h11
import pytest

LINE_MAX = 8192  # tests/e2e/progs/headcheck.c
HEAD_MAX = 65536
FIELDS_MAX = 100  # TS_HTTP_FIELDS_MAX
EMPTY_LINES_MAX = 8  # TS_HTTP_EMPTY_LINES_MAX
H11_BUFFER_MAX = 16 * 1024  # h11's max_incomplete_event_size default

SEED = 9112
GENERATED = 3000


def headcheck_binary(binary):
    build = os.environ.get("TS_BUILD_DIR") or os.path.dirname(binary)
    return os.path.join(build, "ts_headcheck")


@pytest.fixture(scope="module")
def headcheck(binary):
    path = headcheck_binary(binary)
    if not os.access(path, os.X_OK):
        pytest.fail(f"ts_headcheck is not built next to the daemon: {path}")
    return path


def run_headcheck(path, cases):
    """Our verdict for every case, from one ts_headcheck run."""
    feed = b"".join(struct.pack(">I", len(c)) + c for c in cases)
    proc = subprocess.run([path], input=feed, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    lines = proc.stdout.decode("ascii").splitlines()
    assert len(lines) == len(cases), (len(lines), len(cases))
    out = []
    for line in lines:
        v = json.loads(line)
        if v["ok"] is True:
            for k in ("method", "target", "path", "authority"):
                v[k] = v[k].encode("latin-1")
            if v["query"] is not None:
                v["query"] = v["query"].encode("latin-1")
            v["fields"] = [(n.encode("latin-1"), x.encode("latin-1")) for n, x in v["fields"]]
        out.append(v)
    return out


# --------------------------------------------------------------------------
# h11
# --------------------------------------------------------------------------


def h11_keep_alive(ev):
    helper = getattr(getattr(h11, "_connection", None), "_keep_alive", None)
    if helper is not None:
        return helper(ev)
    tokens = [t.strip().lower() for n, v in ev.headers if n == b"connection" for t in v.split(b",")]
    return b"close" not in tokens and ev.http_version >= b"1.1"


def h11_verdict(data):
    c = h11.Connection(h11.SERVER)
    try:
        if data:  # receive_data(b"") means the peer closed
            c.receive_data(data)
        ev = c.next_event()
    except h11.RemoteProtocolError as e:
        return {"kind": "reject", "status": e.error_status_hint, "why": str(e)}
    if ev is h11.NEED_DATA:
        return {"kind": "incomplete"}
    assert isinstance(ev, h11.Request), ev
    return {"kind": "accept", "event": ev, "head_len": len(data) - len(c.trailing_data[0]),
            "keep_alive": h11_keep_alive(ev),
            "expect_continue": c.client_is_waiting_for_100_continue}


def show(v):
    if v.get("kind") == "accept":
        ev = v["event"]
        return (f"h11 accept: {ev.method!r} {ev.target!r} HTTP/{ev.http_version.decode()} "
                f"{list(ev.headers)!r} head_len={v['head_len']}")
    return repr(v)


# --------------------------------------------------------------------------
# The strictness classes of src/http_head.h, and an independent reading of
# an input that says which of them it breaks.
# --------------------------------------------------------------------------

NUL = "NUL in the head (scan)"
BARE_LF = "bare LF line end (RFC 9112 2.2)"
BARE_CR = "bare CR (RFC 9112 2.2)"
EMPTY_LINES = "more than TS_HTTP_EMPTY_LINES_MAX empty lines before the request line"
LINE_LONG = "request line over line_max (414)"
HEAD_LARGE = "head over head_max (431)"
REQUEST_LINE = "request line not METHOD SP TARGET SP HTTP/d.d"
MAJOR = "HTTP major version other than 1 (505)"
TARGET_CHAR = "target character outside RFC 3986"
BAD_PCT = "bad %-escape in the target"
ASTERISK = "asterisk form other than OPTIONS"
CONNECT = "CONNECT / authority form (501)"
TARGET_FORM = "target neither origin form nor http(s) absolute form"
AUTHORITY = "absolute-form authority not host[:port] (userinfo, empty, bad host or port)"
OBS_FOLD = "obs-fold or whitespace before the first field (RFC 9112 5.2, 2.2)"
FIELD_LINE = "field line without a colon or with an empty or non-token name (RFC 9112 5.1)"
VALUE_CTL = "control character (0x01-0x1F but HTAB, 0x7F) in a field value"
FIELDS_MANY = "more than TS_HTTP_FIELDS_MAX field lines (431)"
DUP_SINGLETON = "duplicate singleton field (Host, Authorization, Content-Type, Last-Event-ID)"
DUP_FRAMING = "duplicate Content-Length or Transfer-Encoding"
HOST_MISSING = "no Host in HTTP/1.x, x >= 1 (RFC 9112 3.2)"
HOST_SYNTAX = "Host syntax: not host[:port] (RFC 9112 3.2, RFC 3986 3.2.2)"
TE_HTTP10 = "Transfer-Encoding in HTTP/1.0 (RFC 9112 6.1)"
CL_TE = "both Content-Length and Transfer-Encoding (RFC 9112 6.1)"
TE_NOT_CHUNKED = "Transfer-Encoding not exactly chunked (501)"
CL_SYNTAX = "Content-Length not 1*DIGIT (a list, a sign, blank)"
CL_LARGE = "Content-Length over 2^62"
EXPECT = "Expect other than 100-continue (417)"


# Our answer's sentence (src/http_head.c) -> the class it claims.
WHY_CLASSES = [
    ("a NUL byte", NUL),
    ("a line ends in LF without CR", BARE_LF),
    ("a CR not followed by LF", BARE_CR),
    ("too many empty lines", EMPTY_LINES),
    ("the request line is longer than allowed", LINE_LONG),
    ("the request head is larger than allowed", HEAD_LARGE),
    ("the request line is not METHOD", REQUEST_LINE),
    ("the method is not a token", REQUEST_LINE),
    ("the protocol version is not", REQUEST_LINE),
    ("only HTTP/1.0 and HTTP/1.1", MAJOR),
    ("a % in the request target", BAD_PCT),
    ("a character RFC 3986 does not allow", TARGET_CHAR),
    ("the asterisk form", ASTERISK),
    ("CONNECT is not implemented", CONNECT),
    ("neither a path nor an http URI", TARGET_FORM),
    ("the authority of the request target", AUTHORITY),
    ("a field line starts with a space or tab", OBS_FOLD),
    ("a field name holds", FIELD_LINE),
    ("a field line has no colon", FIELD_LINE),
    ("a field line has an empty name", FIELD_LINE),
    ("too many header fields", FIELDS_MANY),
    ("a field value holds a control character", VALUE_CTL),
    ("more than one Host field", DUP_SINGLETON),
    ("repeats a field that may appear once", DUP_SINGLETON),
    ("repeats a framing field", DUP_FRAMING),
    ("without a Host field", HOST_MISSING),
    ("the Host field is not host[:port]", HOST_SYNTAX),
    ("Transfer-Encoding in an HTTP/1.0 request", TE_HTTP10),
    ("both Transfer-Encoding and Content-Length", CL_TE),
    ("the only Transfer-Encoding supported is chunked", TE_NOT_CHUNKED),
    ("Content-Length is not a number", CL_SYNTAX),
    ("Content-Length is too large", CL_LARGE),
    ("the only expectation supported is 100-continue", EXPECT),
]

# What the scanner refuses before the head is complete.
EARLY = {NUL, BARE_LF, BARE_CR, EMPTY_LINES, LINE_LONG, HEAD_LARGE}


def why_class(why):
    for text, cls in WHY_CLASSES:
        if text in why:
            return cls
    return None


TCHAR = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
# RFC 3986: unreserved / sub-delims / ":" / "@" (pchar), "/" and "?", and
# "%" (its escapes are checked on their own).
TARGET_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                         b"-._~!$&'()*+,;=:@/?%")
REG_NAME = re.compile(rb"(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
CTL = frozenset(range(0x00, 0x20)) - {0x09} | {0x7f}


def host_ok(v):
    """RFC 3986 host [":" port]: an IPv6 literal (no zone, no IPvFuture) or
    a reg-name (IPv4 is one), port 0-65535."""
    if v.startswith(b"["):
        close = v.find(b"]")
        if close < 0 or b"%" in v[:close]:
            return False
        try:
            ipaddress.IPv6Address(v[1:close].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        rest = v[close + 1:]
    else:
        colon = v.find(b":")
        host, rest = (v, b"") if colon < 0 else (v[:colon], v[colon:])
        if not REG_NAME.fullmatch(host):
            return False
    if rest == b"":
        return True
    m = re.fullmatch(rb":([0-9]{0,5})", rest)
    return m is not None and (m.group(1) == b"" or int(m.group(1)) <= 65535)


def split_absolute(target):
    """(scheme end, authority, rest) of an http(s) absolute-form target, or None."""
    m = re.match(rb"(?i)https?://", target)
    if m is None:
        return None
    end = m.end()
    while end < len(target) and target[end] not in b"/?":
        end += 1
    return m.end(), target[m.end():end], target[end:]


def leading_empty_lines(data):
    n = 0
    while data[2 * n:2 * n + 2] == b"\r\n":
        n += 1
    return n


def violations(data, end):
    """The classes that data[:end] (the head h11 found, or all of an
    incomplete input) breaks, read without our parser."""
    found = set()
    pre = data[:end]
    if b"\0" in pre:
        found.add(NUL)
    if re.search(rb"(?<!\r)\n", pre):
        found.add(BARE_LF)
    if re.search(rb"\r(?!\n)", pre[:-1] if pre.endswith(b"\r") and end == len(data) else pre):
        found.add(BARE_CR)
    if len(pre) > HEAD_MAX:
        found.add(HEAD_LARGE)
    lead = leading_empty_lines(pre)
    if lead > EMPTY_LINES_MAX:
        found.add(EMPTY_LINES)
    body = pre[2 * lead:]
    if len(re.match(rb"[^\r\n]*", body).group()) > LINE_MAX:
        found.add(LINE_LONG)
    m = re.search(rb"\n\r?\n", body)
    if m is None:
        return found  # incomplete: only what the scanner sees
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in body[:m.end()].split(b"\n")][:-2]
    parts = lines[0].split(b" ")
    version = re.fullmatch(rb"HTTP/([0-9])\.([0-9])", parts[-1])
    if len(parts) != 3 or not TCHAR.fullmatch(parts[0]) or not parts[1] or version is None:
        found.add(REQUEST_LINE)
        return found
    method, target = parts[0], parts[1]
    if version.group(1) != b"1":
        found.add(MAJOR)
    minor = int(version.group(2))

    absolute = split_absolute(target)
    chars = target
    if absolute is not None and absolute[1].startswith(b"[") and b"]" in absolute[1]:
        # The brackets of an IP-literal are RFC 3986 characters there.
        a = absolute[0]
        chars = target[:a] + target[a:].replace(b"[", b"", 1).replace(b"]", b"", 1)
    if set(chars) - TARGET_CHARS:
        found.add(TARGET_CHAR)
    if re.search(rb"%(?![0-9A-Fa-f]{2})", target):
        found.add(BAD_PCT)
    if target == b"*":
        if method != b"OPTIONS":
            found.add(ASTERISK)
    elif not target.startswith(b"/"):
        if method.upper() == b"CONNECT":
            found.add(CONNECT)
        if absolute is None:
            found.add(TARGET_FORM)
        else:
            authority = absolute[1]
            if authority == b"":
                found.update((TARGET_FORM, AUTHORITY))  # "http://": no URI, no authority
            elif b"@" in authority or authority.startswith(b":") or not host_ok(authority):
                found.add(AUTHORITY)  # an empty host too (RFC 9110 4.2.1)

    fields = collections.defaultdict(list)
    if len(lines) - 1 > FIELDS_MAX:
        found.add(FIELDS_MANY)
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            found.add(OBS_FOLD)
            continue
        name, colon, value = line.partition(b":")
        if not colon or not TCHAR.fullmatch(name):
            found.add(FIELD_LINE)
            continue
        value = value.strip(b" \t")
        if set(value) & CTL:
            found.add(VALUE_CTL)
        fields[name.lower()].append(value)
    for name in (b"host", b"authorization", b"content-type", b"last-event-id"):
        if len(fields[name]) > 1:
            found.add(DUP_SINGLETON)
    if len(fields[b"content-length"]) > 1 or len(fields[b"transfer-encoding"]) > 1:
        found.add(DUP_FRAMING)
    if not fields[b"host"] and minor >= 1:
        found.add(HOST_MISSING)
    if fields[b"host"] and not host_ok(fields[b"host"][-1]):
        found.add(HOST_SYNTAX)
    te, cl = fields[b"transfer-encoding"], fields[b"content-length"]
    if te:
        if minor == 0:
            found.add(TE_HTTP10)
        if cl:
            found.add(CL_TE)
        if te[0].lower() != b"chunked":
            found.add(TE_NOT_CHUNKED)
    if cl:
        if not re.fullmatch(rb"[0-9]+", cl[0]):
            found.add(CL_SYNTAX)
        elif int(cl[0]) >= 2**62:
            found.add(CL_LARGE)
    if any(v.lower() != b"100-continue" for v in fields[b"expect"]):
        found.add(EXPECT)
    return found


# --------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------


def expected_parts(ev, headers):
    """form, path, query, authority as RFC 9112 3.2 reads the target and Host."""
    target = ev.target
    host = next((v for n, v in headers if n == b"host"), b"")
    if target == b"*":
        return "asterisk", b"*", None, host
    absolute = split_absolute(target)
    if absolute is None:
        form, authority, rest = "origin", host, target
    else:
        form, authority, rest = "absolute", absolute[1], absolute[2]
    path, q, query = rest.partition(b"?")
    return form, path or b"/", query if q else None, authority


def compare_accepted(ours, theirs, offset):
    """Both accept: the list of fields in which the two differ."""
    ev = theirs["event"]
    diffs = []
    if ours["method"] != ev.method:
        diffs.append("method")
    if ours["target"] != ev.target:
        diffs.append("target")
    if b"1.%d" % ours["minor"] != ev.http_version:
        diffs.append("version")
    if ours["head_len"] != theirs["head_len"] + offset:
        diffs.append("head_len")
    mine = [(n.lower(), v.lower() if n.lower() == b"transfer-encoding" else v)
            for n, v in ours["fields"]]
    if mine != list(ev.headers):
        diffs.append("fields")
    names = [n for n, _ in ev.headers]
    if b"transfer-encoding" in names:
        framing = ("chunked", 0)
    elif b"content-length" in names:
        framing = ("length", int(dict(ev.headers)[b"content-length"]))
    else:
        framing = ("none", 0)
    if (ours["framing"], ours["content_length"]) != framing:
        diffs.append("framing")
    if (ours["form"], ours["path"], ours["query"], ours["authority"]) != expected_parts(
            ev, list(ev.headers)):
        diffs.append("form/path/query/authority")
    tokens = [t.strip(b" \t").lower() for n, v in mine if n == b"connection"
              for t in v.split(b",")]
    if ours["minor"] >= 1:
        if ours["keep_alive"] != theirs["keep_alive"]:
            diffs.append("keep_alive")
    elif ours["keep_alive"] != (b"keep-alive" in tokens and b"close" not in tokens):
        # h11 never keeps an HTTP/1.0 connection; RFC 9112 9.3 lets us.
        diffs.append("keep_alive")
    if ours["expect_continue"] != theirs["expect_continue"]:
        diffs.append("expect_continue")
    return diffs


def compare(data, ours, theirs, offset=0):
    """The class of this case's outcome, or raise Disagreement."""
    kind_ours = {True: "accept", False: "reject", None: "incomplete"}[ours["ok"]]
    kind_theirs = theirs["kind"]
    if kind_ours == kind_theirs == "accept":
        diffs = compare_accepted(ours, theirs, offset)
        if diffs:
            raise Disagreement("both accept, but differ in " + ", ".join(diffs))
        return "agree: accept"
    if kind_ours == kind_theirs:
        return "agree: " + kind_ours
    if kind_ours != "reject" and data.startswith(b"\r\n") and offset == 0:
        # LENIENT. RFC 9112 section 2.2: a server "SHOULD ignore at least one
        # empty line (CRLF) received prior to the request-line"; h11 refuses
        # any. Compare what follows them.
        n = leading_empty_lines(data)
        cls = compare(data, ours, h11_verdict(data[2 * n:]), offset=2 * n)
        return "lenient: empty lines before the request line (RFC 9112 2.2) / " + cls
    if kind_ours == "incomplete" and kind_theirs == "reject":
        if data[0] < 0x21:
            # h11 refuses a request line that starts with a space or a
            # control at once; we wait for the line and refuse it then.
            return "h11 refuses early: request line starts with a byte < 0x21"
        if len(data) > H11_BUFFER_MAX:
            return "h11 refuses early: incomplete head over its 16 KiB buffer"
        raise Disagreement("h11 rejects, we wait for more bytes")
    if kind_ours == "reject":
        end = theirs["head_len"] if kind_theirs == "accept" else len(data)
        found = violations(data, end)
        claimed = why_class(ours["why"])
        if kind_theirs == "incomplete" and claimed not in EARLY:
            raise Disagreement(f"we reject a head h11 still waits for, as {claimed!r}")
        if claimed in found:
            return ("stricter (early): " if kind_theirs == "incomplete" else "stricter: ") + claimed
        raise Disagreement(f"we reject as {claimed!r}, but the input breaks only {sorted(found)}")
    raise Disagreement(f"we say {kind_ours}, h11 says {kind_theirs}")


class Disagreement(Exception):
    pass


# --------------------------------------------------------------------------
# Hand-written cases: (head, our verdict, what else our answer must say).
# Verdict: "ok", None (needs more bytes) or the status.
# --------------------------------------------------------------------------


def req(line, *fields, lead=b"", end=b"\r\n", body=b""):
    return lead + line + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + end + body


H = b"Host: example.com"
LONG_OK = b"/" + b"a" * (LINE_MAX - len(b"GET / HTTP/1.1"))  # the line is exactly LINE_MAX
HAND = [
    # The request line.
    (req(b"GET / HTTP/1.1", H), "ok",
     {"form": "origin", "path": b"/", "query": None, "authority": b"example.com",
      "framing": "none", "keep_alive": True, "minor": 1}),
    (req(b"get / HTTP/1.1", H), "ok", {"method": b"get"}),
    (req(b"M-SEARCH * HTTP/1.1", H), 400, {}),
    (req(b"X!#$%&'*+-.^_`|~9 / HTTP/1.1", H), "ok", {}),
    (req(b"GE(T / HTTP/1.1", H), 400, {}),
    (req(b" / HTTP/1.1", H), 400, {}),
    (req(b"GET  / HTTP/1.1", H), 400, {}),
    (req(b"GET / HTTP/1.1 ", H), 400, {}),
    (req(b"GET\t/ HTTP/1.1", H), 400, {}),
    (req(b"GET / http/1.1", H), 400, {}),
    (req(b"GET / HTTP/1.10", H), 400, {}),
    (req(b"GET / HTTP/11", H), 400, {}),
    (req(b"GET /", H), 400, {}),
    (req(b"GET / HTTP/2.0", H), 505, {}),
    (req(b"GET / HTTP/0.9", H), 505, {}),
    (req(b"GET / HTTP/3.0", H), 505, {}),
    (req(b"GET / HTTP/1.0"), "ok", {"minor": 0, "keep_alive": False, "authority": b""}),
    (req(b"GET / HTTP/1.9", H), "ok", {"minor": 9, "keep_alive": True}),
    (req(b"GET / HTTP/1.2"), 400, {}),
    (req(b"GET " + LONG_OK + b" HTTP/1.1", H), "ok", {}),
    (req(b"GET " + LONG_OK + b"a HTTP/1.1", H), 414, {}),
    # Targets.
    (req(b"GET /v1/tasks/7/events?since=3&x=%41 HTTP/1.1", H), "ok",
     {"path": b"/v1/tasks/7/events", "query": b"since=3&x=%41"}),
    (req(b"GET /a-._~!$&'()*+,;=:@/b?c=/?d HTTP/1.1", H), "ok", {"query": b"c=/?d"}),
    (req(b"GET /? HTTP/1.1", H), "ok", {"path": b"/", "query": b""}),
    (req(b"GET //x HTTP/1.1", H), "ok", {"path": b"//x"}),
    (req(b"GET /a\"b HTTP/1.1", H), 400, {}),
    (req(b"GET /a<b> HTTP/1.1", H), 400, {}),
    (req(b"GET /a{b} HTTP/1.1", H), 400, {}),
    (req(b"GET /a|b HTTP/1.1", H), 400, {}),
    (req(b"GET /a\\b HTTP/1.1", H), 400, {}),
    (req(b"GET /a^b HTTP/1.1", H), 400, {}),
    (req(b"GET /a`b HTTP/1.1", H), 400, {}),
    (req(b"GET /a#frag HTTP/1.1", H), 400, {}),
    (req(b"GET /a[0] HTTP/1.1", H), 400, {}),
    (req(b"GET /a\x7f HTTP/1.1", H), 400, {}),
    (req(b"GET /caf\xe9 HTTP/1.1", H), 400, {}),
    (req(b"GET /a%41%2fb HTTP/1.1", H), "ok", {"path": b"/a%41%2fb"}),
    (req(b"GET /a%00 HTTP/1.1", H), "ok", {}),  # a valid escape: ts_http_segment_decode refuses it
    (req(b"GET /a%4 HTTP/1.1", H), 400, {}),
    (req(b"GET /a% HTTP/1.1", H), 400, {}),
    (req(b"GET /a%zz HTTP/1.1", H), 400, {}),
    (req(b"GET /?q=%g0 HTTP/1.1", H), 400, {}),
    (req(b"OPTIONS * HTTP/1.1", H), "ok", {"form": "asterisk", "path": b"*"}),
    (req(b"GET * HTTP/1.1", H), 400, {}),
    (req(b"OPTIONS *x HTTP/1.1", H), 400, {}),
    (req(b"GET http://example.com:8080/a?b HTTP/1.1", H), "ok",
     {"form": "absolute", "authority": b"example.com:8080", "path": b"/a", "query": b"b"}),
    (req(b"GET HTTP://EXAMPLE.com/ HTTP/1.1", H), "ok", {"authority": b"EXAMPLE.com"}),
    (req(b"GET https://a:443/ HTTP/1.1", b"Host: a"), "ok", {"authority": b"a:443"}),
    (req(b"GET http://a?x HTTP/1.1", H), "ok", {"path": b"/", "query": b"x"}),
    (req(b"GET http://a HTTP/1.1", H), "ok", {"path": b"/", "query": None}),
    (req(b"GET http://a/ HTTP/1.1"), 400, {}),  # the absolute form still needs Host
    (req(b"GET http://a/ HTTP/1.0"), "ok", {"authority": b"a"}),
    (req(b"GET http:// HTTP/1.1", H), 400, {}),
    (req(b"GET http:///x HTTP/1.1", H), 400, {}),
    (req(b"GET http://u@a/ HTTP/1.1", H), 400, {}),
    (req(b"GET http://a:99999/ HTTP/1.1", H), 400, {}),
    (req(b"GET http://a:8x/ HTTP/1.1", H), 400, {}),
    (req(b"GET ftp://a/ HTTP/1.1", H), 400, {}),
    (req(b"GET example.com:80 HTTP/1.1", H), 400, {}),
    (req(b"CONNECT example.com:443 HTTP/1.1", b"Host: example.com:443"), 501, {}),
    (req(b"GET http://[::1]:8080/ HTTP/1.1", b"Host: [::1]:8080"), "ok",
     {"authority": b"[::1]:8080"}),
    (req(b"GET http://:80/ HTTP/1.1", b"Host: :80"), 400, {}),  # empty host, RFC 9110 4.2.1
    # Line ends, NUL, empty lines, incomplete heads.
    (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, {}),
    (b"GET / HTTP/1.1\r\nHost: a\n\r\n", 400, {}),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400, {}),
    (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, {}),
    (b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", 400, {}),
    (b"GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", 400, {}),
    (req(b"GET / HTTP/1.1", H, b"X: a\0b"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"X\0: b"), 400, {}),
    (req(b"GET / HTTP/1.1", H, lead=b"\r\n"), "ok",
     {"head_len": 2 + len(req(b"GET / HTTP/1.1", H))}),
    (req(b"GET / HTTP/1.1", H, lead=b"\r\n" * EMPTY_LINES_MAX), "ok", {}),
    (req(b"GET / HTTP/1.1", H, lead=b"\r\n" * (EMPTY_LINES_MAX + 1)), 400, {}),
    (req(b"GET / HTTP/1.1", H, lead=b"\n"), 400, {}),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", None, {}),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r", None, {}),
    (b"GET", None, {}),
    (b"", None, {}),
    (b"\r\n", None, {}),
    (b" GET", None, {}),
    (req(b"GET / HTTP/1.1", H, b"X: " + b"v" * HEAD_MAX), 431, {}),
    # Field lines.
    (req(b"GET / HTTP/1.1", H, b"X-A: one", b" two"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"X-A: one", b"\ttwo"), 400, {}),
    (req(b"GET / HTTP/1.1", b" X: a", H), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host : a"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host\t: a"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"Xa"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b": a"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"X(a): b"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"X\xe9: b"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"X: caf\xe9 \xff"), "ok",
     {"fields": [(b"Host", b"example.com"), (b"X", b"caf\xe9 \xff")]}),
    (req(b"GET / HTTP/1.1", H, b"X: a\x01b"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"X: a\x7f"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"X: \x1b[0m"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"X: \t a \t b \t", b"Y:", b"Z: \t "), "ok",
     {"fields": [(b"Host", b"example.com"), (b"X", b"a \t b"), (b"Y", b""), (b"Z", b"")]}),
    (req(b"GET / HTTP/1.1", H, *[b"X-%d: %d" % (i, i) for i in range(FIELDS_MAX - 1)]), "ok", {}),
    (req(b"GET / HTTP/1.1", H, *[b"X-%d: %d" % (i, i) for i in range(FIELDS_MAX)]), 431, {}),
    # Singletons, Host.
    (req(b"GET / HTTP/1.1", H, b"HOST: example.com"), 400, {}),
    (req(b"GET / HTTP/1.0", b"Host: a", b"Host: b"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"Authorization: Bearer a", b"authorization: Bearer a"), 400, {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Type: a/b", b"Content-Type: a/b"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"Last-Event-ID: 1", b"Last-Event-ID: 2"), 400, {}),
    (req(b"GET / HTTP/1.1", H, b"Accept: a", b"Accept: b", b"Cookie: a", b"Cookie: b"), "ok", {}),
    (req(b"GET / HTTP/1.1", b"Accept: */*"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host: a b/c"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host: a:b"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host: a:123456"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host: a:65536"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host: a:65535"), "ok", {"authority": b"a:65535"}),
    (req(b"GET / HTTP/1.1", b"Host: a:"), "ok", {}),
    (req(b"GET / HTTP/1.1", b"Host:"), "ok", {"authority": b""}),
    (req(b"GET / HTTP/1.1", b"Host: [::1]"), "ok", {"authority": b"[::1]"}),
    (req(b"GET / HTTP/1.1", b"Host: [::1"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host: [zz]"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host: [::1]x"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host: u@a"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host: exa%41mple"), "ok", {}),
    (req(b"GET / HTTP/1.1", b"Host: exa%4"), 400, {}),
    (req(b"GET / HTTP/1.1", b"Host: 192.0.2.1:80"), "ok", {}),
    (req(b"GET / HTTP/1.1", b"Host: a_b.example"), "ok", {}),
    # Framing.
    (req(b"POST / HTTP/1.1", H, b"Content-Length: 0"), "ok",
     {"framing": "length", "content_length": 0}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: 007", body=b"1234567"), "ok",
     {"framing": "length", "content_length": 7}),
    (req(b"POST / HTTP/1.0", b"Content-Length: 3", body=b"abc"), "ok", {"framing": "length"}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length:"), 400, {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: -1"), 400, {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: +1"), 400, {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: 1 1"), 400, {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: 1, 1"), 400, {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: 1,2"), 400, {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: 0x10"), 400, {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: 4611686018427387904"), "ok", {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: 18446744073709551616"), 400, {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: 1", b"Content-Length: 1"), 400, {}),
    (req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked"), "ok", {"framing": "chunked"}),
    (req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: Chunked"), "ok", {"framing": "chunked"}),
    (req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip"), 501, {}),
    (req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: gzip, chunked"), 501, {}),
    (req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked, chunked"), 501, {}),
    (req(b"POST / HTTP/1.1", H, b"Transfer-Encoding:"), 501, {}),
    (req(b"POST / HTTP/1.1", H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
     400, {}),
    (req(b"POST / HTTP/1.1", H, b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400, {}),
    (req(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked"), 400, {}),
    # Connection, Expect.
    (req(b"GET / HTTP/1.1", H, b"Connection: close"), "ok", {"keep_alive": False}),
    (req(b"GET / HTTP/1.1", H, b"Connection: Upgrade, CLOSE"), "ok", {"keep_alive": False}),
    (req(b"GET / HTTP/1.1", H, b"Connection: closed"), "ok", {"keep_alive": True}),
    (req(b"GET / HTTP/1.1", H, b"Connection: keep-alive"), "ok", {"keep_alive": True}),
    (req(b"GET / HTTP/1.0", b"Connection: Keep-Alive"), "ok", {"keep_alive": True}),
    (req(b"GET / HTTP/1.0", b"Connection: keep-alive, close"), "ok", {"keep_alive": False}),
    (req(b"GET / HTTP/1.0", b"Connection: close"), "ok", {"keep_alive": False}),
    (req(b"GET / HTTP/1.0", b"Connection: close", b"Connection: keep-alive"), "ok",
     {"keep_alive": False}),  # "close" wins wherever it is, RFC 9112 9.3
    (req(b"POST / HTTP/1.1", H, b"Expect: 100-continue", b"Content-Length: 1"), "ok",
     {"expect_continue": True}),
    (req(b"POST / HTTP/1.1", H, b"Expect: 100-Continue", b"Content-Length: 1"), "ok",
     {"expect_continue": True}),
    (req(b"POST / HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 1"), "ok",
     {"expect_continue": False}),  # ignored in HTTP/1.0, RFC 9110 10.1.1
    (req(b"POST / HTTP/1.1", H, b"Expect: foo"), 417, {}),
    (req(b"POST / HTTP/1.1", H, b"Expect: 100-continue, foo"), 417, {}),
    (req(b"POST / HTTP/1.1", H, b"Expect:"), 417, {}),
    # Pipelined: the head ends at the first CRLF CRLF.
    (req(b"GET /a HTTP/1.1", H) + req(b"GET /b HTTP/1.1", H), "ok",
     {"head_len": len(req(b"GET /a HTTP/1.1", H)), "path": b"/a"}),
]

# Where this comparison once found src/http_head.c wrong: (head, what our
# answer must say, the rule).
RFC_CORNERS = [
    (req(b"GET http://[::1]:8080/ HTTP/1.1", b"Host: [::1]:8080"), {"ok": True},
     "RFC 3986 3.2.2 allows an IP-literal in the authority; is_target_char() lacks [ and ]"),
    (req(b"GET http://:80/ HTTP/1.1", b"Host: :80"), {"ok": False, "status": 400},
     "RFC 9110 4.2.1: an http URI with an empty host MUST be rejected"),
    (req(b"GET / HTTP/1.0", b"Connection: close", b"Connection: keep-alive"),
     {"ok": True, "keep_alive": False},
     "RFC 9112 9.3/9.6: close anywhere in Connection ends the connection; later lines win now"),
    (req(b"POST / HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 1"),
     {"ok": True, "expect_continue": False},
     "RFC 9110 10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request"),
]


# --------------------------------------------------------------------------
# Generated cases
# --------------------------------------------------------------------------

ALPHABET = [b" ", b"\t", b"\r", b"\n", b"\0", b":", b",", b"%", b"/", b"\x7f", b"\x80", b"\xff",
            b"?", b"*", b"@", b"[", b"]", b"#", b'"', b";", b"=", b"a", b"Z", b"0", b"9", b"-"]
TOKENS = [b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"%00", b"%", b"%2F", b"chunked", b", chunked",
          b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"Host: x\r\n",
          b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"Expect: nope\r\n",
          b"HTTP/1.0", b"HTTP/2.0", b"http://", b"OPTIONS", b" \t", b"\r\n ", b"\xe9"]
TARGETS = [(b"GET", b"/"), (b"GET", b"/v1/tasks"), (b"GET", b"/v1/tasks/12/events?since=3"),
           (b"GET", b"/a%20b/%7Euser"), (b"GET", b"/healthz?x=1&y=%2F"),
           (b"HEAD", b"/v1/tasks/1"), (b"DELETE", b"/v1/tasks/9"), (b"OPTIONS", b"*"),
           (b"OPTIONS", b"/v1/tasks"), (b"GET", b"http://example.com/x?y"),
           (b"GET", b"http://127.0.0.1:8080"), (b"POST", b"/v1/tasks"), (b"PUT", b"/v1/x"),
           (b"PATCH", b"/v1/tasks/3")]
HOSTS = [b"example.com", b"localhost:8080", b"127.0.0.1", b"[::1]:80", b""]
OTHER_FIELDS = [
    (b"User-Agent", [b"curl/7.88.1", b"Mozilla/5.0 (X11; Linux x86_64)"]),
    (b"Accept", [b"*/*", b"text/event-stream", b"application/json, text/plain;q=0.5"]),
    (b"Accept-Encoding", [b"gzip, deflate", b"identity"]),
    (b"Cache-Control", [b"no-cache"]),
    (b"Authorization", [b"Bearer abc.def", b"Basic dXNlcjpwYXNz"]),
    (b"Last-Event-ID", [b"42", b"0"]),
    (b"X-Request-Id", [b"7f3c-11", b"a\tb", b"caf\xe9", b""]),
    (b"Cookie", [b"a=1; b=2"]),
]


def recase(rng, name):
    return rng.choice([name, name.lower(), name.upper()])


def generate_base(rng):
    method, target = rng.choice(TARGETS)
    version = b"1.0" if rng.random() < 0.2 else b"1.1"
    fields = []
    if version == b"1.1" or rng.random() < 0.5:
        fields.append((b"Host", rng.choice(HOSTS)))
    for name, values in rng.sample(OTHER_FIELDS, rng.randint(0, 4)):
        fields.append((name, rng.choice(values)))
    conn = rng.choice([None, None, b"close", b"keep-alive", b"Upgrade, close"])
    if conn is not None:
        fields.append((b"Connection", conn))
    body = b""
    if method in (b"POST", b"PUT", b"PATCH"):
        mode = rng.choice(["length", "chunked" if version == b"1.1" else "length", "none"])
        if mode == "length":
            n = rng.randint(0, 20)
            fields += [(b"Content-Type", b"application/json"), (b"Content-Length", b"%d" % n)]
            body = b"x" * n
        elif mode == "chunked":
            fields.append((b"Transfer-Encoding", rng.choice([b"chunked", b"Chunked"])))
            body = b"3\r\nabc\r\n0\r\n\r\n"
        if mode != "none" and version == b"1.1" and rng.random() < 0.3:
            fields.append((b"Expect", b"100-continue"))
    rng.shuffle(fields)
    head = method + b" " + target + b" HTTP/" + version + b"\r\n"
    for name, value in fields:
        head += (recase(rng, name) + b":" + rng.choice([b" ", b"", b"  ", b"\t"]) + value +
                 rng.choice([b"", b"", b" ", b"\t "]) + b"\r\n")
    head += b"\r\n"
    if rng.random() < 0.05:
        head = b"\r\n" * rng.randint(1, 2) + head
    return head, body if rng.random() < 0.5 else b""


def mutate(rng, head):
    op = rng.randrange(8)
    pos = rng.randint(0, len(head))
    if op == 0:
        return head[:pos] + rng.choice(ALPHABET) + head[pos:]
    if op == 1 and head:
        pos = min(pos, len(head) - 1)
        return head[:pos] + head[pos + 1:]
    if op == 2 and head:
        pos = min(pos, len(head) - 1)
        return head[:pos] + rng.choice(ALPHABET) + head[pos + 1:]
    lines = head.split(b"\r\n")
    fields = [i for i in range(1, len(lines)) if lines[i]]
    if op == 3 and fields:  # duplicate a line
        i = rng.choice(fields)
        lines.insert(i, lines[i])
        return b"\r\n".join(lines)
    if op == 4 and fields:  # fold a line
        i = rng.choice(fields)
        cut = rng.randint(0, len(lines[i]))
        lines[i] = lines[i][:cut] + b"\r\n" + rng.choice([b" ", b"\t", b"  "]) + lines[i][cut:]
        return b"\r\n".join(lines)
    if op == 5 and fields:  # recase a name
        i = rng.choice(fields)
        name, colon, value = lines[i].partition(b":")
        lines[i] = rng.choice([name.upper(), name.lower(), name.swapcase()]) + colon + value
        return b"\r\n".join(lines)
    if op == 6:
        return head[:pos] + rng.choice(TOKENS) + head[pos:]
    return head[:pos]  # cut short


def generated_cases():
    rng = random.Random(SEED)
    cases = []
    for _ in range(GENERATED):
        head, body = generate_base(rng)
        for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3])):
            head = mutate(rng, head)
        cases.append(head + body)
    return cases


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def check_expected(data, ours, expect, extra):
    if expect == "ok":
        if ours["ok"] is not True:
            return f"expected ok, got {ours}"
    elif expect is None:
        if ours["ok"] is not None:
            return f"expected incomplete, got {ours}"
    elif ours["ok"] is not False or ours["status"] != expect:
        return f"expected {expect}, got {ours}"
    for k, v in extra.items():
        if ours.get(k) != v:
            return f"expected {k}={v!r}, got {ours.get(k)!r}"
    return None


def test_parser_agrees_with_h11(headcheck):
    cases = [data for data, _, _ in HAND] + generated_cases()
    ours = run_headcheck(headcheck, cases)

    problems = []
    for (data, expect, extra), v in zip(HAND, ours):
        p = check_expected(data, v, expect, extra)
        if p is not None:
            problems.append(f"hand-written {data!r}:\n    {p}")

    counts = collections.Counter()
    statuses = collections.Counter()
    for data, v in zip(cases, ours):
        theirs = h11_verdict(data)
        try:
            cls = compare(data, v, theirs)
        except Disagreement as e:
            problems.append(f"{data!r}:\n    {e}\n    ours: {v}\n    {show(theirs)}")
            continue
        counts[cls] += 1
        if v["ok"] is False and theirs["kind"] == "reject":
            statuses["same status" if v["status"] == theirs["status"] else
                     f"ours {v['status']}, h11 {theirs['status']}"] += 1

    print(f"\n[head differential] {len(HAND)} hand-written + {GENERATED} generated cases "
          f"(seed {SEED})")
    for cls, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {n:5d}  {cls}")
    print("  both reject: " + ", ".join(f"{k}: {n}" for k, n in statuses.most_common()))
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:25])


@pytest.mark.parametrize("data,want,reason", RFC_CORNERS, ids=[r[:40] for _, _, r in RFC_CORNERS])
def test_rfc_corner_cases(headcheck, data, want, reason):
    [ours] = run_headcheck(headcheck, [data])
    for k, v in want.items():
        assert ours.get(k) == v, (reason, ours)
