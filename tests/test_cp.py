"""`ctr cp`: docker's placement rules both ways, running and stopped containers, ownership
and modes, and streams that try to write outside what is copied."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
import pytest

from conftest import needs_busybox, needs_root
from ctr.engine import cp

pytestmark = [needs_root, needs_busybox]

DRIVERS = ["overlay", "copy"]


def one_error(r, needle: str) -> None:
    errors = [ln for ln in r.err.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in r.err, r


@pytest.fixture
def made(ctr, busybox_image):
    """A stopped container whose /data holds a file (setuid), a subdirectory, an absolute and
    a relative symlink."""
    ctr.ok("run", "--name", "c", busybox_image, "sh", "-c",
           "mkdir -p /data/sub && echo hi > /data/a && chmod 4755 /data/a && echo deep > /data/sub/b && "
           "ln -s /etc/passwd /data/abs && ln -s a /data/rel")
    return "c"


def test_copy_out_follows_dockers_rules(ctr, made, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert ctr.ok("cp", "c:/data", str(out / "d1")) == ""  # a new name: the directory itself
    d1 = out / "d1"
    assert (d1 / "a").read_text() == "hi\n" and (d1 / "sub" / "b").read_text() == "deep\n"
    assert os.readlink(d1 / "abs") == "/etc/passwd" and os.readlink(d1 / "rel") == "a"  # links as they are
    assert stat.S_IMODE((d1 / "a").stat().st_mode) == 0o755  # no setuid without -a
    ctr.ok("cp", "c:/data", str(d1))  # an existing directory: into it, by name
    assert (d1 / "data" / "sub" / "b").is_file()
    (out / "d2").mkdir()
    ctr.ok("cp", "c:/data/.", str(out / "d2"))  # /. : the contents
    assert sorted(os.listdir(out / "d2")) == ["a", "abs", "rel", "sub"]
    ctr.ok("cp", "c:data/a", str(out))  # a file into a directory; the leading / is optional
    assert (out / "a").read_text() == "hi\n"
    ctr.ok("cp", "c:/data/sub/b", str(out / "a"))  # onto a file: replaced
    assert (out / "a").read_text() == "deep\n"
    ctr.ok("cp", "-a", "c:/data/a", str(out / "kept"))
    assert stat.S_IMODE((out / "kept").stat().st_mode) == 0o4755
    ctr.ok("cp", "-L", "c:/data/rel", str(out / "followed"))
    assert (out / "followed").read_text() == "hi\n" and not (out / "followed").is_symlink()
    with tarfile.open(fileobj=io.BytesIO(_raw(ctr, "cp", "c:/data", "-").stdout)) as t:
        assert {"data", "data/a", "data/sub/b", "data/abs"} <= set(t.getnames())
    for args, needle in ((["c:/data", str(out / "a")], "cannot copy a directory onto the file"),
                         (["c:/data/a", str(out / "missing") + "/"], "does not exist"),
                         (["c:/data/a", str(out / "no" / "such")], "no such directory"),
                         (["c:/nope", str(out)], "no such file or directory"),
                         (["nosuch:/x", str(out)], "no such container")):
        r = ctr("cp", *args)
        assert r.code == 1, r
        one_error(r, needle)
    r = ctr("cp", str(out), str(tmp_path))
    assert r.code == 2
    one_error(r, "CONTAINER:PATH")


def _raw(ctr, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """`ctr ARGS` with binary stdin and stdout (a tar either way)."""
    return subprocess.run([sys.executable, "-m", "ctr", *args], env=ctr.env, input=stdin, capture_output=True,
                          timeout=60)


@pytest.mark.parametrize("driver", DRIVERS)
def test_copy_in_stopped_and_running(ctr, busybox_image, tmp_path, driver):
    src = tmp_path / "src"
    (src / "tree" / "x").mkdir(parents=True)
    (src / "tree" / "x" / "y").write_text("two\n")
    (src / "f").write_text("one\n")
    os.chown(src / "f", 1234, 1234)
    ctr.ok("run", "--name", "s", "--driver", driver, busybox_image, "true")
    ctr.ok("cp", str(src / "f"), "s:/etc/")
    ctr.ok("cp", "-a", str(src / "f"), "s:/etc/f-kept")
    ctr.ok("cp", str(src / "tree"), "s:/newdir")
    assert {"A /etc/f", "A /etc/f-kept", "A /newdir", "A /newdir/x", "A /newdir/x/y"} <= set(ctr.ok("diff", "s").splitlines())
    cid = json.loads(ctr.ok("inspect", "s"))[0]["Id"]
    top = ctr.root / "containers" / cid / ("upper" if driver == "overlay" else "rootfs")
    assert (top / "etc" / "f").stat().st_uid == 0 and (top / "etc" / "f-kept").stat().st_uid == 1234
    # running: the copy lands in the live root, the workload sees it at once
    ctr.ok("run", "-d", "--name", "r", "--driver", driver, busybox_image, "sleep", "100")
    try:
        ctr.ok("cp", str(src / "tree"), "r:/tmp/")
        assert ctr.ok("exec", "r", "cat", "/tmp/tree/x/y") == "two\n"
        assert ctr.ok("exec", "r", "stat", "-c", "%u", "/tmp/tree/x/y") == "0\n"
        # an archive on stdin goes into a directory as it is
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            info = tarfile.TarInfo("from-stdin/z")
            info.size = 3
            t.addfile(info, io.BytesIO(b"zz\n"))
        p = _raw(ctr, "cp", "-", "r:/tmp", stdin=buf.getvalue())
        assert p.returncode == 0, p.stderr
        assert ctr.ok("exec", "r", "cat", "/tmp/from-stdin/z") == "zz\n"
        ctr.ok("cp", "r:/tmp/tree/x/y", str(tmp_path / "back"))
        assert (tmp_path / "back").read_text() == "two\n"
    finally:
        ctr("rm", "-f", "r")


# ----------------------------------------------------------------------------- hostile streams
def _stream(*members: tuple) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, kind, extra in members:
            info = tarfile.TarInfo(name)
            data = None
            if kind == "file":
                data = extra.encode()
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("members,needle", [
    ([("x", "dir", None), ("x/../escape", "file", "no")], "unsafe path"),
    ([("x", "dir", None), ("/abs", "file", "no")], "unsafe path"),
    ([("x", "dir", None), ("y/other", "file", "no")], "unsafe path"),
    ([("x", "dir", None), ("x/h", "hard", "/etc/passwd")], "unsafe path"),
    ([("x", "dir", None), ("x/h", "hard", "x/../../etc/passwd")], "unsafe path"),
])
def test_a_stream_cannot_name_anything_outside(tmp_path, members, needle):
    dest = tmp_path / "dest"
    with pytest.raises(cp.CopyError, match=needle):
        cp.place(_stream(*members), str(dest), "/src/x", archive=False)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "abs").exists()


def test_nothing_is_written_through_a_link_the_stream_made(tmp_path):
    """x/l -> the host directory, then x/l/pwned: the file is made first (in a real x/l), the
    link last -- which then cannot replace the directory: refused, the host directory untouched."""
    host = tmp_path / "host"
    host.mkdir()
    stream = _stream(("x", "dir", None), ("x/l", "sym", str(host)), ("x/l/pwned", "file", "no"))
    with pytest.raises(cp.CopyError):
        cp.place(stream, str(tmp_path / "dest"), "/src/x", archive=False)
    assert list(host.iterdir()) == []


def test_devices_are_skipped_and_said(tmp_path):
    stream = _stream(("x", "dir", None), ("x/null", "chr", None), ("x/ok", "file", "fine\n"))
    assert cp.place(stream, str(tmp_path / "dest"), "/src/x", archive=False) == ["x/null"]
    assert sorted(os.listdir(tmp_path / "dest")) == ["ok"]


def test_split_arg_as_docker():
    assert cp.split_arg("web:/etc/hosts") == ("web", "/etc/hosts")
    assert cp.split_arg("web:") == ("web", "/")
    assert cp.split_arg("./a:b") == (None, "./a:b") and cp.split_arg("/x:y") == (None, "/x:y")
    assert cp.split_arg("plain") == (None, "plain") and cp.split_arg("-") == (None, "-")


def test_between_two_containers_is_refused(ctr):
    r = ctr("cp", "a:/x", "b:/y")
    assert r.code == 2
    one_error(r, "between two containers")
