"""State shared by the command modules: global options and the lazily opened context."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
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
    if fmt in allowed or "{{" in fmt:
        return fmt
    from ctr.errors import InvalidArgument

    raise InvalidArgument(f"unknown format {fmt!r}", hint="use " + ", ".join(allowed) + " or a {{.Field}} template")


def fail_if_any(results) -> None:
    """Print each failed result's error; exit 1 if any failed (after doing all the others)."""
    from ctr import output

    failed = [r for r in results if r.error is not None]
    for r in failed:
        output.error(r.error.message, r.error.hint)
    if failed:
        raise typer.Exit(1)
