"""The Debian packages, built from a copy of the tree with
`dpkg-buildpackage -us -uc -b` and installed on this machine with `dpkg -i`,
used as an operator and an embedder would:

- lintian, pedantic and with its informational tags, has nothing to say
  (debian/*.lintian-overrides gives the reason for each tag it silences);
- the packages hold what debian/ says, the library has a symbols file;
- postinst made the `taskstream` system user; `dpkg --verify` is clean;
- the installed unit passes `systemd-analyze verify`, and its exposure is at
  most 3.0;
- /usr/sbin/taskstreamd runs with the unit's settings and the packaged
  /etc/taskstream files, as the taskstream user without capabilities; the
  packaged `taskstream` runs its command task, and the daemon drains on
  SIGTERM;
- the example builds against libtaskstream-dev alone (shared and static)
  and runs; test_cli.py passes against /usr/bin/taskstream and
  /usr/sbin/taskstreamd;
- `dpkg --purge` takes every file away again, /etc/taskstream included.

Only in the plain leg (the packages are built with Debian's flags, not the
sanitizers'), as root, and only where taskstreamd is not installed already:
the test installs and purges the packages.
"""

import functools
import os
import re
import shutil
import signal
import subprocess

import pytest

from conftest import REPO, Daemon, base_env
from test_deploy import parse_unit, unit_env
from test_install import run_cli_tests, run_example, run_ok
from tshelpers import SANITIZE, scaled

PACKAGES = ("taskstreamd", "libtaskstream0", "libtaskstream-dev")
UNIT = "/lib/systemd/system/taskstreamd.service"

pytestmark = [
    pytest.mark.skipif(bool(SANITIZE), reason="the packages are built once, in the plain leg"),
    pytest.mark.skipif(os.geteuid() != 0, reason="dpkg -i needs root"),
]


@functools.lru_cache(maxsize=None)
def arch(variable="DEB_HOST_ARCH"):
    """amd64, or with DEB_HOST_MULTIARCH x86_64-linux-gnu (the library
    directory), on this machine."""
    return run_ok(["dpkg-architecture", f"-q{variable}"]).strip()


def libdir():
    return "/usr/lib/" + arch("DEB_HOST_MULTIARCH")


def _installed(package):
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", package],
                          capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout == "installed"


def copy_tree(dest):
    """The tree as a clean clone would have it, with uncommitted changes:
    tracked and untracked files, minus what .gitignore ignores."""
    files = run_ok(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                    "--exclude-standard"]).split("\0")
    for rel in filter(None, files):
        src = os.path.join(REPO, rel)
        if not os.path.lexists(src):  # deleted, not yet committed
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, rel), follow_symlinks=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """{package: .deb path, "changes": .changes path}."""
    for tool in ("dpkg-buildpackage", "lintian"):
        assert shutil.which(tool), f"{tool} is missing (scripts/deps.sh test installs it)"
    root = tmp_path_factory.mktemp("debian")
    src = root / "taskstream"
    copy_tree(str(src))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TS_", "ASAN_", "UBSAN_", "TSAN_", "CFLAGS", "LDFLAGS"))}
    env["DEB_BUILD_OPTIONS"] = "parallel=2"
    run_ok(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=str(src), env=env, timeout=scaled(600))
    found = {"changes": os.path.join(root, f"taskstream_0.1.0_{arch()}.changes")}
    for p in PACKAGES:
        found[p] = os.path.join(root, f"{p}_0.1.0_{arch()}.deb")
    for path in found.values():
        assert os.path.exists(path), (path, sorted(os.listdir(root)))
    return found


@pytest.fixture(scope="module")
def installed(built):
    already = [p for p in PACKAGES if _installed(p)]
    if already:
        pytest.skip(f"{', '.join(already)} installed on this machine already; the test would "
                    "replace and purge it (dpkg --purge it first)")
    had_user = subprocess.run(["getent", "passwd", "taskstream"], capture_output=True).returncode == 0
    try:
        run_ok(["dpkg", "-i", *(built[p] for p in PACKAGES)], timeout=scaled(120))
        yield built
    finally:
        subprocess.run(["dpkg", "--purge", *PACKAGES], capture_output=True, timeout=scaled(120))
        # Debian leaves a package's system user behind on purge; the test
        # leaves the machine as it found it.
        if not had_user:
            subprocess.run(["deluser", "--system", "taskstream"], capture_output=True)


