"""Boot a VM, run one command in it, stream its output, return its exit code.

`boot_and_run` starts qemu (clean environment, stdin from /dev/null, its own session,
killed if ctr dies), connects each named virtio-serial port to one end of a socketpair
passed to qemu as `-chardev socket,fd=N` — no socket files, nothing to connect to, no race
— and copies the guest's stdout/stderr to the caller's as they arrive.  The guest's
writes to a port block until qemu has handed them to the socket, so when the status line
`exit N` arrives, all of the command's output has already been sent.

Status port protocol (guest -> host, one line each): `started` when the command is
launched, then `exit N`; or `error MESSAGE` when init itself fails.

Failure modes, each a DriverError (the engine reports it as exit 125): qemu cannot start,
the guest's init fails (`error …`), the guest stops without a status (a kernel panic:
`panic=-1` + `-no-reboot` make qemu exit), no `started` within `boot_timeout` (a hang, or
KVM's "emulation failure" that leaves qemu paused), or the optional overall `timeout`.  qemu is always killed by
its pid in a `finally`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import select
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Sequence

from ..errors import DriverError
from .initramfs import GuestConfig, Initramfs, Volume, write_initrd
from .kernel import Kernel
from .machine import MachineSpec, Port, Share, kernel_cmdline, qemu_command

QEMU_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
ROOT_TAG = "ctr.root"
POWEROFF_GRACE = 5.0  # seconds a guest may take to power off after reporting the exit code


@dataclass(frozen=True)
class HostVolume:
    """A host directory to mount at `target` in the guest (virtio-9p)."""

    source: Path
    target: str
    readonly: bool = False


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    duration: float  # seconds from starting qemu to its exit
    accel: str
    console_log: Path | None  # kept only when the caller gave a run_dir


class RunningVM:
    """Handed to `on_start` once qemu runs: its pid, and a way to signal the command."""

    def __init__(self, proc: subprocess.Popen[bytes], control: socket.socket | None):
        self._proc = proc
        self._control = control
        self.pid = proc.pid

    def signal(self, signum: int) -> None:
        """Deliver signal `signum` to the command inside the guest (via the control port)."""
        if self._control is not None:
            try:
                self._control.sendall(f"signal {int(signum)}\n".encode())
            except OSError:
                pass

    def kill(self) -> None:
        """Stop the VM at once (SIGKILL to qemu)."""
        if self._proc.poll() is None:
            self._proc.kill()


Output = BinaryIO | int | None


def _writer(dest: Output) -> Callable[[bytes], None]:
    if dest is None:
        return lambda data: None
    if isinstance(dest, int):
        def write_fd(data: bytes) -> None:
            view = memoryview(data)
            while view:
                n = os.write(dest, view)
                view = view[n:]
        return write_fd

    def write_obj(data: bytes) -> None:
        dest.write(data)
        dest.flush()
    return write_obj


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn giving the child SIGKILL when its parent dies (PR_SET_PDEATHSIG); libc is
    looked up here, before the fork (ctypes is imported only by the process starting qemu)."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None

    def hook() -> None:  # pragma: no cover - runs in the child
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    return hook


def _pump_stdin(src: BinaryIO | int, sock: socket.socket) -> None:
    """Copy the caller's stdin to the guest (in a thread: a guest that does not read its
    stdin must not stall its output), then signal EOF."""
    fd = src if isinstance(src, int) else src.fileno()
    try:
        while data := os.read(fd, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _panic_reason(console: str) -> str | None:
    for line in console.splitlines():
        if "Kernel panic" in line:
            return re.sub(r"^\[\s*[0-9.]+\]\s*", "", line).strip()
    return None


def port_names(stdin: bool) -> list[str]:
    """The named virtio-serial ports of a run (guest_init finds them by name)."""
    return ["ctr.stdout", "ctr.stderr", "ctr.status", "ctr.control"] + (["ctr.stdin"] if stdin else [])


@dataclass(frozen=True)
class BootPlan:
    """One run as data: the qemu machine and the guest's run.conf settings."""

    spec: MachineSpec
    guest: GuestConfig


