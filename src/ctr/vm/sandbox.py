"""`ctr vm`, driver `sandbox`: an emulated VM that shares the host kernel.

The VM's disk is a private full copy of the image's tree (`rootfs/` in the VM's directory,
materialised layer by layer: copied, or reflinked where the filesystem can).  `vm start`
runs a long-lived init over it behind the hyperv sandbox's boundary (`ctr.drivers.sandbox`):
new user (ids 0-65535 are host ids 100000-165535, the tree seen through an id-mapped mount),
PID, IPC, UTS (the VM's name), network (loopback only) and mount namespaces, pivot_root into
the tree, a fresh /proc with docker's masked paths, a minimal /dev, docker's capability set,
no_new_privs, and the VM's memory and CPUs as cgroup caps.

The init is ctr's own code, forked (not exec'd: the image need not have any program) as
PID 1 of the new namespace: it keeps only CAP_KILL, is not dumpable, reaps orphans, and on
SIGTERM sends SIGTERM to every process of the VM and exits once they are gone (SIGUSR1: at
once with SIGKILL).  Outside the namespace, ctr's relay process forwards signals to it and
removes the cgroups when it ends; its pid is the VM's pid.  `vm exec` joins the namespaces
and the cgroups through `proc.enter` with the same capability cut and no_new_privs.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import time
from pathlib import Path
from typing import Callable

from ctr import cgroups, proc
from ctr.changes import Change
from ctr.drivers.base import Availability
from ctr.drivers.sandbox import MASKED_DIRS, MASKED_FILES, NAMESPACES, READONLY, SUBID_BASE
from ctr.errors import DriverError
from ctr.launch import Launch, MountOp, base_mounts
from ctr.models import VM, Image
from ctr.store.store import remove_path
from ctr.vm import disk
from ctr.vm.base import Progress, VMDriver, signals_deferred

ROOTFS = "rootfs"
MANIFEST = "manifest"
CONSOLE = "console.log"
RUNTIME = "sandbox.json"
MOUNTPOINTS = ("proc", "dev", "sys")  # made in the copy, so mounting there changes nothing


class SandboxVMDriver(VMDriver):
    name = "sandbox"
    emulated = True
    summary = ("an emulated VM sharing the host kernel: a private full copy of the image, a "
               "long-lived init in new user, PID, IPC, UTS, network and mount namespaces, cgroup caps")

    def availability(self, store=None, config=None, kernel: str | None = None) -> Availability:
        from ctr.drivers.sandbox import SandboxDriver

        av = SandboxDriver().availability()
        if not av.usable:
            return av
        return Availability(True, f"emulated: shares the host kernel ({platform.release()})")

    # ----------------------------------------------------------------- creation
    def build(self, store, built: Path, vm: VM, image: Image, progress: Progress) -> None:
        from ctr.drivers.copy import materialise

        layers = [str(store.layer_dir(d)) for d in image.layers]
        usage = disk.Usage(0, 0, 0)
        for layer in layers:
            u = disk.tree_usage(layer)
            usage = disk.Usage(usage.bytes + u.bytes, usage.apparent + u.apparent, usage.inodes + u.inodes)
        if vm.disk_size < usage.bytes:
            raise disk.DiskTooSmall(disk.too_small(vm.disk_size, usage.bytes, usage.bytes + (1 << 20)))
        rootfs = built / ROOTFS
        rootfs.mkdir(mode=0o755)
        watch = disk.SpaceWatch(built)
        disk.poll_while(lambda: materialise(layers, str(rootfs)),
                        lambda: progress(min(watch.written(), usage.bytes), usage.bytes))
        for name in MOUNTPOINTS:
            if not os.path.lexists(rootfs / name):
                (rootfs / name).mkdir(mode=0o755)
        progress(usage.bytes, usage.bytes)
        (built / MANIFEST).write_bytes(disk.dump_listing(disk.list_tree(rootfs)))
        vm.disk_used = disk.tree_usage(rootfs).bytes

    # ----------------------------------------------------------------- running
    def _plan(self, vm: VM) -> cgroups.Plan:
        return cgroups.plan(cgroups.Limits.for_memory(vm.memory, float(vm.cpus)), vm.id, cgroups.detect())

    def start(self, store, config, vm: VM, timeout: float,
              on_pid: Callable[[int, int | None], None]) -> dict:
        from ctr.drivers.sandbox import SandboxDriver

        userns, why = SandboxDriver().userns_mode(store)
        plan = self._plan(vm)
        note = ""
        runtime = store.vm_path(vm.name, RUNTIME)
        try:
            _write_json(runtime, {"groups": plan.groups})
            cgroups.create(plan)
        except OSError as e:
            note = f"cgroups unusable ({e.strerror or e}); fell back to rlimits"
            plan = cgroups.rlimits_only(cgroups.Limits.for_memory(vm.memory, float(vm.cpus)), "cgroup setup failed")
        _write_json(runtime, {
            "kernel": f"shared with the host ({platform.release()}): an emulated VM",
            "user_namespace": (f"VM ids 0-65535 are host ids {SUBID_BASE}-{SUBID_BASE + 65535}" if userns
                               else f"none: the VM's processes run as host root, capabilities cut ({why})"),
            "namespaces": list((("user",) if userns else ()) + NAMESPACES),
            "capabilities": "docker's default set (no SYS_ADMIN, SYS_PTRACE, NET_ADMIN, SYS_MODULE, ...)",
            "limits": {**plan.to_dict(), **({"note": note} if note else {})},
            "groups": plan.groups, "procs": plan.procs, "rlimits": plan.rlimits, "userns": userns,
        })
        launch = build_launch(store, vm, plan, userns)
        log = os.open(store.vm_path(vm.name, CONSOLE), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with signals_deferred():  # no ^C between the fork and the pid's record
            try:
                started = proc.start(launch, stdout=log, stderr=log, pid1_hook=vm_init, new_session=True)
            except proc.SetupError as e:
                cgroups.remove([g for g in plan.groups if g.rstrip("/").endswith("/ctr/" + vm.id)])
                raise DriverError(e.message.replace("cannot start the container", "cannot start the VM")) from None
            finally:
                os.close(log)
            try:
                on_pid(started.pid, started.start_time)
            except BaseException:  # the record could not be written: nobody else knows of the VM
                _kill(started.pid, started.start_time)
                raise
        return {"guest_kernel": platform.release()}

    def _runtime(self, store, vm: VM) -> dict:
        try:
            return json.loads(store.vm_path(vm.name, RUNTIME).read_text())
        except (OSError, ValueError):
            return {}

    def exec(self, store, vm: VM, argv: list[str], env: dict[str, str], workdir: str) -> int:
        rt = self._runtime(store, vm)
        # user 0:0: the VM's root (proc.enter makes a joining host root the namespace's root;
        # this also drops host root's supplementary groups, as `vm exec` always did)
        launch = Launch(argv=list(argv), env=dict(env), cwd=workdir, stdin="null", user="0:0",
                        no_new_privs=True, drop_caps=True, rlimits=dict(rt.get("rlimits") or {}),
                        cgroup_procs="\n".join(rt.get("procs") or []) or None)
        try:
            started = proc.enter(vm.pid, vm.pid_start, launch)  # type: ignore[arg-type]
        except proc.SetupError as e:
            if not proc.pid_alive(vm.pid, vm.pid_start):
                raise DriverError(f"VM {vm.name} stopped") from None
            raise DriverError(e.message.replace("cannot start the container", "cannot run the command")) from None
        return proc.wait(started)

    def shutdown(self, store, vm: VM, grace: float, force: bool) -> None:
        from ctr import monitor

        sig = signal.SIGUSR1 if force or grace <= 0 else signal.SIGTERM
        if not monitor.send_signal(vm.pid, vm.pid_start, sig):  # type: ignore[arg-type]
            raise DriverError(f"VM {vm.name} is not running")

    def stop_wait(self, grace: float) -> float:
        return grace

    def turn_off(self, store, vm: VM) -> None:
        _kill(vm.pid, vm.pid_start)

    def cleanup(self, store, vm: VM) -> None:
        groups = self._runtime(store, vm).get("groups") or []
        cgroups.remove([g for g in groups if g.rstrip("/").endswith("/ctr/" + vm.id)])

    # ----------------------------------------------------------------- the disk
    def changes(self, store, vm: VM, running: bool) -> list[Change]:
        manifest = disk.load_listing(store.vm_path(vm.name, MANIFEST).read_bytes())
        now = disk.list_tree(store.vm_path(vm.name, ROOTFS))
        return disk.changes(manifest, now, strict=False)

    def disk_usage(self, store, vm: VM) -> int:
        return disk.tree_usage(store.vm_path(vm.name, ROOTFS)).bytes

    def checkpoint(self, store, vm: VM, dest: Path) -> str:
        return disk.copy_tree(store.vm_path(vm.name, ROOTFS), dest / ROOTFS)

    def restore(self, store, vm: VM, src: Path) -> None:
        new = store.vm_path(vm.name, ".rootfs.restore")
        old = store.vm_path(vm.name, ".rootfs.old")
        remove_path(new)
        remove_path(old)
        try:
            disk.copy_tree(src / ROOTFS, new)
        except BaseException:
            remove_path(new)
            raise
        rootfs = store.vm_path(vm.name, ROOTFS)
        os.rename(rootfs, old)
        os.rename(new, rootfs)
        remove_path(old)

    def runtime_info(self, store, vm: VM) -> dict:
        info = {k: v for k, v in self._runtime(store, vm).items()
                if k not in ("groups", "procs", "rlimits", "userns")}
        info.setdefault("kernel", f"shared with the host ({platform.release()}): an emulated VM")
        info["disk"] = str(store.vm_path(vm.name, ROOTFS))
        info["disk_format"] = "a directory tree (the size is checked at creation, not enforced)"
        info["console"] = str(store.vm_path(vm.name, CONSOLE))
        return info


def _kill(pid: int | None, start: int | None) -> None:
    """SIGKILL the VM's relay (its init and every process of the VM go with it)."""
    from ctr import monitor

    if proc.pid_alive(pid, start):
        monitor.send_signal(pid, start, signal.SIGKILL)  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while proc.pid_alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.01)


