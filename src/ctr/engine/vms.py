"""VM use cases: create, ls, start, exec, stop, rm, inspect, logs, diff, checkpoint, restore.

A VM is named by its name (Hyper-V's way); its record is `vms/<name>/vm.json`.  States:
Off -> Starting -> Running -> Stopping -> Off.  A VM recorded Starting, Running or Stopping
whose process is gone (pid checked with its kernel start time) is recorded Off on the next
read.  A VM recorded Starting whose `vm start` is gone (its pid and start time are in
`vms/<name>/starter.json` while it starts; killed, say) is turned off and recorded Off on the
next read, with an error saying the start was interrupted.  SIGINT and SIGTERM during `vm
start` turn the VM off and record it Off before ctr exits.  Record changes happen under the
store lock; lifecycle operations on one VM (start, stop, rm, checkpoint, restore) are
serialised by the VM's own lock file, so a second `vm start` waits for the first and then
finds it running.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from ctr import faults, proc
from ctr.changes import Change
from ctr.engine.context import Context
from ctr.engine.images import get_image
from ctr.errors import Conflict, CtrError, InvalidArgument, NotFound
from ctr.models import VM, Checkpoint, VMState, now_iso
from ctr.vm import get_vm_driver, select_vm_driver
from ctr.vm.base import Interrupted, interruptible

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
DEFAULT_MEMORY = 512 << 20
DEFAULT_CPUS = 1  # under TCG every further CPU costs ~2 s of boot (docs/microvm.md)
DEFAULT_DISK = 4 << 30  # a sparse file: only what is written takes space
BOOT_TIMEOUT = float(os.environ.get("CTR_VM_BOOT_TIMEOUT", "120"))
STOP_GRACE = 30
LOCK = "lock"
STARTER = "starter.json"  # {"pid", "start"} of the `vm start` process, while it starts the VM
LIVE = (VMState.STARTING.value, VMState.RUNNING.value, VMState.STOPPING.value)


# ----------------------------------------------------------------------------- records
def _load(ctx: Context, name: str) -> VM | None:
    data = ctx.store.read_vm(name)
    if data is None:
        return None
    try:
        return VM.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        from ctr.errors import StoreError

        raise StoreError(f"VM {name} has a corrupt record {ctx.store.vm_record(name)}: {e}",
                         hint=f"`ctr vm rm -f {name}` discards it") from None


def update(ctx: Context, name: str, fn: Callable[[VM], None]) -> VM | None:
    """Read-modify-write of one record under the store lock; None if it is gone."""
    with ctx.store.locked():
        vm = _load(ctx, name)
        if vm is None:
            return None
        fn(vm)
        try:
            ctx.store.write_vm(name, vm.to_dict())
        except FileNotFoundError:
            return None
        return vm


@contextmanager
def vm_lock(ctx: Context, name: str, wait: bool = True) -> Iterator[bool]:
    """The VM's own lock: one lifecycle operation at a time.  Yields False without `wait`
    when another holds it."""
    import fcntl

    try:
        fd = os.open(ctx.store.vm_path(name, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise NotFound(f"no such VM: {name}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            got = True
        except BlockingIOError:
            got = False
        yield got
    finally:
        os.close(fd)


def _starter(ctx: Context, name: str) -> tuple[int, int | None] | None:
    """The pid and start time of the `vm start` that is (or was) starting the VM."""
    import json

    try:
        d = json.loads(ctx.store.vm_path(name, STARTER).read_bytes())
        return int(d["pid"]), (None if d.get("start") is None else int(d["start"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def reconcile(ctx: Context, vm: VM) -> VM:
    """A VM recorded as live whose process is gone is recorded Off (its leftovers cleaned);
    one recorded Starting whose `vm start` is gone is turned off and recorded Off."""
    if vm.state not in LIVE:
        return vm
    if vm.state == VMState.STARTING.value:
        starter = _starter(ctx, vm.name)
        if starter is not None:
            if proc.pid_alive(*starter):
                return vm  # being started
            return _start_interrupted(ctx, vm, starter[0])
        if vm.pid is None:
            # no starter recorded (a record from before starter.json): in progress only if
            # someone holds its lock
            with vm_lock(ctx, vm.name, wait=False) as free:
                if not free:
                    return vm
    if proc.pid_alive(vm.pid, vm.pid_start):
        return vm
    try:
        get_vm_driver(vm.driver).cleanup(ctx.store, vm)
    except (CtrError, OSError):
        pass

    def mark(x: VM) -> None:
        if x.state in LIVE and not proc.pid_alive(x.pid, x.pid_start):
            if x.state != VMState.STOPPING.value:
                x.error = x.error or "the VM's process ended without ctr stopping it"
            x.state = VMState.OFF.value
            x.stopped = x.stopped or now_iso()
            x.pid = x.pid_start = None
    return update(ctx, vm.name, mark) or vm


def _start_interrupted(ctx: Context, vm: VM, starter: int) -> VM:
    """The `vm start` that recorded the VM Starting died before it was ready (SIGKILL, a
    crash): nobody waits for the machine, so it is turned off, like a detached container whose
    monitor died, and recorded Off with the reason."""
    alive = proc.pid_alive(vm.pid, vm.pid_start)
    driver = get_vm_driver(vm.driver)
    if alive:
        try:
            driver.turn_off(ctx.store, vm)
        except (CtrError, OSError):
            pass
        if proc.pid_alive(vm.pid, vm.pid_start):
            return vm  # it could not be turned off: left as it is, tried again on the next read
    try:
        driver.cleanup(ctx.store, vm)
    except (CtrError, OSError):
        pass

    def mark(x: VM) -> None:
        if x.state != VMState.STARTING.value or (x.pid, x.pid_start) != (vm.pid, vm.pid_start):
            return  # another start since
        x.state = VMState.OFF.value
        x.stopped = now_iso()
        x.pid = x.pid_start = None
        x.error = (f"the start was interrupted: ctr (pid {starter}) ended before the VM was ready"
                   + ("; ctr turned the VM off" if alive else ""))
    return update(ctx, vm.name, mark) or vm


def list_vms(ctx: Context) -> list[VM]:
    out = []
    for name in ctx.store.vm_ids():
        vm = _load(ctx, name)
        if vm is not None:
            out.append(reconcile(ctx, vm))
    return out


def get_vm(ctx: Context, name: str) -> VM:
    vm = _load(ctx, name) if name and "/" not in name and not name.startswith(".") else None
    if vm is None:
        raise NotFound(f"no such VM: {name}", hint="`ctr vm ls` lists the VMs")
    return reconcile(ctx, vm)


# ----------------------------------------------------------------------------- create
@dataclass
class CreateOptions:
    name: str
    image: str
    cpus: int | None = None
    memory: int | None = None  # bytes
    disk: int | None = None  # bytes
    driver: str | None = None
    kernel: str | None = None


def create(ctx: Context, opts: CreateOptions, progress: Callable[[int, int], None] | None = None) -> VM:
    """Check everything, build the VM's disk under tmp/, then install it under its name."""
    if not NAME_RE.match(opts.name):
        raise InvalidArgument(f"invalid VM name {opts.name!r}",
                              hint="1-63 characters: a letter or digit, then [a-zA-Z0-9_.-]")
    if ctx.store.read_vm(opts.name) is not None or ctx.store.vm_dir(opts.name).exists():
        raise Conflict(f"a VM named {opts.name!r} already exists",
                       hint=f"remove it with `ctr vm rm {opts.name}`, or choose another name")
    image = get_image(ctx, opts.image)
    if image.builtin:
        raise CtrError(
            "the host image cannot be a VM's disk: a VM gets its own complete copy of its image, "
            "and `host` is this machine's live root filesystem",
            hint="import a root filesystem with `ctr image import SOURCE NAME` and use that")
    if opts.cpus is not None and opts.cpus < 1:
        raise InvalidArgument(f"--cpus must be at least 1 (got {opts.cpus})")
    driver = select_vm_driver(opts.driver, ctx.config.drivers.get("vm"), ctx.store, ctx.config,
                              opts.kernel)
    from ctr.units import parse_size

    memory = opts.memory or (parse_size(ctx.config.memory, "memory") if ctx.config.memory else DEFAULT_MEMORY)
    cpus = opts.cpus or (max(1, int(ctx.config.cpus)) if ctx.config.cpus else DEFAULT_CPUS)
    vm = VM(name=opts.name, id=secrets.token_hex(32), driver=driver.name, image=image.id,
            image_name=opts.image, cpus=cpus, memory=memory, disk_size=opts.disk or DEFAULT_DISK,
            env=list(image.config.env), workdir=image.config.workdir or "/",
            kernel=opts.kernel or "", emulated=driver.emulated)
    driver.check(ctx.store, ctx.config, vm, image)
    store = ctx.store
    built = store.new_tmp("vm")
    try:
        driver.build(store, built, vm, image, progress or (lambda done, total: None))
        from ctr.store.records import write_json

        write_json(built / "vm.json", vm.to_dict())
        faults.point("vm.built")
        with store.locked():
            if store.vm_dir(opts.name).exists():
                raise Conflict(f"a VM named {opts.name!r} already exists",
                               hint=f"remove it with `ctr vm rm {opts.name}`, or choose another name")
            store.install_vm(opts.name, built)
            faults.point("vm.installed")
    except BaseException:
        from ctr.store.store import remove_path

        remove_path(built)
        raise
    return vm


