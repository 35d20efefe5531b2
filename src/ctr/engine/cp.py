"""`ctr cp`: copy files and directories between a container and the host (docker cp).

    ctr cp [-a] [-L] CONTAINER:SRC DEST|-      out of the container ('-': a tar on stdout)
    ctr cp [-a] [-L] SRC|- CONTAINER:DEST      into it ('-': a tar from stdin, into a directory)

The container's side runs in a forked child that sees the container's root filesystem as `/`:

- a running container: the child joins its user and mount namespaces -- as the container's
  root in a mapped sandbox, so what it writes lands in the writable layer as the workload's
  own writes do -- and chroots into its root (for microvm: into the merged directory its
  helper shares with the guest);
- a stopped or created one: the child mounts the container's overlay (its layers, writable
  layer and work directory, as the driver does) in a private mount namespace and chroots into
  it, holding the container's start lock so that a `start` waits for the copy; the copy
  driver's tree is chrooted into directly.

Paths in the container are resolved inside that root, so no symlink of the container's leads
out of it. A tar stream runs over a pipe between the two sides; the receiving side places it
by docker's rules (`place`) and trusts nothing in it: every name must lie under the copied
item, without `..` or a leading `/`; devices and fifos are skipped (and reported); symlinks are
made last, so nothing of the stream is written through a link the stream made. Ownership: the
copier's (root; inside, the container's root) unless -a (the source's numeric ids);
setuid/setgid bits only with -a.
"""

from __future__ import annotations

import os
import sys
import tarfile

from ctr.engine.containers import get_container
from ctr.engine.context import Context
from ctr.errors import Conflict, CtrError, InvalidArgument, NotFound
from ctr.models import Container, Record, State

# extraction filters exist from Python 3.11.4 (PEP 706); the checks here are ctr's own
_TRUSTED = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}


class CopyError(CtrError):
    pass


class StreamError(CopyError):
    """The stream ended or broke: the other side's error, if it has one, is the cause."""


class CopyReport(Record):
    __slots__ = _fields = ("container", "skipped")

    def __init__(self, container: Container, skipped: list[str]):
        self.container, self.skipped = container, skipped


