"""The command-line client `taskstream` against the real daemon.

The client is found through TS_CLI, else as `taskstream` next to the daemon
binary (TASKSTREAMD or the build directory): the packaging test runs this
file against /usr/bin/taskstream and /usr/sbin/taskstreamd, so nothing here
needs any other build artefact. Every run of the client gets a clean
environment (no TASKSTREAM_* of the caller), a deadline, and must leave no
sanitizer report on stderr.

Covered: help, version and usage errors (exit 2); a refused connection
(exit 4, the URL and the reason); submit (the id), submit --follow to the
end; follow as text and as JSON lines (every event once, in order); a failed
command's own exit code, a signal's 128+N, a cancelled task's 5, a finished
task (the 204 answer) and SIGINT (130); list with --state and --limit, show,
cancel, commands; the server's error messages (an unknown kind, bad
parameters, a finished task); drain and drain --undo with a key file, status
while serving and while draining; --token, --token-file and TASKSTREAM_TOKEN
against a daemon with API_AUTH_KEY (401 without, never echoed, out of `ps`);
and follow across a restart of the only replica of a cluster (same Redis,
same port): the stream ends, connections are refused, the new replica
resumes the task, and the client prints every event exactly once.
"""

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from cluster import REDIS_SERVER, have_redis, redis, redis_server, unique_prefix  # noqa: F401
from conftest import PASS_ENV, SANITIZER_DEFAULTS, SANITIZER_MARKERS, DaemonPool, find_binary
from tshelpers import SANITIZE, TASK_ID_RE, http, scaled

from tsclients import free_port  # noqa: E402  (cluster.py put browser/ on sys.path)

# Exit statuses of the client (docs/cli.md).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_API, EXIT_CONNECT, EXIT_CANCELLED = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130

DRAIN_KEY = "cli-drain-k3y"
API_KEY = "cli-api-k3y-0123456789abcdef"


def find_cli():
    path = os.environ.get("TS_CLI")
    if path:
        return path
    return os.path.join(os.path.dirname(os.path.abspath(find_binary())), "taskstream")


CLI = find_cli()


def cli_env(extra=None):
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    if SANITIZE:
        for k, v in SANITIZER_DEFAULTS.items():
            env.setdefault(k, v)
    env.update(extra or {})
    return env


def no_sanitizer_report(err):
    for marker in SANITIZER_MARKERS:
        assert marker not in err, f"sanitizer report from the client:\n{err}"


def cli(*args, env=None, timeout=None):
    """Run the client to its end; return the CompletedProcess (text)."""
    if not os.access(CLI, os.X_OK):
        pytest.fail(f"the client is not at {CLI} (set TS_CLI, or build taskstream_cli)")
    p = subprocess.run([CLI, *args], env=cli_env(env), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout or scaled(20))
    no_sanitizer_report(p.stderr)
    return p


class Follower:
    """The client running in the background (follow, submit --follow): its
    stdout lines as they come, then its exit status and stderr."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen([CLI, *args], env=cli_env(env), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines = []
        self.err_lines = []
        self._cv = threading.Condition()
        self._out_thread = threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                                            daemon=True)
        self._err_thread = threading.Thread(target=self._read,
                                            args=(self.proc.stderr, self.err_lines), daemon=True)
        self._out_thread.start()
        self._err_thread.start()

    def _read(self, stream, into):
        for line in stream:
            with self._cv:
                into.append(line.rstrip("\n"))
                self._cv.notify_all()

    def wait_lines(self, predicate, timeout, what="output", stderr=False):
        """Wait until predicate(the stdout lines, or the stderr lines) holds."""
        deadline = time.monotonic() + timeout
        lines = self.err_lines if stderr else self.lines
        with self._cv:
            while not predicate(lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._out_thread.is_alive()):
                    raise AssertionError(f"no {what} from the client within {timeout:.1f}s: "
                                         f"{self.lines[-5:]}")
                self._cv.wait(min(left, 0.1))

    def finish(self, timeout):
        """Wait for the exit; return (status, stdout lines, stderr)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the client did not end within {timeout:.1f}s: {self.lines[-5:]}")
        self._out_thread.join(scaled(5))
        self._err_thread.join(scaled(5))
        err = "\n".join(self.err_lines)
        no_sanitizer_report(err)
        return rc, list(self.lines), err

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def json_events(lines):
    return [json.loads(line) for line in lines]


