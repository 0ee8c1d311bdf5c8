"""Budget counters in Redis, for several daemons that share budgets (``state.backend = redis``).

Each counter is a hash ``tiqo:budget:<counter>:<period>`` with the fields ``spent`` and ``reserved`` (integer
nano-dollars). Reserving and settling are each one Lua script, so the check and the update are one atomic step
against every daemon that shares the server. Every open reservation is also a field of the hash ``tiqo:resv``
(call id → JSON ``{keys, amount, ts}``): settling only acts when the call's field is there and deletes it, so a
settle is idempotent and the reservations of a daemon that crashed can be found. Reserving twice with one call id
reserves once.

Counter hashes expire (40 days after their last update for day periods, 400 days for months) so Redis does not
grow forever. The calls rows (the audit trail, and what ``Ledger.reconcile`` settles after a crash) stay in each
daemon's SQLite database.

redis-py is imported only when this module is, and the daemon imports it only when ``state.backend = redis``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tiqo.core.errors import ConfigError, StateUnavailable
from tiqo.policy.budget import Charge, Refusal, Usage, to_nano

try:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - the test extra installs redis
    raise ConfigError(
        "state.backend = redis needs the redis package",
        hint="pip install 'tiqo[redis]', or set state.backend = sqlite",
        param="state.backend",
    ) from exc

CounterKey = tuple[str, str]  # (counter, period id), as in tiqo.daemon.accounting.ledger

HINT = "start redis-server (or fix state.redis_url), or set state.backend = sqlite"
DAY_TTL_S = 40 * 86400
MONTH_TTL_S = 400 * 86400
CONNECT_TIMEOUT_S = 2.0  # the ledger runs on the event loop: a Redis that hangs must not hang the daemon for long
SOCKET_TIMEOUT_S = 5.0

# KEYS[1] = the reservations hash; KEYS[2 .. u+1] = the distinct counter hashes of the call.
# ARGV[1] = call id, ARGV[2] = amount, ARGV[3] = the reservation record (JSON), ARGV[4] = u, ARGV[5] = n (charges),
# then u TTLs (one per counter hash), then n pairs (index of the charge's hash in KEYS, cap).
# Returns {-1, 0} when reserved (or already reserved under this call id), else {index of the refusing charge, used}.
RESERVE = """
local u, n = tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return {-1, 0}
end
local amount = tonumber(ARGV[2])
local used = {}
for i = 1, u do
  local v = redis.call('HMGET', KEYS[i + 1], 'spent', 'reserved')
  used[i] = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
end
for c = 1, n do
  local k = tonumber(ARGV[5 + u + 2 * c - 1])
  local cap = tonumber(ARGV[5 + u + 2 * c])
  if used[k] + amount > cap then
    return {c - 1, used[k]}
  end
end
for i = 1, u do
  redis.call('HINCRBY', KEYS[i + 1], 'reserved', amount)
  redis.call('HINCRBY', KEYS[i + 1], 'spent', 0)
  redis.call('EXPIRE', KEYS[i + 1], ARGV[5 + i])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {-1, 0}
"""

# KEYS as for RESERVE. ARGV[1] = call id, ARGV[2] = reserved, ARGV[3] = cost, then one TTL per counter hash.
# Returns {} when the call holds no reservation (settled already, or never reserved), else spent before and after
# for each counter hash in order: {before1, after1, before2, after2, ...}.
SETTLE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  return {}
end
local reserved, cost = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 2, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  local before = tonumber(v[1]) or 0
  local left = (tonumber(v[2]) or 0) - reserved
  if left < 0 then
    left = 0
  end
  redis.call('HSET', KEYS[i], 'reserved', left)
  local after = redis.call('HINCRBY', KEYS[i], 'spent', cost)
  redis.call('EXPIRE', KEYS[i], ARGV[2 + i])
  out[#out + 1] = before
  out[#out + 1] = after
end
return out
"""


def ttl_of(period: str) -> int:
    """Seconds a counter hash of ``period`` ("day:2026-11-23", "month:2026-11") outlives its last update."""
    return DAY_TTL_S if period.startswith("day:") else MONTH_TTL_S


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable URL>"


