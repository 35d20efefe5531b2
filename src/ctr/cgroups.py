"""Resource caps for a container: cgroup v2, else cgroup v1, else rlimits.

`detect()` reads which cgroup hierarchies this host has and which of them ctr may write;
`plan(limits, cid, hierarchies)` is pure: it turns a container's limits into the steps that
create its group (`mkdir`s and writes), the files the container joins it through, and the
rlimits that stand in for whatever no hierarchy can enforce. `create()` carries out the steps,
`remove()` kills what is left in the groups and deletes them.

Where the groups go:
- cgroup v2: `<mount>/ctr/<id>`. v2 forbids processes in a group that delegates controllers,
  so the group hangs off the hierarchy's root (as runc's cgroupfs driver does), with the
  controllers enabled in the root's and `ctr`'s `cgroup.subtree_control`.
- cgroup v1: `<mount>/<ctr's own group>/ctr/<id>` in each controller's hierarchy, so whatever
  limits or accounts for the process that ran ctr also covers its containers.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from ctr.models import _NEW, Record  # (plain classes: dataclasses costs every sandbox run ~7 ms)

# memory per allowed task when no pids limit is given: half of what Linux allows a machine
# (threads-max = RAM / 128 KiB), so 1 GiB of memory allows 4096 tasks
PIDS_PER_BYTES = 256 << 10
MIN_PIDS = 64
CFS_PERIOD_US = 100_000


class Limits(Record):
    __slots__ = _fields = ("memory", "cpus", "pids")  # memory in bytes

    def __init__(self, memory: int | None = None, cpus: float | None = None, pids: int | None = None):
        self.memory, self.cpus, self.pids = memory, cpus, pids

    @staticmethod
    def for_memory(memory: int | None, cpus: float | None) -> "Limits":
        pids = max(MIN_PIDS, memory // PIDS_PER_BYTES) if memory else None
        return Limits(memory, cpus, pids)


class Hierarchy(Record):
    """version: 1 or 2; mount: where it is mounted; own: this process's group, as a directory
    under `mount` ("" for the root); controllers: v1, the hierarchy's controllers, v2, those
    its root offers; has_memsw: v1 memory, memory.memsw.* exists (swap accounting on)."""

    __slots__ = _fields = ("version", "mount", "own", "controllers", "writable", "has_memsw")

    def __init__(self, version: int, mount: str, own: str, controllers: tuple[str, ...], writable: bool,
                 has_memsw: bool = False):
        self.version, self.mount, self.own, self.controllers = version, mount, own, controllers
        self.writable, self.has_memsw = writable, has_memsw


class Plan(Record):
    """mechanism: "cgroup v2" | "cgroup v1" | "rlimits"; steps: ("mkdir", dir) | ("write",
    file, value); groups: this container's own group directories; procs: the files the
    workload joins by writing "0" (v2 cgroup.procs; v1 tasks, from a single-threaded process); enforced: limit -> how it is enforced."""

    __slots__ = _fields = ("mechanism", "steps", "groups", "procs", "rlimits", "enforced")

    def __init__(self, mechanism: str, steps: list[tuple[str, ...]] = _NEW, groups: list[str] = _NEW,
                 procs: list[str] = _NEW, rlimits: dict[str, int] = _NEW, enforced: dict[str, str] = _NEW):
        self.mechanism = mechanism
        self.steps = [] if steps is _NEW else steps
        self.groups = [] if groups is _NEW else groups
        self.procs = [] if procs is _NEW else procs
        self.rlimits = {} if rlimits is _NEW else rlimits
        self.enforced = {} if enforced is _NEW else enforced

    def to_dict(self) -> dict:
        return {"mechanism": self.mechanism, "groups": list(self.groups),
                "rlimits": dict(self.rlimits), "enforced": dict(self.enforced)}


# --------------------------------------------------------------------------- detection
def _mountinfo() -> list[tuple[str, str, str, str]]:
    """(root, mount point, fstype, super options) of every mount."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                a, b = left.split(), right.split()
                if len(a) >= 5 and len(b) >= 3:
                    out.append((a[3], a[4].replace("\\040", " "), b[0], b[2]))
    except OSError:
        pass
    return out


def _own_groups() -> dict[str, str]:
    """controller list (v1, e.g. "cpu,cpuacct") or "" (v2) -> this process's group path."""
    out = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) == 3:
                    out[parts[1]] = parts[2]
    except OSError:
        pass
    return out


