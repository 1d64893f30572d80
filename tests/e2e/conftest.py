"""pytest fixtures for the end-to-end tests of taskstreamd.

`daemon` is a factory: `d = daemon(env={...}, args=[...])` starts the binary
on ephemeral 127.0.0.1 ports with JSON logs, waits (bounded) for both
"listening" lines and returns a Daemon. At teardown every daemon still running
gets SIGTERM and must exit 0 within a deadline (else SIGKILL and the test
fails); any sanitizer report on stderr fails the test, and so does any log
line at level "error" that the test did not declare with
`d.expect_error("substring of msg")`.

Environment: TASKSTREAMD (the binary; default <TS_BUILD_DIR>/taskstreamd or
build/taskstreamd), TS_SANITIZE (non-empty: stretch every timeout),
TS_TEST_KEEP=1 (keep the temp dir with each daemon's stderr).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from tshelpers import SANITIZE, Response, http, record, scaled, scrape, stop_budget_s, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:", "ThreadSanitizer",
                     "UndefinedBehaviorSanitizer", "MemorySanitizer")

# Environment variables passed through to the daemon; everything else is
# dropped so that a developer's shell (LISTEN=..., WORKERS=...) cannot change
# what a test runs.
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "LD_PRELOAD",
            "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "TSAN_OPTIONS", "ASAN_SYMBOLIZER_PATH",
            "LLVM_SYMBOLIZER_PATH")

SANITIZER_DEFAULTS = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:print_summary=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "TSAN_OPTIONS": "second_deadlock_stack=1:halt_on_error=0",
}

# Every daemon of the suite gets these unless the test says otherwise: a
# bounded stop (the daemon's default waits 10 minutes for tasks), JSON, and
# the demo ticker, which most tests drive (off by default, as in production).
DEFAULT_ENV = {
    "LISTEN": "127.0.0.1:0",
    "ADMIN_LISTEN": "127.0.0.1:0",
    "LOG_FORMAT": "json",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "10s",
    "KINDS": "ticker,command",
}


def find_binary():
    path = os.environ.get("TASKSTREAMD")
    if path:
        return path
    candidates = []
    if os.environ.get("TS_BUILD_DIR"):
        candidates.append(os.path.join(os.environ["TS_BUILD_DIR"], "taskstreamd"))
    candidates.append(os.path.join(REPO, "build", "taskstreamd"))
    for c in candidates:
        if os.access(c, os.X_OK):
            return c
    return candidates[0]


def base_env(extra=None):
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    if SANITIZE:
        for k, v in SANITIZER_DEFAULTS.items():
            env.setdefault(k, v)
    env.update(DEFAULT_ENV)
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


class DaemonError(AssertionError):
    pass


class Daemon:
    """A running taskstreamd with its stderr collected line by line."""

    def __init__(self, binary, env, args, stderr_path, prefix=()):
        self.binary = binary
        self.env = env
        self.args = list(args)
        self.stderr_path = stderr_path
        self.expected_errors = []
        self.expected_exit = 0
        self._cv = threading.Condition()
        self._lines = []
        self._logs = []
        self._stdout = b""
        self._file = open(stderr_path, "w", encoding="utf-8")
        self.started_at = time.monotonic()
        # `prefix` runs it through a program that execs it (prlimit): the
        # pid stays the daemon's.
        self.proc = subprocess.Popen([*prefix, binary, *self.args], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self._err_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._out_thread = threading.Thread(target=self._read_stdout, daemon=True)
        self._err_thread.start()
        self._out_thread.start()
        self.port = None
        self.admin_port = None
        self.returncode = None

    # -- output --

    def _read_stderr(self):
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            parsed = None
            if line.startswith("{"):
                try:
                    parsed = json.loads(line)
                except ValueError:
                    parsed = None
            with self._cv:
                self._lines.append(line)
                if isinstance(parsed, dict):
                    self._logs.append(parsed)
                self._file.write(line + "\n")
                self._file.flush()
                self._cv.notify_all()
        with self._cv:
            self._file.close()
            self._cv.notify_all()

    def _read_stdout(self):
        data = self.proc.stdout.read()
        with self._cv:
            self._stdout = data

    def raw_stderr(self):
        with self._cv:
            return "\n".join(self._lines)

    def stderr_lines(self):
        with self._cv:
            return list(self._lines)

    def logs(self, msg=None, **fields):
        """Parsed JSON log lines, optionally only those with `msg` and the
        given field values."""
        with self._cv:
            logs = list(self._logs)
        return [entry for entry in logs
                if (msg is None or entry.get("msg") == msg)
                and all(entry.get(k) == v for k, v in fields.items())]

    def wait_log(self, msg, timeout=None, **fields):
        """Wait for a log line with `msg` (and fields); return it."""
        timeout = scaled(10) if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for entry in self._logs:
                    if entry.get("msg") == msg and all(entry.get(k) == v for k, v in fields.items()):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DaemonError(f"no log line {msg!r} {fields} within {timeout:.1f}s; "
                                      f"stderr tail:\n{self._tail()}")
                self._cv.wait(min(left, 0.2))

    def _tail(self, n=40):
        return "\n".join(self._lines[-n:])

    def summary(self):
        """The "shutdown complete" line (after exit)."""
        found = self.logs("shutdown complete")
        assert len(found) == 1, f"expected one shutdown summary, got {found}\n{self.raw_stderr()}"
        return found[0]

    # -- lifecycle --

    def wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                ports = {e.get("listener"): e.get("port") for e in self._logs
                         if e.get("msg") == "listening"}
                if "public" in ports and "admin" in ports:
                    self.port = int(ports["public"])
                    self.admin_port = int(ports["admin"])
                    break
                if self.proc.poll() is not None and not self._err_thread.is_alive():
                    raise DaemonError(f"taskstreamd exited with {self.proc.returncode} before "
                                      f"listening:\n{self._tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DaemonError(f"taskstreamd not listening after {timeout:.1f}s:\n{self._tail()}")
                self._cv.wait(min(left, 0.1))
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        # OpenAPI recorder (tshelpers.record): which listener each port is.
        record({"listeners": {str(self.port): "public", str(self.admin_port): "admin"}})

    def running(self):
        return self.proc.poll() is None

    def signal(self, sig=None):
        os.kill(self.pid, signal.SIGTERM if sig is None else sig)

    def wait_exit(self, timeout=None):
        """Wait for the process to exit; return its exit status. Also waits
        for stderr to be fully read."""
        timeout = scaled(15) if timeout is None else timeout
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"taskstreamd (pid {self.pid}) still running after {timeout:.1f}s:\n"
                              f"{self.raw_stderr()[-3000:]}") from None
        self._err_thread.join(scaled(5))
        self._out_thread.join(scaled(5))
        return self.returncode

    def stop(self, sig=None, timeout=None):
        """Signal and wait for the exit; return the exit status."""
        if self.running():
            self.signal(signal.SIGTERM if sig is None else sig)
        return self.wait_exit(timeout)

    def expect_error(self, substring):
        """Declare an error-level log line (by a substring of its msg) as
        expected by this test."""
        self.expected_errors.append(substring)

    def stop_deadline(self):
        """How long a SIGTERM may take with this configuration: the
        daemon's own stop budget, stretched under sanitizers."""
        return scaled(stop_budget_s(self.env))

    def finish(self):
        """Teardown: stop the daemon if needed and list what is wrong."""
        problems = []
        if self.running():
            self.signal(signal.SIGTERM)
            deadline = self.stop_deadline()
            try:
                self.proc.wait(deadline)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                problems.append(f"did not exit within {deadline:.1f}s of SIGTERM (killed)")
        self.returncode = self.proc.returncode
        self._err_thread.join(scaled(5))
        self._out_thread.join(scaled(5))
        if self.returncode != self.expected_exit and not any("killed" in p for p in problems):
            problems.append(f"exit status {self.returncode}, expected {self.expected_exit}")
        text = self.raw_stderr()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                problems.append(f"sanitizer report on stderr ({marker})")
                break
        for entry in self.logs():
            if entry.get("level") == "error":
                msg = str(entry.get("msg", ""))
                if not any(s in msg for s in self.expected_errors):
                    problems.append(f"unexpected error log line: {json.dumps(entry)}")
        if self.env.get("LOG_FORMAT") == "json":
            for line in self.stderr_lines():
                if line and not line.startswith("{") and not any(m in text for m in SANITIZER_MARKERS):
                    problems.append(f"stderr line that is not JSON: {line!r}")
                    break
        return problems

    # -- conveniences --

    def submit(self, count=5, interval_ms=10, payload_bytes=None, **extra):
        """POST a ticker; assert 202; return the task JSON."""
        body = {"kind": "ticker", "count": count, "interval_ms": interval_ms}
        if payload_bytes is not None:
            body["payload_bytes"] = payload_bytes
        body.update(extra)
        r = http("POST", self.url + "/v1/tasks", body)
        assert r.status == 202, r
        return r.json()

    def task(self, task_id):
        r = http("GET", f"{self.url}/v1/tasks/{task_id}")
        assert r.status == 200, r
        return r.json()

    def wait_task(self, task_id, states=("succeeded", "failed", "cancelled"), timeout=None):
        """Wait until the task's state is one of `states`; return its JSON."""
        timeout = scaled(15) if timeout is None else timeout
        found = {}

        def check():
            found["t"] = self.task(task_id)
            return found["t"]["state"] in states

        wait_for(check, timeout, interval=0.02, what=f"task {task_id} in {states}")
        return found["t"]

    def metrics(self):
        return scrape(self)

    def readyz(self):
        return http("GET", self.admin_url + "/readyz").status

    def healthz(self):
        return http("GET", self.admin_url + "/healthz").status

    def drain(self, key, method="POST"):
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return http(method, self.admin_url + "/drain", headers=headers)

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def binary():
    path = find_binary()
    if not os.access(path, os.X_OK):
        pytest.fail(f"taskstreamd binary not found at {path} (set TASKSTREAMD or TS_BUILD_DIR)")
    return path


