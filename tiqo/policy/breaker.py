"""Circuit breaker: open after N consecutive failures, one half-open probe after a cooldown. Pure; clock injected."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]
# Failure kinds that say the endpoint (or key) is unhealthy; rate limits, quotas and bad keys are not breaker matters.
HEALTH_FAILURES = frozenset({"server", "timeout", "connection", "protocol"})


@dataclass
class CircuitBreaker:
    threshold: int = 5
    cooldown_s: float = 60.0
    failures: int = 0  # consecutive
    opened_at: float | None = None
    probing: bool = False  # a half-open probe is in flight
    last_error: str = ""

    def state(self, now: float) -> State:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allows(self, now: float) -> bool:
        """Whether a call may go through now (a half-open breaker lets exactly one probe through)."""
        state = self.state(now)
        if state == "closed":
            return True
        return state == "half_open" and not self.probing

    def begin(self, now: float) -> None:
        """Called when a call actually starts: in half-open it becomes the probe."""
        if self.state(now) == "half_open":
            self.probing = True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.probing = False
        self.last_error = ""

    def failure(self, now: float, error: str = "") -> None:
        self.failures += 1
        self.last_error = error
        was_probe = self.probing
        self.probing = False
        if was_probe or self.failures >= self.threshold:
            self.opened_at = now

    def release(self) -> None:
        """A call ended without telling anything about health (e.g. the caller hung up): free the probe slot."""
        self.probing = False

    def open_until(self) -> float | None:
        return None if self.opened_at is None else self.opened_at + self.cooldown_s

    def describe(self, now: float) -> str:
        state = self.state(now)
        if state == "open" and self.opened_at is not None:
            wait = self.opened_at + self.cooldown_s - now
            return f"circuit open after {self.failures} failures ({self.last_error or 'error'}); probe in {wait:.0f}s"
        if state == "half_open":
            return "circuit half-open (probe in flight)" if self.probing else "circuit half-open (next call probes)"
        return "closed"
