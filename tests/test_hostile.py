"""Hostile archives through `ctr image import`, beyond what tests/test_extract.py (the extractor
on its own) and tests/test_oci.py (bundle refusals) check: attacks that span layers, metadata
entries aimed through symlinks, forged overlay metadata, digests and names that try to be
paths, huge and sparse members, long and deep paths, the import limits, and control
characters in what errors quote.

Every archive is generated here, in code. Each case ends one of two ways, and both are
checked: refused with one `Error:` line naming the member (no half-imported image listed, no
layer or litter left, the store still answers), or accepted in a sanitised form that is then
shown to stay inside. A canary directory outside the store, the target of every symlink and
link these archives aim out of the layer, must be untouched at the end of every test.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest

from archives import dev, dir_, fifo, hard, reg, sha, sym, tar_of, tar_tree, xattrs
from conftest import Ctr, busybox_is_static, make_rootfs
from test_extract import _sparse_tar

OLD = 1_500_000_000  # the canary's times


# ============================================================================ building archives
def config_doc(diff_ids: list[str]) -> dict:
    from ctr.images.oci import goarch

    return {"architecture": goarch(), "os": "linux", "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}}


def docker_save(layers: list[bytes], *, config_name=None, layer_names=None, extra=(), drop=()) -> bytes:
    """A docker-save archive; `layer_names`, `config_name` and `extra` members let a case lie."""
    cfg = json.dumps(config_doc([sha(x) for x in layers])).encode()
    entries, names = [], []
    for i, layer in enumerate(layers):
        lid = hashlib.sha256(f"l{i}".encode()).hexdigest()
        name = layer_names[i] if layer_names else f"{lid}/layer.tar"
        names.append(name)
        if name not in drop:
            entries += [dir_(lid), reg(f"{lid}/layer.tar", layer)]
    cfg_name = config_name or hashlib.sha256(cfg).hexdigest() + ".json"
    entries.append(reg(hashlib.sha256(cfg).hexdigest() + ".json", cfg))
    entries += list(extra)
    entries.append(reg("manifest.json", json.dumps(
        [{"Config": cfg_name, "RepoTags": ["evil:1"], "Layers": names}]).encode()))
    return tar_of(entries)


def oci_layout(dest: Path, layers: list[bytes], mutate=None) -> Path:
    """An OCI layout directory. `mutate(docs)` may change the layer descriptors, the config
    descriptor or the index entry before they are written (docs: layers, config_desc, index)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    cfg = json.dumps(config_doc([sha(x) for x in layers])).encode()
    docs = {"layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(x), "size": len(x)}
                       for x in layers],
            "config_desc": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(cfg),
                            "size": len(cfg)}}
    for data in [*layers, cfg]:
        (blobs / sha(data)[7:]).write_bytes(data)
    if mutate:
        mutate(docs, blobs)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": docs["config_desc"], "layers": docs["layers"]}).encode()
    (blobs / sha(manifest)[7:]).write_bytes(manifest)
    entry = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest),
             "size": len(manifest)}
    index = {"schemaVersion": 2, "manifests": [docs.get("index_entry", entry)]}
    if "wrap_index" in docs:
        index = docs["wrap_index"](index, blobs)
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps(index))
    return dest


# ============================================================================ fixtures and checks
@pytest.fixture(scope="module")
def bb_layer(tmp_path_factory) -> bytes:
    """The busybox root filesystem as a layer tar (the bottom layer of runnable cases)."""
    if not busybox_is_static():
        pytest.skip("needs busybox-static (apt-get install busybox-static)")
    return tar_tree(make_rootfs(tmp_path_factory.mktemp("bb") / "rootfs"))


def _snapshot(top: Path) -> dict:
    out = {}
    for p in [top, *sorted(top.rglob("*"))]:
        st = os.lstat(p)
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(p)] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink, data,
                       os.readlink(p) if stat.S_ISLNK(st.st_mode) else None)
    return out


