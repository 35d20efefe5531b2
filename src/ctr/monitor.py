"""The per-container monitor: what keeps a detached container (`run -d`, `start`) supervised
without a daemon, like podman's conmon.

`spawn()` forks (setsid, double fork: the monitor is nobody's child but init's), and the
monitor starts the workload as its own child, then reports back on a pipe (`{"ok": true}` once
the workload has been exec'd, or the 125/126/127 failure), so `run -d` returns exactly when
a foreground `run` would have started waiting. From then on the monitor

- holds a descriptor on the workload's mount namespace, so its identity (the nsfs inode used
  to find the container's other processes) cannot be reused while the monitor looks at it;
- copies the workload's stdout and stderr, line by line, into `log.jsonl` in the container's
  directory, one JSON object per line as docker's json-file driver writes them:
  `{"log": "hello\\n", "stream": "stdout", "time": "2024-05-01T12:00:00.123456789Z"}`;
- waits for the workload; when it exits, kills whatever else still runs in the container
  (background children, `exec` sessions), drains the pipes, releases the namespace (nothing
  stays mounted), and records the exit code and finish time atomically under the store lock.

The monitor holds no lock and no descriptor of its caller; its stdin, stdout and stderr are
/dev/null. The workload gets SIGKILL when the monitor dies (PR_SET_PDEATHSIG; the kernel
clears it when the workload changes user, so `reconcile_orphan` in engine/lifecycle.py also
kills a container whose monitor is gone). See docs/lifecycle.md.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import time

from ctr import faults, proc
from ctr.errors import CtrError
from ctr.models import Container, State, now_iso

TYPE_CHECKING = False  # (not typing's: importing typing costs every command ~3 ms)
if TYPE_CHECKING:
    from ctr.drivers import Driver
    from ctr.engine.context import Context
    from ctr.models import Image

LOG = "log.jsonl"  # per-container part name, through Store.container_path
PARTIAL = 16 * 1024  # a line longer than this is logged in pieces (docker: 16 KiB)
DRAIN_SECONDS = 2.0  # after the workload is gone, how long to wait for its pipes to close
LEFTOVER_SECONDS = 5.0  # how long to wait for the container's other processes to die
FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class MonitorError(CtrError):
    exit_code = 125


# ----------------------------------------------------------------------------- log format
def log_entry(data: bytes, stream: str, when_ns: int) -> bytes:
    """One json-file line. Bytes that are not UTF-8 survive as \\udcXX escapes."""
    return json.dumps({"log": data.decode("utf-8", "surrogateescape"), "stream": stream,
                       "time": timestamp(when_ns)}).encode() + b"\n"


def timestamp(when_ns: int) -> str:
    """RFC 3339 with nanoseconds, UTC, as docker prints with `logs -t`."""
    secs, ns = divmod(when_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns:09d}Z"


def parse_entry(line: bytes) -> tuple[str, str, bytes] | None:
    """(time, stream, data) of one log line; None for a torn or foreign line."""
    try:
        d = json.loads(line)
        return d["time"], d["stream"], d["log"].encode("utf-8", "surrogateescape")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class LineWriter:
    """Splits a stream into lines and appends them to the log file as json-file entries.
    A failed write (a full disk, say) loses that output, not the container: the first error
    is kept in `lost` and recorded with the exit."""

    lost: str = ""

    def __init__(self, log_fd: int, stream: str):
        self.fd, self.stream, self.buf = log_fd, stream, b""

    def feed(self, data: bytes) -> None:
        now = time.time_ns()
        self.buf += data
        out = []
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0 or nl >= PARTIAL:
                if len(self.buf) < PARTIAL:
                    break
                piece, self.buf = self.buf[:PARTIAL], self.buf[PARTIAL:]
            else:
                piece, self.buf = self.buf[:nl + 1], self.buf[nl + 1:]
            out.append(log_entry(piece, self.stream, now))
        if out:
            self._append(b"".join(out))

    def flush(self) -> None:
        if self.buf:
            self._append(log_entry(self.buf, self.stream, time.time_ns()))
            self.buf = b""

    def _append(self, data: bytes) -> None:
        try:
            _write_all(self.fd, data)
        except OSError as e:
            LineWriter.lost = LineWriter.lost or f"output was lost: writing the log failed: {e.strerror or e}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


# ----------------------------------------------------------------------------- processes
def container_processes(cid: str, mnt_ns: tuple[int, int] | None = None) -> list[int]:
    """Every process inside container `cid`: the members of each mount namespace whose root
    mount names the container's directory (`.../containers/<cid>/upper` for overlay,
    `.../containers/<cid>/rootfs` for copy) — which includes namespaces a workload made inside
    its own — and, given `mnt_ns` (device, inode), every member of that namespace. The inode is
    only safe while the caller holds the namespace open (a freed namespace's inode is reused);
    it catches what the root mount cannot (a process that chroot'ed deeper sees no such line)."""
    try:
        own = os.stat("/proc/self/ns/mnt")
        own_id = (own.st_dev, own.st_ino)
    except OSError:
        return []
    groups: dict[tuple[int, int], list[int]] = {}
    for e in os.scandir("/proc"):
        if not e.name.isdigit() or int(e.name) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{e.name}/ns/mnt")
        except OSError:
            continue
        ident = (st.st_dev, st.st_ino)
        if ident != own_id:
            groups.setdefault(ident, []).append(int(e.name))
    marker = f"/containers/{cid}/"
    found = list(groups.pop(mnt_ns, [])) if mnt_ns is not None else []
    for pids in groups.values():
        if any(_root_mount_names(pid, marker) for pid in pids):
            found += pids
    return sorted(found)


def _root_mount_names(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            return any(marker in line for line in f if line.split(" ", 5)[4:5] == ["/"])
    except OSError:
        return False


def kill_processes(pids: list[int], timeout: float = LEFTOVER_SECONDS) -> list[int]:
    """SIGKILL each (pid, as identified now by its start time) and wait until all are gone;
    returns those still alive after `timeout`."""
    marks = [(p, proc.pid_start_time(p)) for p in pids]
    for pid, start in marks:
        if start is not None:
            send_signal(pid, start, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    left = marks
    while True:
        for pid, _ in left:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        left = [(p, s) for p, s in left if s is not None and proc.pid_alive(p, s)]
        if not left or time.monotonic() >= deadline:
            return [p for p, _ in left]
        time.sleep(0.005)


def send_signal(pid: int, start: int | None, sig: int) -> bool:
    """Send `sig` to `pid` only if it is still the process that started at `start`."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if start is not None and proc.pid_start_time(pid) != start:
            return False
        signal.pidfd_send_signal(fd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- spawning
def spawn(ctx: "Context", c: Container, image: "Image", driver: "Driver") -> None:
    """Start container `c` under a new monitor; returns once its workload has been exec'd.

    Raises the InvokeError (126/127) or SetupError (125) a foreground run would raise; the
    monitor has then already recorded the failure."""
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # ---- intermediate child: new session, fork the monitor, exit
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:
                _daemonise(keep=w)
                _run_monitor(ctx, c.id, w, image, driver)
        finally:
            os._exit(0)
    os.close(w)
    while True:
        try:
            os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    _await_report(ctx, c.id, r)


def _await_report(ctx: "Context", cid: str, r: int) -> None:
    chunks = []
    while True:
        try:
            b = os.read(r, 65536)
        except InterruptedError:
            continue
        if not b:
            break
        chunks.append(b)
    os.close(r)
    try:
        report = json.loads(b"".join(chunks) or b"null")
    except ValueError:
        report = None
    if isinstance(report, dict) and report.get("ok"):
        return
    if not isinstance(report, dict):
        message = "the container's monitor exited before starting it"
        _record_failure(ctx, cid, 125, message)
        raise MonitorError(message, hint="run it in the foreground (without -d) to see why")
    code, message = int(report.get("code", 125)), str(report.get("message", "unknown error"))
    if code in (proc.EXIT_CANNOT_INVOKE, proc.EXIT_NOT_FOUND):
        raise proc.InvokeError(message, code)
    raise proc.SetupError(message)


def _daemonise(keep: int) -> None:
    """Detach from everything the caller had: /dev/null for stdio, no other descriptors,
    cwd /, default signal dispositions for what a terminal sends."""
    import gc

    gc.freeze()  # objects inherited from the caller are never finalised here (their fds are closed)
    nul = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        if nul != fd:
            os.dup2(nul, fd)
    if nul > 2:
        os.close(nul)
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    os.chdir("/")
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)


class Reporter:
    """The pipe back to the command that spawned the monitor: one JSON message, then EOF."""

    def __init__(self, fd: int):
        self.fd: int | None = fd

    def send(self, data: dict) -> None:
        if self.fd is None:
            return
        try:
            _write_all(self.fd, json.dumps(data).encode())
        except OSError:
            pass  # the caller is gone (killed while waiting): nothing to tell
        os.close(self.fd)
        self.fd = None


# ----------------------------------------------------------------------------- the monitor
def _run_monitor(ctx: "Context", cid: str, status_fd: int, image: "Image | None" = None,
                 driver: "Driver | None" = None) -> None:
    """The monitor's whole life; never returns."""
    code = 0
    reporter = Reporter(status_fd)
    try:
        proc.set_process_name("ctr-monitor")
        supervise(ctx, cid, reporter, image, driver)
    except BaseException as e:  # noqa: BLE001 - the monitor must record, not vanish
        code = 1
        message = "container monitor failed: " + (getattr(e, "message", None) or f"{type(e).__name__}: {e}")
        reporter.send({"ok": False, "code": 125, "message": message})
        try:  # what is not supervised does not run: kill the container, then record why
            kill_processes(container_processes(cid))
            _record_failure(ctx, cid, None, message)
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)


def supervise(ctx: "Context", cid: str, reporter: Reporter, image: "Image | None" = None,
              driver: "Driver | None" = None) -> None:
    """Start the workload of `cid`, report to the spawner, log its output, record its exit."""
    from ctr.drivers import get_driver
    from ctr.engine.containers import _load, remove_containers, update
    from ctr.engine.images import get_image

    c = _load(ctx, cid)
    if c is None:
        raise MonitorError(f"container {cid[:12]} was removed before it could start")
    image = image or get_image(ctx, c.image)
    driver = driver or get_driver(c.isolation, c.driver)
    launch = driver.launch(ctx.store, c, image)
    log_fd = os.open(ctx.store.container_path(cid, LOG), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    pipes: dict[int, LineWriter] = {}
    ends: list[int] = []
    if not launch.tty:
        for stream in ("stdout", "stderr"):
            rd, wr = os.pipe2(os.O_CLOEXEC)
            pipes[rd] = LineWriter(log_fd, stream)
            ends.append(wr)
    try:
        started = proc.start(launch, stdout=ends[0] if ends else None, stderr=ends[1] if ends else None,
                             pid1_hook=proc.die_with_parent)
    except CtrError as e:
        code = e.exit_code if e.exit_code in (125, 126, 127) else 125
        _record_failure(ctx, cid, code, e.message)
        reporter.send({"ok": False, "code": code, "message": e.message})
        if c.auto_remove:
            remove_containers(ctx, [cid], force=True)
        return
    finally:
        for fd in ends:
            os.close(fd)
    if started.master_fd is not None:
        pipes[started.master_fd] = LineWriter(log_fd, "stdout")
    pid = started.pid
    try:  # pin the namespace (a workload that already ended has none to pin)
        ns_fd: int | None = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(ns_fd)
        mnt_ns: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except OSError:
        ns_fd = mnt_ns = None
    me, me_start = os.getpid(), proc.pid_start_time(os.getpid())

    def mark(x: Container) -> None:
        x.state = State.RUNNING.value
        x.pid, x.pid_start = pid, started.start_time
        x.monitor_pid, x.monitor_start = me, me_start
        x.started, x.finished, x.exit_code, x.error = now_iso(), None, None, ""

    if update(ctx, cid, mark) is None:  # removed while starting: do not run unsupervised
        send_signal(pid, started.start_time, signal.SIGKILL)
    faults.point("monitor.recorded")
    reporter.send({"ok": True, "pid": pid})
    for sig in FORWARD:
        signal.signal(sig, lambda s, f: send_signal(pid, started.start_time, s))

    code = _pump(pid, pipes)
    kill_processes(container_processes(cid, mnt_ns))
    _drain(pipes)
    if ns_fd is not None:
        os.close(ns_fd)
    os.close(log_fd)

    def done(x: Container) -> None:
        if x.monitor_pid != me:
            return
        if x.state != State.REMOVING.value:
            x.state = State.EXITED.value
        x.exit_code, x.finished = code, now_iso()
        x.error = LineWriter.lost

    _retry(lambda: update(ctx, cid, done))
    if c.auto_remove:
        remove_containers(ctx, [cid], force=True)


def _pump(pid: int, pipes: dict[int, LineWriter]) -> int:
    """Copy output into the log until the workload exits; returns its exit code."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    for fd in pipes:
        poller.register(fd, select.POLLIN)
    try:
        exited = False
        while not exited:
            for fd, _ in poller.poll():
                if fd == pidfd:
                    exited = True
                elif fd in pipes and not _read(fd, pipes[fd]):
                    poller.unregister(fd)
                    _close(pipes.pop(fd), fd)
    finally:
        os.close(pidfd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return proc.exit_code_from_status(status)
        except InterruptedError:
            continue


def _read(fd: int, writer: LineWriter) -> bool:
    """Read what is there; False at end of stream (EOF, or EIO from a pty whose side closed)."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return True
    except OSError as e:
        if e.errno != errno.EIO:
            raise
        data = b""
    if not data:
        return False
    writer.feed(data)
    return True


def _close(writer: LineWriter, fd: int) -> None:
    writer.flush()
    os.close(fd)


def _drain(pipes: dict[int, LineWriter]) -> None:
    """Everything still in the pipes after the container's processes are gone."""
    deadline = time.monotonic() + DRAIN_SECONDS
    poller = select.poll()
    for fd in pipes:
        poller.register(fd, select.POLLIN)
    while pipes and time.monotonic() < deadline:
        for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            if not _read(fd, pipes[fd]):
                poller.unregister(fd)
                _close(pipes.pop(fd), fd)
    for fd, writer in list(pipes.items()):
        _close(writer, fd)


def _record_failure(ctx: "Context", cid: str, code: int | None, message: str) -> None:
    from ctr.engine.containers import update

    def failed(x: Container) -> None:
        if x.state != State.REMOVING.value:
            x.state = State.EXITED.value
        x.exit_code = code if code is not None else x.exit_code
        x.finished = now_iso()
        x.started = x.started or x.finished
        x.error = message

    _retry(lambda: update(ctx, cid, failed))


def _retry(fn, attempts: int = 5) -> None:
    """The exit must be recorded: the store lock may be busy for a while (LOCK_TIMEOUT each),
    the disk full for a moment."""
    from ctr.errors import StoreError

    for i in range(attempts):
        try:
            fn()
            return
        except (StoreError, OSError):
            if i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1))
