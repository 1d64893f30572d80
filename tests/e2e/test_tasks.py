"""The task API: submit, list, read, cancel, and every error answer."""

import http.client as hc
import json
import threading
import time

import pytest

from tshelpers import (TASK_ID_RE, Background, assert_json_error, http, raw_request, scaled,
                       wait_for)

TICKER = {"kind": "ticker", "count": 3, "interval_ms": 10}


def test_submit_get_list(daemon):
    d = daemon()
    r = http("POST", d.url + "/v1/tasks", TICKER)
    assert r.status == 202, r
    t = r.json()
    assert TASK_ID_RE.match(t["id"]), t
    assert r.headers["Location"] == f"/v1/tasks/{t['id']}"
    assert r.headers["Content-Type"].startswith("application/json")
    assert t["kind"] == "ticker"
    assert t["state"] in ("queued", "running")
    assert t["created_at"]

    got = http("GET", d.url + r.headers["Location"])
    assert got.status == 200
    assert got.json()["id"] == t["id"]

    done = d.wait_task(t["id"])
    assert done["state"] == "succeeded"
    assert done["exit_code"] == 0
    assert done["events"] == 4  # 3 ticks and the end
    assert done["started_at"] and done["finished_at"]
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]

    lst = http("GET", d.url + "/v1/tasks")
    assert lst.status == 200
    tasks = lst.json()["tasks"]
    assert [x["id"] for x in tasks] == [t["id"]]
    assert tasks[0]["state"] == "succeeded"


def test_ids_are_unique_and_list_is_newest_first(daemon):
    d = daemon()
    ids = [d.submit(count=1, interval_ms=0)["id"] for _ in range(30)]
    assert len(set(ids)) == 30
    assert all(TASK_ID_RE.match(i) for i in ids)
    listed = [x["id"] for x in http("GET", d.url + "/v1/tasks").json()["tasks"]]
    assert listed == ids[::-1]
    for i in ids:
        d.wait_task(i)


def test_defaults_apply(daemon):
    d = daemon()
    t = d.submit(count=2, interval_ms=0)
    d.wait_task(t["id"])
    # Only "kind": defaults (10 ticks a second apart) are accepted; cancel it.
    r = http("POST", d.url + "/v1/tasks", {"kind": "ticker"})
    assert r.status == 202
    tid = r.json()["id"]
    assert http("DELETE", f"{d.url}/v1/tasks/{tid}").status == 202
    assert d.wait_task(tid)["state"] == "cancelled"


def test_cancel_running_task(daemon):
    d = daemon()
    t = d.submit(count=1000, interval_ms=20)
    d.wait_task(t["id"], states=("running",))
    r = http("DELETE", f"{d.url}/v1/tasks/{t['id']}")
    assert r.status == 202, r
    assert r.json()["id"] == t["id"]
    done = d.wait_task(t["id"], timeout=scaled(5))
    assert done["state"] == "cancelled"
    assert done["reason"] == "client"
    assert done["events"] < 1000
    # Cancelling a finished task is a conflict.
    assert_json_error(http("DELETE", f"{d.url}/v1/tasks/{t['id']}"), 409)
    fin = d.logs("task finished", task_id=t["id"])
    assert [f["status"] for f in fin] == ["cancelled"]


def test_cancel_queued_task(daemon):
    d = daemon({"WORKERS": "1"})
    a = d.submit(count=1000, interval_ms=20)
    d.wait_task(a["id"], states=("running",))
    b = d.submit(count=5, interval_ms=0)
    assert d.task(b["id"])["state"] == "queued"
    assert http("DELETE", f"{d.url}/v1/tasks/{b['id']}").status == 202
    done = d.wait_task(b["id"], timeout=scaled(2))
    assert done["state"] == "cancelled" and done["reason"] == "client"
    assert done["started_at"] is None
    assert done["events"] == 1  # just the end
    assert http("DELETE", f"{d.url}/v1/tasks/{a['id']}").status == 202
    d.wait_task(a["id"])


def test_cancel_finished_task_is_409(daemon):
    d = daemon()
    t = d.submit(count=1, interval_ms=0)
    d.wait_task(t["id"])
    r = http("DELETE", f"{d.url}/v1/tasks/{t['id']}")
    assert_json_error(r, 409)
    assert d.task(t["id"])["state"] == "succeeded"


@pytest.mark.parametrize("body,where", [
    (b'{"kind":', "line 1"),
    (b'{"kind": "ticker", "count": 3,}', "column"),
    (b"not json", "line"),
    (b"", None),
    (b'{"kind":"ticker","kind":"ticker"}', "duplicate"),
    (b'{"kind":"ticker"} trailing', None),
])
def test_bad_json_is_400_and_says_where(daemon, body, where):
    d = daemon()
    r = http("POST", d.url + "/v1/tasks", body, {"Content-Type": "application/json"})
    doc = assert_json_error(r, 400)
    if where:
        assert where in doc["message"], doc


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "application/jsonx", "multipart/form-data"])
def test_wrong_content_type_is_415(daemon, ctype):
    d = daemon()
    headers = {} if ctype is None else {"Content-Type": ctype}
    r = http("POST", d.url + "/v1/tasks", json.dumps(TICKER).encode(), headers)
    assert_json_error(r, 415)


