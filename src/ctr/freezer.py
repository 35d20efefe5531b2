"""Pausing a container (`ctr pause` / `unpause`): its processes in a freezer cgroup.

As docker's: the freezer stops every task of the group where it stands, unseen by the
workload (no SIGSTOP a parent could notice), and a task cannot fork out of it. The group is
made when the container is first paused, beside the sandbox's limit groups: cgroup v1's
freezer hierarchy where there is one, `<freezer mount>/<ctr's own group>/ctr/<id>`
(`freezer.state`), else cgroup v2, `<mount>/ctr/<id>` (`cgroup.freeze`, which every
non-root v2 group has, controllers or not -- on v2 that is the sandbox's own limit group); the processes are moved in then -- whatever they fork meanwhile
follows them, and the list is read again until no new process appears -- and the group is
frozen. Paused means: the group holds processes and reads FROZEN; nothing is recorded, so
an exit, a kill or a reboot can never leave a stale "paused" behind. The group goes with
the container (`remove`).

A host with neither writable gets an error.
"""

from __future__ import annotations

import errno
import os
import time

from ctr import cgroups

TYPE_CHECKING = False  # (not typing's: importing it costs ~3 ms)
if TYPE_CHECKING:
    from typing import Callable

FREEZE_TIMEOUT = 10.0  # seconds for every task to stop (one in an uninterruptible wait delays it)


class Hierarchy:
    """Where the groups go and how they freeze: v1 `freezer.state` FROZEN/THAWED, v2
    `cgroup.freeze` 1/0 (and `cgroup.events` says when it is done)."""

    def __init__(self, version: int, base: str):
        self.version, self.base = version, base
        self.state_file = "freezer.state" if version == 1 else "cgroup.freeze"
        self.frozen, self.thawed = ("FROZEN", "THAWED") if version == 1 else ("1", "0")

    def done(self, g: str) -> bool:
        if self.version == 1:
            return _read(os.path.join(g, "freezer.state")) == "FROZEN"
        return "frozen 1" in _read(os.path.join(g, "cgroup.events")).splitlines()


_found: list[Hierarchy | None] = []  # looked up once (ps asks for every running container)


def hierarchy() -> Hierarchy | None:
    """The writable v1 freezer hierarchy (this process's group in it), else the writable v2 one."""
    if not _found:
        found = cgroups.detect()
        _found.append(next((Hierarchy(1, os.path.join(h.mount, h.own)) for h in found
                            if h.version == 1 and "freezer" in h.controllers and h.writable), None)
                      or next((Hierarchy(2, h.mount) for h in found if h.version == 2 and h.writable), None))
    return _found[0]


def group(cid: str) -> str | None:
    h = hierarchy()
    return os.path.join(h.base, "ctr", cid) if h else None


def is_frozen(cid: str) -> bool:
    """Whether container `cid`'s processes are paused: its group holds some and is (being) frozen."""
    h, g = hierarchy(), group(cid)
    if h is None or g is None:
        return False
    try:
        state = _read(os.path.join(g, h.state_file))
        with open(os.path.join(g, "cgroup.procs")) as f:
            return state in (h.frozen, "FREEZING") and bool(f.read().strip())
    except OSError:
        return False


def freeze(cid: str, processes: Callable[[], list[int]]) -> None:
    """Move the container's processes (`processes()`, read again until no new one appears)
    into its group and freeze it; OSError/RuntimeError when that cannot be done (the group is
    then thawed: nothing stays half-paused)."""
    h, g = hierarchy(), group(cid)
    if h is None or g is None:
        raise RuntimeError("no writable cgroup hierarchy to freeze it in on this host")
    moved: set[int] = set()
    for _ in range(50):
        new = [p for p in processes() if p not in moved]
        if not new:
            break
        for pid in new:
            for attempt in range(2):
                try:
                    os.makedirs(g, exist_ok=True)
                    cgroups.write_file(os.path.join(g, "cgroup.procs"), str(pid))
                except ProcessLookupError:
                    pass  # ended meanwhile
                except FileNotFoundError:
                    if attempt:  # the `ctr` parent was removed meanwhile (remove(), another container)
                        raise
                    continue
                break
            moved.add(pid)
    try:
        cgroups.write_file(os.path.join(g, h.state_file), h.frozen)
        deadline = time.monotonic() + FREEZE_TIMEOUT
        while not h.done(g):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"its processes did not all stop within {FREEZE_TIMEOUT:g} s")
            time.sleep(0.01)
    except BaseException:
        thaw(cid)
        raise


def thaw(cid: str) -> None:
    h, g = hierarchy(), group(cid)
    if h is not None and g is not None and os.path.isdir(g):
        cgroups.write_file(os.path.join(g, h.state_file), h.thawed)


def remove(cid: str) -> None:
    """Thaw and delete the container's group (once its processes are gone); none is fine."""
    g = group(cid)
    if g is None or not os.path.isdir(g):
        return
    try:
        thaw(cid)
        os.rmdir(g)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EBUSY):
            raise
        return
    cgroups.remove_parent(g)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()