# ----------------------------------------------------------------------------- start / stop
def start(ctx: Context, name: str, timeout: float = BOOT_TIMEOUT) -> VM:
    """Boot the VM in the background; returns once it accepts `exec`."""
    get_vm(ctx, name)
    with vm_lock(ctx, name), interruptible():
        vm = get_vm(ctx, name)
        if vm.state != VMState.OFF.value:
            raise Conflict(f"VM {name} is already {vm.state.lower()}",
                           hint=f"`ctr vm exec {name} CMD` runs a command in it")
        driver = get_vm_driver(vm.driver)
        from ctr.store.records import write_json

        me = os.getpid()
        write_json(ctx.store.vm_path(name, STARTER), {"pid": me, "start": proc.pid_start_time(me)},
                   durable=False)

        def starting(x: VM) -> None:
            x.state = VMState.STARTING.value
            x.pid = x.pid_start = None
            x.error = ""
            x.started, x.stopped = now_iso(), None

        update(ctx, name, starting)

        def on_pid(pid: int, start_time: int | None) -> None:
            def mark(x: VM) -> None:
                x.pid, x.pid_start = pid, start_time
            update(ctx, name, mark)

        def running(x: VM) -> None:
            x.state = VMState.RUNNING.value
            for k, v in found.items():
                setattr(x, k, v)

        try:
            found = driver.start(ctx.store, ctx.config, vm, timeout, on_pid)
            faults.point("vm.started")
            vm = update(ctx, name, running) or vm
        except BaseException as e:
            current = _load(ctx, name)
            if current is not None and current.pid and proc.pid_alive(current.pid, current.pid_start):
                try:
                    driver.turn_off(ctx.store, current)
                except CtrError:
                    pass
            try:
                driver.cleanup(ctx.store, current or vm)
            except (CtrError, OSError):
                pass
            if isinstance(e, CtrError):
                message = e.message
            elif isinstance(e, Interrupted):
                import signal

                message = f"interrupted by {signal.Signals(e.signum).name}; the VM was turned off"
            else:
                message = f"interrupted ({type(e).__name__})"

            def failed(x: VM) -> None:
                x.state = VMState.OFF.value
                x.pid = x.pid_start = None
                x.stopped = now_iso()
                x.error = f"start failed: {message}"
            update(ctx, name, failed)
            ctx.store.vm_path(name, STARTER).unlink(missing_ok=True)
            raise
        ctx.store.vm_path(name, STARTER).unlink(missing_ok=True)
        return vm


