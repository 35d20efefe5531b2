#!/usr/bin/env python3
"""Spin-up of `ctr run --rm IMAGE true` per isolation level and driver, side by side.

    python bench/spinup.py [-n RUNS] [--drivers process/overlay,hyperv/sandbox,hyperv/microvm]
                           [--kernel PATH] [--root DIR] [--keep]

Each round runs every driver once, in turn (alternating, so a change in the machine's load
hits all of them alike); the table gives the median, min and max wall time of the whole
command (Python start-up included, as a user sees it). A fresh store is made in a temporary
directory (or --root) with a busybox image (`bb`, from the host's static busybox); the
microvm driver boots --kernel, else $CTR_KERNEL, else the kernel in $CTR_TEST_KERNEL_DIR
(/var/cache/ctr-test-kernel, filled by scripts/fetch-kernel.sh). One untimed warm-up run per
driver builds the initramfs cache and the accelerator probe first.

Results go to bench/results/spinup-<time>.json (the directory is not committed), with the
machine's load average before and after: on a shared machine every figure moves with it.
Needs root (overlay mounts, the sandbox's namespaces, qemu's 9p passthrough).
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
DRIVERS = ("process/overlay", "hyperv/sandbox", "hyperv/microvm")
APPLETS = ("sh", "true", "echo", "cat", "ls", "uname")


def make_image(ctr, base: Path) -> None:
    busybox = shutil.which("busybox")
    if not busybox:
        sys.exit("spinup: needs busybox-static (apt-get install busybox-static)")
    root = base / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", root / "bin" / a)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    ctr("image", "import", str(root), "bb")


def find_test_kernel() -> str | None:
    sys.path.insert(0, str(HERE.parent / "src"))
    from ctr.qemu import list_kernels

    kernels = list_kernels(Path(os.environ.get("CTR_TEST_KERNEL_DIR", "/var/cache/ctr-test-kernel")))
    return str(kernels[0].image.parent) if kernels else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=9, help="timed runs per driver (default 9)")
    ap.add_argument("--drivers", default=",".join(DRIVERS), help="comma-separated isolation/driver pairs")
    ap.add_argument("--kernel", help="guest kernel for microvm (default: $CTR_KERNEL, else the test kernel)")
    ap.add_argument("--root", help="store directory to use (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary store")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("spinup: run as root (overlay mounts, namespaces, qemu's 9p passthrough)")
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    base = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="ctr-spinup-"))
    env = dict(os.environ, CTR_ROOT=str(base / "root"), CTR_CONFIG=str(base / "config.yaml"), NO_COLOR="1")
    kernel = args.kernel or os.environ.get("CTR_KERNEL") or find_test_kernel()
    if kernel:
        env["CTR_KERNEL"] = kernel
    elif "hyperv/microvm" in drivers:
        print("spinup: no guest kernel (--kernel, $CTR_KERNEL or scripts/fetch-kernel.sh): skipping microvm",
              file=sys.stderr)
        drivers.remove("hyperv/microvm")

    def ctr(*a: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "ctr", *a], env=env, capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            sys.exit(f"spinup: ctr {' '.join(a)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def run(drv: str) -> float:
        iso, name = drv.split("/")
        t = time.perf_counter()
        ctr("run", "--rm", "--isolation", iso, "--driver", name, "bb", "true")
        return time.perf_counter() - t

    try:
        make_image(ctr, base)
        for d in drivers:  # warm-up: caches, the accelerator probe, the sandbox's probe
            run(d)
        info = json.loads(ctr("info", "--format", "json").stdout)
        reasons = {f"{d['Isolation']}/{d['Driver']}": d["Reason"] for d in info["Drivers"]}
        load_before = os.getloadavg()
        times: dict[str, list[float]] = {d: [] for d in drivers}
        for _ in range(args.runs):
            for d in drivers:
                times[d].append(run(d))
        load_after = os.getloadavg()
    finally:
        if not args.root and not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    rows = []
    for d in drivers:
        ts = times[d]
        rows.append({"driver": d, "runs": len(ts), "median_ms": round(statistics.median(ts) * 1000),
                     "min_ms": round(min(ts) * 1000), "max_ms": round(max(ts) * 1000),
                     "times_ms": [round(t * 1000) for t in ts], "detail": reasons.get(d, "")})
    width = max(len(d) for d in drivers)
    print(f"{'driver':<{width}}  {'median':>8}  {'min':>8}  {'max':>8}")
    for r in rows:
        print(f"{r['driver']:<{width}}  {r['median_ms']:>6}ms  {r['min_ms']:>6}ms  {r['max_ms']:>6}ms")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; {os.cpu_count()} CPUs")
    if "hyperv/microvm" in reasons:
        print(f"microvm: {reasons['hyperv/microvm']}")
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
        "kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "bytecode": not os.environ.get("PYTHONDONTWRITEBYTECODE"),
        "loadavg_before": load_before, "loadavg_after": load_after, "guest_kernel": kernel,
        "results": rows,
    }
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"spinup-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
