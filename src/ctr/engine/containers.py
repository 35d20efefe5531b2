"""Container use cases: run, ps, inspect, diff, rm."""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path

from ctr import faults
from ctr.engine.context import Context
from ctr.engine.refs import resolve
from ctr.errors import Conflict, CtrError, DriverError, InvalidArgument, NotFound
from ctr.models import Container, Image, Mount, Record, RunConfig, State, now_iso

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from ctr.changes import Change
    from ctr.drivers import Driver

# drivers, images, changes, launch and secrets are imported where they are used: `ps` and
# `rm` need none of them, and every command pays for its imports (docs/performance.md)

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_ADJ = ("brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nifty", "proud", "quirky", "sharp", "tender", "vivid", "witty", "zen", "bold", "cool")
_NOUN = ("babbage", "curie", "darwin", "euler", "fermi", "gauss", "hopper", "kepler", "lovelace",
         "meitner", "noether", "pascal", "ritchie", "shannon", "turing", "wiles", "yonath", "hodgkin")


# ----------------------------------------------------------------------------- records
def _load(ctx: Context, cid: str) -> Container | None:
    data = ctx.store.read_container(cid)
    if data is None:
        return None
    try:
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        return Container.from_dict(data)
    except (KeyError, TypeError, ValueError) as e:
        raise ctx.store.corrupt_container(cid, f"not a container record ({type(e).__name__}: {e})") from None


def update(ctx: Context, cid: str, fn: Callable[[Container], None], durable: bool = True) -> Container | None:
    """Read-modify-write of one record under the store lock; None if it is gone. Not
    `durable`: no fsync (a record deleted right after, see store/records.write_json)."""
    with ctx.store.locked():
        c = _load(ctx, cid)
        if c is None:
            return None
        fn(c)
        try:
            ctx.store.write_container(cid, c.to_dict(), durable)
        except FileNotFoundError:
            return None
        return c


def reconcile(ctx: Context, c: Container) -> Container:
    """A container recorded as running whose process is gone is recorded as exited."""
    if c.state != State.RUNNING.value:
        return c  # (without importing proc: `ps` and `diff` of stopped containers need none of it)
    from ctr import proc

    if c.state == State.RUNNING.value and c.monitor_pid is not None:
        # detached: its monitor records the exit; only a vanished monitor needs reconciling
        if proc.pid_alive(c.monitor_pid, c.monitor_start):
            return c
        from ctr.engine.lifecycle import reconcile_orphan

        return reconcile_orphan(ctx, c)
    if c.state == State.RUNNING.value and not proc.pid_alive(c.pid, c.pid_start):
        def mark(x: Container) -> None:
            if x.state == State.RUNNING.value and not proc.pid_alive(x.pid, x.pid_start):
                x.state = State.EXITED.value
                x.finished = x.finished or now_iso()
                if x.exit_code is None:
                    x.error = x.error or "the container's process ended without ctr recording its exit"
        try:
            return update(ctx, c.id, mark) or c
        except OSError:  # the record cannot be written (a full disk): show it reconciled anyway
            import copy

            shown = copy.deepcopy(c)
            mark(shown)
            return shown
    return c


def list_containers(ctx: Context, all: bool = True) -> list[Container]:
    out = []
    for cid in ctx.store.container_ids():
        c = _load(ctx, cid)
        if c is None:
            continue
        c = reconcile(ctx, c)
        if all or c.state == State.RUNNING.value:
            out.append(c)
    out.sort(key=lambda c: c.created, reverse=True)
    return out


def get_container(ctx: Context, ref: str) -> Container:
    bare = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
    if len(bare) == 64 and all(ch in "0123456789abcdef" for ch in bare):
        # a full id is matched first anyway (engine/refs.py): read that one record, not them all
        c = _load(ctx, bare)
        if c is not None:
            return reconcile(ctx, c)
    return resolve(ref, list_containers(ctx), lambda c: c.id, lambda c: [c.name], "container")


def latest(ctx: Context) -> Container:
    cs = list_containers(ctx)
    if not cs:
        raise NotFound("no containers to choose the latest from")
    return cs[0]


