"""The only module that runs subprocesses, forks, execs or calls namespace syscalls.

`execute(launch)` forks a child that enters the namespaces and root a `Launch` describes and
execs the workload; the parent waits and returns the workload's exit code in docker's
convention (n, 128+signal, 126 cannot invoke, 127 not found). A failure of ctr's own setup in
the child comes back through a close-on-exec pipe and is raised as `SetupError` (exit 125).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
from pathlib import Path

from ctr.errors import EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND, EXIT_SIGNAL_BASE, CtrError
from ctr.launch import Launch, MountOp
from ctr.models import Record, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Sequence

CLONE = {
    "mnt": 0x00020000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "net": 0x40000000,
    "cgroup": 0x02000000,
}
MS = {
    "ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "remount": 32, "bind": 4096,
    "move": 8192, "rec": 16384, "private": 1 << 18, "slave": 1 << 19,
}
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
SYS_PIVOT_ROOT = 155  # x86_64
SYS_SETNS = 308
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # x86_64
OPEN_TREE_CLONE, AT_RECURSIVE, AT_EMPTY_PATH, AT_FDCWD = 1, 0x8000, 0x1000, -100
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
MOUNT_ATTR = {"ro": 0x1, "nosuid": 0x2, "nodev": 0x4, "noexec": 0x8, "idmap": 0x100000}
SUBIDS = 65536  # ids a mapped user namespace maps: 0..65535 inside

_libc = None


def libc():
    global _libc
    if _libc is None:
        import ctypes

        # by its soname: ctypes.util.find_library runs `ldconfig -p` in a subprocess (a fork and
        # an exec, in every container's setup), and every glibc system has this name
        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:  # another C library: ask the linker
            import ctypes.util

            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _libc


def _check(ret: int, what: str) -> int:
    if ret < 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def unshare(names: Sequence[str]) -> None:
    flags = 0
    for n in names:
        flags |= CLONE[n]
    if flags:
        _check(libc().unshare(flags), "unshare(" + ",".join(names) + ")")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        libc().mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                     flags, data.encode() if data else None),
        f"mount {fstype or 'bind'} on {target}",
    )


def umount(target: str, detach: bool = True) -> None:
    _check(libc().umount2(target.encode(), MNT_DETACH if detach else 0), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(libc().syscall(SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()), "pivot_root")


def mount_flags(names: Sequence[str]) -> int:
    f = 0
    for n in names:
        f |= MS[n]
    return f


def pid_start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[19])


def pid_alive(pid: int | None, start: int | None = None) -> bool:
    if not pid:
        return False
    st = pid_start_time(pid)
    if st is None:
        return False
    # a zombie is as good as gone
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        if data[data.rfind(b")") + 2:].split()[0] == b"Z":
            return False
    except OSError:
        return False
    return start is None or st == start


def exit_code_from_status(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return EXIT_SIGNAL_BASE - code if code < 0 else code


# --------------------------------------------------------------------------- subprocesses
class Completed(Record):
    __slots__ = _fields = ("returncode", "stdout", "stderr")

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
        env: dict[str, str] | None = None, timeout: float | None = None) -> Completed:
    """Run a helper command with a clean environment and stdin from /dev/null."""
    import subprocess  # here: the container path never runs a helper, and it costs a few ms

    if os.environ.get("CTR_DEBUG"):
        print("+ " + " ".join(argv), file=sys.stderr)
    try:
        p = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout,
            env=env if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as e:
        raise CtrError(f"{argv[0]}: command not found", hint=f"install {argv[0]}") from e
    except subprocess.TimeoutExpired as e:
        raise CtrError(f"{argv[0]} did not finish within {timeout:g}s") from e
    if check and p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise CtrError(f"{argv[0]} failed with exit code {p.returncode}: {msg[-1] if msg else ''}")
    return Completed(p.returncode, p.stdout, p.stderr)


# --------------------------------------------------------------------------- the child side
class SetupError(CtrError):
    """ctr could not prepare the container (exit 125)."""

    exit_code = 125


class InvokeError(CtrError):
    """The workload's command could not be started (126) or was not found (127)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


