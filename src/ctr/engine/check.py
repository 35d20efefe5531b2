"""`ctr system check [--repair]`: verify the store, and repair what can be repaired safely.

Layer checksums. A layer's diff id is the sha256 of the tar it came from; for an imported
layer that tar is gone (its member order, owner names, sub-second times are not kept), so
the diff id cannot be recomputed from the tree. Instead, when a layer is installed, ctr
records a checksum of its tree in `layers/<hex>.json` (`layer_summary()`), and `check`
computes it again and compares. Two versions:

- **version 2, the manifest** (written by `image import`, for a root filesystem and for each
  layer of an OCI or docker-save archive, and by `--repair`): the sha256 of a canonical
  manifest of the tree (`images/layers.py: layer_manifest`), one line per entry, depth-first
  with the names of each directory sorted: path, type, mode (with setuid/setgid/sticky),
  uid, gid, whole-second mtime, size, and the sha256 of a regular file's contents / a
  symlink's target / a device's major,minor / `opaque` for a directory marked opaque. A
  second name of an inode is a link line naming the first; an overlay whiteout (char 0/0) is
  a whiteout line; the layer root has its mode, owners and opaque mark, not its mtime. At
  import the contents' hashes are taken while the files are extracted (`extract_tar`,
  keyed by inode), so the record costs one metadata-only walk of the new layer (which also
  gives the image size); `check` reads and hashes every file.
- **version 1, the canonical tar** (layers made by `commit`, and stores written before
  version 2): the sha256 of the tree written as a canonical layer tar (`write_layer_tar`:
  sorted names, numeric owners, whole-second mtimes, whiteouts and opaque directories in OCI
  form, no xattrs). A committed layer's own tar *is* that canonical tar, so its checksum is
  its diff id, known for free: commit keeps writing version 1. `check` verifies both.

Either way a changed byte, name, type, mode, owner, link target, whole-second mtime,
whiteout or opaque mark is found; extended attributes other than the opaque marker, and
sub-second times, are not covered. A layer that has no record (made before records existed)
is reported, and recorded as it is now (version 2) by `--repair`.

What `--repair` does, and what it leaves alone:

| finding | repair |
|---|---|
| the store root is not mode 0700 | chmod 0700 |
| a layer without a checksum record | record the checksum of the layer as it is now |
| a checksum record without its layer | delete the record |
| a layer no image uses (a crash between installing it and writing the image) | delete it |
| an image record that cannot be read | delete it (its layers then go as unused) |
| an image whose layer is missing | delete the image record (it cannot run) |
| a container directory without a record | unmount what is under it, delete it |
| a container record that cannot be read | as `ctr rm -f ID`: unmount, delete |
| a container left `removing` by a crash | finish the removal (`ctr rm -f`) |
| a temporary record file (`.NAME.PID.tmp`) of a process that is gone | delete it |
| a VM directory without a record | delete it |
| a VM record that cannot be read | **not repaired**: named (`ctr vm rm -f NAME` discards it) |
| a layer whose tree does not match its checksum | **not repaired**: named, with the images that use it |
| a container whose image is gone | **not repaired** (its writable layer is the user's data): named |

Everything but the layer checksums is checked and repaired under the store lock (as every
change to records is); the checksums are computed outside it, so a long check does not hold
up other ctr commands. Work in progress under `tmp/` is not touched (stale litter is swept
whenever ctr opens the store).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ctr.engine.context import Context
from ctr.store.store import _pid_alive

TAR_RECORD = 1  # the sha256 of the canonical layer tar (commit: the diff id)
MANIFEST_RECORD = 2  # the sha256 of the manifest (import)


class _HashSink:
    def __init__(self) -> None:
        self.hash, self.count = hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def tree_digest(layer_dir: Path) -> str:
    """Version 1: sha256 of the layer tree written as a canonical layer tar (module doc)."""
    from ctr.images.layers import write_layer_tar

    sink = _HashSink()
    write_layer_tar(sink, str(layer_dir))  # type: ignore[arg-type]
    return "sha256:" + sink.hash.hexdigest()


def layer_summary(layer_dir: Path, digests: dict[int, str] | None = None) -> tuple[dict, int]:
    """The record `Store.install_layer(record=…)` keeps beside a layer (version 2), and the
    bytes the layer holds, from one walk. `digests`: the contents' hashes by inode number
    from extraction (`ExtractResult.digests`); files without one are read."""
    from ctr.images.layers import layer_manifest

    tree, size = layer_manifest(str(layer_dir), digests)
    return {"version": MANIFEST_RECORD, "tree": tree}, size


def layer_record(layer_dir: Path, digests: dict[int, str] | None = None) -> dict:
    """`layer_summary` without the size."""
    return layer_summary(layer_dir, digests)[0]


def _recompute(layer_dir: Path, version: int) -> str:
    """The layer's checksum now, as a record of `version` has it (reading every file)."""
    return tree_digest(layer_dir) if version == TAR_RECORD else layer_record(layer_dir)["tree"]


