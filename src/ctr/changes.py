"""What a workload changed: the list that `diff`, `commit` and `export` share.

Rules (docker's and podman's, written down in docs/diff.md):
- `A` a path the base does not have; an added directory lists its children too.
- `D` a path of the base that is gone; a deleted directory shows only itself.
- `C` a path of both that was touched (content, mode, owner, times, or replaced by a
  different type); a directory is also `C` when it is an ancestor of any change.
- a directory deleted and made again is `D dir` followed by `A` for what it now holds.
- a rename is `D old` + `A new`.
Sorted by path, so output is stable.

Two sources, one result:
- `overlay_changes(upper, lower)` walks only the overlay's writable layer and looks each
  entry up in the base: its cost follows the number of changes, not the size of the image.
- `tree_changes(rootfs, manifest)` compares a materialised private tree (the copy driver)
  with the manifest taken when it was made: inode + ctime tell what was touched (ctime
  cannot be set by the workload), a marker xattr on every base directory tells a directory
  made again from the original.
"""

from __future__ import annotations

import os
import stat
from ctr.models import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Iterator

ADDED, CHANGED, DELETED = "A", "C", "D"
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
MARKER_XATTR = "trusted.ctr.base" if os.geteuid() == 0 else "user.ctr.base"


class Change(tuple):
    """One line of `diff`: (path, kind). A tuple, so immutable, hashable and ordered by path
    then kind as the frozen, ordered dataclass it replaces (without importing dataclasses);
    cheap to make by the ten thousand."""

    __slots__ = ()

    def __new__(cls, path: str, kind: str) -> "Change":
        return tuple.__new__(cls, (path, kind))

    @property
    def path(self) -> str:
        return self[0]

    @property
    def kind(self) -> str:
        return self[1]

    def __getnewargs__(self) -> tuple[str, str]:  # copy and pickle call __new__(cls, path, kind)
        return (self[0], self[1])

    def __repr__(self) -> str:
        return f"Change(path={self[0]!r}, kind={self[1]!r})"

    def __str__(self) -> str:
        return f"{self[1]} {self[0]}"


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


class Lower:
    """A read-only view of a stack of layer directories (top first), resolving overlay
    whiteouts and opaque directories, or of the host root (`single_device=True`: paths on
    other filesystems are not part of the overlay's lower layer)."""

    def __init__(self, layers: list[str], single_device: bool = False):
        self.layers = layers
        self.dev = os.lstat(layers[0]).st_dev if single_device and layers else None

    def lookup(self, rel: str) -> os.stat_result | None:
        for layer in self.layers:
            p = layer + rel if layer != "/" else rel
            try:
                st = os.lstat(p)
            except (FileNotFoundError, NotADirectoryError):
                if self._opaque_above(layer, rel):
                    return None
                continue
            if self.dev is not None and st.st_dev != self.dev:
                return None
            if is_whiteout(st):
                return None
            return st
        return None

    def _opaque_above(self, layer: str, rel: str) -> bool:
        # a parent directory marked opaque (or whited out) in this layer hides lower layers
        parts = rel.strip("/").split("/")[:-1]
        cur = layer.rstrip("/")
        for part in parts:
            cur = f"{cur}/{part}"
            try:
                st = os.lstat(cur)
            except (FileNotFoundError, NotADirectoryError):
                return False
            if is_whiteout(st) or not stat.S_ISDIR(st.st_mode):
                return True
            if is_opaque(cur):
                return True
        return False


def _meta_differs(a: os.stat_result, b: os.stat_result) -> bool:
    return (
        stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode)
        or a.st_uid != b.st_uid
        or a.st_gid != b.st_gid
        or a.st_mtime_ns != b.st_mtime_ns
    )


def _walk_all(top: str, rel: str) -> Iterator[str]:
    """Every path below top+rel (relative to top), parents first."""
    try:
        entries = sorted(os.scandir(top + rel), key=lambda e: e.name)
    except (NotADirectoryError, FileNotFoundError):
        return
    for e in entries:
        p = f"{rel}/{e.name}" if rel != "/" else f"/{e.name}"
        yield p
        if e.is_dir(follow_symlinks=False):
            yield from _walk_all(top, p)


def _added(top: str, rel: str, found: dict[str, str]) -> None:
    """Record every path below top+rel as added, leaving out whiteouts (a directory new in
    the upper layer can hold whiteouts of what it replaced). Types come from the directory
    entries: only a character device (a possible whiteout) costs a stat."""
    try:
        it = os.scandir(top + rel)
    except (NotADirectoryError, FileNotFoundError):
        return
    with it:
        for e in it:
            p = f"{rel}/{e.name}"
            if e.is_dir(follow_symlinks=False):
                found[p] = ADDED
                _added(top, p, found)
            elif e.is_file(follow_symlinks=False) or e.is_symlink() or not is_whiteout(e.stat(follow_symlinks=False)):
                found[p] = ADDED


