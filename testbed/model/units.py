"""Units: the one place that turns "100ms", "10mbit", "0.5%", "64kb", "1000p" into numbers.

Conventions (chosen to match tc(8), so a number a user copies from tc means the same here):

- durations -> milliseconds (float). Units: ``us``/``usec``/``µs``, ``ms``/``msec``,
  ``s``/``sec``. A bare number is **milliseconds** (the canonical unit of our
  profiles; tc would read it as microseconds, so write the unit when in doubt).
- rates -> bits per second (int). ``bit``/``kbit``/``mbit``/``gbit``/``tbit`` are bits per
  second (SI, powers of 1000); ``bps``/``kbps``/``mbps``/``gbps``/``tbps`` are **bytes** per
  second (tc's convention, so "100mbps" is 800 Mbit/s); ``kibit``/``mibit``/``gibit`` and
  ``kibps``/``mibps``/``gibps`` are powers of 1024. A bare number is bits per second.
- percentages -> percent (float, 0..100 is checked by the caller). ``"0.5%"`` and a bare
  ``0.5`` both mean half a percent (tc's convention): a bare number is never a fraction.
- sizes -> bytes (int). ``b``, ``k``/``kb``/``kib`` = 1024, ``m``/``mb``/``mib`` = 1024²,
  ``g``/``gb``/``gib`` = 1024³ (tc's convention for sizes). A bare number is bytes.
- packet counts -> int. ``1000p``, ``1000pkt``, ``1000packets`` or a bare ``1000``.

Every parser raises `InputError` naming the value, the field (if given) and what was
expected. Each ``format_*`` writes a string its parser reads back to the same number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from testbed.errors import InputError

__all__ = [
    "parse_duration_ms",
    "parse_rate_bit",
    "parse_percent",
    "parse_size_bytes",
    "parse_packets",
    "format_duration",
    "format_rate",
    "format_percent",
    "format_size",
    "format_packets",
]

_NUMBER = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Zµ%]*)\s*$")

_DURATION_MS = {
    "us": 1e-3, "usec": 1e-3, "usecs": 1e-3, "µs": 1e-3,
    "ms": 1.0, "msec": 1.0, "msecs": 1.0,
    "s": 1000.0, "sec": 1000.0, "secs": 1000.0,
}  # fmt: skip

_RATE_BIT = {
    "bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
    "kibit": 2**10, "mibit": 2**20, "gibit": 2**30, "tibit": 2**40,
    "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9, "tbps": 8 * 10**12,
    "kibps": 8 * 2**10, "mibps": 8 * 2**20, "gibps": 8 * 2**30, "tibps": 8 * 2**40,
}  # fmt: skip

_SIZE_BYTES = {
    "b": 1,
    "k": 2**10, "kb": 2**10, "kib": 2**10,
    "m": 2**20, "mb": 2**20, "mib": 2**20,
    "g": 2**30, "gb": 2**30, "gib": 2**30,
}  # fmt: skip

_PACKETS = {"p": 1, "pkt": 1, "pkts": 1, "packet": 1, "packets": 1}


def _split(
    value: object, what: str, units: Mapping[str, float], field: str | None, example: str
) -> tuple[float, str | None]:
    """Split a value into (number, unit or None); reject anything else clearly."""
    expected = f"{what} such as {example!r} (units: {', '.join(sorted(units))})"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError(f"expected {expected}, found {value!r}", field=field)
    if isinstance(value, int | float):
        number, unit = float(value), None
    else:
        m = _NUMBER.match(value)
        if not m:
            raise InputError(f"expected {expected}, found {value!r}", field=field)
        number, unit = float(m.group(1)), (m.group(2).lower() or None)
        if unit is not None and unit not in units:
            raise InputError(
                f"unknown unit {m.group(2)!r} in {value!r}; expected {expected}", field=field
            )
    if not math.isfinite(number):
        raise InputError(
            f"{what.capitalize()} must be a finite number, found {value!r}", field=field
        )
    if number < 0:
        raise InputError(f"{what.capitalize()} must not be negative, found {value!r}", field=field)
    return number, unit


def parse_duration_ms(value: object, *, field: str | None = None) -> float:
    """A duration in milliseconds. Bare numbers are milliseconds."""
    number, unit = _split(value, "a duration", _DURATION_MS, field, "100ms")
    return number * _DURATION_MS[unit or "ms"]


def parse_rate_bit(value: object, *, field: str | None = None) -> int:
    """A rate in bits per second (tc: bit = bits/s, bps = BYTES/s). Bare numbers are bit/s."""
    number, unit = _split(value, "a rate", _RATE_BIT, field, "10mbit")
    bits = number * _RATE_BIT[unit or "bit"]
    if bits != round(bits) and abs(bits - round(bits)) > 1e-6 * max(bits, 1):
        raise InputError(f"rate {value!r} is not a whole number of bit/s", field=field)
    return int(round(bits))


def parse_percent(value: object, *, field: str | None = None) -> float:
    """A percentage in percent: "0.5%" and 0.5 are both half a percent."""
    number, _unit = _split(value, "a percentage", {"%": 1}, field, "0.5%")
    return number


def parse_size_bytes(value: object, *, field: str | None = None) -> int:
    """A size in bytes (k = 1024, as tc). Bare numbers are bytes."""
    number, unit = _split(value, "a size", _SIZE_BYTES, field, "64kb")
    size = number * _SIZE_BYTES[unit or "b"]
    if size != int(size):
        raise InputError(f"size {value!r} is not a whole number of bytes", field=field)
    return int(size)


def parse_packets(value: object, *, field: str | None = None) -> int:
    """A packet count: "1000p" or 1000."""
    number, _unit = _split(value, "a packet count", _PACKETS, field, "1000p")
    if number != int(number):
        raise InputError(f"packet count {value!r} is not a whole number", field=field)
    return int(number)


def _num(x: float) -> str:
    """A short decimal for x: integers without ".0", others rounded to 9 places."""
    x = round(x, 9)
    return str(int(x)) if x == int(x) else repr(x)


def format_duration(ms: float) -> str:
    """100.0 -> "100ms", 1500.0 -> "1.5s", 0.25 -> "250us" (reads back to the same value)."""
    candidates = []
    if ms >= 1000:
        candidates.append(f"{_num(ms / 1000)}s")
    if ms >= 1 or ms == 0:
        candidates.append(f"{_num(ms)}ms")
    candidates.append(f"{_num(ms * 1000)}us")
    for text in candidates:
        if math.isclose(parse_duration_ms(text), ms, rel_tol=1e-12, abs_tol=1e-12):
            return text
    return f"{ms!r}ms"


def format_rate(bit: int) -> str:
    """10_000_000 -> "10mbit"; picks the largest SI unit that keeps the number exact."""
    for unit, scale in (("tbit", 10**12), ("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bit >= scale:
            if bit % scale == 0:
                return f"{bit // scale}{unit}"
            if (bit * 1000) % scale == 0:
                return f"{_num(bit / scale)}{unit}"
    return f"{bit}bit"


def format_percent(pct: float) -> str:
    return f"{_num(pct)}%"


def format_size(size: int) -> str:
    """65536 -> "64kb"; bytes when no larger unit is exact."""
    for unit, scale in (("gb", 2**30), ("mb", 2**20), ("kb", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}b"


def format_packets(count: int) -> str:
    return f"{count}p"
