"""`ctr image import` of OCI layouts/archives and docker-save archives, `ctr image export`.

Every archive is built here, in code: a first layer with the busybox root filesystem plus
/a/x, /a/y and /b/z; a second layer that deletes /a/x (`a/.wh.x`) and makes /b opaque
(`b/.wh..wh..opq`) with a new /b/new. A container of the imported image must see exactly
/a/y, /b/new and the busybox files. Damaged archives (a blob or a diff id that does not
match, a digest that names a path) must be refused with one line, leaving no image, no
layer and no litter behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from archives import dir_, jbytes, reg, sha, tar_of, tar_tree
from conftest import Ctr, busybox_is_static, make_rootfs
from test_commit import DRIVERS, diff_views, usable_drivers, view_of

EXPECTED_AB = ["/a", "/a/y", "/b", "/b/new"]


# ============================================================================ building archives
def base_layer(tmp_path: Path) -> bytes:
    """Layer 1: the busybox root filesystem, /a/x, /a/y, /b/z."""
    root = make_rootfs(tmp_path / "layer1")
    (root / "a").mkdir()
    (root / "a" / "x").write_text("x\n")
    (root / "a" / "y").write_text("y\n")
    (root / "b").mkdir()
    (root / "b" / "z").write_text("z\n")
    return tar_tree(root)


def top_layer() -> bytes:
    """Layer 2: delete /a/x, make /b opaque, add /b/new."""
    return tar_of([dir_("a"), reg("a/.wh.x"), dir_("b"), reg("b/.wh..wh..opq"), reg("b/new", b"new\n")])


def config_doc(diff_ids: list[str], **run) -> dict:
    from ctr.images.oci import goarch

    cfg = {"Env": ["PATH=/bin", "FOO=bar"], "Cmd": ["sh", "-c", "echo $FOO; pwd; id -u"],
           "WorkingDir": "/a", "User": "65534"}
    cfg.update(run)
    return {"architecture": goarch(), "os": "linux", "created": "2024-03-04T05:06:07.123456789Z",
            "config": cfg, "rootfs": {"type": "layers", "diff_ids": diff_ids}}


def docker_save(layers: list[bytes], *, gzip_layers=(), tags=("multi:v1",), config: dict | None = None,
                layer_names: list[str] | None = None) -> bytes:
    """A docker-save archive in the classic form: <id>/layer.tar, <config>.json, manifest.json."""
    diff_ids = [sha(layer) for layer in layers]
    cfg = jbytes(config or config_doc(diff_ids))
    entries = []
    names = []
    for i, layer in enumerate(layers):
        blob = gzip.compress(layer) if i in gzip_layers else layer
        lid = hashlib.sha256(f"layer{i}".encode()).hexdigest()
        name = layer_names[i] if layer_names else f"{lid}/layer.tar"
        names.append(name)
        entries += [dir_(lid), reg(f"{lid}/VERSION", b"1.0"), reg(name, blob)]
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    entries.append(reg(cfg_name, cfg))
    entries.append(reg("manifest.json", jbytes([{"Config": cfg_name, "RepoTags": list(tags), "Layers": names}])))
    return tar_of(entries)


def oci_layout(dest: Path, layers: list[bytes], *, gzip_layers=(), name="multi:oci", config: dict | None = None,
               mutate=None) -> Path:
    """An OCI image layout directory; `mutate(parts)` may change the documents before writing."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    diff_ids = [sha(layer) for layer in layers]
    layer_blobs = [gzip.compress(layer) if i in gzip_layers else layer for i, layer in enumerate(layers)]
    parts = {
        "layers": layer_blobs,
        "config": config or config_doc(diff_ids),
        "layer_descs": [{"mediaType": "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if i in gzip_layers else ""),
                         "digest": sha(b), "size": len(b)} for i, b in enumerate(layer_blobs)],
    }
    if mutate:
        mutate(parts)
    cfg = jbytes(parts["config"])
    manifest = jbytes({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(cfg),
                                  "size": len(cfg)},
                       "layers": parts["layer_descs"]})
    parts.setdefault("manifest_desc", {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": sha(manifest), "size": len(manifest),
                                       "annotations": {"org.opencontainers.image.ref.name": name}})
    if "mutate_manifest_desc" in parts:
        parts["mutate_manifest_desc"](parts["manifest_desc"])
    for data in [*layer_blobs, cfg, manifest]:
        (blobs / sha(data)[7:]).write_bytes(data)
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_bytes(jbytes({"schemaVersion": 2, "manifests": [parts["manifest_desc"]]}))
    for name_, data in parts.get("overwrite", {}).items():
        (blobs / name_).write_bytes(data)
    return dest


