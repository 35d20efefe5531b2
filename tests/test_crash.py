"""Crash consistency: ctr is SIGKILLed at each named point of run, rm, commit and import
(`CTR_FAULT=NAME`, src/ctr/faults.py), then the store is held to what a crash may leave:

- `ps`, `image ls` (and `vm ls`, once it exists) answer;
- every record parses (written atomically: no truncated record);
- nothing is listed that cannot be used or removed: each image listed runs, each container
  listed goes with `rm -f`, and `container prune` takes what is stopped;
- after that no process of the store's containers runs and nothing is mounted under it;
- no layer holds anything but exactly what its digest says (`ctr system check` recomputes
  every layer's tree), and `system check --repair` removes what the crash left over.

The same for `vm create` (disk built, VM installed) and `vm start` (machine started, not yet
recorded running): `vm ls` answers, what it lists starts, stops and goes with `vm rm -f`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from conftest import Ctr, Result, needs_busybox, needs_root
from ctr import faults

KILLED = -signal.SIGKILL


def crash(ctr: Ctr, point: str, *args: str, timeout: float = 60) -> Result:
    """Run `ctr ARGS` with the crash point armed; it must die there. Output goes to files,
    not pipes: a workload ctr leaves behind keeps them open."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, "-m", "ctr", *args], stdin=subprocess.DEVNULL, stdout=out,
                             stderr=err, env=dict(ctr.env, CTR_FAULT=point))
        code = p.wait(timeout=timeout)
        out.seek(0)
        err.seek(0)
        r = Result(code, out.read().decode(), err.read().decode())
    assert r.code == KILLED, f"ctr {' '.join(args)} did not die at {point}: {r}"
    return r


def records_parse(root: Path) -> None:
    for p in list(root.glob("containers/*/container.json")) + list(root.glob("images/*.json")) \
            + list(root.glob("layers/*.json")):
        json.loads(p.read_bytes())  # a truncated record would not parse


def store_processes(root: Path) -> list[int]:
    """Processes whose root is a container of this store (their mount namespace's root mount
    names the store's containers directory)."""
    marker = f"{root}/containers/"
    found = []
    for e in os.scandir("/proc"):
        if not e.name.isdigit():
            continue
        try:
            with open(f"/proc/{e.name}/mountinfo") as f:
                if any(marker in line for line in f if line.split(" ", 5)[4:5] == ["/"]):
                    found.append(int(e.name))
        except OSError:
            continue
    return found


def host_mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f if ln.split()[4].startswith(str(root) + "/")]


def settle(ctr: Ctr, deadline: float = 10) -> list[int]:
    """The store's container processes, once those that are dying are gone."""
    end = time.monotonic() + deadline
    while True:
        left = store_processes(ctr.root)
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.05)


_HAS_VM: list[bool] = []


def check_after_crash(ctr: Ctr) -> dict:
    """The store after a crash: it answers, parses, its images run, its containers go, and
    `system check --repair` leaves it clean. Returns what `system check` found first."""
    ps = ctr("ps", "-a", "--format", "json")
    assert ps.code == 0, ps
    images = ctr("image", "ls", "--format", "json")
    assert images.code == 0, images
    if not _HAS_VM:
        _HAS_VM.append("No such command" not in ctr("vm", "--help").err)
    vm = ctr("vm", "ls", "--format", "json") if _HAS_VM[0] else None
    if vm is not None:
        assert vm.code == 0, vm
    records_parse(ctr.root)
    r = ctr("system", "check", "--format", "json")
    assert r.code in (0, 1), r
    found = json.loads(r.out)
    for f in found["Findings"]:  # nothing a crash leaves is damage: all of it is repairable
        assert f["Repair"], f
    for img in json.loads(images.out):
        if not img["Builtin"]:
            assert ctr("run", "--rm", img["Id"], "true").code == 0, img
    listed = [c["Id"] for c in json.loads(ps.out)]
    if listed:
        assert sorted(ctr.ok("rm", "-f", *listed).split()) == sorted(listed)
    vms = [v["Name"] for v in json.loads(vm.out)] if _HAS_VM[0] else []
    if vms:
        ctr.ok("vm", "rm", "-f", *vms)
    assert list((ctr.root / "containers").iterdir()) == []
    assert settle(ctr) == [], "a container's process outlived its removal"
    assert host_mounts_under(ctr.root) == []
    r = ctr("system", "check", "--repair", "--format", "json")
    assert r.code == 0 and json.loads(r.out)["OK"], r
    assert list((ctr.root / "tmp").iterdir()) == [], "litter left in tmp/"
    return found


