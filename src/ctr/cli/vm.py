"""`ctr vm …`: full virtual machines (Hyper-V's New-VM, Get-VM, Start-VM, Stop-VM,
Checkpoint-VM, Restore-VMSnapshot, Remove-VM in docker-style verbs)."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from ctr.cli.common import FORMAT_HELP, check_format, complete_image, complete_vm, ctx, fail_if_any

app = typer.Typer(help="Full virtual machines: each with its own kernel and its own complete disk.",
                  no_args_is_help=True)
CONTEXT = {"allow_interspersed_args": False}
NAME_HELP = "VM name"
NAMES_HELP = "VM names"
MIB = 1 << 20


def _size(text: Optional[str], what: str) -> Optional[int]:
    from ctr.units import parse_size

    return parse_size(text, what) if text else None


@app.command("create")
def create(
    name: str = typer.Argument(..., help="Name of the new VM"),
    image: str = typer.Option(..., "--image", help="Image whose files become the VM's disk (not 'host')",
                              autocompletion=complete_image),
    cpus: Optional[int] = typer.Option(None, "--cpus", min=1, help="Virtual CPUs (default 1)"),
    memory: Optional[str] = typer.Option(None, "--memory", "-m", help="Memory, e.g. 512m, 2g (default 512m)"),
    disk: Optional[str] = typer.Option(None, "--disk", help="Disk size, e.g. 4g (default 4g; a sparse file)"),
    driver: Optional[str] = typer.Option(None, "--driver", help="qemu or sandbox (default: the first usable, see `ctr info`)"),
    kernel: Optional[str] = typer.Option(None, "--kernel", help="qemu: guest kernel (an imported kernel directory or an image file)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar"),
) -> None:
    """Create a VM: its own full copy of the image as its disk, and its hardware spec."""
    from ctr import output
    from ctr.engine import vms

    opts = vms.CreateOptions(name=name, image=image, cpus=cpus, memory=_size(memory, "memory"),
                             disk=_size(disk, "disk size"), driver=driver, kernel=kernel)
    total = None
    if not quiet and output.progress_enabled():
        from ctr.engine.images import get_image
        from ctr.errors import CtrError

        try:
            total = get_image(ctx(), image).size or None  # refined once the layers are measured
        except CtrError:
            pass  # create says what is wrong
    with output.progress(total, f"Creating the disk of VM {name}", unit="bytes", quiet=quiet) as bar:
        vm = vms.create(ctx(), opts, progress=lambda done, total: bar.update(completed=done, total=total))
    if vm.emulated:
        output.warn(f"VM {name} is emulated by the {vm.driver} driver: it shares the host kernel")
    print(vm.name)


def _mem(n: int) -> str:
    if n >= 1 << 30 and n % (1 << 30) == 0:
        return f"{n >> 30}GiB"
    return f"{n // MIB}MiB"


def _item(vm, used: int) -> dict:
    """The raw record `vm ls --format json|yaml` prints: ISO-8601 times, sizes in bytes."""
    return {
        "Name": vm.name, "Id": vm.id, "State": vm.state, "Driver": vm.driver, "Emulated": vm.emulated,
        "Image": vm.image_name, "ImageID": vm.image, "CPUs": vm.cpus, "Memory": vm.memory,
        "DiskSize": vm.disk_size, "DiskUsed": used, "Created": vm.created,
        "StartedAt": vm.started if vm.state != "Off" else None,
        "StoppedAt": vm.stopped, "Pid": vm.pid or 0, "Accel": vm.accel, "Kernel": vm.kernel_release,
        "GuestKernel": vm.guest_kernel, "Error": vm.error,
        "Checkpoints": [c.name for c in vm.checkpoints],
    }


HEADERS = {"Name": "NAME", "State": "STATE", "CPUs": "CPUS", "Memory": "MEMORY", "Uptime": "UPTIME",
           "Driver": "DRIVER", "Image": "IMAGE", "Disk": "DISK"}


@app.command("ls")
def ls(
    format: str = typer.Option("table", "--format", help=FORMAT_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only print VM names"),
    no_trunc: bool = typer.Option(False, "--no-trunc", help="Do not shorten image names"),
) -> None:
    """List VMs: state, hardware, uptime, driver, image and disk use."""
    from datetime import datetime, timezone

    from ctr import output
    from ctr.engine import vms
    from ctr.models import parse_iso

    check_format(format)
    machines = vms.list_vms(ctx())
    if quiet:
        for vm in machines:
            print(vm.name)
        return
    items, rows, views = [], [], []
    now = datetime.now(timezone.utc)
    for vm in machines:
        used = vms.disk_usage(ctx(), vm)
        item = _item(vm, used)
        t = parse_iso(vm.started) if vm.state == "Running" else None
        uptime = output.human_duration((now - t).total_seconds()) if t else ""
        image = vm.image_name if no_trunc or len(vm.image_name) <= 24 else vm.image_name[:23] + "…"
        disk = f"{output.human_size(used)} / {output.human_size(vm.disk_size)}"
        items.append(item)
        rows.append([vm.name, vm.state, vm.cpus, _mem(vm.memory), uptime,
                     vm.driver + (" (emulated)" if vm.emulated else ""), image, disk])
        views.append(output.View(item, {"Uptime": uptime, "Disk": disk, "Memory": _mem(vm.memory),
                                        "Image": image}, HEADERS))
    output.emit(format, items, list(HEADERS.values()), rows, views=views, view_headers=HEADERS)


def _each(names: List[str], fn) -> None:
    from ctr.engine.lifecycle import for_each

    outcomes = for_each(names, lambda n: (n, fn(n)))
    for o in outcomes:
        if o.error is None:
            print(o.ref)
    sys.stdout.flush()
    fail_if_any(outcomes)


@app.command("start")
def start(
    names: List[str] = typer.Argument(..., help=NAMES_HELP, autocompletion=complete_vm),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=1,
                                            help="Seconds to wait for the VM to be ready (default 120, or $CTR_VM_BOOT_TIMEOUT)"),
) -> None:
    """Boot VMs in the background; returns when each is ready for `vm exec`."""
    from ctr.engine import vms

    _each(names, lambda n: vms.start(ctx(), n, timeout or vms.BOOT_TIMEOUT))


@app.command("stop")
def stop(
    names: List[str] = typer.Argument(..., help=NAMES_HELP, autocompletion=complete_vm),
    time: int = typer.Option(30, "--time", "-t", min=0, help="Seconds the VM's processes get after SIGTERM"),
    force: bool = typer.Option(False, "--force", help="Shut down at once: the VM's processes get SIGKILL, not SIGTERM"),
    turn_off: bool = typer.Option(False, "--turn-off", help="Power off at once, like pulling the plug"),
) -> None:
    """Shut VMs down through their guest; turn off one that does not stop in time."""
    from ctr.engine import vms

    _each(names, lambda n: vms.stop(ctx(), n, time, force=force, turn_off=turn_off))


@app.command("exec", context_settings=CONTEXT)
def exec_(
    name: str = typer.Argument(..., help=NAME_HELP, autocompletion=complete_vm),
    command: List[str] = typer.Argument(..., help="Command and arguments"),
    env: List[str] = typer.Option([], "--env", "-e", help="Set an environment variable (KEY=VALUE, or KEY to pass ctr's)"),
    workdir: Optional[str] = typer.Option(None, "--workdir", "-w", help="Working directory inside the VM"),
) -> None:
    """Run a command in a running VM, streaming its output; returns the command's exit code."""
    from ctr import proc
    from ctr.engine import vms
    from ctr.errors import DriverError

    try:
        code = vms.exec_(ctx(), name, vms.ExecOptions(command=list(command), env=list(env), workdir=workdir))
    except proc.InvokeError:
        raise
    except DriverError as e:
        e.exit_code = 125  # the VM failed under the command: as `exec`, apart from its codes
        raise
    raise typer.Exit(code)


