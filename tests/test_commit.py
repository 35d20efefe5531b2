"""`ctr commit`, `ctr export`, `ctr container prune`: real containers, real layers.

The commit round trip runs every case of the diff grid (tests/test_diff_grid.py) on both
process drivers: the workload runs, then the same container lists its whole filesystem
(type, mode, owner, size, mtime, link count and hard-link groups, content digest, link
target); the container is committed; a container of the new image lists its filesystem the
same way; the two listings must be identical.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import re
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from conftest import Ctr, busybox_is_static, make_rootfs
from test_diff_grid import CASES, add_data_tree

DRIVERS = ("overlay", "copy")
SKIP_TOP = ("/proc", "/dev", "/sys", "/tmp")  # mount points: what is seen there is not the image

# Extra cases for commit: ownership and special bits, FIFOs, deep trees.
EXTRA_CASES = {
    "chown_setuid": "chown 65534:65534 /data/file.txt && chmod 4755 /data/mode.txt && chmod 1777 /data/nested",
    "fifo": "mkfifo /data/fifo && chmod 640 /data/fifo",
    "deep_new_tree": "mkdir -p /data/n1/n2/n3 && echo deep > /data/n1/n2/n3/f && ln -s ../../../file.txt /data/n1/n2/l",
    "delete_everything_in_dir": "rm -rf /data/* && echo only > /data/only",
}
ALL_CASES = {**{k: v[0] for k, v in CASES.items()}, **EXTRA_CASES}

LISTING = (
    "find / -xdev " + " ".join(f"! -path {p}" for p in ("/", *SKIP_TOP))
    + " -exec stat -c '%n|%F|%a|%u|%g|%s|%h|%i|%Y' {} + ; echo '=='; "
    "find / -xdev -type f -exec md5sum {} + ; echo '=='; "
    "find / -xdev -type l -exec stat -c '%n|%N' {} +"
)


def parse_listing(out: str) -> dict[str, dict]:
    """The listing a container printed, as path -> attributes (inode numbers turned into
    hard-link groups so two views can be compared)."""
    stats, sums, links = (out.split("==\n") + ["", ""])[:3]
    view: dict[str, dict] = {}
    inodes: dict[str, list[str]] = {}
    for line in stats.splitlines():
        path, ftype, mode, uid, gid, size, nlink, ino, mtime = line.split("|")
        ftype = "regular file" if ftype == "regular empty file" else ftype
        item = {"type": ftype, "mode": mode, "owner": f"{uid}:{gid}", "mtime": mtime}
        if ftype != "directory":
            item["nlink"] = nlink
            item["size"] = size
            inodes.setdefault(ino, []).append(path)
        view[path] = item
    for group in inodes.values():
        if len(group) > 1:
            for p in group:
                view[p]["links"] = sorted(group)
    for line in sums.splitlines():
        digest, path = line.split(None, 1)
        view[path]["md5"] = digest
    for line in links.splitlines():
        path, quoted = line.split("|", 1)
        m = re.fullmatch(r"'(.*)' -> '(.*)'", quoted)
        assert m, quoted
        view[path]["target"] = m.group(2)
    return view


def view_of(ctr: Ctr, image: str, driver: str) -> dict[str, dict]:
    r = ctr("run", "--rm", "--driver", driver, image, "sh", "-c", LISTING)
    assert r.code == 0, r
    return parse_listing(r.out)


def diff_views(before: dict, after: dict) -> list[str]:
    out = []
    for p in sorted(set(before) | set(after)):
        if before.get(p) != after.get(p):
            out.append(f"{p}: container {before.get(p)} != image {after.get(p)}")
    return out


def usable_drivers(ctr: Ctr) -> list[str]:
    info = json.loads(ctr.ok("info", "--format", "json"))
    usable = {d["Driver"] for d in info["Drivers"] if d["Isolation"] == "process" and d["Usable"]}
    return [d for d in DRIVERS if d in usable]


# ============================================================================ commit grid
@pytest.fixture(scope="module")
def commit_grid(tmp_path_factory):
    """Every case on every driver: (view in the container, view of the committed image)."""
    if not busybox_is_static():
        pytest.skip("needs busybox-static (apt-get install busybox-static)")
    base = tmp_path_factory.mktemp("commitgrid")
    ctr = Ctr(base / "root", base / "config.yaml")
    rootfs = make_rootfs(base / "rootfs")
    add_data_tree(rootfs)
    ctr.ok("image", "import", str(rootfs), "grid")
    drivers = usable_drivers(ctr)

    def one(case: str, driver: str) -> dict:
        name = f"{case.replace('_', '-')}-{driver}"
        r = ctr("run", "--name", name, "--driver", driver, "grid", "sh", "-c",
                f"{ALL_CASES[case]} && {LISTING}")
        if r.code != 0:
            return {"error": f"run: {r}"}
        c = ctr("commit", name, f"{name}:committed")
        if c.code != 0:
            return {"error": f"commit: {c}"}
        after = view_of(ctr, f"{name}:committed", driver)
        res = {"before": parse_listing(r.out), "after": after, "image_id": c.out.strip()}
        if case == "hardlink" and driver == "copy" and "overlay" in drivers:
            res["after_overlay"] = view_of(ctr, f"{name}:committed", "overlay")
        return res

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            futs = {(c, d): pool.submit(one, c, d) for c in ALL_CASES for d in drivers}
            results = {k: f.result() for k, f in futs.items()}
        tmp_left = sorted(p.name for p in (ctr.root / "tmp").iterdir())
    finally:
        ctr.cleanup()
    return {"drivers": drivers, "results": results, "tmp_left": tmp_left, "ctr": ctr}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("case", list(ALL_CASES))
def test_commit_reproduces_the_container(commit_grid, case, driver):
    if driver not in commit_grid["drivers"]:
        pytest.skip(f"driver {driver} not usable here")
    res = commit_grid["results"][(case, driver)]
    assert "error" not in res, res.get("error")
    before, after = res["before"], res["after"]
    assert len(before) > 40  # the listing saw the whole image
    if case == "hardlink" and driver == "copy" and "after_overlay" in res:
        # the same committed layer seen through the other driver
        assert diff_views(before, res["after_overlay"]) == []
    assert diff_views(before, after) == [], f"{case} on {driver}: script {ALL_CASES[case]!r}"


def test_commit_grid_leaves_no_litter(commit_grid):
    assert commit_grid["tmp_left"] == []


def test_committed_images_record_their_parent(commit_grid):
    ctr = commit_grid["ctr"]
    grid_id = json.loads(ctr.ok("image", "inspect", "grid"))[0]["Id"]
    grid_layers = json.loads(ctr.ok("image", "inspect", "grid"))[0]["RootFS"]["Layers"]
    res = commit_grid["results"][("add", commit_grid["drivers"][0])]
    rec = json.loads((ctr.root / "images" / (res["image_id"].split(":")[1] + ".json")).read_text())
    assert rec["parent"] == grid_id
    assert rec["layers"][:-1] == grid_layers and len(rec["layers"]) == 2
    assert rec["source"].startswith("commit of container add-")


# ============================================================================ commit details
@pytest.fixture
def bb(ctr, rootfs):
    add_data_tree(rootfs)
    ctr.ok("image", "import", str(rootfs), "bb")
    return "bb"


@pytest.mark.parametrize("driver", DRIVERS)
def test_commit_on_commit_stacks_layers_and_whiteouts(ctr, bb, driver):
    if driver not in usable_drivers(ctr):
        pytest.skip(f"driver {driver} not usable here")
    ctr.ok("run", "--name", "c1", "--driver", driver, bb, "sh", "-c",
           "rm /etc/group && rm -rf /data/tree && echo one > /data/one")
    ctr.ok("commit", "c1", "step1")
    r = ctr("run", "--name", "c2", "--driver", driver, "step1", "sh", "-c",
            f"echo g2 > /etc/group && mkdir /data/tree && echo new > /data/tree/n && rm /data/one && {LISTING}")
    assert r.code == 0, r
    ctr.ok("commit", "c2", "step2")
    layers = json.loads(ctr.ok("image", "inspect", "step2"))[0]["RootFS"]["Layers"]
    assert len(layers) == 3
    after = view_of(ctr, "step2", driver)
    assert diff_views(parse_listing(r.out), after) == []
    assert "/data/tree/x" not in after and after["/data/tree/n"]["md5"] == hashlib.md5(b"new\n").hexdigest()
    assert "/data/one" not in after
    assert ctr.ok("run", "--rm", "step2", "cat", "/etc/group") == "g2\n"


def test_commit_sets_config_from_changes_and_keeps_the_parents(ctr, bb):
    ctr.ok("run", "--name", "c", "-e", "RUNTIME=x", bb, "sh", "-c", "echo hi > /data/greeting")
    ctr.ok("commit", "c", "base1", "-c", 'CMD ["sh", "-c", "cat greeting; echo $MSG $OTHER"]',
           "-c", "WORKDIR /data", "-c", "ENV MSG=hello OTHER=world")
    assert ctr.ok("run", "--rm", "base1") == "hi\nhello world\n"
    # a second commit keeps the first one's config, and the user may override the command
    ctr.ok("run", "--name", "d", "base1", "true")
    ctr.ok("commit", "d", "base2", "-m", "second", "-a", "Jane <jane@example.com>")
    assert ctr.ok("run", "--rm", "base2") == "hi\nhello world\n"
    assert ctr.ok("run", "--rm", "base2", "pwd") == "/data\n"
    img = json.loads(ctr.ok("image", "inspect", "base2"))[0]
    rec = json.loads((ctr.root / "images" / (img["Id"].split(":")[1] + ".json")).read_text())
    assert rec["comment"] == "second" and rec["author"] == "Jane <jane@example.com>"
    assert rec["parent"] == json.loads(ctr.ok("image", "inspect", "base1"))[0]["Id"]
    # a run-time -e is the container's, not the image's
    assert "RUNTIME=x" not in img["Config"]["Env"]


def test_commit_without_a_name_and_by_id(ctr, bb):
    ctr.ok("run", "--name", "c", bb, "true")
    cid = json.loads(ctr.ok("inspect", "c"))[0]["Id"]
    iid = ctr.ok("commit", cid[:10]).strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", iid)
    ls = json.loads(ctr.ok("image", "ls", "--format", "json"))
    assert [i["Names"] for i in ls if i["Id"] == iid] == [[]]
    assert ctr.ok("run", "--rm", iid[7:19], "cat", "/data/file.txt") == "hello\n"


def test_commit_refuses_names_that_mean_whiteouts(ctr, bb):
    ctr.ok("run", "--name", "c", bb, "sh", "-c", "echo x > /data/.wh.file.txt")
    before = sorted(p.name for p in (ctr.root / "layers").iterdir())
    r = ctr("commit", "c", "bad")
    assert r.code == 1
    assert r.err.startswith("Error: /data/.wh.file.txt: a name starting with '.wh.'") and "Hint:" in r.err
    assert len(r.err.splitlines()) == 2
    assert ctr.ok("image", "ls", "-q").count("\n") == 2  # host + bb
    assert sorted(p.name for p in (ctr.root / "layers").iterdir()) == before
    assert list((ctr.root / "tmp").iterdir()) == []


def test_commit_refuses_host_containers(ctr):
    ctr.ok("run", "--name", "h", "host", "true")
    r = ctr("commit", "h", "myhost")
    assert r.code == 1 and "built-in host image" in r.err and "ctr export h" in r.err


def test_commit_errors(ctr, bb):
    r = ctr("commit", "nosuch", "x")
    assert r.code == 1 and r.err.startswith("Error: no such container: nosuch")
    ctr.ok("run", "--name", "c", bb, "true")
    r = ctr("commit", "c", "Bad Name")
    assert r.code == 2 and "invalid image name" in r.err
    r = ctr("commit", "c", "x", "-c", "EXPOSE 80")
    assert r.code == 2 and "unsupported --change" in r.err


def test_commit_layer_diff_id_survives_image_export(ctr, bb, tmp_path):
    """The committed layer's tar is written deterministically: `image export` writes the
    very same bytes, so the diff id in the archive is the store's."""
    ctr.ok("run", "--name", "c", bb, "sh", "-c",
           "rm -rf /data/redir && mkdir /data/redir && echo n > /data/redir/n && rm /data/del.txt "
           "&& ln /data/file.txt /data/hard && ln -s x /data/sym && mkfifo /data/p")
    ctr.ok("commit", "c", "out")
    layers = json.loads(ctr.ok("image", "inspect", "out"))[0]["RootFS"]["Layers"]
    ctr.ok("image", "export", "out", "-o", str(tmp_path / "out.tar"))
    with tarfile.open(tmp_path / "out.tar") as t:
        index = json.load(t.extractfile("index.json"))
        manifest = json.load(t.extractfile("blobs/sha256/" + index["manifests"][0]["digest"][7:]))
        config = json.load(t.extractfile("blobs/sha256/" + manifest["config"]["digest"][7:]))
        top = t.extractfile("blobs/sha256/" + manifest["layers"][-1]["digest"][7:]).read()
    assert config["rootfs"]["diff_ids"][-1] == layers[-1]
    assert "sha256:" + hashlib.sha256(top).hexdigest() == layers[-1]
    with tarfile.open(fileobj=io.BytesIO(top)) as t:
        names = t.getnames()
    assert "data/.wh.del.txt" in names and "data/redir/.wh..wh..opq" in names
    assert "data/redir/n" in names and "data/redir/a" not in names


