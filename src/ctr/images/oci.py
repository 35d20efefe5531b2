"""OCI image layouts and archives, and `docker save`/`podman save` archives.

Reading (`ctr image import`):
- `probe(source, spool)` tells a plain root filesystem (a directory or a tar) from an image
  bundle: a directory with `oci-layout` (OCI layout) or `manifest.json` (an unpacked
  docker-save), or a tar (plain, gzip, bzip2 or xz; a file or stdin) whose members are
  those of a bundle (`oci-layout`, `index.json`, `manifest.json`, `repositories`,
  `blobs/…`, `<hex>.json`, `<hex>.tar`, `<hex>/…`). Only the first member names are read to
  decide. A bundle in a compressed tar or on stdin is spooled (decompressed) into the
  store's tmp/ so its members can be read in any order.
- `read_image(source)` reads the index (nested indexes followed, the manifest for this
  machine's platform chosen), the manifest and the config, each verified against its
  digest and size; docker-save's `manifest.json` and config likewise (a config or layer
  named by its digest is verified against it). Every digest must be `sha256:` + 64
  lowercase hex digits, so a digest can never name a path outside `blobs/sha256/`.
- `extract_layer(source, layer, dest)` streams one layer blob through sha256 (the blob
  digest), gzip when compressed, sha256 again (the diff id) into `extract_tar(...,
  whiteouts="overlay")`; a digest that does not match is refused naming the blob.

Writing (`ctr image export`): `oci_config()` builds an image's config document (the same
one that gives a committed image its id), `write_oci_archive()` and
`write_docker_archive()` write the archive around layer tars the caller made.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import re
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from ctr.errors import ImageImportError
from ctr.images.digest import HashingReader, canonical_json
from ctr.models import ImageConfig

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
ANNOTATION_REF = "org.opencontainers.image.ref.name"
ANNOTATION_NAME = "io.containerd.image.name"

MAX_JSON = 8 << 20  # an index, manifest or config larger than this is refused
MAX_MEMBERS = 100_000  # members of an image archive (one holds a few per layer)
MAX_INDEX_DEPTH = 4
_CORRUPT = "the archive is damaged or was altered; export or download it again"

_BUNDLE_MEMBER = re.compile(
    r"(?:oci-layout|index\.json|manifest\.json|repositories|blobs(?:/.*)?"
    r"|[0-9a-f]{64}(?:\.json|\.tar|/.*)?)/?",
    re.S,
)


# ============================================================================ sources
class Source:
    """The files of an image bundle, by name: a directory or a tar archive."""

    label = ""
    kind = ""  # "oci" or "docker"

    def has(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def read_small(self, name: str, what: str) -> bytes:
        with self.open(name) as f:
            data = f.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise ImageImportError(f"{self.label}: {what} {name} is larger than {MAX_JSON >> 20} MiB")
        return data


def _member_parts(name: str) -> tuple[str, ...] | None:
    """A bundle-internal name as components; None if it is absolute or climbs (`..`)."""
    if not isinstance(name, str) or not name or "\0" in name or name.startswith("/"):
        return None
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


class DirSource(Source):
    """An unpacked bundle. It may hold symlinks (`docker save` links repeated layers), but
    every name is resolved inside the directory, one component at a time: a link that
    leaves it is refused, never followed, and only regular files are opened (a FIFO in
    place of a blob cannot block the import)."""

    def __init__(self, root: Path, kind: str):
        self.root, self.kind, self.label = root, kind, str(root)

    def _resolve(self, name: str) -> tuple[str, ...]:
        parts = _member_parts(name)
        if parts is None:
            raise ImageImportError(f"{self.label}: invalid file name {name!r} in the image index")
        for _ in range(16):
            for i in range(len(parts)):
                st = os.lstat(self.root.joinpath(*parts[: i + 1]))  # FileNotFoundError: missing
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(self.root.joinpath(*parts[: i + 1]))
                    base = "" if target.startswith("/") else "/".join(parts[:i])
                    new = _member_parts(_normpath(f"{base}/{target}".lstrip("/")))
                    if new is None:
                        raise ImageImportError(f"{self.label}: {name} is a symlink out of the directory "
                                               f"({target!r}); ctr does not follow it", hint=_CORRUPT)
                    parts = new + parts[i + 1:]
                    break
            else:
                return parts
        raise ImageImportError(f"{self.label}: {name}: too many levels of symbolic links", hint=_CORRUPT)

    def _open_fd(self, name: str) -> int:
        parts = self._resolve(name)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for comp in parts[:-1]:
                nfd = os.open(comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nfd
            return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        finally:
            os.close(fd)

    def has(self, name: str) -> bool:
        try:
            fd = self._open_fd(name)
        except (OSError, ImageImportError):
            return False
        try:
            return stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)

    def open(self, name: str) -> BinaryIO:
        try:
            fd = self._open_fd(name)
        except (FileNotFoundError, NotADirectoryError):
            raise ImageImportError(f"{self.label}: {name} is missing", hint=_CORRUPT) from None
        except OSError as e:
            raise ImageImportError(f"{self.label}: {name} cannot be read: {e.strerror}", hint=_CORRUPT) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ImageImportError(f"{self.label}: {name} is not a regular file", hint=_CORRUPT)
        return os.fdopen(fd, "rb")  # type: ignore[return-value]


class TarSource(Source):
    """An uncompressed, seekable tar: members indexed once, read in any order."""

    def __init__(self, path: Path, label: str, owned: bool = False):
        self.path, self.label, self.owned = path, label, owned
        self.members: dict[tuple[str, ...], tarfile.TarInfo] = {}
        try:
            self.tar = tarfile.open(path, mode="r:")
        except (tarfile.TarError, OSError) as e:
            raise ImageImportError(f"{label}: not a readable tar archive: {e}", hint=_CORRUPT) from None
        try:
            while (m := self.tar.next()) is not None:
                if len(self.members) >= MAX_MEMBERS:
                    self.close()
                    raise ImageImportError(f"{label}: more than {MAX_MEMBERS} members; not an image archive")
                parts = _member_parts(m.name)
                if parts is not None:
                    self.members[parts] = m  # a later member replaces an earlier one, as tar does
                self.tar.members.clear()
        except (tarfile.TarError, EOFError, OSError) as e:
            self.close()
            raise ImageImportError(f"{label}: archive is truncated or corrupt: {e}", hint=_CORRUPT) from None
        self.kind = ("oci" if self.has("index.json") else
                     "docker" if self.has("manifest.json") else "")

    def _resolve(self, name: str) -> tarfile.TarInfo | None:
        parts = _member_parts(name)
        for _ in range(16):  # links inside the archive (docker save links repeated layers)
            if parts is None:
                return None
            m = self.members.get(parts)
            if m is None:
                return None
            if m.isreg():
                return m
            if m.issym():
                target = m.linkname if m.linkname.startswith("/") else "/".join(parts[:-1] + (m.linkname,))
                parts = _member_parts(_normpath(target.lstrip("/")))
            elif m.islnk():
                parts = _member_parts(m.linkname)
            else:
                return None
        return None

    def has(self, name: str) -> bool:
        return self._resolve(name) is not None

    def open(self, name: str) -> BinaryIO:
        m = self._resolve(name)
        if m is None:
            raise ImageImportError(f"{self.label}: {name} is missing from the archive", hint=_CORRUPT)
        return self.tar.extractfile(m)  # type: ignore[return-value]

    def close(self) -> None:
        try:
            self.tar.close()
        finally:
            if self.owned:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass


def _normpath(path: str) -> str:
    out: list[str] = []
    for p in path.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not out:
                return "../"  # climbs out: refused by _member_parts
            out.pop()
        else:
            out.append(p)
    return "/".join(out)


# ============================================================================ probing
class _Replay:
    """A stream that first returns `prefix`, then the rest of `raw`."""

    def __init__(self, prefix: bytes, raw: BinaryIO, owner: BinaryIO | None = None):
        self.prefix, self.raw, self.owner = prefix, raw, owner

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            if n is None or n < 0:
                data, self.prefix = self.prefix + self.raw.read(), b""
                return data
            data, self.prefix = self.prefix[:n], self.prefix[n:]
            return data
        return self.raw.read(n)

    def close(self) -> None:
        self.raw.close()
        if self.owner is not None:
            self.owner.close()


class _Progress:
    def __init__(self, raw: BinaryIO, progress: Callable[[int], None]):
        self.raw, self.progress = raw, progress

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.progress(len(data))
        return data


class _Recorder:
    def __init__(self, raw: BinaryIO):
        self.raw, self.data = raw, bytearray()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.data += data
        return data


def decompressed(f: BinaryIO, label: str) -> tuple[BinaryIO, bool]:
    """`f` as uncompressed bytes (gzip, bzip2, xz sniffed) and whether it was compressed."""
    head = f.peek(6)[:6] if hasattr(f, "peek") else b""
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb"), True  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f), True  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(f), True  # type: ignore[return-value]
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise ImageImportError(f"{label} is zstd-compressed, which ctr cannot read",
                               hint=f"decompress it first: zstd -d {label}")
    return f, False


def _first_name(stream: BinaryIO) -> tuple[str | None, bytes]:
    """The first member name other than the root (`./`), and the bytes read to find it."""
    rec = _Recorder(stream)
    name = None
    try:
        with tarfile.open(fileobj=rec, mode="r|") as tar:  # type: ignore[arg-type]
            for _ in range(8):
                m = tar.next()
                if m is None:
                    break
                if m.name.strip("/") not in ("", "."):
                    name = m.name
                    break
    except Exception:  # not a tar, or a broken one: the root filesystem import says why
        name = None
    return name, bytes(rec.data)


def looks_like_bundle_member(name: str) -> bool:
    while name.startswith("./"):
        name = name[2:]
    return bool(_BUNDLE_MEMBER.fullmatch(name))


@dataclass
class Probe:
    """What an import source is. `kind`: "rootfs", "oci" or "docker"; `source`: the
    bundle's files; `stream`: for a root filesystem tar read from stdin, the uncompressed
    stream (replaying the bytes read to decide)."""

    kind: str
    source: Source | None = None
    stream: BinaryIO | None = None

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def probe(source: str, spool: Callable[[], Path]) -> Probe:
    """Tell a root filesystem from an image bundle (module doc). `spool()` gives a fresh
    path under the store's tmp/ for a bundle that must be copied to be read."""
    if source != "-":
        path = Path(source)
        if path.is_dir():
            if (path / "oci-layout").is_file():
                return Probe("oci", DirSource(path, "oci"))
            if (path / "manifest.json").is_file() and not (path / "bin").exists():
                return Probe("docker", DirSource(path, "docker"))
            return Probe("rootfs")
        try:
            raw = open(path, "rb")
        except OSError:
            return Probe("rootfs")  # the root filesystem import reports it
        label = source
    else:
        raw = os.fdopen(os.dup(0), "rb")
        label = "stdin"
    # a pipe (stdin, a FIFO, <(command)) can be read once: what is read to decide is replayed
    once = not stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
    keep = False
    try:
        stream, compressed = decompressed(raw, label)
        name, head = _first_name(stream)
        if name is None or not looks_like_bundle_member(name):
            if once:
                keep = True
                return Probe("rootfs", stream=_Replay(head, stream, raw))  # type: ignore[arg-type]
            return Probe("rootfs")
        if not once and not compressed:
            src = TarSource(Path(source), label)
        else:
            target = spool()
            try:
                with open(target, "wb") as out:
                    out.write(head)
                    shutil.copyfileobj(stream, out, 1 << 20)  # type: ignore[misc]
            except (OSError, EOFError, lzma.LZMAError) as e:
                _unlink(target)
                raise ImageImportError(f"{label}: cannot read the archive: {e}", hint=_CORRUPT) from None
            src = TarSource(target, label, owned=True)
        if not src.kind:
            src.close()
            raise ImageImportError(
                f"{label} looks like an image archive but has neither index.json nor manifest.json",
                hint="an OCI archive has oci-layout and index.json; a docker-save archive has manifest.json",
            )
        return Probe(src.kind, src)
    finally:
        if not keep:
            raw.close()


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ============================================================================ reading
@dataclass
class LayerBlob:
    """One layer of an image bundle: where it is, what it must hash to."""

    path: str  # name inside the bundle
    diff_id: str  # sha256 of the uncompressed tar (from the config)
    digest: str | None = None  # sha256 of the blob as stored, when the bundle names it
    size: int | None = None
    media_type: str = ""


