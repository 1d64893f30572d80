"""Opt-in stress (TS_STRESS=<cycles>): stop the daemon again and again while
clients keep connecting, and require a clean exit every time. It hunts rare
races in the stop sequence (closing the public listener under traffic), which
the ordinary tests only meet by chance."""

import os
import signal
import socket
import threading

import pytest

CYCLES = int(os.environ.get("TS_STRESS", "0") or 0)


@pytest.mark.skipif(CYCLES <= 0, reason="set TS_STRESS=<cycles> to run")
def test_stop_under_traffic_always_exits_cleanly(daemon):
    for _ in range(CYCLES):
        d = daemon({"HTTP_THREADS": "8"})
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", d.port), timeout=1) as s:
                        s.sendall(b"GET /v1/tasks HTTP/1.1\r\nHost: x\r\n\r\n")
                        s.recv(100)
                except OSError:
                    pass

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        stop.wait(0.05)  # traffic flowing when the signal lands
        try:
            rc = d.stop(signal.SIGTERM)
        finally:
            stop.set()
            for t in threads:
                t.join(5)
        assert rc == 0, f"exit status {rc}:\n" + "\n".join(
            ln for ln in d.stderr_lines() if not ln.startswith("{"))
