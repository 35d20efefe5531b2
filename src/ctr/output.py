"""The only place that formats for people (tables, relative times, colour) or for machines
(`--format json|yaml|{{.Field}}`). rich is imported only when a terminal needs colour."""

from __future__ import annotations

import json
import os
import re
import sys
import time

from ctr.models import parse_iso

TYPE_CHECKING = False
if TYPE_CHECKING:
    from datetime import datetime
    from typing import Any, ContextManager, Iterable, Iterator, Sequence, TextIO


def use_color(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    if os.environ.get("NO_COLOR") is not None or os.environ.get("CTR_NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """`text` with control characters escaped (`\\n`, `\\x1b`): a message that quotes
    untrusted data (an archive's member names, a link target) stays one line and cannot
    drive the terminal."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def error(message: str, hint: str | None = None) -> None:
    message, hint = one_line(message), (one_line(hint) if hint else hint)
    if use_color(sys.stderr):
        sys.stderr.write(f"\x1b[31mError:\x1b[0m {message}\n")
        if hint:
            sys.stderr.write(f"\x1b[2mHint: {hint}\x1b[0m\n")
    else:
        sys.stderr.write(f"Error: {message}\n")
        if hint:
            sys.stderr.write(f"Hint: {hint}\n")


def warn(message: str) -> None:
    message = one_line(message)
    if use_color(sys.stderr):
        sys.stderr.write(f"\x1b[33mWarning:\x1b[0m {message}\n")
    else:
        sys.stderr.write(f"Warning: {message}\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO | None = None) -> None:
    """Columns separated by at least three spaces, like docker's tabwriter."""
    out = out or sys.stdout
    rows = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, v in enumerate(r):
            widths[i] = max(widths[i], len(v))
    lines = []
    for r in [list(headers), *rows]:
        cells = [v.ljust(widths[i]) if i < len(r) - 1 else v for i, v in enumerate(r)]
        lines.append("   ".join(cells).rstrip())
    out.write("\n".join(lines) + "\n")


def as_json(data: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(data, indent=4, sort_keys=True) + "\n")


def as_yaml(data: Any, out: TextIO | None = None) -> None:
    import yaml

    (out or sys.stdout).write(yaml.safe_dump(data, sort_keys=True, default_flow_style=False))


# ----------------------------------------------------------------------------- templates
class View:
    """One record as `--format` templates see it: docker's human fields (`ID` as 12 characters,
    `Names` joined, `Status` as "Up 3 seconds", …) over the raw record that json/yaml print
    unchanged. `{{json .}}` prints the raw record. `headers` names the columns of a `table`."""

    def __init__(self, raw: dict[str, Any], human: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None):
        self.raw = raw
        self.human = human or {}
        self.headers = headers or {}

    def fields(self) -> list[str]:
        return sorted(set(self.human) | set(self.raw))

    def get(self, name: str) -> Any:
        for d in (self.human, self.raw):
            if name in d:
                return d[name]
        low = name.lower()
        for d in (self.human, self.raw):
            for k, v in d.items():
                if k.lower() == low:
                    return v
        raise _template_error(f"template: no field {name!r}", "fields: " + ", ".join(self.fields()))


def _template_error(message: str, hint: str | None = None):
    from ctr.errors import InvalidArgument

    return InvalidArgument(message, hint=hint)


_TEMPLATE_HINT = ("use {{.Field}}, {{.Field.Sub}}, {{json .}}, {{json .Field}}, {{join .Field \", \"}}, "
                  "{{upper .Field}}, {{lower .Field}}, {{title .Field}}, {{truncate .Field N}}; "
                  "'table ' in front adds a header row; \\t and \\n are tab and newline")
_ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[^\s"]+')
_PATH = re.compile(r"^(\.|(\.[A-Za-z_]\w*)+)$")
_FUNCS = {"json": 1, "join": 2, "upper": 1, "lower": 1, "title": 1, "truncate": 2}


class _Action:
    """`{{ … }}`: a value (`.A.B` or a "string"), optionally passed to one function."""

    def __init__(self, src: str):
        self.src = src
        text = src.strip()
        tokens = _TOKEN.findall(text)
        if _TOKEN.sub("", text).strip() or not tokens:
            raise _template_error(f"unsupported template action {{{{{src}}}}}", _TEMPLATE_HINT)
        self.func: str | None = None
        if tokens[0] in _FUNCS:
            self.func, tokens = tokens[0], tokens[1:]
            if len(tokens) != _FUNCS[self.func]:
                raise _template_error(f"template: {self.func} takes {_FUNCS[self.func]} argument"
                                      f"{'s' if _FUNCS[self.func] > 1 else ''}: {{{{{src}}}}}", _TEMPLATE_HINT)
        elif len(tokens) != 1:
            raise _template_error(f"unsupported template action {{{{{src}}}}}", _TEMPLATE_HINT)
        self.args: list[Any] = [self._arg(t) for t in tokens]
        if self.func in ("join",) and not isinstance(self.args[1], str):
            raise _template_error(f"template: join needs a quoted separator: {{{{{src}}}}}", _TEMPLATE_HINT)
        if self.func == "truncate" and not isinstance(self.args[1], int):
            raise _template_error(f"template: truncate needs a length: {{{{{src}}}}}", _TEMPLATE_HINT)

    def _arg(self, token: str) -> Any:
        if token.startswith('"'):
            try:
                return json.loads(token, strict=False)
            except ValueError:
                raise _template_error(f"template: bad string {token}", _TEMPLATE_HINT) from None
        if token.isdigit():
            return int(token)
        if _PATH.match(token):
            return tuple(p for p in token.split(".") if p)  # () is `.` itself
        raise _template_error(f"unsupported template action {{{{{self.src}}}}}", _TEMPLATE_HINT)

    @property
    def path(self) -> tuple[str, ...] | None:
        return next((a for a in self.args if isinstance(a, tuple)), None)

    def header(self, view_headers: dict[str, str]) -> str:
        path = self.path
        if path is None:
            return str(self.args[0]) if self.args and isinstance(self.args[0], str) else ""
        if not path:
            return ""
        return view_headers.get(path[0], path[0].upper()) if len(path) == 1 else ".".join(path).upper()

    def render(self, item: Any) -> str:
        vals = [_lookup(item, a) if isinstance(a, tuple) else a for a in self.args]
        if self.func == "json":
            v = vals[0].raw if isinstance(vals[0], View) else vals[0]
            return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
        if self.func == "join":
            return vals[1].join(_text(x) for x in vals[0]) if isinstance(vals[0], list) else _text(vals[0])
        text = _text(vals[0])
        if self.func == "upper":
            return text.upper()
        if self.func == "lower":
            return text.lower()
        if self.func == "title":
            return text.title()
        if self.func == "truncate":
            return text[: vals[1]]
        return text


def _lookup(item: Any, path: tuple[str, ...]) -> Any:
    cur = item
    for part in path:
        if isinstance(cur, View):
            cur = cur.get(part)
        elif isinstance(cur, dict):
            if part in cur:
                cur = cur[part]
            else:
                low = {k.lower(): v for k, v in cur.items()}
                if part.lower() not in low:
                    raise _template_error(f"template: no field {part!r}", "fields: " + ", ".join(sorted(cur)))
                cur = low[part.lower()]
        else:
            kind = "a list" if isinstance(cur, list) else "nothing" if cur is None else f"a {type(cur).__name__}"
            raise _template_error(f"template: cannot take field {part!r} of {kind}", _TEMPLATE_HINT)
    return cur


def _text(v: Any) -> str:
    """Go's fmt for the kinds records hold: true/false, [a b], {a b} (a struct), <no value> as empty."""
    if isinstance(v, View):
        v = v.raw
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, list):
        return "[" + " ".join(_text(x) for x in v) + "]"
    if isinstance(v, dict):  # Go's struct form, as docker prints {{.State}}: the values in order
        return "{" + " ".join(_text(x) for x in v.values()) + "}"
    return str(v)


class Template:
    """docker's `--format` subset, parsed once (syntax errors exit 2 even for an empty list)."""

    def __init__(self, fmt: str):
        self.table = fmt == "table" or fmt.startswith("table ")
        body = fmt[6:].strip(" ") if self.table else fmt  # docker trims the spaces after `table`
        body = body.replace("\\t", "\t").replace("\\n", "\n")
        self.parts: list[str | _Action] = []
        pos = 0
        for m in _ACTION.finditer(body):
            self._text(body[pos:m.start()])
            self.parts.append(_Action(m.group(1)))
            pos = m.end()
        self._text(body[pos:])

    def _text(self, text: str) -> None:
        if "{{" in text or "}}" in text:
            raise _template_error(f"unsupported template: unbalanced braces in {text!r}", _TEMPLATE_HINT)
        if text:
            self.parts.append(text)

    def header(self, headers: dict[str, str]) -> str:
        return "".join(p if isinstance(p, str) else p.header(headers) for p in self.parts)

    def render(self, item: Any) -> str:
        return "".join(p if isinstance(p, str) else p.render(item) for p in self.parts)


def template(fmt: str, items: Sequence[Any], out: TextIO | None = None,
             headers: dict[str, str] | None = None) -> None:
    """Render each item (a View or a dict) through a docker-style template. With a leading
    `table `, a header row comes first and tab-separated cells are aligned like a table."""
    out = out or sys.stdout
    t = Template(fmt)
    lines = [t.render(i) for i in items]
    if t.table:
        if headers is None:
            headers = next((i.headers for i in items if isinstance(i, View)), {})
        lines.insert(0, t.header(headers))
        if any("\t" in line for line in lines):
            cells = [line.split("\t") for line in lines]
            width = max(len(c) for c in cells)
            cells = [c + [""] * (width - len(c)) for c in cells]
            table(cells[0], cells[1:], out=out)
            return
    if lines:
        out.write("\n".join(lines) + "\n")


def is_template(fmt: str) -> bool:
    return "{{" in fmt or fmt.startswith("table ")


def emit(fmt: str, items: list[dict[str, Any]], headers: Sequence[str], rows: list[Sequence[Any]],
         single: bool = False, views: Sequence[Any] | None = None,
         view_headers: dict[str, str] | None = None) -> None:
    """Print a listing in the requested format: `table` (headers + rows, human), `json`/`yaml`
    (the raw items), or a template over `views` (default: the raw items)."""
    if fmt == "table":
        table(headers, rows)
    elif fmt == "json":
        as_json(items[0] if single and items else items)
    elif fmt == "yaml":
        as_yaml(items[0] if single and items else items)
    else:
        template(fmt, list(views) if views is not None else items, headers=view_headers)


# ----------------------------------------------------------------------------- progress
class _NoProgress:
    """What `progress()` yields when nothing may be drawn: every call does nothing."""

    def advance(self, n: float = 1) -> None:
        pass

    def update(self, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        pass


class _RichProgress(_NoProgress):
    def __init__(self, bar: Any, task: Any):
        self._bar, self._task = bar, task

    def advance(self, n: float = 1) -> None:
        self._bar.advance(self._task, n)

    def update(self, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        kw: dict[str, Any] = {}
        if completed is not None:
            kw["completed"] = completed
        if total is not None:
            kw["total"] = total
        if description is not None:
            kw["description"] = description
        self._bar.update(self._task, **kw)


def progress_enabled(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    if os.environ.get("CTR_NO_PROGRESS") or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def progress(total: float | None, description: str, *, unit: str = "", quiet: bool = False,
             stream: TextIO | None = None) -> ContextManager[_NoProgress]:
    """A progress bar on stderr for long work (import, export, commit, VM disk creation):

        with output.progress(total_bytes, "Importing layer") as p:
            for chunk in ...:
                p.advance(len(chunk))

    `total=None` draws a spinner; `unit="bytes"` shows sizes, else "done/total". When stderr is not a terminal, or `quiet`, or
    `CTR_NO_PROGRESS` is set, nothing is drawn and rich is not even imported. The bar is
    removed when the work ends, so only the command's own output stays on the screen."""
    from contextlib import contextmanager  # (here: `ps`, `run` and `rm` draw no progress)

    return contextmanager(_progress)(total, description, unit, quiet, stream or sys.stderr)


def _progress(total: float | None, description: str, unit: str, quiet: bool,
              stream: TextIO) -> Iterator[_NoProgress]:
    if quiet or not progress_enabled(stream):
        yield _NoProgress()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                               TextColumn, TimeRemainingColumn)

    console = Console(file=stream, no_color=not use_color(stream), highlight=False)
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if total is not None:
        columns += [DownloadColumn() if unit == "bytes" else MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield _RichProgress(bar, task)


# ----------------------------------------------------------------------------- human times
# `ps` shows a time or two of every container: the records' own form (models.now_iso) is
# read here without importing datetime (~1 ms); any other ISO-8601 form goes through it.
def epoch(iso: str | None) -> float | None:
    """Seconds since the epoch of an ISO-8601 time (None for no time)."""
    if not iso:
        return None
    if len(iso) in (20, 27) and iso[-1] == "Z" and iso[4] == "-" and iso[10] == "T" and iso[19] in ".Z":
        try:
            y, mo, d = int(iso[:4]), int(iso[5:7]), int(iso[8:10])
            secs = int(iso[11:13]) * 3600 + int(iso[14:16]) * 60 + int(iso[17:19])
            frac = int(iso[20:26]) / 1e6 if len(iso) == 27 else 0.0
        except ValueError:
            pass
        else:
            if 1 <= mo <= 12 and 1 <= d <= 31 and secs < 86400:
                return _days_from_civil(y, mo, d) * 86400 + secs + frac
    t = parse_iso(iso)
    return t.timestamp() if t else None


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def ago(iso: str | None, now: datetime | None = None) -> str:
    t = epoch(iso)
    if t is None:
        return ""
    return human_duration((now.timestamp() if now else time.time()) - t) + " ago"


def docker_time(iso: str | None) -> str:
    """docker's CreatedAt form: '2024-05-01 10:00:00 +0000 UTC' (empty for no time)."""
    t = epoch(iso)
    if t is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(int(t // 1)))


def human_duration(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 1:
        return "Less than a second"
    if s < 60:
        return f"{s} second{'s' if s != 1 else ''}"
    m = s // 60
    if m < 60:
        return f"{m} minute{'s' if m != 1 else ''}"
    h = m // 60
    if h < 48:
        return f"{h} hour{'s' if h != 1 else ''}"
    d = h // 24
    if d < 14:
        return f"{d} days"
    if d < 60:
        return f"{d // 7} weeks"
    if d < 730:
        return f"{d // 30} months"
    return f"{d // 365} years"


def human_size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{n}B"
        n /= 1000  # type: ignore[assignment]
    return f"{n}B"


def binary_size(n: float) -> str:
    """docker's memory sizes (go-units BytesSize): 1024-based, four significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}"
        n /= 1024
    return f"{n}B"


def status_text(state: str, exit_code: int | None, started: str | None, finished: str | None,
                relative: bool = True, paused: bool = False) -> str:
    """docker's STATUS column: 'Up 3 seconds', 'Exited (0) 2 minutes ago', 'Created'. With
    relative=False (json/yaml: relative times are for tables only) the times are absolute:
    'Up since 2024-05-01T10:00:00Z', 'Exited (0) at 2024-05-01T10:00:03Z'."""
    if state == "running":
        if not relative:
            up = f"Up since {started}" if started else "Up"
        else:
            t = epoch(started)
            up = "Up " + human_duration(time.time() - t if t is not None else 0)
        return up + " (Paused)" if paused else up
    if state == "exited":
        code = "?" if exit_code is None else exit_code
        when = ago(finished) if relative else (f"at {finished}" if finished else "")
        return f"Exited ({code}) {when}".rstrip()
    if state == "removing":
        return "Removal In Progress"
    return state.capitalize()
