"""newc ("070701") cpio archives, written and read in pure Python.

The Linux kernel unpacks newc archives into its initial rootfs; several archives may be
concatenated (later entries win), which is how ctr appends a small per-run archive to the
cached base initramfs.  Archives are deterministic: inode numbers are sequential and every
mtime is 0, so the same input always gives the same bytes (and the same cache key).
"""

from __future__ import annotations

import io
import stat
from dataclasses import dataclass
from typing import BinaryIO, Iterator

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_HEADER_LEN = 110


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


@dataclass(frozen=True)
class Entry:
    """One archive member as read back."""

    name: str
    mode: int
    uid: int
    gid: int
    data: bytes
    rdev: tuple[int, int] = (0, 0)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_chardev(self) -> bool:
        return stat.S_ISCHR(self.mode)

    @property
    def link_target(self) -> str:
        return self.data.decode()


class CpioWriter:
    """Write a newc archive to a binary file object.  Call `close()` (or use `with`) to
    append the trailer.  Names are stored relative ("bin/sh"), as the kernel expects."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._ino = 0
        self._closed = False
        self._dirs: set[str] = set()

    def __enter__(self) -> "CpioWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()

    def _entry(self, name: str, mode: int, data: bytes = b"", uid: int = 0, gid: int = 0,
               nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        if self._closed:
            raise ValueError("archive already closed")
        name = name.lstrip("/")
        if name != TRAILER:
            if not name or name.startswith("../") or "/../" in name or name == "..":
                raise ValueError(f"bad cpio member name {name!r}")
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, uid, gid, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + b"\0" * _pad(_HEADER_LEN + len(encoded)))
        if data:
            self._out.write(data + b"\0" * _pad(len(data)))

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        name = name.strip("/")
        if name in self._dirs:
            return
        self.add_parents(name)
        self._dirs.add(name)
        self._entry(name, stat.S_IFDIR | mode, nlink=2)

    def add_parents(self, name: str) -> None:
        """Add every missing parent directory of `name`."""
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.add_dir("/".join(parts[:i]))

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self.add_parents(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self.add_parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.add_parents(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def close(self) -> None:
        if not self._closed:
            self._entry(TRAILER, 0, nlink=1)
            self._closed = True


def build(entries: Iterator[tuple[str, ...]] | None = None) -> bytes:
    """Convenience for small archives: returns the bytes of an archive of `entries`, each
    ("file", name, data[, mode]) / ("dir", name) / ("symlink", name, target)."""
    buf = io.BytesIO()
    with CpioWriter(buf) as w:
        for kind, name, *rest in entries or ():
            if kind == "file":
                w.add_file(name, *rest)
            elif kind == "dir":
                w.add_dir(name, *rest)
            elif kind == "symlink":
                w.add_symlink(name, *rest)
            else:
                raise ValueError(f"unknown cpio entry kind {kind!r}")
    return buf.getvalue()


def read(data: bytes) -> list[Entry]:
    """Parse one or more concatenated newc archives (zero padding between them is
    skipped, as the kernel does).  Raises ValueError on a malformed archive."""
    entries: list[Entry] = []
    pos = 0
    while pos < len(data):
        if data[pos:pos + 4] == b"\0\0\0\0":
            pos += 4
            continue
        if data[pos:pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        try:
            f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        except ValueError as e:
            raise ValueError(f"bad cpio header at offset {pos}") from e
        _ino, mode, uid, gid, _nlink, _mtime, size, _maj, _min, rmaj, rmin, namesize, _chk = f
        pos += _HEADER_LEN
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize + _pad(_HEADER_LEN + namesize)
        body = data[pos:pos + size]
        if len(body) != size:
            raise ValueError(f"truncated cpio member {name!r}")
        pos += size + _pad(size)
        if name == TRAILER:
            continue
        entries.append(Entry(name, mode, uid, gid, body, (rmaj, rmin)))
    return entries
