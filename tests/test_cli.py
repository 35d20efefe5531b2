"""The command line: ps (flags, filters, formats), inspect, references, rm, errors and exit
codes, info, --version, and the image verbs (import, ls, inspect, rm)."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import re
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

import ctr as ctr_pkg

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX12 = re.compile(r"[0-9a-f]{12}")


def parallel(fn, items, workers: int = 4) -> list:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def assert_one_error(r, *needles: str) -> None:
    errs = [ln for ln in r.err.splitlines() if ln.startswith("Error:")]
    assert len(errs) == 1, r.err
    assert "Traceback" not in r.err and "internal error" not in r.err, r.err
    for ln in r.err.splitlines():
        assert ln.startswith(("Error:", "Hint:")), f"unexpected stderr line {ln!r}"
    for n in needles:
        assert n in errs[0], f"{n!r} not in {errs[0]!r}"


def ps_json(ctr, *args: str) -> list[dict]:
    return json.loads(ctr.ok("ps", "--format", "json", *args))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
def populated(ctr, busybox_image):
    """Three containers: ok0 (overlay, exit 0), fail3 (copy, exit 3), live (running, sleeping),
    created in that order."""
    ctr.ok("run", "--name", "ok0", "--driver", "overlay", busybox_image, "true")
    assert ctr("run", "--name", "fail3", "--driver", "copy", busybox_image, "sh", "-c", "exit 3").code == 3
    live = subprocess.Popen([sys.executable, "-m", "ctr", "run", "--name", "live", busybox_image, "sleep", "60"],
                            env=ctr.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if ctr.ok("ps", "-q", "--filter", "name=live"):
            break
        assert live.poll() is None, live.communicate()
        time.sleep(0.05)
    else:
        pytest.fail("the live container never showed as running")
    yield {"ok0", "fail3", "live"}
    ctr("rm", "-f", "live")
    live.wait(timeout=20)


# ----------------------------------------------------------------------------- ps
def test_ps_flags(ctr, populated):
    table = ctr.ok("ps").splitlines()
    assert table[0].split()[:2] == ["CONTAINER", "ID"]
    for col in ("IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES", "ISOLATION", "DRIVER"):
        assert col in table[0]
    assert len(table) == 2 and "live" in table[1] and "Up " in table[1]  # running only

    everything = ps_json(ctr, "-a")
    assert [it["Names"][0] for it in everything] == ["live", "fail3", "ok0"]  # newest first
    ids = [it["Id"] for it in everything]

    assert ctr.ok("ps", "-q").split() == [ids[0][:12]]
    assert ctr.ok("ps", "-a", "-q").split() == [i[:12] for i in ids]
    assert ctr.ok("ps", "-a", "-q", "--no-trunc").split() == ids
    assert ctr.ok("ps", "-n", "2", "-q").split() == [i[:12] for i in ids[:2]]  # -n implies all states
    assert ctr.ok("ps", "-n", "5", "-q").split() == [i[:12] for i in ids]
    assert ctr.ok("ps", "-l", "-q").split() == [ids[0][:12]]
    assert [it["Names"] for it in ps_json(ctr, "-l")] == [["live"]]

    a = ctr.ok("ps", "-a").splitlines()
    assert len(a) == 4
    row = next(line for line in a if "fail3" in line)
    assert "Exited (3)" in row and "process" in row and "copy" in row
    assert ids[1][:12] in row and ids[1] not in row
    full = next(line for line in ctr.ok("ps", "-a", "--no-trunc").splitlines() if "fail3" in line)
    assert ids[1] in full and '"sh -c exit 3"' in full


FILTERS = [
    ("status=exited", {"ok0", "fail3"}),
    ("status=running", {"live"}),
    ("status=created", set()),
    ("name=fail", {"fail3"}),
    ("name=o", {"ok0"}),
    ("ancestor=bb", {"ok0", "fail3", "live"}),
    ("ancestor=bb:latest", {"ok0", "fail3", "live"}),
    ("ancestor=nope", set()),
    ("isolation=process", {"ok0", "fail3", "live"}),
    ("isolation=hyperv", set()),
    ("driver=copy", {"fail3"}),
    ("driver=overlay", {"ok0", "live"}),
    ("exited=3", {"fail3"}),
    ("exited=0", {"ok0"}),
    ("exited=1", set()),
]


def test_ps_filters(ctr, populated):
    image_id = json.loads(ctr.ok("image", "inspect", "bb"))[0]["Id"]
    cases = FILTERS + [(f"ancestor={image_id}", {"ok0", "fail3", "live"})]
    results = parallel(lambda f: ps_json(ctr, "-a", "--filter", f[0]), cases)
    for (flt, want), got in zip(cases, results):
        assert {it["Names"][0] for it in got} == want, flt
    # several filters: all must hold
    got = ps_json(ctr, "-a", "--filter", "driver=overlay", "--filter", "status=exited")
    assert [it["Names"][0] for it in got] == ["ok0"]
    # a state filter shows that state without -a, as docker does
    assert {it["Names"][0] for it in ps_json(ctr, "--filter", "status=exited")} == {"ok0", "fail3"}
    assert {it["Names"][0] for it in ps_json(ctr, "-f", "exited=3")} == {"fail3"}


@pytest.mark.parametrize("bad", ["bogus=1", "status", "=x", "colour=red"])
def test_ps_bad_filter(ctr, bad):
    r = ctr("ps", "--filter", bad)
    assert r.code == 2
    assert r.out == ""
    assert_one_error(r, "filter")


def test_ps_json_fields(ctr, populated):
    items = ps_json(ctr, "-a")
    assert isinstance(items, list) and len(items) == 3
    by = {it["Names"][0]: it for it in items}
    for it in items:
        assert HEX64.fullmatch(it["Id"])
        assert isinstance(it["Names"], list) and len(it["Names"]) == 1
        assert isinstance(it["Command"], list)
        assert datetime.fromisoformat(it["Created"]).tzinfo is not None
        assert it["Isolation"] == "process"
        assert it["Image"] == "bb"
    assert by["fail3"]["Command"] == ["sh", "-c", "exit 3"]
    assert by["fail3"]["State"] == "exited"
    assert by["fail3"]["ExitCode"] == 3 and type(by["fail3"]["ExitCode"]) is int
    assert by["fail3"]["Status"].startswith("Exited (3)")
    assert by["fail3"]["Driver"] == "copy"
    assert by["ok0"]["ExitCode"] == 0 and by["ok0"]["Driver"] == "overlay"
    assert by["live"]["State"] == "running" and by["live"]["Status"].startswith("Up ")
    assert by["live"]["ExitCode"] is None
    assert isinstance(by["live"]["Pid"], int) and by["live"]["Pid"] > 0
    assert Path(f"/proc/{by['live']['Pid']}").exists()
    assert by["live"]["Command"] == ["sleep", "60"]
    # an empty listing is still a JSON array
    assert ps_json(ctr, "--filter", "name=nothing-matches") == []


def test_ps_template(ctr, populated):
    out = ctr.ok("ps", "-a", "--format", "{{.Names}} {{.State}}")
    assert out.splitlines() == ["live running", "fail3 exited", "ok0 exited"]
    out = ctr.ok("ps", "-a", "--format", "{{.ID}}\\t{{.ExitCode}}\\t{{.Isolation}}", "--filter", "name=fail3")
    fid = ps_json(ctr, "-a", "--filter", "name=fail3")[0]["Id"]
    assert out == f"{fid[:12]}\t3\tprocess\n"
    assert ctr.ok("ps", "-a", "--no-trunc", "--format", "{{.ID}}", "--filter", "name=fail3") == fid + "\n"
    r = ctr("ps", "--format", "{{.NoSuchField}}", "-a")
    assert r.code == 2
    assert_one_error(r, "NoSuchField")


# ----------------------------------------------------------------------------- inspect, refs
def test_inspect(ctr, populated):
    (rec,) = json.loads(ctr.ok("inspect", "fail3"))
    assert HEX64.fullmatch(rec["Id"])
    assert rec["Name"] == "fail3"
    assert rec["State"]["Status"] == "exited" and rec["State"]["ExitCode"] == 3
    assert rec["Driver"] == "copy" and rec["Isolation"] == rec["HostConfig"]["Isolation"] == "process"
    assert rec["Image"] == json.loads(ctr.ok("image", "inspect", "bb"))[0]["Id"]
    assert rec["Config"]["Cmd"] == ["sh", "-c", "exit 3"] and (rec["Path"], rec["Args"]) == ("sh", ["-c", "exit 3"])
    for t in (rec["Created"], rec["State"]["StartedAt"], rec["State"]["FinishedAt"]):
        assert datetime.fromisoformat(t).tzinfo is not None, t
    assert rec["StaticDir"] == str(ctr.root / "containers" / rec["Id"])
    assert rec["DriverInfo"]["cannot_capture"], "the copy driver must say what it cannot capture"
    recs = json.loads(ctr.ok("inspect", "ok0", "fail3", "live"))
    assert [r["Name"] for r in recs] == ["ok0", "fail3", "live"]
    assert recs[2]["State"]["Status"] == "running" and recs[2]["State"]["Pid"] > 0
    # one bad reference: the good ones are still printed, exit 1, one error line
    r = ctr("inspect", "ok0", "nope")
    assert r.code == 1
    assert [x["Name"] for x in json.loads(r.out)] == ["ok0"]
    assert_one_error(r, "nope")
    assert ctr.ok("inspect", "-f", "{{.Name}} {{.State.ExitCode}}", "fail3") == "fail3 3\n"


def _shortest_unique_prefix(ident: str, others: list[str]) -> str:
    for n in range(1, 65):
        if not any(o != ident and o.startswith(ident[:n]) for o in others):
            return ident[:n]
    raise AssertionError("ids are not unique")


def test_references(ctr, busybox_image):
    ids: list[str] = []
    # create containers until two share a first hex digit (at most 17 by pigeonhole)
    while True:
        batch = parallel(lambda i: ctr("run", busybox_image, "true"), range(4))
        assert all(r.code == 0 for r in batch)
        ids = [it["Id"] for it in ps_json(ctr, "-a")]
        firsts = [i[0] for i in ids]
        dup = next((c for c in firsts if firsts.count(c) > 1), None)
        if dup:
            break
    names = {it["Id"]: it["Names"][0] for it in ps_json(ctr, "-a")}
    target = ids[0]
    prefix = _shortest_unique_prefix(target, ids)
    for ref in (target, names[target], prefix, target[:12]):
        (rec,) = json.loads(ctr.ok("inspect", ref))
        assert rec["Id"] == target, ref
    assert ctr.ok("diff", prefix) == ""
    r = ctr("inspect", dup)
    assert r.code == 1, r
    assert r.out == ""
    assert_one_error(r, "ambiguous", repr(dup))
    r = ctr("diff", dup)
    assert r.code == 1
    assert_one_error(r, "ambiguous")
    r = ctr("rm", dup)
    assert r.code == 1
    assert_one_error(r, "ambiguous")
    assert len(ps_json(ctr, "-a")) == len(ids), "an ambiguous rm removed something"
    r = ctr("inspect", "no-such-container")
    assert r.code == 1
    assert_one_error(r, "no such container", "no-such-container")


def test_name_before_prefix(ctr, busybox_image):
    ctr.ok("run", busybox_image, "true")
    other = ps_json(ctr, "-a")[0]["Id"]
    # a container named like the other's id prefix: the name wins (docker's order)
    ctr.ok("run", "--name", other[:6], busybox_image, "true")
    (rec,) = json.loads(ctr.ok("inspect", other[:6]))
    assert rec["Name"] == other[:6] and rec["Id"] != other
    (rec,) = json.loads(ctr.ok("inspect", other[:7]))
    assert rec["Id"] == other


def test_rm_carries_on(ctr, busybox_image):
    parallel(lambda n: ctr.ok("run", "--name", n, busybox_image, "true"), ["a", "b", "c"])
    ids = {it["Names"][0]: it["Id"] for it in ps_json(ctr, "-a")}
    r = ctr("rm", "a", "no-such-thing", ids["c"][:12], "b")
    assert r.code == 1
    assert r.out.split() == ["a", ids["c"][:12], "b"]
    assert_one_error(r, "no-such-thing")
    assert ps_json(ctr, "-a") == []
    assert list((ctr.root / "containers").iterdir()) == []


def test_rm_running_needs_force(ctr, populated):
    r = ctr("rm", "live")
    assert r.code == 1
    assert_one_error(r, "running")
    assert ps_json(ctr, "--filter", "name=live")[0]["State"] == "running"
    pid = ps_json(ctr, "--filter", "name=live")[0]["Pid"]
    assert ctr.ok("rm", "-f", "live") == "live\n"
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists(), "rm -f left the workload running"
    assert {it["Names"][0] for it in ps_json(ctr, "-a")} == {"ok0", "fail3"}


# ----------------------------------------------------------------------------- errors, usage
def test_errors_are_one_line(ctr, busybox_image):
    cases = [
        (("inspect", "nope"), 1, "nope"),
        (("diff", "nope"), 1, "nope"),
        (("rm", "nope"), 1, "nope"),
        (("image", "inspect", "nope"), 1, "nope"),
        (("image", "rm", "nope"), 1, "nope"),
        (("image", "rm", "host"), 1, "host"),
        (("image", "import", "/no/such/dir"), 1, "/no/such/dir"),
        (("image", "import", "/etc/passwd", "x"), 1, ""),
        (("image", "import", "/etc", "Bad Name"), 2, "invalid image name"),
        (("image", "import", "/etc", "host"), 2, "host"),
        (("nosuchverb",), 2, "nosuchverb"),
        (("ps", "--bogus"), 2, "--bogus"),
        (("ps", "--format", "xml"), 2, "xml"),
        (("ps", "-n", "many"), 2, "many"),
        (("rm",), 2, ""),
        (("diff",), 2, ""),
        (("inspect",), 2, ""),
        (("image", "ls", "--format", "xml"), 2, "xml"),
        (("diff", "--format", "xml", "x"), 2, "xml"),
    ]
    results = parallel(lambda c: ctr(*c[0]), cases)
    for (args, code, needle), r in zip(cases, results):
        assert r.code == code, f"ctr {' '.join(args)}: {r}"
        assert_one_error(r, needle)


@pytest.mark.parametrize("args, typo, meant", [
    (("imagee", "ls"), "imagee", "image"), (("imag",), "imag", "image"),
    (("image", "lss"), "lss", "ls"), (("vm", "lss"), "lss", "ls"), (("systme", "check"), "systme", "system"),
])
def test_a_typo_gets_one_suggestion(ctr, args, typo, meant):
    """typer and click (8.2+) each suggest the command meant: the line says it once."""
    r = ctr(*args)
    assert r.code == 2
    assert_one_error(r, f"No such command '{typo}'. Did you mean '{meant}'?")
    assert r.err.count("Did you mean") == 1, r.err


def test_debug_shows_more(ctr):
    r = ctr("--debug", "inspect", "nope")
    assert r.code == 1 and "Error: no such container" in r.err


def test_no_args_shows_help(ctr):
    r = ctr()
    assert r.code in (0, 2)
    assert "run" in r.out + r.err and "Traceback" not in r.err


def test_info_lists_drivers(ctr):
    out = ctr.ok("info")
    assert "overlay" in out and "copy" in out and str(ctr.root) in out
    data = json.loads(ctr.ok("info", "--format", "json"))
    drivers = {(d["Isolation"], d["Driver"]): d for d in data["Drivers"]}
    assert {("process", "overlay"), ("process", "copy")} <= set(drivers)
    for d in drivers.values():
        assert isinstance(d["Usable"], bool)
        assert d["Reason"] or d["Usable"]
        if not d["Usable"]:
            assert d["Fix"], f"{d['Driver']} unusable without a fix: {d}"
    assert drivers[("process", "copy")]["Reason"], "copy must be honest about what it cannot capture"
    assert data["Store"]["Root"] == str(ctr.root)
    assert data["Version"] == ctr_pkg.__version__


def test_version(ctr):
    r = ctr("--version")
    assert r.code == 0
    assert r.out.strip() == f"ctr version {ctr_pkg.__version__}"
    assert not (ctr.root / "store.json").exists(), "--version must not create a store"


# ----------------------------------------------------------------------------- images
def _tar_bytes(src: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(str(src), arcname=".")
    return buf.getvalue()


def test_image_import_formats(ctr, rootfs, tmp_path):
    raw = _tar_bytes(rootfs)
    (tmp_path / "img.tar").write_bytes(raw)
    (tmp_path / "img.tar.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "img.tar.xz").write_bytes(lzma.compress(raw))
    (tmp_path / "img.tgz").write_bytes(gzip.compress(raw))  # detected by content, not name
    dir_id = ctr.ok("image", "import", str(rootfs), "fromdir").strip()
    dir_id2 = ctr.ok("image", "import", str(rootfs)).strip()
    assert dir_id == dir_id2, "the same directory imported twice must give the same id"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", dir_id)
    ids = {}
    for name in ("img.tar", "img.tar.gz", "img.tar.xz", "img.tgz"):
        tag = name.replace(".", "-")
        ids[name] = ctr.ok("image", "import", str(tmp_path / name), tag).strip()
        assert ctr.ok("run", "--rm", tag, "cat", "/etc/group") == (rootfs / "etc" / "group").read_text()
    # the layer's id is the digest of the uncompressed tar: compression does not change it
    assert len(set(ids.values())) == 1, ids
    assert ctr.ok("image", "import", str(tmp_path / "img.tar")).strip() == ids["img.tar"]
    images = json.loads(ctr.ok("image", "ls", "--format", "json"))
    assert images[0]["Id"] == json.loads(ctr.ok("image", "inspect", "host"))[0]["Id"]
    assert images[0]["Builtin"] is True and images[0]["Names"] == ["host"]
    # host, the directory image, the tar image (one id, four names); the directory is imported
    # as a tar stream too, so it may well be the very same image
    n_images = 1 + len({dir_id, ids["img.tar"]})
    assert len(images) == n_images
    tar_img = next(i for i in images if i["Id"] == ids["img.tar"])
    assert {f"{n.replace('.', '-')}:latest" for n in ids} <= set(tar_img["Names"])
    assert len([p for p in (ctr.root / "layers").iterdir() if p.is_dir()]) == n_images - 1
    # a file that is not an archive: one clear error, nothing left behind
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive at all" * 100)
    r = ctr("image", "import", str(tmp_path / "junk.tar"), "junk")
    assert r.code == 1
    assert_one_error(r)
    assert len(json.loads(ctr.ok("image", "ls", "--format", "json"))) == n_images
    assert list((ctr.root / "tmp").iterdir()) == []
    assert len([p for p in (ctr.root / "layers").iterdir() if p.is_dir()]) == n_images - 1


def test_image_ls_inspect(ctr, busybox_image):
    table = ctr.ok("image", "ls").splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert table[1].split()[0] == "host"
    row = next(line for line in table if line.startswith("bb "))
    assert row.split()[1] == "latest"
    (img,) = json.loads(ctr.ok("image", "inspect", "bb"))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", img["Id"])
    assert img["RepoTags"] == ["bb:latest"]
    assert len(img["RootFS"]["Layers"]) == 1 and img["RootFS"]["Layers"][0].startswith("sha256:")
    assert isinstance(img["Size"], int) and img["Size"] > 100_000  # busybox itself
    assert datetime.fromisoformat(img["Created"]).tzinfo is not None
    hexid = img["Id"].split(":", 1)[1]
    assert HEX12.fullmatch(row.split()[2]) and row.split()[2] == hexid[:12]
    for ref in ("bb:latest", img["Id"], hexid, hexid[:12]):
        assert json.loads(ctr.ok("image", "inspect", ref))[0]["Id"] == img["Id"], ref
    assert ctr.ok("image", "ls", "-q").split() == [json.loads(ctr.ok("image", "inspect", "host"))[0]["Id"]
                                                   .split(":")[1][:12], hexid[:12]]
    assert hexid in ctr.ok("image", "ls", "-q", "--no-trunc")


def test_image_tag(ctr, busybox_image):
    """docker tag: more names on one image; a name another image had moves; bad input
    changes nothing (every name is checked before any is given)."""
    def tags(ref):
        return json.loads(ctr.ok("image", "inspect", ref))[0]["RepoTags"]

    assert ctr.ok("image", "tag", "bb", "bb:2", "other/x") == ""
    assert tags("bb") == ["bb:latest", "bb:2", "other/x:latest"]
    assert ctr.ok("run", "--rm", "other/x", "echo", "tagged") == "tagged\n"
    ctr.ok("run", "--name", "c", busybox_image, "touch", "/new")
    ctr.ok("commit", "c", "app")
    assert ctr.ok("image", "tag", "app", "bb:2") == ""  # the name moves
    assert tags("bb") == ["bb:latest", "other/x:latest"] and tags("app") == ["app:latest", "bb:2"]
    for args, code, needle in ((["host", "y"], 2, "cannot be tagged"), (["bb", "ok:1", "BAD"], 2, "invalid image name"),
                               (["nosuch", "y"], 1, "no such image"), (["bb", "host"], 2, "reserved")):
        r = ctr("image", "tag", *args)
        assert r.code == code, r
        assert_one_error(r, needle)
    assert tags("bb") == ["bb:latest", "other/x:latest"]  # ok:1 was not given
    assert ctr("image", "tag", "bb").code == 2  # usage: a target is needed


def test_image_prune(ctr, busybox_image):
    """Unnamed images no container uses go (a name moved off them); -a: every unused image;
    an image a container uses stays; the layers only they had go with them."""
    def image_id(ref):
        return json.loads(ctr.ok("image", "inspect", ref))[0]["Id"]

    for n, path in (("c1", "/x"), ("c2", "/y")):
        ctr.ok("run", "--name", n, busybox_image, "touch", path)
        ctr.ok("commit", n, "app:1")  # the second commit takes the name off the first image
        ctr.ok("rm", n)
        if n == "c1":
            dangling = image_id("app:1")
            only_layer = json.loads(ctr.ok("image", "inspect", "app:1"))[0]["RootFS"]["Layers"][-1]
    assert ctr.ok("image", "prune", input="n\n") == ""  # asked, and told no
    assert image_id(dangling) == dangling
    out = ctr.ok("image", "prune", "-f")
    assert f"deleted: {dangling}" in out and "Total reclaimed space:" in out and not out.rstrip().endswith(" 0B"), out
    assert ctr("image", "inspect", dangling).code == 1
    assert not (ctr.root / "layers" / only_layer.split(":")[1]).exists()  # the layer only it had
    named = image_id("app:1")
    ctr.ok("run", "--name", "user", busybox_image, "true")  # keeps bb in use
    out = ctr.ok("image", "prune", "-a", "-f")
    assert "untagged: app:1" in out and f"deleted: {named}" in out
    assert [i["Names"] for i in json.loads(ctr.ok("image", "ls", "--format", "json"))] == [["host"], ["bb:latest"]]
    assert ctr.ok("image", "prune", "-a", "-f") == "Total reclaimed space: 0B\n"
    r = ctr("image", "prune", "-f", "--filter", "label=x")
    assert r.code == 2
    assert_one_error(r, "unsupported filter")


def test_system_prune(ctr, busybox_image):
    """Stopped containers, then the images that left unused and unnamed; -a: every unused image;
    running containers and their images stay."""
    ctr.ok("run", "--name", "c", busybox_image, "touch", "/x")
    ctr.ok("commit", "c", "app")
    ctr.ok("run", "--name", "old", "app", "true")
    ctr.ok("commit", "old", "app")  # the name moves: the first app image is unnamed, used by `old`
    first = json.loads(ctr.ok("inspect", "old"))[0]["Image"]
    running = ctr.ok("run", "-d", "--name", "up", busybox_image, "sleep", "60").strip()
    assert ctr("system", "prune").code == 1  # no answer on stdin: nothing removed
    out = ctr.ok("system", "prune", input="y\n")
    ids = [json.loads(ctr.ok("inspect", "up"))[0]["Id"]]
    assert out.startswith("Deleted Containers:\n") and running not in out and f"deleted: {first}" in out, out
    assert out.splitlines()[-1].startswith("Total reclaimed space: ")
    assert [c["Id"] for c in json.loads(ctr.ok("ps", "-a", "--format", "json"))] == ids
    out = ctr.ok("system", "prune", "-a", "-f")
    assert "untagged: app:latest" in out
    assert [i["Names"] for i in json.loads(ctr.ok("image", "ls", "--format", "json"))] == [["host"], ["bb:latest"]]
    ctr.ok("rm", "-f", "up")


def test_system_df(ctr, busybox_image):
    """Images count their layers, containers their directories; reclaimable is what the
    prunes free (the same figure container prune prints)."""
    from ctr.output import human_size

    def kinds() -> dict:
        return {k["Type"]: k for k in json.loads(ctr.ok("system", "df", "--format", "json"))}

    k = kinds()
    assert k["Images"]["TotalCount"] == 1 and k["Images"]["Active"] == 0
    assert k["Images"]["Reclaimable"] == k["Images"]["Size"] > 0 and k["Containers"]["TotalCount"] == 0
    ctr.ok("run", "--name", "a", busybox_image, "sh", "-c", "head -c 300000 /dev/zero > /big")
    ctr.ok("run", "-d", "--name", "up", busybox_image, "sleep", "60")
    k = kinds()
    assert k["Images"]["Active"] == 1 and k["Images"]["Reclaimable"] == 0
    assert (k["Containers"]["TotalCount"], k["Containers"]["Active"]) == (2, 1)
    assert 300000 <= k["Containers"]["Reclaimable"] < k["Containers"]["Size"]
    assert ctr.ok("system", "df").splitlines()[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    out = ctr.ok("container", "prune", "-f")
    assert out.splitlines()[-1] == f"Total reclaimed space: {human_size(k['Containers']['Reclaimable'])}"
    assert kinds()["Containers"]["Reclaimable"] == 0
    ctr.ok("rm", "-f", "up")


def test_image_history(ctr, busybox_image):
    """One row per layer, newest first, headed by the image (or parent) that added it; a layer
    whose image is gone has no id (<missing>)."""
    def inspect(ref):
        return json.loads(ctr.ok("image", "inspect", ref))[0]

    ctr.ok("run", "--name", "h1", busybox_image, "sh", "-c", "echo 1 > /one")
    ctr.ok("commit", "-m", "first change", "h1", "app:1")
    ctr.ok("run", "--name", "h2", "app:1", "sh", "-c", "echo 2 > /two")
    ctr.ok("commit", "-m", "second", "h2", "app:2")
    rows = json.loads(ctr.ok("image", "history", "--format", "json", "app:2"))
    assert [r["id"] for r in rows] == [inspect(x)["Id"] for x in ("app:2", "app:1", "bb")]
    assert [r["layer"] for r in rows] == list(reversed(inspect("app:2")["RootFS"]["Layers"]))
    assert [r["comment"] for r in rows] == ["second", "first change", ""]
    assert rows[0]["CreatedBy"].startswith("commit of container h2") and rows[0]["tags"] == ["app:2"]
    assert all(r["size"] > 0 for r in rows)
    table = ctr.ok("image", "history", "app:2").splitlines()
    assert table[0].split()[:2] == ["IMAGE", "CREATED"] and len(table) == 4 and "second" in table[1]
    assert ctr.ok("image", "history", "-q", "app:2").split() == [r["id"][7:19] for r in rows]
    ctr.ok("rm", "h1", "h2")
    ctr.ok("image", "rm", "app:1")
    assert [r["id"] for r in json.loads(ctr.ok("image", "history", "--format", "json", "app:2"))] == \
        [rows[0]["id"], "<missing>", "<missing>"]
    r = ctr("image", "history", "host")
    assert r.code == 2
    assert_one_error(r, "no layers")


def test_image_rm(ctr, busybox_image, rootfs):
    img = json.loads(ctr.ok("image", "inspect", "bb"))[0]
    # a second name on the same image: rm of a name only untags it
    assert ctr.ok("image", "import", str(rootfs), "other").strip() == img["Id"]
    assert ctr.ok("image", "rm", "other") == "Untagged: other:latest\n"
    assert json.loads(ctr.ok("image", "inspect", "bb"))[0]["RepoTags"] == ["bb:latest"]

    ctr.ok("run", "--name", "user1", busybox_image, "true")
    ctr.ok("run", "--name", "user2", "--driver", "copy", busybox_image, "true")
    r = ctr("image", "rm", "bb")
    assert r.code == 1
    assert_one_error(r, "in use")
    assert json.loads(ctr.ok("image", "inspect", "bb"))[0]["Id"] == img["Id"]
    assert len(ps_json(ctr, "-a")) == 2
    out = ctr.ok("image", "rm", "-f", "bb")
    assert f"Deleted: {img['Id']}" in out
    assert ps_json(ctr, "-a") == []
    assert list((ctr.root / "containers").iterdir()) == []
    assert [p for p in (ctr.root / "layers").iterdir() if p.is_dir()] == []
    r = ctr("image", "inspect", "bb")
    assert r.code == 1
    assert [i["Names"] for i in json.loads(ctr.ok("image", "ls", "--format", "json"))] == [["host"]]
    r = ctr("run", "--rm", "bb", "true")
    assert r.code == 125
    assert_one_error(r, "no such image")
