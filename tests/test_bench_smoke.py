"""The benchmark suite must keep working: one iteration of every case on small data
(`bench/run.py --quick`). No time is asserted — benchmarks are not timed tests. Peers that
are not installed (podman) are skipped by the suite itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import busybox_is_static, needs_root
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@needs_root
@pytest.mark.skipif(not busybox_is_static(), reason="needs busybox-static (apt-get install busybox-static)")
def test_quick_run(tmp_path):
    out = tmp_path / "result.json"
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--no-install", "--tmp", str(tmp_path),
                        "--out", str(out)], capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["meta"]["quick"] is True
    names = [c["name"] for c in result["cases"]]
    assert names == ["startup", "run", "hyperv", "diff", "diff10k", "ps200", "import"]
    for case in result["cases"]:
        assert case["error"] is None, case
        assert case["targets"], case["name"]
        for c in case["contenders"]:
            assert c["error"] is None, c
            if c["label"].startswith("ctr "):
                assert len(c["times_ms"]) == 1, c  # measured, once
            else:
                assert c["skipped"] or len(c["times_ms"]) == 1, c
    assert "target:" in p.stdout and "results:" in p.stdout
    # everything it made is gone
    assert not [x for x in tmp_path.iterdir() if x.name.startswith("ctr-bench-")]


def test_only_and_list():
    p = subprocess.run([sys.executable, str(BENCH), "--list"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "diff10k" in p.stdout
    p = subprocess.run([sys.executable, str(BENCH), "--quick", "--only", "nosuchcase"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "no case matches" in p.stderr