def check_json_stream(events, count):
    """--json lines of a ticker of `count`: ids 1..count+1 once and in order,
    ticks n = id, `end` last."""
    with_id = [e for e in events if e["id"] is not None]
    assert [e["id"] for e in with_id] == list(range(1, count + 2)), events
    assert [e["event"] for e in with_id] == ["tick"] * count + ["end"], events
    assert [e["data"]["n"] for e in with_id[:-1]] == list(range(1, count + 1))
    assert events[-1]["event"] == "end", events[-3:]
    return events[-1]["data"]


# --------------------------------------------------------------------------
# the daemons
# --------------------------------------------------------------------------

COMMANDS = {
    "exit": {"argv": ["/bin/sh", "-c", 'echo "about to exit $1"; exit "$1"', "exit", "{code}"],
             "params": {"code": {"pattern": "^[0-9]{1,3}$", "default": "0"}},
             "timeout": "30s", "max_concurrent": 8},
    "crash": {"argv": ["/bin/sh", "-c", "echo crashing; kill -s SEGV $$"],
              "timeout": "30s", "max_concurrent": 8},
    "lines": {"argv": ["/bin/sh", "-c", "echo out1; echo err1 >&2; echo out2"],
              "timeout": "30s", "max_concurrent": 8},
    "wait": {"argv": ["/bin/sh", "-c", "echo ready; exec /bin/sleep 1000"],
             "timeout": "2m", "kill_grace": "2s", "max_concurrent": 8},
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    out = {}
    for name, content in (("commands", json.dumps({"commands": COMMANDS})),
                          ("drain_key", DRAIN_KEY + "\n"), ("api_key", API_KEY + "\n"),
                          ("wrong_key", "not-the-key\n")):
        p = d / name
        p.write_text(content)
        os.chmod(p, 0o600)
        out[name] = str(p)
    return out


@pytest.fixture(scope="module")
def pool(binary, workdir, files):
    daemons = DaemonPool(binary, workdir, "test_cli")

    def get(name):
        env = {"COMMANDS_FILE": files["commands"], "GRACEFUL_SHUTDOWN_TIMEOUT": "3s",
               "SSE_RETRY_MS": "100"}
        if name == "auth":
            env["API_AUTH_KEY_FILE"] = files["api_key"]
        return daemons(name, env)

    get.daemons = daemons.daemons
    yield get
    daemons.finish()


@pytest.fixture
def d(request, pool):
    request.node._ts_daemons = pool.daemons
    return pool("open")


def on(d, *args):
    """The client's arguments for daemon `d`."""
    return ("--url", d.url, "--admin-url", d.admin_url, *args)


def submit_id(d, *args):
    p = cli(*on(d, "submit", *args))
    assert p.returncode == 0, p.stderr
    task_id = p.stdout.strip()
    assert TASK_ID_RE.match(task_id), p.stdout
    return task_id


# --------------------------------------------------------------------------
# the command line itself
# --------------------------------------------------------------------------


def test_help_and_version():
    p = cli("--help")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    for name in ("submit", "follow", "list", "show", "cancel", "commands", "drain", "status"):
        assert re.search(rf"^  {name}\b", p.stdout, re.M), (name, p.stdout)
    assert "Exit status" in p.stdout and "TASKSTREAM_URL" in p.stdout
    for args in (("submit", "--help"), ("help", "submit")):
        p = cli(*args)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("Usage: taskstream submit KIND") and "--param" in p.stdout
    p = cli("follow", "-h")
    assert p.returncode == 0 and "--last-event-id" in p.stdout
    p = cli("--version")
    assert p.returncode == 0 and re.match(r"^taskstream \d+\.\d+\.\d+ ", p.stdout), p.stdout


@pytest.mark.parametrize("args, message", [
    ((), "Usage: taskstream"),
    (("bogus",), 'no command "bogus"'),
    (("--bogus", "list"), "unknown option --bogus"),
    (("follow",), "usage: taskstream follow"),
    (("follow", "not-an-id"), "is not a task id"),
    (("show", "a" * 31), "is not a task id"),
    (("list", "--undo"), "--undo does not apply to list"),
    (("list", "--limit", "ten"), "--limit takes a whole number"),
    (("list", "extra"), "usage: taskstream list"),
    (("submit",), "usage: taskstream submit"),
    (("submit", "ticker", "--param", "count"), "--param takes NAME=VALUE"),
    (("submit", "ticker", "--param", "kind=x"), "may not set \"kind\""),
    (("submit", "ticker", "--json-params", "[1]"), "--json-params must be a JSON object"),
    (("submit", "ticker", "greet"), "goes with the kind \"command\" only"),
    (("submit", "ticker", "--last-event-id", "3"), "go with submit --follow"),
    (("follow", "0" * 32, "--reconnect-timeout", "soon"), "takes a duration"),
    (("list", "--url"), "needs a value"),
    (("drain",), "drain needs the drain key"),
    (("list", "--token", "a", "--token-file", "/nonexistent"), "not both"),
    (("list", "--token-file", "/nonexistent/token"), "cannot read the token file"),
    (("list", "--token", "two words"), "holds a space or a control character"),
])
def test_usage_errors_exit_2(args, message):
    # Nothing listens at this URL: a usage error must not get as far as a
    # request (which would be exit 4).
    p = cli("--url", "http://127.0.0.1:9", "--admin-url", "http://127.0.0.1:9", *args)
    assert p.returncode == EXIT_USAGE, (p.returncode, p.stderr)
    assert message in p.stderr, p.stderr
    assert p.stdout == ""


def test_connection_refused():
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}"
    p = cli("--url", url, "list")
    assert p.returncode == EXIT_CONNECT, p.stderr
    assert f"cannot connect to {url}/v1/tasks: Connection refused" in p.stderr, p.stderr
    p = cli("status", env={"TASKSTREAM_ADMIN_URL": url})
    assert p.returncode == EXIT_CONNECT and f"{url}/readyz" in p.stderr, p.stderr
    # follow retries a refused connection, within a bound.
    t0 = time.monotonic()
    p = cli("--url", url, "follow", "0" * 32, "--reconnect-timeout", "1s", "--max-backoff", "200ms")
    assert p.returncode == EXIT_CONNECT, p.stderr
    assert "retrying in" in p.stderr and "giving up after" in p.stderr, p.stderr
    assert time.monotonic() - t0 < scaled(10)


