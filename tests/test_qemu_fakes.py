"""Fakes for the qemu tests (tiny module ELFs, bzImages, Debian packages), and checks that
the fakes look like the real thing to the tools that read them."""

from __future__ import annotations

import io
import lzma
import struct
import tarfile
from pathlib import Path


def make_ko(info: dict[str, str | list[str]], signed: bool = False) -> bytes:
    """A minimal ELF64 relocatable with a .modinfo section (what modules.modinfo reads)."""
    items = []
    for k, v in info.items():
        for value in ([v] if isinstance(v, str) else v):
            items.append(f"{k}={value}".encode() + b"\0")
    modinfo = b"".join(items)
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    body_off = 64
    modinfo_off = body_off
    shstr_off = modinfo_off + len(modinfo)
    shoff = (shstr_off + len(shstrtab) + 7) & ~7
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 2)
    data = bytearray(header)
    data += modinfo + shstrtab
    data += bytes(shoff - len(data))

    def sh(name: int, typ: int, off: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, typ, 0, 0, off, size, 0, 0, 1, 0)

    data += sh(0, 0, 0, 0) + sh(1, 1, modinfo_off, len(modinfo)) + sh(10, 3, shstr_off, len(shstrtab))
    if signed:
        sig = b"S" * 40
        data += sig + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(sig)) + b"~Module signature appended~\n"
    return bytes(data)


def make_vmlinux(release: str) -> bytes:
    """Something that looks enough like an ELF vmlinux: magic + a Linux version banner."""
    return (b"\x7fELF" + bytes([2, 1, 1]) + bytes(100) +
            f"Linux version {release} (builder@example) #1 SMP\0".encode() + bytes(4000))


def make_bzimage(release: str, payload_elf: bytes | None = None) -> bytes:
    """A bzImage-shaped file: boot header with version string and an xz payload."""
    setup_sects = 4
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    version = f"{release} (builder@example) #1 SMP PREEMPT_DYNAMIC\0".encode()
    struct.pack_into("<H", setup, 0x20E, 0x600 - 0x200)
    setup[0x600:0x600 + len(version)] = version
    payload = lzma.compress(payload_elf or make_vmlinux(release), format=lzma.FORMAT_XZ,
                            check=lzma.CHECK_CRC32)
    payload_offset = 0x100
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    body = bytes(payload_offset) + payload + struct.pack("<I", 12345)  # size appended, as Linux does
    return bytes(setup) + body


MODULES = {
    "kernel/drivers/virtio/virtio.ko": {"name": "virtio", "depends": ""},
    "kernel/drivers/virtio/virtio_ring.ko": {"name": "virtio_ring", "depends": ""},
    "kernel/drivers/virtio/virtio_mmio.ko": {"depends": "virtio,virtio_ring"},
    "kernel/drivers/virtio/virtio_pci.ko": {"depends": "virtio,virtio_ring"},
    "kernel/drivers/char/virtio_console.ko": {"depends": "virtio,virtio_ring"},
    "kernel/net/9p/9pnet.ko": {"depends": ""},
    "kernel/net/9p/9pnet_virtio.ko": {"depends": "9pnet,virtio,virtio_ring"},
    "kernel/fs/netfs/netfs.ko": {"depends": ""},
    "kernel/fs/9p/9p.ko": {"depends": "9pnet,netfs"},
    "kernel/fs/overlayfs/overlay.ko": {"depends": ""},
    "kernel/drivers/block/virtio_blk.ko": {"depends": "virtio,virtio_ring"},
    "kernel/fs/jbd2/jbd2.ko": {"depends": ""},
    "kernel/fs/mbcache.ko": {"depends": ""},
    "kernel/crypto/crc32c_generic.ko": {"alias": ["crypto-crc32c", "crc32c"], "depends": ""},
    "kernel/fs/ext4/ext4.ko": {"depends": "jbd2,mbcache", "softdep": "pre: crypto-crc32c"},
}


def make_modules_tree(root: Path, with_dep_file: bool = False, builtin: tuple[str, ...] = (),
                      drop: tuple[str, ...] = ()) -> Path:
    """A fake lib/modules/<release> tree with module ELFs (signed, like Debian's)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, info in MODULES.items():
        if any(rel.endswith(f"/{d}.ko") for d in drop):
            continue
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(make_ko(info, signed=True))
    (root / "modules.builtin").write_text("".join(f"kernel/{b}.ko\n" for b in builtin))
    if with_dep_file:
        lines = []
        for rel, info in MODULES.items():
            deps = [d for d in str(info.get("depends", "")).split(",") if d]
            dep_paths = [r for r in MODULES if r.rsplit("/", 1)[1][:-3] in deps]
            lines.append(f"{rel}: {' '.join(dep_paths)}")
        (root / "modules.dep").write_text("\n".join(lines) + "\n")
    return root


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def make_kernel_deb(release: str, usr_merged: bool = False) -> bytes:
    """A linux-image-<release> .deb: data.tar.xz with boot/vmlinuz-* and lib/modules/*."""
    buf = io.BytesIO()
    prefix = "./usr/lib/modules" if usr_merged else "./lib/modules"
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        add("./boot/vmlinuz-" + release, make_bzimage(release))
        add("./boot/config-" + release, b"CONFIG_9P_FS=m\n")
        for rel, info in MODULES.items():
            add(f"{prefix}/{release}/{rel}", make_ko(info, signed=True))
        add(f"{prefix}/{release}/kernel/sound/snd.ko", make_ko({"depends": ""}))
        add(f"{prefix}/{release}/modules.builtin", b"kernel/lib/crc32.ko\n")
        link = tarfile.TarInfo(f"{prefix}/{release}/build")
        link.type = tarfile.SYMTYPE
        link.linkname = "/usr/src/linux-headers"
        tar.addfile(link)
        add("./usr/share/doc/linux-image/copyright", b"GPL\n")
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", lzma.compress(b"")),
                ("data.tar.xz", buf.getvalue())])


def test_fake_bzimage_has_the_boot_header():
    data = make_bzimage("6.1.0-test")
    assert data[0x202:0x206] == b"HdrS"
    assert b"6.1.0-test (builder" in data


def test_fake_deb_is_an_ar_archive():
    data = make_kernel_deb("6.1.0-test")
    assert data.startswith(b"!<arch>\ndebian-binary/")
    assert b"data.tar.xz/" in data
