"""ctr's guest agent for `ctr vm` on the qemu driver: the guest side (PID 1 script) and the
host side (a client of its virtio-serial ports).

The guest side is `/ctr/vm-init`, a busybox shell script appended to the qemu machinery's
cached initramfs (`ctr.qemu.base_initramfs`) in a small archive of its own, and chosen with
`rdinit=`.  It mounts /proc, /sys, /dev, loads the modules, mounts the VM's disk
(virtio-blk, ext4) at /mnt/root with /proc, /sys and a small /dev inside it, and then
serves the host for as long as the VM runs:

- port `ctr_control`: PID 1 itself.  Each time the host connects it writes
  `ready RELEASE`, then answers one request per line: `hello` -> `ready RELEASE` (see
  below); `ping` -> `pong`; `sync` -> `ok`; `freeze` -> `ok` (fsfreeze of the root: the
  journal is checkpointed and writes wait, so the host can read a consistent disk); `thaw` -> `ok`;
  `shutdown GRACE [force]` -> `stopping`, then every process gets SIGTERM (SIGKILL at once
  with `force`), the rest SIGKILL after GRACE seconds, the disk is synced and unmounted and
  the VM powers off (the host sees qemu exit).  A frozen root is thawed when the host goes
  away.  Every answer goes to a connected host: a port write blocks while none is, so an
  answer the host did not wait for reaches the next client first, which skips to `ready`.
- ports `ctr_N_ctl`, `ctr_N_out`, `ctr_N_err` (N = 0..SLOTS-1): exec slots, each a shell
  loop, so SLOTS commands can run at once.  When a host connects to a slot's ctl port the
  slot writes `ready` (again for each `hello`); the host sends `exec B64` (base64 of shell
  assignments X_ARGV, X_ENV, X_WD, each value quoted for `eval`); the slot answers `started`, runs
  `env -i ENV nsenter -r/mnt/root -w/mnt/root/WD -- ARGV` (busybox's nsenter chroots,
  changes directory and execs in one go: 127 not found, 126 cannot invoke) with stdin from
  /dev/null and stdout/stderr through FIFOs to two `cat` relays writing to the slot's out and
  err ports, and ends with `exit N` once the relays are done (so all output is out before the
  status).  While it runs the host may send `signal N`; if the host goes away the command
  is killed.

Why this shape: a virtio-serial port reads as end-of-file while no host is connected, but a
write blocks until one connects — so each loop *writes* `ready` and sleeps in the kernel
until a client arrives, with no polling.  qemu serves each port as a unix socket in the VM's
run directory (listening sockets ctr binds and hands to qemu as `fd=N`, so no path length
limit applies); a socket accepts one client at a time, and `exec` takes a slot with an flock
on the slot's lock file.

Why `hello`: a host sends it as soon as it connects, before it waits for `ready`.  The
guest writes `ready` as soon as a request is done, mostly while the previous host is still
connected (which drops it), and then reads: when that host goes and the next one is
accepted in the same breath, the guest's reader never sees the end of file between them,
so it would wait for a request while the new host waits for `ready` (seen in a test: a
client queued on a slot's sockets waited every time).  A `ready` the host gets twice is
skipped: no answer is `ready`.
"""

from __future__ import annotations

import base64
import errno
import os
import re
import secrets
import selectors
import shlex
import signal
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ctr.errors import DriverError

CONTROL = "ctr_control"
SLOTS = 4  # commands that can run at once in one VM; a further exec waits for a free slot
GUEST_ROOT = "/mnt/root"
INIT_PATH = "ctr/vm-init"
HELLO = b"hello\n"  # what a host sends on connecting: the agent answers with a fresh `ready`


def answers_hello(line: str) -> bool:
    """A line that answers a `hello`, not the request after it: `ready`, or the error of an
    agent from before `hello` existed (a VM started by an older ctr), which still serves."""
    return line.startswith("ready") or line == "error unknown request hello"


def slot_ports(i: int, stdin: bool = False) -> tuple[str, ...]:
    """Slot i's ports: ctl, out, err (and in, where the VM forwards an exec's stdin)."""
    return (f"ctr_{i}_ctl", f"ctr_{i}_out", f"ctr_{i}_err") + ((f"ctr_{i}_in",) if stdin else ())


