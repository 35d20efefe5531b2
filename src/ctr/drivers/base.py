"""The one small interface every driver implements."""

from __future__ import annotations

import os
from pathlib import Path

from ctr.models import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ctr.changes import Change
    from ctr.launch import Launch, MountOp
    from ctr.models import Container, Image
    from ctr.store import Store


class Availability(Record):
    __slots__ = _fields = ("usable", "reason", "fix", "notes")

    def __init__(self, usable: bool, reason: str = "", fix: str = "", notes: list[str] | None = None):
        self.usable = usable
        self.reason = reason  # why not (or what is notable when usable)
        self.fix = fix  # how to make it usable
        self.notes = [] if notes is None else notes


class Driver:
    """How one isolation level is realised on this host.

    `prepare` builds the container's directories (inside a tmp/ directory the store then
    renames into place), `launch` returns the plan as data, `run` carries it out, `changes`
    reports what the workload changed, `cleanup` undoes anything outside the container's
    directory (mounts, processes) before the store deletes it.
    """

    name = ""
    isolation = ""
    emulated = False  # realises its isolation level by emulation (says so everywhere)
    summary = ""
    cannot_capture: tuple[str, ...] = ()
    read_only_root = True  # honours RunConfig.read_only (`run --read-only`)

    def availability(self) -> Availability:  # pragma: no cover - interface
        raise NotImplementedError

    def prepare(self, store: "Store", ctr_dir: Path, container: "Container", image: "Image") -> None:
        raise NotImplementedError

    def launch(self, store: "Store", container: "Container", image: "Image") -> Launch:
        raise NotImplementedError

    def run(self, store: "Store", container: "Container", image: "Image", on_start=None) -> int:
        from ctr import proc

        started = proc.start(self.launch(store, container, image))
        if on_start:
            on_start(started)
        return proc.wait(started)

    def changes(self, store: "Store", container: "Container", image: "Image") -> list["Change"]:
        raise NotImplementedError

    def host_processes(self, store: "Store", container: "Container") -> list[int]:
        """The host processes a running container is made of (`top`, `stats`, `pause`): every
        member of its mount namespaces."""
        from ctr import monitor

        return monitor.container_processes(container.id)

    tasks_visible = True  # host_processes are the container's tasks (a VM's are in its guest)

    def cleanup(self, store: "Store", container: "Container") -> None:
        from ctr import proc

        for mp in proc.mounts_under(store.container_dir(container.id)):
            try:
                proc.umount(mp)
            except OSError:
                pass


def volume_mounts(container: "Container") -> list[MountOp]:
    from ctr.launch import MountOp  # here: `diff`, `ps` and `rm` load drivers but launch nothing

    return [
        MountOp(m.target, m.source, None, ("bind", "ro") if m.readonly else ("bind", "rec"),
                kind="dir" if os.path.isdir(m.source) else "file")
        for m in container.config.mounts
    ]


def userns_usable() -> tuple[bool, str]:
    """Can this (non-root) user create a user namespace?"""
    try:
        if Path("/proc/sys/kernel/unprivileged_userns_clone").read_text().strip() == "0":
            return False, "kernel.unprivileged_userns_clone is 0"
    except OSError:
        pass
    try:
        if int(Path("/proc/sys/user/max_user_namespaces").read_text()) == 0:
            return False, "user.max_user_namespaces is 0"
    except OSError:
        pass
    return True, ""


def filesystem_supported(name: str) -> bool:
    try:
        text = Path("/proc/filesystems").read_text()
    except OSError:
        return False
    return any(line.split()[-1] == name for line in text.splitlines() if line.strip())


def runtime_mounts(rootless: bool) -> list[MountOp]:
    """/proc, /dev, /tmp for a process container; rootless, /proc is the host's bound (proc
    can only be mounted by the owner of a pid namespace)."""
    from ctr.launch import MountOp, base_mounts

    return [MountOp("/proc", "/proc", None, ("bind", "rec")) if rootless and m.target == "/proc" else m
            for m in base_mounts()]


def process_launch(container: "Container", root: str, mounts: list[MountOp], rootless: bool) -> Launch:
    """The launch plan of a process container whose root and mounts a driver has chosen."""
    from ctr.launch import Launch

    cfg = container.config
    return Launch(
        argv=list(cfg.command),
        env=dict(e.split("=", 1) if "=" in e else (e, "") for e in cfg.env),
        cwd=cfg.workdir or "/",
        user=cfg.user,
        root=root,
        pivot=True,
        namespaces=("user", "mnt") if rootless else ("mnt",),
        mounts=mounts,
        stdin="inherit" if cfg.interactive else "null",
        tty=cfg.tty,
        readonly_root=cfg.read_only,
    )