@pytest.fixture(scope="session")
def workdir():
    keep = os.environ.get("TS_TEST_KEEP") == "1"
    path = tempfile.mkdtemp(prefix="ts-e2e-")
    yield path
    if keep:
        print(f"\n[taskstream e2e] daemon stderr kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(request, binary, workdir):
    """Factory: daemon(env=None, args=(), wait=True, prefix=()) -> Daemon."""
    started = []
    request.node._ts_daemons = started
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-120:]

    def start(env=None, args=(), wait=True, prefix=()):
        path = os.path.join(workdir, f"{safe}.{len(started)}.stderr")
        d = Daemon(binary, base_env(env), args, path, prefix)
        started.append(d)
        if wait:
            d.wait_listening(scaled(15))
        return d

    yield start

    problems = []
    for i, d in enumerate(started):
        for p in d.finish():
            problems.append(f"daemon #{i} (pid {d.pid}): {p}")
    if problems:
        tails = "\n".join(f"--- daemon #{i} stderr ---\n" + "\n".join(d.stderr_lines()[-60:])
                          for i, d in enumerate(started))
        pytest.fail("taskstreamd teardown checks failed:\n  " + "\n  ".join(problems) + "\n" + tails,
                    pytrace=False)


class DaemonPool:
    """Daemons a module shares, one per configuration name, each started on
    first use: pool(name, env) -> Daemon. `daemons` lists them in start
    order (what a failing test's report shows); finish() runs every one's
    teardown checks and fails the module's last test if one fails."""

    def __init__(self, binary, workdir, module):
        self.binary, self.workdir, self.module = binary, workdir, module
        self.started = {}
        self.daemons = []

    def __call__(self, name, env):
        if name not in self.started:
            path = os.path.join(self.workdir, f"{self.module}.{name}.stderr")
            d = Daemon(self.binary, base_env(env), (), path)
            self.started[name] = d
            self.daemons.append(d)
            d.wait_listening(scaled(15))
        return self.started[name]

    def finish(self):
        problems = [f"daemon {name} (pid {d.pid}): {p}" for name, d in self.started.items()
                    for p in d.finish()]
        if problems:
            tails = "\n".join(f"--- {name} stderr ---\n" + "\n".join(d.stderr_lines()[-60:])
                              for name, d in self.started.items())
            pytest.fail("taskstreamd teardown checks failed:\n  " + "\n  ".join(problems) + "\n"
                        + tails, pytrace=False)


@pytest.fixture
def run_once(binary):
    """run_once(env=None, args=(), timeout=None) -> CompletedProcess (text).
    For runs that must end by themselves (invalid configuration, --help). A
    run that is still going at the timeout is stopped and fails the test."""

    def run(env=None, args=(), timeout=None):
        timeout = scaled(10) if timeout is None else timeout
        proc = subprocess.Popen([binary, *args], env=base_env(env), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                out, err = proc.communicate(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"taskstreamd {args} with {env} did not exit by itself within {timeout}s; "
                        f"stderr:\n{err[-2000:]}")
        for marker in SANITIZER_MARKERS:
            assert marker not in err, f"sanitizer report:\n{err}"
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    return run


@pytest.fixture
def tmp_file(tmp_path):
    """tmp_file(name, content, mode=0o600) -> path."""

    def make(name, content, mode=0o600):
        p = tmp_path / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        os.chmod(p, mode)
        return str(p)

    return make


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for i, d in enumerate(getattr(item, "_ts_daemons", [])):
            report.sections.append((f"taskstreamd #{i} stderr (pid {d.pid})",
                                    "\n".join(d.stderr_lines()[-80:])))


__all__ = ["Daemon", "Response", "http", "scaled", "wait_for"]
