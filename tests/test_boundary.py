"""The boundary under attack, per isolation level. tests/test_sandbox.py checks the promises one
by one (pid 1, host pids hidden, no signal, no mount, caps, masked /proc, the store out of
reach, --memory, the fork bomb); this file attacks them the way an escaping workload would:

- process isolation has no boundary beyond the filesystem view, and the tests say so: it
  sees and signals host processes and reads and writes host files through /proc/PID/root;
- hyperv isolation (the `sandbox` driver, and `microvm` when it is usable here):
  a chroot escape lands back in the container's own root; /proc/self/root, /proc/*/root and
  /proc/*/cwd lead nowhere on the host; neither ctr's python nor the image's files can be
  overwritten through /proc/self/exe or /proc/1/exe; a device node it makes cannot be
  opened (nor made, in the mapped user namespace); a running neighbour's processes and
  writable layer are invisible to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IS_ROOT, busybox_is_static, import_kernel, make_rootfs, needs_busybox, needs_root, qemu_missing

ESCAPE_C = r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/stat.h>
/* the classic chroot escape: chroot into a subdirectory while the working directory stays
   outside it, walk up past the new root, chroot to wherever that is */
int main(int argc, char **argv) {
    struct stat st;
    mkdir("/escape-jail", 0755);
    if (chroot("/escape-jail") != 0) { perror("chroot"); return 2; }
    for (int i = 0; i < 256; i++) chdir("..");
    if (chroot(".") != 0) { perror("chroot ."); return 2; }
    printf("%s\n", stat(argv[1], &st) == 0 ? "ESCAPED" : "contained");
    printf("%s\n", stat("/bin/busybox", &st) == 0 ? "image-root" : "elsewhere");
    return 0;
}
"""


