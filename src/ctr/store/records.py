"""Atomic JSON records and file locks. No knowledge of what the records mean."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from ctr.errors import StoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator

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


@contextmanager
def flock(path: Path, exclusive: bool = True, timeout: float | None = None) -> Iterator[None]:
    """Hold an flock on `path`, waiting at most `timeout` seconds with a clear error."""
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout
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
                        f"the state directory is busy: another ctr held {path.name} for {timeout:g}s",
                        hint="wait for the other ctr to finish, or raise CTR_LOCK_TIMEOUT",
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)
