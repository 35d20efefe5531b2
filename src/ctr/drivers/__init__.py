"""Drivers: how each isolation level is realised on this host, and which one to use."""

from __future__ import annotations

from ctr.drivers.base import Availability, Driver
from ctr.errors import DriverError, InvalidArgument

# isolation -> driver names, in order of preference
DRIVERS: dict[str, tuple[str, ...]] = {
    "process": ("overlay", "copy"),
}


def get_driver(isolation: str, name: str) -> Driver:
    if isolation == "process" and name == "overlay":
        from ctr.drivers.overlay import OverlayDriver

        return OverlayDriver()
    if isolation == "process" and name == "copy":
        from ctr.drivers.copy import CopyDriver

        return CopyDriver()
    if isolation not in DRIVERS:
        raise InvalidArgument(
            f"unknown isolation {isolation!r}", hint="choose one of: " + ", ".join(DRIVERS)
        )
    raise InvalidArgument(
        f"unknown driver {name!r} for {isolation} isolation",
        hint="choose one of: " + ", ".join(DRIVERS[isolation]),
    )


def select_driver(isolation: str, requested: str | None, configured: str | None) -> Driver:
    """--driver, else the config's driver for this isolation, else the first usable one."""
    name = requested or configured
    if name:
        drv = get_driver(isolation, name)
        av = drv.availability()
        if not av.usable:
            raise DriverError(f"driver {name} is not usable here: {av.reason}", hint=av.fix)
        return drv
    if isolation not in DRIVERS:
        get_driver(isolation, "")  # raises the unknown-isolation error
    reasons = []
    for candidate in DRIVERS[isolation]:
        drv = get_driver(isolation, candidate)
        av = drv.availability()
        if av.usable:
            return drv
        reasons.append(f"{candidate}: {av.reason}")
    raise DriverError(f"no {isolation} driver is usable here ({'; '.join(reasons)})",
                      hint="see `ctr info` for how to make one usable")


def all_drivers() -> list[Driver]:
    return [get_driver(iso, n) for iso, names in DRIVERS.items() for n in names]


__all__ = ["Availability", "Driver", "DRIVERS", "DriverError", "all_drivers", "get_driver", "select_driver"]