# ============================================================================ export
def tar_view(data: bytes) -> dict[str, dict]:
    """A `ctr export` tar as the same path -> attributes map `parse_listing` makes."""
    view: dict[str, dict] = {}
    groups: dict[str, list[str]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = t.getmembers()
        for m in members:
            path = "/" + m.name.strip("/")
            if path == "/" or any(path == p or path.startswith(p + "/") for p in SKIP_TOP):
                continue
            kind = {tarfile.DIRTYPE: "directory", tarfile.SYMTYPE: "symbolic link",
                    tarfile.FIFOTYPE: "fifo"}.get(m.type, "regular file")
            item = {"type": kind, "mode": f"{m.mode:o}", "owner": f"{m.uid}:{m.gid}", "mtime": str(int(m.mtime))}
            if m.islnk():
                target = view["/" + m.linkname]
                item.update({k: v for k, v in target.items() if k in ("size", "md5", "mtime", "mode", "owner")})
                groups.setdefault("/" + m.linkname, ["/" + m.linkname]).append(path)
            elif m.isreg():
                item["md5"] = hashlib.md5(t.extractfile(m).read()).hexdigest()
                item["size"] = str(m.size)
            elif m.issym():
                item["target"] = m.linkname
                item["size"] = str(len(m.linkname.encode()))
            elif m.isfifo():
                item["size"] = "0"
            if kind != "directory":
                item["nlink"] = "1"
            view[path] = item
    for first, group in groups.items():
        for p in group:
            view[p]["links"] = sorted(group)
            view[p]["nlink"] = str(len(group))
    return view


@pytest.mark.parametrize("driver", DRIVERS)
def test_export_equals_the_containers_view(ctr, bb, driver, tmp_path):
    if driver not in usable_drivers(ctr):
        pytest.skip(f"driver {driver} not usable here")
    r = ctr("run", "--name", "e", "--driver", driver, bb, "sh", "-c",
            "rm -rf /data/redir && mkdir /data/redir && echo n > /data/redir/n && rm /data/del.txt "
            "&& rm -rf /data/tree && ln /data/file.txt /data/hard && ln -s file.txt /data/sym "
            "&& mkfifo /data/p && chmod 600 /data/mode.txt && chown 65534:65534 /data/ren.txt "
            "&& rm /data/f2d && mkdir /data/f2d && echo i > /data/f2d/i && rm -rf /data/d2f && echo f > /data/d2f && "
            + LISTING)
    assert r.code == 0, r
    container = parse_listing(r.out)
    ctr.ok("export", "e", "-o", str(tmp_path / "e.tar"))
    exported = tar_view((tmp_path / "e.tar").read_bytes())
    assert diff_views(container, exported) == []
    # to stdout when it is not a terminal
    p = subprocess.run([sys.executable, "-m", "ctr", "export", "e"], capture_output=True, env=ctr.env)
    assert p.returncode == 0, p.stderr
    assert p.stdout == (tmp_path / "e.tar").read_bytes()  # deterministic


def test_export_reads_a_multi_layer_stack(ctr, bb, tmp_path):
    """Whiteouts and opaque directories of lower layers apply in the export too."""
    ctr.ok("run", "--name", "a", bb, "sh", "-c", "rm -rf /data/tree && rm -rf /data/redir && mkdir /data/redir && echo z > /data/redir/z")
    ctr.ok("commit", "a", "lower")
    r = ctr("run", "--name", "b", "lower", "sh", "-c", "echo top > /data/top && " + LISTING)
    assert r.code == 0, r
    ctr.ok("export", "b", "-o", str(tmp_path / "b.tar"))
    exported = tar_view((tmp_path / "b.tar").read_bytes())
    assert diff_views(parse_listing(r.out), exported) == []
    assert "/data/tree" not in exported and "/data/redir/a" not in exported
    assert exported["/data/redir/z"]["md5"] == hashlib.md5(b"z\n").hexdigest()


def test_export_output_errors(ctr, bb, tmp_path):
    ctr.ok("run", "--name", "e", bb, "true")
    r = ctr("export", "e", "-o", str(tmp_path / "missing" / "e.tar"))
    assert r.code == 1 and r.err.startswith("Error: cannot write") and len(r.err.splitlines()) == 1
    r = ctr("export", "nosuch", "-o", str(tmp_path / "x.tar"))
    assert r.code == 1 and not (tmp_path / "x.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # a terminal on stdout: refused (a tar is not for reading on a screen)
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(ctr.env)
        os.execv(sys.executable, [sys.executable, "-m", "ctr", "export", "e"])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    assert b"refusing to write a tar archive to a terminal" in out


# ============================================================================ prune
def _start_running(ctr: Ctr, image: str, name: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "ctr", "run", "--name", name, image, "sleep", "60"],
                         env=ctr.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = ctr("ps", "--format", "json")
        if any(c["Names"] == [name] and c["State"] == "running" for c in json.loads(r.out or "[]")):
            return p
        time.sleep(0.1)
    p.kill()
    raise AssertionError("the container did not start")


def test_prune_removes_only_stopped_containers(ctr, bb):
    ctr.ok("run", "--name", "s1", bb, "sh", "-c", "dd if=/dev/zero of=/data/big bs=64k count=16 2>/dev/null")
    ctr.ok("run", "--name", "s2", "--driver", "copy", bb, "true")
    ids = {n: json.loads(ctr.ok("inspect", n))[0]["Id"] for n in ("s1", "s2")}
    runner = _start_running(ctr, bb, "live")
    try:
        r = ctr("container", "prune", "-f")
        assert r.code == 0, r
        lines = r.out.splitlines()
        assert lines[0] == "Deleted Containers:"
        assert sorted(lines[1:3]) == sorted(ids.values())
        assert lines[3] == ""
        m = re.fullmatch(r"Total reclaimed space: ([\d.]+)(B|kB|MB|GB)", lines[4])
        assert m, lines[4]
        scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)]
        assert float(m.group(1)) * scale >= 1_000_000  # s1's 1 MiB file and s2's private copy
        left = json.loads(ctr.ok("ps", "-a", "--format", "json"))
        assert [c["Names"] for c in left] == [["live"]] and left[0]["State"] == "running"
        for cid in ids.values():
            assert not (ctr.root / "containers" / cid).exists()
        # nothing left to prune
        assert ctr.ok("container", "prune", "-f") == "Total reclaimed space: 0B\n"
    finally:
        ctr("rm", "-f", "live")
        runner.wait(timeout=30)


