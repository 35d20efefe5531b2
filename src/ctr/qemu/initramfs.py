"""The guest's initramfs, built by ctr in pure Python.

Up to three newc cpio archives, concatenated into the file given to qemu's -initrd (the
kernel unpacks them in turn):

1. the **base** archive, cached per kernel (`base_initramfs`): a static busybox with its
   applet symlinks, ctr's `/init` (guest_init.INIT_SCRIPT), /dev/console, and the kernel
   modules a container guest may need with their dependencies — virtio-mmio and
   virtio-pci transports, virtio-serial, 9p, overlay — uncompressed and with their
   signatures stripped (checking them costs emulated CPU);
2. the **disk** archive, cached beside it: virtio-blk, ext4 and their dependencies,
   appended only when the VM has a disk (ext4 alone would add 2 MB to every boot);
3. a small **per-run** archive (`run_archive`) with /etc/ctr/run.conf: the command, env,
   workdir, user, hostname, root, volumes and which modules to load, as shell assignments
   quoted for `eval`.

Uncompressed on purpose: decompressing in the guest costs emulated CPU time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import DriverError
from ..vm.agent import nsenter_user
from . import cpio
from .guest_init import INIT_SCRIPT
from .kernel import Kernel
from .modules import ModuleIndex, read_module_bytes, strip_signature

BUSYBOX_HINT = "apt-get install busybox-static"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox")

# Modules a guest may load, by what for; each is resolved with its dependencies.
TRANSPORT_MODULES = {"microvm": ("virtio_mmio",), "q35": ("virtio_pci",)}
BASE_MODULES = ("virtio_console", "9pnet_virtio", "9p")
OVERLAY_MODULES = ("overlay",)
# Only in the separate disk archive, appended when a disk is attached (`ctr vm`): ext4 alone
# is 2 MB, and every MB of initramfs costs about 0.1 s of boot under TCG.
DISK_MODULES = ("virtio_blk", "ext4")
# Without these the guest cannot run a container at all.
REQUIRED_MODULES = ("virtio_console", "9pnet_virtio", "9p")

# What /init needs if `busybox --list` cannot be run on this host.
_FALLBACK_APPLETS = (
    "sh", "ash", "mount", "umount", "insmod", "mkdir", "mknod", "mkfifo", "ln", "cat", "echo",
    "sleep", "kill", "env", "nsenter", "hostname", "poweroff", "reboot", "sync", "ls", "ps",
)


# ---------------------------------------------------------------------------- busybox


def _elf_is_static(data: bytes) -> bool:
    """True when an ELF executable has no PT_INTERP (no dynamic loader)."""
    if data[:4] != b"\x7fELF":
        return False
    is64 = data[4] == 2
    e = "<" if data[5] == 1 else ">"
    if is64:
        phoff, = struct.unpack_from(e + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(e + "HH", data, 0x36)
    else:
        phoff, = struct.unpack_from(e + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(e + "HH", data, 0x2A)
    for i in range(phnum):
        p_type, = struct.unpack_from(e + "I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def find_busybox(explicit: str | os.PathLike[str] | None = None) -> Path:
    """A statically linked busybox on the host, or DriverError with the install hint."""
    candidates = [Path(explicit)] if explicit else [Path(c) for c in BUSYBOX_CANDIDATES]
    if not explicit and shutil.which("busybox"):
        candidates.append(Path(shutil.which("busybox")))  # type: ignore[arg-type]
    dynamic = None
    for c in candidates:
        try:
            with open(c, "rb") as f:
                head = f.read(1 << 16)
        except OSError:
            continue
        if _elf_is_static(head):
            return c.resolve()
        dynamic = dynamic or c
    if dynamic is not None:
        raise DriverError(f"{dynamic} is dynamically linked; the VM needs a static busybox",
                          hint=BUSYBOX_HINT)
    raise DriverError("no busybox found for the VM's initramfs", hint=BUSYBOX_HINT)


def busybox_applets(busybox: Path) -> list[str]:
    """The applet names this busybox provides (from `busybox --list`)."""
    try:
        out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                             timeout=10, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
        names = [n for n in out.stdout.split() if n and "/" not in n]
        if out.returncode == 0 and names:
            return names
    except (OSError, subprocess.SubprocessError):
        pass
    return list(_FALLBACK_APPLETS)


# ---------------------------------------------------------------------------- base archive


@dataclass(frozen=True)
class Initramfs:
    """A cached base initramfs (and its disk-modules companion) for one kernel.

    `closures` maps each loadable module name to the modules to load for it, dependencies
    first (empty when built in or absent); `modules_for` turns it into a run's load list."""

    path: Path
    disk_path: Path
    release: str
    closures: dict[str, tuple[str, ...]]
    key: str

    @property
    def disk_only_modules(self) -> set[str]:
        """Modules that are in the disk archive, not the base one."""
        base = {m for w in _all_wanted() for m in self.closures.get(w, ())}
        return {m for w in DISK_MODULES for m in self.closures.get(w, ())} - base

    def modules_for(self, machine: str = "microvm", disk: bool = False,
                    overlay: bool = False) -> list[str]:
        """The modules /init loads for a run, in order."""
        wanted = list(TRANSPORT_MODULES.get(machine, ())) + list(BASE_MODULES)
        if overlay:
            wanted += OVERLAY_MODULES
        if disk:
            wanted += DISK_MODULES
        order: list[str] = []
        for w in wanted:
            for m in self.closures.get(w, ()):
                if m not in order:
                    order.append(m)
        return order