@dataclass
class BundleImage:
    config_digest: str  # the image id
    config: ImageConfig
    layers: list[LayerBlob]
    names: list[str] = field(default_factory=list)
    created: str = ""
    author: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]


def blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _check_digest(value: Any, where: str, label: str) -> str:
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        algo = value.split(":", 1)[0] if isinstance(value, str) and ":" in value else ""
        if algo and algo != "sha256" and re.fullmatch(r"[a-z0-9+._-]+", algo) and "/" not in value:
            raise ImageImportError(f"{label}: {where} uses digest algorithm {algo!r}; ctr reads sha256 only")
        raise ImageImportError(f"{label}: {where} has an invalid digest {value!r}",
                               hint="a digest is sha256: and 64 lowercase hex digits")
    return value


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str]
    platform: dict[str, Any]


def _descriptor(d: Any, where: str, label: str) -> Descriptor:
    if not isinstance(d, dict):
        raise ImageImportError(f"{label}: {where} is not a descriptor object")
    digest = _check_digest(d.get("digest"), where, label)
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageImportError(f"{label}: {where} has an invalid size {size!r}")
    mt = d.get("mediaType", "")
    ann = d.get("annotations") or {}
    plat = d.get("platform") or {}
    if not isinstance(mt, str) or not isinstance(ann, dict) or not isinstance(plat, dict):
        raise ImageImportError(f"{label}: {where} is malformed")
    return Descriptor(mt, digest, size, ann, plat)