@pytest.fixture
def canary(tmp_path):
    """A directory outside the store that archives aim at; it must not change at all."""
    d = tmp_path / "canary"
    d.mkdir(mode=0o755)
    (d / "passwd").write_text("canary:x:0:0::/:/bin/false\n")
    os.chmod(d / "passwd", 0o600)
    (d / "sub").mkdir(mode=0o700)
    for p in (d / "passwd", d / "sub", d):
        os.utime(p, (OLD, OLD))
    before = _snapshot(d)
    yield d
    assert _snapshot(d) == before, "something outside the store was changed"


def _store_state(ctr: Ctr) -> tuple:
    names = lambda d: sorted(p.name for p in (ctr.root / d).iterdir()) if (ctr.root / d).is_dir() else []
    return names("images"), names("layers"), names("containers")


def one_error(r) -> str:
    """The single `Error:` line of a failed command (and nothing but `Hint:` besides)."""
    lines = r.err.splitlines()
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    assert len(errors) == 1, r.err
    assert all(ln.startswith(("Error: ", "Hint: ")) for ln in lines), r.err
    assert "\x1b" not in r.err and "Traceback" not in r.err, repr(r.err)
    return errors[0]


def refused(ctr: Ctr, source, *needles: str, env: dict | None = None, code: int = 1) -> str:
    """Import `source`; it must fail with one line containing `needles`, leave the store as it
    was (no image, no layer, no litter), and the store must still answer."""
    before = _store_state(ctr)
    if env:
        ctr.env.update(env)
    try:
        t = time.monotonic()
        r = ctr("image", "import", str(source), "evil", timeout=60)
        took = time.monotonic() - t
    finally:
        for k in env or ():
            ctr.env.pop(k, None)
    assert r.code == code, r
    line = one_error(r)
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    assert took < 30, f"refusing took {took:.1f}s"
    assert _store_state(ctr) == before, "the refused import left something in the store"
    if (ctr.root / "tmp").is_dir():
        assert list((ctr.root / "tmp").iterdir()) == [], "litter left in tmp/"
    assert "evil" not in ctr.ok("image", "ls"), "a refused image is listed"
    return line


def imported(ctr: Ctr, source, name: str = "good", env: dict | None = None):
    if env:
        ctr.env.update(env)
    try:
        r = ctr("image", "import", str(source), name, timeout=60)
    finally:
        for k in env or ():
            ctr.env.pop(k, None)
    assert r.code == 0, r
    assert "\x1b" not in r.err and "Traceback" not in r.err
    return r


def layer_dirs(ctr: Ctr, name: str) -> list[Path]:
    info = json.loads(ctr.ok("image", "inspect", name))[0]
    return [ctr.root / "layers" / d.split(":", 1)[1] for d in info["RootFS"]["Layers"]]


def no_overlay_xattrs(top: Path, allowed: set[str] = frozenset()) -> None:
    for p in [top, *top.rglob("*")]:
        for x in os.listxattr(p, follow_symlinks=False):
            rel = str(p.relative_to(top))
            assert (rel, x) in allowed, f"{rel} carries {x}"


# ============================================================================ across layers
def test_layers_cannot_write_through_a_symlink_an_earlier_layer_made(ctr, bb_layer, canary, tmp_path):
    """Layer 1 turns /etc, /opq and /lnk into symlinks out of the image; layer 2 then writes
    /etc/passwd, whiteouts /etc/group, makes /opq opaque, replaces /lnk and adds an absolute
    member. Each layer is applied on its own (layer 2 gets real directories), and the drivers
    merge them without following layer 1's links: the container sees layer 2's files, the
    canary stays as it was."""
    l1 = tar_of([sym("etc", canary), sym("opq", canary / "sub"), sym("lnk", canary / "passwd"),
                 sym("rel", "etc/../etc")])
    l2 = tar_of([dir_("etc"), reg("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n"), reg("etc/.wh.group"),
                 dir_("opq"), reg("opq/.wh..wh..opq"), reg("opq/new", b"new\n"),
                 reg("lnk", b"replaced\n"), reg("/abs-member", b"contained\n")])
    (tmp_path / "x.tar").write_bytes(docker_save([bb_layer, l1, l2]))
    imported(ctr, tmp_path / "x.tar")
    script = ("cat /etc/passwd /lnk /abs-member; ls /opq; test -e /etc/group || echo no-group; "
              "test -L /etc || echo etc-is-a-dir; echo pwned > /lnk; echo pwned > /etc/passwd")
    want = "root:x:0:0:root:/:/bin/sh\nreplaced\ncontained\nnew\nno-group\netc-is-a-dir\n"
    for driver in ("overlay", "copy"):
        assert ctr.ok("run", "--rm", "-u", "0", "--driver", driver, "good", "sh", "-c", script) == want
    # a layer that follows a link made by the layer below it never reaches the host either
    l3 = tar_of([sym("out", canary), dir_("out2"), sym("out2/x", "../../../../..")])
    (tmp_path / "y.tar").write_bytes(docker_save([bb_layer, l1, l3]))
    refused(ctr, tmp_path / "y.tar", "symlink points outside the layer", "'out2/x'")


