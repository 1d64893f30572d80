"""Configuration from the environment and flags: invalid values stop start-up
with exit status 2 and a message naming the setting; secrets are never
echoed."""

import os
import socket

import pytest

from tshelpers import http, scaled, wait_for

# (environment, the variable the message must name)
INVALID_ENV = [
    ({"GRACEFUL_SHUTDOWN_TIMEOUT": "abc"}, "GRACEFUL_SHUTDOWN_TIMEOUT"),
    ({"GRACEFUL_SHUTDOWN_TIMEOUT": "10 parsecs"}, "GRACEFUL_SHUTDOWN_TIMEOUT"),
    ({"SHUTDOWN_DELAY": "-1s"}, "SHUTDOWN_DELAY"),
    ({"SHUTDOWN_DELAY": "1y"}, "SHUTDOWN_DELAY"),
    ({"KILL_GRACE": "10 s"}, "KILL_GRACE"),
    ({"GRACEFUL_SHUTDOWN_TIMEOUT": "100000h"}, "GRACEFUL_SHUTDOWN_TIMEOUT"),
    ({"WORKERS": "0"}, "WORKERS"),
    ({"WORKERS": "100000"}, "WORKERS"),
    ({"WORKERS": ""}, "WORKERS"),
    ({"WORKERS": "4x"}, "WORKERS"),
    ({"WORKERS": "-1"}, "WORKERS"),
    ({"MAX_QUEUED_TASKS": "99999999999999999999999"}, "MAX_QUEUED_TASKS"),
    ({"EVENT_LOG_EVENTS": "0"}, "EVENT_LOG_EVENTS"),
    ({"EVENT_LOG_BYTES": "1T"}, "EVENT_LOG_BYTES"),
    ({"SSE_HEARTBEAT_INTERVAL": "10ms"}, "SSE_HEARTBEAT_INTERVAL"),
    ({"SSE_RETRY_MS": "1.5"}, "SSE_RETRY_MS"),
    ({"MAX_CONNECTIONS": "0"}, "MAX_CONNECTIONS"),
    ({"MAX_BODY_BYTES": "100G"}, "MAX_BODY_BYTES"),
    ({"HEADER_TIMEOUT": "0s"}, "HEADER_TIMEOUT"),
    ({"IDLE_TIMEOUT": "forever"}, "IDLE_TIMEOUT"),
    ({"TASK_RETENTION": "5 minutes"}, "TASK_RETENTION"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
    ({"LISTEN": "nonsense"}, "LISTEN"),
    ({"LISTEN": "127.0.0.1:70000"}, "LISTEN"),
    ({"ADMIN_LISTEN": "127.0.0.1"}, "ADMIN_LISTEN"),
    ({"DRAIN_AUTH_KEY_FILE": "/nonexistent/drain.key"}, "DRAIN_AUTH_KEY_FILE"),
    ({"DRAIN_AUTH_KEY_FILE": "/"}, "DRAIN_AUTH_KEY_FILE"),  # a directory: unreadable
    ({"API_AUTH_KEY_FILE": "/nonexistent/api.key"}, "API_AUTH_KEY_FILE"),
    ({"TERMINATION_GRACE_PERIOD": "10s"}, "TERMINATION_GRACE_PERIOD"),  # budget does not fit
]


def check_refused(res, name):
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert name in res.stderr, res.stderr
    assert "listening" not in res.stderr


@pytest.mark.parametrize("env,name", INVALID_ENV,
                         ids=[f"{n}={list(e.values())[0]!r}" for e, n in INVALID_ENV])
def test_invalid_environment_exits_2(run_once, env, name):
    res = run_once(env)
    check_refused(res, name)
    value = list(env.values())[0]
    if value.strip():
        assert value in res.stderr, f"the message should quote the value: {res.stderr}"


def test_empty_key_file(run_once, tmp_file):
    check_refused(run_once({"DRAIN_AUTH_KEY_FILE": tmp_file("empty.key", "")}),
                  "DRAIN_AUTH_KEY_FILE")
    # A lone newline is empty too once it is stripped.
    check_refused(run_once({"DRAIN_AUTH_KEY_FILE": tmp_file("nl.key", "\n")}),
                  "DRAIN_AUTH_KEY_FILE")


def test_unreadable_key_file(run_once, tmp_file):
    path = tmp_file("secret.key", "s3cret-unreadable", mode=0o000)
    if os.access(path, os.R_OK):  # root reads a mode-000 file: use a directory instead
        os.remove(path)
        os.mkdir(path)
    check_refused(run_once({"DRAIN_AUTH_KEY_FILE": path}), "DRAIN_AUTH_KEY_FILE")


def test_key_and_key_file_together(run_once, tmp_file):
    res = run_once({"DRAIN_AUTH_KEY": "abcdef", "DRAIN_AUTH_KEY_FILE": tmp_file("k", "abcdef\n")})
    check_refused(res, "DRAIN_AUTH_KEY")


@pytest.mark.parametrize("var", ["DRAIN_AUTH_KEY", "API_AUTH_KEY"])
def test_invalid_secret_is_not_echoed(run_once, var):
    secret = "Sup3r Secr3t-V4lue"  # a space makes it invalid
    res = run_once({var: secret})
    check_refused(res, var)
    assert "Sup3r" not in res.stderr and "V4lue" not in res.stderr, res.stderr


def test_secret_file_content_is_not_echoed(run_once, tmp_file):
    res = run_once({"DRAIN_AUTH_KEY_FILE": tmp_file("bad.key", "Sup3r Secr3t-F1le\n")})
    check_refused(res, "DRAIN_AUTH_KEY_FILE")
    assert "Sup3r" not in res.stderr and "F1le" not in res.stderr, res.stderr


@pytest.mark.parametrize("args,name", [
    (["--no-such-flag"], "--no-such-flag"),
    (["--workers"], "--workers"),
    (["--workers", "zero"], "WORKERS"),
    (["--graceful-shutdown-timeout=abc"], "GRACEFUL_SHUTDOWN_TIMEOUT"),
    (["positional"], "unexpected argument"),
])
def test_invalid_flags_exit_2(run_once, args, name):
    check_refused(run_once(args=args), name)


def test_flag_wins_over_environment(daemon):
    d = daemon({"WORKERS": "7"}, args=["--workers", "3", "--sse-retry-ms=4321"])
    assert d.wait_log("started")["workers"] == 3


def test_help_and_version(run_once):
    res = run_once(args=["--help"])
    assert res.returncode == 0
    for name in ("LISTEN", "ADMIN_LISTEN", "GRACEFUL_SHUTDOWN_TIMEOUT", "SHUTDOWN_DELAY",
                 "DRAIN_AUTH_KEY", "DRAIN_AUTH_KEY_FILE", "WORKERS", "MAX_QUEUED_TASKS",
                 "EVENT_LOG_EVENTS", "SSE_HEARTBEAT_INTERVAL", "SSE_RETRY_MS", "MAX_BODY_BYTES",
                 "LOG_FORMAT", "LOG_LEVEL"):
        assert name in res.stdout, name
    res = run_once(args=["--version"])
    assert res.returncode == 0
    assert res.stdout.startswith("taskstreamd ")


def test_port_in_use_fails_startup(run_once):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = run_once({"LISTEN": f"127.0.0.1:{port}"})
    # A port in use is the operator's to fix, like any setting: exit 2 (the
    # systemd unit does not restart on it), naming the setting and address.
    assert res.returncode == 2, res.stderr
    assert f"LISTEN 127.0.0.1:{port}: address already in use" in res.stderr, res.stderr
    assert "start-up failed" in res.stderr


def test_text_log_format(daemon):
    d = daemon({"LOG_FORMAT": "text"}, wait=False)
    # No JSON "listening" line to wait for: look for the text one.
    wait_for(lambda: any("listening" in ln and "public" in ln for ln in d.stderr_lines()),
             scaled(10), what="text listening line")
    assert not any(ln.startswith("{") for ln in d.stderr_lines())
    assert d.stop() == 0
    assert any("shutdown complete" in ln for ln in d.stderr_lines())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_log_level_warn_hides_info(daemon):
    port = free_port()
    d = daemon({"LOG_LEVEL": "warn", "DRAIN_AUTH_KEY": "k-k-k-k-k",
                "ADMIN_LISTEN": f"127.0.0.1:{port}"}, wait=False)
    url = f"http://127.0.0.1:{port}"

    def refused():
        try:
            return http("POST", url + "/drain", headers={"Authorization": "Bearer no"}).status
        except OSError:
            return None

    assert wait_for(refused, scaled(10), interval=0.05, what="admin listener") == 401
    d.wait_log("drain request refused: missing or wrong key")
    assert d.stop() == 0
    assert d.logs(), "the warn line should be there"
    assert all(e["level"] in ("warn", "error") for e in d.logs()), d.logs()
