"""`ctr exec` into a running hyperv container on the `microvm` driver: the command runs in the
guest (its kernel, its PIDs, the container's 9p root), through the exec slots its init serves.

One detached container serves every check that needs a guest (one boot under TCG); it is
removed with `ctr rm -f ID` however the tests end. Needs what tests/test_microvm.py needs
(root, qemu, a static busybox, a kernel in $CTR_TEST_KERNEL_DIR: conftest.qemu_missing); skips
with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Ctr, import_kernel, make_rootfs

pytestmark = pytest.mark.qemu


# ============================================================================ no boot
def test_one_exec_shell_serves_both_inits():
    """The container init and `ctr vm`'s agent share the shell that starts a command, relays its
    output and delivers signals; the container init's cache key follows it."""
    from ctr.qemu import initramfs
    from ctr.qemu.guest_init import INIT_SCRIPT
    from ctr.vm import agent

    assert agent.EXEC_SH in INIT_SCRIPT and agent.EXEC_SH in agent.VM_INIT
    for script in (INIT_SCRIPT, agent.VM_INIT):
        assert script.count("nsenter -r") == 1 and script.count("mkfifo $1.out") == 1


def test_initramfs_is_rebuilt_when_init_changes(tmp_path, monkeypatch):
    from test_qemu_initramfs import fake_kernel, fake_static_busybox

    from ctr.qemu import initramfs

    kernel = fake_kernel(tmp_path)
    bb = fake_static_busybox(tmp_path / "busybox")
    first = initramfs.base_initramfs(kernel, tmp_path / "cache", busybox=bb)
    assert initramfs.base_initramfs(kernel, tmp_path / "cache", busybox=bb).path == first.path  # cached
    monkeypatch.setattr(initramfs, "INIT_SCRIPT", initramfs.INIT_SCRIPT + "# changed\n")
    second = initramfs.base_initramfs(kernel, tmp_path / "cache", busybox=bb)
    assert second.path != first.path and b"# changed" in second.path.read_bytes()


def test_exec_request_carries_user_and_stdin():
    from ctr.vm import agent

    import base64

    token = "ab" * 16
    req = base64.b64decode(agent.exec_request(["id"], {}, "/", token, user=(65534, 65534), stdin=True)[5:])
    assert b"X_USER='-S 65534 -G 65534'" in req and b"X_IN=1" in req
    req = base64.b64decode(agent.exec_request(["id"], {}, "/", token, user=(0, 0))[5:])
    assert b"X_USER=''" in req and b"X_IN=\n" in req
    assert agent.port_names(2, control=False, stdin=True) == [
        "ctr_0_ctl", "ctr_0_out", "ctr_0_err", "ctr_0_in", "ctr_1_ctl", "ctr_1_out", "ctr_1_err", "ctr_1_in"]


# ============================================================================ one boot
@pytest.fixture(scope="module")
def box(tmp_path_factory, qemu_kernel):
    """A store with the test kernel and the busybox image, and one detached microvm container
    (`ex`: env FROM_RUN=1, workdir /srv, 2 GiB: two exec slots) for every check (skipped, saying why, where qemu
    cannot boot a guest)."""
    base = tmp_path_factory.mktemp("microvm-exec")
    ctr = Ctr(base / "root", base / "config.yaml")
    import_kernel(ctr)
    rootfs = make_rootfs(base / "rootfs")
    for applet in ("ps", "grep", "tr"):
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "srv").mkdir()
    (rootfs / "srv" / "from-image").write_text("image data\n")
    ctr.ok("image", "import", str(rootfs), "bb")
    cid = ctr.ok("run", "-d", "--isolation", "hyperv", "--driver", "microvm", "--name", "ex",
                 "--memory", "2g", "-e", "FROM_RUN=1", "-w", "/srv", "bb", "sh", "-c", "echo started; exec sleep 600").strip()
    try:
        yield {"ctr": ctr, "id": cid, "kernel": qemu_kernel}
    finally:
        ctr("rm", "-f", cid)
        ctr.cleanup()