def _open_in_root(root_fd: int, rel: str, kind: str) -> int:
    """Open (creating if missing) `rel` under root_fd, one component at a time, never
    following a symlink. Returns an O_PATH descriptor usable as /proc/self/fd/N."""
    parts = [p for p in rel.split("/") if p and p != "."]
    if any(p == ".." for p in parts):
        raise OSError(errno.EINVAL, f"'..' in {rel}")
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if last and kind == "file":
                    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd))
                else:
                    os.mkdir(name, 0o755, dir_fd=fd)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise OSError(errno.ELOOP, f"{'/' + '/'.join(parts[:i + 1])} is a symlink; ctr will not mount through it")
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            if not last or kind == "dir":
                flags |= os.O_DIRECTORY
            nfd = os.open(name, flags, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _do_mount(op: MountOp, root_fd: int | None) -> None:
    flags = mount_flags([f for f in op.flags if f != "ro" or "bind" not in op.flags])
    target, fd = _target(op, root_fd, create=True)
    try:
        mount(op.source, target, op.fstype, flags, op.data)
    finally:
        if fd is not None:
            os.close(fd)
    limits = [f for f in op.flags if f in ("ro", "nosuid", "nodev", "noexec")]
    if "bind" in op.flags and limits:
        # a bind takes ro/nosuid/nodev/noexec only through a remount of the new mount (reached
        # afresh: a descriptor opened before the mount points below it), keeping flags the
        # kernel locked on the source
        target, fd = _target(op, root_fd, create=False)
        try:
            _remount(target, mount_flags(limits))
        finally:
            if fd is not None:
                os.close(fd)


def _remount(target: str, flags: int) -> None:
    """Add `flags` (ro, nosuid, nodev, noexec) to the mount at `target`, keeping those it has
    (the kernel refuses to clear flags it locked on a mount made in another user namespace)."""
    sv = os.statvfs(target)
    for bit, name in ((os.ST_NOSUID, "nosuid"), (os.ST_NODEV, "nodev"), (os.ST_NOEXEC, "noexec")):
        if sv.f_flag & bit:
            flags |= MS[name]
    mount("none", target, None, MS["bind"] | MS["remount"] | flags)


def _target(op: MountOp, root_fd: int | None, create: bool) -> tuple[str, int | None]:
    if op.in_root and root_fd is not None:
        fd = _open_in_root(root_fd, op.target, op.kind if create else "none")
        return f"/proc/self/fd/{fd}", fd
    if create and op.kind == "dir":
        os.makedirs(op.target, exist_ok=True)
    return op.target, None


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _lookup_user(spec: str) -> tuple[int, int]:
    """uid[:gid] or name[:group], names looked up in the (new) root's /etc/passwd, /etc/group."""
    user, _, group = spec.partition(":")

    def lookup(name: str, path: str, idx_gid: bool) -> tuple[int, int | None]:
        if name.isdigit():
            return int(name), None
        try:
            with open(path) as f:
                for line in f:
                    fields = line.rstrip("\n").split(":")
                    if len(fields) > 3 and fields[0] == name:
                        return int(fields[2]), (int(fields[3]) if idx_gid else None)
        except OSError:
            pass
        raise OSError(errno.ENOENT, f"unable to find user {name}: no matching entries in {path}")

    uid, pgid = lookup(user, "/etc/passwd", True)
    if group:
        gid, _ = lookup(group, "/etc/group", False)
    else:
        gid = pgid if pgid is not None else _passwd_gid(uid)
    return uid, gid


def _passwd_gid(uid: int) -> int:
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.split(":")
                if len(fields) > 3 and fields[2] == str(uid):
                    return int(fields[3])
    except OSError:
        pass
    return uid if uid == 0 else 0


# --------------------------------------------------------------------------- capabilities
CAPS = {name: bit for bit, name in enumerate((
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"))}
# what a workload keeps when `Launch.drop_caps` is set: docker's default set (no SYS_ADMIN, so
# no mount; no SYS_PTRACE, SYS_MODULE, NET_ADMIN, SYS_TIME, ...)
DEFAULT_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
                "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE", "SETFCAP")
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
PR_SET_DUMPABLE = 4


def _limit_caps(keep: Sequence[str], now: bool = False) -> None:
    """Shrink the bounding set to `keep` (all root regains at exec), clear the ambient set and
    empty the inheritable one; with `now`, also this process's own effective/permitted sets."""
    import ctypes

    bits = 0
    for name in keep:
        bits |= 1 << CAPS[name]
    for cap in range(64):
        if not bits & (1 << cap) and libc().prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0:
            if ctypes.get_errno() == errno.EINVAL:  # past the kernel's last capability
                break
            _check(-1, f"dropping capability {cap} from the bounding set")
    libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    def change(sets) -> None:
        for i, s in enumerate(sets):
            s.inheritable = 0
            if now:
                mine = (bits >> (32 * i)) & 0xFFFFFFFF
                s.effective &= mine
                s.permitted &= mine
    _change_caps(change)


def _raise_effective_caps() -> None:
    """Effective = permitted (setfsuid to a non-root id clears the file-related ones)."""
    def change(sets) -> None:
        for s in sets:
            s.effective = s.permitted
    _change_caps(change)


def _change_caps(change: Callable[[list], None]) -> None:
    """capget, `change` the two 32-bit halves of the (effective, permitted, inheritable) sets,
    capset."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    hdr, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    _check(libc().capget(ctypes.byref(hdr), data), "capget")
    change(list(data))
    _check(libc().capset(ctypes.byref(hdr), data), "capset")


# --------------------------------------------------------------------------- mapped user namespace
# As root, a launch with a user namespace and `map_root_to` maps ids 0..65535 inside to
# map_root_to.. outside, and keeps the writable layer exactly as process isolation writes it:
# the image's layers and the container's directory are covered (in a private mount namespace)
# by id-mapped views of themselves, the overlay is mounted from the host side over them by
# root acting as the mapped root (fsuid = map_root_to, all capabilities), so it writes
# trusted.* xattrs and real whiteouts, and a file the workload creates as root lands on disk
# owned by 0. Binds of host paths into the root are cloned before entering the namespace (so
# directories the mapped root may not traverse are no obstacle) and attached after.
def _new_userns(host: int, count: int = SUBIDS) -> int:
    """A new user namespace mapping 0..count-1 to host..host+count-1, as a descriptor."""
    r, w = os.pipe2(os.O_CLOEXEC)
    r2, w2 = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # holds the namespace until its maps are written and it is opened
        try:
            os.close(r)
            os.close(w2)
            unshare(["user"])
            os.write(w, b"1")
            os.read(r2, 1)
        finally:
            os._exit(0)
    os.close(w)
    os.close(r2)
    try:
        if os.read(r, 1) != b"1":
            raise OSError(errno.EPERM, "cannot create a user namespace")
        for name in ("uid_map", "gid_map"):
            _write(f"/proc/{pid}/{name}", f"0 {host} {count}\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(r)
        os.close(w2)
        os.waitpid(pid, 0)


def _clone_tree(path: str, flags: Sequence[str] = (), userns: int | None = None) -> int:
    """A detached copy of the mount at `path` (recursive with "rec"), with the "ro", "nosuid",
    "nodev", "noexec" flags set and, given `userns`, its owners mapped through it."""
    rec = AT_RECURSIVE if "rec" in flags else 0
    fd = _check(libc().syscall(SYS_OPEN_TREE, AT_FDCWD, path.encode(), OPEN_TREE_CLONE | os.O_CLOEXEC | rec),
                f"cloning the mount at {path}")
    attrs = sum(MOUNT_ATTR[n] for n in ("ro", "nosuid", "nodev", "noexec") if n in flags)
    if userns is not None:
        attrs |= MOUNT_ATTR["idmap"]
    if attrs:
        import struct

        arg = struct.pack("QQQQ", attrs, 0, 0, userns or 0)
        try:
            _check(libc().syscall(SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | rec, arg, len(arg)),
                   f"setting {'id-mapped ' if userns is not None else ''}mount attributes on {path}")
        except BaseException:
            os.close(fd)
            raise
    return fd


def _attach(fd: int, to_fd: int = AT_FDCWD, to_path: str = "") -> None:
    _check(libc().syscall(SYS_MOVE_MOUNT, fd, b"", to_fd, to_path.encode(),
                          MOVE_MOUNT_F_EMPTY_PATH | (0 if to_path else MOVE_MOUNT_T_EMPTY_PATH)),
           f"attaching a mount at {to_path or 'fd %d' % to_fd}")


def _enter_mapped_userns(launch: Launch) -> dict[int, int]:
    """Host side of a mapped user namespace (see above); returns the detached clones of the
    in-root binds of host paths, by index in launch.mounts, to attach once inside."""
    host = launch.map_root_to
    assert host is not None
    # what the rest of the setup imports, while Python's own files are reachable (the mapped
    # root may not read them: a Python installed under /root, say); start() imported the rest
    import struct  # noqa: F401
    unshare(["mnt"])
    mount("none", "/", None, MS["rec"] | MS["private"])
    userns = _new_userns(host)
    inside = (launch.root or "").rstrip("/") + "/"
    detached: dict[int, int] = {}
    try:
        for i, op in enumerate(launch.mounts):
            if op.in_root:
                if "bind" in op.flags and not (launch.root and op.source.startswith(inside)):
                    try:
                        detached[i] = _clone_tree(op.source, op.flags, userns if "idmap" in op.flags else None)
                    except OSError:
                        if not op.optional:
                            raise
            elif "idmap" in op.flags:  # cover the target with an id-mapped view of the source
                fd = _clone_tree(op.source, op.flags, userns)
                try:
                    _attach(fd, AT_FDCWD, op.target)
                finally:
                    os.close(fd)
            else:  # the overlay: mounted by root acting as the mapped root
                libc().setfsgid(host)
                libc().setfsuid(host)
                try:
                    _raise_effective_caps()
                    _do_mount(op, None)
                finally:
                    libc().setfsuid(0)
                    libc().setfsgid(0)
        if launch.root is not None:
            os.chdir(launch.root)  # still reachable as real root; kept across the next unshare
        _check(libc().setns(userns, CLONE["user"]), "joining the user namespace")
    except BaseException:
        for fd in detached.values():
            os.close(fd)
        raise
    finally:
        os.close(userns)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    os.setgroups([0])
    # no nested user namespaces: the workload cannot regain SYS_ADMIN over a namespace of its own
    _write("/proc/sys/user/max_user_namespaces", "0\n")
    return detached


def _own_root_mount() -> int:
    """In a mapped user namespace the root inherited from the host side is a locked mount,
    which pivot_root refuses: cover it with a copy of itself (made here, so not locked)."""
    fd = _clone_tree(".", ("rec",))
    try:
        _attach(fd, AT_FDCWD, ".")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _from_root(op: MountOp, root: str | None, root_fd: int) -> MountOp:
    """A bind whose source lies inside the new root is reached through the root descriptor."""
    inside = (root or "").rstrip("/") + "/"
    if root and "bind" in op.flags and op.source.startswith(inside):
        return replace(op, source=f"/proc/self/fd/{root_fd}/{op.source[len(inside):]}")
    return op


# --------------------------------------------------------------------------- pid 1
RELAYED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
SI_KERNEL = 0x80


def _forward_until_exit(pid: int) -> int:
    """Reap children until `pid` exits, passing it the signals somebody sent this process. A
    signal the kernel sent (a terminal's ^C, a hangup) is not passed on: it reached the whole
    foreground process group, the workload included. Returns pid's exit code."""
    watch = {*RELAYED, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watch)
    while True:
        while True:
            try:
                done, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 125
            if done == 0:
                break
            if done == pid:
                return exit_code_from_status(status)
        info = signal.sigwaitinfo(watch)
        if info.si_signo != signal.SIGCHLD and info.si_code != SI_KERNEL:
            _kill(pid, info.si_signo)


def _init() -> None:
    """pid 1 of a new pid namespace: fork the workload (the child returns, to be exec'd), then
    stay as the container's init -- reap orphans, forward signals, exit with the workload's
    status (as a code: the kernel does not let pid 1 kill itself with the workload's signal)."""
    child = os.fork()
    if child == 0:
        return
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the status pipe closes when the workload execs
    # not dumpable: the workload cannot read ctr's environment, memory or executable through
    # /proc/1 (a forked ctr, it would otherwise be as open to it as its own processes)
    libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    try:
        _limit_caps(("KILL",), now=True)
        libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except OSError:
        pass
    os._exit(_forward_until_exit(child) & 0xFF)


def _janitor(groups: list[str]) -> tuple[int, int]:
    """Fork the process that removes the container's cgroups: it stays root in the host's
    namespaces (the relay moves into the container's, and pivot_root takes /sys from it), and
    acts when the relay says pid 1 is gone, or when the relay itself is gone (killed).
    Returns (its pid, the descriptor the relay keeps open)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.closerange(3, r)  # the status pipe above all: start() waits for it to close
            os.closerange(r + 1, os.sysconf("SC_OPEN_MAX"))
            os.setsid()  # a terminal's ^C is for the workload, not for this
            while True:
                try:
                    os.read(r, 1)
                    break
                except InterruptedError:
                    continue
            from ctr.cgroups import remove

            remove(groups)
        finally:
            os._exit(0)
    os.close(r)
    return pid, w


def cgroup_files(launch: Launch) -> list[str]:
    """The cgroup.procs files a launch joins: one per line (cgroup v1 has one per controller)."""
    return [p for p in (launch.cgroup_procs or "").split("\n") if p]


def _child_setup(launch: Launch, pid1_hook: Callable[[], None] | None) -> None:
    """Runs in the forked child: namespaces, mounts, root, identity. Raises on failure.

    With a pid namespace this process stays outside it as the relay (`_relay_pid1`); its child,
    pid 1, sets up the root, joins the cgroups and becomes the container's init (`_init`)."""
    ns = list(launch.namespaces)
    # opened now, while reachable and by root: written from pid 1 (the relay stays outside)
    cgroup_fds = [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in cgroup_files(launch)]
    janitor = _janitor([os.path.dirname(p) for p in cgroup_files(launch)]) if cgroup_fds and "pid" in ns else None
    mapped = "user" in ns and launch.map_root_to is not None and os.geteuid() == 0
    detached: dict[int, int] = {}
    if mapped:
        detached = _enter_mapped_userns(launch)
        ns.remove("user")
    elif "user" in ns:
        uid, gid = os.getuid(), os.getgid()
        unshare(["user"])
        host = launch.map_root_to if launch.map_root_to is not None else uid
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {host} 1\n")
        _write("/proc/self/gid_map", f"0 {gid if launch.map_root_to is None else host} 1\n")
        ns.remove("user")
    unshare([n for n in ns if n != "pid"])
    if "pid" in ns:
        # the next child is pid 1 of the new namespace; this process relays its status
        signal.pthread_sigmask(signal.SIG_BLOCK, {*RELAYED, signal.SIGCHLD})
        unshare(["pid"])
        pid = os.fork()
        if pid:
            keep = janitor[1] if janitor else os.sysconf("SC_OPEN_MAX")
            os.closerange(3, keep)  # the status pipe must close
            os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
            _relay_pid1(pid, janitor)
        if janitor:
            os.close(janitor[1])
        die_with_parent()  # with the relay (killed by `rm -f`, say)
    if launch.hostname and "uts" in launch.namespaces:
        os.sethostname(launch.hostname) if hasattr(os, "sethostname") else _sethostname(launch.hostname)
    if "net" in launch.namespaces:
        _loopback_up()
    if "mnt" in launch.namespaces:
        mount("none", "/", None, MS["rec"] | MS["private"])
    root_fd = None
    # mounts whose target is outside the root come first (the root itself, say)
    for op in [m for m in launch.mounts if not m.in_root and not mapped]:
        _do_mount(op, None)
    if launch.root is not None:
        root_fd = _own_root_mount() if mapped else os.open(launch.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for i, op in enumerate(launch.mounts):
            if not op.in_root:
                continue
            try:
                if i in detached:
                    target = _open_in_root(root_fd, op.target, op.kind)
                    try:
                        _attach(detached.pop(i), target)
                    finally:
                        os.close(target)
                else:
                    _do_mount(_from_root(op, launch.root, root_fd), root_fd)
            except OSError:
                if not op.optional:
                    raise
        _dev_links(root_fd)
        if launch.readonly_root:  # last: the mounts inside it were made, its mount points too
            _remount(f"/proc/self/fd/{root_fd}", MS["ro"])
        os.fchdir(root_fd)
        if launch.pivot:
            pivot_root(".", ".")
            umount(".", detach=True)
        else:
            os.chroot(".")
        os.chdir("/")
        os.close(root_fd)
    for fd in cgroup_fds:
        os.write(fd, b"0\n")
        os.close(fd)
    if pid1_hook:
        pid1_hook()
    if "pid" in ns:
        _init()  # only the workload returns
    for name, value in launch.rlimits.items():
        import resource

        res = getattr(resource, name)
        resource.setrlimit(res, (value, value))
    if launch.drop_caps:  # before setuid, which empties the effective set dropping needs
        _limit_caps(DEFAULT_CAPS)
    if launch.user:
        uid, gid = _lookup_user(launch.user)
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    if launch.no_new_privs:
        _check(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    try:
        os.chdir(launch.cwd or "/")
    except FileNotFoundError:
        os.makedirs(launch.cwd, exist_ok=True)
        os.chdir(launch.cwd)


def _dev_links(root_fd: int) -> None:
    """Standard /dev symlinks, made only when /dev is our own tmpfs (never through a link)."""
    try:
        dev = os.open("dev", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
    except OSError:
        return
    try:
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                             ("ptmx", "pts/ptmx")):
            try:
                os.symlink(target, f"/proc/self/fd/{dev}/{name}")
            except OSError:
                pass
    finally:
        os.close(dev)


def _sethostname(name: str) -> None:
    b = name.encode()
    _check(libc().sethostname(b, len(b)), "sethostname")


def _loopback_up() -> None:
    """`ip link set lo up`: SIOCSIFFLAGS on a datagram socket, through libc (the socket module
    costs ~4 ms to import, a tenth of a sandbox start)."""
    import ctypes

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP, AF_INET, SOCK_DGRAM, SOCK_CLOEXEC = 0x8913, 0x8914, 0x1, 2, 2, 0o2000000
    s = _check(libc().socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "opening a socket for the loopback")
    try:
        ifr = ctypes.create_string_buffer(b"lo", 40)  # struct ifreq: name[16], then flags (a short)
        _check(libc().ioctl(s, SIOCGIFFLAGS, ifr), "reading the loopback's flags")
        flags = int.from_bytes(ifr.raw[16:18], sys.byteorder) | IFF_UP
        ctypes.memmove(ctypes.addressof(ifr) + 16, flags.to_bytes(2, sys.byteorder), 2)
        _check(libc().ioctl(s, SIOCSIFFLAGS, ifr), "bringing the loopback up")
    finally:
        os.close(s)


def _relay_pid1(pid: int, janitor: tuple[int, int] | None = None) -> None:
    """The process outside a new pid namespace: forward signals sent to it to its pid 1, then
    (pid 1 gone, and with it every process of the namespace) let the janitor remove the
    container's cgroups, and exit with pid 1's status."""
    code = _forward_until_exit(pid)
    if janitor:
        try:
            os.write(janitor[1], b"x")
        except OSError:  # it is gone already
            pass
        while True:
            try:
                os.waitpid(janitor[0], 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    os._exit(code & 0xFF)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _exec(launch: Launch) -> None:
    for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGXFSZ,
                signal.SIGHUP, signal.SIGCHLD, signal.SIGTSTP, signal.SIGTTOU, signal.SIGTTIN):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    argv = launch.argv
    if "/" in argv[0]:
        os.execve(argv[0], argv, launch.env)
    os.execvpe(argv[0], argv, launch.env)


# --------------------------------------------------------------------------- the parent side
class Started(Record):
    __slots__ = _fields = ("pid", "start_time", "master_fd")

    def __init__(self, pid: int, start_time: int | None, master_fd: int | None = None):
        self.pid, self.start_time = pid, start_time
        self.master_fd = master_fd  # pty master when launch.tty


def start(launch: Launch, *, stdout: int | None = None, stderr: int | None = None,
          pid1_hook: Callable[[], None] | None = None, new_session: bool = False) -> Started:
    """Fork and exec the workload; returns once the exec succeeded (or raises)."""
    # modules the child needs after it pivots into the image, where Python's own
    # library is not reachable: import them now (only those this launch needs: each costs)
    if launch.tty:
        import array, fcntl, socket, struct, termios  # noqa: E401,F401
    if launch.rlimits:
        import resource  # noqa: F401

    r, w = os.pipe2(os.O_CLOEXEC)
    master = None
    tty_parent = tty_child = None
    if launch.tty:
        # the terminal is allocated inside the container's own devpts (so `tty` and
        # ttyname() work there) and its master is passed back over a socket
        import socket

        tty_parent, tty_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # ---- child
        code = 125
        try:
            os.close(r)
            if tty_child is not None:
                tty_parent.close()
            else:
                if new_session:
                    os.setsid()
                if launch.stdin == "null":
                    nul = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(nul, 0)
                    os.close(nul)
                if stdout is not None:
                    os.dup2(stdout, 1)
                if stderr is not None:
                    os.dup2(stderr, 2)
            _close_inherited(w, tty_child.fileno() if tty_child is not None else None)
            stage = "setup"
            _child_setup(launch, pid1_hook)
            if tty_child is not None:
                _pty_inside(tty_child)
            stage = "exec"
            _exec(launch)
        except BaseException as e:  # report to the parent, never return into its code
            try:
                if stage == "exec" and isinstance(e, OSError):
                    code = EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_CANNOT_INVOKE
                    msg = f"{code}\0{launch.argv[0]}: " + (
                        "executable file not found in $PATH" if code == EXIT_NOT_FOUND and "/" not in launch.argv[0]
                        else "no such file or directory" if code == EXIT_NOT_FOUND
                        else os.strerror(e.errno) if e.errno else str(e))
                else:
                    msg = f"125\0{e}"
                os.write(w, msg.encode(errors="replace")[:4000])
            finally:
                os._exit(code)
        os._exit(125)  # not reached
    # ---- parent
    os.close(w)
    if tty_child is not None:
        tty_child.close()
    start_time = pid_start_time(pid)
    chunks = []
    while True:
        try:
            b = os.read(r, 4096)
        except InterruptedError:
            continue
        if not b:
            break
        chunks.append(b)
    os.close(r)
    if tty_parent is not None:
        master = _receive_fd(tty_parent)
        tty_parent.close()
        if master is not None:
            _copy_winsize(master)
    if chunks:
        os.waitpid(pid, 0)
        if master is not None:
            os.close(master)
        code_s, _, msg = b"".join(chunks).decode(errors="replace").partition("\0")
        code = int(code_s) if code_s.isdigit() else 125
        if code in (EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND):
            raise InvokeError(msg, code)
        raise SetupError(f"cannot start the container: {msg}")
    return Started(pid, start_time, master)


def _close_inherited(*keep: int | None) -> None:
    """Close every descriptor but stdio and `keep`: nothing ctr or its caller holds may reach
    the workload, or its setup (a directory descriptor is a way out of the root: `cd
    /proc/self/fd/N`, `-w /proc/self/fd/N`). close-on-exec is not enough: the working
    directory is entered before the exec."""
    low = 3
    for fd in sorted(k for k in keep if k is not None and k >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _pty_inside(sock) -> None:
    """In the child, in its final root: open a terminal in the root's /dev/pts, make it the
    controlling terminal and stdio, and send the master to the parent."""
    import fcntl
    import socket
    import struct
    import termios

    TIOCSPTLCK, TIOCGPTPEER = 0x40045431, 0x5441
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    sock.sendmsg([b"t"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", master))])
    os.close(master)
    sock.close()


def _receive_fd(sock) -> int | None:
    import array
    import socket

    fds = array.array("i")
    try:
        msg, anc, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
    except OSError:
        return None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if not fds:
        return None
    os.set_inheritable(fds[0], False)
    return fds[0]


def wait(started: Started, forward: bool = True) -> int:
    """Wait for the workload, relaying a pty if any and forwarding SIGTERM/SIGHUP."""
    pid = started.pid
    old = {}
    if forward:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            old[sig] = signal.signal(sig, lambda s, f: _kill(pid, s))
        for sig in (signal.SIGINT, signal.SIGQUIT):  # the terminal sends these to the child too
            old[sig] = signal.signal(sig, signal.SIG_IGN if started.master_fd is None else (lambda s, f: _kill(pid, s)))
    try:
        if started.master_fd is not None:
            _relay_pty(started.master_fd, pid)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                return exit_code_from_status(status)
            except InterruptedError:
                continue
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _copy_winsize(master: int) -> None:
    import fcntl
    import termios

    for fd in (0, 1, 2):
        try:
            ws = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, ws)
            return
        except OSError:
            continue


def _relay_pty(master: int, pid: int) -> None:
    import select
    import termios
    import tty

    stdin_tty = os.isatty(0)
    saved = termios.tcgetattr(0) if stdin_tty else None
    if stdin_tty:
        tty.setraw(0)
        signal.signal(signal.SIGWINCH, lambda s, f: _copy_winsize(master))
    fds = [master, 0]
    try:
        while True:
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                os.write(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    fds.remove(0)
                    os.write(master, b"\x04")
                else:
                    os.write(master, data)
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)


def execute(launch: Launch) -> int:
    """Start the workload in the foreground and return its exit code."""
    return wait(start(launch))


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this mount namespace, deepest first."""
    prefix = str(path).rstrip("/")
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].replace("\\040", " ")
                if mp == prefix or mp.startswith(prefix + "/"):
                    found.append(mp)
    except OSError:
        return []
    return sorted(found, key=len, reverse=True)


# --------------------------------------------------------------------------- entering a running container
# `ctr exec`: join the namespaces and the root of a running container's process. Everything
# is opened from /proc/<pid> (the namespaces *and* the root) before the first setns, the pid's
# kernel start time is checked after opening (so a reused pid is never entered), then
# setns(user, cgroup, ipc, uts, net, pid, mnt), fchdir to the root, chroot(".").
ENTER_ORDER = ("user", "cgroup", "ipc", "uts", "net", "pid", "mnt")
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def setns(fd: int, nstype: int = 0) -> None:
    _check(libc().setns(fd, nstype), "setns")


def namespaces_of(pid: int) -> dict[str, tuple[int, int]]:
    """(device, inode) of each namespace of `pid` (its children's pid namespace for "pid")."""
    out = {}
    for name in ENTER_ORDER:
        path = f"/proc/{pid}/ns/" + ("pid_for_children" if name == "pid" else name)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        out[name] = (st.st_dev, st.st_ino)
    return out


def join_root(pid: int, pid_start: int | None, names: Sequence[str] = ENTER_ORDER, under: str = "",
              between: Callable[[list[str]], None] | None = None) -> None:
    """In a forked child: join those of `pid`'s namespaces (`names`, in ENTER_ORDER) that differ
    from this process's -- the user namespace first, becoming its root when this is host root
    (host root is not mapped in a mapped container's namespace) -- and chroot into its root
    (or into `under`, a directory below it). `between(joined)` runs after the joins, before the
    chroot (the pid namespace's fork). Not dumpable from the start: the container's processes (the
    same ids, once in its user namespace) cannot ptrace this python or open its /proc files."""
    libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    was_root = os.geteuid() == 0
    mine = namespaces_of(os.getpid())
    fds: list[tuple[str, int]] = []
    root_fd = os.open(f"/proc/{pid}/root{under}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name, ident in namespaces_of(pid).items():
            if name in names and mine.get(name) != ident:
                path = f"/proc/{pid}/ns/" + ("pid_for_children" if name == "pid" else name)
                fds.append((name, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
        if pid_start is not None and pid_start_time(pid) != pid_start:
            raise OSError(errno.ESRCH, f"process {pid} is gone")
        for name, fd in fds:
            setns(fd)
            if name == "user" and was_root:
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
                os.setgroups([0])
        if between is not None:
            between([name for name, _ in fds])
        os.fchdir(root_fd)
        os.chroot(".")
        os.chdir("/")
    finally:
        for _, fd in fds:
            os.close(fd)
        os.close(root_fd)


def _enter_hook(pid: int, pid_start: int | None) -> Callable[[], None]:
    def fork_into_pid_ns(joined: list[str]) -> None:
        if "pid" in joined:
            # setns(pid) applies to children: fork once more; this process relays
            child = os.fork()
            if child:
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the status pipe must close
                _relay_pid1(child)

    return lambda: join_root(pid, pid_start, between=fork_into_pid_ns)


def enter(pid: int, pid_start: int | None, launch: Launch, detach: bool = False) -> Started:
    """Start `launch.argv` inside the running container whose process is `pid`.

    `launch` must have no namespaces, mounts or root of its own: those of `pid` are joined.
    Returns once the command was exec'd; raises SetupError (125) or InvokeError (126/127).
    `detach` (exec -d): a session of its own, output to /dev/null; nobody need wait for it
    (once ctr exits, init reaps it)."""
    if launch.namespaces or launch.mounts or launch.root is not None:
        raise ValueError("enter() joins an existing container; the launch must not make one")
    if not detach:
        return start(launch, pid1_hook=_enter_hook(pid, pid_start))
    nul = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    try:
        return start(launch, stdout=nul, stderr=nul, new_session=True, pid1_hook=_enter_hook(pid, pid_start))
    finally:
        os.close(nul)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """In a child: receive `sig` when the parent exits (cleared by a later setuid)."""
    _check(libc().prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0), "PR_SET_PDEATHSIG")


def set_process_name(name: str) -> None:
    """The short name `ps -o comm`, `top` and `pgrep` show (15 bytes)."""
    import ctypes

    libc().prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
