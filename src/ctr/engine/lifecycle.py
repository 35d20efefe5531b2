"""Container lifecycle without a daemon: detached start, start, stop, kill, wait, logs, exec.

A detached container is supervised by its own monitor process (`ctr.monitor`); everything
here works from the record and the kernel: signals go to the recorded workload pid (checked
against its start time), waits block on a pidfd of the monitor, logs are read from the
monitor's json-lines file, and exec joins the workload's namespaces and root (or, for a
driver with `exec_in`, hands the exec plan to the driver: microvm runs it in the guest,
sandbox adds the workload's confinement to the join).
"""

from __future__ import annotations

import os
import select
import signal
import time

from ctr import monitor, proc
from ctr.drivers import Driver, get_driver
from ctr.engine.containers import _load, get_container, reconcile, start_foreground, update
from ctr.engine.context import Context
from ctr.errors import Conflict, CtrError, DriverError, InvalidArgument, NotFound
from ctr.models import _NEW, Container, Image, Record, State, now_iso

TYPE_CHECKING = False  # (typing, dataclasses and contextlib are not imported at run time: `rm`
if TYPE_CHECKING:  # and `run --rm` load this module for terminate(); docs/performance.md)
    from typing import Any, Callable, Iterator

    from ctr.launch import Launch

STOP_TIMEOUT = 10  # docker's default grace period for `stop`
KILL_WAIT = 10.0  # after SIGKILL, how long the record may take to say `exited`


class Outcome(Record):
    """What one reference of a multi-reference verb came to: a value, or an error."""

    __slots__ = _fields = ("ref", "id", "value", "error")

    def __init__(self, ref: str, id: str | None = None, value: Any = None, error: CtrError | None = None):
        self.ref, self.id, self.value, self.error = ref, id, value, error


def for_each(refs: list[str], fn: Callable[[str], tuple[str, Any]]) -> list[Outcome]:
    """Run `fn(ref) -> (id, value)` for every reference, carrying on after a failure."""
    out = []
    for ref in refs:
        try:
            cid, value = fn(ref)
            out.append(Outcome(ref, cid, value))
        except CtrError as e:
            out.append(Outcome(ref, None, None, e))
    return out


# ----------------------------------------------------------------------------- starting
class _start_lock:
    """`with _start_lock(ctx, cid):` serialises starts of one container (two monitors must
    never share a writable layer); a container gone meanwhile is NotFound."""

    def __init__(self, ctx: Context, cid: str):
        from ctr.store.records import flock

        self.cid, self.lock = cid, flock(ctx.store.container_path(cid, "start.lock"))

    def __enter__(self) -> None:
        try:
            self.lock.__enter__()
        except FileNotFoundError:
            raise NotFound(f"no such container: {self.cid[:12]}") from None

    def __exit__(self, *exc: object) -> None:
        self.lock.__exit__(*exc)


def _check_detachable(driver: Driver) -> None:
    # a driver with its own run() is detachable only if it says its launch plan alone runs it
    if type(driver).run is not Driver.run and not getattr(driver, "detachable", False):
        raise DriverError(f"the {driver.name} driver cannot run a container detached yet",
                          hint="run it in the foreground (without -d)")


def start_detached(ctx: Context, c: Container, image: Image, driver: Driver) -> Container:
    """Start a created container under a monitor; returns once the workload has been exec'd.
    Raises as a foreground run would (125 setup, 126/127 invoke), with the failure recorded."""
    _check_detachable(driver)
    with _start_lock(ctx, c.id):
        monitor.spawn(ctx, c, image, driver)
    return _load(ctx, c.id) or c


def _restartable(ctx: Context, ref: str) -> tuple[Container, Image, Driver]:
    c = get_container(ctx, ref)
    if c.state == State.REMOVING.value:
        raise Conflict(f"container {ref} is being removed")
    from ctr.engine.images import get_image

    return c, get_image(ctx, c.image), get_driver(c.isolation, c.driver)