def test_a_refused_top_layer_installs_none_of_the_layers_below(ctr, bb_layer, canary, tmp_path):
    good = tar_of([dir_("ok"), reg("ok/f", b"f\n")])
    bad = tar_of([dir_("x"), reg("x/../../escape", b"!")])
    (tmp_path / "x.tar").write_bytes(docker_save([bb_layer, good, bad]))
    refused(ctr, tmp_path / "x.tar", "path escapes the layer", "x/../../escape")
    # and an absolute hardlink does not reach the host file (the layer has no such target)
    bad = tar_of([hard("h", canary / "passwd")])
    (tmp_path / "y.tar").write_bytes(docker_save([bb_layer, bad]))
    refused(ctr, tmp_path / "y.tar", "hardlink target not found", "'h'")
    # a file turned into a symlink by a duplicate member, then written through
    bad = tar_of([reg("d", b"1"), sym("d", canary), reg("d/passwd", b"pwned")])
    (tmp_path / "z.tar").write_bytes(docker_save([bb_layer, bad]))
    refused(ctr, tmp_path / "z.tar", "path goes through a symlink", "'d/passwd'")


# ============================================================================ metadata through links
def test_metadata_entries_aimed_through_symlinks_change_only_the_layer(ctr, canary, tmp_path):
    """A later member with the name of a symlink replaces the symlink; its mode, owner and
    times land on the new entry, never on what the link pointed at. A directory's metadata,
    applied at the end, is dropped when a later member replaced the directory by a link."""
    entries = [
        sym("a", canary / "passwd"), dir_("a", mode=0o777, uid=4321, gid=4321, mtime=1),
        sym("b", canary / "passwd"), reg("b", b"b\n", mode=0o4755, uid=1234, gid=1234, mtime=2),
        sym("c", canary / "sub"), fifo("c", mode=0o666),
        dir_("d", mode=0o777, uid=99, gid=99, mtime=3), sym("d", canary / "sub"),
        sym("e", canary / "sub"), hard("f", "e"), reg("f", b"f\n", mode=0o666),
        sym("g", canary / "passwd"), hard("h", "g"),
        sym("s", canary), dir_("s/"), reg("s/passwd", b"inside\n", mode=0o600, mtime=4),
    ]
    (tmp_path / "meta.tar").write_bytes(tar_of(entries))
    imported(ctr, tmp_path / "meta.tar")
    (layer,) = layer_dirs(ctr, "good")
    st = {p.name: os.lstat(p) for p in layer.iterdir()}
    assert stat.S_ISDIR(st["a"].st_mode) and stat.S_IMODE(st["a"].st_mode) == 0o777 and st["a"].st_uid == 4321
    assert stat.S_ISREG(st["b"].st_mode) and stat.S_IMODE(st["b"].st_mode) == 0o4755 and st["b"].st_uid == 1234
    assert stat.S_ISFIFO(st["c"].st_mode)
    assert stat.S_ISLNK(st["d"].st_mode) and os.readlink(layer / "d") == str(canary / "sub")
    assert stat.S_ISLNK(st["e"].st_mode) and stat.S_ISREG(st["f"].st_mode)
    assert stat.S_ISLNK(st["h"].st_mode) and st["h"].st_ino == st["g"].st_ino  # a link to the link
    assert (layer / "s" / "passwd").read_bytes() == b"inside\n" and not (layer / "s").is_symlink()