def test_prune_asks_first(ctr, bb):
    ctr.ok("run", "--name", "s", bb, "true")
    # no terminal and nothing on stdin: refused with a hint, nothing removed
    r = ctr("container", "prune")
    assert r.code == 1 and "Error: container prune needs a confirmation" in r.err and "-f" in r.err
    assert ctr.ok("ps", "-aq") != ""
    r = ctr("container", "prune", input="n\n")
    assert r.code == 0 and r.out == "" and "Are you sure you want to continue? [y/N]" in r.err
    assert ctr.ok("ps", "-aq") != ""
    r = ctr("container", "prune", input="y\n")
    assert r.code == 0 and r.out.startswith("Deleted Containers:\n")
    assert ctr.ok("ps", "-aq") == ""


def test_prune_asks_on_a_terminal(ctr, bb):
    ctr.ok("run", "--name", "s", bb, "true")
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(ctr.env)
        os.execv(sys.executable, [sys.executable, "-m", "ctr", "container", "prune"])
    out = b""
    answered = False
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
        if not answered and b"[y/N]" in out:
            os.write(fd, b"y\n")
            answered = True
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert answered and b"Total reclaimed space:" in out
    assert ctr.ok("ps", "-aq") == ""


def test_prune_filter_until(ctr, bb):
    ctr.ok("run", "--name", "old", bb, "true")
    time.sleep(1.1)
    cut = datetime.now(timezone.utc)
    time.sleep(0.1)
    ctr.ok("run", "--name", "new", bb, "true")
    assert "Deleted" not in ctr.ok("container", "prune", "-f", "--filter", "until=1h")
    r = ctr.ok("container", "prune", "-f", "--filter", "until=" + cut.isoformat().replace("+00:00", "Z"))
    assert json.loads(ctr.ok("inspect", "new"))[0]["Name"] == "new"
    assert ctr("inspect", "old").code == 1
    assert len(r.splitlines()) == 4
    r = ctr("container", "prune", "-f", "--filter", "until=yesterday")
    assert r.code == 2 and "invalid until value" in r.err
    r = ctr("container", "prune", "-f", "--filter", "name=x")
    assert r.code == 2 and "unsupported filter" in r.err


