"""process isolation, `overlay` driver: kernel overlayfs in a private mount namespace.

The container's root is an overlay mount of its writable layer (`upper`) over a small
per-container `init` layer (mount points the image lacks) and the image's layers (or, for
the `host` image, the machine's root filesystem). The mount lives only in the workload's
own mount namespace, so nothing is left mounted when it exits, and `diff` reads `upper`
alone.

Over `host`, overlayfs layers exactly one filesystem: the one mounted at `/`. Other host
mounts (/proc, /sys, /dev, /run, /boot/efi, a separate /home …) are not inside it: inside
the container their mount points show as the empty directories they are on the root
filesystem, except /proc, /dev, /dev/shm and /tmp, which ctr provides fresh, and /sys, which
is bound read-only from the host.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctr.drivers.base import (Availability, Driver, filesystem_supported, process_launch, runtime_mounts,
                              userns_usable, volume_mounts)
from ctr.errors import DriverError
from ctr.models import Container, Image

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ctr.changes import Change
    from ctr.launch import Launch

MOUNTPOINTS = ("proc", "dev", "sys", "tmp")


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def lower_dirs(store, image: Image) -> list[str]:
    """The image's layer directories, top first (overlay's lowerdir order)."""
    if image.builtin:
        return ["/"]
    return [str(store.layer_dir(d)) for d in reversed(image.layers)]


def overlay_options(upper: str, work: str, lowers: list[str], rootless: bool) -> str:
    opts = [
        "lowerdir=" + ":".join(_escape(p) for p in lowers),
        f"upperdir={_escape(upper)}",
        f"workdir={_escape(work)}",
        # whole-file copy-up and no directory redirects: the writable layer then holds
        # complete files and whiteouts only, which is what diff/commit/export read.
        # (In a user namespace the kernel refuses redirect_dir=off, which still follows
        # redirects, together with userxattr: there it must be nofollow.)
        "redirect_dir=nofollow" if rootless else "redirect_dir=off",
        "metacopy=off",
        "index=off",
    ]
    if rootless:
        opts.append("userxattr")
    return ",".join(opts)


class OverlayDriver(Driver):
    name = "overlay"
    isolation = "process"
    summary = "kernel overlayfs in a private mount namespace, then pivot_root into the merged view"

    def __init__(self) -> None:
        self.rootless = os.geteuid() != 0

    def availability(self) -> Availability:
        if not filesystem_supported("overlay"):
            return Availability(False, "the kernel has no overlay filesystem",
                                "load it with `modprobe overlay`, or use --driver copy")
        if self.rootless:
            ok, why = userns_usable()
            if not ok:
                return Availability(False, f"not root and no user namespaces ({why})",
                                    "run as root, or enable unprivileged user namespaces")
            return Availability(True, "rootless: overlay in a user namespace (userxattr)")
        return Availability(True, "root: overlay in a private mount namespace")

    def prepare(self, store, ctr_dir: Path, container: Container, image: Image) -> None:
        for part in ("upper", "work", "merged", "init"):
            (ctr_dir / part).mkdir(mode=0o755)
        os.chmod(ctr_dir / "upper", 0o755)
        lowers = lower_dirs(store, image)
        for name in MOUNTPOINTS if not image.builtin else ():
            if not any(os.path.lexists(os.path.join(d, name)) for d in lowers):
                (ctr_dir / "init" / name).mkdir(mode=0o755)

    def launch(self, store, container: Container, image: Image) -> Launch:
        return build_launch(store, container, image, self.rootless)

    def changes(self, store, container: Container, image: Image) -> list[Change]:
        from ctr.changes import Lower, overlay_changes  # only diff needs it, not run

        upper = store.container_path(container.id, "upper")
        if not upper.is_dir():
            raise DriverError(f"container {container.short_id} has no writable layer")
        return overlay_changes(str(upper), Lower(lower_dirs(store, image), single_device=image.builtin))


def build_launch(store, container: Container, image: Image, rootless: bool) -> Launch:
    """The launch plan for an overlay container: pure, testable as data."""
    from ctr.launch import MountOp

    cid = container.id
    merged = str(store.container_path(cid, "merged"))
    lowers = lower_dirs(store, image)
    if not image.builtin:  # the host root already has its mount points; and overlayfs
        # refuses a lower layer that lies inside another one ("overlapping lowerdir path")
        lowers.insert(0, str(store.container_path(cid, "init")))
    opts = overlay_options(str(store.container_path(cid, "upper")), str(store.container_path(cid, "work")),
                           lowers, rootless)
    mounts = [MountOp(merged, "overlay", "overlay", (), opts, in_root=False, kind="none")]
    mounts += runtime_mounts(rootless)
    if image.builtin:
        mounts.append(MountOp("/sys", "/sys", None, ("bind", "ro"), optional=True))
    mounts += volume_mounts(container)
    return process_launch(container, merged, mounts, rootless)
