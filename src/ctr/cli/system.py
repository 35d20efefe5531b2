"""`ctr info` and `ctr system …`: the store and the drivers on this host."""

from __future__ import annotations

import typer

from ctr.cli import kernel
from ctr.cli.common import check_format, ctx

app = typer.Typer(help="Inspect and maintain ctr on this host.", no_args_is_help=True)


def info(format: str = typer.Option("table", "--format", help="table, json or yaml")) -> None:
    """Show the store and every driver: usable here or not, why, and the fix."""
    from ctr import __version__, output
    from ctr.drivers import all_drivers

    check_format(format, ("table", "json", "yaml"))
    c = ctx()
    drivers = []
    from ctr.vm import DRIVERS as VM_DRIVERS, get_vm_driver

    for d in [*all_drivers(), *(get_vm_driver(n) for n in VM_DRIVERS)]:
        av = d.availability(c.store, c.config) if d.isolation == "vm" else d.availability()
        drivers.append({
            "Isolation": d.isolation, "Driver": d.name, "Usable": av.usable, "Emulated": d.emulated,
            "Reason": av.reason, "Fix": av.fix, "Summary": d.summary,
        })
    data = {
        "Version": __version__,
        "Store": {"Root": str(c.store.root), "Containers": len(c.store.container_ids()),
                  "Images": len(c.store.image_ids()) + 1},
        "Config": {"Path": str(c.config.path) if c.config.path else None, "Isolation": c.config.isolation,
                   "Drivers": c.config.drivers},
        "Drivers": drivers,
    }
    if format != "table":
        output.emit(format, [data], [], [], single=True)
        return
    print(f"ctr {__version__}")
    print(f"Store: {data['Store']['Root']} ({data['Store']['Containers']} containers, {data['Store']['Images']} images)")
    print(f"Config: {data['Config']['Path'] or 'none (defaults)'}")
    print()
    rows = []
    for d in drivers:
        state = "yes" if d["Usable"] else "no"
        detail = d["Reason"] + (f" — fix: {d['Fix']}" if d["Fix"] and not d["Usable"] else "")
        rows.append([d["Isolation"], d["Driver"] + (" (emulated)" if d["Emulated"] else ""), state, detail])
    output.table(["ISOLATION", "DRIVER", "USABLE", "DETAIL"], rows)


app.command("info")(info)


@app.command("df")
def df(format: str = typer.Option("table", "--format", help="table, json, yaml, or a template ({{.Type}} {{.Size}} ...)")) -> None:
    """Show the disk images, containers and VMs take, and what a prune would reclaim."""
    from ctr import output
    from ctr.engine.usage import disk_usage

    check_format(format)
    kinds = disk_usage(ctx())
    items = [{"Type": k.type, "TotalCount": k.total, "Active": k.active, "Size": k.size,
              "Reclaimable": k.reclaimable} for k in kinds]

    def reclaim(k) -> str:
        return output.human_size(k.reclaimable) + (f" ({k.reclaimable * 100 // k.size}%)" if k.size else "")
    rows = [[k.type, k.total, k.active, output.human_size(k.size), reclaim(k)] for k in kinds]
    views = [output.View(item, {"Size": output.human_size(k.size), "Reclaimable": reclaim(k)},
                         {"Type": "TYPE", "TotalCount": "TOTAL", "Active": "ACTIVE", "Size": "SIZE",
                          "Reclaimable": "RECLAIMABLE"}) for item, k in zip(items, kinds)]
    output.emit(format, items, ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows, views=views)


@app.command("prune")
def prune(
    all: bool = typer.Option(False, "--all", "-a", help="Remove every image no container uses, not only unnamed ones"),
    force: bool = typer.Option(False, "--force", "-f", help="Do not prompt for confirmation"),
) -> None:
    """Remove stopped containers, then the images no container uses that have no name (-a: all)."""
    from ctr import output
    from ctr.cli.commit import confirm, image_lines, pruned
    from ctr.cli.common import fail_if_any
    from ctr.engine import commit as ec
    from ctr.engine import images as ie

    if not force:
        images = "images without at least one container associated to them" if all else "dangling images"
        confirm(f"WARNING! This will remove:\n  - all stopped containers\n  - all {images}\n"
                "Are you sure you want to continue? [y/N] ", "system prune")
    containers = ec.prune_containers(ctx())
    images_report = ie.prune_images(ctx(), all=all)  # after the containers: theirs are unused now
    pruned("Containers", containers.removed)
    pruned("Images", image_lines(images_report.removed))
    print(f"Total reclaimed space: {output.human_size(containers.reclaimed + images_report.reclaimed)}")
    fail_if_any([*containers.errors, *images_report.errors])


@app.command("check")
def check(
    repair: bool = typer.Option(False, "--repair", help="Repair what can be repaired safely (see docs/security.md)"),
    format: str = typer.Option("table", "--format", help="table, json or yaml"),
) -> None:
    """Verify the store: layer checksums, records, leftovers of crashes; --repair fixes what it can."""
    from ctr import output
    from ctr.engine import check as ck

    check_format(format, ("table", "json", "yaml"))
    report = ck.check(ctx(), repair=repair)
    if format != "table":
        output.emit(format, [report.to_dict()], [], [], single=True)
    else:
        for f in report.findings:
            state = "repaired" if f.repaired else ("repairable" if f.repair else "PROBLEM")
            what = f"{f.kind} {f.subject.split(':', 1)[-1][:12] if f.kind in ('layer', 'image', 'container') else f.subject}"
            print(f"{state}: {what}: {f.problem}" + (f" ({f.repair})" if f.repair and not f.repaired else ""))
            if f.hint and not f.repaired:
                print(f"  hint: {f.hint}")
        left = report.remaining
        print(f"checked {report.layers} layers, {report.images} images, {report.containers} containers, "
              f"{report.vms} VMs: "
              + ("ok" if not report.findings else
                 f"{len(report.findings) - len(left)} repaired, {len(left)} left"
                 + (" (run with --repair)" if left and not repair and any(f.repair for f in left) else "")))
    if report.remaining:
        raise typer.Exit(1)


app.add_typer(kernel.app, name="kernel")
