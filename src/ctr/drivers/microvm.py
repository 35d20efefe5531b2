"""hyperv isolation, `microvm` driver: a real utility VM per container, driven by qemu.

The container is the one process isolation runs -- the image's layers under an overlay whose
writable layer is `upper/`, built by the overlay driver's own code -- so `diff`, `commit`,
`export` and `rm` work unchanged. Only the workload runs elsewhere: in a small VM with its
own kernel (`ctr.qemu`), which sees the merged view over virtio-9p.

How one run goes:

1. `launch()` (in ctr) finds the kernel (config `kernel`, `$CTR_KERNEL`, a kernel imported
   with `ctr system kernel import`, the host's /boot/vmlinuz-$(uname -r)), builds or reuses
   the cached initramfs, asks the cached probe for the accelerator (KVM only if a probe guest
   really boots, else TCG), sizes the VM and writes everything the run needs to the
   container's `microvm.json`. It returns an ordinary launch plan: *a helper process in a
   private mount namespace, with the container's overlay mounted there* (the very mount op
   the overlay driver uses). `proc.start` carries it out as for any container.
2. The helper (`helper()`: `python -m ctr.drivers.microvm SPEC` under the monitor; in a
   foreground `run` the forked child calls it directly, sparing a Python start-up) resolves
   `-u` against the image's /etc/passwd (a forked child chroots into the merged view), then runs
   qemu through `qemu.boot_and_run` with the merged directory as the guest's 9p root and the
   volumes as 9p shares. qemu inherits the helper's mount namespace, so the overlay is
   mounted only there: when the helper and qemu are gone the namespace goes, and the mount
   with it, whatever way they ended -- nothing ever appears in the host's mount table.
   qemu gets SIGKILL if the helper dies (PR_SET_PDEATHSIG), and `boot_and_run` kills it in
   a `finally` on every other path.
3. The helper's pid is the container's pid. Signals sent to it (`ctr stop`, `kill`, ^C)
   are forwarded to the workload inside the guest over the control port; it exits with the
   workload's code. When the VM fails (panic, hang, init error) it records the error in
   `vm/result.json` and exits 125; a foreground `run` turns that into ctr's one-line error,
   a detached one (`run -d`: the monitor runs the same plan) logs the error line.

Because the plan is an ordinary `Launch`, `run -d`, `start`, `start -a`, `stop`, `kill`,
`wait` and `logs` need nothing special.

`exec` (`exec_in()`): joining host namespaces would not enter the guest, so the guest's init
serves exec slots -- the very slots of `ctr vm`'s guest agent (`ctr.vm.agent`) -- over
virtio-serial ports that qemu serves as unix sockets in `vm/` (`ctr_N_ctl|out|err|in.sock`,
bound by the helper before qemu starts).  A later `ctr exec` (another process) waits until
`vm/qemu.pid` names the running helper (the sockets are then this run's), resolves `-u`
against the image's /etc/passwd through the helper's mount namespace (/proc/PID/root), takes
a free slot and runs the command in the guest's view of the container: chrooted into the
9p root, with the container's env + `-e`, `-w`, `-u`; stdout/stderr relayed, stdin with
`-i`, the command's own exit code (126/127, 128+n), ^C/SIGTERM forwarded.  `-t` is refused.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from ctr.drivers.base import Availability, filesystem_supported
from ctr.drivers.overlay import OverlayDriver
from ctr.drivers.overlay import build_launch as overlay_launch
from ctr.errors import Conflict, CtrError, DriverError
from ctr.launch import Launch
from ctr.models import Container, Image

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

MIB = 1 << 20
DEFAULT_MEMORY = 1 << 30  # a Hyper-V container's utility VM: 1 GiB ...
DEFAULT_CPUS_KVM = 2  # ... and 2 virtual processors; under TCG 1 (SMP bring-up is emulated: +2 s)
DEFAULT_CPUS_TCG = 1
MIN_MEMORY = 128 * MIB  # a Debian generic kernel takes ~55 MB, its initramfs ~7: below 128 MB the
# guest deadlocks on memory while booting (96 MB measured); 128 MB leaves ~36 MB to the workload
BOOT_TIMEOUT = 60.0  # until the guest's init reports the command started; CTR_MICROVM_BOOT_TIMEOUT
RUNTIME = "microvm.json"  # per-container: the run's spec (for the helper) and what inspect shows
VM_DIR = "vm"  # per-container: console.log, qemu.log, result.json, qemu.pid
# Exec slots (execs that can run at once; a further one waits for a slot) by the VM's size:
# each slot is 4 virtio-serial ports, and the guest kernel fills every port's receive queue
# with pages: ~4.3 MB of guest memory a port (Slab +68 MB measured for 4 slots), and setting
# them up is emulated kernel time (2 slots: +0.3 s of a 2.4 s boot under TCG, 1 slot: ~0.1 s).
EXEC_SLOT_MB = ((2048, 2), (256, 1))  # (from this many MB, slots); below: none, exec refused
FORWARD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
QEMU = "qemu-system-x86_64"


def _config():
    from ctr.config import load_config

    return load_config()


def exec_slots(memory_mb: int) -> int:
    return next((n for mb, n in EXEC_SLOT_MB if memory_mb >= mb), 0)


def vm_size(container: Container, accel: str) -> tuple[int, int]:
    """(memory in MiB, vCPUs) for the container: its recorded size (flag, else config, else
    the utility VM's 1 GiB), and its CPUs rounded up (a VM has whole processors), else 2 under
    KVM and 1 under TCG."""
    mem = container.config.memory or DEFAULT_MEMORY
    cpus = container.config.cpus
    n = max(1, math.ceil(cpus)) if cpus else (DEFAULT_CPUS_KVM if accel == "kvm" else DEFAULT_CPUS_TCG)
    return max(1, math.ceil(mem / MIB)), n


def accel_note(kernel, cache_file: Path, qemu_bin: str) -> str:
    """What the accelerator will be, without booting: the cached probe's answer, else why not
    KVM, else that a probe decides on the first run."""
    from ctr.qemu import accel

    if not accel.kvm_device_usable():
        return "TCG (/dev/kvm is missing or not accessible)"
    try:
        info = json.loads(Path(cache_file).read_text())
        if info.get("key") == accel._probe_key(kernel, qemu_bin) and info.get("accel") in ("kvm", "tcg"):
            return f"{info['accel'].upper()} ({info.get('reason', '')})"
    except (OSError, ValueError, AttributeError):
        pass
    return "KVM if a probe boot on the first run succeeds, else TCG"


class MicroVMDriver(OverlayDriver):
    name = "microvm"
    isolation = "hyperv"
    emulated = False
    summary = ("a utility VM per container: qemu (KVM when it really works, else TCG) boots its own "
               "kernel; the container's merged view is shared into it over virtio-9p")
    default_memory = DEFAULT_MEMORY
    default_cpus = None  # decided at launch: 2 under KVM, 1 under TCG
    detachable = True  # run() only adds error reporting around the ordinary launch plan
    read_only_root = False  # the guest mounts its root from the 9p share as it is

    def __init__(self, store=None) -> None:
        super().__init__()
        self.store = store  # for availability(); else the store $CTR_ROOT / the default names

    # ------------------------------------------------------------------ availability
    def _availability_store(self):
        if self.store is not None:
            return self.store
        from ctr.store import Store, default_root

        return Store(default_root())

    def availability(self) -> Availability:
        if os.geteuid() != 0:
            return Availability(False, "needs root (it mounts the container's overlay for qemu to share)",
                                "run ctr as root, or use --isolation process")
        if not filesystem_supported("overlay"):
            return Availability(False, "the kernel has no overlay filesystem", "load it with `modprobe overlay`")
        try:
            cfg = _config()
        except CtrError as e:
            return Availability(False, e.message, e.hint or "")
        store = self._availability_store()
        qemu_bin = cfg.qemu or QEMU
        if not _kernel_candidates(cfg.kernel, store.kernels_dir):
            # the common case on hosts without one: said without importing the qemu machinery,
            # which `--isolation hyperv` would otherwise pay for before falling back to sandbox
            release = os.uname().release
            return Availability(False, "no kernel found for the VM (no config `kernel`, $CTR_KERNEL, "
                                f"imported kernel, or readable /boot/vmlinuz-{release})",
                                "import one with `ctr system kernel import FILE`")
        from ctr import qemu

        ready = qemu.check_host(cfg.kernel, kernels_dir=store.kernels_dir, qemu=qemu_bin)
        if not ready.usable:
            return Availability(False, ready.reason, ready.hint or "")
        note = accel_note(ready.kernel, store.cache_dir / "accel.json", qemu_bin)
        return Availability(True, f"{ready.reason}; accelerator: {note}")

    # ------------------------------------------------------------------ the container
    def prepare(self, store, ctr_dir: Path, container: Container, image: Image) -> None:
        _refuse_unsupported(container)
        super().prepare(store, ctr_dir, container, image)

    def launch(self, store, container: Container, image: Image) -> Launch:
        """Everything that can fail before the VM boots fails here (kernel, busybox, modules);
        returns the plan: the helper, in a private mount namespace holding the overlay."""
        from ctr import qemu
        from ctr.store.records import write_json

        _refuse_unsupported(container)
        cfg = _config()
        qemu_bin = cfg.qemu or QEMU
        kernel = qemu.find_kernel(cfg.kernel, kernels_dir=store.kernels_dir)
        base = qemu.base_initramfs(kernel, cache_dir=store.cache_dir / "initramfs")
        choice = qemu.probe_accelerator(kernel, base, cache_file=store.cache_dir / "accel.json", qemu=qemu_bin)
        memory_mb, cpus = vm_size(container, choice.accel)
        cid = container.id
        vm_dir = store.container_path(cid, VM_DIR)
        vm_dir.mkdir(mode=0o700, exist_ok=True)
        # a foreground run killed before it recorded its start leaves its VM running: two VMs
        # must never share a writable layer (process isolation's leftovers are killed by `start`)
        _kill_recorded(vm_dir)
        for stale in ("result.json", "qemu.pid"):
            try:
                (vm_dir / stale).unlink()
            except FileNotFoundError:
                pass
        try:
            boot_timeout = float(os.environ.get("CTR_MICROVM_BOOT_TIMEOUT") or BOOT_TIMEOUT)
        except ValueError:
            boot_timeout = BOOT_TIMEOUT
        c = container.config
        spec = {
            "kernel": {"image": str(kernel.image), "release": kernel.release,
                       "modules": str(kernel.modules) if kernel.modules else None},
            "initramfs_cache": str(store.cache_dir / "initramfs"),
            "accelerator": choice.accel, "accelerator_reason": choice.reason,
            "memory": memory_mb * MIB, "memory_mb": memory_mb, "cpus": cpus,
            "exec_slots": exec_slots(memory_mb),
            "qemu": qemu_bin, "boot_timeout": boot_timeout,
            "root": str(store.container_path(cid, "merged")),
            "run_dir": str(vm_dir),
            "guest": {"argv": list(c.command), "env": list(c.env), "workdir": c.workdir or "/",
                      "user": c.user or "", "hostname": c.hostname or cid[:12],
                      "stdin": bool(c.interactive)},
            "volumes": [{"source": m.source, "target": m.target, "readonly": m.readonly} for m in c.mounts],
            # over `host` the guest would see the store (other containers' layers) where the root
            # filesystem holds it: the helper covers it with an empty tmpfs in its own namespace
            "hide": [os.path.realpath(store.root)] if image.builtin else [],
        }
        path = store.container_path(cid, RUNTIME)
        write_json(path, spec)
        overlay = overlay_launch(store, container, image, rootless=False).mounts[0]
        assert overlay.fstype == "overlay" and not overlay.in_root
        return Launch(
            argv=[sys.executable, "-m", "ctr.drivers.microvm", str(path)],
            env=dict(os.environ),  # the helper's own (host-side) environment; qemu gets a clean one
            cwd="/",
            root=None,
            namespaces=("mnt",),
            mounts=[overlay],
            stdin="inherit" if c.interactive else "null",
        )

    def run(self, store, container: Container, image: Image, on_start=None) -> int:
        """The ordinary plan, run in the foreground; a failure of the VM becomes a DriverError
        (exit 125, one line, recorded with the container) instead of a bare 125."""
        from ctr import proc

        launch = self.launch(store, container, image)
        spec = launch.argv[-1]

        def in_process() -> None:
            # the forked child runs the helper without exec'ing a new Python (~0.3 s saved);
            # closing the descriptors closes proc.start's status pipe: "started"
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            os._exit(helper(spec, quiet=True))

        started = proc.start(launch, pid1_hook=in_process)
        if on_start:
            on_start(started)
        code = proc.wait(started)
        result = _read_json(store.container_path(container.id, VM_DIR) / "result.json")
        if result.get("error"):
            raise DriverError(result["error"], hint=result.get("hint") or None)
        return code

    def cleanup(self, store, container: Container) -> None:
        """qemu dies with its helper; should it not have, it is killed now (by pid and start time)."""
        _kill_recorded(store.container_path(container.id, VM_DIR))
        super().cleanup(store, container)

    tasks_visible = False  # the container's tasks are the guest's; the host sees its qemu

    def host_processes(self, store, container: Container) -> list[int]:
        """The VM's qemu: what the container costs the host."""
        from ctr import proc

        info = _read_json(store.container_path(container.id, VM_DIR) / "qemu.pid")
        pid, start = info.get("pid"), info.get("start")
        return [pid] if isinstance(pid, int) and proc.pid_alive(pid, start) else []

    def exec_in(self, store, container: Container, launch: Launch, detach: bool = False) -> int:
        """`ctr exec` into the running container: `launch` (the engine's exec plan: argv, env,
        cwd, user, stdin) runs in the guest through a free exec slot; returns its exit code,
        137 when the container stops under it. With `detach`, a background client holds the
        slot while the command runs, its output discarded; 0 once the guest started it."""
        from ctr import proc
        from ctr.vm import agent

        if launch.tty:
            raise DriverError("exec -t is not supported on the microvm driver (no terminal in the VM yet)",
                              hint="drop -t (stdin still works with -i)")
        c = container
        spec = _read_json(store.container_path(c.id, RUNTIME))
        run_dir = Path(spec.get("run_dir") or store.container_path(c.id, VM_DIR))
        slots = int(spec.get("exec_slots", 0))
        if not slots:
            least = EXEC_SLOT_MB[-1][0]
            raise DriverError(f"exec needs a utility VM of at least {least} MB on the microvm driver "
                              f"(this one has {spec.get('memory_mb', '?')} MB: every exec slot costs "
                              "guest memory)", hint=f"run the container with --memory {least}m or more")

        def alive() -> bool:
            return proc.pid_alive(c.pid, c.pid_start)

        # the slots' sockets are this run's once the helper has recorded its qemu
        deadline = time.monotonic() + float(spec.get("boot_timeout") or BOOT_TIMEOUT)
        while True:
            info = _read_json(run_dir / "qemu.pid")
            if (info.get("helper"), info.get("helper_start")) == (c.pid, c.pid_start):
                break
            if not alive():
                raise Conflict(f"container {c.name} is not running")
            if time.monotonic() >= deadline:
                raise DriverError("the container's VM did not start its qemu in time",
                                  hint=f"see {run_dir / 'qemu.log'}")
            time.sleep(0.05)
        uid, gid = resolve_user(f"/proc/{c.pid}/root{spec['root']}", launch.user or "")
        if detach:
            return _detached(lambda started: agent.run_command(
                run_dir, list(launch.argv), dict(launch.env), launch.cwd, user=(uid, gid), stdout=None,
                stderr=None, slots=slots, alive=alive, connect_timeout=max(1.0, deadline - time.monotonic()),
                on_started=started))
        try:
            return agent.run_command(
                run_dir, list(launch.argv), dict(launch.env), launch.cwd, user=(uid, gid),
                stdin=0 if launch.stdin == "inherit" else None, slots=slots, alive=alive,
                connect_timeout=max(1.0, deadline - time.monotonic()))
        except DriverError:
            # the VM went away under the command: when the container stopped (its helper
            # exits right after qemu), the exec ended with it, as a process exec does
            end = time.monotonic() + 5
            while alive() and time.monotonic() < end:
                time.sleep(0.05)
            if not alive():
                return 128 + signal.SIGKILL
            raise

    def runtime_info(self, store, container: Container) -> dict:
        """The VM that ran (or will run) this container, for `inspect`."""
        spec = _read_json(store.container_path(container.id, RUNTIME))
        if not spec:
            return {"kernel": "a guest kernel under qemu (not started yet)"}
        vm_dir = Path(spec.get("run_dir", store.container_path(container.id, VM_DIR)))
        return {
            "kernel": f"its own: {spec['kernel']['release']} ({spec['kernel']['image']}), under qemu",
            "accelerator": spec.get("accelerator"), "accelerator_reason": spec.get("accelerator_reason"),
            "limits": {"memory": spec.get("memory"), "cpus": spec.get("cpus"),
                       "mechanism": "the VM's size"},
            "console_log": str(vm_dir / "console.log"),
        }


def _kernel_candidates(explicit: str | None, kernels_dir: Path) -> bool:
    """Could `qemu.find_kernel` find anything? (Cheap: no import, nothing read.)"""
    if explicit or os.environ.get("CTR_KERNEL"):
        return True
    try:
        if any(not e.name.startswith(".") for e in os.scandir(kernels_dir)):
            return True
    except OSError:
        pass
    release = os.uname().release
    return any(os.access(f"/boot/{n}-{release}", os.R_OK) for n in ("vmlinuz", "vmlinux"))


def _refuse_unsupported(container: Container) -> None:
    c = container.config
    if c.tty:
        raise DriverError("the microvm driver cannot allocate a terminal (-t) yet",
                          hint="drop -t (stdin still works with -i), or use --driver sandbox")
    for m in c.mounts:
        if not os.path.isdir(m.source):
            raise DriverError(f"volume {m.source} is not a directory: the microvm driver shares directories only",
                              hint=f"mount its directory instead (-v {os.path.dirname(m.source)}:DIR)")
    mem = c.memory or DEFAULT_MEMORY
    if mem < MIN_MEMORY:
        raise DriverError(f"--memory {mem // MIB}m is too small for a utility VM (its kernel alone takes ~60 MB)",
                          hint=f"give it at least {MIN_MEMORY // MIB}m")


def _kill_recorded(vm_dir: Path) -> None:
    """Kill the helper and the qemu recorded in vm/qemu.pid if they still run (each checked
    by its start time, so a reused pid is left alone)."""
    from ctr import monitor, proc

    info = _read_json(vm_dir / "qemu.pid")
    alive = [pid for pid, start in ((info.get("helper"), info.get("helper_start")),
                                    (info.get("pid"), info.get("start")))
             if isinstance(pid, int) and proc.pid_alive(pid, start)]
    if alive:
        monitor.kill_processes(alive)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ============================================================================ the helper
# Runs as `python -m ctr.drivers.microvm SPEC` inside the container's private mount namespace
# (the overlay is mounted at spec["root"]), with the container's stdin/stdout/stderr.

def resolve_user(root: str, spec: str) -> tuple[int, int]:
    """uid/gid for `-u` as process isolation resolves it: names from the image's own
    /etc/passwd and /etc/group (a forked child chroots into the merged view to read them)."""
    from ctr import proc

    if not spec:
        return 0, 0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            os.chroot(root)
            os.chdir("/")
            uid, gid = proc._lookup_user(spec)
            os.write(w, f"ok {uid} {gid}".encode())
        except BaseException as e:  # noqa: BLE001
            os.write(w, ("err " + (getattr(e, "strerror", None) or str(e))).encode()[:4000])
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while data := os.read(r, 4096):
        chunks.append(data)
    os.close(r)
    os.waitpid(pid, 0)
    verb, _, rest = b"".join(chunks).decode(errors="replace").partition(" ")
    if verb == "ok":
        uid, gid = rest.split()
        return int(uid), int(gid)
    raise DriverError(f"cannot start the container: {rest or 'user lookup failed'}")


def cover(root: str, path: str) -> bool:
    """Mount an empty read-only tmpfs over `path` inside `root` (this process's own mount
    namespace), reaching it one component at a time without following symlinks; False when
    `path` is not a directory there (then there is nothing to hide)."""
    from ctr import proc

    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in [p for p in path.split("/") if p]:
            try:
                nfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                return False
            os.close(fd)
            fd = nfd
        proc.mount("tmpfs", f"/proc/self/fd/{fd}", "tmpfs",
                   proc.mount_flags(("ro", "nosuid", "nodev", "noexec")), "size=4k,mode=0755")
        return True
    finally:
        os.close(fd)


def _write_result(run_dir: Path, data: dict) -> None:
    tmp = run_dir / ".result.json"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, run_dir / "result.json")


