"""`ctr stats`: what running containers use -- CPU, memory, block and network I/O, tasks.

Read from the host's /proc for the processes the driver says the container is made of
(`Driver.host_processes`): no daemon keeps counters, so two samples give the CPU share.
Per process: CPU time with that of the children it reaped (`/proc/PID/stat`), resident memory
(`statm`), bytes read from and written to storage (`io`: those of processes still running),
threads. Network: a container with a network namespace of its own (sandbox) counts its
interfaces but `lo`; a process container shares the host's, a microvm's is inside its guest:
none to show. A microvm is its qemu seen from the host (its memory as the host pays it); its
tasks are the guest's (not shown). Memory limit: the container's `--memory`, else the host's.
"""

from __future__ import annotations

import os
import time

from ctr.engine.context import Context
from ctr.models import Container, Record, State


class Usage(Record):
    """One container's counters at one moment. None: not known for this container (its
    tasks or network are inside a VM, or it shares the host's network)."""

    __slots__ = _fields = ("id", "name", "running", "cpu_seconds", "memory", "memory_limit", "block_read",
                           "block_write", "net_rx", "net_tx", "tasks", "taken")

    def __init__(self, id: str, name: str, running: bool, cpu_seconds: float = 0.0, memory: int = 0,
                 memory_limit: int = 0, block_read: int = 0, block_write: int = 0, net_rx: int | None = None,
                 net_tx: int | None = None, tasks: int | None = 0, taken: float = 0.0):
        self.id, self.name, self.running = id, name, running
        self.cpu_seconds, self.memory, self.memory_limit = cpu_seconds, memory, memory_limit
        self.block_read, self.block_write = block_read, block_write
        self.net_rx, self.net_tx, self.tasks, self.taken = net_rx, net_tx, tasks, taken


def sample(ctx: Context, containers: list[Container]) -> list[Usage]:
    """Each container's counters now (zeros for one that is not running)."""
    from ctr.drivers import get_driver

    host_memory = _host_memory()
    own_net = _net_ns(os.getpid())
    out = []
    for c in containers:
        if c.state != State.RUNNING.value:
            out.append(Usage(c.id, c.name, False, memory_limit=0, tasks=0, taken=time.monotonic()))
            continue
        driver = get_driver(c.isolation, c.driver)
        pids = driver.host_processes(ctx.store, c)
        u = Usage(c.id, c.name, True, memory_limit=c.config.memory or host_memory,
                  tasks=0 if driver.tasks_visible else None)
        for pid in pids:
            _add_process(u, pid)
        if driver.tasks_visible and pids:
            u.net_rx, u.net_tx = _net_io(pids[0], own_net)
        u.taken = time.monotonic()
        out.append(u)
    return out


def cpu_percent(before: Usage, now: Usage) -> float:
    """The CPU the container used between two samples, docker's way: 100 is one CPU."""
    wall = now.taken - before.taken
    if wall <= 0 or not now.running:
        return 0.0
    return max(0.0, now.cpu_seconds - before.cpu_seconds) / wall * 100


def memory_percent(u: Usage) -> float:
    return u.memory / u.memory_limit * 100 if u.memory_limit else 0.0


_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _add_process(u: Usage, pid: int) -> None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return  # gone meanwhile
    # after the command's name: state is field 3; utime, stime, cutime, cstime 14-17; threads 20
    u.cpu_seconds += sum(int(x) for x in fields[11:15]) / _TICK
    u.memory += resident * _PAGE
    if u.tasks is not None:
        u.tasks += int(fields[17])
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            io = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        u.block_read += int(io.get(b"read_bytes", 0))
        u.block_write += int(io.get(b"write_bytes", 0))
    except (OSError, ValueError):
        pass  # not ours to read


def _net_ns(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _net_io(pid: int, own: tuple[int, int] | None) -> tuple[int | None, int | None]:
    """Bytes received and sent on the interfaces of `pid`'s network namespace but `lo`; None
    when it is the host's (a process container's traffic is the host's, not its own)."""
    ns = _net_ns(pid)
    if ns is None or ns == own:
        return None, None
    rx = tx = 0
    try:
        with open(f"/proc/{pid}/net/dev", "rb") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return None, None
    for line in lines:
        name, _, counters = line.partition(b":")
        values = counters.split()
        if name.strip() == b"lo" or len(values) < 9:
            continue
        rx += int(values[0])
        tx += int(values[8])
    return rx, tx


def _host_memory() -> int:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
