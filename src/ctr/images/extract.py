"""Hardened extraction of one uncompressed tar stream into one (empty) image layer directory.

Every path is reached one component at a time through directory file descriptors opened with
O_NOFOLLOW, and every operation is done relative to such a descriptor (`dir_fd=`) without
following symlinks, so nothing in the archive can make ctr write outside `dest`.

Policy:
- Member names are normalised: leading `/` and `./`, empty and `.` components are dropped
  (absolute names are *contained* in the layer, not refused); any `..` component is refused.
- A later member replaces an earlier one of the same name, as tar does (a directory over a
  directory only updates its metadata).  A path that goes through a symlink or a
  non-directory is refused; missing parent directories are created (0755).
- Symlinks may have absolute targets (ctr resolves them inside the container root and never
  follows a layer's symlinks on the host); a relative target that climbs lexically above the
  layer root is refused.  Hardlinks must name a non-directory already extracted in this layer.
- Modes are applied as `mode & 0o7777`: setuid, setgid and sticky bits are KEPT (images rely on
  them, e.g. /usr/bin/passwd; the container's user namespace or nosuid mounts are the place to
  neutralise them).  Ownership is applied numerically (uid/gid, never user names) only when
  `same_owner` is true, before the mode, so chown does not clear setuid bits.
- Directory metadata is applied after all members, deepest first.
- Extended attributes from the input (PAX `SCHILY.xattr.*`, including file capabilities and
  `trusted.overlay.*`/`user.overlay.*`) are never applied; a note is added to `skipped`.
- Device nodes are skipped (ctr provides /dev at run time); FIFOs are created.
- OCI whiteouts (`.wh.name`, `.wh..wh..opq`) are dropped (whiteouts="skip") or converted to
  overlayfs form (whiteouts="overlay"); in overlay mode a char device 0/0 in the input is refused
  because it would forge overlay metadata.
- With `digests` (the default), the sha256 of every regular file's contents is taken as it is
  written and kept by inode number (`ExtractResult.digests`), for the layer's checksum record
  (`images/layers.py: layer_manifest`) to use instead of reading the tree back. Only this
  code creates regular files in `dest`, so the inode of every regular file in the finished
  tree was written last by it (a name written again gets a new inode; hardlinks share one).
- The archive must end with an end-of-archive (zero) block: a stream that stops at a member
  boundary is indistinguishable from a truncated one.  Bytes after that block are not read; a
  caller that hashes the stream drains it.

On any problem an ImageImportError naming the member is raised; the caller deletes `dest`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NoReturn

from ctr import faults
from ctr.errors import CtrError, ImageImportError

__all__ = ["Limits", "ExtractResult", "extract_tar", "remove_tree"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FIFO_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_TAIL = 1 << 16
_WH = ".wh."
_WH_META = ".wh..wh."
_WH_OPAQUE = ".wh..wh..opq"
_OPAQUE_XATTR = "trusted.overlay.opaque"
_CORRUPT_HINT = "The archive is damaged or incomplete; export or download it again."
_ROOT_HINT = "Device nodes, ownership and trusted.* xattrs need root (run ctr as root)."


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 64 * 2**30  # total regular-file bytes (real size of sparse files)
    max_entries: int = 2_000_000  # members read, including skipped ones
    max_depth: int = 256  # path components
    max_path: int = 4096  # bytes of a member name

    @classmethod
    def from_env(cls) -> "Limits":
        """The defaults, each lowered or raised by `CTR_IMPORT_MAX_BYTES` (a size: 10g),
        `CTR_IMPORT_MAX_ENTRIES` or `CTR_IMPORT_MAX_DEPTH`."""
        from ctr.units import parse_size

        kw = {}
        for var, key in LIMIT_ENV.items():
            value = os.environ.get(var)
            if value:
                kw[key] = parse_size(value, var) if key == "max_bytes" else _positive(value, var)
        return cls(**kw)


LIMIT_ENV = {"CTR_IMPORT_MAX_BYTES": "max_bytes", "CTR_IMPORT_MAX_ENTRIES": "max_entries",
             "CTR_IMPORT_MAX_DEPTH": "max_depth"}
_LIMIT_HINT = {key: f"if you trust this archive, raise {var}" for var, key in LIMIT_ENV.items()}


def _positive(value: str, var: str) -> int:
    from ctr.errors import InvalidArgument

    if not value.strip().isdigit() or int(value) <= 0:
        raise InvalidArgument(f"invalid {var} {value!r}", hint="use a whole number greater than zero")
    return int(value)


@dataclass
class ExtractResult:
    entries: int = 0  # members applied
    bytes: int = 0  # regular file bytes written
    skipped: list[str] = field(default_factory=list)  # human notes
    digests: dict[int, str] | None = None  # inode number -> sha256 (hex) of a regular file's contents


class _Corrupt(Exception):
    """The input stream is unreadable, truncated or not a tar."""


class _Input:
    """The caller's stream, read forward only; remembers its tail to check the end block."""

    def __init__(self, raw):
        self.raw, self.pos, self.tail = raw, 0, bytearray()

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.raw.read(size)
        except CtrError:
            raise
        except Exception as e:  # gzip/xz/pipe errors of the caller's stream
            raise _Corrupt(f"cannot read the archive: {e}") from e
        self.pos += len(data)
        self.tail += data
        if len(self.tail) > 4 * _TAIL:
            del self.tail[:-_TAIL]
        return data

    def block_at(self, offset: int) -> bytes | None:
        start = self.pos - len(self.tail)
        if offset < start or offset + _BLOCK > self.pos:
            return None
        return bytes(self.tail[offset - start : offset - start + _BLOCK])


