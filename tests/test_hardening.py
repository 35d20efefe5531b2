"""Runtime setup hardening: what ctr itself does while it prepares a container cannot be aimed
outside the container's root, and ctr hands the workload nothing of its own.

- images (and containers, for their next start) whose /dev, /proc, /tmp, /etc/hosts,
  /etc/passwd, working directory or a volume's target are symlinks — absolute, or `../..`
  made by a workload — cannot make ctr mount, create or read anything outside the root;
- no descriptor ctr (or whoever ran ctr) holds reaches the workload: `-w /proc/self/fd/N`
  and `cd /proc/self/fd/N` find no host directory, and /proc/self/fd lists only stdio;
- `exec` cannot overwrite the host's python through /proc/self/exe or its parent's exe;
- the store root is 0700, and `ctr system check [--repair]` verifies layer checksums and
  records and repairs what it can.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import Ctr, needs_busybox, needs_root

OLD = 1_500_000_000


def _snapshot(top: Path) -> dict:
    out = {}
    for p in [top, *sorted(top.rglob("*"))]:
        st = os.lstat(p)
        out[str(p)] = (st.st_mode, st.st_mtime_ns, p.read_bytes() if stat.S_ISREG(st.st_mode) else None)
    return out


@pytest.fixture
def canary(tmp_path):
    d = tmp_path / "canary"
    (d / "sub").mkdir(parents=True)
    (d / "passwd").write_text("canaryuser:x:4242:4242::/:/bin/sh\n")
    (d / "hosts").write_text("127.0.0.1 canary\n")
    before = _snapshot(d)
    yield d
    assert _snapshot(d) == before, "ctr's setup changed something outside the container"
    with open("/proc/self/mountinfo") as f:
        assert str(d) not in f.read(), "something is mounted on the canary"


def image_with(ctr: Ctr, rootfs: Path, name: str, links: dict[str, str]) -> str:
    """The busybox root filesystem with `links` (path -> target) in place of what is there."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for p in sorted(rootfs.rglob("*")):
            rel = str(p.relative_to(rootfs))
            if rel in links or any(rel.startswith(k + "/") for k in links):
                continue
            t.add(str(p), arcname=rel, recursive=False)
        for rel, target in links.items():
            ti = tarfile.TarInfo(rel)
            ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.SYMTYPE, target, 0o777, OLD
            t.addfile(ti)
    src = rootfs.parent / f"{name}.tar"
    src.write_bytes(buf.getvalue())
    ctr.ok("image", "import", str(src), name)
    return name