# ----------------------------------------------------------------------------- findings
@dataclass
class Finding:
    kind: str  # store | layer | image | container | record
    subject: str  # an id or a path
    problem: str
    repair: str = ""  # what --repair does about it ("" : nothing can be done safely)
    repaired: bool = False
    hint: str = ""

    def to_dict(self) -> dict:
        return {"Kind": self.kind, "Subject": self.subject, "Problem": self.problem,
                "Repair": self.repair or None, "Repaired": self.repaired, "Hint": self.hint or None}


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    layers: int = 0
    images: int = 0
    containers: int = 0
    vms: int = 0

    @property
    def remaining(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired]

    def to_dict(self) -> dict:
        return {"Layers": self.layers, "Images": self.images, "Containers": self.containers, "VMs": self.vms,
                "Findings": [f.to_dict() for f in self.findings], "OK": not self.remaining}


def check(ctx: Context, repair: bool = False) -> CheckReport:
    report = CheckReport()
    store = ctx.store
    _check_root(ctx, report, repair)
    bad_layers = _check_layer_trees(ctx, report, repair)
    with store.locked():
        _check_records(ctx, report, repair, bad_layers)
    if repair:  # containers are removed through the engine (kills, cleanup), which locks itself
        _finish_removals(ctx, report)
    return report


def _check_root(ctx: Context, report: CheckReport, repair: bool) -> None:
    root = ctx.store.root
    mode = stat.S_IMODE(os.stat(root).st_mode)
    if mode & 0o077:
        f = Finding("store", str(root), f"the store root is mode {mode:04o}: other users can reach it",
                    "chmod 0700")
        if repair:
            os.chmod(root, 0o700)
            f.repaired = True
        report.findings.append(f)


def _check_layer_trees(ctx: Context, report: CheckReport, repair: bool) -> set[str]:
    """Recompute each layer's tree checksum (outside the lock); the corrupt ones' ids."""
    store = ctx.store
    bad: set[str] = set()
    for diff_id in store.layer_ids():
        report.layers += 1
        path = store.layer_dir(diff_id)
        try:
            rec = store.read_layer_record(diff_id)
            missing = "no checksum recorded (made by an older ctr)"
        except Exception as e:  # noqa: BLE001 - a corrupt record is a finding like a missing one
            rec = None
            missing = f"its checksum record cannot be read ({getattr(e, 'message', e)})"
        usable = isinstance(rec, dict) and isinstance(rec.get("tree"), str)
        # a record written before versions were numbered has none: version 1
        version = rec.get("version", TAR_RECORD) if usable else MANIFEST_RECORD  # type: ignore[union-attr]
        if version not in (TAR_RECORD, MANIFEST_RECORD):
            report.findings.append(Finding("layer", diff_id, f"its checksum record is of version {version!r}, "
                                           "which this ctr cannot verify", hint="a newer ctr wrote it: use that one"))
            continue
        try:
            now = _recompute(path, version)
        except FileNotFoundError:
            continue  # removed meanwhile
        except Exception as e:  # noqa: BLE001 - e.g. a name a layer may not hold
            bad.add(diff_id)
            report.findings.append(Finding("layer", diff_id, f"cannot be read as a layer: {getattr(e, 'message', e)}",
                                           hint="remove the images that use it and import them again"))
            continue
        if not usable:
            f = Finding("layer", diff_id, missing, "record the checksum of the layer as it is now")
            if repair:
                store.write_layer_record(diff_id, {"version": MANIFEST_RECORD, "tree": now})
                f.repaired = True
            report.findings.append(f)
        elif rec["tree"] != now:
            bad.add(diff_id)
            report.findings.append(Finding(
                "layer", diff_id, f"its files changed since it was installed (tree {now}, recorded {rec['tree']})",
                hint="remove the images that use it (`ctr image rm`) and import or commit them again"))
    return bad