# ----------------------------------------------------------------------------- run
class RunOptions(Record):
    __slots__ = _fields = ("image", "command", "name", "isolation", "driver", "env", "env_files", "workdir",
                           "volumes", "user", "interactive", "tty", "remove", "hostname", "memory", "cpus",
                           "entrypoint", "labels", "read_only")

    def __init__(self, image: str, command: list[str], name: str | None = None, isolation: str | None = None,
                 driver: str | None = None, env: list[str] | None = None, env_files: list[str] | None = None,
                 workdir: str | None = None, volumes: list[str] | None = None, user: str | None = None,
                 interactive: bool = False, tty: bool = False, remove: bool = False,
                 hostname: str | None = None, memory: int | None = None, cpus: float | None = None,
                 entrypoint: str | None = None, labels: list[str] | None = None, read_only: bool = False):
        self.image = image
        self.command = command
        self.name = name
        self.isolation = isolation
        self.driver = driver
        self.env = [] if env is None else env
        self.env_files = [] if env_files is None else env_files
        self.workdir = workdir
        self.volumes = [] if volumes is None else volumes
        self.user = user
        self.interactive = interactive
        self.tty = tty
        self.remove = remove
        self.hostname = hostname
        self.memory = memory
        self.cpus = cpus
        self.entrypoint = entrypoint  # None: the image's; "" clears it; a command or a JSON array
        self.labels = [] if labels is None else labels  # KEY=VALUE or KEY
        self.read_only = read_only


def parse_volume(spec: str) -> Mount:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidArgument(f"invalid volume {spec!r}", hint="use -v SRC:DST[:ro|rw] with absolute paths")
    src, dst = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidArgument(f"invalid volume mode {mode!r} in {spec!r}", hint="use ro or rw")
    if not os.path.isabs(dst) or ".." in dst.split("/"):
        raise InvalidArgument(f"volume target {dst!r} must be an absolute path without '..'")
    src = os.path.abspath(src)
    if not os.path.exists(src):
        raise NotFound(f"volume source {src} does not exist", hint="create it first, or fix the path")
    return Mount(source=src, target=os.path.normpath(dst), readonly=mode == "ro")


def parse_env(items: list[str], files: list[str]) -> list[str]:
    out = []
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise NotFound(f"cannot read env file {path}: {e.strerror}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            out.append(_env_item(line, f"{path}:{n}"))
    for item in items:
        out.append(_env_item(item, "-e"))
    return [x for x in out if x is not None]


def _env_item(item: str, where: str) -> str | None:
    key, sep, value = item.partition("=")
    if not key or any(c.isspace() for c in key):
        raise InvalidArgument(f"invalid environment variable {item!r} ({where})", hint="use KEY=VALUE")
    if not sep:  # docker: KEY alone takes the value from ctr's own environment
        return f"{key}={os.environ[key]}" if key in os.environ else None
    return item


def parse_labels(items: list[str]) -> dict[str, str]:
    """`--label KEY=VALUE` (or KEY: an empty value), as docker's; a later one wins."""
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or any(c.isspace() for c in key):
            raise InvalidArgument(f"invalid label {item!r}", hint="use --label KEY=VALUE")
        out[key] = value
    return out


def parse_entrypoint(text: str) -> list[str]:
    """`--entrypoint`: "" clears the image's; a JSON array is the argv (podman's form); any
    other text is one program (docker's form)."""
    if not text.lstrip().startswith("["):
        return [text] if text else []
    import json

    try:
        argv = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"invalid --entrypoint {text!r}: {e}",
                              hint='give a program, or a JSON array such as \'["/bin/sh", "-c"]\'') from None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise InvalidArgument(f"invalid --entrypoint {text!r}: a JSON array of strings is needed")
    return argv


def run_command(config, opts: RunOptions) -> list[str]:
    """The argv a container runs, by docker's rules: COMMAND replaces the image's CMD and follows
    its ENTRYPOINT; --entrypoint replaces the ENTRYPOINT and drops the image's CMD."""
    if opts.entrypoint is not None:
        command = parse_entrypoint(opts.entrypoint) + list(opts.command)
        if not command:
            raise InvalidArgument("no command given: --entrypoint '' clears the image's entrypoint and "
                                  "its default command", hint=f"ctr run --entrypoint '' {opts.image} COMMAND [ARG...]")
        return command
    if opts.command:
        return list(config.entrypoint) + list(opts.command)
    command = list(config.entrypoint) + list(config.cmd)
    if not command:
        raise InvalidArgument(f"no command given and image {opts.image} has no default command",
                              hint=f"ctr run {opts.image} COMMAND [ARG...]")
    return command


