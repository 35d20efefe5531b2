"""hyperv isolation on the `sandbox` driver (the emulated utility VM): its plan as data, driver
selection, and the observable boundary for real -- each contrasted with process isolation where
process isolation behaves differently, so every test can fail.

The real tests run in both of the driver's modes: `userns` (a mapped user namespace with
id-mapped layers, the default where the kernel and the store allow it) and `root` (no user
namespace; forced with CTR_SANDBOX_USERNS=0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import IS_ROOT, Ctr, busybox_is_static, make_rootfs, needs_busybox, needs_root, process_running
from ctr import cgroups, proc
from ctr.drivers import DRIVERS, MODULES, get_driver, select_driver
from ctr.drivers import sandbox as sb
from ctr.errors import DriverError
from ctr.models import Container, Image, ImageConfig, Mount, RunConfig
from ctr.store import Store

CID = "ab" * 32
SANDBOX = ("--isolation", "hyperv", "--driver", "sandbox")  # microvm comes first when usable
SHARES_KERNEL = "shares the host kernel"


# ============================================================================ the plan, as data
def _store(tmp_path: Path) -> Store:
    return Store(tmp_path / "root").open()


def _container(**cfg) -> Container:
    cfg.setdefault("command", ["sh"])
    cfg.setdefault("env", ["PATH=/bin"])
    return Container(id=CID, name="c", image="sha256:" + "cd" * 32, image_name="bb", isolation="hyperv",
                     driver="sandbox", config=RunConfig(**cfg))


def _image(builtin: bool = False) -> Image:
    return Image(id="sha256:" + "cd" * 32, names=["bb:latest"], layers=[] if builtin else ["sha256:" + "ef" * 32],
                 config=ImageConfig(), builtin=builtin)


V1 = [cgroups.Hierarchy(1, "/sys/fs/cgroup/memory", "me", ("memory",), True, has_memsw=True),
      cgroups.Hierarchy(1, "/sys/fs/cgroup/pids", "", ("pids",), True),
      cgroups.Hierarchy(1, "/sys/fs/cgroup/cpu", "", ("cpu",), True)]
V2 = [cgroups.Hierarchy(2, "/sys/fs/cgroup", "", ("cpu", "memory", "pids", "io"), True)]


def _by_target(launch):
    return {m.target: m for m in launch.mounts}


def test_plan_userns_namespaces_identity_and_caps(tmp_path):
    store = _store(tmp_path)
    plan = cgroups.plan(sb.limits_for(_container()), CID, V1)
    la = sb.build_launch(store, _container(hostname="web"), _image(), plan, userns=True)
    assert set(la.namespaces) == {"user", "mnt", "pid", "net", "ipc", "uts"}
    assert la.map_root_to == sb.SUBID_BASE == 100000
    assert la.hostname == "web"
    assert la.root == str(store.container_path(CID, "merged")) and la.pivot
    assert la.no_new_privs and la.drop_caps
    assert "SYS_ADMIN" not in proc.DEFAULT_CAPS and "SYS_PTRACE" not in proc.DEFAULT_CAPS
    assert set(proc.DEFAULT_CAPS) == {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
                                      "SETPCAP", "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD",
                                      "AUDIT_WRITE", "SETFCAP"}
    assert proc.CAPS["SYS_ADMIN"] == 21 and proc.CAPS["SETFCAP"] == 31


def test_plan_userns_maps_the_layers_before_the_overlay(tmp_path):
    store = _store(tmp_path)
    plan = cgroups.plan(sb.limits_for(_container()), CID, V1)
    la = sb.build_launch(store, _container(), _image(), plan, userns=True)
    outside = [m for m in la.mounts if not m.in_root]
    ctr_dir = str(store.container_dir(CID))
    assert [(m.target, m.flags) for m in outside[:2]] == [
        (ctr_dir, ("bind", "idmap")), (str(store.layers_dir), ("bind", "idmap"))]
    overlay = outside[2]
    assert overlay.fstype == "overlay" and overlay.target == la.root
    # the very options process isolation uses: trusted xattrs, no redirects, whole-file copy-up
    assert "userxattr" not in overlay.data and "redirect_dir=off" in overlay.data
    lower = overlay.data.split("lowerdir=")[1].split(",")[0].split(":")
    assert lower == [str(store.container_path(CID, "init")), str(store.layer_dir("sha256:" + "ef" * 32))]


def test_plan_runtime_filesystems_masks_and_volumes(tmp_path):
    store = _store(tmp_path)
    plan = cgroups.plan(sb.limits_for(_container()), CID, V1)
    vol = Mount(source=str(tmp_path), target="/data", readonly=True)
    la = sb.build_launch(store, _container(mounts=[vol]), _image(), plan, userns=True)
    m = _by_target(la)
    assert m["/proc"].fstype == "proc"
    assert m["/dev"].fstype == "tmpfs" and m["/tmp"].fstype == "tmpfs" and m["/dev/null"].flags == ("bind",)
    assert "/sys" not in m  # a utility VM's sysfs is its own; the host's is not shown
    for p in sb.MASKED_FILES:
        assert m[p].source == "/dev/null"
    for p in sb.READONLY:
        assert "ro" in m[p].flags and m[p].source == la.root + p
    assert m["/data"].flags == ("bind", "ro", "nodev", "idmap")  # owners map like the layers'
    # the order the kernel needs: /proc before what masks parts of it, the volume last
    targets = [x.target for x in la.mounts if x.in_root]
    assert targets.index("/proc") < targets.index("/proc/sys") < targets.index("/data")


def test_plan_root_mode_has_no_user_namespace(tmp_path):
    store = _store(tmp_path)
    plan = cgroups.plan(sb.limits_for(_container()), CID, V1)
    la = sb.build_launch(store, _container(), _image(), plan, userns=False)
    assert set(la.namespaces) == {"mnt", "pid", "net", "ipc", "uts"}
    assert la.map_root_to is None
    assert not any("idmap" in m.flags for m in la.mounts)
    assert la.drop_caps and la.no_new_privs


def test_plan_host_image_maps_the_host_root_on_the_container_dir(tmp_path):
    store = _store(tmp_path)
    plan = cgroups.plan(sb.limits_for(_container()), CID, V1)
    la = sb.build_launch(store, _container(), _image(builtin=True), plan, userns=True)
    outside = [m for m in la.mounts if not m.in_root]
    hostroot = str(store.container_path(CID, "hostroot"))
    assert outside[0].target == str(store.container_dir(CID))  # first: the mount below hostroot
    assert (outside[1].target, outside[1].source) == (hostroot, "/")
    assert outside[2].data.split("lowerdir=")[1].split(",")[0] == hostroot
    la = sb.build_launch(store, _container(), _image(builtin=True), plan, userns=False)
    assert [m for m in la.mounts if not m.in_root][0].data.split("lowerdir=")[1].split(",")[0] == "/"


def test_plan_default_size_like_a_utility_vm(tmp_path):
    limits = sb.limits_for(_container())
    assert (limits.memory, limits.cpus, limits.pids) == (1 << 30, 2.0, 4096)
    limits = sb.limits_for(_container(memory=16 << 20, cpus=0.5))
    assert (limits.memory, limits.cpus, limits.pids) == (16 << 20, 0.5, 64)
    assert cgroups.Limits.for_memory(1 << 20, None).pids == cgroups.MIN_PIDS


def test_cgroup_v1_plan():
    p = cgroups.plan(cgroups.Limits(64 << 20, 1.5, 64), CID, V1)
    assert p.mechanism == "cgroup v1" and not p.rlimits
    mem = f"/sys/fs/cgroup/memory/me/ctr/{CID}"
    assert p.groups == [mem, f"/sys/fs/cgroup/pids/ctr/{CID}", f"/sys/fs/cgroup/cpu/ctr/{CID}"]
    assert p.procs == [g + "/tasks" for g in p.groups]  # a thread move: no global lock
    writes = {s[1]: s[2] for s in p.steps if s[0] == "write"}
    assert writes[mem + "/memory.limit_in_bytes"] == str(64 << 20)
    assert writes[mem + "/memory.memsw.limit_in_bytes"] == str(64 << 20)  # swap cannot dodge it
    assert writes[f"/sys/fs/cgroup/pids/ctr/{CID}/pids.max"] == "64"
    assert writes[f"/sys/fs/cgroup/cpu/ctr/{CID}/cpu.cfs_quota_us"] == "150000"
    assert writes[f"/sys/fs/cgroup/cpu/ctr/{CID}/cpu.cfs_period_us"] == "100000"
    # every group is made before anything is written into it
    made = [s[1] for s in p.steps if s[0] == "mkdir"]
    assert all(any(w.startswith(d + "/") for d in made) for w in writes)
    la = sb.build_launch(Store(Path("/nonexistent")), _container(), _image(), p, userns=True)
    assert proc.cgroup_files(la) == p.procs


def test_cgroup_v1_without_memsw_or_pids_falls_back_per_limit():
    hs = [cgroups.Hierarchy(1, "/cg/memory", "", ("memory",), True, has_memsw=False)]
    p = cgroups.plan(cgroups.Limits(64 << 20, 2, 64), CID, hs)
    assert p.mechanism == "cgroup v1"
    assert not any("memsw" in s[1] for s in p.steps)
    assert p.rlimits == {"RLIMIT_NPROC": 64}
    assert p.enforced["cpus"].startswith("not enforced")


def test_cgroup_v2_plan():
    p = cgroups.plan(cgroups.Limits(64 << 20, 2, 64), CID, V2 + V1)
    assert p.mechanism == "cgroup v2" and p.groups == [f"/sys/fs/cgroup/ctr/{CID}"]
    assert p.steps[0] == ("write", "/sys/fs/cgroup/cgroup.subtree_control", "+cpu +memory +pids")
    writes = {s[1]: s[2] for s in p.steps if s[0] == "write"}
    g = f"/sys/fs/cgroup/ctr/{CID}"
    assert writes[g + "/memory.max"] == str(64 << 20) and writes[g + "/memory.swap.max"] == "0"
    assert writes[g + "/pids.max"] == "64" and writes[g + "/cpu.max"] == "200000 100000"


def test_cgroup_v2_without_controllers_is_skipped():
    """This host's shape: an empty v2 hierarchy next to the v1 controllers."""
    empty_v2 = [cgroups.Hierarchy(2, "/sys/fs/cgroup/unified", "", (), True)]
    assert cgroups.plan(cgroups.Limits(1, 1, 1), CID, empty_v2 + V1).mechanism == "cgroup v1"


