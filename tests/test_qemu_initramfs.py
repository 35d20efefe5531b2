"""The initramfs: per-run config quoting, busybox checks, the cached base archive."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ctr.errors import DriverError
from ctr.qemu import cpio
from ctr.qemu.guest_init import INIT_SCRIPT
from ctr.qemu.initramfs import (GuestConfig, Volume, base_initramfs, find_busybox, run_archive,
                                run_conf, write_initrd)
from ctr.qemu.kernel import Kernel

from test_qemu_fakes import make_modules_tree, make_vmlinux

BUSYBOX = shutil.which("busybox")
NASTY = ("printf", "%s\\n", "two words", "it's", 'say "hi"', "$HOME", "`id`", "a\nb", "back\\slash", "*", "")


def fake_static_busybox(path: Path) -> Path:
    """An ELF executable with no PT_INTERP (statically linked)."""
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, 0, 0, 0x1000)  # PT_LOAD only
    path.write_bytes(ehdr + phdr)
    path.chmod(0o755)
    return path


def shells() -> list[list[str]]:
    out = [["/bin/sh"]]
    if BUSYBOX:
        out.append([BUSYBOX, "sh"])
    return out


def source(conf: str, script: str, shell: list[str], tmp_path: Path) -> bytes:
    f = tmp_path / "run.conf"
    f.write_text(conf)
    return subprocess.run(shell + ["-c", f". {f}\n{script}"], capture_output=True, check=True).stdout


@pytest.mark.parametrize("shell", shells(), ids=lambda s: s[0])
def test_argv_and_env_survive_quoting(tmp_path, shell):
    cfg = GuestConfig(argv=NASTY, env=(("A", "x y"), ("B", "it's $HOME"), ("C", "")))
    conf = run_conf(cfg)
    argv = source(conf, 'eval "set -- $CTR_ARGV"; for a; do printf "%s\\0" "$a"; done', shell, tmp_path)
    assert argv.split(b"\0")[:-1] == [a.encode() for a in NASTY]
    env = source(conf, 'eval "set -- $CTR_ENV"; for a; do printf "%s\\0" "$a"; done', shell, tmp_path)
    assert env.split(b"\0")[:-1] == [b"A=x y", b"B=it's $HOME", b"C="]


def test_run_conf_fields(tmp_path):
    cfg = GuestConfig(argv=("id",), workdir="/srv/app/", uid=1000, gid=100, hostname="abc",
                      volumes=(Volume("ctr.vol0", "/data", True), Volume("ctr.vol1", "/w x")),
                      modules=("virtio", "9p"))
    vals = source(run_conf(cfg), 'printf "%s|" "$CTR_WORKDIR" "$CTR_USER" "$CTR_HOSTNAME" '
                  '"$CTR_ROOT_TYPE" "$CTR_ROOT_TAG" "$CTR_ROOT_OPTS" "$CTR_NVOLUMES" '
                  '"$CTR_VOLUME_0_TARGET" "$CTR_VOLUME_0_OPTS" "$CTR_VOLUME_1_TARGET" "$CTR_MODULES"',
                  ["/bin/sh"], tmp_path).decode().split("|")
    assert vals[:-1] == ["/srv/app", "-S 1000 -G 100", "abc", "9p", "ctr.root", "cache=mmap", "2",
                         "/data", "cache=mmap,ro", "/w x", "virtio 9p"]
    disk = run_conf(GuestConfig(argv=("true",), root_disk="/dev/vda"))
    assert "CTR_ROOT_TYPE=disk" in disk and "CTR_ROOT_DEV=/dev/vda" in disk
    assert "CTR_USER=''" in run_conf(GuestConfig(argv=("true",)))


@pytest.mark.parametrize("cfg", [GuestConfig(argv=()), GuestConfig(argv=("x",), workdir="rel"),
                                 GuestConfig(argv=("x",), volumes=(Volume("t", "rel"),)),
                                 GuestConfig(argv=("x",), extra={"NOT_CTR": "1"})])
def test_run_conf_rejects(cfg):
    with pytest.raises(ValueError):
        run_conf(cfg)


def test_run_archive_is_one_file():
    entries = cpio.read(run_archive(GuestConfig(argv=("true",))))
    assert [e.name for e in entries if e.is_file] == ["etc/ctr/run.conf"]


@pytest.mark.skipif(not BUSYBOX, reason="busybox not installed")
def test_init_script_parses():
    subprocess.run([BUSYBOX, "sh", "-n", "-c", INIT_SCRIPT], check=True)


def test_find_busybox(tmp_path):
    with pytest.raises(DriverError) as e:
        find_busybox("/bin/ls" if os.path.exists("/bin/ls") else "/usr/bin/env")
    assert "dynamically linked" in e.value.message and e.value.hint == "apt-get install busybox-static"
    with pytest.raises(DriverError) as e:
        find_busybox(tmp_path / "none")
    assert e.value.hint == "apt-get install busybox-static"
    fake = fake_static_busybox(tmp_path / "busybox")
    assert find_busybox(fake) == fake


def fake_kernel(tmp_path: Path, **kw) -> Kernel:
    d = tmp_path / "kernel"
    d.mkdir(exist_ok=True)
    (d / "vmlinux").write_bytes(make_vmlinux("6.1.0-test"))
    return Kernel(d / "vmlinux", make_modules_tree(d / "modules", **kw), "6.1.0-test")


def test_base_initramfs_contents_and_cache(tmp_path):
    kernel = fake_kernel(tmp_path)
    bb = fake_static_busybox(tmp_path / "busybox")
    base = base_initramfs(kernel, tmp_path / "cache", busybox=bb)
    assert base.path.name.startswith("initramfs-6.1.0-test-") and base.path.is_file()
    entries = {e.name: e for e in cpio.read(base.path.read_bytes())}
    assert entries["init"].data == INIT_SCRIPT.encode() and entries["init"].mode & 0o111
    assert entries["bin/busybox"].data == bb.read_bytes()
    assert entries["bin/sh"].link_target == "busybox" and entries["bin/nsenter"].is_symlink
    assert entries["dev/console"].is_chardev and entries["dev/console"].rdev == (5, 1)
    mods = {n.split("/")[-1] for n in entries if n.startswith("lib/modules/")}
    assert {"virtio_mmio.ko", "virtio_pci.ko", "9p.ko", "9pnet_virtio.ko", "overlay.ko"} <= mods
    assert "ext4.ko" not in mods  # disk modules live in their own archive
    assert not entries["lib/modules/9p.ko"].data.endswith(b"~Module signature appended~\n")
    disk = {e.name for e in cpio.read(base.disk_path.read_bytes())}
    assert {"lib/modules/ext4.ko", "lib/modules/virtio_blk.ko", "lib/modules/jbd2.ko"} <= disk
    assert "lib/modules/virtio.ko" not in disk  # already in the base archive

    micro = base.modules_for("microvm")
    assert "virtio_mmio" in micro and "virtio_pci" not in micro and micro[-1] == "9p"
    assert micro.index("virtio") < micro.index("virtio_mmio")
    assert "virtio_pci" in base.modules_for("q35")
    assert base.modules_for("microvm", disk=True)[-1] == "ext4"
    assert "overlay" in base.modules_for(overlay=True)

    # cached: same object back, files untouched
    mtime = base.path.stat().st_mtime_ns
    again = base_initramfs(kernel, tmp_path / "cache", busybox=bb)
    assert again == base and base.path.stat().st_mtime_ns == mtime
    # a changed busybox gives a new key and the old build is removed
    bb.write_bytes(bb.read_bytes() + b"\0" * 8)
    os.utime(bb, ns=(1, 1))
    newer = base_initramfs(kernel, tmp_path / "cache", busybox=bb)
    assert newer.key != base.key and base.path.exists()  # may still be in use
    for p in (base.path, base.disk_path):
        os.utime(p, (1, 1))  # old builds go once they are an hour old
    base_initramfs(kernel, tmp_path / "cache", busybox=bb)
    assert not base.path.exists() and not base.disk_path.exists() and newer.path.exists()


def test_write_initrd_appends_disk_only_when_needed(tmp_path):
    kernel = fake_kernel(tmp_path)
    base = base_initramfs(kernel, tmp_path / "cache", busybox=fake_static_busybox(tmp_path / "bb"))
    plain = write_initrd(base, GuestConfig(argv=("true",), modules=tuple(base.modules_for())),
                         tmp_path / "a.cpio").read_bytes()
    assert plain.startswith(base.path.read_bytes())
    names = [e.name for e in cpio.read(plain)]
    assert names[-1] == "etc/ctr/run.conf" and "lib/modules/ext4.ko" not in names
    withdisk = write_initrd(base, GuestConfig(argv=("true",), root_disk="/dev/vda",
                                              modules=tuple(base.modules_for(disk=True))),
                            tmp_path / "b.cpio").read_bytes()
    assert "lib/modules/ext4.ko" in [e.name for e in cpio.read(withdisk)]


def test_kernel_without_9p_is_refused(tmp_path):
    kernel = fake_kernel(tmp_path, drop=("9p", "9pnet_virtio"))
    with pytest.raises(DriverError) as e:
        base_initramfs(kernel, tmp_path / "cache", busybox=fake_static_busybox(tmp_path / "bb"))
    assert "9p" in e.value.message and "cloud" in (e.value.hint or "")


def test_kernel_with_builtin_9p_needs_no_modules(tmp_path):
    d = tmp_path / "k"
    d.mkdir()
    (d / "vmlinux").write_bytes(make_vmlinux("6.1.0-builtin"))
    base = base_initramfs(Kernel(d / "vmlinux", None, "6.1.0-builtin"), tmp_path / "cache",
                          busybox=fake_static_busybox(tmp_path / "bb"))
    assert base.modules_for() == []
    assert not [e for e in cpio.read(base.path.read_bytes()) if e.name.endswith(".ko")]
