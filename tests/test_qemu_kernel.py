"""Finding and importing kernels, on fake images and packages built by the tests."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ctr.errors import DriverError
from ctr.qemu import check_host
from ctr.qemu.initramfs import find_busybox
from ctr.qemu.kernel import (Kernel, _safe_rel, extract_vmlinux, find_kernel, image_release,
                             import_kernel, kernel_from_path, list_kernels)

from test_qemu_fakes import make_bzimage, make_kernel_deb, make_modules_tree, make_vmlinux

NO_HOST = dict(host_boot=Path("/nonexistent/boot"), host_modules=Path("/nonexistent/mods"))


def test_image_release(tmp_path):
    bz = tmp_path / "bz"
    bz.write_bytes(make_bzimage("6.1.0-9-amd64"))
    assert image_release(bz) == "6.1.0-9-amd64"
    elf = tmp_path / "elf"
    elf.write_bytes(make_vmlinux("6.12.1-ctr"))
    assert image_release(elf) == "6.12.1-ctr"
    named = tmp_path / "vmlinuz-5.10.0-x"
    named.write_bytes(b"junk")
    assert image_release(named) == "5.10.0-x"
    assert image_release(tmp_path / "nothing") is None


def test_extract_vmlinux_from_xz_bzimage():
    elf = make_vmlinux("6.1.0-9-amd64")
    assert extract_vmlinux(make_bzimage("6.1.0-9-amd64", elf)) == elf
    assert extract_vmlinux(b"not a kernel" * 100) is None


def test_import_deb(tmp_path):
    deb = tmp_path / "linux-image-6.1.0-9-amd64_6.1.1-1_amd64.deb"
    deb.write_bytes(make_kernel_deb("6.1.0-9-amd64"))
    k = import_kernel(deb, tmp_path / "kernels")
    d = tmp_path / "kernels" / "6.1.0-9-amd64"
    assert k == Kernel(d / "vmlinux", d / "modules", "6.1.0-9-amd64")
    assert (d / "vmlinuz").read_bytes()[0x202:0x206] == b"HdrS"
    assert (d / "vmlinux").read_bytes() == make_vmlinux("6.1.0-9-amd64")
    assert (d / "modules/kernel/fs/9p/9p.ko").is_file()
    assert (d / "modules/modules.dep").is_file() and (d / "modules/modules.builtin").is_file()
    assert not (d / "modules/kernel/sound").exists()  # only the subset guests can use
    assert not (d / "modules/build").exists()  # symlinks out of the package are not kept
    assert json.loads((d / "kernel.json").read_text())["image"] == "vmlinux"
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == ["6.1.0-9-amd64"]  # no temp left


def test_import_usr_merged_deb_and_reimport(tmp_path):
    deb = tmp_path / "k.deb"
    deb.write_bytes(make_kernel_deb("6.12.9-amd64", usr_merged=True))
    k1 = import_kernel(deb, tmp_path / "kernels")
    assert (k1.modules / "kernel/fs/9p/9p.ko").is_file()  # type: ignore[operator]
    k2 = import_kernel(deb, tmp_path / "kernels")  # replaces atomically
    assert k1 == k2
    assert sorted(p.name for p in (tmp_path / "kernels").iterdir()) == ["6.12.9-amd64"]


def test_import_image_with_modules(tmp_path):
    src = tmp_path / "vmlinuz-6.1.0-9-amd64"
    src.write_bytes(make_bzimage("6.1.0-9-amd64"))
    mods = make_modules_tree(tmp_path / "lib/modules/6.1.0-9-amd64")
    k = import_kernel(src, tmp_path / "kernels", modules=mods)
    assert k.release == "6.1.0-9-amd64" and k.image.name == "vmlinux"
    assert (k.modules / "modules.dep").is_file()  # type: ignore[operator]


def test_import_rejects_non_kernels(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello")
    with pytest.raises(DriverError) as e:
        import_kernel(junk, tmp_path / "kernels")
    assert "import" in (e.value.hint or "")
    with pytest.raises(DriverError):
        import_kernel(tmp_path / "missing", tmp_path / "kernels")
    assert list((tmp_path / "kernels").iterdir()) == []


def test_find_kernel_order(tmp_path):
    deb = tmp_path / "k.deb"
    deb.write_bytes(make_kernel_deb("6.1.0-9-amd64"))
    kernels = tmp_path / "kernels"
    imported = import_kernel(deb, kernels)
    explicit = tmp_path / "vmlinuz-7.0.0-x"
    explicit.write_bytes(make_bzimage("7.0.0-x"))
    envk = tmp_path / "env" / "vmlinux"
    envk.parent.mkdir()
    envk.write_bytes(make_vmlinux("8.0.0-env"))

    assert find_kernel(explicit, kernels, env={"CTR_KERNEL": str(envk)}, **NO_HOST).release == "7.0.0-x"
    assert find_kernel(None, kernels, env={"CTR_KERNEL": str(envk)}, **NO_HOST).release == "8.0.0-env"
    assert find_kernel(None, kernels, env={}, **NO_HOST) == imported
    # a directory given explicitly is read like an imported kernel
    assert kernel_from_path(kernels / "6.1.0-9-amd64") == imported
    assert list_kernels(kernels) == [imported]


def test_find_kernel_host_then_error(tmp_path):
    release = os.uname().release
    boot = tmp_path / "boot"
    boot.mkdir()
    with pytest.raises(DriverError) as e:
        find_kernel(None, tmp_path / "none", env={}, host_boot=boot, host_modules=tmp_path)
    assert e.value.hint == "import one with `ctr system kernel import FILE`"
    (boot / f"vmlinuz-{release}").write_bytes(make_bzimage(release))
    (tmp_path / "mods" / release).mkdir(parents=True)
    k = find_kernel(None, None, env={}, host_boot=boot, host_modules=tmp_path / "mods")
    assert k == Kernel(boot / f"vmlinuz-{release}", tmp_path / "mods" / release, release)


def test_explicit_missing_kernel_is_an_error(tmp_path):
    with pytest.raises(DriverError):
        find_kernel(tmp_path / "nope", env={}, **NO_HOST)
    with pytest.raises(DriverError):
        find_kernel(None, env={"CTR_KERNEL": str(tmp_path / "nope")}, **NO_HOST)


def test_tar_member_names_are_made_safe():
    assert str(_safe_rel("./boot/vmlinuz-1")) == "boot/vmlinuz-1"
    assert str(_safe_rel("/lib/modules/x")) == "lib/modules/x"
    assert _safe_rel("./") is None and _safe_rel("../etc/passwd") is None
    assert _safe_rel("lib/modules/../../x") is None


def test_check_host_reports_what_is_missing(tmp_path):
    r = check_host(qemu=str(tmp_path / "no-qemu"))
    assert not r.usable and "not installed" in r.reason and "qemu-system-x86" in (r.hint or "")
    fake_qemu = tmp_path / "qemu"
    fake_qemu.write_text("#!/bin/sh\n")
    fake_qemu.chmod(0o755)
    r = check_host(tmp_path / "missing-kernel", qemu=str(fake_qemu), env={})
    assert not r.usable and r.hint  # busybox or kernel missing: either way a hint
    deb = tmp_path / "k.deb"
    deb.write_bytes(make_kernel_deb("6.1.0-9-amd64"))
    k = import_kernel(deb, tmp_path / "kernels")
    try:
        find_busybox()
    except DriverError:
        return  # the rest needs a static busybox on the host
    r = check_host(None, tmp_path / "kernels", qemu=str(fake_qemu), env={})
    assert r.usable and r.kernel == k and "6.1.0-9-amd64" in r.reason
    shutil.rmtree(k.modules / "kernel/fs/9p")  # type: ignore[operator]
    (k.modules / "modules.dep").unlink()  # type: ignore[operator]
    r = check_host(None, tmp_path / "kernels", qemu=str(fake_qemu), env={})
    assert not r.usable and "9p" in r.reason and "cloud" in (r.hint or "")