@dataclass
class StopReport:
    name: str
    how: str  # "shut down", "forced off", "turned off", "already off"


def stop(ctx: Context, name: str, grace: float = STOP_GRACE, force: bool = False,
         turn_off: bool = False) -> StopReport:
    """Shut the VM down through its guest (processes get SIGTERM, SIGKILL after `grace`;
    at once with `force`), and turn it off when it has not stopped in time; with
    `turn_off`, power it off at once."""
    get_vm(ctx, name)
    with vm_lock(ctx, name):
        vm = get_vm(ctx, name)
        if vm.state == VMState.OFF.value:
            return StopReport(name, "already off")
        driver = get_vm_driver(vm.driver)
        update(ctx, name, lambda x: setattr(x, "state", VMState.STOPPING.value))
        how = "turned off"
        if not turn_off:
            try:
                driver.shutdown(ctx.store, vm, 0 if force else grace, force)
                deadline = time.monotonic() + driver.stop_wait(0 if force else grace)
                while proc.pid_alive(vm.pid, vm.pid_start) and time.monotonic() < deadline:
                    time.sleep(0.05)
                how = "shut down" if not force else "forced off"
            except (CtrError, OSError, TimeoutError):
                pass  # the agent did not answer: turned off below
        if proc.pid_alive(vm.pid, vm.pid_start):
            how = "turned off"
            driver.turn_off(ctx.store, vm)
        try:
            driver.cleanup(ctx.store, vm)
        except (CtrError, OSError):
            pass

        def off(x: VM) -> None:
            x.state = VMState.OFF.value
            x.pid = x.pid_start = None
            x.stopped = now_iso()
            x.error = ""
        update(ctx, name, off)
        return StopReport(name, how)


