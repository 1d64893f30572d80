"""The authenticated /drain endpoint of the admin listener."""

import signal

import pytest

from tshelpers import assert_json_error, http, scaled, wait_for

KEY = "dr41n-k3y-Zq8w"


def test_no_key_configured_is_refused(daemon):
    d = daemon()
    for key in (None, "anything"):
        for method in ("POST", "DELETE"):
            assert_json_error(d.drain(key, method), 403)
    assert d.readyz() == 200
    assert d.metrics().value("graceful_shutdown_draining") == 0


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Bearer {KEY}x"},
    {"Authorization": f"Bearer {KEY[:-1]}"},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": KEY},
    {"Authorization": f"Bearer {KEY.upper()}"},
], ids=["missing", "bare-scheme", "empty", "longer", "prefix", "wrong", "basic", "no-scheme",
        "case"])
def test_bad_credentials_get_401(daemon, headers):
    d = daemon({"DRAIN_AUTH_KEY": KEY})
    for method in ("POST", "DELETE"):
        r = http(method, d.admin_url + "/drain", headers=headers)
        assert_json_error(r, 401)
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers
    assert d.readyz() == 200
    assert d.metrics().value("drain_auth_failures_total") == 2


def test_right_key_drains_and_delete_returns_to_serving(daemon):
    d = daemon({"DRAIN_AUTH_KEY": KEY})
    assert d.readyz() == 200
    r = d.drain(KEY)
    assert r.status == 202, r
    st = r.json()
    assert st["state"] == "draining"
    assert st["reason"] == "manual"
    assert st["shutdown_requested"] is False
    assert st.get("draining_since")
    assert d.readyz() == 503
    assert d.healthz() == 200
    r = http("POST", d.url + "/v1/tasks", {"kind": "ticker", "count": 1})
    assert_json_error(r, 503)
    assert r.headers.get("Retry-After"), r.headers

    # Repeated POSTs are harmless: same reason, same start time.
    for _ in range(2):
        again = d.drain(KEY)
        assert again.status == 202
        assert again.json()["reason"] == "manual"
        assert again.json()["draining_since"] == st["draining_since"]

    # A wrong key cannot undo it.
    assert_json_error(d.drain("nope", "DELETE"), 401)
    assert d.readyz() == 503

    r = d.drain(KEY, "DELETE")
    assert r.status == 200, r
    assert r.json()["state"] == "serving"
    assert d.readyz() == 200
    # Serving again: new work is accepted.
    t = d.submit(count=1, interval_ms=0)
    d.wait_task(t["id"])
    # DELETE while serving is fine too.
    assert d.drain(KEY, "DELETE").status == 200
    assert d.readyz() == 200
    d.stop()
    assert d.returncode == 0
    assert d.summary()["reason"] == "signal"


def test_key_from_file_with_trailing_newline(daemon, tmp_file):
    path = tmp_file("drain.key", "k3y-fr0m-f1le\n")
    d = daemon({"DRAIN_AUTH_KEY_FILE": path})
    assert_json_error(d.drain("k3y-fr0m-f1le\\n"), 401)
    assert d.readyz() == 200
    assert d.drain("k3y-fr0m-f1le").status == 202
    assert d.readyz() == 503


def test_get_drain_is_405(daemon):
    d = daemon({"DRAIN_AUTH_KEY": KEY})
    for method in ("GET", "PUT", "PATCH"):
        r = http(method, d.admin_url + "/drain", headers={"Authorization": f"Bearer {KEY}"})
        assert_json_error(r, 405)
        allow = {m.strip() for m in r.headers["Allow"].split(",")}
        assert allow >= {"POST", "DELETE"}, allow
        assert method not in allow
    assert d.readyz() == 200


def test_manual_drain_then_signal_keeps_reason_and_refuses_undrain(daemon):
    d = daemon({"DRAIN_AUTH_KEY": KEY})
    t = d.submit(count=30, interval_ms=100)  # 3 s: alive while we ask
    first = d.drain(KEY).json()
    d.signal(signal.SIGTERM)
    # (The "signal received" line is written before the coordinator hears
    # of it: wait for the state instead.)
    wait_for(lambda: d.drain(KEY).json()["shutdown_requested"], scaled(2),
             what="shutdown_requested in the drain state")
    # A signal asked for the stop: no way back to serving.
    r = d.drain(KEY, "DELETE")
    assert_json_error(r, 409)
    st = d.drain(KEY).json()
    assert st["reason"] == "manual", st
    assert st["draining_since"] == first["draining_since"]
    assert st["shutdown_requested"] is True
    assert d.readyz() == 503
    # The running task is let finish, then the process exits.
    assert d.wait_exit(scaled(20)) == 0
    s = d.summary()
    assert s["reason"] == "manual"
    assert s["forced_cancellations"] == 0
    assert [e["status"] for e in d.logs("task finished", task_id=t["id"])] == ["succeeded"]


def test_drain_body_is_ignored_and_capped(daemon):
    d = daemon({"DRAIN_AUTH_KEY": KEY})
    # A (small) body does no harm.
    r = http("POST", d.admin_url + "/drain", body=b'{"x":1}',
             headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status == 202
    # An oversized one is refused before it is read.
    r = http("POST", d.admin_url + "/drain", body=b"x" * (64 * 1024),
             headers={"Authorization": f"Bearer {KEY}"})
    assert_json_error(r, 413)
    wait_for(lambda: d.readyz() == 503, scaled(2), what="still draining")
