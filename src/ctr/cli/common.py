"""State shared by the command modules: global options and the lazily opened context.

Imports neither typer nor click at module level: the fast path (cli/fast.py) uses it too."""

from __future__ import annotations

import os
import sys
from pathlib import Path

TYPE_CHECKING = False  # (not typing's: importing typing costs every command ~3 ms)
if TYPE_CHECKING:
    from typing import Optional

    import click

    from ctr.engine.context import Context


class Globals:
    root: Optional[Path] = None
    debug: bool = False
    run_like: bool = False  # the command returns a workload's code: ctr's own failures are 125
    _ctx: "Context | None" = None


G = Globals()


def ctx() -> "Context":
    if G._ctx is None:
        from ctr.engine.context import open_context

        G._ctx = open_context(G.root)
    return G._ctx


def reset() -> None:
    G._ctx = None
    G.root = None
    G.debug = False
    G.run_like = False


FORMAT_HELP = "Output format: table, json, yaml, or a template such as '{{.ID}} {{.Status}}'"


def check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json", "yaml")) -> str:
    """`fmt` if it is one of `allowed` or a valid template (parsed now, so a bad template
    fails with exit 2 before any work, even when the listing turns out empty)."""
    if fmt in allowed:
        return fmt
    if "{{" in fmt or "}}" in fmt:
        from ctr import output

        output.Template(fmt)
        return fmt
    from ctr.errors import InvalidArgument

    raise InvalidArgument(f"unknown format {fmt!r}", hint="use " + ", ".join(allowed) + " or a {{.Field}} template")


def fail_if_any(results) -> None:
    """Print each failed result's error; exit 1 if any failed (after doing all the others)."""
    import typer

    from ctr import output

    failed = [r for r in results if r.error is not None]
    for r in failed:
        output.error(r.error.message, r.error.hint)
    if failed:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- completion
# Callbacks for `typer.Argument(..., autocompletion=complete_container)` and friends. They run
# on every <TAB>, so they read the store's records directly (no engine, no reconciliation, no
# store creation) and never raise: a broken store completes nothing. Their `ctx` is left
# unannotated (typer passes the click context to a parameter of that name): an annotation
# would be evaluated by typer, and this module does not import click.
def _completion_store(ctx: click.Context):
    from ctr.store.store import Store, default_root

    root = None
    try:
        root = ctx.find_root().params.get("root")
    except Exception:
        pass
    return Store(Path(root) if root else (G.root or default_root()))


def _id_items(incomplete: str, ids: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Ids (shown as 12 characters) only once the user has started typing one."""
    bare = incomplete.split(":", 1)[-1]
    if not bare or any(ch not in "0123456789abcdef" for ch in bare):
        return []
    return [(i.split(":", 1)[-1][:12], h) for i, h in ids if i.split(":", 1)[-1].startswith(bare)]


def container_completer(*states: str):
    """A completion callback for container references, limited to `states` if given
    (e.g. `container_completer("running")` for stop/kill/exec)."""

    def complete(ctx, incomplete: str) -> list[tuple[str, str]]:
        try:
            store = _completion_store(ctx)
            names, ids = [], []
            for cid in store.container_ids():
                try:
                    rec = store.read_container(cid) or {}
                except Exception:
                    continue
                if states and rec.get("state") not in states:
                    continue
                help_ = f"{rec.get('image_name', '')} {rec.get('state', '')}".strip()
                if rec.get("name"):
                    names.append((rec["name"], help_))
                ids.append((cid, help_))
            return [n for n in sorted(names) if n[0].startswith(incomplete)] + _id_items(incomplete, ids)
        except Exception:
            return []

    return complete


complete_container = container_completer()


def complete_image(ctx, incomplete: str) -> list[tuple[str, str]]:
    """Image names (NAME:TAG, and the built-in `host`), and ids once one is being typed."""
    try:
        from ctr.models import HOST_IMAGE

        store = _completion_store(ctx)
        names, ids = [(HOST_IMAGE, "the host's root filesystem")], []
        for iid in store.image_ids():
            try:
                rec = store.read_image(iid) or {}
            except Exception:
                continue
            for n in rec.get("names") or []:
                names.append((n, iid.split(":", 1)[-1][:12]))
                if n.endswith(":latest"):
                    names.append((n[: -len(":latest")], iid.split(":", 1)[-1][:12]))
            ids.append((iid, ", ".join(rec.get("names") or [])))
        return [n for n in sorted(set(names)) if n[0].startswith(incomplete)] + _id_items(incomplete, ids)
    except Exception:
        return []


def complete_vm(ctx, incomplete: str) -> list[tuple[str, str]]:
    """VM names: the store's `vm_ids()`/`read_vm()` when it has them, else the entries of vms/."""
    try:
        import os

        store = _completion_store(ctx)
        names = []
        if hasattr(store, "vm_ids"):
            for vid in store.vm_ids():
                rec = (store.read_vm(vid) if hasattr(store, "read_vm") else None) or {}
                names.append((rec.get("name") or vid, str(rec.get("state", ""))))
        else:
            for e in os.scandir(store.vms_dir):
                if not e.name.startswith("."):
                    names.append((e.name[:-5] if e.name.endswith(".json") else e.name, ""))
        return [n for n in sorted(names) if n[0].startswith(incomplete)]
    except Exception:
        return []


class _Pipe:
    closed = False  # the reader of stdout went away (`ctr export x | head`)


def stdout_gone() -> int:
    """The reader of stdout went away. Point fd 1 at /dev/null, so the bytes Python still
    holds for it are dropped instead of failing every later flush, and remember it: `main`
    then ends the process the way docker, podman and every Unix filter end, killed by
    SIGPIPE (141 in the shell), without a word on stderr. Returns that status."""
    _Pipe.closed = True
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    return 128 + 13


def flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        stdout_gone()


def end(status: int) -> None:
    """Exit with `status`, or die of SIGPIPE when stdout's reader went away."""
    if _Pipe.closed:
        import signal

        sys.stderr.flush()
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(status)


def report_error(e: Exception) -> int:
    """Turn an exception that reached the command line into one `Error:` line (traceback only
    with --debug) and the exit code; shared by the typer app and the fast path."""
    from ctr import output
    from ctr.errors import CtrError, environment_error

    if isinstance(e, BrokenPipeError):
        return stdout_gone()
    if G.debug:
        import traceback

        traceback.print_exc()
    if isinstance(e, CtrError):
        output.error(e.message, e.hint)
        return e.exit_code
    if (env := environment_error(e)) is not None:  # a full disk is no bug
        output.error(env.message, env.hint)
        return 125 if G.run_like else 1
    output.error(f"internal error: {type(e).__name__}: {e}",
                 None if G.debug else "this is a bug in ctr; run again with --debug to see the traceback")
    return 125 if G.run_like else 1