# --------------------------------------------------------------------------
# submit, follow
# --------------------------------------------------------------------------


def test_submit_prints_the_id(d):
    task_id = submit_id(d, "ticker", "--param", "count=2", "-p", "interval_ms=1")
    t = d.wait_task(task_id)
    assert t["state"] == "succeeded" and t["params"] == {"count": 2, "interval_ms": 1}, t
    # --json: the server's answer; --json-params too.
    p = cli(*on(d, "--json", "submit", "ticker", "--json-params", '{"count": 1, "interval_ms": 0}'))
    assert p.returncode == 0, p.stderr
    task = json.loads(p.stdout)
    assert TASK_ID_RE.match(task["id"]) and task["params"] == {"count": 1, "interval_ms": 0}, task
    # A command task: its name as an argument or --command; string parameters.
    task_id = submit_id(d, "command", "exit", "--param", "code=0")
    t = d.wait_task(task_id)
    assert (t["command"], t["params"], t["state"]) == ("exit", {"code": "0"}, "succeeded"), t
    task_id = submit_id(d, "command", "--command", "exit", "--json-params", '{"code": "0"}')
    assert d.wait_task(task_id)["state"] == "succeeded"


def test_submit_follow_to_the_end(d):
    p = cli(*on(d, "submit", "ticker", "-p", "count=3", "-p", "interval_ms=10", "--follow"))
    assert p.returncode == EXIT_OK, p.stderr
    ticks = p.stdout.splitlines()
    assert [json.loads(line.split(" ", 1)[1])["n"] for line in ticks] == [1, 2, 3], p.stdout
    assert all(line.startswith("tick {") for line in ticks), ticks
    m = re.search(r"submitted ([0-9a-f]{32})", p.stderr)
    assert m and f"task {m.group(1)} succeeded" in p.stderr, p.stderr
    assert d.task(m.group(1))["state"] == "succeeded"

    p = cli(*on(d, "submit", "command", "exit", "-p", "code=3", "-f"))
    assert p.returncode == 3, p.stderr
    assert p.stdout == "about to exit 3\n"
    assert "failed, exit code 3" in p.stderr, p.stderr


