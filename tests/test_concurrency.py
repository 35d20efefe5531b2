"""Many ctr processes on one store at once: 20 concurrent `run --rm` + `ps` + `rm`, no lost
or corrupt record, no duplicate auto-generated names, and an empty store at the end; then
`run -d` + `rm -f` of running containers, commits beside imports, and every verb against a
held lock (bounded wait, one clear line); `vm start` and `vm stop` of the same VMs at once."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

N = 20


class RecordWatcher:
    """Polls every record in the store from another thread; each read must parse."""

    def __init__(self, root: Path):
        self.root = root
        self.bad: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            for p in self.root.glob("containers/*/container.json"):
                try:
                    data = p.read_bytes()
                except (FileNotFoundError, NotADirectoryError):
                    continue
                self.reads += 1
                try:
                    json.loads(data)
                except ValueError:
                    self.bad.append(f"{p}: {data[:80]!r}")

    def __enter__(self) -> "RecordWatcher":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def assert_store_clean(ctr) -> None:
    assert list((ctr.root / "containers").iterdir()) == [], "containers left behind"
    assert list((ctr.root / "tmp").iterdir()) == [], "litter left in tmp/"
    assert [str(p) for p in ctr.root.rglob("*.tmp")] == []
    assert ctr.ok("ps", "-a", "-q") == ""


def test_concurrent_run_rm_ps(ctr, busybox_image):
    """20 `run --rm` on both drivers, interleaved with `ps -a`; all succeed, none is left."""

    def job(i: int):
        if i % 2:
            return ("ps", ctr("ps", "-a", "--format", "json"))
        drv = "overlay" if i % 4 == 0 else "copy"
        return ("run", ctr("run", "--rm", "--driver", drv, busybox_image, "sh", "-c",
                           f"echo job-{i} > /out && cat /out"), i)

    with RecordWatcher(ctr.root) as w, ThreadPoolExecutor(max_workers=N) as pool:
        results = list(pool.map(job, range(2 * N)))
    runs = [r for r in results if r[0] == "run"]
    assert len(runs) == N
    for _, r, i in runs:
        assert r.code == 0, r
        assert r.out == f"job-{i}\n"
        assert r.err == ""
    for kind, r, *_ in results:
        if kind == "ps":
            assert r.code == 0, r
            for item in json.loads(r.out):  # every record ps saw was whole
                assert len(item["Id"]) == 64 and item["Names"][0]
    assert not w.bad, w.bad
    assert_store_clean(ctr)


def test_concurrent_create_auto_names_then_rm(ctr, busybox_image):
    """20 containers created at once with generated names: 20 records, 20 distinct names,
    each with its own changes; then 20 concurrent `rm` (with `ps` alongside) empty the store."""

    def create(i: int):
        return ctr("run", busybox_image, "sh", "-c", f"echo {i} > /mine-{i}")

    with RecordWatcher(ctr.root) as w, ThreadPoolExecutor(max_workers=N) as pool:
        ps_futs = [pool.submit(ctr, "ps", "-a", "-q") for _ in range(4)]
        created = list(pool.map(create, range(N)))
        assert all(f.result().code == 0 for f in ps_futs)
    assert all(r.code == 0 for r in created), [r for r in created if r.code]
    items = json.loads(ctr.ok("ps", "-a", "--format", "json"))
    assert len(items) == N, "a record was lost"
    names = [it["Names"][0] for it in items]
    assert len(set(names)) == N, f"duplicate names: {sorted(names)}"
    assert len({it["Id"] for it in items}) == N
    assert all(it["State"] == "exited" and it["ExitCode"] == 0 for it in items)
    # no record was mixed up with another: each container has exactly its own change
    diffs = dict(zip(names, ThreadPoolExecutor(max_workers=8).map(lambda n: ctr("diff", n), names)))
    marks = set()
    for name, d in diffs.items():
        assert d.code == 0, d
        (line,) = d.out.splitlines()
        assert line.startswith("A /mine-")
        marks.add(line)
    assert len(marks) == N
    assert not w.bad, w.bad

    with RecordWatcher(ctr.root) as w, ThreadPoolExecutor(max_workers=N) as pool:
        ps_futs = [pool.submit(ctr, "ps", "-a") for _ in range(4)]
        removed = list(pool.map(lambda n: ctr("rm", n), names))
        assert all(f.result().code == 0 for f in ps_futs)
    for name, r in zip(names, removed):
        assert r.code == 0, r
        assert r.out == f"{name}\n"
    assert not w.bad, w.bad
    assert_store_clean(ctr)


def test_concurrent_same_name_exactly_one_wins(ctr, busybox_image):
    results = list(ThreadPoolExecutor(max_workers=8).map(
        lambda i: ctr("run", "--name", "contested", busybox_image, "true"), range(8)))
    codes = sorted(r.code for r in results)
    assert codes == [0] + [125] * 7, [(r.code, r.err) for r in results]
    for r in results:
        if r.code:
            assert "already in use" in r.err
    assert len(json.loads(ctr.ok("ps", "-a", "--format", "json"))) == 1
    assert list((ctr.root / "tmp").iterdir()) == []
    ctr.ok("rm", "contested")
    assert_store_clean(ctr)


def test_concurrent_rm_of_the_same_container(ctr, busybox_image):
    ctr.ok("run", "--name", "once", busybox_image, "true")
    results = list(ThreadPoolExecutor(max_workers=6).map(lambda i: ctr("rm", "once"), range(6)))
    ok = [r for r in results if r.code == 0]
    assert ok, [r.err for r in results]
    for r in results:
        assert r.code in (0, 1), r
        assert "Traceback" not in r.err and "internal error" not in r.err, r.err
        if r.code:
            assert "no such container" in r.err
    assert_store_clean(ctr)


# ----------------------------------------------------------------------------- detached, rm -f
def _store_processes(root) -> list[int]:
    marker = f"{root}/containers/"
    found = []
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                with open(f"/proc/{e.name}/mountinfo") as f:
                    if any(marker in ln for ln in f if ln.split(" ", 5)[4:5] == ["/"]):
                        found.append(int(e.name))
            except OSError:
                pass
    return found


def test_concurrent_detached_runs_then_rm_f(ctr, busybox_image):
    """10 `run -d` at once (each under its own monitor) with `ps` alongside, then 10 `rm -f`
    of running containers at once: every start and every removal succeeds once, nothing
    runs afterwards."""
    n = 10
    with RecordWatcher(ctr.root) as w, ThreadPoolExecutor(max_workers=n + 2) as pool:
        ps_futs = [pool.submit(ctr, "ps", "--format", "json") for _ in range(3)]
        started = list(pool.map(lambda i: ctr("run", "-d", "--name", f"d{i}", busybox_image, "sleep", "120"),
                                range(n)))
        assert all(f.result().code == 0 for f in ps_futs)
    assert all(r.code == 0 and len(r.out.strip()) == 64 for r in started), [r for r in started if r.code]
    items = json.loads(ctr.ok("ps", "--format", "json"))
    assert sorted(it["Names"][0] for it in items) == sorted(f"d{i}" for i in range(n))
    assert all(it["State"] == "running" for it in items)
    with RecordWatcher(ctr.root) as w2, ThreadPoolExecutor(max_workers=n + 2) as pool:
        ps_futs = [pool.submit(ctr, "ps", "-a") for _ in range(3)]
        removed = list(pool.map(lambda i: ctr("rm", "-f", f"d{i}"), range(n)))
        assert all(f.result().code == 0 for f in ps_futs)
    assert [r.out for r in removed] == [f"d{i}\n" for i in range(n)], [r for r in removed if r.code]
    assert not w.bad and not w2.bad
    assert _store_processes(ctr.root) == []
    assert_store_clean(ctr)


# ----------------------------------------------------------------------------- commit, import
def test_concurrent_commits_and_imports(ctr, busybox_image, tmp_path):
    """Commits of 6 containers, 4 imports of one root filesystem under different names and 2 of
    others, all at once with `image ls` polling: every name lands on the right image exactly
    once, shared layers are shared, no record is torn, and the store checks clean."""
    for i in range(6):
        ctr.ok("run", "--name", f"c{i}", busybox_image, "sh", "-c", f"echo {i} > /mine")
    extra = []
    for i in range(2):
        d = tmp_path / f"extra{i}"
        (d / "etc").mkdir(parents=True)
        (d / "etc" / "which").write_text(f"extra{i}\n")
        extra.append(d)
    rootfs = ctr.root.parent / "rootfs"
    jobs = ([("commit", f"c{i}", f"com{i}:1") for i in range(6)]
            + [("image", "import", str(rootfs), f"same{i}:1") for i in range(4)]
            + [("image", "import", str(extra[i]), f"other{i}:1") for i in range(2)])
    stop = threading.Event()
    bad: list[str] = []

    def watch_images() -> None:
        while not stop.wait(0.01):
            for p in ctr.root.glob("images/*.json"):
                try:
                    json.loads(p.read_bytes())
                except FileNotFoundError:
                    continue
                except ValueError:
                    bad.append(str(p))

    t = threading.Thread(target=watch_images)
    t.start()
    try:
        with ThreadPoolExecutor(max_workers=len(jobs) + 2) as pool:
            ls_futs = [pool.submit(ctr, "image", "ls", "-q") for _ in range(3)]
            results = list(pool.map(lambda a: ctr(*a), jobs))
            assert all(f.result().code == 0 for f in ls_futs)
    finally:
        stop.set()
        t.join()
    assert all(r.code == 0 for r in results), [r for r in results if r.code]
    assert not bad, bad
    images = json.loads(ctr.ok("image", "ls", "--format", "json"))
    names = [n for img in images for n in img["Names"]]
    assert len(names) == len(set(names)), sorted(names)
    want = {f"com{i}:1" for i in range(6)} | {f"same{i}:1" for i in range(4)} | {f"other{i}:1" for i in range(2)}
    assert want <= set(names)
    same = [img for img in images if any(n.startswith("same") for n in img["Names"])]
    assert len(same) == 1 and len(same[0]["Names"]) >= 4, "one root filesystem is one image"
    for i in range(6):
        assert ctr.ok("run", "--rm", f"com{i}:1", "cat", "/mine") == f"{i}\n"
    (layer,) = json.loads(ctr.ok("image", "inspect", "other1:1"))[0]["RootFS"]["Layers"]
    assert (ctr.root / "layers" / layer.split(":")[1] / "etc" / "which").read_text() == "extra1\n"
    assert ctr("system", "check").code == 0
    ctr.ok("rm", *[f"c{i}" for i in range(6)])


# ----------------------------------------------------------------------------- the lock
def test_a_held_lock_fails_every_verb_in_bounded_time(ctr, busybox_image, tmp_path):
    """With the store lock held elsewhere and CTR_LOCK_TIMEOUT small, run, run -d, rm -f,
    commit and image import each give up after the timeout with one clear line, and leave no
    litter; released, all of them work."""
    from ctr.store.records import flock

    ctr.ok("run", "--name", "held", busybox_image, "true")
    ctr.env["CTR_LOCK_TIMEOUT"] = "0.5"
    verbs = [("run", busybox_image, "true"), ("run", "-d", busybox_image, "true"), ("rm", "-f", "held"),
             ("commit", "held", "locked:1"), ("image", "import", str(ctr.root.parent / "rootfs"), "locked2:1")]
    try:
        with flock(ctr.root / "lock"):
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=len(verbs)) as pool:
                results = list(pool.map(lambda a: ctr(*a), verbs))
            took = time.monotonic() - t0
        for args, r in zip(verbs, results):
            assert r.code in (1, 125), (args, r)
            errors = [ln for ln in r.err.splitlines() if ln.startswith("Error:")]
            assert len(errors) == 1 and "busy" in errors[0] and "Traceback" not in r.err, (args, r.err)
        assert took < 15, f"waiting on the lock took {took:.1f}s with a 0.5 s timeout"
    finally:
        del ctr.env["CTR_LOCK_TIMEOUT"]
    assert list((ctr.root / "tmp").iterdir()) == []
    assert [it["Names"][0] for it in json.loads(ctr.ok("ps", "-a", "--format", "json"))] == ["held"]
    ctr.ok("commit", "held", "unlocked:1")
    ctr.ok("rm", "-f", "held")
    assert_store_clean(ctr)


# ----------------------------------------------------------------------------- vm start/stop
def test_concurrent_vm_start_stop(ctr, busybox_image):
    """3 VMs (sandbox driver), each started twice at once and then stopped twice at once, with
    `vm ls` alongside: each boots once (the other start says it is running), each stops, no
    record is lost or torn."""
    if "No such command" in ctr("vm", "--help").err:
        pytest.skip("`ctr vm` has not landed")
    names = [f"v{i}" for i in range(3)]
    for n in names:
        ctr.ok("vm", "create", "-q", "--driver", "sandbox", "--image", busybox_image, n)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            ls = [pool.submit(ctr, "vm", "ls", "--format", "json") for _ in range(2)]
            starts = list(pool.map(lambda n: (n, ctr("vm", "start", n)), names * 2))
            assert all(f.result().code == 0 for f in ls)
        for n in names:
            rs = [r for m, r in starts if m == n]
            assert sorted(r.code for r in rs) in ([0, 0], [0, 1]), rs  # a second start: refused or waited
            for r in rs:
                assert "Traceback" not in r.err and "internal error" not in r.err, r.err
                if r.code:
                    assert "already" in r.err, r.err
        states = {v["Name"]: v["State"] for v in json.loads(ctr.ok("vm", "ls", "--format", "json"))}
        assert states == {n: "Running" for n in names}, states
        with ThreadPoolExecutor(max_workers=8) as pool:
            stops = list(pool.map(lambda n: ctr("vm", "stop", n), names * 2))
        assert all(r.code == 0 for r in stops), [r for r in stops if r.code]
        states = {v["Name"]: v["State"] for v in json.loads(ctr.ok("vm", "ls", "--format", "json"))}
        assert states == {n: "Off" for n in names}, states
    finally:
        ctr("vm", "rm", "-f", *names)
    assert json.loads(ctr.ok("vm", "ls", "--format", "json")) == []
