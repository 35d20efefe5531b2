"""`ctr stats`: what running containers use, read from the host's /proc for real workloads
(a busy loop, a sleeper, a sandbox with a memory cap); the microvm case is in
tests/test_microvm_exec.py (its booted container)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from conftest import needs_root
from ctr.output import human_size

# writes 4 MiB to the writable layer from the shell itself (printf is a builtin: the bytes are
# the long-lived shell's own), then spins
BUSY = ["sh", "-c", "printf '%4194304s' x > /big; while :; do :; done"]


def _stats(ctr, *args: str) -> list[dict]:
    return json.loads(ctr.ok("stats", "--no-stream", "--format", "json", *args))


def _host_memory() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))


def _wait_written(ctr, ref: str, n: int) -> dict:
    deadline = time.monotonic() + 30
    while True:
        (row,) = _stats(ctr, ref)
        if row["BlockWriteBytes"] >= n:
            return row
        assert time.monotonic() < deadline, row
        time.sleep(0.1)


@needs_root
def test_process_containers(ctr, busybox_image):
    busy = ctr.ok("run", "-d", "--name", "busy", busybox_image, *BUSY).strip()
    ctr.ok("run", "-d", "--name", "idle", busybox_image, "sleep", "600")
    _wait_written(ctr, "busy", 4 << 20)
    rows = {r["Name"]: r for r in _stats(ctr)}  # every running container
    assert set(rows) == {"busy", "idle"}
    b, i = rows["busy"], rows["idle"]
    assert b["ID"] == busy[:12] and b["CPUPercent"] > 5 > i["CPUPercent"], (b, i)
    assert b["CPUPerc"] == f"{b['CPUPercent']:.2f}%"
    for r in (b, i):
        assert 0 < r["MemUsageBytes"] < 64 << 20 and r["MemLimitBytes"] == _host_memory(), r
        assert (r["Tasks"], r["PIDs"], r["NetIO"], r["NetRxBytes"]) == (1, "1", "--", None), r  # the host's network
    assert b["BlockWriteBytes"] >= 4 << 20, b
    assert b["BlockIO"] == f"{human_size(b['BlockReadBytes'])} / {human_size(b['BlockWriteBytes'])}"
    table = ctr.ok("stats", "--no-stream", "--no-trunc", "busy").splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "NAME", "CPU", "%", "MEM", "USAGE", "/", "LIMIT", "MEM", "%",
                                "NET", "I/O", "BLOCK", "I/O", "PIDS"]
    assert len(table) == 2 and table[1].split()[:2] == [busy, "busy"]
    out = ctr.ok("stats", "--no-stream", "--format", "table {{.Name}}\t{{.PIDs}}", "idle")
    assert out.split() == ["NAME", "PIDS", "idle", "1"]

    ctr.ok("stop", "-t", "0", "idle")
    assert [r["Name"] for r in _stats(ctr)] == ["busy"]  # running ones by default
    rows = {r["Name"]: r for r in _stats(ctr, "-a")}
    assert set(rows) == {"busy", "idle"}
    assert (rows["idle"]["MemUsage"], rows["idle"]["NetIO"], rows["idle"]["PIDs"]) == ("0B / 0B", "0B / 0B", "0")
    assert _stats(ctr, "idle")[0]["Tasks"] == 0  # named: shown, stopped or not


@needs_root
def test_sandbox_container(ctr, busybox_image):
    """A sandbox: its memory cap is the limit, its own network (loopback aside) is counted,
    ctr's relay outside it is not one of its tasks."""
    ctr.ok("run", "-d", "--name", "sb", "--isolation", "hyperv", "--driver", "sandbox", "--memory", "64m",
           busybox_image, *BUSY)
    row = _wait_written(ctr, "sb", 4 << 20)
    assert row["MemLimitBytes"] == 64 << 20 and row["MemUsage"].endswith(" / 64MiB"), row
    assert 0 < row["MemUsageBytes"] < 64 << 20
    assert (row["NetIO"], row["NetRxBytes"], row["NetTxBytes"]) == ("0B / 0B", 0, 0), row
    top = ctr.ok("top", "sb").splitlines()[1:]
    assert row["Tasks"] == len(top), (row, top)


@needs_root
def test_streams_until_interrupted(ctr, busybox_image):
    ctr.ok("run", "-d", "--name", "s", busybox_image, "sleep", "600")
    p = subprocess.Popen([sys.executable, "-m", "ctr", "stats", "-i", "0.2", "--format", "{{.Name}} {{.PIDs}}"],
                         env=ctr.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        lines = [p.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        assert lines == [b"s 1\n"] * 3, (lines, p.stderr.read() if p.poll() is not None else b"")  # type: ignore[union-attr]
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        assert p.returncode == 130 and err == b"", err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_bad_input(ctr):
    for args, code, what in [(("nosuch",), 1, "no such container: nosuch"),
                             (("-i", "0"), 2, "--interval must be more than 0"),
                             (("--format", "xml"), 2, "unknown format 'xml'")]:
        r = ctr("stats", "--no-stream", *args)
        assert r.code == code and r.out == "" and r.err.count("Error:") == 1 and what in r.err, (args, r)
    assert ctr.ok("stats", "--no-stream").split() == ["CONTAINER", "ID", "NAME", "CPU", "%", "MEM", "USAGE", "/",
                                                      "LIMIT", "MEM", "%", "NET", "I/O", "BLOCK", "I/O", "PIDS"]