def test_follow_text_and_json(d):
    count = 5
    task_id = submit_id(d, "ticker", "-p", f"count={count}", "-p", "interval_ms=30")
    # Live: started while the task runs.
    f = Follower(*on(d, "follow", task_id))
    rc, lines, err = f.finish(scaled(20))
    assert rc == EXIT_OK, err
    assert [json.loads(line.split(" ", 1)[1])["n"] for line in lines] == list(range(1, count + 1))
    assert f"task {task_id} succeeded" in err
    # Replayed from the start once it has ended, as JSON lines.
    p = cli(*on(d, "follow", task_id, "--json"))
    assert p.returncode == EXIT_OK, p.stderr
    end = check_json_stream(json_events(p.stdout.splitlines()), count)
    assert end == {"status": "succeeded", "reason": None, "exit_code": 0}
    # From a given event on.
    p = cli(*on(d, "follow", task_id, "--json", "--last-event-id", "3"))
    assert p.returncode == EXIT_OK, p.stderr
    assert [e["id"] for e in json_events(p.stdout.splitlines())] == [4, 5, count + 1]


def test_follow_command_output(d):
    task_id = submit_id(d, "command", "lines")
    p = cli(*on(d, "follow", task_id))
    assert p.returncode == EXIT_OK, p.stderr
    assert p.stdout == "out1\nout2\n"
    assert "err1\n" in p.stderr
    p = cli(*on(d, "--json", "follow", task_id))
    events = json_events(p.stdout.splitlines())
    assert [(e["id"], e["event"]) for e in events] == [(1, "output"), (2, "output"),
                                                       (3, "output"), (4, "end")], events
    assert {"stream": "stderr", "line": "err1"} in [e["data"] for e in events]


@pytest.mark.parametrize("code", [1, 3, 42, 255])
def test_follow_failed_command_exit_code(d, code):
    task_id = submit_id(d, "command", "exit", "-p", f"code={code}")
    p = cli(*on(d, "follow", task_id))
    assert p.returncode == code, p.stderr
    assert p.stdout == f"about to exit {code}\n"
    assert f"task {task_id} failed, exit code {code} (nonzero exit)" in p.stderr, p.stderr


def test_follow_killed_by_signal(d):
    task_id = submit_id(d, "command", "crash")
    p = cli(*on(d, "--json", "follow", task_id))
    assert p.returncode == 128 + signal.SIGSEGV, p.stderr
    end = json_events(p.stdout.splitlines())[-1]
    assert end["event"] == "end" and end["data"]["signal"] == signal.SIGSEGV, end


def test_cancel_and_the_cancelled_exit_code(d):
    task_id = submit_id(d, "command", "wait")
    f = Follower(*on(d, "follow", task_id))
    try:
        f.wait_lines(lambda lines: "ready" in lines, scaled(10), "ready line")
        p = cli(*on(d, "cancel", task_id))
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith(f"cancelling {task_id}"), p.stdout
        rc, lines, err = f.finish(scaled(15))
    finally:
        f.stop()
    assert rc == EXIT_CANCELLED, err
    assert f"task {task_id} cancelled" in err and "(client)" in err, err
    assert d.task(task_id)["state"] == "cancelled"
    # Once more: the server's 409, exit 3.
    p = cli(*on(d, "cancel", task_id))
    assert p.returncode == EXIT_API, p.stderr
    assert f"task {task_id} has already finished (HTTP 409 already_finished)" in p.stderr
    # Following it now replays it and says cancelled again.
    assert cli(*on(d, "follow", task_id)).returncode == EXIT_CANCELLED


def test_follow_of_an_ended_task_204(d):
    """After the end event's id the server answers 204: the client reads the
    task's final state instead, and exits with it."""
    task_id = submit_id(d, "ticker", "-p", "count=2", "-p", "interval_ms=1")
    t = d.wait_task(task_id)
    r = http("GET", f"{d.url}/v1/tasks/{task_id}/events", headers={"Last-Event-ID": str(t["events"])})
    assert r.status == 204, r
    p = cli(*on(d, "follow", task_id, "--last-event-id", str(t["events"])))
    assert p.returncode == EXIT_OK, p.stderr
    assert p.stdout == "" and f"task {task_id} had already ended: succeeded" in p.stderr

    task_id = submit_id(d, "command", "exit", "-p", "code=7")
    t = d.wait_task(task_id)
    p = cli(*on(d, "--json", "follow", task_id, "--last-event-id", str(t["events"] + 5)))
    assert p.returncode == 7, p.stderr
    assert p.stdout == ""


