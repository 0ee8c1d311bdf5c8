"""Per-user rate limits: token buckets for requests and tokens per minute, and a daily request allowance.

Pure and synchronous, clock injected. A user's limits are their own ``[users.NAME]`` values, else their tier's
(``[tiers.NAME]``), so every user of a tier gets the tier's allowance. Tokens are charged in two steps: the prompt
estimate on admission, the completion once known; a bucket may go into debt (a long answer), and then the next
request waits until it refills — the way provider token limits behave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimits:
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    rpd: int | None = None  # requests per calendar day (budget.timezone)

    def merged(self, over: RateLimits) -> RateLimits:
        """``over``'s values where set, else these."""
        return RateLimits(
            over.rpm if over.rpm is not None else self.rpm,
            over.tpm if over.tpm is not None else self.tpm,
            over.rpd if over.rpd is not None else self.rpd,
        )

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.rpd))


@dataclass
class Bucket:
    capacity: float
    level: float
    updated: float

    @property
    def rate(self) -> float:  # per second: a full bucket refills in a minute
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` (capped at the capacity) is available; 0 when it is now."""
        self.refill(now)
        need = min(amount, self.capacity) - self.level
        return 0.0 if need <= 1e-9 else need / self.rate

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount


@dataclass(frozen=True)
class Admission:
    ok: bool
    retry_after: float = 0.0
    reason: str = ""


class RateLimiter:
    """Buckets by user. ``admit`` either takes a request (and its prompt tokens) or says how long to wait."""

    def __init__(self) -> None:
        self.buckets: dict[tuple[str, str], Bucket] = {}

    def _bucket(self, user: str, kind: str, capacity: int, now: float) -> Bucket:
        bucket = self.buckets.get((user, kind))
        if bucket is None or bucket.capacity != capacity:  # new user, or the limit changed
            bucket = Bucket(float(capacity), float(capacity), now)
            self.buckets[(user, kind)] = bucket
        return bucket

    def admit(self, user: str, limits: RateLimits, prompt_tokens: int, now: float) -> Admission:
        waits: list[tuple[float, str]] = []
        rpm = self._bucket(user, "rpm", limits.rpm, now) if limits.rpm else None
        tpm = self._bucket(user, "tpm", limits.tpm, now) if limits.tpm else None
        if rpm is not None:
            wait = rpm.wait_for(1, now)
            if wait > 0:
                waits.append((wait, f"{limits.rpm} requests per minute"))
        if tpm is not None:
            wait = tpm.wait_for(prompt_tokens, now)
            if wait > 0:
                waits.append((wait, f"{limits.tpm} tokens per minute"))
        if waits:
            wait, what = max(waits)
            return Admission(False, math.ceil(wait * 10) / 10, f"user {user} is over {what}")
        if rpm is not None:
            rpm.take(1, now)
        if tpm is not None:
            tpm.take(prompt_tokens, now)
        return Admission(True)

    def charge_tokens(self, user: str, limits: RateLimits, tokens: int, now: float) -> None:
        """Tokens learnt after the answer (the completion; a prompt larger than estimated)."""
        if limits.tpm and tokens > 0:
            self._bucket(user, "tpm", limits.tpm, now).take(tokens, now)
