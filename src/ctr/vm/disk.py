"""A VM's disk: making it from an image, listing it, copying it.

- `make_ext4(tree, disk, size)`: a raw ext4 image built from a directory with `mke2fs -d`,
  never mounted.  The file is sparse: lazy inode-table and journal initialisation leave
  unused metadata as holes (safe: a fresh file reads as zeros), so the disk takes about
  what the image holds plus a few MB, whatever its virtual size.
- `Listing`: path -> metadata of a VM's disk, from a directory tree (sandbox) or from an
  ext4 image through `ctr.vm.ext4` (qemu).  The listing taken when the VM is made is its
  manifest; `changes(manifest, now)` gives `ctr diff`'s A/C/D list (docs/diff.md rules).
- `copy_file` / `copy_tree`: checkpoints and restores, sharing blocks by reflink where the
  filesystem can (btrfs, xfs), else copying — holes stay holes.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from typing import Callable

from ctr import proc
from ctr.changes import ADDED, CHANGED, DELETED, Change, _kind, finish
from ctr.errors import CtrError
from ctr.store.usage import Usage, tree_usage  # noqa: F401 - also used as disk.Usage, disk.tree_usage

FICLONE = 0x40049409
MIB = 1 << 20


class DiskTooSmall(CtrError):
    """The disk size asked for cannot hold the image."""


def size_text(n: int) -> str:
    """A size as `--disk` and `--memory` take it: 512MiB, 4GiB, 1.5GiB, 12KiB."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f}{unit}" if v == int(v) or v >= 100 else f"{v:.1f}{unit}"
    return f"{n}B"


def too_small(size: int, data: int, need: int) -> str:
    return (f"a {size_text(size)} disk is too small for the image ({size_text(data)} of files): "
            f"give --disk {-(-need // MIB)}m or more")


