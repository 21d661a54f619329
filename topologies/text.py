"""Text for messages: values quoted at a bounded length, sizes and counts written for people, sizes read back.

Scenario, topology and profile files are untrusted input: a value quoted in
an error message is cut to ``QUOTE_CHARS`` characters (``short``), so a
crafted file cannot make a message megabytes long, and quoting costs O(1)
whatever the value's size.
"""
from __future__ import annotations

import math
import numbers
import re
import reprlib

# The largest count or size a result table holds (int64).
MAX_INT = 2**63 - 1
QUOTE_CHARS = 80


# -- quoting --------------------------------------------------------------------


class _ShortRepr(reprlib.Repr):
    """reprlib stops at a few items and levels, so quoting costs O(1) even for a huge or recursive value."""

    def __init__(self):
        super().__init__()
        self.maxlevel = 4
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = 8
        self.maxset = self.maxfrozenset = self.maxdeque = 8
        self.maxstring = self.maxother = QUOTE_CHARS
        self.maxlong = 40

    def repr_int(self, x, level):
        # str() of an int over 4300 digits raises; say how big it is instead.
        if x.bit_length() > 1000:
            return f"<an integer of about {int(x.bit_length() * math.log10(2)) + 1} digits>"
        return super().repr_int(x, level)

    def repr_bytes(self, x, level):
        text = repr(x[: self.maxstring])
        return text if len(x) <= self.maxstring else text + "..."

    def repr_dict(self, x, level):
        # reprlib sorts keys; keep the file's order, as repr does.
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                 for k, v in list(x.items())[: self.maxdict]]
        if len(x) > self.maxdict:
            items.append("...")
        return "{" + ", ".join(items) + "}"


_SHORT = _ShortRepr()


def short(value, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with '...' (cheap for any size of value)."""
    try:
        text = _SHORT.repr(value)
    except Exception:  # a value whose own __repr__ fails still gets a message
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def short_list(values, limit: int = 200) -> str:
    """``', '.join(map(repr, values))`` cut to about ``limit`` characters, saying how many were left out."""
    return _joined(values, short, limit)


def cut(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters with '...' (for messages that quote other messages)."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_name(name, limit: int = 40) -> str:
    """A name (a key, a node id) as text: unquoted when it is a short printable string, else ``short``."""
    if isinstance(name, str) and len(name) <= limit and name.isprintable():
        return name
    return short(name, limit)


def short_names(names, limit: int = 200) -> str:
    """Like ``short_list`` but strings unquoted, for lists of key names."""
    return _joined(names, short_name, limit)


def _joined(values, text_of, limit: int) -> str:
    values = list(values)
    parts: list[str] = []
    length = 0
    for i, value in enumerate(values):
        part = text_of(value)
        if parts and length + len(part) > limit:
            parts.append(f"... ({len(values) - i} more)")
            break
        parts.append(part)
        length += len(part) + 2
    return ", ".join(parts)


# -- numbers --------------------------------------------------------------------


def is_finite_number(value) -> bool:
    """A real number (not a bool) that is finite as a float; an int too large for a float is not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def format_bytes(nbytes: int) -> str:
    """``nbytes`` for a message: '1.5 GiB'; any size of int."""
    if nbytes.bit_length() > 1000:
        return f"about 10^{int(nbytes.bit_length() * math.log10(2))} B"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            break
        value /= 1024
    if unit == "B":
        return f"{int(nbytes)} B"
    return f"{value:.4g} {unit}" if value < 1e6 else f"{value:.3e} {unit}"


def format_count(n: int) -> str:
    """``n`` with thousands separators, or its order of magnitude when huge."""
    if n.bit_length() > 200:
        return f"about 10^{int(n.bit_length() * math.log10(2))}"
    return f"{n:,}"



# -- sizes written by people ------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_BYTES = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_bytes(text: str) -> int:
    """'2147483648', '2e9', '2GiB', '512 MiB', '4G' (decimal) as a number of bytes > 0; ValueError otherwise."""
    match = _BYTES.fullmatch(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"expected a number of bytes such as 4294967296, 4e9 or 4GiB, got {short(text)}")
    value = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value < 1 or value > MAX_INT:
        raise ValueError(f"a number of bytes must be in 1..2^63-1, got {short(text)}")
    return int(value)
