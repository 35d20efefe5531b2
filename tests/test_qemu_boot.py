"""Real qemu boots (TCG here, KVM where it works): exit codes, output streams, the guest's
own kernel, env/workdir/user, volumes, stdin, signals, panics and hangs.

Needs qemu-system-x86_64, a static busybox and a kernel imported by
`scripts/fetch-kernel.sh` into $CTR_TEST_KERNEL_DIR (default /var/cache/ctr-test-kernel);
skips, saying which is missing, only when one genuinely is.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import KERNEL_DIR, qemu_missing

from ctr.errors import DriverError
from ctr.qemu import (GuestConfig, HostVolume, RunningVM, base_initramfs, boot_and_run,
                      find_busybox, list_kernels, probe_accelerator)

pytestmark = pytest.mark.qemu

APPLETS = ("sh", "true", "false", "echo", "cat", "uname", "hostname", "id", "pwd", "sleep", "kill",
           "touch", "ls", "env", "head", "grep")


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    reason = qemu_missing()
    if reason:
        print(f"skipping qemu boots: {reason}")
        pytest.skip(reason)
    kernel = list_kernels(KERNEL_DIR)[0]
    cache = tmp_path_factory.mktemp("qemu-cache")
    base = base_initramfs(kernel, cache)
    accel = probe_accelerator(kernel, base, cache / "accel.json")
    print(f"qemu boots use kernel {kernel.release}, accelerator {accel.accel}: {accel.reason}")
    return kernel, base, accel.accel


@pytest.fixture
def rootfs(tmp_path):
    """A container root: static busybox with applet links, as an image would have."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(find_busybox(), root / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", root / "bin" / a)
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (root / d).mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "notexec").write_text("not a program\n")
    return root


def run(vm, root, *argv, timeout=120.0, **kw):
    kernel, base, accel = vm
    out, err = io.BytesIO(), io.BytesIO()
    pids: list[int] = []
    user_start = kw.pop("on_start", None)

    def started(handle: RunningVM) -> None:
        pids.append(handle.pid)
        if user_start:
            user_start(handle)

    guest_kw = {k: kw.pop(k) for k in list(kw) if k in ("env", "workdir", "uid", "gid", "hostname")}
    try:
        result = boot_and_run(GuestConfig(argv=tuple(argv), **guest_kw), kernel=kernel,
                              initramfs=base, root=root, accel=accel, timeout=timeout,
                              stdout=out, stderr=err, on_start=started, **kw)
    finally:
        for pid in pids:  # qemu never outlives boot_and_run
            assert not Path(f"/proc/{pid}").exists(), f"qemu {pid} still running"
    return result.exit_code, out.getvalue().decode(), err.getvalue().decode()


@pytest.mark.parametrize("argv,code", [
    (("true",), 0),
    (("sh", "-c", "exit 3"), 3),
    (("no-such-command",), 127),
    (("/etc/notexec",), 126),
    (("sh", "-c", "kill -TERM $$"), 128 + 15),
], ids=["0", "3", "127-not-found", "126-not-executable", "143-signal"])
def test_exit_code_passthrough(vm, rootfs, argv, code):
    assert run(vm, rootfs, *argv)[0] == code


def test_stdout_and_stderr_are_separate(vm, rootfs):
    code, out, err = run(vm, rootfs, "sh", "-c",
                         "echo out1; echo err1 >&2; echo out2 >/dev/stdout; echo err2 >/dev/stderr")
    assert (code, out, err) == (0, "out1\nout2\n", "err1\nerr2\n")


def test_guest_has_its_own_kernel_and_pid_1(vm, rootfs):
    code, out, _ = run(vm, rootfs, "sh", "-c", "uname -r; hostname; head -1 /proc/1/cmdline; echo; "
                       "grep -c ^processor /proc/cpuinfo", hostname="ctr-guest")
    release, hostname, init, cpus = out.split("\n")[:4]
    assert code == 0
    assert release == vm[0].release and release != os.uname().release
    assert hostname == "ctr-guest"
    assert "init" in init  # PID 1 is ctr's init, not a host process
    assert cpus == "1"


def test_env_workdir_user_and_writes_land_in_root(vm, rootfs):
    code, out, err = run(vm, rootfs, "sh", "-c", 'echo "$FOO|$PATH"; pwd; id -u; id -g; touch /tmp/made-here',
                         env=(("FOO", "a b 'c'"), ("PATH", "/bin")), workdir="/work/dir",
                         uid=1000, gid=1000)
    assert (code, err) == (0, "")
    assert out.split("\n")[:4] == ["a b 'c'|/bin", "/work/dir", "1000", "1000"]
    assert (rootfs / "work" / "dir").is_dir()  # a missing workdir is created, as docker does
    made = rootfs / "tmp" / "made-here"
    assert made.is_file()
    if os.geteuid() == 0:  # passthrough: the file has the guest's owner on the host
        assert (made.stat().st_uid, made.stat().st_gid) == (1000, 1000)


