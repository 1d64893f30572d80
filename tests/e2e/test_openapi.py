"""docs/openapi.yaml cannot rot: it lints clean with the pinned Redocly CLI
(tests/e2e/openapi/, installed with `npm ci` from its lockfile), and the real
daemon is driven to every (operation, status) pair it declares, each answer
checked against it by openapi_check.py; the last test asserts that every
declared pair was produced, so the file cannot declare what the daemon never
answers, and any answer it does not declare fails where it is produced.

Daemons: `open` (no authentication, a drain without key), `auth` (API key,
HS256 JWTs, a cookie, CORS, a drain key), `limits` (one worker, a queue of
one), `retained` (RETAINED_BYTES held by running tasks), and a cluster of two
replicas on a private redis-server for the cluster-only answers.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jwt
import pytest

from cluster import cluster, redis, redis_server  # noqa: F401
from openapi_check import SPEC_PATH, Spec
from tshelpers import SSEStream, http, raw_request, scaled, split_response, wait_for

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser"))
from tsclients import ensure_node_modules  # noqa: E402  (the npm ci of browser/, for openapi/)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
LINT_DIR = os.path.join(HERE, "openapi")
API_KEY = "k" * 40
DRAIN_KEY = "d" * 40
JWT_SECRET = b"s" * 48
COOKIE = "ts_cookie"
ORIGIN = "http://app.example:8000"
TICKER = {"kind": "ticker", "count": 2, "interval_ms": 0}

SPEC = Spec()


def check(method, url, resp, listener):
    """Check one answer (a tshelpers Response or SSEStream); fail on a mismatch."""
    path = url.split("://", 1)[1].split("/", 1)[1]
    body = getattr(resp, "body", None)
    problems = SPEC.check(method, "/" + path, resp.status, resp.headers, body, listener)
    assert not problems, "\n".join(problems)
    return resp


def call(d, method, path, body=None, headers=None, admin=False):
    url = (d.admin_url if admin else d.url) + path
    return check(method, url, http(method, url, body, headers), "admin" if admin else "public")


def raw(d, data, path_for_check, method_for_check, admin=False):
    """Send raw bytes; check the answer as one to (method, path)."""
    port = d.admin_port if admin else d.port
    status, headers, body, _ = split_response(raw_request("127.0.0.1", port, data))
    assert status is not None, data[:100]
    problems = SPEC.check(method_for_check, path_for_check, status, headers, body,
                          "admin" if admin else "public")
    assert not problems, "\n".join(problems)
    return status, headers, body


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def user_token(sub="user", **claim):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, "taskstream": claim},
                      JWT_SECRET, algorithm="HS256")


def follow(d, task_id, headers=None, query=""):
    url = f"{d.url}/v1/tasks/{task_id}/events{query}"
    s = SSEStream(url, headers=headers)
    body = None
    if s.status == 200:
        body = s.read_all(scaled(20))
    else:
        body = s.body
    problems = SPEC.check("GET", f"/v1/tasks/{task_id}/events", s.status, s.headers, body, "public")
    s.close()
    assert not problems, "\n".join(problems)
    return s


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys")
    out = {}
    for name, value in (("api", API_KEY.encode()), ("drain", DRAIN_KEY.encode()),
                        ("jwt", JWT_SECRET)):
        p = tmp / name
        p.write_bytes(value)
        os.chmod(p, 0o600)
        out[name] = str(p)
    return out


COMMANDS = os.path.join(REPO, "examples", "commands.json")


# --------------------------------------------------------------------------
# The linter
# --------------------------------------------------------------------------


def test_redocly_lint_is_clean():
    ensure_node_modules(LINT_DIR)
    proc = subprocess.run([os.path.join(LINT_DIR, "node_modules", ".bin", "redocly"), "lint",
                           "--config", os.path.join(LINT_DIR, "redocly.yaml"),
                           "--format", "stylish", SPEC_PATH],
                          cwd=LINT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=scaled(120))
    assert proc.returncode == 0, proc.stdout
    assert "warning" not in proc.stdout.lower(), proc.stdout


def test_schemas_are_valid_2020_12():
    import jsonschema

    for name, schema in SPEC.doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_the_checker_catches_mismatches():
    """A field the file does not know, an undeclared status, a missing
    required header, a wrong content type, an undeclared event: each fails."""
    spec = Spec()
    task = {"id": SOME_ID, "kind": "ticker", "state": "queued", "created_at": "2026-12-02T08:00:00.000Z",
            "started_at": None, "finished_at": None, "reason": None, "exit_code": None,
            "signal": None, "events": 0, "params": {}}
    ok = {"Content-Type": "application/json", "Cache-Control": "no-store"}
    body = json.dumps(task).encode()
    assert spec.check("GET", f"/v1/tasks/{SOME_ID}", 200, ok, body) == []
    assert spec.check("GET", f"/v1/tasks/{SOME_ID}", 200, ok,
                      json.dumps({**task, "new_field": 1}).encode())
    assert spec.check("GET", f"/v1/tasks/{SOME_ID}", 200, ok,
                      json.dumps({**task, "state": "paused"}).encode())
    assert spec.check("GET", f"/v1/tasks/{SOME_ID}", 418, ok, body)
    assert spec.check("GET", f"/v1/tasks/{SOME_ID}", 200, {"Content-Type": "application/json"}, body)
    assert spec.check("GET", f"/v1/tasks/{SOME_ID}", 200, {**ok, "Content-Type": "text/plain"}, body)
    assert spec.check("POST", "/v1/tasks", 429, ok, b'{"error":"queue_full","message":"m"}')
    assert spec.check("GET", "/healthz", 200, ok, b'{"status":"ok"}', "public")
    sse = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    events = f"/v1/tasks/{SOME_ID}/events"
    tick = b'event: tick\ndata: {"n":1,"count":1,"sent_us":5}\n\n'
    assert spec.check("GET", events, 200, sse, b"id: 1\n" + tick) == []
    assert spec.check("GET", events, 200, sse, tick)  # a tick without its id
    assert spec.check("GET", events, 200, sse, b'id: 1\nevent: boom\ndata: {}\n\n')


# --------------------------------------------------------------------------
# The HTTP layer, unrouted requests, and every operation's own answers
# --------------------------------------------------------------------------

PUBLIC_OPS = [("GET", "/v1/tasks"), ("POST", "/v1/tasks"), ("GET", "/v1/tasks/{id}"),
              ("DELETE", "/v1/tasks/{id}"), ("GET", "/v1/tasks/{id}/events"),
              ("GET", "/v1/commands"), ("GET", "/v1/me"), ("GET", "/"), ("GET", "/assets/{id}")]
OPTIONS_PATHS = ["/v1/tasks", "/v1/tasks/{id}", "/v1/tasks/{id}/events", "/v1/commands", "/v1/me",
                 "/", "/assets/{id}"]
ADMIN_OPS = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("POST", "/drain"),
             ("DELETE", "/drain")]
SOME_ID = "0" * 32


def concrete(template):
    return template.replace("/assets/{id}", "/assets/app.js").replace("{id}", SOME_ID)


def http_layer_errors(d, method, template, admin, body_read=True):
    """Every refusal of the HTTP layer on (method, template); 413 only where
    a handler would read a body (elsewhere the body is not read)."""
    path = concrete(template)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    cases = [(400, head + b"No colon here\r\n\r\n"),
             (414, f"{method} {path}?pad={'a' * 40000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
             (417, head + b"Expect: something-else\r\n\r\n"),
             (431, head + b"X-Pad: " + b"a" * 40000 + b"\r\n\r\n"),
             (501, head + b"Transfer-Encoding: gzip\r\n\r\n"),
             (505, f"{method} {path} HTTP/2.0\r\nHost: x\r\n\r\n".encode())]
    if body_read and method != "OPTIONS":
        cases.append((413, head + b"Content-Length: 10000000\r\n\r\n"))
    for status, data in cases:
        got, _, body = raw(d, data, path, method, admin)
        assert got == status, (method, path, status, body[:200])


def test_http_layer_and_unrouted(daemon):
    d = daemon({"COMMANDS_FILE": COMMANDS})
    for method, template in PUBLIC_OPS:
        http_layer_errors(d, method, template, False)
    for template in OPTIONS_PATHS:
        http_layer_errors(d, "OPTIONS", template, False)
    for method, template in ADMIN_OPS:
        http_layer_errors(d, method, template, True)
    for admin in (False, True):
        assert call(d, "GET", "/nowhere", admin=admin).status == 404
        assert raw(d, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", "*", "OPTIONS", admin)[0] == 200
        assert raw(d, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                   "example.com:443", "CONNECT", admin)[0] == 501
        assert raw(d, b"GET nowhere HTTP/1.1\r\nHost: x\r\n\r\n", "nowhere", "GET", admin)[0] == 400
    for admin, method, path in ((False, "GET", "/nowhere"), (True, "GET", "/nowhere"),
                                (False, "PUT", "/v1/tasks"), (True, "GET", "/drain")):
        http_layer_errors(d, method, path, admin, body_read=False)
    # An {id} the router does not take (over 64 bytes, an encoded "/") is no route.
    for path in ("/v1/tasks/" + "a" * 65, "/v1/tasks/..%2Fetc/events"):
        r = call(d, "GET", path)
        assert r.status == 404 and r.json()["error"] == "not_found", r
    assert call(d, "PUT", "/v1/tasks").status == 405
    assert call(d, "GET", "/drain", admin=True).status == 405
    assert call(d, "OPTIONS", "/healthz", admin=True).status == 405


def test_open_daemon(daemon):
    d = daemon({"COMMANDS_FILE": COMMANDS})
    # Submissions.
    assert call(d, "POST", "/v1/tasks", b"{}", {"Content-Type": "text/plain"}).status == 415
    assert call(d, "POST", "/v1/tasks", b"{nope", {"Content-Type": "application/json"}).status == 400
    assert call(d, "POST", "/v1/tasks", [1, 2]).status == 422
    assert call(d, "POST", "/v1/tasks", {"kind": "ticker", "count": -1}).status == 422
    assert call(d, "POST", "/v1/tasks", {"kind": "nope"}).status == 404
    assert call(d, "POST", "/v1/tasks", {"kind": "command", "command": "nope"}).status == 404
    t = call(d, "POST", "/v1/tasks", TICKER).json()
    g = call(d, "POST", "/v1/tasks", {"kind": "command", "command": "greet",
                                      "params": {"who": "spec"}}).json()
    # Reads, streams, the end.
    s = follow(d, t["id"])
    end = [e for e in s.events() if e.type == "end"][0]
    assert follow(d, t["id"], headers={"Last-Event-ID": end.id}).status == 204
    assert follow(d, g["id"], query="?last_event_id=0").status == 200
    assert follow(d, SOME_ID).status == 404
    head = http("HEAD", f"{d.url}/v1/tasks/{t['id']}/events")
    check("HEAD", f"{d.url}/v1/tasks/{t['id']}/events", head, "public")
    assert call(d, "GET", f"/v1/tasks/{t['id']}").status == 200
    assert call(d, "GET", f"/v1/tasks/{SOME_ID}").status == 404
    assert call(d, "GET", "/v1/tasks/not-an-id").status == 404
    assert call(d, "GET", "/v1/tasks?state=running,succeeded&limit=5").status == 200
    assert call(d, "GET", "/v1/tasks?state=bogus").status == 400
    assert call(d, "GET", "/v1/tasks?limit=0").status == 400
    assert call(d, "DELETE", f"/v1/tasks/{t['id']}").status == 409
    assert call(d, "DELETE", f"/v1/tasks/{SOME_ID}").status == 404
    long = call(d, "POST", "/v1/tasks", {"kind": "ticker", "count": 1000, "interval_ms": 50}).json()
    assert call(d, "DELETE", f"/v1/tasks/{long['id']}").status == 202
    assert call(d, "GET", "/v1/commands").status == 200
    assert call(d, "GET", "/v1/me").status == 200
    # The dashboard.
    for path in ("/", "/assets/app.js", "/assets/style.css", "/assets/icon.svg"):
        r = call(d, "GET", path)
        assert r.status == 200
        assert call(d, "GET", path, headers={"If-None-Match": r.headers["ETag"]}).status == 304
    assert call(d, "GET", "/assets/nope.js").status == 404
    # Preflights without CORS_ORIGINS.
    for template in OPTIONS_PATHS:
        assert call(d, "OPTIONS", concrete(template)).status == 204
    # Admin: no drain key is fail closed.
    assert call(d, "GET", "/healthz", admin=True).status == 200
    assert call(d, "GET", "/readyz", admin=True).status == 200
    assert call(d, "GET", "/metrics", admin=True).status == 200
    assert call(d, "POST", "/drain", admin=True).status == 403
    assert call(d, "DELETE", "/drain", admin=True).status == 403
    d.wait_task(long["id"])


def test_limits(daemon):
    d = daemon({"WORKERS": "1", "MAX_QUEUED_TASKS": "1"})
    a = call(d, "POST", "/v1/tasks", {"kind": "ticker", "count": 1000, "interval_ms": 20}).json()
    d.wait_task(a["id"], states=("running",))
    b = call(d, "POST", "/v1/tasks", {"kind": "ticker", "count": 1000, "interval_ms": 20}).json()
    r = call(d, "POST", "/v1/tasks", TICKER)
    assert r.status == 429, r
    for t in (a, b):
        assert call(d, "DELETE", f"/v1/tasks/{t['id']}").status == 202
    for t in (a, b):
        d.wait_task(t["id"])


def test_retained_bytes(daemon):
    d = daemon({"RETAINED_BYTES": "1M", "EVENT_LOG_BYTES": "1M", "WORKERS": "4"})
    big = [d.submit(count=100000, interval_ms=1, payload_bytes=100000) for _ in range(2)]
    wait_for(lambda: d.metrics().value("task_event_log_bytes") >= 1024 * 1024, scaled(20),
             what="the running tasks to hold RETAINED_BYTES")
    r = call(d, "POST", "/v1/tasks", TICKER)
    assert r.status == 503 and r.json()["error"] == "retained_bytes", r
    for t in big:
        assert call(d, "DELETE", f"/v1/tasks/{t['id']}").status == 202
    for t in big:  # finished, they may be forgotten at once (RETAINED_BYTES)
        d.wait_log("task finished", task_id=t["id"], status="cancelled")


def test_auth_daemon(daemon, keys):
    d = daemon({"API_AUTH_KEY_FILE": keys["api"], "JWT_SECRET_FILE": keys["jwt"],
                "DRAIN_AUTH_KEY_FILE": keys["drain"], "AUTH_COOKIE": COOKIE,
                "CORS_ORIGINS": ORIGIN, "COMMANDS_FILE": COMMANDS,
                "GRACEFUL_SHUTDOWN_TIMEOUT": "30s"})
    key = bearer(API_KEY)
    t = call(d, "POST", "/v1/tasks", TICKER, {**key, "Origin": ORIGIN}).json()
    stream = bearer(t["stream_token"])
    user = bearer(user_token(kinds=["ticker"], see="own"))
    admin_user = bearer(user_token(sub="root", admin=True))
    # 401: none and bad, on every route of the API.
    for method, path in (("GET", "/v1/tasks"), ("POST", "/v1/tasks"),
                         ("GET", f"/v1/tasks/{t['id']}"), ("DELETE", f"/v1/tasks/{t['id']}"),
                         ("GET", "/v1/commands"), ("GET", "/v1/me")):
        assert call(d, method, path).status == 401
        assert call(d, method, path, headers=bearer("nope")).status == 401
    assert follow(d, t["id"]).status == 401
    # 403: a stream token, a JWT's kinds, a cookie from a foreign origin.
    assert call(d, "GET", "/v1/tasks", headers=stream).status == 403
    assert call(d, "POST", "/v1/tasks", TICKER, stream).status == 403
    assert call(d, "DELETE", f"/v1/tasks/{t['id']}", headers=stream).status == 403
    assert call(d, "GET", "/v1/commands", headers=stream).status == 403
    assert call(d, "POST", "/v1/tasks", {"kind": "command", "command": "greet"}, user).status == 403
    cookie = {"Cookie": f"{COOKIE}={API_KEY}", "Origin": "http://evil.example"}
    assert call(d, "POST", "/v1/tasks", TICKER, cookie).status == 403
    # 200s with each credential; the stream token reads and follows its task.
    for who in (key, user, admin_user, stream):
        assert call(d, "GET", "/v1/me", headers=who).status == 200
    assert call(d, "GET", f"/v1/tasks/{t['id']}", headers=stream).status == 200
    assert call(d, "GET", f"/v1/tasks/{t['id']}", headers={**key, "Origin": ORIGIN}).status == 200
    assert follow(d, t["id"], query=f"?access_token={t['stream_token']}").status == 200
    assert call(d, "GET", "/v1/commands", headers=user).status == 200
    assert call(d, "GET", "/v1/tasks", headers=user).status == 200
    u = call(d, "POST", "/v1/tasks", TICKER, user).json()
    assert u["submitted_by"] == "user"
    assert call(d, "GET", f"/v1/tasks/{u['id']}", headers=user).status == 200
    # Preflights from a listed origin.
    for template in OPTIONS_PATHS:
        r = call(d, "OPTIONS", concrete(template),
                 headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
        assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == ORIGIN
    # The drain: a wrong key, a manual drain with a stream open, back to serving.
    assert call(d, "POST", "/drain", headers=bearer("wrong"), admin=True).status == 401
    assert call(d, "DELETE", "/drain", admin=True).status == 401
    long = call(d, "POST", "/v1/tasks", {"kind": "ticker", "count": 100000, "interval_ms": 20},
                key).json()
    s = SSEStream(f"{d.url}/v1/tasks/{long['id']}/events", headers=key)
    assert s.status == 200
    assert call(d, "POST", "/drain", headers=bearer(DRAIN_KEY), admin=True).status == 202
    s.read_until(lambda e: e.type == "draining", scaled(10))
    s.close()
    problems = SPEC.check("GET", f"/v1/tasks/{long['id']}/events", s.status, s.headers,
                          s.events(), "public")
    assert not problems, "\n".join(problems)
    assert call(d, "GET", "/readyz", admin=True).status == 503
    r = call(d, "POST", "/v1/tasks", TICKER, key)
    assert r.status == 503 and r.json()["error"] == "draining", r
    assert call(d, "DELETE", "/drain", headers=bearer(DRAIN_KEY), admin=True).status == 200
    # A signal: the drain cannot be undone.
    d.signal(signal.SIGTERM)
    wait_for(lambda: http("DELETE", d.admin_url + "/drain", headers=bearer(DRAIN_KEY)).status == 409,
             scaled(10), what="the signal to be taken")
    assert call(d, "DELETE", "/drain", headers=bearer(DRAIN_KEY), admin=True).status == 409
    assert call(d, "DELETE", f"/v1/tasks/{long['id']}", headers=key).status == 202
    assert d.wait_exit(scaled(20)) == 0


def test_cluster_answers(cluster, redis):  # noqa: F811
    group = cluster(2, env={"REDIS_TIMEOUT": "300ms", "TASK_LEASE": "30s"})
    a, b = group
    t = call(a, "POST", "/v1/tasks", TICKER).json()
    a.wait_task(t["id"])
    r = call(b, "GET", "/v1/tasks?limit=1")
    assert r.status == 200 and "next_cursor" in r.json(), r
    if r.json()["next_cursor"] is not None:
        assert call(b, "GET", f"/v1/tasks?cursor={r.json()['next_cursor']}").status == 200
    assert call(b, "GET", "/v1/tasks?cursor=bogus").status == 400
    assert call(b, "GET", f"/v1/tasks/{t['id']}").status == 200
    assert follow(b, t["id"]).status == 200
    long = call(a, "POST", "/v1/tasks", {"kind": "ticker", "count": 1000, "interval_ms": 20}).json()
    assert call(b, "DELETE", f"/v1/tasks/{long['id']}").status == 202
    other = call(a, "POST", "/v1/tasks", TICKER).json()
    a.wait_task(other["id"])
    redis.pause()
    try:
        for method, path in (("POST", "/v1/tasks"), ("GET", "/v1/tasks"),
                             ("GET", f"/v1/tasks/{t['id']}"), ("DELETE", f"/v1/tasks/{t['id']}")):
            r = call(b, method, path, TICKER if method == "POST" else None)
            assert r.status == 503, r
        # A replica that does not hold the task (the one that did not run it) cannot open it.
        assert 503 in [follow(x, other["id"]).status for x in group]
    finally:
        redis.resume()


def test_every_declared_answer_was_produced():
    missing = sorted(SPEC.declared() - SPEC.produced)
    assert not missing, f"declared but never produced ({len(missing)}): {missing}"
    print(f"\n[openapi] {len(SPEC.produced)} (operation, status) pairs produced and checked, "
          f"{SPEC.checked} answers checked")