def test_json_content_type_with_charset_is_fine(daemon):
    d = daemon()
    r = http("POST", d.url + "/v1/tasks", json.dumps(TICKER).encode(),
             {"Content-Type": "application/json; charset=utf-8"})
    assert r.status == 202, r
    d.wait_task(r.json()["id"])


@pytest.mark.parametrize("kind", ["nope", "TICKER", "ticker ", "../ticker", ""])
def test_unknown_kind_is_404(daemon, kind):
    d = daemon()
    r = http("POST", d.url + "/v1/tasks", {"kind": kind, "count": 1})
    if kind:
        assert_json_error(r, 404, "unknown_kind")
    else:  # an empty name may be judged invalid rather than unknown
        assert r.status in (404, 422), r
        assert_json_error(r, r.status)


@pytest.mark.parametrize("body,field", [
    ({"kind": "ticker", "count": 0}, "count"),
    ({"kind": "ticker", "count": -5}, "count"),
    ({"kind": "ticker", "count": 10 ** 9}, "count"),
    ({"kind": "ticker", "count": "3"}, "count"),
    ({"kind": "ticker", "count": 2.5}, "count"),
    ({"kind": "ticker", "count": None}, "count"),
    ({"kind": "ticker", "interval_ms": -1}, "interval_ms"),
    ({"kind": "ticker", "interval_ms": 10 ** 10}, "interval_ms"),
    ({"kind": "ticker", "payload_bytes": 10 ** 8}, "payload_bytes"),
    ({"kind": "ticker", "payload_bytes": [1]}, "payload_bytes"),
    ({"kind": "ticker", "bogus": 1}, "bogus"),
    ({"kind": 3}, "kind"),
    ({"count": 3}, "kind"),
    ([TICKER], None),
    ("ticker", None),
    (3, None),
])
def test_invalid_parameters_are_422_naming_the_field(daemon, body, field):
    d = daemon()
    r = http("POST", d.url + "/v1/tasks", json.dumps(body).encode(),
             {"Content-Type": "application/json"})
    if not isinstance(body, (dict, list)):
        # A JSON scalar may be refused as JSON (jansson wants a container).
        assert r.status in (400, 422), r
        assert_json_error(r, r.status)
        return
    doc = assert_json_error(r, 422)
    if field:
        assert field in doc["message"], doc
    assert http("GET", d.url + "/v1/tasks").json()["tasks"] == []


def test_body_too_large_is_413(daemon):
    d = daemon({"MAX_BODY_BYTES": "1k"})
    big = {"kind": "ticker", "count": 1, "pad": "x" * 2000}
    assert_json_error(http("POST", d.url + "/v1/tasks", big), 413)
    # Right at the cap is fine (and then judged on its content: 422 for "pad").
    body = json.dumps({"kind": "ticker", "pad": ""}).encode()
    body = body[:-2] + b"x" * (1024 - len(body)) + b'"}'
    assert len(body) == 1024
    r = http("POST", d.url + "/v1/tasks", body, {"Content-Type": "application/json"})
    assert_json_error(r, 422)
    assert http("GET", d.url + "/v1/tasks").json()["tasks"] == []


def test_body_too_large_by_content_length_is_refused_before_reading(daemon):
    d = daemon({"MAX_BODY_BYTES": "1k"})
    # Declare 100 MB and send none of it: the answer must come anyway.
    req = (b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 100000000\r\n\r\n")
    t0 = time.monotonic()
    resp = raw_request("127.0.0.1", d.port, req, timeout=scaled(5))
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]
    assert time.monotonic() - t0 < scaled(3)


def test_body_too_large_chunked_is_413(daemon):
    d = daemon({"MAX_BODY_BYTES": "1k"})
    chunk = b"x" * 1500
    req = (b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
           + b"%x\r\n" % len(chunk) + chunk + b"\r\n0\r\n\r\n")
    resp = raw_request("127.0.0.1", d.port, req)
    assert resp.startswith(b"HTTP/1.1 413"), resp[:200]


