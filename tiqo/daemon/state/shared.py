"""One interface per piece of state that several daemons can share, and the in-process implementations (the
single-daemon default: today's behaviour, nothing but a method call on the hot path).

``state.backend = redis`` swaps in the Redis implementations (redis_shared.py and
the redis_* modules beside it). Each piece states what it does when
Redis cannot be reached: limits that protect money or a provider's quota fail closed (503 with a hint), the rest
degrades to this daemon's own state and says so in a warning event.

| piece | interface | local | Redis down |
| --- | --- | --- | --- |
| per-user / per-tier rate limits (rpm, tpm) | ``Limiter`` | ``RateLimiter`` buckets in memory | fail closed |
| requests per day | ``DayCounts`` | the ledger's ``request_counts`` table | fail closed |
| per-key usage, limits, cooldowns, disabling | ``KeyStates`` | the pool in memory (+ SQLite) | fail closed |
| provider circuit breakers and the half-open probe | ``Breakers`` | the breaker in memory | local breaker |
| exact response cache | ``CacheStore`` | SQLite ``cache`` table | local SQLite cache |
| alerts (once per threshold) | ``AlertGate`` | the ledger's unique ``dedupe`` | local dedupe only |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tiqo.policy.breaker import CircuitBreaker
from tiqo.policy.keys import KeyPool
from tiqo.policy.ratelimit import Admission, RateLimiter, RateLimits


class Limiter(Protocol):
    """Token buckets per user (rpm, tpm): take a request and its prompt tokens, or say how long to wait."""

    def admit(self, user: str, limits: RateLimits, prompt_tokens: int, now: float) -> Admission: ...

    def charge_tokens(self, user: str, limits: RateLimits, tokens: int, now: float) -> None: ...


class DayCounts(Protocol):
    def count_request(self, user: str, day: str, limit: int | None) -> int | None:
        """Count one request of ``user`` on ``day``; None (not counted) when ``limit`` is reached."""
        ...


class KeyStates(Protocol):
    """Key usage and health seen by every daemon. The pool stays the one that decides (pure policy); this brings
    the others' view into it and counts each call atomically against the key's limits."""

    def refresh(self, pool: KeyPool, now: float) -> None:
        """Bring what other daemons recorded (usage, cooldowns, disabling) into ``pool``'s states."""
        ...

    def claim(self, pool: KeyPool, name: str, now: float, est_tokens: int) -> str | None:
        """Count one call on key ``name`` if its limits allow it, atomically: None when claimed, else why not."""
        ...

    def count_tokens(self, pool: KeyPool, name: str, tokens: int, now: float) -> None: ...

    def save_health(self, pool: KeyPool, name: str) -> None:
        """Publish the key's cooldown, exhaustion and enabled state as ``pool`` holds it now."""
        ...


class Breakers(Protocol):
    """Provider circuit breakers seen by every daemon, with one half-open probe among them."""

    def sync(self, provider: str, breaker: CircuitBreaker) -> None: ...

    def take_probe(self, provider: str, breaker: CircuitBreaker, now: float) -> bool:
        """Whether this call may be the half-open probe (exactly one is, across daemons)."""
        ...

    def failure(self, provider: str, breaker: CircuitBreaker, now: float, error: str, was_probe: bool) -> bool:
        """Record a health failure; True when it was recorded in the shared state (``breaker`` then holds it)."""
        ...

    def success(self, provider: str) -> None: ...

    def release_probe(self, provider: str) -> None: ...


@dataclass(frozen=True)
class CacheEntry:
    """One answer to keep for ``ttl`` seconds from ``now``; ``sem_group`` and ``vector`` (its question, embedded) only
    for the semantic cache."""

    key: str
    scope: str
    model: str
    response: dict[str, Any]
    ttl: float
    now: float
    sem_group: str | None = None
    vector: bytes | None = None


class CacheStore(Protocol):
    """What the response cache needs of a store (``tiqo.daemon.state.store.Store`` is one)."""

    def cache_get(self, key: str, now: float, counter: str = "hits") -> dict[str, Any] | None: ...

    def cache_put(self, entry: CacheEntry) -> None: ...

    def cache_vectors(self, sem_group: str, now: float) -> list[tuple[str, bytes, float]]: ...

    def cache_miss(self) -> None: ...

    def cache_stats(self, now: float) -> dict[str, Any]: ...

    def cache_clear(self, expired_only: bool = False, now: float | None = None) -> int: ...


def hit_counts(stats: Mapping[Any, Any]) -> dict[str, Any]:
    """The cache's counters as ``tiqo cache stats`` shows them: hits (exact), semantic hits, misses and the hit rate
    (None before the first lookup)."""
    hits, semantic, misses = (int(stats.get(k, 0)) for k in ("hits", "semantic_hits", "misses"))
    served = hits + semantic
    rate = round(served / (served + misses), 4) if served + misses else None
    return {"hits": hits, "semantic_hits": semantic, "misses": misses, "hit_rate": rate}


class AlertGate(Protocol):
    def first(self, dedupe: str) -> bool:
        """Whether this daemon is the first to raise alert ``dedupe`` (the one that records and sends it)."""
        ...


class LocalKeyStates:
    """One daemon: the pool is the whole truth (its ``begin`` counts the call; SQLite keeps the states)."""

    def refresh(self, pool: KeyPool, now: float) -> None:
        return None

    def claim(self, pool: KeyPool, name: str, now: float, est_tokens: int) -> str | None:
        return None

    def count_tokens(self, pool: KeyPool, name: str, tokens: int, now: float) -> None:
        return None

    def save_health(self, pool: KeyPool, name: str) -> None:
        return None


class LocalBreakers:
    """One daemon: the breaker in memory decides, its own probing flag is the one probe."""

    def sync(self, provider: str, breaker: CircuitBreaker) -> None:
        return None

    def take_probe(self, provider: str, breaker: CircuitBreaker, now: float) -> bool:
        return True

    def failure(self, provider: str, breaker: CircuitBreaker, now: float, error: str, was_probe: bool) -> bool:
        return False

    def success(self, provider: str) -> None:
        return None

    def release_probe(self, provider: str) -> None:
        return None


class LocalAlerts:
    def first(self, dedupe: str) -> bool:
        return True  # the ledger's unique dedupe column keeps it to one per daemon


@dataclass
class SharedState:
    """The pieces the composition root hands out; ``None`` for day counts and cache means the ledger and the
    SQLite store (the default)."""

    limiter: Limiter = field(default_factory=RateLimiter)
    days: DayCounts | None = None
    keys: KeyStates = field(default_factory=LocalKeyStates)
    breakers: Breakers = field(default_factory=LocalBreakers)
    cache: CacheStore | None = None
    alerts: AlertGate = field(default_factory=LocalAlerts)
    shared: bool = False  # True: several daemons share these (Redis)
