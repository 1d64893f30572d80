"""Liveness and readiness probes, before and during a drain, and the admin
listener's routing (404, 405 + Allow)."""

from tshelpers import assert_json_error, http

KEY = "probe-key-0123456789"


def test_probes_while_serving(daemon):
    d = daemon()
    r = http("GET", d.admin_url + "/healthz")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json()["status"] == "ok"
    r = http("GET", d.admin_url + "/readyz")
    assert r.status == 200
    assert r.json()["status"] == "ready"
    # HEAD is allowed wherever GET is.
    assert http("HEAD", d.admin_url + "/healthz").status == 200


def test_probes_during_manual_drain(daemon):
    d = daemon({"DRAIN_AUTH_KEY": KEY})
    assert d.drain(KEY).status == 202
    r = http("GET", d.admin_url + "/readyz")
    assert r.status == 503
    assert r.json()["status"] == "draining"
    for _ in range(3):  # stable, not a blip
        assert d.healthz() == 200
        assert d.readyz() == 503
    # The public API keeps answering reads while draining, with Connection:
    # close so that keep-alive clients move elsewhere.
    r = http("GET", d.url + "/v1/tasks")
    assert r.status == 200
    assert r.headers.get("Connection", "").lower() == "close"
    # The admin listener is not the one being drained.
    assert d.healthz() == 200


def test_admin_unknown_path_and_wrong_method(daemon):
    d = daemon({"DRAIN_AUTH_KEY": KEY})
    for path in ("/", "/nope", "/healthz/extra", "/metrics/../drain", "/v1/tasks"):
        assert_json_error(http("GET", d.admin_url + path), 404)
    for method, path in (("POST", "/healthz"), ("DELETE", "/readyz"), ("PUT", "/metrics"),
                         ("POST", "/metrics")):
        r = http(method, d.admin_url + path)
        assert_json_error(r, 405)
        allow = [m.strip() for m in r.headers.get("Allow", "").split(",")]
        assert "GET" in allow, r.headers
        assert method not in allow
    # Probes are still fine afterwards and nothing drained.
    assert d.readyz() == 200


def test_public_unknown_path_and_wrong_method(daemon):
    d = daemon()
    assert_json_error(http("GET", d.url + "/nope"), 404)
    assert_json_error(http("GET", d.url + "/healthz"), 404)  # admin routes are not public
    assert_json_error(http("GET", d.url + "/v2/tasks"), 404)
    r = http("PUT", d.url + "/v1/tasks")
    assert_json_error(r, 405)
    allow = {m.strip() for m in r.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allow
    r = http("POST", d.url + "/v1/tasks/" + "0" * 32)
    assert_json_error(r, 405)
    assert "DELETE" in r.headers["Allow"]