def extract_tar(
    fileobj,
    dest: Path,
    *,
    limits: Limits | None = None,
    same_owner: bool | None = None,
    whiteouts: str = "skip",
    digests: bool = True,
) -> ExtractResult:
    """Apply the uncompressed tar stream `fileobj` to the empty directory `dest` (module doc)."""
    if whiteouts not in ("skip", "overlay"):
        raise ValueError(f"whiteouts must be 'skip' or 'overlay', not {whiteouts!r}")
    if same_owner is None:
        same_owner = os.geteuid() == 0
    if limits is None:
        limits = Limits.from_env()
    root = os.open(dest, _DIR_FLAGS)
    try:
        if os.listdir(root):
            raise ValueError(f"{dest} is not empty")
        ex = _Extractor(root, limits, same_owner, whiteouts == "overlay")
        if digests:
            ex.result.digests = {}
        inp = _Input(fileobj)
        try:
            with tarfile.open(fileobj=inp, mode="r|") as tar:
                ex.run(tar, inp)
        except (tarfile.TarError, EOFError, _Corrupt) as e:
            raise ImageImportError(
                f"archive is truncated or corrupt: {e}", member=ex.name, hint=_CORRUPT_HINT
            ) from e
        finally:
            ex.close()
        return ex.result
    finally:
        os.close(root)


