"""Can this host run ctr's VMs?  Cheap checks (no boot) for `ctr info` and driver choice."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import DriverError
from .initramfs import REQUIRED_MODULES, find_busybox
from .kernel import Kernel, find_kernel
from .modules import ModuleIndex
from .run import QEMU_ENV


@dataclass(frozen=True)
class Readiness:
    usable: bool
    reason: str  # what is missing, or what will be used
    hint: str | None = None
    kernel: Kernel | None = None


def check_host(explicit_kernel: str | os.PathLike[str] | None = None,
               kernels_dir: Path | None = None, qemu: str = "qemu-system-x86_64",
               env: Mapping[str, str] | None = None) -> Readiness:
    """qemu installed, a static busybox, a kernel found, and 9p available in it."""
    if shutil.which(qemu, path=QEMU_ENV["PATH"]) is None and not os.access(qemu, os.X_OK):
        return Readiness(False, f"{qemu} is not installed",
                         "apt-get install --no-install-recommends qemu-system-x86")
    try:
        find_busybox()
        kernel = find_kernel(explicit_kernel, kernels_dir, env=env)
    except DriverError as e:
        return Readiness(False, e.message, e.hint)
    if kernel.modules is not None:
        missing = ModuleIndex(kernel.modules).missing(list(REQUIRED_MODULES))
        if missing:
            return Readiness(False, f"kernel {kernel.release} lacks {', '.join(missing)}",
                             "use a generic kernel such as Debian's linux-image-<version>-amd64 "
                             "(the -cloud- flavour lacks 9p)", kernel)
    return Readiness(True, f"qemu with kernel {kernel.release} ({kernel.image})", None, kernel)
