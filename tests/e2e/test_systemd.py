"""systemd's notify protocol: READY=1 when both listeners are up, STOPPING=1
and STATUS= when a signal starts the drain, the running-task count with
EXTEND_TIMEOUT_USEC while the stop sequence waits, all on a NOTIFY_SOCKET the
test listens on (as systemd would, for a Type=notify unit)."""

import os
import signal
import socket
import threading
import time

import pytest

from tshelpers import http, scaled, wait_for


class NotifySocket:
    """A datagram socket standing in for systemd's; collects every message."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []  # (monotonic time, {key: value})
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key):
        return [(t, m) for t, m in self.messages if key in m]

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    n = NotifySocket(str(tmp_path / "notify.sock"))
    yield n
    n.close()


def test_ready_then_stopping_with_progress(daemon, notify):
    d = daemon(env={"NOTIFY_SOCKET": notify.path, "GRACEFUL_SHUTDOWN_TIMEOUT": "30s"})
    wait_for(lambda: notify.with_key("READY"), scaled(5), what="READY=1")
    (_, ready), = notify.with_key("READY")
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(d.pid)
    # Both listeners answer by the time READY=1 is sent.
    assert d.healthz() == 200
    assert http("GET", d.url + "/v1/tasks").status == 200

    task = d.submit(count=30, interval_ms=100)  # about 3 s of work
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    wait_for(lambda: notify.with_key("STOPPING"), scaled(5), what="STOPPING=1")
    (_, stopping), = notify.with_key("STOPPING")
    assert stopping["STOPPING"] == "1"
    assert "draining" in stopping["STATUS"] and "SIGTERM" in stopping["STATUS"]

    # While the task runs: the count, and more time asked for.
    wait_for(lambda: notify.with_key("EXTEND_TIMEOUT_USEC"), scaled(5), what="EXTEND_TIMEOUT_USEC")
    _, progress = notify.with_key("EXTEND_TIMEOUT_USEC")[0]
    assert progress["STATUS"] == "draining: 1 tasks running"
    assert int(progress["EXTEND_TIMEOUT_USEC"]) >= 1_000_000

    assert d.wait_exit(scaled(20)) == 0
    elapsed = time.monotonic() - t0
    assert elapsed >= 2.0, "the stop sequence waited for the running task"
    # Progress reports came about once a second while the task ran.
    reports = notify.with_key("EXTEND_TIMEOUT_USEC")
    assert len(reports) >= 2
    assert any(m.get("STATUS", "").startswith("stopping") for _, m in notify.messages)
    assert d.summary()["forced_cancellations"] == 0
    assert task["id"]


def test_manual_drain_is_not_stopping(daemon, notify):
    d = daemon(env={"NOTIFY_SOCKET": notify.path, "DRAIN_AUTH_KEY": "k-systemd-test"})
    wait_for(lambda: notify.with_key("READY"), scaled(5), what="READY=1")
    assert d.drain("k-systemd-test").status == 202
    wait_for(lambda: any("manual" in m.get("STATUS", "") for _, m in notify.messages), scaled(5),
             what="STATUS for the manual drain")
    assert not notify.with_key("STOPPING"), "a manual drain does not stop the service"
    assert d.drain("k-systemd-test", method="DELETE").status == 200
    wait_for(lambda: notify.messages and notify.messages[-1][1].get("STATUS") == "serving",
             scaled(5), what="STATUS=serving again")


def test_without_notify_socket_nothing_breaks(daemon):
    d = daemon()
    assert "NOTIFY_SOCKET" not in d.env
    assert d.readyz() == 200
    assert d.stop() == 0
