"""Every piece of shared state on one Redis server (``state.backend = redis``): rate limits, key usage and health,
provider breakers, the exact response cache and alert de-duplication, beside the budget counters.

Keys are ``PREFIX:…`` (``state.redis_prefix``) with a Redis Cluster hash tag ``{…}`` around what a script touches
together, and every key expires. Rate limits and key limits fail closed when Redis cannot be reached (a 503 naming
the fix: nothing is let through uncounted, so nothing is overspent or counted twice when it returns); breakers,
the cache and alerts fall back to this daemon's own state and publish a ``state`` warning event.

One module per piece: redis_limits (rate limits, daily counts), redis_keys (key usage and health), redis_breakers,
redis_cache; this one holds the connection they share, how each fails, and the alert gate. redis-py is imported only
when these modules are (through redis_counters).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisError

from tiqo.core.errors import StateUnavailable
from tiqo.daemon.state.redis_breakers import RedisBreakers
from tiqo.daemon.state.redis_cache import RedisCache
from tiqo.daemon.state.redis_counters import HINT, RedisCounters
from tiqo.daemon.state.redis_keys import RedisKeyStates
from tiqo.daemon.state.redis_limits import RedisLimiter
from tiqo.daemon.state.shared import CacheStore, SharedState

log = logging.getLogger("tiqo.state")
Arg = str | int | float  # a Lua script's argument
Warn = Callable[[str, str], Any]  # (piece, message): a warning event
ALERT_TTL_S = 40 * 86400  # beyond the longest alert period (a month) that the dedupe names
WARN_EVERY_S = 30.0


class RedisState:
    """The shared pieces on one client (the budget counters' connection)."""

    def __init__(self, counters: RedisCounters, warn: Warn | None = None) -> None:
        self.counters = counters
        self.client = counters.client
        self.prefix = counters.prefix
        self.url = counters.url
        self.warn = warn
        self._warned: dict[str, float] = {}

    def pieces(self, local_cache: CacheStore) -> SharedState:
        return SharedState(
            limiter=RedisLimiter(self),
            days=RedisLimiter(self),
            keys=RedisKeyStates(self),
            breakers=RedisBreakers(self),
            cache=RedisCache(self, local_cache),
            alerts=RedisAlerts(self),
            shared=True,
        )

    @contextmanager
    def closed(self, what: str) -> Iterator[None]:
        """Fail closed: Redis errors become a 503 naming the fix."""
        try:
            yield
        except RedisError as exc:
            raise StateUnavailable(
                f"cannot reach the Redis server that holds the {what} ({self.url}): {exc}; refusing rather than "
                "letting the request through uncounted",
                hint=HINT,
                retry_after=5,
            ) from exc

    def degraded(self, piece: str, exc: Exception) -> None:
        """A piece that falls back to local state: log and publish a warning, at most every WARN_EVERY_S."""
        now = time.monotonic()
        if now - self._warned.get(piece, -math.inf) < WARN_EVERY_S:
            return
        self._warned[piece] = now
        message = f"Redis ({self.url}) unreachable: {piece} fall back to this daemon's own state ({exc}); {HINT}"
        log.warning("%s", message)
        if self.warn is not None:
            self.warn(piece, message)


class RedisAlerts:
    """One alert per dedupe across every daemon: the first SET NX (with expiry) raises it. Redis down: every daemon
    raises its own (a duplicate alert beats a lost one)."""

    def __init__(self, state: RedisState) -> None:
        self.state = state

    def first(self, dedupe: str) -> bool:
        try:
            key = f"{self.state.prefix}:alert:{dedupe}"
            return bool(self.state.client.set(key, str(time.time()), nx=True, ex=ALERT_TTL_S))
        except RedisError as exc:
            self.state.degraded("alerts", exc)
            return True
