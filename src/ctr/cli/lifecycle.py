"""Lifecycle verbs at the top level: logs, start, stop, restart, top, kill, wait, exec."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from ctr.cli.common import complete_container, container_completer, ctx, fail_if_any

CONTEXT = {"allow_interspersed_args": False}
REFS_HELP = "Containers: id, name or unique id prefix"
LATEST_HELP = "Act on the latest created container"


def register(app: typer.Typer) -> None:
    app.command("logs")(logs)
    app.command("start")(start)
    app.command("stop")(stop)
    app.command("restart")(restart)
    app.command("top", context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})(top)
    app.command("kill")(kill)
    app.command("pause")(pause)
    app.command("unpause")(unpause)
    app.command("wait")(wait)
    app.command("exec", context_settings=CONTEXT)(exec_)


def _refs(refs: Optional[List[str]], latest: bool) -> List[str]:
    from ctr.cli.containers import _refs as refs_or_latest

    return refs_or_latest(refs, latest)


def _print_refs(outcomes) -> None:
    for o in outcomes:
        if o.error is None:
            print(o.ref)
    sys.stdout.flush()
    fail_if_any(outcomes)


def logs(
    container: Optional[str] = typer.Argument(None, help="Container: id, name or unique id prefix",
                                              autocompletion=complete_container),
    follow: bool = typer.Option(False, "--follow", "-f", help="Follow the output until the container stops"),
    timestamps: bool = typer.Option(False, "--timestamps", "-t", help="Prefix each line with its time (RFC 3339, UTC)"),
    tail: str = typer.Option("all", "--tail", "-n", help="Number of lines to show from the end, or 'all'"),
    since: Optional[str] = typer.Option(None, "--since", help="Only lines written since a time (2024-01-02T15:04:05Z) or a duration ago (10m)"),
    until: Optional[str] = typer.Option(None, "--until", help="Only lines written before a time, or a duration ago"),
    latest: bool = typer.Option(False, "--latest", "-l", help=LATEST_HELP),
) -> None:
    """Show what a detached container wrote to stdout and stderr."""
    from ctr.engine import lifecycle
    from ctr.errors import InvalidArgument

    if tail == "all":
        n = None
    elif tail.isdigit():
        n = int(tail)
    else:
        raise InvalidArgument(f"invalid --tail {tail!r}", hint="a number of lines, or 'all'")
    bounds = [None if v is None else _log_time(v, what) for v, what in ((since, "since"), (until, "until"))]
    ref = _refs([container] if container else [], latest)[0]
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for line in lifecycle.logs(ctx(), ref, tail=n, follow=follow, since=bounds[0], until=bounds[1]):
        stream = err if line.stream == "stderr" else out
        if timestamps:
            stream.write(line.time.encode() + b" ")
        stream.write(line.data)
        if follow:
            stream.flush()
    out.flush()
    err.flush()


def _log_time(value: str, what: str) -> str:
    """--since/--until as the log's own time stamps (RFC 3339, UTC, nanoseconds), which compare
    as strings."""
    from datetime import timezone

    from ctr.monitor import timestamp
    from ctr.units import parse_time

    t = parse_time(value, what).astimezone(timezone.utc)
    return timestamp(int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000)


def start(
    containers: Optional[List[str]] = typer.Argument(None, help=REFS_HELP,
                                                     autocompletion=container_completer("created", "exited")),
    attach: bool = typer.Option(False, "--attach", "-a", help="Run in the foreground and return its exit code"),
    latest: bool = typer.Option(False, "--latest", "-l", help=LATEST_HELP),
) -> None:
    """Start stopped containers again: the stored command over the same writable layer."""
    from ctr.engine import lifecycle
    from ctr.errors import InvalidArgument

    refs = _refs(containers, latest)
    if attach:
        if len(refs) > 1:
            raise InvalidArgument("cannot start and attach several containers at once",
                                  hint="attach to one, or start them detached (without -a)")
        raise typer.Exit(lifecycle.start_attached(ctx(), refs[0]))
    _print_refs(lifecycle.for_each(refs, lambda r: (lifecycle.start(ctx(), r).id, None)))


def stop(
    containers: Optional[List[str]] = typer.Argument(None, help=REFS_HELP,
                                                     autocompletion=container_completer("running")),
    time: int = typer.Option(10, "--time", "-t", min=0, help="Seconds to wait after SIGTERM before SIGKILL"),
    latest: bool = typer.Option(False, "--latest", "-l", help=LATEST_HELP),
) -> None:
    """Stop running containers: SIGTERM, then SIGKILL after the grace period."""
    from ctr.engine import lifecycle

    refs = _refs(containers, latest)
    _print_refs(lifecycle.for_each(refs, lambda r: (lifecycle.stop(ctx(), r, time).id, None)))


def restart(
    containers: Optional[List[str]] = typer.Argument(None, help=REFS_HELP, autocompletion=complete_container),
    time: int = typer.Option(10, "--time", "-t", min=0, help="Seconds to wait after SIGTERM before SIGKILL"),
    latest: bool = typer.Option(False, "--latest", "-l", help=LATEST_HELP),
) -> None:
    """Stop containers (as `stop`), then start them again (as `start`): same writable layer."""
    from ctr.engine import lifecycle

    refs = _refs(containers, latest)
    _print_refs(lifecycle.for_each(refs, lambda r: (lifecycle.restart(ctx(), r, time).id, None)))


def top(
    container: str = typer.Argument(..., help="Container: id, name or unique id prefix",
                                    autocompletion=container_completer("running")),
    ps_options: Optional[List[str]] = typer.Argument(None, help="Options for ps (default: -ef)"),
) -> None:
    """Show the processes of a running container, as ps shows them on the host."""
    from ctr.engine import lifecycle

    for line in lifecycle.top(ctx(), container, list(ps_options or [])):
        print(line)


def kill(
    containers: Optional[List[str]] = typer.Argument(None, help=REFS_HELP,
                                                     autocompletion=container_completer("running")),
    signal: str = typer.Option("KILL", "--signal", "-s", help="Signal to send: a name (TERM, SIGHUP) or a number"),
    latest: bool = typer.Option(False, "--latest", "-l", help=LATEST_HELP),
) -> None:
    """Send a signal to the main process of running containers."""
    from ctr.engine import lifecycle

    sig = lifecycle.parse_signal(signal)
    refs = _refs(containers, latest)
    _print_refs(lifecycle.for_each(refs, lambda r: (lifecycle.kill(ctx(), r, sig).id, None)))


def pause(
    containers: Optional[List[str]] = typer.Argument(None, help=REFS_HELP,
                                                     autocompletion=container_completer("running")),
    latest: bool = typer.Option(False, "--latest", "-l", help=LATEST_HELP),
) -> None:
    """Pause every process of running containers (the cgroup freezer) until `unpause`."""
    from ctr.engine import lifecycle

    _print_refs(lifecycle.for_each(_refs(containers, latest), lambda r: (lifecycle.pause(ctx(), r).id, None)))


def unpause(
    containers: Optional[List[str]] = typer.Argument(None, help=REFS_HELP,
                                                     autocompletion=container_completer("running")),
    latest: bool = typer.Option(False, "--latest", "-l", help=LATEST_HELP),
) -> None:
    """Resume the processes of paused containers."""
    from ctr.engine import lifecycle

    _print_refs(lifecycle.for_each(_refs(containers, latest), lambda r: (lifecycle.unpause(ctx(), r).id, None)))


def wait(
    containers: Optional[List[str]] = typer.Argument(None, help=REFS_HELP,
                                                     autocompletion=complete_container),
    latest: bool = typer.Option(False, "--latest", "-l", help=LATEST_HELP),
) -> None:
    """Block until containers stop, then print each one's exit code (-1: not recorded)."""
    from ctr.engine import lifecycle

    outcomes = []
    for ref in _refs(containers, latest):
        o = lifecycle.for_each([ref], lambda r: (r, lifecycle.wait(ctx(), r)))[0]
        if o.error is None:
            print(-1 if o.value is None else o.value, flush=True)
        outcomes.append(o)
    fail_if_any(outcomes)


