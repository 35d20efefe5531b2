"""Plain records: what the store keeps and the engine returns. No I/O here.

Records round-trip through JSON with `to_dict()` / `from_dict()`; keys are stable and times
are ISO-8601 UTC strings, so `--format json` can print them unchanged.
"""

from __future__ import annotations

import time
from enum import Enum

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any

# Plain classes, not dataclasses: `dataclasses` imports inspect (and with it ast, dis and
# tokenize), and generating each class costs more again — about 10 ms of every `ps`, `diff`
# or `run` (docs/performance.md). `Record` gives what those commands relied on: a
# constructor with the same keyword defaults (written out), equality and repr by field, and
# `to_dict()` with the keys and values `dataclasses.asdict` gave, so records on disk and
# `--format json` are unchanged (tests/test_records.py).


class Record:
    """Fields named in `_fields`, in constructor order (also `__slots__` where no caller needs
    the instance's `__dict__`)."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {f: _plain(getattr(self, f)) for f in self._fields}

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dataclass with eq

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"


def _plain(value: Any) -> Any:
    """`value` as `dataclasses.asdict` copies it: records as dicts, containers copied."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


# the default of a field whose default is made anew for each record (an empty list, the time
# now): not None, which a record may hold
_NEW: Any = object()


def known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The fields of record `d` that `cls` has: a record a newer ctr wrote, with fields this one
    does not know, still reads (what it does not know is dropped if it rewrites the record)."""
    if not isinstance(d, dict):
        raise TypeError(f"a JSON {type(d).__name__}, not an object")
    return {k: v for k, v in d.items() if k in cls._fields}


def replace(record: Any, **changes: Any) -> Any:
    """A copy of `record` with some fields changed (as `dataclasses.replace`)."""
    return type(record)(**{f: changes[f] if f in changes else getattr(record, f) for f in record._fields})


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value


class Isolation(StrEnum):
    PROCESS = "process"
    HYPERV = "hyperv"


class State(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    REMOVING = "removing"


HOST_IMAGE = "host"


def now_iso() -> str:
    """The time now as `2024-05-01T12:00:00.123456Z` (what datetime's isoformat gave, without
    importing datetime on every command that writes a record)."""
    ns = time.time_ns()
    secs, us = divmod(ns // 1000, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{us:06d}Z"


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Mount(Record):
    """A volume: host `source` bound at `target` inside the container."""

    __slots__ = _fields = ("source", "target", "readonly")

    def __init__(self, source: str, target: str, readonly: bool = False):
        self.source, self.target, self.readonly = source, target, readonly


class ImageConfig(Record):
    """Run defaults carried by an image (as in an OCI image config). No `__slots__`: inspect
    views print its `__dict__`."""

    _fields = ("env", "cmd", "entrypoint", "workdir", "user")

    def __init__(self, env: list[str] = _NEW, cmd: list[str] = _NEW,
                 entrypoint: list[str] = _NEW, workdir: str = "", user: str = ""):
        self.env = [] if env is _NEW else env
        self.cmd = [] if cmd is _NEW else cmd
        self.entrypoint = [] if entrypoint is _NEW else entrypoint
        self.workdir = workdir
        self.user = user


class Image(Record):
    __slots__ = _fields = ("id", "names", "layers", "config", "created", "size", "source", "builtin",
                           "parent", "author", "comment")

    def __init__(self, id: str, names: list[str], layers: list[str], config: ImageConfig = _NEW,
                 created: str = _NEW, size: int = 0, source: str = "", builtin: bool = False,
                 parent: str = "", author: str = "", comment: str = ""):
        self.id = id  # "sha256:<hex>"
        self.names = names  # "name:tag"
        self.layers = layers  # diff ids ("sha256:<hex>"), bottom first
        self.config = ImageConfig() if config is _NEW else config
        self.created = now_iso() if created is _NEW else created
        self.size = size
        self.source = source
        self.builtin = builtin
        self.parent = parent  # the image a committed image was made on (its id)
        self.author = author  # `commit --author`, or the imported config's author
        self.comment = comment  # `commit --message`

    @property
    def short_id(self) -> str:
        return short(self.id)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Image":
        d = known(cls, d)
        d["config"] = ImageConfig(**known(ImageConfig, d.get("config", {})))
        return cls(**d)


class RunConfig(Record):
    __slots__ = _fields = ("command", "env", "workdir", "user", "mounts", "interactive", "tty", "hostname",
                           "memory", "cpus", "labels", "read_only")

    def __init__(self, command: list[str], env: list[str] = _NEW, workdir: str = "", user: str = "",
                 mounts: list[Mount] = _NEW, interactive: bool = False, tty: bool = False,
                 hostname: str = "", memory: int | None = None, cpus: float | None = None,
                 labels: dict[str, str] = _NEW, read_only: bool = False):
        self.command = command
        self.env = [] if env is _NEW else env
        self.workdir = workdir
        self.user = user
        self.mounts = [] if mounts is _NEW else mounts
        self.interactive = interactive
        self.tty = tty
        self.hostname = hostname
        self.memory = memory  # bytes
        self.cpus = cpus
        self.labels = {} if labels is _NEW else labels  # docker's --label: KEY -> VALUE
        self.read_only = read_only  # docker's --read-only: the root filesystem mounted read-only

    def to_dict(self) -> dict[str, Any]:
        """Without the fields added since (labels, read_only) while they have their defaults: the
        record is then byte for byte what ctr wrote before they existed, and an older ctr still
        reads it."""
        d = super().to_dict()
        for name in ("labels", "read_only"):
            if not d[name]:
                del d[name]
        return d

    def has_label(self, spec: str) -> bool:
        """`KEY` (any value) or `KEY=VALUE`, as docker's `--filter label=…`."""
        key, sep, value = spec.partition("=")
        return key in self.labels and (not sep or self.labels[key] == value)


