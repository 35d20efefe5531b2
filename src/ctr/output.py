"""The only place that formats for people (tables, relative times, colour) or for machines
(`--format json|yaml|{{.Field}}`). rich is imported only when a terminal needs colour."""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone
from typing import Any, Iterable, Sequence, TextIO

from ctr.models import parse_iso


def use_color(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    if os.environ.get("NO_COLOR") is not None or os.environ.get("CTR_NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def error(message: str, hint: str | None = None) -> None:
    if use_color(sys.stderr):
        sys.stderr.write(f"\x1b[31mError:\x1b[0m {message}\n")
        if hint:
            sys.stderr.write(f"\x1b[2mHint: {hint}\x1b[0m\n")
    else:
        sys.stderr.write(f"Error: {message}\n")
        if hint:
            sys.stderr.write(f"Hint: {hint}\n")


def warn(message: str) -> None:
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


_FIELD = re.compile(r"\{\{\s*(json\s+)?\.([A-Za-z_][\w.]*)?\s*\}\}")


def template(fmt: str, items: list[dict[str, Any]], out: TextIO | None = None) -> None:
    """docker's `--format` subset: `{{.Field}}`, `{{.A.B}}`, `{{json .Field}}`, `{{json .}}`,
    a leading `table ` for a header row; `\\t` and `\\n` escapes."""
    out = out or sys.stdout
    fmt = fmt.replace("\\t", "\t").replace("\\n", "\n")
    header = fmt.startswith("table ")
    if header:
        fmt = fmt[6:]
    check = _FIELD.sub("", fmt)
    if "{{" in check or "}}" in check:
        from ctr.errors import InvalidArgument

        raise InvalidArgument(f"unsupported template {fmt!r}",
                              hint="use {{.Field}}, {{.Field.Sub}} or {{json .Field}}")

    def lookup(item: Any, path: str | None) -> Any:
        if not path:
            return item
        cur = item
        for part in path.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            elif isinstance(cur, dict):
                low = {k.lower(): v for k, v in cur.items()}
                if part.lower() not in low:
                    from ctr.errors import InvalidArgument

                    raise InvalidArgument(f"template: no field {part!r}",
                                          hint="fields: " + ", ".join(sorted(cur)))
                cur = low[part.lower()]
            else:
                return ""
        return cur

    def render(item: dict[str, Any]) -> str:
        def sub(m: re.Match) -> str:
            v = lookup(item, m.group(2))
            if m.group(1):
                return json.dumps(v)
            if isinstance(v, list):
                return "[" + " ".join(map(str, v)) + "]"
            if isinstance(v, bool):
                return "true" if v else "false"
            return "" if v is None else str(v)

        return _FIELD.sub(sub, fmt)

    lines = []
    if header:
        lines.append(_FIELD.sub(lambda m: (m.group(2) or "").upper(), fmt))
    lines += [render(i) for i in items]
    if lines:
        out.write("\n".join(lines) + "\n")


def emit(fmt: str, items: list[dict[str, Any]], headers: Sequence[str], rows: list[Sequence[Any]],
         single: bool = False) -> None:
    """Print a listing in the requested format."""
    if fmt == "table":
        table(headers, rows)
    elif fmt == "json":
        as_json(items[0] if single and items else items)
    elif fmt == "yaml":
        as_yaml(items[0] if single and items else items)
    else:
        template(fmt, items)


# ----------------------------------------------------------------------------- human times
def ago(iso: str | None, now: datetime | None = None) -> str:
    t = parse_iso(iso)
    if t is None:
        return ""
    now = now or datetime.now(timezone.utc)
    return human_duration((now - t).total_seconds()) + " ago"


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


def status_text(state: str, exit_code: int | None, started: str | None, finished: str | None) -> str:
    """docker's STATUS column: 'Up 3 seconds', 'Exited (0) 2 minutes ago', 'Created'."""
    if state == "running":
        t = parse_iso(started)
        secs = (datetime.now(timezone.utc) - t).total_seconds() if t else 0
        return "Up " + human_duration(secs)
    if state == "exited":
        code = "?" if exit_code is None else exit_code
        return f"Exited ({code}) {ago(finished)}".rstrip()
    if state == "removing":
        return "Removal In Progress"
    return state.capitalize()