def overlay_changes(upper: str, lower: Lower) -> list[Change]:
    """Changes recorded in an overlay upper directory over `lower`."""
    upper = upper.rstrip("/")
    found: dict[str, str] = {}

    def walk(rel: str) -> None:
        try:
            entries = list(os.scandir(upper + rel))
        except FileNotFoundError:
            return
        for e in entries:
            p = f"{rel}/{e.name}" if rel != "/" else f"/{e.name}"
            if e.is_file(follow_symlinks=False) or e.is_symlink():  # no stat needed
                found[p] = ADDED if lower.lookup(p) is None else CHANGED
                continue
            st = e.stat(follow_symlinks=False)
            if is_whiteout(st):
                if lower.lookup(p) is not None:
                    found[p] = DELETED
                continue
            low = lower.lookup(p)
            if stat.S_ISDIR(st.st_mode):
                if low is None:
                    found[p] = ADDED
                    _added(upper, p, found)
                elif not stat.S_ISDIR(low.st_mode):
                    found[p] = CHANGED
                    for child in _walk_all(upper, p):
                        found[child] = ADDED
                elif is_opaque(upper + p):
                    found[p] = DELETED
                    _added(upper, p, found)
                else:
                    if _meta_differs(st, low):
                        found[p] = CHANGED
                    walk(p)
            else:
                found[p] = ADDED if low is None else CHANGED

    walk("/")
    return finish(found)


def finish(found: dict[str, str]) -> list[Change]:
    """Add ancestors of changes as `C` and return the sorted list."""
    for p in list(found):
        parent = p.rpartition("/")[0]  # os.path.dirname for these absolute, normalised paths
        while parent:
            if parent in found:
                break
            found[parent] = CHANGED
            parent = parent.rpartition("/")[0]
    return [Change(p, k) for p, k in sorted(found.items())]


# ------------------------------------------------------------------ materialised trees
class Entry(Record):
    __slots__ = _fields = ("ino", "ctime_ns", "kind")

    def __init__(self, ino: int, ctime_ns: int, kind: str):
        self.ino, self.ctime_ns, self.kind = ino, ctime_ns, kind  # kind: d f l o


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "d"
    if stat.S_ISREG(mode):
        return "f"
    if stat.S_ISLNK(mode):
        return "l"
    return "o"


def take_manifest(rootfs: str) -> dict[str, Entry]:
    """Record every path of a freshly materialised tree, and mark its directories."""
    rootfs = rootfs.rstrip("/")
    manifest: dict[str, Entry] = {}
    for p in _walk_all(rootfs, "/"):
        full = rootfs + p
        st = os.lstat(full)
        if stat.S_ISDIR(st.st_mode):
            try:
                os.setxattr(full, MARKER_XATTR, p.encode(), follow_symlinks=False)
                st = os.lstat(full)
            except OSError:
                pass
        manifest[p] = Entry(st.st_ino, st.st_ctime_ns, _kind(st.st_mode))
    return manifest


def dump_manifest(manifest: dict[str, Entry]) -> bytes:
    lines = [f"{e.ino}\t{e.ctime_ns}\t{e.kind}\t{p}" for p, e in manifest.items()]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def load_manifest(data: bytes) -> dict[str, Entry]:
    out = {}
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        ino, ctime, kind, path = line.split("\t", 3)
        out[path] = Entry(int(ino), int(ctime), kind)
    return out


def _marker(full: str) -> bytes | None:
    try:
        return os.getxattr(full, MARKER_XATTR, follow_symlinks=False)
    except OSError:
        return None


def tree_changes(rootfs: str, manifest: dict[str, Entry], markers: bool = True) -> list[Change]:
    """Changes in a materialised tree since `take_manifest`."""
    rootfs = rootfs.rstrip("/")
    found: dict[str, str] = {}
    seen: set[str] = set()
    replaced: set[str] = set()  # base directories whose old contents are gone wholesale

    def walk(rel: str) -> None:
        try:
            entries = list(os.scandir(rootfs + rel))
        except FileNotFoundError:
            return
        for e in entries:
            p = f"{rel}/{e.name}" if rel != "/" else f"/{e.name}"
            st = e.stat(follow_symlinks=False)
            base = manifest.get(p)
            if base is None:
                found[p] = ADDED
                if stat.S_ISDIR(st.st_mode):
                    for child in _walk_all(rootfs, p):
                        found[child] = ADDED
                continue
            seen.add(p)
            kind = _kind(st.st_mode)
            if kind != base.kind:
                found[p] = CHANGED
                replaced.add(p)
                if kind == "d":
                    for child in _walk_all(rootfs, p):
                        found[child] = ADDED
                continue
            if kind == "d":
                recreated = (_marker(rootfs + p) != p.encode()) if markers else st.st_ino != base.ino
                if recreated:
                    found[p] = DELETED
                    replaced.add(p)
                    for child in _walk_all(rootfs, p):
                        found[child] = ADDED
                    continue
                if st.st_ctime_ns != base.ctime_ns:
                    found[p] = CHANGED
                walk(p)
            elif st.st_ino != base.ino or st.st_ctime_ns != base.ctime_ns:
                found[p] = CHANGED

    walk("/")
    for p in manifest:
        if p in seen or p in found:
            continue
        parent = os.path.dirname(p)
        # only the topmost deleted path is listed
        if parent != "/" and (parent not in seen or parent in replaced):
            continue
        found[p] = DELETED
    return finish(found)


def render(changes: Iterable[Change]) -> str:
    return "".join(f"{c.kind} {c.path}\n" for c in changes)


def group(changes: Iterable[Change]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"added": [], "changed": [], "deleted": []}
    key = {ADDED: "added", CHANGED: "changed", DELETED: "deleted"}
    for c in changes:
        out[key[c.kind]].append(c.path)
    return out
