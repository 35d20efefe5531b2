"""Drivers: how each isolation level is realised on this host, and which one to use."""

from __future__ import annotations

import importlib

from ctr.drivers.base import Availability, Driver
from ctr.errors import DriverError, InvalidArgument

# isolation -> driver names, in order of preference
DRIVERS: dict[str, tuple[str, ...]] = {
    "process": ("overlay", "copy"),
    "hyperv": ("microvm", "sandbox"),
}

# (isolation, driver) -> the module that holds it (the class is the Driver subclass there with
# that name and isolation)
MODULES: dict[tuple[str, str], str] = {
    ("process", "overlay"): "ctr.drivers.overlay",
    ("process", "copy"): "ctr.drivers.copy",
    ("hyperv", "microvm"): "ctr.drivers.microvm",
    ("hyperv", "sandbox"): "ctr.drivers.sandbox",
}


class Unavailable(Driver):
    """Stands in for a driver whose module is absent or does not load: listed by `ctr info`,
    skipped by selection, refused (with the reason) when asked for by name."""

    def __init__(self, isolation: str, name: str, reason: str):
        self.isolation, self.name, self.reason = isolation, name, reason
        self.summary = reason

    def availability(self) -> Availability:
        fallback = [n for n in DRIVERS.get(self.isolation, ()) if n != self.name]
        return Availability(False, self.reason,
                            f"use --driver {fallback[0]}" if fallback else "")


def _driver_class(isolation: str, name: str, module) -> type[Driver] | None:
    for value in vars(module).values():
        if (isinstance(value, type) and issubclass(value, Driver) and value.__module__ == module.__name__
                and value.name == name and value.isolation == isolation):
            return value
    return None


def get_driver(isolation: str, name: str) -> Driver:
    if isolation not in DRIVERS:
        raise InvalidArgument(
            f"unknown isolation {isolation!r}", hint="choose one of: " + ", ".join(DRIVERS)
        )
    if name not in DRIVERS[isolation] or (isolation, name) not in MODULES:
        raise InvalidArgument(
            f"unknown driver {name!r} for {isolation} isolation",
            hint="choose one of: " + ", ".join(DRIVERS[isolation]),
        )
    modname = MODULES[(isolation, name)]
    try:
        module = importlib.import_module(modname)
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == modname:
            return Unavailable(isolation, name, "not yet available in this version of ctr")
        return Unavailable(isolation, name, f"cannot be loaded: {e}")
    cls = _driver_class(isolation, name, module)
    if cls is None:
        return Unavailable(isolation, name, "not yet available in this version of ctr")
    return cls()


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
