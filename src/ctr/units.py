"""Sizes and times as users write them (512m, 2g, 1048576; 10m, 2024-01-02T15:04:05Z) and back."""

from __future__ import annotations

import re

from ctr.errors import InvalidArgument

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, what: str = "size") -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise InvalidArgument(f"invalid {what} {text!r}", hint="use a number with an optional unit: 512m, 2g")
    value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value <= 0:
        raise InvalidArgument(f"invalid {what} {text!r}: must be greater than zero")
    return value


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def parse_time(value: str, what: str = "time", now=None):
    """A point in time as docker's `until=`, `--since` and `--until` take it: a duration before
    now (10m, 1h30m, 24h), an RFC 3339 time or date (2024-01-02T15:04:05Z, 2024-01-02), or a
    Unix timestamp (1700000000[.5]). An aware datetime; a time without a zone is local time."""
    from datetime import datetime, timedelta, timezone

    now = now or datetime.now(timezone.utc)
    v = value.strip()
    if v and _DURATION_RE.sub("", v) == "":
        secs = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_RE.findall(v))
        return now - timedelta(seconds=secs)
    if re.fullmatch(r"\d+(?:\.\d+)?", v):
        return datetime.fromtimestamp(float(v), timezone.utc)
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"invalid {what} value {value!r}",
            hint="use a duration (10m, 24h), a time (2024-01-02T15:04:05Z), a date or a Unix timestamp",
        ) from None
    return t if t.tzinfo else t.astimezone()