def start(ctx: Context, ref: str) -> Container:
    """`start REF`: run the stored command again over the same writable layer, detached.
    A running container is left as it is."""
    c, image, driver = _restartable(ctx, ref)
    _check_detachable(driver)
    with _start_lock(ctx, c.id):
        now = _load(ctx, c.id)
        if now is None:
            raise NotFound(f"no such container: {ref}")
        if reconcile(ctx, now).state == State.RUNNING.value:
            return now
        _kill_leftovers(now.id)
        monitor.spawn(ctx, now, image, driver)
    return _load(ctx, c.id) or c


def restart(ctx: Context, ref: str, timeout: float = STOP_TIMEOUT) -> Container:
    """`restart REF`: `stop` (SIGTERM, SIGKILL after `timeout`), then `start` (detached) over
    the same writable layer; a container that is not running is just started."""
    c, _, driver = _restartable(ctx, ref)
    _check_detachable(driver)  # before anything is stopped
    if c.auto_remove:
        raise Conflict(f"container {ref} was run with --rm: stopping it removes it, so it cannot be restarted",
                       hint=f"stop it with `ctr stop {ref}`, then run it again")
    stop(ctx, c.id, timeout)
    return start(ctx, c.id)


def _kill_leftovers(cid: str) -> None:
    """A container that is not running may still have processes: a foreground `run` killed
    before it recorded the start leaves its workload orphaned. Two workloads must never
    share a writable layer, so whatever is left is killed before a start."""
    left = monitor.container_processes(cid)
    if left:
        monitor.kill_processes(left)


def start_attached(ctx: Context, ref: str) -> int:
    """`start -a REF`: run the stored command again in the foreground; returns its code."""
    c, image, driver = _restartable(ctx, ref)
    with _start_lock(ctx, c.id):
        now = _load(ctx, c.id)
        if now is None:
            raise NotFound(f"no such container: {ref}")
        if reconcile(ctx, now).state == State.RUNNING.value:
            raise Conflict(f"container {ref} is already running",
                           hint=f"follow its output with `ctr logs -f {ref}`")
        _kill_leftovers(now.id)

        def foreground(x: Container) -> None:  # no monitor supervises this run
            x.monitor_pid = x.monitor_start = None

        c = update(ctx, c.id, foreground) or c
    return start_foreground(ctx, c, image, driver)


# ----------------------------------------------------------------------------- signals
def parse_signal(spec: str) -> int:
    """KILL, SIGKILL, kill or 9."""
    s = spec.strip()
    if s.isdigit():
        n = int(s)
        if 1 <= n < signal.NSIG:
            return n
    else:
        name = s.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(signal.Signals[name])
        except KeyError:
            pass
    raise InvalidArgument(f"invalid signal {spec!r}", hint="use a name such as TERM, KILL, HUP, or a number")


def kill(ctx: Context, ref: str, sig: int) -> Container:
    c = get_container(ctx, ref)
    if c.state != State.RUNNING.value or not monitor.send_signal(c.pid, c.pid_start, sig):
        raise Conflict(f"container {ref} is not running")
    _take_signal(c)
    return c


def _take_signal(c: Container) -> None:
    """A paused container is thawed once a signal is sent to it, so that it takes it (as
    docker's kill and stop do): frozen tasks act on no signal, SIGKILL included."""
    from ctr import freezer

    if freezer.is_frozen(c.id):
        freezer.thaw(c.id)


# ----------------------------------------------------------------------------- pause
def pause(ctx: Context, ref: str) -> Container:
    """docker's `pause`: every process of the running container stops where it stands (the
    cgroup freezer: ctr.freezer) until `unpause`."""
    from ctr import freezer

    c = reconcile(ctx, get_container(ctx, ref))
    if c.state != State.RUNNING.value:
        raise Conflict(f"container {ref} is not running")
    if freezer.is_frozen(c.id):
        raise Conflict(f"container {ref} is already paused", hint=f"resume it with `ctr unpause {ref}`")
    driver = get_driver(c.isolation, c.driver)
    try:
        freezer.freeze(c.id, lambda: driver.host_processes(ctx.store, c))
    except (OSError, RuntimeError) as e:
        raise DriverError(f"cannot pause container {ref}: {e}") from None
    return c


