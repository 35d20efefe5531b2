"""Reading an ext4 disk image from user space, without mounting it.

`vm diff` lists a qemu VM's disk through this reader rather than a loop mount: the disk was
written by the guest, and handing a filesystem the guest could have crafted to the host
kernel would undo the boundary the VM exists for.  Here a malformed image is a Python
exception (`Ext4Error`), never a kernel problem.

It reads what a listing needs — the superblock, group descriptors, inodes, and directory
blocks through extent trees or the old block maps — and nothing else: no file contents,
no xattrs, no journal.  The image must be clean (the journal replayed): a VM shut down by
its agent is; one that was turned off is replayed with `e2fsck -E journal_only` first, and
a running one is frozen by its agent (which checkpoints the journal) while it is read.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from typing import Iterator

from ctr.errors import CtrError

SUPERBLOCK_OFFSET = 1024
MAGIC = 0xEF53
EXTENT_MAGIC = 0xF30A
ROOT_INO = 2

INCOMPAT_RECOVER = 0x4
INCOMPAT_META_BG = 0x10
INCOMPAT_64BIT = 0x80
INCOMPAT_INLINE_DATA = 0x8000

FLAG_EXTENTS = 0x80000
FLAG_INLINE_DATA = 0x10000000

MAX_DEPTH = 4096  # directory nesting a listing follows
MAX_DIR_BYTES = 1 << 30  # a directory bigger than this is taken to be corrupt


class Ext4Error(CtrError):
    """The disk image is not an ext4 filesystem this reader understands."""


@dataclass(frozen=True)
class Inode:
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    mtime_ns: int
    ctime_ns: int
    flags: int
    block: bytes  # i_block: extent tree root, block map or inline data (60 bytes)


def _time_ns(base: int, extra: int | None) -> int:
    sec = struct.unpack("<i", struct.pack("<I", base))[0]  # signed 32 bits
    if extra is None:
        return sec * 1_000_000_000
    sec += (extra & 3) << 32
    return sec * 1_000_000_000 + (extra >> 2)


class Ext4:
    """An ext4 (or ext2/ext3) image opened read-only."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self.f = open(self.path, "rb")
        try:
            self._read_superblock()
        except BaseException:
            self.f.close()
            raise

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> "Ext4":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- layout
    def _read_superblock(self) -> None:
        sb = self._pread(SUPERBLOCK_OFFSET, 1024)
        if len(sb) < 1024 or struct.unpack_from("<H", sb, 0x38)[0] != MAGIC:
            raise Ext4Error(f"{self.path} is not an ext2/3/4 filesystem")
        (self.inodes_count,) = struct.unpack_from("<I", sb, 0x0)
        (self.first_data_block, log_bs, _log_cs, self.blocks_per_group, _cpg,
         self.inodes_per_group) = struct.unpack_from("<IIIIII", sb, 0x14)
        if log_bs > 6:
            raise Ext4Error(f"{self.path}: implausible block size")
        self.block_size = 1024 << log_bs
        (rev,) = struct.unpack_from("<I", sb, 0x4C)
        self.inode_size = struct.unpack_from("<H", sb, 0x58)[0] if rev >= 1 else 128
        self.compat, self.incompat, self.ro_compat = struct.unpack_from("<III", sb, 0x5C)
        self.desc_size = 32
        if self.incompat & INCOMPAT_64BIT:
            self.desc_size = struct.unpack_from("<H", sb, 0xFE)[0] or 64
        if self.incompat & INCOMPAT_META_BG:
            raise Ext4Error(f"{self.path}: the meta_bg layout is not supported")
        if self.inode_size < 128 or self.inodes_per_group == 0 or self.desc_size < 32:
            raise Ext4Error(f"{self.path}: corrupt superblock")
        self._tables: dict[int, int] = {}

    @property
    def needs_recovery(self) -> bool:
        """The journal holds changes not yet written to their place (an unclean stop)."""
        return bool(self.incompat & INCOMPAT_RECOVER)

    def _pread(self, offset: int, size: int) -> bytes:
        return os.pread(self.f.fileno(), size, offset)

    def _block(self, n: int) -> bytes:
        data = self._pread(n * self.block_size, self.block_size)
        if len(data) != self.block_size:
            raise Ext4Error(f"{self.path}: block {n} is beyond the end of the image")
        return data

    def _inode_table(self, group: int) -> int:
        if group not in self._tables:
            gdt = (self.first_data_block + 1) * self.block_size
            d = self._pread(gdt + group * self.desc_size, self.desc_size)
            if len(d) != self.desc_size:
                raise Ext4Error(f"{self.path}: group descriptor {group} is missing")
            table = struct.unpack_from("<I", d, 0x8)[0]
            if self.desc_size >= 64:
                table |= struct.unpack_from("<I", d, 0x28)[0] << 32
            self._tables[group] = table
        return self._tables[group]

    def inode(self, ino: int) -> Inode:
        if not 1 <= ino <= self.inodes_count:
            raise Ext4Error(f"{self.path}: inode {ino} out of range")
        group, index = divmod(ino - 1, self.inodes_per_group)
        offset = self._inode_table(group) * self.block_size + index * self.inode_size
        raw = self._pread(offset, self.inode_size)
        if len(raw) != self.inode_size:
            raise Ext4Error(f"{self.path}: inode {ino} is beyond the end of the image")
        mode, uid_lo, size_lo, _atime, ctime, mtime = struct.unpack_from("<HHIIII", raw, 0)
        gid_lo, links = struct.unpack_from("<HH", raw, 0x18)
        (flags,) = struct.unpack_from("<I", raw, 0x20)
        block = raw[0x28:0x28 + 60]
        (size_hi,) = struct.unpack_from("<I", raw, 0x6C)
        uid_hi, gid_hi = struct.unpack_from("<HH", raw, 0x78)
        ctime_x = mtime_x = None
        if self.inode_size > 128:
            (extra,) = struct.unpack_from("<H", raw, 0x80)
            if extra >= 8:
                (ctime_x,) = struct.unpack_from("<I", raw, 0x84)
            if extra >= 12:
                (mtime_x,) = struct.unpack_from("<I", raw, 0x88)
        return Inode(ino, mode, uid_lo | uid_hi << 16, gid_lo | gid_hi << 16,
                     size_lo | size_hi << 32, links, _time_ns(mtime, mtime_x),
                     _time_ns(ctime, ctime_x), flags, block)

    # ----------------------------------------------------------------- data
    def _extents(self, node: bytes, depth_left: int = 8) -> Iterator[tuple[int, int, int]]:
        """(logical block, physical block, length) of each initialised extent."""
        magic, entries, _max, depth = struct.unpack_from("<HHHH", node, 0)
        if magic != EXTENT_MAGIC or 12 + entries * 12 > len(node) or depth_left <= 0:
            raise Ext4Error(f"{self.path}: corrupt extent tree")
        for i in range(entries):
            off = 12 + i * 12
            if depth == 0:
                lblk, length, hi, lo = struct.unpack_from("<IHHI", node, off)
                if length > 32768:  # uninitialised: reads as zeros, holds no entries
                    continue
                yield lblk, lo | hi << 32, length
            else:
                _lblk, lo, hi = struct.unpack_from("<IIH", node, off)
                yield from self._extents(self._block(lo | hi << 32), depth_left - 1)

    def _block_map(self, block: bytes, nblocks: int) -> Iterator[tuple[int, int, int]]:
        ptrs = struct.unpack("<15I", block)
        per = self.block_size // 4
        logical = 0

        def walk(ptr: int, level: int) -> Iterator[tuple[int, int, int]]:
            nonlocal logical
            if logical >= nblocks:
                return
            if level == 0:
                if ptr:
                    yield logical, ptr, 1
                logical += 1
                return
            if ptr == 0:
                logical += per ** level
                return
            for child in struct.unpack(f"<{per}I", self._block(ptr)):
                yield from walk(child, level - 1)
                if logical >= nblocks:
                    return

        for i, ptr in enumerate(ptrs):
            yield from walk(ptr, 0 if i < 12 else i - 11)
            if logical >= nblocks:
                return

    def read(self, inode: Inode, limit: int = MAX_DIR_BYTES) -> bytes:
        """The contents of a (directory) inode; holes read as zeros."""
        if inode.flags & FLAG_INLINE_DATA:
            raise Ext4Error(f"{self.path}: inline data (inode {inode.ino}) is not supported")
        if inode.size > limit:
            raise Ext4Error(f"{self.path}: inode {inode.ino} is implausibly large")
        nblocks = -(-inode.size // self.block_size)
        out = bytearray(nblocks * self.block_size)
        runs = (self._extents(inode.block) if inode.flags & FLAG_EXTENTS
                else self._block_map(inode.block, nblocks))
        for lblk, pblk, length in runs:
            for j in range(length):
                if lblk + j >= nblocks:
                    break
                pos = (lblk + j) * self.block_size
                out[pos:pos + self.block_size] = self._block(pblk + j)
        return bytes(out[:inode.size])

    def entries(self, inode: Inode) -> Iterator[tuple[bytes, int]]:
        """(name, inode number) of a directory's entries, without "." and ".."."""
        data = self.read(inode)
        bs = self.block_size
        for start in range(0, len(data), bs):
            off, end = start, min(start + bs, len(data))
            while off + 8 <= end:
                ino, rec_len, name_len = struct.unpack_from("<IHB", data, off)
                if rec_len < 8 or off + rec_len > end or 8 + name_len > rec_len:
                    break  # a damaged block: the rest of it is unreadable
                if ino:
                    name = data[off + 8:off + 8 + name_len]
                    if name not in (b".", b"..") and b"/" not in name and name:
                        yield name, ino
                off += rec_len

    def walk(self) -> Iterator[tuple[str, Inode]]:
        """Every path below the root ("/a", "/a/b", …), parents first, with its inode."""
        seen = {ROOT_INO}

        def walk_dir(path: str, inode: Inode, depth: int) -> Iterator[tuple[str, Inode]]:
            if depth > MAX_DEPTH:
                raise Ext4Error(f"{self.path}: directories nest deeper than {MAX_DEPTH}")
            for name, ino in sorted(self.entries(inode)):
                child = self.inode(ino)
                p = f"{path}/{os.fsdecode(name)}" if path != "/" else f"/{os.fsdecode(name)}"
                yield p, child
                if stat.S_ISDIR(child.mode):
                    if ino in seen:
                        raise Ext4Error(f"{self.path}: directory {p} appears twice (a loop)")
                    seen.add(ino)
                    yield from walk_dir(p, child, depth + 1)

        yield from walk_dir("/", self.inode(ROOT_INO), 0)
