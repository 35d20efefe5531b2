"""The interface every VM driver implements.

The engine (`ctr.engine.vms`) owns records, states and locks; a driver owns what is inside
the VM's directory (`Store.vm_dir(name)`): its disk, how it boots, how commands reach it,
how it stops, how its disk is listed and copied.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from ctr.drivers.base import Availability

if TYPE_CHECKING:
    from ctr.changes import Change
    from ctr.config import Config
    from ctr.models import VM, Image
    from ctr.store import Store


Progress = Callable[[int, int], None]  # (bytes done, bytes expected)


class Interrupted(SystemExit):
    """SIGINT or SIGTERM during `vm start` (under `interruptible`): raised so that the start
    turns the VM off and records it Off, then ends ctr with 128 + `signum` as the signal
    would have (a SystemExit: nothing on the way, typer and click included, takes it for an
    error to report or a KeyboardInterrupt to turn into exit 130)."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


_deferring = [0]  # depth of `signals_deferred` blocks
_pending: list[int] = []  # signals that arrived meanwhile


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` (once: a second one, during the cleanup, is
    ignored); in the main thread only; the previous handlers are restored after."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum, frame) -> None:
        if raised:
            return
        if _deferring[0]:
            _pending.append(signum)
            return
        raised.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        _pending.clear()
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Under `interruptible`, SIGINT and SIGTERM wait until the block ends: for a driver's
    `start` from making the VM's process until `on_pid` has recorded it, where an
    interruption would leave a machine nobody knows of.  (Not the signal mask: a child
    started meanwhile, qemu, would inherit it.)"""
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1
    if not _deferring[0] and _pending:
        import os

        signum = _pending[-1]
        _pending.clear()
        os.kill(os.getpid(), signum)  # delivered again, now that it may interrupt


class VMDriver:
    name = ""
    summary = ""
    emulated = False
    isolation = "vm"  # for `ctr info`'s table

    def availability(self, store: "Store | None" = None, config: "Config | None" = None,
                     kernel: str | None = None) -> Availability:  # pragma: no cover - interface
        raise NotImplementedError

    def check(self, store: "Store", config: "Config", vm: "VM", image: "Image") -> None:
        """Everything `vm create` can check before any work (may fill in vm.kernel, …)."""

    def build(self, store: "Store", built: Path, vm: "VM", image: "Image",
              progress: Progress) -> None:
        """Make the VM's disk and its manifest inside `built` (renamed into place later)."""
        raise NotImplementedError

    def start(self, store: "Store", config: "Config", vm: "VM", timeout: float,
              on_pid: Callable[[int, int | None], None]) -> dict:
        """Boot the VM in the background; call `on_pid` as soon as its process exists;
        return once it accepts `exec`, with record fields to update (accel, guest_kernel)."""
        raise NotImplementedError

    def exec(self, store: "Store", vm: "VM", argv: list[str], env: dict[str, str],
             workdir: str) -> int:
        raise NotImplementedError

    def shutdown(self, store: "Store", vm: "VM", grace: float, force: bool) -> None:
        """Ask the VM to shut down (processes get SIGTERM, then SIGKILL after `grace`; at
        once with `force`); returns once it was asked."""
        raise NotImplementedError

    def stop_wait(self, grace: float) -> float:
        """How long a shutdown asked with `grace` may take before the VM is turned off."""
        return grace

    def turn_off(self, store: "Store", vm: "VM") -> None:
        """Power it off at once (pulling the plug)."""
        raise NotImplementedError

    def cleanup(self, store: "Store", vm: "VM") -> None:
        """After the VM stopped, however it stopped: what it leaves outside its disk."""

    def changes(self, store: "Store", vm: "VM", running: bool) -> list["Change"]:
        raise NotImplementedError

    def disk_usage(self, store: "Store", vm: "VM") -> int:
        raise NotImplementedError

    def checkpoint(self, store: "Store", vm: "VM", dest: Path) -> str:
        """Copy the (stopped) VM's disk into `dest`; returns "reflink" or "copy"."""
        raise NotImplementedError

    def restore(self, store: "Store", vm: "VM", src: Path) -> None:
        """Make the checkpoint in `src` the (stopped) VM's disk again."""
        raise NotImplementedError

    def runtime_info(self, store: "Store", vm: "VM") -> dict:
        return {}
