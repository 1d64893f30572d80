"""The image of ./Dockerfile, built for real and run as a container runtime
would run it.

- The base images come from Debian itself: `debootstrap --variant=minbase
  bookworm` (from the machine's own Debian mirror) imported as debian:12 and
  debian:12-slim into a buildah store of the test's own, so nothing is
  pulled from an image registry (none is reachable here) and nothing
  outside the test's directory is touched.
- `buildah bud` builds the Dockerfile as it is (both stages, .dockerignore,
  dpkg-buildpackage inside); the image's config says USER 65532:65532 and
  the tini entrypoint.
- The final stage holds the daemon, the client, tini and the packaged user,
  and neither the build tools nor the .deb files nor apt's lists.
- The image runs as a container does: its root file system, a PID namespace
  of its own with tini as PID 1, its user, its environment and entrypoint
  (podman's runtime, crun, refuses this machine's mixed cgroup setup, so
  `unshare` does a runtime's part). Only the listeners move to loopback.
  A command task runs; SIGTERM to PID 1 drains the daemon and the container
  exits 0.

Only in the plain leg (the image holds the packages, built with Debian's
flags), as root.
"""

import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from conftest import Daemon
from test_debian import copy_tree, libdir
from test_install import run_ok
from tshelpers import SANITIZE, SSEStream, http, scaled

pytestmark = [
    pytest.mark.skipif(bool(SANITIZE), reason="the image is built once, in the plain leg"),
    pytest.mark.skipif(os.geteuid() != 0, reason="debootstrap and the image's root need root"),
]

TAG = "localhost/taskstream:test"


def _mirror():
    """The Debian mirror apt uses here (deb822 or one-line sources)."""
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or \
            re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm\b", text, re.M)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


class Buildah:
    """buildah with a store of its own under `root`."""

    def __init__(self, root):
        self.flags = ["--root", os.path.join(root, "storage"), "--runroot", os.path.join(root, "run"),
                      "--storage-driver", "vfs"]

    def __call__(self, *args, timeout=None):
        return run_ok(["buildah", *self.flags, *args], timeout=timeout or scaled(120)).strip()

    def mount(self, image):
        """A working container of `image`, and where its root is mounted."""
        ctr = self("from", "--pull-never", image).splitlines()[-1]
        return ctr, self("mount", ctr).splitlines()[-1]


