"""Real clients and proxies for the end-to-end tests: the npm packages (set
up with `npm ci` from the lockfile on first use), a headless Chromium driven
through driver.mjs, Node's `eventsource` client, an HTTP proxy that fails
over between daemons and can cut every connection on demand, and nginx run
from a private prefix on loopback.

Used by tests/e2e/test_browser.py, test_nginx.py and test_eventsource_node.py
(they put this directory on sys.path). Standard library only.
"""

import fcntl
import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
E2E = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(E2E))
ARTIFACTS = os.path.join(E2E, "artifacts")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
NPM_TIMEOUT_S = 600


# --------------------------------------------------------------------------
# npm packages
# --------------------------------------------------------------------------


def ensure_node_modules(directory=HERE):
    """Install the npm packages of `directory` (this one: playwright-core and
    eventsource) exactly as its lockfile says (npm ci), once: a stamp in
    node_modules records the lockfile's hash. Concurrent sessions (ctest -j)
    serialise on a lock file."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/deps.sh test installs it)")
    stamp = os.path.join(directory, "node_modules", ".taskstream-lock-sha256")
    with open(os.path.join(directory, "package-lock.json"), "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(tempfile.gettempdir(), "taskstream-npm-ci.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(stamp) as f:
                if f.read().strip() == want:
                    return
        except OSError:
            pass
        proc = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                              cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=NPM_TIMEOUT_S)
        if proc.returncode != 0:
            pytest.fail(f"npm ci in {directory} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        with open(stamp, "w") as f:
            f.write(want + "\n")


@pytest.fixture(scope="session")
def node_modules():
    ensure_node_modules()
    return os.path.join(HERE, "node_modules")


def artifact_path(name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    return os.path.join(ARTIFACTS, name)


def free_port():
    """A port that was free a moment ago on 127.0.0.1 (for programs that
    cannot report the one they bound, like nginx)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc, timeout=10):
    """Stop a process we started in its own session, and its children."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout)
    else:
        # Chromium's helpers may outlive the driver for a moment.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------
# headless Chromium
# --------------------------------------------------------------------------


class BrowserError(AssertionError):
    pass


class Browser:
    """driver.mjs: one headless Chromium with a fresh profile, one page.
    call(op, **args) sends a command and returns its value; a command that
    fails or does not answer in time raises BrowserError."""

    def __init__(self, start_timeout=60):
        self.profile = tempfile.mkdtemp(prefix="ts-chromium-")
        self.stderr_path = os.path.join(self.profile, "driver.stderr")
        self._stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(["node", os.path.join(HERE, "driver.mjs"),
                                      os.path.join(self.profile, "profile")],
                                     cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, start_new_session=True,
                                     env={**os.environ, "CHROMIUM": CHROMIUM})
        self._answers = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        first = self._answer(start_timeout, "start")
        self.version = first.get("version")

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    self._answers.put(json.loads(line))
                except ValueError:
                    self._answers.put({"ok": False, "error": f"driver printed {line!r}"})
        self._answers.put(None)

    def _answer(self, timeout, what):
        try:
            a = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"browser driver: no answer to {what} within {timeout:.0f}s; "
                               f"stderr:\n{self.stderr_tail()}") from None
        if a is None:
            raise BrowserError(f"browser driver exited during {what}; stderr:\n{self.stderr_tail()}")
        if not a.get("ok"):
            raise BrowserError(f"browser {what}: {a.get('error')}")
        return a

    def stderr_tail(self, n=3000):
        try:
            with open(self.stderr_path) as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def call(self, op, timeout_s=15, **args):
        cmd = {"op": op, **args}
        cmd.setdefault("timeout_ms", int(timeout_s * 1000))
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout_s + 10, op).get("value")

    # conveniences
    def goto(self, url, timeout_s=15):
        return self.call("goto", timeout_s, url=url)

    def eval(self, expr, arg=None, timeout_s=15):
        return self.call("eval", timeout_s, expr=expr, arg=arg)

    def wait_for(self, expr, arg=None, timeout_s=15):
        return self.call("wait_for", timeout_s, expr=expr, arg=arg)

    def log(self):
        return self.call("log")

    def screenshot(self, path):
        return self.call("screenshot", 30, path=path)

    def set_viewport(self, width, height=860):
        return self.call("viewport", width=width, height=height)

    def add_cookies(self, cookies):
        """Cookies into the browser context (Playwright's addCookies: each
        a dict with name, value and url, or domain and path)."""
        return self.call("add_cookies", cookies=cookies)

    def close(self):
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        _kill_group(self.proc)
        self._stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


# --------------------------------------------------------------------------
# Node's eventsource client
# --------------------------------------------------------------------------


class ESClient:
    """es_client.mjs (Node's eventsource package) on `url`, its JSON lines
    read as they come, so a test can act on what the client has received
    (not on what the daemon has produced, which may not have reached it)."""

    def __init__(self, url, max_seconds, names=()):
        self.proc = subprocess.Popen(["node", os.path.join(HERE, "es_client.mjs"), url,
                                      str(max_seconds), *names], cwd=HERE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self._cv = threading.Condition()
        self._lines = []
        self._err = []
        self._out_thread = threading.Thread(target=self._read_out, daemon=True)
        self._err_thread = threading.Thread(target=lambda: self._err.append(self.proc.stderr.read()),
                                            daemon=True)
        self._out_thread.start()
        self._err_thread.start()

    def _read_out(self):
        for line in self.proc.stdout:
            if line.strip():
                with self._cv:
                    self._lines.append(json.loads(line))
                    self._cv.notify_all()

    def wait_events(self, n, timeout):
        """Block until the client has received `n` events."""
        with self._cv:
            ok = self._cv.wait_for(
                lambda: sum(ln["kind"] == "event" for ln in self._lines) >= n, timeout)
        assert ok, f"the client received fewer than {n} events in {timeout}s: {self._lines[-5:]}"

    def result(self, timeout):
        """Wait for the client to finish; return its parsed lines."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(self.proc)
            raise AssertionError(f"es_client.mjs did not finish in {timeout}s") from None
        finally:
            self._out_thread.join(10)
            self._err_thread.join(10)
        err = "".join(self._err)
        assert self.proc.returncode == 0, f"es_client.mjs exited {self.proc.returncode}: {err[-2000:]}"
        with self._cv:
            return list(self._lines)


# --------------------------------------------------------------------------
# an HTTP proxy that fails over and cuts connections
# --------------------------------------------------------------------------


class FailoverProxy:
    """A small HTTP/1.1 reverse proxy on 127.0.0.1 in front of one or more
    daemons, one request per connection (it answers "Connection: close").

    It tries the backends in `order`: a refused connection, a 503, or a 404
    for a GET (the task lives on another instance) moves on to the next, the
    way nginx's proxy_next_upstream does; the last answer is passed on. The
    response body is streamed as it arrives. cut_all() shuts down every
    connection in flight, as a proxy restart or a network blip would. Each
    request is logged with its Last-Event-ID and the backends tried. hold()
    makes new requests wait until release()."""

    def __init__(self, backends):
        self.backends = dict(backends)  # name -> (host, port)
        self.order = list(self.backends)
        self.log = []
        self._mu = threading.Lock()
        self._active = set()
        self._stop = False
        self._gate = threading.Event()  # cleared: new requests wait
        self._gate.set()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def cut_all(self):
        """Cut every connection in flight; returns how many."""
        with self._mu:
            socks = list(self._active)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(socks) // 2

    def hold(self):
        """New requests wait (up to 30 s) until release(): the instance is
        unreachable for a while, and clients fall behind."""
        self._gate.clear()

    def release(self):
        self._gate.set()

    def requests(self, path_suffix=None):
        with self._mu:
            entries = list(self.log)
        return [e for e in entries if path_suffix is None or e["path"].endswith(path_suffix)]

    def close(self):
        self._stop = True
        self._gate.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.cut_all()

    @staticmethod
    def _read_head(sock, buf=b""):
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return None, buf
            buf += chunk
            if len(buf) > 65536:
                return None, buf
        head, _, rest = buf.partition(b"\r\n\r\n")
        return head.decode("latin-1"), rest

    def _serve(self, client):
        upstream = None
        entry = None
        try:
            client.settimeout(30)
            head, rest = self._read_head(client)
            if head is None:
                return
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = []
            length = 0
            last_id = None
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                lk = k.strip().lower()
                if lk in ("connection", "keep-alive", "proxy-connection"):
                    continue
                if lk == "content-length":
                    length = int(v.strip())
                if lk == "last-event-id":
                    last_id = v.strip()
                headers.append(ln)
            body = rest
            while len(body) < length:
                chunk = client.recv(65536)
                if not chunk:
                    return
                body += chunk
            request = ("\r\n".join([lines[0], *headers, "Connection: close"]) + "\r\n\r\n").encode(
                "latin-1") + body
            entry = {"t": time.monotonic(), "method": method, "path": path,
                     "last_event_id": last_id, "attempts": [], "status": None}
            with self._mu:
                self.log.append(entry)
            self._gate.wait(30)
            with self._mu:
                order = list(self.order)
            for i, name in enumerate(order):
                last = i == len(order) - 1
                try:
                    upstream = socket.create_connection(self.backends[name], timeout=5)
                except OSError:
                    entry["attempts"].append((name, "refused"))
                    upstream = None
                    if last:
                        client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                       b"Connection: close\r\n\r\n")
                        entry["status"] = 502
                    continue
                upstream.settimeout(None)
                upstream.sendall(request)
                rhead, rrest = self._read_head(upstream)
                if rhead is None:
                    entry["attempts"].append((name, "no answer"))
                    upstream.close()
                    upstream = None
                    continue
                status = int(rhead.split(" ", 2)[1])
                entry["attempts"].append((name, status))
                retry = status == 503 or (status == 404 and method in ("GET", "HEAD"))
                if retry and not last:
                    upstream.close()
                    upstream = None
                    continue
                entry["status"] = status
                entry["backend"] = name
                out = [ln for ln in rhead.split("\r\n")
                       if ln.partition(":")[0].strip().lower() not in ("connection", "keep-alive")]
                with self._mu:
                    self._active.update((client, upstream))
                client.sendall(("\r\n".join(out) + "\r\nConnection: close\r\n\r\n").encode("latin-1")
                               + rrest)
                while True:
                    chunk = upstream.recv(65536)
                    if not chunk:
                        break
                    client.sendall(chunk)
                break
        except (OSError, ValueError, IndexError):
            pass
        finally:
            with self._mu:
                self._active.discard(client)
                self._active.discard(upstream)
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
            if entry is not None:
                entry["closed"] = time.monotonic()


