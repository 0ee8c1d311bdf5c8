"""How a setting's value is read: the parsers of the settings table and the ``Setting`` record itself."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tiqo.core.durations import parse_duration, parse_size


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {value!r} (use true or false)")


def integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def positive_int(value: Any) -> int:
    number = integer(value)
    if number <= 0:
        raise ValueError(f"{value!r} is not a positive whole number")
    return number


def non_negative_int(value: Any) -> int:
    number = integer(value)
    if number < 0:
        raise ValueError(f"{value!r} is not a whole number of 0 or more")
    return number


def auto_int(value: Any) -> int | None:
    """``auto`` (None: decided at run time) or an integer."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    return integer(value)


def auto_size(value: Any) -> int | None:
    if value is None or str(value).strip().lower() == "auto":
        return None
    return parse_size(value)


def text(value: Any) -> str:
    return str(value)


def similarity(value: Any) -> float:
    number = float(value)
    if not 0.0 < number <= 1.0:
        raise ValueError(f"{value!r} is not a cosine similarity in (0, 1]")
    return number


def max_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds == 0:
        raise ValueError("a limit of 0 would refuse all audio (use e.g. 2h, or -1 for no limit)")
    return seconds


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a duration above 0 (e.g. 60s)")
    return seconds


def choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return text

    return parse


def timezone(value: Any) -> str:
    """An IANA time zone name; ``local`` resolves to this machine's (TZ, /etc/localtime), else UTC."""
    from zoneinfo import ZoneInfo

    text = str(value).strip()
    if text.lower() == "local":
        text = _local_timezone()
    try:
        ZoneInfo(text)
    except Exception:
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as UTC or Europe/Paris)") from None
    return text


def _local_timezone() -> str:
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    return "UTC"


def percentages(value: Any) -> tuple[int, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = sorted({int(str(v).strip().rstrip("%")) for v in items if str(v).strip()})
    if any(not 0 < v < 100 for v in out):
        raise ValueError(f"thresholds must be percentages between 1 and 99, not {value!r}")
    return tuple(out)


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str
    kind: str
    env_var: str = ""  # when the default name (TIQO_ + last part) would be ambiguous
    secret: bool = False  # may hold a password or token: `tiqo config show` redacts it, the systemd unit omits it

    @property
    def env(self) -> str:
        if self.env_var:
            return self.env_var
        return "TIQO_" + self.key.split(".", 1)[1].upper() if self.key.count(".") else "TIQO_" + self.key.upper()
