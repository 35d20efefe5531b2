"""The bodies of the container verbs CI scripts call in loops — `run`, `ps`, `rm`, `diff` — as
plain functions that import neither typer nor click.

`cli/containers.py` declares these commands for typer (options, help, completion) and calls
the functions here; `cli/fast.py` calls them straight from argv for the common shapes of those
commands, without building the click command tree (see docs/performance.md). Either way the
same code runs, so a behaviour lives here once.
"""

from __future__ import annotations

import os
import sys

from ctr.cli.common import ctx

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional


def run(image: str, command: Optional[List[str]] = None, name: Optional[str] = None,
        isolation: Optional[str] = None, driver: Optional[str] = None, rm: bool = False,
        env: List[str] = (), env_file: List[str] = (), workdir: Optional[str] = None,
        volume: List[str] = (), user: Optional[str] = None, interactive: bool = False, tty: bool = False,
        hostname: Optional[str] = None, memory: Optional[str] = None, cpus: Optional[float] = None,
        detach: bool = False, entrypoint: Optional[str] = None, label: List[str] = (),
        cidfile: Optional[str] = None, read_only: bool = False) -> int:
    """Run a command in a new container; returns the exit code `ctr run` exits with."""
    options = dict(locals())
    del options["detach"]
    from ctr import output

    c, image_rec, drv = _create(**options)
    if drv.emulated:
        output.warn(f"{c.isolation} isolation is emulated by the {drv.name} driver: {drv.summary}")
    if detach:
        from ctr.engine import lifecycle

        print(lifecycle.start_detached(ctx(), c, image_rec, drv).id)
        return 0
    from ctr.engine import containers as ce

    return ce.start_foreground(ctx(), c, image_rec, drv)


def create(**options) -> int:
    """`ctr create`: the container `run` would make (the same arguments, -d aside), its id
    printed, nothing started."""
    print(_create(**options)[0].id)
    return 0


def _create(image: str, command: Optional[List[str]], name: Optional[str], isolation: Optional[str],
            driver: Optional[str], rm: bool, env: List[str], env_file: List[str], workdir: Optional[str],
            volume: List[str], user: Optional[str], interactive: bool, tty: bool, hostname: Optional[str],
            memory: Optional[str], cpus: Optional[float], entrypoint: Optional[str], label: List[str],
            cidfile: Optional[str], read_only: bool):
    from ctr.cli.common import G
    from ctr.engine import containers as ce
    from ctr.errors import Conflict, CtrError
    from ctr.units import parse_size

    G.run_like = True
    try:
        opts = ce.RunOptions(
            image=image, command=list(command or []), name=name, isolation=isolation, driver=driver,
            env=list(env), env_files=list(env_file), workdir=workdir, volumes=list(volume), user=user,
            interactive=interactive, tty=tty, remove=rm, hostname=hostname,
            memory=parse_size(memory, "memory") if memory else None, cpus=cpus, entrypoint=entrypoint,
            labels=list(label), read_only=read_only,
        )
        if cidfile is not None and os.path.lexists(cidfile):
            raise Conflict(f"container ID file {cidfile} exists: another container may be using it",
                           hint="remove the file, or give another --cidfile")
        made = ce.create(ctx(), opts)
        if cidfile is not None:
            _write_cidfile(cidfile, made[0].id)
        return made
    except CtrError as e:
        e.exit_code = 125
        raise


def _write_cidfile(path: str, cid: str) -> None:
    """docker's --cidfile: the full id, no newline, in a file that must not exist yet; the
    container is removed again when it cannot be written."""
    from ctr.engine import containers as ce
    from ctr.errors import Conflict

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, cid.encode())
        finally:
            os.close(fd)
    except OSError as e:
        ce.remove_containers(ctx(), [cid], force=True)
        raise Conflict(f"cannot write the container ID file {path}: {e.strerror}") from None


def _ps_item(c, paused: bool = False) -> dict:
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
        "State": "paused" if paused else c.state,
        "Status": output.status_text(c.state, c.exit_code, c.started, c.finished, relative=False, paused=paused),
        "ExitCode": c.exit_code,
        "Pid": c.pid if c.state == "running" else 0,
        "Isolation": c.isolation,
        "Driver": c.driver,
        "Emulated": c.emulated,
        "Labels": dict(c.config.labels),
    }