# ============================================================================ forged overlay metadata
def test_overlay_xattrs_in_the_input_are_never_applied(ctr, bb_layer, tmp_path):
    """PAX xattrs that would make overlayfs hide, redirect or meta-copy lower layers are
    dropped with a warning naming the member: the container still sees the layer below."""
    l1 = tar_of([
        xattrs(dir_("etc"), trusted__overlay__opaque="y", user__overlay__opaque="y"),
        xattrs(dir_("bin"), trusted__overlay__redirect="/etc"),
        xattrs(reg("etc/motd", b"hi\n"), trusted__overlay__metacopy="", user__overlay__origin="x"),
        xattrs(dir_("wh"), trusted__overlay__whiteout="y"),
    ])
    (tmp_path / "x.tar").write_bytes(docker_save([bb_layer, l1]))
    r = imported(ctr, tmp_path / "x.tar")
    for member in ("etc", "bin", "etc/motd", "wh"):
        assert f"Warning: {member}: extended attributes not applied" in r.err, r.err
    for d in layer_dirs(ctr, "good"):
        no_overlay_xattrs(d)
    out = ctr.ok("run", "--rm", "-u", "0", "good", "sh", "-c", "cat /etc/passwd /etc/motd; ls /bin | wc -l")
    assert out.startswith("root:x:0:0") and "hi\n" in out and int(out.split()[-1]) > 10


def test_character_device_0_0_cannot_forge_a_whiteout(ctr, bb_layer, tmp_path):
    """In an image layer a 0/0 character device would delete what the layers below hold: refused
    naming it. In a plain root filesystem it is a device node like any other: skipped."""
    (tmp_path / "x.tar").write_bytes(docker_save([bb_layer, tar_of([dir_("bin"), dev("bin/sh")])]))
    refused(ctr, tmp_path / "x.tar", "character device 0/0 would forge an overlay whiteout", "'bin/sh'")
    rootfs = tar_of([dir_("d"), dev("d/c00"), dev("d/mem", major=1, minor=1),
                     dev("d/sda", tarfile.BLKTYPE, 8, 0), reg("d/f", b"f")])
    (tmp_path / "r.tar").write_bytes(rootfs)
    r = imported(ctr, tmp_path / "r.tar")
    assert r.err.count("device node skipped") == 3, r.err
    (layer,) = layer_dirs(ctr, "good")
    assert sorted(p.name for p in (layer / "d").iterdir()) == ["f"]


# ============================================================================ digests and names
def _cfg_digest_slash(docs, blobs):
    docs["config_desc"]["digest"] = "sha256:../../../../canary/passwd"


def _cfg_digest_upper(docs, blobs):
    docs["config_desc"]["digest"] = docs["config_desc"]["digest"].upper().replace("SHA256", "sha256")


def _cfg_content(docs, blobs):
    path = blobs / docs["config_desc"]["digest"][7:]
    path.write_bytes(path.read_bytes().replace(b'"sh"', b'"ls"'))


def _layer_is_the_config(docs, blobs):
    docs["layers"][0] = dict(docs["config_desc"], mediaType="application/vnd.oci.image.layer.v1.tar")


def _nested_index_slash(docs, blobs):
    docs["wrap_index"] = lambda index, b: {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "size": 10,
         "digest": "sha256:" + "0" * 32 + "/" + "1" * 31}]}


def _index_entry_nul(docs, blobs):
    docs["index_entry"] = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 2,
                           "digest": "sha256:" + "a" * 63 + "\x00"}


OCI_CASES = {
    "config_digest_with_path": (_cfg_digest_slash, ["invalid digest", "../../../../canary/passwd"]),
    "config_digest_upper_case": (_cfg_digest_upper, ["invalid digest"]),
    "config_content_altered": (_cfg_content, ["(config) does not match its digest"]),
    "layer_descriptor_names_the_config": (_layer_is_the_config, ["layer sha256:"]),
    "nested_index_digest_with_slash": (_nested_index_slash, ["invalid digest"]),
    "index_digest_with_nul": (_index_entry_nul, ["invalid digest"]),
}


@pytest.mark.parametrize("case", list(OCI_CASES))
def test_oci_digests_that_are_paths_or_lies(ctr, canary, tmp_path, case):
    mutate, needles = OCI_CASES[case]
    layer = tar_of([dir_("etc"), reg("etc/hostname", b"h\n")])
    refused(ctr, oci_layout(tmp_path / "lay", [layer], mutate), *needles)


