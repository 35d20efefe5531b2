"""Use cases that turn containers into images and images into archives, and back:
`commit`, `export`, `container prune`, `image export`, and the import of image bundles
(OCI layouts and archives, docker-save archives) that `image import` hands over.

Everything that touches the store happens here; reading and writing tar and OCI formats is
`images/layers.py` and `images/oci.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable

from ctr import faults
from ctr.drivers import get_driver
from ctr.engine.containers import get_container, list_containers, remove_containers
from ctr.engine.check import TAR_RECORD, layer_summary
from ctr.engine.context import Context
from ctr.engine.images import ImportReport, _move_name, _names, _tree_size, get_image, normalise_name
from ctr.errors import Conflict, CtrError, DriverError, InvalidArgument
from ctr.images import layers as lt
from ctr.images import oci
from ctr.images.digest import HashingReader, digest_bytes
from ctr.models import Container, Image, ImageConfig, State, now_iso, parse_iso, replace, short
from ctr.store.store import remove_path
from ctr.store.usage import tree_usage

class _Counting:
    """A stream that reports how many bytes went through it (for progress bars)."""

    def __init__(self, raw, progress: Callable[[int], None]):
        self.raw, self.progress = raw, progress

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.progress(len(data))
        return data


# ============================================================================ commit
@dataclass
class CommitOptions:
    ref: str
    name: str | None = None
    message: str = ""
    author: str = ""
    changes: list[str] = field(default_factory=list)  # Dockerfile-style: CMD, ENV, …


@dataclass
class CommitReport:
    image: Image
    layer: str  # diff id of the new layer
    layer_new: bool  # False when an identical layer was already in the store
    skipped: list[str]


def commit(ctx: Context, opts: CommitOptions, progress: Callable[[int], None] | None = None) -> CommitReport:
    """The container's writable layer becomes a new read-only layer over its image."""
    name = normalise_name(opts.name) if opts.name else None
    c = get_container(ctx, opts.ref)
    parent = get_image(ctx, c.image)
    if parent.builtin:
        raise Conflict(
            f"container {c.name} runs on the built-in host image, which is not a layer ctr can "
            "build on",
            hint=f"make an image of its whole filesystem: ctr export {c.name} | ctr image import - NAME",
        )
    config = apply_changes(parent.config, opts.changes)
    produce = _layer_producer(ctx, c, parent)
    store = ctx.store
    tmp = store.new_tmp("commit")
    try:
        dest = tmp / "layer"
        dest.mkdir()
        diff_id, skipped = _build_layer(produce, dest, progress)
        layers = parent.layers + [diff_id]
        created = now_iso()
        doc = oci.oci_config(config, layers, created, opts.author, opts.message)
        image_id = digest_bytes(oci.config_bytes(doc))
        size = _tree_size(dest)
        faults.point("commit.layer")
        with store.locked():
            missing = [d for d in parent.layers if not store.has_layer(d)]
            if missing:
                raise Conflict(f"image {parent.short_id} lost layer {short(missing[0])} while committing",
                               hint="it was removed meanwhile; import it again")
            # the layer's tar was written canonically, so its tree checksum (version 1) is its
            # diff id: nothing to compute (engine/check.py)
            layer_new = store.install_layer(diff_id, dest, {"version": TAR_RECORD, "tree": diff_id})
            faults.point("commit.installed")
            image = Image(
                id=image_id, names=[], layers=layers, config=config, created=created,
                size=parent.size + size, source=f"commit of container {c.name} ({c.short_id})",
                parent=parent.id, author=opts.author, comment=opts.message,
            )
            if name:
                _move_name(ctx, name, image_id)
                image.names.append(name)
            store.write_image(image_id, image.to_dict())
        return CommitReport(image, diff_id, layer_new, skipped)
    finally:
        remove_path(tmp)


def _layer_producer(ctx: Context, c: Container, image: Image):
    """How to write the container's writable layer as an OCI layer tar."""
    store = ctx.store
    upper = store.container_path(c.id, "upper")
    rootfs = store.container_path(c.id, "rootfs")
    if upper.is_dir():  # overlay form already: whiteouts and opaque directories as they are
        return lambda out: lt.write_layer_tar(out, str(upper))
    if rootfs.is_dir():  # a materialised tree: the layer is what its change list says
        changes = get_driver(c.isolation, c.driver).changes(store, c, image)
        return lambda out: lt.write_changes_tar(out, str(rootfs), changes)
    raise DriverError(f"container {c.name} ({c.driver} driver) has no writable layer ctr can read",
                      hint="commit and export work with the overlay and copy drivers")