def _relative(own: str, mount_root: str) -> str:
    own, mount_root = own.rstrip("/"), mount_root.rstrip("/")
    if mount_root and own.startswith(mount_root):
        own = own[len(mount_root):]
    return own.lstrip("/")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def detect() -> list[Hierarchy]:
    """The cgroup hierarchies mounted here, with this process's place in each."""
    own = _own_groups()
    found = []
    for root, mp, fstype, opts in _mountinfo():
        if fstype == "cgroup2":
            ctrls = tuple(_read(os.path.join(mp, "cgroup.controllers")).split())
            found.append(Hierarchy(2, mp, "", ctrls,
                                   os.access(os.path.join(mp, "cgroup.subtree_control"), os.W_OK)))
        elif fstype == "cgroup":
            ctrls = tuple(o for o in opts.split(",") if o in ("memory", "cpu", "pids", "cpuacct", "cpuset",
                                                                "blkio", "devices", "freezer", "hugetlb"))
            key = next((k for k in own if k and set(k.split(",")) == set(ctrls)), None)
            if not ctrls or key is None:
                continue
            rel = _relative(own[key], root)
            base = os.path.join(mp, rel) if rel else mp
            found.append(Hierarchy(1, mp, rel, ctrls, os.access(base, os.W_OK),
                                   has_memsw="memory" in ctrls
                                   and os.path.exists(os.path.join(base, "memory.memsw.limit_in_bytes"))))
    return found


# --------------------------------------------------------------------------- the plan (pure)
def plan(limits: Limits, cid: str, hierarchies: list[Hierarchy]) -> Plan:
    """How to enforce `limits` for container `cid` on a host with these hierarchies."""
    v2 = next((h for h in hierarchies if h.version == 2 and h.writable
               and {"memory", "pids"} <= set(h.controllers)), None)
    if v2 is not None:
        return _plan_v2(limits, cid, v2)
    v1 = {c: h for h in hierarchies if h.version == 1 and h.writable for c in h.controllers}
    if "memory" in v1:
        return _plan_v1(limits, cid, v1)
    return rlimits_only(limits, "no writable cgroup hierarchy with the memory controller")


def join_files(mechanism: str, groups: list[str]) -> list[str]:
    """The files a process joins `groups` through, writing "0" from a single-threaded process
    (forked, before exec): v1's `tasks`, not `cgroup.procs` -- moving one thread skips the
    global lock a process move takes, whose RCU grace period cost every start 5-16 ms
    (docs/performance.md, the hyperv/sandbox target); v2 moves threads only within a threaded
    subtree, so `cgroup.procs` there."""
    name = "tasks" if mechanism == "cgroup v1" else "cgroup.procs"
    return [os.path.join(g, name) for g in groups] if mechanism.startswith("cgroup") else []


def rlimits_only(limits: Limits, why: str) -> Plan:
    return _plan_rlimits(limits, Plan("rlimits"), ("memory", "pids", "cpus"), why)


def _plan_v2(limits: Limits, cid: str, h: Hierarchy) -> Plan:
    p = Plan("cgroup v2")
    ctrls = [c for c in ("cpu", "memory", "pids") if c in h.controllers]
    enable = " ".join("+" + c for c in ctrls)
    parent = os.path.join(h.mount, "ctr")
    group = os.path.join(parent, cid)
    p.steps += [("write", os.path.join(h.mount, "cgroup.subtree_control"), enable),
                ("mkdir", parent),
                ("write", os.path.join(parent, "cgroup.subtree_control"), enable),
                ("mkdir", group)]
    p.groups.append(group)
    p.procs += join_files(p.mechanism, [group])
    if limits.memory:
        p.steps += [("write", os.path.join(group, "memory.max"), str(limits.memory)),
                    ("write", os.path.join(group, "memory.swap.max"), "0")]
        p.enforced["memory"] = f"cgroup v2 memory.max = {limits.memory}, no swap"
    if limits.pids:
        p.steps.append(("write", os.path.join(group, "pids.max"), str(limits.pids)))
        p.enforced["pids"] = f"cgroup v2 pids.max = {limits.pids}"
    if limits.cpus:
        if "cpu" in ctrls:
            quota = max(1000, int(limits.cpus * CFS_PERIOD_US))
            p.steps.append(("write", os.path.join(group, "cpu.max"), f"{quota} {CFS_PERIOD_US}"))
            p.enforced["cpus"] = f"cgroup v2 cpu.max = {quota} {CFS_PERIOD_US}"
        else:
            p.enforced["cpus"] = "not enforced: the cgroup v2 hierarchy has no cpu controller"
    return p


