"""Container verbs at the top level: run, create, ps, rm, diff, inspect, rename, cp."""

from __future__ import annotations

from typing import List, Optional

import typer

from ctr.cli import plain
from ctr.cli.common import FORMAT_HELP, check_format, complete_container, complete_image, ctx
from ctr.cli.plain import FILTER_KEYS, PS_HEADERS, _refs  # noqa: F401 - also used by lifecycle.py

CONTEXT = {"allow_interspersed_args": False}


def register(app: typer.Typer) -> None:
    app.command("run", context_settings=CONTEXT)(run)
    app.command("create", context_settings=CONTEXT)(create)
    app.command("ps")(ps)
    app.command("rm")(rm)
    app.command("diff")(diff)
    app.command("inspect")(inspect)
    app.command("rename")(rename)
    app.command("cp")(cp)


def run(
    image: str = typer.Argument(..., help="Image to run: a name, an id, or the built-in 'host'",
                                autocompletion=complete_image),
    command: Optional[List[str]] = typer.Argument(None, help="Command and arguments (default: the image's)"),
    name: Optional[str] = typer.Option(None, "--name", help="Assign a name to the container"),
    isolation: Optional[str] = typer.Option(None, "--isolation", help="process or hyperv (default from config: process)"),
    driver: Optional[str] = typer.Option(None, "--driver", help="Driver for the isolation level (see `ctr info`)"),
    rm: bool = typer.Option(False, "--rm", help="Remove the container when it exits"),
    env: List[str] = typer.Option([], "--env", "-e", help="Set an environment variable (KEY=VALUE, or KEY to pass ctr's)"),
    env_file: List[str] = typer.Option([], "--env-file", help="Read environment variables from a file"),
    workdir: Optional[str] = typer.Option(None, "--workdir", "-w", help="Working directory inside the container"),
    volume: List[str] = typer.Option([], "--volume", "-v", help="Bind mount a host path: SRC:DST[:ro|rw]"),
    user: Optional[str] = typer.Option(None, "--user", "-u", help="UID[:GID] or name[:group] to run as"),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Keep stdin attached"),
    tty: bool = typer.Option(False, "--tty", "-t", help="Allocate a pseudo-terminal"),
    hostname: Optional[str] = typer.Option(None, "--hostname", help="Container hostname (isolated drivers)"),
    memory: Optional[str] = typer.Option(None, "--memory", "-m", help="Memory limit, e.g. 512m"),
    cpus: Optional[float] = typer.Option(None, "--cpus", help="Number of CPUs"),
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background under a monitor; print the id"),
    entrypoint: Optional[str] = typer.Option(
        None, "--entrypoint", help="Overwrite the image's entrypoint (a program, or a JSON array); '' clears it. "
                                   "The image's default command is then not used"),
    label: List[str] = typer.Option([], "--label", "-l", help="Set a label: KEY=VALUE (ps --filter label=KEY[=VALUE])"),
    cidfile: Optional[str] = typer.Option(None, "--cidfile", help="Write the container's id to FILE (which must not exist)"),
    read_only: bool = typer.Option(False, "--read-only", help="Mount the root filesystem read-only (/tmp, /dev/shm and volumes stay writable)"),
) -> None:
    """Run a command in a new container."""
    code = plain.run(image=image, command=command, name=name, isolation=isolation, driver=driver, rm=rm,
                     env=env, env_file=env_file, workdir=workdir, volume=volume, user=user,
                     interactive=interactive, tty=tty, hostname=hostname, memory=memory, cpus=cpus,
                     detach=detach, entrypoint=entrypoint, label=label, cidfile=cidfile, read_only=read_only)
    raise typer.Exit(code)


def create(**options) -> None:
    """Create a container without starting it; print its id (`ctr start` runs it)."""
    raise typer.Exit(plain.create(**options))


def _like_run_without_detach(fn):
    """`create` takes run's arguments and options, -d aside: typer reads the parameters from
    __signature__ and their types from __annotations__."""
    import inspect

    sig = inspect.signature(run)
    fn.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "detach"])
    fn.__annotations__ = {k: v for k, v in run.__annotations__.items() if k != "detach"}
    return fn