def _parse_json(data: bytes, what: str, label: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageImportError(f"{label}: {what} is not valid JSON: {e}", hint=_CORRUPT) from None


def _read_blob_json(src: Source, desc: Descriptor, what: str) -> Any:
    if desc.size > MAX_JSON:
        raise ImageImportError(f"{src.label}: {what} {desc.digest} is larger than {MAX_JSON >> 20} MiB")
    data = src.read_small(blob_path(desc.digest), what)
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != desc.digest:
        raise ImageImportError(f"{src.label}: blob {desc.digest} ({what}) does not match its digest (it is {got})",
                               hint=_CORRUPT)
    if len(data) != desc.size:
        raise ImageImportError(f"{src.label}: blob {desc.digest} ({what}) is {len(data)} bytes, "
                               f"the descriptor says {desc.size}", hint=_CORRUPT)
    return _parse_json(data, what, src.label)


def goarch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
            "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(m, m)


def read_image(src: Source) -> BundleImage:
    """Read and verify an image's index, manifest and config (module doc)."""
    return _read_oci(src) if src.kind == "oci" else _read_docker(src)


def _read_oci(src: Source) -> BundleImage:
    label = src.label
    if src.has("oci-layout"):
        layout = _parse_json(src.read_small("oci-layout", "oci-layout"), "oci-layout", label)
        if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
            raise ImageImportError(f"{label}: oci-layout has no imageLayoutVersion")
    index = _parse_json(src.read_small("index.json", "index"), "index.json", label)
    found = _manifests(src, index, "index.json", 0)
    if not found:
        raise ImageImportError(f"{label}: the index lists no image manifest")
    by_digest: dict[str, tuple[Descriptor, list[str]]] = {}
    for d, names in found:  # one image listed under several names is one image
        if d.digest in by_digest:
            by_digest[d.digest][1].extend(n for n in names if n not in by_digest[d.digest][1])
        else:
            by_digest[d.digest] = (d, list(names))
    found = list(by_digest.values())
    arch = goarch()
    matching = [(d, names) for d, names in found
                if not d.platform or (d.platform.get("os", "linux") == "linux"
                                      and d.platform.get("architecture", arch) == arch)]
    if not matching:
        plats = sorted({f"{d.platform.get('os')}/{d.platform.get('architecture')}" for d, _ in found})
        raise ImageImportError(f"{label}: no image for linux/{arch} (it has {', '.join(plats)})")
    if len(matching) > 1:
        names = sorted({n for _, ns in matching for n in ns}) or [d.digest[:19] for d, _ in matching]
        raise ImageImportError(f"{label} holds {len(matching)} images ({', '.join(names[:5])}); "
                               "ctr imports one image per archive",
                               hint="save or copy one image per archive (e.g. skopeo copy … oci-archive:FILE:NAME)")
    desc, names = matching[0]
    manifest = _read_blob_json(src, desc, "manifest")
    if not isinstance(manifest, dict):
        raise ImageImportError(f"{label}: manifest {desc.digest} is not an object")
    mt = manifest.get("mediaType", desc.media_type)
    if mt and mt not in MANIFEST_TYPES:
        raise ImageImportError(f"{label}: manifest {desc.digest} has unsupported media type {mt!r}")
    cfg_desc = _descriptor(manifest.get("config"), f"manifest {desc.digest}: config", label)
    layers_raw = manifest.get("layers")
    if not isinstance(layers_raw, list):
        raise ImageImportError(f"{label}: manifest {desc.digest} has no layer list")
    descs = [_descriptor(d, f"manifest {desc.digest}: layer {i + 1}", label) for i, d in enumerate(layers_raw)]
    config = _read_blob_json(src, cfg_desc, "config")
    diff_ids = _diff_ids(config, len(descs), label)
    layers = []
    for d, diff_id in zip(descs, diff_ids):
        if "zstd" in d.media_type:
            raise ImageImportError(f"{label}: layer {d.digest} is zstd-compressed, which ctr cannot read",
                                   hint="convert it with skopeo copy --dest-compress-format gzip")
        layers.append(LayerBlob(blob_path(d.digest), diff_id, d.digest, d.size, d.media_type))
    return _bundle_image(cfg_desc.digest, config, layers, names, label)


def _manifests(src: Source, index: Any, where: str, depth: int) -> list[tuple[Descriptor, list[str]]]:
    label = src.label
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ImageImportError(f"{label}: {where} has no manifest list")
    out = []
    for i, raw in enumerate(index["manifests"]):
        d = _descriptor(raw, f"{where}: manifest {i + 1}", label)
        if d.media_type in INDEX_TYPES:
            if depth >= MAX_INDEX_DEPTH:
                raise ImageImportError(f"{label}: indexes nested more than {MAX_INDEX_DEPTH} deep")
            nested = _read_blob_json(src, d, "index")
            out += _manifests(src, nested, f"index {d.digest}", depth + 1)
        elif d.media_type in MANIFEST_TYPES or not d.media_type:
            # io.containerd.image.name is a full name; ref.name is often a bare tag
            names = [v for k, v in sorted(d.annotations.items()) if isinstance(v, str) and
                     (k == ANNOTATION_NAME or (k == ANNOTATION_REF and (":" in v or "/" in v)))]
            out.append((d, names))
    return out


def _diff_ids(config: Any, count: int, label: str) -> list[str]:
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list):
        raise ImageImportError(f"{label}: the image config has no rootfs.diff_ids")
    if len(ids) != count:
        raise ImageImportError(f"{label}: the manifest lists {count} layers but the config has "
                               f"{len(ids)} diff_ids", hint=_CORRUPT)
    return [_check_digest(d, f"config rootfs.diff_ids[{i}]", label) for i, d in enumerate(ids)]