def _plan_v1(limits: Limits, cid: str, by_ctrl: dict[str, Hierarchy]) -> Plan:
    p = Plan("cgroup v1")
    groups: dict[str, str] = {}  # hierarchy mount -> group dir

    def group(ctrl: str) -> str:
        h = by_ctrl[ctrl]
        if h.mount not in groups:
            d = os.path.join(h.mount, h.own, "ctr", cid)
            groups[h.mount] = d
            p.steps.append(("mkdir", d))
            p.groups.append(d)
            p.procs += join_files(p.mechanism, [d])
        return groups[h.mount]

    missing = []
    if limits.memory:
        g = group("memory")
        p.steps.append(("write", os.path.join(g, "memory.limit_in_bytes"), str(limits.memory)))
        how = f"cgroup v1 memory.limit_in_bytes = {limits.memory}"
        if by_ctrl["memory"].has_memsw:  # memory + swap: the limit cannot be dodged by swapping
            p.steps.append(("write", os.path.join(g, "memory.memsw.limit_in_bytes"), str(limits.memory)))
            how += ", memory.memsw.limit_in_bytes (no swap)"
        p.enforced["memory"] = how
    if limits.pids:
        if "pids" in by_ctrl:
            p.steps.append(("write", os.path.join(group("pids"), "pids.max"), str(limits.pids)))
            p.enforced["pids"] = f"cgroup v1 pids.max = {limits.pids}"
        else:
            missing.append("pids")
    if limits.cpus:
        if "cpu" in by_ctrl:
            g = group("cpu")
            quota = max(1000, int(limits.cpus * CFS_PERIOD_US))
            p.steps += [("write", os.path.join(g, "cpu.cfs_period_us"), str(CFS_PERIOD_US)),
                        ("write", os.path.join(g, "cpu.cfs_quota_us"), str(quota))]
            p.enforced["cpus"] = f"cgroup v1 cpu.cfs_quota_us = {quota} per {CFS_PERIOD_US}"
        else:
            missing.append("cpus")
    return _plan_rlimits(limits, p, missing, "no writable cgroup v1 hierarchy with that controller")


def _plan_rlimits(limits: Limits, p: Plan, which, why: str) -> Plan:
    """rlimits for what no cgroup enforces: RLIMIT_AS for memory, RLIMIT_NPROC for tasks."""
    if "memory" in which and limits.memory:
        p.rlimits["RLIMIT_AS"] = limits.memory
        p.enforced["memory"] = f"RLIMIT_AS = {limits.memory} per process (address space, not resident memory; {why})"
    if "pids" in which and limits.pids:
        p.rlimits["RLIMIT_NPROC"] = limits.pids
        p.enforced["pids"] = f"RLIMIT_NPROC = {limits.pids} per user ({why})"
    if "cpus" in which and limits.cpus:
        p.enforced["cpus"] = f"not enforced ({why})"
    return p


# --------------------------------------------------------------------------- create / remove
def create(p: Plan) -> None:
    """Make the groups and write the limits; on failure undo what was made and raise OSError."""
    try:
        for step in p.steps:
            if step[0] == "mkdir":
                for attempt in range(5):
                    try:
                        os.makedirs(step[1], exist_ok=True)
                        break
                    except FileNotFoundError:  # another ctr removed the emptied `ctr` parent
                        if attempt == 4:
                            raise
            else:
                write_file(step[1], step[2])
    except OSError:
        remove(p.groups)
        raise


def write_file(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise OSError(e.errno, f"cannot write {value!r} to {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def pids_in(group: str) -> list[int]:
    return [int(x) for x in _read(os.path.join(group, "cgroup.procs")).split()]


def remove(groups: list[str], timeout: float = 5.0) -> list[str]:
    """Kill every process still in the groups, then delete them, and their shared `ctr`
    parent once no container uses it (an empty child would keep whoever owns the group
    above from removing it). Returns the groups that could not be deleted (still busy after
    `timeout`)."""
    left = []
    for g in reversed(groups):
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(g)
                remove_parent(g)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                    left.append(g)
                    break
            for pid in pids_in(g):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
    return left


def remove_parent(group: str) -> None:
    """Delete a group's shared `ctr` parent once no container has a group in it."""
    parent = os.path.dirname(group.rstrip("/"))
    if os.path.basename(parent) == "ctr":
        try:
            os.rmdir(parent)
        except OSError:  # other containers' groups are in it (EBUSY), or it is gone
            pass