def port_names(slots: int = SLOTS, control: bool = True, stdin: bool = False) -> list[str]:
    """Every agent port of a VM: the control port (`ctr vm`) and the slots' ports."""
    names = [CONTROL] if control else []
    for i in range(slots):
        names += slot_ports(i, stdin)
    return names


# The exec machinery in the guest's shell, shared by /ctr/vm-init (below) and the container
# init of the microvm driver (`ctr.qemu.guest_init`), which runs its own command with it too.
# Needs R (the root the commands see, chrooted into by busybox's nsenter), P_<port name> for
# the slot ports (the device of each named virtio-serial port) and /run/ctr.
EXEC_SH = r"""
# Commands run in the foreground of a shell that was not started as a background job: a
# background job (`&`) of a non-interactive shell starts with SIGINT and SIGQUIT ignored, for
# good (no trap can undo it, and exec keeps it), so ^C could never reach the command.  The
# slots therefore run beside the caller's own work as the elements of one pipeline
# (`with_slots`), and what runs beside a command (its relays, the signal relay) is the
# background job instead.

# spawn FIFOS OUT ERR: the relays of a command's output: FIFOS.out/.err to two `cat`s writing
# to the ports OUT and ERR (a port can be opened only once, and the command may reopen
# /dev/stdout).  Sets c1, c2.
spawn() {
    rm -f $1.out $1.err $1.pid
    mkfifo $1.out $1.err
    cat $1.out >"$2" &
    c1=$!
    cat $1.err >"$3" &
    c2=$!
    mkdir -p "$R$X_WD" 2>/dev/null
}

# run FIFOS IN: run X_ARGV (env -i X_ENV, in $R$X_WD, as X_USER: "-S uid -G gid" or empty)
# in the foreground with stdin from IN; it writes its pid to FIFOS.pid and `started` to fd 5
# first.  Returns its status (126/127 from nsenter, 128+n for a signal).
run() {
    (read -r me _ </proc/self/stat; echo "$me" >$1.pid; echo started >&5
     eval "exec env -i $X_ENV nsenter -r$R \"-w\$R\$X_WD\" $X_USER -- $X_ARGV" \
         <"$2" >$1.out 2>$1.err 4>&- 5>&-)
}

# relay_signals FIFOS [kill]: "signal N" lines on stdin go to the command; at end of file (the
# host went away) it is killed when asked to
relay_signals() {
    while read -r v a; do
        [ "$v" = signal ] || continue
        while [ ! -s $1.pid ]; do sleep 0.01; done
        read -r p <$1.pid && kill -"$a" "$p" 2>/dev/null
    done
    [ -z "$2" ] || { read -r p <$1.pid && kill -KILL "$p"; } 2>/dev/null
}

# drain: wait for the relays; a background process still holding the command's stdout
# must not hold them for more than a second
drain() {
    (sleep 1; kill $c1 $c2) 2>/dev/null &
    k=$!
    wait $c1 $c2
    kill $k 2>/dev/null
}

# slot_ports N: wait for slot N's ports (qemu announces ports asynchronously; the container
# init does not wait for them before starting its command) and set P_ctr_N_ctl, _out, _err
# and _in (which only CTR_SLOT_STDIN waits for)
slot_ports() {
    n=0
    while :; do
        eval "[ -n \"\$P_ctr_$1_ctl\" ] && [ -n \"\$P_ctr_$1_out\" ] && [ -n \"\$P_ctr_$1_err\" ] &&
            { [ -z \"\$CTR_SLOT_STDIN\" ] || [ -n \"\$P_ctr_$1_in\" ]; }" && return 0
        n=$((n + 1))
        [ $n -gt 1000 ] && { say "exec slot $1: its ports did not appear"; return 1; }
        [ $n -gt 1 ] && sleep 0.05
        for p in /sys/class/virtio-ports/*; do
            [ -r "$p/name" ] || continue
            read -r name <"$p/name"
            case "$name" in
            ctr_$1_ctl | ctr_$1_out | ctr_$1_err | ctr_$1_in)
                [ -c "/dev/${p##*/}" ] && eval "P_$name=/dev/${p##*/}" ;;
            esac
        done
    done
}

# slot N: serve exec requests on the ports ctr_N_ctl/_out/_err (and _in, for stdin) forever
slot() {
    slot_ports $1 || return
    eval "ctl=\$P_ctr_$1_ctl out=\$P_ctr_$1_out err=\$P_ctr_$1_err in=\$P_ctr_$1_in"
    f=/run/ctr/$1 req=/run/ctr/$1.req
    exec 4<>"$ctl" </dev/null >/dev/null
    while :; do
        echo ready >&4 2>/dev/null || { sleep 1; continue; }
        read -r verb arg <&4 || continue
        [ "$verb" = hello ] && continue
        [ "$verb" = exec ] || { echo "error unknown request $verb" >&4; continue; }
        X_ARGV= X_ENV= X_WD=/ X_USER= X_IN= X_END=
        echo "$arg" | base64 -d >$req 2>/dev/null && . $req || { echo "error bad request" >&4; continue; }
        src=/dev/null ci=
        if [ -n "$X_IN" ]; then
            [ -n "$in" ] || { echo "error no stdin port in this VM" >&4; continue; }
            rm -f $f.in
            mkfifo $f.in
            cat "$in" >$f.in &
            ci=$!
            src=$f.in
        fi
        spawn $f "$out" "$err"
        # while it runs: "signal N" from the host; the host gone (end of file): kill it
        relay_signals $f kill <&4 &
        rd=$!
        run $f $src 5>&4
        rc=$?
        kill $rd $ci 2>/dev/null
        wait $rd $ci 2>/dev/null
        drain
        # end-of-stream markers: a port write returns before qemu has passed the data on,
        # so the host reads each stream up to its marker.  A write for a host that went
        # away waits for the next one, which discards what carries another's marker.
        printf %s "$X_END" >"$out"
        printf %s "$X_END" >"$err"
        echo "exit $rc" >&4
    done
}

# with_slots FUNCTION: run FUNCTION and CTR_SLOTS slots, side by side, as one pipeline
with_slots() {
    set -- "$1"
    i=0
    while [ $i -lt "${CTR_SLOTS:-0}" ]; do
        set -- "$@" "| slot $i"
        i=$((i + 1))
    done
    eval "$*"
}
"""

