"""Crash points: a test makes ctr kill itself at a named point to check crash consistency.

`point(name)` does nothing unless the environment variable `CTR_FAULT` names that point;
then the calling process sends itself SIGKILL there — no cleanup, no `finally`, no lock
released other than by the kernel, exactly as if the machine had killed it.
`CTR_FAULT=NAME@N` fires at the N-th time the point is reached (for points inside loops).
The variable is read once at import; when it is unset `point()` is a single comparison.

The points (keep this table in step with the calls; `tests/test_crash.py` drives each):

| point | where | what the store holds when ctr dies there |
|---|---|---|
| `run.created` | `engine/containers.create`, record installed | a `created` container; nothing ran |
| `run.started` | `start_foreground`, workload exec'd, not yet recorded | a `created` record; the workload runs, mounted in its own namespace, with no ctr waiting for it |
| `run.recorded` | `start_foreground`, recorded `running` | a `running` record whose workload runs orphaned |
| `monitor.recorded` | the monitor of `run -d`, recorded `running` | the monitor dies: its workload gets SIGKILL (death signal); the record says `running` |
| `rm.marked` | `engine/containers._remove_one`, record says `removing` | processes killed, nothing cleaned up or deleted |
| `rm.moved` | `Store.discard_container`, directory renamed into `tmp/` | the container has left every listing; its files wait in `tmp/` |
| `commit.layer` | `engine/commit.commit`, new layer built under `tmp/` | no new layer, no image: only `tmp/` litter |
| `commit.installed` | `engine/commit.commit`, layer renamed into `layers/` under the lock | a complete layer no image uses; no image record |
| `import.extract` | `images/extract.py`, before each member is applied (import and commit) | half a layer, under `tmp/` only |
| `import.layer` | `engine/images.import_image` and `engine/commit.import_bundle`, every layer extracted and verified | layers under `tmp/` only |
| `import.installed` | the same, layers renamed into `layers/` under the lock | complete layers no image uses; no image record |
| `vm.built` | `engine/vms.create`, the VM's disk and record built under `tmp/` | no VM; `tmp/` litter only |
| `vm.installed` | the same, the VM's directory renamed into `vms/` under the lock | a complete VM, `Off` |
| `vm.started` | `engine/vms.start`, its machine started, not yet recorded `Running` | a VM recorded `Starting` whose machine runs with no ctr waiting for it |
"""

from __future__ import annotations

import os

ENV = "CTR_FAULT"

POINTS = (
    "run.created", "run.started", "run.recorded", "monitor.recorded",
    "rm.marked", "rm.moved",
    "commit.layer", "commit.installed",
    "import.extract", "import.layer", "import.installed",
    "vm.built", "vm.installed", "vm.started",
)


def _parse(spec: str) -> tuple[str | None, int]:
    name, _, nth = spec.partition("@")
    return (name or None), (int(nth) if nth.isdigit() and int(nth) > 0 else 1)


_NAME, _NTH = _parse(os.environ.get(ENV, ""))
_hits = 0


def point(name: str) -> None:
    """SIGKILL this process here if `CTR_FAULT` names this point (module doc)."""
    if _NAME is None or name != _NAME:
        return
    global _hits
    _hits += 1
    if _hits >= _NTH:
        import signal  # (here: its enums cost every command ~0.5 ms)

        os.kill(os.getpid(), signal.SIGKILL)
