"""Command tasks against the real daemon: the COMMANDS_FILE checks at start-up,
client parameters (injection attempts stay literal), output streaming (order,
completeness, invalid UTF-8, long lines, floods, the output limit), exit codes
and signals in `end`, stopping (TERM then KILL, time limit, shutdown wait and
deadline), a grandchild holding the pipes, the state a child starts in (no
leaked descriptor, default signals, scrubbed environment, death signal), and
`kill -9` of the daemon.

The programs run are the operator's: small scripts in tests/e2e/commands/.
After every test no zombie child of the daemon may be left (see the autouse
fixture `no_zombies`).
"""

import json
import os
import signal
import time

import pytest

from tshelpers import SSEStream, assert_json_error, http, scaled, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
HELPERS = os.path.join(HERE, "commands")


def helper(name):
    return os.path.join(HELPERS, name)


# --------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------


def proc_stat(pid):
    """(state, ppid, pgid) of `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may hold anything.
    fields = text[text.rfind(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children_of(pid):
    """(pid, state) of every process whose parent is `pid`."""
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st is not None and st[1] == pid:
            out.append((p, st[0]))
    return out


def zombies_of(pid):
    return [p for p, state in children_of(pid) if state == "Z"]


def dead(pid):
    """Gone, or a zombie (dead, waiting for a parent that is not us)."""
    st = proc_stat(pid)
    return st is None or st[0] in ("Z", "X")


def group_alive(pgid):
    return [p for p in all_pids() if (st := proc_stat(p)) is not None and st[2] == pgid
            and st[0] not in ("Z", "X")]


# --------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_zombies(request, daemon):
    """After each test (before the daemons are stopped): no daemon still
    running has a zombie child. A child that has just exited may be one for
    an instant, while its worker reaps it; one that stays is a leak."""
    yield
    for d in getattr(request.node, "_ts_daemons", []):
        if d.running():
            try:
                wait_for(lambda: not zombies_of(d.pid), scaled(2), what="no zombie children")
            except AssertionError:
                pytest.fail(f"zombie children of taskstreamd {d.pid}: {zombies_of(d.pid)}")


def write_commands(tmp_path, commands, name="commands.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"commands": commands}))
    os.chmod(path, 0o600)
    return str(path)


def start(daemon, tmp_path, commands, **env):
    env = {"COMMANDS_FILE": write_commands(tmp_path, commands), **env}
    return daemon(env=env)


def submit(d, command, params=None, status=202):
    body = {"kind": "command", "command": command}
    if params is not None:
        body["params"] = params
    r = http("POST", d.url + "/v1/tasks", body)
    assert r.status == status, r
    return r


def run_task(d, command, params=None, timeout=None):
    """Submit, read the whole stream; return the task id and the events."""
    task = submit(d, command, params).json()
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        return task["id"], check_ids(s.read_all(timeout or scaled(30)))


def run(d, command, params=None, timeout=None):
    return run_task(d, command, params, timeout)[1]


def check_ids(events):
    """Task events have ids 1..n without a gap and `end` is last."""
    task_events = [e for e in events if e.id is not None]
    assert [int(e.id) for e in task_events] == list(range(1, len(task_events) + 1)), events[:5]
    assert task_events and task_events[-1].type == "end", events[-3:]
    return task_events


def lines(events, stream=None):
    return [e.json()["line"] for e in events
            if e.type == "output" and (stream is None or e.json()["stream"] == stream)]


def end_of(events):
    assert events[-1].type == "end"
    return events[-1].json()


def only(events, type_):
    found = [e.json() for e in events if e.type == type_]
    assert len(found) == 1, (type_, events[-5:])
    return found[0]


def started_pid(d, task_id):
    return d.wait_log("command started", task_id=task_id)["pid"]


def simple(argv, **extra):
    spec = {"argv": argv, "timeout": "30s", "max_concurrent": 8}
    spec.update(extra)
    return spec


# --------------------------------------------------------------------------
# COMMANDS_FILE at start-up
# --------------------------------------------------------------------------

CONFIG_ERRORS = [
    # (commands, expected message after "COMMANDS_FILE <path>: ")
    ({"greet": {"argv": ["/bin/nope", "hello"]}},
     'command "greet": field "argv[0]": "/bin/nope" does not exist'),
    ({"greet": {"argv": ["echo", "hello"]}},
     'command "greet": field "argv[0]": "echo" is not an absolute path'),
    ({"greet": {"argv": ["@NOEXEC@"]}},
     'command "greet": field "argv[0]": "@NOEXEC@" is not executable'),
    ({"greet": {"argv": ["/bin/echo", "{who}"]}},
     'command "greet": field "argv[1]": placeholder {who} names no declared parameter'),
    ({"greet": {"argv": ["/bin/echo"], "params": {"who": {"pattern": "^a$"}}}},
     'command "greet": field "params.who": is declared but no argv element uses {who}'),
    ({"greet": {"argv": ["/bin/echo", "{who}"], "params": {"who": {"pattern": "^(a$"}}}},
     'command "greet": field "params.who.pattern": invalid regular expression'),
    ({"greet": {"argv": ["/bin/echo"], "cwd": "tmp"}},
     'command "greet": field "cwd": "tmp" is not an absolute path'),
    ({"greet": {"argv": ["/bin/echo"], "timeout": "soon"}},
     'command "greet": field "timeout": must be a duration'),
    ({"greet": {"argv": ["/bin/echo"], "kill_grace": "1h"}},
     'command "greet": field "kill_grace": 3600000 ms is longer than KILL_GRACE'),
    ({"greet": {"argv": ["/bin/echo"], "max_output_bytes": 0}},
     'command "greet": field "max_output_bytes": 0 is out of range'),
    ({"greet": {"argv": ["/bin/echo"], "env": {"allow": ["NOT-A-NAME"]}}},
     'command "greet": field "env.allow[0]": must be a variable name'),
    ({"greet": {"argv": ["/bin/echo"], "shell": True}},
     'command "greet": field "shell": is not a known field'),
    ({"Greet!": {"argv": ["/bin/echo"]}},
     'command "Greet!": a command name is 1 to 64 of a-z, 0-9'),
]


@pytest.mark.parametrize("commands,message", CONFIG_ERRORS,
                         ids=[m.split(": ", 2)[1] if ": " in m else m for _, m in CONFIG_ERRORS])
def test_config_error_stops_startup(daemon, tmp_path, commands, message):
    noexec = tmp_path / "data.txt"  # a regular file without x bits
    noexec.write_text("data\n")
    os.chmod(noexec, 0o644)
    commands = json.loads(json.dumps(commands).replace("@NOEXEC@", str(noexec)))
    message = message.replace("@NOEXEC@", str(noexec))
    path = write_commands(tmp_path, commands)
    d = daemon(env={"COMMANDS_FILE": path, "KILL_GRACE": "10s"}, wait=False)
    d.expected_exit = 2
    d.expect_error("invalid COMMANDS_FILE")
    d.expect_error("start-up failed")
    assert d.wait_exit(scaled(10)) == 2
    err = d.logs("invalid COMMANDS_FILE")
    assert len(err) == 1, d.raw_stderr()
    assert err[0]["error"].startswith(f"COMMANDS_FILE {path}: {message}"), err[0]["error"]
    assert err[0]["level"] == "error"
    # Said once: the closing line adds the exit status, not an errno's text.
    assert "Invalid argument" not in d.raw_stderr(), d.raw_stderr()
    assert d.logs("start-up failed: invalid configuration")[0]["exit_status"] == 2


@pytest.mark.parametrize("content,message", [
    ("{\"commands\": {", "invalid JSON at line"),
    ("{\"commands\": {\"a\": {\"argv\": [\"/bin/echo\"]}, \"a\": {\"argv\": [\"/bin/echo\"]}}}",
     "duplicate object key"),
    (None, "No such file or directory"),
])
def test_unreadable_commands_file(daemon, tmp_path, content, message):
    path = str(tmp_path / "commands.json")
    if content is not None:
        with open(path, "w") as f:
            f.write(content)
    d = daemon(env={"COMMANDS_FILE": path}, wait=False)
    d.expected_exit = 2
    d.expect_error("invalid COMMANDS_FILE")
    d.expect_error("start-up failed")
    assert d.wait_exit(scaled(10)) == 2
    text = d.logs("invalid COMMANDS_FILE")[0]["error"]
    assert text.startswith(f"COMMANDS_FILE {path}: ") and message in text, text


def test_world_writable_commands_file_refused(daemon, tmp_path):
    path = write_commands(tmp_path, {"greet": simple(["/bin/echo"])})
    os.chmod(path, 0o666)
    d = daemon(env={"COMMANDS_FILE": path}, wait=False)
    d.expected_exit = 2
    d.expect_error("invalid COMMANDS_FILE")
    d.expect_error("start-up failed")
    assert d.wait_exit(scaled(10)) == 2
    assert "writable by every user" in d.logs("invalid COMMANDS_FILE")[0]["error"]


def test_sample_commands_file(daemon):
    """examples/commands.json (what `make run` uses) loads and its demo
    commands run."""
    d = daemon(env={"COMMANDS_FILE": os.path.join(REPO, "examples", "commands.json")})
    assert d.wait_log("commands loaded")["count"] == 3
    events = run(d, "greet")
    assert lines(events) == ["hello world"]
    assert end_of(events) == {"status": "succeeded", "reason": None, "exit_code": 0}
    events = run(d, "greet", {"who": "Ada; rm -rf $(id)"})
    assert lines(events) == ["hello Ada; rm -rf $(id)"]
    # What the description invites a user to try stays one argument.
    description = json.load(open(os.path.join(REPO, "examples", "commands.json")))[
        "commands"]["greet"]["description"]
    for tried in ("a; rm -rf /", "$(id)"):
        assert f'"{tried}"' in description
        assert lines(run(d, "greet", {"who": tried})) == [f"hello {tried}"]
    events = run(d, "countdown", {"n": "2"})
    assert lines(events, "stdout") == ["2", "1"]
    assert lines(events, "stderr") == ["liftoff"]
    events = run(d, "system-info")
    assert len(lines(events)) == 1 and lines(events)[0].startswith("Linux")


# --------------------------------------------------------------------------
# client parameters
# --------------------------------------------------------------------------

ARGV_COMMANDS = {
    "args": simple([helper("argv.py"), "--fixed", "v={v}", "{v}", "{{v}}"],
                   params={"v": {"pattern": "^.{0,200}$"}}),
    "dash": simple([helper("argv.py"), "{v}"],
                   params={"v": {"pattern": "^-?[a-z]{1,10}$", "allow_leading_dash": True}}),
    "two": simple([helper("argv.py"), "{a}", "{b}"],
                  params={"a": {"pattern": "^[a-z]+$"},
                          "b": {"pattern": "^[0-9]+$", "default": "42"}}),
}

INJECTIONS = [
    "; rm -rf /",
    "$(id)",
    "`id`",
    "a && touch PWNED",
    "line one\nline two",
    "$HOME ${PATH} ~",
    "*",
    "a b  c",
    "'\"\\",
    "{v}",
    "| cat /etc/passwd",
    "",
]


@pytest.mark.parametrize("value", INJECTIONS, ids=[repr(v) for v in INJECTIONS])
def test_injection_stays_literal(daemon, tmp_path, value):
    d = start(daemon, tmp_path, ARGV_COMMANDS)
    events = run(d, "args", {"v": value})
    got = lines(events, "stdout")
    assert len(got) == 1, got
    # Exactly the fixed elements and the value, once inside an element and
    # once as a whole one; the escaped braces stay literal.
    assert json.loads(got[0]) == ["--fixed", f"v={value}", value, "{v}"]
    assert end_of(events)["status"] == "succeeded"
    assert not os.path.exists("/PWNED") and not os.path.exists(os.path.join("/", "tmp", "PWNED"))


@pytest.mark.parametrize("value", ["-n", "--help", "-", "-rf"])
def test_leading_dash_refused(daemon, tmp_path, value):
    """The "args" pattern matches these values, but a value may start with
    '-' only where the operator set allow_leading_dash."""
    d = start(daemon, tmp_path, ARGV_COMMANDS)
    doc = assert_json_error(submit(d, "args", {"v": value}, status=422), 422)
    assert doc["message"] == 'parameter "v" must not start with "-"', doc


def test_leading_dash_allowed_by_the_operator(daemon, tmp_path):
    d = start(daemon, tmp_path, ARGV_COMMANDS)
    assert json.loads(lines(run(d, "dash", {"v": "-n"}))[0]) == ["-n"]
    doc = assert_json_error(submit(d, "dash", {"v": "--n"}, status=422), 422)
    assert doc["message"] == 'parameter "v" does not match the pattern ^-?[a-z]{1,10}$', doc


@pytest.mark.parametrize("body,status,message", [
    ({"command": "nope"}, 404, 'unknown command "nope" (allowed: args, dash, two)'),
    ({}, 422, '"command" must be a string naming a command'),
    ({"command": "two"}, 422, 'missing parameter "a" for command "two"'),
    ({"command": "two", "params": {"a": "x", "c": "1"}}, 422,
     'unknown parameter "c" for command "two" (allowed: a, b)'),
    ({"command": "two", "params": {"a": 5}}, 422, 'parameter "a" must be a string'),
    ({"command": "two", "params": {"a": "x", "b": "x"}}, 422,
     'parameter "b" does not match the pattern ^[0-9]+$'),
    ({"command": "two", "params": ["x"]}, 422, '"params" must be an object'),
    ({"command": "two", "params": {"a": "x"}, "argv": ["/bin/sh"]}, 422,
     'unknown field "argv" (allowed: kind, command, params)'),
])
def test_parameter_errors(daemon, tmp_path, body, status, message):
    d = start(daemon, tmp_path, ARGV_COMMANDS)
    r = http("POST", d.url + "/v1/tasks", {"kind": "command", **body})
    doc = assert_json_error(r, status)
    assert doc["message"] == message, doc


def test_default_parameter(daemon, tmp_path):
    d = start(daemon, tmp_path, ARGV_COMMANDS)
    assert json.loads(lines(run(d, "two", {"a": "x"}))[0]) == ["x", "42"]
    assert json.loads(lines(run(d, "two", {"a": "x", "b": "7"}))[0]) == ["x", "7"]


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------


def test_stdout_and_stderr_interleaved(daemon, tmp_path):
    d = start(daemon, tmp_path, {"mix": simple([helper("interleave.py"), "300"])})
    events = run(d, "mix")
    # Each stream complete and in order; how the two interleave depends on
    # when each pipe was read (docs/commands.md).
    assert lines(events, "stdout") == [f"out {i}" for i in range(1, 301)]
    assert lines(events, "stderr") == [f"err {i}" for i in range(1, 301)]
    assert len(events) == 601
    assert end_of(events) == {"status": "succeeded", "reason": None, "exit_code": 0}


def test_invalid_utf8_made_valid(daemon, tmp_path):
    d = start(daemon, tmp_path, {"bytes": simple([helper("bad_utf8.py")])})
    events = run(d, "bytes")
    r = "\ufffd"
    assert lines(events) == [
        "plain ascii",
        "caf\u00e9 \u20ac \U0001F600",
        f"bad {r} byte",
        f"overlong {r}{r} slash",
        f"surrogate {r}{r}{r} half",
        f"too big {r}{r}{r}{r} end",
        f"cut {r}{r}",
        "nul \u0000 inside",
        "carriage\r return",
        f"lone {r} continuation",
        f"no newline {r}",  # the last line has no newline: sent at end of output
    ]
    assert end_of(events)["status"] == "succeeded"


def test_long_lines_cut_and_marked(daemon, tmp_path):
    d = start(daemon, tmp_path, {"long": simple([helper("long_line.py")], max_line_bytes=100)})
    events = run(d, "long")
    out = [e.json() for e in events if e.type == "output"]
    assert out == [
        {"stream": "stdout", "line": "x" * 100, "truncated": True},
        {"stream": "stdout", "line": "short"},
        {"stream": "stdout", "line": "y" * 100},
        {"stream": "stdout", "line": "z" * 100, "truncated": True},
        # Cut at 100 bytes would split the 50th character: it is left out
        # rather than mangled.
        {"stream": "stdout", "line": "a" + "\u00e9" * 49, "truncated": True},
        {"stream": "stdout", "line": "w" * 100, "truncated": True},
    ]
    assert end_of(events)["status"] == "succeeded"


def test_flood_delivered_complete(daemon, tmp_path):
    n = 20000
    d = start(daemon, tmp_path,
              {"flood": simple([helper("flood.py"), str(n)], max_output_bytes="4M")},
              EVENT_LOG_EVENTS="30000", EVENT_LOG_BYTES="64M")
    task = submit(d, "flood").json()
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        events = check_ids(s.read_all(scaled(60)))
    want = [f"line {i} ".ljust(63, ".") for i in range(1, n + 1)]
    assert lines(events, "stdout") == [w for i, w in enumerate(want, 1) if i % 10 != 0]
    assert lines(events, "stderr") == [w for i, w in enumerate(want, 1) if i % 10 == 0]
    assert end_of(events)["status"] == "succeeded"


def test_flood_over_the_output_limit(daemon, tmp_path):
    limit = 65536
    d = start(daemon, tmp_path,
              {"flood": simple([helper("flood.py"), "1000000"], max_output_bytes=limit,
                               kill_grace="2s")},
              EVENT_LOG_EVENTS="5000")
    events = run(d, "flood")
    out = [e.json() for e in events if e.type == "output"]
    assert sum(len(o["line"]) + 1 for o in out) <= limit + 2
    # Whole lines up to the limit, a cut one at most per stream, all in order.
    whole = [o["line"] for o in out if not o.get("truncated")]
    assert len(whole) >= limit // 64 - 2
    for stream in ("stdout", "stderr"):
        numbers = [int(o["line"].split()[1]) for o in out
                   if o["stream"] == stream and not o.get("truncated")]
        assert numbers == sorted(numbers), stream
        # Which pipe filled the limit depends on the reads; stdout is read
        # first when both are ready.
        if numbers:
            assert numbers[0] == (1 if stream == "stdout" else 10)
    assert only(events, "output_limit") == {"max_output_bytes": limit}
    names = [e.type for e in events]
    assert names.index("output_limit") > max(i for i, t in enumerate(names) if t == "output")
    stopped = only(events, "stopped")
    assert stopped["cause"] == "output_limit" and stopped["how"] == "terminated", stopped
    end = end_of(events)
    assert end["status"] == "failed" and end["reason"] == "output limit", end
    assert end["signal"] == signal.SIGTERM and end["exit_code"] == 128 + signal.SIGTERM, end


# --------------------------------------------------------------------------
# exit status
# --------------------------------------------------------------------------


@pytest.mark.parametrize("how,arg,status,reason,exit_code,sig", [
    ("code", "0", "succeeded", None, 0, None),
    ("code", "3", "failed", "nonzero exit", 3, None),
    ("code", "255", "failed", "nonzero exit", 255, None),
    ("signal", "SEGV", "failed", "killed by signal", 128 + 11, 11),
    ("signal", "KILL", "failed", "killed by signal", 128 + 9, 9),
    ("signal", "TERM", "failed", "killed by signal", 128 + 15, 15),
])
def test_exit_codes_and_signals(daemon, tmp_path, how, arg, status, reason, exit_code, sig):
    d = start(daemon, tmp_path, {"exit": simple([helper("exit_with.sh"), "{how}", "{arg}"],
                                                params={"how": {"pattern": "^(code|signal)$"},
                                                        "arg": {"pattern": "^[A-Z0-9]+$"}})})
    task_id, events = run_task(d, "exit", {"how": how, "arg": arg})
    assert lines(events) == [f"about to {how} {arg}"]
    end = end_of(events)
    want = {"status": status, "reason": reason, "exit_code": exit_code}
    if sig is not None:
        want["signal"] = sig
    assert end == want
    assert not any(e.type == "stopped" for e in events)
    task = d.task(task_id)
    assert task["state"] == status and task["exit_code"] == exit_code and task["signal"] == sig


@pytest.mark.parametrize("setup,reason", [
    ("shebang", "exec failed: No such file or directory"),
    ("chmod", "exec failed: Permission denied"),
    ("cwd", "chdir failed: No such file or directory"),
])
def test_start_failures_reported(daemon, tmp_path, setup, reason):
    script = tmp_path / "prog.sh"
    script.write_text("#!/nonexistent/interpreter\n" if setup == "shebang" else "#!/bin/sh\necho hi\n")
    os.chmod(script, 0o755)
    workdir = tmp_path / "work"
    workdir.mkdir()
    d = start(daemon, tmp_path, {"prog": simple([str(script)], cwd=str(workdir))})
    if setup == "chmod":
        os.chmod(script, 0o644)
    elif setup == "cwd":
        workdir.rmdir()
    events = run(d, "prog")
    assert not lines(events)
    assert end_of(events) == {"status": "failed", "reason": reason, "exit_code": 0}
    assert d.wait_log("command failed to start")["reason"] == reason


# --------------------------------------------------------------------------
# stopping
# --------------------------------------------------------------------------


def wait_ready(stream):
    ev = stream.read_until(lambda e: e.type == "output")
    assert ev.json()["line"].startswith(("ready", "got")), ev
    return ev


def test_cancel_terminate_then_kill(daemon, tmp_path):
    d = start(daemon, tmp_path, {"stubborn": simple([helper("ignore_term.py")], kill_grace="1s")})
    task = submit(d, "stubborn").json()
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        ready = wait_ready(s)
        pid = int(ready.json()["line"].split()[1])
        assert pid == started_pid(d, task["id"])
        t0 = time.monotonic()
        assert http("DELETE", f"{d.url}/v1/tasks/{task['id']}").status == 202
        # SIGTERM is ignored: the process is still there half the grace later.
        time.sleep(0.5)
        assert not dead(pid)
        events = check_ids(s.read_all(scaled(10)))
        took = time.monotonic() - t0
    assert took >= 0.9, took
    assert took < scaled(1) + 3, took
    stopped = only(events, "stopped")
    assert stopped["cause"] == "cancel" and stopped["how"] == "killed", stopped
    assert stopped["grace_ms"] == 1000 and stopped["after_ms"] >= 900, stopped
    assert end_of(events) == {"status": "cancelled", "reason": "client", "exit_code": 137,
                              "signal": 9}
    assert dead(pid)


def test_cancel_terminates_cleanly(daemon, tmp_path):
    d = start(daemon, tmp_path, {"polite": simple([helper("term_exit.py")], kill_grace="5s")})
    task = submit(d, "polite").json()
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        wait_ready(s)
        t0 = time.monotonic()
        assert http("DELETE", f"{d.url}/v1/tasks/{task['id']}").status == 202
        events = check_ids(s.read_all(scaled(10)))
        assert time.monotonic() - t0 < scaled(3)
    assert lines(events) == ["ready", "got SIGTERM, cleaning up"]
    stopped = only(events, "stopped")
    assert stopped["cause"] == "cancel" and stopped["how"] == "terminated", stopped
    assert end_of(events) == {"status": "cancelled", "reason": "client", "exit_code": 0}
    assert http("DELETE", f"{d.url}/v1/tasks/{task['id']}").status == 409


def test_time_limit(daemon, tmp_path):
    d = start(daemon, tmp_path, {"slow": simple([helper("sleeper.sh")], timeout="1s")})
    t0 = time.monotonic()
    events = run(d, "slow")
    assert 0.9 <= time.monotonic() - t0 < scaled(1) + 3
    assert lines(events)[0].startswith("ready")
    stopped = only(events, "stopped")
    assert stopped["cause"] == "timeout" and stopped["how"] == "terminated", stopped
    assert end_of(events) == {"status": "failed", "reason": "timeout", "exit_code": 143,
                              "signal": 15}


def test_grandchild_holding_the_pipe(daemon, tmp_path):
    """The child exits at once but leaves a grandchild with its stdout: the
    task still ends at once, and the grandchild does not outlive it."""
    d = start(daemon, tmp_path, {"orphan": simple([helper("grandchild.sh")])})
    t0 = time.monotonic()
    task = submit(d, "orphan").json()
    pgid = started_pid(d, task["id"])
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        events = check_ids(s.read_all(scaled(10)))
    assert time.monotonic() - t0 < scaled(2)
    out = lines(events)
    assert len(out) == 1 and out[0].startswith("grandchild "), out
    grandchild = int(out[0].split()[1])
    assert end_of(events) == {"status": "succeeded", "reason": None, "exit_code": 0}
    d.wait_log("command exited while its process group held the output open: group killed",
               task_id=task["id"])
    wait_for(lambda: dead(grandchild), scaled(2), what=f"grandchild {grandchild} gone")
    wait_for(lambda: not group_alive(pgid), scaled(2), what=f"process group {pgid} empty")


def test_max_concurrent(daemon, tmp_path):
    d = start(daemon, tmp_path, {"one": simple([helper("sleeper.sh")], max_concurrent=1)})
    first = submit(d, "one").json()
    d.wait_task(first["id"], states=("running",))
    started_pid(d, first["id"])
    r = submit(d, "one", status=429)
    doc = assert_json_error(r, 429)
    assert doc["message"] == ('command "one" is already running 1 time, its max_concurrent; '
                              "retry later"), doc
    assert r.headers.get("Retry-After")
    assert http("DELETE", f"{d.url}/v1/tasks/{first['id']}").status == 202
    d.wait_task(first["id"])
    second = submit(d, "one").json()
    d.wait_task(second["id"], states=("running",))
    assert http("DELETE", f"{d.url}/v1/tasks/{second['id']}").status == 202
    assert d.wait_task(second["id"])["state"] == "cancelled"


def test_max_concurrent_checked_again_at_start(daemon, tmp_path):
    """Two submissions accepted while the command was not running (both
    queued behind busy workers) start together: one runs, the other ends at
    once, failed, reason "max_concurrent reached" (docs/commands.md)."""
    d = start(daemon, tmp_path, {"one": simple([helper("sleeper.sh")], max_concurrent=1)},
              WORKERS="2")
    blockers = [d.submit(count=1000, interval_ms=1000)["id"] for _ in range(2)]
    for b in blockers:
        d.wait_task(b, states=("running",))
    ids = [submit(d, "one").json()["id"] for _ in range(2)]
    for b in blockers:
        assert http("DELETE", f"{d.url}/v1/tasks/{b}").status == 202
    ended = wait_for(lambda: [t for t in map(d.task, ids) if t["state"] == "failed"],
                     scaled(10), what="one task refused at start")
    assert len(ended) == 1 and ended[0]["reason"] == "max_concurrent reached", ended
    other = next(i for i in ids if i != ended[0]["id"])
    assert d.task(other)["state"] == "running"
    assert http("DELETE", f"{d.url}/v1/tasks/{other}").status == 202
    assert d.wait_task(other)["state"] == "cancelled"


def test_no_descriptor_leak_in_the_daemon(daemon, tmp_path):
    """Pipes, pidfds and cancel eventfds are closed when each task ends, and
    finished tasks (kept for TASK_RETENTION) hold none."""
    d = start(daemon, tmp_path, {"mix": simple([helper("interleave.py"), "3"])})
    run(d, "mix")

    def count():
        """Descriptors other than sockets (a client connection may take a
        moment to be closed): pipes, pidfds, eventfds, files."""
        n = 0
        for fd in os.listdir(f"/proc/{d.pid}/fd"):
            try:
                n += not os.readlink(f"/proc/{d.pid}/fd/{fd}").startswith("socket:")
            except FileNotFoundError:
                pass
        return n

    before = count()
    for _ in range(20):
        run(d, "mix")
    wait_for(lambda: count() <= before, scaled(2), what=f"no more than {before} descriptors")


# --------------------------------------------------------------------------
# the state a child starts in
# --------------------------------------------------------------------------


def test_child_process_state(daemon, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    d = start(daemon, tmp_path, {
        "info": simple([helper("procinfo.py")], cwd=str(cwd),
                       env={"allow": ["LANG", "HOME", "NOT_SET_ANYWHERE"],
                            "set": {"GREETING": "1", "PATH": "/usr/bin:/bin"}},
                       rlimits={"open_files": 64}),
    }, LANG="C.UTF-8", HOME="/root", SECRET_TOKEN="hunter2")
    task_id, events = run_task(d, "info")
    info = json.loads(lines(events, "stdout")[0])
    assert lines(events, "stderr") == []
    # Only 0, 1 and 2: nothing of the daemon's (sockets, eventfds, logs).
    assert sorted(info["fds"], key=int) == ["0", "1", "2"], info["fds"]
    assert info["fds"]["0"] == "/dev/null"
    assert info["fds"]["1"].startswith("pipe:") and info["fds"]["2"].startswith("pipe:")
    assert info["fds"]["1"] != info["fds"]["2"]
    # Its own process group, in the daemon's session; no signal blocked;
    # dies with the daemon.
    assert info["pgid"] == info["pid"] == started_pid(d, task_id)
    assert info["sid"] == os.getsid(d.pid)
    assert int(info["sigblk"], 16) == 0, info["sigblk"]
    assert info["pdeathsig"] == signal.SIGKILL
    assert info["cwd"] == str(cwd)
    assert info["env"] == {"LANG": "C.UTF-8", "HOME": "/root", "GREETING": "1",
                           "PATH": "/usr/bin:/bin"}
    assert info["nofile"] == [64, 64]


def test_signal_dispositions_reset(daemon, tmp_path):
    """The daemon blocks SIGTERM/SIGINT and ignores SIGPIPE; its children
    start with nothing blocked and nothing ignored (grep does not touch
    either, so it shows what it was given)."""
    d = start(daemon, tmp_path, {"sigs": simple(["/bin/grep", "-E", "^Sig(Blk|Ign)",
                                                 "/proc/self/status"])})
    got = dict(line.split(":\t") for line in lines(run(d, "sigs")))
    assert int(got["SigBlk"], 16) == 0 and int(got["SigIgn"], 16) == 0, got


def test_kill9_of_the_daemon_kills_the_child(daemon, tmp_path):
    d = start(daemon, tmp_path, {"long": simple([helper("sleeper.sh")]),
                                 "stubborn": simple([helper("ignore_term.py")])})
    pids = []
    for name in ("long", "stubborn"):
        task = submit(d, name).json()
        with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
            wait_ready(s)
        pids.append(started_pid(d, task["id"]))
    assert all(not dead(p) for p in pids)
    d.expected_exit = -signal.SIGKILL
    d.signal(signal.SIGKILL)
    assert d.wait_exit(scaled(5)) == -signal.SIGKILL
    wait_for(lambda: all(dead(p) for p in pids), scaled(3), what=f"children {pids} gone")


# --------------------------------------------------------------------------
# shutdown
# --------------------------------------------------------------------------


def test_shutdown_waits_for_a_running_command(daemon, tmp_path):
    d = start(daemon, tmp_path, {"count": simple(
        ["/bin/sh", "-c", 'for i in 1 2 3; do echo "$i"; /bin/sleep 0.3; done', "count"])},
        GRACEFUL_SHUTDOWN_TIMEOUT="20s")
    task = submit(d, "count").json()
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        s.read_until(lambda e: e.type == "output")
        d.signal(signal.SIGTERM)
        events = check_ids(s.read_all(scaled(10)))
    assert lines(events) == ["1", "2", "3"]
    assert end_of(events) == {"status": "succeeded", "reason": None, "exit_code": 0}
    assert d.wait_exit() == 0
    assert d.summary()["forced_cancellations"] == 0


def test_shutdown_deadline_forces_and_counts(daemon, tmp_path):
    d = start(daemon, tmp_path, {"stubborn": simple([helper("ignore_term.py")])},
              GRACEFUL_SHUTDOWN_TIMEOUT="1s", KILL_GRACE="1s")
    task = submit(d, "stubborn").json()
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events") as s:
        pid = int(wait_ready(s).json()["line"].split()[1])
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        d.wait_log("cancelling tasks still running", timeout=scaled(5))
        # Between SIGTERM and SIGKILL of the child: the admin listener still
        # answers, and the forced cancellation is counted.
        assert d.metrics().value("task_forced_cancellations_total") == 1
        events = check_ids(s.read_all(scaled(10)))
    assert time.monotonic() - t0 >= 1.9
    stopped = only(events, "stopped")
    assert stopped["cause"] == "cancel" and stopped["how"] == "killed", stopped
    assert end_of(events) == {"status": "cancelled", "reason": "shutdown", "exit_code": 137,
                              "signal": 9}
    assert d.wait_exit() == 0
    assert d.summary()["forced_cancellations"] == 1
    assert d.summary()["abandoned"] == 0
    assert dead(pid)


def test_commands_route_lists_names_and_patterns_never_argv(daemon, tmp_path):
    commands = {"two": {"argv": ["/bin/echo", "{a}", "{b}"], "description": "Two words.",
                        "params": {"a": {"pattern": "^[a-z]+$", "description": "first"},
                                   "b": {"pattern": "^[0-9]+$", "default": "42"}},
                        "env": {"set": {"SECRET_TOKEN": "do-not-show"}},
                        "timeout": "30s", "max_concurrent": 3}}
    d = start(daemon, tmp_path, commands)
    r = http("GET", d.url + "/v1/commands")
    assert r.status == 200, r
    assert r.json() == {"commands": [{
        "name": "two", "description": "Two words.", "timeout_ms": 30000, "max_concurrent": 3,
        "restartable": False,
        "params": {"a": {"pattern": "^[a-z]+$", "default": None, "description": "first",
                         "allow_leading_dash": False},
                   "b": {"pattern": "^[0-9]+$", "default": "42", "description": None,
                         "allow_leading_dash": False}}}]}, r.json()
    assert b"/bin/echo" not in r.body and b"do-not-show" not in r.body
    # The task says which command ran with which parameters.
    task = submit(d, "two", {"a": "x"}).json()
    assert task["kind"] == "command" and task["command"] == "two", task
    assert task["params"] == {"a": "x"}, task


def test_commands_route_without_a_commands_file(daemon):
    d = daemon()
    r = http("GET", d.url + "/v1/commands")
    assert r.status == 200 and r.json() == {"commands": []}, r
