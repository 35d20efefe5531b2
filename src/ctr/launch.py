"""A launch plan: everything needed to start a workload, as plain data.

Drivers build a `Launch` with pure functions (so tests can check it without privileges);
`ctr.proc.execute()` carries it out. Mount targets with `in_root=True` are paths inside the
new root and are reached component by component without following symlinks, so an image
whose /dev or /tmp is a symlink cannot make ctr mount outside the root.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class MountOp:
    target: str
    source: str = "none"
    fstype: str | None = None
    flags: tuple[str, ...] = ()  # bind rec ro nosuid nodev noexec private remount
    data: str = ""
    in_root: bool = True  # target is a path inside the new root
    kind: str = "dir"  # what to create at the target if missing: dir | file | none
    optional: bool = False  # failure to mount is not fatal (noted instead)


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    user: str = ""  # "uid[:gid]" or a name looked up in the new root's /etc/passwd
    root: str | None = None  # directory that becomes "/"; None: stay in the host root
    pivot: bool = True  # pivot_root (needs a mount namespace), else chroot
    namespaces: tuple[str, ...] = ()  # mnt user pid net ipc uts
    map_root_to: int | None = None  # user ns: map uid/gid 0 inside to this host id
    mounts: list[MountOp] = field(default_factory=list)
    hostname: str = ""
    stdin: str = "null"  # null | inherit
    tty: bool = False
    no_new_privs: bool = False
    drop_caps: bool = False
    rlimits: dict[str, int] = field(default_factory=dict)  # RLIMIT_AS, RLIMIT_NPROC, ...
    cgroup_procs: str | None = None  # join this cgroup.procs file before exec


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