# ----------------------------------------------------------------------------- exec
@dataclass
class ExecOptions:
    command: list[str]
    env: list[str] = field(default_factory=list)
    workdir: str | None = None


def exec_(ctx: Context, name: str, opts: ExecOptions) -> int:
    """Run a command in the running VM; returns its exit code."""
    from ctr.engine.containers import parse_env
    from ctr.launch import container_env

    if not opts.command:
        raise InvalidArgument("vm exec needs a command", hint="ctr vm exec NAME COMMAND [ARG...]")
    if opts.workdir is not None and not opts.workdir.startswith("/"):
        raise InvalidArgument(f"working directory {opts.workdir!r} must be absolute")
    user_env = parse_env(opts.env, [])
    vm = get_vm(ctx, name)
    if vm.state != VMState.RUNNING.value:
        raise Conflict(f"VM {name} is not running (it is {vm.state.lower()})",
                       hint=f"start it with `ctr vm start {name}`")
    env = container_env(vm.env, user_env, name, False)
    return get_vm_driver(vm.driver).exec(ctx.store, vm, list(opts.command), env,
                                          opts.workdir or vm.workdir or "/")


# ----------------------------------------------------------------------------- rm
@dataclass
class RemoveResult:
    ref: str
    error: CtrError | None = None


def remove(ctx: Context, names: list[str], force: bool = False) -> list[RemoveResult]:
    results = []
    for name in names:
        try:
            _remove_one(ctx, name, force)
            results.append(RemoveResult(name))
        except CtrError as e:
            results.append(RemoveResult(name, e))
        except OSError as e:
            results.append(RemoveResult(name, CtrError(f"cannot remove VM {name}: {e}")))
    return results


def _remove_one(ctx: Context, name: str, force: bool) -> None:
    from ctr.errors import StoreError

    try:
        vm = get_vm(ctx, name)
    except StoreError:
        if force and ctx.store.vm_dir(name).is_dir():
            with ctx.store.locked():
                ctx.store.discard_vm(name)
            return
        raise
    with vm_lock(ctx, name):
        vm = get_vm(ctx, name)
        if vm.state != VMState.OFF.value:
            if not force:
                raise Conflict(f"cannot remove VM {name}: it is {vm.state.lower()}",
                               hint=f"stop it first with `ctr vm stop {name}`, or use `ctr vm rm -f`")
            driver = get_vm_driver(vm.driver)
            driver.turn_off(ctx.store, vm)
            if proc.pid_alive(vm.pid, vm.pid_start):
                raise CtrError(f"VM {name} (pid {vm.pid}) could not be turned off")
        try:
            get_vm_driver(vm.driver).cleanup(ctx.store, vm)
        except (CtrError, OSError):
            pass
        with ctx.store.locked():
            ctx.store.discard_vm(name)


# ----------------------------------------------------------------------------- inspect / logs / diff
def disk_usage(ctx: Context, vm: VM) -> int:
    try:
        return get_vm_driver(vm.driver).disk_usage(ctx.store, vm)
    except (CtrError, OSError):
        return 0