@app.command("rm")
def rm(
    names: List[str] = typer.Argument(..., help=NAMES_HELP, autocompletion=complete_vm),
    force: bool = typer.Option(False, "--force", "-f", help="Turn running VMs off and remove them"),
) -> None:
    """Remove VMs and everything they hold: disk, checkpoints, logs."""
    from ctr.engine import vms

    results = vms.remove(ctx(), list(names), force=force)
    for r in results:
        if r.error is None:
            print(r.ref)
    sys.stdout.flush()
    fail_if_any(results)


@app.command("inspect")
def inspect(
    names: List[str] = typer.Argument(..., help=NAMES_HELP, autocompletion=complete_vm),
    format: str = typer.Option("json", "--format", "-f", help="json, yaml, or a template such as '{{.State}}'"),
) -> None:
    """Show VMs' full records: hardware, state, disk, checkpoints, how the driver runs them."""
    from ctr import output
    from ctr.cli import inspect_view
    from ctr.engine import vms
    from ctr.engine.lifecycle import for_each

    check_format(format, ("json", "yaml"))
    outcomes = for_each(list(names), lambda n: (n, inspect_view.vm(vms.inspect(ctx(), n))))
    found = [o.value for o in outcomes if o.error is None]
    if found or format in ("json", "yaml"):
        output.emit(format, found, [], [])
    sys.stdout.flush()
    fail_if_any(outcomes)


