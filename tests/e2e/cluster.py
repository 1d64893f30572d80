"""Cluster mode on Redis for the end-to-end tests: a private redis-server,
replicas of taskstreamd sharing it, and nginx balancing them round-robin.

- `RedisServer` runs /usr/bin/redis-server on 127.0.0.1 from a temp dir of
  its own, nothing saved, and talks RESP over a plain socket (`command()`):
  standard library only, no redis module.
- Fixtures: `redis_server` (one server per test module), `redis` (that server,
  made sure to be up and answering at the start of each test), `redis_prefix`
  (a key prefix no other test uses), `redis_servers` (a factory for extra
  servers, e.g. on a chosen port), `cluster` (a factory of n replicas through
  the `daemon` factory of conftest.py, so its teardown checks apply) and
  `nginx_rr` (a factory: nginx with a plain round-robin upstream).

A test module uses them by importing them:
    from cluster import cluster, nginx_rr, redis, redis_prefix, redis_server  # noqa: F401
"""

import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from tshelpers import http, scaled, wait_for

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "browser"))

from tsclients import Nginx, free_port  # noqa: E402

REDIS_SERVER = os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")

#: What a cluster's replicas get unless the test says otherwise.
DEFAULT_LEASE = "2s"


def have_redis():
    return os.access(REDIS_SERVER, os.X_OK)


def unique_prefix():
    """A REDIS_KEY_PREFIX no other test uses: ts-<32 hex>: (36 bytes)."""
    return f"ts-{uuid.uuid4().hex}:"


