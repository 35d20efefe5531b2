"""Atomic JSON records and file locks. No knowledge of what the records mean."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path

from ctr.errors import StoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

LOCK_TIMEOUT = float(os.environ.get("CTR_LOCK_TIMEOUT", "60"))


def write_json(path: Path, data: Any, durable: bool = True) -> None:
    """Write `data` to `path` atomically: temp file in the same directory, fsync, rename.

    The rename alone makes the change atomic for readers and across a killed ctr; the fsync
    is for a machine that stops before the data reaches the disk. `durable=False` leaves it
    out, for records about to be deleted anyway (docs/performance.md: Records and fsync)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(payload)
            while view:  # a short write is not an error: write the rest
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:  # a full disk, say: leave no half-written temp file behind
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        err = StoreError(f"corrupt record {path}: {e}", hint=f"move {path} aside; ctr cannot read it")
        err.detail = str(e)  # type: ignore[attr-defined]
        raise err from e


class flock:
    """`with flock(path):` holds an flock on `path`, waiting at most `timeout` seconds with a
    clear error. (A class, not a contextlib generator: importing contextlib costs every
    command that locks ~0.7 ms.)"""

    def __init__(self, path: Path, exclusive: bool = True, timeout: float | None = None):
        self.path, self.exclusive = path, exclusive
        self.timeout = LOCK_TIMEOUT if timeout is None else timeout
        self.fds: list[int] = []  # (one per `with` entered and not yet left)

    def __enter__(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
            deadline = time.monotonic() + self.timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            f"the state directory is busy: another ctr held {self.path.name} for {self.timeout:g}s",
                            hint="wait for the other ctr to finish, or raise CTR_LOCK_TIMEOUT",
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise
        self.fds.append(fd)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fds.pop())
