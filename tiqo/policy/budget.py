"""Budgets: spending limits per calendar day or month, globally and per user, provider and model.

Pure and synchronous, clock injected. The daemon keeps the counters (spent and reserved, in integer nano-dollars so
sums never drift) and calls :func:`check` inside the same transaction that reserves, so the check and the
reservation are one atomic step. Thresholds (default 70/85/95 %) map to actions: ``warn`` (an alert),
``prefer-local`` (local and cheaper candidates first) and ``block-external`` (no external calls for that limit).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

PERIODS = ("day", "month")
SCOPES = ("global", "user", "provider", "model")
ACTIONS = ("warn", "prefer-local", "block-external")
NANO = 1_000_000_000  # counters are integer nano-dollars
MAX_USD = 1e12  # a larger budget is a typo (and 1e308 nano-dollars overflows to infinity)
EVERY = "*"  # a user/provider/model limit that applies to each one separately


def to_nano(usd: float) -> int:
    return round(usd * NANO)


@dataclass(frozen=True)
class Limit:
    scope: str  # global | user | provider | model
    name: str  # "" for global; a user, provider or model name; or "*" (each one separately)
    period: str  # day | month
    usd: float

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown budget scope {self.scope!r}; use one of {', '.join(SCOPES)}")
        if self.period not in PERIODS:
            raise ValueError(f"unknown budget period {self.period!r}; use day or month")
        if not 0 <= self.usd <= MAX_USD:
            raise ValueError(
                f"a budget must be an amount of USD from 0 to {MAX_USD:,.0f}, not {self.usd!r} "
                "(to remove a limit, set it to null)"
            )

    @property
    def label(self) -> str:
        who = "global" if self.scope == "global" else f"{self.scope} {self.name}"
        return f"{who} {'daily' if self.period == 'day' else 'monthly'}"

    def subject(self, user: str, provider: str, model: str) -> str | None:
        """The counter this limit charges for a call, or None when it does not apply to the call."""
        if self.scope == "global":
            return "global"
        actual = {"user": user, "provider": provider, "model": model}[self.scope]
        if self.name not in (EVERY, actual):
            return None
        return f"{self.scope}:{actual}"


@dataclass(frozen=True)
class Charge:
    """One limit as it applies to one call: the counter it charges in the current period."""

    limit: Limit
    counter: str  # "user:alice" …
    period_id: str  # "day:2026-11-23" / "month:2026-11"
    resets_at: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.counter, self.period_id)

    @property
    def label(self) -> str:
        if self.limit.name == EVERY:
            return f"{self.counter.replace(':', ' ', 1)} {'daily' if self.limit.period == 'day' else 'monthly'}"
        return self.limit.label


@dataclass(frozen=True)
class Usage:
    spent: int = 0  # nano-dollars
    reserved: int = 0


@dataclass(frozen=True)
class Refusal:
    charge: Charge
    used: int  # spent + reserved, nano-dollars
    amount: int

    @property
    def message(self) -> str:
        limit = self.charge.limit
        reset = dt.datetime.fromtimestamp(self.charge.resets_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        left = max(0, to_nano(limit.usd) - self.used) / NANO
        return (
            f"this call's worst case (${self.amount / NANO:.6f}) does not fit in the ${left:.6f} left of the "
            f"{self.charge.label} budget of ${limit.usd:g} (${self.used / NANO:.6f} spent or reserved by calls in "
            f"flight); it resets at {reset}"
        )


@dataclass(frozen=True)
class Policy:
    limits: tuple[Limit, ...] = ()
    thresholds: tuple[int, ...] = (70, 85, 95)
    actions: Mapping[int, str] | None = None  # threshold -> action; missing = warn
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)
        for t, a in (self.actions or {}).items():
            if a not in ACTIONS:
                raise ValueError(f"unknown budget action {a!r} at {t}%; use one of {', '.join(ACTIONS)}")

    def action_at(self, threshold: int) -> str:
        return (self.actions or {}).get(threshold, "warn")

    def charges(self, user: str, provider: str, model: str, now: float) -> list[Charge]:
        """Every limit that applies to an external call, with its counter and period."""
        out = []
        for limit in self.limits:
            counter = limit.subject(user, provider, model)
            if counter is not None:
                pid, resets = period_of(limit.period, now, self.timezone)
                out.append(Charge(limit, counter, pid, resets))
        return out


_PERIODS: dict[tuple[str, str], tuple[float, float, str]] = {}  # (period, tz) -> (start, end, id): the current one


def period_of(period: str, now: float, tz: str) -> tuple[str, float]:
    """The calendar day or month containing ``now`` in ``tz``: its id and when it ends."""
    hit = _PERIODS.get((period, tz))
    if hit is not None and hit[0] <= now < hit[1]:  # time-zone arithmetic is most of a budget check: reuse it
        return hit[2], hit[1]
    zone = ZoneInfo(tz)
    local = dt.datetime.fromtimestamp(now, zone)
    if period == "day":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        end = (start + dt.timedelta(days=1, hours=3)).replace(hour=0)  # +3h survives DST days of 23/25 h
        pid = f"day:{start:%Y-%m-%d}"
    else:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        pid = f"month:{start:%Y-%m}"
    bounds = (start.replace(tzinfo=zone).timestamp(), end.replace(tzinfo=zone).timestamp(), pid)
    _PERIODS[(period, tz)] = bounds
    return pid, bounds[1]


def check(charges: Sequence[Charge], usage: Mapping[tuple[str, str], Usage], amount: int) -> Refusal | None:
    """Whether a call that may cost ``amount`` fits every limit (spent + reserved + amount ≤ limit)."""
    for charge in charges:
        u = usage.get(charge.key, Usage())
        used = u.spent + u.reserved
        if used + amount > to_nano(charge.limit.usd):
            return Refusal(charge, used, amount)
    return None


def ratio(charge: Charge, usage: Usage) -> float:
    """Share of the limit spent or reserved (1.0 = all of it)."""
    cap = to_nano(charge.limit.usd)
    used = usage.spent + usage.reserved
    return used / cap if cap else 1.0  # a zero budget allows no external call at all


def crossed(thresholds: Iterable[int], before: float, after: float) -> list[int]:
    """Thresholds (percent) that ``before`` was under and ``after`` is at or over."""
    return [t for t in sorted(thresholds) if before * 100 < t <= after * 100]


def pressure(
    policy: Policy, charges: Sequence[Charge], usage: Mapping[tuple[str, str], Usage]
) -> tuple[str, str, Charge | None]:
    """The strongest action the limits of one external call are under now, why, and which limit.

    ``block-external`` at 100 % or past a block-external threshold; ``prefer-local`` past a prefer-local threshold;
    else ``""``. Usage counts what is spent and what is reserved by calls in flight.
    """
    strongest: tuple[str, str, Charge | None] = ("", "", None)
    rank = {"": 0, "warn": 0, "prefer-local": 1, "block-external": 2}
    for charge in charges:
        r = ratio(charge, usage.get(charge.key, Usage()))
        if r >= 1.0:
            return "block-external", f"the {charge.label} budget is spent", charge
        for t in sorted(policy.thresholds):
            action = policy.action_at(t)
            if r * 100 >= t and rank[action] > rank[strongest[0]]:
                strongest = (action, f"the {charge.label} budget is at {r * 100:.0f}% (≥ {t}%: {action})", charge)
    return strongest


def parse_limits(table: Mapping[str, Any]) -> tuple[Limit, ...]:
    """``[budgets]`` from config.toml::

    [budgets.global]          daily = 5.0, monthly = 100
    [budgets.users.alice]     daily = 1
    [budgets.users."*"]       daily = 0.5      # each user separately
    [budgets.providers.openai] monthly = 20
    [budgets.models.gpt-4o]   daily = 2
    """
    out: list[Limit] = []
    plural = {"users": "user", "providers": "provider", "models": "model"}

    def amounts(scope: str, name: str, entry: Any) -> None:
        if not isinstance(entry, Mapping):
            raise ValueError(f"budgets.{scope}{'.' + name if name else ''} must be a table with daily / monthly")
        for key, value in entry.items():
            period = {"daily": "day", "monthly": "month"}.get(key)
            if period is None:
                raise ValueError(f"unknown budget field {key!r}; use daily or monthly")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"budget {key} must be a number of USD, not {value!r}")
            out.append(Limit(scope, name, period, float(value)))

    for key, entry in table.items():
        if key == "global":
            amounts("global", "", entry)
        elif key in plural:
            if not isinstance(entry, Mapping):
                raise ValueError(f"budgets.{key} must be a table of names")
            for name, sub in entry.items():
                amounts(plural[key], str(name), sub)
        else:
            raise ValueError(f"unknown budget table {key!r}; use global, users, providers or models")
    return tuple(out)


def parse_actions(text: str) -> dict[int, str]:
    """``"85:prefer-local,95:block-external"`` → {85: "prefer-local", 95: "block-external"}."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        pct, _, action = part.partition(":")
        try:
            out[int(pct)] = action.strip()
        except ValueError:
            raise ValueError(f"budget action {part!r} is not PERCENT:ACTION") from None
        if action.strip() not in ACTIONS:
            raise ValueError(f"unknown budget action {action!r}; use one of {', '.join(ACTIONS)}")
    return out
