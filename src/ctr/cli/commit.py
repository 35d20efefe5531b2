"""`ctr commit`, `ctr export`, `ctr container prune`, `ctr image export`."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import BinaryIO, Iterator, List, Optional

import typer

from ctr.cli import common
from ctr.cli.common import ctx, fail_if_any

# completion callbacks, where this tree has them
_complete_container = getattr(common, "complete_container", None)
_complete_image = getattr(common, "complete_image", None)

container_app = typer.Typer(help="Manage containers.", no_args_is_help=True)


def register(app: typer.Typer, images_app: typer.Typer) -> None:
    app.command("commit")(commit)
    app.command("export")(export)
    container_app.command("prune")(prune)
    app.add_typer(container_app, name="container")
    images_app.command("export")(image_export)


# ----------------------------------------------------------------------------- output files
@contextmanager
def open_output(path: Optional[str], what: str) -> Iterator[BinaryIO]:
    """Where an archive goes: FILE (written to a temporary name beside it and renamed into
    place when complete, so a failure leaves no half-written FILE), a FIFO or device as it
    is, or stdout when no FILE is given and stdout is not a terminal."""
    from ctr.errors import CtrError

    if path is None or path == "-":
        if sys.stdout.isatty():
            raise CtrError(f"refusing to write {what} to a terminal",
                           hint="use -o FILE, or redirect the output: … > FILE")
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    try:
        st = os.stat(path)
        special = not _is_regular(st.st_mode)
    except FileNotFoundError:
        special = False
    except OSError as e:
        raise CtrError(f"cannot write {path}: {e.strerror}") from None
    if special:
        with _open(path, "wb") as f:
            yield f
        return
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.ctr-{os.getpid()}.tmp")
    f = _open(tmp, "xb")
    try:
        with f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _open(path: str, mode: str) -> BinaryIO:
    from ctr.errors import CtrError

    try:
        return open(path, mode)  # type: ignore[return-value]
    except OSError as e:
        raise CtrError(f"cannot write {path}: {e.strerror}") from None


class _Counting:
    """A binary output that tells a progress bar how much went through it."""

    def __init__(self, raw: BinaryIO, advance):
        self.raw, self.advance = raw, advance

    def write(self, data) -> int:
        n = self.raw.write(data)
        self.advance(len(data))
        return n

    def flush(self) -> None:
        self.raw.flush()


def _warn_notes(notes: list[str], limit: int = 20) -> None:
    from ctr import output

    for note in notes[:limit]:
        output.warn(note)
    if len(notes) > limit:
        output.warn(f"… and {len(notes) - limit} more")


# ----------------------------------------------------------------------------- commit
def commit(
    container: str = typer.Argument(..., help="Container: id, name or unique id prefix",
                                    autocompletion=_complete_container),
    image: Optional[str] = typer.Argument(None, help="NAME[:TAG] for the new image"),
    message: str = typer.Option("", "--message", "-m", help="Commit message"),
    author: str = typer.Option("", "--author", "-a", help='Author (e.g. "Jane <jane@example.com>")'),
    change: List[str] = typer.Option([], "--change", "-c",
                                     help="Set CMD, ENTRYPOINT, ENV, WORKDIR or USER, e.g. 'CMD [\"sh\"]'"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the image id, no notes"),
) -> None:
    """Create a new image from a container's changes."""
    from ctr import output
    from ctr.engine import commit as ec

    with output.progress(None, "Committing", unit="bytes", quiet=quiet) as bar:
        report = ec.commit(ctx(), ec.CommitOptions(container, image, message, author, list(change)),
                           progress=bar.advance)
    if not quiet:
        _warn_notes(report.skipped)
    print(report.image.id)


# ----------------------------------------------------------------------------- export
def export(
    container: str = typer.Argument(..., help="Container: id, name or unique id prefix",
                                    autocompletion=_complete_container),
    output_: Optional[str] = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout"),
) -> None:
    """Export a container's filesystem as a tar archive."""
    from ctr import output
    from ctr.engine import commit as ec

    with open_output(output_, "a tar archive") as out, output.progress(None, "Exporting", unit="bytes") as bar:
        report = ec.export_container(ctx(), container, _Counting(out, bar.advance))
    _warn_notes(report.skipped)


# ----------------------------------------------------------------------------- prune
def confirm(question: str, verb: str) -> None:
    """Ask `question` on stderr and read the answer from stdin: a yes goes on, another answer
    ends the command (exit 0, as docker's), no answer at all is an error (use -f)."""
    from ctr.errors import CtrError

    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:
        raise CtrError(f"{verb} needs a confirmation and stdin gave none", hint="use -f to remove without asking")
    if answer.strip().lower() not in ("y", "yes"):
        raise typer.Exit(0)


def prune(
    force: bool = typer.Option(False, "--force", "-f", help="Do not prompt for confirmation"),
    filter: List[str] = typer.Option([], "--filter",
                                     help="until=DURATION|TIME (created before), label=KEY[=VALUE], label!=KEY[=VALUE]"),
) -> None:
    """Remove all stopped containers."""
    from ctr import output
    from ctr.engine import commit as ec

    filters = ec.parse_prune_filters(list(filter))
    if not force:
        confirm("WARNING! This will remove all stopped containers.\nAre you sure you want to continue? [y/N] ",
                "container prune")
    report = ec.prune_containers(ctx(), filters)
    pruned("Containers", report.removed)
    print(f"Total reclaimed space: {output.human_size(report.reclaimed)}")
    fail_if_any(report.errors)


def pruned(what: str, lines: list[str]) -> None:
    """A prune's section of its output, as docker prints it: `Deleted WHAT:`, lines, a blank."""
    if lines:
        print(f"Deleted {what}:")
        for line in lines:
            print(line)
        print()


def image_lines(removed) -> list[str]:
    """docker's `untagged:` / `deleted:` lines of the images a prune removed."""
    return [line for r in removed for line in (*(f"untagged: {n}" for n in r.untagged), f"deleted: {r.deleted}")]


# ----------------------------------------------------------------------------- image export
def image_export(
    image: str = typer.Argument(..., help="Image: name, id or unique id prefix", autocompletion=_complete_image),
    output_: Optional[str] = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout"),
    format: str = typer.Option("oci-archive", "--format", help="oci-archive or docker-archive"),
) -> None:
    """Write an image as an OCI archive (or a docker-save archive) for podman, skopeo, docker."""
    from ctr.engine import commit as ec
    from ctr.errors import InvalidArgument

    if format not in ec.FORMATS:
        raise InvalidArgument(f"unknown archive format {format!r}", hint="use " + " or ".join(ec.FORMATS))
    from ctr import output

    with open_output(output_, "an image archive") as out, output.progress(None, "Exporting", unit="bytes") as bar:
        report = ec.export_image(ctx(), image, _Counting(out, bar.advance), format)
    _warn_notes(report.skipped)
