"""qemu command lines and kernel command lines, as data (no qemu, no privileges)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctr.qemu.machine import (MachineSpec, Port, Share, host_cpu_mhz, kernel_cmdline,
                              qemu_command)


def spec(**kw) -> MachineSpec:
    base = dict(kernel=Path("/k/vmlinux"), initrd=Path("/r/initrd.cpio"), append="console=ttyS0")
    base.update(kw)
    return MachineSpec(**base)


def opt(argv: list[str], flag: str) -> list[str]:
    """Every value given to `flag`."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_microvm_basics():
    argv = qemu_command(spec(memory_mb=768, cpus=2), euid=0)
    assert argv[0] == "qemu-system-x86_64"
    m = opt(argv, "-machine")[0]
    assert m.startswith("microvm,") and "acpi=on" in m and "pit=off" not in m
    assert opt(argv, "-accel") == ["tcg"] and opt(argv, "-cpu") == ["max"]
    assert opt(argv, "-m") == ["768M"] and opt(argv, "-smp") == ["2"]
    assert opt(argv, "-kernel") == ["/k/vmlinux"] and opt(argv, "-initrd") == ["/r/initrd.cpio"]
    assert opt(argv, "-append") == ["console=ttyS0"]
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert opt(argv, "-display") == ["none"]
    assert "-nographic" not in argv  # would put the monitor on qemu's stdio
    assert "virtio-mmio.force-legacy=false" in opt(argv, "-global")
    assert opt(argv, "-serial") == ["null"]


def test_kvm_uses_host_cpu():
    argv = qemu_command(spec(accel="kvm"), euid=0)
    assert opt(argv, "-accel") == ["kvm"] and opt(argv, "-cpu") == ["host"]


def test_q35_uses_pci_devices():
    argv = qemu_command(spec(machine="q35", shares=(Share("ctr.root", Path("/m")),),
                             ports=(Port("ctr.stdout", "socket,fd=5"),), disk=Path("/d.img")),
                        euid=0)
    assert opt(argv, "-machine") == ["q35"]
    devices = " ".join(opt(argv, "-device"))
    assert "virtio-9p-pci" in devices and "virtio-serial-pci" in devices
    assert "virtio-blk-pci" in devices and "-device" not in devices
    assert "-global" not in argv


def test_shares_security_model_and_readonly():
    shares = (Share("ctr.root", Path("/merged")), Share("ctr.vol0", Path("/data,x"), readonly=True))
    root_argv = qemu_command(spec(shares=shares), euid=0)
    fsdevs = opt(root_argv, "-fsdev")
    assert fsdevs[0] == "local,id=fs0,path=/merged,security_model=passthrough"
    # commas in paths are doubled, as qemu's option syntax requires
    assert fsdevs[1] == "local,id=fs1,path=/data,,x,security_model=passthrough,readonly=on"
    assert opt(root_argv, "-device") == ["virtio-9p-device,fsdev=fs0,mount_tag=ctr.root",
                                         "virtio-9p-device,fsdev=fs1,mount_tag=ctr.vol0"]
    user_argv = qemu_command(spec(shares=shares), euid=1000)
    assert all("security_model=none" in f for f in opt(user_argv, "-fsdev"))
    explicit = qemu_command(spec(shares=(Share("t", Path("/p"), security_model="mapped-xattr"),)), euid=0)
    assert "security_model=mapped-xattr" in opt(explicit, "-fsdev")[0]


def test_named_serial_ports():
    ports = (Port("ctr.stdout", "socket,fd=5"), Port("ctr.stderr", "socket,fd=7"),
             Port("ctr.status", "socket,path=/run/s.sock,server=on,wait=off"))
    argv = qemu_command(spec(ports=ports), euid=0)
    assert "virtio-serial-device,id=vser0,max_ports=4" in opt(argv, "-device")
    assert opt(argv, "-chardev") == ["socket,fd=5,id=port0", "socket,fd=7,id=port1",
                                     "socket,path=/run/s.sock,server=on,wait=off,id=port2"]
    serial_ports = [d for d in opt(argv, "-device") if d.startswith("virtserialport")]
    assert serial_ports == [
        "virtserialport,bus=vser0.0,nr=1,chardev=port0,name=ctr.stdout",
        "virtserialport,bus=vser0.0,nr=2,chardev=port1,name=ctr.stderr",
        "virtserialport,bus=vser0.0,nr=3,chardev=port2,name=ctr.status",
    ]


def test_disk_console_qmp():
    argv = qemu_command(spec(disk=Path("/vm/disk.img"), disk_readonly=True,
                             console_log=Path("/vm/console.log"),
                             qmp="socket,path=/vm/qmp.sock,server=on,wait=off"), euid=0)
    drive = opt(argv, "-drive")[0]
    assert drive.startswith("file=/vm/disk.img,if=none,id=disk0,format=raw") and drive.endswith("readonly=on")
    assert "virtio-blk-device,drive=disk0" in opt(argv, "-device")
    assert "file,id=console,path=/vm/console.log" in opt(argv, "-chardev")
    assert opt(argv, "-serial") == ["chardev:console"]
    assert opt(argv, "-mon") == ["chardev=qmp,mode=control"]


def test_no_initrd_and_bad_values():
    assert "-initrd" not in qemu_command(spec(initrd=None), euid=0)
    with pytest.raises(ValueError):
        qemu_command(spec(machine="pc-i440fx"), euid=0)
    with pytest.raises(ValueError):
        qemu_command(spec(accel="hvf"), euid=0)


def test_kernel_cmdline_tcg_has_tsc_and_no_pit_off():
    line = kernel_cmdline("tcg", tsc_khz=2596154).split()
    assert "tsc_early_khz=2596154" in line
    assert "console=ttyS0" in line and "panic=-1" in line and "quiet" in line
    assert "mitigations=off" in line and "pci=off" in line
    assert not any(a.startswith("pit") for a in line)
    assert "pci=off" not in kernel_cmdline("tcg", "q35", tsc_khz=1).split()


def test_kernel_cmdline_kvm_and_extras():
    line = kernel_cmdline("kvm", extra=("ctr.debug",), quiet=False).split()
    assert not any(a.startswith("tsc_early_khz") for a in line)
    assert "mitigations=off" not in line and "quiet" not in line
    assert line[-1] == "ctr.debug"
    with pytest.raises(ValueError):
        kernel_cmdline("xen")


def test_kernel_cmdline_tsc_defaults_to_host_clock():
    mhz = host_cpu_mhz()
    line = kernel_cmdline("tcg")
    if mhz:
        assert f"tsc_early_khz={int(mhz * 1000)}" in line.split()


def test_host_cpu_mhz_parses_cpuinfo():
    assert host_cpu_mhz("processor\t: 0\ncpu MHz\t\t: 2596.154\n") == pytest.approx(2596.154)
    assert host_cpu_mhz("processor\t: 0\n") is None
