"""`ctr system df`: how much disk images, containers and VMs take, and what a prune would free.

As docker's: images count their layers once however many images share them (a layer is
reclaimable when no image a container uses has it); containers count their own directories
(writable layer, records, log; a stopped one is reclaimable); VMs their disks (not pruned, so
nothing of them is reclaimable). Sizes are allocated disk blocks, as du counts them.
"""

from __future__ import annotations

from ctr.engine.context import Context
from ctr.models import Record, State, VMState
from ctr.store.usage import tree_usage


class KindUsage(Record):
    __slots__ = _fields = ("type", "total", "active", "size", "reclaimable")

    def __init__(self, type: str, total: int, active: int, size: int, reclaimable: int):
        self.type, self.total, self.active, self.size, self.reclaimable = type, total, active, size, reclaimable


def disk_usage(ctx: Context) -> list[KindUsage]:
    from ctr.engine.containers import list_containers, reconcile
    from ctr.engine.images import list_images
    from ctr.engine.vms import disk_usage as vm_disk, list_vms

    store = ctx.store
    containers = [reconcile(ctx, c) for c in list_containers(ctx, all=True)]
    used_images = {c.image for c in containers}
    images = list_images(ctx, include_host=False)
    layer_size = {d: tree_usage(store.layer_dir(d)).bytes for img in images for d in img.layers}
    kept = {d for img in images if img.id in used_images for d in img.layers}
    running = [c for c in containers if c.state == State.RUNNING.value]
    sizes = {c.id: tree_usage(store.container_dir(c.id)).bytes for c in containers}
    vms = list_vms(ctx)
    vm_sizes = [vm_disk(ctx, vm) for vm in vms]
    return [
        KindUsage("Images", len(images), sum(1 for i in images if i.id in used_images), sum(layer_size.values()),
                  sum(n for d, n in layer_size.items() if d not in kept)),
        KindUsage("Containers", len(containers), len(running), sum(sizes.values()),
                  sum(n for cid, n in sizes.items() if cid not in {c.id for c in running})),
        KindUsage("VMs", len(vms), sum(1 for vm in vms if vm.state == VMState.RUNNING.value), sum(vm_sizes), 0),
    ]
