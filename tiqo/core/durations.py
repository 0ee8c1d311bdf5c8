"""Durations as users write them: ``5m``, ``90s``, ``1h30m``, ``0``, ``-1`` (Ollama's keep-alive syntax)."""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds for ``value``. Negative means "forever" and is returned as ``math.inf``.

    A bare number is seconds. Raises ``ValueError`` with the accepted syntax on bad input.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        if not text:
            raise ValueError("empty duration")
        negative = text.startswith("-")
        body = text.lstrip("+-")
        try:
            seconds = float(body)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(body):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT[match.group(2)]
                pos = match.end()
            if pos != len(body) or pos == 0:
                raise ValueError(
                    f"not a duration: {value!r} (use e.g. 30s, 5m, 1h30m, 0 to unload at once, -1 for never)"
                ) from None
        if negative:
            seconds = -seconds
    if seconds < 0:
        return math.inf
    return seconds


def format_duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "forever"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s" if sec else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def parse_size(value: str | int) -> int:
    """Bytes for ``8GiB``, ``512MB``, ``1.5G`` or a bare integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 512MiB, 8GiB or a number of bytes)")
    number, prefix, suffix = match.groups()
    base = 1024 if suffix.lower().startswith("i") or not suffix else 1000
    power = " kmgt".index(prefix.lower() or " ")
    return int(float(number) * base**power)


def format_size(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num) < 1024:
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TiB"