def _pick(words: tuple[str, ...]) -> str:
    # os.urandom, as secrets.choice uses (secrets imports hashlib, hmac and random: ~3 ms of
    # every `run` without --name); the modulo bias of 2**32 over ~20 words is immaterial here
    return words[int.from_bytes(os.urandom(4), "little") % len(words)]


def _generate_name(taken: set[str]) -> str:
    for _ in range(100):
        n = f"{_pick(_ADJ)}_{_pick(_NOUN)}"
        if n not in taken:
            return n
    return f"ctr_{os.urandom(4).hex()}"


def create(ctx: Context, opts: RunOptions) -> tuple[Container, Image, Driver]:
    """Validate everything, then build the container under tmp/ and install its record."""
    from ctr.drivers import select_driver
    from ctr.engine.images import get_image
    from ctr.launch import container_env

    if opts.name is not None and not NAME_RE.match(opts.name):
        raise InvalidArgument(f"invalid container name {opts.name!r}",
                              hint="names start with a letter or digit, then [a-zA-Z0-9_.-]")
    image = get_image(ctx, opts.image)
    command = run_command(image.config, opts)
    if opts.workdir is not None and not opts.workdir.startswith("/"):
        raise InvalidArgument(f"working directory {opts.workdir!r} must be absolute")
    mounts = [parse_volume(v) for v in opts.volumes]
    user_env = parse_env(opts.env, opts.env_files)
    labels = parse_labels(opts.labels)
    isolation = opts.isolation or ctx.config.isolation or "process"
    driver = select_driver(isolation, opts.driver, ctx.config.drivers.get(isolation))
    if opts.read_only and not driver.read_only_root:
        raise DriverError(f"--read-only is not supported on the {driver.name} driver yet",
                          hint="use --driver sandbox for a hyperv container with a read-only root")
    memory, cpus = opts.memory, opts.cpus
    if getattr(driver, "default_memory", None):  # sized like a VM: flag, else config, else driver
        from ctr.units import parse_size

        memory = memory or (parse_size(ctx.config.memory, "memory") if ctx.config.memory
                            else driver.default_memory)  # type: ignore[attr-defined]
        cpus = cpus or ctx.config.cpus or getattr(driver, "default_cpus", None)
    cid = os.urandom(32).hex()  # as secrets.token_hex(32)
    hostname = opts.hostname or cid[:12]
    env = container_env(image.config.env, user_env, hostname, opts.tty)
    config = RunConfig(
        command=command,
        env=[f"{k}={v}" for k, v in env.items()],
        workdir=opts.workdir or image.config.workdir or "/",
        user=opts.user if opts.user is not None else image.config.user,
        mounts=mounts,
        interactive=opts.interactive,
        tty=opts.tty,
        hostname=hostname,
        memory=memory,
        cpus=cpus,
        labels=labels,
        read_only=opts.read_only,
    )
    c = Container(
        id=cid, name=opts.name or "", image=image.id, image_name=opts.image,
        isolation=isolation, driver=driver.name, config=config, auto_remove=opts.remove,
        emulated=driver.emulated,
    )
    store = ctx.store
    built = store.new_tmp("create")
    try:
        driver.prepare(store, built, c, image)
        with store.locked():
            taken = {x.name for x in _all_records(ctx)}
            if opts.name is None:
                c.name = _generate_name(taken)
            elif opts.name in taken:
                raise Conflict(f"the container name {opts.name!r} is already in use",
                               hint=f"remove it with `ctr rm {opts.name}`, or choose another --name")
            from ctr.store.records import write_json

            write_json(built / "container.json", c.to_dict())
            store.install_container(cid, built)
    except BaseException:
        from ctr.store.store import remove_path

        remove_path(built)
        raise
    faults.point("run.created")
    return c, image, driver


