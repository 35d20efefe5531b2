"""The qemu command line, built by pure functions so it can be tested as data.

`MachineSpec` describes one VM; `qemu_command(spec)` turns it into argv; `kernel_cmdline`
builds the guest kernel's command line.  Nothing here runs anything.

Choices (measured and explained in docs/microvm.md):
- machine `microvm` (default) with `acpi=on` — its virtio-mmio devices are found through
  ACPI, and Debian kernels lack CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES; `x-option-roms=off`;
  modern (non-legacy) virtio-mmio.  `q35` uses the PCI variants of the same devices.
  Never `pit=off`: the guest hangs.
- under TCG the guest gets `tsc_early_khz=<host MHz × 1000>` (without it about a third of
  boots hang calibrating the TSC) and `mitigations=off` (no speculation is emulated, and
  PTI's page-table switches are expensive to emulate); `-cpu max`.  Under KVM, `-cpu host`.
- `-nodefaults -no-user-config -display none`: no VGA, NIC, monitor or default serial;
  the console (ttyS0) goes to a log file through an explicit chardev.  Not `-nographic`,
  which would put the monitor and serial on qemu's stdio.
- `-no-reboot` + `panic=-1 reboot=t`: a guest panic or reboot makes qemu exit at once.
- 9p shares use `security_model=passthrough` when qemu runs as root (files the guest
  creates get the guest's uid/gid on the host, so the writable layer looks exactly as
  after a process-isolated run) and `none` otherwise (same mapping, chown failures
  ignored — an unprivileged qemu cannot chown).  `mapped-xattr` is not used: it would hide
  ownership in xattrs that `ctr diff` and the process driver do not understand.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

MACHINES = ("microvm", "q35")
ACCELS = ("kvm", "tcg")


@dataclass(frozen=True)
class Share:
    """A host directory exported over virtio-9p under `tag`."""

    tag: str
    path: Path
    readonly: bool = False
    security_model: str | None = None  # None: passthrough as root, else none


@dataclass(frozen=True)
class Port:
    """A named virtio-serial port backed by a qemu chardev (`backend`, e.g.
    "socket,fd=5" or "socket,path=/run/x.sock,server=on,wait=off")."""

    name: str
    backend: str


@dataclass(frozen=True)
class MachineSpec:
    kernel: Path
    initrd: Path | None
    append: str
    machine: str = "microvm"
    accel: str = "tcg"
    memory_mb: int = 512
    cpus: int = 1
    shares: tuple[Share, ...] = ()
    ports: tuple[Port, ...] = ()
    disk: Path | None = None
    disk_readonly: bool = False
    disk_format: str = "raw"
    console_log: Path | None = None
    qmp: str | None = None  # chardev backend for a QMP monitor, e.g. "socket,path=…,server=on,wait=off"
    qemu: str = "qemu-system-x86_64"
    extra_args: tuple[str, ...] = field(default_factory=tuple)


def host_cpu_mhz(cpuinfo: str | None = None) -> float | None:
    """The host CPU's clock in MHz from /proc/cpuinfo (first "cpu MHz" line)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    m = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M)
    return float(m.group(1)) if m else None


def kernel_cmdline(accel: str, machine: str = "microvm", *, tsc_khz: int | None = None,
                   quiet: bool = True, extra: tuple[str, ...] = ()) -> str:
    """The guest kernel's command line.  `tsc_khz` defaults to the host's clock under TCG."""
    if accel not in ACCELS:
        raise ValueError(f"unknown accelerator {accel!r}")
    args = ["console=ttyS0", "panic=-1", "reboot=t", "rdinit=/init", "8250.nr_uarts=1",
            "i8042.noaux", "i8042.nomux", "i8042.nopnp", "i8042.dumbkbd", "random.trust_cpu=on",
            "cryptomgr.notests"]  # the boot-time crypto self-tests were the slowest initcall
    if machine == "microvm":
        args.append("pci=off")  # microvm has no PCI bus: skip probing for one
    if quiet:
        args.append("quiet")
    if accel == "tcg":
        if tsc_khz is None:
            mhz = host_cpu_mhz()
            tsc_khz = int(mhz * 1000) if mhz else None
        if tsc_khz:
            args.append(f"tsc_early_khz={tsc_khz}")
        args.append("mitigations=off")
    return " ".join(args + list(extra))


def _model(share: Share, euid: int) -> str:
    if share.security_model:
        return share.security_model
    return "passthrough" if euid == 0 else "none"


def _escape(value: str) -> str:
    """qemu option values: commas are doubled."""
    return value.replace(",", ",,")


def qemu_command(spec: MachineSpec, euid: int | None = None) -> list[str]:
    """argv for qemu-system-x86_64 running `spec`."""
    if spec.machine not in MACHINES:
        raise ValueError(f"unknown machine type {spec.machine!r}")
    if spec.accel not in ACCELS:
        raise ValueError(f"unknown accelerator {spec.accel!r}")
    euid = os.geteuid() if euid is None else euid
    micro = spec.machine == "microvm"
    bus = "device" if micro else "pci"
    if micro:
        machine = "microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=on"
    else:
        machine = "q35"
    argv = [spec.qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", machine, "-accel", spec.accel,
            "-cpu", "host" if spec.accel == "kvm" else "max",
            "-m", f"{int(spec.memory_mb)}M", "-smp", str(int(spec.cpus)),
            "-kernel", str(spec.kernel)]
    if micro:
        argv += ["-global", "virtio-mmio.force-legacy=false"]
    if spec.initrd is not None:
        argv += ["-initrd", str(spec.initrd)]
    argv += ["-append", spec.append]
    if spec.console_log is not None:
        argv += ["-chardev", f"file,id=console,path={_escape(str(spec.console_log))}",
                 "-serial", "chardev:console"]
    else:
        argv += ["-serial", "null"]
    for i, share in enumerate(spec.shares):
        opts = [f"local,id=fs{i}", f"path={_escape(str(share.path))}",
                f"security_model={_model(share, euid)}"]
        if share.readonly:
            opts.append("readonly=on")
        argv += ["-fsdev", ",".join(opts),
                 "-device", f"virtio-9p-{bus},fsdev=fs{i},mount_tag={_escape(share.tag)}"]
    if spec.ports:
        argv += ["-device", f"virtio-serial-{bus},id=vser0,max_ports={max(2, len(spec.ports) + 1)}"]
        for i, port in enumerate(spec.ports):
            argv += ["-chardev", f"{port.backend},id=port{i}",
                     "-device", f"virtserialport,bus=vser0.0,nr={i + 1},chardev=port{i},"
                                f"name={_escape(port.name)}"]
    if spec.disk is not None:
        ro = ",readonly=on" if spec.disk_readonly else ""
        argv += ["-drive", f"file={_escape(str(spec.disk))},if=none,id=disk0,"
                           f"format={spec.disk_format},cache=writeback,discard=unmap{ro}",
                 "-device", f"virtio-blk-{bus},drive=disk0"]
    if spec.qmp is not None:
        argv += ["-chardev", f"{spec.qmp},id=qmp", "-mon", "chardev=qmp,mode=control"]
    argv += list(spec.extra_args)
    return argv
