"""ctr's guest init: the `/init` shell script (run by the initramfs' static busybox).

It is PID 1 inside the VM.  It mounts /proc, /sys and /dev, loads the kernel modules listed
in run.conf, finds ctr's named virtio-serial ports, mounts the root (a virtio-9p share
of the container's merged view, or a virtio-blk disk for a full VM) and the 9p volumes,
then runs the command with `nsenter -r ROOT -w DIR -S UID -G GID` (busybox's nsenter
chroots, changes directory and drops to the user in one exec, with 126/127 for
cannot-invoke/not-found, so the image needs no shell of its own).  The command's
stdout/stderr go through FIFOs to two relay `cat`s (so the command may reopen /dev/stdout:
a virtio port can be opened only once), and when it ends init writes `exit N` to the
status port, syncs and powers off.

Per-run settings come from /etc/ctr/run.conf, in a second cpio archive appended to the
cached base one (`initramfs.run_archive`).  Protocol on the status port, one line each:
`started` (the command was launched), then `exit N` (its code); or `error MESSAGE` (init
itself failed).  On the control port the host may send `signal N` to signal the command.

Exec slots (`ctr exec` into a running container): with `CTR_SLOTS=N` (GuestConfig.extra)
init also serves N exec slots on the ports `ctr_I_ctl`, `ctr_I_out`, `ctr_I_err`, `ctr_I_in`
beside the command -- the very slots of `ctr vm`'s guest agent: the shell that starts a
command, relays its output and delivers signals is `ctr.vm.agent.EXEC_SH`, used here for
the container's own command and by the slots alike (protocol: `ctr.vm.agent`).  The
command and the slots run as one pipeline, not as background jobs, which would start
every command with SIGINT ignored.  Init does not wait for the slots' ports before starting
the command (every port costs the guest kernel time and memory to set up): each slot waits
for its own, its `in` port too with `CTR_SLOT_STDIN=1`.
"""

from ctr.vm.agent import EXEC_SH

INIT_SCRIPT = r"""#!/bin/sh
# ctr guest init -- PID 1 of a ctr micro-VM.  Generated; see ctr/qemu/guest_init.py.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
STATUS=/dev/null
say() { echo "ctr-init: $*" >/dev/console; }
fail() {
    say "error: $*"
    echo "error $*" >"$STATUS"
    sync
    poweroff -f
    exit 1
}
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev 2>/dev/null
read -r cmdline </proc/cmdline
DEBUG=
case " $cmdline " in *" ctr.debug "*) DEBUG=1 ;; esac
mark() { [ -n "$DEBUG" ] && { read -r up _ </proc/uptime; say "$up $*"; }; }
mark init
. /etc/ctr/run.conf || fail "cannot read /etc/ctr/run.conf"

for m in $CTR_MODULES; do
    insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done
mark modules loaded

# Find the named virtio-serial ports (their names arrive asynchronously from qemu).
OUT= ERR= IN= CTL=
n=0
while :; do
    for p in /sys/class/virtio-ports/*; do
        [ -r "$p/name" ] || continue
        read -r name <"$p/name"
        case "$name" in
        ctr.stdout) OUT=/dev/${p##*/} ;;
        ctr.stderr) ERR=/dev/${p##*/} ;;
        ctr.status) STATUS=/dev/${p##*/} ;;
        ctr.stdin) IN=/dev/${p##*/} ;;
        ctr.control) CTL=/dev/${p##*/} ;;
        esac
    done
    [ -n "$OUT" ] && [ -n "$ERR" ] && [ "$STATUS" != /dev/null ] &&
        { [ -z "$CTR_STDIN" ] || [ -n "$IN" ]; } && [ -c "$OUT" ] && [ -c "$ERR" ] && break
    n=$((n + 1))
    [ $n -gt 1000 ] && fail "virtio-serial ports did not appear (is virtio_console loaded?)"
    sleep 0.01
done

mark ports found
R=/mnt/root
mkdir -p $R
if [ "$CTR_ROOT_TYPE" = disk ]; then
    n=0
    while [ ! -b "$CTR_ROOT_DEV" ]; do
        n=$((n + 1))
        [ $n -gt 500 ] && fail "root disk $CTR_ROOT_DEV did not appear"
        sleep 0.01
    done
    mount -t "${CTR_ROOT_FSTYPE:-ext4}" -o "${CTR_ROOT_OPTS:-rw}" "$CTR_ROOT_DEV" $R ||
        fail "cannot mount root disk $CTR_ROOT_DEV"
else
    mount -t 9p -o "trans=virtio,version=9p2000.L,msize=$CTR_MSIZE,$CTR_ROOT_OPTS" "$CTR_ROOT_TAG" $R ||
        fail "cannot mount the 9p root share (does the kernel have 9p and 9pnet_virtio?)"
fi

i=0
while [ $i -lt "${CTR_NVOLUMES:-0}" ]; do
    eval "tag=\$CTR_VOLUME_${i}_TAG target=\$CTR_VOLUME_${i}_TARGET opts=\$CTR_VOLUME_${i}_OPTS"
    mkdir -p "$R$target" || fail "cannot create volume mount point $target"
    mount -t 9p -o "trans=virtio,version=9p2000.L,msize=$CTR_MSIZE,$opts" "$tag" "$R$target" ||
        fail "cannot mount volume $target"
    i=$((i + 1))
done

mark root mounted
[ -d $R/proc ] && mount -t proc -o nosuid,nodev,noexec proc $R/proc
[ -d $R/sys ] && mount -t sysfs -o nosuid,nodev,noexec,ro sysfs $R/sys
if [ -d $R/dev ]; then
    mount -t tmpfs -o nosuid,mode=0755,size=65536k tmpfs $R/dev
    for d in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
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
# CTR_TMPFS (GuestConfig.extra): private tmpfs mounts in the root, e.g. a container's /tmp,
# which process isolation gives it too (so writes there never reach the writable layer)
for t in $CTR_TMPFS; do
    [ -d "$R$t" ] && [ ! -L "$R$t" ] && mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$R$t"
done
ifconfig lo up 2>/dev/null
""" + EXEC_SH + r"""
mark starting command
mkdir -p /run/ctr
X_ARGV=$CTR_ARGV X_ENV=$CTR_ENV X_WD=$CTR_WORKDIR X_USER=$CTR_USER
if [ -n "$CTR_STDIN" ]; then SRC=$IN; else SRC=/dev/null; fi

main() {
    exec </dev/null >/dev/null
    spawn /run/ctr/main "$OUT" "$ERR"
    # control port: "signal N" lines are delivered to the command
    [ -z "$CTL" ] || relay_signals /run/ctr/main <"$CTL" &
    run /run/ctr/main "$SRC" 5>"$STATUS"
    rc=$?
    mark command exited
    # A command that left a background process holding its stdout must not hang the VM.
    drain
    sync
    if [ "$CTR_ROOT_TYPE" = disk ]; then
        # leave the VM's disk clean: unmount what init mounted, remount the root read-only
        for m in dev/shm dev/pts dev sys proc; do umount "$R/$m" 2>/dev/null; done
        mount -o remount,ro $R 2>/dev/null
    fi
    echo "exit $rc" >"$STATUS"
    poweroff -f
}

# the command beside the exec slots (none without CTR_SLOTS); main powers the VM off
with_slots main
"""
