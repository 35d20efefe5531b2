"""`ctr system kernel …`: guest kernels for the microvm driver (import, ls, rm)."""

from __future__ import annotations

from typing import List, Optional

import typer

from ctr.cli.common import FORMAT_HELP, check_format, ctx, fail_if_any

app = typer.Typer(help="Manage the guest kernels utility VMs boot (hyperv isolation, microvm driver).",
                  no_args_is_help=True)


@app.command("import")
def import_(
    source: str = typer.Argument(..., help="A Debian linux-image-*.deb (unpacked, never installed), or a "
                                 "kernel image file: vmlinuz, bzImage or vmlinux"),
    modules: Optional[str] = typer.Option(None, "--modules", help="The image's modules directory "
                                          "(lib/modules/RELEASE); not needed for a .deb"),
) -> None:
    """Import a guest kernel into the store; the newest imported one is used when neither the
    config's `kernel` nor $CTR_KERNEL names one."""
    from ctr import qemu

    kernel = qemu.import_kernel(source, ctx().store.kernels_dir, modules=modules)
    mods = "with modules" if kernel.modules else "without modules (9p and virtio must be built in)"
    print(f"Imported kernel {kernel.release} ({kernel.image.name}, {mods})")


def _item(k, chosen) -> dict:
    return {"Release": k.release, "Image": str(k.image), "Modules": str(k.modules) if k.modules else None,
            "Dir": str(k.image.parent), "Default": chosen is not None and k.image == chosen.image}


@app.command("ls")
def ls(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only display releases"),
    format: str = typer.Option("table", "--format", help=FORMAT_HELP),
) -> None:
    """List imported kernels, newest first; DEFAULT marks the one the microvm driver boots."""
    from ctr import output, qemu
    from ctr.errors import CtrError

    check_format(format)
    c = ctx()
    kernels = qemu.list_kernels(c.store.kernels_dir)
    try:
        chosen = qemu.find_kernel(c.config.kernel, kernels_dir=c.store.kernels_dir)
    except CtrError:
        chosen = None
    if quiet:
        for k in kernels:
            print(k.release)
        return
    items = [_item(k, chosen) for k in kernels]
    rows = [[i["Release"], "yes" if i["Default"] else "", i["Image"], "yes" if i["Modules"] else "no"]
            for i in items]
    output.emit(format, items, ["RELEASE", "DEFAULT", "IMAGE", "MODULES"], rows)
    if format == "table" and chosen is not None and not any(i["Default"] for i in items):
        output.warn(f"the microvm driver boots {chosen.image} (config `kernel`, $CTR_KERNEL or the host's), "
                    "not an imported kernel")


@app.command("rm")
def rm(releases: List[str] = typer.Argument(..., help="Releases to remove, as `ctr system kernel ls` shows them")) -> None:
    """Remove imported kernels."""
    from ctr import qemu
    from ctr.errors import NotFound
    from ctr.store.store import remove_path

    store = ctx().store
    known = {k.release: k.image.parent for k in qemu.list_kernels(store.kernels_dir)}

    class Result:
        def __init__(self, ref, error=None):
            self.ref, self.error = ref, error

    results = []
    for r in releases:
        if r not in known:
            results.append(Result(r, NotFound(f"no such kernel: {r}", hint="see `ctr system kernel ls`")))
            continue
        gone = store.new_tmp("kernel", directory=False)
        known[r].rename(gone)  # out of every listing at once, then deleted
        remove_path(gone)
        print(r)
        results.append(Result(r))
    fail_if_any(results)