_like_run_without_detach(create)


def ps(
    all: bool = typer.Option(False, "--all", "-a", help="Show all containers (default shows just running)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only display container ids"),
    last: int = typer.Option(-1, "--last", "-n", help="Show the n last created containers (all states)"),
    latest: bool = typer.Option(False, "--latest", "-l", help="Show the latest created container (all states)"),
    filter: List[str] = typer.Option([], "--filter", "-f", help="Filter: id, name, status, ancestor, exited, isolation, driver, label"),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not truncate output"),
    format: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """List containers."""
    plain.ps(all=all, quiet=quiet, last=last, latest=latest, filter=filter, no_trunc=no_trunc, format=format)


def rm(
    containers: Optional[List[str]] = typer.Argument(None, help="Containers: id, name or unique id prefix",
                                                     autocompletion=complete_container),
    force: bool = typer.Option(False, "--force", "-f", help="Kill and remove running containers"),
    latest: bool = typer.Option(False, "--latest", "-l", help="Act on the latest created container"),
) -> None:
    """Remove one or more containers and everything they wrote."""
    code = plain.rm(containers=containers, force=force, latest=latest)
    if code:
        raise typer.Exit(code)


def diff(
    container: Optional[str] = typer.Argument(None, help="Container: id, name or unique id prefix",
                                              autocompletion=complete_container),
    format: str = typer.Option("table", "--format", help="table (A|C|D lines), json or yaml"),
    latest: bool = typer.Option(False, "--latest", "-l", help="Act on the latest created container"),
) -> None:
    """Show what a container added (A), changed (C) and deleted (D)."""
    plain.diff(container=container, format=format, latest=latest)


def rename(
    container: str = typer.Argument(..., help="Container: id, name or unique id prefix",
                                    autocompletion=complete_container),
    new_name: str = typer.Argument(..., help="Its new name"),
) -> None:
    """Rename a container."""
    from ctr.engine import containers as ce

    ce.rename(ctx(), container, new_name)


def cp(
    src: str = typer.Argument(..., help="CONTAINER:SRC_PATH, a host path, or - (a tar archive on stdin)"),
    dest: str = typer.Argument(..., help="CONTAINER:DEST_PATH, a host path, or - (a tar archive to stdout)"),
    archive: bool = typer.Option(False, "--archive", "-a",
                                 help="Keep the source's owners (numeric ids) and setuid/setgid bits"),
    follow_link: bool = typer.Option(False, "--follow-link", "-L", help="Follow a symlink at SRC_PATH"),
) -> None:
    """Copy files and directories between a container (running or stopped) and the host."""
    from ctr import output
    from ctr.engine import cp as engine_cp

    report = engine_cp.copy(ctx(), src, dest, archive=archive, follow=follow_link)
    if report.skipped:
        output.warn(f"skipped {len(report.skipped)} special file(s) (devices, fifos): "
                    + ", ".join(report.skipped[:5]) + (" ..." if len(report.skipped) > 5 else ""))


def inspect(
    containers: Optional[List[str]] = typer.Argument(None, help="Containers: id, name or unique id prefix",
                                                     autocompletion=complete_container),
    format: str = typer.Option("json", "--format", "-f",
                               help="json, yaml or a template such as '{{.State.Status}}'"),
    latest: bool = typer.Option(False, "--latest", "-l", help="Act on the latest created container"),
) -> None:
    """Show containers as docker's inspect does: Id, Name, State, Config, HostConfig, Mounts."""
    from ctr import output
    from ctr.cli import inspect_view
    from ctr.engine import containers as ce
    from ctr.errors import CtrError

    check_format(format, ("json", "yaml"))
    items, failed = [], []
    for ref in _refs(containers, latest):
        try:
            items.append(inspect_view.container(ce.inspect(ctx(), ref)))
        except CtrError as e:
            failed.append(e)
    if items:
        output.emit(format, items, [], [])
    for e in failed:
        output.error(e.message, e.hint)
    if failed:
        raise typer.Exit(1)
