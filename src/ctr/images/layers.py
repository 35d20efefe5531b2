"""Layer trees ⇄ tar streams, and walking the merged view of a stack of layers.

A layer in the store (and a container's overlay `upper`) is a directory in overlayfs' own
form: a deletion is a character device 0/0 (a whiteout), a directory whose lower contents
are hidden carries `trusted.overlay.opaque=y` (`user.overlay.opaque` when rootless). A layer
*tar* is in OCI form instead: a deletion is an empty file `.wh.NAME`, an opaque directory
holds an empty file `.wh..wh..opq`. This module writes the OCI form; `extract.py` reads it
back (`extract_tar(whiteouts="overlay")`).

Tars are written deterministically, so the same tree always gives the same bytes (and so
the same diff id): PAX format; members in depth-first order with names sorted per
directory; names without a leading `./`; numeric owners and no user or group names; mtimes
in whole seconds (as docker writes them); no atime, ctime or extended attributes; a file
with several names is stored once and linked from its other names; whiteout markers have
mode 0, owner 0:0 and mtime 0. Device nodes and sockets are left out (a layer never holds
them: ctr provides /dev at run time), with a note.

Every tree is read through directory file descriptors opened with O_NOFOLLOW, one
component at a time, so a workload that swaps a directory for a symlink while a running
container is committed or exported cannot make ctr read a host file.

Three writers share one member writer (`LayerTar`):
- `write_layer_tar(out, layer_dir)`: a tree in overlay form (a store layer or an overlay
  `upper`) as one OCI layer tar. Used by `commit` (overlay driver) and `image export`.
- `write_changes_tar(out, rootfs, changes)`: the layer a materialised tree (the copy
  driver) amounts to, from its change list. Used by `commit` (copy driver).
- `write_merged_tar(out, layers)`: the merged view of a stack of layers, whiteouts
  applied, as a flat root filesystem tar (no whiteouts in it). Used by `export`.

`layer_manifest(layer_dir, digests)` walks the same overlay-form tree for its checksum
record (`engine/check.py`): one line of metadata per entry, no tar.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

from ctr.changes import DELETED, OPAQUE_XATTRS, Change, is_whiteout
from ctr.errors import CtrError

__all__ = [
    "WH_PREFIX", "WH_OPAQUE", "TarSummary", "LayerTar", "write_layer_tar", "write_changes_tar",
    "write_merged_tar", "tar_pipe", "layer_manifest",
]

WH_PREFIX = ".wh."
WH_OPAQUE = ".wh..wh..opq"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass
class TarSummary:
    entries: int = 0  # members written (whiteouts included)
    bytes: int = 0  # regular file bytes written
    skipped: list[str] = field(default_factory=list)  # human notes


class LayerTar:
    """Writes tar members deterministically (see the module doc)."""

    def __init__(self, out: BinaryIO, *, reserve_wh: bool):
        # reserve_wh: the tar is a layer, where a name starting with `.wh.` means a whiteout;
        # a real file with such a name cannot be represented and is refused.
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
        self.reserve_wh = reserve_wh
        self.links: dict[tuple[int, int], str] = {}
        self.summary = TarSummary()

    def close(self) -> None:
        self.tar.close()

    def abort(self) -> None:
        """Give up without writing the end of the archive (the output failed)."""
        _abandon(self.tar)

    def _info(self, name: str, st: os.stat_result | None) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        if st is not None:
            ti.mode = stat.S_IMODE(st.st_mode)
            ti.uid, ti.gid = st.st_uid, st.st_gid
            ti.mtime = int(st.st_mtime)  # whole seconds (floor for negative times too)
            if st.st_mtime < ti.mtime:
                ti.mtime -= 1
        else:
            ti.mode, ti.uid, ti.gid, ti.mtime = 0, 0, 0, 0
        ti.uname = ti.gname = ""
        return ti

    def entry(self, rel: str, dirfd: int, name: str, st: os.stat_result) -> None:
        """Write the member `rel` (no leading slash) found as `name` in directory `dirfd`."""
        if self.reserve_wh and name.startswith(WH_PREFIX):
            raise CtrError(
                f"/{rel}: a name starting with {WH_PREFIX!r} cannot be stored in an image layer "
                "(it means a deletion there)",
                hint="rename or remove it in the container first",
            )
        mode = st.st_mode
        ti = self._info(rel, st)
        if stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
            self.tar.addfile(ti)
        elif stat.S_ISREG(mode):
            self._regular(ti, rel, dirfd, name, st)
            return
        elif stat.S_ISLNK(mode):
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(name, dir_fd=dirfd)
            self.tar.addfile(ti)
        elif stat.S_ISFIFO(mode):
            if self._link(ti, rel, st):
                return
            ti.type = tarfile.FIFOTYPE
            self.tar.addfile(ti)
        else:
            kind = "socket" if stat.S_ISSOCK(mode) else "device node"
            self.summary.skipped.append(f"/{rel}: {kind} left out")
            return
        self.summary.entries += 1

    def _link(self, ti: tarfile.TarInfo, rel: str, st: os.stat_result) -> bool:
        """Write a hardlink member if this inode was already written under another name."""
        if st.st_nlink < 2:
            return False
        key = (st.st_dev, st.st_ino)
        first = self.links.get(key)
        if first is None:
            self.links[key] = rel
            return False
        ti.type = tarfile.LNKTYPE
        ti.linkname = first
        ti.size = 0
        self.tar.addfile(ti)
        self.summary.entries += 1
        return True

    def _regular(self, ti: tarfile.TarInfo, rel: str, dirfd: int, name: str, st: os.stat_result) -> None:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dirfd)
        except OSError as e:
            if e.errno == errno.ELOOP:  # replaced by a symlink meanwhile: never follow it
                raise CtrError(f"/{rel} changed while it was being read", hint="stop the container and retry") from None
            raise
        with os.fdopen(fd, "rb") as f:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode):
                raise CtrError(f"/{rel} changed while it was being read", hint="stop the container and retry")
            ti = self._info(rel, fst)
            if self._link(ti, rel, fst):
                return
            ti.type = tarfile.REGTYPE
            ti.size = fst.st_size
            try:
                self.tar.addfile(ti, f)
            except OSError as e:
                if "unexpected end of data" in str(e):
                    raise CtrError(f"/{rel} shrank while it was being read",
                                   hint="stop the container and retry") from None
                raise
        self.summary.entries += 1
        self.summary.bytes += ti.size

    def whiteout(self, rel: str) -> None:
        """Record that `rel` is deleted: an empty `.wh.NAME` next to it."""
        parent, _, base = rel.rpartition("/")
        ti = self._info(f"{parent}/{WH_PREFIX}{base}" if parent else WH_PREFIX + base, None)
        self.tar.addfile(ti)
        self.summary.entries += 1

    def opaque(self, rel: str) -> None:
        """Record that directory `rel` hides what lower layers have in it."""
        ti = self._info(f"{rel}/{WH_OPAQUE}", None)
        self.tar.addfile(ti)
        self.summary.entries += 1


def _abandon(tar: tarfile.TarFile) -> None:
    # mark the stream closed so that tarfile does not try to flush it again when collected
    tar.closed = True
    stream = getattr(tar, "fileobj", None)
    if stream is not None and hasattr(stream, "closed"):
        try:
            stream.closed = True
        except AttributeError:
            pass


# ----------------------------------------------------------------------------- trees by fd
def _open_dir(name: str, dirfd: int | None = None) -> int:
    return os.open(name, _DIR_FLAGS, dir_fd=dirfd)


def _entries(dirfd: int) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of a directory's entries, sorted by name."""
    out = []
    with os.scandir(dirfd) as it:
        for e in it:
            try:
                out.append((e.name, e.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # gone meanwhile (a running container)
    out.sort(key=lambda x: x[0])
    return out


def _opaque_fd(fd: int) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(fd, name) == b"y":
                return True
        except OSError:
            continue
    return False


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


# ----------------------------------------------------------------------------- layer form
def write_layer_tar(out: BinaryIO, layer_dir: str) -> TarSummary:
    """Write the overlay-form tree `layer_dir` to `out` as an OCI layer tar."""
    w = LayerTar(out, reserve_wh=True)
    try:
        root = _open_dir(layer_dir)
        try:
            _walk_layer(w, root, "")
        finally:
            os.close(root)
        w.close()
    except BaseException:
        w.abort()
        raise
    return w.summary


def _walk_layer(w: LayerTar, dirfd: int, rel: str) -> None:
    for name, st in _entries(dirfd):
        path = _join(rel, name)
        if is_whiteout(st):
            w.whiteout(path)
            continue
        if not stat.S_ISDIR(st.st_mode):
            w.entry(path, dirfd, name, st)
            continue
        try:
            fd = _open_dir(name, dirfd)
        except FileNotFoundError:
            continue
        try:
            w.entry(path, dirfd, name, os.fstat(fd))
            if _opaque_fd(fd):
                w.opaque(path)
            _walk_layer(w, fd, path)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- manifest
def layer_manifest(layer_dir: str, digests: dict[int, str] | None = None) -> tuple[str, int]:
    """The checksum of the overlay-form tree `layer_dir` as a manifest (`engine/check.py`
    describes it), and the bytes its non-directories hold (the image size, per name).

    `digests` maps an inode number to the sha256 of its contents, taken while the tree was
    extracted (`ExtractResult.digests`): those files are not read again. A regular file that
    has none is read and hashed.
    """
    import hashlib

    w = _Manifest(hashlib.sha256(), digests or {})
    root = _open_dir(layer_dir)
    try:
        st = os.fstat(root)
        w.line(b".", b"d", st, b"opaque" if _opaque_fd(root) else b"", mtime=0)
        w.walk(root, b"")
        w.flush()
    finally:
        os.close(root)
    return "sha256:" + w.hash.hexdigest(), w.size


class _Manifest:
    # a line: path, type, mode, uid, gid, whole-second mtime, size, extra; every field ends
    # with NUL, which no name, target or number holds, so the manifest reads one way only
    LINE = b"%s\0%s\0%o\0%d\0%d\0%d\0%d\0%s\0\n"

    def __init__(self, hash, digests: dict[int, str]):
        self.hash, self.digests, self.size = hash, digests, 0
        self.links: dict[tuple[int, int], bytes] = {}
        self.lines: list[bytes] = []

    def line(self, path: bytes, kind: bytes, st: os.stat_result | None, extra: bytes = b"",
             size: int = 0, mtime: int | None = None) -> None:
        if st is None:
            self.lines.append(self.LINE % (path, kind, 0, 0, 0, 0, 0, extra))
        else:
            self.lines.append(self.LINE % (path, kind, st.st_mode & 0o7777, st.st_uid, st.st_gid,
                                           st.st_mtime_ns // 10**9 if mtime is None else mtime, size, extra))

    def flush(self) -> None:
        self.hash.update(b"".join(self.lines))
        self.lines.clear()

    def walk(self, dirfd: int, rel: bytes) -> None:
        lines, digests, fsencode, S_IFMT = self.lines, self.digests, os.fsencode, stat.S_IFMT
        for name, st in _entries(dirfd):
            path = rel + fsencode(name)
            mode = st.st_mode
            kind = S_IFMT(mode)
            if kind == stat.S_IFDIR:
                try:
                    fd = _open_dir(name, dirfd)
                except FileNotFoundError:
                    continue
                try:
                    self.line(path, b"d", st, b"opaque" if _opaque_fd(fd) else b"")
                    self.walk(fd, path + b"/")
                finally:
                    os.close(fd)
                continue
            self.size += st.st_size
            if st.st_nlink > 1 and not is_whiteout(st):  # a second name of an inode: a link line
                first = self.links.setdefault((st.st_dev, st.st_ino), path)
                if first != path:
                    self.line(path, b"h", None, first)
                    continue
            if kind == stat.S_IFREG:  # most entries: the line written here
                digest = digests.get(st.st_ino) or _file_digest(dirfd, name, path)
                lines.append(self.LINE % (path, b"f", mode & 0o7777, st.st_uid, st.st_gid,
                                          st.st_mtime_ns // 10**9, st.st_size, digest.encode()))
            elif kind == stat.S_IFLNK:
                self.line(path, b"l", st, fsencode(os.readlink(name, dir_fd=dirfd)))
            elif is_whiteout(st):
                self.line(path, b"w", None)
            elif kind == stat.S_IFIFO:
                self.line(path, b"p", st)
            elif kind in (stat.S_IFCHR, stat.S_IFBLK):
                dev = b"%d,%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
                self.line(path, b"c" if kind == stat.S_IFCHR else b"b", st, dev)
            else:
                self.line(path, b"s", st)
            if len(lines) > 4096:
                self.flush()


def _file_digest(dirfd: int, name: str, path: bytes) -> str:
    import hashlib

    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dirfd)
    except OSError as e:
        if e.errno == errno.ELOOP:  # replaced by a symlink meanwhile: never follow it
            raise CtrError(f"/{os.fsdecode(path)} changed while it was being read") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CtrError(f"/{os.fsdecode(path)} changed while it was being read")
        return hashlib.file_digest(f, "sha256").hexdigest()


# ----------------------------------------------------------------------------- from changes
def _component_key(change: Change) -> list[str]:
    return change.path.strip("/").split("/")


def write_changes_tar(out: BinaryIO, rootfs: str, changes: Iterable[Change]) -> TarSummary:
    """Write the layer a materialised tree amounts to, given its change list, to `out`.

    `A`/`C` paths are written from `rootfs` as they are now; a `D` path that is gone
    becomes a whiteout; a `D` directory that exists again (deleted and made again) becomes
    an opaque directory (its new contents are `A` changes of their own). Members come in
    the same order as `write_layer_tar` would write the resulting layer, so re-exporting
    the layer reproduces its diff id.
    """
    w = LayerTar(out, reserve_wh=True)
    try:
        _changes(w, rootfs, changes)
        w.close()
    except BaseException:
        w.abort()
        raise
    return w.summary


def _changes(w: LayerTar, rootfs: str, changes: Iterable[Change]) -> None:
    root = _open_dir(rootfs)
    try:
        for ch in sorted(changes, key=_component_key):
            parts = ch.path.strip("/").split("/")
            if not parts or parts == [""]:
                continue
            rel = "/".join(parts)
            pfd = _open_parent(root, parts)
            if pfd is None:  # its parent is gone (a running container): nothing to take
                if ch.kind == DELETED:
                    w.whiteout(rel)
                continue
            try:
                try:
                    st = os.lstat(parts[-1], dir_fd=pfd)
                except FileNotFoundError:
                    st = None
                if st is None:
                    if ch.kind == DELETED:
                        w.whiteout(rel)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    try:
                        fd = _open_dir(parts[-1], pfd)
                    except FileNotFoundError:
                        continue
                    try:
                        w.entry(rel, pfd, parts[-1], os.fstat(fd))
                    finally:
                        os.close(fd)
                    if ch.kind == DELETED:  # the directory was deleted and made again
                        w.opaque(rel)
                else:
                    w.entry(rel, pfd, parts[-1], st)
            finally:
                os.close(pfd)
    finally:
        os.close(root)


def _open_parent(root: int, parts: list[str]) -> int | None:
    fd = os.dup(root)
    try:
        for comp in parts[:-1]:
            nfd = _open_dir(comp, fd)
            os.close(fd)
            fd = nfd
        return fd
    except (FileNotFoundError, NotADirectoryError):
        os.close(fd)
        return None
    except OSError as e:
        os.close(fd)
        if e.errno == errno.ELOOP:
            return None  # a symlink where a directory was: never followed
        raise


# ----------------------------------------------------------------------------- merged view
@dataclass
class Layer:
    """One directory of a stack. `single_device`: the host root, whose other filesystems
    are not part of it (as with overlayfs over `/`). `hidden`: directories (relative paths)
    whose contents this layer does not contribute (shown empty)."""

    path: str
    single_device: bool = False
    hidden: frozenset[str] = frozenset()


def write_merged_tar(out: BinaryIO, layers: list[Layer]) -> TarSummary:
    """Write the merged view of `layers` (bottom first) to `out` as a flat rootfs tar."""
    w = LayerTar(out, reserve_wh=False)
    fds: list[int] = []
    try:
        for layer in reversed(layers):  # top first from here on
            fds.append(_open_dir(layer.path))
        stack = []
        for fd, layer in zip(fds, reversed(layers)):
            stack.append(_Dir(fd, os.fstat(fd).st_dev if layer.single_device else None, layer.hidden))
            if _opaque_fd(fd):
                break
        _walk_merged(w, stack, "")
        w.close()
    except BaseException:
        w.abort()
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return w.summary


@dataclass
class _Dir:
    fd: int
    dev: int | None  # entries on other devices are not part of this layer
    hidden: frozenset[str]


def _walk_merged(w: LayerTar, stack: list[_Dir], rel: str) -> None:
    """`stack`: this directory in each layer that shows through, top first."""
    listings = []
    for d in stack:
        if rel in d.hidden:
            listings.append({})
            continue
        listings.append({name: st for name, st in _entries(d.fd)
                         if d.dev is None or st.st_dev == d.dev or stat.S_ISDIR(st.st_mode)})
    names = sorted(set().union(*listings)) if listings else []
    for name in names:
        top = next(i for i, lst in enumerate(listings) if name in lst)
        st = listings[top][name]
        if is_whiteout(st):
            continue
        path = _join(rel, name)
        if not stat.S_ISDIR(st.st_mode):
            w.entry(path, stack[top].fd, name, st)
            continue
        # the directory in the layer that has it on top, then in each layer below until one
        # has something else there or the directory is opaque
        sub: list[_Dir] = []
        try:
            for i in range(top, len(stack)):
                low = listings[i].get(name)
                if low is None:
                    continue
                if is_whiteout(low) or not stat.S_ISDIR(low.st_mode):
                    break
                d = stack[i]
                if d.dev is not None and low.st_dev != d.dev:
                    break  # another filesystem is mounted here: not part of the layer
                try:
                    nfd = _open_dir(name, d.fd)
                except (FileNotFoundError, NotADirectoryError):
                    break
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        break
                    raise
                sub.append(_Dir(nfd, d.dev, d.hidden))
                if _opaque_fd(nfd):
                    break
            w.entry(path, stack[top].fd, name, os.fstat(sub[0].fd) if sub else st)
            if sub:
                _walk_merged(w, sub, path)
        finally:
            for d in sub:
                os.close(d.fd)


# ----------------------------------------------------------------------------- plumbing
@contextmanager
def tar_pipe(produce: Callable[[BinaryIO], object]) -> Iterator[BinaryIO]:
    """A readable stream of what `produce(out)` writes, written by a thread (no temp file).

    If the producer fails, its error is raised (rather than the reader's "truncated
    archive"); if the reader stops early, the producer is stopped by a broken pipe.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with os.fdopen(w, "wb") as out:
                produce(out)
        except BaseException as e:  # reported on the reader's side
            errors.append(e)

    t = threading.Thread(target=run, name="tar-writer", daemon=True)
    t.start()
    reader = os.fdopen(r, "rb")
    try:
        yield reader
    except BaseException:
        reader.close()
        t.join()
        real = [e for e in errors if not isinstance(e, BrokenPipeError)]
        if real:
            raise real[0] from None
        raise
    reader.close()
    t.join()
    if errors and not isinstance(errors[0], BrokenPipeError):
        raise errors[0]
