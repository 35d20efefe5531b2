#!/usr/bin/env python3
"""Spin-up to the first command: `ctr vm` on both drivers, beside the containers, in one table.

    python bench/vm.py [-n RUNS] [--only vm/qemu,vm/sandbox,...] [--kernel PATH] [--root DIR] [--keep]

A VM row times `ctr vm start NAME` followed by `ctr vm exec NAME true` (the VM is made once,
untimed, and stopped after each round, untimed): from nothing running to the first command's
exit, as a user would script it.  The container rows time `ctr run --rm IMAGE true` (the
same figure bench/spinup.py measures), so the three execution models stand side by side:
process < hyperv < vm.  The timing loop is bench/run.py's (`measure`): each round runs every
row once, the order reversed on every other round, so that a change in the machine's load
hits all of them alike; the table gives median, min and max wall time of the commands
(Python start-up included), and for VMs the median of each half.

A fresh store is made in a temporary directory (or --root) with a busybox image (`bb`, from
the host's static busybox); qemu boots --kernel, else $CTR_KERNEL, else the kernel in
$CTR_TEST_KERNEL_DIR (/var/cache/ctr-test-kernel, filled by scripts/fetch-kernel.sh).  One
untimed warm-up round builds the initramfs cache and the probes.  Results go to
bench/results/vm-<time>.json (not committed) with the load average before and after.
Needs root.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from run import Contender, Runner, ctr_command, measure, sh
from spinup import driver_reasons, run_rm, store_env, write_result

ROWS = ("process/overlay", "hyperv/sandbox", "hyperv/microvm", "vm/sandbox", "vm/qemu")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--only", default=",".join(ROWS), help="comma-separated rows: " + ", ".join(ROWS))
    ap.add_argument("--kernel", help="guest kernel (default: $CTR_KERNEL, else the test kernel)")
    ap.add_argument("--root", help="store directory to use (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary store")
    args = ap.parse_args()
    rows = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        sys.exit(f"vm bench: unknown rows {', '.join(unknown)} (known: {', '.join(ROWS)})")
    base = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="ctr-vm-bench-"))
    ctr = ctr_command(sys.executable)
    made: list[str] = []
    try:
        env, skipped, kernel = store_env(base, args.kernel, rows)
        rows = [r for r in rows if r not in skipped]
        contenders = []
        for r in rows:
            if not r.startswith("vm/"):
                contenders.append(run_rm(env, r))
                continue
            name = r.split("/")[1]
            vm = f"bench-{name}"
            sh([*ctr, "vm", "create", vm, "--image", "bb", "--driver", name, "--disk", "256m", "-q"], env=env)
            made.append(vm)
            contenders.append(Contender(
                r, [*ctr, "vm", "start", vm], env, ours=True, then=[[*ctr, "vm", "exec", vm, "true"]],
                after=lambda vm=vm: sh([*ctr, "vm", "stop", vm], env=env) and None))
        load_before = os.getloadavg()
        measure(contenders, args.runs, 1, Runner(base), env, memory=False)
        load_after = os.getloadavg()
        reasons = driver_reasons(env)
    finally:
        for vm in made:
            sh([*ctr, "vm", "rm", "-f", vm], env=env, check=False)
        if not args.root and not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    results = []
    for c in contenders:
        ts = c.times or [0.0]
        starts = [p[0] for p in c.parts]
        execs = [p[1] for p in c.parts if len(p) > 1]
        results.append({
            "row": c.label, "what": "vm start + vm exec true" if c.then else "run --rm bb true",
            "runs": len(c.times), "median_ms": round(statistics.median(ts)),
            "min_ms": round(min(ts)), "max_ms": round(max(ts)), "times_ms": [round(t) for t in c.times],
            "start_median_ms": round(statistics.median(starts)) if starts else None,
            "exec_median_ms": round(statistics.median(execs)) if execs else None,
            "error": c.error, "detail": reasons.get(c.label, ""),
        })
    width = max([len(r) for r in rows] + [10])
    print(f"{'row':<{width}}  {'what':<24}  {'median':>8}  {'min':>8}  {'max':>8}  {'start':>8}  {'exec':>7}")
    for x in results:
        if x["error"]:
            print(f"{x['row']:<{width}}  ERROR: {x['error']}")
            continue
        start = f"{x['start_median_ms']}ms" if x["start_median_ms"] is not None else "-"
        ex = f"{x['exec_median_ms']}ms" if x["exec_median_ms"] is not None else "-"
        print(f"{x['row']:<{width}}  {x['what']:<24}  {x['median_ms']:>6}ms  {x['min_ms']:>6}ms  "
              f"{x['max_ms']:>6}ms  {start:>8}  {ex:>7}")
    for r, why in skipped.items():
        print(f"{r}: skipped: {why}")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; {os.cpu_count()} CPUs")
    write_result("vm", {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
        "kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "loadavg_before": load_before, "loadavg_after": load_after, "guest_kernel": kernel,
        "results": results, "skipped": skipped,
    })
    return 1 if any(x["error"] for x in results) else 0


if __name__ == "__main__":
    sys.exit(main())
