"""newc cpio: what ctr writes parses back, with its own reader and with busybox cpio."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest

from ctr.qemu import cpio


def sample() -> bytes:
    buf = io.BytesIO()
    with cpio.CpioWriter(buf) as w:
        w.add_dir("etc/ctr")
        w.add_file("etc/ctr/run.conf", b"CTR_ARGV='true'\n")
        w.add_file("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755)
        w.add_symlink("bin/sh", "busybox")
        w.add_chardev("dev/console", 5, 1)
        w.add_file("empty", b"")
        w.add_file("odd/name with space", b"x" * 5)
    return buf.getvalue()


def test_round_trip():
    data = sample()
    assert len(data) % 4 == 0
    entries = {e.name: e for e in cpio.read(data)}
    # parents come first and only once
    names = [e.name for e in cpio.read(data)]
    assert names.index("etc") < names.index("etc/ctr") < names.index("etc/ctr/run.conf")
    assert names.count("bin") == 1
    assert entries["etc"].is_dir and entries["etc/ctr"].is_dir
    assert entries["etc/ctr/run.conf"].data == b"CTR_ARGV='true'\n"
    assert entries["bin/busybox"].is_file and entries["bin/busybox"].mode & 0o777 == 0o755
    assert entries["bin/busybox"].data.startswith(b"\x7fELF") and len(entries["bin/busybox"].data) == 772
    assert entries["bin/sh"].is_symlink and entries["bin/sh"].link_target == "busybox"
    assert entries["dev/console"].is_chardev and entries["dev/console"].rdev == (5, 1)
    assert entries["empty"].data == b""
    assert entries["odd/name with space"].data == b"xxxxx"
    assert all(e.uid == 0 and e.gid == 0 for e in entries.values())


def test_deterministic():
    assert sample() == sample()


def test_concatenated_archives_are_read_in_order():
    second = cpio.build([("file", "etc/ctr/run.conf", b"new\n")])
    entries = cpio.read(sample() + second)
    confs = [e.data for e in entries if e.name == "etc/ctr/run.conf"]
    assert confs == [b"CTR_ARGV='true'\n", b"new\n"]  # the kernel lets the later one win


def test_header_layout():
    data = cpio.build([("file", "a", b"hi")])
    assert data[:6] == b"070701"
    header = data[:110]
    fields = [int(header[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
    assert fields[6] == 2  # filesize
    assert fields[11] == 2  # namesize including the NUL
    assert data[110:112] == b"a\0"
    assert data.endswith(b"\0" * (len(data) - data.rindex(b"TRAILER!!!") - 10))


@pytest.mark.parametrize("bad", ["../x", "a/../../x", ".."])
def test_rejects_escaping_names(bad):
    with pytest.raises(ValueError):
        cpio.build([("file", bad, b"")])


def test_reader_rejects_garbage():
    with pytest.raises(ValueError):
        cpio.read(b"hello world!")
    with pytest.raises(ValueError):
        cpio.read(sample()[:200])


def test_writer_refuses_after_close():
    w = cpio.CpioWriter(io.BytesIO())
    w.close()
    with pytest.raises(ValueError):
        w.add_file("x", b"")


@pytest.mark.skipif(not shutil.which("busybox"), reason="busybox not installed")
def test_busybox_cpio_reads_it(tmp_path):
    archive = tmp_path / "a.cpio"
    archive.write_bytes(sample())
    listing = subprocess.run(["busybox", "cpio", "-t"], stdin=open(archive, "rb"),
                             capture_output=True, text=True, check=True).stdout.split("\n")
    assert "etc/ctr/run.conf" in listing and "bin/sh" in listing and "dev/console" in listing
    if os.geteuid() == 0:
        out = tmp_path / "x"
        out.mkdir()
        subprocess.run(["busybox", "cpio", "-id"], stdin=open(archive, "rb"), cwd=out,
                       check=True, capture_output=True)
        assert (out / "etc/ctr/run.conf").read_bytes() == b"CTR_ARGV='true'\n"
        assert os.readlink(out / "bin/sh") == "busybox"
        assert os.stat(out / "bin/busybox").st_mode & 0o777 == 0o755