@pytest.fixture
def bb(ctr, busybox_image):
    return busybox_image


def test_every_point_is_documented_and_inert_when_unset(monkeypatch):
    doc = faults.__doc__
    for name in faults.POINTS:
        assert f"`{name}`" in doc, name
    src = Path(faults.__file__).parent
    called = set()
    for p in src.rglob("*.py"):
        text = p.read_text()
        called.update(n for n in faults.POINTS if f'faults.point("{n}")' in text)
    assert called == set(faults.POINTS), set(faults.POINTS) - called
    faults.point("run.created")  # not armed in this process: nothing happens


# ============================================================================ run
@needs_root
@needs_busybox
@pytest.mark.parametrize("point", ["run.created", "run.started", "run.recorded"])
def test_crash_during_run(ctr, bb, point):
    crash(ctr, point, "run", "--name", "c", bb, "sleep", "60")
    (item,) = json.loads(ctr.ok("ps", "-a", "--format", "json"))
    assert item["State"] in ("created", "running", "exited"), item
    if point == "run.started":
        # recorded `created`, its workload orphaned: `start` kills the leftover first, so two
        # workloads never share the writable layer
        assert item["State"] == "created"
        assert len(settle(ctr, 0)) >= 1
        ctr.ok("start", "c")
        time.sleep(0.2)
        procs = store_processes(ctr.root)
        assert len(procs) == 1, procs
        ctr.ok("stop", "-t", "0", "c")
    check_after_crash(ctr)


@needs_root
@needs_busybox
def test_crash_of_a_detached_runs_monitor(ctr, bb):
    ctr.env["CTR_FAULT"] = "monitor.recorded"  # the monitor dies, not the ctr that spawned it
    try:
        r = ctr("run", "-d", "--name", "d", bb, "sleep", "60")
    finally:
        del ctr.env["CTR_FAULT"]
    assert r.code == 125 and "monitor" in r.err, r  # run -d saw its monitor die
    (item,) = json.loads(ctr.ok("ps", "-a", "--format", "json"))
    assert item["State"] == "exited", item
    assert settle(ctr) == [], "the workload outlived its monitor"
    check_after_crash(ctr)


# ============================================================================ rm
@needs_root
@needs_busybox
@pytest.mark.parametrize("point,driver", [("rm.marked", "overlay"), ("rm.marked", "copy"), ("rm.moved", "overlay")])
def test_crash_during_rm(ctr, bb, point, driver):
    cid = ctr.ok("run", "-d", "--name", "r", "--driver", driver, bb, "sh", "-c", "echo x > /x; sleep 60").strip()
    crash(ctr, point, "rm", "-f", "r")
    items = json.loads(ctr.ok("ps", "-a", "--format", "json"))
    if point == "rm.marked":
        (item,) = items
        assert item["State"] == "removing"
        assert "Removal In Progress" in ctr.ok("ps", "-a")
    else:
        assert items == [], "a container moved out of sight is still listed"
    assert settle(ctr) == [], "rm -f killed nothing before it died"
    out = ctr.ok("container", "prune", "-f")
    assert (cid in out) == (point == "rm.marked"), out  # prune takes a half-removed container
    check_after_crash(ctr)


# ============================================================================ commit
@needs_root
@needs_busybox
@pytest.mark.parametrize("point", ["commit.layer", "commit.installed", "import.extract@3"])
def test_crash_during_commit(ctr, bb, point):
    ctr.ok("run", "--name", "c", bb, "sh", "-c", "mkdir -p /a/b && echo 1 > /a/b/f && echo 2 > /g && rm /etc/group")
    crash(ctr, point, "commit", "c", "new:1")
    assert "new" not in ctr.ok("image", "ls")
    found = check_after_crash(ctr)
    if point == "commit.installed":  # a complete layer no image uses: repaired by deleting it
        assert [f["Problem"] for f in found["Findings"]] == ["no image uses it"]
    # and the commit works when done again
    ctr.ok("run", "--name", "c", bb, "sh", "-c", "echo 2 > /g")
    ctr.ok("commit", "c", "new:1")
    assert ctr.ok("run", "--rm", "new:1", "cat", "/g") == "2\n"
    assert ctr("system", "check").code == 0  # a committed layer's tree checksum is its diff id