def test_queue_full_is_429(daemon):
    d = daemon({"WORKERS": "1", "MAX_QUEUED_TASKS": "1"})
    a = d.submit(count=1000, interval_ms=20)
    d.wait_task(a["id"], states=("running",))
    b = d.submit(count=1000, interval_ms=20)
    r = http("POST", d.url + "/v1/tasks", {"kind": "ticker", "count": 1000, "interval_ms": 20})
    assert_json_error(r, 429)
    assert int(r.headers["Retry-After"]) >= 1
    # Nothing was created for the refused one.
    assert len(http("GET", d.url + "/v1/tasks").json()["tasks"]) == 2
    # Freeing the queue makes room again.
    assert http("DELETE", f"{d.url}/v1/tasks/{b['id']}").status == 202
    d.wait_task(b["id"])
    c = d.submit(count=1, interval_ms=0)
    for t in (a, c):
        http("DELETE", f"{d.url}/v1/tasks/{t['id']}")
    for t in (a, c):
        d.wait_task(t["id"])


@pytest.mark.parametrize("workers,max_queued", [(4, 1), (2, 0)])
def test_idle_workers_take_a_burst_without_429(daemon, workers, max_queued):
    """MAX_QUEUED_TASKS bounds the tasks waiting for a worker; a burst no
    larger than the idle workers waits for none, so none may get 429."""
    d = daemon({"WORKERS": str(workers), "MAX_QUEUED_TASKS": str(max_queued)})
    for _ in range(5):
        barrier = threading.Barrier(workers)

        def post():
            barrier.wait(scaled(5))
            return http("POST", d.url + "/v1/tasks",
                        {"kind": "ticker", "count": 1, "interval_ms": 0}).status

        jobs = [Background(post) for _ in range(workers)]
        codes = sorted(j.result(scaled(10)) for j in jobs)
        assert codes == [202] * workers, codes
        wait_for(lambda: d.metrics().value("tasks_running") + d.metrics().value("tasks_queued") == 0,
                 scaled(5), what="all tasks done")


@pytest.mark.parametrize("path", [
    "/v1/tasks/" + "0" * 32,
    "/v1/tasks/" + "f" * 32,
    "/v1/tasks/" + "F" * 32,  # ids are lowercase
    "/v1/tasks/" + "0" * 31,
    "/v1/tasks/" + "0" * 33,
    "/v1/tasks/xyz",
    "/v1/tasks/" + "g" * 32,
    "/v1/tasks/../../etc/passwd",
    "/v1/tasks/..%2F..%2Fetc%2Fpasswd",
    "/v1/tasks/%2e%2e/%2e%2e/etc/passwd",
    "/v1/tasks/%00",
    "/v1/tasks/" + "a" * 5000,
])
@pytest.mark.parametrize("method,suffix", [("GET", ""), ("DELETE", ""), ("GET", "/events")])
def test_unknown_or_garbage_ids_are_404(daemon, path, method, suffix):
    d = daemon()
    real = d.submit(count=1, interval_ms=0)
    r = http(method, d.url + path + suffix)
    if r.status == 431 or r.status == 414:  # the 5000-byte path may hit the header cap
        return
    # An encoded control byte is no path at all (400); anything else is an
    # unknown task.
    doc = assert_json_error(r, 400 if "%00" in path else 404)
    assert "root:" not in doc["message"]
    assert d.task(real["id"])["id"] == real["id"]


def test_task_retention(daemon):
    d = daemon({"TASK_RETENTION": "1s"})
    t = d.submit(count=1, interval_ms=0)
    d.wait_task(t["id"])
    assert d.task(t["id"])["state"] == "succeeded"
    wait_for(lambda: http("GET", f"{d.url}/v1/tasks/{t['id']}").status == 404,
             scaled(5), interval=0.1, what="the finished task to be forgotten")
    assert http("GET", d.url + "/v1/tasks").json()["tasks"] == []
    assert_json_error(http("GET", f"{d.url}/v1/tasks/{t['id']}/events"), 404)


def test_api_auth_key(daemon):
    key = "ap1-k3y-Yt6"
    d = daemon({"API_AUTH_KEY": key})
    for method, path in (("GET", "/v1/tasks"), ("POST", "/v1/tasks"),
                         ("GET", "/v1/tasks/" + "0" * 32), ("DELETE", "/v1/tasks/" + "0" * 32),
                         ("GET", "/v1/tasks/" + "0" * 32 + "/events")):
        for headers in ({}, {"Authorization": "Bearer nope"}):
            r = http(method, d.url + path, TICKER if method == "POST" else None, headers)
            assert_json_error(r, 401)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
    auth = {"Authorization": f"Bearer {key}"}
    r = http("POST", d.url + "/v1/tasks", TICKER, auth)
    assert r.status == 202
    assert http("GET", d.url + "/v1/tasks", headers=auth).status == 200
    # The admin listener is not guarded by the API key.
    assert d.healthz() == 200
    assert key not in d.raw_stderr()


def test_keep_alive_connection_serves_many_requests(daemon):
    d = daemon()
    c = hc.HTTPConnection("127.0.0.1", d.port, timeout=scaled(5))
    try:
        for _ in range(20):
            c.request("GET", "/v1/tasks")
            r = c.getresponse()
            assert r.status == 200
            r.read()
    finally:
        c.close()