def test_lintian_is_clean(built):
    proc = subprocess.run(["lintian", "--pedantic", "--display-info", "--fail-on",
                           "error,warning,info,pedantic", built["changes"]],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=scaled(300))
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def _contents(deb):
    out = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True, check=True).stdout
    return {line.split()[5].lstrip(".") for line in out.splitlines()}


def test_packages_hold_what_debian_says(built):
    daemon = _contents(built["taskstreamd"])
    for path in ("/usr/sbin/taskstreamd", "/usr/bin/taskstream", UNIT,
                 "/etc/taskstream/taskstream.env", "/etc/taskstream/commands.json",
                 "/usr/share/man/man8/taskstreamd.8.gz", "/usr/share/man/man1/taskstream.1.gz",
                 "/usr/share/bash-completion/completions/taskstream",
                 "/usr/share/doc/taskstreamd/streams.md.gz"):
        assert path in daemon, path
    lib = _contents(built["libtaskstream0"])
    assert {f"{libdir()}/libtaskstream.so.0.1.0", f"{libdir()}/libtaskstream.so.0"} <= lib
    assert not any(p.endswith((".h", ".a", ".pc")) or p.endswith("libtaskstream.so") for p in lib)
    dev = _contents(built["libtaskstream-dev"])
    for path in ("/usr/include/taskstream.h", f"{libdir()}/libtaskstream.so",
                 f"{libdir()}/libtaskstream.a", f"{libdir()}/pkgconfig/taskstream.pc",
                 f"{libdir()}/cmake/taskstream/taskstreamConfig.cmake",
                 "/usr/share/doc/libtaskstream-dev/examples/embed_countdown.c"):
        assert path in dev, path

    # The configuration is the operator's: dpkg keeps their edits.
    conffiles = run_ok(["dpkg-deb", "--info", built["taskstreamd"], "conffiles"]).split()
    assert sorted(conffiles) == ["/etc/taskstream/commands.json", "/etc/taskstream/taskstream.env"]
    # Every exported symbol, at the version node of src/libtaskstream.map.
    symbols = run_ok(["dpkg-deb", "--info", built["libtaskstream0"], "symbols"])
    assert symbols.startswith("libtaskstream.so.0 libtaskstream0 #MINVER#\n"
                              "* Build-Depends-Package: libtaskstream-dev\n"), symbols[:200]
    names = re.findall(r"^ (ts_\w+)@TASKSTREAM_0 0\.1\.0$", symbols, re.M)
    with open(os.path.join(REPO, "src", "libtaskstream.map")) as f:
        exported = re.findall(r"^\s+(ts_\w+);", f.read(), re.M)
    assert sorted(names) == sorted(exported)
    shlibs = run_ok(["dpkg-deb", "--field", built["taskstreamd"], "Depends"])
    assert "libtaskstream0" not in shlibs, "the daemon links the library statically"
    assert "adduser" in shlibs and "libsystemd0" in shlibs, shlibs


def test_installed_user_config_and_unit(installed):
    entry = run_ok(["getent", "passwd", "taskstream"]).strip().split(":")
    assert int(entry[2]) < 1000 and entry[5] == "/nonexistent", entry
    assert entry[6] in ("/usr/sbin/nologin", "/bin/false"), entry
    assert run_ok(["dpkg", "--verify", *PACKAGES]) == ""
    for path in ("/etc/taskstream/taskstream.env", "/etc/taskstream/commands.json"):
        st = os.stat(path)
        assert st.st_uid == 0 and st.st_mode & 0o022 == 0, (path, oct(st.st_mode))

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    run_ok([analyze, "verify", UNIT], timeout=scaled(60))
    out = run_ok([analyze, "security", "--offline=true", "--no-pager", UNIT], timeout=scaled(60))
    m = re.search(r"Overall exposure level for taskstreamd\.service: (\d+\.\d)", out)
    assert m and float(m.group(1)) <= 3.0, out[-1500:]
    print(f"systemd-analyze security: {m.group(1)}")