def rename(ctx: Context, ref: str, new_name: str) -> Container:
    """`rename REF NEW_NAME` (docker's): the name is checked and taken under the store lock,
    as `run --name` takes one; running or not, the container keeps everything else."""
    if not NAME_RE.match(new_name):
        raise InvalidArgument(f"invalid container name {new_name!r}",
                              hint="names start with a letter or digit, then [a-zA-Z0-9_.-]")
    c = get_container(ctx, ref)
    if c.name == new_name:
        raise InvalidArgument(f"container {ref} is already named {new_name!r}")
    with ctx.store.locked():
        holder = next((x for x in _all_records(ctx) if x.name == new_name), None)
        if holder is not None:
            raise Conflict(f"the container name {new_name!r} is already in use by {holder.id[:12]}",
                           hint=f"remove it with `ctr rm {new_name}`, or choose another name")
        now = _load(ctx, c.id)
        if now is None:
            raise NotFound(f"no such container: {ref}")
        now.name = new_name
        ctx.store.write_container(c.id, now.to_dict())
    return now


def _all_records(ctx: Context) -> list[Container]:
    out = []
    for cid in ctx.store.container_ids():
        c = _load(ctx, cid)
        if c is not None:
            out.append(c)
    return out


def run(ctx: Context, opts: RunOptions) -> tuple[Container, int]:
    """Create and run in the foreground; returns the record and the workload's exit code."""
    c, image, driver = create(ctx, opts)
    return c, start_foreground(ctx, c, image, driver)


def start_foreground(ctx: Context, c: Container, image: Image, driver: Driver) -> int:
    from ctr import proc

    def on_start(started: "proc.Started") -> None:
        def mark(x: Container) -> None:
            x.state = State.RUNNING.value
            x.pid, x.pid_start = started.pid, started.start_time
            x.started, x.finished, x.exit_code, x.error = now_iso(), None, None, ""
        faults.point("run.started")
        update(ctx, c.id, mark)
        faults.point("run.recorded")

    code: int | None = None
    error = ""
    try:
        code = driver.run(ctx.store, c, image, on_start=on_start)
        return code
    except CtrError as e:
        code = getattr(e, "exit_code", 125)
        code = code if code in (125, 126, 127) else 125
        e.exit_code = code
        error = e.message
        raise
    finally:
        def done(x: Container) -> None:
            x.state = State.EXITED.value
            x.exit_code = code if code is not None else x.exit_code
            x.finished = now_iso()
            x.error = error
            x.started = x.started or x.finished
        try:
            update(ctx, c.id, done, durable=not c.auto_remove)  # --rm: deleted right after
        except OSError as e:
            if not c.auto_remove:  # (with --rm the record goes anyway)
                failed = CtrError(
                    f"container {c.name} exited"
                    + (f" with code {code}" if code is not None else "")
                    + f", but ctr cannot record it: {e.strerror or e}",
                    hint=f"free space in {ctx.store.root}; `ctr rm -f {c.name}` removes the container")
                failed.exit_code = 125
                raise failed from None
        if c.auto_remove:
            remove_containers(ctx, [c.id], force=True)


# ----------------------------------------------------------------------------- diff / inspect
def diff(ctx: Context, ref: str) -> list[Change]:
    from ctr.drivers import get_driver

    c = get_container(ctx, ref)
    image = _image_of(ctx, c)
    changes = get_driver(c.isolation, c.driver).changes(ctx.store, c, image)
    if ctx.config.diff_ignore:
        import fnmatch

        changes = [ch for ch in changes
                   if not any(fnmatch.fnmatch(ch.path, pat) for pat in ctx.config.diff_ignore)]
    return changes


def _image_of(ctx: Context, c: Container) -> Image:
    """The image `c` was made from: its record, read by the full id the container records
    (without importing engine/images, which `diff` needs no more of); else the full lookup
    (the built-in host image has no record; a missing image is its error)."""
    iid = c.image
    if iid.startswith("sha256:") and len(iid) == 71 and all(ch in "0123456789abcdef" for ch in iid[7:]):
        data = ctx.store.read_image(iid)
        if data is not None:
            return Image.from_dict(data)
    from ctr.engine.images import get_image

    return get_image(ctx, c.image)