def plan_boot(
    guest: GuestConfig,
    *,
    kernel: Kernel,
    initramfs: Initramfs,
    root: Path | None,
    ports: Mapping[str, str],
    initrd: Path,
    console_log: Path | None,
    volumes: Sequence[HostVolume] = (),
    disk: Path | None = None,
    accel: str = "tcg",
    machine: str = "microvm",
    memory_mb: int = 512,
    cpus: int = 1,
    qemu: str = "qemu-system-x86_64",
    security_model: str | None = None,
    cmdline_extra: Sequence[str] = (),
) -> BootPlan:
    """The machine `boot_and_run` starts and the guest config its initrd carries (pure:
    nothing is written or run).  `ports` maps each of `port_names(...)` to its qemu chardev
    backend (`socket,fd=N` in `boot_and_run`; e.g. `null` for a bare boot)."""
    shares: list[Share] = []
    gvols: list[Volume] = []
    if root is not None and guest.root_disk is None:
        shares.append(Share(ROOT_TAG, Path(root), guest.root_readonly, security_model))
    for i, v in enumerate(volumes):
        tag = f"ctr.vol{i}"
        shares.append(Share(tag, Path(v.source), v.readonly, security_model))
        gvols.append(Volume(tag, v.target, v.readonly))
    modules = guest.modules or tuple(initramfs.modules_for(
        machine, disk=disk is not None, overlay=False))
    guest = dataclasses.replace(guest, volumes=tuple(gvols) + guest.volumes,
                                root_tag=ROOT_TAG, modules=modules,
                                stdin="ctr.stdin" in ports)
    spec = MachineSpec(
        kernel=kernel.image, initrd=initrd,
        append=kernel_cmdline(accel, machine, extra=tuple(cmdline_extra)),
        machine=machine, accel=accel, memory_mb=memory_mb, cpus=cpus,
        shares=tuple(shares), ports=tuple(Port(n, b) for n, b in ports.items()), disk=disk,
        console_log=console_log, qemu=qemu)
    return BootPlan(spec, guest)


BOOT_RECORD = "boot.json"  # in a caller's run_dir: the plan of the last boot (`load_plan`)


def save_plan(plan: BootPlan, path: Path) -> None:
    """Record `plan` as JSON (what ran, for diagnosis, and for a benchmark to boot the same)."""
    data = {"machine": dataclasses.asdict(plan.spec), "guest": dataclasses.asdict(plan.guest)}
    Path(path).write_text(json.dumps(data, default=str, indent=1) + "\n")


def load_plan(path: Path) -> BootPlan:
    """The plan `save_plan` recorded."""
    data = json.loads(Path(path).read_text())
    m, g = dict(data["machine"]), dict(data["guest"])
    for k in ("kernel", "initrd", "disk", "console_log"):
        m[k] = None if m[k] is None else Path(m[k])
    m["shares"] = tuple(Share(s["tag"], Path(s["path"]), s["readonly"], s["security_model"])
                        for s in m["shares"])
    m["ports"] = tuple(Port(**x) for x in m["ports"])
    m["extra_args"] = tuple(m["extra_args"])
    g.update(argv=tuple(g["argv"]), env=tuple(tuple(e) for e in g["env"]),
             volumes=tuple(Volume(**v) for v in g["volumes"]), modules=tuple(g["modules"]))
    return BootPlan(MachineSpec(**m), GuestConfig(**g))


