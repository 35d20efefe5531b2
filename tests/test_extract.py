"""Tests for the hardened layer extractor (ctr.images.extract). Archives are built in code."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest

from ctr.errors import ImageImportError
from ctr.images.extract import ExtractResult, Limits, extract_tar, remove_tree

IS_ROOT = os.geteuid() == 0
OLD = 1_000_000_000  # an mtime far from "now"


# --- building archives -------------------------------------------------------------------------


def _info(name, type_=tarfile.REGTYPE, mode=0o644, mtime=OLD, **kw):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = type_, mode, mtime
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def reg(name, data=b"", **kw):
    ti = _info(name, **kw)
    ti.size = len(data)
    return ti, data


def dir_(name, mode=0o755, **kw):
    return _info(name, tarfile.DIRTYPE, mode, **kw), None


def sym(name, target, **kw):
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target, **kw), None


def hard(name, target, **kw):
    return _info(name, tarfile.LNKTYPE, linkname=target, **kw), None


def dev(name, type_=tarfile.CHRTYPE, major=0, minor=0):
    return _info(name, type_, 0o666, devmajor=major, devminor=minor), None


def fifo(name, mode=0o640):
    return _info(name, tarfile.FIFOTYPE, mode), None


def make_tar(entries, fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


class OnlyRead:
    """A pipe-like stream: no seek, no tell."""

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)

    def read(self, n=-1):
        return self._f.read(n)


@pytest.fixture
def layer(tmp_path):
    dest = tmp_path / "layer"
    dest.mkdir()
    return dest


@pytest.fixture
def outside(tmp_path):
    """A sentinel directory outside the layer that must stay empty."""
    d = tmp_path / "outside"
    d.mkdir()
    yield d
    assert list(d.iterdir()) == [], "something was written outside the layer"


def extract(dest, data: bytes, **kw) -> ExtractResult:
    return extract_tar(OnlyRead(data), dest, **kw)


def refused(dest, data, member, match, **kw) -> ImageImportError:
    with pytest.raises(ImageImportError, match=match) as ei:
        extract(dest, data, **kw)
    assert ei.value.member == member
    assert repr(member) in str(ei.value)
    return ei.value


def can_whiteout(tmp_path) -> str | None:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        os.mknod(probe / "c", stat.S_IFCHR, os.makedev(0, 0))
        os.setxattr(probe, "trusted.overlay.opaque", b"y")
    except OSError as e:
        return f"cannot create overlay whiteouts here: {e}"
    return None


# --- a normal tree -----------------------------------------------------------------------------


def test_normal_tree(layer):
    data = make_tar(
        [
            dir_("./", mode=0o751, mtime=OLD - 5),
            dir_("etc", mode=0o750, mtime=OLD + 1),
            reg("etc/hosts", b"127.0.0.1 localhost\n", mode=0o640, mtime=OLD + 2),
            dir_("usr/bin", mode=0o755, mtime=OLD + 3),  # parent usr is implicit
            reg("usr/bin/su", b"#!su", mode=0o4755, uid=1234, gid=5678),
            reg("usr/bin/wall", b"#!wall", mode=0o2711),
            dir_("tmp", mode=0o1777),
            sym("usr/bin/rel", "su"),
            sym("usr/bin/abs", "/etc/passwd"),
            sym("usr/bin/up", "../../etc/hosts"),
            hard("usr/bin/su2", "usr/bin/su"),
            hard("usr/bin/hosts", "/etc/hosts"),
            fifo("run/fifo", mode=0o620),
        ]
    )
    result = extract(layer, data)
    assert result.entries == 13
    assert result.bytes == len(b"127.0.0.1 localhost\n") + 4 + 6
    assert result.skipped == []

    assert (layer / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert stat.S_IMODE(os.stat(layer / "etc/hosts").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(layer).st_mode) == 0o751
    assert stat.S_IMODE(os.stat(layer / "etc").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(layer / "usr").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(layer / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(layer / "usr/bin/su").st_mode) == 0o4755  # setuid kept
    assert stat.S_IMODE(os.stat(layer / "usr/bin/wall").st_mode) == 0o2711
    # mtimes, including directories that got children after their own member
    assert os.stat(layer / "etc/hosts").st_mtime_ns == (OLD + 2) * 10**9
    assert os.stat(layer / "etc").st_mtime_ns == (OLD + 1) * 10**9
    assert os.stat(layer / "usr/bin").st_mtime_ns == (OLD + 3) * 10**9
    assert os.stat(layer).st_mtime_ns == (OLD - 5) * 10**9
    assert os.lstat(layer / "usr/bin/rel").st_mtime_ns == OLD * 10**9
    # symlinks are created as-is, never followed
    assert os.readlink(layer / "usr/bin/rel") == "su"
    assert os.readlink(layer / "usr/bin/abs") == "/etc/passwd"
    assert os.readlink(layer / "usr/bin/up") == "../../etc/hosts"
    # hardlinks share the inode
    assert os.stat(layer / "usr/bin/su2").st_ino == os.stat(layer / "usr/bin/su").st_ino
    assert os.stat(layer / "usr/bin/hosts").st_ino == os.stat(layer / "etc/hosts").st_ino
    st = os.lstat(layer / "run/fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620


@pytest.mark.skipif(not IS_ROOT, reason="chown needs root")
def test_ownership_applied_as_root(layer):
    data = make_tar(
        [
            dir_("d", uid=11, gid=12),
            reg("d/su", b"x", mode=0o6755, uid=1234, gid=5678),
            sym("d/l", "su", uid=21, gid=22),
            fifo("d/p"),
        ]
    )
    extract(layer, data)
    st = os.stat(layer / "d/su")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert stat.S_IMODE(st.st_mode) == 0o6755  # chown did not clear the setuid/setgid bits
    assert (os.stat(layer / "d").st_uid, os.stat(layer / "d").st_gid) == (11, 12)
    assert (os.lstat(layer / "d/l").st_uid, os.lstat(layer / "d/l").st_gid) == (21, 22)


def test_same_owner_false_keeps_our_ids(layer):
    extract(layer, make_tar([reg("f", b"x", uid=1234, gid=5678)]), same_owner=False)
    st = os.stat(layer / "f")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


def test_dest_must_be_empty(layer):
    (layer / "x").write_text("x")
    with pytest.raises(ValueError):
        extract(layer, make_tar([reg("f")]))


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "a/../b", "/../evil", ".."])
def test_dotdot_member_refused(layer, outside, name):
    refused(layer, make_tar([reg(name, b"x")]), name, "escapes the layer")
    assert not (layer.parent / "evil").exists()


def test_absolute_member_is_contained(layer, tmp_path):
    name = f"/{tmp_path.relative_to('/')}/outside/evil"
    extract(layer, make_tar([reg("/etc/evil", b"e"), reg(name, b"x"), reg("././/a/./b", b"b")]))
    assert (layer / "etc/evil").read_bytes() == b"e"
    assert (layer / name.lstrip("/")).read_bytes() == b"x"
    assert not (tmp_path / "outside/evil").exists()
    assert (layer / "a/b").read_bytes() == b"b"


def test_root_member_must_be_a_directory(layer):
    refused(layer, make_tar([reg("./", b"x")]), "./", "layer root must be a directory")


def test_nul_in_name_refused(layer):
    ti, data = reg("placeholder", b"x")
    ti.pax_headers = {"path": "a\x00b"}
    refused(layer, make_tar([(ti, data)]), "a\x00b", "NUL")
    assert list(layer.iterdir()) == []


# --- symlinks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,target", [("a/b", "../../etc"), ("a", "../etc"), ("x", "a/../../y")])
def test_symlink_escaping_refused(layer, name, target):
    refused(layer, make_tar([sym(name, target)]), name, "symlink points outside the layer")


def test_symlink_staying_inside_allowed(layer):
    extract(layer, make_tar([sym("a/b/c", "../../x"), sym("d", "./e/../f")]))
    assert os.readlink(layer / "a/b/c") == "../../x"


def test_write_through_symlink_refused(layer, outside):
    data = make_tar([sym("evil", str(outside)), reg("evil/f", b"pwned")])
    refused(layer, data, "evil/f", "path goes through a symlink")


def test_write_through_inner_symlink_refused(layer, outside):
    data = make_tar([dir_("sub"), sym("ok", "sub"), reg("ok/f", b"x")])
    refused(layer, data, "ok/f", "path goes through a symlink")


def test_file_turned_into_symlink_then_written_through_refused(layer, outside):
    data = make_tar([reg("a", b"plain"), sym("a", str(outside)), reg("a/f", b"pwned")])
    refused(layer, data, "a/f", "path goes through a symlink")


def test_path_through_regular_file_refused(layer):
    refused(layer, make_tar([reg("a", b"x"), reg("a/b", b"y")]), "a/b", "non-directory")


# --- hardlinks ---------------------------------------------------------------------------------


def test_hardlink_to_host_file_refused(layer):
    refused(layer, make_tar([hard("pw", "/etc/passwd")]), "pw", "hardlink target not found")
    assert not (layer / "pw").exists()


def test_hardlink_dotdot_refused(layer, outside):
    (outside.parent / "x").write_text("host")
    try:
        refused(layer, make_tar([hard("x", "../x")]), "x", "hardlink target outside the layer")
    finally:
        (outside.parent / "x").unlink()


def test_hardlink_to_directory_refused(layer):
    refused(layer, make_tar([dir_("d"), hard("l", "d")]), "l", "directory")


def test_hardlink_through_symlink_refused(layer, tmp_path):
    (tmp_path / "outside2").mkdir()
    (tmp_path / "outside2/f").write_text("host")
    data = make_tar([sym("s", str(tmp_path / "outside2")), hard("l", "s/f")])
    refused(layer, data, "l", "path goes through a symlink")


# --- duplicates --------------------------------------------------------------------------------


def test_duplicate_file_replaced_later_wins(layer):
    data = make_tar([reg("f", b"first version"), hard("g", "f"), reg("f", b"second")])
    extract(layer, data)
    assert (layer / "f").read_bytes() == b"second"
    assert (layer / "g").read_bytes() == b"first version"  # replaced, not truncated in place


def test_directory_replaced_by_file(layer):
    data = make_tar([dir_("d", mode=0o700), reg("d/x", b"x"), dir_("d/sub"), reg("d", b"file")])
    extract(layer, data)
    assert (layer / "d").read_bytes() == b"file"
    assert stat.S_IMODE(os.stat(layer / "d").st_mode) == 0o644


def test_symlink_replaced_by_directory(layer, outside):
    data = make_tar([sym("d", str(outside)), dir_("d"), reg("d/f", b"x")])
    extract(layer, data)
    assert (layer / "d/f").read_bytes() == b"x"


def test_directory_twice_updates_metadata(layer):
    data = make_tar([dir_("d", mode=0o700), reg("d/f", b"x"), dir_("d", mode=0o711, mtime=OLD + 9)])
    extract(layer, data)
    assert stat.S_IMODE(os.stat(layer / "d").st_mode) == 0o711
    assert os.stat(layer / "d").st_mtime_ns == (OLD + 9) * 10**9
    assert (layer / "d/f").read_bytes() == b"x"


# --- devices and whiteouts ---------------------------------------------------------------------


def test_device_nodes_skipped(layer):
    data = make_tar([dev("dev/null", tarfile.CHRTYPE, 1, 3), dev("dev/sda", tarfile.BLKTYPE, 8, 0)])
    result = extract(layer, data)
    assert not (layer / "dev/null").exists() and not (layer / "dev/sda").exists()
    assert result.skipped == ["dev/null: device node skipped", "dev/sda: device node skipped"]
    assert result.entries == 0


def test_char_00_refused_in_overlay_mode(layer):
    data = make_tar([dev("etc/x", tarfile.CHRTYPE, 0, 0)])
    refused(layer, data, "etc/x", "forge an overlay whiteout", whiteouts="overlay")


def test_char_00_skipped_in_skip_mode(layer):
    result = extract(layer, make_tar([dev("etc/x", tarfile.CHRTYPE, 0, 0)]))
    assert result.skipped == ["etc/x: device node skipped"]


def test_whiteouts_skipped(layer):
    data = make_tar([dir_("a"), reg("a/.wh.b"), reg("a/.wh..wh..opq"), reg(".wh.top")])
    result = extract(layer, data)
    assert sorted(p.name for p in layer.rglob("*")) == ["a"]
    assert os.listxattr(layer / "a") == []
    assert result.skipped == [
        "a/.wh.b: whiteout skipped",
        "a/.wh..wh..opq: whiteout skipped",
        ".wh.top: whiteout skipped",
    ]


def test_whiteouts_converted_for_overlay(layer, tmp_path):
    reason = can_whiteout(tmp_path)
    if reason:
        print(reason)
        pytest.skip(reason)
    data = make_tar(
        [
            reg("a/b", b"old"),
            reg("a/.wh.b"),
            reg("c/.wh..wh..opq"),
            reg("a/.wh..wh.plnk"),
            reg(".wh.top"),
        ]
    )
    result = extract(layer, data, whiteouts="overlay")
    for name in ("a/b", "top"):
        st = os.lstat(layer / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0), name
    assert os.getxattr(layer / "c", "trusted.overlay.opaque") == b"y"
    assert not (layer / "a/.wh.b").exists() and not (layer / "c/.wh..wh..opq").exists()
    assert result.skipped == ["a/.wh..wh.plnk: whiteout metadata skipped"]
    assert result.entries == 4


@pytest.mark.parametrize("mode", ["skip", "overlay"])
@pytest.mark.parametrize(
    "name,match", [("a/.wh..", "invalid whiteout"), ("a/.wh.x/y", "whiteout name is used")]
)
def test_bad_whiteouts_refused(layer, mode, name, match):
    refused(layer, make_tar([reg(name)]), name, match, whiteouts=mode)


def test_pax_xattrs_not_applied(layer):
    ti, _ = dir_("d")
    ti.pax_headers = {
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.user.overlay.opaque": "y",
    }
    fi, data = reg("f", b"x")
    fi.pax_headers = {"SCHILY.xattr.security.capability": "\x01", "SCHILY.xattr.user.foo": "bar"}
    result = extract(layer, make_tar([(ti, None), (fi, data)]), whiteouts="overlay")
    assert os.listxattr(layer / "d") == []
    assert os.listxattr(layer / "f") == []
    assert result.skipped == [
        "d: extended attributes not applied (trusted.overlay.opaque, user.overlay.opaque)",
        "f: extended attributes not applied (security.capability, user.foo)",
    ]


# --- corrupt input and limits ------------------------------------------------------------------


def test_truncated_in_the_middle_refused(layer):
    data = make_tar([reg("a", b"a" * 5000), reg("big", os.urandom(20000)), reg("z", b"z")])
    with pytest.raises(ImageImportError, match="archive is truncated or corrupt") as ei:
        extract(layer, data[: len(data) // 2])
    assert ei.value.member == "big"


def test_missing_end_of_archive_refused(layer):
    data = make_tar([reg("a", b"a" * 512)], fmt=tarfile.USTAR_FORMAT)
    cut = data[: 512 + 512]  # header + data, no end blocks: cut at a member boundary
    with pytest.raises(ImageImportError, match="end-of-archive"):
        extract(layer, cut)


def test_corrupt_header_refused(layer):
    data = bytearray(make_tar([reg("a", b"a"), reg("b", b"b")], fmt=tarfile.USTAR_FORMAT))
    data[1024 + 10] ^= 0xFF  # second header's name: the checksum no longer matches
    with pytest.raises(ImageImportError, match="invalid tar header at offset 1024"):
        extract(layer, bytes(data))


def test_not_a_tar_refused(layer):
    with pytest.raises(ImageImportError, match="archive is truncated or corrupt"):
        extract(layer, b"this is not a tar archive" * 40)


def test_empty_archive_is_fine(layer):
    assert extract(layer, bytes(10240)) == ExtractResult(0, 0, [], {})


def test_contents_hashed_by_inode_while_extracting(layer, tmp_path):
    import hashlib

    big = os.urandom(3 << 20)  # several read chunks
    result = extract(layer, make_tar([reg("a", b"old"), reg("big", big), hard("b", "a"), reg("a", b"new a"),
                                      reg("empty")]))
    want = {os.lstat(layer / n).st_ino: hashlib.sha256((layer / n).read_bytes()).hexdigest()
            for n in ("a", "b", "big", "empty")}
    assert len(want) == 4 and {i: result.digests[i] for i in want} == want  # "b" keeps the old "a"
    other = tmp_path / "other"
    other.mkdir()
    assert extract_tar(OnlyRead(make_tar([reg("a", b"x")])), other, digests=False).digests is None


def test_read_error_of_stream_is_corrupt(layer):
    class Broken:
        def read(self, n=-1):
            raise OSError("Not a gzipped file")

    with pytest.raises(ImageImportError, match="corrupt: cannot read the archive: Not a gz"):
        extract_tar(Broken(), layer)


def test_max_entries(layer, tmp_path):
    data = make_tar([reg("a"), reg("b"), reg("c")])
    refused(layer, data, "c", "more than 2 members", limits=Limits(max_entries=2))
    ok = tmp_path / "ok"
    ok.mkdir()
    assert extract(ok, data, limits=Limits(max_entries=3)).entries == 3


def test_max_bytes(layer, tmp_path):
    data = make_tar([reg("a", b"12345"), reg("b", b"678901")])
    refused(layer, data, "b", "more than 10 bytes", limits=Limits(max_bytes=10))
    ok = tmp_path / "ok"
    ok.mkdir()
    assert extract(ok, data, limits=Limits(max_bytes=11)).bytes == 11


def test_max_depth(layer):
    data = make_tar([reg("a/b/c/d")])
    refused(layer, data, "a/b/c/d", "deeper than 3", limits=Limits(max_depth=3))
    assert list(layer.iterdir()) == []


def test_max_path(layer):
    name = "d/" + "x" * 60
    refused(layer, make_tar([reg(name)]), name, "longer than 50 bytes", limits=Limits(max_path=50))


def _sparse_tar(name: str, realsize: int, chunks: list[tuple[int, bytes]]) -> bytes:
    """An old-GNU sparse member (type 'S'), which tarfile can read but not write."""
    payload = b"".join(data for _, data in chunks)
    ti = _info(name, tarfile.REGTYPE)
    ti.size = len(payload)
    hdr = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
    hdr[156:157] = tarfile.GNUTYPE_SPARSE
    for i, (offset, data) in enumerate(chunks):
        hdr[386 + 24 * i : 386 + 24 * i + 12] = tarfile.itn(offset, 12, tarfile.GNU_FORMAT)
        hdr[398 + 24 * i : 398 + 24 * i + 12] = tarfile.itn(len(data), 12, tarfile.GNU_FORMAT)
    hdr[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    hdr[148:156] = b"%06o\0 " % tarfile.calc_chksums(bytes(hdr))[0]
    pad = b"\0" * (-len(payload) % 512)
    return bytes(hdr) + payload + pad + bytes(1024)


def test_sparse_member_written_with_real_size(layer, tmp_path):
    data = _sparse_tar("s", 3 << 20, [(0, b"A" * 512), ((2 << 20) + 512, b"B" * 512)])
    result = extract(layer, data)
    content = (layer / "s").read_bytes()
    assert len(content) == 3 << 20 and result.bytes == 3 << 20
    assert content[:512] == b"A" * 512 and content[(2 << 20) + 512 : (2 << 20) + 1024] == b"B" * 512
    assert content.count(0) == (3 << 20) - 1024
    small = tmp_path / "small"
    small.mkdir()
    refused(small, data, "s", "more than 1000000 bytes", limits=Limits(max_bytes=1_000_000))


def test_no_descriptor_leaks_on_success_or_error(tmp_path, outside):
    cases = [
        make_tar([dir_("a/b/c"), reg("a/b/c/f", b"x"), fifo("a/p"), hard("h", "a/b/c/f")]),
        make_tar([dir_("a/b/c"), sym("a/b/c/evil", str(outside)), reg("a/b/c/evil/f", b"x")]),
        make_tar([reg("a/b/c/f", b"x" * 5000)])[:1024],
        make_tar([dir_("a/b"), hard("l", "a/b")]),
    ]
    before = sorted(os.listdir("/proc/self/fd"))
    for i, data in enumerate(cases):
        dest = tmp_path / f"l{i}"
        dest.mkdir()
        try:
            extract(dest, data)
        except ImageImportError:
            pass
    assert sorted(os.listdir("/proc/self/fd")) == before


# --- remove_tree -------------------------------------------------------------------------------


def test_remove_tree_does_not_follow_symlinks(tmp_path, outside):
    (outside / "keep").write_text("keep")
    tree = tmp_path / "tree"
    (tree / "a/b").mkdir(parents=True)
    (tree / "a/b/f").write_text("x")
    os.symlink(outside, tree / "a/link")
    os.symlink(outside / "keep", tree / "flink")
    remove_tree(tree)
    assert not tree.exists()
    assert (outside / "keep").read_text() == "keep"
    (outside / "keep").unlink()
    remove_tree(tree)  # missing is fine


def test_remove_tree_of_a_symlink_removes_only_the_link(tmp_path, outside):
    (outside / "keep").write_text("keep")
    os.symlink(outside, tmp_path / "link")
    remove_tree(tmp_path / "link")
    assert not os.path.lexists(tmp_path / "link")
    assert (outside / "keep").exists()
    (outside / "keep").unlink()


def test_remove_tree_read_only_dirs_unprivileged():
    """In a forked child running as `nobody`, so that read-only directories really are read-only."""
    if not IS_ROOT:
        pytest.skip("needs root to switch to an unprivileged user")
    top = Path(tempfile.mkdtemp(prefix="ctr-rm-"))
    os.chmod(top, 0o755)
    os.chown(top, 65534, 65534)
    tree = top / "tree"
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            (tree / "ro/inner").mkdir(parents=True)
            (tree / "ro/inner/f").write_text("x")
            (tree / "none").mkdir()
            os.chmod(tree / "ro/inner", 0o555)
            os.chmod(tree / "ro", 0o500)
            os.chmod(tree / "none", 0)
            try:
                os.unlink(tree / "ro/inner/f")
                code = 2  # not really read-only: the test would prove nothing
            except PermissionError:
                remove_tree(tree)
                code = 0 if not tree.exists() else 3
        finally:
            os._exit(code)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        remove_tree(top)