def test_docker_save_names_that_are_paths(ctr, canary, tmp_path):
    layer = tar_of([dir_("etc"), reg("etc/hostname", b"h\n")])
    cases = [
        (dict(config_name=str(canary / "passwd")), ["invalid Config", str(canary / "passwd")]),
        (dict(config_name="../../canary.json"), ["invalid Config"]),
        (dict(layer_names=[str(canary / "passwd")]), ["invalid layer name"]),
        # the layer member is a symlink (or hardlink) out of the archive: never followed out
        (dict(layer_names=["x/layer.tar"], extra=[dir_("x"), sym("x/layer.tar", "../../../../" + str(canary) + "/passwd")]),
         ["x/layer.tar is missing"]),
        (dict(layer_names=["x/layer.tar"], extra=[dir_("x"), hard("x/layer.tar", str(canary / "passwd"))]),
         ["x/layer.tar is missing"]),
    ]
    for i, (kw, needles) in enumerate(cases):
        (tmp_path / f"d{i}.tar").write_bytes(docker_save([layer], **kw))
        refused(ctr, tmp_path / f"d{i}.tar", *needles)


def test_bundle_directory_links_do_not_leave_the_directory(ctr, canary, tmp_path):
    """An unpacked docker-save or OCI layout directory (from `tar x` of something downloaded)
    may hold symlinks: one that leaves the directory is refused, not read; a FIFO or device
    in place of a blob is refused without blocking."""
    secret = tar_of([reg("stolen", b"host secret\n")])
    (canary / "sub").chmod(0o700)
    outside = tmp_path / "outside-layer.tar"
    outside.write_bytes(secret)
    # docker-save, unpacked: the layer is a link to a tar elsewhere on the host
    d = tmp_path / "save"
    d.mkdir()
    with tarfile.open(fileobj=io.BytesIO(docker_save([secret]))) as t:
        t.extractall(d, filter="tar")
    (lay,) = list(d.glob("*/layer.tar"))
    lay.unlink()
    lay.symlink_to(outside)
    refused(ctr, d, "layer.tar")
    # OCI layout: a blob replaced by a link out, then by a FIFO
    lo = oci_layout(tmp_path / "lay", [secret])
    blob = lo / "blobs" / "sha256" / sha(secret)[7:]
    blob.unlink()
    blob.symlink_to(outside)
    refused(ctr, lo, "blob")
    blob.unlink()
    os.mkfifo(blob)
    refused(ctr, lo, "not a regular file")
    # a link that stays inside the directory is fine (docker save links repeated layers so)
    blob.unlink()
    (lo / "blobs" / "copy").write_bytes(secret)
    blob.symlink_to("../copy")
    imported(ctr, lo)
    (layer,) = layer_dirs(ctr, "good")
    assert (layer / "stolen").read_bytes() == b"host secret\n"


# ============================================================================ size, sparse, paths
def test_a_huge_member_is_refused_before_it_is_read(ctr, tmp_path):
    ti, _ = reg("huge")
    ti.size = 1 << 50  # 1 PiB announced, a few bytes present
    buf = ti.tobuf(tarfile.PAX_FORMAT) + b"x" * 512 + bytes(1024)
    (tmp_path / "h.tar").write_bytes(buf)
    refused(ctr, tmp_path / "h.tar", "more than 68719476736 bytes of file data", "'huge'")


def test_sparse_members_count_their_real_size_and_stay_sparse(ctr, tmp_path):
    big = _sparse_tar("holes", 100 << 20, [(0, b"A" * 512), ((99 << 20), b"B" * 512)])
    (tmp_path / "s.tar").write_bytes(big)
    refused(ctr, tmp_path / "s.tar", "more than 67108864 bytes", "'holes'", env={"CTR_IMPORT_MAX_BYTES": "64m"})
    small = _sparse_tar("holes", 48 << 20, [(0, b"A" * 512), ((47 << 20), b"B" * 512)])
    (tmp_path / "t.tar").write_bytes(small)
    imported(ctr, tmp_path / "t.tar", env={"CTR_IMPORT_MAX_BYTES": "64m"})
    (layer,) = layer_dirs(ctr, "good")
    st = os.stat(layer / "holes")
    assert st.st_size == 48 << 20
    assert st.st_blocks * 512 <= 4 << 20, "the holes were written out"