@pytest.fixture(scope="module")
def buildah(tmp_path_factory):
    for tool in ("buildah", "debootstrap", "unshare"):
        assert shutil.which(tool), f"{tool} is missing (scripts/deps.sh test installs it)"
    root = str(tmp_path_factory.mktemp("image"))
    b = Buildah(root)
    yield b
    subprocess.run(["buildah", *b.flags, "rm", "--all"], capture_output=True)
    subprocess.run(["buildah", *b.flags, "rmi", "--all", "--force"], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image(buildah, tmp_path_factory):
    """{"config": the image's OCI config, "root": its file system}."""
    work = tmp_path_factory.mktemp("image-build")
    rootfs = str(work / "rootfs")
    run_ok(["debootstrap", "--variant=minbase", "bookworm", rootfs, _mirror()], timeout=scaled(600))
    ctr, mnt = buildah.mount("scratch")
    tar = subprocess.Popen(["tar", "-C", rootfs, "-cf", "-", "."], stdout=subprocess.PIPE)
    run_ok(["tar", "-C", mnt, "-xpf", "-"], stdin=tar.stdout, timeout=scaled(120))
    assert tar.wait() == 0
    buildah("commit", "--quiet", ctr, "localhost/debian:12")
    buildah("tag", "localhost/debian:12", "localhost/debian:12-slim")
    buildah("rm", ctr)
    shutil.rmtree(rootfs)

    src = str(work / "taskstream")
    copy_tree(src)
    buildah("bud", "--isolation", "chroot", "--pull=never", "--network", "host", "--layers=false",
            "-t", TAG, src, timeout=scaled(1200))
    config = json.loads(buildah("inspect", "--type", "image", TAG))["OCIv1"]["config"]
    _, root = buildah.mount(TAG)
    return {"config": config, "root": root}


def test_image_config(image):
    c = image["config"]
    assert c["User"] == "65532:65532"
    assert c["Entrypoint"] == ["/usr/bin/tini", "--", "/usr/sbin/taskstreamd"]
    assert not c.get("Cmd"), c.get("Cmd")
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["LISTEN"] == "0.0.0.0:8080" and env["ADMIN_LISTEN"] == "0.0.0.0:9090"
    assert sorted(c["ExposedPorts"]) == ["8080/tcp", "9090/tcp"]


def test_image_contents(image):
    root = image["root"]
    for path in ("usr/sbin/taskstreamd", "usr/bin/taskstream", "usr/bin/tini",
                 "etc/taskstream/commands.json", libdir()[1:] + "/libtaskstream.so.0"):
        assert os.path.exists(os.path.join(root, path)), path
    with open(os.path.join(root, "etc", "passwd")) as f:
        assert re.search(r"^taskstream:x:65532:65532:", f.read(), re.M)
    # The build stage's tools, the packages and apt's lists stay out.
    for path in ("usr/bin/gcc", "usr/bin/cmake", "usr/bin/dpkg-buildpackage", "src"):
        assert not os.path.exists(os.path.join(root, path)), path
    assert not [f for f in os.listdir(os.path.join(root, "tmp")) if f.endswith(".deb")]
    assert os.listdir(os.path.join(root, "var", "lib", "apt", "lists")) in ([], ["partial"])
    size = run_ok(["du", "-sm", root]).split()[0]
    print(f"image file system: {size} MiB")


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        return re.search(rf"^{field}:\s*(.+)$", f.read(), re.M).group(1).split()


def test_container_runs_drains_and_exits_zero(image, workdir):
    c, root = image["config"], image["root"]
    env = dict(e.split("=", 1) for e in c["Env"])
    env.update(LISTEN="127.0.0.1:0", ADMIN_LISTEN="127.0.0.1:0")
    uid, gid = c["User"].split(":")
    runtime = ["unshare", "--pid", "--fork", "--mount-proc=/proc", f"--root={root}",
               f"--setgid={gid}", f"--setuid={uid}"]
    entry = c["Entrypoint"]
    d = Daemon(entry[0], env, entry[1:], os.path.join(workdir, "container.stderr"), prefix=runtime)
    try:
        d.wait_listening(scaled(10))
        (init,) = _children(d.pid)
        (daemon,) = _children(init)
        assert _status(init, "NSpid")[-1] == "1", "tini is the container's PID 1"
        assert _status(daemon, "Uid") == [uid] * 4 and _status(daemon, "Gid") == [gid] * 4
        assert _status(daemon, "CapEff") == ["0000000000000000"]
        assert os.readlink(f"/proc/{daemon}/exe") == os.path.join(root, "usr/sbin/taskstreamd")

        r = http("POST", d.url + "/v1/tasks", {"kind": "command", "command": "system-info"})
        assert r.status == 202, r
        with SSEStream(f"{d.url}/v1/tasks/{r.json()['id']}/events") as s:
            events = s.read_all(scaled(15))
        assert any(os.uname().release in e.data for e in events), events
        assert events[-1].type == "end" and events[-1].json()["status"] == "succeeded", events[-1]
        assert http("GET", d.admin_url + "/readyz").status == 200

        # What `docker stop` and the kubelet do: SIGTERM to PID 1.
        os.kill(init, signal.SIGTERM)
        assert d.wait_exit(scaled(15)) == 0
        assert d.logs("shutdown complete", reason="signal"), d.raw_stderr()[-2000:]
    finally:
        problems = d.finish()
    assert not problems, problems