# ============================================================================ import
def _bundle(rootfs: Path) -> bytes:
    """A docker-save archive of the busybox root filesystem plus a small second layer."""
    import hashlib

    from ctr.images.oci import goarch

    from archives import tar_tree

    top = rootfs.parent / "top"
    (top / "srv").mkdir(parents=True)
    (top / "srv" / "data").write_text("data\n")
    layers = [tar_tree(rootfs), tar_tree(top)]
    cfg = json.dumps({"architecture": goarch(), "os": "linux", "config": {"Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(x).hexdigest()
                                                                 for x in layers]}}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        names = []
        for layer in layers:  # docker's names: <hex>/layer.tar, <hex>.json
            names.append(hashlib.sha256(layer).hexdigest() + "/layer.tar")
            add(names[-1], layer)
        add(hashlib.sha256(cfg).hexdigest() + ".json", cfg)
        add("manifest.json", json.dumps([{"Config": hashlib.sha256(cfg).hexdigest() + ".json",
                                          "RepoTags": ["bundle:1"], "Layers": names}]).encode())
    return buf.getvalue()


@needs_root
@needs_busybox
@pytest.mark.parametrize("kind", ["rootfs", "bundle"])
@pytest.mark.parametrize("point", ["import.extract@20", "import.layer", "import.installed"])
def test_crash_during_import(ctr, rootfs, tmp_path, kind, point):
    if kind == "rootfs":
        source = rootfs
    else:
        source = tmp_path / "bundle.tar"
        source.write_bytes(_bundle(rootfs))
    crash(ctr, point, "image", "import", str(source), "imp:1")
    assert "imp" not in ctr.ok("image", "ls"), "a half-imported image is listed"
    assert not any(p.is_dir() for p in (ctr.root / "layers").iterdir()) or point == "import.installed"
    found = check_after_crash(ctr)
    if point == "import.installed":
        assert {f["Problem"] for f in found["Findings"]} == {"no image uses it"}
    assert [p for p in (ctr.root / "layers").iterdir()] == [], "--repair left an unused layer"
    # importing again works and gives a usable image
    ctr.ok("image", "import", str(source), "imp:1")
    assert ctr.ok("run", "--rm", "imp:1", "echo", "ok") == "ok\n"


# ============================================================================ vm create, vm start
def _vm_ls(ctr: Ctr) -> list[dict]:
    return json.loads(ctr.ok("vm", "ls", "--format", "json"))


@needs_root
@needs_busybox
@pytest.mark.parametrize("point", ["vm.built", "vm.installed"])
def test_crash_during_vm_create(ctr, bb, point):
    crash(ctr, point, "vm", "create", "-q", "--driver", "sandbox", "--image", bb, "v")
    vms = _vm_ls(ctr)
    if point == "vm.built":
        assert vms == [], "a VM whose disk was never installed is listed"
        ctr.ok("vm", "create", "-q", "--driver", "sandbox", "--image", bb, "v")
    else:
        assert [(v["Name"], v["State"]) for v in vms] == [("v", "Off")], vms
    ctr.ok("vm", "start", "v")  # what is listed can be used
    assert ctr.ok("vm", "exec", "v", "echo", "up") == "up\n"
    ctr.ok("vm", "rm", "-f", "v")
    assert _vm_ls(ctr) == []
    check_after_crash(ctr)


@needs_root
@needs_busybox
def test_crash_during_vm_start(ctr, bb):
    ctr.ok("vm", "create", "-q", "--driver", "sandbox", "--image", bb, "v")
    crash(ctr, "vm.started", "vm", "start", "v")
    (vm,) = _vm_ls(ctr)
    assert vm["State"] in ("Starting", "Running", "Off"), vm
    ctr.ok("vm", "stop", "v")  # a machine nobody waited for can be stopped,
    assert [v["State"] for v in _vm_ls(ctr)] == ["Off"]
    ctr.ok("vm", "start", "v")  # started again,
    assert ctr.ok("vm", "exec", "v", "echo", "again") == "again\n"
    ctr.ok("vm", "rm", "-f", "v")  # and removed
    assert _vm_ls(ctr) == [] and not (ctr.root / "vms" / "v").exists()
    check_after_crash(ctr)