def one_error(r, *needles) -> str:
    errors = [ln for ln in r.err.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1, r.err
    for n in needles:
        assert n in errors[0], (n, r.err)
    return errors[0]


# ============================================================================ symlinked setup targets
@needs_root
@needs_busybox
@pytest.mark.parametrize("where", ["tmp", "dev", "proc"])
@pytest.mark.parametrize("isolation", ["process", "hyperv"])
def test_runtime_mount_points_that_are_symlinks_out(ctr, rootfs, canary, where, isolation):
    """ctr mounts a fresh /tmp, /dev (and its nodes, pts, shm) and /proc: an image whose mount
    point is a symlink to a host directory is refused (125, naming it); nothing is mounted or
    made there."""
    image_with(ctr, rootfs, "links", {where: str(canary / "sub")})
    r = ctr("run", "--rm", "--isolation", isolation, "links", "true")
    assert r.code == 125, r
    one_error(r, f"/{where} is a symlink")


@needs_root
@needs_busybox
@pytest.mark.parametrize("driver", ["overlay", "copy"])
def test_links_a_workload_makes_are_refused_at_the_next_start(ctr, busybox_image, canary, driver):
    """A workload may turn /tmp (after unmounting it: it is root) into a `../..` link before
    its container is started again: the next start refuses it, and mounts nothing through."""
    up = "../" * 12
    script = (f"[ -L /tmp ] && exit 0; umount /tmp && rmdir /tmp && ln -s {up}{str(canary).lstrip('/')}/sub /tmp")
    r = ctr("run", "--name", "c", "--driver", driver, busybox_image, "sh", "-c", script)
    assert r.code == 0, r
    r = ctr("start", "-a", "c")
    assert r.code == 125, r
    one_error(r, "/tmp is a symlink")


@needs_root
@needs_busybox
def test_files_the_setup_reads_resolve_inside_the_root(ctr, rootfs, canary):
    """`-u NAME` is looked up in the image's /etc/passwd after the pivot: a link to the host's
    file is followed inside the container (where it leads nowhere), never on the host.
    /etc/hosts is not ctr's: a link there stays the image's business."""
    image_with(ctr, rootfs, "etc", {"etc/passwd": str(canary / "passwd"), "etc/hosts": str(canary / "hosts")})
    r = ctr("run", "--rm", "-u", "canaryuser", "etc", "id", "-u")
    assert r.code == 125 and "canaryuser" in one_error(r), r
    r = ctr("run", "--rm", "etc", "sh", "-c", "cat /etc/hosts; echo pwned > /etc/hosts; echo $?")
    assert "canary" not in r.out and r.out.strip().endswith("1"), r


@needs_root
@needs_busybox
@pytest.mark.parametrize("isolation", ["process", "hyperv"])
def test_workdir_and_volume_targets_through_symlinks(ctr, rootfs, canary, tmp_path, isolation):
    image_with(ctr, rootfs, "wd", {"work": str(canary / "sub"), "vol": str(canary)})
    # a working directory that is a link: entered after the pivot, so it resolves inside
    r = ctr("run", "--rm", "--isolation", isolation, "-w", "/work", "wd", "sh", "-c", "pwd; ls")
    assert r.code in (0, 125), r
    assert "passwd" not in r.out and "hosts" not in r.out
    # a volume whose target goes through a link: refused, nothing made on the host
    vol = tmp_path / "vol"
    vol.mkdir()
    r = ctr("run", "--rm", "--isolation", isolation, "-v", f"{vol}:/vol/x", "wd", "true")
    assert r.code == 125, r
    one_error(r, "/vol is a symlink")
    # a working directory a workload turned into a `../..` link, for the next start
    script = "[ -L /wd ] && { ls; exit 0; }; cd / && rmdir /wd && ln -s ../../../../../../../.. /wd"
    assert ctr("run", "--name", f"w{isolation}", "--isolation", isolation, "-w", "/wd", "wd", "sh", "-c",
               script).code == 0
    r = ctr("start", "-a", f"w{isolation}")
    assert r.code == 0, r
    assert {"bin", "etc", "wd", "work"} <= set(r.out.split()), r  # the container's own root


# ============================================================================ descriptors
@needs_root
@needs_busybox
@pytest.mark.parametrize("isolation", ["process", "hyperv"])
def test_no_descriptor_reaches_the_workload(ctr, busybox_image, canary, isolation):
    """Whoever runs ctr may hold descriptors without close-on-exec (a shell's `exec 5</etc`);
    ctr's own are close-on-exec. None of them is in the workload, nor in its setup: a
    directory descriptor would be a way out (`-w /proc/self/fd/N`)."""
    fd = os.open(canary, os.O_RDONLY | os.O_DIRECTORY)  # inheritable
    try:
        def run(*args):
            p = subprocess.run([sys.executable, "-m", "ctr", *args], capture_output=True, text=True,
                               env=ctr.env, pass_fds=(fd,), stdin=subprocess.DEVNULL, timeout=60)
            return p.returncode, p.stdout, p.stderr

        code, out, err = run("run", "--rm", "--isolation", isolation, busybox_image, "ls", "/proc/self/fd")
        assert code == 0 and sorted(out.split()) == ["0", "1", "2", "3"], (out, err)  # 3: ls's own
        code, out, err = run("run", "--rm", "--isolation", isolation, "-w", f"/proc/self/fd/{fd}", busybox_image, "ls")
        assert "passwd" not in out, (code, out, err)
        code, out, err = run("run", "--rm", "--isolation", isolation, busybox_image, "sh", "-c",
                             f"cd /proc/self/fd/{fd} && ls")
        assert code != 0 and "passwd" not in out, (code, out, err)
        # detached (through the monitor), and a session joined with exec
        code, out, err = run("run", "-d", "--name", "d", "--isolation", isolation, busybox_image, "sleep", "60")
        assert code == 0, err
        pid = json.loads(ctr.ok("inspect", "d"))[0]["State"]["Pid"]
        if isolation == "process":  # the workload's own descriptors, seen from the host
            assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"]
            code, out, err = run("exec", "d", "ls", "/proc/self/fd")
            assert code == 0 and sorted(out.split()) == ["0", "1", "2", "3"], (out, err)
            code, out, err = run("exec", "-w", f"/proc/self/fd/{fd}", "d", "ls")
            assert "passwd" not in out, (code, out, err)
    finally:
        os.close(fd)


@needs_root
@needs_busybox
def test_exec_cannot_overwrite_the_hosts_python(ctr, busybox_image):
    """An exec session's /proc/self/exe is the image's program, busy while it runs; its parent
    (ctr, a python) is also busy. The host's python stays what it was. (A process container's
    root can write host files through /proc/1/root anyway — tests/test_boundary.py says so.)
    In a sandbox container the session's parent is outside its pid namespace: nothing to open."""
    python = os.path.realpath(sys.executable)
    before = hashlib.sha256(Path(python).read_bytes()).hexdigest()
    ctr.ok("run", "-d", "--name", "x", busybox_image, "sleep", "60")
    script = ("echo x >> /proc/self/exe && echo WROTE-SELF; echo x >> /proc/$PPID/exe && echo WROTE-PARENT; "
              "exec 3< /proc/$PPID/exe && echo OPENED-PARENT; true")
    r = ctr("exec", "x", "sh", "-c", script)
    assert r.code == 0 and "WROTE" not in r.out, r
    assert hashlib.sha256(Path(python).read_bytes()).hexdigest() == before
    ctr.ok("run", "-d", "--name", "h", "--isolation", "hyperv", "--driver", "sandbox", busybox_image, "sleep", "60")
    r = ctr("exec", "h", "sh", "-c", script)
    # its parent is outside the pid namespace ($PPID is 0): the failed `exec 3<` ends sh with 1
    assert r.code == 1 and "WROTE" not in r.out and "OPENED" not in r.out and "/proc/0/exe" in r.err, r
    assert hashlib.sha256(Path(python).read_bytes()).hexdigest() == before
    assert ctr("system", "check").code == 0, "the image's layer changed"


# ============================================================================ system check
def _check(ctr: Ctr, *args: str) -> tuple[int, dict]:
    r = ctr("system", "check", "--format", "json", *args)
    assert r.code in (0, 1), r
    return r.code, json.loads(r.out)


@needs_root
@needs_busybox
def test_store_root_mode_is_checked_and_repaired(ctr, busybox_image):
    assert stat.S_IMODE(os.stat(ctr.root).st_mode) == 0o700
    assert _check(ctr)[0] == 0
    os.chmod(ctr.root, 0o755)
    code, rep = _check(ctr)
    assert code == 1 and rep["Findings"][0]["Kind"] == "store" and "0755" in rep["Findings"][0]["Problem"]
    code, rep = _check(ctr, "--repair")
    assert code == 0 and stat.S_IMODE(os.stat(ctr.root).st_mode) == 0o700


@needs_root
@needs_busybox
def test_check_finds_a_changed_layer_and_names_its_images(ctr, busybox_image):
    layer = ctr.root / "layers" / json.loads(ctr.ok("image", "inspect", "bb"))[0]["RootFS"]["Layers"][0].split(":")[1]
    passwd = layer / "etc" / "passwd"
    original = passwd.read_bytes()
    passwd.write_bytes(original + b"intruder:x:0:0::/:/bin/sh\n")
    code, rep = _check(ctr, "--repair")  # nothing to repair: it is reported, and left as it is
    assert code == 1
    kinds = {(f["Kind"], f["Repair"]) for f in rep["Findings"]}
    assert kinds == {("layer", None), ("image", None)}, rep
    assert any("changed since it was installed" in f["Problem"] for f in rep["Findings"])
    assert any("bb:latest uses the damaged layer" in f["Problem"] for f in rep["Findings"])
    r = ctr("system", "check")
    assert r.code == 1 and "PROBLEM: layer" in r.out and "hint: " in r.out
    os.chmod(passwd, 0o600)  # a mode change is found too
    passwd.write_bytes(original)
    assert _check(ctr)[0] == 1
    os.chmod(passwd, 0o644)
    os.utime(passwd, (OLD, OLD))
    os.utime(layer / "etc", (OLD, OLD))
    code, rep = _check(ctr)
    assert code == 1  # an mtime (to the second) is part of the checksum: the tar had another
    ctr.ok("image", "rm", "bb")
    assert _check(ctr)[0] == 0


@needs_root
@needs_busybox
def test_check_repairs_what_crashes_and_old_versions_leave(ctr, busybox_image, rootfs):
    root = ctr.root
    ctr.ok("run", "--name", "keep", busybox_image, "true")
    ctr.ok("run", "--name", "half", busybox_image, "true")
    ctr.ok("image", "import", str(rootfs), "second")  # the same image again: one image, two names
    (layer,) = [p for p in (root / "layers").iterdir() if p.is_dir()]
    # a layer without its checksum record (made before records existed)
    (root / "layers" / f"{layer.name}.json").unlink()
    # a record without its layer
    (root / "layers" / ("ab" * 32 + ".json")).write_text('{"version": 1, "tree": "sha256:00"}')
    # a container directory without a record, a corrupt record, one left `removing`
    (root / "containers" / ("cd" * 32) / "upper").mkdir(parents=True)
    half = json.loads(ctr.ok("inspect", "half"))[0]["Id"]
    rec = root / "containers" / half / "container.json"
    rec.write_text(rec.read_text().replace('"state": "exited"', '"state": "removing"'))
    ctr.ok("run", "--name", "broken", busybox_image, "true")
    broken = json.loads(ctr.ok("inspect", "broken"))[0]["Id"]
    (root / "containers" / broken / "container.json").write_text('{"id": ')
    # an image whose layer is gone, an image record that cannot be read, a temp record of a dead pid
    (root / "images" / ("ef" * 32 + ".json")).write_text(json.dumps({
        "id": "sha256:" + "ef" * 32, "names": ["ghost:1"], "layers": ["sha256:" + "12" * 32]}))
    (root / "images" / ("fe" * 32 + ".json")).write_text("{not json")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (root / "images" / f".{'fe' * 32}.json.{dead.pid}.tmp").write_text("{")
    code, rep = _check(ctr)
    assert code == 1
    assert all(f["Repair"] for f in rep["Findings"]), [f for f in rep["Findings"] if not f["Repair"]]
    problems = "\n".join(f["Problem"] for f in rep["Findings"])
    for want in ("no checksum recorded", "a layer checksum without its layer", "a container directory without a record",
                 "unreadable container record", "half was left half-removed by a crash",
                 "ghost:1 is missing its layer", "unreadable image record",
                 "a temporary record file left by a process that died"):
        assert want in problems, (want, problems)
    code, rep = _check(ctr, "--repair")
    assert code == 0 and all(f["Repaired"] for f in rep["Findings"]), rep
    assert _check(ctr) == (0, {"Layers": 1, "Images": 1, "Containers": 1, "VMs": 0, "Findings": [], "OK": True})
    # what is left works: the good container, both names of the image
    assert [c["Names"][0] for c in json.loads(ctr.ok("ps", "-a", "--format", "json"))] == ["keep"]
    assert ctr.ok("run", "--rm", "second", "echo", "ok") == "ok\n"
    assert [p.name for p in (root / "images").iterdir() if p.name.startswith(".")] == []


@needs_root
@needs_busybox
def test_check_names_a_container_whose_image_is_gone(ctr, busybox_image):
    ctr.ok("run", "--name", "orphan", busybox_image, "true")
    iid = json.loads(ctr.ok("image", "inspect", "bb"))[0]["Id"]
    (ctr.root / "images" / (iid.split(":")[1] + ".json")).unlink()
    code, rep = _check(ctr, "--repair")
    assert code == 1
    left = [f for f in rep["Findings"] if not f["Repaired"]]
    assert [(f["Kind"], "orphan uses image" in f["Problem"]) for f in left] == [("container", True)]
    assert ctr.ok("rm", "orphan") == "orphan\n"  # it can still be removed
    assert _check(ctr)[0] == 0