@app.command("logs")
def logs(
    name: str = typer.Argument(..., help=NAME_HELP, autocompletion=complete_vm),
    tail: str = typer.Option("all", "--tail", "-n", help="Number of lines to show from the end, or 'all'"),
) -> None:
    """Show the VM's console from its last boot."""
    from ctr.engine import vms
    from ctr.errors import InvalidArgument

    if tail != "all" and not tail.isdigit():
        raise InvalidArgument(f"invalid --tail {tail!r}", hint="a number of lines, or 'all'")
    data = vms.console_log(ctx(), name, None if tail == "all" else int(tail))
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


@app.command("diff")
def diff(
    name: str = typer.Argument(..., help=NAME_HELP, autocompletion=complete_vm),
    format: str = typer.Option("table", "--format", help="table (A/C/D lines), json, yaml or a {{.Kind}} {{.Path}} template"),
) -> None:
    """Show what changed on the VM's disk since it was created: A, C, D lines."""
    from ctr import output
    from ctr.changes import group, render
    from ctr.engine import vms

    check_format(format)
    changes = vms.diff(ctx(), name)
    if format == "table":
        sys.stdout.write(render(changes))
    elif format in ("json", "yaml"):
        output.emit(format, [group(changes)], [], [], single=True)
    else:
        output.template(format, [{"Kind": c.kind, "Path": c.path} for c in changes])


@app.command("checkpoint")
def checkpoint(
    name: str = typer.Argument(..., help=NAME_HELP, autocompletion=complete_vm),
    snapshot: Optional[str] = typer.Argument(None, help="Checkpoint name (default: checkpoint-DATE-TIME)"),
) -> None:
    """Save a stopped VM's disk as a checkpoint (copy-on-write where the filesystem allows)."""
    from ctr.engine import vms

    print(vms.checkpoint(ctx(), name, snapshot).name)


@app.command("restore")
def restore(
    name: str = typer.Argument(..., help=NAME_HELP, autocompletion=complete_vm),
    snapshot: str = typer.Argument(..., help="Checkpoint to go back to"),
) -> None:
    """Put a stopped VM's disk back as it was at a checkpoint."""
    from ctr.engine import vms

    print(vms.restore(ctx(), name, snapshot).name)
