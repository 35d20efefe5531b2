"""A launch plan: everything needed to start a workload, as plain data.

Drivers build a `Launch` with pure functions (so tests can check it without privileges);
`ctr.proc.execute()` carries it out. Mount targets with `in_root=True` are paths inside the
new root and are reached component by component without following symlinks, so an image
whose /dev or /tmp is a symlink cannot make ctr mount outside the root.
"""

from __future__ import annotations

from ctr.models import Record

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class MountOp(Record):
    __slots__ = _fields = ("target", "source", "fstype", "flags", "data", "in_root", "kind", "optional")

    def __init__(self, target: str, source: str = "none", fstype: str | None = None, flags: tuple[str, ...] = (),
                 data: str = "", in_root: bool = True, kind: str = "dir", optional: bool = False):
        self.target = target
        self.source = source
        self.fstype = fstype
        self.flags = flags  # bind rec ro nosuid nodev noexec private remount
        self.data = data
        self.in_root = in_root  # target is a path inside the new root
        self.kind = kind  # what to create at the target if missing: dir | file | none
        self.optional = optional  # failure to mount is not fatal (noted instead)


class Launch(Record):
    __slots__ = _fields = ("argv", "env", "cwd", "user", "root", "pivot", "namespaces", "map_root_to", "mounts",
                           "hostname", "stdin", "tty", "no_new_privs", "drop_caps", "rlimits", "cgroup_procs",
                           "readonly_root")

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str = "/", user: str = "",
                 root: str | None = None, pivot: bool = True, namespaces: tuple[str, ...] = (),
                 map_root_to: int | None = None, mounts: list[MountOp] | None = None, hostname: str = "",
                 stdin: str = "null", tty: bool = False, no_new_privs: bool = False, drop_caps: bool = False,
                 rlimits: dict[str, int] | None = None, cgroup_procs: str | None = None,
                 readonly_root: bool = False):
        self.argv = argv
        self.env = {} if env is None else env
        self.cwd = cwd
        self.user = user  # "uid[:gid]" or a name looked up in the new root's /etc/passwd
        self.root = root  # directory that becomes "/"; None: stay in the host root
        self.pivot = pivot  # pivot_root (needs a mount namespace), else chroot
        self.namespaces = namespaces  # mnt user pid net ipc uts
        self.map_root_to = map_root_to  # user ns: map uid/gid 0 inside to this host id
        self.mounts = [] if mounts is None else mounts
        self.hostname = hostname
        self.stdin = stdin  # null | inherit
        self.tty = tty
        self.no_new_privs = no_new_privs
        self.drop_caps = drop_caps
        self.rlimits = {} if rlimits is None else rlimits  # RLIMIT_AS, RLIMIT_NPROC, ...
        self.cgroup_procs = cgroup_procs  # join this cgroup.procs file before exec
        self.readonly_root = readonly_root  # the root mount read-only (`run --read-only`)


def base_mounts(kind: str = "process") -> list[MountOp]:
    """The runtime filesystems every container gets: fresh /proc, minimal /dev, private /tmp."""
    m = [
        MountOp("/proc", "proc", "proc", ("nosuid", "nodev", "noexec")),
        # hyperv: no device node made on /dev works (the binds below are mounts of their own)
        MountOp("/dev", "tmpfs", "tmpfs", ("nosuid", "noexec") + (("nodev",) if kind == "hyperv" else ()),
                "mode=755,size=65536k"),
    ]
    for dev in ("null", "zero", "full", "random", "urandom", "tty"):
        m.append(MountOp(f"/dev/{dev}", f"/dev/{dev}", None, ("bind",), kind="file"))
    m += [
        MountOp("/dev/pts", "devpts", "devpts", ("nosuid", "noexec"),
                "newinstance,ptmxmode=0666,mode=620", optional=True),
        MountOp("/dev/shm", "shm", "tmpfs", ("nosuid", "nodev", "noexec"), "mode=1777,size=65536k"),
        MountOp("/tmp", "tmpfs", "tmpfs", ("nosuid", "nodev"), "mode=1777"),
    ]
    return m


def container_env(image_env: list[str], user_env: list[str], hostname: str, tty: bool) -> dict[str, str]:
    """Environment as docker builds it: defaults, then the image's, then the user's."""
    env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname, "HOME": "/root"}
    if tty:
        env["TERM"] = "xterm"
    for item in [*image_env, *user_env]:
        key, sep, value = item.partition("=")
        if key:
            env[key] = value
    return env