def _exec(box, *args: str, **kw):
    return box["ctr"]("exec", *args, **kw)


def test_exec_runs_in_the_guest(box):
    """The first exec right after `run -d` waits for the guest to boot; the command sees the
    guest's kernel and processes, the container's files, env, workdir, hostname and users."""
    ctr, cid = box["ctr"], box["id"]
    r = _exec(box, "ex", "sh", "-c", "echo out; echo err >&2; uname -r; hostname; pwd; cat from-image; "
              "echo FROM_RUN=$FROM_RUN; tr '\\0' ' ' </proc/1/cmdline; echo")
    assert r.code == 0, r
    assert r.err == "err\n"
    assert r.out.splitlines() == ["out", box["kernel"].release, cid[:12], "/srv", "image data", "FROM_RUN=1",
                                  "/bin/sh /init "]
    assert box["kernel"].release != os.uname().release
    # -e, -w, -u as for process containers (names from the image's /etc/passwd)
    r = _exec(box, "-e", "FOO=bar", "-e", "FROM_RUN=2", "-w", "/root", "-u", "nobody", "ex",
              "sh", "-c", 'echo "$FOO $FROM_RUN $(pwd) $(id -u):$(id -g)"')
    assert (r.code, r.out) == (0, "bar 2 /root 65534:65534\n"), r
    # writes land in the container's writable layer (the guest's 9p root is its merged view)
    assert _exec(box, "ex", "sh", "-c", "echo from-exec > /made-by-exec").code == 0
    assert "A /made-by-exec" in ctr.ok("diff", "ex").splitlines()
    rec = json.loads(ctr.ok("inspect", "ex"))[0]
    assert "microvm" in json.dumps(rec)
    r = _exec(box, "-u", "nosuchuser", "ex", "true")
    assert r.code == 125 and r.err.count("Error:") == 1 and "nosuchuser" in r.err, r


def test_exit_codes_and_stdin(box):
    assert _exec(box, "ex", "sh", "-c", "exit 3").code == 3
    r = _exec(box, "ex", "no-such-command")
    assert r.code == 127 and "no-such-command" in r.err, r
    assert _exec(box, "ex", "/srv/from-image").code == 126
    assert _exec(box, "ex", "sh", "-c", "kill -TERM $$").code == 143
    r = _exec(box, "-i", "ex", "sh", "-c", "cat; echo end", input="piped\nlines\n")
    assert (r.code, r.out) == (0, "piped\nlines\nend\n"), r
    r = _exec(box, "ex", "cat", input="ignored\n")  # stdin is /dev/null without -i
    assert (r.code, r.out) == (0, ""), r


def test_tty_is_refused_with_a_hint(box):
    r = _exec(box, "-t", "ex", "true")
    assert r.code == 125 and r.err.count("Error:") == 1 and "not supported on the microvm driver" in r.err, r
    assert "Hint:" in r.err


def test_stats_shows_the_vm_as_the_host_pays_for_it(box):
    """`ctr stats` of a microvm container: its qemu's memory against the VM's size; its tasks
    and network are the guest's, not shown."""
    (row,) = json.loads(box["ctr"].ok("stats", "--no-stream", "--format", "json", "ex"))
    assert row["MemLimitBytes"] == 2 << 30 and row["MemUsage"].endswith(" / 2GiB"), row
    assert 16 << 20 < row["MemUsageBytes"] < 4 << 30, row  # what qemu has touched, not the whole VM
    assert (row["PIDs"], row["Tasks"], row["NetIO"]) == ("--", None, "--"), row


def test_pause_freezes_the_vm(box):
    """pause freezes the VM's qemu (the freezer, as any container's processes): it takes no
    CPU, exec is refused; after unpause the guest carries on where it stood."""
    ctr = box["ctr"]
    spec = json.loads((ctr.root / "containers" / box["id"] / "microvm.json").read_text())
    qemu = json.loads((Path(spec["run_dir"]) / "qemu.pid").read_text())["pid"]

    def ticks() -> int:
        fields = Path(f"/proc/{qemu}/stat").read_bytes().rpartition(b")")[2].split()
        return int(fields[11]) + int(fields[12])

    assert ctr.ok("pause", "ex") == "ex\n"
    try:
        a = ticks()
        time.sleep(0.5)
        assert ticks() == a
        r = _exec(box, "ex", "true")
        assert r.code == 125 and "is paused" in r.err, r
    finally:
        ctr.ok("unpause", "ex")
    assert _exec(box, "ex", "echo", "back").out == "back\n"