def test_follow_unknown_task(d):
    p = cli(*on(d, "follow", "0" * 32))
    assert p.returncode == EXIT_API, p.stderr
    assert 'no task with id "' + "0" * 32 + '"' in p.stderr and "HTTP 404 unknown_task" in p.stderr


def test_follow_sigint_exits_130(d):
    task_id = submit_id(d, "command", "wait")
    f = Follower(*on(d, "follow", task_id))
    try:
        f.wait_lines(lambda lines: "ready" in lines, scaled(10), "ready line")
        f.proc.send_signal(signal.SIGINT)
        rc, _, err = f.finish(scaled(10))
    finally:
        f.stop()
    assert rc == EXIT_INTERRUPTED, err
    assert "interrupted" in err
    # The task goes on: only the client stopped.
    assert d.task(task_id)["state"] == "running"
    assert cli(*on(d, "cancel", task_id)).returncode == 0
    d.wait_task(task_id)


# --------------------------------------------------------------------------
# list, show, commands, errors
# --------------------------------------------------------------------------


def test_list_state_limit(d):
    done = submit_id(d, "ticker", "-p", "count=1", "-p", "interval_ms=0")
    d.wait_task(done)
    running = submit_id(d, "command", "wait")
    d.wait_task(running, states=("running",))
    try:
        p = cli(*on(d, "list", "--state", "running"))
        assert p.returncode == 0, p.stderr
        rows = p.stdout.splitlines()
        assert rows[0].split()[:4] == ["ID", "KIND", "STATE", "EXIT"], rows
        ids = [row.split()[0] for row in rows[1:]]
        assert running in ids and done not in ids, rows
        assert all(row.split()[2] == "running" for row in rows[1:]), rows
        assert any(row.split()[0] == running and row.split()[-1] == "wait" for row in rows[1:])

        p = cli(*on(d, "list", "--state", "succeeded,running", "--limit", "1"))
        assert p.returncode == 0 and len(p.stdout.splitlines()) == 2, p.stdout
        assert p.stdout.splitlines()[1].split()[0] == running  # newest first

        p = cli(*on(d, "--json", "list", "--state", "succeeded"))
        assert p.returncode == 0, p.stderr
        tasks = json.loads(p.stdout)["tasks"]
        assert done in [t["id"] for t in tasks] and {t["state"] for t in tasks} == {"succeeded"}
        assert json.loads(p.stdout) == http("GET", f"{d.url}/v1/tasks?state=succeeded").json()

        p = cli(*on(d, "list", "--state", "sleeping"))
        assert p.returncode == EXIT_API and "state must be a comma-separated list" in p.stderr
    finally:
        cli(*on(d, "cancel", running))
        d.wait_task(running)


def test_show(d):
    task_id = submit_id(d, "command", "exit", "-p", "code=2")
    d.wait_task(task_id)
    p = cli(*on(d, "show", task_id))
    assert p.returncode == 0, p.stderr
    fields = dict(re.split(r"\s+", line, maxsplit=1) for line in p.stdout.splitlines())
    assert fields["id"] == task_id and fields["state"] == "failed", fields
    assert fields["command"] == "exit" and fields["exit_code"] == "2", fields
    assert json.loads(fields["params"]) == {"code": "2"}
    p = cli(*on(d, "show", task_id, "--json"))
    assert json.loads(p.stdout) == d.task(task_id)
    p = cli(*on(d, "show", "f" * 32))
    assert p.returncode == EXIT_API and "HTTP 404 unknown_task" in p.stderr, p.stderr


def test_commands(d):
    p = cli(*on(d, "commands"))
    assert p.returncode == 0, p.stderr
    rows = p.stdout.splitlines()
    assert rows[0].split() == ["NAME", "PARAMS", "DESCRIPTION"]
    by_name = {row.split()[0]: row.split()[1] for row in rows[1:]}
    assert by_name == {"exit": "code=0", "crash": "-", "lines": "-", "wait": "-"}, by_name
    p = cli(*on(d, "--json", "commands"))
    assert json.loads(p.stdout) == http("GET", f"{d.url}/v1/commands").json()


