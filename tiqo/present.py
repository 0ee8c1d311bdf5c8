"""Plain-text renderings of the API's rows (money, times, sizes, budget limits, key states), shared by the CLI and
the dashboard: pure functions of core types, no rich and no textual, so both may import them."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from tiqo.core.durations import format_duration, format_size

PERIOD_WORD = {"day": "daily", "month": "monthly"}


def usd(value: float | int | None) -> str:
    """$5.00, $0.0123, $0.000042; $0 for nothing."""
    if value is None:
        return "-"
    v = float(value)
    if v == 0:
        return "$0"
    digits = 2 if abs(v) >= 1 else 4 if abs(v) >= 0.01 else 6
    text = f"{abs(v):,.{digits}f}"
    if digits > 2:
        whole, _, frac = text.partition(".")
        text = f"{whole}.{frac.rstrip('0').ljust(2, '0')}"
    if text.strip("0.,") == "":
        return "<$0.000001" if v > 0 else "-<$0.000001"
    return ("-" if v < 0 else "") + "$" + text


def clock(ts: float | None, now: float | None = None) -> str:
    """A local wall-clock time: HH:MM:SS today, else with the date."""
    if ts is None:
        return "-"
    moment = dt.datetime.fromtimestamp(ts)
    today = dt.datetime.fromtimestamp(time.time() if now is None else now).date()
    return moment.strftime("%H:%M:%S") if moment.date() == today else moment.strftime("%Y-%m-%d %H:%M")


def latency(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def fmt_duration(seconds: float | None) -> str:
    return "never" if seconds is None else format_duration(seconds)


def fmt_size(num: float) -> str:
    return format_size(num)


def limit_label(row: dict[str, Any]) -> str:
    """global daily, user alice monthly, user bob daily (each user), each provider daily (none yet)."""
    period = PERIOD_WORD.get(str(row.get("period")), str(row.get("period")))
    scope, name, counter = str(row["scope"]), str(row.get("name") or ""), str(row.get("counter") or "")
    if scope == "global":
        return f"global {period}"
    if name == "*":
        subject = counter.partition(":")[2]
        if subject in ("", "*"):
            return f"each {scope} {period}"
        return f"{scope} {subject} {period} (each {scope})"
    return f"{scope} {name} {period}"


def key_status(row: dict[str, Any], now: float | None = None) -> str:
    """Plain text: healthy, cooling down until 14:05:09, exhausted until 00:00 UTC, disabled: why, circuit open."""
    status, reason, until = row["status"], row.get("reason") or "", row.get("until")
    if status == "healthy":
        return "healthy"
    if status == "disabled":
        return reason if reason.startswith("disabled") else f"disabled: {reason or 'by user'}"
    if status == "exhausted":
        if until is None or abs(float(until) - float(row.get("next_reset") or 0)) < 1:
            return f"exhausted until {row['reset']} {row['tz']}"
        return f"exhausted until {clock(float(until), now)}"
    if status == "cooling":
        text = "cooling down" + (f" until {clock(float(until), now)}" if until else "")
        why = reason
        if reason.startswith("cooling down"):  # "cooling down (429 from upstream)"
            why = reason.removeprefix("cooling down").strip().removeprefix("(").removesuffix(")")
        return text + (f" ({why})" if why else "")
    if status == "circuit-open":
        return "circuit open" + (f" until {clock(float(until), now)}" if until else "")
    return f"{status}: {reason}" if reason else str(status)


JOB_COLUMNS = ("ID", "KIND", "STATUS", "PROGRESS", "STAGE", "ETA", "CREATED")


def job_row(job: dict[str, Any], now: float | None = None) -> list[str]:
    """A job (``GET /tiqo/jobs``) or a ``job`` event's data as table cells, under ``JOB_COLUMNS``."""
    total, step = int(job.get("total") or 0), int(job.get("step") or 0)
    progress = f"{int(job.get('progress') or 0)}%" + (f" {step}/{total}" if total else "")
    eta = job.get("eta_s")
    status = str(job.get("status") or "-")
    error = job.get("error")
    if status == "failed" and isinstance(error, dict) and error.get("code"):
        status = f"failed ({error['code']})"
    return [
        str(job.get("id") or "-"),
        str(job.get("kind") or "-"),
        status,
        progress,
        str(job.get("stage") or "-"),
        format_duration(float(eta)) if eta is not None else "-",
        clock(job.get("created_at"), now),
    ]