class _Extractor:
    def __init__(self, root: int, limits: Limits, same_owner: bool, overlay: bool):
        self.root, self.limits, self.same_owner, self.overlay = root, limits, same_owner, overlay
        self.result = ExtractResult()
        self.dirs: dict[tuple[str, ...], tarfile.TarInfo] = {}  # metadata applied at the end
        self.name: str | None = None  # member being applied, for error messages
        self.seen = 0
        # the parent directory of the last member, kept open: archives list a directory's
        # members together, and opening every parent from the root, one component at a time,
        # for every member was a third of the system calls of an import (docs/performance.md)
        self._parent: tuple[tuple[str, ...], int] | None = None

    def close(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def fail(self, message: str, hint: str | None = None) -> NoReturn:
        raise ImageImportError(message, member=self.name, hint=hint)

    def note(self, text: str) -> None:
        self.result.skipped.append(f"{self.name}: {text}")

    # --- the loop ---------------------------------------------------------------------------

    def run(self, tar: tarfile.TarFile, inp: _Input) -> None:
        while True:
            self.name = None
            try:
                member = tar.next()
            except (CtrError, tarfile.TarError, _Corrupt):
                raise
            except Exception as e:  # tarfile parsing untrusted headers
                raise _Corrupt(f"bad header: {e}") from e
            if member is None:
                break
            tar.members.clear()  # streaming: do not keep millions of TarInfos
            self.name = member.name
            self.seen += 1
            if self.seen > self.limits.max_entries:
                self.fail(f"archive has more than {self.limits.max_entries} members", _LIMIT_HINT["max_entries"])
            faults.point("import.extract")
            try:
                self.apply(member, tar)
            except (OSError, OverflowError, ValueError) as e:
                hint = _ROOT_HINT if isinstance(e, PermissionError) else None
                self.fail(f"cannot extract: {getattr(e, 'strerror', None) or e}", hint)
        block = inp.block_at(tar.offset)
        if block is None:
            raise _Corrupt("the archive ends without an end-of-archive block")
        if block.count(0) != _BLOCK:
            raise _Corrupt(f"invalid tar header at offset {tar.offset}")
        self.finish_dirs()

    def apply(self, m: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parts = self.parts(m.name)
        if m.ischr() and self.overlay and m.devmajor == 0 and m.devminor == 0:
            self.fail("character device 0/0 would forge an overlay whiteout")
        if any(p.startswith(_WH) for p in parts[:-1]):
            self.fail("a whiteout name is used as a directory")
        if parts and parts[-1].startswith(_WH):
            return self.whiteout(parts)
        xattrs = sorted(k.partition("xattr.")[2] for k in m.pax_headers if ".xattr." in k)
        if xattrs:
            self.note(f"extended attributes not applied ({', '.join(xattrs)})")
        if not parts and not m.isdir():
            self.fail("the layer root must be a directory")
        if m.isdir():
            self.directory(m, parts)
        elif m.isreg():
            self.regular(m, parts, tar)
        elif m.issym():
            self.symlink(m, parts)
        elif m.islnk():
            self.hardlink(m, parts)
        elif m.ischr() or m.isblk():
            return self.note("device node skipped")
        elif m.isfifo():
            with self.parent(parts) as pfd:
                self.clear(pfd, parts)
                os.mkfifo(parts[-1], 0o600, dir_fd=pfd)
                fd = os.open(parts[-1], _FIFO_FLAGS, dir_fd=pfd)
                try:
                    self.set_meta(fd, m)
                finally:
                    os.close(fd)
        else:
            return self.note(f"unsupported member type {m.type.decode('latin-1')!r} skipped")
        self.result.entries += 1

    # --- names and directories --------------------------------------------------------------

    def parts(self, name: str, escape: str = "path escapes the layer ('..')") -> tuple[str, ...]:
        if "\0" in name:
            self.fail("name contains a NUL byte")
        if len(os.fsencode(name)) > self.limits.max_path:
            self.fail(f"name is longer than {self.limits.max_path} bytes")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            self.fail(escape)
        if len(parts) > self.limits.max_depth:
            self.fail(f"path is deeper than {self.limits.max_depth} components", _LIMIT_HINT["max_depth"])
        return parts

    def open_dir(self, parts: tuple[str, ...], create: bool) -> int:
        """A new fd for the directory `parts` (created if `create`), never crossing a symlink."""
        fd = os.open(".", _DIR_FLAGS, dir_fd=self.root)
        try:
            for i, comp in enumerate(parts):
                made = False
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                    made = True
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    where = "/".join(parts[: i + 1])
                    if stat.S_ISLNK(os.lstat(comp, dir_fd=fd).st_mode):
                        self.fail(f"path goes through a symlink ({where})")
                    self.fail(f"path goes through a non-directory ({where})")
                os.close(fd)
                fd = nfd
                if made:
                    os.fchmod(fd, 0o755)  # whatever the umask
            return fd
        except BaseException:
            os.close(fd)
            raise

    @contextmanager
    def parent(self, parts: tuple[str, ...], create: bool = True, cached: bool = True) -> Iterator[int]:
        """The directory holding `parts`. With `cached`, the descriptor is the one kept for the
        last parent (valid until the next `parent()` or a directory removal): not for nesting."""
        key = parts[:-1]
        if not cached:
            fd = self.open_dir(key, create)
            try:
                yield fd
            finally:
                os.close(fd)
            return
        if self._parent is None or self._parent[0] != key:
            fd = self.open_dir(key, create)
            self.close()
            self._parent = (key, fd)
        yield self._parent[1]

    def clear(self, pfd: int, parts: tuple[str, ...], keep_dir: bool = False) -> bool:
        """Remove whatever is at `parts` (fd-relative); True if it is a directory that was kept."""
        try:
            st = os.lstat(parts[-1], dir_fd=pfd)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(parts[-1], dir_fd=pfd)
            return False
        if keep_dir:
            return True
        if self._parent is not None and self._parent[1] != pfd:
            self.close()  # the kept directory may be inside this one
        shutil.rmtree(parts[-1], dir_fd=pfd)  # fd-based on Linux: never follows symlinks
        n = len(parts)
        for key in [k for k in self.dirs if k[:n] == parts]:
            del self.dirs[key]
        return False

    def set_meta(self, fd: int, m: tarfile.TarInfo) -> None:
        if self.same_owner:
            os.fchown(fd, m.uid, m.gid)  # before chmod: chown clears setuid/setgid
        os.fchmod(fd, m.mode & 0o7777)
        ns = _ns(m.mtime)
        os.utime(fd, ns=(ns, ns))

    def finish_dirs(self) -> None:
        for parts, m in sorted(self.dirs.items(), key=lambda kv: -len(kv[0])):
            self.name = m.name
            try:
                fd = self.open_dir(parts, create=False)
                try:
                    self.set_meta(fd, m)
                finally:
                    os.close(fd)
            except (OSError, OverflowError, ValueError) as e:
                self.fail(f"cannot set directory metadata: {getattr(e, 'strerror', None) or e}")

    # --- member types -----------------------------------------------------------------------

    def directory(self, m: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        if parts:
            with self.parent(parts) as pfd:
                if not self.clear(pfd, parts, keep_dir=True):
                    os.mkdir(parts[-1], 0o755, dir_fd=pfd)
        self.dirs[parts] = m

    def regular(self, m: tarfile.TarInfo, parts: tuple[str, ...], tar: tarfile.TarFile) -> None:
        if self.result.bytes + m.size > self.limits.max_bytes:
            self.fail(f"archive has more than {self.limits.max_bytes} bytes of file data", _LIMIT_HINT["max_bytes"])
        src = tar.extractfile(m)
        with self.parent(parts) as pfd:
            try:  # O_EXCL: a name already there (a later member replaces it) is cleared first
                fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=pfd)
            except FileExistsError:
                self.clear(pfd, parts)
                fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=pfd)
            digests = self.result.digests
            h = hashlib.sha256() if digests is not None else None
            written = 0
            try:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)
                    if h is not None:
                        h.update(chunk)
                    if m.issparse() and chunk.count(0) == len(chunk):
                        os.lseek(fd, len(chunk), os.SEEK_CUR)  # keep holes as holes
                        continue
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                self.result.bytes += written
                os.ftruncate(fd, m.size)
                self.set_meta(fd, m)
                if h is not None and written == m.size:  # else the record reads the file
                    digests[os.fstat(fd).st_ino] = h.hexdigest()
            finally:
                os.close(fd)

    def symlink(self, m: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        target = m.linkname
        if not target or "\0" in target or len(os.fsencode(target)) > self.limits.max_path:
            self.fail("invalid symlink target")
        if not target.startswith("/"):
            depth = len(parts) - 1
            for comp in target.split("/"):
                if comp == "..":
                    depth -= 1
                    if depth < 0:
                        self.fail(f"symlink points outside the layer ({target})")
                elif comp not in ("", "."):
                    depth += 1
        with self.parent(parts) as pfd:
            self.clear(pfd, parts)
            os.symlink(target, parts[-1], dir_fd=pfd)
            if self.same_owner:
                os.chown(parts[-1], m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            ns = _ns(m.mtime)
            os.utime(parts[-1], ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)

    def hardlink(self, m: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        target = self.parts(m.linkname, escape="hardlink target outside the layer")
        if target == parts:
            return  # a link to itself: nothing to do
        if not target:
            self.fail("hardlink target is a directory")
        try:
            with self.parent(target, create=False, cached=False) as tfd:
                st = os.lstat(target[-1], dir_fd=tfd)
                if stat.S_IFMT(st.st_mode) not in (stat.S_IFREG, stat.S_IFLNK, stat.S_IFIFO):
                    self.fail("hardlink target is a directory or special file")
                with self.parent(parts) as pfd:
                    self.clear(pfd, parts)
                    os.link(target[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd,
                            follow_symlinks=False)
        except FileNotFoundError:
            self.fail(f"hardlink target not found in the layer ({m.linkname})")

    def whiteout(self, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        if base != _WH_OPAQUE:
            if base.startswith(_WH_META):
                return self.note("whiteout metadata skipped")  # aufs .wh..wh.plnk and friends
            if base[len(_WH) :] in ("", ".", ".."):
                self.fail("invalid whiteout name")
        if not self.overlay:
            return self.note("whiteout skipped")
        if base == _WH_OPAQUE:
            fd = self.open_dir(parts[:-1], create=True)
            try:
                os.setxattr(fd, _OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
        else:
            wparts = parts[:-1] + (base[len(_WH) :],)
            with self.parent(wparts) as pfd:
                self.clear(pfd, wparts)
                os.mknod(wparts[-1], stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
        self.result.entries += 1


def _ns(mtime: float) -> int:
    return mtime * 10**9 if isinstance(mtime, int) else round(mtime * 1e9)


def remove_tree(path: Path) -> None:
    """Delete `path` (a tree, a file or a symlink) without ever following symlinks.

    Missing paths are fine.  Read-only directories (left by an unprivileged extraction) are
    made writable and the deletion is retried once.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    try:
        shutil.rmtree(path)
    except PermissionError:
        _make_dirs_writable(path)
        shutil.rmtree(path)


def _make_dirs_writable(top: Path) -> None:
    stack = [os.fspath(top)]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                continue
            if st.st_mode & 0o700 != 0o700:
                os.chmod(path, stat.S_IMODE(st.st_mode) | 0o700)
            with os.scandir(path) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue  # rmtree reports what really cannot be removed