def _popen_exec(box, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ctr", "exec", *args], env=box["ctr"].env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_line(p: subprocess.Popen, want: bytes) -> None:
    line = p.stdout.readline()  # type: ignore[union-attr]
    assert line == want, (line, p.stderr.read() if p.poll() is not None else b"")  # type: ignore[union-attr]


def test_signals_reach_the_command(box):
    """SIGTERM and ^C (SIGINT) sent to `ctr exec` go to the command in the guest."""
    trap = _popen_exec(box, "ex", "sh", "-c", "trap 'echo got-term; exit 7' TERM; echo ready; "
                       "while :; do sleep 0.1; done")
    sleeper = _popen_exec(box, "ex", "sh", "-c", "echo ready; exec sleep 600")
    try:
        _wait_line(trap, b"ready\n")
        _wait_line(sleeper, b"ready\n")
        trap.send_signal(signal.SIGTERM)
        sleeper.send_signal(signal.SIGINT)
        out, err = trap.communicate(timeout=60)
        assert (trap.returncode, out) == (7, b"got-term\n"), err
        sleeper.communicate(timeout=60)
        assert sleeper.returncode == 130
    finally:
        for p in (trap, sleeper):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_execs_run_at_once(box):
    """As many execs as the VM has slots (2 for `ex`'s 2 GiB) meet at a barrier in the guest:
    each only ends once all have started; one more waits for a free slot."""
    from ctr.drivers import microvm

    n = microvm.exec_slots(2048)
    assert n == 2
    script = ("touch /tmp/at-{i}; n=0; while [ $(ls /tmp | grep -c at-) -lt {n} ]; do "
              "n=$((n + 1)); [ $n -gt 600 ] && exit 9; sleep 0.1; done; echo {i}")
    ps = [_popen_exec(box, "ex", "sh", "-c", script.format(i=i, n=n)) for i in range(n)]
    ps.append(_popen_exec(box, "ex", "echo", "waited"))
    results = [p.communicate(timeout=120) for p in ps]
    got = [(p.returncode, out) for p, (out, _) in zip(ps, results)]
    assert got == [(0, f"{i}\n".encode()) for i in range(n)] + [(0, b"waited\n")], [e for _, e in results]


def test_a_client_accepted_as_the_last_one_leaves_is_served(box):
    """A host queued on a slot's sockets while the previous exec ends is accepted in the same
    breath as that one goes, so the guest's reader never sees the end of file between them:
    it must still be served (the host's `hello` asks for a fresh `ready`; without it the
    guest waited for a request and the host for `ready`, every time)."""
    import threading

    from ctr.vm import agent

    assert _exec(box, "ex", "true").code == 0  # the VM is up, its sockets bound
    spec = json.loads((box["ctr"].root / "containers" / box["id"] / "microvm.json").read_text())
    run_dir = Path(spec["run_dir"])
    for k in range(3):
        first: list = []
        a = threading.Thread(target=lambda: first.append(agent.run_command(
            run_dir, ["sh", "-c", "sleep 0.3; echo a"], {}, "/", slots=1, stdout=None, stderr=None)))
        a.start()
        time.sleep(0.1)  # `a` holds slot 0; the next client queues behind it (no flock: forced)
        socks = [agent.connect(run_dir / f"{name}.sock", 10) for name in agent.slot_ports(0)]
        try:
            a.join(30)
            assert first == [0]
            ctl, out, err = socks
            ctl.sendall(agent.HELLO)
            lines = agent.Lines(ctl)
            agent._await_ready(lines, lambda: True, 10)
            token = f"{k:032x}"
            ctl.sendall(agent.exec_request(["echo", f"served {k}"], {}, "/", token))
            got: list[bytes] = []
            code = agent._stream(ctl, lines, {out: agent.StreamEnd(token, got.append),
                                              err: agent.StreamEnd(token, lambda data: None)}, lambda: True, 10)
            assert (code, b"".join(got)) == (0, f"served {k}\n".encode())
        finally:
            for s_ in socks:
                s_.close()


def test_detached_exec_holds_a_slot_in_the_background(box):
    """exec -d returns 0, printing nothing, once the guest started the command; it runs on
    (its output discarded) in one slot, the other stays free; a failure to start is reported."""
    ctr = box["ctr"]
    r = _exec(box, "-d", "ex", "sh", "-c", "echo lost; echo $$ > /tmp/dpid; sleep 1; echo done > /tmp/detached; "
                                         "exec sleep 601")
    assert (r.code, r.out, r.err) == (0, "", ""), r
    deadline = time.monotonic() + 60
    while _exec(box, "ex", "cat", "/tmp/detached").out != "done\n":
        assert time.monotonic() < deadline, "the detached command did not run on"
        time.sleep(0.2)
    assert "sleep 601" in _exec(box, "ex", "ps").out
    r = _exec(box, "-d", "-t", "ex", "true")
    assert r.code == 125 and r.err.count("Error:") == 1 and "exec -d" in r.err, r
    assert ctr.ok("exec", "ex", "sh", "-c", "kill $(cat /tmp/dpid)") == ""  # frees its slot


def test_cp_reaches_the_guests_root(box, tmp_path):
    """cp into a running microvm container writes the merged tree the guest has over 9p: the
    guest sees the file at once; and cp reads back what the guest wrote there."""
    ctr = box["ctr"]
    (tmp_path / "f").write_text("from host\n")
    ctr.ok("cp", str(tmp_path / "f"), "ex:/srv/copied")
    assert _exec(box, "ex", "cat", "/srv/copied").out == "from host\n"
    assert _exec(box, "ex", "sh", "-c", "echo from guest > /srv/written").code == 0
    ctr.ok("cp", "ex:/srv/written", str(tmp_path / "back"))
    assert (tmp_path / "back").read_text() == "from guest\n"


def test_read_only_is_refused_with_a_hint(box):
    r = box["ctr"]("run", "--rm", "--read-only", "--isolation", "hyperv", "--driver", "microvm", "bb", "true")
    assert r.code == 125 and r.err.count("Error:") == 1 and "--read-only is not supported on the microvm" in r.err
    assert "--driver sandbox" in r.err


def test_a_small_vm_has_no_slots(box):
    """Every slot costs guest memory: below 256 MB there is none, and exec says how to get one."""
    from ctr.drivers import microvm

    assert [microvm.exec_slots(mb) for mb in (128, 255, 256, 1024, 2047, 2048, 4096)] == [0, 0, 1, 1, 1, 2, 2]
    ctr = box["ctr"]
    cid = ctr.ok("run", "-d", "--isolation", "hyperv", "--driver", "microvm", "--memory", "128m",
                 "bb", "sleep", "600").strip()
    try:
        r = ctr("exec", cid, "true")
        assert r.code == 125 and r.err.count("Error:") == 1 and "at least 256 MB" in r.err, r
        assert "--memory 256m" in r.err
    finally:
        ctr("rm", "-f", cid)


def test_not_running_is_the_usual_error(box):
    """An exec running when the container stops ends with it (137, as for a process container);
    one into a stopped container gets the error every driver gives. Runs last: stops `ex`."""
    ctr = box["ctr"]
    session = _popen_exec(box, "ex", "sh", "-c", "echo ready; exec sleep 600")
    try:
        _wait_line(session, b"ready\n")
        ctr.ok("stop", "-t", "30", "ex")
        session.communicate(timeout=60)
        assert session.returncode == 137
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    r = _exec(box, "ex", "true")
    assert r.code == 125 and r.err.count("Error:") == 1 and "is not running" in r.err, r
