"""Sizes as users write them (512m, 2g, 1048576) and back."""

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