def _strings(value: Any, what: str, label: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageImportError(f"{label}: the image config's {what} is not a list of strings")
    return list(value)


def _bundle_image(config_digest: str, config: Any, layers: list[LayerBlob], names: list[str],
                  label: str) -> BundleImage:
    notes = []
    os_ = config.get("os")
    if os_ not in (None, "", "linux"):
        raise ImageImportError(f"{label}: the image is for {os_!r}; ctr runs linux images")
    arch = config.get("architecture")
    if isinstance(arch, str) and arch and arch != goarch():
        notes.append(f"the image is for {arch}; this machine is {goarch()}")
    c = config.get("config") or {}
    if not isinstance(c, dict):
        raise ImageImportError(f"{label}: the image config's config is not an object")
    workdir, user = c.get("WorkingDir") or "", c.get("User") or ""
    if not isinstance(workdir, str) or not isinstance(user, str):
        raise ImageImportError(f"{label}: the image config's WorkingDir or User is not a string")
    cfg = ImageConfig(
        env=_strings(c.get("Env"), "Env", label),
        cmd=_strings(c.get("Cmd"), "Cmd", label),
        entrypoint=_strings(c.get("Entrypoint"), "Entrypoint", label),
        workdir=workdir,
        user=user,
    )
    created = config.get("created") if isinstance(config.get("created"), str) else ""
    author = config.get("author") if isinstance(config.get("author"), str) else ""
    return BundleImage(config_digest, cfg, layers, names, created, author, notes)


def _read_docker(src: Source) -> BundleImage:
    label = src.label
    manifest = _parse_json(src.read_small("manifest.json", "manifest.json"), "manifest.json", label)
    if not isinstance(manifest, list) or not manifest or not all(isinstance(m, dict) for m in manifest):
        raise ImageImportError(f"{label}: manifest.json is not a list of images")
    if len(manifest) > 1:
        tags = sorted(t for m in manifest for t in (m.get("RepoTags") or []) if isinstance(t, str))
        raise ImageImportError(f"{label} holds {len(manifest)} images ({', '.join(tags[:5]) or 'untagged'}); "
                               "ctr imports one image per archive",
                               hint="save one image per archive: docker save NAME -o FILE")
    entry = manifest[0]
    cfg_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(cfg_name, str) or _member_parts(cfg_name) is None:
        raise ImageImportError(f"{label}: manifest.json has an invalid Config {cfg_name!r}")
    if not isinstance(layer_names, list):
        raise ImageImportError(f"{label}: manifest.json has no Layers list")
    data = src.read_small(cfg_name, "config")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    named = _named_digest(cfg_name)
    if named is not None and named != digest:
        raise ImageImportError(f"{label}: config {cfg_name} does not match its digest (it is {digest})",
                               hint=_CORRUPT)
    config = _parse_json(data, "config", label)
    diff_ids = _diff_ids(config, len(layer_names), label)
    layers = []
    for i, (name, diff_id) in enumerate(zip(layer_names, diff_ids)):
        if not isinstance(name, str) or _member_parts(name) is None:
            raise ImageImportError(f"{label}: manifest.json has an invalid layer name {name!r}")
        layers.append(LayerBlob(name, diff_id, _named_digest(name)))
    tags = [t for t in (entry.get("RepoTags") or []) if isinstance(t, str)]
    return _bundle_image(digest, config, layers, tags, label)


def _named_digest(name: str) -> str | None:
    """The digest a docker-save member name states: blobs/sha256/<hex> or <hex>.json."""
    m = re.fullmatch(r"(?:\./)?blobs/sha256/([0-9a-f]{64})|(?:\./)?([0-9a-f]{64})\.json", name)
    return "sha256:" + (m.group(1) or m.group(2)) if m else None


# ----------------------------------------------------------------------------- layers
def extract_layer(src: Source, layer: LayerBlob, dest: Path, progress: Callable[[int], None] | None = None):
    """Stream one layer blob into the empty directory `dest`, verifying its digests;
    `progress(n)` is told of every n bytes of the blob read."""
    from ctr.images.extract import extract_tar

    label = src.label
    what = layer.digest or layer.path
    f = src.open(layer.path)
    try:
        blob = HashingReader(_Progress(f, progress) if progress else f)  # type: ignore[arg-type]
        head = blob.read(6)
        raw = _Replay(head, blob)
        if head.startswith(b"\x1f\x8b"):
            stream: Any = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type]
        elif head.startswith(b"\x28\xb5\x2f\xfd"):
            raise ImageImportError(f"{label}: layer {what} is zstd-compressed, which ctr cannot read",
                                   hint="convert it with skopeo copy --dest-compress-format gzip")
        else:
            stream = raw
        diff = HashingReader(stream)
        try:
            result = extract_tar(diff, dest, whiteouts="overlay")
            diff.drain()
        except ImageImportError as e:
            _drain_quietly(blob)
            _check_blob(layer, blob, label)  # a wrong blob is the better explanation
            raise ImageImportError(f"{label}: layer {what}: {e.message}", hint=e.hint) from None
        except (OSError, EOFError, zlib.error) as e:
            _drain_quietly(blob)
            _check_blob(layer, blob, label)
            raise ImageImportError(f"{label}: layer {what} is corrupt: {e}", hint=_CORRUPT) from None
        blob.drain()
        _check_blob(layer, blob, label)
        if diff.digest != layer.diff_id:
            raise ImageImportError(
                f"{label}: layer {what} does not match its diff_id {layer.diff_id} (it is {diff.digest})",
                hint=_CORRUPT)
        return result
    finally:
        f.close()