def _all_wanted() -> list[str]:
    return [m for ms in TRANSPORT_MODULES.values() for m in ms] + list(BASE_MODULES) + \
        list(OVERLAY_MODULES)


def module_closures(kernel: Kernel) -> dict[str, list[str]]:
    """{wanted module: its load order} for every module a guest may load.  DriverError
    when the kernel has neither built in nor as modules what ctr cannot do without."""
    names = _all_wanted() + list(DISK_MODULES)
    if kernel.modules is None:
        return {n: [] for n in names}
    index = ModuleIndex(kernel.modules)
    missing = index.missing(list(REQUIRED_MODULES))
    if missing:
        raise DriverError(
            f"kernel {kernel.release} has no {', '.join(missing)} (neither built in nor a "
            "module), so ctr cannot share files into the VM",
            hint="use a generic kernel such as Debian's linux-image-<version>-amd64 (the "
            "-cloud- flavour lacks 9p)")
    return {n: index.resolve([n]) for n in names}


def cache_key(kernel: Kernel, busybox: Path, extra: str = "") -> str:
    """What the cached archives depend on: the kernel release and its modules (not the
    image: a vmlinux and its bzImage share one), busybox, the init script, module lists."""
    h = hashlib.sha256()
    h.update(INIT_SCRIPT.encode())
    h.update(repr((TRANSPORT_MODULES, BASE_MODULES, OVERLAY_MODULES, DISK_MODULES,
                   kernel.release, extra)).encode())
    for p in (busybox, kernel.modules and kernel.modules / "modules.dep"):
        if p is not None:
            try:
                st = Path(p).stat()
                h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"{p}:-".encode())
    return h.hexdigest()[:16]


def _add_modules(w: cpio.CpioWriter, kernel: Kernel, names: list[str]) -> None:
    assert kernel.modules is not None or not names
    index = ModuleIndex(kernel.modules) if names else None  # type: ignore[arg-type]
    for name in names:
        assert index is not None
        data = strip_signature(read_module_bytes(index.root / index.paths[name]))
        w.add_file(f"lib/modules/{name}.ko", data)


