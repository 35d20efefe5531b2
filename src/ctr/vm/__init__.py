"""`ctr vm`: full virtual machines, each with its own complete disk.

Drivers (one module each, behind `ctr.vm.base.VMDriver`):

- `qemu` (`ctr.vm.qemu`): a real VM under qemu — its own kernel, a raw ext4 disk image made
  from the image with `mke2fs -d`, ctr's init and guest agent (`ctr.vm.agent`) on
  virtio-serial ports; qemu runs daemonised between `vm start` and `vm stop`.
- `sandbox` (`ctr.vm.sandbox`): an emulated VM for hosts without qemu or a guest kernel — a
  private full copy of the image's tree, a long-lived init in fresh user, PID, IPC, UTS,
  network and mount namespaces, with the caps of the hyperv sandbox.  It shares the host
  kernel and says so.

Around them: `ext4` (reading a disk image without mounting it), `disk` (making disks,
listings for `vm diff`, copies for checkpoints).  Use cases live in `ctr.engine.vms`.
"""

from __future__ import annotations

import importlib

from ctr.errors import DriverError, InvalidArgument
from ctr.vm.base import VMDriver

DRIVERS = ("qemu", "sandbox")  # in order of preference
MODULES = {"qemu": "ctr.vm.qemu", "sandbox": "ctr.vm.sandbox"}


def get_vm_driver(name: str) -> VMDriver:
    if name not in DRIVERS:
        raise InvalidArgument(f"unknown VM driver {name!r}", hint="choose one of: " + ", ".join(DRIVERS))
    module = importlib.import_module(MODULES[name])
    return module.DRIVER()  # type: ignore[no-any-return]


def select_vm_driver(requested: str | None, configured: str | None, store=None, config=None,
                     kernel: str | None = None) -> VMDriver:
    """--driver, else the config's `drivers: {vm: …}`, else the first usable one."""
    name = requested or configured
    if name:
        drv = get_vm_driver(name)
        av = drv.availability(store, config, kernel)
        if not av.usable:
            raise DriverError(f"VM driver {name} is not usable here: {av.reason}", hint=av.fix or None)
        return drv
    reasons = []
    for candidate in DRIVERS:
        drv = get_vm_driver(candidate)
        av = drv.availability(store, config, kernel)
        if av.usable:
            return drv
        reasons.append(f"{candidate}: {av.reason}")
    raise DriverError(f"no VM driver is usable here ({'; '.join(reasons)})",
                      hint="see `ctr info` for how to make one usable")


__all__ = ["DRIVERS", "VMDriver", "get_vm_driver", "select_vm_driver"]