VM_INIT = r"""#!/bin/sh
# ctr VM init -- PID 1 of a `ctr vm` on the qemu driver.  Generated; see ctr/vm/agent.py.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "ctr-vm: $*" >/dev/console; }
die() { say "error: $*"; sync; poweroff -f; exit 1; }
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev 2>/dev/null
. /etc/ctr/vm.conf || die "cannot read /etc/ctr/vm.conf"
for m in $CTR_MODULES; do
    insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done

# the named virtio-serial ports (their names arrive asynchronously from qemu)
n=0
while :; do
    found=0
    for p in /sys/class/virtio-ports/*; do
        [ -r "$p/name" ] || continue
        read -r name <"$p/name"
        case "$name" in
        ctr_*[!a-z0-9_]*) ;;
        ctr_*) [ -c "/dev/${p##*/}" ] && eval "P_$name=/dev/${p##*/}" && found=$((found + 1)) ;;
        esac
    done
    [ "$found" -ge "$CTR_NPORTS" ] && break
    n=$((n + 1))
    [ $n -gt 2000 ] && die "virtio-serial ports did not appear (is virtio_console loaded?)"
    sleep 0.01
done

R=/mnt/root
mkdir -p $R /run/ctr
n=0
while [ ! -b "$CTR_ROOT_DEV" ]; do
    n=$((n + 1))
    [ $n -gt 1000 ] && die "root disk $CTR_ROOT_DEV did not appear"
    sleep 0.01
done
mount -t ext4 -o "$CTR_ROOT_OPTS" "$CTR_ROOT_DEV" $R || die "cannot mount root disk $CTR_ROOT_DEV"
[ -d $R/proc ] && mount -t proc -o nosuid,nodev,noexec proc $R/proc
[ -d $R/sys ] && mount -t sysfs -o nosuid,nodev,noexec sysfs $R/sys
if [ -d $R/dev ]; then
    mount -t tmpfs -o nosuid,mode=0755,size=65536k tmpfs $R/dev
    for d in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0" "console 5 1"; do
        set -- $d
        mknod -m 666 "$R/dev/$1" c "$2" "$3"
    done
    ln -s /proc/self/fd $R/dev/fd
    ln -s /proc/self/fd/0 $R/dev/stdin
    ln -s /proc/self/fd/1 $R/dev/stdout
    ln -s /proc/self/fd/2 $R/dev/stderr
    mkdir $R/dev/pts $R/dev/shm
    mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666 devpts $R/dev/pts &&
        ln -s pts/ptmx $R/dev/ptmx
    mount -t tmpfs -o nosuid,nodev,mode=1777 shm $R/dev/shm
fi
[ -n "$CTR_HOSTNAME" ] && hostname "$CTR_HOSTNAME"
""" + EXEC_SH + r"""
alive() {  # any process left besides PID 1, this one and kernel threads (zombies do not count)?
    read -r me _ </proc/self/stat
    for s in /proc/[0-9]*/stat; do
        read -r pid _ state ppid _ <"$s" 2>/dev/null || continue
        [ "$pid" = 1 ] || [ "$pid" = "$me" ] || [ "$pid" = 2 ] || [ "$ppid" = 2 ] || [ "$state" = Z ] || return 0
    done
    return 1
}

shutdown() {  # GRACE [force]
    echo stopping >&3
    say "shutting down"
    if [ "$2" = force ]; then
        kill -KILL -1
    else
        kill -TERM -1
        n=0
        while alive && [ $n -lt $(($1 * 10)) ]; do sleep 0.1; n=$((n + 1)); done
        kill -KILL -1
    fi
    sleep 0.1
    sync
    for m in dev/shm dev/pts dev sys proc; do umount "$R/$m" 2>/dev/null; done
    umount $R 2>/dev/null || mount -o remount,ro $R 2>/dev/null
    say "powering off"
    poweroff -f
}

control() {
    exec 3<>"$P_ctr_control" </dev/null >/dev/null
    release=$(uname -r)
    say "ready"
    frozen=
    while :; do
        echo "ready $release" >&3 2>/dev/null || { sleep 1; continue; }
        while read -r verb arg <&3; do
            case "$verb" in
            hello) echo "ready $release" >&3 ;;
            ping) echo pong >&3 ;;
            sync) sync; echo ok >&3 ;;
            freeze) sync; if fsfreeze --freeze $R; then frozen=1; echo ok >&3; else echo "error cannot freeze the disk" >&3; fi ;;
            thaw) [ -n "$frozen" ] && fsfreeze --unfreeze $R; frozen=; echo ok >&3 ;;
            shutdown) [ -n "$frozen" ] && fsfreeze --unfreeze $R; shutdown $arg ;;
            *) echo "error unknown request $verb" >&3 ;;
            esac
        done
        [ -n "$frozen" ] && fsfreeze --unfreeze $R
        frozen=
    done
}

# the control loop beside the exec slots (PID 1 waits for the pipeline; `shutdown` powers off)
with_slots control
"""


