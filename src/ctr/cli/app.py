"""The entry point: one typer app per noun, assembled here; errors become one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from ctr import __version__
from ctr.cli import completion, containers, images, kube, stats, system
from ctr.cli import lifecycle
from ctr.cli import commit
from ctr.cli import vm
from ctr.cli.common import G, report_error, stdout_gone

app = typer.Typer(
    name="ctr",
    help="Run any command in a throwaway copy-on-write layer, and see exactly what it changed.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"ctr version {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_options(
    root: Optional[Path] = typer.Option(None, "--root", help="State directory (default: $CTR_ROOT, else the user data dir)", envvar="CTR_ROOT"),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and the helper commands ctr runs"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version"),
) -> None:
    G.root = root
    G.debug = debug
    if root is not None:  # what drivers look at when they check this store (`ctr info`, selection)
        os.environ["CTR_ROOT"] = str(root)
    if debug:
        os.environ["CTR_DEBUG"] = "1"


containers.register(app)
lifecycle.register(app)
app.command("stats")(stats.stats)
app.command("info")(system.info)
app.add_typer(images.app, name="image")
app.add_typer(system.app, name="system")
commit.register(app, images.app)  # commit, export, container prune, image export
app.add_typer(kube.app, name="kube")
app.add_typer(vm.app, name="vm")
app.command("completion")(completion.completion)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(argv))


def _only_invoked(argv: list[str] | None) -> typer.Typer:
    """`app` with only the top-level command or group that `argv` invokes: typer turns every
    command's signature into a click command before running one, ~25 ms for all of ctr's, so
    the others are left out. The whole app when no known command is named (help, a typo:
    click's messages need every name)."""
    import copy

    args = list(sys.argv[1:] if argv is None else argv)
    while args and (args[0] in ("--debug", "--root") or args[0].startswith("--root=")):
        del args[: 2 if args[0] == "--root" else 1]
    if not args or args[0].startswith("-"):
        return app

    def name(info) -> str:
        return info.name or typer.main.get_command_name(info.callback.__name__)

    commands = [c for c in app.registered_commands if name(c) == args[0]]
    groups = [g for g in app.registered_groups if g.name == args[0]]
    if not commands and not groups:
        return app
    pruned = copy.copy(app)
    pruned.registered_commands, pruned.registered_groups = commands, groups
    return pruned


def _usage_message(e) -> str:
    """The usage error's message, with one "Did you mean" at most: for an unknown command
    typer adds its suggestion to the message and click (8.2+) its own after it."""
    if getattr(e, "possibilities", None) and "Did you mean" in e.message:
        return e.message
    return e.format_message()


def run_cli(argv: list[str] | None = None) -> int:
    import click

    from ctr import output

    if os.environ.get(completion.COMPLETE_VAR):  # a shell asking for completions (click's protocol)
        return completion.complete(typer.main.get_command(app))
    command = typer.main.get_command(_only_invoked(argv))
    try:
        rv = command.main(args=argv, prog_name="ctr", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        # one line like every other error; the usage text is a `--help` away
        path = e.ctx.command_path if e.ctx is not None else "ctr"
        message = _usage_message(e)
        if message.strip():  # empty: no arguments at all, the help was shown
            output.error(message, f"see '{path} --help'")
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        sys.stderr.write("Aborted!\n")
        return 130
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        if isinstance(sys.stdout, click.utils.PacifyFlushWrapper):
            # click's answer to EPIPE: it wrapped stdout and exited 1; ours is docker's
            sys.stdout = sys.__stdout__
            return stdout_gone()
        raise
    except Exception as e:
        return report_error(e)
    finally:
        from ctr.cli.common import flush_stdout, reset

        flush_stdout()
        reset()
