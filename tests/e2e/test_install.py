"""What `cmake --install` (and so `make install` and the packages) puts on a
machine, used as a user would: the example built against the installed
header and library only, once with `pkg-config --cflags --libs taskstream`
and once with CMake's `find_package(taskstream)`, then run and drained; and
the CLI's whole test file run against the installed `taskstream` and
`taskstreamd`."""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import REPO, Daemon, base_env
from tshelpers import SANITIZE, SSEStream, http, scaled

BUILD = os.environ.get("TS_BUILD_DIR") or os.path.join(REPO, "build")


def _compiler():
    with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
        m = re.search(r"^CMAKE_C_COMPILER:\w+=(.+)$", f.read(), re.M)
    return m.group(1) if m else "cc"


def run_ok(cmd, **kw):
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    p = str(root / "prefix")
    run_ok(["cmake", "--install", BUILD, "--prefix", p])
    return p


def _libdir(prefix):
    for d in ("lib", "lib64", os.path.join("lib", "x86_64-linux-gnu")):
        if os.path.exists(os.path.join(prefix, d, "libtaskstream.so.0")):
            return os.path.join(prefix, d)
    pytest.fail(f"no libtaskstream.so.0 under {prefix}")


def _sanitize_flags():
    return [f"-fsanitize={SANITIZE}", "-fno-omit-frame-pointer"] if SANITIZE else []


def test_installed_files(prefix):
    lib = _libdir(prefix)
    for rel in ("sbin/taskstreamd", "bin/taskstream", "include/taskstream.h",
                "share/man/man8/taskstreamd.8", "share/man/man1/taskstream.1",
                "share/bash-completion/completions/taskstream"):
        assert os.path.exists(os.path.join(prefix, rel)), rel
    for rel in ("libtaskstream.so", "libtaskstream.a", "pkgconfig/taskstream.pc",
                "cmake/taskstream/taskstreamConfig.cmake"):
        assert os.path.exists(os.path.join(lib, rel)), rel
    assert os.readlink(os.path.join(lib, "libtaskstream.so.0")) == "libtaskstream.so.0.1.0"
    # Only the daemon needs libsystemd.
    needed = run_ok(["objdump", "-p", os.path.join(lib, "libtaskstream.so.0")])
    assert "libsystemd" not in needed
    # The man pages render without a warning.
    for page in ("share/man/man8/taskstreamd.8", "share/man/man1/taskstream.1"):
        out = run_ok(["groff", "-man", "-ww", "-z", os.path.join(prefix, page)])
        assert out == "", out


def _build_with_pkg_config(prefix, out):
    lib = _libdir(prefix)
    env = dict(os.environ, PKG_CONFIG_PATH=os.path.join(lib, "pkgconfig"))
    flags = run_ok(["pkg-config", "--cflags", "--libs", "taskstream"], env=env).split()
    assert any(f.startswith("-I") and "/include" in f for f in flags), flags
    run_ok([_compiler(), "-std=c11", "-Wall", "-Wextra", "-Werror", *_sanitize_flags(),
          os.path.join(REPO, "examples", "embed_countdown.c"), "-o", out, *flags,
          f"-Wl,-rpath,{lib}"], env=env)


def _build_with_cmake(prefix, workdir):
    src = os.path.join(workdir, "consumer")
    os.makedirs(src, exist_ok=True)
    shutil.copy(os.path.join(REPO, "examples", "embed_countdown.c"), src)
    with open(os.path.join(src, "CMakeLists.txt"), "w") as f:
        f.write("cmake_minimum_required(VERSION 3.25)\n"
                "project(consumer C)\n"
                "find_package(taskstream 0.1 REQUIRED)\n"
                "add_executable(embed_countdown embed_countdown.c)\n"
                "target_link_libraries(embed_countdown PRIVATE taskstream::taskstream)\n")
        if SANITIZE:
            f.write(f"target_compile_options(embed_countdown PRIVATE -fsanitize={SANITIZE})\n"
                    f"target_link_options(embed_countdown PRIVATE -fsanitize={SANITIZE})\n")
    build = os.path.join(workdir, "consumer-build")
    run_ok(["cmake", "-S", src, "-B", build, "-G", "Ninja", f"-DCMAKE_C_COMPILER={_compiler()}",
          f"-DCMAKE_PREFIX_PATH={prefix}"])
    run_ok(["cmake", "--build", build])
    return os.path.join(build, "embed_countdown")


def run_example(path, lib, workdir, name):
    """Run the built example (linked against `lib`, the installed
    libtaskstream.so.0, or None when linked statically): it streams a
    countdown and drains on SIGTERM."""
    libs = run_ok(["ldd", path])
    if lib is None:
        assert "libtaskstream" not in libs, libs
    else:
        # The program uses the installed library, not the build tree's.
        assert lib in libs, libs
    d = Daemon(path, base_env(), (), os.path.join(workdir, f"{name}.stderr"))
    try:
        d.wait_listening(scaled(10))
        r = http("POST", d.url + "/v1/tasks", {"kind": "countdown", "from": 5})
        assert r.status == 202, r
        with SSEStream(f"{d.url}/v1/tasks/{r.json()['id']}/events") as s:
            events = s.read_all(scaled(10))
        assert [e.json()["remaining"] for e in events if e.type == "count"] == [5, 4, 3, 2, 1]
        assert events[-1].json() == {"status": "succeeded", "reason": None, "exit_code": 0}
        d.signal(signal.SIGTERM)
        assert d.wait_exit(scaled(15)) == 0
    finally:
        problems = d.finish()
    assert not problems, problems


def test_example_with_pkg_config(prefix, workdir):
    out = os.path.join(workdir, "embed_countdown_pc")
    _build_with_pkg_config(prefix, out)
    run_example(out, os.path.join(_libdir(prefix), "libtaskstream.so.0"), workdir, "pkgconfig")


def test_example_with_find_package(prefix, workdir):
    run_example(_build_with_cmake(prefix, workdir),
                 os.path.join(_libdir(prefix), "libtaskstream.so.0"), workdir, "cmake")


def run_cli_tests(cli, daemon):
    """tests/e2e/test_cli.py with nothing of the build tree: the client
    `cli` against the daemon `daemon`."""
    env = {k: v for k, v in os.environ.items() if k not in ("TS_BUILD_DIR", "TS_OPENAPI_RECORD")}
    env.update(TS_CLI=cli, TASKSTREAMD=daemon)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           os.path.join(REPO, "tests", "e2e", "test_cli.py")],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=scaled(300))
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert re.search(r"\b\d+ passed\b", proc.stdout), proc.stdout[-2000:]


def test_cli_tests_against_installed_files(prefix):
    run_cli_tests(os.path.join(prefix, "bin", "taskstream"), os.path.join(prefix, "sbin", "taskstreamd"))