def is_paused(c: Container) -> bool:
    """Whether the running container is paused (`ctr pause`): the kernel's word, not a record's."""
    if c.state != State.RUNNING.value:
        return False
    from ctr import freezer

    return freezer.is_frozen(c.id)


def inspect(ctx: Context, ref: str) -> dict:
    c = get_container(ctx, ref)
    d = c.to_dict()
    if is_paused(c):
        d["paused"] = True
    d["paths"] = {"dir": str(ctx.store.container_dir(c.id))}
    from ctr.drivers import get_driver

    try:
        drv = get_driver(c.isolation, c.driver)
        d["driver_info"] = {"summary": drv.summary, "emulated": drv.emulated,
                            "cannot_capture": list(drv.cannot_capture)}
        runtime = getattr(drv, "runtime_info", None)  # how the driver confined this container
        if runtime is not None:
            d["driver_info"].update(runtime(ctx.store, c))
    except CtrError:
        pass
    return d


# ----------------------------------------------------------------------------- rm
class RemoveResult(Record):
    __slots__ = _fields = ("ref", "id", "error")

    def __init__(self, ref: str, id: str | None = None, error: CtrError | None = None):
        self.ref, self.id, self.error = ref, id, error


def remove_containers(ctx: Context, refs: list[str], force: bool = False) -> list[RemoveResult]:
    """Remove each container; one result per reference, carrying on after a failure."""
    results = []
    for ref in refs:
        try:
            results.append(RemoveResult(ref, _remove_one(ctx, ref, force)))
        except CtrError as e:
            results.append(RemoveResult(ref, None, e))
        except OSError as e:
            results.append(RemoveResult(ref, None, CtrError(f"cannot remove container {ref}: {e}")))
    return results


def _remove_one(ctx: Context, ref: str, force: bool) -> str:
    from ctr import proc
    from ctr.errors import StoreError

    try:
        c = get_container(ctx, ref)
    except StoreError:
        # `rm -f FULL-ID` is the way out for a container whose record cannot be read
        if force and _unreadable(ctx, ref):
            ctx.store.discard_unreadable_container(ref)
            return ref
        raise
    if c.state == State.RUNNING.value:
        if not force:
            raise Conflict(f"cannot remove running container {ref}",
                           hint="stop it first, or use `ctr rm -f`")
        from ctr import freezer

        try:
            freezer.thaw(c.id)  # a paused container takes no signal, SIGKILL included
        except OSError:
            pass  # then the kill below says what is wrong
        _kill_and_wait(c.pid, c.pid_start)
    from ctr.engine.lifecycle import terminate

    terminate(ctx, c)  # whatever else still runs in it, and its monitor
    try:
        # not fsynced: the directory is renamed away and deleted next; after a crash in between,
        # `rm -f` (or `system check --repair`) finishes the removal either way
        if update(ctx, c.id, lambda x: setattr(x, "state", State.REMOVING.value), durable=False) is None:
            return c.id  # someone else removed it meanwhile
    except OSError as e:
        # a full disk cannot take the new record; removing is what frees space, so go on
        # without the mark (it only makes a crash between here and the deletion visible)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
    faults.point("rm.marked")
    from ctr.drivers import get_driver

    try:
        get_driver(c.isolation, c.driver).cleanup(ctx.store, c)
    except CtrError:
        pass
    from ctr import freezer

    try:
        freezer.remove(c.id)  # the group `pause` made, if any
    except OSError:
        pass
    ctx.store.discard_container(c.id)
    return c.id


def _unreadable(ctx: Context, ref: str) -> bool:
    """`ref` is the full id of a container whose own record cannot be read."""
    from ctr.errors import StoreError

    if len(ref) != 64 or any(ch not in "0123456789abcdef" for ch in ref):
        return False
    if not ctx.store.container_dir(ref).is_dir():
        return False
    try:
        _load(ctx, ref)
    except StoreError:
        return True
    return False


def _kill_and_wait(pid: int | None, start: int | None, timeout: float = 10.0) -> None:
    from ctr import proc

    if not proc.pid_alive(pid, start):
        return
    try:
        import signal  # (here: its enum costs ~0.5 ms of every command that imports this module)

        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while proc.pid_alive(pid, start) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # type: ignore[arg-type]
        except ChildProcessError:
            pass
        time.sleep(0.01)
