"""How much disk a tree takes, as du counts it: for `container prune`, `image prune`, VM disks
and checkpoints."""

from __future__ import annotations

import os
import stat


class Usage:
    __slots__ = ("bytes", "apparent", "inodes")

    def __init__(self, bytes: int, apparent: int, inodes: int):
        self.bytes = bytes  # allocated on disk (st_blocks), as du counts: holes cost nothing
        self.apparent = apparent  # sum of file sizes
        self.inodes = inodes  # entries, directories included

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Usage) and (self.bytes, self.apparent, self.inodes) == \
            (other.bytes, other.apparent, other.inodes)

    def __repr__(self) -> str:
        return f"Usage(bytes={self.bytes}, apparent={self.apparent}, inodes={self.inodes})"


def tree_usage(root: str | os.PathLike[str], same_device: bool = True) -> Usage:
    """du's figure for a tree (hard links counted once), without following symlinks."""
    root = os.fspath(root)
    seen: set[tuple[int, int]] = set()
    try:
        top = os.lstat(root)
    except FileNotFoundError:  # gone meanwhile: nothing
        return Usage(0, 0, 0)
    total, apparent, count = top.st_blocks * 512, 0, 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for e in it:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if same_device and st.st_dev != top.st_dev:
                continue
            count += 1
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
            if stat.S_ISREG(st.st_mode):
                apparent += st.st_size
            if stat.S_ISDIR(st.st_mode):
                stack.append(e.path)
    return Usage(total, apparent, count)
