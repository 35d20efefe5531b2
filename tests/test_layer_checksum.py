"""Layer checksum records (`engine/check.py`): version 2, the manifest, whose contents' hashes
are taken while a layer is extracted, equals what `system check` recomputes by reading the
tree; every kind of change it covers is found (each tampering below changes one thing and
keeps the rest, times included); version-1 records (commit, older stores) still verify."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from conftest import IS_ROOT, needs_busybox, needs_root
from ctr.engine.check import MANIFEST_RECORD, TAR_RECORD, layer_record, layer_summary, tree_digest
from ctr.images.extract import extract_tar
from test_extract import OnlyRead, dir_, fifo, hard, make_tar, reg, sym
from test_hardening import _check

OLD = 1_000_000_000
BIG = bytes(range(256)) * 12_000  # ~3 MB: several read chunks


def tree_entries():
    """Every kind of entry, and every way a later member changes an earlier one."""
    return [
        dir_("."),
        dir_("etc"), reg("etc/passwd", b"root:x:0:0::/:/bin/sh\n", uid=0, gid=0),
        reg("etc/shadow", b"secret\n", mode=0o600, uid=0, gid=42),
        dir_("bin"), reg("bin/su", b"\x7fELF su", mode=0o4755), reg("bin/big", BIG),
        reg("bin/empty", b""), sym("bin/sh", "busybox"), sym("bin/abs", "/etc/passwd"),
        hard("bin/su2", "bin/su"), hard("bin/su3", "bin/su2"),
        reg("etc/passwd", b"replaced by a later member\n"),  # the same name again: a new inode
        hard("etc/passwd-", "etc/passwd"),
        reg("bin/su", b"a new su, its old links keep the old one"),
        dir_("gone"), reg("gone/file", b"x"), reg("gone", b"a file where a directory was"),
        reg("d2", b"a file where a directory will be"), dir_("d2"), reg("d2/inner", b"in"),
        fifo("run.fifo"), dir_("tmp", mode=0o1777),
        dir_("del"), reg("del/.wh.lower-file"), dir_("opq"), reg("opq/.wh..wh..opq"), reg("opq/new", b"n"),
        reg("etc/a", b"same"), reg("etc/b", b"same"), reg("ünïcode-näme", b"u"), reg("with\nnewline", b"nl"),
    ]


def extract(dest: Path, entries=None):
    dest.mkdir()
    return extract_tar(OnlyRead(make_tar(entries or tree_entries())), dest, whiteouts="overlay")


@pytest.fixture
def layer(tmp_path):
    if not IS_ROOT:
        pytest.skip("needs root (owners, whiteouts, trusted.* xattrs)")
    dest = tmp_path / "layer"
    result = extract(dest)
    return dest, result


@needs_root
def test_hashes_taken_while_extracting_equal_a_full_read(layer):
    dest, result = layer
    regular = {os.lstat(p).st_ino for p in dest.rglob("*") if p.is_file() and not p.is_symlink()}
    assert regular <= set(result.digests), "a regular file without its hash from extraction"
    fast, size = layer_summary(dest, result.digests)
    assert fast == layer_summary(dest)[0] and fast["version"] == MANIFEST_RECORD
    sizes = sum(os.lstat(p).st_size for p in dest.rglob("*") if not p.is_dir() or p.is_symlink())
    assert size == sizes
    # and the import's walk really takes them from extraction, not from the files
    restore = keep_times(dest / "bin" / "big")
    (dest / "bin" / "big").write_bytes(b"!" + BIG[1:])
    restore()
    assert layer_summary(dest, result.digests)[0] == fast != layer_record(dest)


@needs_root
def test_without_hashes_from_extraction_the_files_are_read(tmp_path, layer):
    dest, result = layer
    again = tmp_path / "again"
    r2 = extract_tar(OnlyRead(make_tar(tree_entries())), _mk(again), whiteouts="overlay", digests=False)
    assert r2.digests is None
    assert layer_record(again) == layer_record(dest, result.digests)


def _mk(p: Path) -> Path:
    p.mkdir()
    return p


# ---------------------------------------------------------------------------- tampering
def keep_times(*paths: Path):
    """Restore the (nanosecond) times of `paths` after a change: only the change is left."""
    saved = [(p, os.lstat(p)) for p in paths]

    def restore() -> None:
        for p, st in saved:
            if os.path.lexists(p):
                os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return restore


def _content(d):
    p = d / "etc" / "shadow"
    r = keep_times(p)
    p.write_bytes(b"Secret\n")  # same size
    r()


def _append(d):
    p = d / "bin" / "big"
    r = keep_times(p)
    with open(p, "ab") as f:
        f.write(b"\0")
    r()


def _rename(d):
    r = keep_times(d / "etc")
    os.rename(d / "etc" / "shadow", d / "etc" / "shadoW")
    r()


def _add(d):
    r = keep_times(d / "etc")
    (d / "etc" / "new").write_bytes(b"")
    os.utime(d / "etc" / "new", (OLD, OLD))
    r()


def _remove(d):
    r = keep_times(d / "bin")
    os.unlink(d / "bin" / "empty")
    r()


def _type(d):  # an empty file becomes a FIFO with the same mode, owner and time
    p = d / "bin" / "empty"
    st, r = os.lstat(p), keep_times(d / "bin")
    os.unlink(p)
    os.mkfifo(p, stat.S_IMODE(st.st_mode))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    r()


def _mode(d):
    os.chmod(d / "etc" / "passwd", 0o666)


def _setuid_dropped(d):
    os.chmod(d / "bin" / "su2", 0o755)


def _sticky_dropped(d):
    os.chmod(d / "tmp", 0o777)


def _uid(d):
    os.chown(d / "etc" / "shadow", 1000, -1)


def _gid(d):
    os.chown(d / "etc" / "shadow", -1, 0)


def _dir_owner(d):
    os.chown(d / "bin", 7, 7)


def _link_target(d):
    p = d / "bin" / "sh"
    r = keep_times(p, d / "bin")
    os.unlink(p)
    os.symlink("busyboX", p)
    r()


def _mtime(d):
    p = d / "etc" / "passwd"
    os.utime(p, ns=(OLD * 10**9, os.lstat(p).st_mtime_ns + 10**9))


def _dir_mtime(d):
    os.utime(d / "bin", (OLD, OLD + 1))


def _symlink_mtime(d):
    os.utime(d / "bin" / "abs", (OLD, OLD + 5), follow_symlinks=False)


def _whiteout_removed(d):
    r = keep_times(d / "del")
    os.unlink(d / "del" / "lower-file")
    r()


def _whiteout_added(d):
    r = keep_times(d / "etc")
    os.mknod(d / "etc" / "group", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    r()


def _opaque_removed(d):
    os.removexattr(d / "opq", "trusted.overlay.opaque")


def _opaque_added(d):
    os.setxattr(d / "etc", "trusted.overlay.opaque", b"y")


def _root_opaque(d):
    os.setxattr(d, "trusted.overlay.opaque", b"y")


def _root_mode(d):
    os.chmod(d, 0o777)


def _hardlink_broken(d):  # an identical copy in place of the second name
    p = d / "bin" / "su3"
    r = keep_times(d / "bin")
    os.unlink(p)
    shutil.copy2(d / "bin" / "su2", p)
    r()


def _hardlink_added(d):  # two separate, identical files become one inode
    p = d / "etc" / "b"
    r = keep_times(d / "etc")
    os.unlink(p)
    os.link(d / "etc" / "a", p)
    r()


def _device_added(d):
    r = keep_times(d / "bin")
    os.mknod(d / "bin" / "mem", stat.S_IFCHR | 0o600, os.makedev(1, 1))
    r()


TAMPERINGS = [_content, _append, _rename, _add, _remove, _type, _mode, _setuid_dropped, _sticky_dropped,
              _uid, _gid, _dir_owner, _link_target, _mtime, _dir_mtime, _symlink_mtime, _whiteout_removed,
              _whiteout_added, _opaque_removed, _opaque_added, _root_opaque, _root_mode, _hardlink_broken,
              _hardlink_added, _device_added]


@needs_root
@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda f: f.__name__.strip("_"))
def test_every_kind_of_change_is_found(layer, tamper):
    dest, result = layer
    recorded = layer_record(dest, result.digests)
    assert layer_record(dest) == recorded  # check's full read agrees before the change
    tamper(dest)
    assert layer_record(dest) != recorded


def _subsecond(d):
    p = d / "etc" / "passwd"
    st = os.lstat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns // 10**9 * 10**9 + 123))


def _atime(d):
    os.utime(d / "bin" / "big", (OLD + 99, os.lstat(d / "bin" / "big").st_mtime))


def _other_xattr(d):
    os.setxattr(d / "etc" / "passwd", "user.note", b"x")


@needs_root
@pytest.mark.parametrize("change", [_subsecond, _atime, _other_xattr], ids=lambda f: f.__name__.strip("_"))
def test_what_is_not_covered_as_documented(layer, change):
    dest, result = layer
    recorded = layer_record(dest, result.digests)
    change(dest)
    assert layer_record(dest) == recorded


# ---------------------------------------------------------------------------- the store, end to end
def _image(ctr, name: str) -> dict:
    """The image record (read from the store, whatever `image inspect` shows)."""
    name = name if ":" in name else name + ":latest"
    (rec,) = [r for p in (ctr.root / "images").glob("*.json") if name in (r := json.loads(p.read_text()))["names"]]
    return rec


def _layer_of(ctr, image: str, index: int = -1) -> tuple[Path, Path]:
    diff_id = _image(ctr, image)["layers"][index].split(":")[1]
    return ctr.root / "layers" / diff_id, ctr.root / "layers" / f"{diff_id}.json"


@needs_root
@needs_busybox
def test_import_records_version_2_and_check_verifies_it(ctr, busybox_image):
    layer, record = _layer_of(ctr, busybox_image)
    rec = json.loads(record.read_text())
    assert rec == {"version": MANIFEST_RECORD, "tree": layer_record(layer)["tree"]}
    assert _check(ctr)[0] == 0
    assert _image(ctr, busybox_image)["size"] == layer_summary(layer)[1]
    passwd = layer / "etc" / "passwd"
    r = keep_times(passwd)
    original = passwd.read_bytes()
    passwd.write_bytes(original.replace(b"root", b"r00t"))
    r()
    code, rep = _check(ctr)
    assert code == 1 and any("changed since it was installed" in f["Problem"] for f in rep["Findings"]), rep
    passwd.write_bytes(original)
    r()
    assert _check(ctr)[0] == 0


@needs_root
@needs_busybox
def test_version_1_records_still_verify_and_repair_writes_version_2(ctr, busybox_image):
    layer, record = _layer_of(ctr, busybox_image)
    v1 = tree_digest(layer)
    for rec in ({"version": TAR_RECORD, "tree": v1}, {"tree": v1}):  # the oldest records have no version
        record.write_text(json.dumps(rec))
        assert _check(ctr)[0] == 0
        os.chmod(layer / "etc" / "passwd", 0o600)
        code, rep = _check(ctr, "--repair")  # a changed layer is never "repaired"
        assert code == 1 and "changed since it was installed" in rep["Findings"][0]["Problem"], rep
        assert json.loads(record.read_text()) == rec
        os.chmod(layer / "etc" / "passwd", 0o644)
    record.write_text(json.dumps({"version": 99, "tree": v1}))
    code, rep = _check(ctr)
    assert code == 1 and "version 99" in rep["Findings"][0]["Problem"] and rep["Findings"][0]["Hint"]
    record.unlink()
    code, rep = _check(ctr, "--repair")
    assert code == 0 and rep["Findings"][0]["Repaired"]
    assert json.loads(record.read_text()) == {"version": MANIFEST_RECORD, "tree": layer_record(layer)["tree"]}


@needs_root
@needs_busybox
def test_bundle_layers_and_committed_layers(ctr, tmp_path, busybox_image):
    from test_oci import docker_save, top_layer

    # an image's layer with whiteouts and an opaque directory, from a docker-save archive
    (tmp_path / "save.tar").write_bytes(docker_save([make_tar(tree_entries()), top_layer()]))
    ctr.ok("image", "import", str(tmp_path / "save.tar"))
    layer, record = _layer_of(ctr, "multi:v1")
    assert json.loads(record.read_text())["version"] == MANIFEST_RECORD
    assert _check(ctr, "--repair")[0] == 0
    _whiteout_removed(_layer_of(ctr, "multi:v1", 0)[0])
    code, rep = _check(ctr)
    assert code == 1 and any("multi:v1 uses the damaged layer" in f["Problem"] for f in rep["Findings"]), rep
    ctr.ok("image", "rm", "multi:v1")
    # commit keeps version 1: the committed layer's own tar is the canonical one
    ctr.ok("run", "--name", "c", busybox_image, "sh", "-c", "echo hi > /new; rm /etc/group")
    ctr.ok("commit", "c", "committed")
    layer, record = _layer_of(ctr, "committed")
    rec = json.loads(record.read_text())
    assert rec == {"version": TAR_RECORD, "tree": "sha256:" + layer.name} == {"version": 1, "tree": tree_digest(layer)}
    assert _check(ctr)[0] == 0
    os.chmod(layer / "new", 0o600)
    assert _check(ctr)[0] == 1

