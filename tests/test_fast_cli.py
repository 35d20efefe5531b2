"""The fast path (cli/fast.py) must mean exactly what click means: its tables are checked
against the click commands typer builds, its matcher against argv shapes, and it must be what
the console script and `python -m ctr` run, without importing typer or click."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

from ctr.cli import fast, plain
from ctr.cli.app import app

TYPES = {int: click.INT, float: click.FLOAT, str: click.STRING}


def _command(name: str) -> click.Command:
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("name", sorted(fast.COMMANDS))
def test_tables_match_click(name):
    spec, cmd = fast.COMMANDS[name], _command(name)
    params = {p.name: p for p in cmd.params}
    # every parameter of the command is one the fast path knows, with click's default
    assert set(params) == set(spec["defaults"]), name
    flags, values = spec["flags"], spec["values"]
    for p in cmd.params:
        if isinstance(p, click.Argument):
            assert p.name in spec["positionals"] or spec["positionals"] == "image+command"
            continue
        tokens = set(p.opts) | set(p.secondary_opts)
        if p.is_flag:
            assert not p.secondary_opts, p.name
            assert {t: flags.get(t) for t in tokens} == {t: p.name for t in tokens}, p.name
            assert spec["defaults"][p.name] is False and p.default is False
        else:
            for t in tokens:
                param, kind, multiple = values[t]
                assert param == p.name and multiple == p.multiple, t
                assert TYPES[kind] == p.type or (kind is str and isinstance(p.type, click.types.StringParamType)), t
            default = p.default if not p.multiple else list(p.default or [])
            assert spec["defaults"][p.name] == default, p.name
    # and nothing more: every token the fast path takes is one of the command's
    known = {t for p in cmd.params if isinstance(p, click.Option) for t in (*p.opts, *p.secondary_opts)}
    assert set(flags) | set(values) <= known
    # the body takes exactly these parameters
    assert set(inspect.signature(getattr(plain, name)).parameters) == set(spec["defaults"])


def test_interspersed_as_click():
    assert _command("run").make_context("run", ["img"]).allow_interspersed_args is False
    for name in ("ps", "diff", "rm"):
        assert _command(name).make_context(name, []).allow_interspersed_args is True


@pytest.mark.parametrize("argv", [
    [], ["--help"], ["ps", "--help"], ["ps", "-h"], ["ps", "--bogus"], ["ps", "extra"], ["ps", "-n"],
    ["ps", "-n", "x"], ["ps", "--all=1"], ["ps", "-ax"], ["ps", "--"], ["diff", "a", "b"], ["run"],
    ["run", "--cpus", "lots", "img"], ["run", "--rm=yes", "img"], ["run", "--", "img"],
    ["image", "ls"], ["info"], ["--root"], ["--root=", "ps"], ["--bogus", "ps"], ["--version", "--bogus"],
    ["inspect", "x"], ["run", "-e"],
])
def test_falls_back(argv):
    assert fast.match(argv) is None


def _kw(argv):
    name = argv[0]
    return fast.parse(fast.COMMANDS[name], argv[1:])


def test_parses_like_click():
    assert _kw(["ps", "-aq", "--format=json", "-f", "status=exited", "--filter", "name=x", "-n5"]) == {
        "all": True, "quiet": True, "last": 5, "latest": False, "filter": ["status=exited", "name=x"],
        "no_trunc": False, "format": "json"}
    assert _kw(["diff", "--format", "json", "c1"])["container"] == "c1"
    assert _kw(["diff", "-l"]) == {"container": None, "format": "table", "latest": True}
    assert _kw(["rm", "-f", "a", "b"]) == {"containers": ["a", "b"], "force": True, "latest": False}
    kw = _kw(["run", "--rm", "-it", "-e", "A=1", "-eB=2", "--env=C=3", "-v", "/x:/y", "--cpus", "0.5",
              "img", "sh", "-c", "--rm", "--", "-e"])
    assert kw["rm"] and kw["interactive"] and kw["tty"] and kw["cpus"] == 0.5
    assert kw["env"] == ["A=1", "B=2", "C=3"] and kw["volume"] == ["/x:/y"]
    assert kw["image"] == "img" and kw["command"] == ["sh", "-c", "--rm", "--", "-e"]
    assert _kw(["run", "img"])["command"] is None
    # a value that starts with '-' is a value, as in click
    assert _kw(["run", "-e", "-x", "img"])["env"] == ["-x"]


def test_click_agrees_on_the_same_argv():
    """Parse each shape with click too and compare what the command body would receive."""
    shapes = [["ps", "-aq", "--format=json", "-f", "status=exited", "-n5"], ["ps"],
              ["diff", "--format", "json", "c1"], ["rm", "-f", "a", "b"],
              ["run", "--rm", "-it", "-e", "A=1", "-eB=2", "-m", "1g", "--name=n", "img", "sh", "-c", "x"]]
    for argv in shapes:
        cmd = _command(argv[0])
        ctx = cmd.make_context(argv[0], list(argv[1:]))
        got = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ctx.params.items()}
        want = _kw(argv)
        for k, v in want.items():
            g = got[k]
            if isinstance(v, list) and not v and g is None:
                continue
            assert (g or None) == (v or None) if isinstance(v, list) or v is None else g == v, (argv, k, g, v)


def test_entry_points_use_the_fast_path_without_typer(tmp_path):
    env = dict(os.environ, CTR_ROOT=str(tmp_path / "root"), CTR_CONFIG=str(tmp_path / "none.yaml"))
    code = ("import sys; from ctr.cli.fast import run_cli; rc = run_cli(sys.argv[1:]); "
            "assert 'typer' not in sys.modules and 'click' not in sys.modules, sorted(sys.modules); sys.exit(rc)")
    for argv in (["--version"], ["ps", "-a"], ["--root", str(tmp_path / "r2"), "ps", "-q"]):
        p = subprocess.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    assert (tmp_path / "r2" / "store.json").exists()
    main = Path(__file__).resolve().parent.parent / "src" / "ctr" / "__main__.py"
    assert "ctr.cli.fast" in main.read_text()


def test_errors_as_click_path(tmp_path):
    env = dict(os.environ, CTR_ROOT=str(tmp_path / "root"), CTR_CONFIG=str(tmp_path / "none.yaml"), NO_COLOR="1")
    run = lambda *a: subprocess.run([sys.executable, "-m", "ctr", *a], env=env, capture_output=True, text=True)
    p = run("diff", "nosuch")
    assert p.returncode == 1 and p.stderr.startswith("Error: no such container: nosuch")
    p = run("run", "--rm", "nosuch", "/bin/true")
    assert p.returncode == 125 and p.stderr.startswith("Error: no such image: nosuch")
    p = run("ps", "--format", "{{.Nope")
    assert p.returncode == 2 and p.stderr.startswith("Error:")
    p = run("ps", "--bogus")  # click's own message, through the full application
    assert p.returncode == 2 and "No such option" in p.stderr
    assert run("--version").stdout == run("--root", str(tmp_path / "r"), "--version").stdout


def test_complete_var_is_completions():
    from ctr.cli import completion

    assert fast.COMPLETE_VAR == completion.COMPLETE_VAR


def test_host_image_id_written_out():
    from ctr.images.digest import HOST_IMAGE_ID, digest_bytes

    assert HOST_IMAGE_ID == digest_bytes(b"ctr builtin image: the host root filesystem")


# what `ps` and `diff` do not import: ctr's records are plain classes (models.Record), `typing`
# is imported for type checkers only, times are read and written without datetime, the store
# locks without contextlib, signal is imported only to kill (docs/performance.md)
NOT_AT_RUNTIME = "'dataclasses', 'inspect', 'typing', 'datetime', 'contextlib', 'signal'"


def _only_ctr_imports(tmp_path, bad: str) -> str:
    """A `python -S -c` program running the fast path and asserting that none of the modules
    `bad` names was imported: without site's .pth files, so that only ctr's own imports count."""
    import site

    paths = [str(Path(fast.__file__).resolve().parents[2]), *site.getsitepackages()]
    return ("import sys; sys.path[:0] = %r; from ctr.cli.fast import run_cli; rc = run_cli(sys.argv[1:]); "
            "bad = {%s} & set(sys.modules); assert not bad, bad; sys.exit(rc)") % (paths, bad)


def test_hot_paths_import_little(tmp_path):
    """What `ps` and `run` must not import (docs/performance.md)."""
    env = dict(os.environ, CTR_ROOT=str(tmp_path / "root"), CTR_CONFIG=str(tmp_path / "none.yaml"))
    code = _only_ctr_imports(tmp_path, "'typer', 'click', 'rich', 'yaml', 'tarfile', 'hashlib', 'secrets', "
                                       "'subprocess', 'threading', 'platformdirs', 'shutil', 'ctr.changes', "
                                       "'ctr.drivers', " + NOT_AT_RUNTIME)
    p = subprocess.run([sys.executable, "-S", "-c", code, "ps", "-a"], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    # without $CTR_ROOT and $CTR_CONFIG: the user dirs, still without platformdirs
    home = {k: v for k, v in env.items() if k not in ("CTR_ROOT", "CTR_CONFIG", "XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    home["HOME"] = str(tmp_path / "home")
    p = subprocess.run([sys.executable, "-S", "-c", code, "ps", "-a"], env=home, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "home" / ".local" / "share" / "ctr" / "store.json").exists()
    if os.geteuid() == 0:  # run needs the drivers, and signal (it forwards signals), still not the rest
        code = code.replace(", 'ctr.drivers'", "").replace(", 'contextlib', 'signal'", "")
        p = subprocess.run([sys.executable, "-S", "-c", code, "run", "--rm", "host", "/bin/true"], env=env,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        # rm: the engine's lifecycle module (terminate), still no dataclasses, typing or datetime
        cid = subprocess.run([sys.executable, "-m", "ctr", "run", "-d", "host", "sleep", "60"], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        p = subprocess.run([sys.executable, "-S", "-c", code, "rm", "-f", cid], env=env,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert "'dataclasses'" in code and "'typing'" in code


def test_diff_imports_little(ctr, busybox_image, tmp_path):
    """`diff` of a container with ten changes (the benchmark's case) loads the driver and the
    change list, and none of dataclasses, inspect, typing, datetime, contextlib, signal."""
    if os.geteuid() != 0 and not Path("/proc/self/ns/user").exists():
        pytest.skip("no driver can run a container here")
    ctr.ok("run", "--name", "c", busybox_image, "sh", "-c",
           "mkdir /a && touch /a/1 /a/2 /a/3 /a/4 /a/5 && echo x > /etc/f && rm /bin/ls")
    code = _only_ctr_imports(tmp_path, "'typer', 'click', 'rich', 'yaml', 'hashlib', 'subprocess', 'threading', "
                                       "'shutil', 'ctr.launch', 'ctr.engine.images', " + NOT_AT_RUNTIME)
    code = code.replace("; sys.exit(rc)", "; assert 'ctr.changes' in sys.modules; sys.exit(rc)")
    p = subprocess.run([sys.executable, "-S", "-c", code, "diff", "c"], env=ctr.env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ctr.ok("diff", "c")
    assert len(p.stdout.splitlines()) == 10, p.stdout


@pytest.mark.parametrize("env", [
    {"HOME": "/root"}, {"HOME": "/home/u/"}, {"HOME": "/h", "XDG_DATA_HOME": "/x/d", "XDG_CONFIG_HOME": "/x/c/"},
    {"HOME": "/h", "XDG_DATA_HOME": "", "XDG_CONFIG_HOME": "  "}, {"HOME": "/h", "XDG_DATA_HOME": "rel/d"},
    {"HOME": "relative"}, {},
])
def test_user_dirs_as_platformdirs(env):
    """config.user_dir() writes out platformdirs' answer where it can (docs/performance.md)."""
    code = ("import platformdirs, sys; from ctr.config import user_dir; "
            "assert 'platformdirs' not in sys.modules or True; "
            "print(user_dir('data')); print(platformdirs.user_data_dir('ctr', appauthor=False)); "
            "print(user_dir('config')); print(platformdirs.user_config_dir('ctr', appauthor=False))")
    clean = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    p = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    ours_data, theirs_data, ours_config, theirs_config = p.stdout.splitlines()
    assert Path(ours_data) == Path(theirs_data) and Path(ours_config) == Path(theirs_config), env