def helper(spec_path: str, quiet: bool = False) -> int:
    """Run the VM the spec describes; returns the workload's exit code, or 125 with the error
    in run_dir/result.json (and on stderr unless `quiet`: the caller reports it)."""
    from ctr import proc, qemu

    spec = json.loads(Path(spec_path).read_text())
    run_dir = Path(spec["run_dir"])
    vm: list = []
    pending: list[int] = []

    def forward(signum, _frame) -> None:
        if vm:
            vm[0].signal(signum)
        else:
            pending.append(signum)

    for sig in FORWARD:
        signal.signal(sig, forward)

    def started(handle) -> None:
        vm.append(handle)
        try:
            (run_dir / "qemu.pid").write_text(json.dumps(
                {"pid": handle.pid, "start": proc.pid_start_time(handle.pid),
                 "helper": os.getpid(), "helper_start": proc.pid_start_time(os.getpid())}))
        except OSError:
            pass
        for s in pending:
            handle.signal(s)
        pending.clear()

    listeners: dict = {}
    slots = int(spec.get("exec_slots", 0))
    try:
        g = spec["guest"]
        for path in spec.get("hide", ()):
            cover(spec["root"], path)
        uid, gid = resolve_user(spec["root"], g["user"])
        k = spec["kernel"]
        kernel = qemu.Kernel(Path(k["image"]), Path(k["modules"]) if k["modules"] else None, k["release"])
        base = qemu.base_initramfs(kernel, cache_dir=spec["initramfs_cache"])
        guest = qemu.GuestConfig(
            argv=tuple(g["argv"]),
            env=tuple(tuple(e.split("=", 1)) if "=" in e else (e, "") for e in g["env"]),  # type: ignore[misc]
            workdir=g["workdir"], uid=uid, gid=gid, hostname=g["hostname"],
            extra={"CTR_TMPFS": "/tmp", "CTR_SLOTS": str(slots), "CTR_SLOT_STDIN": "1"},
        )
        listeners = _bind_exec_sockets(run_dir, slots)
        volumes = [qemu.HostVolume(Path(v["source"]), v["target"], bool(v["readonly"])) for v in spec["volumes"]]
        result = qemu.boot_and_run(
            guest, kernel=kernel, initramfs=base, root=Path(spec["root"]), volumes=volumes,
            accel=spec["accelerator"], memory_mb=int(spec["memory_mb"]), cpus=int(spec["cpus"]),
            boot_timeout=float(spec["boot_timeout"]), timeout=None,
            stdout=1, stderr=2, stdin=0 if g["stdin"] else None,
            run_dir=run_dir, qemu=spec["qemu"], on_start=started, listeners=listeners)
        code = result.exit_code
        _write_result(run_dir, {"exit_code": code, "duration": round(result.duration, 3)})
        return code
    except Exception as e:  # noqa: BLE001 - whatever it was, it is reported, not a traceback
        if isinstance(e, CtrError):
            message, hint = e.message, e.hint
        else:
            message, hint = f"internal error in the microvm helper: {type(e).__name__}: {e}", None
        try:
            _write_result(run_dir, {"error": message, "hint": hint})
        except OSError:
            pass
        if not quiet:
            from ctr import output

            output.error(message, hint)
        return 125
    finally:
        for name, sock in listeners.items():
            sock.close()
            (run_dir / f"{name}.sock").unlink(missing_ok=True)