@dataclass(frozen=True)
class GuestSpec:
    """What /ctr/vm-init needs: modules to load, root device and its mount options."""

    modules: tuple[str, ...]
    hostname: str = ""
    root_dev: str = "/dev/vda"
    # noinit_itable: the disk is a sparse file whose unused inode tables already read as
    # zeros, so the kernel's background zeroing would only cost emulated CPU and grow it
    root_opts: str = "rw,noinit_itable"
    slots: int = SLOTS


def vm_conf(spec: GuestSpec) -> str:
    q = shlex.quote
    return "\n".join([
        f"CTR_MODULES={q(' '.join(spec.modules))}",
        f"CTR_HOSTNAME={q(spec.hostname)}",
        f"CTR_ROOT_DEV={q(spec.root_dev)}",
        f"CTR_ROOT_OPTS={q(spec.root_opts)}",
        f"CTR_SLOTS={int(spec.slots)}",
        f"CTR_NPORTS={len(port_names(spec.slots))}",
    ]) + "\n"


def init_archive(spec: GuestSpec) -> bytes:
    """The cpio archive appended after the qemu machinery's base and disk archives."""
    import io

    from ctr.qemu import cpio

    buf = io.BytesIO()
    with cpio.CpioWriter(buf) as w:
        w.add_dir("ctr")
        w.add_file(INIT_PATH, VM_INIT.encode(), 0o755)
        w.add_file("etc/ctr/vm.conf", vm_conf(spec).encode())
    return buf.getvalue()