def _drain_quietly(reader: HashingReader) -> None:
    try:
        reader.drain()
    except (OSError, EOFError):
        pass


def _check_blob(layer: LayerBlob, blob: HashingReader, label: str) -> None:
    if layer.digest is not None and blob.digest != layer.digest:
        raise ImageImportError(f"{label}: blob {layer.digest} does not match its digest (it is {blob.digest})",
                               hint=_CORRUPT)
    if layer.size is not None and blob.count != layer.size:
        raise ImageImportError(f"{label}: blob {layer.digest} is {blob.count} bytes, the descriptor says "
                               f"{layer.size}", hint=_CORRUPT)


# ============================================================================ writing
def oci_config(config: ImageConfig, diff_ids: list[str], created: str, author: str = "",
               comment: str = "") -> dict[str, Any]:
    """An image's OCI config document (application/vnd.oci.image.config.v1+json)."""
    run: dict[str, Any] = {}
    if config.env:
        run["Env"] = list(config.env)
    if config.entrypoint:
        run["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        run["Cmd"] = list(config.cmd)
    if config.workdir:
        run["WorkingDir"] = config.workdir
    if config.user:
        run["User"] = config.user
    doc: dict[str, Any] = {
        "architecture": goarch(),
        "os": "linux",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    if created:
        doc["created"] = created
    if author:
        doc["author"] = author
    if comment:
        doc["comment"] = comment
    return doc


def config_bytes(doc: dict[str, Any]) -> bytes:
    return canonical_json(doc)


@dataclass
class LayerFile:
    """A layer tar the caller wrote: its sha256 (the diff id; layers are not compressed)."""

    digest: str
    size: int
    path: Path


class _ArchiveWriter:
    def __init__(self, out: BinaryIO, mtime: int):
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
        self.mtime = mtime
        self.dirs: set[str] = set()

    def _info(self, name: str) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.mtime, ti.uname, ti.gname, ti.mode = self.mtime, "", "", 0o644
        return ti

    def directory(self, name: str) -> None:
        if name in self.dirs:
            return
        self.dirs.add(name)
        ti = self._info(name)
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        self.tar.addfile(ti)

    def data(self, name: str, data: bytes) -> None:
        ti = self._info(name)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))

    def file(self, name: str, path: Path, size: int) -> None:
        ti = self._info(name)
        ti.size = size
        with open(path, "rb") as f:
            self.tar.addfile(ti, f)

    def close(self) -> None:
        self.tar.close()

    def abort(self) -> None:
        from ctr.images.layers import _abandon

        _abandon(self.tar)


