"""What does each state backend cost per request? SQLite / in-process (one daemon) against Redis (several daemons).

Times, in this one process, every state operation one external chat request performs, on each backend:
rate-limit admission (rpm+tpm buckets) and the tpm charge after the answer, the requests-per-day count, the key
pool's refresh + atomic claim + token count, the provider breaker's sync, the budget reservation and settlement, an
exact cache lookup (a miss), and the ledger row with, on Redis, the cluster-wide usage sums (one pipelined round
trip). The Redis side talks to a private ``redis-server`` this script starts on a free port over TCP on 127.0.0.1
(the network round trip to a real shared server adds to every Redis number).

Run:  .venv/bin/python bench/shared_state.py [--n 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tiqo.daemon.accounting.ledger import Ledger, RequestRow, SqliteCounters, UsageSums
from tiqo.daemon.state.redis_counters import RedisCounters
from tiqo.daemon.state.redis_shared import RedisState
from tiqo.daemon.state.redis_usage import RedisUsage
from tiqo.daemon.state.shared import SharedState
from tiqo.daemon.state.store import Store
from tiqo.policy.breaker import CircuitBreaker
from tiqo.policy.budget import Limit, Policy
from tiqo.policy.keys import KeyLimits, KeyPool
from tiqo.policy.ratelimit import RateLimits

LIMITS = RateLimits(rpm=10**9, tpm=10**12)
POLICY = Policy(limits=(Limit("global", "", "day", 10**6), Limit("user", "alice", "day", 10**6)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def per_op(fn: Callable[[int], Any], n: int) -> float:
    """Microseconds per call, best of three runs of ``n``."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def ops(
    shared: SharedState, counters: Any, store: Store, days: Any, sums: UsageSums | None = None
) -> dict[str, Callable[[int], Any]]:
    ledger = Ledger(store, sums=sums)
    pool = KeyPool("alpha", {"k1": KeyLimits(rpm=10**9, rpd=10**9)})
    breaker = CircuitBreaker()
    cache = shared.cache or store
    charges = POLICY.charges("alice", "alpha", "alpha-m", time.time())

    def key_use(i: int) -> None:
        now = time.time()
        shared.keys.refresh(pool, now)
        if shared.keys.claim(pool, "k1", now, 10) is None:
            pool.begin("k1", now)
        shared.keys.count_tokens(pool, "k1", 20, now)

    def budget(i: int) -> None:
        counters.reserve(f"c{i}-{time.monotonic_ns()}", charges, 1000)

    def budget_cycle(i: int) -> None:
        call = f"s{i}-{time.monotonic_ns()}"
        counters.reserve(call, charges, 1000)
        counters.settle(call, [c.key for c in charges], 1000, 400)

    return {
        "rate limits (admit + charge)": lambda i: (
            shared.limiter.admit("alice", LIMITS, 10, time.time()),
            shared.limiter.charge_tokens("alice", LIMITS, 20, time.time()),
        ),
        "requests per day": lambda i: days.count_request("alice", "day:2026-11-18", 10**9),
        "key (refresh + claim + tokens)": key_use,
        "breaker sync": lambda i: shared.breakers.sync("alpha", breaker),
        "budget (reserve + settle)": budget_cycle,
        "cache lookup (miss)": lambda i: cache.cache_get(f"nope{i}", time.time()),
        "ledger row (+ usage sums on Redis)": lambda i: ledger.record(
            RequestRow(
                id=f"q{i}-{time.monotonic_ns()}",
                ts=time.time(),
                user="alice",
                task="chat",
                provider="alpha",
                model="alpha-m",
                tokens_in=12,
                tokens_out=30,
                cost_nusd=4200,
                latency_ms=180.0,
            )
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=2000, help="calls per operation per run (best of three runs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (apt install redis-server)")
    work = Path(tempfile.mkdtemp(prefix="tqbench"))
    port = free_port()
    cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(work)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(200):
            try:
                redis_counters = RedisCounters(url, prefix="bench")
                break
            except Exception:
                time.sleep(0.05)
        local_store = Store(work / "local.db")
        local = ops(SharedState(), SqliteCounters(local_store.db), local_store, _Days(local_store))
        redis_store = Store(work / "redis.db")
        pieces = RedisState(redis_counters).pieces(redis_store)
        shared = ops(pieces, redis_counters, redis_store, pieces.days, RedisUsage(redis_counters))
        rows = []
        for name in local:
            a, b = per_op(local[name], args.n), per_op(shared[name], args.n)
            rows.append(
                {"operation": name, "sqlite_us": round(a, 1), "redis_us": round(b, 1), "ratio": round(b / a, 1)}
            )
        total_a = sum(r["sqlite_us"] for r in rows)
        total_b = sum(r["redis_us"] for r in rows)
        rows.append(
            {
                "operation": "per external request",
                "sqlite_us": round(total_a, 1),
                "redis_us": round(total_b, 1),
                "ratio": round(total_b / total_a, 1),
            }
        )
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'operation':34} {'sqlite µs':>10} {'redis µs':>10} {'ratio':>7}")
            for r in rows:
                print(f"{r['operation']:34} {r['sqlite_us']:>10} {r['redis_us']:>10} {r['ratio']:>6}x")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


class _Days:
    """The ledger's request_counts table, as the default DayCounts."""

    def __init__(self, store: Store) -> None:
        from tiqo.daemon.accounting.ledger import Ledger

        self.ledger = Ledger(store)

    def count_request(self, user: str, day: str, limit: int | None) -> int | None:
        return self.ledger.count_request(user, day, limit)


if __name__ == "__main__":
    raise SystemExit(main())
