"""Image use cases: import, list, inspect, remove; the built-in `host` image."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ctr import faults
from ctr.engine.context import Context
from ctr.engine.refs import resolve
from ctr.errors import Conflict, CtrError, ImageImportError, InvalidArgument, NotFound
from ctr.images.digest import HOST_IMAGE_ID, HashingReader, canonical_json, digest_bytes
from ctr.models import HOST_IMAGE, Image, ImageConfig, Record, now_iso
from ctr.store.store import remove_path
from ctr.store.usage import tree_usage

TYPE_CHECKING = False  # (typing and dataclasses are not imported at run time: `run` reads
if TYPE_CHECKING:  # image records through this module; docs/performance.md)
    import threading
    from typing import BinaryIO, Callable

# tarfile and threading are imported where a directory is imported: `run`, `ps` and `diff`
# read image records only (docs/performance.md)

NAME_RE = re.compile(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*(?::[\w][\w.-]{0,127})?$")


def host_image() -> Image:
    return Image(id=HOST_IMAGE_ID, names=[HOST_IMAGE], layers=[], builtin=True,
                 created="", source="the host's root filesystem (read-only)")


def normalise_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid image name {name!r}",
            hint="use lowercase NAME[:TAG], e.g. busybox:1.36",
        )
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    if name.split(":", 1)[0] == HOST_IMAGE:
        raise InvalidArgument("the name 'host' is reserved for the built-in host image")
    return name


def list_images(ctx: Context, include_host: bool = True) -> list[Image]:
    images = [host_image()] if include_host else []
    for iid in ctx.store.image_ids():
        data = ctx.store.read_image(iid)
        if data is not None:
            images.append(Image.from_dict(data))
    return images


def _names(img: Image) -> list[str]:
    out = []
    for n in img.names:
        out.append(n)
        if n.endswith(":latest"):
            out.append(n[: -len(":latest")])
    return out


def get_image(ctx: Context, ref: str) -> Image:
    if ref in (HOST_IMAGE, HOST_IMAGE + ":latest"):
        return host_image()
    if ref == HOST_IMAGE_ID:
        return host_image()
    if ref.startswith("sha256:") and len(ref) == 71 and all(ch in "0123456789abcdef" for ch in ref[7:]):
        # a full id is matched first anyway (engine/refs.py): read that record, not them all
        data = ctx.store.read_image(ref)
        if data is not None:
            return Image.from_dict(data)
    try:
        return resolve(ref, list_images(ctx), lambda i: i.id, _names, "image")
    except NotFound:
        raise NotFound(
            f"no such image: {ref}",
            hint="`ctr image ls` lists images; import one with `ctr image import SOURCE NAME`, "
            "or use the built-in `host`",
        ) from None


# ----------------------------------------------------------------------------- import
class ImportReport(Record):
    __slots__ = _fields = ("image", "layer_new", "entries", "skipped")

    def __init__(self, image: Image, layer_new: bool, entries: int, skipped: list[str]):
        self.image, self.layer_new, self.entries, self.skipped = image, layer_new, entries, skipped


def _open_archive(path: Path) -> BinaryIO:
    """Open a plain, gzip, bzip2 or xz tar as a stream of uncompressed tar bytes."""
    f = open(path, "rb") if str(path) != "-" else os.fdopen(os.dup(0), "rb")
    head = f.peek(6)[:6] if hasattr(f, "peek") else b""
    if head.startswith(b"\x1f\x8b"):
        import gzip

        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        import lzma

        return lzma.LZMAFile(f)  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        import bz2

        return bz2.BZ2File(f)  # type: ignore[return-value]
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        f.close()
        raise ImageImportError(f"{path} is zstd-compressed, which ctr cannot read",
                               hint=f"decompress it first: zstd -d {path}")
    return f  # type: ignore[return-value]


def _tar_directory(src: Path) -> tuple[BinaryIO, threading.Thread, list[BaseException]]:
    """A pipe carrying a tar of `src`, written by a thread (no temporary copy)."""
    import tarfile
    import threading

    r, w = os.pipe2(os.O_CLOEXEC)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with os.fdopen(w, "wb") as out, tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.add(str(src), arcname=".", recursive=True)
        except BaseException as e:  # reported by the reader side
            errors.append(e)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    return os.fdopen(r, "rb"), t, errors


def import_image(ctx: Context, source: str, name: str | None = None,
                 progress: Callable[[int], None] | None = None) -> ImportReport:
    from ctr.images.extract import extract_tar

    name = normalise_name(name) if name else None
    src = Path(source)
    if source != "-" and not src.exists():
        raise NotFound(f"import source {source} does not exist")
    store = ctx.store
    # an OCI layout/archive or a docker-save archive is a stack of layers with a config
    from ctr.images.oci import probe

    found = probe(source, lambda: store.new_tmp("spool", directory=False))
    if found.kind != "rootfs":
        from ctr.engine.commit import import_bundle

        return import_bundle(ctx, found, name, progress)
    tmp = store.new_tmp("import")
    layer_tmp = tmp / "layer"
    layer_tmp.mkdir()
    thread = None
    errors: list[BaseException] = []
    try:
        if src.is_dir():
            stream, thread, errors = _tar_directory(src)
        else:
            try:
                stream = found.stream or _open_archive(src)  # stdin: what probe() read replayed
            except OSError as e:
                raise CtrError(f"cannot read {source}: {e.strerror}") from e
        reader = HashingReader(stream)
        try:
            result = extract_tar(reader, layer_tmp)
            reader.drain()
        except (EOFError, OSError) as e:
            raise ImageImportError(f"{source}: archive is truncated or corrupt: {e}") from e
        finally:
            stream.close()
        if thread is not None:
            thread.join()
            if errors:
                raise CtrError(f"cannot read directory {source}: {errors[0]}")
        diff_id = reader.digest
        from ctr.engine.check import layer_summary

        # the checksum record and the image size from one metadata-only walk (the contents'
        # hashes were taken during extraction)
        record, size = layer_summary(layer_tmp, result.digests)
        config = ImageConfig()
        image_id = digest_bytes(canonical_json({
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "config": config.__dict__,
        }))
        faults.point("import.layer")
        with store.locked():
            layer_new = store.install_layer(diff_id, layer_tmp, record)
            faults.point("import.installed")
            existing = store.read_image(image_id)
            image = Image.from_dict(existing) if existing else Image(
                id=image_id, names=[], layers=[diff_id], config=config, created=now_iso(),
                size=size, source=str(source),
            )
            if name:
                _move_name(ctx, name, image_id)
                if name not in image.names:
                    image.names.append(name)
            store.write_image(image_id, image.to_dict())
        return ImportReport(image, layer_new, result.entries, result.skipped)
    finally:
        remove_path(tmp)


def _move_name(ctx: Context, name: str, keep: str) -> None:
    """A name points at one image: take it off any other (caller holds the lock)."""
    for iid in ctx.store.image_ids():
        if iid == keep:
            continue
        data = ctx.store.read_image(iid)
        if data and name in data["names"]:
            data["names"].remove(name)
            ctx.store.write_image(iid, data)


def tag_image(ctx: Context, source: str, targets: list[str]) -> Image:
    """`image tag SOURCE TARGET...`: give the image more names (docker tag). A name already on
    another image moves to this one, as at import; the names are checked before any is given."""
    image = get_image(ctx, source)
    if image.builtin:
        raise InvalidArgument(f"the built-in {HOST_IMAGE} image cannot be tagged",
                              hint=f"commit a container of it to make an image: `ctr commit CONTAINER NAME`")
    names = [normalise_name(t) for t in targets]
    store = ctx.store
    with store.locked():
        data = store.read_image(image.id)
        if data is None:
            raise NotFound(f"no such image: {source}")
        for name in names:
            _move_name(ctx, name, image.id)
            if name not in data["names"]:
                data["names"].append(name)
        store.write_image(image.id, data)
    return Image.from_dict(data)


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for f in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


# ----------------------------------------------------------------------------- remove
class RemoveReport(Record):
    __slots__ = _fields = ("ref", "untagged", "deleted", "error")

    def __init__(self, ref: str, untagged: list[str], deleted: str | None, error: CtrError | None = None):
        self.ref, self.untagged, self.deleted, self.error = ref, untagged, deleted, error


def remove_images(ctx: Context, refs: list[str], force: bool = False) -> list[RemoveReport]:
    from ctr.engine import containers as ce

    reports = []
    for ref in refs:
        try:
            reports.append(_remove_one(ctx, ref, force, ce))
        except CtrError as e:
            reports.append(RemoveReport(ref, [], None, e))
    return reports


def _remove_one(ctx: Context, ref: str, force: bool, ce) -> RemoveReport:
    img = get_image(ctx, ref)
    if img.builtin:
        raise Conflict("the built-in host image cannot be removed")
    by_name = ref in _names(img)
    if by_name and len(img.names) > 1:
        full = ref if ref in img.names else ref + ":latest"
        with ctx.store.locked():
            data = ctx.store.read_image(img.id)
            if data and full in data["names"]:
                data["names"].remove(full)
                ctx.store.write_image(img.id, data)
        return RemoveReport(ref, [full], None)
    users = [c for c in ce.list_containers(ctx, all=True) if c.image == img.id]
    if users and not force:
        raise Conflict(
            f"image {ref} is in use by {len(users)} container(s) ({', '.join(c.name for c in users[:3])})",
            hint="remove them first, or use -f to remove them too",
        )
    for r in ce.remove_containers(ctx, [c.id for c in users], force=True):
        if r.error:
            raise r.error
    with ctx.store.locked():
        ctx.store.delete_image(img.id)
        in_use = set()
        for other in list_images(ctx, include_host=False):
            in_use.update(other.layers)
        for layer in img.layers:
            if layer not in in_use:
                ctx.store.discard_layer(layer)
    return RemoveReport(ref, list(img.names), img.id)


# ----------------------------------------------------------------------------- prune
class PruneReport(Record):
    __slots__ = _fields = ("removed", "reclaimed", "errors")

    def __init__(self, removed: list[RemoveReport], reclaimed: int, errors: list[RemoveReport]):
        self.removed, self.reclaimed, self.errors = removed, reclaimed, errors


def prune_images(ctx: Context, all: bool = False, until=None) -> PruneReport:
    """docker's `image prune`: the images no container uses that have no name left (`all`:
    named ones too), created before `until` if given. `reclaimed`: the disk blocks of the
    layers that went with them (a layer another image has stays)."""
    from ctr.engine import containers as ce
    from ctr.models import parse_iso

    store = ctx.store
    used = {c.image for c in ce.list_containers(ctx, all=True)}
    chosen = []
    for img in list_images(ctx, include_host=False):
        created = parse_iso(img.created)
        if img.id in used or (img.names and not all):
            continue
        if until is not None and created is not None and created >= until:
            continue
        chosen.append(img)
    sizes = {d: tree_usage(store.layer_dir(d)).bytes for img in chosen for d in img.layers}
    before = set(store.layer_ids())
    report = PruneReport([], 0, [])
    for img in chosen:
        try:
            report.removed.append(_remove_one(ctx, img.id, False, ce))
        except Conflict:  # a container started using it meanwhile: not unused any more
            continue
        except CtrError as e:
            report.errors.append(RemoveReport(img.id, [], None, e))
    report.reclaimed = sum(sizes.get(d, 0) for d in before - set(store.layer_ids()))
    return report


# ----------------------------------------------------------------------------- history
class HistoryRow(Record):
    __slots__ = _fields = ("id", "created", "created_by", "size", "comment", "tags", "layer")

    def __init__(self, id: str | None, created: str, created_by: str, size: int, comment: str, tags: list[str],
                 layer: str):
        self.id, self.created, self.created_by, self.size = id, created, created_by, size
        self.comment, self.tags, self.layer = comment, tags, layer


def history(ctx: Context, ref: str) -> list[HistoryRow]:
    """docker's `image history`: one row per layer, newest first. The image and each parent
    ctr still has (commit records it) head the rows of the layers it added, with when, from what
    (`source`) and its commit message; a layer whose image is gone, or one of several an import
    brought in together, has no id (docker's `<missing>`)."""
    img = get_image(ctx, ref)
    if img.builtin:
        raise InvalidArgument(f"the built-in {HOST_IMAGE} image has no layers", hint="it is the host's root filesystem")
    rows: list[HistoryRow] = []
    while img is not None:
        parent = None
        if img.parent:
            data = ctx.store.read_image(img.parent)
            parent = Image.from_dict(data) if data else None
        if parent is not None and img.layers[:len(parent.layers)] != parent.layers:
            parent = None  # not a prefix: this image's rows cover all its layers
        own = img.layers[len(parent.layers):] if parent is not None else img.layers
        for i, layer in enumerate(reversed(own)):
            top = i == 0
            rows.append(HistoryRow(img.id if top else None, img.created, img.source if top else "",
                                   tree_usage(ctx.store.layer_dir(layer)).bytes, img.comment if top else "",
                                   list(img.names) if top else [], layer))
        img = parent
    return rows
