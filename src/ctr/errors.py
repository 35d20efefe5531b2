"""Typed errors. Every error a user can cause carries one sentence and, where it helps, a hint.

The CLI turns a CtrError into `Error: <message>` (+ `Hint: <hint>`) on stderr and exits with
`exit_code`; nothing else in ctr prints errors.
"""

from __future__ import annotations


class CtrError(Exception):
    """An expected failure: shown as one line, no traceback (unless --debug)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class NotFound(CtrError):
    """A container, image, VM or file that does not exist."""


class Conflict(CtrError):
    """The request clashes with the current state (name in use, image in use, ambiguous ref)."""


class InvalidArgument(CtrError):
    """A value the user gave is malformed. Exits 2, like a usage error."""

    exit_code = 2


class StoreError(CtrError):
    """The state directory is unusable (unknown version, lock timeout, corrupt record)."""


class DriverError(CtrError):
    """A driver cannot do what was asked on this host."""


class ImageImportError(CtrError):
    """An archive or directory cannot be imported safely; names the offending member."""

    def __init__(self, message: str, member: str | None = None, hint: str | None = None):
        if member is not None:
            shown = member if len(member) <= 200 else f"{member[:120]}…{member[-60:]}"
            message = f"{message} (member {shown!r})"
        super().__init__(message, hint)
        self.member = member


def environment_error(e: BaseException) -> CtrError | None:
    """An OSError the machine caused rather than ctr (a full disk, a quota, a read-only
    filesystem), as the one-line error it deserves; None for anything else (a bug)."""
    import errno

    if not isinstance(e, OSError) or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return None
    where = f" ({e.filename})" if e.filename else ""
    return CtrError(f"{e.strerror}{where}",
                    hint="free space in ctr's store: `ctr rm -f`, `ctr container prune`, `ctr image rm`"
                    if e.errno != errno.EROFS else None)


# Exit codes of `run` and `exec`, as docker and podman use them.
EXIT_CTR_FAILED = 125
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127
EXIT_SIGNAL_BASE = 128
