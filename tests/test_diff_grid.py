"""The diff case grid of issue 2, over both process drivers, with real containers.

One image (the busybox root filesystem plus a /data tree) is imported once per module; every
case runs in a fresh container per driver, then `ctr diff` must print exactly the lines the
rules in ctr.changes give:
- a directory is `C` when it is an ancestor of any change (`/` itself is never listed);
- a deleted directory shows only itself;
- a directory deleted and made again is `D dir` + `A` for what it now holds;
- a rename is `D old` + `A new`;
- a change of type is `C` (+ `A` for the children of a new directory).
Both drivers must give identical output; the image's layer must be byte-for-byte (and
metadata-for-metadata) the same before and after; `ctr rm` must leave nothing behind.
The built-in `host` image is checked the same way against the real /etc.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import IS_ROOT, Ctr, busybox_is_static, make_rootfs

DRIVERS = ("overlay", "copy")

# name -> (shell script run in the container, the exact expected `ctr diff` lines)
CASES: dict[str, tuple[str, list[str]]] = {
    "add": ("echo new > /data/new.txt",
            ["C /data", "A /data/new.txt"]),
    "modify": ("echo more >> /data/file.txt",
               ["C /data", "C /data/file.txt"]),
    "chmod": ("chmod 600 /data/mode.txt",
              ["C /data", "C /data/mode.txt"]),
    "delete": ("rm /data/del.txt",
               ["C /data", "D /data/del.txt"]),
    "recreate_dir": ("rm -rf /data/redir && mkdir /data/redir && echo n > /data/redir/new",
                     ["C /data", "D /data/redir", "A /data/redir/new"]),
    "rename": ("mv /data/ren.txt /data/ren2.txt",
               ["C /data", "D /data/ren.txt", "A /data/ren2.txt"]),
    "symlink": ("ln -s file.txt /data/link",
                ["C /data", "A /data/link"]),
    # a hard link to a base file copies that file up (overlay) / changes its ctime (copy)
    "hardlink": ("ln /data/file.txt /data/hard",
                 ["C /data", "C /data/file.txt", "A /data/hard"]),
    "add_in_new_dir": ("mkdir -p /data/newdir/sub && echo x > /data/newdir/sub/f",
                       ["C /data", "A /data/newdir", "A /data/newdir/sub", "A /data/newdir/sub/f"]),
    "delete_tree": ("rm -rf /data/tree",
                    ["C /data", "D /data/tree"]),
    "file_to_dir": ("rm /data/f2d && mkdir /data/f2d && echo x > /data/f2d/inner",
                    ["C /data", "C /data/f2d", "A /data/f2d/inner"]),
    "dir_to_file": ("rm -rf /data/d2f && echo x > /data/d2f",
                    ["C /data", "C /data/d2f"]),
    # beyond the twelve: more shapes of the same rules
    "nothing": ("true", []),
    "add_at_root": ("echo x > /top.txt", ["A /top.txt"]),
    "modify_nested": ("echo z >> /data/nested/deep/f.txt",
                      ["C /data", "C /data/nested", "C /data/nested/deep", "C /data/nested/deep/f.txt"]),
    "chmod_dir": ("chmod 700 /data/nested",
                  ["C /data", "C /data/nested"]),
    "recreate_file": ("rm /data/del.txt && echo del > /data/del.txt",
                      ["C /data", "C /data/del.txt"]),
    "recreate_dir_same_child": ("rm -rf /data/redir && mkdir /data/redir && echo a > /data/redir/a",
                                ["C /data", "D /data/redir", "A /data/redir/a"]),
    "delete_in_subdir": ("rm /data/tree/y/z",
                         ["C /data", "C /data/tree", "C /data/tree/y", "D /data/tree/y/z"]),
    "move_dir": ("mv /data/tree /data/tree2",
                 ["C /data", "D /data/tree", "A /data/tree2", "A /data/tree2/x", "A /data/tree2/y",
                  "A /data/tree2/y/w", "A /data/tree2/y/z"]),
}

# `diff --format json` is checked on these (between them: A, C and D, empty, a new dir's children)
JSON_CASES = ["rename", "recreate_dir", "file_to_dir", "nothing", "hardlink", "move_dir"]


def add_data_tree(root: Path) -> None:
    d = root / "data"
    d.mkdir()
    (d / "file.txt").write_text("hello\n")
    (d / "mode.txt").write_text("m\n")
    os.chmod(d / "mode.txt", 0o644)
    (d / "del.txt").write_text("del\n")
    (d / "ren.txt").write_text("ren\n")
    (d / "f2d").write_text("file becomes dir\n")
    for sub in ("redir/sub", "tree/y", "d2f/l", "nested/deep"):
        (d / sub).mkdir(parents=True)
    (d / "redir" / "a").write_text("a\n")
    (d / "redir" / "b").write_text("b\n")
    (d / "redir" / "sub" / "c").write_text("c\n")
    (d / "tree" / "x").write_text("x\n")
    (d / "tree" / "y" / "z").write_text("z\n")
    (d / "tree" / "y" / "w").write_text("w\n")
    (d / "d2f" / "k").write_text("k\n")
    (d / "d2f" / "l" / "m").write_text("m\n")
    (d / "nested" / "deep" / "f.txt").write_text("f\n")


def tree_digest(top: Path) -> str:
    """Every path's type, mode, owner, mtime, xattrs, content and link target, hashed."""
    h = hashlib.sha256()
    top_s = str(top)
    for dirpath, dirnames, filenames in os.walk(top_s):
        dirnames.sort()
        for name in sorted(dirnames + filenames) + ([] if dirpath != top_s else [""]):
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            rel = os.path.relpath(p, top_s)
            h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0"
                     f"{st.st_uid}:{st.st_gid}\0{st.st_mtime_ns}\0{st.st_nlink}\0".encode())
            try:
                for x in sorted(os.listxattr(p, follow_symlinks=False)):
                    h.update(x.encode() + b"=" + os.getxattr(p, x, follow_symlinks=False) + b"\0")
            except OSError:
                pass
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
            h.update(b"\n")
    return h.hexdigest()


def lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line]


def store_mounts(root: Path) -> list[str]:
    prefix = str(root)
    with open("/proc/self/mountinfo") as f:
        return [ln for ln in f if prefix in ln.split()[4]]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Run every case on every usable driver (in parallel), collect diffs, then remove all."""
    if not busybox_is_static():
        pytest.skip("needs busybox-static (apt-get install busybox-static)")
    base = tmp_path_factory.mktemp("grid")
    ctr = Ctr(base / "root", base / "config.yaml")
    rootfs = make_rootfs(base / "rootfs")
    add_data_tree(rootfs)
    ctr.ok("image", "import", str(rootfs), "grid")
    layers = json.loads(ctr.ok("image", "inspect", "grid"))[0]["RootFS"]["Layers"]
    assert len(layers) == 1
    layer_dir = ctr.root / "layers" / layers[0].split(":", 1)[1]
    assert layer_dir.is_dir(), "layer directory not where the store layout says"
    digest_before = tree_digest(layer_dir)

    info = json.loads(ctr.ok("info", "--format", "json"))
    usable = {d["Driver"]: d for d in info["Drivers"] if d["Isolation"] == "process"}
    drivers = [d for d in DRIVERS if usable.get(d, {}).get("Usable")]

    def one(case: str, driver: str) -> dict:
        name = f"{case}-{driver}"
        r = ctr("run", "--name", name, "--driver", driver, "grid", "sh", "-c", CASES[case][0])
        d = ctr("diff", name)
        j = ctr("diff", "--format", "json", name) if case in JSON_CASES else None
        return {"run": r, "diff": d, "json": j}

    results: dict[tuple[str, str], dict] = {}
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futs = {(c, d): pool.submit(one, c, d) for c in CASES for d in drivers}
            for key, fut in futs.items():
                results[key] = fut.result()
        digest_after_runs = tree_digest(layer_dir)
        names = [f"{c}-{d}" for c, d in results]
        rm = ctr("rm", *names)
        left = sorted(p.name for p in (ctr.root / "containers").iterdir())
        tmp_left = sorted(p.name for p in (ctr.root / "tmp").iterdir())
        mounts_left = store_mounts(ctr.root)
        digest_after_rm = tree_digest(layer_dir)
    finally:
        ctr.cleanup()
    return {
        "drivers": drivers, "usable": usable, "results": results, "rm": rm, "names": names,
        "left": left, "tmp_left": tmp_left, "mounts_left": mounts_left,
        "digests": (digest_before, digest_after_runs, digest_after_rm),
    }


def _result(grid, case, driver):
    if driver not in grid["drivers"]:
        pytest.skip(f"driver {driver} not usable here: {grid['usable'].get(driver, {}).get('Reason')}")
    return grid["results"][(case, driver)]


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("case", list(CASES))
def test_diff_case(grid, case, driver):
    res = _result(grid, case, driver)
    r = res["run"]
    assert r.code == 0, f"run failed: {r}"
    assert res["diff"].code == 0, res["diff"]
    assert lines(res["diff"].out) == CASES[case][1], (
        f"{case} on {driver}: script {CASES[case][0]!r}\n got:\n{res['diff'].out}")
    assert res["diff"].err == ""


@pytest.mark.parametrize("case", list(CASES))
def test_drivers_agree(grid, case):
    if len(grid["drivers"]) < 2:
        pytest.skip("needs both process drivers")
    outs = {d: grid["results"][(case, d)]["diff"].out for d in grid["drivers"]}
    assert outs["overlay"] == outs["copy"]


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("case", JSON_CASES)
def test_diff_json_groups(grid, case, driver):
    res = _result(grid, case, driver)
    assert res["json"].code == 0, res["json"]
    got = json.loads(res["json"].out)
    want: dict[str, list[str]] = {"added": [], "changed": [], "deleted": []}
    key = {"A": "added", "C": "changed", "D": "deleted"}
    for line in CASES[case][1]:
        kind, path = line.split(" ", 1)
        want[key[kind]].append(path)
    assert got == want


def test_json_matches_table(grid):
    key = {"A": "added", "C": "changed", "D": "deleted"}
    for (case, driver), res in grid["results"].items():
        if res["json"] is None:
            continue
        want: dict[str, list[str]] = {"added": [], "changed": [], "deleted": []}
        for line in lines(res["diff"].out):
            kind, path = line.split(" ", 1)
            want[key[kind]].append(path)
        assert json.loads(res["json"].out) == want, (case, driver)


def test_image_layer_untouched(grid):
    before, after_runs, after_rm = grid["digests"]
    assert after_runs == before, "running containers modified the image's layer"
    assert after_rm == before, "removing containers modified the image's layer"


def test_rm_leaves_nothing(grid):
    rm = grid["rm"]
    assert rm.code == 0, rm
    assert sorted(lines(rm.out)) == sorted(grid["names"])
    assert grid["left"] == [], "container directories left behind after rm"
    assert grid["tmp_left"] == [], "litter left in tmp/ after rm"
    assert grid["mounts_left"] == [], "mounts left under the store after rm"


def test_rm_removes_every_byte_written(ctr, busybox_image):
    """A container that wrote a lot: after rm, no byte of it is anywhere in the store."""
    before = sum(1 for _ in ctr.root.rglob("*"))
    for driver in DRIVERS:
        ctr.ok("run", "--name", f"big-{driver}", "--driver", driver, busybox_image, "sh", "-c",
               "mkdir -p /w/a/b && dd if=/dev/zero of=/w/a/b/blob bs=64k count=16 2>/dev/null"
               " && echo marker-xyzzy > /w/m && rm -rf /etc")
        cdir = ctr.root / "containers" / json.loads(ctr.ok("inspect", f"big-{driver}"))[0]["Id"]
        assert cdir.is_dir()
        ctr.ok("rm", f"big-{driver}")
        assert not cdir.exists()
    assert list((ctr.root / "containers").iterdir()) == []
    assert list((ctr.root / "tmp").iterdir()) == []
    assert sum(1 for _ in ctr.root.rglob("*")) == before
    assert ctr.ok("ps", "-a", "-q") == ""


# ----------------------------------------------------------------------------- host image
def _sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.skipif(not IS_ROOT, reason="the host image over / needs root (CI runs as root)")
def test_host_image_writes_stay_in_container(ctr):
    for p in ("/etc/motd", "/etc/issue"):
        if not os.path.isfile(p) or os.path.islink(p):
            pytest.skip(f"{p} is not a regular file on this host")
    before = {p: _sha(p) for p in ("/etc/motd", "/etc/issue")}
    etc_before = os.lstat("/etc")
    r = ctr("run", "--name", "x", "host", "sh", "-c", "echo hi > /etc/motd; rm /etc/issue")
    assert r.code == 0, r
    assert lines(ctr.ok("diff", "x")) == ["C /etc", "D /etc/issue", "C /etc/motd"]
    assert json.loads(ctr.ok("diff", "--format", "json", "x")) == {
        "added": [], "changed": ["/etc", "/etc/motd"], "deleted": ["/etc/issue"]}
    assert {p: _sha(p) for p in before} == before, "the real host files changed"
    assert os.lstat("/etc").st_mtime_ns == etc_before.st_mtime_ns
    ctr.ok("rm", "x")
    assert list((ctr.root / "containers").iterdir()) == []
    assert {p: _sha(p) for p in before} == before


def _dir_on_root_fs() -> Path | None:
    """A fresh directory on the root filesystem, outside the paths ctr mounts fresh (/tmp)."""
    root_dev = os.stat("/").st_dev
    for cand in ("/var/tmp", "/var/lib", "/opt", "/srv"):
        try:
            if os.stat(cand).st_dev != root_dev:
                continue
            return Path(tempfile.mkdtemp(prefix="ctr-test-", dir=cand))
        except OSError:
            continue
    return None


@pytest.mark.skipif(not IS_ROOT, reason="the host image over / needs root (CI runs as root)")
def test_host_image_reads_fall_through(ctr, tmp_path):
    d = _dir_on_root_fs()
    if d is None:
        pytest.skip("no writable directory on the root filesystem (the host image's overlay "
                    "covers only the filesystem mounted at /)")
    try:
        assert os.stat(d).st_dev == os.stat("/").st_dev
        f = d / "from-host.txt"
        f.write_text("written on the host\n")
        assert ctr.ok("run", "--rm", "host", "cat", str(f)) == "written on the host\n"
        # written after the container image was "taken": still visible (it is a live view)
        r = ctr("run", "--name", "w", "host", "sh", "-c", f"cat {f}; echo changed > {f}; cat {f}")
        assert r.code == 0, r
        assert r.out == "written on the host\nchanged\n"
        assert f.read_text() == "written on the host\n", "a container write reached the host"
        parts = str(d).strip("/").split("/")
        want = ["C /" + "/".join(parts[:i + 1]) for i in range(len(parts))] + [f"C {f}"]
        assert lines(ctr.ok("diff", "w")) == want
        ctr.ok("rm", "w")
        # /tmp is private to the container (a fresh tmpfs), so a host file there is not seen
        if os.stat(tmp_path).st_dev == os.stat("/").st_dev and str(tmp_path).startswith("/tmp/"):
            (tmp_path / "hidden.txt").write_text("x")
            r = ctr("run", "--rm", "host", "cat", str(tmp_path / "hidden.txt"))
            assert r.code == 1 and "No such file" in r.err
    finally:
        shutil.rmtree(d, ignore_errors=True)
