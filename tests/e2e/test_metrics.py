"""GET /metrics: valid Prometheus text (promtool), the drain and auth
counters, and the key never leaking into logs or metrics."""

import shutil
import signal
import subprocess

import pytest

from tshelpers import SSEStream, http, scaled, wait_for

KEY = "m3tr1cs-DRAIN-k3y-4f9a2c71"
WRONG = "WR0NG-gu3ss-b7d1e8"

PROMTOOL = shutil.which("promtool")


def promtool_check(text):
    res = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                         capture_output=True, timeout=scaled(30))
    assert res.returncode == 0 and res.stdout == b"" and res.stderr == b"", (
        f"promtool check metrics: exit {res.returncode}\n{res.stdout.decode()}\n"
        f"{res.stderr.decode()}")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus) not installed")
def test_promtool_accepts_metrics_before_and_mid_drain(daemon):
    d = daemon({"DRAIN_AUTH_KEY": KEY, "WORKERS": "2"})
    r = http("GET", d.admin_url + "/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    assert "version=0.0.4" in r.headers["Content-Type"], r.headers
    promtool_check(r.text)

    # Traffic of every kind, so that labelled series exist: tasks running and
    # queued, a stream open, an error, a failed auth, a drain.
    tasks = [d.submit(count=30, interval_ms=100) for _ in range(3)]  # 2 run, 1 queued
    d.submit(count=1, interval_ms=0)
    http("POST", d.url + "/v1/tasks", {"kind": "nope"})
    d.drain(WRONG)
    with SSEStream(f"{d.url}/v1/tasks/{tasks[0]['id']}/events") as s:
        s.read_until(lambda e: e.type == "tick")
        assert d.drain(KEY).status == 202
        s.read_until(lambda e: e.type == "draining")
        r = http("GET", d.admin_url + "/metrics")
        assert r.status == 200
        promtool_check(r.text)
        m = d.metrics()
        assert m.value("graceful_shutdown_draining") == 1
        assert m.value("tasks_running") == 2
        assert m.value("tasks_queued") == 2
        assert m.value("sse_streams_active") >= 1
    for t in tasks:
        assert http("DELETE", f"{d.url}/v1/tasks/{t['id']}").status in (202, 409)
    for t in tasks:
        d.wait_task(t["id"])
    m = d.metrics()
    assert m.types.get("graceful_shutdown_requests_total") == "counter"
    promtool_check(m.text)


def test_metric_families_present(daemon):
    d = daemon()
    d.healthz()
    m = d.metrics()
    expected = {
        "task_graceful_shutdown_duration_seconds": "histogram",
        "task_forced_cancellations_total": "counter",
        "graceful_shutdown_draining": "gauge",
        "tasks_running": "gauge",
        "tasks_queued": "gauge",
        "tasks_finished_total": "counter",
        "sse_streams_active": "gauge",
        "sse_events_sent_total": "counter",
        "sse_slow_consumers_closed_total": "counter",
        "http_requests_total": "counter",
        "drain_auth_failures_total": "counter",
        "process_cpu_seconds_total": "counter",
        "process_resident_memory_bytes": "gauge",
        "process_open_fds": "gauge",
        "process_start_time_seconds": "gauge",
    }
    for name, typ in expected.items():
        assert m.types.get(name) == typ, f"{name}: TYPE {m.types.get(name)!r}, expected {typ}"
        assert m.helps.get(name), f"{name} has no HELP"
    assert m.value("process_resident_memory_bytes") > 0
    assert m.value("process_open_fds") > 0
    assert m.value("task_graceful_shutdown_duration_seconds_count") == 0
    assert m.value("task_graceful_shutdown_duration_seconds_bucket", le="+Inf") == 0
    assert m.value("http_requests_total", listener="admin", route="healthz", code="200") >= 1


def test_drain_counters(daemon):
    d = daemon({"DRAIN_AUTH_KEY": KEY})
    m = d.metrics()
    assert m.value("graceful_shutdown_draining") == 0
    assert m.value("drain_auth_failures_total") == 0
    assert not any(v for v in m.find("graceful_shutdown_requests_total").values())

    assert d.drain(None).status == 401
    assert d.drain(WRONG).status == 401
    assert d.drain(WRONG, "DELETE").status == 401
    m = d.metrics()
    assert m.value("drain_auth_failures_total") == 3
    assert m.value("graceful_shutdown_draining") == 0

    assert d.drain(KEY).status == 202
    assert d.drain(KEY).status == 202  # repeated: not a second drain
    m = d.metrics()
    assert m.value("graceful_shutdown_draining") == 1
    assert m.value("graceful_shutdown_requests_total", reason="manual") == 1
    assert m.get("graceful_shutdown_requests_total", 0, reason="signal") == 0
    assert m.value("drain_auth_failures_total") == 3
    assert m.value("http_requests_total", listener="admin", route="drain", code="202") == 2
    assert m.value("http_requests_total", listener="admin", route="drain", code="401") == 3

    assert d.drain(KEY, "DELETE").status == 200
    m = d.metrics()
    assert m.value("graceful_shutdown_draining") == 0
    # A second manual drain counts again.
    assert d.drain(KEY).status == 202
    assert d.metrics().value("graceful_shutdown_requests_total", reason="manual") == 2


def test_signal_drain_counted_with_reason_signal(daemon):
    d = daemon({"SHUTDOWN_DELAY": "30s"})
    d.signal(signal.SIGTERM)
    d.wait_log("draining")
    # The counter is bumped right after the "draining" line is written.
    wait_for(lambda: d.metrics().get("graceful_shutdown_requests_total", reason="signal"),
             scaled(2), what="graceful_shutdown_requests_total{reason=\"signal\"}")
    m = d.metrics()
    assert m.value("graceful_shutdown_draining") == 1
    assert m.value("graceful_shutdown_requests_total", reason="signal") == 1
    assert m.get("graceful_shutdown_requests_total", 0, reason="manual") == 0
    d.signal(signal.SIGTERM)  # skip the delay
    assert d.wait_exit() == 0


def test_http_requests_total_by_route_and_code(daemon):
    d = daemon()
    t = d.submit(count=1, interval_ms=0)
    http("GET", f"{d.url}/v1/tasks/{t['id']}")
    http("GET", f"{d.url}/v1/tasks/{'f' * 32}")
    http("GET", f"{d.url}/nowhere")
    m = d.metrics()
    assert m.value("http_requests_total", listener="public", route="tasks", code="202") == 1
    assert m.value("http_requests_total", listener="public", route="task", code="200") == 1
    assert m.value("http_requests_total", listener="public", route="task", code="404") == 1
    # Unknown paths are counted without inventing a route per URL.
    unknown = m.find("http_requests_total", listener="public", code="404")
    assert sum(unknown.values()) == 2
    assert all(dict(k)["route"] in ("task", "other")
               for k in unknown), unknown
    d.wait_task(t["id"])
    m = d.metrics()
    assert m.value("tasks_finished_total", kind="ticker", status="succeeded") == 1


def test_key_never_logged(daemon):
    d = daemon({"DRAIN_AUTH_KEY": KEY, "LOG_LEVEL": "debug"})
    for key in (None, WRONG, KEY + "x", KEY):
        for method in ("POST", "DELETE", "GET"):
            d.drain(key, method)
    http("GET", d.admin_url + "/drain?key=" + WRONG)
    http("POST", d.admin_url + "/drain", headers={"Authorization": "Basic " + KEY})
    assert d.drain(KEY).status == 202
    metrics_text = http("GET", d.admin_url + "/metrics").text
    assert d.stop() == 0
    text = d.raw_stderr()
    assert "drain request refused" in text  # the refusals are logged...
    for secret in (KEY, WRONG, KEY[:12], KEY[-12:]):
        assert secret not in text, f"{secret!r} appears in the daemon's stderr"  # ...without keys
        assert secret not in metrics_text


def test_tasks_metrics_follow_tasks(daemon):
    d = daemon({"WORKERS": "1"})
    a = d.submit(count=100, interval_ms=50)
    d.wait_task(a["id"], states=("running",))
    b = d.submit(count=1, interval_ms=0)
    m = d.metrics()
    assert m.value("tasks_running") == 1
    assert m.value("tasks_queued") == 1
    assert http("DELETE", f"{d.url}/v1/tasks/{b['id']}").status == 202
    assert http("DELETE", f"{d.url}/v1/tasks/{a['id']}").status == 202
    d.wait_task(a["id"])
    wait_for(lambda: d.metrics().value("tasks_running") == 0, scaled(5), what="tasks_running 0")
    m = d.metrics()
    assert m.value("tasks_queued") == 0
    assert m.value("tasks_finished_total", kind="ticker", status="cancelled") == 2
    assert m.value("task_forced_cancellations_total") == 0
