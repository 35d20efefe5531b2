"""The state store: layout and version, refusal of unknown versions, corrupt records, crash
litter in tmp/, reconciliation of containers whose process is gone, atomic records, locks,
and where the store and the config are found."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ctr.store.records import flock


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, mode, mtime and content digest."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
        out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_mtime_ns, digest)
    return out


def assert_one_error(r, *needles: str, hint: bool = False) -> None:
    errs = [ln for ln in r.err.splitlines() if ln.startswith("Error:")]
    assert len(errs) == 1, r.err
    assert "Traceback" not in r.err and "internal error" not in r.err, r.err
    for ln in r.err.splitlines():
        assert ln.startswith(("Error:", "Hint:")), f"unexpected stderr line {ln!r}"
    if hint:
        assert any(ln.startswith("Hint:") for ln in r.err.splitlines()), r.err
    for n in needles:
        assert n in errs[0], f"{n!r} not in {errs[0]!r}"


def record_path(ctr, ref: str) -> Path:
    cid = json.loads(ctr.ok("inspect", ref))[0]["Id"]
    return ctr.root / "containers" / cid / "container.json"


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- layout, version
def test_store_created_with_version_and_mode(ctr):
    assert not ctr.root.exists()
    ctr.ok("ps")
    assert json.loads((ctr.root / "store.json").read_text()) == {"version": 1}
    assert stat.S_IMODE(os.stat(ctr.root).st_mode) == 0o700
    for d in ("tmp", "images", "layers", "containers"):
        assert (ctr.root / d).is_dir(), d
    before = snapshot(ctr.root)
    ctr.ok("ps", "-a")
    ctr.ok("image", "ls")
    assert snapshot(ctr.root) == before, "read-only commands changed the store"


def test_root_flag_and_env(ctr, tmp_path):
    other = tmp_path / "other-root"
    ctr.ok("--root", str(other), "ps")
    assert (other / "store.json").is_file()
    assert not ctr.root.exists(), "--root must win over $CTR_ROOT"
    r = subprocess.run([sys.executable, "-m", "ctr", "info", "--format", "json"], capture_output=True, text=True,
                       env=dict(ctr.env, CTR_ROOT=str(other)))
    assert json.loads(r.stdout)["Store"]["Root"] == str(other)


@pytest.mark.parametrize("content", ['{"version": 99}', '{"version": "1"}', '{}', '[1]', 'not json{'])
def test_unknown_store_version_refused(ctr, busybox_image, content):
    ctr.ok("run", "--name", "keep", busybox_image, "true")
    (ctr.root / "store.json").write_text(content)
    before = snapshot(ctr.root)
    commands = [(("ps", "-a"), 1), (("run", busybox_image, "true"), 125)]
    if content == '{"version": 99}':
        commands += [(("image", "ls"), 1), (("rm", "-f", "keep"), 1), (("info",), 1), (("diff", "keep"), 1)]
    for args, code in commands:
        r = ctr(*args)
        assert r.code == code, (args, r)
        assert r.out == ""
        assert_one_error(r, "store.json" if "json{" in content else "version", hint=True)
    assert snapshot(ctr.root) == before, "a refused store was modified"


# ----------------------------------------------------------------------------- corrupt records
@pytest.mark.parametrize("content", ["{ truncated", "[]", '{"id": "x"}', "\xff\xfe"])
def test_corrupt_container_record(ctr, busybox_image, content):
    ctr.ok("run", "--name", "good", busybox_image, "true")
    ctr.ok("run", "--name", "bad", busybox_image, "true")
    rec = record_path(ctr, "bad")
    cid = rec.parent.name
    rec.write_bytes(content.encode("latin-1"))
    for args in (("ps", "-a"), ("inspect", "good"), ("rm", "bad")):
        r = ctr(*args)
        assert r.code == 1, (args, r)
        assert_one_error(r, cid[:12], "corrupt", hint=True)
    assert rec.read_bytes() == content.encode("latin-1"), "ctr rewrote a record it could not read"
    # the hint's way out works, and only by full id (a prefix or a name cannot be trusted)
    assert ctr("rm", "-f", cid[:12]).code == 1
    assert ctr.ok("rm", "-f", cid) == cid + "\n"
    assert not rec.parent.exists()
    assert [it["Names"] for it in json.loads(ctr.ok("ps", "-a", "--format", "json"))] == [["good"]]


def test_corrupt_image_record(ctr, busybox_image):
    iid = json.loads(ctr.ok("image", "inspect", busybox_image))[0]["Id"]
    (ctr.root / "images" / f"{iid.split(':')[1]}.json").write_text("{")
    r = ctr("image", "ls")
    assert r.code == 1
    assert_one_error(r, "corrupt")


# ----------------------------------------------------------------------------- tmp litter
def test_tmp_litter_swept(ctr, busybox_image):
    tmp = ctr.root / "tmp"
    gone = dead_pid()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        dead_dir = tmp / f"{gone}-create-deadbeef"
        (dead_dir / "rootfs" / "etc").mkdir(parents=True)
        (dead_dir / "rootfs" / "etc" / "f").write_text("litter")
        os.chmod(dead_dir / "rootfs", 0o500)  # litter a crashed copy could leave
        dead_file = tmp / f"{gone}-rm-0123abcd"
        dead_file.write_text("x")
        junk = tmp / "not-a-pid-name"
        junk.mkdir()
        live_dir = tmp / f"{sleeper.pid}-import-cafef00d"
        (live_dir / "layer").mkdir(parents=True)
        mine = tmp / f"{os.getpid()}-import-00000000"
        mine.mkdir()
        ctr.ok("ps")
        left = sorted(p.name for p in tmp.iterdir())
        assert left == sorted([live_dir.name, mine.name]), left
        assert (live_dir / "layer").is_dir(), "a live process's work in progress was touched"
    finally:
        sleeper.kill()
        sleeper.wait()
    ctr.ok("image", "ls")
    assert [p.name for p in tmp.iterdir()] == [mine.name]


# ----------------------------------------------------------------------------- reconciliation
def test_running_container_with_dead_pid_reconciled(ctr, busybox_image):
    ctr.ok("run", "--name", "ghost", busybox_image, "true")
    ctr.ok("run", "--name", "reused", busybox_image, "true")
    rec = record_path(ctr, "ghost")
    data = json.loads(rec.read_text())
    data.update(state="running", pid=dead_pid(), exit_code=None, finished=None)
    rec.write_text(json.dumps(data))
    # a live pid that is not the recorded process (its start time differs): also gone
    rec2 = record_path(ctr, "reused")
    data2 = json.loads(rec2.read_text())
    data2.update(state="running", pid=os.getpid(), pid_start=1, exit_code=None, finished=None)
    rec2.write_text(json.dumps(data2))

    assert ctr.ok("ps", "-q") == "", "a container whose process is gone is shown running"
    items = {it["Names"][0]: it for it in json.loads(ctr.ok("ps", "-a", "--format", "json"))}
    for name in ("ghost", "reused"):
        assert items[name]["State"] == "exited", name
        assert items[name]["Status"].startswith("Exited")
    for path in (rec, rec2):
        on_disk = json.loads(path.read_text())
        assert on_disk["state"] == "exited"
        assert on_disk["finished"]
        assert on_disk["error"], "reconciliation should say why the container is exited"
    ctr.ok("rm", "ghost", "reused")
    assert list((ctr.root / "containers").iterdir()) == []


def test_removing_state_is_resumable(ctr, busybox_image):
    """A crash during rm leaves a record in state `removing`; the next rm finishes the job."""
    ctr.ok("run", "--name", "half", busybox_image, "sh", "-c", "echo x > /x")
    rec = record_path(ctr, "half")
    data = json.loads(rec.read_text())
    data["state"] = "removing"
    rec.write_text(json.dumps(data))
    (item,) = json.loads(ctr.ok("ps", "-a", "--format", "json"))
    assert item["State"] == "removing"
    assert ctr.ok("rm", "half") == "half\n"
    assert list((ctr.root / "containers").iterdir()) == []


# ----------------------------------------------------------------------------- atomicity, locks
def test_records_atomic_no_litter(ctr, busybox_image):
    """Many writes with a reader polling every record all along: each read parses, and no
    temp file is left behind."""
    stop = threading.Event()
    bad: list[str] = []
    reads = [0]

    def reader() -> None:
        while not stop.wait(0.002):
            for p in list(ctr.root.glob("containers/*/container.json")) + list(ctr.root.glob("images/*.json")):
                try:
                    data = p.read_bytes()
                except FileNotFoundError:
                    continue
                reads[0] += 1
                try:
                    json.loads(data)
                except ValueError:
                    bad.append(f"{p}: {data[:80]!r}")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(4):
            ctr.ok("run", "--name", f"c{i}", "--driver", ("overlay", "copy")[i % 2], busybox_image, "true")
            ctr.ok("ps", "-a")
            ctr.ok("image", "import", str(ctr.root.parent / "rootfs"), f"tag{i}")
        ctr.ok("rm", "c0", "c3")
    finally:
        stop.set()
        t.join()
    assert not bad, bad
    assert reads[0] > 0
    litter = [str(p) for p in ctr.root.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert litter == []
    assert list((ctr.root / "tmp").iterdir()) == []
    for p in ctr.root.glob("containers/*/container.json"):
        json.loads(p.read_text())
    assert len(json.loads(ctr.ok("ps", "-a", "--format", "json"))) == 2


def test_lock_held_means_wait_then_clear_error(ctr, busybox_image):
    ctr.ok("run", "--name", "locked", busybox_image, "true")
    ctr.env["CTR_LOCK_TIMEOUT"] = "0.5"
    try:
        with flock(ctr.root / "lock"):
            r = ctr("rm", "locked")
            assert r.code == 1
            assert_one_error(r, "busy", hint=True)
            r = ctr("run", busybox_image, "true")
            assert r.code == 125
            assert_one_error(r, "busy")
        assert ctr.ok("rm", "locked") == "locked\n"
    finally:
        del ctr.env["CTR_LOCK_TIMEOUT"]
    assert list((ctr.root / "containers").iterdir()) == []
    assert list((ctr.root / "tmp").iterdir()) == []


# ----------------------------------------------------------------------------- config
def test_config_chooses_driver(ctr, busybox_image, tmp_path):
    (tmp_path / "config.yaml").write_text("isolation: process\ndrivers:\n  process: copy\n")
    ctr.ok("run", "--name", "cfg", busybox_image, "true")
    assert json.loads(ctr.ok("inspect", "cfg"))[0]["Driver"] == "copy"
    ctr.ok("run", "--name", "flag", "--driver", "overlay", busybox_image, "true")
    assert json.loads(ctr.ok("inspect", "flag"))[0]["Driver"] == "overlay"
    # the driver is saved with the container: a later config change does not affect it
    (tmp_path / "config.yaml").write_text("drivers:\n  process: overlay\n")
    assert json.loads(ctr.ok("inspect", "cfg"))[0]["Driver"] == "copy"
    assert ctr.ok("diff", "cfg") == ""


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_blank_config_is_the_defaults_without_yaml(tmp_path, content):
    path = tmp_path / "config.yaml"
    path.write_text(content)
    code = ("import sys; from pathlib import Path; from ctr.config import Config, load_config; "
            "c = load_config(Path(sys.argv[1])); assert c == Config(path=Path(sys.argv[1])), c; "
            "assert 'yaml' not in sys.modules")
    p = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    path.write_text(content + "# only a comment\n")  # YAML's nothing too, through yaml
    from ctr.config import Config, load_config

    assert load_config(path) == Config(path=path)


@pytest.mark.parametrize("content, needle", [
    ("colour: blue\n", "colour"),
    ("drivers: [a, b]\n", "drivers"),
    ("- just\n- a list\n", "mapping"),
    ("isolation: [unclosed\n", "YAML"),
])
def test_bad_config_is_one_clear_error(ctr, tmp_path, content, needle):
    (tmp_path / "config.yaml").write_text(content)
    r = ctr("ps")
    assert r.code == 1
    assert_one_error(r, needle, str(tmp_path / "config.yaml"))