def test_volumes(vm, rootfs, tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "hello").write_text("from host\n")
    code, out, err = run(vm, rootfs, "sh", "-c",
                         "cat /in/hello; echo x > /out/new && echo wrote; echo y > /in/no || echo ro",
                         volumes=[HostVolume(rw, "/out"), HostVolume(ro, "/in", readonly=True)])
    assert code == 0 and out == "from host\nwrote\nro\n"
    assert (rw / "new").read_text() == "x\n" and not (ro / "no").exists()


def test_stdin_is_forwarded(vm, rootfs):
    r, w = os.pipe()
    os.write(w, b"line one\nline two\n")
    os.close(w)
    try:
        code, out, _ = run(vm, rootfs, "cat", stdin=r)
    finally:
        os.close(r)
    assert (code, out) == (0, "line one\nline two\n")


def test_large_output_while_stdin_is_unread(vm, rootfs, tmp_path):
    """A regular file as stdin that the guest never reads must not stall 2 MB of output."""
    big = tmp_path / "in"
    big.write_bytes(b"x" * (1 << 20))
    with open(big, "rb") as f:
        code, out, _ = run(vm, rootfs, "head", "-c", "2000000", "/dev/zero", stdin=f)
    assert code == 0 and len(out) == 2000000


def test_stdin_is_empty_by_default(vm, rootfs):
    assert run(vm, rootfs, "cat")[:2] == (0, "")


def test_background_process_does_not_hold_the_vm(vm, rootfs):
    start = time.monotonic()
    code, out, _ = run(vm, rootfs, "sh", "-c", "sleep 300 & echo started", timeout=60)
    assert (code, out) == (0, "started\n")
    assert time.monotonic() - start < 60


def test_signal_through_control_port(vm, rootfs):
    code, _, _ = run(vm, rootfs, "sleep", "60", on_start=lambda h: h.signal(15), timeout=60)
    assert code == 128 + 15


def test_kernel_panic_is_a_driver_error(vm, rootfs):
    start = time.monotonic()
    with pytest.raises(DriverError) as e:
        run(vm, rootfs, "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 60", timeout=60)
    assert "panic" in e.value.message
    assert time.monotonic() - start < 60


def test_hang_ends_within_timeout_and_qemu_is_gone(vm, rootfs):
    start = time.monotonic()
    with pytest.raises(DriverError) as e:
        run(vm, rootfs, "sleep", "600", timeout=10)
    elapsed = time.monotonic() - start
    assert "did not finish within 10 s" in e.value.message
    assert 10 <= elapsed < 20


def test_boot_hang_ends_with_boot_timeout(vm, rootfs):
    """A guest that never gets to start the command (here PID 1 blocks reading the
    console) is stopped after boot_timeout, even with no overall timeout."""
    start = time.monotonic()
    with pytest.raises(DriverError) as e:
        run(vm, rootfs, "true", timeout=None, boot_timeout=8, cmdline_extra=("rdinit=/bin/cat",))
    assert "did not start the command within 8 s" in e.value.message
    assert time.monotonic() - start < 15


@pytest.mark.skipif(shutil.which("mke2fs") is None, reason="mke2fs not installed (e2fsprogs)")
def test_disk_root_persists_between_boots(vm, rootfs, tmp_path):
    """A full VM's shape: the root is an ext4 disk (virtio-blk), not a 9p share."""
    import subprocess
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(rootfs), str(disk)], check=True)
    kernel, base, accel = vm
    out = io.BytesIO()
    for argv in (("sh", "-c", "echo kept > /tmp/note; grep ' / ' /proc/mounts"), ("cat", "/tmp/note")):
        r = boot_and_run(GuestConfig(argv=argv, root_disk="/dev/vda"), kernel=kernel, initramfs=base,
                         root=None, disk=disk, accel=accel, timeout=120, stdout=out, stderr=None)
        assert r.exit_code == 0
    assert out.getvalue().decode() == "/dev/vda / ext4 rw,relatime 0 0\nkept\n"
    # the guest left the filesystem clean
    check = subprocess.run(["e2fsck", "-n", str(disk)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_kvm_probe_answers_quickly(vm, tmp_path):
    kernel, base, _ = vm
    start = time.monotonic()
    choice = probe_accelerator(kernel, base, tmp_path / "accel.json", refresh=True)
    assert choice.accel in ("kvm", "tcg") and choice.reason
    assert time.monotonic() - start < 40
    assert probe_accelerator(kernel, base, tmp_path / "accel.json") == choice  # cached
