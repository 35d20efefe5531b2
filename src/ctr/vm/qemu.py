"""`ctr vm`, driver `qemu`: a real virtual machine with its own kernel and its own disk.

In the VM's directory (`Store.vm_dir(name)`):

    disk.img      raw ext4, sparse; made from the image by `mke2fs -d`, never mounted on the host
    manifest      the disk's listing when it was made (`ctr.vm.disk`), for `vm diff`
    console.log   the guest's serial console, from the last boot
    run/          while it runs: qemu.pid, initrd.cpio, the agent's sockets and slot locks
    checkpoints/<name>/disk.img

`vm start` boots the recorded kernel (`ctr.qemu`'s kernels, cached initramfs and accelerator
probe) with the disk on virtio-blk as the root, and ctr's VM init and guest agent
(`ctr.vm.agent`) appended to the initramfs; qemu runs with `-daemonize` and a pid file,
its virtio-serial ports served on unix sockets ctr binds in `run/` and passes as `fd=N`.
It returns when the agent says `ready`.  Nothing but qemu runs on the host for a VM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from ctr import proc
from ctr.changes import Change, is_opaque, is_whiteout
from ctr.drivers.base import Availability
from ctr.errors import CtrError, DriverError
from ctr.models import VM, Image
from ctr.store.store import remove_path
from ctr.vm import agent, disk
from ctr.vm.base import Progress, VMDriver, signals_deferred

MIB = 1 << 20
DISK = "disk.img"
MANIFEST = "manifest"
CONSOLE = "console.log"
RUN = "run"
MACHINE = "microvm"
MIN_MEMORY = 128 * MIB  # a Debian generic kernel deadlocks booting in less (docs/microvm.md)
STOP_EXTRA = 20.0  # after the grace period: sync, unmount, power off
TURN_OFF_WAIT = 5.0  # after SIGTERM to qemu, before SIGKILL
QEMU_BIN = "qemu-system-x86_64"


def _qemu_bin(config) -> str:
    return (config.qemu if config is not None and config.qemu else None) or QEMU_BIN


class QemuVMDriver(VMDriver):
    name = "qemu"
    summary = ("a real VM under qemu (KVM when it works, else TCG): its own kernel, its own raw "
               "ext4 disk on virtio-blk, ctr's init and guest agent on virtio-serial")

    # ----------------------------------------------------------------- availability
    def availability(self, store=None, config=None, kernel: str | None = None) -> Availability:
        from ctr import qemu

        if shutil.which("mke2fs", path=_path()) is None:
            return Availability(False, "mke2fs is not installed (it makes the VM's disk)",
                                "apt-get install e2fsprogs")
        ready = qemu.check_host(kernel or (config.kernel if config is not None else None),
                                store.kernels_dir if store is not None else None,
                                qemu=_qemu_bin(config))
        if not ready.usable:
            return Availability(False, ready.reason, ready.hint or "")
        return Availability(True, ready.reason)

    def check(self, store, config, vm: VM, image: Image) -> None:
        from ctr import qemu

        if shutil.which(_qemu_bin(config), path=_path()) is None and not os.access(_qemu_bin(config), os.X_OK):
            raise DriverError(f"{_qemu_bin(config)} is not installed",
                              hint="apt-get install --no-install-recommends qemu-system-x86, or --driver sandbox")
        if shutil.which("mke2fs", path=_path()) is None:
            raise DriverError("mke2fs is not installed (it makes the VM's disk)", hint="apt-get install e2fsprogs")
        qemu.find_busybox()
        kernel = qemu.find_kernel(vm.kernel or config.kernel or None, store.kernels_dir)
        vm.kernel = str(kernel.image)
        vm.kernel_release = kernel.release
        if vm.memory < MIN_MEMORY:
            from ctr.errors import InvalidArgument

            raise InvalidArgument(f"--memory {vm.memory // MIB}m is too little for a VM: at least "
                                  f"{MIN_MEMORY // MIB}m (the guest kernel does not boot in less)")

    # ----------------------------------------------------------------- creation
    def build(self, store, built: Path, vm: VM, image: Image, progress: Progress) -> None:
        layers = [str(store.layer_dir(d)) for d in image.layers]
        usage = disk.Usage(0, 0, 0)
        for layer in layers:
            u = disk.tree_usage(layer)
            usage = disk.Usage(usage.bytes + u.bytes, usage.apparent + u.apparent, usage.inodes + u.inodes)
        need = disk.min_ext4_size(usage)
        if vm.disk_size < need:
            raise disk.DiskTooSmall(disk.too_small(vm.disk_size, usage.bytes, need))
        tree = layers[0] if len(layers) == 1 and _plain(layers[0]) else None
        total = usage.bytes * (1 if tree else 2)
        done = 0
        if tree is None:  # layers with whiteouts or several layers: merge them first
            from ctr.drivers.copy import materialise

            merged = built / ".tree"
            merged.mkdir(mode=0o755)
            watch = disk.SpaceWatch(built)
            disk.poll_while(lambda: materialise(layers, str(merged)),
                            lambda: progress(min(watch.written(), usage.bytes), total))
            tree, done = str(merged), usage.bytes
        try:
            disk.make_ext4(tree, built / DISK, vm.disk_size, label=vm.name[:16],
                           on_progress=lambda n: progress(done + min(n, usage.bytes), total))
        except disk.DiskTooSmall:
            raise disk.DiskTooSmall(disk.too_small(vm.disk_size, usage.bytes, need)) from None
        finally:
            if tree != (layers[0] if layers else None):
                remove_path(built / ".tree")
        progress(total, total)
        (built / MANIFEST).write_bytes(disk.dump_listing(disk.list_ext4(built / DISK)))
        vm.disk_used = disk.file_usage(built / DISK)

    # ----------------------------------------------------------------- running
    def start(self, store, config, vm: VM, timeout: float,
              on_pid: Callable[[int, int | None], None]) -> dict:
        from ctr import qemu
        from ctr.qemu.machine import MachineSpec, Port, kernel_cmdline, qemu_command
        from ctr.qemu.run import QEMU_ENV

        kernel = qemu.find_kernel(vm.kernel or None, store.kernels_dir)
        base = qemu.base_initramfs(kernel, store.cache_dir / "initramfs")
        choice = qemu.probe_accelerator(kernel, base, store.cache_dir / "accel.json",
                                        qemu=_qemu_bin(config))
        run = store.vm_path(vm.name, RUN)
        remove_path(run)
        run.mkdir(mode=0o700)
        initrd = run / "initrd.cpio"
        spec_guest = agent.GuestSpec(tuple(base.modules_for(MACHINE, disk=True)), hostname=vm.name)
        with open(initrd, "wb") as out:
            for part in (base.path, base.disk_path):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            out.write(agent.init_archive(spec_guest))
        listeners = {n: agent.bind_listener(run / f"{n}.sock") for n in agent.port_names()}
        try:
            spec = MachineSpec(
                kernel=kernel.image, initrd=initrd,
                append=kernel_cmdline(choice.accel, MACHINE, extra=(f"rdinit=/{agent.INIT_PATH}",)),
                machine=MACHINE, accel=choice.accel, memory_mb=vm.memory // MIB, cpus=vm.cpus,
                ports=tuple(Port(n, f"socket,fd={s.fileno()},server=on,wait=off")
                            for n, s in listeners.items()),
                disk=store.vm_path(vm.name, DISK), console_log=store.vm_path(vm.name, CONSOLE),
                qemu=_qemu_bin(config))
            pidfile = run / "qemu.pid"
            argv = qemu_command(spec) + ["-daemonize", "-pidfile", str(pidfile)]
            if os.environ.get("CTR_DEBUG"):
                import sys

                print("+ " + " ".join(argv), file=sys.stderr)
            # no ^C from starting qemu (it daemonises) until its pid is recorded
            with signals_deferred():
                try:
                    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                       env=QEMU_ENV, pass_fds=[s.fileno() for s in listeners.values()],
                                       timeout=120)
                except OSError as e:
                    raise DriverError(f"cannot start {spec.qemu}: {e.strerror}",
                                      hint="apt-get install --no-install-recommends qemu-system-x86") from e
                except subprocess.TimeoutExpired as e:
                    _kill_from(pidfile)
                    raise DriverError("qemu did not start within 120 s") from e
                pid, start = self._started(r, pidfile)
                try:
                    on_pid(pid, start)
                except BaseException:  # the record could not be written: nobody else knows of qemu
                    _kill(pid, start)
                    raise
        finally:
            for s in listeners.values():
                s.close()
        deadline = time.monotonic() + timeout
        try:
            release = agent.wait_ready(self.control(store, vm), deadline,
                                       lambda: proc.pid_alive(pid, start))
        except TimeoutError:
            _kill(pid, start)
            raise DriverError(f"the VM did not become ready within {timeout:g} s and was turned off",
                              hint=self._console_hint(store, vm)) from None
        except DriverError as e:
            _kill(pid, start)
            raise DriverError(f"{e.message}: {self._failure(store, vm)}",
                              hint=f"see `ctr vm logs {vm.name}`") from None
        except BaseException:  # interrupted: nobody will wait for this machine
            _kill(pid, start)
            raise
        return {"accel": choice.accel, "guest_kernel": release}

    def _started(self, r: subprocess.CompletedProcess, pidfile: Path) -> tuple[int, int | None]:
        """The daemonised qemu's pid and start time, or why it did not start."""
        if r.returncode != 0:
            _kill_from(pidfile)
            lines = (r.stderr or r.stdout).strip().splitlines()
            first = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
            raise DriverError(f"qemu failed to start (exit {r.returncode}): {first}")
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError) as e:
            raise DriverError(f"qemu started but wrote no pid file ({e})") from e
        return pid, proc.pid_start_time(pid)

    def control(self, store, vm: VM) -> Path:
        return store.vm_path(vm.name, RUN) / f"{agent.CONTROL}.sock"

    def exec(self, store, vm: VM, argv: list[str], env: dict[str, str], workdir: str) -> int:
        return agent.run_command(store.vm_path(vm.name, RUN), argv, env, workdir,
                                 alive=lambda: proc.pid_alive(vm.pid, vm.pid_start))

    def shutdown(self, store, vm: VM, grace: float, force: bool) -> None:
        with agent.Control(self.control(store, vm), timeout=10) as c:
            c.request(f"shutdown {max(0, int(grace))}{' force' if force else ''}", timeout=10)

    def stop_wait(self, grace: float) -> float:
        return grace + STOP_EXTRA  # the guest syncs, unmounts and powers off after the grace

    def turn_off(self, store, vm: VM) -> None:
        _kill(vm.pid, vm.pid_start, graceful=True)

    def cleanup(self, store, vm: VM) -> None:
        remove_path(store.vm_path(vm.name, RUN))

    # ----------------------------------------------------------------- the disk
    def changes(self, store, vm: VM, running: bool) -> list[Change]:
        manifest = disk.load_listing(store.vm_path(vm.name, MANIFEST).read_bytes())
        path = store.vm_path(vm.name, DISK)
        if running:
            # freezing makes the guest write its journal into place and hold new writes,
            # so the image read meanwhile is consistent
            with agent.Control(self.control(store, vm), timeout=10) as c:
                c.request("freeze", timeout=60)
                try:
                    now = disk.list_ext4(path)
                finally:
                    c.request("thaw", timeout=60)
        else:
            self._replay_if_needed(path)
            now = disk.list_ext4(path)
        return disk.changes(manifest, now, strict=True)

    def _replay_if_needed(self, path: Path) -> None:
        from ctr.vm.ext4 import Ext4

        with Ext4(path) as fs:
            dirty = fs.needs_recovery
        if dirty:
            disk.replay_journal(path)

    def disk_usage(self, store, vm: VM) -> int:
        return disk.file_usage(store.vm_path(vm.name, DISK))

    def checkpoint(self, store, vm: VM, dest: Path) -> str:
        path = store.vm_path(vm.name, DISK)
        self._replay_if_needed(path)
        return disk.copy_file(path, dest / DISK)

    def restore(self, store, vm: VM, src: Path) -> None:
        tmp = store.vm_path(vm.name, ".disk.img.restore")
        remove_path(tmp)
        try:
            disk.copy_file(src / DISK, tmp)
            os.replace(tmp, store.vm_path(vm.name, DISK))
        except BaseException:
            remove_path(tmp)
            raise

    def runtime_info(self, store, vm: VM) -> dict:
        return {"disk": str(store.vm_path(vm.name, DISK)), "disk_format": "raw ext4 (sparse)",
                "console": str(store.vm_path(vm.name, CONSOLE)), "machine": MACHINE,
                "agent": str(store.vm_path(vm.name, RUN)) + f"/{agent.CONTROL}.sock "
                         f"(+{agent.SLOTS} exec slots)"}

    # ----------------------------------------------------------------- diagnosis
    def _failure(self, store, vm: VM) -> str:
        text = agent.read_console_tail(store.vm_path(vm.name, CONSOLE), 200)
        for line in text.splitlines():
            if "Kernel panic" in line:
                return line.split("]", 1)[-1].strip()
        for line in reversed(text.splitlines()):
            if "ctr-vm: error" in line:
                return line.split("ctr-vm: ", 1)[1]
        last = text.splitlines()[-1] if text else "no console output"
        return f"last console output: {last}"

    def _console_hint(self, store, vm: VM) -> str:
        last = agent.read_console_tail(store.vm_path(vm.name, CONSOLE), 1)
        return f"last console output: {last or 'none'}; see `ctr vm logs {vm.name}`"


