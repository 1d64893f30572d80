"""SIGHUP reloads, as nginx, HAProxy and systemd's ExecReload= teach users to
expect: COMMANDS_FILE and the key files are read again, checked as a whole
and swapped only when all of it is valid. Running tasks keep the definition
they started with; nothing drains, nothing stops. An invalid file keeps the
previous configuration and says why (log line and metric)."""

import json
import os
import signal
import time

import jwt

from tshelpers import SSEStream, assert_json_error, http, scaled, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
SLEEPER = os.path.join(HERE, "commands", "sleeper.sh")


def write_json(path, commands):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"commands": commands}, f)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # what an editor or a config manager does


def write_key(path, key):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(key + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def echo(word):
    return {"argv": ["/bin/echo", word, "{x}"], "params": {"x": {"pattern": "^[a-z]{1,8}$"}},
            "timeout": "30s", "max_concurrent": 4}


def sleeper(max_concurrent=1):
    return {"argv": [SLEEPER, "{n}"], "params": {"n": {"pattern": "^[0-9]{1,4}$"}},
            "timeout": "60s", "max_concurrent": max_concurrent}


def submit(d, command, params, headers=None):
    return http("POST", d.url + "/v1/tasks", {"kind": "command", "command": command,
                                               "params": params}, headers=headers)


def output_lines(d, task_id, headers=None):
    with SSEStream(f"{d.url}/v1/tasks/{task_id}/events", headers=headers) as s:
        events = s.read_all(scaled(30))
    return [e.json()["line"] for e in events if e.type == "output"], events[-1]


def reloads(d, result):
    return d.metrics().value("config_reloads_total", result=result)


def hup(d, result, count):
    """SIGHUP; wait for the count-th "reload" line with `result`."""
    d.signal(signal.SIGHUP)
    wait_for(lambda: len(d.logs("reload", result=result)) >= count, scaled(10),
             what=f"reload #{count} {result}")
    return d.logs("reload", result=result)[count - 1]


def test_sighup_swaps_commands_and_running_tasks_keep_theirs(daemon, tmp_path):
    path = tmp_path / "commands.json"
    write_json(path, {"say": echo("first"), "nap": sleeper()})
    d = daemon({"COMMANDS_FILE": str(path)})
    assert reloads(d, "ok") == 0 and reloads(d, "failed") == 0

    # A task of the old definition is running when the file changes.
    r = submit(d, "nap", {"n": "30"})
    assert r.status == 202, r
    napping = r.json()["id"]
    d.wait_log("command started", task_id=napping)

    write_json(path, {"say": echo("second"), "other": echo("third")})
    line = hup(d, "ok", 1)
    assert line["commands"] == 2 and line["level"] == "info"
    assert reloads(d, "ok") == 1

    # The process neither drained nor stopped.
    assert d.running() and d.readyz() == 200
    assert d.task(napping)["state"] == "running"
    # New tasks get the new definitions; a removed command is unknown and
    # the answer lists what exists.
    r = submit(d, "say", {"x": "abc"})
    assert r.status == 202, r
    lines, end = output_lines(d, r.json()["id"])
    assert lines == ["second abc"] and end.json()["status"] == "succeeded"
    r = submit(d, "nap", {"n": "1"})
    assert_json_error(r, 404, "unknown_kind")
    assert 'unknown command "nap" (allowed: ' in r.json()["message"], r.json()
    assert "other" in r.json()["message"] and "say" in r.json()["message"], r.json()
    names = sorted(c["name"] for c in http("GET", d.url + "/v1/commands").json()["commands"])
    assert names == ["other", "say"]

    # The running task still has its definition: cancel it, it ends as its
    # own (old) command did.
    assert http("DELETE", f"{d.url}/v1/tasks/{napping}").status == 202
    t = d.wait_task(napping)
    assert t["state"] == "cancelled", t


def test_max_concurrent_holds_across_a_reload(daemon, tmp_path):
    path = tmp_path / "commands.json"
    write_json(path, {"nap": sleeper(max_concurrent=1)})
    d = daemon({"COMMANDS_FILE": str(path)})
    r = submit(d, "nap", {"n": "30"})
    assert r.status == 202, r
    first = r.json()["id"]
    d.wait_log("command started", task_id=first)
    write_json(path, {"nap": sleeper(max_concurrent=1)})
    hup(d, "ok", 1)
    # The slot taken under the old generation still counts.
    assert_json_error(submit(d, "nap", {"n": "1"}), 429, "queue_full")
    assert http("DELETE", f"{d.url}/v1/tasks/{first}").status == 202
    d.wait_task(first)
    r = submit(d, "nap", {"n": "0"})
    assert r.status == 202, r
    assert d.wait_task(r.json()["id"])["state"] == "succeeded"


def test_invalid_commands_file_keeps_the_old_one(daemon, tmp_path):
    path = tmp_path / "commands.json"
    write_json(path, {"say": echo("kept")})
    d = daemon({"COMMANDS_FILE": str(path)})
    d.expect_error("reload")

    # Not JSON, then a command whose program does not exist: each is refused
    # with the reason, and nothing changes.
    path.write_text('{"commands": {"say": ')
    line = hup(d, "failed", 1)
    assert line["level"] == "error"
    assert "invalid JSON" in line["error"] and str(path) in line["error"], line
    write_json(path, {"say": echo("new"), "broken": {"argv": ["/bin/nope"]}})
    line = hup(d, "failed", 2)
    assert '"/bin/nope" does not exist' in line["error"], line
    assert reloads(d, "failed") == 2 and reloads(d, "ok") == 0

    r = submit(d, "say", {"x": "abc"})
    assert r.status == 202, r
    assert output_lines(d, r.json()["id"])[0] == ["kept abc"]
    assert d.running() and d.readyz() == 200


def test_sighup_rotates_key_files(daemon, tmp_path):
    drain_file, api_file = tmp_path / "drain.key", tmp_path / "api.key"
    write_key(drain_file, "Drain-Old")
    write_key(api_file, "Api-Old")
    d = daemon({"DRAIN_AUTH_KEY_FILE": str(drain_file), "API_AUTH_KEY_FILE": str(api_file)})
    old = {"Authorization": "Bearer Api-Old"}
    new = {"Authorization": "Bearer Api-New"}
    assert http("GET", d.url + "/v1/tasks", headers=old).status == 200
    assert d.drain("Drain-Old", method="DELETE").status == 200

    write_key(drain_file, "Drain-New")
    write_key(api_file, "Api-New")
    line = hup(d, "ok", 1)
    assert line["drain_key_file"] is True and line["api_key_file"] is True
    text = d.raw_stderr()
    for secret in ("Drain-Old", "Drain-New", "Api-Old", "Api-New"):
        assert secret not in text

    assert http("GET", d.url + "/v1/tasks", headers=old).status == 401
    assert http("GET", d.url + "/v1/tasks", headers=new).status == 200
    assert d.drain("Drain-Old", method="DELETE").status == 401
    assert d.drain("Drain-New", method="DELETE").status == 200

    # A key file that became invalid: refused as a whole, the keys stay.
    d.expect_error("reload")
    write_key(api_file, "two words")
    write_key(drain_file, "Drain-Third")
    line = hup(d, "failed", 1)
    assert "API_AUTH_KEY_FILE" in line["error"] and "two words" not in line["error"]
    assert http("GET", d.url + "/v1/tasks", headers=new).status == 200
    assert d.drain("Drain-New", method="DELETE").status == 200
    assert d.drain("Drain-Third", method="DELETE").status == 401


def test_sighup_keeps_streams_and_tasks(daemon):
    d = daemon()
    t = d.submit(count=30, interval_ms=100)
    with SSEStream(f"{d.url}/v1/tasks/{t['id']}/events") as s:
        first = s.next_event(scaled(5))
        assert first.type == "tick"
        hup(d, "ok", 1)
        hup(d, "ok", 2)
        events = s.read_all(scaled(30))
    ticks = [e for e in events if e.type == "tick"]
    assert [int(e.id) for e in ticks] == list(range(1, 31))
    assert events[-1].type == "end" and events[-1].json()["status"] == "succeeded"
    assert d.running() and d.readyz() == 200
    assert not d.logs("draining")


def test_sighup_rotates_the_jwt_key_and_keeps_stream_tokens(daemon, tmp_path):
    """A new JWT_SECRET_FILE takes over at SIGHUP: tokens of the old key are
    refused, those of the new accepted. The stream tokens handed out before
    stay good: the random stream key is kept across reloads. A key file that
    became too short fails the reload and keeps the policy in force."""
    old, new = b"o" * 32, b"n" * 40
    path = tmp_path / "jwt.key"
    path.write_bytes(old)
    d = daemon({"JWT_SECRET_FILE": str(path), "KINDS": "ticker"})
    d.expect_error("reload")

    def token(key):
        return jwt.encode({"sub": "ops", "exp": int(time.time()) + 300,
                           "taskstream": {"kinds": ["ticker"]}}, key, algorithm="HS256")

    def me(tok):
        return http("GET", d.url + "/v1/me", headers={"Authorization": f"Bearer {tok}"})

    r = http("POST", d.url + "/v1/tasks", {"kind": "ticker", "count": 2, "interval_ms": 1},
             headers={"Authorization": f"Bearer {token(old)}"})
    assert r.status == 202, r
    task = r.json()

    write_key(path, new.decode())
    hup(d, "ok", 1)
    assert_json_error(me(token(old)), 401, "invalid_token")
    assert me(token(new)).json()["sub"] == "ops"
    with SSEStream(f"{d.url}/v1/tasks/{task['id']}/events?access_token={task['stream_token']}") as s:
        assert s.read_all(scaled(15))[-1].type == "end"

    write_key(path, "short")
    line = hup(d, "failed", 1)
    assert "JWT_SECRET_FILE" in line["error"], line
    assert me(token(new)).status == 200
