#!/usr/bin/env python3
"""Spin-up of `ctr run --rm IMAGE true` per isolation level and driver, side by side.

    python bench/spinup.py [-n RUNS] [--drivers process/overlay,hyperv/sandbox,hyperv/microvm]
                           [--kernel PATH] [--root DIR] [--keep]

The timing loop is bench/run.py's (`measure`): every driver once a round, the order reversed
on every other round (so a change in the machine's load hits all of them alike), after one
untimed warm-up round that builds the initramfs cache and the accelerator and sandbox probes;
the table gives the median, min and max wall time of the whole command (Python start-up
included, as a user sees it). A fresh store is made in a temporary directory (or --root)
with a busybox image (`bb`, from the host's static busybox); the microvm driver boots
--kernel, else $CTR_KERNEL, else the kernel in $CTR_TEST_KERNEL_DIR
(/var/cache/ctr-test-kernel, filled by scripts/fetch-kernel.sh).

Results go to bench/results/spinup-<time>.json (the directory is not committed), with the
machine's load average before and after: on a shared machine every figure moves with it.
Needs root (overlay mounts, the sandbox's namespaces, qemu's 9p passthrough). The microvm
against a raw qemu boot of the same guest is `bench/run.py --only microvm`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from run import BUSYBOX, Contender, Runner, ctr_command, guest_kernel, make_rootfs, measure, sh

HERE = Path(__file__).resolve().parent
DRIVERS = ("process/overlay", "hyperv/sandbox", "hyperv/microvm")


def store_env(base: Path, kernel_arg: str | None, wanted: list[str]) -> tuple[dict[str, str], dict[str, str], str | None]:
    """(the ctr environment, {row: why skipped}, the guest kernel) for a fresh store in `base`;
    makes the busybox image `bb`. Shared with bench/vm.py."""
    if os.geteuid() != 0:
        sys.exit(f"{Path(sys.argv[0]).name}: run as root (overlay mounts, namespaces, qemu's 9p passthrough)")
    if not BUSYBOX:
        sys.exit(f"{Path(sys.argv[0]).name}: needs busybox-static (apt-get install busybox-static)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(CTR_ROOT=str(base / "root"), CTR_CONFIG=str(base / "config.yaml"), NO_COLOR="1", CTR_NO_PROGRESS="1")
    kernel, why = guest_kernel(kernel_arg)
    skipped = {}
    if kernel is not None:
        env["CTR_KERNEL"] = str(kernel.image)
    else:
        skipped = {r: why for r in wanted if r in ("hyperv/microvm", "vm/qemu")}
    make_rootfs(base / "rootfs")
    sh([*ctr_command(sys.executable), "image", "import", str(base / "rootfs"), "bb"], env=env)
    return env, skipped, str(kernel.image) if kernel else None


def driver_reasons(env: dict[str, str]) -> dict[str, str]:
    info = json.loads(sh([*ctr_command(sys.executable), "info", "--format", "json"], env=env).stdout)
    return {f"{d['Isolation']}/{d['Driver']}": d["Reason"] for d in info.get("Drivers", [])}


def run_rm(env: dict[str, str], row: str) -> Contender:
    """`ctr run --rm --isolation I --driver D bb true` as a contender labelled `row` (I/D)."""
    iso, name = row.split("/")
    return Contender(row, [*ctr_command(sys.executable), "run", "--rm", "--isolation", iso, "--driver", name,
                           "bb", "true"], env, ours=True)


def write_result(prefix: str, data: dict) -> None:
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"written to {path.relative_to(HERE.parent)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=9, help="timed runs per driver (default 9)")
    ap.add_argument("--drivers", default=",".join(DRIVERS), help="comma-separated isolation/driver pairs")
    ap.add_argument("--kernel", help="guest kernel for microvm (default: $CTR_KERNEL, else the test kernel)")
    ap.add_argument("--root", help="store directory to use (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary store")
    args = ap.parse_args()
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    base = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="ctr-spinup-"))
    try:
        env, skipped, kernel = store_env(base, args.kernel, drivers)
        for d, why in skipped.items():
            print(f"spinup: {d}: skipped: {why}", file=sys.stderr)
            drivers.remove(d)
        contenders = [run_rm(env, d) for d in drivers]
        load_before = os.getloadavg()
        measure(contenders, args.runs, 1, Runner(base), env, memory=False)
        load_after = os.getloadavg()
        reasons = driver_reasons(env)
    finally:
        if not args.root and not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    rows = []
    for c in contenders:
        ts = c.times or [0.0]
        rows.append({"driver": c.label, "runs": len(c.times), "median_ms": round(statistics.median(ts)),
                     "min_ms": round(min(ts)), "max_ms": round(max(ts)), "times_ms": [round(t) for t in c.times],
                     "error": c.error, "detail": reasons.get(c.label, "")})
    width = max([len(d) for d in drivers] + [6])
    print(f"{'driver':<{width}}  {'median':>8}  {'min':>8}  {'max':>8}")
    for r in rows:
        if r["error"]:
            print(f"{r['driver']:<{width}}  ERROR: {r['error']}")
        else:
            print(f"{r['driver']:<{width}}  {r['median_ms']:>6}ms  {r['min_ms']:>6}ms  {r['max_ms']:>6}ms")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; {os.cpu_count()} CPUs")
    if "hyperv/microvm" in reasons:
        print(f"microvm: {reasons['hyperv/microvm']}")
    write_result("spinup", {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
        "kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "loadavg_before": load_before, "loadavg_after": load_after, "guest_kernel": kernel,
        "results": rows, "skipped": skipped,
    })
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