def tar_dir(src: Path) -> bytes:
    """A tar of a directory the way `tar -C DIR -cf - .` makes it (members start with ./)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(str(src), arcname=".")
    return buf.getvalue()


# ============================================================================ fixtures
@pytest.fixture
def layers(tmp_path):
    if not busybox_is_static():
        pytest.skip("needs busybox-static (apt-get install busybox-static)")
    return [base_layer(tmp_path), top_layer()]


def listing(ctr: Ctr, image: str, driver: str = "overlay") -> list[str]:
    out = ctr.ok("run", "--rm", "-u", "0", "--driver", driver, image, "find", "/a", "/b")
    return sorted(out.split())


def layer_dirs(ctr: Ctr) -> list[str]:
    return sorted(p.name for p in (ctr.root / "layers").iterdir() if p.is_dir())


def store_state(ctr: Ctr) -> tuple[list[str], list[str], list[str]]:
    names = lambda d: sorted(p.name for p in (ctr.root / d).iterdir()) if (ctr.root / d).is_dir() else []
    return names("images"), names("layers"), names("tmp")


def assert_refused(ctr: Ctr, source: str, *needles: str) -> str:
    before = store_state(ctr)
    r = ctr("image", "import", source, "broken")
    assert r.code == 1, r
    lines = r.err.splitlines()
    assert lines[0].startswith("Error: ") and len(lines) <= 2, r.err
    for n in needles:
        assert n in lines[0], (n, r.err)
    assert "broken" not in ctr.ok("image", "ls")
    assert store_state(ctr) == before, "the refused import left something in the store"
    return lines[0]


# ============================================================================ docker save
@pytest.mark.parametrize("driver", DRIVERS)
def test_docker_save_multi_layer_with_whiteouts(ctr, layers, tmp_path, driver):
    if driver not in usable_drivers(ctr):
        pytest.skip(f"driver {driver} not usable here")
    archive = tmp_path / "save.tar"
    archive.write_bytes(docker_save(layers, gzip_layers={1}))
    iid = ctr.ok("image", "import", str(archive)).strip()
    cfg = jbytes(config_doc([sha(layer) for layer in layers]))
    assert iid == sha(cfg), "the image id is the config's digest (as docker's)"
    img = json.loads(ctr.ok("image", "inspect", "multi:v1"))[0]
    assert img["RootFS"]["Layers"] == [sha(layer) for layer in layers]
    assert listing(ctr, "multi:v1", driver) == EXPECTED_AB
    assert ctr.ok("run", "--rm", "-u", "0", "--driver", driver, "multi:v1", "cat", "/b/new", "/a/y") == "new\ny\n"
    # the config gives the run defaults: env, command, working directory, user
    assert ctr.ok("run", "--rm", "--driver", driver, "multi:v1") == "bar\n/a\n65534\n"
    assert img["Config"] == {"Env": ["PATH=/bin", "FOO=bar"], "Cmd": ["sh", "-c", "echo $FOO; pwd; id -u"],
                             "Entrypoint": [], "WorkingDir": "/a", "User": "65534"}
    assert img["Created"] == "2024-03-04T05:06:07.123456Z"


def test_docker_save_layer_forms(ctr, layers, tmp_path):
    """podman's <diff id>.tar names, docker 25's blobs/sha256/<digest>, a gzip-compressed
    archive, and the archive on stdin (plain and gzip)."""
    names = [sha(layers[0])[7:] + ".tar", "blobs/sha256/" + sha(layers[1])[7:]]
    data = docker_save(layers, layer_names=names, tags=("forms:1",))
    (tmp_path / "p.tar").write_bytes(data)
    ctr.ok("image", "import", str(tmp_path / "p.tar"))
    assert listing(ctr, "forms:1") == EXPECTED_AB
    (tmp_path / "p.tar.gz").write_bytes(gzip.compress(data))
    ctr.ok("image", "import", str(tmp_path / "p.tar.gz"), "gz")
    assert listing(ctr, "gz") == EXPECTED_AB
    p = subprocess.run([*ctr_cmd(), "image", "import", "-", "stdin"], input=gzip.compress(data),
                       capture_output=True, env=ctr.env)
    assert p.returncode == 0, p.stderr
    assert listing(ctr, "stdin") == EXPECTED_AB
    # three imports of one image: one record, one set of layers
    assert len(json.loads(ctr.ok("image", "ls", "--format", "json"))) == 2
    assert len(layer_dirs(ctr)) == 2


def ctr_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "ctr"]


def test_docker_save_refusals(ctr, layers, tmp_path):
    # a layer whose bytes do not give the config's diff id
    wrong = json.loads(json.dumps(config_doc([sha(layers[0]), sha(b"something else")])))
    (tmp_path / "d1.tar").write_bytes(docker_save(layers, config=wrong))
    assert_refused(ctr, str(tmp_path / "d1.tar"), "does not match its diff_id", sha(b"something else"))
    # a layer name that climbs out of the archive
    (tmp_path / "d2.tar").write_bytes(docker_save(layers, layer_names=["../evil/layer.tar", "x/layer.tar"]))
    assert_refused(ctr, str(tmp_path / "d2.tar"), "invalid layer name", "../evil/layer.tar")
    # a config named by a digest it does not have
    data = docker_save(layers)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = [(m, t.extractfile(m).read() if m.isreg() else None) for m in t.getmembers()]
    bad = []
    for m, d in members:
        if m.name.endswith(".json") and m.name != "manifest.json":
            d = d.replace(b"FOO=bar", b"FOO=baz")
        bad.append((m, d))
    (tmp_path / "d3.tar").write_bytes(tar_of(bad))
    assert_refused(ctr, str(tmp_path / "d3.tar"), "does not match its digest")
    # two images in one archive
    two = json.loads(dict((m.name, d) for m, d in members)["manifest.json"]) * 2
    (tmp_path / "d4.tar").write_bytes(tar_of([(m, d if m.name != "manifest.json" else jbytes(two)) for m, d in members]))
    assert_refused(ctr, str(tmp_path / "d4.tar"), "holds 2 images")
    # a truncated archive
    (tmp_path / "d5.tar").write_bytes(data[: len(data) // 2])
    assert_refused(ctr, str(tmp_path / "d5.tar"))
    assert ctr.ok("image", "ls", "-q").split()[1:] == []


# ============================================================================ OCI layouts
@pytest.mark.parametrize("driver", DRIVERS)
def test_oci_layout_directory_with_a_gzip_layer(ctr, layers, tmp_path, driver):
    if driver not in usable_drivers(ctr):
        pytest.skip(f"driver {driver} not usable here")
    lay = oci_layout(tmp_path / "layout", layers, gzip_layers={0})
    ctr.ok("image", "import", str(lay))
    assert listing(ctr, "multi:oci", driver) == EXPECTED_AB
    assert ctr.ok("run", "--rm", "--driver", driver, "multi:oci") == "bar\n/a\n65534\n"


def test_oci_archive_as_file_gzip_and_stdin(ctr, layers, tmp_path):
    lay = oci_layout(tmp_path / "layout", layers, gzip_layers={1})
    data = tar_dir(lay)  # ./oci-layout, ./blobs/…: as `tar -C layout -cf - .` writes it
    (tmp_path / "o.tar").write_bytes(data)
    ctr.ok("image", "import", str(tmp_path / "o.tar"), "ofile")
    assert listing(ctr, "ofile") == EXPECTED_AB
    (tmp_path / "o.tar.gz").write_bytes(gzip.compress(data))
    ctr.ok("image", "import", str(tmp_path / "o.tar.gz"), "ogz")
    p = subprocess.run([*ctr_cmd(), "image", "import", "-", "ostdin"], input=data, capture_output=True, env=ctr.env)
    assert p.returncode == 0, p.stderr
    assert listing(ctr, "ostdin") == EXPECTED_AB
    assert list((ctr.root / "tmp").iterdir()) == []  # the spooled copies are gone


def test_layers_already_in_the_store_are_reused(ctr, layers, tmp_path):
    (tmp_path / "one.tar").write_bytes(docker_save(layers))
    ctr.ok("image", "import", str(tmp_path / "one.tar"))
    base_dir = ctr.root / "layers" / sha(layers[0])[7:]
    ino = os.stat(base_dir).st_ino
    third = tar_of([dir_("c"), reg("c/third", b"3\n")])
    lay = oci_layout(tmp_path / "layout", [layers[0], third], name="other:1")
    ctr.ok("image", "import", str(lay))
    assert os.stat(base_dir).st_ino == ino, "the shared layer was extracted again"
    assert layer_dirs(ctr) == sorted(
        sha(x)[7:] for x in (layers[0], layers[1], third))
    assert ctr.ok("run", "--rm", "-u", "0", "other:1", "cat", "/c/third", "/a/x") == "3\nx\n"
    # removing one image keeps the layer the other still uses
    ctr.ok("image", "rm", "multi:v1")
    assert base_dir.is_dir()
    assert ctr.ok("run", "--rm", "-u", "0", "other:1", "cat", "/a/x") == "x\n"


def _blob_tamper(parts):
    parts["overwrite"] = {parts["layer_descs"][1]["digest"][7:]: top_layer().replace(b"new\n", b"NEW\n")}


def _bad_diff_id(parts):
    parts["config"]["rootfs"]["diff_ids"][1] = sha(b"not the layer")


def _path_digest(parts):
    parts["layer_descs"][1]["digest"] = "sha256:../../../../etc/passwd"


def _slash_digest(parts):
    parts["layer_descs"][0]["digest"] = "sha256:" + "a" * 32 + "/" + "b" * 31


def _index_path_digest(parts):
    parts["mutate_manifest_desc"] = lambda d: d.update(digest="sha256:../../index.json")


def _size_lie(parts):
    parts["layer_descs"][1]["size"] += 1


def _sha512(parts):
    parts["layer_descs"][1]["digest"] = "sha512:" + "a" * 128


def _manifest_tamper(parts):
    def m(d):
        d["size"] += 0
        parts["overwrite"] = {d["digest"][7:]: b'{"schemaVersion": 2, "layers": []}'}
    parts["mutate_manifest_desc"] = m


REFUSALS = {
    "blob_content": (_blob_tamper, ["blob sha256:", "does not match its digest"]),
    "diff_id": (_bad_diff_id, ["does not match its diff_id", sha(b"not the layer")]),
    "digest_with_dotdot": (_path_digest, ["invalid digest", "../../../../etc/passwd"]),
    "digest_with_slash": (_slash_digest, ["invalid digest"]),
    "index_digest_with_dotdot": (_index_path_digest, ["invalid digest", "../../index.json"]),
    "size": (_size_lie, ["the descriptor says"]),
    "sha512": (_sha512, ["sha512", "sha256 only"]),
    "manifest_content": (_manifest_tamper, ["(manifest) does not match its digest"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_oci_refusals(ctr, layers, tmp_path, case):
    mutate, needles = REFUSALS[case]
    # a layer already in the store must not let a bad archive through either
    (tmp_path / "ok.tar").write_bytes(docker_save(layers[:1], config=config_doc([sha(layers[0])])))
    ctr.ok("image", "import", str(tmp_path / "ok.tar"), "keep")
    lay = oci_layout(tmp_path / "layout", layers, mutate=mutate)
    first = assert_refused(ctr, str(lay), *needles)
    # the same archive as a tar: the same refusal
    (tmp_path / "lay.tar").write_bytes(tar_dir(lay))
    assert assert_refused(ctr, str(tmp_path / "lay.tar")).split(": ", 2)[-1] == first.split(": ", 2)[-1]
    assert ctr.ok("run", "--rm", "-u", "0", "keep", "cat", "/a/x") == "x\n"  # the store still works


def test_oci_index_with_several_images_or_none(ctr, layers, tmp_path):
    lay = oci_layout(tmp_path / "layout", layers)
    index = json.loads((lay / "index.json").read_text())
    first = index["manifests"][0]
    # a second, different manifest (same layers, one more annotation)
    manifest = json.loads((lay / "blobs" / "sha256" / first["digest"][7:]).read_bytes())
    manifest["annotations"] = {"x": "y"}
    data = jbytes(manifest)
    (lay / "blobs" / "sha256" / sha(data)[7:]).write_bytes(data)
    other = dict(first, digest=sha(data), size=len(data), annotations={"org.opencontainers.image.ref.name": "second:1"})
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [first, other]}))
    assert_refused(ctr, str(lay), "holds 2 images", "multi:oci", "second:1")
    # the same manifest under two names is one image, with both names
    same = dict(first, annotations={"io.containerd.image.name": "again:2"})
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [first, same]}))
    ctr.ok("image", "import", str(lay))
    assert json.loads(ctr.ok("image", "inspect", "again:2"))[0]["RepoTags"] == ["multi:oci", "again:2"]
    ctr.ok("image", "rm", "multi:oci", "again:2")
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    assert_refused(ctr, str(lay), "lists no image manifest")
    # an image for another platform is refused; one for ours, in a nested index, is chosen
    plat = dict(index["manifests"][0], platform={"os": "linux", "architecture": "nosucharch"})
    (lay / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [plat]}))
    assert_refused(ctr, str(lay), "no image for linux/")


def test_not_a_bundle_stays_a_rootfs_import(ctr, tmp_path):
    """A plain root filesystem tar (even with a top-level file named like a bundle's later
    on) is imported as one layer, as before."""
    data = tar_of([dir_("etc"), reg("etc/hostname", b"h\n"), reg("manifest.json", b"[]")])
    (tmp_path / "r.tar").write_bytes(data)
    ctr.ok("image", "import", str(tmp_path / "r.tar"), "plain")
    assert json.loads(ctr.ok("image", "inspect", "plain"))[0]["RootFS"]["Layers"] == [sha(data)]


# ============================================================================ image export
@pytest.fixture
def committed(ctr, busybox_image):
    ctr.ok("run", "--name", "c", busybox_image, "sh", "-c",
           "mkdir -p /srv/app && echo payload > /srv/app/data && rm /etc/group && ln -s /srv/app /app "
           "&& dd if=/dev/urandom of=/srv/app/blob bs=1k count=64 2>/dev/null && ln /srv/app/data /srv/app/hard")
    ctr.ok("commit", "c", "app:1", "-c", 'CMD ["cat", "/app/data"]', "-c", "ENV MODE=prod", "-c", "WORKDIR /srv")
    return "app:1"


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_image_export_round_trip(ctr, committed, tmp_path, fmt):
    out = tmp_path / "img.tar"
    ctr.ok("image", "export", committed, "-o", str(out), "--format", fmt)
    before = view_of(ctr, committed, "overlay")
    # into a fresh store: the image and every byte of its files come back
    other = Ctr(tmp_path / "root2", tmp_path / "c2.yaml")
    try:
        iid = other.ok("image", "import", str(out)).strip()
        assert iid.startswith("sha256:")
        assert json.loads(other.ok("image", "inspect", "app:1"))[0]["Id"] == iid
        assert diff_views(before, view_of(other, "app:1", "overlay")) == []
        assert other.ok("run", "--rm", "app:1") == "payload\n"
        cfg = json.loads(other.ok("image", "inspect", "app:1"))[0]["Config"]
        assert cfg["WorkingDir"] == "/srv" and "MODE=prod" in cfg["Env"]
    finally:
        other.cleanup()
    # written deterministically: the same image gives the same bytes
    ctr.ok("image", "export", committed, "-o", str(tmp_path / "again.tar"), "--format", fmt)
    assert (tmp_path / "again.tar").read_bytes() == out.read_bytes()


def test_image_export_layout(ctr, committed, tmp_path):
    data = subprocess.run([*ctr_cmd(), "image", "export", committed], capture_output=True, env=ctr.env, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = t.getnames()
        index = json.load(t.extractfile("index.json"))
        digest = index["manifests"][0]["digest"]
        manifest = json.load(t.extractfile("blobs/sha256/" + digest[7:]))
        for d in [manifest["config"], *manifest["layers"]]:
            blob = t.extractfile("blobs/sha256/" + d["digest"][7:]).read()
            assert sha(blob) == d["digest"] and len(blob) == d["size"]
    assert names[0] == "oci-layout" and "index.json" in names
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "app:1"
    assert len(manifest["layers"]) == 2
    r = ctr("image", "export", committed, "--format", "tarball")
    assert r.code == 2 and "unknown archive format" in r.err
    r = ctr("image", "export", "host", "-o", str(tmp_path / "h.tar"))
    assert r.code == 1 and "cannot be exported" in r.err and not (tmp_path / "h.tar").exists()


# ============================================================================ skopeo
SKOPEO = shutil.which("skopeo")
needs_skopeo = pytest.mark.skipif(
    not SKOPEO, reason="skopeo not installed (apt-get install -y --no-install-recommends skopeo)")


def skopeo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SKOPEO, "--insecure-policy", *args], capture_output=True, text=True, timeout=120)


@needs_skopeo
@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_skopeo_accepts_the_export(ctr, committed, tmp_path, fmt):
    out = tmp_path / "img.tar"
    ctr.ok("image", "export", committed, "-o", str(out), "--format", fmt)
    r = skopeo("inspect", f"{fmt}:{out}")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["Os"] == "linux" and len(info["Layers"]) == 2
    assert "MODE=prod" in info["Env"]
    r = skopeo("inspect", "--config", f"{fmt}:{out}")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"]["Cmd"] == ["cat", "/app/data"]


@needs_skopeo
@pytest.mark.parametrize("dest", ["oci", "oci-archive", "docker-archive"])
def test_import_what_skopeo_writes(ctr, committed, tmp_path, dest):
    """skopeo copies our archive into each of its formats (recompressing layers with gzip);
    ctr imports the result and sees the same files."""
    out = tmp_path / "img.tar"
    ctr.ok("image", "export", committed, "-o", str(out))
    target = tmp_path / ("layout" if dest == "oci" else "copy.tar")
    ref = f"{dest}:{target}" + (":app:1" if dest != "oci" else "")
    r = skopeo("copy", "--dest-compress", f"oci-archive:{out}", ref) if dest != "docker-archive" else \
        skopeo("copy", f"oci-archive:{out}", ref)
    assert r.returncode == 0, r.stderr
    before = view_of(ctr, committed, "overlay")
    ctr.ok("image", "rm", committed)
    ctr.ok("image", "import", str(target), "back:1")
    assert diff_views(before, view_of(ctr, "back:1", "overlay")) == []


def test_image_export_by_id_of_an_image_with_two_names(ctr, committed, tmp_path):
    ctr.ok("image", "export", committed, "-o", str(tmp_path / "a.tar"))
    ctr.ok("image", "import", str(tmp_path / "a.tar"), "second:2")
    ctr.ok("image", "import", str(tmp_path / "a.tar"), "third:3")
    img = json.loads(ctr.ok("image", "inspect", "second:2"))[0]
    assert len(img["RepoTags"]) == 2
    for fmt in ("oci-archive", "docker-archive"):
        out = tmp_path / f"{fmt}.tar"
        ctr.ok("image", "export", img["Id"], "-o", str(out), "--format", fmt)
        other = Ctr(tmp_path / f"root-{fmt}", tmp_path / "c.yaml")
        other.ok("image", "import", str(out))
        names = json.loads(other.ok("image", "inspect", img["Id"]))[0]["RepoTags"]
        # an OCI archive names one image once (what skopeo and podman read without a
        # reference); a docker-save archive carries every tag
        assert names == (img["RepoTags"][:1] if fmt == "oci-archive" else img["RepoTags"])
        if SKOPEO:
            r = skopeo("inspect", f"{fmt}:{out}")
            assert r.returncode == 0, r.stderr


def test_import_from_a_pipe_path(ctr, layers, tmp_path):
    """`ctr image import <(cmd)` or a FIFO: read once, for a root filesystem or a bundle."""
    import threading

    rootfs_tar = tar_of([dir_("etc"), reg("etc/hostname", b"piped\n")])
    for name, data in (("fromfifo", rootfs_tar), ("bundlefifo", gzip.compress(docker_save(layers)))):
        fifo = tmp_path / f"{name}.fifo"
        os.mkfifo(fifo)

        def feed(data=data, fifo=fifo):
            with open(fifo, "wb") as f:
                f.write(data)

        t = threading.Thread(target=feed)
        t.start()
        r = ctr("image", "import", str(fifo), name)
        t.join()
        assert r.code == 0, r
    assert json.loads(ctr.ok("image", "inspect", "fromfifo"))[0]["RootFS"]["Layers"] == [sha(rootfs_tar)]
    assert listing(ctr, "bundlefifo") == EXPECTED_AB
    assert list((ctr.root / "tmp").iterdir()) == []
