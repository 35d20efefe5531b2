"""Plain records: what the store keeps and the engine returns. No I/O here.

Records round-trip through JSON with `to_dict()` / `from_dict()`; keys are stable and times
are ISO-8601 UTC strings, so `--format json` can print them unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any


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
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Mount:
    """A volume: host `source` bound at `target` inside the container."""

    source: str
    target: str
    readonly: bool = False


@dataclass
class ImageConfig:
    """Run defaults carried by an image (as in an OCI image config)."""

    env: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""


@dataclass
class Image:
    id: str  # "sha256:<hex>"
    names: list[str]  # "name:tag"
    layers: list[str]  # diff ids ("sha256:<hex>"), bottom first
    config: ImageConfig = field(default_factory=ImageConfig)
    created: str = field(default_factory=now_iso)
    size: int = 0
    source: str = ""
    builtin: bool = False
    parent: str = ""  # the image a committed image was made on (its id)
    author: str = ""  # `commit --author`, or the imported config's author
    comment: str = ""  # `commit --message`

    @property
    def short_id(self) -> str:
        return short(self.id)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Image":
        d = dict(d)
        d["config"] = ImageConfig(**d.get("config", {}))
        return cls(**d)


@dataclass
class RunConfig:
    command: list[str]
    env: list[str] = field(default_factory=list)
    workdir: str = ""
    user: str = ""
    mounts: list[Mount] = field(default_factory=list)
    interactive: bool = False
    tty: bool = False
    hostname: str = ""
    memory: int | None = None  # bytes
    cpus: float | None = None


@dataclass
class Container:
    id: str  # 64 hex chars
    name: str
    image: str  # image id
    image_name: str  # what the user asked for
    isolation: str
    driver: str
    config: RunConfig
    state: str = State.CREATED.value
    created: str = field(default_factory=now_iso)
    started: str | None = None
    finished: str | None = None
    pid: int | None = None
    pid_start: int | None = None  # /proc/<pid>/stat start time, guards against pid reuse
    monitor_pid: int | None = None  # detached (`run -d`, `start`): the monitor supervising pid
    monitor_start: int | None = None  # the monitor's start time, as pid_start
    exit_code: int | None = None
    error: str = ""
    auto_remove: bool = False
    emulated: bool = False  # the driver emulates its isolation level
    notes: list[str] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return short(self.id)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Container":
        d = dict(d)
        cfg = dict(d["config"])
        cfg["mounts"] = [Mount(**m) for m in cfg.get("mounts", [])]
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


@dataclass
class Checkpoint:
    name: str
    created: str = field(default_factory=now_iso)
    size: int = 0  # bytes the copy takes on disk (0 when it shares blocks by reflink)
    method: str = ""  # "reflink" or "copy"


@dataclass
class VM:
    """A full virtual machine: its own copy of an image as its disk, a hardware spec, a state."""

    name: str
    id: str  # 64 hex chars; names its cgroup (sandbox) and nothing else
    driver: str  # qemu | sandbox
    image: str  # the image id the disk was made from (the image may since be gone)
    image_name: str  # what the user asked for
    cpus: int
    memory: int  # bytes
    disk_size: int  # bytes: the disk's virtual size (sandbox: the space it was checked against)
    env: list[str] = field(default_factory=list)  # the image's environment, for exec
    workdir: str = "/"  # the image's working directory, for exec
    kernel: str = ""  # qemu: the kernel booted (an imported kernel directory or an image file)
    kernel_release: str = ""
    state: str = VMState.OFF.value
    created: str = field(default_factory=now_iso)
    started: str | None = None
    stopped: str | None = None
    pid: int | None = None  # qemu: the qemu process; sandbox: the relay outside its pid namespace
    pid_start: int | None = None  # /proc/<pid>/stat start time, guards against pid reuse
    accel: str = ""  # qemu: kvm or tcg
    guest_kernel: str = ""  # `uname -r` reported by the running guest
    emulated: bool = False  # the driver emulates a VM (shares the host kernel)
    disk_used: int = 0  # bytes the disk took on the host when it was made
    error: str = ""  # why it last stopped unexpectedly, or failed to start
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VM":
        d = dict(d)
        d["checkpoints"] = [Checkpoint(**c) for c in d.get("checkpoints", [])]
        return cls(**d)
