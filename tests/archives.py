"""Image archives built in code, for tests/test_oci.py (well-formed bundles) and
tests/test_hostile.py (hostile ones): tar members of every type, a tar of them, a tar of a
directory tree, content digests. Each test file assembles its own docker-save archives and
OCI layouts from these (test_hostile's lie about names and digests on purpose)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

OLD = 1_600_000_000  # every member's mtime unless a case sets one

Entry = tuple[tarfile.TarInfo, "bytes | None"]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def jbytes(doc) -> bytes:
    return json.dumps(doc).encode()


def member(name: str, type_=tarfile.REGTYPE, mode=0o644, **kw) -> tarfile.TarInfo:
    """A tar header; `kw` sets any other TarInfo field (uid, mtime, linkname, …)."""
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = type_, mode, OLD
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def reg(name: str, data: bytes = b"", **kw) -> Entry:
    return member(name, **kw), data


def dir_(name: str, mode=0o755, **kw) -> Entry:
    return member(name, tarfile.DIRTYPE, mode, **kw), None


def sym(name: str, target, **kw) -> Entry:
    return member(name, tarfile.SYMTYPE, 0o777, linkname=str(target), **kw), None


def hard(name: str, target, **kw) -> Entry:
    return member(name, tarfile.LNKTYPE, linkname=str(target), **kw), None


def fifo(name: str, mode=0o644) -> Entry:
    return member(name, tarfile.FIFOTYPE, mode), None


def dev(name: str, type_=tarfile.CHRTYPE, major=0, minor=0) -> Entry:
    return member(name, type_, 0o666, devmajor=major, devminor=minor), None


def xattrs(entry: Entry, **attrs: str) -> Entry:
    """The entry with PAX xattr records (`trusted__overlay__opaque="y"` for trusted.overlay.opaque)."""
    ti, data = entry
    ti.pax_headers = {f"SCHILY.xattr.{k.replace('__', '.')}": v for k, v in attrs.items()}
    return ti, data


def tar_of(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            if data is not None:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)
    return buf.getvalue()


def tar_tree(root: Path) -> bytes:
    """A layer tar of a directory tree, members relative to `root` (no ./ prefix), sorted."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for p in sorted(root.rglob("*")):
            t.add(str(p), arcname=str(p.relative_to(root)), recursive=False)
    return buf.getvalue()