def unpause(ctx: Context, ref: str) -> Container:
    from ctr import freezer

    c = reconcile(ctx, get_container(ctx, ref))
    if c.state != State.RUNNING.value or not freezer.is_frozen(c.id):
        raise Conflict(f"container {ref} is not paused")
    try:
        freezer.thaw(c.id)
    except OSError as e:
        raise DriverError(f"cannot unpause container {ref}: {e}") from None
    return c


def stop(ctx: Context, ref: str, timeout: float = STOP_TIMEOUT) -> Container:
    """SIGTERM, then SIGKILL after `timeout` seconds; returns the record once it says exited.
    A container that is not running is left as it is."""
    c = get_container(ctx, ref)
    if c.state != State.RUNNING.value:
        return c
    if timeout > 0:
        monitor.send_signal(c.pid, c.pid_start, signal.SIGTERM)
        _take_signal(c)
        done = wait_stopped(ctx, c, timeout)
        if done is None or done.state != State.RUNNING.value:
            return done or c
    monitor.send_signal(c.pid, c.pid_start, signal.SIGKILL)
    _take_signal(c)
    done = wait_stopped(ctx, c, KILL_WAIT)
    if done is not None and done.state == State.RUNNING.value:
        raise CtrError(f"container {ref} did not stop within {timeout + KILL_WAIT:g}s of being killed",
                       hint=f"see `ctr inspect {ref}` for its pid")
    return done or c


def wait_stopped(ctx: Context, c: Container, timeout: float | None) -> Container | None:
    """Block until the record no longer says running (None: removed meanwhile). Sleeps on a
    pidfd of the monitor (it exits right after recording), else of the workload."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        x = _load(ctx, c.id)
        if x is None:
            return None
        x = reconcile(ctx, x)
        if x.state != State.RUNNING.value:
            return x
        left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        if left <= 0:
            return x
        pid, start = (x.monitor_pid, x.monitor_start) if x.monitor_pid else (x.pid, x.pid_start)
        _sleep_on(pid, start, left)


def _sleep_on(pid: int | None, start: int | None, seconds: float) -> None:
    try:
        fd = os.pidfd_open(pid) if pid else None
    except OSError:
        fd = None
    if fd is None or proc.pid_start_time(pid) != start:  # type: ignore[arg-type]
        time.sleep(min(seconds, 0.01))
    else:
        p = select.poll()
        p.register(fd, select.POLLIN)
        if p.poll(int(seconds * 1000) + 1):
            time.sleep(0.002)  # exited: give its parent a moment to record it
    if fd is not None:
        os.close(fd)


def wait(ctx: Context, ref: str) -> int | None:
    """`wait REF`: the container's exit code once it is not running (None: not recorded)."""
    c = get_container(ctx, ref)
    done = wait_stopped(ctx, c, None)
    if done is None:
        raise NotFound(f"container {ref} was removed before its exit code could be read")
    return done.exit_code


# ----------------------------------------------------------------------------- reconciliation
def reconcile_orphan(ctx: Context, c: Container) -> Container:
    """A detached container recorded running whose monitor is gone: nothing would record its
    exit or read its output, so ctr kills whatever of it still runs and records it exited
    (137 when it was killed here, no code when it had already ended)."""
    alive = proc.pid_alive(c.pid, c.pid_start)
    pids = monitor.container_processes(c.id)
    if alive and c.pid not in pids:
        pids.append(c.pid)  # type: ignore[arg-type]
    monitor.kill_processes(pids)

    def mark(x: Container) -> None:
        if x.state != State.RUNNING.value or x.monitor_pid != c.monitor_pid:
            return
        x.state = State.EXITED.value
        x.finished = now_iso()
        x.exit_code = 128 + signal.SIGKILL if alive else None
        x.error = (f"the container's monitor (pid {c.monitor_pid}) died; "
                   + ("ctr killed the workload" if alive else "the workload's exit code was not recorded"))

    try:
        return update(ctx, c.id, mark) or c
    except OSError:  # the record cannot be written (a full disk): report it as it is, retry next read
        import copy

        shown = copy.deepcopy(c)
        mark(shown)
        return shown