def test_no_writable_cgroups_means_rlimits():
    ro = [cgroups.Hierarchy(1, "/cg/memory", "", ("memory",), False)]
    p = cgroups.plan(cgroups.Limits(64 << 20, 2, 64), CID, ro)
    assert p.mechanism == "rlimits" and not p.steps and not p.procs
    assert p.rlimits == {"RLIMIT_AS": 64 << 20, "RLIMIT_NPROC": 64}
    la = sb.build_launch(Store(Path("/nonexistent")), _container(), _image(), p, userns=False)
    assert la.rlimits == p.rlimits and la.cgroup_procs is None


def test_remove_takes_the_shared_parent_once_empty(tmp_path):
    """An empty `ctr` group left under someone else's group would keep them from removing it."""
    a, b = tmp_path / "mem" / "ctr" / ("a" * 64), tmp_path / "mem" / "ctr" / ("b" * 64)
    a.mkdir(parents=True)
    b.mkdir()
    assert cgroups.remove([str(a)]) == []
    assert not a.exists() and b.parent.is_dir()  # b still uses it
    assert cgroups.remove([str(b)]) == []
    assert not (tmp_path / "mem" / "ctr").exists() and (tmp_path / "mem").is_dir()


def test_detect_reads_this_host():
    hs = cgroups.detect()
    for h in hs:
        assert os.path.isdir(h.mount)
        if h.version == 1:
            assert os.path.isdir(os.path.join(h.mount, h.own))


