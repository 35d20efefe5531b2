"""Pausing a container (`ctr pause` / `unpause`): its processes in a cgroup v1 freezer group.

As docker's: the freezer stops every task of the group where it stands, unseen by the
workload (no SIGSTOP a parent could notice), and a task cannot fork out of it. The group is
`<freezer mount>/<ctr's own group>/ctr/<id>` (beside the sandbox's limit groups), made when the
container is first paused; the processes are moved in then -- whatever they fork meanwhile
follows them, and the list is read again until no new process appears -- and the group is
frozen. Paused means: the group holds processes and reads FROZEN; nothing is recorded, so
an exit, a kill or a reboot can never leave a stale "paused" behind. The group goes with
the container (`remove`).

Only cgroup v1's freezer here (the machines ctr is tested on mount v2 without controllers);
on a host without one, pause says so.
"""

from __future__ import annotations

import errno
import os
import time

TYPE_CHECKING = False  # (not typing's: importing it costs ~3 ms)
if TYPE_CHECKING:
    from typing import Callable

FREEZE_TIMEOUT = 10.0  # seconds for every task to stop (one in an uninterruptible wait delays it)


_found: list[str | None] = []  # the hierarchy, once looked up (ps asks for every running container)


def _hierarchy() -> str | None:
    """This process's group in the writable v1 freezer hierarchy, or None."""
    if not _found:
        from ctr import cgroups

        _found.append(next((os.path.join(h.mount, h.own) for h in cgroups.detect()
                            if h.version == 1 and "freezer" in h.controllers and h.writable), None))
    return _found[0]


def group(cid: str) -> str | None:
    base = _hierarchy()
    return os.path.join(base, "ctr", cid) if base else None


def is_frozen(cid: str) -> bool:
    """Whether container `cid`'s processes are paused: its group holds some and is (being) frozen."""
    g = group(cid)
    if g is None:
        return False
    try:
        with open(os.path.join(g, "freezer.state")) as f:
            state = f.read().strip()
        with open(os.path.join(g, "cgroup.procs")) as f:
            return state in ("FROZEN", "FREEZING") and bool(f.read().strip())
    except OSError:
        return False


def freeze(cid: str, processes: Callable[[], list[int]]) -> None:
    """Move the container's processes (`processes()`, read again until no new one appears)
    into its group and freeze it; OSError/RuntimeError when that cannot be done (the group is
    then thawed: nothing stays half-paused)."""
    g = group(cid)
    if g is None:
        raise RuntimeError("no writable cgroup v1 freezer hierarchy on this host")
    moved: set[int] = set()
    for _ in range(50):
        new = [p for p in processes() if p not in moved]
        if not new:
            break
        for pid in new:
            for attempt in range(2):
                try:
                    os.makedirs(g, exist_ok=True)
                    _write(os.path.join(g, "cgroup.procs"), str(pid))
                except ProcessLookupError:
                    pass  # ended meanwhile
                except FileNotFoundError:
                    if attempt:  # the `ctr` parent was removed meanwhile (remove(), another container)
                        raise
                    continue
                break
            moved.add(pid)
    try:
        _write(os.path.join(g, "freezer.state"), "FROZEN")
        deadline = time.monotonic() + FREEZE_TIMEOUT
        while _read(os.path.join(g, "freezer.state")) != "FROZEN":
            if time.monotonic() >= deadline:
                raise RuntimeError(f"its processes did not all stop within {FREEZE_TIMEOUT:g} s")
            time.sleep(0.01)
    except BaseException:
        thaw(cid)
        raise


def thaw(cid: str) -> None:
    g = group(cid)
    if g is not None and os.path.isdir(g):
        _write(os.path.join(g, "freezer.state"), "THAWED")


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
    try:
        os.rmdir(os.path.dirname(g))  # the shared `ctr` group, once no container has one in it
    except OSError:
        pass


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()