def boot_and_run(
    guest: GuestConfig,
    *,
    kernel: Kernel,
    initramfs: Initramfs,
    root: Path | None,
    volumes: Sequence[HostVolume] = (),
    disk: Path | None = None,
    accel: str = "tcg",
    machine: str = "microvm",
    memory_mb: int = 512,
    cpus: int = 1,
    timeout: float | None = None,
    boot_timeout: float = 60.0,
    stdout: Output = 1,
    stderr: Output = 2,
    stdin: BinaryIO | int | None = None,
    run_dir: Path | None = None,
    qemu: str = "qemu-system-x86_64",
    security_model: str | None = None,
    cmdline_extra: Sequence[str] = (),
    on_start: Callable[[RunningVM], None] | None = None,
    listeners: dict[str, socket.socket] | None = None,
) -> RunResult:
    """Boot `kernel` with `initramfs`, run `guest.argv` and return its exit code.

    `root` is the host directory shared read-write as the guest's root (the container's
    merged view); None with `guest.root_disk` set and `disk` given boots from the disk
    instead.  `volumes` are extra 9p shares.  `listeners` are more named ports, each served
    by qemu on a listening unix socket the caller bound (for later clients: a `ctr exec`
    into a microvm container).  `stdout`/`stderr` take an fd or a binary file
    object (None discards); `stdin` (fd or binary file) is forwarded to the command, else
    it reads /dev/null.  `run_dir` keeps `console.log`, `qemu.log` and `boot.json` (the plan
    that booted, `load_plan`) (else a temporary directory is used and removed).  `guest.modules` defaults to what the machine needs.

    Two limits, each ending in a DriverError with qemu killed: `boot_timeout` until the
    guest's init reports that the command started (a hang or a paused qemu during boot),
    and `timeout` for the whole run (None: as long as the command takes; a kernel panic
    still ends the run at once)."""
    if root is None and guest.root_disk is None:
        raise ValueError("need a root directory or guest.root_disk")
    if qemu and os.sep not in qemu and shutil.which(qemu, path=QEMU_ENV["PATH"]) is None:
        raise DriverError(f"{qemu} is not installed",
                          hint="apt-get install --no-install-recommends qemu-system-x86")
    own_dir = run_dir is None
    rdir = Path(tempfile.mkdtemp(prefix="ctr-vm-")) if run_dir is None else Path(run_dir)
    rdir.mkdir(parents=True, exist_ok=True)
    console = rdir / "console.log"
    qemu_log = rdir / "qemu.log"
    initrd = rdir / "initrd.cpio"

    names = port_names(stdin is not None)
    pairs = {n: socket.socketpair() for n in names}

    proc: subprocess.Popen[bytes] | None = None
    sel = selectors.DefaultSelector()
    try:
        plan = plan_boot(guest, kernel=kernel, initramfs=initramfs, root=root, volumes=volumes,
                         disk=disk, accel=accel, machine=machine, memory_mb=memory_mb, cpus=cpus,
                         qemu=qemu, security_model=security_model, cmdline_extra=cmdline_extra,
                         ports={**{n: f"socket,fd={pairs[n][1].fileno()}" for n in names},
                                **{n: f"socket,fd={s.fileno()},server=on,wait=off"
                                   for n, s in (listeners or {}).items()}},
                         initrd=initrd, console_log=console)
        write_initrd(initramfs, plan.guest, initrd)
        argv = qemu_command(plan.spec)
        if not own_dir:
            save_plan(plan, rdir / BOOT_RECORD)
        start = time.monotonic()
        with open(qemu_log, "wb") as log:
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=QEMU_ENV,
                    pass_fds=[p[1].fileno() for p in pairs.values()]
                    + [s.fileno() for s in (listeners or {}).values()], start_new_session=True,
                    preexec_fn=_die_with_parent())
            except OSError as e:
                raise DriverError(f"cannot start {qemu}: {e.strerror}",
                                  hint="apt-get install --no-install-recommends qemu-system-x86") from e
        for _ours, theirs in pairs.values():
            theirs.close()
        handle = RunningVM(proc, pairs["ctr.control"][0])
        if on_start is not None:
            on_start(handle)

        sinks = {"ctr.stdout": _writer(stdout), "ctr.stderr": _writer(stderr)}
        status = bytearray()
        for name in ("ctr.stdout", "ctr.stderr", "ctr.status"):
            sock = pairs[name][0]
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, name)
        if stdin is not None:
            threading.Thread(target=_pump_stdin, args=(stdin, pairs["ctr.stdin"][0]),
                             name="ctr-vm-stdin", daemon=True).start()
        deadline = start + timeout if timeout is not None else float("inf")
        boot_deadline = start + boot_timeout
        open_ports = 3
        while open_ports:
            now = time.monotonic()
            if b"exit " in status and now >= deadline:
                break  # the command ended but the guest did not power off: kill it
            if now >= deadline:
                raise DriverError(
                    f"the VM did not finish within {timeout:g} s and was stopped",
                    hint=_hang_hint(console, qemu_log, own_dir))
            if now >= boot_deadline and not status:
                raise DriverError(
                    f"the VM did not start the command within {boot_timeout:g} s and was stopped",
                    hint=_hang_hint(console, qemu_log, own_dir))
            wait = min(deadline, boot_deadline if not status else deadline) - now
            for key, _ev in sel.select(timeout=max(0.0, min(wait, 1.0))):
                name = key.data
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    open_ports -= 1
                elif name == "ctr.status":
                    status += data
                    if b"exit " in status:  # all output is out; allow a little for poweroff
                        deadline = min(deadline, time.monotonic() + POWEROFF_GRACE)
                else:
                    sinks[name](data)
            if proc.poll() is not None and open_ports:
                # qemu is gone; drain what is left in the sockets, then stop
                for key in list(sel.get_map().values()):
                    sock = key.fileobj
                    while True:
                        try:
                            data = sock.recv(65536)  # type: ignore[union-attr]
                        except (BlockingIOError, ConnectionResetError):
                            break
                        if not data:
                            break
                        if key.data == "ctr.status":
                            status += data
                        else:
                            sinks[key.data](data)
                break
        # if it does not exit in time, it said what it had to say: the finally kills it
        _wait_exit(proc, max(0.1, min(POWEROFF_GRACE, deadline - time.monotonic())))
        duration = time.monotonic() - start
        code = _parse_status(status.decode(errors="replace"), console, qemu_log, proc, own_dir)
        return RunResult(code, duration, accel, None if own_dir else console)
    finally:
        sel.close()
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc is not None:
            proc.wait()
        for ours, theirs in pairs.values():
            ours.close()
            theirs.close()
        try:
            initrd.unlink()
        except FileNotFoundError:
            pass
        if own_dir:
            shutil.rmtree(rdir, ignore_errors=True)


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait at most `timeout` s for qemu to exit, woken by its exit through a pidfd: Popen.wait
    with a timeout polls, sleeping up to 50 ms past the exit (every `run --rm` paid it)."""
    if proc.poll() is not None:
        return
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # Linux < 5.3
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll(timeout * 1000)
    finally:
        os.close(fd)
    proc.poll()


def _hang_hint(console: Path, qemu_log: Path, own_dir: bool) -> str:
    text = (_tail(qemu_log, 5) + "\n" + _tail(console, 5)).strip()
    if "KVM internal error" in text or "emulation failure" in text:
        return "KVM cannot run this kernel here; use the TCG accelerator"
    where = "" if own_dir else f"; see {console}"
    last = text.splitlines()[-1] if text else "no console output"
    return f"last output: {last}{where}"


def _parse_status(status: str, console: Path, qemu_log: Path,
                  proc: subprocess.Popen[bytes], own_dir: bool) -> int:
    for line in status.splitlines():
        verb, _, arg = line.strip().partition(" ")
        if verb == "started":
            continue
        if verb == "exit" and arg.lstrip("-").isdigit():
            return int(arg)
        if verb == "error":
            raise DriverError(f"the VM could not start the command: {arg}",
                              hint=None if own_dir else f"see {console}")
    console_text = _tail(console, 200)
    panic = _panic_reason(console_text)
    if panic:
        raise DriverError(f"the VM's kernel panicked: {panic}")
    qlog = _tail(qemu_log, 5)
    if proc.returncode not in (0, None) and qlog:
        lines = qlog.splitlines()
        first_error = next((ln for ln in lines if "error" in ln.lower()), lines[-1])
        raise DriverError(f"qemu failed (exit {proc.returncode}): {first_error}")
    last = console_text.splitlines()[-1] if console_text else "no console output"
    raise DriverError("the VM stopped before the command finished",
                      hint=f"last console output: {last}")