def closed_port():
    """A port nothing listens on (bound a moment ago, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# RESP
# --------------------------------------------------------------------------


class RedisError(Exception):
    """An error reply (-ERR ...)."""


def encode_command(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _more(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exactly(self, n):
        while len(self.buf) < n + 2:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        """One RESP2 reply: str for +, int for :, str/None for $, list/None
        for *; an error reply comes back as a RedisError (not raised, so
        that one inside an array does not lose the rest)."""
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.exactly(n).decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ConnectionError(f"not a RESP reply: {line!r}")


# --------------------------------------------------------------------------
# redis-server
# --------------------------------------------------------------------------


class RedisServer:
    """redis-server on 127.0.0.1:`port` (a free one by default), in the
    foreground, its own temp dir, nothing persisted (--save '' --appendonly
    no): a restart loses every key. Ready when PING answers PONG."""

    def __init__(self, port=None, ready_timeout=None):
        if not have_redis():
            pytest.fail(f"redis-server not found at {REDIS_SERVER} "
                        "(scripts/deps.sh test installs it)")
        self.dir = tempfile.mkdtemp(prefix="ts-redis-")
        self.log_path = os.path.join(self.dir, "redis.log")
        self.proc = None
        self.paused = False
        self._ready_timeout = scaled(10) if ready_timeout is None else ready_timeout
        if port is not None:
            self.port = port
            self._start()
            return
        # A free port can be taken between the check and redis' bind: try a
        # few.
        for attempt in range(5):
            self.port = free_port()
            try:
                self._start()
                return
            except AssertionError:
                if attempt == 4 or "Address already in use" not in self.log():
                    raise

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def _start(self):
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
             "--logfile", "", "--databases", "1"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.paused = False
        deadline = time.monotonic() + self._ready_timeout
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                raise AssertionError(f"redis-server on port {self.port} exited with "
                                     f"{self.proc.returncode}:\n{self.log()}")
            try:
                if self.command("PING", timeout=1) == "PONG":
                    return
            except (OSError, ConnectionError, RedisError):
                pass
            if time.monotonic() > deadline:
                self._terminate()
                raise AssertionError(f"redis-server on port {self.port} does not answer PING after "
                                     f"{self._ready_timeout:.1f}s:\n{self.log()}")
            time.sleep(0.02)

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # -- talking --

    def command(self, *args, timeout=None):
        """Send one command on a fresh connection; return the decoded reply
        (str, int, None or a list of those). An error reply raises
        RedisError."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout or scaled(5)) as s:
            s.sendall(encode_command(args))
            reply = _Reader(s).reply()
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def keys(self, prefix=""):
        """Every key starting with `prefix` (SCAN, not KEYS), sorted."""
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        found, cursor = set(), "0"
        while True:
            cursor, batch = self.command("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
            found.update(batch)
            if cursor == "0":
                return sorted(found)

    # -- lifecycle --

    def _terminate(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if self.paused and sig != signal.SIGKILL:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.paused = False
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    def stop(self):
        """SIGTERM (nothing to save: it exits at once); returns the exit
        status, 0 when clean."""
        return self._terminate(signal.SIGTERM)

    def kill(self):
        """SIGKILL: Redis vanishes mid-whatever."""
        return self._terminate(signal.SIGKILL)

    def pause(self):
        """SIGSTOP: connections stay open, nothing answers."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def restart(self):
        """Stop and start again on the same port: every key is gone."""
        if self.running():
            self.stop()
        self._start()

    def cleanup(self):
        self._terminate(signal.SIGTERM)
        if os.environ.get("TS_TEST_KEEP") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server():
    """One redis-server for the whole module; tests keep apart by key
    prefix (`redis_prefix`, `cluster`)."""
    server = RedisServer()
    yield server
    server.cleanup()


@pytest.fixture
def redis(redis_server):
    """The module's RedisServer, up and answering: a test that paused,
    killed or restarted it leaves the next test a working one."""
    server = redis_server
    if server.paused:
        server.resume()
    if not server.running():
        server.restart()
    assert server.command("PING") == "PONG", server.log()
    return server


@pytest.fixture
def redis_prefix():
    return unique_prefix()


@pytest.fixture
def redis_servers():
    """Factory: redis_servers(port=None) -> RedisServer, stopped at teardown
    (for a test that needs its own, e.g. on a port a daemon already uses)."""
    started = []

    def start(port=None):
        server = RedisServer(port=port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.cleanup()


class Cluster(list):
    """The replicas of one cluster, in order a, b, c...; a list of Daemon
    (each with `.replica_id`) with a few look-ups."""

    prefix = None
    redis_url = None

    def replica(self, replica_id):
        for d in self:
            if d.replica_id == replica_id:
                return d
        raise KeyError(f"no replica {replica_id!r} in {[d.replica_id for d in self]}")

    def others(self, *excluded):
        """The replicas that are none of `excluded`."""
        return [d for d in self if all(d is not x for x in excluded)]

    def alive(self):
        return [d for d in self if d.running()]


@pytest.fixture
def cluster(daemon, redis):
    """Factory: cluster(n=3, env=None, prefix=None, redis_url=None) ->
    Cluster of n replicas started through `daemon` (teardown checks apply),
    sharing REDIS_URL (the module's server by default) and a REDIS_KEY_PREFIX
    of their own (a fresh one unless given), REPLICA_ID a, b, c..., and
    TASK_LEASE 2s. `env` is added to every replica's (and may override any of
    these; a value None removes a setting). The replicas start together and
    are waited for in turn."""

    def start(n=3, env=None, prefix=None, redis_url=None):
        assert 1 <= n <= 26
        group = Cluster()
        group.prefix = prefix or unique_prefix()
        group.redis_url = redis_url or redis.url
        for i in range(n):
            rid = string.ascii_lowercase[i]
            e = {"REDIS_URL": group.redis_url, "REDIS_KEY_PREFIX": group.prefix,
                 "REPLICA_ID": rid, "TASK_LEASE": DEFAULT_LEASE}
            e.update(env or {})
            d = daemon(env=e, wait=False)
            d.replica_id = e.get("REPLICA_ID")  # None: the daemon's default (hostname-pid)
            group.append(d)
        for d in group:
            d.wait_listening(scaled(15))
        return group

    return start


class NginxURL(str):
    """The base URL of an nginx_rr proxy (a str), with the Nginx object and
    its per-request upstream log."""

    nginx = None

    def upstreams(self, path=None):
        """[(method, uri, status, upstream_addr)] of every request nginx has
        logged so far (it logs when a request ends), optionally only those
        for `path`. upstream_addr lists every upstream tried, comma-separated."""
        out = []
        try:
            with open(os.path.join(self.nginx.prefix, "logs", "upstream.log")) as f:
                for line in f:
                    method, uri, status, addr = line.rstrip("\n").split(" ", 3)
                    if path is None or uri == path:
                        out.append((method, uri, int(status), addr))
        except OSError:
            pass
        return out


RR_BLOCK = """
    log_format upstream '$request_method $request_uri $status $upstream_addr';
    upstream taskstream_rr {{
{servers}
    }}
    server {{
        listen 127.0.0.1:PORT;
        access_log logs/upstream.log upstream;
        location / {{
            proxy_pass http://taskstream_rr;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_read_timeout 60s;
            # Only a replica that cannot be reached is skipped: no retry on a
            # 404 or a 503, no stickiness. Every replica must answer for every
            # task.
            proxy_next_upstream error;
        }}
    }}"""


@pytest.fixture
def nginx_rr():
    """Factory: nginx_rr(daemons) -> NginxURL (its base URL): nginx with a
    plain round-robin upstream of the daemons' public ports (max_fails=0, so
    the rotation never changes), default proxy_buffering, HTTP/1.1 to the
    upstream, proxy_read_timeout 60s, proxy_next_upstream error only. nginx
    is stopped at teardown."""
    started = []

    def start(daemons):
        servers = "\n".join(f"        server 127.0.0.1:{d.port} max_fails=0;" for d in daemons)
        n = Nginx(RR_BLOCK.format(servers=servers))
        started.append(n)
        url = NginxURL(n.url)
        url.nginx = n
        return url

    yield start
    for n in started:
        n.stop()


def wait_owner(group, task_id, timeout=None):
    """Wait until some replica reports the task running with an owner;
    return (owner Daemon, task JSON)."""
    found = {}

    def check():
        for d in group.alive():
            r = http("GET", f"{d.url}/v1/tasks/{task_id}")
            if r.status == 200:
                t = r.json()
                if t.get("state") == "running" and t.get("replica"):
                    found["t"] = t
                    return True
        return False

    wait_for(check, scaled(10) if timeout is None else timeout, interval=0.02,
             what=f"task {task_id} running with an owner")
    return group.replica(found["t"]["replica"]), found["t"]


class FaultProxy:
    """A TCP proxy of our own between replicas and Redis, on loopback, that
    can misbehave the ways a network does:

    - hold(): stop moving bytes either way (a blackhole: nothing is lost,
      TCP just stops, as with dropped packets that are retransmitted once
      the path heals); release() moves them again;
    - reset(): end every current connection with a RST (SO_LINGER 0);
    - delay(seconds): hold each chunk that long before passing it on.

    Every connection gets two pump threads; all end at close()."""

    def __init__(self, upstream_port):
        import threading

        self._threading = threading
        self.upstream_port = upstream_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self._delay = 0.0
        self._pairs = []
        self._closed = False
        self.accepted = 0
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._pairs.append((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        while True:
            self._flowing.wait()
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            self._flowing.wait()  # held mid-way: what was read waits too
            if self._delay:
                time.sleep(self._delay)
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def hold(self):
        self._flowing.clear()

    def release(self):
        self._flowing.set()

    def delay(self, seconds):
        self._delay = seconds

    def reset(self):
        import struct

        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.close()
                except OSError:
                    pass

    def close(self):
        with self._lock:
            self._closed = True
        self.release()
        self.listener.close()
        self.reset()