class Container(Record):
    __slots__ = _fields = ("id", "name", "image", "image_name", "isolation", "driver", "config", "state",
                           "created", "started", "finished", "pid", "pid_start", "monitor_pid",
                           "monitor_start", "exit_code", "error", "auto_remove", "emulated", "notes")

    def __init__(self, id: str, name: str, image: str, image_name: str, isolation: str, driver: str,
                 config: RunConfig, state: str = State.CREATED.value, created: str = _NEW,
                 started: str | None = None, finished: str | None = None, pid: int | None = None,
                 pid_start: int | None = None, monitor_pid: int | None = None,
                 monitor_start: int | None = None, exit_code: int | None = None, error: str = "",
                 auto_remove: bool = False, emulated: bool = False, notes: list[str] = _NEW):
        self.id = id  # 64 hex chars
        self.name = name
        self.image = image  # image id
        self.image_name = image_name  # what the user asked for
        self.isolation = isolation
        self.driver = driver
        self.config = config
        self.state = state
        self.created = now_iso() if created is _NEW else created
        self.started = started
        self.finished = finished
        self.pid = pid
        self.pid_start = pid_start  # /proc/<pid>/stat start time, guards against pid reuse
        self.monitor_pid = monitor_pid  # detached (`run -d`, `start`): the monitor supervising pid
        self.monitor_start = monitor_start  # the monitor's start time, as pid_start
        self.exit_code = exit_code
        self.error = error
        self.auto_remove = auto_remove
        self.emulated = emulated  # the driver emulates its isolation level
        self.notes = [] if notes is _NEW else notes

    @property
    def short_id(self) -> str:
        return short(self.id)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Container":
        d = known(cls, d)
        cfg = known(RunConfig, d["config"])
        cfg["mounts"] = [Mount(**known(Mount, m)) for m in cfg.get("mounts", [])]
        d["config"] = RunConfig(**cfg)
        return cls(**d)


def short(ident: str) -> str:
    """12-character display form of an id (`sha256:` prefix dropped)."""
    return ident.split(":", 1)[-1][:12]


# ----------------------------------------------------------------------------- VMs
class VMState(StrEnum):
    """Hyper-V's states. `Saved` (memory kept on disk) is not produced by any driver yet."""

    OFF = "Off"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    SAVED = "Saved"


class Checkpoint(Record):
    __slots__ = _fields = ("name", "created", "size", "method")

    def __init__(self, name: str, created: str = _NEW, size: int = 0, method: str = ""):
        self.name = name
        self.created = now_iso() if created is _NEW else created
        self.size = size  # bytes the copy takes on disk (0 when it shares blocks by reflink)
        self.method = method  # "reflink" or "copy"


class VM(Record):
    """A full virtual machine: its own copy of an image as its disk, a hardware spec, a state."""

    __slots__ = _fields = ("name", "id", "driver", "image", "image_name", "cpus", "memory", "disk_size",
                           "env", "workdir", "kernel", "kernel_release", "state", "created", "started",
                           "stopped", "pid", "pid_start", "accel", "guest_kernel", "emulated", "disk_used",
                           "error", "checkpoints")

    def __init__(self, name: str, id: str, driver: str, image: str, image_name: str, cpus: int, memory: int,
                 disk_size: int, env: list[str] = _NEW, workdir: str = "/", kernel: str = "",
                 kernel_release: str = "", state: str = VMState.OFF.value, created: str = _NEW,
                 started: str | None = None, stopped: str | None = None, pid: int | None = None,
                 pid_start: int | None = None, accel: str = "", guest_kernel: str = "", emulated: bool = False,
                 disk_used: int = 0, error: str = "", checkpoints: list[Checkpoint] = _NEW):
        self.name = name
        self.id = id  # 64 hex chars; names its cgroup (sandbox) and nothing else
        self.driver = driver  # qemu | sandbox
        self.image = image  # the image id the disk was made from (the image may since be gone)
        self.image_name = image_name  # what the user asked for
        self.cpus = cpus
        self.memory = memory  # bytes
        self.disk_size = disk_size  # bytes: the disk's virtual size (sandbox: the space it was checked against)
        self.env = [] if env is _NEW else env  # the image's environment, for exec
        self.workdir = workdir  # the image's working directory, for exec
        self.kernel = kernel  # qemu: the kernel booted (an imported kernel directory or an image file)
        self.kernel_release = kernel_release
        self.state = state
        self.created = now_iso() if created is _NEW else created
        self.started = started
        self.stopped = stopped
        self.pid = pid  # qemu: the qemu process; sandbox: the relay outside its pid namespace
        self.pid_start = pid_start  # /proc/<pid>/stat start time, guards against pid reuse
        self.accel = accel  # qemu: kvm or tcg
        self.guest_kernel = guest_kernel  # `uname -r` reported by the running guest
        self.emulated = emulated  # the driver emulates a VM (shares the host kernel)
        self.disk_used = disk_used  # bytes the disk took on the host when it was made
        self.error = error  # why it last stopped unexpectedly, or failed to start
        self.checkpoints = [] if checkpoints is _NEW else checkpoints

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VM":
        d = known(cls, d)
        d["checkpoints"] = [Checkpoint(**known(Checkpoint, c)) for c in d.get("checkpoints", [])]
        return cls(**d)