def _detached(run: Callable[[Callable[[], None]], int]) -> int:
    """exec -d: `run(started)` in a forked client of its own session, stdio on /dev/null (it
    holds the exec slot, and the guest kills a command whose client went away). Returns 0 when
    the guest said it started the command; otherwise the client's error or exit code."""
    from ctr import proc

    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # ---- the background client
        code = 125
        try:
            os.close(r)
            os.setsid()
            nul = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(nul, fd)
            os.close(nul)

            def started() -> None:
                nonlocal w
                os.write(w, b"s")
                os.close(w)
                w = -1
            code = run(started)
        except CtrError as e:
            if w >= 0:
                os.write(w, ("e" + e.message).encode(errors="replace")[:4000])
        except BaseException as e:  # noqa: BLE001 - never return into the caller's code
            if w >= 0:
                os.write(w, f"e{type(e).__name__}: {e}".encode(errors="replace")[:4000])
        finally:
            os._exit(code & 0xFF)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    said = b"".join(chunks)
    if said.startswith(b"s"):
        return 0  # the client goes on alone; init reaps it once ctr has exited
    _, status = os.waitpid(pid, 0)
    if said.startswith(b"e"):
        raise DriverError(said[1:].decode(errors="replace"))
    return proc.exit_code_from_status(status)


def _bind_exec_sockets(run_dir: Path, slots: int) -> dict:
    """The exec slots' sockets in the run directory, this run's (a stale one is replaced)."""
    from ctr.vm import agent

    listeners = {}
    try:
        for name in agent.port_names(slots, control=False, stdin=True):
            (run_dir / f"{name}.sock").unlink(missing_ok=True)
            listeners[name] = agent.bind_listener(run_dir / f"{name}.sock")
    except BaseException:
        for sock in listeners.values():
            sock.close()
        raise
    return listeners


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m ctr.drivers.microvm SPEC (run by ctr, not by hand)\n")
        sys.exit(2)
    code = helper(args[0])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
