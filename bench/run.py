#!/usr/bin/env python3
"""Benchmarks of taskstreamd side by side with nginx + nchan.

Runs the scenarios of issue 5 on this machine, loopback only, each bounded
in time and count, and prints one table with both servers and the ratio;
with --write it also puts the table, the machine and the command into
docs/performance.md (between the markers, so notes around them survive).

    bench/run.py                      the full run (about ten minutes)
    bench/run.py --smoke --json F     every scenario at a tiny size, in seconds;
                                      tests/e2e/test_bench_smoke.py runs this

How it measures (shared/BENCHMARKING.md):
  * the server is pinned to CPU 0, every load process to CPU 1 (taskset);
    nginx runs one worker (worker_cpu_affinity 01), taskstreamd its default
    HTTP_THREADS=2, both on CPU 0;
    a second fan-out run lets both use every CPU (nginx one worker per CPU);
  * one nchan channel stands for one task: the publisher POSTs
    {"n":i,"p":conn,"sent_us":t} to /pub/<ch> over 4 connections, the
    subscribers read /sub/<ch> (EventSource, first message "newest");
    taskstreamd's source is the ticker task, which stamps sent_us itself.
    Subscribers connect first, then the source starts (the ticker waits in
    the queue behind a gate task until then);
  * per-stream memory = server RSS delta / streams, once all are up (the
    nginx worker's RSS for nchan);
  * latency = receive time - sent_us (CLOCK_REALTIME, same host), over a
    window that starts once every stream is up;
  * deliveries/s = events received by all streams per second; a fan-out
    step "holds" when p99 < 100 ms, no stream lost an event or was cut and
    every stream caught up after the window; the rate is stepped up until
    p99 passes 1 s or the server runs out of CPU; "max" is the best step that
    held, "capacity" the best with p99 under 1 s;
  * CPU = the server process's utime+stime delta from /proc/<pid>/stat over
    the measured part, also per delivery;
  * the fan-out floor (--floor, on by default): bench/floor.c plays the
    server for each taskstreamd fan-out step, with the same frames on the
    same sockets and nothing else (one write per stream and event), measured
    the same way; "CPU per delivery vs floor" is a server's CPU per delivery
    over the floor's at the same subscribers and rate;
  * kernel memory per stream (held, idle100k): /proc/slabinfo (root) before
    and with the streams, the sum of active_objs x objsize over the
    TCP-related caches (SLAB_TCP) and over all caches, per stream; both ends
    of each loopback connection are in it;
  * connection storm (--storm N:R): N streams on one running source (a
    ticker, an event every 100 ms, each stream starting at its last event;
    for nchan a channel published at 10/s), opened at once (burst) and paced
    (--storm-rate connects/s), R runs each, for each HTTP_THREADS of
    --storm-threads (a fresh server each); sseload records each stream's
    time from its connect() to its first event; a run is stalled when a
    connection was cut unanswered (setup_eof), a stream got no answer or no
    event, or the slowest took over 5 s (STORM_STALL_MS);
  * idle streams (--idle100k N): as many idle streams as one taskstreamd
    holds, up to N, from several sseload processes each bound to its own
    source address (127.0.0.2, ...), the server's RLIMIT_NOFILE raised with
    prlimit when this process may (CAP_SYS_RESOURCE) and MAX_CONNECTIONS to
    match; the table names the limit that bounded the count;
  * cluster mode (Redis): a redis-server started here (a free port, its own
    temp dir, nothing saved, pinned with the servers) and two replicas on a
    fresh REDIS_KEY_PREFIX; replica b starts first and its one worker holds
    an idle task, so replica a claims every task. Beside memory mode in the
    same run: the latency of T tickers x 100 events/s with the readers on b
    (every event goes worker -> Redis script -> pub/sub -> b -> socket) and
    on the owner, with 1 and 100 readers per task (the tickers submitted
    1/(T x 100) s apart, each stream from the event its task is at; every
    server up at once and the cases run in rounds, each row the median of
    the rounds; a cancelled task must have ended before the next case, as a
    DELETE reaches its owner at its next renewal); Redis' commands per
    event (INFO commandstats, which counts the commands scripts run, between
    two snapshots at the ends of the window; events produced: the tasks'
    `top` in Redis at the same moments); fan-out with N readers on each
    replica, stepped as above; submissions, then (cluster) until the queue
    is empty again. nginx + nchan beside the latency case, memory and
    nchan_use_redis on two nginx (published on one, read on the other). No
    redis-server: the scenario is skipped.

Standard library only. Every child is started by this script and ended by
its own pid.
"""

import argparse
import datetime
import http.client
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
P99_LIMIT_US = 100_000
# Fan-out steps go on past the 100 ms limit up to this p99, so that the
# table also shows what a server can carry at all ("capacity").
P99_CAPACITY_US = 1_000_000
BEGIN_MARK = "<!-- bench:begin (generated by bench/run.py; edit outside the markers) -->"
END_MARK = "<!-- bench:end -->"

FULL = {
    "held": [1000, 5000, "max"],
    "fanout": {100: [100, 500, 1000], 1000: [10, 50, 100, 200, 500, 1000],
               10000: [1, 2, 5, 10, 20, 50, 100]},
    "fanout_free": {1000: [200, 500, 1000], 10000: [2, 5, 10, 20, 50]},
    "many": [100, 1000],
    "many_readers": 3,
    "many_rate": 10,
    "window": 3.0,
    "warmup": 0.5,
    "grace": 3.0,
    "submit_s": 3.0,
    "submit_conns": 4,
    "shutdown_reps": 5,
    "shutdown_streams": 10000,
    "shutdown_tasks": 10,
    "storm": (10000, 20),
    "storm_rate": 5000,
    "storm_threads": [1, 2],
    "idle100k": 100000,
    "cluster_tasks": 10,
    "cluster_interval_ms": 10,
    "cluster_readers": [1, 100],
    "cluster_window": 3.0,
    "cluster_reps": 3,
    "cluster_fanout": (1000, [10, 50, 100, 200, 500, 1000]),
    "cluster_submit_cap": 30000,
}

SMOKE = {
    "held": [20],
    "fanout": {10: [20, 50]},
    "fanout_free": {10: [20]},
    "many": [4],
    "many_readers": 2,
    "many_rate": 20,
    "window": 0.5,
    "warmup": 0.2,
    "grace": 2.0,
    "submit_s": 0.5,
    "submit_conns": 2,
    "shutdown_reps": 1,
    "shutdown_streams": 40,
    "shutdown_tasks": 2,
    "storm": (200, 2),
    "storm_rate": 5000,
    "storm_threads": [1, 2],
    "idle100k": 300,
    "cluster_tasks": 2,
    "cluster_interval_ms": 20,
    "cluster_readers": [1, 3],
    "cluster_window": 0.5,
    "cluster_reps": 1,
    "cluster_fanout": (10, [20, 50]),
    "cluster_submit_cap": 500,
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# process and machine facts
# --------------------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def proc_stat(pid):
    """(utime+stime seconds, rss KiB, threads) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK
    threads = int(rest[17])
    rss = int(rest[21]) * PAGE_KIB
    return cpu, rss, threads


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    return proc_stat(pid)[0]


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[1]) == pid:
            out.append(int(d))
    return out


def cmd_output(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_facts(ts_binary):
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    nginx = cmd_output(["nginx", "-v"]).replace("nginx version: ", "")

    def deb(pkg):
        return cmd_output(["dpkg-query", "-W", "-f=${Version}", pkg]) or "not installed"

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "nginx": nginx or "not installed",
        "nchan": deb("libnginx-mod-nchan"),
        "taskstreamd": cmd_output([ts_binary, "--version"]),
        "commit": cmd_output(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]),
        "dirty": bool(cmd_output(["git", "-C", REPO, "status", "--porcelain",
                                  "--untracked-files=no"])),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"),
    }


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def read_int(path, default=None):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def port_range():
    """(low, high) of the ephemeral ports (net.ipv4.ip_local_port_range)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split()[:2])
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def mem_available_kib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def can_prlimit(nofile):
    """Whether a child can be given RLIMIT_NOFILE `nofile` (past the hard
    limit that needs CAP_SYS_RESOURCE)."""
    if shutil.which("prlimit") is None:
        return False
    try:
        r = subprocess.run(["prlimit", f"--nofile={nofile}:{nofile}", "--", "true"],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


# The caches a TCP stream costs the kernel (both ends of a loopback
# connection: the client's socket and the server's). Absent ones are merged
# into others on this kernel (then only the "all caches" sum sees them).
SLAB_TCP = ("TCP", "tcp_bind_bucket", "tcp_bind2_bucket", "request_sock_TCP", "tw_sock_TCP",
            "sock_inode_cache", "dentry", "filp", "eventpoll_epi", "eventpoll_pwq", "ep_head",
            "skbuff_head_cache", "skbuff_fclone_cache", "skbuff_small_head")


def slab_snapshot():
    """{cache: (active_objs, objsize)} from /proc/slabinfo (root only), or
    None."""
    try:
        with open("/proc/slabinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    caches = {}
    for line in lines[2:]:
        parts = line.split()
        try:
            caches[parts[0]] = (int(parts[1]), int(parts[3]))
        except (IndexError, ValueError):
            continue
    return caches


def slab_delta(before, after, streams):
    """What the streams cost in slab: sum of active_objs x objsize over the
    TCP-related caches (and over all caches, which also sees whatever else
    ran meanwhile), per stream, and the caches that moved most."""
    if not before or not after or not streams:
        return None
    moved = []
    for name, (active, size) in after.items():
        delta = active - before.get(name, (0, size))[0]
        if delta:
            moved.append((name, delta * size, delta, size))
    tcp = sum(d for name, d, _, _ in moved if name in SLAB_TCP)
    total = sum(d for _, d, _, _ in moved)
    moved.sort(key=lambda m: -abs(m[1]))
    return {"tcp_bytes": tcp, "all_bytes": total, "per_stream_b": tcp / streams,
            "all_per_stream_b": total / streams,
            "caches": [n for n in SLAB_TCP if n in after],
            "top": [{"cache": n, "bytes": d, "objs": o, "objsize": sz}
                    for n, d, o, sz in moved[:8]]}


def slab_top_text(slab, streams, k=6):
    if not slab:
        return "-"
    return ", ".join(f"{t['cache']} {t['bytes'] / streams:+,.0f}" for t in slab["top"][:k])


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------


class Server:
    name = "?"
    pid = None

    def measured_pid(self):
        return self.pid

    def cpu(self):
        return cpu_s(self.measured_pid())

    def rss(self):
        return rss_kib(self.measured_pid())

    def threads(self):
        return proc_stat(self.measured_pid())[2]


class Taskstreamd(Server):
    name = "taskstreamd"

    def __init__(self, cfg, env=None, nofile=None):
        self.cfg = cfg
        self.port = free_port()
        self.admin_port = free_port()
        e = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "ASAN_OPTIONS",
                                         "UBSAN_OPTIONS", "TSAN_OPTIONS", "LSAN_OPTIONS")
             if k in os.environ}
        e.update({
            "LISTEN": f"127.0.0.1:{self.port}",
            "ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "warn",
            "KINDS": "ticker",
            "HTTP_THREADS": str(cfg.http_threads),
            "MAX_CONNECTIONS": str(cfg.max_streams + 500),
            "GRACEFUL_SHUTDOWN_TIMEOUT": "5s",
        })
        e.update(cfg.ts_env)
        e.update({k: str(v) for k, v in (env or {}).items()})
        self.env = e
        self.stderr_path = os.path.join(cfg.workdir, f"taskstreamd.{self.port}.stderr")
        self.stderr = open(self.stderr_path, "w")
        # nofile: RLIMIT_NOFILE for the server past this process's hard
        # limit (prlimit execs the server: the pid stays the server's)
        limit = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile else []
        self.proc = subprocess.Popen(cfg.pin_server + limit + [cfg.taskstreamd], env=e,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, start_new_session=True)
        self.pid = self.proc.pid
        wait_port(self.port, cfg.scale(10), self.proc)
        wait_port(self.admin_port, cfg.scale(10), self.proc)
        self.conn = None

    # the API over one keep-alive connection
    def request(self, method, path, body=None, port=None):
        for attempt in (0, 1):
            if self.conn is None or port is not None:
                conn = http.client.HTTPConnection("127.0.0.1", port or self.port,
                                                  timeout=self.cfg.scale(30))
            else:
                conn = self.conn
            try:
                hdrs = {}
                data = None
                if body is not None:
                    data = json.dumps(body).encode()
                    hdrs["Content-Type"] = "application/json"
                conn.request(method, path, body=data, headers=hdrs)
                r = conn.getresponse()
                raw = r.read()
                if port is None:
                    self.conn = conn
                else:
                    conn.close()
                return r.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw)
            except (OSError, http.client.HTTPException):
                conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def submit(self, count, interval_ms, payload_bytes=0):
        body = {"kind": "ticker", "count": int(count), "interval_ms": int(interval_ms)}
        if payload_bytes:
            body["payload_bytes"] = payload_bytes
        status, doc = self.request("POST", "/v1/tasks", body)
        if status != 202:
            raise RuntimeError(f"POST /v1/tasks: {status} {doc}")
        return doc["id"]

    def event_count(self, task_id):
        status, doc = self.request("GET", f"/v1/tasks/{task_id}")
        if status != 200:
            return 0
        for k in ("event_count", "events"):
            if isinstance(doc.get(k), int):
                return doc[k]
        return 0

    def cancel(self, task_id):
        try:
            self.request("DELETE", f"/v1/tasks/{task_id}")
        except (OSError, http.client.HTTPException):
            pass

    def stop(self, timeout=30):
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.stderr.close()
        return self.proc.returncode

    def errors(self):
        out = []
        with open(self.stderr_path, errors="replace") as f:
            for line in f:
                if '"level":"error"' in line or "Sanitizer" in line or "runtime error" in line:
                    out.append(line.strip())
        return out


