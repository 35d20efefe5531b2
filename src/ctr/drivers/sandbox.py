"""hyperv isolation, `sandbox` driver: an emulated utility VM.

The container is the same as with process isolation -- the image's layers under an overlay
whose writable layer is `upper/`, so `diff`, `commit` and `rm` work unchanged -- but its
workload runs behind the boundary a utility VM would give it, built from the host kernel's
own parts instead of a second kernel:

- a user namespace: root inside is host uid 100000 (ids 0..65535 inside are 100000..165535
  outside), so what escapes the container is an unprivileged user on the host. The image's
  layers and the container's directory are seen through id-mapped mounts, and the overlay is
  mounted from the host side, so the writable layer records exactly what process isolation
  records (owners, trusted.overlay xattrs, whiteouts): the same diff. Where the kernel or the
  store's filesystem cannot id-map (before Linux 5.19; NFS, say), the container runs as host
  root without a user namespace instead (and `inspect` says so);
- new PID, IPC, UTS (own hostname), network (loopback only, up) and mount namespaces;
  pivot_root into the merged view; a fresh /proc (with docker's masked and read-only paths),
  a minimal /dev, a tmpfs /tmp; no /sys;
- ctr's init as PID 1 (reaps orphans, forwards signals, exits with the workload's status);
- memory, CPU and task caps like a utility VM's size (default 1 GiB, 2 CPUs; tasks
  memory / 256 KiB), through cgroup v2, else v1, else rlimits;
- the capability bounding set cut to docker's default set (no SYS_ADMIN: no mount, no
  ptrace of what it cannot already see), no_new_privs, and no nested user namespaces.

`exec` (`exec_in`) joins all of it: the namespaces (the user namespace first, as its root),
the cgroups, and the workload's capability set, no_new_privs and rlimits.

It shares the host's kernel, and says so: `ps` (DRIVER column), `inspect` and `info`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ctr import cgroups
from ctr.drivers.base import Availability, filesystem_supported, volume_mounts
from ctr.drivers.overlay import OverlayDriver, lower_dirs, overlay_options
from ctr.launch import Launch, MountOp, base_mounts
from ctr.models import Container, Image

DEFAULT_MEMORY = 1 << 30  # a Hyper-V container's utility VM: 1 GiB, 2 virtual processors
DEFAULT_CPUS = 2.0
SUBID_BASE = 100_000  # host ids of the container's 0..65535 (podman's and docker's default range)
RUNTIME = "sandbox.json"  # per-container record of how it was started (for inspect and rm)
PROBE = "sandbox-userns.json"  # cached answer: can this kernel and store run the mapped mode?

# docker's masked paths (covered by /dev/null or an empty read-only tmpfs) and read-only ones
MASKED_FILES = ("/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug")
MASKED_DIRS = ("/proc/acpi", "/proc/asound", "/proc/scsi")
READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
NAMESPACES = ("mnt", "pid", "net", "ipc", "uts")


def _kernel_note() -> str:
    return f"shared with the host ({os.uname().release}): an emulated utility VM"


def limits_for(container: Container) -> cgroups.Limits:
    cfg = container.config
    return cgroups.Limits.for_memory(cfg.memory or DEFAULT_MEMORY, cfg.cpus or DEFAULT_CPUS)


def build_launch(store, container: Container, image: Image, limits: cgroups.Plan, userns: bool) -> Launch:
    """The launch plan of a sandbox container: pure, testable as data.

    `limits` says how its caps are enforced (cgroup groups to join, or rlimits); `userns`
    chooses the mapped user namespace (else: host root, capabilities cut)."""
    cid = container.id
    ctr_dir = str(store.container_dir(cid))
    merged = str(store.container_path(cid, "merged"))
    lowers = lower_dirs(store, image)
    mounts: list[MountOp] = []
    if userns:
        # id-mapped views cover the container's directory (upper, work, init), then the layers
        # (the host's root, for `host`: on an empty directory of the container's)
        mounts.append(MountOp(ctr_dir, ctr_dir, None, ("bind", "idmap"), in_root=False, kind="none"))
        if image.builtin:
            hostroot = str(store.container_path(cid, "hostroot"))
            mounts.append(MountOp(hostroot, "/", None, ("bind", "idmap"), in_root=False, kind="none"))
            lowers = [hostroot]
        else:
            mounts.append(MountOp(str(store.layers_dir), str(store.layers_dir), None, ("bind", "idmap"),
                                  in_root=False, kind="none"))
    if not image.builtin:
        lowers.insert(0, str(store.container_path(cid, "init")))
    opts = overlay_options(str(store.container_path(cid, "upper")), str(store.container_path(cid, "work")),
                           lowers, rootless=False)
    # nodev: root mode keeps CAP_MKNOD (images expect it), so without it the workload could
    # make a node for the host's disk and open it; devices come only from ctr's binds
    mounts.append(MountOp(merged, "overlay", "overlay", ("nodev",), opts, in_root=False, kind="none"))
    mounts += base_mounts("hyperv")
    mounts += [MountOp(p, "/dev/null", None, ("bind",), kind="file", optional=True) for p in MASKED_FILES]
    mounts += [MountOp(p, "tmpfs", "tmpfs", ("ro", "nosuid", "nodev", "noexec"), optional=True)
               for p in MASKED_DIRS]
    mounts += [MountOp(p, merged + p, None, ("bind", "rec", "ro"),
                       kind="file" if p == "/proc/sysrq-trigger" else "dir", optional=True) for p in READONLY]
    for m in volume_mounts(container):  # nodev: root mode keeps CAP_MKNOD (as for the root)
        mounts.append(MountOp(m.target, m.source, m.fstype, m.flags + ("nodev",) + (("idmap",) if userns else ()),
                              kind=m.kind))
    cfg = container.config
    return Launch(
        argv=list(cfg.command),
        env=dict(e.split("=", 1) if "=" in e else (e, "") for e in cfg.env),
        cwd=cfg.workdir or "/",
        user=cfg.user,
        root=merged,
        pivot=True,
        namespaces=(("user",) if userns else ()) + NAMESPACES,
        map_root_to=SUBID_BASE if userns else None,
        mounts=mounts,
        hostname=cfg.hostname or cid[:12],
        stdin="inherit" if cfg.interactive else "null",
        tty=cfg.tty,
        no_new_privs=True,
        drop_caps=True,
        rlimits=dict(limits.rlimits),
        cgroup_procs="\n".join(limits.procs) or None,
        readonly_root=cfg.read_only,
    )


class SandboxDriver(OverlayDriver):
    name = "sandbox"
    isolation = "hyperv"
    emulated = True
    summary = ("an emulated utility VM that shares the host kernel: own user, PID, IPC, UTS, "
               "network (loopback only) and mount namespaces, private /proc /dev /tmp, cgroup caps")
    default_memory = DEFAULT_MEMORY
    default_cpus = DEFAULT_CPUS

    def availability(self) -> Availability:
        if os.geteuid() != 0:
            return Availability(False, "needs root (it maps a range of host ids and creates cgroups)",
                                "run ctr as root, or use --isolation process")
        if not filesystem_supported("overlay"):
            return Availability(False, "the kernel has no overlay filesystem", "load it with `modprobe overlay`")
        missing = [n for n in ("user", "pid", "net", "ipc", "uts", "mnt") if not os.path.exists(f"/proc/self/ns/{n}")]
        if missing:
            return Availability(False, "the kernel lacks namespaces: " + ", ".join(missing),
                                "use a kernel built with namespaces (CONFIG_USER_NS, CONFIG_PID_NS, ...)")
        cg = cgroups.plan(cgroups.Limits(1, 1, 1), "0" * 64, cgroups.detect())
        return Availability(True, f"emulated: shares the host kernel ({os.uname().release}); limits by {cg.mechanism}")

    def prepare(self, store, ctr_dir: Path, container: Container, image: Image) -> None:
        super().prepare(store, ctr_dir, container, image)
        if image.builtin:
            (ctr_dir / "hostroot").mkdir(mode=0o755)

    def host_processes(self, store, container: Container) -> list[int]:
        """The container's processes without ctr's relay (its recorded pid, outside the
        container's pid namespace)."""
        return [p for p in super().host_processes(store, container) if p != container.pid]

    def launch(self, store, container: Container, image: Image) -> Launch:
        """Create the container's cgroup (removed by the janitor when the container ends, and
        by `rm` after a crash), record how it is confined, and return the plan."""
        userns, why = self.userns_mode(store)
        limits = limits_for(container)
        plan = cgroups.plan(limits, container.id, cgroups.detect())
        record = store.container_path(container.id, RUNTIME)
        note = {}
        try:
            _write_json(record, {"limits": plan.to_dict()})  # first: what `rm` must remove
            cgroups.create(plan)
        except OSError as e:
            note = {"note": f"cgroups unusable ({e.strerror or e}); fell back to rlimits"}
            plan = cgroups.rlimits_only(limits, "cgroup setup failed")
        _write_json(record, {
            "kernel": _kernel_note(),
            "user_namespace": (f"container ids 0-65535 are host ids {SUBID_BASE}-{SUBID_BASE + 65535}"
                               if userns else f"none: the workload runs as host root, capabilities cut ({why})"),
            "namespaces": list((("user",) if userns else ()) + NAMESPACES),
            "capabilities": "docker's default set (no SYS_ADMIN, SYS_PTRACE, NET_ADMIN, SYS_MODULE, ...)",
            "limits": {"memory": limits.memory, "cpus": limits.cpus, "pids": limits.pids,
                       **plan.to_dict(), **note},
        })
        return build_launch(store, container, image, plan, userns)

    def cleanup(self, store, container: Container) -> None:
        """Whatever is left in the container's cgroups is killed and the groups removed."""
        groups = self.runtime_info(store, container)["limits"].get("groups", [])
        cgroups.remove([g for g in groups if g.rstrip("/").endswith("/ctr/" + container.id)])
        super().cleanup(store, container)

    def exec_in(self, store, container: Container, launch: Launch, detach: bool = False) -> int:
        """`ctr exec`: `launch` (the engine's plan: argv, env, cwd, user, stdin, tty) joins the
        running container's namespaces -- its user namespace first, as its root -- and its
        cgroups, under the same confinement as its workload: docker's capability set,
        no_new_privs, the rlimits that stand in for missing cgroups. Returns the exit code (with
        `detach`, 0 once the command started)."""
        from ctr import proc
        from ctr.models import replace

        limits = self.runtime_info(store, container)["limits"]
        groups = [g for g in limits.get("groups", []) if g.rstrip("/").endswith("/ctr/" + container.id)]
        joins = cgroups.join_files(limits.get("mechanism", ""), groups)
        launch = replace(launch, drop_caps=True, no_new_privs=True, rlimits=dict(limits.get("rlimits") or {}),
                         cgroup_procs="\n".join(joins) or None)
        started = proc.enter(container.pid, container.pid_start, launch, detach)  # type: ignore[arg-type]
        return 0 if detach else proc.wait(started)

    def runtime_info(self, store, container: Container) -> dict:
        """How this container is confined (for `inspect`)."""
        try:
            return json.loads(store.container_path(container.id, RUNTIME).read_text())
        except (OSError, ValueError):  # never started
            limits = limits_for(container)
            return {"kernel": _kernel_note(), "limits": {"memory": limits.memory, "cpus": limits.cpus,
                                                   "pids": limits.pids}}

    # ---------------------------------------------------------------- the mapped mode
    def userns_mode(self, store) -> tuple[bool, str]:
        """Run in a mapped user namespace? `CTR_SANDBOX_USERNS=0|1` decides; otherwise a
        probe, cached per kernel and store filesystem, tells whether this host can."""
        forced = os.environ.get("CTR_SANDBOX_USERNS")
        if forced in ("0", "1"):
            return forced == "1", "CTR_SANDBOX_USERNS=" + forced
        key = {"kernel": os.uname().release, "dev": os.stat(store.root).st_dev}
        path = store.cache_dir / PROBE
        try:
            cached = json.loads(path.read_text())
            if {k: cached.get(k) for k in key} == key:
                return bool(cached["ok"]), cached.get("reason", "")
        except (OSError, ValueError, KeyError):
            pass
        ok, reason = probe_userns(store)
        try:
            path.parent.mkdir(exist_ok=True)
            _write_json(path, {**key, "ok": ok, "reason": reason})
        except OSError:
            pass
        return ok, reason


def probe_userns(store) -> tuple[bool, str]:
    """Start a do-nothing container in the mapped mode: it gets through setup (user namespace,
    id-mapped layers, overlay, pivot_root) and fails only at exec, with 127."""
    from ctr import proc

    tmp = store.new_tmp("probe")
    try:
        for d in ("layer", "upper", "work", "merged", "init"):
            (tmp / d).mkdir()
        opts = overlay_options(str(tmp / "upper"), str(tmp / "work"), [str(tmp / "init"), str(tmp / "layer")], False)
        launch = Launch(
            argv=["/ctr-probe-nonexistent"], root=str(tmp / "merged"), namespaces=("user", "mnt", "pid"),
            map_root_to=SUBID_BASE,
            mounts=[MountOp(str(tmp), str(tmp), None, ("bind", "idmap"), in_root=False, kind="none"),
                    MountOp(str(tmp / "merged"), "overlay", "overlay", (), opts, in_root=False, kind="none")],
        )
        try:
            proc.wait(proc.start(launch), forward=False)
        except proc.InvokeError as e:
            if e.exit_code == 127:
                return True, "the kernel and the store's filesystem support id-mapped layers"
            return False, str(e)
        except proc.SetupError as e:
            return False, e.message.replace("cannot start the container: ", "")
        return False, "the probe did not fail as expected"
    finally:
        from ctr.store.store import remove_path

        remove_path(tmp)


def _write_json(path: Path, data: dict) -> None:
    """The runtime record, written whole and renamed but not fsynced: it names cgroups, which
    do not outlive the machine, and a record lost to a power cut reads as never started
    (runtime_info); docs/performance.md, "Records and fsync"."""
    from ctr.store.records import write_json

    write_json(path, data, durable=False)
