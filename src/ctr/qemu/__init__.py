"""qemu machinery shared by the `microvm` (hyperv) and `qemu` (vm) drivers.

Pure machinery: every path (kernels directory, caches, run directory) is a parameter; the
store decides where they live.  Nothing here knows about containers or the CLI.

Typical use (a hyperv run)::

    from ctr import qemu

    kernel = qemu.find_kernel(config_kernel, kernels_dir=store.kernels_dir)
    base = qemu.base_initramfs(kernel, cache_dir=store.cache_dir / "initramfs")
    choice = qemu.probe_accelerator(kernel, base, cache_file=store.cache_dir / "accel.json")
    result = qemu.boot_and_run(
        qemu.GuestConfig(argv=("sh", "-c", "echo hi"), env=(("PATH", "/usr/bin:/bin"),),
                         workdir="/", uid=0, gid=0, hostname=container_id[:12]),
        kernel=kernel, initramfs=base, root=merged_dir,
        volumes=[qemu.HostVolume(Path("/data"), "/data", readonly=True)],
        accel=choice.accel, memory_mb=512, cpus=1, boot_timeout=60, timeout=None,
        run_dir=container_dir / "vm")          # keeps console.log and qemu.log
    exit_code = result.exit_code               # the command's own code (126/127/128+n too)

Functions (see each docstring):

- kernel:    `find_kernel(explicit=None, kernels_dir=None, env=None) -> Kernel`;
             `import_kernel(src, dest_dir, modules=None) -> Kernel` (.deb or image file);
             `list_kernels(kernels_dir)`; `Kernel(image, modules, release)`.
- initramfs: `base_initramfs(kernel, cache_dir, busybox=None) -> Initramfs` (cached);
             `find_busybox()`; `GuestConfig` (argv, env, workdir, uid, gid, hostname,
             root_disk, …); `Initramfs.modules_for(machine, disk, overlay)`.
- machine:   `MachineSpec`, `qemu_command(spec) -> list[str]`,
             `kernel_cmdline(accel, machine, tsc_khz=None) -> str` — pure, testable as data.
- accel:     `probe_accelerator(kernel, initramfs, cache_file) -> AccelChoice(accel, reason)`.
- run:       `boot_and_run(guest, *, kernel, initramfs, root, volumes=(), disk=None,
             accel="tcg", machine="microvm", memory_mb=512, cpus=1, timeout=None,
             boot_timeout=60, stdout=1, stderr=2, stdin=None, run_dir=None,
             on_start=None) -> RunResult`; `on_start` gets a `RunningVM` (pid,
             signal(n) to the command, kill()).
             Every failure of the VM (qemu missing, init error, panic, timeout) is a
             DriverError, which `run` reports as exit 125; qemu never outlives the call.
- readiness: `check_host(explicit_kernel=None, kernels_dir=None) -> Readiness(usable,
             reason, hint, kernel)` — cheap checks for `ctr info` (no boot).
- cpio:      `CpioWriter`, `read(data)` — newc archives.

Measurements and design choices: docs/microvm.md.
"""

from .accel import AccelChoice, probe_accelerator
from .initramfs import GuestConfig, Initramfs, Volume, base_initramfs, find_busybox, run_conf
from .kernel import Kernel, find_kernel, import_kernel, list_kernels
from .machine import MachineSpec, Port, Share, kernel_cmdline, qemu_command
from .readiness import Readiness, check_host
from .run import HostVolume, RunningVM, RunResult, boot_and_run

__all__ = [
    "AccelChoice", "GuestConfig", "HostVolume", "Initramfs", "Kernel", "MachineSpec", "Port", "Readiness", "check_host",
    "RunResult", "RunningVM", "Share", "Volume", "base_initramfs", "boot_and_run",
    "find_busybox", "find_kernel", "import_kernel", "kernel_cmdline", "list_kernels",
    "probe_accelerator", "qemu_command", "run_conf",
]