def _build_layer(produce, dest: Path, progress: Callable[[int], None] | None = None) -> tuple[str, list[str]]:
    """Stream the tar `produce` writes through sha256 into `dest`; returns the diff id."""
    from ctr.images.extract import extract_tar

    summary: list[lt.TarSummary] = []
    with lt.tar_pipe(lambda out: summary.append(produce(out))) as stream:
        reader = HashingReader(_Counting(stream, progress) if progress else stream)  # type: ignore[arg-type]
        result = extract_tar(reader, dest, whiteouts="overlay", digests=False)  # version 1 record
        reader.drain()
    notes = (summary[0].skipped if summary else []) + result.skipped
    return reader.digest, notes


_CHANGE_RE = re.compile(r"\s*([A-Za-z]+)\s+(.*\S)\s*", re.S)
SUPPORTED_CHANGES = ("CMD", "ENTRYPOINT", "ENV", "WORKDIR", "USER")


def apply_changes(config: ImageConfig, changes: list[str]) -> ImageConfig:
    """Apply Dockerfile-style instructions (`commit --change`) to a copy of `config`."""
    cfg = replace(config, env=list(config.env), cmd=list(config.cmd), entrypoint=list(config.entrypoint))
    for text in changes:
        m = _CHANGE_RE.fullmatch(text)
        if not m or m.group(1).upper() not in SUPPORTED_CHANGES:
            raise InvalidArgument(f"unsupported --change {text!r}",
                                  hint="use one of " + ", ".join(SUPPORTED_CHANGES) + ", e.g. 'CMD [\"sh\"]'")
        op, arg = m.group(1).upper(), m.group(2)
        if op in ("CMD", "ENTRYPOINT"):
            argv = _exec_form(arg)
            if op == "CMD":
                cfg.cmd = argv
            else:
                cfg.entrypoint = argv
        elif op == "ENV":
            for key, value in _env_pairs(arg, text):
                cfg.env = [e for e in cfg.env if e.split("=", 1)[0] != key] + [f"{key}={value}"]
        elif op == "WORKDIR":
            if not arg.startswith("/"):
                raise InvalidArgument(f"--change {text!r}: WORKDIR must be an absolute path")
            cfg.workdir = arg
        else:
            cfg.user = arg
    return cfg


def _exec_form(arg: str) -> list[str]:
    if arg.startswith("["):
        try:
            argv = json.loads(arg)
        except ValueError:
            argv = None
        if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
            return argv
        raise InvalidArgument(f"invalid JSON array {arg!r}", hint='write it as ["prog", "arg"]')
    return ["/bin/sh", "-c", arg]


def _env_pairs(arg: str, text: str) -> list[tuple[str, str]]:
    if "=" not in arg.split(None, 1)[0]:  # ENV KEY VALUE
        key, _, value = arg.partition(" ")
        return [(key, value.strip())]
    out = []
    try:
        words = shlex.split(arg)
    except ValueError as e:
        raise InvalidArgument(f"--change {text!r}: {e}") from None
    for w in words:
        key, sep, value = w.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--change {text!r}: expected KEY=VALUE, got {w!r}")
        out.append((key, value))
    return out


# ============================================================================ export
@dataclass
class ExportReport:
    container: Container
    entries: int
    bytes: int
    skipped: list[str]


def merged_layers(ctx: Context, c: Container, image: Image) -> list[lt.Layer]:
    """The directories whose merged view is the container's root filesystem, bottom first."""
    store = ctx.store
    upper = store.container_path(c.id, "upper")
    rootfs = store.container_path(c.id, "rootfs")
    if upper.is_dir():
        if image.builtin:
            stack = [lt.Layer("/", single_device=True, hidden=_host_hidden(store.root))]
        else:
            stack = [lt.Layer(str(store.layer_dir(d))) for d in image.layers]
            init = store.container_path(c.id, "init")
            if init.is_dir():
                stack.append(lt.Layer(str(init)))
        return stack + [lt.Layer(str(upper))]
    if rootfs.is_dir():
        return [lt.Layer(str(rootfs))]
    raise DriverError(f"container {c.name} ({c.driver} driver) has no filesystem ctr can read",
                      hint="commit and export work with the overlay and copy drivers")