def test_unknown_kind_lists_the_kinds(daemon):
    d = daemon({"KINDS": "ticker"})
    r = http("POST", d.url + "/v1/tasks", {"kind": "tikcer"})
    assert_json_error(r, 404, "unknown_kind")
    assert r.json()["message"] == 'unknown task kind "tikcer" (allowed: ticker)', r.json()


def test_kinds_turn_the_demo_ticker_off(daemon):
    # The production default: no demo kind a stranger could run.
    d = daemon({"KINDS": None})
    r = http("POST", d.url + "/v1/tasks", TICKER)
    assert_json_error(r, 404, "unknown_kind")
    assert "(allowed: none)" in r.json()["message"], r.json()


def test_task_json_says_what_was_asked(daemon):
    d = daemon()
    t = d.submit(count=2, interval_ms=1, payload_bytes=3)
    assert t["params"] == {"count": 2, "interval_ms": 1, "payload_bytes": 3}, t
    assert "command" not in t
    assert d.wait_task(t["id"])["params"] == t["params"]


def test_list_filters_by_state_and_limit(daemon):
    d = daemon({"WORKERS": "1"})
    done = [d.submit(count=1, interval_ms=0) for _ in range(3)]
    for t in done:
        d.wait_task(t["id"])
    running = d.submit(count=1000, interval_ms=10)
    d.wait_task(running["id"], states=("running",))
    queued = d.submit(count=1, interval_ms=0)

    def ids(query):
        r = http("GET", d.url + "/v1/tasks" + query)
        assert r.status == 200, r
        return [t["id"] for t in r.json()["tasks"]]

    assert ids("?state=running") == [running["id"]]
    assert ids("?state=queued") == [queued["id"]]
    assert ids("?state=queued,running") == [queued["id"], running["id"]]
    assert ids("?state=succeeded") == [t["id"] for t in reversed(done)]
    assert ids("?state=succeeded&limit=2") == [done[2]["id"], done[1]["id"]]
    assert ids("?limit=1") == [queued["id"]]
    assert ids("?state=failed") == []
    for bad in ("?state=done", "?state=", "?state=running,", "?limit=0", "?limit=x",
                "?limit=10001", "?limit=-1"):
        assert_json_error(http("GET", d.url + "/v1/tasks" + bad), 400, "invalid_query")
    http("DELETE", f"{d.url}/v1/tasks/{running['id']}")


def test_retained_bytes_evicts_the_oldest_finished(daemon):
    # About 200 KB of events per task against a 1 MiB cap: the oldest
    # finished tasks are forgotten first, the newest stay, and the bytes
    # held stay under the cap (plus what one running task's log holds).
    d = daemon({"RETAINED_BYTES": "1M", "TASK_RETENTION": "10m"})
    tasks = []
    for _ in range(12):
        t = d.submit(count=2, interval_ms=0, payload_bytes=100000)
        d.wait_task(t["id"])
        tasks.append(t["id"])
    m = d.metrics()
    assert m.value("tasks_evicted_total") >= 6, m.value("tasks_evicted_total")
    assert m.value("task_event_log_bytes") <= 1024 * 1024
    assert http("GET", f"{d.url}/v1/tasks/{tasks[0]}").status == 404
    assert_json_error(http("GET", f"{d.url}/v1/tasks/{tasks[0]}/events"), 404)
    assert d.task(tasks[-1])["state"] == "succeeded"
    listed = [t["id"] for t in http("GET", d.url + "/v1/tasks").json()["tasks"]]
    assert listed == list(reversed(tasks))[:len(listed)] and 3 <= len(listed) <= 6, listed


def test_retained_bytes_refuses_only_when_running_tasks_hold_it(daemon):
    d = daemon({"RETAINED_BYTES": "1M", "EVENT_LOG_BYTES": "1M", "WORKERS": "4"})
    big = [d.submit(count=100000, interval_ms=1, payload_bytes=100000) for _ in range(2)]
    wait_for(lambda: d.metrics().value("task_event_log_bytes") >= 1024 * 1024, scaled(20),
             what="the running tasks to hold RETAINED_BYTES")
    r = http("POST", d.url + "/v1/tasks", TICKER)
    assert_json_error(r, 503, "retained_bytes")
    assert int(r.headers["Retry-After"]) > 0
    for t in big:
        assert http("DELETE", f"{d.url}/v1/tasks/{t['id']}").status == 202
        d.wait_log("task finished", task_id=t["id"], status="cancelled")
    # Finished, they no longer count against new work (and are the first to
    # go when the cap is passed): accepted again.
    r = http("POST", d.url + "/v1/tasks", TICKER)
    assert r.status == 202, r
    d.wait_task(r.json()["id"])