def build_launch(store, vm: VM, plan: cgroups.Plan, userns: bool) -> Launch:
    """The sandbox VM's init, as a launch plan: pure, testable as data."""
    rootfs = str(store.vm_path(vm.name, ROOTFS))
    if userns:  # the tree seen through an id-mapped view of itself: ids 0.. are host 100000..
        mounts = [MountOp(rootfs, rootfs, None, ("bind", "idmap"), in_root=False, kind="none")]
    else:
        mounts = [MountOp(rootfs, rootfs, None, ("bind",), in_root=False, kind="none")]
    # /tmp stays on the VM's disk, as in a VM booted from it
    mounts += [m for m in base_mounts("hyperv") if m.target != "/tmp"]
    mounts += [MountOp(p, "/dev/null", None, ("bind",), kind="file", optional=True) for p in MASKED_FILES]
    mounts += [MountOp(p, "tmpfs", "tmpfs", ("ro", "nosuid", "nodev", "noexec"), optional=True)
               for p in MASKED_DIRS]
    mounts += [MountOp(p, rootfs + p, None, ("bind", "rec", "ro"),
                       kind="file" if p == "/proc/sysrq-trigger" else "dir", optional=True) for p in READONLY]
    return Launch(
        argv=["ctr-vm-init"],  # never exec'd: `vm_init` is the VM's PID 1
        root=rootfs,
        pivot=True,
        namespaces=(("user",) if userns else ()) + NAMESPACES,
        map_root_to=SUBID_BASE if userns else None,
        mounts=mounts,
        hostname=vm.name[:64],
        stdin="null",
        no_new_privs=True,
        drop_caps=True,
        rlimits=dict(plan.rlimits),
        cgroup_procs="\n".join(plan.procs) or None,
    )