def _check_records(ctx: Context, report: CheckReport, repair: bool, bad_layers: set[str]) -> None:
    from ctr.models import Container, Image

    store = ctx.store
    layers = set(store.layer_ids())
    # layer records whose layer is gone
    for e in _scan(store.layers_dir):
        if e.name.endswith(".json") and not e.name.startswith("."):
            diff_id = "sha256:" + e.name[:-5]
            if diff_id not in layers:
                f = Finding("record", e.path, "a layer checksum without its layer", "delete the record")
                if repair:
                    _unlink(e.path)
                    f.repaired = True
                report.findings.append(f)
    _temp_records(store.images_dir, report, repair)
    _temp_records(store.layers_dir, report, repair)

    # images
    used: set[str] = set()
    images: dict[str, Image] = {}
    for iid in store.image_ids():
        report.images += 1
        try:
            data = store.read_image(iid)
            img = Image.from_dict(data) if isinstance(data, dict) else None
            if img is None or img.id != iid:
                raise ValueError("not an image record for this id")
        except Exception as e:  # noqa: BLE001 - any unreadable record is the same finding
            f = Finding("image", iid, f"unreadable image record: {getattr(e, 'message', e)}",
                        "delete the record (its layers then go as unused)")
            if repair:
                store.delete_image(iid)
                f.repaired = True
            report.findings.append(f)
            continue
        missing = [d for d in img.layers if d not in layers]
        if missing:
            f = Finding("image", iid, f"{_name(img)} is missing its layer {missing[0]}: it cannot run",
                        "delete the image record", hint="import the image again")
            if repair:
                store.delete_image(iid)
                f.repaired = True
            report.findings.append(f)
            if repair:
                continue
        images[iid] = img
        used.update(img.layers)
        for d in img.layers:
            if d in bad_layers:
                report.findings.append(Finding("image", iid, f"{_name(img)} uses the damaged layer {d}",
                                               hint=f"ctr image rm {_name(img)}, then import it again"))
    # layers nobody uses (a crash between installing a layer and writing its image)
    for diff_id in sorted(layers - used):
        f = Finding("layer", diff_id, "no image uses it", "delete it")
        if repair:
            store.discard_layer(diff_id)
            f.repaired = True
        report.findings.append(f)

    # containers
    from ctr.engine.images import host_image

    known_images = set(images) | {host_image().id}
    for e in _scan(store.containers_dir):
        if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
            continue
        cid = e.name
        report.containers += 1
        _temp_records(Path(e.path), report, repair)
        if not store.container_record(cid).exists():
            f = Finding("container", cid, "a container directory without a record", "unmount and delete it")
            if repair:
                _discard(ctx, cid)
                f.repaired = True
            report.findings.append(f)
            continue
        try:
            data = store.read_container(cid)
            c = Container.from_dict(data)  # type: ignore[arg-type]
        except Exception as e2:  # noqa: BLE001
            f = Finding("container", cid, f"unreadable container record: {getattr(e2, 'message', e2)}",
                        "unmount and delete it (as `ctr rm -f ID`)")
            if repair:
                _discard(ctx, cid)
                f.repaired = True
            report.findings.append(f)
            continue
        if c.state == "removing":
            report.findings.append(Finding("container", cid, f"{c.name} was left half-removed by a crash",
                                           "finish the removal"))
        elif c.image not in known_images:
            report.findings.append(Finding(
                "container", cid, f"{c.name} uses image {c.image}, which is gone: it cannot run",
                hint=f"`ctr rm {c.name}` (`ctr export` needs its image too)"))

    # VMs (each holds its own disk: nothing of it is shared with images)
    for name in (store.vm_ids() if hasattr(store, "vm_ids") else []):
        report.vms += 1
        _temp_records(store.vm_dir(name), report, repair)
        if not store.vm_record(name).exists():
            f = Finding("vm", name, "a VM directory without a record", "delete it")
            if repair:
                store.discard_vm(name)
                f.repaired = True
            report.findings.append(f)
            continue
        try:
            from ctr.models import VM

            VM.from_dict(store.read_vm(name))  # type: ignore[arg-type]
        except Exception as e3:  # noqa: BLE001
            report.findings.append(Finding("vm", name, f"unreadable VM record: {getattr(e3, 'message', e3)}",
                                           hint=f"`ctr vm rm -f {name}` discards it"))


def _finish_removals(ctx: Context, report: CheckReport) -> None:
    from ctr.engine.containers import remove_containers

    for f in report.findings:
        if f.kind == "container" and f.repair == "finish the removal" and not f.repaired:
            (r,) = remove_containers(ctx, [f.subject], force=True)
            if r.error is None:
                f.repaired = True
            else:
                f.hint = r.error.message


def _discard(ctx: Context, cid: str) -> None:
    """Remove a container directory whose record is missing or unreadable (lock held)."""
    from ctr import proc

    store = ctx.store
    for mp in proc.mounts_under(store.container_dir(cid)):
        try:
            proc.umount(mp)
        except OSError:
            pass
    store.discard_container(cid)


def _temp_records(directory: Path, report: CheckReport, repair: bool) -> None:
    """`.NAME.PID.tmp` files an atomic write left when its process died mid-write."""
    for e in _scan(directory):
        parts = e.name.rsplit(".", 3)
        if not (e.name.startswith(".") and e.name.endswith(".tmp") and len(parts) == 4 and parts[2].isdigit()):
            continue
        if _pid_alive(int(parts[2])):
            continue
        f = Finding("record", e.path, "a temporary record file left by a process that died", "delete it")
        if repair:
            _unlink(e.path)
            f.repaired = True
        report.findings.append(f)


def _scan(directory: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return []


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _name(img) -> str:
    return img.names[0] if img.names else img.id.split(":", 1)[-1][:12]


__all__ = ["CheckReport", "Finding", "check", "layer_record", "layer_summary", "tree_digest",
           "TAR_RECORD", "MANIFEST_RECORD"]