def exec_(
    container: str = typer.Argument(..., help="Container: id, name or unique id prefix (with -l: the command)",
                                    autocompletion=container_completer("running")),
    command: Optional[List[str]] = typer.Argument(None, help="Command and arguments"),
    env: List[str] = typer.Option([], "--env", "-e", help="Set an environment variable (KEY=VALUE, or KEY to pass ctr's)"),
    env_file: List[str] = typer.Option([], "--env-file", help="Read environment variables from a file"),
    workdir: Optional[str] = typer.Option(None, "--workdir", "-w", help="Working directory inside the container"),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="UID[:GID] or name[:group] to run as"),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Keep stdin attached"),
    tty: bool = typer.Option(False, "--tty", "-t", help="Allocate a pseudo-terminal"),
    detach: bool = typer.Option(False, "--detach", "-d", help="Run the command in the background (its output is discarded)"),
    latest: bool = typer.Option(False, "--latest", "-l", help=LATEST_HELP),
) -> None:
    """Run a command inside a running container; returns the command's exit code."""
    from ctr.engine import containers as ce
    from ctr.engine import lifecycle
    from ctr.errors import CtrError

    try:
        argv = list(command or [])
        if latest:
            ref, argv = ce.latest(ctx()).id, [container, *argv]
        else:
            ref = container
        opts = lifecycle.ExecOptions(command=argv, env=list(env), workdir=workdir, user=user,
                                     interactive=interactive, tty=tty, detach=detach, env_files=list(env_file))
        code = lifecycle.exec_(ctx(), ref, opts)
    except CtrError as e:
        if e.exit_code not in (125, 126, 127):
            e.exit_code = 125  # as run: ctr's own failure, apart from the command's codes
        raise
    raise typer.Exit(code)