class Nchan(Server):
    name = "nginx+nchan"

    def __init__(self, cfg, http_extra=""):
        self.cfg = cfg
        self.port = free_port()
        self.prefix = tempfile.mkdtemp(prefix="nchan-", dir=cfg.workdir)
        os.makedirs(os.path.join(self.prefix, "tmp"))
        with open(os.path.join(REPO, "bench", "nchan.conf.in")) as f:
            text = f.read()
        subs = {
            "@PREFIX@": self.prefix,
            "@PORT@": str(self.port),
            "@NOFILE@": str(cfg.nofile),
            "@CONNECTIONS@": str(2 * cfg.nofile),
            "@USER_LINE@": "user root;" if os.geteuid() == 0 else "",
            "@AFFINITY_LINE@": "worker_cpu_affinity 01;" if cfg.pin else "",
            # pinned: one worker on CPU 0; free: one per CPU, as taskstreamd
            # may use both CPUs then too
            "@WORKERS@": "1" if cfg.pin else str(os.cpu_count() or 1),
            "@HTTP_EXTRA@": http_extra,
        }
        for k, v in subs.items():
            text = text.replace(k, v)
        self.conf = os.path.join(self.prefix, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(text)
        self.stderr = open(os.path.join(self.prefix, "stderr"), "w")
        self.proc = subprocess.Popen(cfg.pin_server + ["nginx", "-p", self.prefix, "-c", self.conf,
                                                       "-g", "daemon off;"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, start_new_session=True)
        self.pid = self.proc.pid
        wait_port(self.port, cfg.scale(10), self.proc)
        deadline = time.monotonic() + 5
        self.workers = []
        while not self.workers and time.monotonic() < deadline:
            self.workers = children(self.pid)
            if not self.workers:
                time.sleep(0.02)
        if not self.workers:
            raise RuntimeError("nginx started no worker")
        self.worker = self.workers[0]

    def measured_pid(self):
        return self.worker

    # with several workers (not pinned) CPU and memory are summed over them
    def cpu(self):
        return sum(cpu_s(p) for p in self.workers)

    def rss(self):
        return sum(rss_kib(p) for p in self.workers)

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.stderr.close()
        return self.proc.returncode


def nchan_available():
    return shutil.which("nginx") is not None and os.path.exists(
        "/usr/lib/nginx/modules/ngx_nchan_module.so")


class Floor(Server):
    """bench/floor.c, the fan-out floor: a fresh process per step (the rate is
    its argument). It answers the subscribers as taskstreamd does, starts the
    ticks at SIGUSR1 and, so started, stays until SIGTERM."""
    name = "floor"

    def __init__(self, cfg):
        self.cfg = cfg
        self.proc = None
        self.port = None
        self.stderr = open(os.path.join(cfg.workdir, "floor.stderr"), "a")

    def start(self, rate, seconds):
        self.end()
        self.port = free_port()
        # one thread on the pinned CPU; without pinning one per CPU, as nginx
        threads = 1 if self.cfg.pin else (os.cpu_count() or 1)
        self.proc = subprocess.Popen(
            self.cfg.pin_server + [self.cfg.floor, str(self.port), "0", str(rate), str(seconds),
                                   "--threads", str(threads)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            start_new_session=True)
        self.pid = self.proc.pid
        wait_port(self.port, self.cfg.scale(10), self.proc)

    def go(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)

    def end(self):
        """End the step's process: its JSON line (events, deliveries, its own
        CPU), or None."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
        self.proc = None
        for line in (out or "").splitlines():
            if line.startswith("{"):
                return json.loads(line)
        return None

    def stop(self, timeout=10):
        self.end()
        self.stderr.close()
        return 0


# --------------------------------------------------------------------------
# the load client
# --------------------------------------------------------------------------


class Load:
    """One or more sseload processes; `on_ready` runs once all printed their
    "ready" line; result() merges their "done" lines."""

    def __init__(self, cfg, mode, args, procs=1, per_proc=None, on_ready=None):
        self.cfg = cfg
        self.on_ready = on_ready
        self.procs = []
        self.ready = []
        self.done = []
        self.stderr = []
        self._lock = threading.Condition()
        self.ready_fired = False
        self.ready_at = None
        self.threads = []
        for i in range(procs):
            a = list(args) + (per_proc(i) if per_proc else [])
            p = subprocess.Popen(cfg.pin_load + [cfg.sseload, mode] + a, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
            self.procs.append(p)
            t = threading.Thread(target=self._read, args=(p,), daemon=True)
            t.start()
            self.threads.append(t)

    def _read(self, p):
        for line in p.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            doc = json.loads(line)
            fire = False
            with self._lock:
                if doc.get("phase") == "ready":
                    self.ready.append(doc)
                    if len(self.ready) == len(self.procs) and not self.ready_fired:
                        self.ready_fired = True
                        self.ready_at = time.monotonic()
                        fire = True
                elif doc.get("phase") == "done":
                    self.done.append(doc)
                self._lock.notify_all()
            if fire and self.on_ready is not None:
                self.on_ready(self)
        err = p.stderr.read()
        if err.strip():
            with self._lock:
                self.stderr.append(err.strip())

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self.ready_fired:
                left = deadline - time.monotonic()
                if left <= 0 or all(p.poll() is not None for p in self.procs):
                    return False
                self._lock.wait(min(left, 0.1))
        return True

    def signal(self, sig=signal.SIGTERM):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig)

    def result(self, timeout):
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for t in self.threads:
            t.join(5)
        for err in self.stderr:
            if any(m in err for m in ("Sanitizer", "runtime error")):
                raise RuntimeError(f"sseload: sanitizer report:\n{err[-3000:]}")
        if len(self.done) != len(self.procs):
            raise RuntimeError(f"sseload: {len(self.done)} of {len(self.procs)} processes "
                               f"reported; stderr: {self.stderr}")
        return merge(self.done)


def merge(docs):
    """Sum the counters of several "done" lines and merge their histograms
    (lat_us, and sub's ttfe_us and ttfe_run_us)."""
    if len(docs) == 1:
        return docs[0]
    out = {}
    hists = {}
    for d in docs:
        for k, v in d.items():
            if isinstance(v, dict) and "hist" in v:
                h = hists.setdefault(k, [{}, 0])
                for ub, n in v["hist"]:
                    h[0][ub] = h[0].get(ub, 0) + n
                h[1] = max(h[1], v.get("max", 0))
                continue
            if isinstance(v, bool):
                out[k] = out.get(k, False) or v
            elif isinstance(v, (int, float)):
                if k in ("establish_s", "duration_s", "window_s"):
                    out[k] = max(out.get(k, 0), v)
                else:
                    out[k] = out.get(k, 0) + v
            else:
                out[k] = v
    hists.setdefault("lat_us", [{}, 0])
    for k, (hist, mx) in hists.items():
        out[k] = hist_summary(hist, mx)
    return out


def hist_summary(hist, mx):
    total = sum(hist.values())
    res = {"n": total, "max": mx, "hist": sorted([ub, n] for ub, n in hist.items())}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)):
        want = max(1, int(q * total))
        seen = 0
        val = 0
        for ub, n in sorted(hist.items()):
            seen += n
            if seen >= want:
                val = min(ub, mx)
                break
        res[name] = val if total else 0
    return res


def split(n, parts):
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# --------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------


def check_stream_result(res, expect_opened):
    """What is wrong with a sub result (harness level: the figures are not
    judged here)."""
    bad = []
    if res.get("opened") != expect_opened:
        bad.append(f"opened {res.get('opened')} of {expect_opened} (connect errors "
                   f"{res.get('connect_errors')}, HTTP errors {res.get('http_errors')}, "
                   f"4xx {res.get('status_4xx')}, 5xx {res.get('status_5xx')}, "
                   f"closed in set-up {res.get('setup_eof')}, reset in set-up "
                   f"{res.get('setup_reset')}, "
                   f"set-up {res.get('establish_s')} s)")
    for k in ("gaps", "misordered", "cut", "server_gaps"):
        if res.get(k):
            bad.append(f"{k}={res[k]}")
    return bad


def scenario_held(cfg, servers, sizes, out):
    """N idle streams: RSS per stream, the kernel's slab per stream (both
    ends, /proc/slabinfo before and with the streams) and time to establish
    them."""
    for n in sizes:
        if n == "max":
            n = cfg.max_streams
        for kind in servers:
            srv = make_server(cfg, kind)
            try:
                if kind == "taskstreamd":
                    # one tick, then an hour of quiet: the streams are idle
                    tid = srv.submit(2, 3_600_000)
                    path = f"/v1/tasks/{tid}/events"
                    seq = "id"
                else:
                    path = "/sub/held"
                    seq = "data"
                time.sleep(0.3)
                base = srv.rss()
                slab0 = slab_snapshot()
                facts = {}

                def ready(load, srv=srv, facts=facts):
                    time.sleep(cfg.settle)
                    facts["rss"] = srv.rss()
                    facts["slab"] = slab_snapshot()
                    facts["threads"] = srv.threads()
                    load.signal(signal.SIGUSR1)
                    if kind == "taskstreamd":
                        srv.cancel(tid)

                procs = cfg.procs_for(n)
                load = Load(cfg, "sub", ["--port", str(srv.port), "--path", path, "--seq", seq,
                                         "--hold", "--conc", str(cfg.conc),
                                         "--max-time", str(cfg.scale(120))],
                            procs=procs,
                            per_proc=lambda i, parts=split(n, procs): ["-n", str(parts[i])],
                            on_ready=ready)
                res = load.result(cfg.scale(150))
                slab = slab_delta(slab0, facts.get("slab"), res["opened"])
                row = {
                    "scenario": "held", "server": kind, "streams": n, "opened": res["opened"],
                    "failed": res["failed"], "establish_s": res["establish_s"],
                    "rss_base_kib": base, "rss_kib": facts.get("rss"),
                    "rss_per_stream_b": ((facts["rss"] - base) * 1024 / max(1, res["opened"])
                                         if "rss" in facts else None),
                    "slab_per_stream_b": slab["per_stream_b"] if slab else None,
                    "slab": slab,
                    "server_threads": facts.get("threads"),
                    "problems": check_stream_result(res, n),
                    "client": {k: v for k, v in res.items() if not isinstance(v, dict)},
                }
                out.append(row)
                log(f"held {kind:12} n={n:6}: opened {res['opened']} in {res['establish_s']:.3f}s, "
                    f"{fmt_num(row['rss_per_stream_b'])} B/stream, kernel slab "
                    f"{fmt_num(row['slab_per_stream_b'])} B/stream (both ends) "
                    f"{row['problems'] or ''}")
            finally:
                stop_server(srv, out)


def fanout_step(cfg, srv, kind, subs, rate, tag):
    """One step: `subs` streams on one task/channel at `rate` events/s."""
    facts = {}
    pub = {}
    window, warmup, grace = cfg.window, cfg.warmup, cfg.grace
    gate = None
    floor_res = None
    # as long as the ticker's count lasts, or the floor publishes
    source_s = window + warmup + grace + cfg.scale(30)
    if kind == "taskstreamd":
        # The subscribers connect while the ticker waits in the queue behind
        # a gate task on the only worker (WORKERS=1); the gate is cancelled
        # once all are up. So, as with nchan, whose publisher starts then,
        # set-up is not measured under load and nothing is replayed.
        interval = max(0, round(1000 / rate))
        count = min(1_000_000, int(rate * source_s))
        gate = srv.submit(2, 3_600_000)
        tid = srv.submit(count, interval)
        path = f"/v1/tasks/{tid}/events"
        seq = "id"
    elif kind == "floor":
        # the ticker's frames and count (rate * source_s); the ticks start
        # at `ready`, as the ticker does when its gate is cancelled
        tid = None
        srv.start(rate, source_s)
        path = "/sub/floor"
        seq = "id"
    else:
        tid = None
        path = f"/sub/{tag}"
        seq = "data"

    def ready(load):
        facts["cpu0"] = srv.cpu()
        facts["t0"] = time.monotonic()
        if cfg.perf_dir:
            out = os.path.join(cfg.perf_dir, f"perf-{kind.replace('+', '-')}-{subs}-{rate}.data")
            facts["perf"] = subprocess.Popen(
                cfg.pin_load + ["perf", "record", "-q", "-F", "999", "--call-graph", "dwarf,32768",
                                "-p", str(srv.measured_pid()), "-o", out, "--", "sleep",
                                str(warmup + window)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            facts["stat_file"] = out.replace(".data", ".stat")
            facts["perfstat"] = subprocess.Popen(
                cfg.pin_load + ["perf", "stat", "-x", ",", "-o", facts["stat_file"], "-e",
                                ",".join("syscalls:sys_enter_" + n for n in SYSCALLS),
                                "-p", str(srv.measured_pid()), "--", "sleep", str(warmup + window)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if gate is not None:
            srv.cancel(gate)
        if kind == "floor":
            srv.go()
        if kind == "nginx+nchan":
            pub["load"] = Load(cfg, "pub", ["--port", str(srv.port), "--path", f"/pub/{tag}",
                                            "-c", str(cfg.pub_conns),
                                            "--rate", str(rate), "--duration",
                                            str(warmup + window + grace + 1),
                                            "--max-time", str(warmup + window + grace + 10)])

    procs = cfg.procs_for(subs)
    load = Load(cfg, "sub", ["--port", str(srv.port), "--path", path, "--seq", seq,
                             "--window", str(window), "--warmup", str(warmup),
                             "--grace", str(grace), "--conc", str(cfg.conc),
                             "--max-time", str(cfg.scale(120))],
                procs=procs, per_proc=lambda i, parts=split(subs, procs): ["-n", str(parts[i])],
                on_ready=ready)
    res = load.result(cfg.scale(180))
    cpu1 = srv.cpu()
    t1 = time.monotonic()
    syscalls = None
    if "perf" in facts:
        facts["perf"].wait(60)
        facts["perfstat"].wait(60)
        syscalls = read_perf_stat(facts["stat_file"])
    pub_res = None
    if "load" in pub:
        pub["load"].signal()
        pub_res = pub["load"].result(30)
    if tid is not None:
        srv.cancel(tid)
    if kind == "floor":
        floor_res = srv.end()
    lat = res["lat_us"]
    problems = check_stream_result(res, subs)
    if kind == "floor" and floor_res is None:
        problems.append("bench/floor printed no result")
    if res.get("caught_up", 0) < res.get("opened", 0):
        problems.append(f"only {res.get('caught_up')} of {res.get('opened')} caught up")
    if lat["n"] == 0:
        problems.append("no event in the window")
    cpu = cpu1 - facts["cpu0"] if "cpu0" in facts else None
    wall = t1 - facts["t0"] if "t0" in facts else None
    after = res.get("events_after_ready") or 0
    row = {
        "scenario": "fanout", "server": kind, "subscribers": subs, "rate_per_stream": rate,
        "offered": rate * subs, "delivery_rate": res["delivery_rate"],
        # what the source really sent per stream and second (the ticker
        # sleeps interval_ms between ticks, so it falls short at 1-2 ms)
        "source_rate": res["window_events"] / max(1, res["opened"]) / window,
        "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000, "max_ms": lat["max"] / 1000,
        "window_events": res["window_events"], "establish_s": res["establish_s"],
        "cpu_s": cpu, "cpu_pct": (100 * cpu / wall) if cpu is not None and wall else None,
        "cpu_us_per_delivery": (1e6 * cpu / after) if cpu is not None and after else None,
        "client_cpu_pct": 100 * res["cpu_s"] / max(1e-9, res["duration_s"]),
        "gaps": res["gaps"], "cut": res["cut"], "caught_up": res.get("caught_up"),
        "publisher": ({"sent": pub_res["sent"], "ok": pub_res["status_2xx"],
                       "rate": pub_res["sent"] / max(1e-9, pub_res["duration_s"]),
                       "p99_ms": pub_res["lat_us"]["p99"] / 1000}
                      if pub_res else None),
        "problems": problems,
        "client": {k: v for k, v in res.items() if not isinstance(v, dict)},
        "pinned": bool(cfg.pin),
    }
    if floor_res is not None:
        row["floor"] = floor_res  # its own count and getrusage figures
    if syscalls:
        # deliveries during the perf run (warm-up and window), at the measured rate
        n = max(1.0, res["delivery_rate"] * (warmup + window))
        row["syscalls_per_delivery"] = {k: v / n for k, v in syscalls.items()}
    row["held"] = not problems and lat["p99"] < P99_LIMIT_US
    row["carried"] = not problems and lat["p99"] < P99_CAPACITY_US
    return row


SYSCALLS = ("sendto", "writev", "write", "recvfrom", "epoll_wait", "epoll_ctl", "futex")


def read_perf_stat(path):
    counts = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) >= 3 and parts[2].startswith("syscalls:sys_enter_"):
                    try:
                        counts[parts[2][len("syscalls:sys_enter_"):]] = float(parts[0])
                    except ValueError:
                        pass
    except OSError:
        return None
    return counts


def scenario_fanout(cfg, servers, plan, out):
    for subs, rates in plan.items():
        for kind in servers:
            srv = make_server(cfg, kind, env={"WORKERS": 1})
            try:
                for rate in rates:
                    # the floor only next to a taskstreamd step (the same S and rate)
                    if kind == "floor" and not ts_step(out, subs, rate, cfg.pin):
                        break
                    row = fanout_step(cfg, srv, kind, subs, rate, f"f{subs}r{rate}")
                    if row["client"].get("setup_eof"):
                        # connections that got no answer until the server's
                        # header deadline cut them: a stall, reported as it
                        # is (the step is not run again)
                        row["held"] = row["carried"] = False
                        row["problems"].append(f"set-up stalled: {row['client']['setup_eof']} "
                                               "connections cut unanswered")
                    out.append(row)
                    log(f"fanout {kind:12} S={subs:5} rate={rate:5}/s: "
                        f"{row['delivery_rate']:10.0f} deliveries/s p50 {row['p50_ms']:.1f} ms "
                        f"p99 {row['p99_ms']:.1f} ms cpu {fmt_num(row['cpu_pct'])}% "
                        f"client {row['client_cpu_pct']:.0f}% "
                        f"{'held' if row['held'] else 'NOT held'} {row['problems'] or ''}")
                    if kind == "floor":
                        t = ts_step(out, subs, rate, cfg.pin)
                        tc = t["cpu_us_per_delivery"] if t else None
                        fc = row["cpu_us_per_delivery"]
                        own = (row.get("floor") or {}).get("cpu_us_per_delivery")
                        log(f"fanout {'':12} S={subs:5} rate={rate:5}/s: CPU per delivery: "
                            f"floor {fmt_num(fc)} us (its getrusage: {fmt_num(own)} us), "
                            f"taskstreamd {fmt_num(tc)} us, vs floor {ratio(tc, fc)}")
                    # past the failing step, or once the server has no CPU
                    # left and no longer keeps up with the source, a faster
                    # step shows nothing new (the ticker alone falls short of
                    # its nominal rate, so the shortfall alone says nothing)
                    cpus = 1 if cfg.pin else (os.cpu_count() or 1)
                    saturated = (row["delivery_rate"] < 0.8 * row["offered"]
                                 and (row["cpu_pct"] or 0) >= 90 * cpus)
                    if (not row["carried"] or saturated) and not cfg.all_steps:
                        break
            finally:
                stop_server(srv, out)


def scenario_many(cfg, sizes, out):
    """T tickers at once with a few readers each (taskstreamd only: nchan has
    no tasks)."""
    readers, rate = cfg.plan["many_readers"], cfg.plan["many_rate"]
    for t in sizes:
        srv = make_server(cfg, "taskstreamd",
                          env={"WORKERS": t + 4, "MAX_QUEUED_TASKS": max(1000, t)})
        try:
            count = int(rate * (cfg.window + cfg.warmup + cfg.grace + cfg.scale(30)))
            t0 = time.monotonic()
            ids = [srv.submit(count, round(1000 / rate)) for _ in range(t)]
            submit_s = time.monotonic() - t0
            paths = os.path.join(cfg.workdir, f"many{t}.paths")
            with open(paths, "w") as f:
                for tid in ids:
                    f.write(f"/v1/tasks/{tid}/events\n")
            facts = {}

            def ready(load, srv=srv, facts=facts):
                facts["cpu0"] = srv.cpu()
                facts["t0"] = time.monotonic()
                facts["threads"] = srv.threads()

            n = t * readers
            procs = cfg.procs_for(n)
            load = Load(cfg, "sub", ["--port", str(srv.port), "--paths-file", paths, "--seq", "id",
                                     "--window", str(cfg.window), "--warmup", str(cfg.warmup),
                                     "--grace", str(cfg.grace), "--conc", str(cfg.conc),
                                     "--max-time", str(cfg.scale(120))],
                        procs=procs,
                        per_proc=lambda i, parts=split(n, procs): ["-n", str(parts[i])],
                        on_ready=ready)
            res = load.result(cfg.scale(180))
            cpu = srv.cpu() - facts["cpu0"] if "cpu0" in facts else None
            wall = time.monotonic() - facts["t0"] if "t0" in facts else None
            for tid in ids:
                srv.cancel(tid)
            lat = res["lat_us"]
            problems = check_stream_result(res, n)
            if lat["n"] == 0:
                problems.append("no event in the window")
            row = {
                "scenario": "many", "server": "taskstreamd", "tasks": t, "readers": readers,
                "rate_per_task": rate, "streams": n, "submit_s": submit_s,
                "delivery_rate": res["delivery_rate"], "p50_ms": lat["p50"] / 1000,
                "p99_ms": lat["p99"] / 1000, "max_ms": lat["max"] / 1000,
                "cpu_pct": (100 * cpu / wall) if cpu is not None and wall else None,
                "server_threads": facts.get("threads"), "gaps": res["gaps"],
                "events": res["events"], "problems": problems,
                "client": {k: v for k, v in res.items() if not isinstance(v, dict)},
            }
            out.append(row)
            log(f"many T={t}: {row['delivery_rate']:.0f} deliveries/s p99 {row['p99_ms']:.1f} ms "
                f"cpu {fmt_num(row['cpu_pct'])}% threads {row['server_threads']} "
                f"{problems or ''}")
        finally:
            stop_server(srv, out)


def scenario_submit(cfg, out):
    """POST /v1/tasks as fast as a few keep-alive connections go."""
    srv = make_server(cfg, "taskstreamd")
    try:
        c0 = srv.cpu()
        load = Load(cfg, "pub", ["--port", str(srv.port), "--path", "/v1/tasks", "-c",
                                 str(cfg.plan["submit_conns"]), "--rate", "0", "--duration",
                                 str(cfg.plan["submit_s"]), "--body",
                                 '{"kind":"ticker","count":1,"interval_ms":0}',
                                 "--max-time", str(cfg.scale(60))])
        res = load.result(cfg.scale(90))
        cpu = srv.cpu() - c0
        lat = res["lat_us"]
        row = {
            "scenario": "submit", "server": "taskstreamd", "connections": cfg.plan["submit_conns"],
            "accepted_per_s": res["ok_rate"], "answered_per_s": res["rate"],
            "accepted": res["status_2xx"], "status_4xx": res["status_4xx"],
            "status_5xx": res["status_5xx"], "errors": res["errors"],
            "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000,
            "cpu_us_per_request": 1e6 * cpu / max(1, res["answered"]),
            "problems": [] if res["status_2xx"] > 0 else ["no task accepted"],
        }
        out.append(row)
        log(f"submit: {row['accepted_per_s']:.0f} accepted/s ({row['status_4xx']} 4xx) "
            f"p99 {row['p99_ms']:.2f} ms")
    finally:
        stop_server(srv, out)


def scenario_shutdown(cfg, out):
    reps = cfg.plan["shutdown_reps"]
    # 1. SIGTERM -> /readyz 503, polled in a tight keep-alive loop from CPU 1.
    flips = []
    problems = []
    for _ in range(reps):
        srv = make_server(cfg, "taskstreamd", env={"SHUTDOWN_DELAY": "1s"})
        try:
            load = Load(cfg, "poll", ["--port", str(srv.admin_port), "--path", "/readyz",
                                      "--max-time", str(cfg.scale(30))])
            if not load.wait_ready(cfg.scale(10)):
                problems.append("the /readyz poller never saw 200")
                load.signal()
                load.result(10)
                continue
            time.sleep(0.05)
            t_kill = time.time_ns() // 1000
            srv.proc.send_signal(signal.SIGTERM)
            res = load.result(cfg.scale(30))
            if res["first_bad_status"] != 503:
                problems.append(f"/readyz answered {res['first_bad_status']} "
                                f"(refused={res['refused']}) instead of 503")
            flips.append({"flip_ms": (res["first_bad_us"] - t_kill) / 1000,
                          "last_200_after_kill_ms": (res["last_ok_us"] - t_kill) / 1000,
                          "polls": res["polls"]})
        finally:
            stop_server(srv, out)
    out.append({"scenario": "shutdown_readyz", "server": "taskstreamd", "reps": flips,
                "median_ms": median([f["flip_ms"] for f in flips]),
                "max_ms": max([f["flip_ms"] for f in flips], default=None),
                "problems": problems})
    flip_text = ", ".join("%.2f" % f["flip_ms"] for f in flips)
    log(f"shutdown: /readyz 503 after SIGTERM: {flip_text} ms")

    # 2. idle SIGTERM -> exit
    exits = []
    problems = []
    for _ in range(reps):
        srv = make_server(cfg, "taskstreamd")
        time.sleep(0.1)
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(cfg.scale(30))
        exits.append((time.monotonic() - t0) * 1000)
        if srv.proc.returncode != 0:
            problems.append(f"exit status {srv.proc.returncode}")
        stop_server(srv, out)
    out.append({"scenario": "shutdown_idle", "server": "taskstreamd", "reps_ms": exits,
                "median_ms": median(exits), "max_ms": max(exits, default=None),
                "problems": problems})
    exit_text = ", ".join("%.1f" % e for e in exits)
    log(f"shutdown: idle exit {exit_text} ms")

    # 3. exit with N open streams: the signal cancels the tasks at once
    #    (GRACEFUL_SHUTDOWN_TIMEOUT=0), every stream must get its `end`.
    n, tasks = cfg.plan["shutdown_streams"], cfg.plan["shutdown_tasks"]
    srv = make_server(cfg, "taskstreamd", env={"GRACEFUL_SHUTDOWN_TIMEOUT": "0s",
                                                "WORKERS": tasks + 4})
    facts = {}
    try:
        ids = [srv.submit(100_000, 100) for _ in range(tasks)]
        paths = os.path.join(cfg.workdir, "shutdown.paths")
        with open(paths, "w") as f:
            for tid in ids:
                f.write(f"/v1/tasks/{tid}/events\n")

        def ready(load):
            time.sleep(0.5)
            if srv.conn is not None:
                srv.conn.close()
                srv.conn = None
            # /readyz as well, now with the streams open
            poll = Load(cfg, "poll", ["--port", str(srv.admin_port), "--path", "/readyz",
                                      "--max-time", str(cfg.scale(60))])
            poll.wait_ready(cfg.scale(10))
            facts["t_kill_us"] = time.time_ns() // 1000
            facts["t0"] = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            srv.proc.wait(cfg.scale(60))
            facts["exit_ms"] = (time.monotonic() - facts["t0"]) * 1000
            facts["poll"] = poll.result(cfg.scale(30))

        procs = cfg.procs_for(n)
        load = Load(cfg, "sub", ["--port", str(srv.port), "--paths-file", paths, "--seq", "id",
                                 "--conc", str(cfg.conc), "--max-time", str(cfg.scale(120))],
                    procs=procs, per_proc=lambda i, parts=split(n, procs): ["-n", str(parts[i])],
                    on_ready=ready)
        res = load.result(cfg.scale(180))
        problems = check_stream_result(res, n)
        if res["ended"] != n:
            problems.append(f"{res['ended']} of {n} streams got end")
        poll = facts.get("poll") or {}
        flip = None
        if poll.get("first_bad_status") == 503:
            flip = (poll["first_bad_us"] - facts["t_kill_us"]) / 1000
        else:
            problems.append(f"/readyz poller saw {poll.get('first_bad_status')} "
                            f"(refused={poll.get('refused')}) instead of 503")
        out.append({"scenario": "shutdown_streams", "server": "taskstreamd", "streams": n,
                    "readyz_flip_ms": flip,
                    "exit_ms": facts.get("exit_ms"), "ended": res["ended"], "cut": res["cut"],
                    "closed_without_end": res["closed"], "exit_status": srv.proc.returncode,
                    "problems": problems})
        log(f"shutdown: exit with {n} streams: {fmt_num(facts.get('exit_ms'))} ms, "
            f"/readyz 503 after {fmt_num(flip)} ms, "
            f"ended {res['ended']}, cut {res['cut']} {problems or ''}")
    finally:
        stop_server(srv, out)


# A storm run is stalled when a connection was cut unanswered (setup_eof),
# some stream got no answer or no first event, or the slowest stream's first
# event took longer than this.
STORM_STALL_MS = 5000
# Each storm run ends by itself once every stream has had its first event;
# this bounds a run that stalls (past the server's HEADER_TIMEOUT, 10 s, so
# connections it cuts unanswered show as setup_eof).
STORM_MAX_S = 15
# A series stops after this many stalled runs (each may cost STORM_MAX_S).
STORM_STOP_AFTER = 5


def quantile(xs, q):
    """Nearest rank."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return xs[max(0, min(len(xs) - 1, math.ceil(q * len(xs)) - 1))]


def wait_fds(pid, base, timeout):
    """Until the server has closed the last run's connections (its
    descriptor count is back near `base`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = fd_count(pid)
        if n is None or base is None or n <= base + 8:
            return n
        time.sleep(0.05)
    return fd_count(pid)


def storm_run(res, n):
    """One storm run's figures from the merged sub result."""
    ttfe, whole = res.get("ttfe_us") or {}, res.get("ttfe_run_us") or {}
    unanswered = max(0, n - res["opened"] - res["failed"])
    run = {
        "opened": res["opened"], "failed": res["failed"], "setup_eof": res["setup_eof"],
        "setup_reset": res["setup_reset"], "cut": res["cut"], "unanswered": unanswered,
        "no_first": res.get("no_first", 0), "connect_errors": res["connect_errors"],
        "http_errors": res["http_errors"], "establish_s": res["establish_s"],
        "ttfe_p50_ms": ttfe.get("p50", 0) / 1000 if ttfe.get("n") else None,
        "ttfe_p99_ms": ttfe.get("p99", 0) / 1000 if ttfe.get("n") else None,
        "ttfe_max_ms": ttfe.get("max", 0) / 1000 if ttfe.get("n") else None,
        # from the start of the connects until every stream had its first event
        "all_first_ms": whole.get("max", 0) / 1000 if whole.get("n") else None,
        "duration_s": res["duration_s"],
    }
    run["stalled"] = bool(run["setup_eof"] or unanswered or run["no_first"]
                          or run["ttfe_max_ms"] is None or run["ttfe_max_ms"] > STORM_STALL_MS)
    return run


def scenario_storm(cfg, servers, out):
    """N streams on one running source, opened at once (burst: every connect
    as fast as sseload goes, --conc N) and paced (--rate connects/s); R runs
    each, a fresh set of connections per run, for each HTTP_THREADS (a fresh
    server each) and beside it nginx+nchan: per stream the time from its
    connect to its first event, and from the start of the connects."""
    n, runs = cfg.plan["storm"]
    rate = cfg.plan["storm_rate"]
    configs = [("taskstreamd", t) for t in cfg.plan["storm_threads"]]
    if "nginx+nchan" in servers:
        configs.append(("nginx+nchan", None))
    nofile = cfg.nofile - 200
    procs = max(1, -(-n // nofile))
    parts = split(n, procs)
    for kind, threads in configs:
        env = None
        if kind == "taskstreamd":
            env = {"HTTP_THREADS": threads, "MAX_CONNECTIONS": max(cfg.max_streams, n) + 500}
        srv = make_server(cfg, kind, env=env)
        pub = None
        tid = None
        try:
            if kind == "taskstreamd":
                # one ticker, an event every 100 ms, for as long as the runs take
                tid = srv.submit(1_000_000, 100)
                deadline = time.monotonic() + cfg.scale(10)
                while srv.event_count(tid) < 2 and time.monotonic() < deadline:
                    time.sleep(0.05)
                seq = "id"
                label = threads
            else:
                # the publisher at 10/s on one connection; "first message
                # newest" hands each new stream the last one at once
                span = 2 * runs * (STORM_MAX_S + 5) + 60
                pub = Load(cfg, "pub", ["--port", str(srv.port), "--path", "/pub/storm", "-c", "1",
                                        "--rate", "10", "--duration", str(span),
                                        "--max-time", str(span + 10)])
                time.sleep(0.5)
                seq = "data"
                label = len(srv.workers)
            base_fds = fd_count(srv.measured_pid())
            for mode in ("burst", "paced"):
                per_run, problems = [], []
                for i in range(runs):
                    if kind == "taskstreamd":
                        # from the last event on: one replayed at once, then live
                        last = srv.event_count(tid)
                        path = f"/v1/tasks/{tid}/events" + (f"?last_event_id={last - 1}"
                                                            if last > 1 else "")
                    else:
                        path = "/sub/storm"
                    args = ["--port", str(srv.port), "--path", path, "--seq", seq,
                            "--until-first", "--max-time", str(cfg.scale(STORM_MAX_S))]
                    if mode == "paced":
                        args += ["--rate", str(rate / procs)]

                    def per_proc(j, parts=parts):
                        a = ["-n", str(parts[j]), "--conc", str(min(parts[j], 100000))]
                        return a + (["--bind", f"127.0.0.{2 + j}"] if procs > 1 else [])

                    load = Load(cfg, "sub", args, procs=procs, per_proc=per_proc)
                    res = load.result(cfg.scale(STORM_MAX_S + 30))
                    run = storm_run(res, n)
                    per_run.append(run)
                    problems += [f"run {i + 1}: {p}" for p in check_stream_result(res, n)]
                    if run["no_first"]:
                        problems.append(f"run {i + 1}: {run['no_first']} open streams got no event")
                    if run["stalled"]:
                        log(f"storm {kind:12} threads={label} {mode} run {i + 1}: STALLED: "
                            f"max to first event {fmt_num(run['ttfe_max_ms'])} ms, setup_eof "
                            f"{run['setup_eof']}, unanswered {run['unanswered']}, "
                            f"failed {run['failed']}")
                    # the next run on a quiet server: this run's sockets closed
                    wait_fds(srv.measured_pid(), base_fds, cfg.scale(10))
                    time.sleep(0.05)
                    if sum(r["stalled"] for r in per_run) >= STORM_STOP_AFTER and i + 1 < runs:
                        problems.append(f"stopped after {i + 1} of {runs} runs: "
                                        f"{STORM_STOP_AFTER} stalled")
                        break
                maxes = [r["ttfe_max_ms"] for r in per_run]
                row = {
                    "scenario": "storm", "server": kind, "threads": label, "mode": mode,
                    "streams": n, "rate": rate if mode == "paced" else None,
                    "runs": len(per_run), "runs_planned": runs,
                    "stalled_runs": sum(r["stalled"] for r in per_run),
                    "max_ttfe_p50_ms": quantile(maxes, 0.5),
                    "max_ttfe_p99_ms": quantile(maxes, 0.99),
                    "max_ttfe_max_ms": max((m for m in maxes if m is not None), default=None),
                    "p99_ttfe_worst_ms": max((r["ttfe_p99_ms"] for r in per_run
                                              if r["ttfe_p99_ms"] is not None), default=None),
                    "all_first_worst_ms": max((r["all_first_ms"] for r in per_run
                                               if r["all_first_ms"] is not None), default=None),
                    "failed": sum(r["failed"] for r in per_run),
                    "cut": sum(r["cut"] for r in per_run),
                    "setup_eof": sum(r["setup_eof"] for r in per_run),
                    "unanswered": sum(r["unanswered"] for r in per_run),
                    "client_procs": procs, "per_run": per_run, "problems": problems,
                    "pinned": bool(cfg.pin),
                }
                out.append(row)
                log(f"storm {kind:12} threads={label} {mode:5} n={n}: {row['stalled_runs']} of "
                    f"{row['runs']} runs stalled; max to first event per run p50 "
                    f"{fmt_num(row['max_ttfe_p50_ms'])} / max "
                    f"{fmt_num(row['max_ttfe_max_ms'])} ms; "
                    f"failed {row['failed']} cut {row['cut']} setup_eof {row['setup_eof']} "
                    f"{problems[:3] or ''}")
        finally:
            if pub is not None:
                pub.signal()
                try:
                    pub.result(30)
                except RuntimeError as e:
                    log(f"storm: nchan publisher: {e}")
            if tid is not None:
                srv.cancel(tid)
            stop_server(srv, out)


# Memory per held stream, both ends, for the memory bound of idle100k (the
# server's ~11 KB, two TCP sockets with their file, inode, dentry and epoll
# item, the client's state), generously.
IDLE_EST_BYTES = 32 * 1024


def scenario_idle100k(cfg, want, out):
    """As many idle streams as one taskstreamd holds, up to `want`, from
    several sseload processes, each bound to its own source address
    (127.0.0.2, 127.0.0.3, ...) so the ephemeral ports of one address are no
    bound. The server gets RLIMIT_NOFILE as far as it can be raised (prlimit
    past this process's hard limit needs CAP_SYS_RESOURCE) and MAX_CONNECTIONS
    to match; the limit that bounds the count is reported."""
    reserve = 500
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nr_open = read_int("/proc/sys/fs/nr_open", hard)
    need = want + reserve
    server_nofile, prlimit_to = hard, None
    if need <= hard:
        nofile_note = f"hard limit {hard:,}, enough"
    else:
        n = min(need, nr_open)
        if can_prlimit(n):
            server_nofile, prlimit_to = n, n
            nofile_note = f"raised from {hard:,} to {n:,} with prlimit (fs.nr_open {nr_open:,})"
        else:
            nofile_note = (f"hard limit {hard:,}: prlimit cannot raise it (needs "
                           f"CAP_SYS_RESOURCE); fs.nr_open {nr_open:,}")
    lo, hi = port_range()
    ports = hi - lo + 1
    # each sseload raises its soft limit to the same hard one
    per_proc = max(1, min(hard - 200, ports - 500))
    mem = mem_available_kib()
    limits = {"server fd limit": server_nofile - reserve}
    if mem:
        limits["memory"] = int(mem * 1024 * 0.8 / IDLE_EST_BYTES)
    target = max(1, min([want] + list(limits.values())))
    bound = min(limits, key=limits.get) if min(limits.values()) < want else None
    procs = min(253, max(2 if target >= 2 else 1, -(-target // per_proc)))
    parts = split(target, procs)
    addrs = [f"127.0.0.{2 + i}" for i in range(procs)]
    log(f"idle100k: asked {want:,}; the server's descriptor limit: {nofile_note}; holding "
        f"{target:,} from {procs} sseload processes on {addrs[0]}..{addrs[-1]} "
        f"({ports:,} ephemeral ports per source address)")
    max_conns = target + 100
    srv = Taskstreamd(cfg, env={"MAX_CONNECTIONS": max_conns}, nofile=prlimit_to)
    facts = {}
    try:
        tid = srv.submit(2, 3_600_000)  # one tick, then an hour of quiet
        path = f"/v1/tasks/{tid}/events"
        time.sleep(0.3)
        base = srv.rss()
        slab0 = slab_snapshot()

        def ready(load):
            time.sleep(cfg.settle)
            facts["rss"] = srv.rss()
            facts["slab"] = slab_snapshot()
            facts["threads"] = srv.threads()
            facts["fds"] = fd_count(srv.pid)
            load.signal(signal.SIGUSR1)
            srv.cancel(tid)

        load = Load(cfg, "sub", ["--port", str(srv.port), "--path", path, "--seq", "id",
                                 "--hold", "--conc", str(cfg.conc),
                                 "--max-time", str(cfg.scale(180))],
                    procs=procs,
                    per_proc=lambda i: ["-n", str(parts[i]), "--bind", addrs[i]],
                    on_ready=ready)
        res = load.result(cfg.scale(240))
        held = res["opened"]
        slab = slab_delta(slab0, facts.get("slab"), held)
        problems = check_stream_result(res, target)
        first_limit = bound
        if held < target:
            # what stopped it short of the planned count
            seen = [name for name, k in (("ports", "err_ports"), ("client fd limit", "err_fds"),
                                         ("memory", "err_memory")) if res.get(k)]
            with open(srv.stderr_path, errors="replace") as f:
                srv_log = f.read()
            if "out of file descriptors" in srv_log:
                seen.insert(0, "server fd limit")
            first_limit = seen[0] if seen else "other (see the client's counters)"
        row = {
            "scenario": "idle100k", "server": "taskstreamd", "requested": want,
            "target": target, "held": held, "failed": res["failed"],
            "establish_s": res["establish_s"], "first_limit": first_limit, "limits": limits,
            "server_nofile": server_nofile, "nofile_note": nofile_note,
            "max_connections": max_conns, "client_procs": procs, "client_addrs": addrs,
            "ports_per_addr": ports, "rss_base_kib": base, "rss_kib": facts.get("rss"),
            "rss_per_stream_b": ((facts["rss"] - base) * 1024 / max(1, held)
                                 if "rss" in facts else None),
            "slab_per_stream_b": slab["per_stream_b"] if slab else None,
            "slab": slab, "server_fds": facts.get("fds"),
            "server_threads": facts.get("threads"), "problems": problems,
            "client": {k: v for k, v in res.items() if not isinstance(v, dict)},
        }
        out.append(row)
        log(f"idle100k: held {held:,} of {target:,} (asked {want:,}) in "
            f"{res['establish_s']:.2f}s; first limit: {first_limit or 'none'}; RSS "
            f"{fmt_num(row['rss_per_stream_b'])} B/stream, kernel slab "
            f"{fmt_num(row['slab_per_stream_b'])} B/stream (both ends; moved most: "
            f"{slab_top_text(slab, max(1, held), 4)}) {problems or ''}")
    finally:
        stop_server(srv, out)


# --------------------------------------------------------------------------
# cluster mode (Redis)
# --------------------------------------------------------------------------

REDIS_SERVER = os.environ.get("REDIS_SERVER") or "/usr/bin/redis-server"


def redis_available():
    return os.access(REDIS_SERVER, os.X_OK)


class RedisError(Exception):
    pass


class Resp:
    """A RESP2 client on one connection: enough for INFO, HGET, XLEN."""

    def __init__(self, port, timeout):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self):
        self.sock.close()

    def _more(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._more()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise ConnectionError(f"not a RESP reply: {line!r}")

    def command(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a.encode() if isinstance(a, str) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        r = self._reply()
        if isinstance(r, RedisError):
            raise r
        return r

    def pipeline(self, cmds):
        """Several commands in one write; their replies in order."""
        out = []
        for args in cmds:
            out.append(b"*%d\r\n" % len(args))
            for a in args:
                a = a.encode() if isinstance(a, str) else str(a).encode()
                out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return [self._reply() for _ in cmds]


class RedisServer(Server):
    """redis-server on a free loopback port, in the foreground, from a temp
    dir of its own, nothing saved (as tests/e2e/cluster.py starts it),
    pinned with the servers."""
    name = "redis-server"

    def __init__(self, cfg):
        self.cfg = cfg
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=cfg.workdir)
        self.log_path = os.path.join(self.dir, "redis.log")
        self.conn = None
        for attempt in range(5):
            self.port = free_port()
            self.log_f = open(self.log_path, "a")
            self.proc = subprocess.Popen(
                cfg.pin_server + [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", self.dir,
                                  "--daemonize", "no", "--loglevel", "warning",
                                  "--databases", "1", "--maxclients", "10000"],
                stdin=subprocess.DEVNULL, stdout=self.log_f, stderr=subprocess.STDOUT,
                start_new_session=True)
            self.pid = self.proc.pid
            if self._ready(cfg.scale(10)):
                self.conn = Resp(self.port, cfg.scale(10))
                return
            self.stop()
            with open(self.log_path, errors="replace") as f:
                text = f.read()
            if attempt == 4 or "Address already in use" not in text:
                raise RuntimeError(f"redis-server did not start:\n{text[-2000:]}")

    def _ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                c = Resp(self.port, 1)
                try:
                    if c.command("PING") == "PONG":
                        return True
                finally:
                    c.close()
            except (OSError, ConnectionError, RedisError):
                pass
            time.sleep(0.02)
        return False

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args):
        return self.conn.command(*args)

    def snapshot(self):
        """Calls per command (INFO commandstats: commands run by scripts are
        counted too) and the bytes Redis sent, at one moment."""
        stats, other = self.conn.pipeline([("INFO", "commandstats"), ("INFO", "stats")])
        calls = {}
        for line in stats.splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line[len("cmdstat_"):].partition(":")
                fields = dict(kv.split("=", 1) for kv in rest.split(",") if "=" in kv)
                calls[name] = int(fields.get("calls", 0))
        info = {}
        for line in other.splitlines():
            k, _, v = line.partition(":")
            info[k] = v.strip()
        return {"calls": calls, "net_out": int(info.get("total_net_output_bytes", 0)),
                "net_in": int(info.get("total_net_input_bytes", 0))}

    def stop(self, timeout=10):
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log_f.close()
        return self.proc.returncode


def calls_delta(s0, s1, ours=("info",)):
    """{command: calls} between two snapshots, our own (INFO, and what else
    this script sent meanwhile) left out."""
    out = {}
    for k, v in s1["calls"].items():
        d = v - s0["calls"].get(k, 0)
        if d and k not in ours:
            out[k] = d
    return out


class ClusterSet:
    """A redis-server and two replicas on it with a fresh key prefix. B
    starts first, alone, and its only worker runs an idle ticker (the
    blocker) for the whole scenario, so B never claims: every task
    submitted later is claimed and run by A (WORKERS=workers), and a stream
    on B follows it through Redis."""

    def __init__(self, cfg, workers):
        self.cfg = cfg
        self.redis = RedisServer(cfg)
        self.prefix = f"bench-{os.urandom(8).hex()}:"
        self.servers = []
        common = {"REDIS_URL": self.redis.url, "REDIS_KEY_PREFIX": self.prefix}
        try:
            self.b = Taskstreamd(cfg, env=dict(common, REPLICA_ID="b", WORKERS=1))
            self.servers.append(self.b)
            self.blocker = self.b.submit(2, 3_600_000)
            wait_running(self.b, [self.blocker], "b", cfg.scale(10))
            self.a = Taskstreamd(cfg, env=dict(common, REPLICA_ID="a", WORKERS=workers))
            self.servers.insert(0, self.a)
        except BaseException:
            self.stop([])
            raise

    def key(self, task_id, what):
        return f"{self.prefix}{{{task_id}}}:{what}"

    def tops(self, ids):
        """The last stored event id of each task."""
        r = self.redis.conn.pipeline([("HGET", self.key(t, "meta"), "top") for t in ids])
        return [int(x) if isinstance(x, str) and x.isdigit() else 0 for x in r]

    def stop(self, out):
        if getattr(self, "blocker", None) and self.servers:
            self.servers[-1].cancel(self.blocker)
            try:
                wait_ended(self, [self.blocker], self.cfg.scale(30))
            except (RuntimeError, OSError, ConnectionError, RedisError) as e:
                log(f"cluster: {e}")
        for srv in self.servers:
            if out is not None:
                stop_server(srv, out)
            else:
                srv.stop()
        rc = self.redis.stop()
        if rc not in (0, None) and out is not None:
            out.append({"scenario": "server_exit", "server": "redis-server", "exit_status": rc,
                        "problems": [f"redis-server exit status {rc}"]})


def wait_running(srv, ids, replica, timeout):
    """Until every task runs on `replica` (GET /v1/tasks/{id} on srv)."""
    deadline = time.monotonic() + timeout
    left = list(ids)
    while left and time.monotonic() < deadline:
        status, doc = srv.request("GET", f"/v1/tasks/{left[0]}")
        if status == 200 and doc.get("state") == "running" and doc.get("replica") == replica:
            left.pop(0)
        else:
            time.sleep(0.02)
    if left:
        raise RuntimeError(f"{len(left)} of {len(ids)} tasks not running on replica {replica} "
                           f"after {timeout}s")


def cluster_window(cfg, facts, procs, cl, ids, window):
    """In a thread from `ready`: after the warm-up, a snapshot (Redis'
    commandstats, the tasks' tops, every server's CPU), another at the end
    of the window, then the subscribers of the first task's live channel
    (the replicas that follow it)."""
    def take(tag):
        snap = {"t": time.monotonic(), "cpu": {name: p.cpu() for name, p in procs.items()}}
        if cl is not None:
            # the tops outside the two INFOs: between them only Redis' own
            # traffic and the replicas'
            if tag == "0":
                snap["tops"] = cl.tops(ids)
            snap.update(cl.redis.snapshot())
            if tag == "1":
                snap["tops"] = cl.tops(ids)
                r = cl.redis.command("PUBSUB", "NUMSUB", cl.key(ids[0], "live"))
                snap["numsub"] = r[1] if isinstance(r, list) and len(r) == 2 else None
        facts["snap" + tag] = snap

    def run():
        try:
            time.sleep(cfg.warmup)
            take("0")
            time.sleep(window)
            take("1")
        except Exception as e:  # reported in the row
            facts["snap_error"] = repr(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    facts["thread"] = t


def cluster_figures(facts, res, readers_per_task, delivered=None):
    """What the two snapshots say: commands per produced event and per
    delivery, Redis' bytes out per event, each process's CPU per delivery."""
    s0, s1 = facts.get("snap0"), facts.get("snap1")
    if not s0 or not s1:
        return {}
    span = s1["t"] - s0["t"]
    deliveries = delivered if delivered is not None else res["delivery_rate"] * span
    fig = {"span_s": span,
           "cpu_us_per_delivery": {k: 1e6 * (s1["cpu"][k] - s0["cpu"][k]) / max(1, deliveries)
                                   for k in s0["cpu"]},
           "cpu_pct": {k: 100 * (s1["cpu"][k] - s0["cpu"][k]) / max(1e-9, span)
                       for k in s0["cpu"]}}
    if "calls" in s0 and "tops" in s0:
        calls = calls_delta(s0, s1)
        produced = sum(b - a for a, b in zip(s0["tops"], s1["tops"]))
        if delivered is None and produced:
            deliveries = produced * readers_per_task
        total = sum(calls.values())
        p = max(1, produced or 0)
        fig.update({
            "produced": produced, "deliveries": deliveries, "calls": calls,
            "calls_total": total,
            "evalsha_per_event": calls.get("evalsha", 0) / p,
            "publish_per_event": calls.get("publish", 0) / p,
            "calls_per_event": total / p,
            "calls_per_delivery": total / max(1, deliveries),
            "net_out_per_event_b": (s1["net_out"] - s0["net_out"]) / p,
            "subscribed_replicas": s1.get("numsub"),
        })
    if "redis" in s0["cpu"]:
        # Redis' CPU per event produced (nchan: per event a reader got)
        events = fig.get("produced") or res["delivery_rate"] * span / max(1, readers_per_task)
        fig["redis_cpu_us_per_event"] = (1e6 * (s1["cpu"]["redis"] - s0["cpu"]["redis"])
                                         / max(1, events))
    return fig


def cluster_streams(cfg, kind, source, targets, ntasks, rate, tag, cl=None, procs=None,
                    pub_target=None, window=None):
    """`ntasks` sources at `rate` events/s each (tickers submitted to
    `source`, or nchan channels published on `pub_target`), and streams on
    `targets`, [(server, streams)], each a sseload process spread
    round-robin over all the sources; measured over the window. Returns
    the merged sub result, the facts of the window and the task ids.

    The tickers are submitted 1/(rate x ntasks) s apart, so that their ticks
    are spread over the interval rather than all due at once (in memory
    mode they would all tick together; in cluster mode the claims would
    spread them by chance)."""
    window = window or cfg.window
    warmup, grace = cfg.warmup, cfg.grace
    source_s = window + warmup + grace + cfg.scale(30)
    ids = []
    facts = {}
    pub = {}
    if kind == "taskstreamd":
        count = min(1_000_000, int(rate * source_s))
        t0 = time.monotonic()
        for i in range(ntasks):
            time.sleep(max(0.0, t0 + i / (rate * ntasks) - time.monotonic()))
            ids.append(source.submit(count, max(0, round(1000 / rate))))
        if cl is not None:
            wait_running(cl.a, ids, "a", cfg.scale(10))
        # each stream from the event the task is at: little is replayed
        # while the streams connect
        last = [source.event_count(t) for t in ids]
        paths = [f"/v1/tasks/{t}/events" + (f"?last_event_id={n}" if n > 0 else "")
                 for t, n in zip(ids, last)]
        seq = "id"
    else:
        paths = [f"/sub/{tag}x{i}" for i in range(ntasks)]
        seq = "data"
    paths_file = os.path.join(cfg.workdir, f"{tag}.paths")
    with open(paths_file, "w") as f:
        f.write("".join(p + "\n" for p in paths))
    redis = cl.redis if cl is not None else None

    def ready(load):
        if kind == "nginx+nchan":
            if redis is not None:
                facts["pub0"] = redis.snapshot()
            pub["load"] = Load(cfg, "pub",
                               ["--port", str(pub_target.port), "-c", str(cfg.pub_conns),
                                "--rate", str(rate * ntasks),
                                "--duration", str(warmup + window + grace + 1),
                                "--max-time", str(warmup + window + grace + 10)]
                               + [a for i in range(ntasks) for a in ("--path",
                                                                     f"/pub/{tag}x{i}")])
        cluster_window(cfg, facts, procs or {}, cl if ids else None, ids, window)

    try:
        load = Load(cfg, "sub", ["--paths-file", paths_file, "--seq", seq, "--window",
                                 str(window), "--warmup", str(warmup), "--grace", str(grace),
                                 "--conc", str(cfg.conc), "--max-time", str(cfg.scale(120))],
                    procs=len(targets),
                    per_proc=lambda i: ["--port", str(targets[i][0].port),
                                        "-n", str(targets[i][1])],
                    on_ready=ready)
        res = load.result(cfg.scale(180))
        if "thread" in facts:
            facts["thread"].join(cfg.scale(30))
        if "load" in pub:
            pub["load"].signal()
            facts["pub"] = pub["load"].result(30)
            if redis is not None and "pub0" in facts:
                # nchan: the commands over the whole publisher run
                facts["pub1"] = redis.snapshot()
    finally:
        if "load" in pub and "pub" not in facts:
            pub["load"].signal()
        for t in ids:
            source.cancel(t)
        if cl is not None and ids:
            # the next case measures Redis alone: these must be over
            wait_ended(cl, ids, cfg.scale(30))
    return res, facts, ids


def wait_ended(cl, ids, timeout):
    """Until no task of `ids` is queued or running any more (Redis' view).
    A DELETE of a running task reaches its owner at its next renewal at the
    latest (TASK_LEASE/3)."""
    deadline = time.monotonic() + timeout
    left = list(ids)
    while left and time.monotonic() < deadline:
        states = cl.redis.conn.pipeline([("HGET", cl.key(t, "meta"), "state") for t in left])
        left = [t for t, st in zip(left, states) if st in ("queued", "running")]
        if left:
            time.sleep(0.05)
    if left:
        raise RuntimeError(f"{len(left)} of {len(ids)} cancelled tasks still run after "
                           f"{timeout}s")


def wait_nchan_redis(srv, timeout):
    """nginx + nchan with Redis answers 503 to subscribers until it is
    connected: until a probe subscriber gets 200."""
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=2)
        try:
            conn.request("GET", "/sub/probe", headers={"Accept": "text/event-stream"})
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException):
            status = None
        finally:
            conn.close()
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nginx+nchan with Redis: subscribers get {status} after "
                               f"{timeout}s")
        time.sleep(0.05)


def stream_problems(res, expect):
    problems = check_stream_result(res, expect)
    if res.get("caught_up", 0) < res.get("opened", 0):
        problems.append(f"only {res.get('caught_up')} of {res.get('opened')} caught up")
    if res["lat_us"]["n"] == 0:
        problems.append("no event in the window")
    return problems


def cluster_latency_row(cfg, mode, server, readers_on, ntasks, rate, readers, res, facts):
    lat = res["lat_us"]
    streams = ntasks * readers
    fig = cluster_figures(facts, res, readers)
    if server == "nginx+nchan" and "pub1" in facts:
        # Redis' commands over the publisher's whole run, per publish
        sent = facts["pub"]["status_2xx"]
        calls = calls_delta(facts["pub0"], facts["pub1"])
        total = sum(calls.values())
        fig.update({"produced": sent, "calls": calls, "calls_total": total,
                    "evalsha_per_event": calls.get("evalsha", 0) / max(1, sent),
                    "publish_per_event": calls.get("publish", 0) / max(1, sent),
                    "calls_per_event": total / max(1, sent),
                    "calls_per_delivery": total / max(1, sent * readers),
                    "net_out_per_event_b": (facts["pub1"]["net_out"] - facts["pub0"]["net_out"])
                    / max(1, sent)})
    problems = stream_problems(res, streams)
    if facts.get("snap_error"):
        problems.append(f"snapshot: {facts['snap_error']}")
    if server == "nginx+nchan":
        p = facts.get("pub") or {}
        if not p.get("status_2xx"):
            problems.append("the publisher got no 2xx")
    return {
        "scenario": "cluster_latency", "server": server, "mode": mode, "readers_on": readers_on,
        "tasks": ntasks, "readers": readers, "streams": streams, "rate_per_task": rate,
        "offered": rate * ntasks, "delivery_rate": res["delivery_rate"],
        "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000, "max_ms": lat["max"] / 1000,
        "window_events": res["window_events"], "gaps": res["gaps"], "cut": res["cut"],
        "caught_up": res.get("caught_up"), "events": res["events"],
        "publisher": ({"sent": facts["pub"]["sent"], "ok": facts["pub"]["status_2xx"],
                       "p99_ms": facts["pub"]["lat_us"]["p99"] / 1000}
                      if facts.get("pub") else None),
        **{k: v for k, v in fig.items() if k != "calls"}, "calls": fig.get("calls"),
        "problems": problems,
        "client": {k: v for k, v in res.items() if not isinstance(v, dict)},
        "pinned": bool(cfg.pin),
    }


def log_latency(row, rnd=None):
    cmds = ""
    if row.get("calls_per_event") is not None:
        cmds = (f"; redis per event: evalsha {row['evalsha_per_event']:.2f} publish "
                f"{row['publish_per_event']:.2f} all {row['calls_per_event']:.2f} "
                f"(per delivery {row['calls_per_delivery']:.3f})")
    log(f"cluster latency {'' if rnd is None else f'round {rnd + 1} '}"
        f"{row['server']:12} {row['mode']:7} on {row['readers_on']:6} "
        f"{row['tasks']}x{row['readers']}: {row['delivery_rate']:.0f} deliveries/s p50 "
        f"{row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms{cmds} {row['problems'] or ''}")


def cluster_fanout_row(cfg, mode, subs_each, rate, res, facts, nservers):
    lat = res["lat_us"]
    streams = subs_each * nservers
    fig = cluster_figures(facts, res, streams)
    problems = stream_problems(res, streams)
    row = {
        "scenario": "cluster_fanout", "server": "taskstreamd", "mode": mode,
        "replicas": nservers if mode == "cluster" else 1, "readers_each": subs_each,
        "streams": streams, "rate_per_stream": rate, "offered": rate * streams,
        "delivery_rate": res["delivery_rate"],
        "source_rate": res["window_events"] / max(1, res["opened"]) / cfg.window,
        "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000, "max_ms": lat["max"] / 1000,
        "window_events": res["window_events"], "gaps": res["gaps"], "cut": res["cut"],
        "caught_up": res.get("caught_up"),
        **{k: v for k, v in fig.items() if k != "calls"}, "calls": fig.get("calls"),
        "problems": problems,
        "client": {k: v for k, v in res.items() if not isinstance(v, dict)},
        "pinned": bool(cfg.pin),
    }
    row["held"] = not problems and lat["p99"] < P99_LIMIT_US
    row["carried"] = not problems and lat["p99"] < P99_CAPACITY_US
    return row


def cluster_submit(cfg, mode, srv, out, cl=None):
    """POST /v1/tasks (a ticker of one tick) as fast as a few keep-alive
    connections go, at most cluster_submit_cap of them; in cluster mode
    then until A has claimed and ended every one (the queue is back to what
    it held before), which bounds what the queue can hold."""
    cap = cfg.plan["cluster_submit_cap"]
    procs = {"server": srv} if cl is None else {"a": cl.a, "b": cl.b, "redis": cl.redis}
    c0 = {k: p.cpu() for k, p in procs.items()}
    s0 = cl.redis.snapshot() if cl is not None else None
    queue0 = cl.redis.command("XLEN", cl.prefix + "queue") if cl is not None else None
    t0 = time.monotonic()
    load = Load(cfg, "pub", ["--port", str(srv.port), "--path", "/v1/tasks", "-c",
                             str(cfg.plan["submit_conns"]), "--rate", "0", "--duration",
                             str(cfg.plan["submit_s"]), "--count", str(cap), "--body",
                             '{"kind":"ticker","count":1,"interval_ms":0}',
                             "--max-time", str(cfg.scale(60))])
    res = load.result(cfg.scale(90))
    posted_s = time.monotonic() - t0
    drained_s = backlog = None
    problems = [] if res["status_2xx"] > 0 else ["no task accepted"]
    if cl is not None:
        backlog = cl.redis.command("XLEN", cl.prefix + "queue") - queue0
        deadline = time.monotonic() + cfg.scale(60)
        left = backlog
        while left > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            left = cl.redis.command("XLEN", cl.prefix + "queue") - queue0
        drained_s = time.monotonic() - t0
        if left > 0:
            problems.append(f"{left} tasks still queued {cfg.scale(60)} s after the last POST")
    cpu = {k: p.cpu() - c0[k] for k, p in procs.items()}
    lat = res["lat_us"]
    row = {
        "scenario": "cluster_submit", "server": "taskstreamd", "mode": mode,
        "connections": cfg.plan["submit_conns"], "cap": cap,
        "accepted_per_s": res["ok_rate"], "answered_per_s": res["rate"],
        "accepted": res["status_2xx"], "status_4xx": res["status_4xx"],
        "status_5xx": res["status_5xx"], "errors": res["errors"],
        "p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000, "posted_s": posted_s,
        "backlog_after_posts": backlog, "all_done_s": drained_s,
        "done_per_s": (res["status_2xx"] / drained_s) if drained_s else None,
        "cpu_us_per_task": {k: 1e6 * v / max(1, res["status_2xx"]) for k, v in cpu.items()},
        "problems": problems,
    }
    if cl is not None:
        calls = calls_delta(s0, cl.redis.snapshot(), ours=("info", "xlen"))
        row["calls"] = calls
        row["calls_per_task"] = sum(calls.values()) / max(1, res["status_2xx"])
    out.append(row)
    log(f"cluster submit {mode:7}: {row['accepted_per_s']:.0f} accepted/s ({row['status_4xx']} "
        f"4xx, {row['status_5xx']} 5xx) p99 {row['p99_ms']:.2f} ms"
        + (f"; backlog {backlog}, all done after {drained_s:.2f} s, "
           f"{row['calls_per_task']:.1f} redis commands per task" if cl is not None else "")
        + f" {problems or ''}")


def scenario_cluster(cfg, servers, out):
    """Cluster mode on Redis beside memory mode, in one run, every server up
    at once (idle when another is measured) so that the cases interleave:
    1. latency at ~1,000 events/s (T tickers x 100/s), `cluster_reps`
       rounds of: memory mode; through Redis with the readers on the other
       replica (B) and on the owner (A); with 1 and with 100 readers per
       task; nchan without and with Redis (1 reader per channel). Redis'
       commands per event over each window. Each row: the median of the
       rounds;
    2. fan-out: one ticker owned by A, N readers on each replica, the rate
       stepped up, each step beside memory mode's (one process, 2N readers);
    3. submissions: memory mode, then cluster mode (POSTs to A)."""
    if not redis_available():
        log(f"cluster: {REDIS_SERVER} is missing (scripts/deps.sh test installs it): skipped")
        out.append({"scenario": "cluster_skipped", "server": "taskstreamd",
                    "reason": f"{REDIS_SERVER} missing", "problems": []})
        return
    plan = cfg.plan
    ntasks, interval = plan["cluster_tasks"], plan["cluster_interval_ms"]
    rate = 1000 // interval
    readers_list = plan["cluster_readers"]
    subs_each, rates = plan["cluster_fanout"]
    workers = max(16, ntasks + 4)
    lat_window = plan["cluster_window"]
    mem = cl = None
    nchan = {}
    try:
        mem = make_server(cfg, "taskstreamd", env={"WORKERS": workers})
        cl = ClusterSet(cfg, workers)
        if "nginx+nchan" in servers:
            nchan = start_nchan_pair(cfg)
        mem_procs = {"server": mem}
        cl_procs = {"a": cl.a, "b": cl.b, "redis": cl.redis}

        # 1. latency: (label, run) per case, every round in the same order
        cases = []
        for readers in readers_list:
            cases.append((("taskstreamd", "memory", "same", readers), dict(
                kind="taskstreamd", source=mem, targets=[(mem, ntasks * readers)],
                procs=mem_procs)))
            for on, target in (("other", cl.b), ("owner", cl.a)):
                cases.append((("taskstreamd", "cluster", on, readers), dict(
                    kind="taskstreamd", source=cl.a, targets=[(target, ntasks * readers)],
                    cl=cl, procs=cl_procs)))
        if nchan:
            cases.append((("nginx+nchan", "memory", "same", 1), dict(
                kind="nginx+nchan", source=None, targets=[(nchan["memory"], ntasks)],
                procs={"nginx": nchan["memory"]}, pub_target=nchan["memory"])))
            cases.append((("nginx+nchan", "cluster", "other", 1), dict(
                kind="nginx+nchan", source=None, targets=[(nchan["b"], ntasks)],
                cl=NchanRedis(nchan["redis"]), pub_target=nchan["a"],
                procs={"nginx_a": nchan["a"], "nginx_b": nchan["b"],
                       "redis": nchan["redis"]})))
        done = {label: [] for label, _ in cases}
        for rnd in range(plan["cluster_reps"]):
            for n, (label, kw) in enumerate(cases):
                server, mode, on, readers = label
                res, facts, _ = cluster_streams(cfg, ntasks=ntasks, rate=rate,
                                                tag=f"cl{rnd}n{n}", window=lat_window, **kw)
                row = cluster_latency_row(cfg, mode, server, on, ntasks, rate, readers, res,
                                          facts)
                done[label].append(row)
                log_latency(row, rnd)
        for label, _ in cases:
            out.append(merge_rounds(done[label]))

        # 2. fan-out, a step of each mode in turn
        ladders = {"memory": (mem, [(mem, subs_each), (mem, subs_each)], None, mem_procs),
                   "cluster": (cl.a, [(cl.a, subs_each), (cl.b, subs_each)], cl, cl_procs)}
        for r in rates:
            for mode in list(ladders):
                source, targets, c, procs = ladders[mode]
                res, facts, _ = cluster_streams(cfg, "taskstreamd", source, targets, 1, r,
                                                f"cf{mode}{r}", cl=c, procs=procs)
                row = cluster_fanout_row(cfg, mode, subs_each, r, res, facts, 2)
                out.append(row)
                log_fanout(row)
                if fanout_done(cfg, row):
                    del ladders[mode]
            if not ladders:
                break

        # 3. submissions
        cluster_submit(cfg, "memory", mem, out)
        cluster_submit(cfg, "cluster", cl.a, out, cl=cl)
    finally:
        if mem is not None:
            stop_server(mem, out)
        if cl is not None:
            cl.stop(out)
        stop_nchan_pair(nchan, out)


def merge_rounds(reps):
    """One row of several rounds of a latency case: the medians (counts
    summed, the worst max), each round kept in "rounds"."""
    row = dict(reps[-1])
    keep = ("p50_ms", "p99_ms", "max_ms", "delivery_rate", "calls_per_event",
            "evalsha_per_event", "publish_per_event", "calls_per_delivery",
            "net_out_per_event_b", "redis_cpu_us_per_event")
    row["rounds"] = [{k: r.get(k) for k in keep + ("cpu_us_per_delivery", "problems")}
                     for r in reps]
    for k in keep:
        vals = [r[k] for r in reps if r.get(k) is not None]
        row[k] = median(vals) if vals else None
    row["max_ms"] = max((r["max_ms"] for r in reps), default=None)
    for k in ("window_events", "events", "gaps", "cut"):
        row[k] = sum(r.get(k) or 0 for r in reps)
    row["caught_up"] = min(r.get("caught_up") or 0 for r in reps)
    if all(r.get("produced") is not None for r in reps):
        row["produced"] = sum(r["produced"] for r in reps)
    calls = {}
    for r in reps:
        for k, v in (r.get("calls") or {}).items():
            calls[k] = calls.get(k, 0) + v
    row["calls"] = calls or None
    cpu = {}
    for r in reps:
        for k, v in (r.get("cpu_us_per_delivery") or {}).items():
            cpu.setdefault(k, []).append(v)
    row["cpu_us_per_delivery"] = {k: median(v) for k, v in cpu.items()} or None
    row["problems"] = [f"round {i + 1}: {p}" for i, r in enumerate(reps) for p in r["problems"]]
    row["p99_range_ms"] = [min(r["p99_ms"] for r in reps), max(r["p99_ms"] for r in reps)]
    row["p50_range_ms"] = [min(r["p50_ms"] for r in reps), max(r["p50_ms"] for r in reps)]
    return row


def start_nchan_pair(cfg):
    """nginx + nchan in memory mode, and two more on a redis-server of
    their own (nchan_redis_url, nchan_use_redis on): published on a, read on
    b. Started only as far as they came up (see stop_nchan_pair)."""
    got = {}
    try:
        got["memory"] = Nchan(cfg)
        got["redis"] = RedisServer(cfg)
        extra = (f'nchan_redis_url "redis://127.0.0.1:{got["redis"].port}"; '
                 f'nchan_use_redis on; nchan_redis_namespace "bench{os.urandom(4).hex()}";')
        got["a"] = Nchan(cfg, http_extra=extra)
        got["b"] = Nchan(cfg, http_extra=extra)
        for k in ("a", "b"):
            wait_nchan_redis(got[k], cfg.scale(10))
    except BaseException:
        stop_nchan_pair(got, None)
        raise
    return got


def stop_nchan_pair(got, out):
    for k in ("memory", "a", "b"):
        if k in got:
            if out is not None:
                stop_server(got[k], out)
            else:
                got[k].stop()
    if "redis" in got:
        got["redis"].stop()


class NchanRedis:
    """What cluster_streams needs of a ClusterSet, for nchan: its Redis."""

    def __init__(self, redis):
        self.redis = redis


def log_fanout(row):
    cpu = row.get("cpu_pct") or {}
    log(f"cluster fanout {row['mode']:7} {row['streams']} streams on {row['replicas']} "
        f"rate={row['rate_per_stream']:5}/s: {row['delivery_rate']:10.0f} deliveries/s p50 "
        f"{row['p50_ms']:.1f} ms p99 {row['p99_ms']:.1f} ms cpu "
        f"{', '.join(f'{k} {v:.0f}%' for k, v in cpu.items())} "
        f"{'held' if row['held'] else 'NOT held'} {row['problems'] or ''}")


def fanout_done(cfg, row):
    """Past a step that was not carried, or once the servers' CPU is used up
    and they no longer keep up, a faster step shows nothing new."""
    cpus = 1 if cfg.pin else (os.cpu_count() or 1)
    used = sum((row.get("cpu_pct") or {}).values())
    saturated = row["delivery_rate"] < 0.8 * row["offered"] and used >= 90 * cpus
    return (not row["carried"] or saturated) and not cfg.all_steps


def cluster_latency_pick(results, server, mode, on, readers=None):
    r = [x for x in rows(results, "cluster_latency", server=server, mode=mode, readers_on=on)
         if readers is None or x["readers"] == readers]
    return r[0] if r else None


def best_cluster_fanout(results, mode, flag="held"):
    held = [r for r in rows(results, "cluster_fanout", mode=mode) if r.get(flag)]
    return max(held, key=lambda r: r["delivery_rate"], default=None)


def cluster_summary(results):
    """The side-by-side lines of the cluster scenario."""
    lines = []
    lat = rows(results, "cluster_latency")
    if lat:
        r0 = lat[0]
        base = f"{r0['tasks']} tasks x {r0['rate_per_task']}/s"
        for readers in sorted({r["readers"] for r in lat}):
            tm = cluster_latency_pick(results, "taskstreamd", "memory", "same", readers)
            tc = cluster_latency_pick(results, "taskstreamd", "cluster", "other", readers)
            to = cluster_latency_pick(results, "taskstreamd", "cluster", "owner", readers)
            nm = cluster_latency_pick(results, "nginx+nchan", "memory", "same", readers)
            nr = cluster_latency_pick(results, "nginx+nchan", "cluster", "other", readers)

            def pp(r):
                return f"{fmt_num(r['p50_ms'])} / {fmt_num(r['p99_ms'])}" if r else "-"

            def added(r, m):
                if not r or not m:
                    return "-"
                return f"{r['p50_ms'] - m['p50_ms']:+.2f} / {r['p99_ms'] - m['p99_ms']:+.2f}"

            what = f"{base}, {readers} reader{'s' if readers != 1 else ''} each"
            if readers != 1:
                nm = nr = None  # nchan: the 1-reader case only

            def p99(r):
                return r["p99_ms"] if r else None
            lines.append(f"| cluster: {what}: p50 / p99 (ms), memory mode | {pp(tm)} | "
                         f"{pp(nm)} | {ratio(p99(tm), p99(nm)) if nm else ''} | |")
            lines.append(f"| cluster: {what}: p50 / p99 (ms) through Redis, read on the other "
                         f"replica (nchan: the other nginx) | {pp(tc)} | "
                         f"{pp(nr)} | {ratio(p99(tc), p99(nr)) if nr else ''} | |")
            lines.append(f"| cluster: {what}: added p50 / p99 through Redis (ms), other replica; "
                         f"owner | {added(tc, tm)}; {added(to, tm)} | "
                         f"{added(nr, nm)} | | |")

        def cmds(r):
            if not r or r.get("calls_per_event") is None:
                return "-"
            return (f"{r['evalsha_per_event']:.2f} / {r['publish_per_event']:.2f} / "
                    f"{r['calls_per_event']:.2f}")

        for readers in sorted({r["readers"] for r in lat}):
            tc = cluster_latency_pick(results, "taskstreamd", "cluster", "other", readers)
            nr = cluster_latency_pick(results, "nginx+nchan", "cluster", "other", readers)
            lines.append(f"| cluster: Redis commands per produced event (EVALSHA / PUBLISH / all), "
                         f"{readers} reader{'s' if readers != 1 else ''} per task on the other "
                         f"replica | {cmds(tc)} | {cmds(nr) if readers == 1 else '-'} | | "
                         f"O(1) per event, not per reader |")
    fan = rows(results, "cluster_fanout")
    if fan:
        c = best_cluster_fanout(results, "cluster")
        m = best_cluster_fanout(results, "memory")
        each = fan[0]["readers_each"]

        def cell(r):
            if not r:
                return "none held"
            return (f"{fmt_num(r['delivery_rate'])} at {r['rate_per_stream']}/s "
                    f"(p99 {fmt_num(r['p99_ms'])} ms)")

        cv = c["delivery_rate"] if c else None
        mv = m["delivery_rate"] if m else None
        lines.append(f"| cluster: max deliveries/s with p99 < 100 ms, 2 replicas x {each:,} "
                     f"readers of one task; memory mode: one process, {2 * each:,} readers | "
                     f"{cell(c)}; memory {cell(m)} | n/a | {ratio(cv, mv)} (cluster/memory) | |")
        c2 = best_cluster_fanout(results, "cluster", "carried")
        m2 = best_cluster_fanout(results, "memory", "carried")
        if c2 is not c or m2 is not m:
            cv = c2["delivery_rate"] if c2 else None
            mv = m2["delivery_rate"] if m2 else None
            lines.append(f"| cluster: capacity: max deliveries/s, no loss, p99 < 1 s, the same "
                         f"readers | {cell(c2)}; memory {cell(m2)} | n/a | "
                         f"{ratio(cv, mv)} (cluster/memory) | |")
    sub = rows(results, "cluster_submit")
    if sub:
        m = [r for r in sub if r["mode"] == "memory"]
        c = [r for r in sub if r["mode"] == "cluster"]
        mv = m[0]["accepted_per_s"] if m else None
        cv = c[0]["accepted_per_s"] if c else None
        lines.append(f"| cluster: submissions accepted per s ({sub[0]['connections']} conns), "
                     f"memory / cluster | {fmt_num(mv)} / {fmt_num(cv)} | n/a | "
                     f"{ratio(cv, mv)} (cluster/memory) | |")
    for r in rows(results, "cluster_skipped"):
        lines.append(f"| cluster: skipped | {r['reason']} | | | |")
    return lines


def cpu_cell(d):
    if not d:
        return "-"
    return ", ".join(f"{k} {fmt_num(v)}" for k, v in d.items())


def cluster_detail(results):
    lat = rows(results, "cluster_latency")
    fan = rows(results, "cluster_fanout")
    sub = rows(results, "cluster_submit")
    if not (lat or fan or sub):
        return []
    lines = ["", "### Cluster mode (Redis)", "",
             "One redis-server (nothing saved) and two replicas, all pinned with the servers; "
             "replica b starts first and its only worker holds an idle task, so replica a "
             "claims and runs every ticker and a stream on b follows it through Redis "
             "(worker -> append script -> pub/sub -> b -> socket). The tickers run while the "
             "readers connect, each from the event its task was at (`last_event_id`); events "
             "from before the window are checked for gaps, not timed. "
             "Redis commands: INFO commandstats (commands run by the scripts included, INFO "
             "left out) between two snapshots at the ends of the window; events produced: the "
             "tasks' `top` in Redis at the same moments (nchan: per publish over the "
             "publisher's run); deliveries: events produced x readers per task. Subscribed "
             "replicas: PUBSUB NUMSUB of the first task's live channel.", ""]
    if lat:
        lines += [f"Latency rows: the median of {len(lat[0].get('rounds') or [1])} rounds (each "
                  "round runs every case once, in this order); max: the worst of them.", "",
                  "| server | mode | read on | tasks x readers | delivered/s | p50 (ms) | "
                  "p99 (ms) | p99 of each round (ms) | max (ms) | p99 vs memory (ms) | "
                  "EVALSHA / PUBLISH / all per event | "
                  "commands per delivery | subscribed replicas | Redis bytes out per event | "
                  "Redis CPU us per event | CPU us per delivery |",
                  "| --- | --- | --- | --- " + "| ---: " * 12 + "|"]
        for r in lat:
            m = cluster_latency_pick(results, r["server"], "memory", "same", r["readers"])
            vs = (f"{r['p99_ms'] - m['p99_ms']:+.2f}" if m and r is not m else "")
            cmds = (f"{r['evalsha_per_event']:.2f} / {r['publish_per_event']:.2f} / "
                    f"{r['calls_per_event']:.2f}" if r.get("calls_per_event") is not None else "-")
            per_d = (f"{r['calls_per_delivery']:.3f}" if r.get("calls_per_delivery") is not None
                     else "-")
            subs = r.get("subscribed_replicas")
            each = ", ".join(fmt_num(x["p99_ms"]) for x in r.get("rounds") or [r])
            lines.append(f"| {r['server']} | {r['mode']} | {r['readers_on']} | "
                         f"{r['tasks']} x {r['readers']} | {fmt_num(r['delivery_rate'])} | "
                         f"{fmt_num(r['p50_ms'])} | {fmt_num(r['p99_ms'])} | {each} | "
                         f"{fmt_num(r['max_ms'])} | {vs} | {cmds} | {per_d} | "
                         f"{subs if subs is not None else '-'} | "
                         f"{fmt_num(r.get('net_out_per_event_b'))} | "
                         f"{fmt_num(r.get('redis_cpu_us_per_event'))} | "
                         f"{cpu_cell(r.get('cpu_us_per_delivery'))} |")
        calls = [r for r in lat if r.get("calls")]
        if calls:
            lines += ["", "Commands per produced event, by command:", ""]
            for r in calls:
                p = max(1, r.get("produced") or 1)
                top = [kv for kv in sorted(r["calls"].items(), key=lambda kv: -kv[1])
                       if kv[1] / p >= 0.005][:10]
                lines.append(f"- {r['server']} {r['mode']}, read on {r['readers_on']}, "
                             f"{r['tasks']} x {r['readers']} ({r['produced']:,} events): "
                             + ", ".join(f"{k} {v / p:.2f}" for k, v in top))
    if fan:
        lines += ["", "| mode | servers x readers | events/s per stream: asked / sent | "
                  "offered/s | delivered/s | p50 (ms) | p99 (ms) | max (ms) | CPU % | "
                  "CPU us per delivery, all processes | commands per event | held |",
                  "| --- | --- " + "| ---: " * 9 + "| --- |"]
        for r in fan:
            why = "yes" if r["held"] else "no: " + ("; ".join(r["problems"]) or
                                                     "p99 >= 100 ms")
            servers = (f"2 replicas x {r['readers_each']:,}" if r["mode"] == "cluster"
                       else f"1 x {r['streams']:,}")
            lines.append(f"| {r['mode']} | {servers} | {r['rate_per_stream']} / "
                         f"{fmt_num(r['source_rate'])} | {r['offered']:,} | "
                         f"{fmt_num(r['delivery_rate'])} | {fmt_num(r['p50_ms'])} | "
                         f"{fmt_num(r['p99_ms'])} | {fmt_num(r['max_ms'])} | "
                         f"{cpu_cell(r.get('cpu_pct'))} | "
                         f"{fmt_num(sum((r.get('cpu_us_per_delivery') or {}).values()) or None)}"
                         f" | {fmt_num(r.get('calls_per_event'))} | {why} |")
    if sub:
        lines += ["", "| mode | connections | accepted/s | 4xx | 5xx | p50 (ms) | p99 (ms) | "
                  "queued after the POSTs | all ended after (s) | ended per s | "
                  "Redis commands per task | CPU us per task |", "| --- " + "| ---: " * 11 + "|"]
        for r in sub:
            backlog = r["backlog_after_posts"]
            lines.append(f"| {r['mode']} | {r['connections']} | {fmt_num(r['accepted_per_s'])} | "
                         f"{r['status_4xx']} | {r['status_5xx']} | {fmt_num(r['p50_ms'])} | "
                         f"{fmt_num(r['p99_ms'])} | "
                         f"{backlog if backlog is not None else '-'} | "
                         f"{fmt_num(r['all_done_s'])} | {fmt_num(r.get('done_per_s'))} | "
                         f"{fmt_num(r.get('calls_per_task'))} | "
                         f"{cpu_cell(r.get('cpu_us_per_task'))} |")
        for r in sub:
            if r.get("calls"):
                n = max(1, r["accepted"])
                top = [kv for kv in sorted(r["calls"].items(), key=lambda kv: -kv[1])
                       if kv[1] / n >= 0.05 and kv[0] != "xlen"][:16]
                lines += ["", f"Redis commands per task, {r['mode']} mode (POST to end): "
                          + ", ".join(f"{k} {v / n:.2f}" for k, v in top)]
    return lines


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def make_server(cfg, kind, env=None):
    if kind == "taskstreamd":
        return Taskstreamd(cfg, env)
    if kind == "floor":
        return Floor(cfg)
    return Nchan(cfg)  # env is taskstreamd's


def stop_server(srv, out):
    rc = srv.stop()
    if isinstance(srv, Taskstreamd):
        errs = srv.errors()
        if rc != 0 or errs:
            out.append({"scenario": "server_exit", "server": srv.name, "exit_status": rc,
                        "problems": [f"exit status {rc}"] * (rc != 0) + errs[:5]})


def median(xs):
    return statistics.median(xs) if xs else None


def fmt_num(v, digits=None):
    if v is None:
        return "-"
    if digits is not None:
        return f"{v:.{digits}f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class Config:
    def __init__(self, args):
        self.smoke = args.smoke
        self.plan = dict(SMOKE if args.smoke else FULL)
        self.taskstreamd = os.path.abspath(args.taskstreamd)
        self.sseload = os.path.abspath(args.sseload)
        self.floor = os.path.abspath(args.floor_bin or os.path.join(os.path.dirname(self.sseload),
                                                                    "floor"))
        self.set_pinning(not args.no_pin and (os.cpu_count() or 1) >= 2
                         and shutil.which("taskset") is not None)
        self.main_pinned = self.pin
        self.http_threads = args.http_threads
        self.nofile = raise_nofile()
        # streams one process can hold: descriptors less a reserve for the
        # listeners, epoll, logs and the client's own
        self.max_streams = min(args.max_streams, self.nofile - 1000) if not args.smoke else 200
        self.conc = 256
        self.slow = args.slow
        self.window = self.plan["window"]
        self.warmup = self.plan["warmup"] * self.slow
        self.grace = self.plan["grace"] * self.slow
        self.settle = 0.3 if args.smoke else 1.0
        self.all_steps = args.all_steps
        self.workdir = tempfile.mkdtemp(prefix="ts-bench-")
        self.processes = args.processes
        self.pub_conns = args.pub_conns
        self.perf_dir = os.path.abspath(args.perf) if args.perf else None
        if self.perf_dir:
            os.makedirs(self.perf_dir, exist_ok=True)
        self.ts_env = dict(kv.split("=", 1) for kv in args.ts_env)

    def set_pinning(self, on):
        self.pin = bool(on)
        self.pin_server = ["taskset", "-c", "0"] if self.pin else []
        self.pin_load = ["taskset", "-c", "1"] if self.pin else []

    def scale(self, s):
        return s * self.slow

    def procs_for(self, n):
        return max(1, min(self.processes, n))


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------


def rows(results, scenario, **match):
    return [r for r in results if r["scenario"] == scenario
            and all(r.get(k) == v for k, v in match.items())]


def best_fanout(results, kind, subs, pinned=True, flag="held"):
    held = [r for r in rows(results, "fanout", server=kind, subscribers=subs)
            if r.get(flag) and r.get("pinned", True) == pinned]
    return max(held, key=lambda r: r["delivery_rate"], default=None)


def ts_step(results, subs, rate, pinned):
    """The (last) taskstreamd fan-out step at this S and rate."""
    t = [r for r in rows(results, "fanout", server="taskstreamd", subscribers=subs,
                         rate_per_stream=rate) if r.get("pinned", True) == bool(pinned)]
    return t[-1] if t else None


def floor_line(results, s, t, c, pinned):
    """The summary line "CPU per delivery vs floor" for S=s: taskstreamd's
    (t) and nchan's (c) best step over the floor's at the same rate."""
    floors = [r for r in rows(results, "fanout", server="floor", subscribers=s)
              if r.get("pinned", True) == pinned]
    if not floors:
        return None
    cells, notes = [], {}
    for r in (t, c):
        f = [x for x in floors if r and x["rate_per_stream"] == r["rate_per_stream"]]
        fv = f[-1]["cpu_us_per_delivery"] if f else None
        cells.append(ratio(r["cpu_us_per_delivery"] if r else None, fv))
        if f:
            notes[r["rate_per_stream"]] = f"floor at {r['rate_per_stream']}/s: {fmt_num(fv)} us"
    return (f"| fan-out {s:,} subs: CPU per delivery vs floor (bench/floor.c, same rate) | "
            f"{cells[0]} | {cells[1]} | | {'; '.join(notes.values())} |")


def ratio(a, b, invert=False):
    if a is None or b is None or a == 0 or b == 0:
        return "-"
    return f"{(b / a) if invert else (a / b):.2f}x"


def summary_table(results, cfg, pinned=True, fanout_only=False):
    """(markdown lines) the side-by-side table."""
    lines = ["| scenario | taskstreamd | nginx+nchan | ratio (ts/nchan) | target |",
             "| --- | ---: | ---: | ---: | --- |"]
    held_sizes = [] if fanout_only else sorted({r["streams"] for r in rows(results, "held")})
    for n in held_sizes:
        t = rows(results, "held", server="taskstreamd", streams=n)
        c = rows(results, "held", server="nginx+nchan", streams=n)
        tv = t[0]["rss_per_stream_b"] if t else None
        cv = c[0]["rss_per_stream_b"] if c else None
        target = "<= 0.5x" + (f" ({'met' if tv / cv <= 0.5 else 'missed'})" if tv and cv else "")
        lines.append(f"| held {n:,} streams: RSS per stream (bytes) | {fmt_num(tv)} | "
                     f"{fmt_num(cv)} | {ratio(tv, cv)} | {target} |")
        te = t[0]["establish_s"] if t else None
        ce = c[0]["establish_s"] if c else None
        lines.append(f"| held {n:,} streams: time to establish (s) | {fmt_num(te, 3)} | "
                     f"{fmt_num(ce, 3)} | {ratio(te, ce)} | |")
        if t and n >= 19000:
            ok = t[0]["opened"] >= 19000
            lines.append(f"| held {n:,} streams: opened by one process | {t[0]['opened']:,} | "
                         f"{c[0]['opened']:,} | | 19,000 ({'met' if ok else 'missed'}) |"
                         if c else f"| held {n:,}: opened | {t[0]['opened']:,} | - | | |")
    subs_list = sorted({r["subscribers"] for r in rows(results, "fanout")
                        if r.get("pinned", True) == pinned})
    for s in subs_list:
        t = best_fanout(results, "taskstreamd", s, pinned)
        c = best_fanout(results, "nginx+nchan", s, pinned)
        tv = t["delivery_rate"] if t else None
        cv = c["delivery_rate"] if c else None
        goal = s >= 1000
        target = ""
        steps = [r for r in rows(results, "fanout", subscribers=s)
                 if r.get("pinned", True) == pinned]
        top = max((r["rate_per_stream"] for r in steps), default=None)
        # both held the fastest step without using their CPU up: the figure
        # is what the source offered, not what the server can do
        unsaturated = bool(t and c and t["rate_per_stream"] == top and c["rate_per_stream"] == top
                           and max(t["cpu_pct"] or 0, c["cpu_pct"] or 0) < 85)
        if goal:
            target = ">= 1.5x"
            if tv and cv:
                target += f" ({'met' if tv / cv >= 1.5 else 'missed'})"
            elif tv and not cv and c is None and any(
                    r["server"] == "nginx+nchan" for r in steps):
                target += " (met: nginx+nchan held no step)"
        if unsaturated:
            target += " (both held the fastest step: source-bound, not a capacity figure)"
        lines.append(f"| fan-out {s:,} subs: max deliveries/s with p99 < 100 ms | {fmt_num(tv)} | "
                     f"{fmt_num(cv)} | {ratio(tv, cv)} | {target} |")
        tp = t["p99_ms"] if t else None
        cp = c["p99_ms"] if c else None
        lines.append(f"| fan-out {s:,} subs: p50 / p99 at that rate (ms) | "
                     f"{fmt_num(t['p50_ms'] if t else None)} / {fmt_num(tp)} | "
                     f"{fmt_num(c['p50_ms'] if c else None)} / {fmt_num(cp)} | "
                     f"{ratio(tp, cp)} (p99) | {'no worse' if goal else ''}"
                     f"{(' (met)' if tp <= cp else ' (missed)') if goal and tp and cp else ''} |")
        tc = t["cpu_us_per_delivery"] if t else None
        cc = c["cpu_us_per_delivery"] if c else None
        lines.append(f"| fan-out {s:,} subs: server CPU per delivery (us) | {fmt_num(tc)} | "
                     f"{fmt_num(cc)} | {ratio(tc, cc)} | |")
        line = floor_line(results, s, t, c, pinned)
        if line:
            lines.append(line)
        t = best_fanout(results, "taskstreamd", s, pinned, "carried")
        c = best_fanout(results, "nginx+nchan", s, pinned, "carried")
        if t != best_fanout(results, "taskstreamd", s, pinned) or \
                c != best_fanout(results, "nginx+nchan", s, pinned):
            tv = t["delivery_rate"] if t else None
            cv = c["delivery_rate"] if c else None
            lines.append(f"| fan-out {s:,} subs: capacity: max deliveries/s, no loss, p99 < 1 s "
                         f"(p99 ms) | {fmt_num(tv)} ({fmt_num(t['p99_ms'] if t else None)}) | "
                         f"{fmt_num(cv)} ({fmt_num(c['p99_ms'] if c else None)}) | "
                         f"{ratio(tv, cv)} | |")
    if fanout_only:
        return lines
    for r in rows(results, "many"):
        note = "harness problem, see below" if r["problems"] else ""
        lines.append(f"| many tasks: {r['tasks']:,} tickers x {r['readers']} readers at "
                     f"{r['rate_per_task']}/s: deliveries/s, p99 (ms) | "
                     f"{fmt_num(r['delivery_rate'])}, {fmt_num(r['p99_ms'])} | n/a | | {note} |")
    for r in rows(results, "submit"):
        lines.append(f"| submissions: POST /v1/tasks accepted per s ({r['connections']} conns) | "
                     f"{fmt_num(r['accepted_per_s'])} | n/a | | |")
    for r in rows(results, "shutdown_readyz"):
        ok = r["max_ms"] is not None and r["max_ms"] <= 5
        lines.append(f"| SIGTERM -> /readyz 503, median / max of {len(r['reps'])} (ms) | "
                     f"{fmt_num(r['median_ms'])} / {fmt_num(r['max_ms'])} | n/a | | <= 5 ms "
                     f"({'met' if ok else 'missed'}) |")
    for r in rows(results, "shutdown_idle"):
        ok = r["max_ms"] is not None and r["max_ms"] <= 50
        lines.append(f"| idle SIGTERM -> exit, median / max of {len(r['reps_ms'])} (ms) | "
                     f"{fmt_num(r['median_ms'])} / {fmt_num(r['max_ms'])} | n/a | | <= 50 ms "
                     f"({'met' if ok else 'missed'}) |")
    for r in rows(results, "shutdown_streams"):
        ok = r.get("readyz_flip_ms") is not None and r["readyz_flip_ms"] <= 5
        lines.append(f"| SIGTERM -> /readyz 503 with {r['streams']:,} streams open (ms) | "
                     f"{fmt_num(r.get('readyz_flip_ms'))} | n/a | | <= 5 ms "
                     f"({'met' if ok else 'missed'}) |")
        lines.append(f"| SIGTERM -> exit with {r['streams']:,} open streams (ms); got end / cut "
                     f"| {fmt_num(r['exit_ms'])}; {r['ended']:,} / {r['cut']} | n/a | | "
                     f"all get end |")
    lines += storm_summary(results)
    lines += cluster_summary(results)
    for r in rows(results, "idle100k"):
        lines.append(f"| idle streams held by one taskstreamd (asked {r['requested']:,}); "
                     f"first limit hit | {r['held']:,}; {r['first_limit'] or 'none'} | n/a | | |")
        lines.append(f"| idle {r['held']:,} streams: RSS / kernel slab (both ends) per stream "
                     f"(bytes) | {fmt_num(r['rss_per_stream_b'])} / "
                     f"{fmt_num(r['slab_per_stream_b'])} | n/a | | |")
    return lines


def storm_summary(results):
    """Side-by-side lines of the storm: taskstreamd per HTTP_THREADS, nchan
    (its workers) beside each."""
    lines = []
    for mode in ("burst", "paced"):
        ts = [r for r in rows(results, "storm", server="taskstreamd", mode=mode)]
        nc = rows(results, "storm", server="nginx+nchan", mode=mode)
        for t in ts:
            c = nc[0] if nc else None
            how = ("at once" if mode == "burst" else f"paced {t['rate']:,.0f}/s")

            def cell(r):
                if r is None:
                    return "-"
                return (f"{r['stalled_runs']} of {r['runs']}; "
                        f"{fmt_num(r['max_ttfe_max_ms'])} ms")

            ok = t["stalled_runs"] == 0 and t["runs"] >= t["runs_planned"]
            cw = f" ({c['threads']} worker{'s' if c['threads'] != 1 else ''})" if c else ""
            lines.append(f"| storm: {t['streams']:,} streams {how}, HTTP_THREADS={t['threads']}: "
                         f"stalled runs; slowest first event (ms) | {cell(t)} | {cell(c)}{cw} | | "
                         f"zero stalls in {t['runs_planned']} of {t['runs_planned']} "
                         f"({'met' if ok else 'missed'}) |")
    return lines


def detail_tables(results):
    lines = ["### Held streams", ""]
    if rows(results, "held"):
        lines += ["Kernel slab per stream: the delta of /proc/slabinfo (active_objs x objsize) "
                  "over the TCP-related caches (" + ", ".join(SLAB_TCP) + ", those this kernel "
                  "has) and over all caches, from before the streams to with them held; both "
                  "ends of each loopback connection (client and server socket) are in it, and "
                  "the all-caches sum also whatever else ran meanwhile.", ""]
    lines += ["| server | streams | opened | establish (s) | RSS before (KiB) | RSS after (KiB) "
              "| RSS bytes/stream | kernel slab bytes/stream: TCP-related / all caches "
              "| server threads |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows(results, "held"):
        slab = r.get("slab")
        slab_cell = (f"{fmt_num(slab['per_stream_b'])} / {fmt_num(slab['all_per_stream_b'])}"
                     if slab else "-")
        lines.append(f"| {r['server']} | {r['streams']:,} | {r['opened']:,} | "
                     f"{r['establish_s']:.3f} | {r['rss_base_kib']:,} | {fmt_num(r['rss_kib'])} | "
                     f"{fmt_num(r['rss_per_stream_b'])} | {slab_cell} | {r['server_threads']} |")
    tops = [r for r in rows(results, "held") if r.get("slab")]
    if tops:
        lines += ["", "Caches that moved most (bytes per stream):", ""]
        for r in tops:
            lines.append(f"- {r['server']}, {r['opened']:,} streams: "
                         f"{slab_top_text(r['slab'], max(1, r['opened']))}")
    lines += ["", "### Fan-out steps", "",
              "| server | pinned | subs | events/s per stream: asked / sent | offered/s | "
              "delivered/s | p50 (ms) | p99 (ms) | max (ms) | server CPU % | CPU us/delivery | "
              "client CPU % | held |",
              "| --- | --- " + "| ---: " * 10 + "| --- |"]
    for r in sorted(rows(results, "fanout"), key=lambda r: not r.get("pinned", True)):
        why = "yes" if r["held"] else "no: " + ("; ".join(r["problems"]) or "p99 >= 100 ms")
        lines.append(f"| {r['server']} | {'yes' if r.get('pinned', True) else 'no'} | "
                     f"{r['subscribers']:,} | {r['rate_per_stream']} / "
                     f"{fmt_num(r.get('source_rate'))} | "
                     f"{r['offered']:,} | {fmt_num(r['delivery_rate'])} | {fmt_num(r['p50_ms'])} | "
                     f"{fmt_num(r['p99_ms'])} | {fmt_num(r['max_ms'])} | {fmt_num(r['cpu_pct'])} | "
                     f"{fmt_num(r['cpu_us_per_delivery'])} | {fmt_num(r['client_cpu_pct'])} | "
                     f"{why} |")
    many = rows(results, "many")
    if many:
        lines += ["", "### Many tasks (taskstreamd)", "",
                  "| tickers | readers each | events/s per task | streams | delivered/s | p50 (ms) "
                  "| p99 (ms) | server CPU % | server threads | submit all (s) |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in many:
            lines.append(f"| {r['tasks']:,} | {r['readers']} | {r['rate_per_task']} | "
                         f"{r['streams']:,} | {fmt_num(r['delivery_rate'])} | "
                         f"{fmt_num(r['p50_ms'])} | {fmt_num(r['p99_ms'])} | "
                         f"{fmt_num(r['cpu_pct'])} | {r['server_threads']} | "
                         f"{r['submit_s']:.2f} |")
    sub = rows(results, "submit")
    if sub:
        lines += ["", "### Submissions (taskstreamd)", "",
                  "| connections | accepted/s | answered/s | 4xx | 5xx | p50 (ms) | p99 (ms) | "
                  "server CPU us/request |", "| ---: " * 8 + "|"]
        for r in sub:
            lines.append(f"| {r['connections']} | {fmt_num(r['accepted_per_s'])} | "
                         f"{fmt_num(r['answered_per_s'])} | {r['status_4xx']} | "
                         f"{r['status_5xx']} | "
                         f"{fmt_num(r['p50_ms'])} | {fmt_num(r['p99_ms'])} | "
                         f"{fmt_num(r['cpu_us_per_request'])} |")
    shut = rows(results, "shutdown_readyz") + rows(results, "shutdown_idle")
    if shut:
        lines += ["", "### Shutdown (taskstreamd)", ""]
        for r in rows(results, "shutdown_readyz"):
            lines.append("- SIGTERM -> first /readyz 503 (ms, each run): " +
                         ", ".join(f"{f['flip_ms']:.2f}" for f in r["reps"]) +
                         " (last 200 seen at: " +
                         ", ".join(f"{f['last_200_after_kill_ms']:.2f}" for f in r["reps"]) + ")")
        for r in rows(results, "shutdown_idle"):
            lines.append("- idle SIGTERM -> exit (ms, each run): " +
                         ", ".join(f"{x:.1f}" for x in r["reps_ms"]))
        for r in rows(results, "shutdown_streams"):
            lines.append(f"- {r['streams']:,} open streams, GRACEFUL_SHUTDOWN_TIMEOUT=0s: exit in "
                         f"{fmt_num(r['exit_ms'])} ms, exit status {r['exit_status']}; "
                         f"{r['ended']:,} streams got `end`, {r['cut']} cut, "
                         f"{r['closed_without_end']} closed without `end`")
    return lines


def storm_detail(results):
    st = rows(results, "storm")
    if not st:
        return []
    n = st[0]["streams"]
    lines = ["", f"### Connection storm: {n:,} streams on one running source", "",
             f"Per run: {n:,} new streams on one ticker task (an event every 100 ms; each "
             "stream asks from the last event on, so its first event is sent as soon as the "
             "server serves it) or one nchan channel (a publisher at 10/s; with first message "
             "newest a new stream waits for the next message, so nchan's times include up to "
             "100 ms of that wait); burst: every connect as fast as sseload goes (--conc N), "
             "paced: "
             f"--rate connects/s. Time to first event: from a stream's connect() to its first "
             "event; 'all had one after': from the start of the connects until the last "
             f"stream had its first event. A run is stalled when a connection was cut "
             f"unanswered (setup_eof), a stream got no answer or no event within "
             f"{STORM_MAX_S} s, or the slowest first event took over {STORM_STALL_MS / 1000:g} s. "
             "A fresh server per thread count (nginx+nchan: its workers), a fresh set of "
             "connections per run, closed (reset) between runs.", "",
             "| server | threads | mode | runs | stalled runs | time to first event, max of "
             "each run: p50 / p99 / max (ms) | p99 over streams, worst run (ms) | all had one "
             "after, worst run (s) | failed | cut | setup_eof | unanswered |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in st:
        mode = r["mode"] if r["mode"] == "burst" else f"paced {r['rate']:,.0f}/s"
        worst = r["all_first_worst_ms"]
        lines.append(f"| {r['server']} | {r['threads']} | {mode} | {r['runs']} | "
                     f"{r['stalled_runs']} | {fmt_num(r['max_ttfe_p50_ms'])} / "
                     f"{fmt_num(r['max_ttfe_p99_ms'])} / {fmt_num(r['max_ttfe_max_ms'])} | "
                     f"{fmt_num(r['p99_ttfe_worst_ms'])} | "
                     f"{fmt_num(worst / 1000 if worst is not None else None, 3)} | "
                     f"{r['failed']:,} | {r['cut']:,} | {r['setup_eof']:,} | "
                     f"{r['unanswered']:,} |")
    return lines


def idle_detail(results):
    idle = rows(results, "idle100k")
    if not idle:
        return []
    lines = ["", "### Idle streams held by one taskstreamd", "",
             "Streams opened by several sseload processes, each bound to its own source "
             "address, held idle (one event each, then quiet); the server's RLIMIT_NOFILE "
             "raised as far as this machine allows and MAX_CONNECTIONS set to match. Kernel "
             "slab: as in the held table (both ends of each connection).", "",
             "| asked | held | first limit hit | server descriptor limit | MAX_CONNECTIONS | "
             "client processes (source addresses) | establish (s) | RSS before (KiB) | "
             "RSS with streams (KiB) | RSS bytes/stream | kernel slab bytes/stream: "
             "TCP-related / all caches |",
             "| ---: | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in idle:
        slab = r.get("slab")
        slab_cell = (f"{fmt_num(slab['per_stream_b'])} / {fmt_num(slab['all_per_stream_b'])}"
                     if slab else "-")
        addrs = r["client_addrs"]
        lines.append(f"| {r['requested']:,} | {r['held']:,} | {r['first_limit'] or 'none'} | "
                     f"{r['server_nofile']:,} ({r['nofile_note']}) | {r['max_connections']:,} | "
                     f"{r['client_procs']} ({addrs[0]}..{addrs[-1]}) | "
                     f"{r['establish_s']:.2f} | {r['rss_base_kib']:,} | {fmt_num(r['rss_kib'])} | "
                     f"{fmt_num(r['rss_per_stream_b'])} | {slab_cell} |")
        if slab:
            lines += ["", f"Caches that moved most (bytes per stream): "
                      f"{slab_top_text(slab, max(1, r['held']))}"]
    return lines


def problems_of(results):
    out = []
    for r in results:
        for p in r.get("problems") or []:
            out.append(f"{r['scenario']} ({r.get('server')}): {p}")
    return out


def render(results, facts, cfg, argv):
    pin = ("server on CPU 0, load on CPU 1 (taskset)" if cfg.pin else "not pinned")
    lines = [BEGIN_MARK, "",
             f"Run of {facts['date']} on {facts['nproc']} CPUs ({facts['cpu']}), "
             f"{facts['memory_gib']} GiB, Linux {facts['kernel']}, descriptor limit "
             f"{facts['nofile']:,}.",
             "",
             f"- taskstreamd: {facts['taskstreamd']} (commit {facts['commit']}"
             f"{', uncommitted changes' if facts['dirty'] else ''}), its own HTTP front, "
             f"HTTP_THREADS={cfg.http_threads}; it also runs the "
             f"ticker tasks on its worker threads (thread counts below)",
             f"- nginx {facts['nginx']}, nchan (libnginx-mod-nchan) {facts['nchan']}, one worker",
             *([f"- floor: bench/floor.c, the same frames written to the same sockets and "
                f"nothing else (one write per stream and event), one thread pinned, one per "
                f"CPU unpinned; run next to each taskstreamd fan-out step"]
               if rows(results, "fanout", server="floor") else []),
             f"- pinning: {pin}; load: bench/sseload (C, epoll), "
             f"{cfg.processes} process(es) per scenario",
             f"- command: `{' '.join(argv)}`",
             "",
             "## Side by side", ""]
    lines += summary_table(results, cfg, pinned=cfg.main_pinned)
    if cfg.main_pinned and any(not r.get("pinned", True) for r in rows(results, "fanout")):
        lines += ["", "### Fan-out without pinning", "",
                  f"Both servers free to use all {os.cpu_count()} CPUs, and so is the load: "
                  f"nginx with {os.cpu_count()} workers, taskstreamd with "
                  f"HTTP_THREADS={cfg.http_threads}.", ""]
        lines += summary_table(results, cfg, pinned=False, fanout_only=True)
    lines += ["", "## Details", ""]
    lines += detail_tables(results)
    lines += storm_detail(results)
    lines += idle_detail(results)
    lines += cluster_detail(results)
    probs = problems_of(results)
    if probs:
        lines += ["", "### Problems seen by the harness", ""] + [f"- {p}" for p in probs]
    lines += ["", END_MARK]
    return "\n".join(lines) + "\n"


DOC_HEAD = """# Performance

How taskstreamd compares with nginx + nchan, the usual choice for SSE fan-out
from C, measured in one run on one machine by `make bench` (which runs
`bench/run.py --write`). How the figures are taken is in the docstring of
`bench/run.py`; the load client is `bench/sseload.c`.

"""


def write_doc(path, body):
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if BEGIN_MARK in old and END_MARK in old:
        head, rest = old.split(BEGIN_MARK, 1)
        tail = rest.split(END_MARK, 1)[1].lstrip("\n")
        text = head + body + ("\n" + tail if tail else "")
    else:
        text = DOC_HEAD + body
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

SCENARIOS = ("held", "fanout", "many", "submit", "shutdown", "storm", "idle100k", "cluster")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--taskstreamd", default=os.path.join(REPO, "build", "taskstreamd"))
    ap.add_argument("--sseload", default=os.path.join(REPO, "build", "sseload"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness only")
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    ap.add_argument("--no-nchan", action="store_true", help="taskstreamd only")
    ap.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                    help="fan-out: also run bench/floor.c at each taskstreamd step, for "
                    "\"CPU per delivery vs floor\" (default: on)")
    ap.add_argument("--floor-bin", help="the built bench/floor.c (default: floor next to "
                    "--sseload; make bench builds it)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and load to CPUs")
    ap.add_argument("--no-free", action="store_true",
                    help="skip the second fan-out run without pinning")
    ap.add_argument("--http-threads", type=int, default=2,
                    help="taskstreamd HTTP_THREADS (its default, 2)")
    ap.add_argument("--processes", type=int, default=1, help="sseload processes per scenario")
    ap.add_argument("--max-streams", type=int, default=19000)
    ap.add_argument("--pub-conns", type=int, default=4,
                    help="nchan publisher connections (sequences are checked per connection)")
    ap.add_argument("--all-steps", action="store_true",
                    help="fan-out: go on stepping after a step failed")
    ap.add_argument("--slow", type=float, default=1.0,
                    help="stretch every timeout (sanitizer builds)")
    ap.add_argument("--held", help="held-stream sizes, e.g. 1000,5000,max")
    ap.add_argument("--fanout", help="fan-out plan, e.g. '1000:10,100,1000;10000:5,50'")
    ap.add_argument("--many", help="many-task sizes, e.g. 100,1000")
    ap.add_argument("--storm", metavar="N:R",
                    help="connection storm: N streams, R runs per mode and thread count "
                    "(10000:20; smoke 200:2)")
    ap.add_argument("--storm-rate", type=float,
                    help="connection storm, paced mode: connects per second (5000)")
    ap.add_argument("--storm-threads", help="connection storm: taskstreamd HTTP_THREADS "
                    "values, a fresh server each (1,2)")
    ap.add_argument("--idle100k", type=int, metavar="N",
                    help="idle streams one taskstreamd holds, at most N (100000; smoke 300)")
    ap.add_argument("--cluster-fanout", metavar="N:R,R,...",
                    help="cluster: readers per replica and the events/s per stream stepped "
                    "through (1000:10,50,100,200,500,1000; smoke 10:20,50)")
    ap.add_argument("--window", type=float, help="measurement window of a fan-out step (s)")
    ap.add_argument("--perf", metavar="DIR",
                    help="fan-out: record each server with perf (call graphs) into DIR")
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--ts-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for taskstreamd (repeatable)")
    ap.add_argument("--render", metavar="JSON",
                    help="do not run: print (and --write) the tables of a saved --json run")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    ap.add_argument("--write", nargs="?", const=os.path.join(REPO, "docs", "performance.md"),
                    help="write the tables into this markdown file (docs/performance.md)")
    args = ap.parse_args(argv[1:])

    cfg = Config(args)
    if args.render:
        # tables from a saved run (after a change of the tables' layout)
        with open(args.render) as f:
            saved = json.load(f)
        cfg.main_pinned = saved.get("pinned", True)
        cfg.http_threads = saved.get("http_threads", cfg.http_threads)
        body = render(saved["results"], saved["facts"], cfg,
                      saved.get("argv") or ["bench/run.py", "--json", args.render])
        print(body)
        if args.write:
            write_doc(args.write, body)
            log(f"wrote {args.write}")
        shutil.rmtree(cfg.workdir, ignore_errors=True)
        return 0
    if args.held:
        cfg.plan["held"] = [x if x == "max" else int(x) for x in args.held.split(",")]
    if args.fanout:
        cfg.plan["fanout"] = {int(k): [int(r) for r in v.split(",")]
                              for k, v in (part.split(":") for part in args.fanout.split(";"))}
        cfg.plan["fanout_free"] = {}
    if args.many:
        cfg.plan["many"] = [int(x) for x in args.many.split(",")]
    if args.storm:
        try:
            n, r = (int(x) for x in args.storm.split(":"))
        except ValueError:
            ap.error("--storm wants N:R, e.g. 10000:20")
        if n < 1 or r < 1:
            ap.error("--storm wants N, R >= 1")
        cfg.plan["storm"] = (n, r)
    if args.storm_rate:
        cfg.plan["storm_rate"] = args.storm_rate
    if args.storm_threads:
        cfg.plan["storm_threads"] = [int(x) for x in args.storm_threads.split(",")]
    if args.idle100k:
        cfg.plan["idle100k"] = args.idle100k
    if args.cluster_fanout:
        try:
            n, steps = args.cluster_fanout.split(":")
            cfg.plan["cluster_fanout"] = (int(n), [int(r) for r in steps.split(",")])
        except ValueError:
            ap.error("--cluster-fanout wants N:R,R,..., e.g. 1000:10,100")
    if args.window:
        cfg.window = args.window
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    for path in (cfg.taskstreamd, cfg.sseload):
        if not os.access(path, os.X_OK):
            ap.error(f"{path} is not built (make build)")
    servers = ["taskstreamd"]
    if not args.no_nchan:
        if nchan_available():
            servers.append("nginx+nchan")
        else:
            log("nginx or the nchan module is missing (scripts/deps.sh bench): taskstreamd only")

    fanout_servers = list(servers)
    if args.floor and "fanout" in only:
        if os.access(cfg.floor, os.X_OK):
            fanout_servers.append("floor")
        else:
            log(f"{cfg.floor} is not built (make bench builds it): no fan-out floor")

    facts = machine_facts(cfg.taskstreamd)
    log(f"{facts['nproc']} CPUs, {facts['cpu']}; pinning {'on' if cfg.pin else 'off'}; "
        f"nofile {cfg.nofile}; work dir {cfg.workdir}")
    results = []
    started = time.monotonic()
    try:
        if "held" in only:
            scenario_held(cfg, servers, cfg.plan["held"], results)
        if "fanout" in only:
            scenario_fanout(cfg, fanout_servers, cfg.plan["fanout"], results)
            if cfg.pin and cfg.plan.get("fanout_free") and not args.no_free:
                cfg.set_pinning(False)
                try:
                    scenario_fanout(cfg, fanout_servers, cfg.plan["fanout_free"], results)
                finally:
                    cfg.set_pinning(True)
        if "many" in only:
            scenario_many(cfg, cfg.plan["many"], results)
        if "submit" in only:
            scenario_submit(cfg, results)
        if "shutdown" in only:
            scenario_shutdown(cfg, results)
        if "storm" in only:
            scenario_storm(cfg, servers, results)
        if "idle100k" in only:
            scenario_idle100k(cfg, cfg.plan["idle100k"], results)
        if "cluster" in only:
            scenario_cluster(cfg, servers, results)
    finally:
        elapsed = time.monotonic() - started
        log(f"done in {elapsed:.0f} s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"facts": facts, "results": results, "elapsed_s": elapsed,
                           "servers": servers, "fanout_servers": fanout_servers,
                           "pinned": bool(cfg.pin),
                           "http_threads": cfg.http_threads,
                           "argv": ["bench/run.py"] + argv[1:]}, f, indent=1)
        if args.keep:
            log(f"kept {cfg.workdir}")
        else:
            shutil.rmtree(cfg.workdir, ignore_errors=True)
    cmd = ["bench/run.py"] + argv[1:]
    body = render(results, facts, cfg, cmd)
    print(body)
    if args.write:
        write_doc(args.write, body)
        log(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
