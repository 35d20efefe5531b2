"""-t: the workload gets a terminal of the container's own devpts, as a controlling tty."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import needs_root

pytestmark = needs_root


def _script(ctr, command: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    if not shutil.which("script"):
        pytest.skip("needs script(1) from util-linux to provide a terminal")
    import sys

    return subprocess.run(["script", "-eqc", f"{sys.executable} -m ctr {command}", "/dev/null"],
                          capture_output=True, text=True, env=ctr.env, input=stdin, timeout=60)


def test_tty_inside_is_a_terminal_of_its_own_devpts(ctr, busybox_image):
    p = _script(ctr, "run --rm -t bb sh -c 'tty; echo $TERM; exit 4'")
    lines = p.stdout.replace("\r", "").split("\n")
    assert "/dev/pts/0" in lines, p.stdout
    assert "xterm" in lines
    assert p.returncode == 4


def test_without_tty_stdin_is_not_a_terminal(ctr, busybox_image):
    r = ctr("run", "--rm", "bb", "sh", "-c", "tty; true")
    assert "not a tty" in r.out
