"""Out of file descriptors: the process runs under a low RLIMIT_NOFILE
(prlimit, soft = hard, so it cannot raise it), and clients hold every
descriptor it has. No busy loop, no log flood, the admin listener still
answers /healthz and /readyz, open streams keep flowing, and service resumes
once descriptors are free again."""

import os
import socket
import time

from tshelpers import SSEStream, http, scaled, wait_for

NOFILE = 96


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_fd_exhaustion_no_busy_loop_admin_answers(daemon):
    d = daemon({"MAX_CONNECTIONS": "1000", "HEADER_TIMEOUT": "10m", "IDLE_TIMEOUT": "1h",
                "LOG_LEVEL": "info"},
               prefix=["prlimit", f"--nofile={NOFILE}:{NOFILE}"])
    # A stream that must keep flowing through it all.
    t = d.submit(count=100000, interval_ms=20)
    stream = SSEStream(f"{d.url}/v1/tasks/{t['id']}/events")
    stream.read_until(lambda e: e.type == "tick")

    # Hold connections until the daemon's table is full: it has NOFILE
    # descriptors, and every accepted connection takes one.
    held = []
    for _ in range(NOFILE + 50):
        held.append(socket.create_connection(("127.0.0.1", d.port), timeout=scaled(5)))
    wait_for(lambda: open_fds(d.pid) >= NOFILE - 1, scaled(10), what="the descriptors to run out")
    # More clients keep knocking while it is out of descriptors.
    knocking = [socket.create_connection(("127.0.0.1", d.port), timeout=scaled(5))
                for _ in range(20)]

    lines_before = len(d.stderr_lines())
    before = cpu_ticks(d.pid)
    t0 = time.monotonic()
    slowest = 0.0
    while time.monotonic() - t0 < 5:
        s0 = time.monotonic()
        assert http("GET", d.admin_url + "/healthz", timeout=scaled(2)).status == 200
        assert http("GET", d.admin_url + "/readyz", timeout=scaled(2)).status == 200
        slowest = max(slowest, time.monotonic() - s0)
        stream.read_until(lambda e: e.type == "tick", timeout=scaled(2))
        time.sleep(0.2)
    used = cpu_ticks(d.pid) - before
    elapsed = time.monotonic() - t0
    hz = os.sysconf("SC_CLK_TCK")
    assert used / hz / elapsed < 0.05, f"{used} ticks in {elapsed:.1f}s: a busy loop"
    assert slowest < scaled(0.1), f"/healthz took {slowest * 1000:.0f} ms"
    new_lines = d.stderr_lines()[lines_before:]
    assert len(new_lines) <= 5, new_lines[:10]
    exhausted = d.logs("out of file descriptors")
    assert exhausted and exhausted[0]["level"] == "warn", d.raw_stderr()[-2000:]

    # Free the descriptors: the public listener serves again.
    for s in held + knocking:
        s.close()
    wait_for(lambda: http("GET", d.url + "/v1/tasks", timeout=scaled(2)).status == 200,
             scaled(10), interval=0.1, what="the public listener to serve again")
    stream.read_until(lambda e: e.type == "tick")
    stream.close()
    http("DELETE", f"{d.url}/v1/tasks/{t['id']}")
