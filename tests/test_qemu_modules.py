"""Kernel module dependency resolution on fake module trees (no kernel needed)."""

from __future__ import annotations

import lzma

import pytest

from ctr.qemu.modules import (ModuleIndex, modinfo, module_name, parse_modules_dep,
                              read_module_bytes, strip_signature, write_modules_dep)

from test_qemu_fakes import make_ko, make_modules_tree


def test_module_name():
    assert module_name("kernel/fs/9p/9p.ko") == "9p"
    assert module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz") == "crc32c_intel"
    assert module_name("virtio_pci.ko.zst") == "virtio_pci"


def test_modinfo_reads_the_section():
    info = modinfo(make_ko({"depends": "a,b", "alias": ["x", "y"], "license": "GPL"}))
    assert info == {"depends": ["a,b"], "alias": ["x", "y"], "license": ["GPL"]}
    with pytest.raises(ValueError):
        modinfo(b"not an elf")


def test_strip_signature():
    signed = make_ko({"depends": "x"}, signed=True)
    plain = make_ko({"depends": "x"})
    assert strip_signature(signed) == plain
    assert strip_signature(plain) == plain
    assert modinfo(strip_signature(signed)) == {"depends": ["x"]}


def test_parse_modules_dep():
    text = ("kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko\n"
            "kernel/fs/overlayfs/overlay.ko:\n")
    assert parse_modules_dep(text) == {
        "kernel/fs/9p/9p.ko": ["kernel/fs/netfs/netfs.ko", "kernel/net/9p/9pnet.ko"],
        "kernel/fs/overlayfs/overlay.ko": [],
    }


@pytest.mark.parametrize("with_dep_file", [True, False], ids=["modules.dep", "modinfo"])
def test_resolve_puts_dependencies_first(tmp_path, with_dep_file):
    index = ModuleIndex(make_modules_tree(tmp_path / "m", with_dep_file=with_dep_file))
    order = index.resolve(["virtio_mmio", "virtio_console", "9pnet_virtio", "9p"])
    assert sorted(order) == sorted(["virtio", "virtio_ring", "virtio_mmio", "virtio_console",
                                    "9pnet", "9pnet_virtio", "netfs", "9p"])
    assert len(order) == len(set(order))
    for mod, deps in {"virtio_mmio": ["virtio", "virtio_ring"], "9p": ["9pnet", "netfs"],
                      "9pnet_virtio": ["9pnet", "virtio"]}.items():
        for d in deps:
            assert order.index(d) < order.index(mod)


def test_softdep_alias_is_followed(tmp_path):
    index = ModuleIndex(make_modules_tree(tmp_path / "m"))
    order = index.resolve(["ext4"])
    assert order[-1] == "ext4"
    assert set(order) == {"jbd2", "mbcache", "crc32c_generic", "ext4"}


def test_builtin_and_absent_modules_are_skipped(tmp_path):
    root = make_modules_tree(tmp_path / "m", builtin=("drivers/virtio/virtio",),
                             drop=("overlay",))
    index = ModuleIndex(root)
    assert "virtio" not in index.resolve(["virtio_mmio"])
    assert index.resolve(["overlay"]) == []
    assert index.missing(["overlay", "virtio", "9p"]) == ["overlay"]


def test_compressed_modules(tmp_path):
    root = tmp_path / "m"
    (root / "kernel").mkdir(parents=True)
    (root / "kernel" / "a.ko.xz").write_bytes(lzma.compress(make_ko({"depends": "b"})))
    (root / "kernel" / "b.ko.xz").write_bytes(lzma.compress(make_ko({"depends": ""})))
    index = ModuleIndex(root)
    assert index.resolve(["a"]) == ["b", "a"]
    assert read_module_bytes(root / "kernel" / "a.ko.xz") == make_ko({"depends": "b"})


def test_write_modules_dep_matches_modinfo(tmp_path):
    root = make_modules_tree(tmp_path / "m")
    write_modules_dep(root)
    deps = parse_modules_dep((root / "modules.dep").read_text())
    assert set(deps["kernel/fs/9p/9p.ko"]) == {"kernel/net/9p/9pnet.ko", "kernel/fs/netfs/netfs.ko"}
    assert deps["kernel/fs/overlayfs/overlay.ko"] == []
    # an index built on the written file resolves the same as one built from modinfo
    assert ModuleIndex(root).resolve(["9p"])[-1] == "9p"