def write_base_archive(out: io.BufferedIOBase, kernel: Kernel, busybox: Path,
                       closures: dict[str, list[str]]) -> None:
    """Write the base archive: busybox, /init, /dev/console and the non-disk modules."""
    w = cpio.CpioWriter(out)  # type: ignore[arg-type]
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "mnt", "run",
              "tmp", "etc/ctr", "lib/modules"):
        w.add_dir(d)
    w.add_chardev("dev/console", 5, 1, 0o600)
    w.add_chardev("dev/null", 1, 3, 0o666)
    w.add_file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in busybox_applets(busybox):
        if applet != "busybox":
            w.add_symlink(f"bin/{applet}", "busybox")
    w.add_file("init", INIT_SCRIPT.encode(), 0o755)
    w.add_file("etc/ctr/release", (kernel.release + "\n").encode())
    names: list[str] = []
    for wanted in _all_wanted():
        names += [m for m in closures[wanted] if m not in names]
    _add_modules(w, kernel, names)
    w.close()


def write_disk_archive(out: io.BufferedIOBase, kernel: Kernel,
                       closures: dict[str, list[str]]) -> None:
    """Write the disk-modules archive (virtio-blk, ext4 and what they need beyond base)."""
    base = {m for wanted in _all_wanted() for m in closures[wanted]}
    names: list[str] = []
    for wanted in DISK_MODULES:
        names += [m for m in closures[wanted] if m not in base and m not in names]
    w = cpio.CpioWriter(out)  # type: ignore[arg-type]
    _add_modules(w, kernel, names)
    w.close()


def _atomic_write(path: Path, write) -> None:  # type: ignore[no-untyped-def]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _prune(cache: Path, release: str, keep: str) -> None:
    """Remove builds for other keys of `release` once they are an hour old (a concurrent
    run may still be about to copy a recent one)."""
    for old in cache.glob(f"initramfs-{release}-*"):
        try:
            if not old.name.startswith(keep) and time.time() - old.stat().st_mtime > 3600:
                old.unlink()
        except OSError:
            pass


def base_initramfs(kernel: Kernel, cache_dir: str | os.PathLike[str],
                   busybox: str | os.PathLike[str] | None = None) -> Initramfs:
    """The base initramfs for `kernel`, built once and cached in `cache_dir` as
    `initramfs-<release>-<key>.cpio` (+ `-disk.cpio`, `.json`); rebuilt when anything in
    the key changes; builds for older keys of the release are removed after an hour.  Concurrent builders are
    safe (atomic renames of identical content)."""
    bb = find_busybox(busybox)
    cache = Path(cache_dir)
    key = cache_key(kernel, bb)
    stem = f"initramfs-{kernel.release}-{key}"
    path, disk, meta = (cache / f"{stem}.cpio", cache / f"{stem}-disk.cpio",
                        cache / f"{stem}.json")
    if path.is_file() and disk.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            closures = {k: tuple(v) for k, v in info["closures"].items()}
            _prune(cache, kernel.release, stem)
            return Initramfs(path, disk, kernel.release, closures, key)
        except (OSError, ValueError, KeyError, AttributeError):
            pass
    closures = module_closures(kernel)
    cache.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda f: write_base_archive(f, kernel, bb, closures))
    _atomic_write(disk, lambda f: write_disk_archive(f, kernel, closures))
    _atomic_write(meta, lambda f: f.write(json.dumps(
        {"release": kernel.release, "kernel": str(kernel.image), "busybox": str(bb),
         "closures": closures}, indent=2).encode() + b"\n"))
    _prune(cache, kernel.release, stem)
    return Initramfs(path, disk, kernel.release, {k: tuple(v) for k, v in closures.items()}, key)


# ---------------------------------------------------------------------------- per-run


@dataclass(frozen=True)
class Volume:
    """A host directory shared into the guest at `target` over virtio-9p as `tag`."""

    tag: str
    target: str
    readonly: bool = False