PS_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
              "RunningFor": "CREATED", "Status": "STATUS", "State": "STATE", "Names": "NAMES",
              "Isolation": "ISOLATION", "Driver": "DRIVER", "ExitCode": "EXIT CODE", "Labels": "LABELS"}


def _ps_view(c, item: dict, no_trunc: bool, paused: bool = False):
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
        "Status": output.status_text(c.state, c.exit_code, c.started, c.finished, relative=True, paused=paused),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(c.config.labels.items())),
    }, PS_HEADERS)


FILTER_KEYS = ("id", "name", "status", "ancestor", "exited", "isolation", "driver", "label")


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
            elif key == "status":  # as docker's: a paused container's status is `paused`
                from ctr.engine.containers import is_paused

                ok = ("paused" if is_paused(c) else c.state) in values
            elif key == "ancestor":
                ok = c.image in ancestors or c.image_name in values
            elif key == "exited":
                ok = c.state == "exited" and str(c.exit_code) in values
            elif key == "label":  # as docker: every label filter must match
                ok = all(c.config.has_label(v) for v in values)
            else:
                ok = getattr(c, key) in values
            if not ok:
                return False
        return True

    return [c for c in cs if match(c)]


def ps(all: bool = False, quiet: bool = False, last: int = -1, latest: bool = False,
       filter: List[str] = (), no_trunc: bool = False, format: str = "table") -> None:
    """List containers."""
    from ctr import output
    from ctr.cli.common import check_format
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
    paused = {c.id for c in cs if ce.is_paused(c)}
    items = [_ps_item(c, c.id in paused) for c in cs]
    rows = []
    for c, it in zip(cs, items):
        cmd = " ".join(c.config.command)
        if not no_trunc and len(cmd) > 20:
            cmd = cmd[:19] + "…"
        drv = c.driver + (" (emulated)" if c.emulated else "")
        rows.append([c.id if no_trunc else short(c.id), c.image_name, f'"{cmd}"', output.ago(c.created),
                     output.status_text(c.state, c.exit_code, c.started, c.finished, paused=c.id in paused),
                     c.name, c.isolation, drv])
    output.emit(format, items, ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES",
                                "ISOLATION", "DRIVER"], rows,
                views=[_ps_view(c, it, no_trunc, c.id in paused) for c, it in zip(cs, items)], view_headers=PS_HEADERS)


def _refs(refs: Optional[List[str]], latest: bool) -> List[str]:
    from ctr.engine import containers as ce
    from ctr.errors import InvalidArgument

    refs = list(refs or [])
    if latest:
        refs.append(ce.latest(ctx()).id)
    if not refs:
        raise InvalidArgument("requires at least one container reference", hint="or use --latest")
    return refs


def rm(containers: Optional[List[str]] = None, force: bool = False, latest: bool = False) -> int:
    """Remove one or more containers and everything they wrote; returns the exit code."""
    from ctr import output
    from ctr.engine import containers as ce

    results = ce.remove_containers(ctx(), _refs(containers, latest), force=force)
    for r in results:
        if r.error is None:
            print(r.ref)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        output.error(r.error.message, r.error.hint)
    return 1 if failed else 0


def diff(container: Optional[str] = None, format: str = "table", latest: bool = False) -> None:
    """Show what a container added (A), changed (C) and deleted (D)."""
    from ctr import changes
    from ctr.cli.common import check_format
    from ctr.engine import containers as ce

    check_format(format)
    ref = _refs([container] if container else [], latest)[0]
    found = ce.diff(ctx(), ref)
    if format == "table":
        sys.stdout.write(changes.render(found))
        return
    from ctr import output  # (not for the A|C|D table)

    if format == "json":
        output.as_json(changes.group(found))
    elif format == "yaml":
        output.as_yaml(changes.group(found))
    else:
        output.template(format, [{"Kind": c.kind, "Path": c.path} for c in found])
