"""The benchmark suite must keep working: one iteration of every case on small data
(`bench/run.py --quick`). No time is asserted — benchmarks are not timed tests. Peers that
are not installed (podman) are skipped by the suite itself; the microvm case runs when a guest
kernel is found ($CTR_KERNEL, or $CTR_TEST_KERNEL_DIR as for tests/test_microvm.py) and is
left out of --quick otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import busybox_is_static, needs_root
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"
sys.path.insert(0, str(BENCH.parent))


@needs_root
@pytest.mark.skipif(not busybox_is_static(), reason="needs busybox-static (apt-get install busybox-static)")
def test_quick_run(tmp_path):
    out = tmp_path / "result.json"
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--no-install", "--tmp", str(tmp_path),
                        "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["meta"]["quick"] is True
    names = [c["name"] for c in result["cases"]]
    from run import microvm_unavailable

    microvm = [] if microvm_unavailable() else ["microvm"]
    assert names == ["startup", "run", "hyperv", *microvm, "diff", "diff10k", "ps200", "import"]
    for case in result["cases"]:
        assert case["error"] is None, case
        assert case["targets"], case["name"]
        for c in case["contenders"]:
            assert c["error"] is None, c
            if c["label"].startswith("ctr "):
                assert len(c["times_ms"]) == 1, c  # measured, once
            else:
                assert c["skipped"] or len(c["times_ms"]) == 1, c
    if microvm:  # both contenders booted the guest once, and the peer saw it say `exit 0`
        case = next(c for c in result["cases"] if c["name"] == "microvm")
        assert [len(c["times_ms"]) for c in case["contenders"]] == [1, 1], case
    else:
        assert "microvm: left out:" in p.stderr
    assert "target:" in p.stdout and "results:" in p.stdout
    # everything it made is gone
    assert not [x for x in tmp_path.iterdir() if x.name.startswith("ctr-bench-")]


def test_only_and_list():
    p = subprocess.run([sys.executable, str(BENCH), "--list"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "diff10k" in p.stdout
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "nosuchcase"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "no case matches" in p.stderr
