"""output.py: docker-style templates, json/yaml types, relative times only in tables, colour
and progress manners; and the listing commands' --format/-q/--no-trunc end to end."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from conftest import needs_root
from ctr import output
from ctr.errors import InvalidArgument

RELATIVE = re.compile(r"\bago\b|\b\d+ (second|minute|hour|day|week|month|year)s?\b|Less than a second")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def render(fmt, items, **kw) -> str:
    buf = io.StringIO()
    output.template(fmt, items, out=buf, **kw)
    return buf.getvalue()


RAW = {"Id": "a" * 64, "Names": ["web", "web2"], "Size": 3, "Ratio": 1.0, "Up": True, "Gone": None,
       "Config": {"Env": ["A=1", "B=2"], "Cmd": ["sh", "-c", "x y"]}}


def view():
    return output.View(RAW, {"ID": "a" * 12, "Names": "web,web2"}, {"ID": "CONTAINER ID", "Names": "NAMES"})


# ----------------------------------------------------------------------------- templates
@pytest.mark.parametrize("fmt, want", [
    ("{{.ID}} {{.Names}}", "aaaaaaaaaaaa web,web2"),
    ("{{.Id}}", "a" * 64),
    ("{{ .size }}", "3"),                           # case-insensitive, spaces allowed
    ("{{.Size}}/{{.Ratio}}/{{.Up}}/{{.Gone}}.", "3/1/true/."),
    ("{{.Config.Env}}", "[A=1 B=2]"),              # Go's slice printing
    ("{{json .Config.Cmd}}", '["sh","-c","x y"]'),
    ('{{join .Config.Env ", "}}', "A=1, B=2"),
    ("{{upper .Names}} {{lower .ID}} {{title .Names}}", "WEB,WEB2 aaaaaaaaaaaa Web,Web2"),
    ("{{truncate .Id 5}}", "aaaaa"),
    ("{{.Config}}", "{[A=1 B=2] [sh -c x y]}"),       # Go's struct form, as docker's {{.State}}
    ('{{.ID}}{{"\\t"}}x', "aaaaaaaaaaaa\tx"),
    ("{{.ID}}\\t{{.Size}}", "aaaaaaaaaaaa\t3"),     # docker turns a typed \t into a tab
    ("{{.ID}}\\n{{.Size}}", "aaaaaaaaaaaa\n3"),
    ("plain text", "plain text"),
])
def test_template_fields(fmt, want):
    assert render(fmt, [view()]) == want + "\n"


def test_json_dot_prints_the_raw_record_not_the_human_view():
    assert json.loads(render("{{json .}}", [view()])) == RAW


def test_template_over_plain_dicts():
    assert render("{{.Kind}} {{.Path}}", [{"Kind": "A", "Path": "/x"}, {"Kind": "D", "Path": "/y"}]) == "A /x\nD /y\n"


def test_table_prefix_adds_header_and_aligns():
    items = [view(), output.View(dict(RAW, Size=12345), {"ID": "b" * 12, "Names": "x"}, view().headers)]
    assert render("table {{.ID}}\\t{{.Names}}\\t{{.Size}}", items).splitlines() == [
        "CONTAINER ID   NAMES      SIZE",
        "aaaaaaaaaaaa   web,web2   3",
        "bbbbbbbbbbbb   x          12345",
    ]


def test_table_prefix_spaces_are_trimmed_as_docker_does():
    assert render("table   {{.ID}}  ", [view()]).splitlines() == ["CONTAINER ID", "aaaaaaaaaaaa"]


def test_table_header_defaults_to_upper_field_name_and_prints_for_empty_lists():
    assert render("table {{.Kind}}\\t{{json .Path}}", [], headers={}) == "KIND   PATH\n"
    assert render("{{.Kind}}", []) == ""


@pytest.mark.parametrize("fmt, message", [
    ("{{.Nope}}", "template: no field 'Nope'"),
    ("{{.Config.Nope}}", "template: no field 'Nope'"),
    ("{{.Names.First}}", "template: cannot take field 'First' of a str"),
    ("{{.Config.Env.X}}", "template: cannot take field 'X' of a list"),
])
def test_unknown_field_is_a_usage_error(fmt, message):
    with pytest.raises(InvalidArgument) as e:
        render(fmt, [view()])
    assert e.value.exit_code == 2 and e.value.message == message
    assert e.value.hint


@pytest.mark.parametrize("fmt", ["{{range .}}x{{end}}", "{{.ID", "{{.ID}}}}", "x }} y", "{{.ID | upper}}",
                                 "{{json}}", "{{join .Names}}", "{{truncate .ID x}}", "{{}}", '{{"unclosed}}',
                                 "{{printf \"%s\" .ID}}", "{{- .ID -}}"])
def test_unsupported_templates_fail_when_parsed(fmt):
    with pytest.raises(InvalidArgument) as e:
        output.Template(fmt)
    assert e.value.exit_code == 2 and e.value.message.startswith(("unsupported template", "template:"))


def test_emit_formats():
    items = [{"Id": "x", "N": 1, "Created": "2024-01-01T00:00:00Z"}]
    for fmt, parse in (("json", json.loads), ("yaml", yaml.safe_load)):
        buf = io.StringIO()
        sys_stdout, sys.stdout = sys.stdout, buf
        try:
            output.emit(fmt, items, ["ID"], [["x"]])
        finally:
            sys.stdout = sys_stdout
        assert parse(buf.getvalue()) == items


# ----------------------------------------------------------------------------- times
def test_status_text_relative_only_when_asked():
    now = datetime.now(timezone.utc)
    started = (now - timedelta(seconds=3)).isoformat()
    finished = (now - timedelta(minutes=2, seconds=1)).isoformat()
    assert output.status_text("running", None, started, None) == "Up 3 seconds"
    assert output.status_text("exited", 0, started, finished) == "Exited (0) 2 minutes ago"
    assert output.status_text("running", None, started, None, relative=False) == f"Up since {started}"
    assert output.status_text("exited", 3, started, finished, relative=False) == f"Exited (3) at {finished}"
    assert output.status_text("created", None, None, None, relative=False) == "Created"
    for text in (output.status_text("running", None, started, None, relative=False),
                 output.status_text("exited", 3, started, finished, relative=False)):
        assert not RELATIVE.search(text)


@pytest.mark.parametrize("seconds, text", [(0.2, "Less than a second"), (1, "1 second"), (59, "59 seconds"),
                                           (120, "2 minutes"), (3 * 3600, "3 hours"), (3 * 86400, "3 days")])
def test_human_duration(seconds, text):
    assert output.human_duration(seconds) == text


def test_docker_time():
    assert output.docker_time("2024-05-01T10:00:00.123Z") == "2024-05-01 10:00:00 +0000 UTC"
    assert output.docker_time(None) == ""


# ----------------------------------------------------------------------------- colour
class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("CTR_NO_COLOR", raising=False)
    assert output.use_color(FakeTTY()) is True
    assert output.use_color(io.StringIO()) is False
    monkeypatch.setenv("NO_COLOR", "")  # any value, even empty, per no-color.org
    assert output.use_color(FakeTTY()) is False


@pytest.mark.parametrize("no_color, tty, coloured", [(None, True, True), ("1", True, False), (None, False, False)])
def test_error_colour(monkeypatch, no_color, tty, coloured):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("CTR_NO_COLOR", raising=False)
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    err = FakeTTY() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    output.error("boom", "try again")
    output.warn("careful")
    assert ("\x1b[" in err.getvalue()) is coloured
    assert re.sub(r"\x1b\[[0-9;]*m", "", err.getvalue()) == "Error: boom\nHint: try again\nWarning: careful\n"


# ----------------------------------------------------------------------------- progress
PROGRESS_SNIPPET = """
import sys, time
from ctr import output
with output.progress(4, "Importing layers") as p:
    for _ in range(4):
        p.advance(1)
        time.sleep(0.05)
