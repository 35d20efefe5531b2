"""hyperv isolation on the `microvm` driver: a real utility VM per container (qemu).

The cheap tests (no boot) check sizing, refusals, `ctr info`'s reasons and fixes, and
`ctr system kernel import|ls|rm` on fake kernels. The real ones boot qemu through the command
line, a handful of times in all (each boot takes seconds under TCG): checks are batched into
few runs. They need root, qemu-system-x86_64, a static busybox and a kernel imported by
scripts/fetch-kernel.sh into $CTR_TEST_KERNEL_DIR (default /var/cache/ctr-test-kernel), which
CI provides; without one of them they skip and say which.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import IS_ROOT, KERNEL_DIR, Ctr, import_kernel, make_rootfs
from ctr.drivers import DRIVERS, get_driver
from ctr.drivers import microvm as mv
from ctr.errors import DriverError
from ctr.models import Container, Mount, RunConfig

pytestmark = pytest.mark.qemu

HOST_MARKER = "987654321"  # a host process's argument the guest must not see


def _container(**cfg) -> Container:
    cfg.setdefault("command", ["true"])
    return Container(id="ab" * 32, name="c", image="sha256:" + "cd" * 32, image_name="bb",
                     isolation="hyperv", driver="microvm", config=RunConfig(**cfg))


# ============================================================================ no boot
def test_registered_first_for_hyperv():
    assert DRIVERS["hyperv"][0] == "microvm"
    drv = get_driver("hyperv", "microvm")
    assert isinstance(drv, mv.MicroVMDriver) and not drv.emulated and drv.detachable


def test_vm_size_defaults_like_a_utility_vm():
    assert mv.vm_size(_container(), "kvm") == (1024, 2)
    assert mv.vm_size(_container(), "tcg") == (1024, 1)  # SMP bring-up is emulated under TCG: +2 s
    assert mv.vm_size(_container(memory=128 << 20, cpus=0.5), "tcg") == (128, 1)
    assert mv.vm_size(_container(memory=(300 << 20) + 1, cpus=2.5), "tcg") == (301, 3)


def test_refusals_before_anything_is_created(tmp_path):
    with pytest.raises(DriverError, match="terminal"):
        mv._refuse_unsupported(_container(tty=True))
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DriverError, match="directories only"):
        mv._refuse_unsupported(_container(mounts=[Mount(str(f), "/f")]))
    with pytest.raises(DriverError, match="too small"):
        mv._refuse_unsupported(_container(memory=16 << 20))
    mv._refuse_unsupported(_container(mounts=[Mount(str(tmp_path), "/d", True)]))


@pytest.mark.skipif(not IS_ROOT, reason="mounts need root")
def test_cover_hides_a_directory_without_following_symlinks(tmp_path):
    """Over the `host` image the helper hides the store: an empty read-only tmpfs, reached
    component by component (a symlink in the container's view cannot redirect it)."""
    root = tmp_path / "merged"
    (root / "var/store/containers").mkdir(parents=True)
    (root / "var/store/containers/secret").write_text("x")
    (root / "link").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere/store").mkdir(parents=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # in a private mount namespace, like the helper
        try:
            from ctr import proc

            proc.unshare(["mnt"])
            proc.mount("none", "/", None, proc.mount_flags(("rec", "private")))
            results = [mv.cover(str(root), "/var/store"), mv.cover(str(root), "/link/store"),
                       mv.cover(str(root), "/nonexistent")]
            listing = os.listdir(root / "var/store")
            try:
                (root / "var/store/x").write_text("x")
                writable = True
            except OSError:
                writable = False
            os.write(w, json.dumps([results, listing, writable,
                                    os.listdir(tmp_path / "elsewhere/store")]).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 65536)
    os.waitpid(pid, 0)
    assert json.loads(data) == [[True, False, False], [], False, []]
    assert (root / "var/store/containers/secret").exists()  # the host's view is untouched


def _microvm_info(ctr: Ctr) -> dict:
    drivers = json.loads(ctr.ok("info", "--format", "json"))["Drivers"]
    return next(d for d in drivers if d["Driver"] == "microvm")


@pytest.mark.skipif(not IS_ROOT, reason="the microvm driver needs root")
def test_info_says_why_not_and_the_fix(ctr, tmp_path):
    ctr.env["CTR_KERNEL"] = str(tmp_path / "no-such-kernel")
    info = _microvm_info(ctr)
    assert not info["Usable"] and "no-such-kernel" in info["Reason"]
    assert "ctr system kernel import" in info["Fix"]
    Path(ctr.env["CTR_CONFIG"]).write_text(f"qemu: {tmp_path}/no-such-qemu\n")
    info = _microvm_info(ctr)
    assert not info["Usable"] and "no-such-qemu is not installed" in info["Reason"]
    assert "qemu-system-x86" in info["Fix"]
    # asked for by name, it is refused with the reason (no silent substitute)
    r = ctr("run", "--rm", "--isolation", "hyperv", "--driver", "microvm", "host", "true")
    assert r.code == 125 and "not usable" in r.err and "no-such-qemu" in r.err


def test_kernel_import_ls_rm(ctr, tmp_path):
    from test_qemu_fakes import make_bzimage, make_kernel_deb, make_modules_tree

    deb = tmp_path / "linux-image-6.1.0-9-amd64_6.1.1-1_amd64.deb"
    deb.write_bytes(make_kernel_deb("6.1.0-9-amd64"))
    out = ctr.ok("system", "kernel", "import", str(deb))
    assert "6.1.0-9-amd64" in out and "with modules" in out
    time.sleep(0.05)  # the newest import is the default: give the second a later mtime
    image = tmp_path / "vmlinuz-6.2.0-1-amd64"
    image.write_bytes(make_bzimage("6.2.0-1-amd64"))
    mods = make_modules_tree(tmp_path / "lib/modules/6.2.0-1-amd64")
    ctr.ok("system", "kernel", "import", str(image), "--modules", str(mods))
    ctr.env.pop("CTR_KERNEL", None)
    assert ctr.ok("system", "kernel", "ls", "-q").split() == ["6.2.0-1-amd64", "6.1.0-9-amd64"]
    items = json.loads(ctr.ok("system", "kernel", "ls", "--format", "json"))
    assert [(i["Release"], i["Default"]) for i in items] == [("6.2.0-1-amd64", True), ("6.1.0-9-amd64", False)]
    assert all(i["Modules"] and Path(i["Image"]).name == "vmlinux" for i in items)
    # $CTR_KERNEL comes before an imported kernel: ls says none of them is used
    ctr.env["CTR_KERNEL"] = str(Path(items[1]["Dir"]))
    items = json.loads(ctr.ok("system", "kernel", "ls", "--format", "json"))
    assert [i["Default"] for i in items] == [False, True]
    ctr.env.pop("CTR_KERNEL")
    r = ctr("system", "kernel", "rm", "6.1.0-9-amd64", "nope")
    assert r.code == 1 and "no such kernel: nope" in r.err and r.out.split() == ["6.1.0-9-amd64"]
    assert ctr.ok("system", "kernel", "ls", "-q").split() == ["6.2.0-1-amd64"]
    assert not list((ctr.root / "tmp").iterdir())
    r = ctr("system", "kernel", "import", str(tmp_path / "lib"))
    assert r.code == 1 and "Error:" in r.err and "ctr system kernel import" in r.err


# ============================================================================ real boots
@pytest.fixture(scope="module")
def vm(tmp_path_factory, qemu_kernel):
    """One store for every boot: the test kernel imported into it (`ctr system kernel import`,
    so the real boots also prove the import), the busybox image with a /data tree per case of
    the diff grid (one boot runs them all), and a host process the guests must not see."""
    from test_diff_grid import CASES, add_data_tree

    base = tmp_path_factory.mktemp("microvm")
    ctr = Ctr(base / "root", base / "config.yaml")
    import_kernel(ctr)
    rootfs = make_rootfs(base / "rootfs")
    for applet in ("grep", "tr", "cut"):
        os.symlink("busybox", rootfs / "bin" / applet)
    for case in CASES:
        (rootfs / "g" / case).mkdir(parents=True)
        add_data_tree(rootfs / "g" / case)
    ctr.ok("image", "import", str(rootfs), "bb")
    host = subprocess.Popen(["sleep", HOST_MARKER])
    try:
        yield {"ctr": ctr, "kernel": qemu_kernel, "base": base, "host_pid": host.pid}
    finally:
        host.kill()
        host.wait()
        ctr.cleanup()


def mvrun(vm, *args: str, **kw):
    return vm["ctr"]("run", "--isolation", "hyperv", "--driver", "microvm", *args, **kw)


def out_of(r) -> str:
    assert r.code == 0, f"exit {r.code}\nstdout: {r.out}\nstderr: {r.err}"
    return r.out


def _record(vm, name: str) -> dict:
    return json.loads(vm["ctr"].ok("inspect", name))[0]


def _processes_of(cid: str) -> list[str]:
    """Host processes (the helper, qemu) whose command line names the container."""
    found = []
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                cmd = Path(e.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cid in cmd and "pytest" not in cmd:
                found.append(f"{e.name}: {cmd[:120]}")
    return found


def _store_mounts(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln for ln in f if str(root) in ln]


def _assert_gone(vm, name: str) -> dict:
    """The container is recorded exited, its qemu and helper are gone, nothing is mounted."""
    rec = _record(vm, name)
    assert rec["State"]["Status"] == "exited", rec
    pidfile = Path(rec["StaticDir"]) / "vm" / "qemu.pid"
    if pidfile.exists():
        from ctr import proc

        info = json.loads(pidfile.read_text())
        assert not proc.pid_alive(info["pid"], info["start"]), "qemu outlived the run"
        assert not proc.pid_alive(info["helper"], info["helper_start"]), "the helper outlived the run"
    assert _processes_of(rec["Id"]) == []
    assert _store_mounts(vm["ctr"].root) == []
    return rec


def test_inside_the_vm(vm, tmp_path):
    """One boot, many facts: own kernel, VM size, own PIDs and init, only lo, hostname, -e -w -v,
    /tmp private, writes in the writable layer, the store out of reach; and inspect/ps say so."""
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "f").write_text("original\n")
    store = vm["ctr"].root
    script = "; ".join([
        "echo uname=$(uname -r)",
        "echo cpus=$(grep -c ^processor /proc/cpuinfo)",
        "echo mem=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)",
        "echo me=$$",
        "echo init=$(tr '\\0' ' ' < /proc/1/cmdline)",
        "echo cmdlines=$(cat /proc/[0-9]*/cmdline | tr '\\0' ' ')",
        "echo ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ')",
        "echo lo=$(ifconfig lo | grep -c UP)",
        "echo host=$(hostname) foo=$FOO pwd=$(pwd)",
        "echo secret > /secret",
        "echo in-volume > /rw/new",
        "(echo changed > /ro/f) 2>/dev/null || echo ro=refused",
        "echo scratch > /tmp/scratch",
        f"test -e {store} && echo store=reachable",
        f"test -e {KERNEL_DIR} && echo kernels=reachable",
        "echo done",
    ])
    ctr = vm["ctr"]
    out = out_of(mvrun(vm, "--name", "inside", "--cpus", "2", "--hostname", "uvm", "-e", "FOO=bar",
                       "-w", "/work", "-v", f"{rw}:/rw", "-v", f"{ro}:/ro:ro", "bb", "sh", "-c", script))
    facts = {}
    for line in out.splitlines():
        for part in line.split(" ") if line.startswith("host=") else [line]:
            k, _, v = part.partition("=")
            facts[k] = v
    assert facts["done"] == "" and "store" not in facts and "kernels" not in facts, out
    assert facts["uname"] == vm["kernel"].release != os.uname().release
    assert facts["cpus"] == "2"
    assert (1024 - 128) * 1024 < int(facts["mem"]) <= 1024 * 1024  # the default: 1 GiB
    assert facts["init"].split()[:2] == ["/bin/sh", "/init"]  # PID 1 is ctr's init in the guest
    assert int(facts["me"]) > 1
    assert HOST_MARKER not in facts["cmdlines"]  # no host process in sight
    assert facts["ifaces"] == "lo" and facts["lo"] == "1"
    assert (facts["host"], facts["foo"], facts["pwd"]) == ("uvm", "bar", "/work")
    assert facts["ro"] == "refused" and (ro / "f").read_text() == "original\n"
    assert (rw / "new").read_text() == "in-volume\n"
    # the write is in the container's writable layer, /tmp was private (as with process isolation)
    rec = _assert_gone(vm, "inside")
    assert (Path(rec["StaticDir"]) / "upper" / "secret").read_text() == "secret\n"
    # the mount points of -v and the -w directory are made in the layer, as process isolation does
    assert ctr.ok("diff", "inside").splitlines() == ["A /ro", "A /rw", "A /secret", "A /work"]
    ctr.ok("run", "--name", "inside-p", "-w", "/work", "-v", f"{rw}:/rw", "-v", f"{ro}:/ro:ro", "bb",
           "sh", "-c", "echo secret > /secret; echo scratch > /tmp/scratch")
    assert ctr.ok("diff", "inside") == ctr.ok("diff", "inside-p")
    info = rec["DriverInfo"]
    assert info["emulated"] is False and vm["kernel"].release in info["kernel"]
    assert info["limits"]["memory"] == 1 << 30 and info["limits"]["cpus"] == 2
    assert info["accelerator"] in ("kvm", "tcg")
    assert "microvm" in ctr.ok("ps", "-a", "--filter", "name=inside") and "emulated" not in ctr.ok("ps", "-a")
    # contrast: a process container sees the host's processes and kernel
    out = out_of(ctr("run", "--rm", "bb", "sh", "-c", "uname -r; cat /proc/[0-9]*/cmdline | tr '\\0' ' '"))
    assert os.uname().release in out and HOST_MARKER in out


def test_memory_is_enforced_and_other_layers_are_out_of_reach(vm):
    """--memory 128m (the least a VM may have) sizes the VM: a 200 MB allocation fails inside, 16 MB work, the host
    is fine. The same boot checks that another container's layer (`inside`'s /secret) and the
    store cannot be reached, and that hyperv picks microvm when it is usable."""
    ctr = vm["ctr"]
    ctr.ok("run", "--isolation", "hyperv", "--name", "other", "bb", "sh", "-c", "echo mine > /secret")
    other = _record(vm, "other")
    upper = Path(other["StaticDir"]) / "upper"
    script = "; ".join([
        "echo mem=$(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2)",
        f"for p in {ctr.root} {upper} {upper}/secret /secret; do test -e $p && echo reachable=$p; done",
        "cat /proc/*/root/secret 2>/dev/null",
        "echo small=$(head -c 16m /dev/zero | tail | wc -c)",
        # the allocation, not the shell that reports it, is the OOM killer's pick
        "echo -1000 >/proc/self/oom_score_adj",
        "(echo 1000 >/proc/self/oom_score_adj; head -c 200m /dev/zero | tail >/dev/null); echo big=$?",
    ])
    r = ctr("run", "--isolation", "hyperv", "--name", "small", "--memory", "128m", "bb", "sh", "-c", script)
    out = out_of(r)
    assert _record(vm, "small")["Driver"] == "microvm"  # selection: microvm first when usable
    assert _record(vm, "other")["Driver"] == "microvm"
    facts = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert "reachable" not in out and "mine" not in out and "secret" not in out, out
    assert 64 * 1024 < int(facts["mem"]) <= 128 * 1024
    assert facts["small"] == str(16 << 20)
    assert facts["big"] != "0"  # the OOM killer ended the allocation
    assert subprocess.run(["true"]).returncode == 0
    _assert_gone(vm, "small")


def test_exit_codes_stdin_and_user(vm):
    ctr = vm["ctr"]
    r = mvrun(vm, "--rm", "-i", "-u", "nobody", "bb", "sh", "-c", "id -u; cat; exit 3", input="piped\n")
    assert (r.code, r.out) == (3, "65534\npiped\n"), r
    r = mvrun(vm, "--rm", "bb", "no-such-command")
    assert r.code == 127 and "no-such-command" in r.err, r
    r = mvrun(vm, "--rm", "bb", "sh", "-c", "kill -TERM $$")
    assert r.code == 143, r
    assert ctr("run", "--rm", "bb", "sh", "-c", "kill -TERM $$").code == 143  # process isolation: the same
    # an unknown user fails on the host, before any boot, as with process isolation
    r = mvrun(vm, "--rm", "-u", "nosuchuser", "bb", "true")
    assert r.code == 125 and "nosuchuser" in r.err and r.err.count("Error:") == 1, r


def test_refused_options_leave_nothing(vm, tmp_path):
    ctr = vm["ctr"]
    before = sorted(p.name for p in (ctr.root / "containers").iterdir())
    f = tmp_path / "f"
    f.write_text("x")
    for args, words in ((["-t"], "terminal"), (["-v", f"{f}:/f"], "directories only"),
                        (["--memory", "100m"], "too small")):
        r = mvrun(vm, "--rm", *args, "bb", "true")
        assert r.code == 125 and words in r.err and r.err.count("Error:") == 1, r
    assert sorted(p.name for p in (ctr.root / "containers").iterdir()) == before


def test_detached_stop_logs_and_exec(vm):
    """run -d goes through the monitor with the same plan: logs, ps, stop (SIGTERM forwarded into
    the guest: 143), exec runs in the guest (more in test_microvm_exec.py); rm -f of a running
    one leaves no qemu."""
    ctr = vm["ctr"]
    cid = ctr.ok("run", "-d", "--isolation", "hyperv", "--driver", "microvm", "--name", "bg", "bb",
                 "sh", "-c", "echo hello; exec sleep 300").strip()
    deadline = time.monotonic() + 90
    while "hello" not in ctr.ok("logs", "bg") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ctr.ok("logs", "bg") == "hello\n"
    assert "Up" in ctr.ok("ps", "--filter", "name=bg")
    assert _store_mounts(ctr.root) == []  # the overlay is mounted in the helper's namespace only
    assert ctr.ok("exec", "bg", "uname", "-r") == vm["kernel"].release + "\n"
    t = time.monotonic()
    ctr.ok("stop", "-t", "30", "bg")
    assert time.monotonic() - t < 25, "SIGTERM did not reach the workload in the guest"
    rec = _assert_gone(vm, "bg")
    assert rec["State"]["ExitCode"] == 143 and rec["Id"] == cid
    ctr.ok("run", "-d", "--isolation", "hyperv", "--driver", "microvm", "--name", "bg2", "bb", "sleep", "300")
    rec = _record(vm, "bg2")
    ctr.ok("rm", "-f", "bg2")
    time.sleep(0.5)
    assert _processes_of(rec["Id"]) == [] and not Path(rec["StaticDir"]).exists()


def test_kernel_panic_is_one_error_and_exit_125(vm):
    ctr = vm["ctr"]
    t = time.monotonic()
    r = mvrun(vm, "--name", "panic", "bb", "sh", "-c", "echo c > /proc/sysrq-trigger; sleep 60")
    assert time.monotonic() - t < 60
    assert r.code == 125, r
    errors = [ln for ln in r.err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "panicked" in errors[0] and "sysrq" in errors[0], r.err
    rec = _assert_gone(vm, "panic")
    assert rec["State"]["ExitCode"] == 125 and "panicked" in rec["State"]["Error"]
    assert ctr.ok("ps", "-a", "--filter", "name=panic", "--format", "{{.State}}").strip() == "exited"


def test_a_hung_boot_is_stopped_within_the_timeout(vm):
    """A guest that does not start the command in time (here: a 1 s boot timeout) is killed."""
    ctr = vm["ctr"]
    ctr.env["CTR_MICROVM_BOOT_TIMEOUT"] = "1"
    try:
        t = time.monotonic()
        r = mvrun(vm, "--name", "hung", "bb", "true")
    finally:
        del ctr.env["CTR_MICROVM_BOOT_TIMEOUT"]
    assert time.monotonic() - t < 30
    assert r.code == 125 and "did not start the command within 1 s" in r.err, r
    assert r.err.count("Error:") == 1
    rec = _assert_gone(vm, "hung")
    assert rec["State"]["ExitCode"] == 125 and "within 1 s" in rec["State"]["Error"]


def test_diff_grid_same_as_process_isolation(vm):
    """Every case of the diff grid, each in its own copy of /data (/g/CASE/data), in one boot on
    microvm and one run on overlay: the same `ctr diff`, each case's lines as the grid says, and
    the same writable layer (paths, types, modes, owners, xattrs, contents)."""
    from test_diff_grid import CASES
    from test_sandbox import _upper_listing

    ctr = vm["ctr"]
    script = "set -e\n" + "\n".join(CASES[c][0].replace("/data", f"/g/{c}/data") for c in CASES)
    out_of(mvrun(vm, "--name", "grid-vm", "bb", "sh", "-c", script))
    out_of(ctr("run", "--name", "grid-overlay", "--driver", "overlay", "bb", "sh", "-c", script))
    d_vm, d_ov = ctr.ok("diff", "grid-vm"), ctr.ok("diff", "grid-overlay")
    assert d_vm == d_ov
    lines = d_vm.splitlines()
    for case, (_, want) in CASES.items():
        prefix = f"/g/{case}"
        got = [ln[:2] + ln[2 + len(prefix):] for ln in lines if ln[2:].startswith(prefix + "/data")]
        assert got == [w for w in want if w[2:].startswith("/data")], case
    assert "A /top.txt" in lines
    uppers = [Path(_record(vm, n)["StaticDir"]) / "upper" for n in ("grid-vm", "grid-overlay")]
    assert _upper_listing(uppers[0]) == _upper_listing(uppers[1])
    assert ctr.ok("diff", "--format", "json", "grid-vm") == ctr.ok("diff", "--format", "json", "grid-overlay")
    dirs = [_record(vm, n)["StaticDir"] for n in ("grid-vm", "grid-overlay")]
    ctr.ok("rm", "grid-vm", "grid-overlay")
    assert not any(Path(d).exists() for d in dirs)