# ----------------------------------------------------------------------------- sizes
def file_usage(path: str | os.PathLike[str]) -> int:
    """Bytes a (sparse) file takes on disk."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def min_ext4_size(usage: Usage) -> int:
    """A size an ext4 filesystem holding `usage` certainly needs: the data in 4 KiB blocks,
    an inode per entry at the default ratio, a minimal journal and group metadata."""
    return int(usage.bytes * 1.05) + max(usage.inodes, 1024) * 256 + 12 * MIB


# ----------------------------------------------------------------------------- making
def make_ext4(tree: str | os.PathLike[str], disk: str | os.PathLike[str], size: int,
              label: str = "ctr-vm", on_progress: Callable[[int], None] | None = None) -> None:
    """Build a raw ext4 image of `size` bytes holding `tree` (mke2fs -d; run as root the
    tree's owners are kept).  DiskTooSmall when it does not fit; `on_progress(bytes)` is
    called with the bytes written so far while mke2fs runs."""
    disk = os.fspath(disk)
    size -= size % 4096
    with open(disk, "wb") as f:
        f.truncate(size)
    argv = ["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-d", os.fspath(tree),
            "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            "-b", "4096", disk, str(size // 1024) + "k"]
    result: list[proc.Completed | BaseException] = []

    def run() -> None:
        try:
            result.append(proc.run(argv, check=False, timeout=3600))
        except BaseException as e:  # reported by the caller's thread
            result.append(e)

    t = threading.Thread(target=run, name="ctr-mke2fs", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.1)
        if on_progress is not None:
            on_progress(file_usage(disk))
    r = result[0]
    if isinstance(r, BaseException):
        raise r
    if r.returncode != 0:
        text = (r.stderr or r.stdout).strip()
        if any(s in text for s in ("Could not allocate block", "No space left", "too small",
                                   "Not enough space", "Could not allocate inode")):
            raise DiskTooSmall("the disk is too small for the image")
        last = text.splitlines()[-1] if text else f"exit code {r.returncode}"
        raise CtrError(f"mke2fs failed: {last}")


def replay_journal(disk: str | os.PathLike[str]) -> None:
    """Write the journal's committed changes into place (the disk of a VM that was turned
    off), as the guest kernel would at its next mount."""
    r = proc.run(["e2fsck", "-E", "journal_only", "-p", os.fspath(disk)], check=False, timeout=600)
    if r.returncode not in (0, 1):
        msg = (r.stderr or r.stdout).strip().splitlines()
        raise CtrError(f"cannot replay the journal of {disk}: {msg[-1] if msg else r.returncode}")


# ----------------------------------------------------------------------------- listings
@dataclass(frozen=True)
class Meta:
    kind: str  # d f l o
    mode: int  # permission bits (with setuid/setgid/sticky)
    uid: int
    gid: int
    size: int  # files and symlinks; 0 for directories
    mtime_ns: int
    ctime_ns: int
    ino: int
    nlink: int


Listing = dict[str, Meta]


def _meta(mode: int, uid: int, gid: int, size: int, mtime: int, ctime: int, ino: int, nlink: int) -> Meta:
    kind = _kind(mode)
    return Meta(kind, stat.S_IMODE(mode), uid, gid, 0 if kind == "d" else size, mtime, ctime, ino, nlink)


def list_tree(root: str | os.PathLike[str]) -> Listing:
    """The listing of a directory tree (the sandbox VM's private copy)."""
    root = os.fspath(root).rstrip("/")
    out: Listing = {}

    def walk(rel: str) -> None:
        try:
            entries = sorted(os.scandir(root + rel), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            p = f"{rel}/{e.name}" if rel != "/" else f"/{e.name}"
            st = e.stat(follow_symlinks=False)
            out[p] = _meta(st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                           st.st_ctime_ns, st.st_ino, st.st_nlink)
            if stat.S_ISDIR(st.st_mode):
                walk(p)

    walk("/")
    return out


def list_ext4(disk: str | os.PathLike[str]) -> Listing:
    """The listing of an ext4 image, read without mounting it (`ctr.vm.ext4`)."""
    from ctr.vm.ext4 import Ext4

    with Ext4(disk) as fs:
        return {p: _meta(i.mode, i.uid, i.gid, i.size, i.mtime_ns, i.ctime_ns, i.ino, i.nlink)
                for p, i in fs.walk()}


def dump_listing(listing: Listing) -> bytes:
    """One record per path: tab-separated fields, then the path, then a NUL (paths may
    hold newlines, never NULs)."""
    parts = []
    for p, m in listing.items():
        parts.append(f"{m.kind}\t{m.mode:o}\t{m.uid}\t{m.gid}\t{m.size}\t{m.mtime_ns}\t"
                     f"{m.ctime_ns}\t{m.ino}\t{m.nlink}\t{p}\0")
    return "".join(parts).encode("utf-8", "surrogateescape")


def load_listing(data: bytes) -> Listing:
    out: Listing = {}
    for rec in data.decode("utf-8", "surrogateescape").split("\0"):
        if not rec:
            continue
        kind, mode, uid, gid, size, mtime, ctime, ino, nlink, path = rec.split("\t", 9)
        out[path] = Meta(kind, int(mode, 8), int(uid), int(gid), int(size), int(mtime),
                         int(ctime), int(ino), int(nlink))
    return out


def changes(base: Listing, now: Listing, strict: bool) -> list[Change]:
    """What changed from `base` (the manifest) to `now`, by docs/diff.md's rules.

    Metadata decides: kind, mode, owner, size, mtime and link count; with `strict` also
    ctime and the inode number — a block copy of a disk keeps them (qemu), a copy of a tree
    does not (sandbox checkpoints), so there a rewrite that keeps size and mtime is missed,
    as with docker's own non-overlay drivers.  With `strict` a directory whose inode changed
    was deleted and made again: `D` for it and `A` for what it holds."""
    found: dict[str, str] = {}
    replaced: set[str] = set()
    for p, m in now.items():
        parent = os.path.dirname(p)
        if parent in replaced or (parent != "/" and found.get(parent) == ADDED):
            found[p] = ADDED
            if m.kind == "d":
                replaced.add(p)
            continue
        b = base.get(p)
        if b is None:
            found[p] = ADDED
            if m.kind == "d":
                replaced.add(p)
            continue
        if b.kind != m.kind:
            found[p] = CHANGED
            replaced.add(p)
            continue
        if m.kind == "d" and strict and b.ino != m.ino:
            found[p] = DELETED
            replaced.add(p)
            continue
        differs = (b.mode, b.uid, b.gid, b.size, b.mtime_ns, b.nlink) != \
                  (m.mode, m.uid, m.gid, m.size, m.mtime_ns, m.nlink)
        if strict:
            differs = differs or (b.ctime_ns, b.ino) != (m.ctime_ns, m.ino)
        if differs:
            found[p] = CHANGED
    for p in base:
        if p in now:
            continue
        parent = os.path.dirname(p)
        # only the topmost deleted path is listed
        if parent != "/" and (parent not in now or parent in replaced):
            continue
        found[p] = DELETED
    # a directory made again shows D for itself, then A for what it holds
    return finish(found)


# ----------------------------------------------------------------------------- copying
def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Copy one regular file: a reflink where the filesystem shares blocks ("reflink"),
    else its data segments only, so holes stay holes ("copy")."""
    import fcntl

    fi = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(fi)
        fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fo, stat.S_IMODE(st.st_mode) & 0o777)
            try:
                fcntl.ioctl(fo, FICLONE, fi)
                return "reflink"
            except OSError:
                pass
            os.ftruncate(fo, st.st_size)
            pos = 0
            while pos < st.st_size:
                try:
                    data = os.lseek(fi, pos, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # only a hole is left
                        break
                    raise
                hole = os.lseek(fi, data, os.SEEK_HOLE)
                off = data
                while off < hole:
                    n = os.copy_file_range(fi, fo, hole - off, off, off)
                    if n == 0:
                        break
                    off += n
                pos = hole
            return "copy"
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def copy_tree(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> str:
    """Copy a tree exactly — owners, modes, times, hard links, symlinks, devices, fifos —
    into `dst` (which must not exist); files by `copy_file`.  Returns "reflink" when every
    file shared its blocks, else "copy"."""
    src, dst = os.fspath(src), os.fspath(dst)
    links: dict[tuple[int, int], str] = {}
    methods: set[str] = set()
    root_st = os.lstat(src)
    os.mkdir(dst, 0o700)
    dirs: list[tuple[str, os.stat_result]] = [(dst, root_st)]

    def walk(s: str, d: str) -> None:
        for e in sorted(os.scandir(s), key=lambda e: e.name):
            sp, dp = e.path, os.path.join(d, e.name)
            st = e.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in links:
                    os.link(links[key], dp, follow_symlinks=False)
                    continue
                links[key] = dp
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(dp, 0o700)
                walk(sp, dp)
                dirs.append((dp, st))
                continue
            if stat.S_ISREG(st.st_mode):
                methods.add(copy_file(sp, dp))
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(sp), dp)
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(dp, 0o600)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                os.mknod(dp, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
            else:
                continue  # sockets are not copied
            _meta_copy(dp, st)

    walk(src, dst)
    for d, st in dirs:  # directories last: adding entries changes their mtime
        _meta_copy(d, st)
    return "reflink" if methods == {"reflink"} else "copy"


def _meta_copy(path: str, st: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


# ----------------------------------------------------------------------------- progress
class SpaceWatch:
    """Bytes written to a filesystem since it was created, from its free-block count: a
    progress figure for work (materialising, mke2fs) that reports none itself."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self.start = self._free()

    def _free(self) -> int:
        sv = os.statvfs(self.path)
        return sv.f_bfree * sv.f_frsize

    def written(self) -> int:
        return max(0, self.start - self._free())


def poll_while(fn: Callable[[], object], tick: Callable[[], None], every: float = 0.1) -> object:
    """Run `fn` in a thread, calling `tick` every `every` seconds until it returns."""
    out: list[object] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:  # re-raised in the caller's thread
            err.append(e)

    t = threading.Thread(target=run, name="ctr-vm-disk", daemon=True)
    t.start()
    while t.is_alive():
        t.join(every)
        tick()
    if err:
        raise err[0]
    return out[0] if out else None