with output.progress(None, "Waiting") as p:
    p.update(description="Still waiting")
print("rich" in sys.modules)
"""


def test_progress_prints_nothing_and_imports_nothing_when_not_a_terminal():
    env = dict(os.environ)
    env.pop("CTR_NO_PROGRESS", None)
    p = subprocess.run([sys.executable, "-c", PROGRESS_SNIPPET], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert p.stdout == "False\n"


def _run_with_stderr_on_a_pty(env: dict) -> tuple[str, str]:
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-c", PROGRESS_SNIPPET], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        r, _, _ = select.select([master], [], [], 30)
        if not r:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    out = p.stdout.read().decode()
    p.wait(timeout=30)
    os.close(master)
    return out, b"".join(chunks).decode(errors="replace")


def test_progress_draws_on_a_terminal_and_not_when_quiet_or_disabled():
    env = dict(os.environ, TERM="xterm", NO_COLOR="1")
    env.pop("CTR_NO_PROGRESS", None)
    out, err = _run_with_stderr_on_a_pty(env)
    assert out == "True\n" and "Importing layers" in err
    out, err = _run_with_stderr_on_a_pty(dict(env, CTR_NO_PROGRESS="1"))
    assert out == "False\n" and err == ""


def test_progress_quiet_is_a_no_op(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    with output.progress(10, "x", quiet=True) as p:
        p.advance(5)
        p.update(completed=10, total=10, description="y")
    assert sys.stderr.getvalue() == ""


# ----------------------------------------------------------------------------- end to end
def test_image_ls_formats(ctr):
    r = ctr("image", "ls", "--format", "json", check=True)
    items = json.loads(r.out)
    host = items[0]
    assert host["Names"] == ["host"] and host["Builtin"] is True and isinstance(host["Size"], int)
    assert host["Id"].startswith("sha256:") and isinstance(host["Layers"], list)
    assert yaml.safe_load(ctr.ok("image", "ls", "--format", "yaml")) == items
    assert ctr.ok("image", "ls", "--format", "{{.Repository}} {{.ID}}") == f"host {host['Id'][7:19]}\n"
    assert ctr.ok("image", "ls", "--no-trunc", "--format", "{{.ID}}") == host["Id"] + "\n"
    assert ctr.ok("image", "ls", "--format", "table {{.Repository}}\\t{{.ID}}").splitlines()[0] == \
        "REPOSITORY   IMAGE ID"
    assert ctr.ok("image", "ls", "-q") == host["Id"][7:19] + "\n"
    assert ctr.ok("image", "ls", "-q", "--no-trunc") == host["Id"] + "\n"
    assert json.loads(ctr.ok("image", "inspect", "--format", "{{json .RepoTags}}", "host")) == ["host"]


@pytest.mark.parametrize("args", [("ps", "--format", "{{range .}}"),
                                  ("ps", "--format", "tabel"), ("image", "ls", "--format", "{{.Nope}}"),
                                  ("inspect", "--format", "{{.X", "x")])
def test_bad_formats_exit_2_with_one_error_line(ctr, args):
    r = ctr(*args)
    assert r.code == 2, r
    assert r.out == ""
    lines = r.err.splitlines()
    assert lines[0].startswith("Error: ") and all(line.startswith(("Error: ", "Hint: ")) for line in lines)
    assert len([line for line in lines if line.startswith("Error: ")]) == 1


def test_unknown_field_on_an_empty_listing_prints_nothing(ctr):
    # as docker: fields are looked up per item, so an empty listing has nothing to complain about
    assert ctr("ps", "--format", "{{.Nope}}", check=True).out == ""


@needs_root
def test_ps_formats_end_to_end(ctr):
    ctr.ok("run", "--name", "fmt_ok", "host", "sh", "-c", "exit 0")
    ctr("run", "--name", "fmt_fail", "host", "sh", "-c", "exit 7", check=7)
    items = json.loads(ctr.ok("ps", "-a", "--format", "json"))
    by = {it["Names"][0]: it for it in items}
    fail = by["fmt_fail"]
    assert fail["ExitCode"] == 7 and type(fail["ExitCode"]) is int and type(fail["Pid"]) is int
    assert fail["Command"] == ["sh", "-c", "exit 7"] and isinstance(fail["Names"], list)
    for key in ("Created", "StartedAt", "ExitedAt"):
        assert ISO.match(fail[key]), (key, fail[key])
    for text in (json.dumps(items), ctr.ok("ps", "-a", "--format", "yaml")):
        assert not RELATIVE.search(text), "relative times belong in tables only"
    assert yaml.safe_load(ctr.ok("ps", "-a", "--format", "yaml")) == items

    lines = ctr.ok("ps", "-a", "--format", "{{.ID}} {{.Status}}").splitlines()
    short = {it["Id"][:12] for it in items}
    assert {line.split(" ", 1)[0] for line in lines} == short
    assert any(re.fullmatch(r"[0-9a-f]{12} Exited \(7\) .* ago", line) for line in lines)
    assert set(ctr.ok("ps", "-a", "--format", "{{.Names}}").split()) == {"fmt_ok", "fmt_fail"}
    table = ctr.ok("ps", "-a", "--format", "table {{.ID}}\\t{{.Names}}\\t{{.RunningFor}}").splitlines()
    assert re.fullmatch(r"CONTAINER ID\s{3,}NAMES\s{3,}CREATED", table[0])
    assert len(table) == 3
    assert json.loads(ctr.ok("ps", "-a", "--latest", "--format", "{{json .}}"))["Names"] == ["fmt_fail"]
    assert ctr.ok("ps", "-a", "--no-trunc", "--format", "{{.ID}}").split() == [it["Id"] for it in items]
    assert ctr.ok("ps", "-aq").split() == [it["Id"][:12] for it in items]
    assert ctr.ok("ps", "-aq", "--no-trunc").split() == [it["Id"] for it in items]
    default = ctr.ok("ps", "-a").splitlines()
    assert default[0].split()[:3] == ["CONTAINER", "ID", "IMAGE"] and " ago" in default[1]
    assert ctr.ok("inspect", "--format", "{{.Name}} {{.State.ExitCode}}", "fmt_fail") == "fmt_fail 7\n"
    r = ctr("ps", "-a", "--format", "{{.Nope}}")
    assert r.code == 2 and r.out == "" and r.err.startswith("Error: template: no field 'Nope'\nHint: fields: ")