# ============================================================================ selection
def test_hyperv_prefers_microvm_then_sandbox():
    assert DRIVERS["hyperv"] == ("microvm", "sandbox")
    drv = get_driver("hyperv", "sandbox")
    assert drv.emulated and drv.isolation == "hyperv" and SHARES_KERNEL in drv.summary


def test_absent_microvm_is_skipped_and_named(monkeypatch):
    monkeypatch.setitem(MODULES, ("hyperv", "microvm"), "ctr.drivers.no_such_module_here")
    drv = get_driver("hyperv", "microvm")
    av = drv.availability()
    assert not av.usable and "not yet available" in av.reason and "--driver sandbox" in av.fix
    if IS_ROOT:
        assert select_driver("hyperv", None, None).name == "sandbox"
        assert select_driver("hyperv", None, "sandbox").name == "sandbox"
    with pytest.raises(DriverError, match="not yet available"):
        select_driver("hyperv", "microvm", None)
    with pytest.raises(DriverError, match="not yet available"):
        select_driver("hyperv", None, "microvm")  # config names it: no silent substitute


def test_a_usable_microvm_is_chosen_first(monkeypatch, tmp_path):
    (tmp_path / "ctr_fake_microvm.py").write_text(
        "from ctr.drivers.base import Availability, Driver\n"
        "class FakeMicroVM(Driver):\n"
        "    name, isolation = 'microvm', 'hyperv'\n"
        "    def availability(self):\n"
        "        return Availability(True, 'fake')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(MODULES, ("hyperv", "microvm"), "ctr_fake_microvm")
    assert select_driver("hyperv", None, None).name == "microvm"
    if IS_ROOT:  # sandbox needs root
        assert select_driver("hyperv", "sandbox", None).name == "sandbox"
    assert select_driver("hyperv", None, "microvm").name == "microvm"


def test_a_microvm_that_fails_to_load_is_reported(monkeypatch, tmp_path):
    (tmp_path / "ctr_broken_microvm.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(MODULES, ("hyperv", "microvm"), "ctr_broken_microvm")
    av = get_driver("hyperv", "microvm").availability()
    assert not av.usable and "cannot be loaded" in av.reason and "no_such_dependency_xyz" in av.reason


# ============================================================================ for real

def _userns_supported(tmp_path_factory) -> tuple[bool, str]:
    store = Store(tmp_path_factory.mktemp("probe") / "root").open()
    return sb.probe_userns(store)


@pytest.fixture(scope="session")
def userns_support(tmp_path_factory):
    if not IS_ROOT:
        return False, "not root"
    return _userns_supported(tmp_path_factory)


@pytest.fixture(params=["userns", "root"])
def mode(request, ctr, userns_support):
    if request.param == "userns" and not userns_support[0]:
        pytest.skip(f"no mapped user namespace here: {userns_support[1]}")
    ctr.env["CTR_SANDBOX_USERNS"] = "1" if request.param == "userns" else "0"
    return request.param


@pytest.fixture
def bb(ctr, busybox_image, mode):
    return busybox_image


def hv(ctr: Ctr, *args: str, **kw):
    return ctr("run", "--rm", *SANDBOX, *args, **kw)


def out_of(r) -> str:
    assert r.code == 0, f"exit {r.code}\nstdout: {r.out}\nstderr: {r.err}"
    return r.out


@pytest.fixture
def host_sleep():
    p = subprocess.Popen(["sleep", "300"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()


@needs_root
@needs_busybox
def test_pid1_is_the_containers_init_and_host_pids_are_hidden(ctr, bb, host_sleep):
    listing = "echo $$; cd /proc && echo [0-9]*"  # a glob: nothing to stat, no race with exits
    out = out_of(hv(ctr, bb, "sh", "-c", listing))
    me, *entries = out.split()
    pids = sorted(int(e) for e in entries)
    assert me == "2"  # the workload; pid 1 is ctr's init, its parent
    assert pids[0] == 1 and len(pids) <= 4, pids  # init, sh, ls (and nothing of the host's)
    assert host_sleep not in pids
    # contrast: a process container sees the host's processes
    out = out_of(ctr("run", "--rm", bb, "sh", "-c", listing))
    assert str(host_sleep) in out.split()


@needs_root
@needs_busybox
def test_cannot_signal_a_host_process(ctr, bb, host_sleep):
    r = hv(ctr, bb, "kill", "-0", str(host_sleep))
    assert r.code != 0
    assert out_of(ctr("run", "--rm", bb, "kill", "-0", str(host_sleep))) == ""  # process: it can


@needs_root
@needs_busybox
def test_own_hostname(ctr, bb):
    host = os.uname().nodename
    assert out_of(hv(ctr, "--hostname", "utility-vm", bb, "hostname")).strip() == "utility-vm"
    r = ctr("run", *SANDBOX, "--name", "h", bb, "sh", "-c", "hostname; cat /proc/sys/kernel/hostname")
    cid = json.loads(ctr.ok("inspect", "h"))[0]["Id"]
    assert out_of(r).split() == [cid[:12]] * 2
    assert os.uname().nodename == host  # the host's own name is untouched


@needs_root
@needs_busybox
def test_only_loopback_and_it_is_up(ctr, bb):
    out = out_of(hv(ctr, bb, "cat", "/proc/net/dev"))
    ifaces = [line.split(":")[0].strip() for line in out.splitlines()[2:]]
    assert ifaces == ["lo"]
    assert " UP " in out_of(hv(ctr, bb, "ifconfig", "lo"))
    # contrast: a process container shares the host's interfaces
    host_ifaces = [ln.split(":")[0].strip() for ln in Path("/proc/net/dev").read_text().splitlines()[2:]]
    out = out_of(ctr("run", "--rm", bb, "cat", "/proc/net/dev"))
    assert [ln.split(":")[0].strip() for ln in out.splitlines()[2:]] == host_ifaces


@needs_root
@needs_busybox
def test_cannot_mount(ctr, bb):
    r = hv(ctr, bb, "sh", "-c", "mkdir -p /mnt && mount -t tmpfs none /mnt")
    assert r.code != 0 and "denied" in (r.out + r.err).lower()
    # contrast: process isolation's root keeps SYS_ADMIN in its own mount namespace
    assert ctr("run", "--rm", bb, "sh", "-c", "mkdir -p /mnt && mount -t tmpfs none /mnt").code == 0


@needs_root
@needs_busybox
def test_capabilities_no_new_privs_and_no_nested_user_namespaces(ctr, bb, mode):
    out = out_of(hv(ctr, bb, "cat", "/proc/self/status"))
    status = dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    want = sum(1 << proc.CAPS[c] for c in proc.DEFAULT_CAPS)
    assert int(status["CapBnd"], 16) == want
    assert int(status["CapEff"], 16) == want  # root inside: exactly the bounding set
    assert status["NoNewPrivs"].strip() == "1"
    uid_map = out_of(hv(ctr, bb, "cat", "/proc/self/uid_map")).split()
    if mode == "userns":
        assert uid_map == ["0", "100000", "65536"]
        assert out_of(hv(ctr, bb, "cat", "/proc/sys/user/max_user_namespaces")).strip() == "0"
    else:
        assert uid_map == ["0", "0", "4294967295"]


@needs_root
@needs_busybox
def test_proc_is_masked_and_kernel_settings_read_only(ctr, bb):
    for target in ("/proc/sys/vm/drop_caches", "/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern"):
        r = hv(ctr, bb, "sh", "-c", f"echo 1 > {target}")
        assert r.code != 0, target
    assert out_of(hv(ctr, bb, "cat", "/proc/sys/kernel/core_pattern")).strip() == \
        Path("/proc/sys/kernel/core_pattern").read_text().strip()


@needs_root
@needs_busybox
def test_volumes_carry_no_devices(ctr, bb, tmp_path):
    """Root mode keeps CAP_MKNOD: a node made on a volume (a host directory) must not open."""
    vol = tmp_path / "vol"
    vol.mkdir()
    out = out_of(hv(ctr, "-v", f"{vol}:/v", bb, "cat", "/proc/self/mountinfo"))
    line = next(ln for ln in out.splitlines() if ln.split()[4] == "/v")
    assert "nodev" in line.split()[5].split(",")


@needs_root
@needs_busybox
def test_ctrs_init_is_closed_to_the_workload(ctr, bb):
    """PID 1 is a forked ctr: its environment, memory, executable and root stay out of reach."""
    for cmd in ("cat /proc/1/environ", "cat /proc/1/mem", "cat /proc/1/exe", "ls /proc/1/root/"):
        r = hv(ctr, bb, "sh", "-c", f"{cmd} > /dev/null")
        assert r.code != 0, cmd
    assert "PATH=" in out_of(hv(ctr, bb, "cat", "/proc/self/environ"))  # its own: readable


@needs_root
@needs_busybox
def test_the_store_is_not_reachable_from_inside(ctr, bb):
    """A second hyperv container cannot read the first's writable layer: nothing of the store,
    and none of the first container's processes, is there to reach."""
    ctr.ok("run", *SANDBOX, "--name", "first", bb, "sh", "-c", "echo secret > /secret")
    first = json.loads(ctr.ok("inspect", "first"))[0]
    upper = Path(first["StaticDir"]) / "upper"
    assert (upper / "secret").read_text() == "secret\n"  # it is there, on the host
    me = os.getpid()
    script = (f"for p in {ctr.root} {upper} {upper}/secret /proc/1/root{upper} /proc/{me}/root{upper}; do "
              f"test -e $p && echo reachable $p; done; cat /proc/*/root{upper}/secret 2>/dev/null; true")
    assert out_of(hv(ctr, bb, "sh", "-c", script)) == ""
    # contrast: a process container reaches it through a host process's /proc/PID/root
    out = out_of(ctr("run", "--rm", bb, "sh", "-c", script))
    assert f"reachable /proc/{me}/root{upper}" in out and "secret" in out


@needs_root
@needs_busybox
def test_memory_limit_is_enforced(ctr, bb):
    grab = "head -c 200m /dev/zero | tail | wc -c"  # tail must hold the whole line
    r = hv(ctr, "--memory", "64m", bb, "sh", "-c", "head -c 200m /dev/zero | tail >/dev/null")
    assert r.code != 0, r  # killed by the OOM killer (137) under a cgroup, fails under rlimits
    assert out_of(hv(ctr, "--memory", "512m", bb, "sh", "-c", grab)).strip() == str(200 << 20)
    assert subprocess.run(["true"]).returncode == 0  # the host is fine


@needs_root
@needs_busybox
def test_fork_bomb_is_capped_by_the_pids_limit(ctr, bb):
    """--memory 16m gives a limit of 64 tasks. A loop forking 30 s sleeps until the shell dies
    of a failed fork counts how far it got (in a file, read back with builtins: no fork left);
    pid 1's exit then ends the namespace, sleeps and all."""
    counted = ("sh -c 'i=0; while true; do sleep 30 & i=$((i+1)); echo $i > /tmp/n; done'; "
               "read n < /tmp/n; echo started=$n")
    t = time.monotonic()
    r = hv(ctr, "--memory", "16m", bb, "sh", "-c", counted, timeout=60)
    assert time.monotonic() - t < 25, "the sleeps outlived the container"
    assert "can't fork" in r.err, r
    n = int(r.out.split("started=")[1])
    assert 40 <= n <= 64 - 3, n  # the cap, less init and the two shells; not memory's limit
    # contrast: with the default size (4096 tasks) the same loop gets past the cap (bounded here)
    r = hv(ctr, bb, "sh", "-c", "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; echo started=$i",
           timeout=60)
    assert out_of(r).strip() == "started=100"
    # the classic bomb: capped, it dies out (or timeout's SIGKILL ends it), and the host is fine
    t = time.monotonic()
    r = hv(ctr, "--memory", "16m", bb, "timeout", "-s", "KILL", "10", "sh", "-c", "f() { f | f & }; f; wait",
           timeout=60)
    assert time.monotonic() - t < 30
    assert subprocess.run(["true"], timeout=10).returncode == 0
    assert ctr("ps", "-q").out == ""


@needs_root
@needs_busybox
@pytest.mark.parametrize("script,code", [
    ("true", 0), ("exit 3", 3), ("kill -TERM $$", 143), ("kill -KILL $$", 137),
    ("exec /etc/passwd", 126), ("exec no-such-command", 127),
])
def test_exit_codes_as_process_isolation(ctr, busybox_image, script, code):
    assert ctr("run", "--rm", busybox_image, "sh", "-c", script).code == code  # the reference
    assert hv(ctr, busybox_image, "sh", "-c", script).code == code


@needs_root
@needs_busybox
def test_invoke_failures_as_process_isolation(ctr, bb):
    r = hv(ctr, bb, "no-such-command")
    assert r.code == 127 and "not found" in r.err
    r = hv(ctr, bb, "/etc/passwd")
    assert r.code == 126
    r = hv(ctr, "-u", "nosuchuser", bb, "true")
    assert r.code == 125 and "nosuchuser" in r.err


@needs_root
@needs_busybox
def test_signals_reach_the_workload_through_init(ctr, bb):
    """`ctr stop` (SIGTERM) ends a shell that would ignore it as a real pid 1."""
    ctr.ok("run", "-d", *SANDBOX, "--name", "svc", bb, "sleep", "300")
    t = time.monotonic()
    ctr.ok("stop", "-t", "20", "svc")
    assert time.monotonic() - t < 15, "SIGTERM did not reach the workload; stop had to kill"
    info = json.loads(ctr.ok("inspect", "svc"))[0]
    assert info["State"]["Status"] == "exited"


@needs_root
@needs_busybox
def test_run_warns_once_and_every_listing_says_emulated(ctr, bb):
    r = ctr("run", *SANDBOX, "--name", "e", bb, "true")
    assert r.code == 0
    warnings = [ln for ln in r.err.splitlines() if "emulated" in ln]
    assert len(warnings) == 1 and SHARES_KERNEL in warnings[0]
    ps = ctr.ok("ps", "-a")
    assert "sandbox (emulated)" in ps
    info = json.loads(ctr.ok("inspect", "e"))[0]["DriverInfo"]
    assert info["emulated"] is True and "shared with the host" in info["kernel"]
    assert info["limits"]["memory"] == 1 << 30 and info["limits"]["cpus"] == 2.0
    assert info["limits"]["mechanism"] in ("cgroup v2", "cgroup v1", "rlimits")
    drivers = json.loads(ctr.ok("info", "--format", "json"))["Drivers"]
    sandbox = next(d for d in drivers if d["Driver"] == "sandbox")
    assert sandbox["Usable"] and sandbox["Emulated"] and SHARES_KERNEL in sandbox["Reason"]
    microvm = next(d for d in drivers if d["Driver"] == "microvm")
    if not Path(__file__).parents[1].joinpath("src/ctr/drivers/microvm.py").exists():
        assert not microvm["Usable"] and "not yet available" in microvm["Reason"]


@needs_root
@needs_busybox
def test_config_sizes_and_selects(ctr, bb, tmp_path):
    Path(ctr.env["CTR_CONFIG"]).write_text("memory: 256m\ncpus: 1\ndrivers:\n  hyperv: sandbox\n")
    ctr.ok("run", "--isolation", "hyperv", "--name", "cfg", bb, "true")
    ctr.ok("run", "--isolation", "hyperv", "--name", "flag", "--memory", "128m", "--cpus", "0.5", bb, "true")
    cfg = json.loads(ctr.ok("inspect", "cfg"))[0]
    flag = json.loads(ctr.ok("inspect", "flag"))[0]
    assert cfg["DriverInfo"]["limits"]["memory"] == 256 << 20 and cfg["DriverInfo"]["limits"]["cpus"] == 1.0
    assert flag["DriverInfo"]["limits"]["memory"] == 128 << 20 and flag["DriverInfo"]["limits"]["cpus"] == 0.5
    Path(ctr.env["CTR_CONFIG"]).write_text("drivers:\n  hyperv: nosuchdriver\n")
    r = ctr("run", "--rm", "--isolation", "hyperv", bb, "true")
    assert r.code == 125 and "nosuchdriver" in r.err


@needs_root
@needs_busybox
def test_cgroups_go_with_the_container(ctr, bb):
    ctr.ok("run", *SANDBOX, "--name", "g", bb, "true")
    limits = json.loads(ctr.ok("inspect", "g"))[0]["DriverInfo"]["limits"]
    for g in limits["groups"]:
        assert not os.path.exists(g), "removed when the container exited"
    # a running container killed by `rm -f`: its processes and groups go
    ctr.ok("run", "-d", *SANDBOX, "--name", "r", bb, "sleep", "300")
    limits = json.loads(ctr.ok("inspect", "r"))[0]["DriverInfo"]["limits"]
    if limits["mechanism"].startswith("cgroup"):
        assert all(os.path.isdir(g) for g in limits["groups"])
        pids = cgroups.pids_in(limits["groups"][0])
        assert pids
        # every hierarchy holds the same processes: init and the workload joined each group
        assert all(sorted(cgroups.pids_in(g)) == sorted(pids) for g in limits["groups"]), limits
    else:
        pids = []
    ctr.ok("rm", "-f", "r")
    for g in limits["groups"]:
        assert not os.path.exists(g)
    time.sleep(0.2)
    for pid in pids:
        assert not proc.pid_alive(pid)


def _status(pid: int) -> dict[str, str]:
    return dict(ln.split(":\t", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in ln)


def _host_pid(cid: str, argv: list[str], timeout: float = 20) -> int:
    """The host pid of the container's process running exactly `argv`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = process_running(cid, *argv)
        if pid:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no process {argv} in the container")


@needs_root
@needs_busybox
def test_exec_joins_the_container_under_its_confinement(ctr, bb, mode):
    """exec into a sandbox container: its namespaces (its user namespace first, as its root),
    its cgroups, and the workload's own confinement -- capability set, no_new_privs -- seen
    from the host side; writes land in its diff, codes and -u, -e, -w, -i, -t as for process
    isolation."""
    cid = ctr.ok("run", "-d", *SANDBOX, "--name", "x", "--hostname", "box", bb,
                 "sh", "-c", "echo $$ > /tmp/pid1; exec sleep 300").strip()
    session = None
    try:
        workload = _host_pid(cid, ["sleep", "300"])
        session = subprocess.Popen([sys.executable, "-m", "ctr", "exec", "x", "sleep", "200"], env=ctr.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        joined = _host_pid(cid, ["sleep", "200"])
        for ns in ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup"):
            assert os.readlink(f"/proc/{joined}/ns/{ns}") == os.readlink(f"/proc/{workload}/ns/{ns}"), ns
        assert Path(f"/proc/{joined}/cgroup").read_text() == Path(f"/proc/{workload}/cgroup").read_text()
        mine, theirs = _status(joined), _status(workload)
        for key in ("Uid", "Gid", "CapBnd", "CapEff", "CapPrm", "NoNewPrivs", "Seccomp"):
            assert mine[key] == theirs[key], (key, mine[key], theirs[key])
        assert mine["Uid"].split()[0] == (str(sb.SUBID_BASE) if mode == "userns" else "0")
        assert mine["NoNewPrivs"] == "1" and int(mine["CapBnd"], 16) & (1 << proc.CAPS["SYS_ADMIN"]) == 0
        # from inside: the workload's pid namespace, hostname and loopback-only network
        out = out_of(ctr("exec", "x", "sh", "-c", "kill -0 $(cat /tmp/pid1) && hostname && id -u && "
                                                   "tail -n +3 /proc/net/dev | cut -d: -f1"))
        assert [ln.strip() for ln in out.splitlines()] == ["box", "0", "lo"], out
        # exec -d: the same confinement, in the background, nothing printed
        assert ctr.ok("exec", "-d", "x", "sleep", "150") == ""
        detached = _host_pid(cid, ["sleep", "150"])
        assert Path(f"/proc/{detached}/cgroup").read_text() == Path(f"/proc/{workload}/cgroup").read_text()
        assert all(_status(detached)[k] == theirs[k] for k in ("Uid", "CapBnd", "NoNewPrivs"))
        assert os.readlink(f"/proc/{detached}/ns/pid") == os.readlink(f"/proc/{workload}/ns/pid")
        # ctr exec's signals reach the session: SIGTERM -> 143
        session.terminate()
        assert session.wait(timeout=20) == 143, session.stderr.read()
        # writes land in the container's diff, owned by its root as with process isolation
        assert out_of(ctr("exec", "x", "sh", "-c", "echo made > /made-by-exec")) == ""
        assert "A /made-by-exec" in ctr.ok("diff", "x").splitlines()
        upper = ctr.root / "containers" / cid / "upper" / "made-by-exec"
        assert (upper.stat().st_uid, upper.read_text()) == (0, "made\n")
        assert ctr("exec", "x", "sh", "-c", "exit 3").code == 3
        assert ctr("exec", "x", "no-such-command").code == 127
        assert ctr.ok("exec", "-u", "nobody", "x", "id", "-u") == "65534\n"
        assert ctr.ok("exec", "-e", "FOO=bar", "-w", "/tmp", "x", "sh", "-c", 'echo "$FOO $(pwd)"') == "bar /tmp\n"
        assert ctr.ok("exec", "-i", "x", "cat", input="piped\n") == "piped\n"
        p = subprocess.run(["script", "-eqc", f"{sys.executable} -m ctr exec -t x sh -c 'tty; exit 4'", "/dev/null"],
                           capture_output=True, text=True, env=ctr.env, timeout=60)
        assert p.returncode == 4 and "/dev/pts/" in p.stdout, p
        # the container stopping ends an exec session with it (137)
        session = subprocess.Popen([sys.executable, "-m", "ctr", "exec", "x", "sleep", "250"], env=ctr.env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _host_pid(cid, ["sleep", "250"])
        ctr.ok("stop", "-t", "0", "x")
        assert session.wait(timeout=20) == 137
        r = ctr("exec", "x", "true")
        assert r.code == 125 and "is not running" in r.err
    finally:
        if session is not None and session.poll() is None:
            session.kill()
            session.wait()
        ctr("rm", "-f", "x")


@needs_root
@needs_busybox
def test_cp_in_and_out_of_a_running_sandbox(ctr, bb, mode, tmp_path):
    """cp joins the running container's user and mount namespaces as its root: what it writes
    is the container root's (on disk 0, in the diff, as the workload's own writes), and it
    reads what the workload sees, its own /tmp included."""
    cid = ctr.ok("run", "-d", *SANDBOX, "--name", "x", bb, "sleep", "300").strip()
    try:
        (tmp_path / "f").write_text("from host\n")
        ctr.ok("cp", str(tmp_path / "f"), "x:/root/")
        assert ctr.ok("exec", "x", "stat", "-c", "%u:%g %s", "/root/f") == "0:0 10\n"
        assert (ctr.root / "containers" / cid / "upper" / "root" / "f").stat().st_uid == 0
        assert "A /root/f" in ctr.ok("diff", "x").splitlines()
        ctr.ok("exec", "x", "sh", "-c", "echo in-tmpfs > /tmp/t")
        ctr.ok("cp", "x:/tmp/t", str(tmp_path / "t"))
        assert (tmp_path / "t").read_text() == "in-tmpfs\n"
        r = ctr("cp", "x:/tmp/../../../etc/shadow-nope", str(tmp_path))  # resolved inside its root
        assert r.code == 1 and "no such file" in r.err
    finally:
        ctr("rm", "-f", "x")


@needs_root
@needs_busybox
def test_top_shows_the_container_not_ctrs_relay(ctr, bb):
    cid = ctr.ok("run", "-d", *SANDBOX, "--name", "x", bb, "sleep", "300").strip()
    try:
        relay = json.loads(ctr.ok("inspect", "x"))[0]["Process"]["Pid"]
        pids = {int(ln.split()[1]) for ln in ctr.ok("top", "x").splitlines()[1:]}
        workload = _host_pid(cid, ["sleep", "300"])
        assert workload in pids and relay not in pids and len(pids) == 2  # ctr's init and the workload
    finally:
        ctr("rm", "-f", "x")


@needs_root
@needs_busybox
def test_read_only_root(ctr, bb, mode):
    """--read-only in the sandbox: the root (the clone of the overlay, in the mapped mode) is
    remounted read-only keeping the flags the kernel locked; /tmp stays writable."""
    out = out_of(hv(ctr, "--read-only", bb, "sh", "-c", "touch /x 2>/dev/null; echo root=$?; touch /tmp/y && echo tmp"))
    assert out == "root=1\ntmp\n"


# ============================================================================ the diff grid
def _grid_cases():
    try:
        from test_diff_grid import CASES, add_data_tree
    except ImportError:  # pragma: no cover - the grid module is the reference; a subset otherwise
        CASES = {"add": ("echo new > /data/new.txt", ["C /data", "A /data/new.txt"])}

        def add_data_tree(root: Path) -> None:
            (root / "data").mkdir()
    return CASES, add_data_tree


CASES, add_data_tree = _grid_cases()


def _upper_listing(upper: Path) -> list[tuple]:
    """Each entry of a writable layer: path, type, mode, owner, xattrs, content."""
    out = []
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            xattrs = sorted((x, os.getxattr(p, x, follow_symlinks=False))
                            for x in os.listxattr(p, follow_symlinks=False))
            data = Path(p).read_bytes() if os.path.isfile(p) and not os.path.islink(p) else None
            out.append((os.path.relpath(p, upper), st.st_mode, st.st_uid, st.st_gid, st.st_rdev, xattrs, data))
    return sorted(out)


@pytest.fixture(scope="module", params=["userns", "root"])
def grid(request, tmp_path_factory):
    if not IS_ROOT or not busybox_is_static():
        pytest.skip("needs root and busybox-static")
    base = tmp_path_factory.mktemp("sbgrid")
    ctr = Ctr(base / "root", base / "config.yaml")
    if request.param == "userns":
        ok, why = sb.probe_userns(Store(base / "probe").open())
        if not ok:
            pytest.skip(f"no mapped user namespace here: {why}")
    ctr.env["CTR_SANDBOX_USERNS"] = "1" if request.param == "userns" else "0"
    rootfs = make_rootfs(base / "rootfs")
    add_data_tree(rootfs)
    ctr.ok("image", "import", str(rootfs), "grid")

    def one(case: str, isolation: str) -> tuple:
        name = f"{case}-{isolation}"
        how = SANDBOX if isolation == "hyperv" else ("--isolation", "process")
        r = ctr("run", "--name", name, *how, "grid", "sh", "-c", CASES[case][0])
        d = ctr("diff", name)
        cid = json.loads(ctr.ok("inspect", name))[0]["Id"]
        return r, d, _upper_listing(ctr.root / "containers" / cid / "upper")

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futs = {(c, i): pool.submit(one, c, i) for c in CASES for i in ("process", "hyperv")}
            results = {k: f.result() for k, f in futs.items()}
    finally:
        ctr.cleanup()
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_diff_grid_same_as_process_isolation(grid, case):
    run_p, diff_p, upper_p = grid[(case, "process")]
    run_h, diff_h, upper_h = grid[(case, "hyperv")]
    assert run_h.code == 0, run_h
    assert [ln for ln in diff_h.out.splitlines() if ln] == CASES[case][1]
    assert diff_h.out == diff_p.out
    # not just the same diff: the same writable layer, owners and overlay xattrs included
    assert upper_h == upper_p