def inspect(ctx: Context, name: str) -> dict:
    vm = get_vm(ctx, name)
    d = vm.to_dict()
    driver = get_vm_driver(vm.driver)
    d["paths"] = {"dir": str(ctx.store.vm_dir(name))}
    d["disk_usage"] = disk_usage(ctx, vm)
    d["driver_info"] = {"summary": driver.summary, "emulated": driver.emulated,
                        **driver.runtime_info(ctx.store, vm)}
    return d


def console_log(ctx: Context, name: str, tail: int | None = None) -> bytes:
    vm = get_vm(ctx, name)
    try:
        data = ctx.store.vm_path(vm.name, "console.log").read_bytes()
    except FileNotFoundError:
        return b""
    if tail is not None:
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-tail:]) if tail > 0 else b""
    return data


def diff(ctx: Context, name: str) -> list[Change]:
    vm = get_vm(ctx, name)
    if vm.state in (VMState.STARTING.value, VMState.STOPPING.value):
        raise Conflict(f"VM {name} is {vm.state.lower()}", hint="try again in a moment")
    changes = get_vm_driver(vm.driver).changes(ctx.store, vm, vm.state == VMState.RUNNING.value)
    if ctx.config.diff_ignore:
        import fnmatch

        changes = [c for c in changes if not any(fnmatch.fnmatch(c.path, p) for p in ctx.config.diff_ignore)]
    return changes


# ----------------------------------------------------------------------------- checkpoints
SNAPSHOT_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


def checkpoint(ctx: Context, name: str, snapshot: str | None = None) -> Checkpoint:
    """Copy a stopped VM's disk as checkpoint `snapshot` (default: a timestamp)."""
    if snapshot is not None and not SNAPSHOT_RE.match(snapshot):
        raise InvalidArgument(f"invalid checkpoint name {snapshot!r}",
                              hint="1-63 characters: a letter or digit, then [a-zA-Z0-9_.-]")
    get_vm(ctx, name)
    with vm_lock(ctx, name):
        vm = get_vm(ctx, name)
        if vm.state != VMState.OFF.value:
            raise Conflict(f"cannot checkpoint VM {name}: it is {vm.state.lower()}",
                           hint=f"stop it first with `ctr vm stop {name}`")
        snap = snapshot or time.strftime("checkpoint-%Y%m%d-%H%M%S", time.gmtime())
        if any(c.name == snap for c in vm.checkpoints):
            raise Conflict(f"VM {name} already has a checkpoint named {snap!r}")
        driver = get_vm_driver(vm.driver)
        store = ctx.store
        root = store.vm_path(name, "checkpoints")
        root.mkdir(mode=0o700, exist_ok=True)
        built = store.new_tmp("checkpoint")
        try:
            method = driver.checkpoint(store, vm, built)
            from ctr.vm.disk import tree_usage

            cp = Checkpoint(name=snap, size=tree_usage(built).bytes, method=method)
            os.rename(built, root / snap)
        except BaseException:
            from ctr.store.store import remove_path

            remove_path(built)
            raise
        update(ctx, name, lambda x: x.checkpoints.append(cp))
        return cp


def restore(ctx: Context, name: str, snapshot: str) -> Checkpoint:
    """Make checkpoint `snapshot` the stopped VM's disk again (the checkpoint stays)."""
    get_vm(ctx, name)
    with vm_lock(ctx, name):
        vm = get_vm(ctx, name)
        cp = next((c for c in vm.checkpoints if c.name == snapshot), None)
        if cp is None:
            names = ", ".join(c.name for c in vm.checkpoints) or "none"
            raise NotFound(f"VM {name} has no checkpoint {snapshot!r}", hint=f"its checkpoints: {names}")
        if vm.state != VMState.OFF.value:
            raise Conflict(f"cannot restore VM {name}: it is {vm.state.lower()}",
                           hint=f"stop it first with `ctr vm stop {name}`")
        src = ctx.store.vm_path(name, "checkpoints") / snapshot
        if not src.is_dir():
            raise NotFound(f"the files of checkpoint {snapshot!r} of VM {name} are missing ({src})")
        get_vm_driver(vm.driver).restore(ctx.store, vm, src)
        return cp


__all__ = ["CreateOptions", "ExecOptions", "StopReport", "checkpoint", "console_log", "create",
           "diff", "exec_", "get_vm", "inspect", "list_vms", "reconcile", "remove", "restore",
           "start", "stop"]
