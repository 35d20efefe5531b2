#!/usr/bin/env python3
"""Spin-up to the first command: `ctr vm` on both drivers, beside the containers, in one table.

    python bench/vm.py [-n RUNS] [--only vm/qemu,vm/sandbox,...] [--kernel PATH] [--root DIR] [--keep]

A VM row times `ctr vm start NAME` followed by `ctr vm exec NAME true` (the VM is made once,
untimed, and stopped after each round, untimed): from nothing running to the first command's
exit, as a user would script it.  The container rows time `ctr run --rm IMAGE true` (the
same figure bench/spinup.py measures), so the three execution models stand side by side:
process < hyperv < vm.  Each round runs every row once, in turn, so that a change in the
machine's load hits all of them alike; the table gives median, min and max wall time of the
commands (Python start-up included), and for VMs the median of each half.

A fresh store is made in a temporary directory (or --root) with a busybox image (`bb`, from
the host's static busybox); qemu boots --kernel, else $CTR_KERNEL, else the kernel in
$CTR_TEST_KERNEL_DIR (/var/cache/ctr-test-kernel, filled by scripts/fetch-kernel.sh).  One
untimed warm-up per row builds the initramfs cache and the probes.  Results go to
bench/results/vm-<time>.json (not committed) with the load average before and after.
Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = ("process/overlay", "hyperv/sandbox", "hyperv/microvm", "vm/sandbox", "vm/qemu")
APPLETS = ("sh", "true", "echo", "cat", "ls", "uname")


def make_image(ctr, base: Path) -> None:
    busybox = shutil.which("busybox")
    if not busybox:
        sys.exit("vm bench: needs busybox-static (apt-get install busybox-static)")
    root = base / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", root / "bin" / a)
    for d in ("etc", "proc", "sys", "dev", "tmp", "root"):
        (root / d).mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    ctr("image", "import", str(root), "bb")


def find_test_kernel() -> str | None:
    sys.path.insert(0, str(HERE.parent / "src"))
    from ctr.qemu import list_kernels

    kernels = list_kernels(Path(os.environ.get("CTR_TEST_KERNEL_DIR", "/var/cache/ctr-test-kernel")))
    return str(kernels[0].image.parent) if kernels else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--only", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    ap.add_argument("--kernel", help="guest kernel (default: $CTR_KERNEL, else the test kernel)")
    ap.add_argument("--root", help="store directory to use (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary store")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("vm bench: run as root (namespaces, overlay mounts, qemu's 9p passthrough)")
    rows = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"vm bench: unknown rows {', '.join(unknown)} (known: {', '.join(ROWS)})")
    base = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="ctr-vm-bench-"))
    env = dict(os.environ, CTR_ROOT=str(base / "root"), CTR_CONFIG=str(base / "config.yaml"), NO_COLOR="1",
               CTR_NO_PROGRESS="1")
    kernel = args.kernel or os.environ.get("CTR_KERNEL") or find_test_kernel()
    skipped = {}
    if kernel:
        env["CTR_KERNEL"] = kernel
    else:
        for r in ("hyperv/microvm", "vm/qemu"):
            if r in rows:
                rows.remove(r)
                skipped[r] = "no guest kernel (--kernel, $CTR_KERNEL or scripts/fetch-kernel.sh)"

    def ctr(*a: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "ctr", *a], env=env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            sys.exit(f"vm bench: ctr {' '.join(a)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def once(row: str) -> tuple[float, float | None]:
        """(total, exec part) seconds of one spin-up; (total, None) for a container."""
        iso, name = row.split("/")
        t0 = time.perf_counter()
        if iso != "vm":
            ctr("run", "--rm", "--isolation", iso, "--driver", name, "bb", "true")
            return time.perf_counter() - t0, None
        vm = f"bench-{name}"
        ctr("vm", "start", vm)
        t1 = time.perf_counter()
        ctr("vm", "exec", vm, "true")
        t2 = time.perf_counter()
        ctr("vm", "stop", vm)
        return t2 - t0, t2 - t1

    times: dict[str, list[tuple[float, float | None]]] = {r: [] for r in rows}
    try:
        make_image(ctr, base)
        for r in rows:
            if r.startswith("vm/"):
                name = r.split("/")[1]
                ctr("vm", "create", f"bench-{name}", "--image", "bb", "--driver", name, "--disk", "256m", "-q")
            once(r)  # warm-up: caches, probes
        load_before = os.getloadavg()
        for _ in range(args.runs):
            for r in rows:
                times[r].append(once(r))
        load_after = os.getloadavg()
        info = json.loads(ctr("info", "--format", "json").stdout)
        reasons = {f"{d['Isolation']}/{d['Driver']}": d["Reason"] for d in info.get("Drivers", [])}
    finally:
        for r in rows:
            if r.startswith("vm/"):
                ctr("vm", "rm", "-f", f"bench-{r.split('/')[1]}", check=False)
        if not args.root and not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    results = []
    for r in rows:
        total = [t for t, _ in times[r]]
        exec_part = [e for _, e in times[r] if e is not None]
        results.append({
            "row": r, "what": "vm start + vm exec true" if r.startswith("vm/") else "run --rm bb true",
            "runs": len(total), "median_ms": round(statistics.median(total) * 1000),
            "min_ms": round(min(total) * 1000), "max_ms": round(max(total) * 1000),
            "times_ms": [round(t * 1000) for t in total],
            "start_median_ms": round(statistics.median([t - e for t, e in times[r]]) * 1000) if exec_part else None,
            "exec_median_ms": round(statistics.median(exec_part) * 1000) if exec_part else None,
            "detail": reasons.get(r, ""),
        })
    width = max(len(r) for r in rows) if rows else 10
    print(f"{'row':<{width}}  {'what':<24}  {'median':>8}  {'min':>8}  {'max':>8}  {'start':>8}  {'exec':>7}")
    for x in results:
        start = f"{x['start_median_ms']}ms" if x["start_median_ms"] is not None else "-"
        ex = f"{x['exec_median_ms']}ms" if x["exec_median_ms"] is not None else "-"
        print(f"{x['row']:<{width}}  {x['what']:<24}  {x['median_ms']:>6}ms  {x['min_ms']:>6}ms  "
              f"{x['max_ms']:>6}ms  {start:>8}  {ex:>7}")
    for r, why in skipped.items():
        print(f"{r}: skipped: {why}")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; {os.cpu_count()} CPUs")
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
        "kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "loadavg_before": load_before, "loadavg_after": load_after, "guest_kernel": kernel,
        "results": results, "skipped": skipped,
    }
    dest = HERE / "results"
    dest.mkdir(exist_ok=True)
    path = dest / f"vm-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
