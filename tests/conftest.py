"""Shared fixtures: every test gets its own state directory and config path under tmp_path,
and drives the real `ctr` command line in a subprocess (real mounts, real namespaces)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0
BUSYBOX = shutil.which("busybox")


def busybox_is_static() -> bool:
    if not BUSYBOX:
        return False
    out = subprocess.run(["file", "-L", BUSYBOX], capture_output=True, text=True).stdout if shutil.which("file") else ""
    if out:
        return "statically linked" in out or "static-pie" in out
    with open(BUSYBOX, "rb") as f:
        return b"/lib64/ld-linux" not in f.read(4096)


needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root for real mounts (CI runs as root)")
needs_busybox = pytest.mark.skipif(not busybox_is_static(), reason="needs busybox-static (apt-get install busybox-static)")


@dataclass
class Result:
    code: int
    out: str
    err: str


class Ctr:
    """Runs `python -m ctr` against one private state directory."""

    def __init__(self, root: Path, config: Path):
        self.root = root
        self.env = dict(os.environ, CTR_ROOT=str(root), CTR_CONFIG=str(config), NO_COLOR="1")
        self.env.pop("CTR_DEBUG", None)

    def __call__(self, *args: str, input: str | None = None, check: bool | int = False, timeout: float = 120) -> Result:
        p = subprocess.run([sys.executable, "-m", "ctr", *args], capture_output=True, text=True,
                           env=self.env, input=input, timeout=timeout,
                           stdin=None if input is not None else subprocess.DEVNULL)
        r = Result(p.returncode, p.stdout, p.stderr)
        if check is not False:
            want = 0 if check is True else check
            assert r.code == want, f"ctr {' '.join(args)} -> {r.code}\nstdout: {r.out}\nstderr: {r.err}"
        return r

    def ok(self, *args: str, **kw) -> str:
        return self(*args, check=True, **kw).out

    def cleanup(self) -> None:
        """Remove every container this test's store still has (kills, unmounts, deletes)."""
        if not (self.root / "containers").is_dir():
            return
        ids = [p.name for p in (self.root / "containers").iterdir()]
        if ids:
            self("rm", "-f", *ids)


@pytest.fixture
def ctr(tmp_path: Path):
    c = Ctr(tmp_path / "root", tmp_path / "config.yaml")
    yield c
    c.cleanup()


def process_running(cid: str, *argv: str) -> int | None:
    """The host pid of a process of container `cid` running exactly `argv`, if any."""
    from ctr.monitor import container_processes

    want = "".join(a + "\0" for a in argv).encode()
    for pid in container_processes(cid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == want:
                return pid
        except OSError:
            pass
    return None


def make_rootfs(dest: Path) -> Path:
    """A tiny root filesystem: static busybox with applet links, passwd/group, some data."""
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in ("sh", "echo", "cat", "ls", "rm", "mkdir", "mv", "ln", "chmod", "touch", "id",
                   "true", "false", "sleep", "kill", "env", "pwd", "hostname", "stat", "cp", "rmdir",
                   "printf", "sync", "test", "uname", "wc", "head", "dd", "truncate", "chown",
                   "find", "md5sum", "readlink", "xargs", "sort", "mkfifo", "tail", "mount", "timeout", "ifconfig"):
        os.symlink("busybox", dest / "bin" / applet)
    (dest / "etc").mkdir()
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (dest / "root").mkdir(mode=0o700)
    return dest


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    if not busybox_is_static():
        pytest.skip("needs busybox-static (apt-get install busybox-static)")
    return make_rootfs(tmp_path / "rootfs")


@pytest.fixture
def busybox_image(ctr: Ctr, rootfs: Path) -> str:
    """The tiny root filesystem imported as `bb:latest`."""
    ctr.ok("image", "import", str(rootfs), "bb")
    return "bb"


# ----------------------------------------------------------------------------- the test kernel
# qemu boots (the microvm driver, qemu VMs) need root, qemu-system-x86_64, a static busybox and a
# kernel that scripts/fetch-kernel.sh put into $CTR_TEST_KERNEL_DIR; CI provides them all.
KERNEL_DIR = Path(os.environ.get("CTR_TEST_KERNEL_DIR", "/var/cache/ctr-test-kernel"))


def qemu_missing(mke2fs: bool = False) -> str | None:
    """Why qemu cannot boot a guest here (None: it can); `mke2fs` for qemu VMs' disks."""
    from ctr.errors import DriverError
    from ctr.qemu import find_busybox, list_kernels

    if not IS_ROOT:
        return "qemu boots need root (CI runs as root)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (apt-get install --no-install-recommends qemu-system-x86)"
    if mke2fs and shutil.which("mke2fs") is None:
        return "mke2fs is not installed (apt-get install e2fsprogs)"
    if not busybox_is_static():
        return "needs busybox-static (apt-get install busybox-static)"
    try:
        find_busybox()
    except DriverError as e:
        return f"{e.message} ({e.hint})"
    if not list_kernels(KERNEL_DIR):
        return f"no test kernel in {KERNEL_DIR} (run scripts/fetch-kernel.sh {KERNEL_DIR})"
    return None


def guest_kernel():
    """The test kernel (`ctr.qemu.Kernel`: image, modules, release); check `qemu_missing` first."""
    from ctr.qemu import list_kernels

    return list_kernels(KERNEL_DIR)[0]


def import_kernel(ctr: Ctr) -> None:
    """`ctr system kernel import` the test kernel into `ctr`'s store (what the microvm driver
    boots when no $CTR_KERNEL says otherwise)."""
    kernel = guest_kernel()
    ctr.env.pop("CTR_KERNEL", None)
    ctr.ok("system", "kernel", "import", str(kernel.image),
           *(["--modules", str(kernel.modules)] if kernel.modules else []))


@pytest.fixture(scope="session")
def qemu_kernel():
    """The test kernel; the test skips, saying why, where qemu cannot boot a guest."""
    reason = qemu_missing()
    if reason:
        print(f"skipping qemu boots: {reason}")
        pytest.skip(reason)
    return guest_kernel()