MARKER = re.compile(rb"<ctr-end ([0-9a-f]{32})>")
MARKER_PREFIX = b"<ctr-end "
MARKER_LEN = len(MARKER_PREFIX) + 33


def end_marker(token: str) -> bytes:
    return MARKER_PREFIX + token.encode() + b">"


def nsenter_user(uid: int, gid: int) -> str:
    """busybox nsenter's options to run as uid:gid (none for root)."""
    return f"-S {int(uid)} -G {int(gid)}" if (int(uid), int(gid)) != (0, 0) else ""


def exec_request(argv: list[str], env: dict[str, str], workdir: str, token: str,
                 user: tuple[int, int] | None = None, stdin: bool = False) -> bytes:
    """The `exec B64` line a slot reads: shell assignments, every value quoted for eval;
    X_END is the end-of-stream marker the slot writes after the command's output, X_USER
    nsenter's options for (uid, gid), X_IN asks for stdin from the slot's in port."""
    if not argv:
        raise ValueError("empty command")
    if not workdir.startswith("/"):
        raise ValueError(f"workdir must be absolute: {workdir!r}")
    if not re.fullmatch(r"[0-9a-f]{32}", token):
        raise ValueError("token must be 32 hex digits")
    q = shlex.quote
    script = "\n".join([
        f"X_ARGV={q(' '.join(q(a) for a in argv))}",
        f"X_ENV={q(' '.join(q(f'{k}={v}') for k, v in env.items()))}",
        f"X_WD={q(workdir.rstrip('/') or '/')}",
        f"X_END={q(end_marker(token).decode())}",
        f"X_USER={q(nsenter_user(*user) if user else '')}",
        f"X_IN={'1' if stdin else ''}",
    ]) + "\n"
    return b"exec " + base64.b64encode(script.encode("utf-8", "surrogateescape")) + b"\n"


class StreamEnd:
    """Passes one output stream on, up to this exec's end marker.  Everything up to a
    marker of another exec (output left by a client that went away) is dropped; the last
    few bytes are held back until it is clear they do not begin a marker."""

    def __init__(self, token: str, sink: Callable[[bytes], None]):
        self.mine = end_marker(token)
        self.sink = sink
        self.buf = b""
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self.buf += data
        while (m := MARKER.search(self.buf)) is not None:
            if m.group(0) == self.mine:
                self.sink(self.buf[:m.start()])
                self.buf = b""
                self.done = True
                return
            self.buf = self.buf[m.end():]  # another exec's leftovers
        keep = 0
        for n in range(min(MARKER_LEN - 1, len(self.buf)), 0, -1):
            tail = self.buf[-n:]
            if MARKER_PREFIX.startswith(tail[:len(MARKER_PREFIX)]) and \
                    all(c in b"0123456789abcdef" for c in tail[len(MARKER_PREFIX):]):
                keep = n
                break
        if len(self.buf) > keep:
            self.sink(self.buf[:len(self.buf) - keep])
            self.buf = self.buf[len(self.buf) - keep:]

    def flush(self) -> None:
        if self.buf and not self.done:
            self.sink(self.buf)
        self.buf = b""


