"""Many ctr processes on one store at once: 20 concurrent `run --rm` + `ps` + `rm`, no lost
or corrupt record, no duplicate auto-generated names, and an empty store at the end."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
