"""Prometheus' own tools as peers: `promtool check metrics` lints a scrape
taken in the middle of a drain with tasks running and streams open (the
moment an operator looks at the dashboards), and the example alert rules in
deploy/prometheus/ pass `promtool check rules` and their unit tests
(`promtool test rules`)."""

import os
import shutil
import subprocess

import pytest

from tshelpers import SSEStream, Background, check_complete_stream, http, scaled, scrape

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RULES_DIR = os.path.join(REPO, "deploy", "prometheus")
KEY = "promtool-drain-key"


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (scripts/deps.sh test installs prometheus)")
    return path


def check_metrics(promtool, text):
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    # Lint problems are printed (and make the exit status non-zero).
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", (
        f"promtool check metrics: {proc.returncode}\n{proc.stdout}{proc.stderr}")


def test_scrape_mid_drain_passes_promtool(daemon, promtool):
    d = daemon(env={"DRAIN_AUTH_KEY": KEY, "SSE_HEARTBEAT_INTERVAL": "500ms"})
    count = 25
    tasks = [d.submit(count=count, interval_ms=100) for _ in range(3)]
    readers = [Background(lambda t=t: SSEStream(f"{d.url}/v1/tasks/{t['id']}/events",
                                                 timeout=scaled(30)).read_all()) for t in tasks[:2]]
    assert d.drain(KEY).status == 202
    assert http("GET", d.url + "/v1/tasks").status == 200

    r = http("GET", d.admin_url + "/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.headers
    check_metrics(promtool, r.text)
    m = scrape(d)
    assert m.value("graceful_shutdown_draining") == 1
    assert m.value("graceful_shutdown_requests_total", reason="manual") == 1
    assert m.value("tasks_running") >= 1
    assert m.value("sse_streams_active") >= 1
    for family in ("task_graceful_shutdown_duration_seconds", "task_forced_cancellations_total",
                   "http_requests_total", "sse_events_sent_total", "process_start_time_seconds"):
        assert family in r.text, family

    # Then the stop signal: still draining, tasks still running; lint again.
    d.signal()
    d.wait_log("signal received", timeout=scaled(5))
    r = http("GET", d.admin_url + "/metrics")
    check_metrics(promtool, r.text)
    m = scrape(d)
    assert m.value("graceful_shutdown_draining") == 1 and m.value("tasks_running") >= 1

    for reader in readers:
        check_complete_stream(reader.result(scaled(30)), count)
    assert d.wait_exit(scaled(20)) == 0


def test_alert_rules_check_and_unit_tests(promtool):
    rules = os.path.join(RULES_DIR, "taskstream-alerts.yml")
    proc = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 6 rules found" in proc.stdout, proc.stdout
    proc = subprocess.run([promtool, "test", "rules", "taskstream-alerts.test.yml"],
                          cwd=RULES_DIR, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr
