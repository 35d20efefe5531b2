"""Finding and importing a guest kernel.

A kernel is an image qemu can boot (an ELF `vmlinux` or a `bzImage`/`vmlinuz`), an optional
modules tree (`lib/modules/<release>`) and its release string.  ctr imports kernels into a
directory the caller chooses (the store's kernels directory), one subdirectory per release:

    <kernels_dir>/<release>/kernel.json   {"release": ..., "image": "vmlinux", "source": ...}
    <kernels_dir>/<release>/vmlinuz        the bzImage as shipped
    <kernels_dir>/<release>/vmlinux        the uncompressed ELF, when it could be extracted
    <kernels_dir>/<release>/modules/       a subset of lib/modules/<release> + modules.dep

Booting the ELF `vmlinux` (through its PVH entry point) skips the in-guest decompression of
the bzImage, which under TCG costs about a second of emulated CPU (docs/microvm.md).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# lzma, zlib, gzip and tarfile are imported where a kernel is unpacked or imported: a microvm
# run only finds the kernel (docs/performance.md)
TYPE_CHECKING = False
if TYPE_CHECKING:
    import tarfile
    from typing import BinaryIO, Iterator, Mapping

from ..errors import DriverError
from .modules import write_modules_dep

IMPORT_HINT = "import one with `ctr system kernel import FILE`"

# The part of a distribution's modules tree an import keeps: everything ctr's guests can
# use (filesystems, virtio, block and char devices, 9p, crypto and library helpers),
# about 60 MB of Debian's 400 MB.
IMPORTED_MODULE_DIRS = (
    "kernel/fs/", "kernel/net/9p/", "kernel/drivers/virtio/", "kernel/drivers/block/",
    "kernel/drivers/char/", "kernel/lib/", "kernel/crypto/", "kernel/arch/",
)
IMPORTED_MODULE_FILES = ("modules.builtin", "modules.order", "modules.builtin.modinfo")


@dataclass(frozen=True)
class Kernel:
    """A bootable kernel: `image` for qemu's -kernel, `modules` the lib/modules/<release>
    tree (None when unknown: everything the guest needs must then be built in)."""

    image: Path
    modules: Path | None
    release: str


# ---------------------------------------------------------------------------- images


def _bzimage_payload(data: bytes) -> tuple[int, int] | None:
    """(offset, length) of the compressed kernel inside a bzImage, or None."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        return None
    version, = struct.unpack_from("<H", data, 0x206)
    if version < 0x208:
        return None
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    return start, payload_length


def image_release(path: Path) -> str | None:
    """The release (`uname -r`) of a kernel image, from the bzImage header's version string
    or an ELF vmlinux's "Linux version" banner; None if it cannot be told."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x10000)
            if head[0x202:0x206] == b"HdrS":
                ptr, = struct.unpack_from("<H", head, 0x20E)
                if ptr:
                    s = head[ptr + 0x200: ptr + 0x200 + 256].split(b"\0")[0].decode(errors="replace")
                    if s.split():
                        return s.split()[0]
            if head[:4] == b"\x7fELF":
                f.seek(0)
                tail = b""
                while chunk := f.read(1 << 22):
                    buf = tail + chunk
                    m = re.search(rb"Linux version (\S+) \(", buf)
                    if m:
                        return m.group(1).decode()
                    tail = buf[-256:]
    except OSError:
        return None
    m = re.match(r"vmlinu[xz]-(.+)$", path.name)
    return m.group(1) if m else None


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The uncompressed ELF vmlinux inside a bzImage, for gzip- or xz-compressed kernels
    (Debian's are xz).  None when the payload is compressed otherwise (zstd, lz4, …: Python
    3.11's standard library cannot decompress them) or is not an ELF."""
    loc = _bzimage_payload(bzimage)
    if loc is None:
        return None
    start, length = loc
    payload = bzimage[start:start + length]
    import lzma
    import zlib

    try:
        if payload[:6] == b"\xfd7zXZ\0":
            out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        elif payload[:2] == b"\x1f\x8b":
            out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        else:
            return None
    except (lzma.LZMAError, zlib.error, EOFError):
        return None
    return out if out[:4] == b"\x7fELF" else None


# ---------------------------------------------------------------------------- finding


def _kernel_from_dir(d: Path) -> Kernel | None:
    meta = d / "kernel.json"
    release = None
    image = None
    if meta.is_file():
        try:
            info = json.loads(meta.read_text())
            release = info.get("release")
            if info.get("image") and (d / info["image"]).is_file():
                image = d / info["image"]
        except (OSError, ValueError):
            pass
    if image is None:
        for candidate in ("vmlinux", "vmlinuz", "bzImage"):
            if (d / candidate).is_file():
                image = d / candidate
                break
    if image is None:
        return None
    release = release or image_release(image) or d.name
    modules = d / "modules"
    return Kernel(image, modules if modules.is_dir() else None, release)


def kernel_from_path(path: str | os.PathLike[str]) -> Kernel:
    """A Kernel for a user-given path: an imported kernel directory, or an image file whose
    modules are looked for beside it (`modules/`), then in /lib/modules/<release>."""
    p = Path(path).expanduser()
    if p.is_dir():
        k = _kernel_from_dir(p)
        if k is None:
            raise DriverError(f"no kernel image (vmlinux or vmlinuz) in {p}", hint=IMPORT_HINT)
        return k
    if not p.is_file():
        raise DriverError(f"kernel image {p} does not exist", hint=IMPORT_HINT)
    release = image_release(p)
    if release is None:
        raise DriverError(f"{p} is not a Linux kernel image", hint=IMPORT_HINT)
    modules = None
    for candidate in (p.parent / "modules", p.parent / "lib" / "modules" / release,
                      Path("/lib/modules") / release):
        if candidate.is_dir():
            modules = candidate
            break
    return Kernel(p, modules, release)


def list_kernels(kernels_dir: Path) -> list[Kernel]:
    """Kernels imported into `kernels_dir`, newest first (by modification time)."""
    found = []
    if kernels_dir.is_dir():
        for d in kernels_dir.iterdir():
            if d.is_dir() and not d.name.startswith("."):
                k = _kernel_from_dir(d)
                if k is not None:
                    found.append((d.stat().st_mtime, k))
    return [k for _t, k in sorted(found, key=lambda tk: tk[0], reverse=True)]


def find_kernel(explicit: str | os.PathLike[str] | None = None,
                kernels_dir: Path | None = None,
                env: Mapping[str, str] | None = None,
                host_boot: Path = Path("/boot"),
                host_modules: Path = Path("/lib/modules")) -> Kernel:
    """The kernel to boot: `explicit` (from --kernel or config), then `$CTR_KERNEL`, then
    the newest kernel imported into `kernels_dir`, then the host's own
    /boot/vmlinuz-$(uname -r) with /lib/modules/$(uname -r).  DriverError when none."""
    env = os.environ if env is None else env
    if explicit:
        return kernel_from_path(explicit)
    if env.get("CTR_KERNEL"):
        return kernel_from_path(env["CTR_KERNEL"])
    if kernels_dir is not None:
        kernels = list_kernels(Path(kernels_dir))
        if kernels:
            return kernels[0]
    release = os.uname().release
    for name in (f"vmlinuz-{release}", f"vmlinux-{release}"):
        image = host_boot / name
        if image.is_file() and os.access(image, os.R_OK):
            mods = host_modules / release
            return Kernel(image, mods if mods.is_dir() else None, release)
    raise DriverError("no kernel found for the VM (no --kernel, $CTR_KERNEL, imported "
                      f"kernel, or readable {host_boot}/vmlinuz-{release})", hint=IMPORT_HINT)


# ---------------------------------------------------------------------------- importing


def _ar_members(f: BinaryIO) -> Iterator[tuple[str, int, int]]:
    """(name, offset, size) of each member of an `ar` archive (a .deb)."""
    if f.read(8) != b"!<arch>\n":
        raise DriverError("not a Debian package (no ar header)")
    while True:
        header = f.read(60)
        if len(header) < 60:
            return
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        offset = f.tell()
        yield name, offset, size
        f.seek(offset + size + (size & 1))


class _Window(io.RawIOBase):
    """A read-only view of `size` bytes of `f` from `offset`."""

    def __init__(self, f: BinaryIO, offset: int, size: int):
        self._f, self._start, self._size, self._pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _open_deb_data(f: BinaryIO) -> tarfile.TarFile:
    import gzip
    import lzma
    import tarfile

    for name, offset, size in _ar_members(f):
        if not name.startswith("data.tar"):
            continue
        raw = io.BufferedReader(_Window(f, offset, size), 1 << 20)
        if name.endswith(".xz"):
            stream: BinaryIO = lzma.open(raw)  # type: ignore[assignment]
        elif name.endswith(".gz"):
            stream = gzip.open(raw)  # type: ignore[assignment]
        elif name == "data.tar":
            stream = raw
        else:
            raise DriverError(f"cannot unpack {name} of this package with Python's standard "
                              "library", hint="unpack it with `dpkg-deb -x PKG DIR` and import "
                              "DIR/boot/vmlinuz-* instead")
        return tarfile.open(fileobj=stream, mode="r|")
    raise DriverError("the Debian package has no data.tar member")


def _safe_rel(name: str) -> PurePosixPath | None:
    """A tar member name as a relative path ("./boot/x" -> "boot/x"); None if it is empty
    or climbs out with "..": such members are skipped."""
    p = PurePosixPath(name)
    parts = [part for part in p.parts if part not in ("/", ".")]
    if not parts or ".." in parts:
        return None
    return PurePosixPath(*parts)


def _import_deb(src: Path, work: Path) -> tuple[Path, Path | None, str]:
    """Unpack the kernel image and module subset of a linux-image .deb into `work`."""
    image: Path | None = None
    release = None
    modules_root = work / "modules"
    with open(src, "rb") as f, _open_deb_data(f) as tar:
        for m in tar:
            rel = _safe_rel(m.name)
            if rel is None or not m.isfile():
                continue
            parts = rel.parts
            if parts[0] == "usr":  # merged-/usr packages put modules in usr/lib/modules
                parts = parts[1:]
            if len(parts) == 2 and parts[0] == "boot" and parts[1].startswith("vmlinuz-"):
                image = work / "vmlinuz"
                with tar.extractfile(m) as data, open(image, "wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(data, out)
                release = release or parts[1][len("vmlinuz-"):]
            elif len(parts) >= 4 and parts[:2] == ("lib", "modules"):
                inner = "/".join(parts[3:])
                if not (inner in IMPORTED_MODULE_FILES or inner.startswith(IMPORTED_MODULE_DIRS)):
                    continue
                release = release or parts[2]
                dest = modules_root / inner
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as data, open(dest, "wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(data, out)
    if image is None or release is None:
        raise DriverError(f"{src.name} contains no boot/vmlinuz-*: not a kernel image package",
                          hint="use a linux-image-<version>-amd64 package (not the "
                          "linux-image-amd64 metapackage, which only depends on one)")
    return image, (modules_root if modules_root.is_dir() else None), release


def import_kernel(src: str | os.PathLike[str], dest_dir: str | os.PathLike[str],
                  modules: str | os.PathLike[str] | None = None) -> Kernel:
    """Import a kernel into `dest_dir/<release>/` and return it.

    `src` is a Debian `linux-image-*.deb` (unpacked with pure Python, never installed), or a
    `vmlinuz`/`bzImage`/`vmlinux` file with an optional `modules` directory
    (`lib/modules/<release>`).  The uncompressed vmlinux is extracted from a gzip/xz bzImage
    and preferred for booting.  Re-importing the same release replaces it atomically."""
    src = Path(src)
    dest_dir = Path(dest_dir)
    if not src.is_file():
        raise DriverError(f"{src} does not exist or is not a file", hint=IMPORT_HINT)
    dest_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".import-", dir=dest_dir))
    work.chmod(0o755)
    try:
        with open(src, "rb") as f:
            magic = f.read(8)
        if magic == b"!<arch>\n":
            image, mods, release = _import_deb(src, work)
        else:
            found = image_release(src)
            if found is None:
                raise DriverError(f"{src} is neither a Linux kernel image nor a Debian "
                                  "linux-image package", hint=IMPORT_HINT)
            release = found
            image = work / ("vmlinux" if magic[:4] == b"\x7fELF" else "vmlinuz")
            shutil.copyfile(src, image)
            mods = None
            if modules is not None:
                mods_src = Path(modules)
                if not mods_src.is_dir():
                    raise DriverError(f"modules directory {mods_src} does not exist")
                mods = work / "modules"
                shutil.copytree(mods_src, mods, symlinks=True,
                                ignore=shutil.ignore_patterns("build", "source"))
        boot = image
        if image.name == "vmlinuz":
            vmlinux = extract_vmlinux(image.read_bytes())
            if vmlinux is not None:
                boot = work / "vmlinux"
                boot.write_bytes(vmlinux)
        if mods is not None and not (mods / "modules.dep").is_file():
            write_modules_dep(mods)
        (work / "kernel.json").write_text(json.dumps(
            {"release": release, "image": boot.name, "source": src.name}, indent=2) + "\n")
        if "/" in release or release.startswith("."):
            raise DriverError(f"refusing odd kernel release {release!r}")
        final = dest_dir / release
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=".old-", dir=dest_dir))
            final.rename(old / "k")
            work.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(final)
        work = final
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return _kernel_from_dir(final)  # type: ignore[return-value]