def split_arg(arg: str) -> tuple[str | None, str]:
    """`CONTAINER:PATH` -> (container, path); a local path -> (None, path). As docker: a path
    that starts with `/` or `.` is local even with a colon in it."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    ref, _, path = arg.partition(":")
    return ref, path or "/"


def copy(ctx: Context, src: str, dest: str, archive: bool = False, follow: bool = False) -> CopyReport:
    """Copy between a container and the host; exactly one side is `CONTAINER:PATH`."""
    (sref, spath), (dref, dpath) = split_arg(src), split_arg(dest)
    if (sref is None) == (dref is None):
        raise InvalidArgument("copying between two containers is not supported" if sref else
                              "one of SRC and DEST must be CONTAINER:PATH",
                              hint="ctr cp CONTAINER:SRC DEST, or ctr cp SRC CONTAINER:DEST")
    c = get_container(ctx, sref or dref)  # type: ignore[arg-type]
    inside = "/" + (spath if sref else dpath).lstrip("/")
    if sref is not None:
        return _copy_out(ctx, c, inside, dpath, archive, follow)
    return _copy_in(ctx, c, spath, inside, archive, follow)


# ----------------------------------------------------------------------------- the two directions
def _copy_out(ctx: Context, c: Container, src: str, dest: str, archive: bool, follow: bool) -> CopyReport:
    if dest != "-":
        parent = os.path.dirname(dest.rstrip("/")) or "."
        if not os.path.isdir(parent):
            raise NotFound(f"no such directory: {parent}", hint="create it first")
    r, w = os.pipe2(os.O_CLOEXEC)

    def child() -> list[str]:
        os.close(r)
        _send(src, w, follow)
        return []

    skipped: list[str] = []
    with _ContainerSide(ctx, c, child):
        os.close(w)
        with os.fdopen(r, "rb") as stream:
            if dest == "-":
                _pump(stream, sys.stdout.buffer)
            else:
                skipped = place(stream, dest, src, archive)
    return CopyReport(c, skipped)


def _copy_in(ctx: Context, c: Container, src: str, dest: str, archive: bool, follow: bool) -> CopyReport:
    if src != "-" and not os.path.lexists(src):
        raise NotFound(f"no such file or directory: {src}")
    r, w = os.pipe2(os.O_CLOEXEC)

    def child() -> list[str]:
        os.close(w)
        with os.fdopen(r, "rb") as stream:
            return place(stream, dest, None if src == "-" else src, archive)

    side = _ContainerSide(ctx, c, child)
    with side:
        os.close(r)
        try:
            if src == "-":
                with os.fdopen(w, "wb") as pipe:
                    _pump(sys.stdin.buffer, pipe)
            else:
                _send(src, w, follow)
        except BrokenPipeError:  # the container's side gave up: its error says why
            pass
    return CopyReport(c, side.skipped)


def _pump(src, dst) -> None:
    while chunk := src.read(1 << 16):
        dst.write(chunk)
    dst.flush()


# ----------------------------------------------------------------------------- the tar stream
def _send(path: str, fd: int, follow: bool) -> None:
    """Write a tar of `path` (named by its base name; with `follow`, what a symlink at `path`
    points to, under the link's name) to `fd`, and close it."""
    with os.fdopen(fd, "wb") as out:
        name = _base(path)
        if follow:
            path = os.path.realpath(path)
        if not os.path.lexists(path):
            raise NotFound(f"no such file or directory: {path}")
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(path, arcname=name)


def _base(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    return name if name not in ("", "/") else "."


def place(stream, dest: str, src: str | None, archive: bool) -> list[str]:
    """Extract the tar `stream` at `dest` by docker's rules; returns what was skipped.

    `src` is the copied path (None: `stream` is an archive from stdin, extracted as it is into
    the directory `dest`). A directory goes to `dest` when `dest` does not exist, else to
    `dest/NAME`; with `src` ending in `/.`, its contents go into `dest`. A file goes to `dest`,
    or to `dest/NAME` when `dest` is a directory."""
    skipped: list[str] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            first = tar.next()
            if first is None:
                raise StreamError("nothing to copy: the stream is empty")
            if src is None:
                if not os.path.isdir(dest):
                    raise CopyError(f"{dest} must be an existing directory to extract an archive into")
                _extract_tree(tar, first, dest, None, archive, skipped)
                return skipped
            top = _base(src)
            if first.name != top:
                raise CopyError(f"unexpected entry {first.name!r} in the stream")
            if os.path.isdir(dest):
                contents = first.isdir() and (src.endswith("/.") or top == ".")
                target = dest if contents else os.path.join(dest, top)
            elif os.path.lexists(dest):
                if first.isdir():
                    raise CopyError(f"cannot copy a directory onto the file {dest}")
                target = dest
            else:
                if dest.endswith("/") and not first.isdir():
                    raise CopyError(f"destination directory {dest} does not exist")
                parent = os.path.dirname(dest.rstrip("/")) or "."
                if not os.path.isdir(parent):
                    raise CopyError(f"no such directory: {parent}")
                target = dest.rstrip("/")
            if first.isdir():
                _extract_tree(tar, first, target, top, archive, skipped)
            else:
                _extract_one(tar, first, target, top, archive, skipped)
    except tarfile.TarError as e:
        raise StreamError(f"not a tar stream: {e}") from None
    return skipped


def _extract_one(tar: tarfile.TarFile, first: tarfile.TarInfo, target: str, top: str, archive: bool,
                 skipped: list[str]) -> None:
    if os.path.isdir(target) and not os.path.islink(target):
        raise CopyError(f"cannot copy a file onto the directory {target}")
    m = _checked(first, top, archive, skipped)
    if m is not None:
        m.name = os.path.basename(target)
        if os.path.lexists(target):
            os.unlink(target)
        _make(tar, m, os.path.dirname(target) or ".")
    if tar.next() is not None:
        raise CopyError("unexpected entries after a single file in the stream")


def _extract_tree(tar: tarfile.TarFile, first: tarfile.TarInfo, target: str, top: str | None, archive: bool,
                  skipped: list[str]) -> None:
    """Extract a directory's members below `target` (`top`, the directory's own entry, is
    `target` itself; None: an archive whose members are named relative to `target`)."""
    made = False
    if top is not None:
        made = not os.path.isdir(target)
        if made:
            os.mkdir(target, 0o700)
        member = tar.next()
    else:
        member = first
    links: list[tarfile.TarInfo] = []
    while member is not None:
        m = _checked(member, top, archive, skipped)
        if m is not None and m.name:
            if m.issym():
                links.append(m)
            else:
                _make(tar, m, target)
        member = tar.next()
    for m in links:  # last: nothing of the stream is written through a link it made
        path = os.path.join(target, m.name)
        if os.path.isdir(path) and not os.path.islink(path):
            raise CopyError(f"cannot make the symlink {m.name}: a directory is in its place")
        if os.path.lexists(path):
            os.unlink(path)
        _make(tar, m, target)
    if made:  # the directory's own mode (and owner, with -a)
        os.chmod(target, first.mode & (0o7777 if archive else 0o1777))
        if archive:
            os.chown(target, first.uid, first.gid)


def _inside(name: str, top: str | None) -> bool:
    parts = name.split("/")
    if name.startswith("/") or ".." in parts:
        return False
    return top is None or name == top or name.startswith(top + "/")


def _checked(m: tarfile.TarInfo, top: str | None, archive: bool, skipped: list[str]) -> tarfile.TarInfo | None:
    """The member as it may be extracted -- named below the copied item, ownership and mode as
    -a says -- or None to skip it; CopyError for a name or hard link outside the copied item."""
    if not _inside(m.name, top) or (m.islnk() and (not _inside(m.linkname, top) or m.linkname == top)):
        raise CopyError(f"unsafe path in the stream: {m.name!r}")
    if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
        skipped.append(m.name)
        return None
    m = m.replace(deep=False)
    if top is not None:
        m.name = "" if m.name == top else m.name[len(top) + 1:]
        if m.islnk():
            m.linkname = m.linkname[len(top) + 1:]
    m.mode &= 0o7777 if archive else 0o1777
    if not archive:
        m.uid, m.gid = os.geteuid(), os.getegid()
    return m


def _make(tar: tarfile.TarFile, m: tarfile.TarInfo, path: str) -> None:
    try:
        tar.extract(m, path, set_attrs=True, numeric_owner=True, **_TRUSTED)
    except OSError as e:
        raise CopyError(f"cannot write {os.path.join(path, m.name)}: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- the container's side
class _ContainerSide:
    """`with _ContainerSide(ctx, c, fn):` runs fn() in a forked child in the container's root
    (see the module's text) while the body feeds or drains the stream; on leaving, waits for
    the child. Whichever side failed first is reported: the child's error when the body only
    saw the stream end or break (StreamError, BrokenPipeError), else the body's."""

    def __init__(self, ctx: Context, c: Container, fn) -> None:
        self.ctx, self.c, self.fn = ctx, c, fn
        self.lock = None
        self.skipped: list[str] = []

    def __enter__(self) -> "_ContainerSide":
        from ctr import proc

        c = self.c
        running = c.state == State.RUNNING.value and proc.pid_alive(c.pid, c.pid_start)
        if running:
            under = str(self.ctx.store.container_path(c.id, "merged")) if c.driver == "microvm" else ""

            def enter() -> None:
                proc.join_root(c.pid, c.pid_start, names=("user", "mnt"), under=under)  # type: ignore[arg-type]
        else:
            enter = self._stopped()
        self.er, ew = os.pipe2(os.O_CLOEXEC)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # ---- the child
            code = 1
            try:
                os.close(self.er)
                proc.die_with_parent()
                enter()
                said = b"S" + "\0".join(self.fn()).encode(errors="replace")
                code = 0
            except CtrError as e:
                said = b"E" + e.message.encode(errors="replace")
            except OSError as e:
                said = b"E" + f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}".encode(errors="replace")
            except BaseException as e:  # noqa: BLE001 - never return into the caller's code
                said = b"E" + f"{type(e).__name__}: {e}".encode(errors="replace")
            finally:
                try:
                    os.write(ew, said[:60000])
                finally:
                    os._exit(code)
        self.pid = pid
        os.close(ew)
        return self

    def __exit__(self, kind, value, tb) -> None:
        try:
            # the body closed its end of the stream, so the child ends by itself; its error (say,
            # no such file) explains the body's (an empty stream): wait for it, a while
            status = self._wait(10.0 if kind is not None else None)
            with os.fdopen(self.er, "rb") as f:
                said = f.read()
        finally:
            if self.lock is not None:
                self.lock.__exit__(None, None, None)
        if kind is not None and not issubclass(kind, StreamError):
            return  # the body's own error stands (the child's, a broken pipe, follows from it)
        if said.startswith(b"E"):
            raise CopyError(said[1:].decode(errors="replace"))
        if kind is None and (status != 0 or not said.startswith(b"S")):
            raise CopyError(f"the copy failed in the container (status {status})")
        self.skipped = [s for s in said[1:].decode(errors="replace").split("\0") if s]

    def _wait(self, timeout: float | None) -> int:
        """The child's wait status; killed first if it has not ended within `timeout`."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while deadline is not None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return status
            if time.monotonic() >= deadline:
                import signal

                os.kill(self.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        return os.waitpid(self.pid, 0)[1]

    def _stopped(self):
        """How the child reaches a stopped container's root (a function that mounts and
        chroots), under its start lock, taken here and released by __exit__."""
        from ctr import proc
        from ctr.drivers.overlay import lower_dirs, overlay_options
        from ctr.engine.images import get_image
        from ctr.engine.lifecycle import _start_lock

        store, c = self.ctx.store, self.c
        upper, rootfs = store.container_path(c.id, "upper"), store.container_path(c.id, "rootfs")
        if not upper.is_dir() and not rootfs.is_dir():
            raise CopyError(f"container {c.name} ({c.driver} driver) has no filesystem ctr can reach")
        if upper.is_dir() and os.geteuid() != 0:
            raise Conflict(f"copying with the stopped container {c.name} needs root (it mounts its overlay)",
                           hint=f"start it first: `ctr start {c.name}`")
        lock = _start_lock(self.ctx, c.id)
        lock.__enter__()
        try:
            now = get_container(self.ctx, c.id)
            if now.state == State.RUNNING.value and proc.pid_alive(now.pid, now.pid_start):
                raise Conflict(f"container {c.name} started meanwhile", hint="run the copy again")
            if not upper.is_dir():
                def chroot_tree() -> None:
                    os.chroot(str(rootfs))
                    os.chdir("/")
                self.lock = lock
                return chroot_tree
            image = get_image(self.ctx, c.image)
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        self.lock = lock
        lowers = lower_dirs(store, image)
        if not image.builtin:
            lowers.insert(0, str(store.container_path(c.id, "init")))
        opts = overlay_options(str(upper), str(store.container_path(c.id, "work")), lowers, rootless=False)
        merged = str(store.container_path(c.id, "merged"))

        def mount_and_chroot() -> None:
            proc.unshare(["mnt"])
            proc.mount("none", "/", None, proc.MS["rec"] | proc.MS["private"])
            proc.mount("overlay", merged, "overlay", 0, opts)
            os.chroot(merged)
            os.chdir("/")
        return mount_and_chroot


__all__ = ["CopyError", "CopyReport", "copy", "place", "split_arg"]