def test_prune_filter_labels(ctr, bb):
    """label=KEY[=VALUE]: all must match; label!=KEY[=VALUE]: none may (docker's)."""
    ctr.ok("run", "--name", "a", "-l", "job=1", "-l", "keep", bb, "true")
    ctr.ok("run", "--name", "b", "-l", "job=1", bb, "true")
    ctr.ok("run", "--name", "c", "-l", "job=2", bb, "true")
    ctr.ok("run", "--name", "d", bb, "true")

    def left() -> list[str]:
        return sorted(ctr.ok("ps", "-a", "--format", "{{.Names}}").split())

    ctr.ok("container", "prune", "-f", "--filter", "label=job=1", "--filter", "label!=keep")
    assert left() == ["a", "c", "d"]
    ctr.ok("container", "prune", "-f", "--filter", "label=job")
    assert left() == ["d"]
    for bad in ("label=", "label!=", "label"):
        r = ctr("container", "prune", "-f", "--filter", bad)
        assert r.code == 2 and "unsupported filter" in r.err, (bad, r)
    assert left() == ["d"]


def test_parse_until_forms():
    from ctr.engine.commit import parse_until

    now = datetime(2024, 1, 2, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_until("10m", now) == now - timedelta(minutes=10)
    assert parse_until("1h30m", now) == now - timedelta(minutes=90)
    assert parse_until("1.5h", now) == now - timedelta(minutes=90)
    assert parse_until("2024-01-01T00:00:00Z", now) == datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert parse_until("1700000000", now) == datetime.fromtimestamp(1700000000, timezone.utc)
    assert parse_until("2024-01-01", now).date().isoformat() == "2024-01-01"


def test_merged_walk_keeps_to_one_filesystem(tmp_path):
    """The host root as a layer: other filesystems mounted in it show as empty directories,
    hidden directories (/tmp, the store) contribute nothing, the upper layer's whiteouts
    apply."""
    from ctr.images.layers import Layer, write_merged_tar

    if os.geteuid() != 0:
        pytest.skip("needs root (a tmpfs mount and a whiteout device)")
    root, upper = tmp_path / "r", tmp_path / "u"
    for d in (root / "etc", root / "mnt", root / "tmp", upper / "etc"):
        d.mkdir(parents=True)
    (root / "etc" / "f").write_text("f")
    (root / "etc" / "keep").write_text("k")
    (root / "tmp" / "secret").write_text("s")
    (upper / "etc" / "g").write_text("g")
    os.mknod(upper / "etc" / "f", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / "mnt")], check=True)
    try:
        (root / "mnt" / "other").write_text("o")
        buf = io.BytesIO()
        write_merged_tar(buf, [Layer(str(root), single_device=True, hidden=frozenset({"tmp"})),
                               Layer(str(upper))])
    finally:
        subprocess.run(["umount", str(root / "mnt")], check=True)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as t:
        assert t.getnames() == ["etc", "etc/g", "etc/keep", "mnt", "tmp"]


