"""Bad luck rather than bad input: the log output breaks (EPIPE, ENOSPC), the
process is killed with SIGKILL in the middle of a drain and restarted on the
same ports at once, and a storm of SIGTERMs arrives together. In each case
the daemon keeps serving what it can and stops cleanly."""

import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import base_env
from tshelpers import http, scaled, wait_for


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_raw(binary, env, stderr):
    return subprocess.Popen([binary], env=base_env(env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)


def wait_http(url, timeout):
    def up():
        try:
            return http("GET", url, timeout=1).status == 200
        except OSError:
            return False
    wait_for(up, timeout, interval=0.05, what=f"{url} answering")


def ticker_round_trip(base):
    r = http("POST", base + "/v1/tasks", {"kind": "ticker", "count": 2, "interval_ms": 1})
    assert r.status == 202, r
    tid = r.json()["id"]
    wait_for(lambda: http("GET", f"{base}/v1/tasks/{tid}").json()["state"] == "succeeded",
             scaled(10), what="ticker done")


def fixed_ports_env(extra=None):
    port, admin = free_port(), free_port()
    env = {"LISTEN": f"127.0.0.1:{port}", "ADMIN_LISTEN": f"127.0.0.1:{admin}"}
    env.update(extra or {})
    return env, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"


def test_log_pipe_closed_by_reader_epipe(binary):
    """stderr is a pipe whose reader goes away: every later log write fails
    with EPIPE (SIGPIPE is ignored). The daemon keeps serving and exits 0."""
    env, url, admin = fixed_ports_env({"LOG_LEVEL": "debug"})
    r, w = os.pipe()
    proc = start_raw(binary, env, w)
    os.close(w)
    try:
        wait_http(admin + "/healthz", scaled(15))
        os.close(r)  # the reader is gone
        r = None
        for _ in range(20):  # each request logs (debug) into the broken pipe
            ticker_round_trip(url)
        assert http("GET", admin + "/healthz").status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(scaled(20)) == 0
    finally:
        if r is not None:
            os.close(r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_log_device_full_enospc(binary):
    """stderr is /dev/full: every log write fails with ENOSPC."""
    env, url, admin = fixed_ports_env({"LOG_LEVEL": "debug"})
    with open("/dev/full", "w") as full:
        proc = start_raw(binary, env, full)
    try:
        wait_http(admin + "/healthz", scaled(15))
        for _ in range(20):
            ticker_round_trip(url)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(scaled(20)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill9_during_drain_then_immediate_restart_on_same_ports(daemon):
    env, url, admin = fixed_ports_env({"GRACEFUL_SHUTDOWN_TIMEOUT": "30s"})
    d = daemon(env)
    t = d.submit(count=1000, interval_ms=50)
    # A stream is open, so the listener has live connections when it dies.
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(f"GET /v1/tasks/{t['id']}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    s.recv(100)
    d.signal(signal.SIGTERM)
    wait_for(lambda: http("GET", admin + "/readyz").status == 503, scaled(10), what="draining")
    d.signal(signal.SIGKILL)
    d.wait_exit(scaled(10))
    d.expected_exit = -signal.SIGKILL
    s.close()
    t0 = time.monotonic()
    d2 = daemon(env)  # same fixed ports, at once: SO_REUSEADDR over TIME_WAIT
    assert time.monotonic() - t0 < scaled(10)
    assert d2.port == int(env["LISTEN"].rsplit(":", 1)[1])
    assert d2.healthz() == 200 and d2.readyz() == 200
    ticker_round_trip(d2.url)


def storm(pid):
    """200 SIGTERMs, then 50 SIGINTs, as fast as they can be sent."""
    for _ in range(200):
        os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        os.kill(pid, signal.SIGINT)


def check_one_shutdown(d, signal_name):
    # Exactly one summary; a second signal forced the stop (DESIGN: a
    # second signal skips the remaining waits), so the ticker was cancelled
    # at once rather than after GRACEFUL_SHUTDOWN_TIMEOUT.
    summary = d.summary()
    assert summary["reason"] == "signal" and summary["signal"] == signal_name, summary
    assert summary["forced_by"] is not None, summary
    assert summary["forced_cancellations"] == 1 and summary["abandoned"] == 0, summary
    assert summary["duration_seconds"] < 2, summary
    assert len(d.logs("draining")) == 1
    assert d.logs("draining")[0]["signal"] == signal_name


def test_sigterm_storm_is_one_shutdown(daemon):
    # The reason is the first signal the process *takes*. One SIGTERM,
    # taken (its log line is written after the drain began), then the storm.
    d = daemon({"GRACEFUL_SHUTDOWN_TIMEOUT": "2s"})
    t = d.submit(count=1000, interval_ms=10)
    d.wait_task(t["id"], states=("running",))
    os.kill(d.pid, signal.SIGTERM)
    d.wait_log("signal received", signal="SIGTERM")
    storm(d.pid)
    assert d.wait_exit(scaled(20)) == 0
    check_one_shutdown(d, "SIGTERM")


def test_mixed_pending_signals_name_the_first_taken(daemon):
    # SIGTERM and SIGINT may both be pending before the signal thread runs;
    # which one it takes first is the kernel's choice (the lower number),
    # and whichever it is, that is the reason the summary gives.
    d = daemon({"GRACEFUL_SHUTDOWN_TIMEOUT": "2s"})
    t = d.submit(count=1000, interval_ms=10)
    d.wait_task(t["id"], states=("running",))
    storm(d.pid)
    assert d.wait_exit(scaled(20)) == 0
    first = d.logs("signal received")[0]["signal"]
    assert first in ("SIGTERM", "SIGINT")
    check_one_shutdown(d, first)


@pytest.mark.parametrize("taken", ["LISTEN", "ADMIN_LISTEN"])
def test_second_instance_on_a_port_in_use_exits_2(daemon, run_once, taken):
    # A second daemon must not share the port (SO_REUSEPORT would let it, and
    # the kernel would split the clients between the two).
    env, url, admin = fixed_ports_env()
    first = daemon(env)
    t = first.submit(count=1, interval_ms=1)
    second_env = dict(env)
    if taken == "LISTEN":
        second_env["ADMIN_LISTEN"] = f"127.0.0.1:{free_port()}"
    else:
        second_env["LISTEN"] = f"127.0.0.1:{free_port()}"
    r = run_once(second_env)
    assert r.returncode == 2, r.stderr
    assert f"{taken} {env[taken]}: address already in use" in r.stderr, r.stderr
    assert '"listening"' not in r.stderr or taken == "LISTEN", r.stderr
    # Every request still reaches the first daemon.
    for _ in range(20):
        assert http("GET", f"{url}/v1/tasks/{t['id']}").status == 200
