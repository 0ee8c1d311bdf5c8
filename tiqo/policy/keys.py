"""API-key pools: per-key limits with their own reset time, cooldowns, disabling on auth errors, strategies.

Pure and synchronous, clock injected: the daemon persists ``KeyState`` (SQLite) and never hands secrets to this
module, only key names.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

from tiqo.policy.breaker import HEALTH_FAILURES, CircuitBreaker

Strategy = Literal["round-robin", "least-used", "weighted"]
STRATEGIES: tuple[str, ...] = ("round-robin", "least-used", "weighted")
DEFAULT_COOLDOWN_S = 30.0  # a 429 without Retry-After
MAX_COOLDOWN_S = 86400.0


@dataclass(frozen=True)
class KeyLimits:
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    rpd: int | None = None  # requests per quota day
    tpd: int | None = None  # tokens per quota day
    reset: str = "00:00"  # when the key's quota day starts, in ``tz``
    tz: str = "UTC"
    weight: float = 1.0

    def __post_init__(self) -> None:
        parse_reset(self.reset)
        try:
            ZoneInfo(self.tz)
        except Exception:
            raise ValueError(f"unknown time zone {self.tz!r} (use an IANA name such as UTC or Europe/Paris)") from None
        if self.weight <= 0:
            raise ValueError("weight must be positive")


def parse_reset(text: str) -> tuple[int, int]:
    try:
        hh, mm = text.split(":")
        h, m = int(hh), int(mm)
    except ValueError:
        raise ValueError(f"reset time {text!r} is not HH:MM") from None
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"reset time {text!r} is not HH:MM")
    return h, m


# (reset, tz) -> the quota day last computed, [start, end): every key check of a request asks for it several times,
# and the calendar maths costs 5-10 µs a call; a ``now`` outside the remembered day computes it afresh.
_DAYS: dict[tuple[str, str], tuple[float, float]] = {}


def period_start(now: float, reset: str, tz: str) -> float:
    """Start of the quota day that contains ``now``: the latest ``reset`` wall-clock time in ``tz`` at or before it."""
    return quota_day(now, reset, tz)[0]


def next_reset(now: float, reset: str, tz: str) -> float:
    """End of the quota day that contains ``now``: the first ``reset`` wall-clock time in ``tz`` after it."""
    return quota_day(now, reset, tz)[1]


def quota_day(now: float, reset: str, tz: str) -> tuple[float, float]:
    """``(start, end)`` with ``start <= now < end``: the resets around ``now``. A reset in the hour a DST change skips
    is read on the old offset (02:30 becomes 03:30 after a one-hour jump); in a repeated hour it happens once, at the
    first occurrence (comparing wall times, as this did before, could put a start after ``now`` or reset twice)."""
    known = _DAYS.get((reset, tz))
    if known is not None and known[0] <= now < known[1]:
        return known
    zone = ZoneInfo(tz)
    h, m = parse_reset(reset)
    today = dt.datetime.fromtimestamp(now, zone).date()
    resets = [dt.datetime.combine(today + dt.timedelta(days=d), dt.time(h, m), zone).timestamp() for d in (-1, 0, 1)]
    day = (max(r for r in resets if r <= now), min(r for r in resets if r > now))
    if len(_DAYS) >= 1024:  # keys name a handful of (reset, tz) pairs; a strange config never grows it
        _DAYS.clear()
    _DAYS[(reset, tz)] = day
    return day


@dataclass
class KeyState:
    """What tiqo remembers about one key between requests and restarts."""

    enabled: bool = True
    disabled_reason: str = ""
    cooldown_until: float = 0.0
    cooldown_reason: str = ""
    exhausted_until: float = 0.0
    period_start: float = 0.0
    requests_day: int = 0
    tokens_day: int = 0
    minute_start: float = 0.0
    requests_minute: int = 0
    tokens_minute: int = 0
    requests_total: int = 0
    tokens_total: int = 0
    failures_total: int = 0
    last_used: float = 0.0
    breaker_failures: int = 0
    breaker_opened_at: float | None = None
    last_error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)  # flat scalars: no need for asdict's deep copies

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


KEY_STATUSES = ("healthy", "cooling", "exhausted", "disabled", "circuit-open")  # KeyPool.describe's "status"


@dataclass(frozen=True)
class KeyVerdict:
    name: str
    usable: bool
    reason: str  # "ok", or why it is skipped
    until: float | None = None  # when it becomes usable again, if known


@dataclass
class KeyPool:
    provider: str
    limits: dict[str, KeyLimits]  # name -> limits, in configured order
    states: dict[str, KeyState] = field(default_factory=dict)
    strategy: str = "round-robin"
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 60.0
    _rr: int = 0
    _wrr: dict[str, float] = field(default_factory=dict)
    _breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown key strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        for name in self.limits:
            state = self.states.setdefault(name, KeyState())
            self._breakers[name] = CircuitBreaker(
                self.breaker_threshold,
                self.breaker_cooldown_s,
                failures=state.breaker_failures,
                opened_at=state.breaker_opened_at,
                last_error=state.last_error,
            )

    # ------------------------------------------------------------ windows
    def _roll(self, name: str, now: float) -> KeyState:
        state, lim = self.states[name], self.limits[name]
        start = period_start(now, lim.reset, lim.tz)
        if state.period_start != start:
            state.period_start, state.requests_day, state.tokens_day = start, 0, 0
        minute = now - now % 60
        if state.minute_start != minute:
            state.minute_start, state.requests_minute, state.tokens_minute = minute, 0, 0
        return state

    # ------------------------------------------------------------ choice
    def verdict(self, name: str, now: float, est_tokens: int = 0) -> KeyVerdict:
        state, lim = self._roll(name, now), self.limits[name]
        if not state.enabled:
            return KeyVerdict(name, False, f"disabled: {state.disabled_reason or 'by user'}")
        if state.exhausted_until > now:
            return KeyVerdict(name, False, "quota exhausted upstream", state.exhausted_until)
        if state.cooldown_until > now:
            return KeyVerdict(name, False, f"cooling down ({state.cooldown_reason})", state.cooldown_until)
        day_end = next_reset(now, lim.reset, lim.tz)
        if lim.rpd is not None and state.requests_day >= lim.rpd:
            return KeyVerdict(name, False, f"daily requests used ({state.requests_day}/{lim.rpd})", day_end)
        if lim.tpd is not None and state.tokens_day + est_tokens > lim.tpd:
            return KeyVerdict(name, False, f"daily tokens used ({state.tokens_day}/{lim.tpd})", day_end)
        minute_end = state.minute_start + 60
        if lim.rpm is not None and state.requests_minute >= lim.rpm:
            return KeyVerdict(name, False, f"rpm limit ({state.requests_minute}/{lim.rpm})", minute_end)
        if lim.tpm is not None and state.tokens_minute + est_tokens > lim.tpm and state.tokens_minute > 0:
            return KeyVerdict(name, False, f"tpm limit ({state.tokens_minute}/{lim.tpm})", minute_end)
        breaker = self._breakers[name]
        if not breaker.allows(now):
            return KeyVerdict(name, False, breaker.describe(now), breaker.open_until())
        return KeyVerdict(name, True, "ok")

    def verdicts(self, now: float, est_tokens: int = 0) -> list[KeyVerdict]:
        return [self.verdict(name, now, est_tokens) for name in self.limits]

    def pick(self, now: float, est_tokens: int = 0, exclude: frozenset[str] | set[str] = frozenset()) -> str | None:
        """The next key to use (by strategy), skipping excluded, disabled, cooling, exhausted or tripped keys."""
        usable = [v.name for v in self.verdicts(now, est_tokens) if v.usable and v.name not in exclude]
        if not usable:
            return None
        names = list(self.limits)
        if self.strategy == "least-used":
            return min(usable, key=lambda n: (self.states[n].requests_day, self.states[n].last_used))
        if self.strategy == "weighted":
            total = 0.0
            for n in usable:
                self._wrr[n] = self._wrr.get(n, 0.0) + self.limits[n].weight
                total += self.limits[n].weight
            chosen = max(usable, key=lambda n: self._wrr[n])
            self._wrr[chosen] -= total
            return chosen
        for offset in range(len(names)):  # round-robin
            name = names[(self._rr + offset) % len(names)]
            if name in usable:
                self._rr = (names.index(name) + 1) % len(names)
                return name
        return None  # pragma: no cover - usable is a subset of names

    def next_available(self, now: float) -> float | None:
        """Earliest time a currently unusable pool gets a usable key (for Retry-After), None if never by itself."""
        times = [v.until for v in self.verdicts(now) if not v.usable and v.until is not None]
        return min(times) if times else None

    # ------------------------------------------------------------ outcomes
    def begin(self, name: str, now: float) -> None:
        state = self._roll(name, now)
        state.requests_day += 1
        state.requests_minute += 1
        state.requests_total += 1
        state.last_used = now
        self._breakers[name].begin(now)

    def success(self, name: str, tokens: int, now: float) -> None:
        state = self._roll(name, now)
        state.tokens_day += tokens
        state.tokens_minute += tokens
        state.tokens_total += tokens
        breaker = self._breakers[name]
        breaker.success()
        self._sync(name)

    def failure(self, name: str, kind: str, now: float, retry_after: float | None = None, message: str = "") -> None:
        """Record a failed call. ``kind`` is a ``tiqo.sdk.FailureKind`` (or "timeout"/"connection")."""
        state = self._roll(name, now)
        state.failures_total += 1
        breaker = self._breakers[name]
        if kind == "rate_limited":
            wait = min(MAX_COOLDOWN_S, retry_after if retry_after is not None else DEFAULT_COOLDOWN_S)
            state.cooldown_until = now + wait
            state.cooldown_reason = "429 from upstream"
            breaker.release()
        elif kind == "quota_exhausted":
            lim = self.limits[name]
            state.exhausted_until = now + retry_after if retry_after else next_reset(now, lim.reset, lim.tz)
            breaker.release()
        elif kind == "auth":
            state.enabled = False
            state.disabled_reason = f"upstream rejected the key: {message or 'unauthorized'}"[:200]
            breaker.release()
        elif kind in HEALTH_FAILURES:
            breaker.failure(now, f"{kind}: {message}"[:120])
        else:
            breaker.release()
        self._sync(name)

    def release(self, name: str) -> None:
        self._breakers[name].release()

    def set_enabled(self, name: str, enabled: bool, reason: str = "") -> None:
        state = self.states[name]
        state.enabled = enabled
        state.disabled_reason = "" if enabled else (reason or "by user")
        if enabled:
            state.cooldown_until = 0.0
            state.exhausted_until = 0.0
            self._breakers[name].success()
        self._sync(name)

    def _sync(self, name: str) -> None:
        breaker, state = self._breakers[name], self.states[name]
        state.breaker_failures = breaker.failures
        state.breaker_opened_at = breaker.opened_at
        state.last_error = breaker.last_error

    # ------------------------------------------------------------ reporting
    def describe(self, name: str, now: float) -> dict[str, Any]:
        verdict = self.verdict(name, now)
        state, lim = self.states[name], self.limits[name]
        if verdict.usable:
            status = "healthy"
        elif not state.enabled:
            status = "disabled"
        elif state.exhausted_until > now or verdict.reason.startswith("daily"):
            status = "exhausted"
        elif state.cooldown_until > now or "limit" in verdict.reason:
            status = "cooling"
        else:
            status = "circuit-open"
        return {
            "provider": self.provider,
            "name": name,
            "status": status,
            "reason": "" if verdict.usable else verdict.reason,
            "until": verdict.until,
            "requests_today": state.requests_day,
            "tokens_today": state.tokens_day,
            "requests_minute": state.requests_minute,
            "tokens_minute": state.tokens_minute,
            "requests_total": state.requests_total,
            "tokens_total": state.tokens_total,
            "failures_total": state.failures_total,
            "last_used": state.last_used or None,
            "limits": {"rpm": lim.rpm, "tpm": lim.tpm, "rpd": lim.rpd, "tpd": lim.tpd},
            "reset": lim.reset,
            "tz": lim.tz,
            "weight": lim.weight,
            "next_reset": next_reset(now, lim.reset, lim.tz),
        }