def _host_hidden(store_root: Path) -> frozenset[str]:
    """What the host root does not contribute to an export: /tmp (a container has a fresh
    one), and ctr's own store (other containers' data)."""
    return frozenset({"tmp", str(store_root).strip("/")})


def export_container(ctx: Context, ref: str, out: BinaryIO) -> ExportReport:
    """Write the container's merged root filesystem to `out` as a tar (no mount needed)."""
    c = get_container(ctx, ref)
    image = get_image(ctx, c.image)
    summary = lt.write_merged_tar(out, merged_layers(ctx, c, image))
    return ExportReport(c, summary.entries, summary.bytes, summary.skipped)


# ============================================================================ prune
@dataclass
class PruneReport:
    removed: list[str]  # container ids
    reclaimed: int  # bytes
    errors: list = field(default_factory=list)  # RemoveResult with an error


PRUNABLE = (State.EXITED.value, State.CREATED.value, State.REMOVING.value)


@dataclass
class PruneFilters:
    """docker's `container prune --filter`: until=, label=KEY[=VALUE] (all must match) and
    label!=KEY[=VALUE] (none may)."""
    until: datetime | None = None
    labels: list[str] = field(default_factory=list)
    not_labels: list[str] = field(default_factory=list)

    def keep(self, c: Container) -> bool:
        """True for a container these filters leave alone."""
        created = parse_iso(c.created)
        if self.until is not None and created is not None and created >= self.until:
            return True
        return not all(c.config.has_label(s) for s in self.labels) or any(c.config.has_label(s) for s in self.not_labels)


def prune_candidates(ctx: Context, filters: PruneFilters | None = None) -> list[Container]:
    """Stopped containers (created, exited, or left half-removed) that `filters` select."""
    filters = filters or PruneFilters()
    return [c for c in list_containers(ctx, all=True) if c.state in PRUNABLE and not filters.keep(c)]


def prune_containers(ctx: Context, filters: PruneFilters | None = None) -> PruneReport:
    report = PruneReport([], 0)
    for c in prune_candidates(ctx, filters):
        size = tree_usage(ctx.store.container_dir(c.id)).bytes
        (r,) = remove_containers(ctx, [c.id], force=False)
        if r.error is not None:
            if isinstance(r.error, Conflict):  # it started meanwhile: not stopped any more
                continue
            report.errors.append(r)
            continue
        report.removed.append(c.id)
        report.reclaimed += size
    return report


def parse_until(value: str, now: datetime | None = None) -> datetime:
    """docker's `until=` (units.parse_time)."""
    from ctr.units import parse_time

    return parse_time(value, "until", now)


def parse_prune_filters(filters: list[str], now: datetime | None = None) -> PruneFilters:
    out = PruneFilters()
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in ("until", "label", "label!") or (key != "until" and not value.partition("=")[0]):
            raise InvalidArgument(f"unsupported filter {f!r}",
                                  hint="container prune takes --filter until=DURATION|TIME, label=KEY[=VALUE], "
                                       "label!=KEY[=VALUE]")
        if key == "until":
            out.until = parse_until(value, now)
        else:
            (out.labels if key == "label" else out.not_labels).append(value)
    return out


# ============================================================================ image export
FORMATS = ("oci-archive", "docker-archive")


@dataclass
class ImageExportReport:
    image: Image
    format: str
    layers: list[str]  # diff ids as written (the tars ctr made of each layer)
    config_digest: str
    skipped: list[str]


