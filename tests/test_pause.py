"""`ctr pause` / `unpause` for real: a spinning workload's CPU time stands still while it is
paused (the cgroup v1 freezer) and moves again after; ps, inspect, exec, stop, kill and rm
treat a paused container as docker does. The microvm case is in tests/test_microvm_exec.py."""

from __future__ import annotations

import json
import os
import time

import pytest

from conftest import needs_root, process_running

FREEZER = "/sys/fs/cgroup/freezer"
needs_freezer = pytest.mark.skipif(not os.access(FREEZER, os.W_OK),
                                   reason=f"needs a writable cgroup v1 freezer at {FREEZER}")
SPIN = ["sh", "-c", "while :; do :; done"]


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return int(fields[11]) + int(fields[12])


def _spinner(ctr, cid: str) -> int:
    deadline = time.monotonic() + 20
    while (pid := process_running(cid, *SPIN)) is None:
        assert time.monotonic() < deadline, "the workload did not start"
        time.sleep(0.05)
    return pid


def _status(ctr, ref: str) -> tuple:
    s = json.loads(ctr.ok("inspect", ref))[0]["State"]
    return s["Status"], s["Running"], s["Paused"]


@needs_root
@needs_freezer
@pytest.mark.parametrize("driver", ["overlay", "sandbox"])
def test_pause_stops_the_workload_until_unpause(ctr, busybox_image, driver):
    iso = ["--isolation", "hyperv"] if driver == "sandbox" else []
    cid = ctr.ok("run", "-d", "--name", "p", *iso, "--driver", driver, busybox_image, *SPIN).strip()
    pid = _spinner(ctr, cid)
    assert ctr.ok("pause", "p") == "p\n"
    a = _cpu_ticks(pid)
    time.sleep(0.5)
    assert _cpu_ticks(pid) == a  # not one tick while paused
    assert _status(ctr, "p") == ("paused", True, True)
    assert ctr.ok("ps", "--format", "{{.Names}} {{.Status}}").split()[-1] == "(Paused)"
    assert ctr.ok("ps", "--filter", "status=paused", "-q") == cid[:12] + "\n"
    assert ctr.ok("ps", "--filter", "status=running", "-q") == ""
    assert json.loads(ctr.ok("ps", "--format", "json"))[0]["State"] == "paused"

    r = ctr("exec", "p", "true")
    assert r.code == 125 and "is paused" in r.err and "ctr unpause p" in r.err, r
    r = ctr("pause", "p")
    assert r.code == 1 and r.err.count("Error:") == 1 and "already paused" in r.err, r

    assert ctr.ok("unpause", "p") == "p\n"
    a = _cpu_ticks(pid)
    time.sleep(0.5)
    assert _cpu_ticks(pid) > a  # running again
    assert _status(ctr, "p") == ("running", True, False)
    r = ctr("unpause", "p")
    assert r.code == 1 and "is not paused" in r.err, r


@needs_root
@needs_freezer
def test_stop_kill_and_rm_reach_a_paused_container(ctr, busybox_image):
    """As docker's: a signal sent to a paused container thaws it so it takes the signal (a
    frozen task acts on none, SIGKILL included); the freezer group goes with the container."""
    for name in ("s", "k", "r"):
        ctr.ok("run", "-d", "--name", name, busybox_image, *SPIN)
        ctr.ok("pause", name)
    t = time.monotonic()
    assert ctr.ok("stop", "-t", "20", "s") == "s\n"
    assert time.monotonic() - t < 10  # SIGTERM taken at once, not SIGKILL after the grace
    assert ctr.ok("inspect", "-f", "{{.State.ExitCode}}", "s") == "143\n"
    assert ctr.ok("kill", "k") == "k\n"
    assert ctr.ok("wait", "k") == "137\n"
    cids = {n: json.loads(ctr.ok("inspect", n))[0]["Id"] for n in ("s", "r")}
    assert ctr.ok("rm", "-f", "r") == "r\n"
    assert not os.path.exists(os.path.join(FREEZER, "ctr", cids["r"]))
    ctr.ok("rm", "s", "k")
    assert not os.path.exists(os.path.join(FREEZER, "ctr", cids["s"]))


def test_pause_refuses_what_is_not_running(ctr, busybox_image):
    ctr.ok("create", "--name", "c", busybox_image, "true")
    for verb in ("pause", "unpause"):
        r = ctr(verb, "c", "nosuch")
        assert r.code == 1 and r.err.count("Error:") == 2 and r.out == "", r
        assert "container c is not" in r.err and "no such container: nosuch" in r.err, r
    r = ctr("pause")
    assert r.code == 2 and "requires at least one container" in r.err, r


@needs_root
@pytest.mark.parametrize("version", [1, 2])
def test_freezer_hierarchies(monkeypatch, version):
    """Both ways of freezing, each on the hierarchy of its version this host mounts (the CLI
    tests above use the one ctr picks: v1 where there is one), on a real spinning process."""
    import secrets
    import subprocess

    from ctr import cgroups, freezer

    found = cgroups.detect()
    h = next((freezer.Hierarchy(1, os.path.join(x.mount, x.own)) for x in found
              if x.version == 1 and "freezer" in x.controllers and x.writable), None) if version == 1 else \
        next((freezer.Hierarchy(2, x.mount) for x in found if x.version == 2 and x.writable), None)
    if h is None:
        pytest.skip(f"this host has no writable cgroup v{version} hierarchy to freeze in")
    monkeypatch.setattr(freezer, "_found", [h])
    cid = secrets.token_hex(32)
    spinner = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        freezer.freeze(cid, lambda: [spinner.pid])
        assert freezer.is_frozen(cid)
        with open(os.path.join(freezer.group(cid), "cgroup.procs")) as f:
            assert f.read().split() == [str(spinner.pid)]
        a = _cpu_ticks(spinner.pid)
        time.sleep(0.4)
        assert _cpu_ticks(spinner.pid) == a
        freezer.thaw(cid)
        assert not freezer.is_frozen(cid)
        time.sleep(0.4)
        assert _cpu_ticks(spinner.pid) > a
    finally:
        freezer.thaw(cid)
        spinner.kill()
        spinner.wait()
        freezer.remove(cid)
    assert not os.path.exists(freezer.group(cid))