def for_each(client: redis.Redis, keys: Iterable[str], command: Callable[[Any, str], object]) -> list[Any]:
    """``command(pipe, key)`` for every key, sent in one round trip (a pipeline, not a transaction): the replies in
    order. Raises RedisError as the client does."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        command(pipe, key)
    return list(pipe.execute())


def _unique(keys: Sequence[CounterKey]) -> list[CounterKey]:
    return list(dict.fromkeys(keys))


class RedisCounters:
    """The :class:`tiqo.daemon.accounting.ledger.Counters` protocol on a Redis server (several daemons, one budget)."""

    def __init__(self, url: str, *, prefix: str = "tiqo") -> None:
        self.url = redact(url)
        self.prefix = prefix
        self.resv_key = f"{prefix}:resv"
        try:
            client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=SOCKET_TIMEOUT_S,
                # Both scripts are idempotent per call id, so a retry after a lost reply is safe.
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            )
        except ValueError as exc:
            raise ConfigError(
                f"state.redis_url {self.url!r} is not a Redis URL: {exc}",
                hint="use redis://HOST:PORT/DB (or rediss:// or unix://), or set state.backend = sqlite",
                param="state.redis_url",
            ) from exc
        self.client = client
        self._reserve = client.register_script(RESERVE)
        self._settle = client.register_script(SETTLE)
        with self._errors():
            client.ping()  # fail at start-up, not on the first external call

    def key(self, counter: str, period: str) -> str:
        return f"{self.prefix}:budget:{counter}:{period}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StateUnavailable(
                f"cannot reach the Redis server that holds the budget counters ({self.url}): {exc}",
                hint=HINT,
                retry_after=5,
            ) from exc
        except RedisError as exc:
            raise StateUnavailable(
                f"the Redis server that holds the budget counters ({self.url}) failed: {exc}",
                hint=HINT,
                retry_after=5,
            ) from exc

    # ------------------------------------------------------------ the Counters protocol
    def usage(self, keys: Sequence[CounterKey]) -> dict[CounterKey, Usage]:
        if not keys:
            return {}
        with self._errors():
            rows = for_each(self.client, [self.key(*k) for k in keys], lambda p, k: p.hmget(k, "spent", "reserved"))
        return {key: Usage(int(row[0] or 0), int(row[1] or 0)) for key, row in zip(keys, rows, strict=True)}

    def reserve(self, call_id: str, charges: Sequence[Charge], amount: int) -> Refusal | None:
        """Check every charge's cap and reserve ``amount`` on each counter, in one script; the Refusal of the first
        charge that does not fit (as :func:`tiqo.policy.budget.check` builds it), or None when reserved."""
        if not charges:
            return None  # nothing to count (a call no limit applies to): no round trip, nothing to settle
        keys = _unique([c.key for c in charges])
        index = {k: i + 1 for i, k in enumerate(keys)}  # 1-based, as Lua counts
        record = json.dumps({"keys": keys, "amount": amount, "ts": time.time()})
        args: list[Any] = [call_id, amount, record, len(keys), len(charges)]
        args += [ttl_of(period) for _, period in keys]
        for charge in charges:
            args += [index[charge.key], to_nano(charge.limit.usd)]
        with self._errors():
            refused, used = self._reserve(keys=[self.resv_key, *(self.key(*k) for k in keys)], args=args)
        if int(refused) < 0:
            return None
        return Refusal(charges[int(refused)], int(used), amount)

    def settle(
        self, call_id: str, keys: Sequence[CounterKey], reserved: int, cost: int
    ) -> dict[CounterKey, tuple[int, int]]:
        """Move ``reserved`` out and add ``cost``, once per call: spent before and after for each counter, or {}
        when ``call_id`` holds no reservation here (settled already, refused, or never reserved)."""
        unique = _unique([(str(c), str(p)) for c, p in keys])
        if not unique:
            return {}
        with self._errors():
            flat = self._settle(
                keys=[self.resv_key, *(self.key(*k) for k in unique)],
                args=[call_id, reserved, cost, *(ttl_of(p) for _, p in unique)],
            )
        if not flat:
            return {}
        return {k: (int(flat[2 * i]), int(flat[2 * i + 1])) for i, k in enumerate(unique)}

    # ------------------------------------------------------------ beyond the protocol
    def reservations(self) -> dict[str, dict[str, Any]]:
        """Every open reservation, of every daemon sharing this server: call id → {keys, amount, ts}."""
        with self._errors():
            raw = self.client.hgetall(self.resv_key)
        return {str(call_id): json.loads(record) for call_id, record in raw.items()}

    def periods(self, prefix: str) -> list[tuple[str, str, int, int]]:
        """Counters whose name starts with ``prefix`` (``user:`` …): (counter, period, spent, reserved), as
        ``Ledger.periods`` returns them from SQLite."""
        head = f"{self.prefix}:budget:"
        pattern = _glob_escape(head + prefix) + "*"
        with self._errors():
            names = sorted(set(self.client.scan_iter(match=pattern, count=500)))
        keys: list[CounterKey] = []
        for name in names:
            counter, _, period = name[len(head) :].rpartition(":")
            counter, _, kind = counter.rpartition(":")  # period ids hold one colon: "day:2026-11-23"
            keys.append((counter, f"{kind}:{period}"))
        return [(c, p, u.spent, u.reserved) for (c, p), u in self.usage(keys).items()]

    def close(self) -> None:
        self.client.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