def _json_doc(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def write_oci_archive(out: BinaryIO, config: bytes, layers: list[LayerFile], names: list[str],
                      mtime: int = 0) -> str:
    """Write an OCI image archive (oci-layout, index.json, blobs/sha256/…); returns the
    manifest digest."""
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = _json_doc({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": MT_OCI_LAYER, "digest": lf.digest, "size": lf.size} for lf in layers],
    })
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    d: dict[str, Any] = {"mediaType": MT_OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest)}
    if names:  # one entry: skopeo and podman read an archive of one image without a reference
        d["annotations"] = {ANNOTATION_REF: names[0], ANNOTATION_NAME: names[0]}
    index = _json_doc({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [d]})
    w = _ArchiveWriter(out, mtime)
    try:
        w.data("oci-layout", _json_doc({"imageLayoutVersion": "1.0.0"}))
        w.directory("blobs")
        w.directory("blobs/sha256")
        written = set()
        for lf in layers:
            if lf.digest not in written:
                written.add(lf.digest)
                w.file(blob_path(lf.digest), lf.path, lf.size)
        w.data(blob_path(config_digest), config)
        w.data(blob_path(manifest_digest), manifest)
        w.data("index.json", index)
        w.close()
    except BaseException:
        w.abort()
        raise
    return manifest_digest


def write_docker_archive(out: BinaryIO, config: bytes, layers: list[LayerFile], names: list[str],
                         mtime: int = 0) -> None:
    """Write a docker-save archive (manifest.json, <config>.json, <diff id>/layer.tar)."""
    config_hex = hashlib.sha256(config).hexdigest()
    layer_names = [lf.digest.split(":", 1)[1] + "/layer.tar" for lf in layers]
    manifest = _json_doc([{"Config": config_hex + ".json", "RepoTags": list(names) or None,
                           "Layers": layer_names}])
    w = _ArchiveWriter(out, mtime)
    try:
        written = set()
        for lf, name in zip(layers, layer_names):
            if name not in written:
                written.add(name)
                w.directory(name.split("/", 1)[0])
                w.data(name.split("/", 1)[0] + "/VERSION", b"1.0")
                w.file(name, lf.path, lf.size)
        w.data(config_hex + ".json", config)
        w.data("manifest.json", manifest)
        w.close()
    except BaseException:
        w.abort()
        raise