def test_long_and_deep_paths(ctr, tmp_path):
    long_name = "d/" + "x" * 5000
    (tmp_path / "long.tar").write_bytes(tar_of([reg(long_name)]))
    line = refused(ctr, tmp_path / "long.tar", "name is longer than 4096 bytes")
    assert len(line) < 400, "the error quotes the whole 5000-byte name"
    deep = "/".join(["a"] * 300) + "/f"
    (tmp_path / "deep.tar").write_bytes(tar_of([reg(deep)]))
    refused(ctr, tmp_path / "deep.tar", "path is deeper than 256 components")
    (tmp_path / "comp.tar").write_bytes(tar_of([reg("d/" + "y" * 300)]))
    refused(ctr, tmp_path / "comp.tar", "File name too long")
    # the longest a name may be is fine: 4096 bytes in components of 255
    ok = "/".join(["z" * 254] * 16)
    (tmp_path / "ok.tar").write_bytes(tar_of([reg(ok[:4000], b"deep\n")]))
    imported(ctr, tmp_path / "ok.tar")


def test_import_limits_are_enforced_and_named(ctr, bb_layer, tmp_path):
    many = tar_of([reg(f"f{i}") for i in range(60)])
    (tmp_path / "many.tar").write_bytes(many)
    refused(ctr, tmp_path / "many.tar", "more than 50 members", "'f50'", env={"CTR_IMPORT_MAX_ENTRIES": "50"})
    deep = tar_of([reg("a/b/c/d/e")])
    (tmp_path / "deep.tar").write_bytes(deep)
    refused(ctr, tmp_path / "deep.tar", "deeper than 4 components", env={"CTR_IMPORT_MAX_DEPTH": "4"})
    fat = tar_of([reg("a", b"x" * 600_000), reg("b", b"y" * 600_000)])
    (tmp_path / "fat.tar").write_bytes(fat)
    refused(ctr, tmp_path / "fat.tar", "more than 1048576 bytes", "'b'", env={"CTR_IMPORT_MAX_BYTES": "1m"})
    # the limits hold for each layer of an image bundle too, and the hint names the knob
    (tmp_path / "bundle.tar").write_bytes(docker_save([bb_layer, many]))
    ctr.env["CTR_IMPORT_MAX_ENTRIES"] = "50"
    try:
        r = ctr("image", "import", str(tmp_path / "bundle.tar"), "evil")
    finally:
        del ctr.env["CTR_IMPORT_MAX_ENTRIES"]
    assert r.code == 1 and "more than 50 members" in one_error(r) and "CTR_IMPORT_MAX_ENTRIES" in r.err
    # a malformed limit is a usage error, before anything is read
    ctr.env["CTR_IMPORT_MAX_ENTRIES"] = "lots"
    try:
        r = ctr("image", "import", str(tmp_path / "many.tar"), "evil")
    finally:
        del ctr.env["CTR_IMPORT_MAX_ENTRIES"]
    assert r.code == 2 and "CTR_IMPORT_MAX_ENTRIES" in one_error(r)
    imported(ctr, tmp_path / "many.tar")  # within the default limits


def test_control_characters_in_member_names_stay_escaped(ctr, tmp_path):
    """Errors and warnings quote member names and link targets: a newline or a terminal escape
    in them must not forge a second line or drive the terminal."""
    evil = "x\n\x1b[2JError: everything is fine\r"
    (tmp_path / "a.tar").write_bytes(tar_of([sym("s", "../../" + evil)]))
    line = refused(ctr, tmp_path / "a.tar", "symlink points outside the layer")
    assert "\\n" in line and "\\x1b" in line
    (tmp_path / "b.tar").write_bytes(tar_of([dev("dev" + evil)]))
    r = imported(ctr, tmp_path / "b.tar")
    warnings = [ln for ln in r.err.splitlines() if ln]
    assert len(warnings) == 1 and warnings[0].startswith("Warning: ") and "\\x1b" in warnings[0], r.err
