"""Smoke run of the benchmark harness (bench/run.py --smoke).

Every scenario of `make bench` runs at a tiny size (tens of streams, well
under a second of load each), against taskstreamd and, when nginx with the
nchan module is installed, against nchan too. The assertions are about the
harness only: streams open, events arrive, no gaps, every stream of the
shutdown scenario gets its `end`. Never timings: the machine is shared and
noisy, and sanitizer builds are slow.
"""

import json
import os
import subprocess
import sys

import pytest

from tshelpers import SLOW

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _build_dir():
    if os.environ.get("TS_BUILD_DIR"):
        return os.environ["TS_BUILD_DIR"]
    if os.environ.get("TASKSTREAMD"):
        return os.path.dirname(os.environ["TASKSTREAMD"])
    return os.path.join(REPO, "build")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    build = _build_dir()
    taskstreamd = os.environ.get("TASKSTREAMD") or os.path.join(build, "taskstreamd")
    sseload = os.path.join(build, "sseload")
    for path in (taskstreamd, sseload):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is not built")
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    cmd = [sys.executable, os.path.join(REPO, "bench", "run.py"), "--smoke", "--no-pin",
           "--taskstreamd", taskstreamd, "--sseload", sseload, "--json", str(out),
           "--slow", str(SLOW)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300 * SLOW)
    assert proc.returncode == 0, (f"bench/run.py failed:\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-5000:]}")
    with open(out) as f:
        doc = json.load(f)
    doc["stderr"] = proc.stderr
    doc["stdout"] = proc.stdout
    return doc


def rows(doc, scenario, server=None):
    return [r for r in doc["results"] if r["scenario"] == scenario
            and (server is None or r["server"] == server)]


def test_harness_saw_no_problem(smoke):
    problems = [(r["scenario"], r.get("server"), r["problems"]) for r in smoke["results"]
                if r.get("problems")]
    assert not problems, f"{problems}\n{smoke['stderr'][-4000:]}"


def test_table_printed(smoke):
    assert "| scenario | taskstreamd | nginx+nchan |" in smoke["stdout"]


@pytest.mark.parametrize("server", ["taskstreamd", "nginx+nchan"])
def test_held_streams(smoke, server):
    if server not in smoke["servers"]:
        pytest.skip("nginx with the nchan module is not installed (scripts/deps.sh bench)")
    held = rows(smoke, "held", server)
    assert held
    for r in held:
        assert r["opened"] == r["streams"] and r["failed"] == 0, r
        assert r["rss_kib"] and r["rss_base_kib"], r


@pytest.mark.parametrize("server", ["taskstreamd", "nginx+nchan"])
def test_fanout_delivers_without_gaps(smoke, server):
    if server not in smoke["servers"]:
        pytest.skip("nginx with the nchan module is not installed (scripts/deps.sh bench)")
    steps = rows(smoke, "fanout", server)
    assert steps
    for r in steps:
        assert r["window_events"] > 0, r
        assert r["gaps"] == 0 and r["cut"] == 0, r
        assert r["caught_up"] == r["subscribers"], r
        if server == "nginx+nchan":
            assert r["publisher"]["ok"] > 0, r


def test_many_tasks(smoke):
    (r,) = rows(smoke, "many")
    assert r["events"] > 0 and r["gaps"] == 0, r


def test_submissions(smoke):
    (r,) = rows(smoke, "submit")
    assert r["accepted"] > 0 and r["status_5xx"] == 0, r


def test_shutdown(smoke):
    (flip,) = rows(smoke, "shutdown_readyz")
    assert flip["reps"] and all(f["flip_ms"] is not None for f in flip["reps"]), flip
    (idle,) = rows(smoke, "shutdown_idle")
    assert idle["reps_ms"], idle
    (streams,) = rows(smoke, "shutdown_streams")
    assert streams["ended"] == streams["streams"] and streams["cut"] == 0, streams
    assert streams["exit_status"] == 0, streams


def test_no_server_exit_problem(smoke):
    assert not rows(smoke, "server_exit"), rows(smoke, "server_exit")


def test_cluster(smoke):
    if rows(smoke, "cluster_skipped"):
        pytest.skip("redis-server is not installed (scripts/deps.sh test)")
    lat = rows(smoke, "cluster_latency", "taskstreamd")
    seen = {(r["mode"], r["readers_on"]) for r in lat}
    assert seen >= {("memory", "same"), ("cluster", "other"), ("cluster", "owner")}, seen
    for r in lat:
        assert r["window_events"] > 0 and r["gaps"] == 0 and r["cut"] == 0, r
        assert r["caught_up"] == r["streams"], r
        if r["mode"] == "cluster":
            # the commands of the window were counted, scripts included
            assert r["produced"] > 0 and r["evalsha_per_event"] > 0, r
            assert r["publish_per_event"] > 0, r
    fan = rows(smoke, "cluster_fanout")
    assert {r["mode"] for r in fan} == {"memory", "cluster"}, fan
    for r in fan:
        assert r["window_events"] > 0, r
        assert r["gaps"] == 0 and r["cut"] == 0, r
    sub = rows(smoke, "cluster_submit")
    assert {r["mode"] for r in sub} == {"memory", "cluster"}, sub
    for r in sub:
        assert r["accepted"] > 0 and r["status_5xx"] == 0, r
    if "nginx+nchan" in smoke["servers"]:
        nchan = rows(smoke, "cluster_latency", "nginx+nchan")
        assert {r["mode"] for r in nchan} == {"memory", "cluster"}, nchan
        for r in nchan:
            assert r["window_events"] > 0 and r["gaps"] == 0, r