@dataclass(frozen=True)
class GuestConfig:
    """Everything /init needs for one run."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),)
    workdir: str = "/"
    uid: int = 0
    gid: int = 0
    hostname: str = ""
    root_tag: str = "ctr.root"  # 9p tag of the root share, when root_disk is None
    root_readonly: bool = False
    root_disk: str | None = None  # e.g. "/dev/vda": boot a VM disk instead of a 9p root
    root_fstype: str = "ext4"
    volumes: tuple[Volume, ...] = ()
    stdin: bool = False  # connect the command's stdin to the ctr.stdin port
    modules: tuple[str, ...] = ()  # to insmod, in order: Initramfs.modules_for(...)
    msize: int = 512 * 1024
    extra: dict[str, str] = field(default_factory=dict)  # CTR_* extras for future init code


def _9p_opts(readonly: bool) -> str:
    # cache=mmap: no page cache for data (host-side writes are seen at once, and the host
    # sees the guest's writes when the command ends) but shared writable mmap works.
    return "cache=mmap" + (",ro" if readonly else "")


def run_conf(cfg: GuestConfig) -> str:
    """The /etc/ctr/run.conf text for `cfg`: shell assignments, every value quoted."""
    if not cfg.argv:
        raise ValueError("empty command")
    if not cfg.workdir.startswith("/"):
        raise ValueError(f"workdir must be absolute: {cfg.workdir!r}")
    q = shlex.quote
    lines = [
        f"CTR_ARGV={q(' '.join(q(a) for a in cfg.argv))}",
        f"CTR_ENV={q(' '.join(q(f'{k}={v}') for k, v in cfg.env))}",
        f"CTR_WORKDIR={q(cfg.workdir.rstrip('/') or '/')}",
        f"CTR_USER={q(nsenter_user(cfg.uid, cfg.gid))}",
        f"CTR_HOSTNAME={q(cfg.hostname)}",
        f"CTR_MSIZE={int(cfg.msize)}",
        f"CTR_STDIN={'1' if cfg.stdin else ''}",
        f"CTR_MODULES={q(' '.join(cfg.modules))}",
    ]
    if cfg.root_disk:
        lines += ["CTR_ROOT_TYPE=disk", f"CTR_ROOT_DEV={q(cfg.root_disk)}",
                  f"CTR_ROOT_FSTYPE={q(cfg.root_fstype)}",
                  f"CTR_ROOT_OPTS={'ro' if cfg.root_readonly else 'rw'}"]
    else:
        lines += ["CTR_ROOT_TYPE=9p", f"CTR_ROOT_TAG={q(cfg.root_tag)}",
                  f"CTR_ROOT_OPTS={q(_9p_opts(cfg.root_readonly))}"]
    lines.append(f"CTR_NVOLUMES={len(cfg.volumes)}")
    for i, v in enumerate(cfg.volumes):
        if not v.target.startswith("/"):
            raise ValueError(f"volume target must be absolute: {v.target!r}")
        target = str(PurePosixPath(v.target))
        lines += [f"CTR_VOLUME_{i}_TAG={q(v.tag)}", f"CTR_VOLUME_{i}_TARGET={q(target)}",
                  f"CTR_VOLUME_{i}_OPTS={q(_9p_opts(v.readonly))}"]
    for k, v in sorted(cfg.extra.items()):
        if not k.isidentifier() or not k.startswith("CTR_"):
            raise ValueError(f"bad extra variable name {k!r}")
        lines.append(f"{k}={q(v)}")
    return "\n".join(lines) + "\n"


def run_archive(cfg: GuestConfig) -> bytes:
    """The per-run cpio archive (appended after the base one)."""
    buf = io.BytesIO()
    with cpio.CpioWriter(buf) as w:
        w.add_file("etc/ctr/run.conf", run_conf(cfg).encode())
    return buf.getvalue()


def write_initrd(base: Initramfs, cfg: GuestConfig, dest: str | os.PathLike[str]) -> Path:
    """Write base (+ disk, when `cfg` loads disk modules) + per-run archive to `dest`, the
    one file for qemu's -initrd (a few MB: copying takes milliseconds)."""
    dest = Path(dest)
    parts = [base.path] + ([base.disk_path] if base.disk_only_modules & set(cfg.modules) else [])
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        out.write(run_archive(cfg))
    return dest