# ----------------------------------------------------------------------------- host side
def bind_listener(path: Path) -> socket.socket:
    """A listening unix socket at `path` (any length: bound through /proc/self/fd)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _short(path) as short:
            sock.bind(short)
        sock.listen(8)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(path: Path, timeout: float | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        with _short(path) as short:
            sock.connect(short)
    except BaseException:
        sock.close()
        raise
    return sock


@contextmanager
def _short(path: Path) -> Iterator[str]:
    """`path`, or the same file reached through /proc/self/fd when it is too long for a
    unix socket address (108 bytes)."""
    if len(os.fsencode(str(path))) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class Lines:
    """Line reader over a socket, with a deadline."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def read(self, timeout: float | None) -> str | None:
        """One line (without the newline), or None at end of file."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.sock.settimeout(left)
            else:
                self.sock.settimeout(None)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                raise TimeoutError from None
            if not data:
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace").rstrip("\r")


class Control:
    """A session on the control port (one client at a time; qemu queues the others)."""

    def __init__(self, path: Path, timeout: float = 10.0):
        self.sock = connect(path, timeout)
        self.lines = Lines(self.sock)
        try:
            self.sock.sendall(HELLO)
            while True:  # an answer meant for a client that went away may come first
                first = self.lines.read(timeout)
                if first is None:
                    raise DriverError("the VM's agent did not answer")
                if first.startswith("ready"):
                    break
        except BaseException:
            self.close()
            raise
        self.release = first.partition(" ")[2]

    def request(self, line: str, timeout: float = 30.0) -> str:
        self.sock.sendall(line.encode() + b"\n")
        answer = self.lines.read(timeout)
        while answer is not None and answers_hello(answer):
            answer = self.lines.read(timeout)
        if answer is None:
            raise DriverError(f"the VM's agent went away during {line.split()[0]!r}")
        if answer.startswith("error "):
            raise DriverError(f"the VM's agent: {answer[6:]}")
        return answer

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Control":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_ready(path: Path, deadline: float, alive: Callable[[], bool]) -> str:
    """Wait until the agent answers on the control socket; returns the guest's kernel
    release.  DriverError when `alive()` turns false (qemu exited) first; TimeoutError at
    `deadline` (time.monotonic())."""
    while True:
        if not alive():
            raise DriverError("the VM stopped while booting")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            sock = connect(path, min(left, 1.0))
        except (FileNotFoundError, ConnectionRefusedError, socket.timeout):
            time.sleep(0.05)
            continue
        lines = Lines(sock)
        try:
            try:
                sock.sendall(HELLO)
            except OSError:  # qemu went away, or is replacing the connection: try again
                time.sleep(0.05)
                continue
            while True:  # the guest writes "ready" only once its agent runs
                if not alive():
                    raise DriverError("the VM stopped while booting")
                try:
                    line = lines.read(min(max(deadline - time.monotonic(), 0.01), 0.5))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise
                    continue
                if line is None:
                    break  # qemu went away
                if line.startswith("ready"):
                    return line.partition(" ")[2]
        finally:
            sock.close()


@contextmanager
def _slot(run_dir: Path, slots: int) -> Iterator[int]:
    """Take a free exec slot (flock on its lock file); when all are busy, wait for whichever
    frees first (polled: waiting on one would wait behind a long command while others free)."""
    import fcntl

    fds = []
    try:
        for i in range(slots):
            fds.append(os.open(run_dir / f"slot{i}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        while True:
            for i, fd in enumerate(fds):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    continue
                yield i
                return
            time.sleep(0.05)
    finally:
        for fd in fds:
            os.close(fd)


Sink = BinaryIO | int | None


def _writer(dest: Sink) -> Callable[[bytes], None]:
    if dest is None:
        return lambda data: None
    if isinstance(dest, int):
        def write_fd(data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(dest, view):]
        return write_fd

    def write_obj(data: bytes) -> None:
        dest.write(data)
        dest.flush()
    return write_obj


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def run_command(run_dir: Path, argv: list[str], env: dict[str, str], workdir: str, *,
                stdout: Sink = 1, stderr: Sink = 2, stdin: BinaryIO | int | None = None,
                user: tuple[int, int] | None = None, slots: int = SLOTS,
                alive: Callable[[], bool] = lambda: True, connect_timeout: float = 30.0,
                drain_timeout: float = 30.0, on_started: Callable[[], None] | None = None) -> int:
    """Run `argv` in the VM through a free exec slot; stream its output; return its exit
    code (126/127 from the guest as they are).  `stdin` (fd or binary file; the VM needs
    the slots' in ports) is copied to the command, else it reads /dev/null; `user` is
    (uid, gid).  Signals sent to this process (INT, TERM, HUP, QUIT, USR1, USR2) are passed
    to the command.  DriverError when the VM goes away.  `on_started` is called when the
    guest says it is starting the command (exec -d returns then)."""
    token = secrets.token_hex(16)
    request = exec_request(argv, env, workdir, token, user=user, stdin=stdin is not None)
    with _slot(run_dir, slots) as i:
        socks: list[socket.socket] = []
        try:
            for name in slot_ports(i, stdin is not None):
                socks.append(connect(run_dir / f"{name}.sock", connect_timeout))
            ctl, out, err = socks[:3]
            ctl.sendall(HELLO)
            lines = Lines(ctl)
            _await_ready(lines, alive, connect_timeout)
            ctl.sendall(request)
            if stdin is not None:
                import threading

                from ctr.qemu.run import _pump_stdin

                threading.Thread(target=_pump_stdin, args=(stdin, socks[3]), name="ctr-exec-stdin",
                                 daemon=True).start()
            return _stream(ctl, lines, {out: StreamEnd(token, _writer(stdout)),
                                        err: StreamEnd(token, _writer(stderr))},
                           alive, drain_timeout, on_started)
        except (ConnectionRefusedError, FileNotFoundError, BrokenPipeError, ConnectionResetError) as e:
            raise DriverError(f"cannot reach the VM's agent: {e.strerror}") from None
        finally:
            for s in socks:
                s.close()


def _await_ready(lines: Lines, alive: Callable[[], bool], timeout: float) -> None:
    """Read the slot's lines up to `ready` (earlier ones are a previous client's)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.read(0.5)
        except TimeoutError:
            if not alive():
                raise DriverError("the VM stopped") from None
            if time.monotonic() >= deadline:
                raise DriverError(f"the VM's agent did not answer within {timeout:g} s") from None
            continue
        if line is None:
            raise DriverError("the VM's agent closed the connection")
        if line == "ready":
            return


