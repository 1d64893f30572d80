"""Slow and greedy clients: a stalled request body, the per-IP cap, hundreds
of event-stream readers that stop reading (a SIGSTOPped client process), and
connections past MAX_CONNECTIONS. Each bounded in time and memory; the
daemon's CPU use is read from /proc to catch a busy loop."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from tshelpers import SSEStream, check_complete_stream, http, scaled, wait_for

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def closed_within(sock, timeout):
    """True when the server closes (EOF or reset) within `timeout`."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_stalled_request_body_is_cut(daemon):
    d = daemon({"IDLE_TIMEOUT": "1s", "HEADER_TIMEOUT": "1s"})
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 1000\r\n\r\n{\"kind\":")
    t0 = time.monotonic()
    assert closed_within(s, scaled(6)), "a stalled body held its connection"
    assert time.monotonic() - t0 < scaled(4)
    s.close()
    assert http("GET", d.url + "/v1/tasks").json()["tasks"] == []


def test_per_ip_connection_cap(daemon):
    d = daemon({"MAX_CONNECTIONS_PER_IP": "3"})
    held = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(3)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", d.port))
        extra.sendall(b"GET /v1/tasks HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_within(extra, scaled(3)), "a 4th connection from one IP was served"
        extra.close()
        # The admin listener has no such cap and answers.
        assert d.healthz() == 200
    finally:
        held.pop().close()
    time.sleep(0.2)
    try:
        assert http("GET", d.url + "/v1/tasks").status == 200
    finally:
        for s in held:
            s.close()


READERS = textwrap.dedent("""
    import socket, sys, time
    port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(("GET %s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" % path).encode())
        socks.append(s)
    for s in socks:
        s.recv(200)  # the stream has started
    print("ready", flush=True)
    time.sleep(3600)
""")


def test_stopped_sse_readers_leave_memory_bounded(daemon):
    n = 300
    d = daemon({"EVENT_LOG_BYTES": "1M"})
    t = d.submit(count=2000, interval_ms=2, payload_bytes=2000)
    path = f"/v1/tasks/{t['id']}/events"
    rss_before = d.rss_kib()
    proc = subprocess.Popen([sys.executable, "-c", READERS, str(d.port), path, str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGSTOP)  # none of them reads another byte
        with SSEStream(f"{d.url}{path}") as other:
            events = other.read_all(timeout=scaled(30))
        check_complete_stream(events, 2000)  # an active reader is not held back
        rss_after = d.rss_kib()
        # Each stalled stream holds its socket buffers and at most the
        # task's bounded log (shared), not a copy per reader.
        growth_mib = (rss_after - rss_before) / 1024
        assert growth_mib < 64 + n * 0.128, (rss_before, rss_after)
        cpu0 = cpu_seconds(d.pid)
        time.sleep(2)
        assert cpu_seconds(d.pid) - cpu0 < 0.5, "busy loop with stalled readers"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_for(lambda: d.metrics().value("sse_streams_active") == 0, scaled(20),
             what="stalled streams released")


def test_connections_past_the_cap_cost_no_cpu_and_service_resumes(daemon):
    d = daemon({"MAX_CONNECTIONS": "20"})
    held = [socket.create_connection(("127.0.0.1", d.port)) for _ in range(20)]
    over = []
    try:
        time.sleep(0.3)
        for _ in range(100):
            s = socket.socket()
            s.settimeout(1)
            try:
                s.connect(("127.0.0.1", d.port))
            except OSError:
                pass
            over.append(s)
        cpu0 = cpu_seconds(d.pid)
        time.sleep(2)
        assert cpu_seconds(d.pid) - cpu0 < 0.5, "busy loop past MAX_CONNECTIONS"
        assert d.healthz() == 200  # the admin listener is separate
        probe = socket.create_connection(("127.0.0.1", d.port))
        probe.sendall(b"GET /v1/tasks HTTP/1.1\r\nHost: x\r\n\r\n")
        probe.settimeout(1)
        try:
            data = probe.recv(100)
        except (socket.timeout, ConnectionResetError):
            data = b""
        assert not data.startswith(b"HTTP/1.1 200"), "served past MAX_CONNECTIONS"
        probe.close()
    finally:
        for s in held + over:
            s.close()
    wait_for(lambda: http("GET", d.url + "/v1/tasks", timeout=2).status == 200, scaled(10),
             what="service resumed")