def test_server_error_messages(d):
    p = cli(*on(d, "submit", "nope"))
    assert p.returncode == EXIT_API
    assert 'unknown task kind "nope" (allowed: ticker, command) (HTTP 404 unknown_kind)' in p.stderr
    p = cli(*on(d, "submit", "command", "nope"))
    assert p.returncode == EXIT_API and "HTTP 404 unknown_kind" in p.stderr and "nope" in p.stderr
    p = cli(*on(d, "submit", "ticker", "-p", "count=many"))
    assert p.returncode == EXIT_API
    assert '"count" must be an integer' in p.stderr and "HTTP 422 invalid_parameters" in p.stderr
    p = cli(*on(d, "submit", "command", "exit", "-p", "code=x"))
    assert p.returncode == EXIT_API and "HTTP 422" in p.stderr, p.stderr


# --------------------------------------------------------------------------
# drain, status
# --------------------------------------------------------------------------


def test_drain_and_status(daemon, files):
    dd = daemon({"DRAIN_AUTH_KEY_FILE": files["drain_key"], "COMMANDS_FILE": files["commands"],
                 "GRACEFUL_SHUTDOWN_TIMEOUT": "3s"})
    task_id = submit_id(dd, "command", "wait")
    dd.wait_task(task_id, states=("running",))

    p = cli(*on(dd, "status"))
    assert p.returncode == 0, p.stderr
    status = dict(line.split(None, 1) for line in p.stdout.splitlines())
    assert status["drain"] == "serving" and status["running"] == "1", status
    assert status["admin"] == f"{dd.admin_url} (ready)" and status["queued"] == "0", status

    # A wrong key: the server's 401, exit 3; nothing changed.
    p = cli(*on(dd, "drain", "--drain-key-file", files["wrong_key"]))
    assert p.returncode == EXIT_API and "HTTP 401" in p.stderr, p.stderr
    assert "not-the-key" not in p.stderr + p.stdout
    assert dd.readyz() == 200

    p = cli(*on(dd, "drain", "--drain-key-file", files["drain_key"]))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "draining (state: draining, tasks active: 1)\n", p.stdout
    assert dd.readyz() == 503
    p = cli(*on(dd, "status"))
    assert p.returncode == 0
    status = dict(line.split(None, 1) for line in p.stdout.splitlines())
    assert status["drain"] == "draining" and status["running"] == "1", status
    p = cli(*on(dd, "--json", "status"))
    s = json.loads(p.stdout)
    assert (s["ready"], s["readiness"], s["running"], s["queued"]) == (False, "draining", 1, 0), s
    # A draining server refuses new tasks: its message.
    p = cli(*on(dd, "submit", "ticker"))
    assert p.returncode == EXIT_API and "HTTP 503 draining" in p.stderr, p.stderr

    # --undo, the key from the environment this time.
    p = cli(*on(dd, "drain", "--undo"), env={"TASKSTREAM_DRAIN_KEY_FILE": files["drain_key"]})
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("serving again"), p.stdout
    assert dd.readyz() == 200
    p = cli(*on(dd, "--json", "status"))
    assert json.loads(p.stdout)["ready"] is True
    assert DRAIN_KEY not in dd.raw_stderr()

    assert cli(*on(dd, "cancel", task_id)).returncode == 0
    dd.wait_task(task_id)


# --------------------------------------------------------------------------
# credentials
# --------------------------------------------------------------------------


