"""`ctr image …`: import, ls, history, inspect, tag, prune, rm (export: cli/commit.py)."""

from __future__ import annotations

from typing import List, Optional

import typer

from ctr.cli.common import FORMAT_HELP, check_format, complete_image, ctx, fail_if_any

app = typer.Typer(help="Manage images.", no_args_is_help=True)


@app.command("import")
def import_(
    source: str = typer.Argument(..., help="A root filesystem (directory or tar: plain, gzip, bzip2, xz), an OCI "
                                 "layout or archive, or a docker-save archive; - for stdin"),
    name: Optional[str] = typer.Argument(None, help="NAME[:TAG] to give the image"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the image id"),
) -> None:
    """Import a root filesystem, an OCI image or a docker-save archive as an image."""
    from ctr import output
    from ctr.engine import images as ie

    report = ie.import_image(ctx(), source, name)
    if not quiet:
        for note in report.skipped[:20]:
            output.warn(note)
        if len(report.skipped) > 20:
            output.warn(f"… and {len(report.skipped) - 20} more entries skipped")
    print(report.image.id)


def _image_item(img) -> dict:
    return {
        "Id": img.id,
        "Names": img.names,
        "Layers": img.layers,
        "Created": img.created or None,
        "Size": img.size,
        "Builtin": img.builtin,
        "Config": img.config.__dict__,
        "Source": img.source,
    }


IMAGE_HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "CreatedSince": "CREATED",
                 "CreatedAt": "CREATED AT", "Size": "SIZE"}


@app.command("ls")
def ls(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only display image ids"),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not truncate ids"),
    format: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """List images (the built-in `host` first)."""
    from ctr import output
    from ctr.engine import images as ie
    from ctr.models import short

    check_format(format)
    images = ie.list_images(ctx())
    if quiet:
        for img in images:
            print(img.id if no_trunc else short(img.id))
        return
    rows, views = [], []
    for img in images:
        names = img.names or ["<none>:<none>"]
        for n in names:
            repo, _, tag = n.rpartition(":") if ":" in n else (n, "", "")
            if img.builtin:
                repo, tag = n, "-"
            rows.append([repo, tag, img.id if no_trunc else short(img.id),
                         output.ago(img.created) if img.created else "-",
                         "-" if img.builtin else output.human_size(img.size)])
            views.append(output.View(_image_item(img), {  # one per name, as docker's rows
                "ID": img.id if no_trunc else short(img.id), "Repository": repo, "Tag": tag,
                "CreatedSince": output.ago(img.created) if img.created else "",
                "CreatedAt": output.docker_time(img.created), "Size": output.human_size(img.size)},
                IMAGE_HEADERS))
    output.emit(format, [_image_item(i) for i in images], ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows,
                views=views, view_headers=IMAGE_HEADERS)


@app.command("history")
def history(
    image: str = typer.Argument(..., help="Image: name, id or unique id prefix", autocompletion=complete_image),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only display image ids"),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not truncate ids or what made a layer"),
    format: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """Show an image's layers, newest first: the image (or parent) that added each, and how."""
    from ctr import output
    from ctr.engine import images as ie
    from ctr.models import short

    check_format(format)
    rows = ie.history(ctx(), image)
    if quiet:
        for r in rows:
            print((r.id if no_trunc else short(r.id)) if r.id else "<missing>")
        return
    headers = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedBy": "CREATED BY", "Size": "SIZE",
               "Comment": "COMMENT"}
    items, table, views = [], [], []
    for r in rows:
        shown_id = (r.id if no_trunc else short(r.id)) if r.id else "<missing>"
        by = r.created_by if no_trunc or len(r.created_by) <= 45 else r.created_by[:44] + "…"
        item = {"id": r.id or "<missing>", "created": r.created, "CreatedBy": r.created_by, "size": r.size,
                "comment": r.comment, "tags": r.tags or None, "layer": r.layer}
        items.append(item)
        table.append([shown_id, output.ago(r.created) if r.created else "-", by, output.human_size(r.size), r.comment])
        views.append(output.View(item, {"ID": shown_id, "CreatedSince": output.ago(r.created) if r.created else "",
                                        "CreatedAt": output.docker_time(r.created), "CreatedBy": by,
                                        "Size": output.human_size(r.size), "Comment": r.comment}, headers))
    output.emit(format, items, ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], table, views=views,
                view_headers=headers)


@app.command("inspect")
def inspect(
    images: List[str] = typer.Argument(..., help="Images: name, id or unique id prefix",
                                       autocompletion=complete_image),
    format: str = typer.Option("json", "--format", "-f",
                               help="json, yaml or a template such as '{{.RootFS.Layers}}'"),
) -> None:
    """Show images as docker's image inspect does: Id, RepoTags, Created, Size, Config, RootFS."""
    from ctr import output
    from ctr.cli import inspect_view
    from ctr.engine import images as ie

    check_format(format, ("json", "yaml"))
    items = [inspect_view.image(ie.get_image(ctx(), ref)) for ref in images]
    output.emit(format, items, [], [])


@app.command("tag")
def tag(
    source: str = typer.Argument(..., help="Image: name, id or unique id prefix", autocompletion=complete_image),
    targets: List[str] = typer.Argument(..., help="New names: NAME[:TAG] (default tag: latest)"),
) -> None:
    """Give an image more names (a name another image had moves to this one)."""
    from ctr.engine import images as ie

    ie.tag_image(ctx(), source, list(targets))


@app.command("prune")
def prune(
    all: bool = typer.Option(False, "--all", "-a", help="Remove every image no container uses, not only unnamed ones"),
    force: bool = typer.Option(False, "--force", "-f", help="Do not prompt for confirmation"),
    filter: List[str] = typer.Option([], "--filter", help="until=DURATION|TIME: only images created before it"),
) -> None:
    """Remove images no container uses: those without a name left (with -a: all of them)."""
    from ctr import output
    from ctr.cli.commit import confirm, image_lines, pruned
    from ctr.engine import images as ie
    from ctr.errors import InvalidArgument
    from ctr.units import parse_time

    until = None
    for f in filter:
        key, sep, value = f.partition("=")
        if key != "until" or not sep:
            raise InvalidArgument(f"unsupported filter {f!r}", hint="image prune takes --filter until=DURATION|TIME")
        until = parse_time(value, "until")
    if not force:
        what = "all images without at least one container associated to them" if all else "all dangling images"
        confirm(f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ", "image prune")
    report = ie.prune_images(ctx(), all=all, until=until)
    pruned("Images", image_lines(report.removed))
    print(f"Total reclaimed space: {output.human_size(report.reclaimed)}")
    fail_if_any(report.errors)


@app.command("rm")
def rm(
    images: List[str] = typer.Argument(..., help="Images: name, id or unique id prefix",
                                       autocompletion=complete_image),
    force: bool = typer.Option(False, "--force", "-f", help="Also remove containers that use the image"),
) -> None:
    """Remove images (refused while a container uses one, unless -f)."""
    from ctr.engine import images as ie

    reports = ie.remove_images(ctx(), list(images), force=force)
    for r in reports:
        for n in r.untagged:
            print(f"Untagged: {n}")
        if r.deleted:
            print(f"Deleted: {r.deleted}")
    fail_if_any(reports)
