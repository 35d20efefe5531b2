"""Container lifecycle without a daemon, for real, on both process drivers: run -d under a
monitor, ps, logs (-t, -n, -f), exec, stop, kill, start, wait, rm; a monitor killed with
SIGKILL is reconciled; errors are one line. Every process a test starts is killed by pid at
teardown, whether the test passed or not."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import needs_root, process_running

pytestmark = [needs_root]

HEX64 = re.compile(r"^[0-9a-f]{64}$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")
DRIVERS = ["overlay", "copy"]


def start_time(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return None if fields[0] == b"Z" else int(fields[19])


def alive(pid: int | None) -> bool:
    return bool(pid) and start_time(pid) is not None


def container_pids(cid: str) -> list[int]:
    """Processes whose root mount is this container's (as the monitor finds them)."""
    from ctr.monitor import container_processes

    return container_processes(cid)


def assert_one_error(r, *needles: str) -> None:
    errs = [ln for ln in r.err.splitlines() if ln.startswith("Error:")]
    assert len(errs) == 1, r.err
    assert "Traceback" not in r.err, r.err
    for n in needles:
        assert n in errs[0], f"{n!r} not in {errs[0]!r}"


class Life:
    """The `ctr` runner plus the pids of every workload and monitor it started, so teardown
    can kill by pid what `rm -f` did not."""

    def __init__(self, ctr, image: str, driver: str):
        self.ctr, self.image, self.driver = ctr, image, driver
        self.pids: dict[int, int | None] = {}

    def __call__(self, *args, **kw):
        return self.ctr(*args, **kw)

    def ok(self, *args, **kw) -> str:
        return self.ctr.ok(*args, **kw)

    def record(self, ref: str) -> dict:
        rec = json.loads(self.ok("inspect", ref))[0]
        p = rec["Process"]  # the recorded processes, kept after the exit
        self.track({"pid": p["Pid"], "pid_start": p["PidStart"], "monitor_pid": p["MonitorPid"],
                    "monitor_start": p["MonitorStart"]})
        return rec

    def track(self, rec: dict) -> None:
        for key, st in (("pid", "pid_start"), ("monitor_pid", "monitor_start")):
            if rec.get(key):
                self.pids.setdefault(rec[key], rec.get(st))

    def run_d(self, *args: str, name: str | None = None) -> str:
        """`run -d` with this test's driver; returns the id and tracks its processes."""
        extra = ["--name", name] if name else []
        out = self.ok("run", "-d", "--driver", self.driver, *extra, self.image, *args)
        cid = out.strip()
        assert HEX64.match(cid), out
        self.record(cid)
        return cid

    def wait_for(self, predicate, timeout: float = 20, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = predicate()
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def state(self, ref: str) -> str:
        return self.ok("inspect", "--format", "{{.State.Status}}", ref).strip()

    def kill_all(self) -> None:
        for pid, st in self.pids.items():
            if st is None or start_time(pid) == st:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(params=DRIVERS)
def life(request, ctr, busybox_image):
    lf = Life(ctr, busybox_image, request.param)
    try:
        yield lf
    finally:
        try:
            for p in (ctr.root / "containers").iterdir():
                try:
                    lf.track(json.loads((p / "container.json").read_text()))
                except (OSError, ValueError):
                    pass
            ctr.cleanup()
        finally:
            lf.kill_all()


# ----------------------------------------------------------------------------- the round trip
def test_detach_round_trip(life):
    t = time.monotonic()
    cid = life.run_d("sh", "-c", 'echo hello; echo oops >&2; echo data > /root/made; '
                     'i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.1; done', name="web")
    assert time.monotonic() - t < 10
    rec = life.record("web")
    assert rec["State"]["Status"] == "running" and rec["Id"] == cid
    assert alive(rec["Process"]["Pid"]) and alive(rec["Process"]["MonitorPid"])
    assert life.ok("ps", "-q", "--no-trunc").split() == [cid]
    ps = json.loads(life.ok("ps", "--format", "json"))
    assert ps[0]["State"] == "running"

    # logs: stdout and stderr apart, -t, -n, the json-lines file itself
    life.wait_for(lambda: "tick 3" in life.ok("logs", "web"), what="tick 3 in the log")
    r = life("logs", "web", check=True)
    assert r.out.startswith("hello\ntick 1\n") and r.err == "oops\n"
    stamped = life.ok("logs", "-t", "web").splitlines()
    assert all(STAMP.match(ln) for ln in stamped), stamped[:3]
    assert [ln.split(" ", 1)[1] for ln in stamped[:2]] == ["hello", "tick 1"]
    tail = life.ok("logs", "-n", "2", "web").splitlines()
    assert len(tail) == 2 and all(ln.startswith("tick ") for ln in tail)
    assert int(tail[1].split()[1]) == int(tail[0].split()[1]) + 1
    assert life.ok("logs", "--tail", "0", "web") == ""
    entries = [json.loads(ln) for ln in (life.ctr.root / "containers" / cid / "log.jsonl").read_text().splitlines()]
    assert entries[0]["log"] == "hello\n" and entries[0]["stream"] == "stdout"
    assert {"log": "oops\n", "stream": "stderr"}.items() <= next(e for e in entries if e["stream"] == "stderr").items()
    assert set(entries[0]) == {"log", "stream", "time"}

    # exec: sees the container's files, writes land in its diff, codes pass through
    assert life.ok("exec", "web", "cat", "/root/made") == "data\n"
    assert life.ok("exec", "web", "sh", "-c", "echo from-exec > /root/exec-made") == ""
    assert "A /root/exec-made" in life.ok("diff", "web").splitlines()
    assert life("exec", "web", "sh", "-c", "exit 3").code == 3
    r = life("exec", "web", "no-such-command")
    assert r.code == 127
    assert_one_error(r, "no-such-command")
    assert life("exec", "web", "/etc/passwd").code == 126
    assert life.ok("exec", "-e", "FOO=bar", "-w", "/root", "web", "sh", "-c", 'echo "$FOO $(pwd)"') == "bar /root\n"
    env_file = life.ctr.root.parent / "exec.env"
    env_file.write_text("# for exec\nFROM_FILE=yes\nFOO=file\n")
    assert life.ok("exec", "--env-file", str(env_file), "-e", "FOO=flag", "web", "sh", "-c",
                   'echo "$FROM_FILE $FOO"') == "yes flag\n"  # -e wins, as for run
    assert life.ok("exec", "-u", "nobody", "web", "id", "-u") == "65534\n"
    assert life.ok("exec", "-i", "web", "cat", input="piped\n") == "piped\n"
    assert life.ok("exec", "web", "cat", input="ignored\n") == ""  # stdin is /dev/null without -i
    # exec -d: back at once, printing nothing; the command runs on, its output discarded
    assert life.ok("exec", "-d", "web", "sh", "-c", "echo lost; echo lost >&2; exec sleep 101") == ""
    life.wait_for(lambda: process_running(cid, "sleep", "101"), what="the detached sleep in the container")
    assert life("exec", "-d", "web", "no-such-command").code == 127
    r = life("exec", "-d", "-i", "web", "true")
    assert r.code == 125
    assert_one_error(r, "exec -d takes neither -i nor -t")
    assert "lost" not in life.ok("logs", "web")  # not the container's output either

    # stop: SIGTERM is enough for sh; 143 recorded; the monitor is gone and nothing is left
    assert life.ok("stop", "web") == "web\n"
    rec = life.record("web")
    assert rec["State"]["Status"] == "exited" and rec["State"]["ExitCode"] == 143
    life.wait_for(lambda: not alive(rec["Process"]["MonitorPid"]), what="the monitor to exit")
    assert container_pids(cid) == [] and not alive(rec["Process"]["Pid"])
    assert life.ok("stop", "web") == "web\n"  # stopping a stopped container is fine
    r = life("exec", "web", "true")
    assert r.code == 125
    assert_one_error(r, "is not running")

    # start: the same writable layer, the record goes exited -> running, the log grows
    assert life.ok("start", "web") == "web\n"
    rec2 = life.record("web")
    assert rec2["State"]["Status"] == "running" and rec2["State"]["ExitCode"] == 0 and rec2["Process"]["Pid"] != rec["Process"]["Pid"]
    assert life.ok("exec", "web", "cat", "/root/exec-made") == "from-exec\n"
    life.wait_for(lambda: life.ok("logs", "web").count("hello\n") == 2, what="a second hello")
    assert life.ok("start", "web") == "web\n"  # already running: left alone
    assert life.record("web")["Process"]["Pid"] == rec2["Process"]["Pid"]

    # wait prints the code once it stops
    waiter = subprocess.Popen([sys.executable, "-m", "ctr", "wait", "web"], env=life.ctr.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        assert waiter.poll() is None
        assert life.ok("kill", "-s", "HUP", "web") == "web\n"
        out, err = waiter.communicate(timeout=20)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert (waiter.returncode, out) == (0, "129\n"), err
    assert life.ok("wait", "web") == "129\n"

    # rm removes everything
    assert life.ok("rm", "web") == "web\n"
    assert not (life.ctr.root / "containers" / cid).exists()
    assert container_pids(cid) == []


def test_create_then_start(life):
    """docker create: the container is made (state created, nothing runs) and its id printed;
    start -a runs it in the foreground, start detached; --rm goes with it after its run."""
    cid = life.ok("create", "--name", "made", "--driver", life.driver, life.image, "sh", "-c", "echo hello; exit 3").strip()
    assert HEX64.match(cid)
    rec = life.record("made")
    assert rec["State"]["Status"] == "created" and rec["State"]["Pid"] == 0 and container_pids(cid) == []
    r = life("start", "-a", "made")
    assert (r.code, r.out) == (3, "hello\n")
    assert life.state("made") == "exited"
    rm_id = life.ok("create", "--rm", "--driver", life.driver, life.image, "sh", "-c", "sleep 0.2").strip()
    assert life.ok("start", rm_id) == rm_id + "\n"
    life.wait_for(lambda: not (life.ctr.root / "containers" / rm_id).exists(), what="the --rm container to go")
    r = life("create", "no-such-image")
    assert r.code == 125
    assert_one_error(r, "no such image")
    assert life("create", "-d", life.image, "true").code == 2  # run's options, -d aside
    assert sorted(p.name for p in (life.ctr.root / "containers").iterdir()) == [cid]


def test_logs_since_until(life):
    """--since/--until: a time (the log's own -t stamps work), a duration ago or a Unix time;
    -f with an --until already past returns at once."""
    life.run_d("sh", "-c", "echo early; sleep 1.2; echo late; exec sleep 100", name="lg")
    life.wait_for(lambda: "late" in life.ok("logs", "lg"), what="the second line")
    late = life.ok("logs", "-t", "lg").splitlines()[1].split(" ")[0]
    assert life.ok("logs", "--since", late, "lg") == "late\n"
    assert life.ok("logs", "--until", late, "lg") == "early\n"
    assert life.ok("logs", "--since", "1h", "lg") == "early\nlate\n"
    assert life.ok("logs", "--until", "1h", "lg") == ""
    assert life.ok("logs", "--since", "4000000000", "lg") == ""
    assert life.ok("logs", "-n", "1", "--until", late, "lg") == "early\n"
    assert life.ok("logs", "-f", "--until", late, "lg", timeout=30) == "early\n"
    r = life("logs", "--since", "yesterday", "lg")
    assert r.code == 2
    assert_one_error(r, "invalid since value")
    life.ok("stop", "-t", "0", "lg")


def test_top(life):
    """docker's top: ps -ef's header and the container's rows only; ps options passed on."""
    cid = life.run_d("sh", "-c", "sleep 101 & exec sleep 102", name="tp")
    life.wait_for(lambda: process_running(cid, "sleep", "101"), what="the background sleep")
    lines = life.ok("top", "tp").splitlines()
    assert lines[0].split()[:3] == ["UID", "PID", "PPID"] and lines[0].split()[-1] == "CMD"
    assert sorted(ln.split(None, 7)[7] for ln in lines[1:]) == ["sleep 101", "sleep 102"]
    assert {int(ln.split()[1]) for ln in lines[1:]} == set(container_pids(cid))
    rows = life.ok("top", "tp", "-o", "pid,comm").splitlines()
    assert rows[0].split() == ["PID", "COMMAND"] and sorted(r.split()[1] for r in rows[1:]) == ["sleep", "sleep"]
    r = life("top", "tp", "-o", "comm")
    assert r.code == 2
    assert_one_error(r, "no PID column")
    life.ok("stop", "-t", "0", "tp")
    r = life("top", "tp")
    assert r.code == 1
    assert_one_error(r, "is not running")


def test_restart(life):
    """stop, then start over the same writable layer; a stopped container is just started; a
    --rm container is refused (stopping removes it) and left running."""
    life.run_d("sh", "-c", "echo run >> /root/runs; exec sleep 100", name="r")
    first = life.record("r")["Process"]["Pid"]
    assert life.ok("restart", "-t", "0", "r") == "r\n"
    rec = life.record("r")
    assert rec["State"]["Status"] == "running" and rec["Process"]["Pid"] != first
    assert not alive(first)
    assert life.ok("exec", "r", "cat", "/root/runs") == "run\nrun\n"
    life.ok("stop", "-t", "0", "r")
    assert life.ok("restart", "r") == "r\n"
    assert life.state("r") == "running"
    life.ok("stop", "-t", "0", "r")
    cid = life.ok("run", "-d", "--rm", "--driver", life.driver, life.image, "sleep", "100").strip()
    life.record(cid)
    r = life("restart", cid)
    assert r.code == 1
    assert_one_error(r, "--rm")
    assert life.state(cid) == "running"
    r = life("restart", "nosuch", "r")
    assert r.code == 1 and r.out == "r\n"  # the others are still restarted
    assert_one_error(r, "no such container")
    life.ok("rm", "-f", cid, "r")


def test_rename(life):
    """The name moves; the id, the state and the monitor's later writes stay with it."""
    cid = life.run_d("sleep", "100", name="alpha")  # names that no id prefix can be (not hex)
    life.run_d("true", name="beta")
    assert life.ok("rename", "alpha", "gamma") == ""
    assert life.ok("inspect", "-f", "{{.Id}}", "gamma").strip() == cid
    assert life("inspect", "alpha").code == 1
    for args, code, needle in ((["gamma", "beta"], 1, "already in use"),
                               (["gamma", "bad name"], 2, "invalid container name"),
                               (["gamma", "gamma"], 2, "already named"), (["nosuch", "x"], 1, "no such container")):
        r = life("rename", *args)
        assert r.code == code, r
        assert_one_error(r, needle)
    life.ok("stop", "-t", "0", "gamma")  # the monitor records the exit under the new name
    rec = life.record("gamma")
    assert rec["Name"] == "gamma" and rec["State"]["Status"] == "exited" and rec["State"]["ExitCode"] == 137
    assert sorted(life.ok("ps", "-a", "--format", "{{.Names}}").split()) == ["beta", "gamma"]


def test_stop_kills_after_timeout(life):
    life.run_d("sh", "-c", 'trap "" TERM; echo ready; while true; do sleep 0.1; done', name="stubborn")
    life.wait_for(lambda: life.ok("logs", "stubborn") == "ready\n", what="ready")
    t = time.monotonic()
    assert life.ok("stop", "-t", "1", "stubborn") == "stubborn\n"
    took = time.monotonic() - t
    assert 1.0 <= took < 8, took
    rec = life.record("stubborn")
    assert (rec["State"]["Status"], rec["State"]["ExitCode"]) == ("exited", 137)
    assert container_pids(rec["Id"]) == []


def test_stop_time_zero_kills_at_once(life):
    life.run_d("sleep", "100", name="s0")
    t = time.monotonic()
    life.ok("stop", "--time", "0", "s0")
    assert time.monotonic() - t < 5
    assert life.record("s0")["State"]["ExitCode"] == 137


def test_stop_ends_background_children_and_exec_sessions(life):
    cid = life.run_d("sh", "-c", "sleep 1000 & sleep 1000", name="bg")
    session = subprocess.Popen([sys.executable, "-m", "ctr", "exec", "bg", "sleep", "1000"], env=life.ctr.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        life.wait_for(lambda: len(container_pids(cid)) >= 3, what="three processes in the container")
        for p in container_pids(cid):
            life.pids.setdefault(p, start_time(p))
        life.ok("stop", "-t", "0", "bg")
        assert session.wait(timeout=20) == 137  # the exec session ended with the container
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert container_pids(cid) == []
    assert all(not alive(p) for p in life.pids)


def test_stop_ends_nested_namespaces_and_chroots(life):
    """Processes that made a mount namespace of their own, or chroot'ed deeper, are still the
    container's: the monitor finds them (root mount, namespace inode) and ends them."""
    cid = life.run_d("sh", "-c", "mkdir -p /jail/bin && cp /bin/busybox /jail/bin/ && "
                     "busybox unshare -m /bin/busybox sleep 1001 & "
                     "(sleep 0.2; busybox chroot /jail /bin/busybox sleep 1002) & sleep 1000", name="nest")
    life.wait_for(lambda: len(container_pids(cid)) >= 3, what="three processes in the container")
    procs = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in container_pids(cid)}
    assert any(b"1001" in c for c in procs.values()) and any(b"1002" in c for c in procs.values()), procs
    for p in procs:
        life.pids.setdefault(p, start_time(p))
    life.ok("stop", "-t", "0", "nest")
    assert all(not alive(p) for p in procs), [Path(f"/proc/{p}/cmdline").read_bytes() for p in procs if alive(p)]


def test_logs_follow_until_exit(life):
    life.run_d("sh", "-c", "echo first; sleep 2; echo second; sleep 0.5; printf 'no newline'; exit 7", name="f")
    t = time.monotonic()
    r = life("logs", "-f", "f", timeout=30)
    assert (r.code, r.out) == (0, "first\nsecond\nno newline")
    assert time.monotonic() - t >= 0.5  # it really followed (the workload had 2.5 s to go)
    assert life.ok("wait", "f") == "7\n"
    assert life.ok("logs", "-f", "f") == "first\nsecond\nno newline"  # exited: returns at once


def test_logs_follow_streams_while_running(life):
    life.run_d("sh", "-c", "echo one; sleep 600", name="live")
    pid = life.record("live")["Process"]["Pid"]
    follower = subprocess.Popen([sys.executable, "-m", "ctr", "logs", "-f", "-n", "1", "live"], env=life.ctr.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follower.stdout.readline() == b"one\n"
        # an exec session writes into the workload's stdout (the monitor's pipe): it shows up
        life.ok("exec", "live", "sh", "-c", f"echo two > /proc/{pid}/fd/1")
        assert follower.stdout.readline() == b"two\n"
        life.ok("stop", "-t", "0", "live")
        out, err = follower.communicate(timeout=20)
        assert (follower.returncode, out) == (0, b""), err
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


def test_logs_are_byte_exact(life):
    life.run_d("sh", "-c", r"printf 'a\r\nb\377c\n\tlast'; printf 'E\n' >&2", name="bytes")
    assert life.ok("wait", "bytes") == "0\n"
    r = subprocess.run([sys.executable, "-m", "ctr", "logs", "bytes"], env=life.ctr.env, capture_output=True)
    assert (r.stdout, r.stderr) == (b"a\r\nb\377c\n\tlast", b"E\n")


def test_long_lines_are_split_but_reassembled(life):
    life.run_d("sh", "-c", "i=0; while [ $i -lt 5000 ]; do printf 0123456789; i=$((i+1)); done; echo", name="long")
    assert life.ok("wait", "long") == "0\n"
    out = life.ok("logs", "long")
    assert out == "0123456789" * 5000 + "\n"
    cid = life.record("long")["Id"]
    assert len((life.ctr.root / "containers" / cid / "log.jsonl").read_text().splitlines()) == 4  # 16 KiB pieces


# ----------------------------------------------------------------------------- run -d failures
@pytest.mark.parametrize("opts, cmd, code, needle", [
    ([], ["no-such-command"], 127, "no-such-command"),
    ([], ["/etc/passwd"], 126, "/etc/passwd"),
    (["-w", "/etc/passwd"], ["true"], 125, "cannot start"),
])
def test_run_d_fails_as_run_does(life, opts, cmd, code, needle):
    r = life("run", "-d", "--driver", life.driver, "--name", "bad", *opts, life.image, *cmd)
    assert r.code == code and r.out == ""
    assert_one_error(r, needle)
    rec = life.record("bad")
    assert (rec["State"]["Status"], rec["State"]["ExitCode"]) == ("exited", code)
    assert rec["State"]["Error"]
    fg = life("run", "--driver", life.driver, *opts, life.image, *cmd)
    assert fg.code == code
    assert fg.err.splitlines()[0] == r.err.splitlines()[0]
    # start again fails the same way, per reference, exit 1
    r = life("start", "bad")
    assert r.code == 1
    assert_one_error(r, needle)


def test_run_d_rm_removes_after_exit(life):
    cid = life.ok("run", "-d", "--rm", "--driver", life.driver, life.image, "sh", "-c", "sleep 0.3").strip()
    life.wait_for(lambda: not (life.ctr.root / "containers" / cid).exists(), what="auto-removal")


def test_a_monitor_removing_its_container_does_not_wait_for_itself(monkeypatch):
    """The monitor of a --rm container removes it through `rm -f`'s path, which waits for the
    container's monitor to exit: it must not wait for itself (it did, KILL_WAIT = 10 s, during
    which the container and its name lingered)."""
    from ctr.engine import lifecycle
    from ctr.models import Container, RunConfig

    monkeypatch.setattr(lifecycle, "KILL_WAIT", 120.0)
    me = Container(id="f" * 64, name="x", image="sha256:" + "0" * 64, image_name="bb", isolation="process",
                   driver="overlay", config=RunConfig(command=["true"]), monitor_pid=os.getpid(),
                   monitor_start=start_time(os.getpid()))
    t = time.monotonic()
    lifecycle.terminate(None, me)  # type: ignore[arg-type]
    assert time.monotonic() - t < 60, "terminate() waited for the calling monitor itself"


def test_run_d_image_errors_are_125(life):
    r = life("run", "-d", "no-such-image", "true")
    assert r.code == 125
    assert_one_error(r, "no-such-image")


# ----------------------------------------------------------------------------- the monitor
def test_monitor_survives_its_shell_and_holds_nothing_of_it(life, tmp_path):
    """`run -d` from a shell in its own session, with an extra inherited descriptor; kill the
    whole session: the container keeps running, and its monitor has none of the caller's fds."""
    extra = os.open(tmp_path / "held", os.O_WRONLY | os.O_CREAT)
    os.set_inheritable(extra, True)
    cmd = (f"{sys.executable} -m ctr run -d --driver {life.driver} --name orphan {life.image} sleep 600 "
           f"> {tmp_path}/id; sleep 600")
    shell = subprocess.Popen(["sh", "-c", cmd], env=life.ctr.env, start_new_session=True, pass_fds=(extra,),
                             stdin=subprocess.DEVNULL)
    os.close(extra)
    try:
        life.wait_for(lambda: (tmp_path / "id").read_text().strip() if (tmp_path / "id").exists() else "",
                      what="the id")
        rec = life.record("orphan")
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
        time.sleep(0.2)
        rec = life.record("orphan")
        assert rec["State"]["Status"] == "running" and alive(rec["Process"]["Pid"]) and alive(rec["Process"]["MonitorPid"])
        mon = rec["Process"]["MonitorPid"]
        # a session of its own (made by the intermediate child, which exited: the monitor is
        # not a session leader, so it can never acquire a controlling terminal)
        assert os.getsid(mon) not in (shell.pid, os.getsid(0), mon)
        fds = {int(n): os.readlink(f"/proc/{mon}/fd/{n}") for n in os.listdir(f"/proc/{mon}/fd")}
        assert fds[0] == fds[1] == fds[2] == "/dev/null"
        assert str(tmp_path / "held") not in fds.values(), fds
        assert sorted(t.split(":")[0] for n, t in fds.items() if n > 2) == sorted(
            [str(life.ctr.root / "containers" / rec["Id"] / "log.jsonl"), "anon_inode", "mnt", "pipe", "pipe"]), fds
        assert os.readlink(f"/proc/{mon}/cwd") == "/"
        assert Path(f"/proc/{mon}/comm").read_text().strip() == "ctr-monitor"
        assert Path(f"/proc/{rec['Process']['Pid']}/status").read_text().count("PPid:\t%d\n" % mon) == 1
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()


@pytest.mark.parametrize("user", ["", "nobody"])
def test_monitor_killed_is_reconciled(life, user):
    """SIGKILL the monitor: the workload dies with it (PR_SET_PDEATHSIG) or, when a change of
    user cleared that, on the next read; background children too. ps stops saying running."""
    opts = ["-u", user] if user else []
    cid = life.ok("run", "-d", "--driver", life.driver, "--name", "mk", *opts, life.image,
                  "sh", "-c", "sleep 1000 & sleep 1000").strip()
    rec = life.record(cid)
    life.wait_for(lambda: len(container_pids(cid)) >= 2, what="two processes in the container")
    for p in container_pids(cid):
        life.pids.setdefault(p, start_time(p))
    os.kill(rec["Process"]["MonitorPid"], signal.SIGKILL)
    life.wait_for(lambda: not alive(rec["Process"]["MonitorPid"]), what="the monitor to die")
    assert life.ok("ps", "-q") == ""  # reconciled on this read
    rec = life.record("mk")
    assert rec["State"]["Status"] == "exited"
    assert "monitor" in rec["State"]["Error"] and str(rec["Process"]["MonitorPid"]) in rec["State"]["Error"]
    assert rec["State"]["ExitCode"] in (None, 137)
    if user:  # setuid cleared the death signal: ctr killed it on the read
        assert rec["State"]["ExitCode"] == 137
    assert container_pids(cid) == []
    assert all(not alive(p) for p in life.pids)
    assert life.ok("wait", "mk") == ("137\n" if rec["State"]["ExitCode"] == 137 else "-1\n")
    assert life.ok("rm", "-f", "mk") == "mk\n"
    assert not (life.ctr.root / "containers" / cid).exists()


def test_rm_f_running_leaves_nothing(life):
    cid = life.run_d("sh", "-c", "sleep 1000 & sleep 1000", name="doomed")
    life.wait_for(lambda: len(container_pids(cid)) >= 2, what="two processes in the container")
    for p in container_pids(cid):
        life.pids.setdefault(p, start_time(p))
    r = life("rm", "doomed")
    assert r.code == 1
    assert_one_error(r, "running")
    assert life.ok("rm", "-f", "doomed") == "doomed\n"
    assert not (life.ctr.root / "containers" / cid).exists()
    assert all(not alive(p) for p in life.pids), life.pids
    assert container_pids(cid) == []


# ----------------------------------------------------------------------------- verbs and refs
def test_start_attach_runs_in_the_foreground(life):
    life.run_d("sh", "-c", "echo run $(cat /root/n 2>/dev/null || echo 0); echo 1 > /root/n; exit 5", name="a")
    assert life.ok("wait", "a") == "5\n"
    r = life("start", "-a", "a")
    assert (r.code, r.out) == (5, "run 1\n")
    rec = life.record("a")
    assert (rec["State"]["Status"], rec["State"]["ExitCode"], rec["Process"]["MonitorPid"]) == ("exited", 5, None)
    r = life("start", "-a", "a", "a")
    assert r.code == 2
    assert_one_error(r, "several")


def test_kill_signals(life):
    life.run_d("sleep", "100", name="k")
    assert life.ok("kill", "-s", "SIGUSR1", "k") == "k\n"
    assert life.ok("wait", "k") == str(128 + signal.SIGUSR1) + "\n"
    life.ok("start", "k")
    assert life.ok("kill", "-s", "15", "k") == "k\n"
    assert life.ok("wait", "k") == "143\n"
    life.ok("start", "k")
    assert life.ok("kill", "k") == "k\n"  # default KILL
    assert life.ok("wait", "k") == "137\n"
    r = life("kill", "k")
    assert r.code == 1
    assert_one_error(r, "is not running")
    r = life("kill", "-s", "NOPE", "k")
    assert r.code == 2
    assert_one_error(r, "invalid signal")


def test_several_refs_report_each(life):
    life.run_d("sleep", "100", name="one")
    life.run_d("sleep", "100", name="two")
    r = life("stop", "-t", "0", "one", "missing", "two")
    assert r.code == 1 and r.out == "one\ntwo\n"
    assert_one_error(r, "no such container: missing")
    r = life("wait", "one", "missing", "two")
    assert r.code == 1 and r.out == "137\n137\n"
    r = life("start", "one", "missing", "two")
    assert r.code == 1 and r.out == "one\ntwo\n"
    r = life("kill", "missing", "one", "two")
    assert r.code == 1 and r.out == "one\ntwo\n"


@pytest.mark.parametrize("verb", [["logs"], ["logs", "-f"], ["stop"], ["kill"], ["wait"], ["start"],
                                  ["exec", "true"]])
def test_bad_refs_are_one_line(ctr, verb):
    args = [verb[0], "nope", *verb[1:]] if verb[0] == "exec" else [*verb, "nope"]
    r = ctr(*args)
    assert r.code == (125 if verb[0] == "exec" else 1)
    assert_one_error(r, "no such container: nope")


def test_latest(life):
    life.run_d("sleep", "100", name="older")
    cid = life.run_d("sh", "-c", "echo newest; sleep 100", name="newer")
    life.wait_for(lambda: life.ok("logs", "-l") == "newest\n", what="the newest's log")
    assert life.ok("exec", "-l", "sh", "-c", "echo $HOSTNAME") == cid[:12] + "\n"
    assert json.loads(life.ok("inspect", "-l"))[0]["Name"] == "newer"
    assert life.ok("stop", "-l", "-t", "0") == cid + "\n"
    assert life.ok("wait", "-l") == "137\n"
    assert life.state("older") == "running"
    assert life.ok("diff", "-l") == ""
    assert life.ok("rm", "-l") == cid + "\n"


def test_usage_errors(ctr):
    for args in (["logs"], ["stop"], ["wait"], ["exec"], ["logs", "-n", "x", "a"]):
        r = ctr(*args)
        assert r.code == 2, (args, r.err)
        assert "Traceback" not in r.err


def test_logs_of_foreground_run_are_empty(ctr, busybox_image):
    ctr.ok("run", "--name", "fg", busybox_image, "echo", "hi")
    assert ctr.ok("logs", "fg") == ""
    assert ctr.ok("wait", "fg") == "0\n"


def test_log_write_failure_loses_output_not_the_container():
    """A log that cannot be written (a full disk: /dev/full) drops the output and says so."""
    from ctr.monitor import LineWriter

    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        LineWriter.lost = ""
        w = LineWriter(fd, "stdout")
        w.feed(b"one\ntwo")
        w.flush()
        assert "No space left on device" in LineWriter.lost
    finally:
        LineWriter.lost = ""
        os.close(fd)


def test_log_entries_round_trip():
    from ctr.monitor import log_entry, parse_entry, timestamp

    raw = b"caf\xc3\xa9 \xff\x00\r\n"
    line = log_entry(raw, "stderr", 1_700_000_000_123_456_789)
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    assert parse_entry(line) == ("2023-11-14T22:13:20.123456789Z", "stderr", raw)
    assert timestamp(5) == "1970-01-01T00:00:00.000000005Z"
    assert parse_entry(b'{"log": "x"') is None and parse_entry(b"[]") is None