def test_token(request, pool, files):
    request.node._ts_daemons = pool.daemons
    a = pool("auth")
    p = cli(*on(a, "list"))
    assert p.returncode == EXIT_API, p.stderr
    assert "(HTTP 401 unauthorized)" in p.stderr and "--token-file" in p.stderr, p.stderr

    p = cli(*on(a, "list", "--token", "wrong-token"))
    assert p.returncode == EXIT_API
    assert "the credential is invalid or expired (HTTP 401 invalid_token)" in p.stderr
    assert "wrong-token" not in p.stderr

    for args, env in ((("--token-file", files["api_key"]), None),
                      ((), {"TASKSTREAM_TOKEN_FILE": files["api_key"]}),
                      ((), {"TASKSTREAM_TOKEN": API_KEY}),
                      (("--token", API_KEY), None)):
        p = cli(*on(a, *args, "submit", "ticker", "-p", "count=2", "-p", "interval_ms=1",
                    "--follow"), env=env)
        assert p.returncode == 0, (args, env, p.stderr)
        assert API_KEY not in p.stdout + p.stderr
        p = cli(*on(a, *args, "--json", "list", "--limit", "1"), env=env)
        assert p.returncode == 0 and len(json.loads(p.stdout)["tasks"]) == 1, p.stderr

    # A --token on the command line is out of `ps` once the client runs.
    task_id = submit_id(a, "--token-file", files["api_key"], "command", "wait")
    f = Follower(*on(a, "--token", API_KEY, "follow", task_id))
    try:
        f.wait_lines(lambda lines: "ready" in lines, scaled(10), "ready line")
        with open(f"/proc/{f.proc.pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        assert API_KEY.encode() not in cmdline and b"follow" in cmdline, cmdline
        assert cli(*on(a, "--token-file", files["api_key"], "cancel", task_id)).returncode == 0
        rc, _, err = f.finish(scaled(15))
    finally:
        f.stop()
    assert rc == EXIT_CANCELLED, err
    assert API_KEY not in err and API_KEY not in a.raw_stderr()


# --------------------------------------------------------------------------
# cluster mode: follow across a restart
# --------------------------------------------------------------------------


@pytest.mark.skipif(not have_redis(), reason=f"redis-server not installed at {REDIS_SERVER}")
def test_follow_across_a_restart(daemon, redis):  # noqa: F811
    """The only replica of a cluster stops while a ticker runs: at its
    deadline it hands the task back to Redis and the stream ends without
    `end`; connections are refused until a new replica starts on the same
    port with the same Redis, which takes the task and goes on from its
    last tick. The client prints every event exactly once."""
    port = free_port()
    env = {"LISTEN": f"127.0.0.1:{port}", "REDIS_URL": redis.url,
           "REDIS_KEY_PREFIX": unique_prefix(), "TASK_LEASE": "2s", "WORKERS": "1",
           "GRACEFUL_SHUTDOWN_TIMEOUT": "1s", "SSE_RETRY_MS": "100"}
    first = daemon({**env, "REPLICA_ID": "a"})
    count = 30
    task_id = submit_id(first, "ticker", "-p", f"count={count}", "-p", "interval_ms=100")
    f = Follower(*on(first, "--json", "follow", task_id, "--max-backoff", "300ms",
                     "--reconnect-timeout", str(int(scaled(30))) + "s"))
    try:
        f.wait_lines(lambda lines: len(lines) >= 5, scaled(10), "five events")
        first.signal(signal.SIGTERM)
        assert first.wait_exit(first.stop_deadline()) == 0
        assert first.summary()["handed_off"] == 1, first.summary()
        # Now nothing listens on the port: the client retries.
        f.wait_lines(lambda lines: any("Connection refused" in line for line in lines),
                     scaled(5), "a refused connection", stderr=True)
        second = daemon({**env, "REPLICA_ID": "b"})
        assert second.port == port
        rc, lines, err = f.finish(scaled(30))
    finally:
        f.stop()
    assert rc == EXIT_OK, err
    events = json_events(lines)
    with_id = [e for e in events if e["id"] is not None]
    assert [e["id"] for e in with_id] == list(range(1, len(with_id) + 1)), events
    resumed = [e for e in with_id if e["event"] == "resumed"]
    assert [e["data"] for e in resumed] == [{"attempt": 2, "from_replica": "a"}], events
    ticks = [e["data"]["n"] for e in with_id if e["event"] == "tick"]
    assert ticks == list(range(1, count + 1)), ticks
    assert with_id[-1]["event"] == "end" and with_id[-1]["data"]["status"] == "succeeded"
    assert [e["event"] for e in events].count("end") == 1
    assert "draining" in [e["event"] for e in events if e["id"] is None]
    assert "resuming after event" in err and "Connection refused" in err, err
    t = second.wait_task(task_id)
    assert (t["state"], t["replica"], t["attempt"]) == ("succeeded", "b", 2), t
