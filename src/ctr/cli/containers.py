"""Container verbs at the top level: run, ps, rm, diff, inspect."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from ctr.cli.common import FORMAT_HELP, check_format, complete_container, complete_image, ctx, fail_if_any

CONTEXT = {"allow_interspersed_args": False}


def register(app: typer.Typer) -> None:
    app.command("run", context_settings=CONTEXT)(run)
    app.command("ps")(ps)
    app.command("rm")(rm)
    app.command("diff")(diff)
    app.command("inspect")(inspect)


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
) -> None:
    """Run a command in a new container."""
    from ctr import output
    from ctr.engine import containers as ce
    from ctr.errors import CtrError
    from ctr.cli.common import G
    from ctr.units import parse_size

    G.run_like = True
    try:
        opts = ce.RunOptions(
            image=image, command=list(command or []), name=name, isolation=isolation, driver=driver,
            env=list(env), env_files=list(env_file), workdir=workdir, volumes=list(volume), user=user,
            interactive=interactive, tty=tty, remove=rm, hostname=hostname,
            memory=parse_size(memory, "memory") if memory else None, cpus=cpus,
        )
        c, image_rec, drv = ce.create(ctx(), opts)
    except CtrError as e:
        e.exit_code = 125
        raise
    if drv.emulated:
        output.warn(f"{c.isolation} isolation is emulated by the {drv.name} driver: {drv.summary}")
    if detach:
        from ctr.engine import lifecycle

        print(lifecycle.start_detached(ctx(), c, image_rec, drv).id)
        raise typer.Exit(0)
    _, code = c, ce.start_foreground(ctx(), c, image_rec, drv)
    raise typer.Exit(code)


def _ps_item(c) -> dict:
    """The raw record `ps --format json|yaml` prints: full ids, ISO-8601 times (no relative ones), arrays."""
    from ctr import output

    return {
        "Id": c.id,
        "Names": [c.name],
        "Image": c.image_name,
        "ImageID": c.image,
        "Command": c.config.command,
        "Created": c.created,
        "StartedAt": c.started,
        "ExitedAt": c.finished,
        "State": c.state,
        "Status": output.status_text(c.state, c.exit_code, c.started, c.finished, relative=False),
        "ExitCode": c.exit_code,
        "Pid": c.pid if c.state == "running" else 0,
        "Isolation": c.isolation,
        "Driver": c.driver,
        "Emulated": c.emulated,
    }


PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
              "RunningFor": "CREATED", "Status": "STATUS", "State": "STATE", "Names": "NAMES",
              "Isolation": "ISOLATION", "Driver": "DRIVER", "ExitCode": "EXIT CODE"}


def _ps_view(c, item: dict, no_trunc: bool):
    """What `ps --format '{{.Field}}'` sees: docker's fields (ID short, Names and Command as
    strings, RunningFor, Status) over the raw item; `{{json .}}` prints the raw item."""
    from ctr import output
    from ctr.models import short

    cmd = " ".join(c.config.command)
    if not no_trunc and len(cmd) > 20:
        cmd = cmd[:19] + "…"
    return output.View(item, {
        "ID": c.id if no_trunc else short(c.id),
        "Names": ",".join(item["Names"]),
        "Command": f'"{cmd}"',
        "CreatedAt": output.docker_time(c.created),
        "RunningFor": output.ago(c.created),
        "Status": output.status_text(c.state, c.exit_code, c.started, c.finished, relative=True),
    }, PS_HEADERS)


FILTER_KEYS = ("id", "name", "status", "ancestor", "exited", "isolation", "driver")


def _filter(cs, filters: List[str]):
    from ctr.errors import InvalidArgument

    wanted: dict[str, list[str]] = {}
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in FILTER_KEYS:
            raise InvalidArgument(f"invalid filter {f!r}", hint="use KEY=VALUE with KEY one of " + ", ".join(FILTER_KEYS))
        wanted.setdefault(key, []).append(value)

    ancestors: set[str] = set()
    for v in wanted.get("ancestor", []):  # any reference to an image: name[:tag], id, prefix
        from ctr.engine.images import get_image
        from ctr.errors import CtrError

        try:
            ancestors.add(get_image(ctx(), v).id)
        except CtrError:
            pass

    def match(c) -> bool:
        for key, values in wanted.items():
            if key == "id":
                ok = any(c.id.startswith(v) for v in values)
            elif key == "name":
                ok = any(v in c.name for v in values)
            elif key == "status":
                ok = c.state in values
            elif key == "ancestor":
                ok = c.image in ancestors or c.image_name in values
            elif key == "exited":
                ok = c.state == "exited" and str(c.exit_code) in values
            else:
                ok = getattr(c, key) in values
            if not ok:
                return False
        return True

    return [c for c in cs if match(c)]


def ps(
    all: bool = typer.Option(False, "--all", "-a", help="Show all containers (default shows just running)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only display container ids"),
    last: int = typer.Option(-1, "--last", "-n", help="Show the n last created containers (all states)"),
    latest: bool = typer.Option(False, "--latest", "-l", help="Show the latest created container (all states)"),
    filter: List[str] = typer.Option([], "--filter", "-f", help="Filter: id, name, status, ancestor, exited, isolation, driver"),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not truncate output"),
    format: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """List containers."""
    from ctr import output
    from ctr.engine import containers as ce
    from ctr.models import short

    check_format(format)
    if latest:
        last = 1
    # as docker: asking for a state by filter shows containers in that state without -a
    by_state = any(f.split("=", 1)[0] in ("status", "exited") for f in filter)
    cs = ce.list_containers(ctx(), all=all or last > 0 or by_state)
    cs = _filter(cs, filter)
    if last > 0:
        cs = cs[:last]
    if quiet:
        for c in cs:
            print(c.id if no_trunc else short(c.id))
        return
    items = [_ps_item(c) for c in cs]
    rows = []
    for c, it in zip(cs, items):
        cmd = " ".join(c.config.command)
        if not no_trunc and len(cmd) > 20:
            cmd = cmd[:19] + "…"
        drv = c.driver + (" (emulated)" if c.emulated else "")
        rows.append([c.id if no_trunc else short(c.id), c.image_name, f'"{cmd}"', output.ago(c.created),
                     output.status_text(c.state, c.exit_code, c.started, c.finished), c.name, c.isolation, drv])
    output.emit(format, items, ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES",
                                "ISOLATION", "DRIVER"], rows,
                views=[_ps_view(c, it, no_trunc) for c, it in zip(cs, items)], view_headers=PS_HEADERS)


def _refs(refs: Optional[List[str]], latest: bool) -> List[str]:
    from ctr.engine import containers as ce
    from ctr.errors import InvalidArgument

    refs = list(refs or [])
    if latest:
        refs.append(ce.latest(ctx()).id)
    if not refs:
        raise InvalidArgument("requires at least one container reference", hint="or use --latest")
    return refs


def rm(
    containers: Optional[List[str]] = typer.Argument(None, help="Containers: id, name or unique id prefix",
                                                     autocompletion=complete_container),
    force: bool = typer.Option(False, "--force", "-f", help="Kill and remove running containers"),
    latest: bool = typer.Option(False, "--latest", "-l", help="Act on the latest created container"),
) -> None:
    """Remove one or more containers and everything they wrote."""
    from ctr.engine import containers as ce

    results = ce.remove_containers(ctx(), _refs(containers, latest), force=force)
    for r in results:
        if r.error is None:
            print(r.ref)
    fail_if_any(results)


def diff(
    container: Optional[str] = typer.Argument(None, help="Container: id, name or unique id prefix",
                                              autocompletion=complete_container),
    format: str = typer.Option("table", "--format", help="table (A|C|D lines), json or yaml"),
    latest: bool = typer.Option(False, "--latest", "-l", help="Act on the latest created container"),
) -> None:
    """Show what a container added (A), changed (C) and deleted (D)."""
    from ctr import changes, output
    from ctr.engine import containers as ce

    check_format(format)
    ref = _refs([container] if container else [], latest)[0]
    found = ce.diff(ctx(), ref)
    if format == "table":
        sys.stdout.write(changes.render(found))
    elif format == "json":
        output.as_json(changes.group(found))
    elif format == "yaml":
        output.as_yaml(changes.group(found))
    else:
        output.template(format, [{"Kind": c.kind, "Path": c.path} for c in found])


def inspect(
    containers: Optional[List[str]] = typer.Argument(None, help="Containers: id, name or unique id prefix",
                                                     autocompletion=complete_container),
    format: str = typer.Option("json", "--format", help="json, yaml or a {{.Field}} template"),
    latest: bool = typer.Option(False, "--latest", "-l", help="Act on the latest created container"),
) -> None:
    """Show the full record of one or more containers."""
    from ctr import output
    from ctr.engine import containers as ce
    from ctr.errors import CtrError

    check_format(format, ("json", "yaml"))
    items, failed = [], []
    for ref in _refs(containers, latest):
        try:
            items.append(ce.inspect(ctx(), ref))
        except CtrError as e:
            failed.append(e)
    if items:
        if format == "json":
            output.as_json(items)
        elif format == "yaml":
            output.as_yaml(items)
        else:
            output.template(format, items)
    for e in failed:
        output.error(e.message, e.hint)
    if failed:
        raise typer.Exit(1)