def _env_file(path):
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                key, sep, value = line.partition("=")
                assert sep, line
                env[key] = value
    return env


def _submit_and_follow(url):
    """The packaged client runs the packaged command: system-info, whose
    output is uname's."""
    cli = "/usr/bin/taskstream"
    assert "system-info" in run_ok([cli, "--url", url, "commands"])
    out = run_ok([cli, "--url", url, "submit", "command", "system-info", "--follow"],
                 timeout=scaled(30))
    assert os.uname().release in out, out


def test_daemon_runs_as_packaged(installed, workdir):
    """The unit's settings and /etc/taskstream as installed, the unit's user
    without capabilities or a way to gain them (the part of the sandbox a
    test without systemd can give); only the listeners move to free ports."""
    service = parse_unit(UNIT)["Service"]
    opts = dict(service)
    env = unit_env(service)
    env_file = opts["EnvironmentFile"].lstrip("-")
    env.update(_env_file(env_file))
    env.update(LISTEN="127.0.0.1:0", ADMIN_LISTEN="127.0.0.1:0")
    as_user = ["setpriv", f"--reuid={opts['User']}", f"--regid={opts['Group']}", "--init-groups",
               "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
    d = Daemon(opts["ExecStart"], base_env(env), (), os.path.join(workdir, "packaged.stderr"),
               prefix=as_user)
    try:
        d.wait_listening(scaled(10))
        assert d.readyz() == 200
        _submit_and_follow(d.url)
        d.signal(signal.SIGTERM)
        assert d.wait_exit(scaled(15)) == 0
    finally:
        problems = d.finish()
    assert not problems, problems


def test_example_against_the_dev_package(installed, workdir):
    example = "/usr/share/doc/libtaskstream-dev/examples/embed_countdown.c"
    flags = run_ok(["pkg-config", "--cflags", "--libs", "taskstream"]).split()
    # A /usr install names /usr: pkg-config leaves the system directories out.
    assert not any(f.startswith(("-I/usr/lib", "-L/usr/lib")) or f == "-I/usr/include"
                   for f in flags), flags
    shared = os.path.join(workdir, "embed_countdown_deb")
    run_ok(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", example, "-o", shared, *flags])
    # /lib/<multiarch> or /usr/lib/<multiarch> (merged /usr): the system's
    # library either way, not a build tree's.
    run_example(shared, arch("DEB_HOST_MULTIARCH") + "/libtaskstream.so.0", workdir, "deb-shared")
    # The static archive, with the shared libraries of what it uses
    # (`pkg-config --static` would also want libjwt's own private -lb64,
    # which Debian 12's libjwt-dev does not bring).
    deps = run_ok(["pkg-config", "--libs", "taskstream", "hiredis", "libjwt", "libcrypto"]).split()
    static = os.path.join(workdir, "embed_countdown_deb_static")
    run_ok(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", example, "-o", static,
            *run_ok(["pkg-config", "--cflags", "taskstream"]).split(),
            "-Wl,-Bstatic", "-ltaskstream", "-Wl,-Bdynamic",
            *(f for f in deps if f != "-ltaskstream"), "-pthread", "-lm"])
    run_example(static, None, workdir, "deb-static")


def test_cli_tests_against_the_packages(installed):
    run_cli_tests("/usr/bin/taskstream", "/usr/sbin/taskstreamd")


def test_purge_takes_every_file_away(installed):
    """Last: the fixture purges again at teardown, which is then a no-op."""
    files = [p for pkg in PACKAGES
             for p in run_ok(["dpkg-query", "-L", pkg]).splitlines()
             if not os.path.isdir(p)]  # files and file links; /lib may be a link to a directory
    assert "/usr/sbin/taskstreamd" in files and UNIT in files
    run_ok(["dpkg", "--purge", *PACKAGES], timeout=scaled(120))
    assert not any(_installed(p) for p in PACKAGES)
    left = [p for p in files if os.path.lexists(p)]
    assert left == [], left
    assert not os.path.exists("/etc/taskstream"), os.listdir("/etc/taskstream")
