"""man/ and completions/ are generated from the command tree by scripts/gen-docs: they must be
current, render without a single groff warning, carry examples; completion must work."""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_root

ROOT = Path(__file__).resolve().parent.parent
GEN_DOCS = ROOT / "scripts" / "gen-docs"
MAN = sorted((ROOT / "man").glob("*.1"))
HINT = "run scripts/gen-docs and commit man/ and completions/"


@pytest.fixture(scope="module")
def gen_docs():
    return runpy.run_path(str(GEN_DOCS), run_name="gen_docs")


def test_generated_files_are_current(gen_docs):
    problems = gen_docs["stale"](gen_docs["generate"]())
    assert not problems, "\n".join(problems) + f"\n{HINT}"


def test_check_mode_agrees():
    p = subprocess.run([sys.executable, str(GEN_DOCS), "--check"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr + HINT


def test_check_mode_reports_stale_files(tmp_path, gen_docs):
    files = gen_docs["generate"]()
    assert "man/ctr.1" in files and "man/ctr-run.1" in files and "man/ctr-image-import.1" in files
    assert {"completions/ctr.bash", "completions/_ctr", "completions/ctr.fish"} <= set(files)
    page = ROOT / "man" / "ctr-ps.1"
    original = page.read_text()
    try:
        page.write_text(original + ".\\\" edited by hand\n")
        p = subprocess.run([sys.executable, str(GEN_DOCS), "--check"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 1
        assert "man/ctr-ps.1 is stale" in p.stderr and "run scripts/gen-docs" in p.stderr
    finally:
        page.write_text(original)


def test_every_command_has_examples(gen_docs):
    missing = gen_docs["leaf_commands_without_examples"]()
    assert not missing, f"no EXAMPLES for {', '.join(missing)}: add them to EXAMPLES in scripts/gen-docs, then {HINT}"


def test_examples_name_real_commands(gen_docs):
    orphans = gen_docs["examples_without_commands"]()
    assert not orphans, f"EXAMPLES in scripts/gen-docs for commands that do not exist: {', '.join(orphans)}"


def test_every_page_has_the_sections_a_reader_expects():
    assert MAN, "man/ is empty: " + HINT
    for page in MAN:
        text = page.read_text()
        for section in (".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH SEE ALSO"):
            assert section in text, f"{page.name}: no {section}"
    root = (ROOT / "man" / "ctr.1").read_text()
    for section in (".SH EXAMPLES", ".SH EXIT STATUS", ".SH ENVIRONMENT", ".SH COMMANDS"):
        assert section in root


@pytest.mark.skipif(not shutil.which("groff"), reason="needs groff (apt-get install groff-base)")
@pytest.mark.parametrize("page", MAN, ids=[p.name for p in MAN])
def test_man_page_renders_without_warnings(page):
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stderr == "", f"{page.name}:\n{p.stderr}"


# ----------------------------------------------------------------------------- completion scripts
def ctr_cmd(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "ctr", *args], capture_output=True, text=True, env=env,
                          timeout=60, **kw)


@pytest.mark.parametrize("shell, name", [("bash", "ctr.bash"), ("zsh", "_ctr"), ("fish", "ctr.fish")])
def test_completion_command_prints_the_committed_script(shell, name):
    p = ctr_cmd("completion", shell)
    assert p.returncode == 0, p.stderr
    assert p.stdout == (ROOT / "completions" / name).read_text(), HINT


def test_completion_rejects_unknown_shells():
    p = ctr_cmd("completion", "tcsh")
    assert p.returncode == 2 and p.stderr.startswith("Error: ")


@pytest.mark.parametrize("shell, check", [("bash", ["bash", "-n"]), ("zsh", ["zsh", "-n"]), ("fish", ["fish", "-n"])])
def test_completion_scripts_parse(shell, check):
    if not shutil.which(check[0]):
        pytest.skip(f"{check[0]} is not installed")
    name = {"bash": "ctr.bash", "zsh": "_ctr", "fish": "ctr.fish"}[shell]
    p = subprocess.run([*check, str(ROOT / "completions" / name)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


# ----------------------------------------------------------------------------- dynamic completion
def complete(ctr, shell: str, words: str, cword: int | str) -> list[str]:
    env = dict(ctr.env, _CTR_COMPLETE=f"{shell}_complete", COMP_WORDS=words, COMP_CWORD=str(cword))
    p = ctr_cmd(env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    return p.stdout.splitlines()


def bash_values(lines: list[str]) -> list[str]:
    return [line.split(",", 1)[1] for line in lines if line.startswith("plain,")]


SHELLS = ("bash", "zsh", "fish")


def in_shell(ctr, shell: str, line: str) -> list[str]:
    """What the committed completion script offers in a real `shell` for the command `line`
    (values only, descriptions dropped). ctr is found through a shim on PATH, as installed."""
    shim = Path(ctr.root).parent / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "ctr").write_text(f"#!/bin/sh\nexec {sys.executable} -m ctr \"$@\"\n")
    (shim / "ctr").chmod(0o755)
    words = line.split(" ")
    script_file = ROOT / "completions" / {"bash": "ctr.bash", "zsh": "_ctr", "fish": "ctr.fish"}[shell]
    if shell == "bash":
        argv = ["bash", "--norc", "--noprofile", "-c",
                f"source {script_file}\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); "
                f"COMP_CWORD={len(words) - 1}\n_ctr_completion ctr\nprintf '%s\\n' \"${{COMPREPLY[@]}}\""]
    elif shell == "zsh":  # compsys stubbed: print what would be offered
        argv = ["zsh", "-f", "-c",
                "compdef() { : }\n"
                f"source {script_file}\n"
                '_describe() { print -rl -- "${(@P)3}" }\n'
                'compadd() { print -rl -- "${(@P)${@[-1]}}" }\n'
                f"words=({' '.join(repr(w) for w in words)}); CURRENT={len(words)}\n_ctr_completion"]
    else:
        argv = ["fish", "--no-config", "-c", f"source {script_file}; complete -C {line!r}"]
    env = dict(ctr.env, PATH=f"{shim}:{os.environ['PATH']}")
    p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    if shell == "zsh":  # value:description, with the value's own colons escaped
        return [re.split(r"(?<!\\):", line, maxsplit=1)[0].replace("\\:", ":") for line in p.stdout.splitlines()
                if line]
    return [line.split("\t", 1)[0] for line in p.stdout.splitlines() if line]


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_in_a_real_shell(ctr, shell):
    if not shutil.which(shell):
        pytest.skip(f"{shell} is not installed")
    assert in_shell(ctr, shell, "ctr ima") == ["image"]
    assert in_shell(ctr, shell, "ctr run ho") == ["host"]
    assert in_shell(ctr, shell, "ctr ps --no-t") == ["--no-trunc"]


def test_file_names_where_nothing_else_completes(ctr, tmp_path):
    assert complete(ctr, "bash", f"ctr image import {tmp_path}/x", 3) == [f"file,{tmp_path}/x"]
    assert complete(ctr, "bash", "ctr kube generate -o po", 4) == ["file,po"]
    assert complete(ctr, "bash", "ctr rm nosuch", 2) == []  # a container reference is never a file


def test_completes_commands_and_options(ctr):
    assert bash_values(complete(ctr, "bash", "ctr ima", 1)) == ["image"]
    assert set(bash_values(complete(ctr, "bash", "ctr image ", 2))) >= {"import", "ls", "history", "inspect", "tag", "prune", "rm"}
    assert "--no-trunc" in bash_values(complete(ctr, "bash", "ctr ps --no", 2))
    assert bash_values(complete(ctr, "bash", "ctr completion ", 2)) == ["bash", "zsh", "fish"]
    assert "kube" in bash_values(complete(ctr, "bash", "ctr ", 1))


def test_completes_the_builtin_image_without_creating_a_store(ctr, tmp_path):
    assert "host" in bash_values(complete(ctr, "bash", "ctr run ", 2))
    nowhere = tmp_path / "nowhere"
    assert bash_values(complete(ctr, "bash", f"ctr --root {nowhere} rm ", 4)) == []
    assert not nowhere.exists(), "completion must not create a store"


@needs_root
def test_completes_container_and_image_names_from_the_store(ctr, rootfs):
    ctr.ok("image", "import", str(rootfs), "compimg:1")
    ctr.ok("run", "--name", "comp_box", "host", "true")
    cid = ctr.ok("ps", "-aq", "--no-trunc").strip()

    assert bash_values(complete(ctr, "bash", "ctr rm ", 2)) == ["comp_box"]
    assert bash_values(complete(ctr, "bash", "ctr diff comp", 2)) == ["comp_box"]
    assert bash_values(complete(ctr, "bash", "ctr kube generate ", 3)) == ["comp_box"]
    assert bash_values(complete(ctr, "bash", f"ctr inspect {cid[:3]}", 2)) == [cid[:12]]
    assert bash_values(complete(ctr, "bash", "ctr run comp", 2)) == ["compimg:1"]
    assert set(bash_values(complete(ctr, "bash", "ctr image rm ", 3))) == {"host", "compimg:1"}

    zsh = complete(ctr, "zsh", "ctr rm ", 2)
    assert zsh == ["plain", "comp_box", "host exited"]
    fish = complete(ctr, "fish", "ctr rm comp_", "comp_")
    assert fish == ["plain\tcomp_box\thost exited"]

    for shell in SHELLS:
        if shutil.which(shell):
            assert in_shell(ctr, shell, "ctr rm ") == ["comp_box"], shell
            assert in_shell(ctr, shell, "ctr run compi") == ["compimg:1"], shell


def test_container_completer_filters_by_state(ctr, tmp_path):
    """`container_completer("running")` is what stop/kill/exec use: exited containers are left out."""
    import click

    from ctr.cli.common import complete_container, container_completer
    from ctr.store.store import Store

    store = Store(tmp_path / "store").open()
    for cid, name, state in (("a" * 64, "up_one", "running"), ("b" * 64, "done_one", "exited")):
        store.containers_dir.joinpath(cid).mkdir()
        store.write_container(cid, {"id": cid, "name": name, "state": state, "image_name": "bb"})
    ctx = click.Context(click.Command("ctr", params=[click.Option(["--root"])]))
    ctx.params["root"] = str(store.root)
    assert [v for v, _ in complete_container(ctx, "")] == ["done_one", "up_one"]
    assert [v for v, _ in container_completer("running")(ctx, "")] == ["up_one"]
    assert [v for v, _ in complete_container(ctx, "b")] == ["b" * 12]
