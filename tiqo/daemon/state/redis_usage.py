"""Usage sums shared by every daemon on one Redis (``state.backend = redis``), so ``tiqo usage`` on any of them shows
the cluster's requests, tokens and cost. The ledger rows themselves stay in each daemon's SQLite.

One hash per calendar day (budget.timezone), ``PREFIX:usage:{DAY}``, with one integer field per (user, task,
provider, model, metric): ``["alice","chat","alpha","alpha-m"]|tokens_in``. Recording a row is one pipelined round
trip (HINCRBY per non-zero metric, then EXPIRE); a day's hash expires ``KEEP_DAYS`` after its last write, so Redis
holds a bit more than a year of sums. Redis down: the increments wait in memory (bounded by ``MAX_PENDING``) and go
out with the next write that reaches it, so an outage loses nothing (a write whose reply the outage cut off may count
once more: rare, and logged).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping

from redis.exceptions import RedisError

from tiqo.core.errors import StateUnavailable
from tiqo.daemon.state.redis_counters import HINT, RedisCounters, for_each

log = logging.getLogger("tiqo.state")

KEEP_DAYS = 400
TTL_S = KEEP_DAYS * 86400
METRICS = (
    "requests",
    "tokens_in",
    "tokens_out",
    "cost_nusd",
    "cache_hits",
    "errors",
    "latency_ms",  # a sum: the average is latency_ms / requests
    "audio_ms",
    "images",
    "video_ms",
)
MAX_PENDING = 20_000  # fields held while Redis is away; beyond that the oldest day's are dropped (and logged)
RETRY_AFTER_S = 5.0  # after a failed write, later rows wait in memory this long before Redis is tried again
Group = tuple[str, str, str, str]  # (user, task, provider, model)


class RedisUsage:
    """Per-day sums of ledger rows in Redis; ``add`` on the request's path, ``read`` for ``tiqo usage``."""

    def __init__(self, counters: RedisCounters) -> None:
        self.client = counters.client
        self.prefix = counters.prefix
        self.url = counters.url
        self._pending: dict[str, dict[str, int]] = defaultdict(dict)  # day -> field -> amount not yet written
        self._retry_at = -math.inf

    def _key(self, day: str) -> str:
        return f"{self.prefix}:usage:{{{day}}}"

    def add(self, day: str, group: Group, amounts: Mapping[str, int]) -> None:
        """Count one ledger row (its non-zero ``amounts``, by METRICS name) under ``day`` and ``group``."""
        head = json.dumps(list(group), separators=(",", ":"))
        todo = self._pending[day]
        for metric, amount in amounts.items():
            if amount:
                name = f"{head}|{metric}"
                todo[name] = todo.get(name, 0) + int(amount)
        if time.monotonic() < self._retry_at:
            self._bound()
            return
        self.flush()

    def flush(self) -> bool:
        """Write what waits, in one round trip; False (kept for later) when Redis cannot be reached."""
        if not any(self._pending.values()):
            return True
        pipe = self.client.pipeline(transaction=False)
        for day, fields in self._pending.items():
            if fields:
                key = self._key(day)
                for name, amount in fields.items():
                    pipe.hincrby(key, name, amount)
                pipe.expire(key, TTL_S)
        try:
            pipe.execute()
        except RedisError as exc:
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            self._bound()
            log.warning(
                "usage sums for the cluster wait in memory: Redis (%s) unreachable (%s); %s", self.url, exc, HINT
            )
            return False
        self._pending.clear()
        self._retry_at = -math.inf
        return True

    def _bound(self) -> None:
        while sum(len(f) for f in self._pending.values()) > MAX_PENDING and len(self._pending) > 1:
            oldest = min(self._pending)
            log.error("Redis away too long: dropping the cluster usage sums of %s held in memory", oldest)
            del self._pending[oldest]

    def read(self, days: Iterable[str], user: str | None) -> dict[tuple[str, str, str, str, str], dict[str, int]]:
        """{(day, user, task, provider, model): {metric: sum}} for ``days`` (only ``user``'s when given). Raises
        StateUnavailable when Redis cannot be reached (``--local`` still answers from this daemon's rows)."""
        days = list(days)
        self.flush()
        try:
            hashes = for_each(self.client, [self._key(day) for day in days], lambda p, k: p.hgetall(k))
        except RedisError as exc:
            raise StateUnavailable(
                f"cannot reach the Redis server that holds the cluster's usage sums ({self.url}): {exc}",
                hint="add --local (`tiqo usage --local`) for this daemon's own rows, or " + HINT,
                retry_after=5,
            ) from exc
        out: dict[tuple[str, str, str, str, str], dict[str, int]] = {}
        for day, fields in zip(days, hashes, strict=True):
            for name, value in fields.items():
                head, _, metric = str(name).rpartition("|")
                try:
                    who, task, provider, model = (str(x) for x in json.loads(head))
                except (ValueError, TypeError):
                    continue  # not ours (another tool wrote under the prefix)
                if user is not None and who != user:
                    continue
                sums = out.setdefault((day, who, task, provider, model), {})
                sums[metric] = sums.get(metric, 0) + int(value)
        return out