def _path() -> str:
    return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _plain(layer: str) -> bool:
    """A layer that is a plain tree (no whiteouts, no opaque directories): mke2fs can read
    it as it is, with no merged copy."""
    for dirpath, dirnames, filenames in os.walk(layer):
        if is_opaque(dirpath):
            return False
        for name in filenames:
            try:
                if is_whiteout(os.lstat(os.path.join(dirpath, name))):
                    return False
            except FileNotFoundError:
                continue
    return True


def _kill_from(pidfile: Path) -> None:
    """Stop the qemu a pid file names, if it got that far."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    _kill(pid, proc.pid_start_time(pid))


def _kill(pid: int | None, start: int | None, graceful: bool = False) -> None:
    """Stop qemu: SIGTERM (it closes the disk cleanly) then SIGKILL, or SIGKILL at once."""
    from ctr import monitor

    if not proc.pid_alive(pid, start):
        return
    if graceful:
        monitor.send_signal(pid, start, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + TURN_OFF_WAIT
        while proc.pid_alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.02)
    if proc.pid_alive(pid, start):
        monitor.send_signal(pid, start, signal.SIGKILL)  # type: ignore[arg-type]
        deadline = time.monotonic() + TURN_OFF_WAIT
        while proc.pid_alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.02)
    if proc.pid_alive(pid, start):
        raise CtrError(f"qemu (pid {pid}) did not stop")


DRIVER = QemuVMDriver