# ----------------------------------------------------------------------------- PID 1
WATCHED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP,
           signal.SIGQUIT, signal.SIGUSR2)


def vm_init() -> None:  # pragma: no cover - runs as PID 1 of the VM's namespaces
    """PID 1 of a sandbox VM (called by `proc.start` inside the new namespaces and root, in
    place of exec'ing a workload).  Never returns."""
    code = 0
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, set(WATCHED))
        for sig in (signal.SIGPIPE, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        proc.set_process_name("ctr-vm-init")
        proc.libc().prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE: the VM cannot read ctr's memory
        proc._limit_caps(("KILL",), now=True)
        proc.libc().prctl(proc.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the status pipe: `vm start` returns
        _say("started")
        stopping = False
        while True:
            _reap()
            if stopping and not _others():
                _say("every process ended; powering off")
                break
            info = signal.sigtimedwait(WATCHED, 0.05 if stopping else 3600)
            if info is None:
                continue
            if info.si_signo == signal.SIGTERM and not stopping:
                _say("shutting down: SIGTERM to every process")
                stopping = True
                _kill_all(signal.SIGTERM)
            elif info.si_signo == signal.SIGUSR1:
                _say("shutting down: SIGKILL to every process")
                _kill_all(signal.SIGKILL)
                break
    except BaseException as e:
        _say(f"error: {e}")
        code = 1
    os._exit(code)


def _say(text: str) -> None:
    try:
        os.write(1, f"ctr-vm: {text}\n".encode())
    except OSError:
        pass


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _others() -> bool:
    """Does any process of the VM besides PID 1 still run? (its own /proc lists only them)"""
    for e in os.scandir("/proc"):
        if not e.name.isdigit() or e.name == "1":
            continue
        try:
            with open(f"/proc/{e.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        if data[data.rfind(b")") + 2:].split()[:1] != [b"Z"]:
            return True
    return False


def _kill_all(sig: int) -> None:
    try:
        os.kill(-1, sig)
    except ProcessLookupError:
        pass


def _write_json(path: Path, data: dict) -> None:
    from ctr.store.records import write_json

    write_json(path, data)


DRIVER = SandboxVMDriver