class _HashingWriter:
    def __init__(self, raw: BinaryIO):
        self.raw, self.hash, self.count = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.count += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def export_image(ctx: Context, ref: str, out: BinaryIO, fmt: str = "oci-archive") -> ImageExportReport:
    """Write `ref` as an OCI image archive or a docker-save archive to `out`."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown archive format {fmt!r}", hint="use " + " or ".join(FORMATS))
    img = get_image(ctx, ref)
    if img.builtin:
        raise Conflict("the built-in host image cannot be exported: it is the live root filesystem",
                       hint="run a container of it and `ctr export` that instead")
    if ref in _names(img):
        names = [ref if ref in img.names else ref + ":latest"]
    else:
        names = list(img.names)
    store = ctx.store
    tmp = store.new_tmp("export")
    try:
        files: dict[str, oci.LayerFile] = {}
        skipped: list[str] = []
        for i, diff_id in enumerate(img.layers):
            if diff_id in files:
                continue
            layer_dir = store.layer_dir(diff_id)
            if not layer_dir.is_dir():
                raise CtrError(f"image {img.short_id} is missing its layer {short(diff_id)}",
                               hint="remove the image and import it again")
            path = tmp / f"{i}.tar"
            with open(path, "wb") as f:
                w = _HashingWriter(f)
                summary = lt.write_layer_tar(w, str(layer_dir))  # type: ignore[arg-type]
            skipped += summary.skipped
            files[diff_id] = oci.LayerFile("sha256:" + w.hash.hexdigest(), w.count, path)
        written = [files[d] for d in img.layers]
        doc = oci.oci_config(img.config, [lf.digest for lf in written], img.created, img.author, img.comment)
        cfg = oci.config_bytes(doc)
        created = parse_iso(img.created)
        mtime = int(created.timestamp()) if created else 0
        if fmt == "oci-archive":
            oci.write_oci_archive(out, cfg, written, names, mtime)
        else:
            oci.write_docker_archive(out, cfg, written, names, mtime)
        return ImageExportReport(img, fmt, [lf.digest for lf in written], digest_bytes(cfg), skipped)
    finally:
        remove_path(tmp)


# ============================================================================ bundle import
def import_bundle(ctx: Context, probe: "oci.Probe", name: str | None,
                  progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import the image in an OCI layout/archive or docker-save archive (`oci.probe`).

    Every blob is verified while it streams into a layer directory under tmp/; layers and
    the record are installed together under the store lock only when all of them are good,
    so a refused archive leaves no image and no layer behind. A layer whose diff id the
    store already has is not read again.
    """
    store = ctx.store
    src = probe.source
    assert src is not None
    tmp = store.new_tmp("import")
    try:
        bundle = oci.read_image(src)
        skipped = list(bundle.notes)
        names = [name] if name else []
        if not name:  # the archive's own names (docker load tags an image with all of them)
            for n in bundle.names:
                try:
                    n = normalise_name(n)
                except InvalidArgument:
                    skipped.append(f"image name {n!r} not used: ctr names are NAME[:TAG] in lowercase")
                    continue
                if n not in names:
                    names.append(n)
        built: dict[str, Path] = {}
        records: dict[str, dict] = {}
        entries = size = 0
        for layer in bundle.layers:
            if layer.diff_id in built or store.has_layer(layer.diff_id):
                if not src.has(layer.path):
                    raise CtrError(f"{src.label}: layer {layer.path} is missing")
                continue
            dest = tmp / layer.diff_id.split(":", 1)[1]
            dest.mkdir()
            result = oci.extract_layer(src, layer, dest, progress)
            entries += result.entries
            skipped += result.skipped
            built[layer.diff_id] = dest
            # its checksum record and size from one walk (contents hashed while extracting)
            records[layer.diff_id], layer_size = layer_summary(dest, result.digests)
            size += layer_size
        image_id = bundle.config_digest
        faults.point("import.layer")
        with store.locked():
            gone = [d for d in bundle.diff_ids if d not in built and not store.has_layer(d)]
            if gone:
                raise Conflict(f"layer {short(gone[0])} was removed from the store during the import",
                               hint="import again")
            layer_new = False
            for diff_id, path in built.items():
                layer_new = store.install_layer(diff_id, path, records[diff_id]) or layer_new
            faults.point("import.installed")
            existing = store.read_image(image_id)
            if existing:
                image = Image.from_dict(existing)
            else:
                reused = [d for d in dict.fromkeys(bundle.diff_ids) if d not in built]
                size += sum(_tree_size(store.layer_dir(d)) for d in reused)
                image = Image(id=image_id, names=[], layers=bundle.diff_ids, config=bundle.config,
                              created=_utc_iso(bundle.created), size=size,
                              source=f"{src.label} ({'OCI' if src.kind == 'oci' else 'docker-save'})",
                              author=bundle.author)
            for n in names:
                _move_name(ctx, n, image_id)
                if n not in image.names:
                    image.names.append(n)
            store.write_image(image_id, image.to_dict())
        return ImportReport(image, layer_new, entries, skipped)
    finally:
        probe.close()
        remove_path(tmp)


def _utc_iso(value: str) -> str:
    """An image config's `created` in ctr's form (UTC, microseconds, Z); now if unusable."""
    try:
        t = parse_iso(value)
    except ValueError:
        t = None
    if t is None:
        return now_iso()
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
