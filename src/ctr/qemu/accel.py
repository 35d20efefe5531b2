"""Choosing the accelerator: KVM only when it really runs a guest, else TCG.

On some hosts /dev/kvm exists but cannot run a stock kernel (a paravirtual KVM: qemu
aborts setting an MSR, or the guest dies with "KVM internal error … emulation failure"
and qemu stays paused instead of exiting).  So the answer comes from a short probe boot
under a timeout, and is cached in a file the caller names, keyed by everything that could
change it (host kernel, qemu binary, guest kernel).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import CtrError
from .initramfs import GuestConfig, Initramfs
from .kernel import Kernel
from .run import QEMU_ENV, boot_and_run

PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str  # one line for `ctr info`


def _probe_key(kernel: Kernel, qemu: str) -> str:
    qpath = shutil.which(qemu, path=QEMU_ENV["PATH"]) or qemu
    parts = [os.uname().release, os.uname().version]
    for p in (qpath, str(kernel.image)):
        try:
            st = os.stat(p)
            parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{p}:-")
    return "|".join(parts)


def kvm_device_usable(dev: str = "/dev/kvm") -> bool:
    return os.path.exists(dev) and os.access(dev, os.R_OK | os.W_OK)


def probe_accelerator(kernel: Kernel, initramfs: Initramfs, cache_file: str | os.PathLike[str] | None,
                      qemu: str = "qemu-system-x86_64", timeout: float = PROBE_TIMEOUT,
                      refresh: bool = False, dev: str = "/dev/kvm") -> AccelChoice:
    """"kvm" if a probe guest boots and runs a command under KVM, else "tcg"; cached in
    `cache_file` (JSON) unless `refresh`.  Never raises for a failed probe."""
    if not kvm_device_usable(dev):
        return AccelChoice("tcg", f"{dev} is missing or not accessible")
    key = _probe_key(kernel, qemu)
    cache = Path(cache_file) if cache_file is not None else None
    if cache is not None and not refresh:
        try:
            info = json.loads(cache.read_text())
            if info.get("key") == key and info.get("accel") in ("kvm", "tcg"):
                return AccelChoice(info["accel"], info.get("reason", ""))
        except (OSError, ValueError):
            pass
    choice = _probe(kernel, initramfs, qemu, timeout)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".accel-", dir=cache.parent)
            with os.fdopen(fd, "w") as f:
                json.dump({"key": key, **asdict(choice)}, f)
            os.replace(tmp, cache)
        except OSError:
            pass
    return choice


def _probe(kernel: Kernel, initramfs: Initramfs, qemu: str, timeout: float) -> AccelChoice:
    with tempfile.TemporaryDirectory(prefix="ctr-kvm-probe-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        try:
            # An empty root: the command is not found (127), which still proves that the
            # kernel booted, loaded its modules, mounted the 9p root and reported back.
            boot_and_run(GuestConfig(argv=("true",)), kernel=kernel, initramfs=initramfs,
                         root=root, accel="kvm", timeout=timeout, boot_timeout=timeout, stdout=None, stderr=None,
                         run_dir=Path(tmp) / "run", qemu=qemu)
        except CtrError as e:
            text = e.message.splitlines()[0]
            if e.hint:
                text += f" ({e.hint.splitlines()[-1]})"
            return AccelChoice("tcg", f"KVM probe boot failed: {text}")
        return AccelChoice("kvm", "KVM probe boot succeeded")