def terminate(ctx: Context, c: Container) -> None:
    """Kill every process of the container and let its monitor finish (for `rm -f`). The
    monitor of a --rm container calls this itself, and must not wait for its own exit."""
    pids = monitor.container_processes(c.id)
    if proc.pid_alive(c.pid, c.pid_start) and c.pid not in pids:
        pids.append(c.pid)  # type: ignore[arg-type]
    _take_signal(c)
    monitor.kill_processes(pids)
    if c.monitor_pid == os.getpid():
        return
    deadline = time.monotonic() + KILL_WAIT
    while c.monitor_pid and proc.pid_alive(c.monitor_pid, c.monitor_start) and time.monotonic() < deadline:
        _sleep_on(c.monitor_pid, c.monitor_start, deadline - time.monotonic())


# ----------------------------------------------------------------------------- top
def top(ctx: Context, ref: str, ps_args: list[str]) -> list[str]:
    """docker's `top`: `ps` (default `-ef`) on the host, its header and the rows of the running
    container's processes (found by their mount namespace; ctr's relay of a sandbox, outside
    the container's pid namespace, aside). A microvm's processes are in its guest."""
    c = get_container(ctx, ref)
    if c.state != State.RUNNING.value or not proc.pid_alive(c.pid, c.pid_start):
        raise Conflict(f"container {ref} is not running", hint=f"start it with `ctr start {ref}`")
    if c.driver == "microvm":
        raise DriverError("top cannot see into the utility VM of a microvm container",
                          hint=f"run ps in it: `ctr exec {ref} ps`")
    pids = {str(p) for p in get_driver(c.isolation, c.driver).host_processes(ctx.store, c)}
    done = proc.run(["ps", *(ps_args or ["-ef"])], check=False)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise InvalidArgument(f"ps {' '.join(ps_args)} failed: {why[0] if why else done.returncode}",
                              hint="give ps options, e.g. `ctr top NAME -o pid,user,args`")
    out = done.stdout.splitlines()
    if not out or "PID" not in out[0].split():
        raise InvalidArgument(f"ps {' '.join(ps_args)} prints no PID column", hint="keep the PID column, e.g. -o pid,comm")
    col = out[0].split().index("PID")
    return [out[0]] + [line for line in out[1:] if line.split()[col:col + 1] and line.split()[col] in pids]


# ----------------------------------------------------------------------------- logs
class LogLine(Record):
    __slots__ = _fields = ("time", "stream", "data")  # stream: stdout | stderr

    def __init__(self, time: str, stream: str, data: bytes):
        self.time, self.stream, self.data = time, stream, data


def log_path(ctx: Context, cid: str):
    return ctx.store.container_path(cid, monitor.LOG)


def logs(ctx: Context, ref: str, tail: int | None = None, follow: bool = False,
         poll: float = 0.05, since: str | None = None, until: str | None = None) -> Iterator[LogLine]:
    """The container's captured output, oldest first; the last `tail` lines only if given;
    with `follow`, keep yielding new lines until the container is not running (or `until` has
    passed). `since`/`until`: the lines written at or after / before those times (RFC 3339
    UTC with nanoseconds, as the log records them)."""
    c = get_container(ctx, ref)
    path = log_path(ctx, c.id)
    f = None
    rest = b""

    def read_new() -> list[LogLine]:
        nonlocal f, rest
        if f is None:
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                return []
        data = rest + f.read()
        lines = data.split(b"\n")
        rest = lines.pop()  # a line the monitor is still writing
        out = []
        for line in lines:
            e = monitor.parse_entry(line)
            if e is not None and (since is None or e[0] >= since) and (until is None or e[0] < until):
                out.append(LogLine(*e))
        return out

    try:
        first = read_new()
        if tail is not None:
            from collections import deque

            first = list(deque(first, maxlen=tail)) if tail > 0 else []
        yield from first
        while follow:
            new = read_new()
            if new:
                yield from new
                continue
            x = _load(ctx, c.id)
            if until is not None and monitor.timestamp(time.time_ns()) >= until:
                return
            if x is None or reconcile(ctx, x).state != State.RUNNING.value:
                yield from read_new()  # the monitor logs everything before it records the exit
                return
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()