def _build_escape(dest: Path) -> bool:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return False
    src = dest.with_suffix(".c")
    src.write_text(ESCAPE_C)
    r = subprocess.run([cc, "-static", "-O", "-o", str(dest), str(src)], capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One store with an image holding busybox and (when a C compiler can link statically) the
    escape program, and the test kernel imported where qemu can boot (the microvm cases); a
    marker file on the host the workloads must not reach."""
    if not IS_ROOT or not busybox_is_static():
        pytest.skip("needs root and busybox-static")
    from conftest import Ctr

    base = tmp_path_factory.mktemp("boundary")
    ctr = Ctr(base / "root", base / "config.yaml")
    rootfs = make_rootfs(base / "rootfs")
    for applet in ("mknod", "readlink", "chroot", "sha256sum"):
        if not os.path.lexists(rootfs / "bin" / applet):
            os.symlink("busybox", rootfs / "bin" / applet)
    has_escape = _build_escape(rootfs / "bin" / "escape")
    ctr.ok("image", "import", str(rootfs), "bb")
    marker = base / "host-marker"
    marker.write_text("host secret\n")
    hyperv = ["sandbox"]
    no_qemu = qemu_missing()
    if no_qemu is None:
        import_kernel(ctr)
    info = json.loads(ctr.ok("info", "--format", "json"))
    microvm = next(d for d in info["Drivers"] if d["Driver"] == "microvm")
    if microvm["Usable"]:
        hyperv.append("microvm")
    else:
        print(f"microvm cases skip: {no_qemu or microvm['Reason']}")
    yield {"ctr": ctr, "marker": marker, "escape": has_escape, "hyperv": hyperv, "base": base}
    ctr.cleanup()


@pytest.fixture(params=["sandbox", "microvm"])
def hv(request, env):
    """`ctr run --rm --isolation hyperv --driver D …` for each usable hyperv driver."""
    if request.param not in env["hyperv"]:
        pytest.skip(f"hyperv driver {request.param} is not usable here (see `ctr info`)")
    ctr = env["ctr"]

    def run(*args: str, timeout: float = 60):
        return ctr("run", "--rm", "--isolation", "hyperv", "--driver", request.param, *args, timeout=timeout)
    run.driver = request.param
    return run


def out_of(r) -> str:
    assert r.code == 0, f"exit {r.code}\nstdout: {r.out}\nstderr: {r.err}"
    return r.out


# ============================================================================ process isolation
@needs_root
@needs_busybox
def test_process_isolation_is_no_boundary(env):
    """Documented weakness (docs/security.md): a process container sees and signals host
    processes and reads and writes host files through /proc/PID/root."""
    ctr, marker = env["ctr"], env["marker"]
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        me = os.getpid()
        out = out_of(ctr("run", "--rm", "bb", "sh", "-c",
                         f"ls /proc | grep -x {sleeper.pid}; kill -0 {sleeper.pid} && echo signalled; "
                         f"cat /proc/{me}/root{marker}; echo pwned > /proc/{me}/root{marker}.written"))
        assert out.split("\n")[:3] == [str(sleeper.pid), "signalled", "host secret"], out
        assert Path(f"{marker}.written").read_text() == "pwned\n"
        out_of(ctr("run", "--rm", "bb", "kill", "-TERM", str(sleeper.pid)))
        assert sleeper.wait(timeout=10) == -15
    finally:
        sleeper.kill()
        sleeper.wait()
        Path(f"{marker}.written").unlink(missing_ok=True)


# ============================================================================ hyperv
@needs_root
@needs_busybox
def test_chroot_escape_lands_in_the_containers_own_root(env, hv):
    if not env["escape"]:
        pytest.skip("no C compiler that links statically (gcc, libc6-dev) for the escape program")
    out = out_of(hv("bb", "/bin/escape", str(env["marker"])))
    assert out.split() == ["contained", "image-root"], out
    # the same program under process isolation stays inside too (pivot_root, not chroot) —
    # there the way out is /proc/PID/root, above
    out = out_of(env["ctr"]("run", "--rm", "bb", "/bin/escape", str(env["marker"])))
    assert out.split() == ["contained", "image-root"], out


@needs_root
@needs_busybox
def test_proc_links_lead_nowhere_on_the_host(env, hv):
    marker = env["marker"]
    script = (f"readlink /proc/self/root; readlink /proc/1/cwd; "
              f"for p in /proc/self/root{marker} /proc/1/root{marker} /proc/self/cwd{marker} "
              f"/proc/*/root{marker} /proc/*/cwd{marker} /proc/self/fd/*{marker} {marker}; do "
              f"test -e $p && echo REACHED $p; done; "
              f"ls /proc/self/root/ | sort | tr '\\n' ' '; echo; ls / | sort | tr '\\n' ' '")
    out = out_of(hv("bb", "sh", "-c", script)).splitlines()
    assert "REACHED" not in "\n".join(out), out
    assert out[0] == "/"
    assert out[-1] == out[-2], "/proc/self/root is not the container's own root"


@needs_root
@needs_busybox
def test_nothing_is_written_through_proc_exe(env, hv):
    """The workload's /proc/self/exe is the image's busybox (busy: not writable); /proc/1/exe is
    ctr's init (sandbox: a forked python, not even openable; microvm: the guest's own init, a
    busybox in its initramfs, readable and busy). The host's python and the image stay byte
    for byte what they were."""
    ctr = env["ctr"]
    python = os.path.realpath(sys.executable)
    before = hashlib.sha256(Path(python).read_bytes()).hexdigest()
    script = ("echo x >> /proc/self/exe && echo WROTE-SELF; echo x >> /proc/1/exe && echo WROTE-INIT; "
              "cat /proc/1/exe > /dev/null && echo READ-INIT; "
              "ls -l /proc/1/exe 2>&1 | grep -q python && echo SEES-PYTHON; true")
    out = out_of(hv("bb", "sh", "-c", script))
    assert "WROTE" not in out and "SEES-PYTHON" not in out, out
    if hv.driver == "sandbox":
        assert "READ-INIT" not in out, out
    assert hashlib.sha256(Path(python).read_bytes()).hexdigest() == before
    assert ctr("system", "check").code == 0, "the image's layer changed"


@needs_root
@needs_busybox
@pytest.mark.parametrize("mode", ["root", "userns"])
def test_a_device_node_made_inside_cannot_be_opened(env, mode):
    """Root mode keeps CAP_MKNOD (images expect it): the root and /dev are mounted nodev, so a
    node it makes for the host's disk (here, harmlessly, for /dev/null's device) is useless;
    in the mapped user namespace it cannot even be made. Process isolation: it works."""
    ctr = env["ctr"]
    ctr.env["CTR_SANDBOX_USERNS"] = "1" if mode == "userns" else "0"
    try:
        script = ("mknod /n c 1 3 && echo MADE; [ -c /n ] && echo x > /n && echo OPENED; "
                  "mknod /dev/n2 c 1 3 && [ -c /dev/n2 ] && echo x > /dev/n2 && echo OPENED-DEV; "
                  "echo x > /dev/null && echo NULL-OK")
        r = ctr("run", "--rm", "--isolation", "hyperv", "--driver", "sandbox", "bb", "sh", "-c", script)
    finally:
        del ctr.env["CTR_SANDBOX_USERNS"]
    out = out_of(r)
    assert "OPENED" not in out and "NULL-OK" in out, out
    if mode == "userns":
        assert "MADE" not in out
    if mode == "root":
        assert "MADE" in out
    assert "OPENED" in out_of(ctr("run", "--rm", "bb", "sh", "-c", "mknod /n c 1 3 && [ -c /n ] && echo x > /n && echo OPENED"))


@needs_root
@needs_busybox
def test_a_running_neighbour_is_invisible(env, hv):
    """Two hyperv containers at once: the second sees none of the first's processes (so none to
    signal), and cannot reach its writable layer through /proc either."""
    ctr = env["ctr"]
    cid = ctr.ok("run", "-d", "--isolation", "hyperv", "--driver", hv.driver, "bb", "sh", "-c",
                 "echo neighbour-secret > /secret; exec sleep 300").strip()
    try:
        info = json.loads(ctr.ok("inspect", cid))[0]
        upper = Path(info["StaticDir"]) / "upper"
        host_pid = info["State"]["Pid"]
        script = (f"kill -0 {host_pid} && echo SIGNALLED; "
                  f"cat /proc/*/root/secret /proc/*/root{upper}/secret 2>/dev/null; "
                  f"cat /proc/[0-9]*/cmdline | tr '\\0' ' ' | grep -c 'slee[p] 300'; "
                  f"ls /proc | grep -c '^[0-9]'")
        out = out_of(hv("bb", "sh", "-c", script))
        assert "SIGNALLED" not in out and "neighbour-secret" not in out, out
        assert out.split()[-2] == "0", out  # no process of the neighbour's
        if hv.driver == "sandbox":  # (a microvm's /proc lists its own kernel's threads too)
            assert int(out.split()[-1]) <= 6, out  # init, sh, ls, grep, cat, tr: none of the neighbour's
    finally:
        ctr.ok("rm", "-f", cid)
