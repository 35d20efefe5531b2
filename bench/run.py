#!/usr/bin/env python3
"""ctr's benchmark suite: ctr side by side with its peers in one run (issue 7).

    python bench/run.py                    every case on full-size data
    python bench/run.py --quick            one iteration of each on small data (the CI smoke)
    python bench/run.py --only diff,ps200  only the cases named (a case matches if its name
                                           contains one of the words)
    python bench/run.py --list             the cases and their targets

Every contender of a case runs in the same loop, the order reversed on every other
iteration (A B C, C B A, …) so that drift of the machine's load hits all of them alike; the
figures are medians of wall-clock time from spawn to exit (os.posix_spawn + os.wait4, which
peak memory is measured in one more, untimed, run under GNU time: wait4's own figure counts
the spawning process's memory too). A table is printed and the whole run, with the machine,
versions, date and load, is written as JSON to bench/results/ (gitignored).

All state lives in a temporary directory: ctr gets its own CTR_ROOT (and no config),
podman its own --root/--runroot. Nothing else on the machine is touched, and everything is
removed at the end. Peers that cannot run here (podman not installed, not root, …) are
skipped with the reason printed; a full run as root installs podman and runc from Debian
first (--no-install to skip that). A ctr command that fails is an error: the run goes on,
and exits 1 at the end.

The microvm case boots real VMs (qemu, TCG here): `ctr run --rm --isolation hyperv --driver
microvm` against qemu alone booting the same guest — the argv built by ctr.qemu
(`load_plan` + `qemu_command`) from the boot.json an untimed ctr run recorded, with the ports
on files and the image's own tree as the 9p root — so the ratio is what ctr adds around the
boot. It needs root, qemu and a guest kernel (--kernel, $CTR_KERNEL, or one in
$CTR_TEST_KERNEL_DIR / /var/cache/ctr-test-kernel); without one it is skipped with the reason,
and --quick leaves it out.

The timing targets are the issue's; this script reports whether each was met, it never
fails because one was not (benchmarks are not timed tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUSYBOX = shutil.which("busybox")
PODMAN_RUN_FLAGS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1024:1024"]
APPLETS = ("sh", "true", "echo", "cat", "ls", "rm", "mkdir", "touch", "seq", "xargs", "sleep", "env")


# ----------------------------------------------------------------------------- sizes
@dataclass
class Sizes:
    big_image_files: int  # "a 53,000-file image"
    small_image_files: int  # "a 500-file image"
    many_changes: int  # "a container with 10,000 changes"
    containers: int  # "ps -a with 200 containers"
    import_files: int  # "a 400 MB / 50,000-file tar"
    import_bytes: int
    iterations: dict[str, int]
    warmup: int


FULL = Sizes(53_000, 500, 10_000, 200, 50_000, 400_000_000,
             {"startup": 30, "run": 20, "hyperv": 20, "microvm": 12, "diff": 20, "diff10k": 15, "ps200": 20, "import": 3},
             warmup=1)
QUICK = Sizes(1_000, 100, 200, 3, 300, 3_000_000,
              {}, warmup=0)


# ----------------------------------------------------------------------------- model
@dataclass
class Contender:
    label: str
    argv: list[str]
    env: dict[str, str] | None = None
    before: Callable[[], None] | None = None  # untimed, before each timed run
    after: Callable[[], None] | None = None  # untimed, after each timed run
    skip: str | None = None  # why this contender does not run here
    ours: bool = False  # a ctr command: a failure is an error, not a skip
    then: list[list[str]] = field(default_factory=list)  # more commands timed in the same run
    times: list[float] = field(default_factory=list)  # ms
    parts: list[list[float]] = field(default_factory=list)  # ms of argv and of each `then`, per run
    rss: list[int] = field(default_factory=list)  # KiB, peak RSS (one untimed run)
    error: str | None = None

    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None


@dataclass
class Target:
    subject: str  # contender label
    reference: str  # contender label
    limit: float  # subject <= limit * reference
    what: str

    def evaluate(self, by_label: dict[str, Contender]) -> dict:
        s, r = by_label.get(self.subject), by_label.get(self.reference)
        out = {"what": self.what, "subject": self.subject, "reference": self.reference, "limit": self.limit}
        sm, rm = (s.median() if s else None), (r.median() if r else None)
        if sm is None or rm is None or rm <= 0:
            missing = [c.label + ": " + (c.skip or c.error or "no figure") for c in (s, r) if c and c.median() is None]
            out.update(ratio=None, met=None, note="; ".join(missing) or "no figure")
            return out
        ratio = sm / rm
        out.update(ratio=round(ratio, 3), met=ratio <= self.limit, note="")
        return out


@dataclass
class Case:
    name: str
    title: str
    contenders: list[Contender]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    memory: bool = True  # also measure each contender's peak RSS (an extra, untimed run)


# ----------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(argv: list[str], env: dict[str, str] | None = None, check: bool = True, input: bytes | None = None,
       timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, env=env, input=input, capture_output=True, timeout=timeout,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        err = (p.stderr or p.stdout).decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{' '.join(argv[:6])}{' …' if len(argv) > 6 else ''} exited {p.returncode}: "
                           f"{err[-1] if err else ''}")
    return p


class Runner:
    """Spawns a command with stdin and stdout on /dev/null, stderr kept for errors, and returns
    (wall ms, exit status, stderr tail); `peak_rss` runs it under GNU time for its peak RSS
    (wait4's ru_maxrss would not do: at exec the kernel carries the spawning process's own
    high-water mark into the child's, so every child would look as big as this script)."""

    def __init__(self, tmp: Path):
        self.null = os.open(os.devnull, os.O_RDWR)
        self.err_path = tmp / "stderr"
        self.err = os.open(self.err_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def __call__(self, argv: list[str], env: dict[str, str] | None) -> tuple[float, int, str]:
        os.ftruncate(self.err, 0)
        os.lseek(self.err, 0, os.SEEK_SET)
        actions = [(os.POSIX_SPAWN_DUP2, self.null, 0), (os.POSIX_SPAWN_DUP2, self.null, 1),
                   (os.POSIX_SPAWN_DUP2, self.err, 2)]
        t0 = time.perf_counter_ns()
        pid = os.posix_spawnp(argv[0], argv, env if env is not None else os.environ, file_actions=actions)
        _, status = os.waitpid(pid, 0)
        t1 = time.perf_counter_ns()
        code = os.waitstatus_to_exitcode(status)
        tail = ""
        if code != 0:
            os.lseek(self.err, 0, os.SEEK_SET)
            text = os.read(self.err, 65536).decode(errors="replace").strip().splitlines()
            tail = text[-1] if text else ""
        return (t1 - t0) / 1e6, code, tail

    def peak_rss(self, argv: list[str], env: dict[str, str] | None) -> int | None:
        """Peak RSS in KiB of one run of `argv`, or None without GNU time."""
        gnu_time = "/usr/bin/time"
        if not os.access(gnu_time, os.X_OK):
            return None
        out = self.err_path.with_name("rss")
        _, code, _ = self([gnu_time, "-f", "%M", "-o", str(out), *argv], env)
        try:
            return int(out.read_text().split()[-1]) if code == 0 else None
        except (OSError, ValueError, IndexError):
            return None


def ctr_command(python: str) -> list[str]:
    """The installed `ctr` console script beside the interpreter (not a shell shim, whose own
    start-up would be measured too), else `python -m ctr`."""
    script = Path(python).parent / "ctr"
    try:
        with open(script, "rb") as f:
            first = f.readline()
        if first.startswith(b"#!") and b"python" in first:
            return [str(script)]
    except OSError:
        pass
    return [python, "-m", "ctr"]


def guest_kernel(explicit: str | None = None):
    """(the guest kernel for microvm runs, None) or (None, why there is none): `explicit`, else
    $CTR_KERNEL, else the newest kernel in $CTR_TEST_KERNEL_DIR (/var/cache/ctr-test-kernel,
    filled by scripts/fetch-kernel.sh), as tests/test_microvm.py finds it."""
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    from ctr.errors import CtrError
    from ctr.qemu import kernel as qkernel

    path = explicit or os.environ.get("CTR_KERNEL")
    if path:
        try:
            return qkernel.kernel_from_path(path), None
        except CtrError as e:
            return None, f"guest kernel {path}: {e.message}"
    kdir = Path(os.environ.get("CTR_TEST_KERNEL_DIR", "/var/cache/ctr-test-kernel"))
    kernels = qkernel.list_kernels(kdir)
    if not kernels:
        return None, (f"no guest kernel (--kernel, $CTR_KERNEL, or one in {kdir}: "
                      f"scripts/fetch-kernel.sh {kdir})")
    return kernels[0], None


def microvm_unavailable(explicit: str | None = None) -> str | None:
    """Why the microvm case cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (the microvm driver mounts the container's overlay)"
    if not shutil.which("qemu-system-x86_64"):
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    return guest_kernel(explicit)[1]


def machine() -> dict:
    info: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["mem_gib"] = round(int(open("/proc/meminfo").readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    from importlib import metadata

    for dist in ("typer", "click"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    for tool, argv in (("podman", ["podman", "--version"]), ("runc", ["runc", "--version"]),
                       ("tar", ["tar", "--version"])):
        try:
            out = sh(argv, check=False).stdout.decode().splitlines()
            info[tool] = out[0].strip() if out else None
        except OSError:
            info[tool] = None
    try:
        head = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.decode().strip()
        dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "src"]).stdout.strip()
        info["ctr_commit"] = head + ("+dirty" if dirty else "")
    except (OSError, RuntimeError):
        info["ctr_commit"] = None
    return info


# ----------------------------------------------------------------------------- data
def make_rootfs(dest: Path) -> Path:
    """A busybox-sized root filesystem: static busybox, a few applet links, passwd, mount points."""
    for d in ("bin", "etc", "proc", "dev", "sys", "tmp", "root", "data"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", dest / "bin" / applet)
    (dest / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc" / "group").write_text("root:x:0:\n")
    return dest


def write_tar(path: Path, rootfs: Path, files: int, size: int = 16) -> Path:
    """`rootfs` plus `files` generated regular files of `size` bytes under /data/dNNN/ (1,000 a
    directory), as an uncompressed tar."""
    block = os.urandom(1 << 20)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(str(rootfs), arcname=".")
        made_dirs = set()
        for i in range(files):
            d = f"data/d{i // 1000:03d}"
            if d not in made_dirs:
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                tar.addfile(ti)
                made_dirs.add(d)
            ti = tarfile.TarInfo(f"{d}/f{i % 1000:03d}")
            ti.size, ti.mode, ti.mtime = size, 0o644, 1_700_000_000
            off = (i * 7919) % (len(block) - size) if size < len(block) else 0
            tar.addfile(ti, io.BytesIO(block[off:off + size]))
    return path


# ----------------------------------------------------------------------------- the suite
class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.sizes = QUICK if args.quick else FULL
        self.tmp = Path(tempfile.mkdtemp(prefix="ctr-bench-", dir=args.tmp))
        os.chmod(self.tmp, 0o755)  # podman's rootful storage must be reachable
        self.python = args.python or sys.executable
        self.ctr = args.ctr.split() if args.ctr else ctr_command(self.python)
        self.run = Runner(self.tmp)
        self.is_root = os.geteuid() == 0
        self.podman_skip = None
        self.podman_base: list[str] = []
        self.ctr_roots: list[Path] = []
        self.rootfs: Path | None = None
        self.cache: dict[str, Path] = {}
        # Python keeps compiled modules in a cache here, as an installed ctr (and typer, click)
        # has them; PYTHONDONTWRITEBYTECODE (CI sets it) would make every run recompile ctr.
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env["PYTHONPYCACHEPREFIX"] = str(self.tmp / "pycache")

    # --- ctr -------------------------------------------------------------------------------
    def ctr_env(self, name: str) -> dict[str, str]:
        root = self.tmp / f"ctr-{name}"
        if root not in self.ctr_roots:
            self.ctr_roots.append(root)
        env = dict(self.env, CTR_ROOT=str(root), CTR_CONFIG=str(self.tmp / "no-config.yaml"), NO_COLOR="1",
                   CTR_NO_PROGRESS="1")
        env.pop("CTR_DEBUG", None)
        return env

    def ctr_sh(self, store: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh([*self.ctr, *args], env=self.ctr_env(store), check=check)

    # --- podman ----------------------------------------------------------------------------
    def setup_podman(self) -> None:
        if self.args.no_peers:
            self.podman_skip = "peers disabled (--no-peers)"
            return
        if not shutil.which("podman") or not shutil.which("runc"):
            if self.is_root and not self.args.quick and not self.args.no_install:
                log("setup: apt-get install podman runc (Debian packages; --no-install to skip)")
                try:
                    sh(["apt-get", "update", "-qq"], timeout=900)
                    sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "podman", "runc",
                        "uidmap", "slirp4netns"], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
                       timeout=1800)
                except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
                    self.podman_skip = f"podman could not be installed: {e}"
                    return
            if not shutil.which("podman") or not shutil.which("runc"):
                self.podman_skip = ("podman/runc not installed (`apt-get install podman runc`, or run the full "
                                    "benchmark as root, which installs them)")
                return
        if not self.is_root:
            self.podman_skip = "rootless podman is not compared (run as root)"
            return
        self.podman_base = ["podman", "--root", str(self.tmp / "podman"), "--runroot", str(self.tmp / "podman-run"),
                            "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
                            "--events-backend", "file", "--runtime", "runc"]
        try:
            sh([*self.podman_base, "info"], timeout=120)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            self.podman_skip = f"podman does not work here: {e}"

    def podman(self, *args: str) -> list[str]:
        return [*self.podman_base, *args]

    def podman_sh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(self.podman(*args), check=check, timeout=900)

    # --- data ------------------------------------------------------------------------------
    def base_rootfs(self) -> Path:
        if self.rootfs is None:
            self.rootfs = make_rootfs(self.tmp / "rootfs")
        return self.rootfs

    def tar(self, files: int, size: int = 16) -> Path:
        key = f"{files}-{size}"
        if key not in self.cache:
            t0 = time.monotonic()
            self.cache[key] = write_tar(self.tmp / f"image-{key}.tar", self.base_rootfs(), files, size)
            log(f"setup: generated a tar of {files} files × {size} B in {time.monotonic() - t0:.1f}s")
        return self.cache[key]

    def image(self, store: str, files: int, name: str) -> str:
        """Import a tar of `files` generated files into ctr store `store` (and podman) as `name`."""
        tar = self.tar(files)
        self.ctr_sh(store, "image", "import", "-q", str(tar), name)
        if not self.podman_skip and ("podman:" + name) not in self.cache:
            try:
                self.podman_sh("import", "-q", str(tar), name)
                self.cache["podman:" + name] = tar
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                self.podman_skip = f"podman import failed: {e}"
        return name

    # --- cases -----------------------------------------------------------------------------
    def case_startup(self) -> Case:
        env = self.ctr_env("empty")
        app = [self.python, str(HERE / "typer_app.py")]
        cs = [
            Contender("ctr --version", [*self.ctr, "--version"], env, ours=True),
            Contender("typer app --version", [*app, "--version"]),
            Contender("ctr ps -a (empty)", [*self.ctr, "ps", "-a"], env, ours=True),
            Contender("typer app ps -a", [*app, "ps", "-a"]),
            Contender("python -c pass", [self.python, "-c", "pass"]),
            Contender("python -c 'import click'", [self.python, "-c", "import click"]),
            Contender("podman ps -a (empty)", self.podman("ps", "-a"), skip=self.podman_skip),
        ]
        self.ctr_sh("empty", "ps", "-a")  # creates the store, as any first command would
        return Case("startup", "start-up: `--version` and `ps -a` on an empty store", cs, [
            Target("ctr --version", "typer app --version", 1.2, "--version ≤ 1.2 × a minimal typer app"),
            Target("ctr ps -a (empty)", "typer app ps -a", 1.2, "ps -a (empty) ≤ 1.2 × a minimal typer app"),
        ], notes=["peak RSS of `ctr ps -a` is compared with `python -c pass` in the table"])

    def case_run(self) -> Case:
        img = self.image("main", 0, "bb")
        rootfs = self.base_rootfs()
        work = self.tmp / "shell-run"
        work.mkdir(exist_ok=True)
        env = self.ctr_env("main")
        unshare = shutil.which("unshare")
        cs = [
            Contender("ctr run --rm (process/overlay)", [*self.ctr, "run", "--rm", img, "/bin/true"], env, ours=True),
            Contender("podman run --rm (runc)", self.podman("run", "--rm", *PODMAN_RUN_FLAGS, img, "/bin/true"),
                      skip=self.podman_skip),
            Contender("shell: overlay + chroot", ["sh", str(HERE / "shell_run.sh"), str(rootfs), str(work), "/bin/true"],
                      skip=None if self.is_root and unshare else "needs root and unshare(1)"),
        ]
        return Case("run", "`run --rm IMG /bin/true`, process isolation, overlay driver, busybox-sized image", cs, [
            Target(cs[0].label, cs[1].label, 0.5, "run --rm ≤ 0.5 × podman run --rm"),
        ])

    def case_hyperv(self) -> Case:
        img = self.image("main", 0, "bb")
        env = self.ctr_env("main")
        cs = [
            Contender("ctr run --rm hyperv/sandbox",
                      [*self.ctr, "run", "--rm", "--isolation", "hyperv", "--driver", "sandbox", img, "/bin/true"],
                      env, ours=True),
            Contender("ctr run --rm process/overlay", [*self.ctr, "run", "--rm", img, "/bin/true"], env, ours=True),
        ]
        return Case("hyperv", "`run --rm` hyperv/sandbox against process/overlay", cs, [
            Target(cs[0].label, cs[1].label, 1.5, "hyperv/sandbox ≤ 1.5 × process/overlay"),
        ])

    def case_microvm(self) -> Case:
        title = "`run --rm` hyperv/microvm (qemu) against a raw qemu boot of the same guest"
        labels = ("ctr run --rm hyperv/microvm", "raw qemu: the same guest, /bin/true")
        target = [Target(labels[0], labels[1], 1.15, "hyperv/microvm ≤ 1.15 × raw qemu boot of the same guest")]
        why = microvm_unavailable(self.args.kernel)
        if why:
            return Case("microvm", title, [Contender(x, [], skip=why) for x in labels], target, memory=False)
        kernel, _ = guest_kernel(self.args.kernel)
        img = self.image("microvm", 0, "bb")
        self.ctr_sh("microvm", "system", "kernel", "import", str(kernel.image),
                    *(["--modules", str(kernel.modules)] if kernel.modules else []))
        # one untimed run, kept: it builds the initramfs cache and the accelerator probe, and its
        # vm/ directory records the machine and guest ctr booted (boot.json)
        self.ctr_sh("microvm", "run", "--name", "probe", "--isolation", "hyperv", "--driver", "microvm",
                    img, "/bin/true")
        cdir = next(p.parent for p in (self.tmp / "ctr-microvm" / "containers").glob("*/microvm.json"))
        argv, env, before, after = self.raw_qemu(cdir)
        self.ctr_sh("microvm", "rm", "probe")
        cs = [
            Contender(labels[0], [*self.ctr, "run", "--rm", "--isolation", "hyperv", "--driver", "microvm",
                                  img, "/bin/true"], self.ctr_env("microvm"), ours=True),
            Contender(labels[1], argv, env, before=before, after=after),
        ]
        return Case("microvm", title, cs, target, notes=[
            "ctr: the whole command — start-up, store, overlay mount, the helper, the per-run initrd, "
            "qemu with socket ports, streaming the output, the exit code, removing the container",
            "raw qemu: qemu-system-x86_64 alone, its argv built by ctr.qemu (plan_boot/qemu_command) from "
            "the boot ctr recorded: same kernel, initramfs + run.conf, machine, accelerator, memory, cpus, "
            "kernel command line, exec-slot listeners; the ports ctr reads go to files (the status is checked: "
            "`exit 0`) and the 9p root is the image's tree itself, not an overlay over it",
        ], memory=False)

    def raw_qemu(self, cdir: Path):
        """argv, env, before, after for booting, with qemu alone, the guest the microvm container
        in `cdir` booted (its vm/boot.json), on the image's own tree."""
        from ctr.qemu import Kernel, base_initramfs, qemu_command
        from ctr.qemu.initramfs import write_initrd
        from ctr.qemu.machine import Port
        from ctr.qemu.run import BOOT_RECORD, QEMU_ENV, ROOT_TAG, load_plan

        spec = json.loads((cdir / "microvm.json").read_text())
        plan = load_plan(cdir / "vm" / BOOT_RECORD)
        k = spec["kernel"]
        kernel = Kernel(Path(k["image"]), Path(k["modules"]) if k["modules"] else None, k["release"])
        base = base_initramfs(kernel, cache_dir=spec["initramfs_cache"])  # the cached one ctr used
        peer = self.tmp / "raw-qemu"
        peer.mkdir()
        machine = dataclasses.replace(
            plan.spec, initrd=peer / "initrd.cpio", console_log=peer / "console.log",
            shares=tuple(dataclasses.replace(s, path=self.base_rootfs()) if s.tag == ROOT_TAG else s
                         for s in plan.spec.shares),
            # the ports ctr connects to its own sockets go to files; those qemu serves as listeners
            # (the exec slots), nobody connecting to them, are listeners here too
            ports=tuple(Port(p.name, f"socket,path={peer / p.name}.sock,server=on,wait=off"
                             if "server=on" in p.backend else f"file,path={peer / p.name}")
                        for p in plan.spec.ports))
        write_initrd(base, plan.guest, machine.initrd)
        status = peer / "ctr.status"

        def before() -> None:
            for leftover in [status, *peer.glob("*.sock")]:
                leftover.unlink(missing_ok=True)

        def after() -> None:
            said = status.read_text() if status.exists() else ""
            if "exit 0" not in said:
                tail = (peer / "console.log").read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"the guest did not report exit 0 (status {said!r}, console {tail})")

        return qemu_command(machine), dict(QEMU_ENV), before, after

    def _changed_container(self, store: str, image: str, name: str, script: str) -> None:
        self.ctr_sh(store, "run", "--name", name, image, "/bin/sh", "-c", script)
        if not self.podman_skip:
            try:
                self.podman_sh("run", "--name", name, *PODMAN_RUN_FLAGS, image, "/bin/sh", "-c", script)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                self.podman_skip = f"podman run failed: {e}"

    def case_diff(self) -> Case:
        big, small = self.sizes.big_image_files, self.sizes.small_image_files
        self.image("diff", big, "big")
        self.image("diff", small, "small")
        ten = ("cd /data/d000 && echo x > f000 && rm f001 && touch n1 n2 n3 n4 n5 n6 n7 && mkdir /data/new")
        self._changed_container("diff", "big", "c-big", ten)
        self._changed_container("diff", "small", "c-small", ten)
        env = self.ctr_env("diff")
        cs = [
            Contender(f"ctr diff ({big:,}-file image)", [*self.ctr, "diff", "c-big"], env, ours=True),
            Contender(f"ctr diff ({small:,}-file image)", [*self.ctr, "diff", "c-small"], env, ours=True),
            Contender(f"podman diff ({big:,}-file image)", self.podman("diff", "c-big"), skip=self.podman_skip),
            Contender(f"podman diff ({small:,}-file image)", self.podman("diff", "c-small"), skip=self.podman_skip),
        ]
        return Case("diff", "`diff` of a container with 10 changes", cs, [
            Target(cs[0].label, cs[2].label, 2.0, "diff (10 changes, big image) ≤ 2 × podman diff"),
            Target(cs[0].label, cs[1].label, 1.3, "big image ≤ 1.3 × small image (cost follows changes)"),
        ])

    def case_diff10k(self) -> Case:
        n = self.sizes.many_changes
        self.image("diff", self.sizes.small_image_files, "small")
        script = f"mkdir /data/many && cd /data/many && seq 1 {n} | xargs touch"
        self._changed_container("diff", "small", "c-many", script)
        env = self.ctr_env("diff")
        cs = [
            Contender(f"ctr diff ({n:,} changes)", [*self.ctr, "diff", "c-many"], env, ours=True),
            Contender(f"podman diff ({n:,} changes)", self.podman("diff", "c-many"), skip=self.podman_skip),
        ]
        return Case("diff10k", f"`diff` of a container with {n:,} changes", cs, [
            Target(cs[0].label, cs[1].label, 1.0, "diff (many changes) ≤ 1.0 × podman diff"),
        ])

    def case_ps200(self) -> Case:
        n = self.sizes.containers
        img = self.image("ps", 0, "bb")
        t0 = time.monotonic()
        for i in range(n):
            self.ctr_sh("ps", "run", "--name", f"c{i:03d}", img, "/bin/true")
        if not self.podman_skip:
            for i in range(n):
                self.podman_sh("create", "--name", f"c{i:03d}", *PODMAN_RUN_FLAGS, img, "/bin/true")
        log(f"setup: {n} containers in {time.monotonic() - t0:.1f}s")
        cs = [
            Contender(f"ctr ps -a ({n} containers)", [*self.ctr, "ps", "-a"], self.ctr_env("ps"), ours=True),
            Contender(f"podman ps -a ({n} containers)", self.podman("ps", "-a"), skip=self.podman_skip),
        ]
        return Case("ps200", f"`ps -a` with {n} containers", cs, [
            Target(cs[0].label, cs[1].label, 1.5, "ps -a (200 containers) ≤ 1.5 × podman ps -a"),
        ])

    def case_import(self) -> Case:
        files, total = self.sizes.import_files, self.sizes.import_bytes
        tar = self.tar(files, total // files)
        dest = self.tmp / "tar-x"
        env = self.ctr_env("import")
        self.ctr_sh("import", "ps")

        def ctr_after() -> None:
            self.ctr_sh("import", "image", "rm", "imp")
            os.sync()

        def tar_before() -> None:
            dest.mkdir()

        def tar_after() -> None:
            sh(["rm", "-rf", str(dest)])  # (rm is quicker than shutil.rmtree at 50,000 files)
            os.sync()

        def podman_after() -> None:
            self.podman_sh("rmi", "-f", "imp")
            os.sync()

        mb = tar.stat().st_size / 1e6
        cs = [
            Contender(f"ctr image import ({mb:.0f} MB, {files:,} files)",
                      [*self.ctr, "image", "import", "-q", str(tar), "imp"], env, after=ctr_after, ours=True),
            Contender("tar -x", ["tar", "-x", "-f", str(tar), "-C", str(dest)], before=tar_before, after=tar_after),
            Contender("podman import", self.podman("import", "-q", str(tar), "imp"), after=podman_after,
                      skip=self.podman_skip),
        ]
        return Case("import", f"`image import` of a {mb:.0f} MB / {files:,}-file tar", cs, [
            Target(cs[0].label, cs[1].label, 1.5, "image import ≤ 1.5 × tar -x (digesting included)"),
        ], notes=["each run is followed (untimed) by removing what it made and sync(2), so write-back "
                  "of one run does not land in the next one's time"], memory=False)

    CASES = ("startup", "run", "hyperv", "microvm", "diff", "diff10k", "ps200", "import")

    # --- measuring -------------------------------------------------------------------------
    def add_baseline(self, case: Case) -> None:
        """With --baseline CMD: every ctr contender also runs as CMD (another build of ctr),
        in the same loop, labelled '… [baseline]': before/after figures under the same load."""
        if not self.args.baseline:
            return
        base, n = self.args.baseline.split(), len(self.ctr)
        out = []
        for c in case.contenders:
            out.append(c)
            if c.ours and c.argv[:n] == self.ctr:
                out.append(Contender(c.label + " [baseline]", base + c.argv[n:], c.env, c.before, c.after, c.skip))
        case.contenders = out

    def measure(self, case: Case) -> None:
        self.add_baseline(case)
        iters = self.sizes.iterations.get(case.name, 1) if not self.args.iterations else self.args.iterations
        warmup = 0 if case.name == "import" else self.sizes.warmup  # seconds-long runs need none
        measure(case.contenders, iters, warmup, self.run, self.env, memory=case.memory)


def measure(contenders: list[Contender], iterations: int, warmup: int, run: Runner,
            env: dict[str, str] | None = None, memory: bool = True) -> None:
    """The timing loop (bench/spinup.py and bench/vm.py use it too): `warmup` untimed rounds,
    then `iterations` timed ones, every contender once a round, the order reversed on every
    other round; a contender's `then` commands run after its argv and count in its time.
    A failing ctr command (`ours`) is an error, a failing peer is skipped from then on.
    With `memory`, one more untimed run of each under GNU time gives its peak RSS."""
    active = [c for c in contenders if c.skip is None]
    for c in contenders:
        if c.skip:
            log(f"  skip {c.label}: {c.skip}")
    for i in range(-warmup, iterations):
        order = active if i % 2 == 0 else list(reversed(active))
        for c in order:
            if c.error:
                continue
            parts: list[float] = []
            try:
                if c.before:
                    c.before()
                for argv in [c.argv, *c.then]:
                    ms, code, err = run(argv, c.env or env)
                    parts.append(ms)
                    if code != 0:
                        break
                if c.after and code == 0:
                    c.after()
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
                code, err = -1, str(e)
            if code != 0:
                reason = f"exit {code}: {err}"
                if c.ours:
                    c.error = reason
                else:
                    c.skip = f"failed here ({reason})"
                    active = [x for x in active if x is not c]
                log(f"  {'ERROR' if c.ours else 'skip'} {c.label}: {reason}")
                continue
            if i >= 0:
                c.times.append(sum(parts))
                if c.then:
                    c.parts.append(parts)
    if memory:
        for c in active:
            if c.error or c.skip:
                continue
            try:
                if c.before:
                    c.before()
                rss = run.peak_rss(c.argv, c.env or env)
                if c.after:
                    c.after()
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                rss = None
            if rss is not None:
                c.rss.append(rss)


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:8.1f}" if v < 10_000 else f"{v / 1000:7.2f}s")


def report(cases: list[Case], meta: dict) -> dict:
    out = {"meta": meta, "cases": []}
    print()
    print(f"ctr benchmark  {meta['started']} to {meta['date']}  {meta.get('cpu', '')} × {meta['cpus']}  "
          f"kernel {meta['kernel']}")
    print(f"python {meta['python']}, typer {meta['typer']}, click {meta['click']}, {meta.get('podman') or 'no podman'}"
          f", ctr {meta.get('ctr_commit')}; load {meta['load_before']} → {meta['load_after']}"
          f"{'  (QUICK: one iteration, small data)' if meta['quick'] else ''}")
    for case in cases:
        print(f"\n== {case.name}: {case.title}")
        if case.error:
            print(f"   ERROR in setup: {case.error}")
        by_label = {c.label: c for c in case.contenders}
        width = max([len(c.label) for c in case.contenders] + [20])
        print(f"   {'':{width}}  {'median ms':>9} {'min ms':>9} {'n':>3} {'peak RSS':>9}")
        rows = []
        for c in case.contenders:
            med = c.median()
            rss = f"{statistics.median(c.rss) / 1024:7.1f}Mi" if c.rss else "-"
            if c.skip or c.error:
                print(f"   {c.label:{width}}  {'skipped: ' + c.skip if c.skip else 'ERROR: ' + (c.error or '')}")
            else:
                print(f"   {c.label:{width}}  {fmt_ms(med):>9} {fmt_ms(min(c.times)):>9} {len(c.times):3d} {rss:>9}")
            rows.append({"label": c.label, "argv": c.argv, "median_ms": med, "min_ms": min(c.times) if c.times else None,
                         "times_ms": [round(t, 3) for t in c.times], "peak_rss_kib": statistics.median(c.rss) if c.rss else None,
                         "skipped": c.skip, "error": c.error})
        targets = [t.evaluate(by_label) for t in case.targets]
        for t in targets:
            if t["ratio"] is None:
                verdict = f"not measured ({t['note']})"
            else:
                verdict = f"{t['ratio']:.2f} × → {'met' if t['met'] else 'MISSED'}"
            print(f"   target: {t['what']}: {verdict}")
        for n in case.notes:
            print(f"   note: {n}")
        out["cases"].append({"name": case.name, "title": case.title, "error": case.error, "contenders": rows,
                             "targets": targets, "notes": case.notes})
    return out


def cleanup(suite: Suite) -> None:
    for root in suite.ctr_roots:
        cdir = root / "containers"
        if cdir.is_dir():
            ids = [p.name for p in cdir.iterdir() if not p.name.startswith(".")]
            for i in range(0, len(ids), 100):
                sh([*suite.ctr, "rm", "-f", *ids[i:i + 100]], env=dict(os.environ, CTR_ROOT=str(root)), check=False)
    if suite.podman_base:
        sh(suite.podman("rm", "-a", "-f"), check=False)
        sh(suite.podman("system", "reset", "-f"), check=False)
    shutil.rmtree(suite.tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one iteration of each case on small data (CI smoke)")
    ap.add_argument("--only", action="append", default=[], help="cases to run (comma-separated, repeatable)")
    ap.add_argument("--iterations", type=int, default=0, help="timed iterations per case (default: per case)")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install podman and runc")
    ap.add_argument("--no-peers", action="store_true", help="measure ctr and the local baselines only")
    ap.add_argument("--python", help="interpreter that runs ctr and the Python baselines (default: this one)")
    ap.add_argument("--ctr", help="the ctr command line to measure (default: the console script beside the "
                                  "interpreter), e.g. 'python3 -m ctr'")
    ap.add_argument("--baseline", help="another ctr command line measured beside each ctr figure, e.g. a "
                                       "checkout of the previous commit: before/after under the same load")
    ap.add_argument("--kernel", help="guest kernel for the microvm case (default: $CTR_KERNEL, else the newest "
                                     "in $CTR_TEST_KERNEL_DIR or /var/cache/ctr-test-kernel)")
    ap.add_argument("--tmp", help="where the temporary state directory goes (default: $TMPDIR or /tmp)")
    ap.add_argument("--out", help="JSON file to write (default: bench/results/<date>[-quick].json)")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)

    if args.list:
        print(" ".join(Suite.CASES))
        return 0
    wanted = [w for item in args.only for w in item.split(",") if w]
    names = [n for n in Suite.CASES if not wanted or any(w in n for w in wanted)]
    if not names:
        log(f"no case matches {wanted}; cases: {', '.join(Suite.CASES)}")
        return 2
    if args.quick and "microvm" in names and not wanted:
        why = microvm_unavailable(args.kernel)
        if why:  # the CI smoke boots a VM only where one can boot
            log(f"microvm: left out: {why}")
            names.remove("microvm")
    if not BUSYBOX:
        log("needs busybox (apt-get install busybox-static)")
        return 2

    suite = Suite(args)
    meta = {"quick": args.quick, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_before": [round(x, 2) for x in os.getloadavg()]}
    cases: list[Case] = []
    failed = False
    try:
        suite.setup_podman()
        if suite.podman_skip:
            log(f"podman: skipped: {suite.podman_skip}")
        for name in names:
            log(f"case {name}")
            try:
                case = getattr(suite, f"case_{name}")()
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
                log(f"  ERROR in setup: {e}")
                cases.append(Case(name, name, [], error=str(e)))
                failed = True
                continue
            suite.measure(case)
            failed = failed or any(c.error for c in case.contenders)
            cases.append(case)
    finally:
        meta["load_after"] = [round(x, 2) for x in os.getloadavg()]
        meta.update(machine())
        meta.update(ctr=suite.ctr, baseline=args.baseline, peers_skipped=suite.podman_skip)
        cleanup(suite)
    result = report(cases, meta)
    out = Path(args.out) if args.out else HERE / "results" / (
        datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nresults: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