def _stream(ctl: socket.socket, lines: Lines, streams: dict[socket.socket, StreamEnd],
            alive: Callable[[], bool], drain_timeout: float,
            on_started: Callable[[], None] | None = None) -> int:
    pending: list[int] = []
    old = {}

    def forward(signum: int, frame: object) -> None:
        pending.append(signum)

    for sig in FORWARDED:
        try:
            old[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread
            break
    sel = selectors.DefaultSelector()
    try:
        for sock in (*streams, ctl):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        status = lines.buf
        lines.buf = b""
        code: int | None = None
        drain_deadline = float("inf")
        while code is None or not all(s.done for s in streams.values()):
            if code is not None and time.monotonic() >= drain_deadline:
                break  # the markers did not come: give what arrived
            while pending and code is None:
                ctl.sendall(f"signal {pending.pop(0)}\n".encode())
            events = sel.select(timeout=0.5)
            if not events and not alive():
                if code is not None:
                    break
                raise DriverError("the VM stopped while the command ran")
            for key, _ in events:
                sock = key.fileobj
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    data = b""
                if sock is ctl:
                    if not data:
                        sel.unregister(ctl)
                        if code is None:
                            raise DriverError("the VM stopped while the command ran")
                        continue
                    status += data
                    while b"\n" in status and code is None:
                        line, _, status = status.partition(b"\n")
                        verb, _, arg = line.decode(errors="replace").strip().partition(" ")
                        if verb == "exit" and arg.lstrip("-").isdigit():
                            code = int(arg)
                            drain_deadline = time.monotonic() + drain_timeout
                        elif verb == "error" and not answers_hello(line.decode(errors="replace").strip()):
                            raise DriverError(f"the VM's agent could not run the command: {arg}")
                        elif verb == "started" and on_started is not None:
                            on_started()
                            on_started = None
                elif data:
                    streams[sock].feed(data)  # type: ignore[index]
                else:
                    sel.unregister(sock)
                    streams[sock].done = True  # type: ignore[index]
        for s in streams.values():
            s.flush()
        assert code is not None
        return code
    finally:
        sel.close()
        for sig, handler in old.items():
            signal.signal(sig, handler)


def read_console_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


__all__ = ["CONTROL", "Control", "GuestSpec", "SLOTS", "StreamEnd", "VM_INIT", "bind_listener",
           "connect", "end_marker", "exec_request", "init_archive", "port_names", "run_command",
           "slot_ports", "vm_conf", "wait_ready"]