# --------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------


class Nginx:
    """nginx from a private prefix on loopback: `nginx -p PREFIX -c CONF -g
    'daemon off;'`. `http_block` is the inside of the http {} block; PORT in
    it is replaced by a free port (self.port)."""

    def __init__(self, http_block, ready_timeout=15):
        if not os.access(NGINX, os.X_OK):
            pytest.fail(f"nginx not found at {NGINX} (scripts/deps.sh test installs it)")
        self.prefix = tempfile.mkdtemp(prefix="ts-nginx-")
        # Workers run as nobody when the master is root: they need to reach
        # their temp directories.
        os.chmod(self.prefix, 0o755)
        for d in ("logs", "tmp"):
            os.makedirs(os.path.join(self.prefix, d), mode=0o777, exist_ok=True)
            os.chmod(os.path.join(self.prefix, d), 0o777)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        p = self.prefix
        conf = f"""
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/logs/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {p}/logs/access.log combined;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
{http_block.replace("PORT", str(self.port))}
}}
"""
        self.conf_path = os.path.join(p, "nginx.conf")
        with open(self.conf_path, "w") as f:
            f.write(conf)
        self._stderr = open(os.path.join(p, "logs", "stderr.log"), "w")
        self.proc = subprocess.Popen([NGINX, "-p", p, "-c", self.conf_path, "-e",
                                      f"{p}/logs/error.log", "-g", "daemon off;"],
                                     stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nginx did not start:\n{self.error_log()}")
            time.sleep(0.05)

    def error_log(self):
        try:
            with open(os.path.join(self.prefix, "logs", "error.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def access_log(self):
        try:
            with open(os.path.join(self.prefix, "logs", "access.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish requests
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc)
        self._stderr.close()
        if os.environ.get("TS_TEST_KEEP") != "1":
            shutil.rmtree(self.prefix, ignore_errors=True)