# ----------------------------------------------------------------------------- exec
class ExecOptions(Record):
    __slots__ = _fields = ("command", "env", "workdir", "user", "interactive", "tty", "detach", "env_files")

    def __init__(self, command: list[str], env: list[str] = _NEW, workdir: str | None = None,
                 user: str | None = None, interactive: bool = False, tty: bool = False,
                 detach: bool = False, env_files: list[str] = _NEW):
        self.command, self.env = command, [] if env is _NEW else env
        self.env_files = [] if env_files is _NEW else env_files
        self.workdir, self.user, self.interactive, self.tty = workdir, user, interactive, tty
        self.detach = detach  # -d: started in the background, its output discarded (as docker's)


def exec_launch(c: Container, opts: ExecOptions) -> Launch:
    """The plan for a command joining container `c`: its env and user, the exec's overrides."""
    from ctr.engine.containers import parse_env
    from ctr.launch import Launch

    if not opts.command:
        raise InvalidArgument("exec needs a command", hint="ctr exec REF COMMAND [ARG...]")
    if opts.workdir is not None and not opts.workdir.startswith("/"):
        raise InvalidArgument(f"working directory {opts.workdir!r} must be absolute")
    if opts.detach and (opts.interactive or opts.tty):
        raise InvalidArgument("exec -d takes neither -i nor -t: nothing stays attached to a detached command",
                              hint="drop -i and -t, or -d")
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in c.config.env)
    if opts.tty:
        env.setdefault("TERM", "xterm")
    for item in parse_env(opts.env, opts.env_files):
        k, _, v = item.partition("=")
        env[k] = v
    return Launch(
        argv=list(opts.command), env=env,
        cwd=opts.workdir or c.config.workdir or "/",
        user=opts.user if opts.user is not None else c.config.user,
        stdin="inherit" if opts.interactive else "null",
        tty=opts.tty,
    )


def exec_(ctx: Context, ref: str, opts: ExecOptions) -> int:
    """Run a command inside a running container; returns its exit code (126/127 raised as
    InvokeError, ctr's own failures as errors with exit code 125); with -d, 0 once it started."""
    c = get_container(ctx, ref)
    launch = exec_launch(c, opts)
    driver_exec = None
    if c.isolation != "process":
        # joining namespaces is not enough there: the session would escape the container's
        # capability cut, no_new_privs, rlimits and cgroups (sandbox), or would not enter the
        # guest at all (microvm); a driver that can exec says so with exec_in()
        driver_exec = getattr(get_driver(c.isolation, c.driver), "exec_in", None)
        if driver_exec is None:
            raise DriverError(f"exec into {c.isolation} containers ({c.driver} driver) is not supported yet",
                              hint=f"run the command as the container's own: `ctr run --isolation {c.isolation} ...`")
    if c.state != State.RUNNING.value or not proc.pid_alive(c.pid, c.pid_start):
        raise Conflict(f"container {ref} is not running", hint=f"start it with `ctr start {ref}`")
    from ctr.engine.containers import is_paused

    if is_paused(c):
        raise Conflict(f"container {ref} is paused", hint=f"unpause it first: `ctr unpause {ref}`")
    if driver_exec is not None:
        return driver_exec(ctx.store, c, launch, detach=opts.detach)
    try:
        started = proc.enter(c.pid, c.pid_start, launch, detach=opts.detach)  # type: ignore[arg-type]
    except proc.SetupError as e:
        if not proc.pid_alive(c.pid, c.pid_start):
            raise Conflict(f"container {ref} is not running") from None
        raise e
    return 0 if opts.detach else proc.wait(started)
