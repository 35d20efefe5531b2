"""ctr's entry point, with a fast path for the commands CI scripts call in loops.

A typer CLI pays for typer and click on every invocation — importing them (about 35 ms of
interpreter time) and turning every command's signature into a click command — before it
runs a line of the command itself. For `--version` and the common shapes of `run`, `ps`,
`rm` and `diff`, this module reads argv itself and calls the same command bodies the typer
commands call (`cli/plain.py`), without importing typer or click.

The fast path is strict: it takes an argv only if every token is one it knows exactly — the
global `--root`/`--debug`/`--version`, then one of those commands with its own options, in
the forms click accepts (`--opt VALUE`, `--opt=VALUE`, `-o VALUE`, `-oVALUE`, grouped short
flags `-it`). Anything else (`--help`, an unknown or misspelt option, a missing or malformed
value, `--`, a shell asking for completions) goes to the full typer application, which
parses it and reports errors as it always has. So the fast path never decides what a command
line means differently from click; tests/test_fast_cli.py checks its tables against the
click commands typer builds.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

COMPLETE_VAR = "_CTR_COMPLETE"  # cli/completion.COMPLETE_VAR (that module imports typer)

# command -> (flags: token -> parameter, values: token -> (parameter, type, multiple),
#             positionals: "none" | "optional" | "many" | "image+command", defaults)
_FLAG, _VALUE = 0, 1
COMMANDS: dict[str, dict] = {
    "ps": {
        "flags": {"-a": "all", "--all": "all", "-q": "quiet", "--quiet": "quiet", "-l": "latest",
                  "--latest": "latest", "--no-trunc": "no_trunc"},
        "values": {"-n": ("last", int, False), "--last": ("last", int, False),
                   "-f": ("filter", str, True), "--filter": ("filter", str, True),
                   "--format": ("format", str, False)},
        "positionals": "none",
        "defaults": {"all": False, "quiet": False, "last": -1, "latest": False, "filter": [],
                     "no_trunc": False, "format": "table"},
    },
    "diff": {
        "flags": {"-l": "latest", "--latest": "latest"},
        "values": {"--format": ("format", str, False)},
        "positionals": "optional:container",
        "defaults": {"container": None, "format": "table", "latest": False},
    },
    "rm": {
        "flags": {"-f": "force", "--force": "force", "-l": "latest", "--latest": "latest"},
        "values": {},
        "positionals": "many:containers",
        "defaults": {"containers": None, "force": False, "latest": False},
    },
    "run": {
        "flags": {"--rm": "rm", "-i": "interactive", "--interactive": "interactive", "-t": "tty",
                  "--tty": "tty", "-d": "detach", "--detach": "detach", "--read-only": "read_only"},
        "values": {"--name": ("name", str, False), "--isolation": ("isolation", str, False),
                   "--driver": ("driver", str, False), "-e": ("env", str, True), "--env": ("env", str, True),
                   "--env-file": ("env_file", str, True), "-w": ("workdir", str, False),
                   "--workdir": ("workdir", str, False), "-v": ("volume", str, True),
                   "--volume": ("volume", str, True), "-u": ("user", str, False), "--user": ("user", str, False),
                   "--hostname": ("hostname", str, False), "-m": ("memory", str, False),
                   "--memory": ("memory", str, False), "--cpus": ("cpus", float, False),
                   "--entrypoint": ("entrypoint", str, False), "-l": ("label", str, True),
                   "--label": ("label", str, True), "--cidfile": ("cidfile", str, False)},
        "positionals": "image+command",
        "defaults": {"image": None, "command": None, "name": None, "isolation": None, "driver": None,
                     "rm": False, "env": [], "env_file": [], "workdir": None, "volume": [], "user": None,
                     "interactive": False, "tty": False, "hostname": None, "memory": None, "cpus": None,
                     "detach": False, "entrypoint": None, "label": [], "cidfile": None, "read_only": False},
    },
}


def main(argv: list[str] | None = None) -> None:
    status = run_cli(argv)
    from ctr.cli.common import end, flush_stdout

    flush_stdout()
    end(status)


def run_cli(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    call = None if os.environ.get(COMPLETE_VAR) else match(args)
    if call is None:
        from ctr.cli.app import run_cli as full

        return full(args)
    return guard(call)


# ----------------------------------------------------------------------------- matching
def match(argv: list[str]) -> Callable[[], int | None] | None:
    """The call that runs `argv`, or None when the full typer application must handle it."""
    root: str | None = None
    debug = version = False
    i = 0
    while i < len(argv):
        t = argv[i]
        if t == "--debug":
            debug = True
        elif t == "--version":
            version = True
        elif t == "--root":
            if i + 1 >= len(argv):
                return None
            i += 1
            root = argv[i]
        elif t.startswith("--root="):
            root = t[len("--root="):]
        else:
            break
        i += 1
    if root == "" or (i < len(argv) and argv[i].startswith("-")):
        return None
    if version:  # eager, as click's: whatever command follows is not run
        return _print_version
    if i >= len(argv) or argv[i] not in COMMANDS:
        return None
    name = argv[i]
    kw = parse(COMMANDS[name], argv[i + 1:])
    if kw is None:
        return None

    def call() -> int | None:
        from ctr.cli import plain

        _set_globals(root, debug)
        return getattr(plain, name)(**kw)

    return call


def parse(spec: dict, args: list[str]) -> dict | None:
    """Keyword arguments for the command body, or None if `args` is not a shape this knows."""
    kw = {k: (list(v) if isinstance(v, list) else v) for k, v in spec["defaults"].items()}
    flags, values = spec["flags"], spec["values"]
    rest = spec["positionals"] == "image+command"  # options only before IMAGE; the rest is COMMAND
    pos: list[str] = []
    i = 0
    while i < len(args):
        t = args[i]
        i += 1
        if t == "-" or not t.startswith("-"):
            pos.append(t)
            if rest:
                pos += args[i:]
                break
            continue
        if t == "--":
            return None
        value = None
        if t.startswith("--"):
            opt, eq, attached = t.partition("=")
            if opt in flags and not eq:
                kw[flags[opt]] = True
                continue
            if opt not in values:
                return None
            value = attached if eq else None
        elif t[:2] in values:
            opt = t[:2]
            value = t[2:] or None
        elif all("-" + ch in flags for ch in t[1:]):
            for ch in t[1:]:
                kw[flags["-" + ch]] = True
            continue
        else:
            return None
        if value is None:
            if i >= len(args):
                return None
            value = args[i]
            i += 1
        param, kind, multiple = values[opt]
        try:
            converted = kind(value)
        except ValueError:
            return None
        if multiple:
            kw[param].append(converted)
        else:
            kw[param] = converted
    shape, _, param = spec["positionals"].partition(":")
    if shape == "none":
        return None if pos else kw
    if shape == "optional":
        if len(pos) > 1:
            return None
        kw[param] = pos[0] if pos else None
        return kw
    if shape == "many":
        kw[param] = pos or None
        return kw
    if not pos:  # image+command: IMAGE is required
        return None
    kw["image"], kw["command"] = pos[0], pos[1:] or None
    return kw


def _set_globals(root: str | None, debug: bool) -> None:
    """What the root command's callback (cli/app.py: main_options) does with --root and --debug."""
    from pathlib import Path

    from ctr.cli.common import G

    G.root = Path(root) if root is not None else None
    G.debug = debug
    if root is not None:
        os.environ["CTR_ROOT"] = str(G.root)
    if debug:
        os.environ["CTR_DEBUG"] = "1"


def _print_version() -> int:
    from ctr import __version__

    print(f"ctr version {__version__}")
    return 0


# ----------------------------------------------------------------------------- errors
def guard(call: Callable[[], int | None]) -> int:
    """Run a command body as cli/app.py's run_cli does: a CtrError is one `Error:` line and its
    exit code, anything unexpected one line too (the traceback with --debug)."""
    from ctr.cli.common import flush_stdout, report_error, reset

    try:
        rv = call()
        return rv if isinstance(rv, int) else 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        return report_error(e)
    finally:
        flush_stdout()
        reset()