def test_commit_and_export_of_a_sandbox_container(ctr, bb, tmp_path):
    """hyperv isolation's sandbox driver keeps the same writable layer: commit and export
    work on it unchanged (ownership as the container saw it, through the id mapping)."""
    info = json.loads(ctr.ok("info", "--format", "json"))
    if not any(d["Isolation"] == "hyperv" and d["Driver"] == "sandbox" and d["Usable"] for d in info["Drivers"]):
        pytest.skip("the sandbox driver is not usable here")
    r = ctr("run", "--name", "hv", "--isolation", "hyperv", "--driver", "sandbox", bb, "sh", "-c",
            "echo hv > /data/hv && chown 65534:65534 /data/hv && rm /data/del.txt && " + LISTING)
    assert r.code == 0, r
    ctr.ok("commit", "hv", "hvimg")
    before = parse_listing(r.out)
    assert before["/data/hv"]["owner"] == "65534:65534"
    assert diff_views(before, view_of(ctr, "hvimg", "overlay")) == []
    ctr.ok("export", "hv", "-o", str(tmp_path / "hv.tar"))
    assert diff_views(before, tar_view((tmp_path / "hv.tar").read_bytes())) == []


def _read_then_close(ctr, *args: str) -> subprocess.Popen:
    """Run `ctr ARGS` with stdout on a pipe whose reader takes 10 bytes and goes away.
    Without PYTHONUNBUFFERED (set in this workplace's shells): unbuffered, Python's text layer
    drops the rest of a write the kernel took only in part, so no error would be seen."""
    env = {k: v for k, v in ctr.env.items() if k != "PYTHONUNBUFFERED"}
    p = subprocess.Popen([sys.executable, "-m", "ctr", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    assert len(p.stdout.read(10)) == 10
    p.stdout.close()
    p.wait(timeout=60)
    return p


def test_a_reader_going_away_ends_ctr_by_sigpipe(ctr, bb):
    """`ctr export x | head` (click's command path) and `ctr diff x | head` (the fast path)
    end as docker and every Unix filter do: killed by SIGPIPE, nothing on stderr."""
    ctr.ok("run", "--name", "big", bb, "sh", "-c",
           "mkdir /many && cd /many && i=0; while [ $i -lt 8000 ]; do : > f$i; i=$((i+1)); done")
    for args in (("export", "big"), ("diff", "big")):
        p = _read_then_close(ctr, *args)
        assert p.returncode == -signal.SIGPIPE, (args, p.returncode, p.stderr.read())
        assert p.stderr.read() == b"", args
    # a reader that reads everything: a normal exit
    p = subprocess.run([sys.executable, "-m", "ctr", "diff", "big"], capture_output=True, env=ctr.env)
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 8001  # /many and its files
