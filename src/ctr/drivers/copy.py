"""process isolation, `copy` driver: the portable fallback when overlayfs cannot be used.

The image is materialised into a private tree (`rootfs`, copied with reflinks where the
filesystem has them), the workload is pivoted into it, and `diff` compares the tree with the
manifest taken when it was made. The base is never written: the copy is the container's.

What it cannot capture, and says so in `ctr info` and `ctr inspect`:
- it costs a full copy of the image per container (time and disk), so it refuses the
  `host` image (the live root filesystem);
- a file opened for writing but left byte- and metadata-identical is not reported, where
  overlay would report it as copied up;
- diff costs a walk of the whole tree, not of the changes alone.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ctr.changes import Change, dump_manifest, is_opaque, is_whiteout, load_manifest, take_manifest, tree_changes
from ctr.drivers.base import Availability, Driver, process_launch, runtime_mounts, userns_usable, volume_mounts
from ctr.errors import DriverError
from ctr.launch import Launch, MountOp
from ctr.models import Container, Image
from ctr.store.store import remove_path

MOUNTPOINTS = ("proc", "dev", "sys", "tmp")


class CopyDriver(Driver):
    name = "copy"
    isolation = "process"
    summary = "a private materialised copy of the image; changes found by comparing with it"
    cannot_capture = (
        "refuses the host image (it would copy the whole root filesystem)",
        "a file rewritten with identical bytes and metadata is not reported",
        "diff walks the whole tree (cost follows image size)",
    )

    def __init__(self) -> None:
        self.rootless = os.geteuid() != 0

    def availability(self) -> Availability:
        if self.rootless:
            ok, why = userns_usable()
            if not ok:
                return Availability(False, f"not root and no user namespaces ({why}): cannot enter a private root",
                                    "run as root, or enable unprivileged user namespaces")
        return Availability(True, "; ".join(self.cannot_capture))

    def prepare(self, store, ctr_dir: Path, container: Container, image: Image) -> None:
        if image.builtin:
            raise DriverError(
                "the copy driver cannot use the host image: it would copy the whole root filesystem",
                hint="use --driver overlay, or import a smaller image with `ctr image import`",
            )
        rootfs = ctr_dir / "rootfs"
        rootfs.mkdir(mode=0o755)
        materialise([str(store.layer_dir(d)) for d in image.layers], str(rootfs))
        for name in MOUNTPOINTS:
            if not os.path.lexists(rootfs / name):
                (rootfs / name).mkdir(mode=0o755)
        (ctr_dir / "manifest").write_bytes(dump_manifest(take_manifest(str(rootfs))))

    def launch(self, store, container: Container, image: Image) -> Launch:
        return build_launch(store, container, self.rootless)

    def changes(self, store, container: Container, image: Image) -> list[Change]:
        rootfs = store.container_path(container.id, "rootfs")
        manifest = load_manifest(store.container_path(container.id, "manifest").read_bytes())
        return tree_changes(str(rootfs), manifest)


def build_launch(store, container: Container, rootless: bool) -> Launch:
    rootfs = str(store.container_path(container.id, "rootfs"))
    mounts = [MountOp(rootfs, rootfs, None, ("bind",), in_root=False, kind="none")]
    mounts += runtime_mounts(rootless) + volume_mounts(container)
    return process_launch(container, rootfs, mounts, rootless)


def materialise(layers: list[str], dest: str) -> None:
    """Apply layer directories (bottom first, overlay whiteout form) into `dest`."""
    for layer in layers:
        _apply(layer, dest, {})


def _apply(src: str, dst: str, links: dict[tuple[int, int], str]) -> None:
    """Copy one layer over `dst`; `links` maps a source inode to its first copy, so hard
    links inside the layer stay hard links in the copy."""
    for e in os.scandir(src):
        s, d = os.path.join(src, e.name), os.path.join(dst, e.name)
        st = e.stat(follow_symlinks=False)
        if is_whiteout(st):
            remove_path(Path(d))
            continue
        if stat.S_ISDIR(st.st_mode):
            if os.path.lexists(d) and (not os.path.isdir(d) or os.path.islink(d) or is_opaque(s)):
                remove_path(Path(d))
            if not os.path.lexists(d):
                os.mkdir(d)
            _apply(s, d, links)
            _copy_meta(s, d, st)
        else:
            if os.path.lexists(d):
                remove_path(Path(d))
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)
                _copy_meta(s, d, st)
            elif stat.S_ISREG(st.st_mode):
                first = links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
                if first is not None:
                    os.link(first, d)
                    continue
                _copy_file(s, d)
                _copy_meta(s, d, st)
                if st.st_nlink > 1:
                    links[(st.st_dev, st.st_ino)] = d
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(d)
                _copy_meta(s, d, st)


def _copy_file(s: str, d: str) -> None:
    fi = os.open(s, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fo = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                import fcntl

                fcntl.ioctl(fo, 0x40049409, fi)  # FICLONE: share blocks where the fs can
            except OSError:
                size = os.fstat(fi).st_size
                offset = 0
                while offset < size:
                    n = os.sendfile(fo, fi, offset, size - offset)
                    if n == 0:
                        break
                    offset += n
        finally:
            os.close(fo)
    finally:
        os.close(fi)


def _copy_meta(s: str, d: str, st: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(d, stat.S_IMODE(st.st_mode))
    os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
