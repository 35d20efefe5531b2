"""User configuration: `$CTR_CONFIG`, else config.yaml in the platform config dir.

Keys (all optional):

    isolation: process            # default --isolation
    drivers:                      # driver per isolation level
      process: overlay
      hyperv: microvm
      vm: qemu
    kernel: /path/to/vmlinuz      # guest kernel for the qemu drivers
    qemu: /usr/bin/qemu-system-x86_64
    memory: 512m                  # default utility-VM / VM memory
    cpus: 1
    hyperv_runtime_class: kata    # runtimeClassName emitted by `ctr kube generate`
    diff_ignore: []               # glob patterns `ctr diff` leaves out

yaml is imported only when a config file exists.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ctr.errors import CtrError
from ctr.models import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KNOWN_KEYS = {
    "isolation", "drivers", "kernel", "qemu", "memory", "cpus",
    "hyperv_runtime_class", "diff_ignore",
}


class Config(Record):
    __slots__ = _fields = ("isolation", "drivers", "kernel", "qemu", "memory", "cpus", "hyperv_runtime_class",
                           "diff_ignore", "path")

    def __init__(self, isolation: str = "process", drivers: dict[str, str] | None = None, kernel: str | None = None,
                 qemu: str | None = None, memory: str | None = None, cpus: float | None = None,
                 hyperv_runtime_class: str = "kata", diff_ignore: list[str] | None = None,
                 path: Path | None = None):
        self.isolation = isolation
        self.drivers = {} if drivers is None else drivers
        self.kernel = kernel
        self.qemu = qemu
        self.memory = memory
        self.cpus = cpus
        self.hyperv_runtime_class = hyperv_runtime_class
        self.diff_ignore = [] if diff_ignore is None else diff_ignore
        self.path = path


def config_path() -> Path:
    env = os.environ.get("CTR_CONFIG")
    if env:
        return Path(env)
    return user_dir("config") / "config.yaml"


_XDG = {"data": ("XDG_DATA_HOME", ".local/share"), "config": ("XDG_CONFIG_HOME", ".config")}


def user_dir(kind: str) -> Path:
    """platformdirs' user data (`kind="data"`) or config (`"config"`) directory for ctr.

    On Linux with an absolute $XDG_DATA_HOME/$XDG_CONFIG_HOME, or none and an absolute $HOME,
    the answer is written out here — what platformdirs answers there — because importing
    platformdirs costs 20 ms and more, on every command that runs without $CTR_ROOT or
    $CTR_CONFIG (docs/performance.md). Anything else asks platformdirs."""
    var, default = _XDG[kind]
    if sys.platform.startswith("linux"):
        xdg, home = os.environ.get(var, ""), os.environ.get("HOME", "")
        if xdg.startswith("/"):
            return Path(xdg) / "ctr"
        if not xdg.strip() and home.startswith("/"):
            return Path(home) / default / "ctr"
    import platformdirs

    where = platformdirs.user_data_dir if kind == "data" else platformdirs.user_config_dir
    return Path(where("ctr", appauthor=False))


def load_config(path: Path | None = None) -> Config:
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Config()
    except OSError as e:
        raise CtrError(f"cannot read config {path}: {e.strerror}") from e
    if not text.strip():  # what YAML reads as nothing, without importing yaml (~10 ms)
        return Config(path=path)
    import yaml

    try:
        data: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise CtrError(f"config {path} is not valid YAML: {e}".splitlines()[0]) from e
    if not isinstance(data, dict):
        raise CtrError(f"config {path} must be a mapping of keys to values")
    unknown = set(data) - KNOWN_KEYS
    if unknown:
        raise CtrError(
            f"config {path}: unknown key {sorted(unknown)[0]!r}",
            hint="known keys: " + ", ".join(sorted(KNOWN_KEYS)),
        )
    drivers = data.get("drivers") or {}
    if not isinstance(drivers, dict):
        raise CtrError(f"config {path}: 'drivers' must map an isolation level to a driver")
    return Config(
        isolation=str(data.get("isolation", "process")),
        drivers={str(k): str(v) for k, v in drivers.items()},
        kernel=data.get("kernel"),
        qemu=data.get("qemu"),
        memory=None if data.get("memory") is None else str(data["memory"]),
        cpus=None if data.get("cpus") is None else float(data["cpus"]),
        hyperv_runtime_class=str(data.get("hyperv_runtime_class", "kata")),
        diff_ignore=list(data.get("diff_ignore") or []),
        path=path,
    )
