"""What do the policy checks and the SQLite ledger cost per request, and how many requests/s does the ledger sustain?

Three parts, numbers only (no limits asserted; exit status 1 only when the end-to-end part failed, with why):

1. Per operation, in this process, on a real SQLite file in a temp dir opened as the daemon opens it (``Store``:
   WAL, synchronous=NORMAL, autocommit): microseconds per call, median of ``--rounds`` rounds of ``--batch`` calls.
   ``Ledger.record`` of a RequestRow; reserve + settle of one external call through ``Budgets`` with 3 applicable
   limits (global day, every user's day, provider month), and the same with no ``[budgets]`` (the audit row that
   every external call gets anyway); ``Ledger.count_request`` (only with an ``rpd`` rate limit);
   ``Budgets.pressure`` (run for every external candidate while routing); the Gateway-free policy path
   (``classify`` with the shipped restricted patterns, ``estimate_tokens`` + ``plan`` on a 4-model catalog).
   They add up to "policy + ledger per external request" and "per local request" (no pressure, reserve, settle).
2. Sustained, single thread (the daemon uses one connection from its event loop), ``--n`` requests on a fresh
   database each: record() alone; reserve + settle + record; and the whole per-external-request path of part 1.
3. End to end (``--daemon``, on by default, about 30-60 s): two real daemons in front of one stub provider
   (``tests.upstreams``), identical except that one has a ``[budgets]`` table with 5 limits that apply to every
   request; the same JSON chat requests (``x-tiqo-user: bench``, ``max_tokens`` set so the upstream wire is the
   same) go to both in ABBA-ordered segments at concurrency 1 and 64. Both daemons write a ledger row and an audit
   (calls) row per request: the difference is what budgets add (pressure, charges, counter updates, alerts check).
   Reports p50/p99 latency, requests/s, daemon CPU per request, and the ratios budgets / no budgets.

Run:  .venv/bin/python bench/ledger.py [--n 20000] [--rounds 7] [--batch 2000] [--no-daemon]
                                       [--e2e-c1 400] [--e2e-c64 1000] [--e2e-rounds 3] [--dir /path] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from gateway_overhead import (  # noqa: E402
    DAEMON_MODEL,
    ForeignLoad,
    Sample,
    Target,
    median_rows,
    reset_stub,
    run_segment,
    start_daemon,
    stop_proc,
    summarize,
    wait_healthy,
    write_home,
)

from tests.upstreams import UpstreamProcess  # noqa: E402
from tiqo.core.paths import Paths  # noqa: E402
from tiqo.core.settings import Settings  # noqa: E402
from tiqo.daemon.accounting.budgets import Budgets  # noqa: E402
from tiqo.daemon.accounting.events import EventBus  # noqa: E402
from tiqo.daemon.accounting.ledger import CallRow, Ledger, RequestRow  # noqa: E402
from tiqo.daemon.catalog.routing_config import restricted_patterns  # noqa: E402
from tiqo.daemon.state.store import Store  # noqa: E402
from tiqo.policy import budget as bp  # noqa: E402
from tiqo.policy.classify import classify  # noqa: E402
from tiqo.policy.routing import CatalogModel, RoutingConfig, Tier, estimate_tokens, plan  # noqa: E402

USER = "alice"
PROMPT = "What is the capital of France, and roughly how many people live there?"
MAX_TOKENS = 256
# Three limits that all apply to an external call of USER to provider openai; huge, so nothing is ever refused.
BUDGETS_3 = {"global": {"daily": 1e6}, "users": {"*": {"daily": 1e5}}, "providers": {"openai": {"monthly": 1e6}}}
CATALOG = {
    "smollm2-135m": CatalogModel("smollm2-135m", "local", context=8192),
    "gpt-4o-mini": CatalogModel("gpt-4o-mini", "openai", "gpt-4o-mini", 0.15, 0.6, 128_000),
    "claude-haiku": CatalogModel("claude-haiku", "anthropic", "claude-3-5-haiku-latest", 0.8, 4.0, 200_000),
    "gpt-4o": CatalogModel("gpt-4o", "openai", "gpt-4o", 2.5, 10.0, 128_000, premium=True),
}
ROUTING = RoutingConfig(
    routes={"chat": {"simple": ["cheap"], "medium": ["cheap"], "complex": ["smart"]}},
    aliases={"cheap": ["gpt-4o-mini", "claude-haiku"], "smart": ["gpt-4o", "claude-haiku"]},
    tiers={"pro": Tier("pro")},
    local_fallback="smollm2-135m",
)
# End to end: five limits that apply to every request of user "bench" to model stub-m of provider stub.
E2E_BUDGETS = """
[budgets.global]
daily = 1000000.0
monthly = 10000000.0

[budgets.users."*"]
daily = 100000.0

[budgets.providers.stub]
monthly = 1000000.0

[budgets.models.stub-m]
daily = 1000000.0
"""
E2E_USER = "bench"
E2E_CONFIGS = ("none", "budgets")
E2E_WARMUP = 50


# ---------------------------------------------------------------------------------------------------- in process


class Fixture:
    """A Store, Ledger and Budgets in a private TIQO_HOME, opened the way the daemon opens them."""

    def __init__(self, root: Path, budgets: dict[str, Any] | None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="tqlb", dir=root))
        paths = Paths.from_env({"TIQO_HOME": str(self.home)})
        toml: dict[str, Any] = {"budgets": budgets} if budgets else {}
        self.settings = Settings(paths, toml, env={})
        self.store = Store(paths.db_file)
        self.ledger = Ledger(self.store, timezone=self.settings["budget.timezone"])
        self.budgets = Budgets(self.settings, self.ledger, EventBus())
        if self.budgets.error:
            raise RuntimeError(self.budgets.error)
        self.model = CATALOG["gpt-4o-mini"]
        self.patterns = restricted_patterns(self.settings)

    def db_bytes(self) -> int:
        """Size of the database file once the WAL is checkpointed into it."""
        self.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return self.store.path.stat().st_size

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.home, ignore_errors=True)


def request_row(i: int, now: float, external: bool = True) -> RequestRow:
    """A ledger row as the gateway writes it for a finished request (no content stored)."""
    return RequestRow(
        id=f"req_{uuid.uuid4().hex[:24]}",
        ts=now + i * 1e-4,
        user=USER,
        tier="default",
        task="chat",
        data_class="internal",
        backend="openai" if external else "local:llama",
        provider="openai" if external else "local",
        model="gpt-4o-mini" if external else "smollm2-135m",
        key="k1" if external else None,
        tokens_in=31,
        tokens_out=120,
        cost_nusd=bp.to_nano(CATALOG["gpt-4o-mini"].cost(31, 120)) if external else 0,
        latency_ms=412.5,
        cache="miss",
        outcome="ok",
        attempts=1,
        route="routes.chat.simple",
    )


def call_row(request_id: str, now: float) -> CallRow:
    return CallRow(
        id=f"call_{uuid.uuid4().hex[:24]}",
        request_id=request_id,
        ts=now,
        user=USER,
        provider="openai",
        model="gpt-4o-mini",
        key="k1",
        data_class="internal",
        reason="routes.chat.simple; class internal allowed to openai (up to confidential); tier default; "
        "worst case $0.000176",
    )


def worst_usd(model: CatalogModel) -> float:
    return model.cost(len(PROMPT.encode()) + 8, MAX_TOKENS)


# Each op: (fixture, batch) -> seconds spent on `batch` calls (inputs prepared outside the timed loop).
Op = Callable[[Fixture, int], float]


def op_record(fx: Fixture, batch: int) -> float:
    now = time.time()
    rows = [request_row(i, now) for i in range(batch)]
    record = fx.ledger.record
    t0 = time.perf_counter()
    for row in rows:
        record(row)
    return time.perf_counter() - t0


def _calls(fx: Fixture, batch: int) -> tuple[list[CallRow], float]:
    now = time.time()
    return [call_row(f"req_{i}", now) for i in range(batch)], now


def op_reserve(fx: Fixture, batch: int) -> float:
    """Reserve ``batch`` calls (timed), then settle them (not timed)."""
    calls, now = _calls(fx, batch)
    model, amount = fx.model, worst_usd(fx.model)
    t0 = time.perf_counter()
    for call in calls:
        if fx.budgets.reserve(call, model, amount, now) is not None:
            raise RuntimeError("a reservation was refused; the bench's limits are meant to be out of reach")
    spent = time.perf_counter() - t0
    _settle_all(fx, calls)
    return spent


def op_settle(fx: Fixture, batch: int) -> float:
    """Reserve ``batch`` calls (not timed), then settle them (timed)."""
    calls, now = _calls(fx, batch)
    for call in calls:
        fx.budgets.reserve(call, fx.model, worst_usd(fx.model), now)
    t0 = time.perf_counter()
    _settle_all(fx, calls)
    return time.perf_counter() - t0


def _settle_all(fx: Fixture, calls: list[CallRow]) -> None:
    cost = bp.to_nano(fx.model.cost(31, 120))
    for call in calls:
        fx.budgets.settle(call.id, USER, fx.model, status="ok", cost=cost, tokens_in=31, tokens_out=120)


def op_count_request(fx: Fixture, batch: int) -> float:
    day, _ = bp.period_of("day", time.time(), fx.budgets.policy.timezone)
    count = fx.ledger.count_request
    t0 = time.perf_counter()
    for _ in range(batch):
        if count(USER, day, 10**12) is None:
            raise RuntimeError("count_request refused")
    return time.perf_counter() - t0


def op_pressure(fx: Fixture, batch: int) -> float:
    now = time.time()
    pressure, model = fx.budgets.pressure, fx.model
    t0 = time.perf_counter()
    for _ in range(batch):
        pressure(USER, model, now)
    return time.perf_counter() - t0


def op_classify(fx: Fixture, batch: int) -> float:
    texts = [PROMPT]
    t0 = time.perf_counter()
    for _ in range(batch):
        classify(texts, max_tokens=MAX_TOKENS, restricted_patterns=fx.patterns, user=USER, tier="pro")
    return time.perf_counter() - t0


def op_plan(fx: Fixture, batch: int) -> float:
    texts = [PROMPT]
    c = classify(texts, max_tokens=MAX_TOKENS, restricted_patterns=fx.patterns, user=USER, tier="pro")
    t0 = time.perf_counter()
    for _ in range(batch):
        plan(
            c,
            requested=None,
            catalog=CATALOG,
            config=ROUTING,
            availability=_available,
            est_prompt_tokens=estimate_tokens(texts),
            max_tokens=MAX_TOKENS,
        )
    return time.perf_counter() - t0


def _available(model: CatalogModel) -> str | None:
    return None


def external_candidates() -> int:
    """How many external candidates the sample request's route keeps (the router runs pressure for each)."""
    texts = [PROMPT]
    c = classify(texts, max_tokens=MAX_TOKENS, user=USER, tier="pro")
    d = plan(
        c,
        requested=None,
        catalog=CATALOG,
        config=ROUTING,
        availability=_available,
        est_prompt_tokens=estimate_tokens(texts),
        max_tokens=MAX_TOKENS,
    )
    return sum(1 for cand in d.kept if cand.provider != "local")


OPS: dict[str, tuple[Op, bool, str]] = {
    # name: (op, with the 3 budget limits, what it is)
    "record": (op_record, True, "Ledger.record: one INSERT OR REPLACE of a RequestRow (every request, autocommit)"),
    "reserve": (op_reserve, True, "Budgets.reserve: BEGIN IMMEDIATE, read 3 counters, check, 3 upserts, calls row"),
    "settle": (op_settle, True, "Budgets.settle: BEGIN IMMEDIATE, update calls row, 3 counter upserts, alert check"),
    "reserve.none": (op_reserve, False, "reserve with no [budgets]: the audit (calls) row alone, one transaction"),
    "settle.none": (op_settle, False, "settle with no [budgets]: the audit row's update alone, one transaction"),
    "count_request": (op_count_request, True, "Ledger.count_request: rpd counter, one transaction (only with rpd)"),
    "pressure": (op_pressure, True, "Budgets.pressure: 3 charges, 3 counter SELECTs, thresholds (per ext. candidate)"),
    "classify": (op_classify, True, "policy.classify: 3 marker regexes + 10 restricted patterns, 70-char prompt"),
    "plan": (op_plan, True, "estimate_tokens + policy.routing.plan: alias expansion, 3 candidates, 4-model catalog"),
}


def measure_ops(root: Path, rounds: int, batch: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    fixtures = {True: Fixture(root, BUDGETS_3), False: Fixture(root, None)}
    try:
        charges = fixtures[True].budgets.charges(USER, fixtures[True].model, time.time())
        if len(charges) != 3:
            raise RuntimeError(f"expected 3 applicable limits, got {[c.label for c in charges]}")
        for name, (op, with_budgets, _) in OPS.items():
            fx = fixtures[with_budgets]
            op(fx, min(batch, 500))  # warm-up: statement cache, pages
            per_round = [op(fx, batch) / batch * 1e6 for _ in range(rounds)]
            out[name] = {
                "us": statistics.median(per_round),
                "min": min(per_round),
                "max": max(per_round),
            }
    finally:
        for fx in fixtures.values():
            fx.close()
    return out


def sums(ops: dict[str, dict[str, float]], n_ext: int) -> dict[str, float]:
    us = {k: v["us"] for k, v in ops.items()}
    policy = us["classify"] + us["plan"]
    ext = policy + n_ext * us["pressure"] + us["reserve"] + us["settle"] + us["record"]
    local = policy + us["record"]
    return {
        "policy": policy,
        "external": ext,
        "external_rpd": ext + us["count_request"],
        "external_no_budgets": policy + us["reserve.none"] + us["settle.none"] + us["record"],
        "local": local,
        "local_rpd": local + us["count_request"],
    }


# ---------------------------------------------------------------------------------------------------- sustained


def sustained(root: Path, n: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}

    def record_only(fx: Fixture) -> None:
        now = time.time()
        for i in range(n):
            fx.ledger.record(request_row(i, now))

    def reserve_settle_record(fx: Fixture) -> None:
        now = time.time()
        model, amount, cost = fx.model, worst_usd(fx.model), bp.to_nano(fx.model.cost(31, 120))
        for i in range(n):
            row = request_row(i, now)
            call = call_row(row.id, now)
            if fx.budgets.reserve(call, model, amount, now) is not None:
                raise RuntimeError("reservation refused")
            fx.budgets.settle(call.id, USER, model, status="ok", cost=cost, tokens_in=31, tokens_out=120)
            fx.ledger.record(row)

    def full_path(fx: Fixture) -> None:
        now = time.time()
        texts = [PROMPT]
        day, _ = bp.period_of("day", now, fx.budgets.policy.timezone)
        model, amount, cost = fx.model, worst_usd(fx.model), bp.to_nano(fx.model.cost(31, 120))

        def availability(m: CatalogModel) -> str | None:
            if not m.local:
                fx.budgets.pressure(USER, m, now)
            return None

        for i in range(n):
            c = classify(texts, max_tokens=MAX_TOKENS, restricted_patterns=fx.patterns, user=USER, tier="pro")
            fx.ledger.count_request(USER, day, 10**12)
            plan(
                c,
                requested=None,
                catalog=CATALOG,
                config=ROUTING,
                availability=availability,
                est_prompt_tokens=estimate_tokens(texts),
                max_tokens=MAX_TOKENS,
            )
            row = request_row(i, now)
            call = call_row(row.id, now)
            if fx.budgets.reserve(call, model, amount, now) is not None:
                raise RuntimeError("reservation refused")
            fx.budgets.settle(call.id, USER, model, status="ok", cost=cost, tokens_in=31, tokens_out=120)
            fx.ledger.record(row)

    cases: list[tuple[str, Callable[[Fixture], None]]] = [
        ("record", record_only),
        ("reserve+settle+record", reserve_settle_record),
        ("full external path", full_path),
    ]
    for name, fn in cases:
        fx = Fixture(root, BUDGETS_3)
        try:
            t0 = time.perf_counter()
            fn(fx)
            wall = time.perf_counter() - t0
            out[name] = {"per_s": n / wall, "wall_s": wall, "bytes_per_request": fx.db_bytes() / n}
        finally:
            fx.close()
    return out


# ---------------------------------------------------------------------------------------------------- end to end


def e2e_body(words: int) -> bytes:
    text = " ".join(f"word{i}" for i in range(words))
    body = {"model": DAEMON_MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 64}
    return json.dumps(body, separators=(",", ":")).encode()


async def e2e_measure(
    args: argparse.Namespace, stub_url: str, socks: dict[str, Path], pids: dict[str, int], stub_pid: int
) -> list[dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=120)
    sessions = {
        c: aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socks[c]), limit=256), timeout=timeout)
        for c in E2E_CONFIGS
    }
    headers = {"Content-Type": "application/json", "x-tiqo-user": E2E_USER}
    body = e2e_body(args.words)
    targets = {
        c: Target(c, sessions[c], "http://tiqo/v1/chat/completions", headers, {False: body}) for c in E2E_CONFIGS
    }
    results: list[dict[str, Any]] = []
    stub_session = aiohttp.ClientSession(timeout=timeout)
    try:
        for c in E2E_CONFIGS:
            warm = Sample()
            await run_segment(targets[c], False, E2E_WARMUP, 1, warm, pids[c], stub_pid)
            await run_segment(targets[c], False, 128, 64, warm, pids[c], stub_pid)
            if warm.errors:
                raise RuntimeError(f"warm-up of the {c} daemon: {warm.errors} errors: {warm.error_examples}")
        for concurrency, n in ((1, args.e2e_c1), (64, args.e2e_c64)):
            if n <= 0:
                continue
            per: dict[str, list[dict[str, Any]]] = {c: [] for c in E2E_CONFIGS}
            loads = []
            for r in range(args.e2e_rounds):
                await reset_stub(stub_session, stub_url)
                samples = {c: Sample() for c in E2E_CONFIGS}
                a, b = E2E_CONFIGS[::-1] if r % 2 else E2E_CONFIGS
                half = [n // 2, n - n // 2]
                foreign = ForeignLoad((os.getpid(), *pids.values(), stub_pid))
                for c, size in ((a, half[0]), (b, half[0]), (b, half[1]), (a, half[1])):
                    await run_segment(targets[c], False, size, concurrency, samples[c], pids[c], stub_pid)
                loads.append(foreign.cores())
                for c in E2E_CONFIGS:
                    per[c].append(summarize(samples[c], c, False, concurrency))
                if not args.json:
                    o, g = per["none"][-1], per["budgets"][-1]
                    print(
                        f"  e2e round {r + 1}/{args.e2e_rounds} c={concurrency:<2}: p50 {o['p50_ms']:.2f} -> "
                        f"{g['p50_ms']:.2f} ms, req/s {o['rps']:.0f} -> {g['rps']:.0f}, "
                        f"errors {o['errors']}/{g['errors']}",
                        file=sys.stderr,
                        flush=True,
                    )
            rows = {c: median_rows(per[c]) for c in E2E_CONFIGS}
            o, g = rows["none"], rows["budgets"]
            results.append(
                {
                    "concurrency": concurrency,
                    **rows,
                    "foreign_load_cores": max(loads),
                    "added_p50_ms": g["p50_ms"] - o["p50_ms"],
                    "p50_ratio": g["p50_ms"] / o["p50_ms"],
                    "rps_ratio": g["rps"] / o["rps"],
                    "added_daemon_cpu_us": (g["daemon_cpu_ms_per_req"] - o["daemon_cpu_ms_per_req"]) * 1e3,
                    "rounds_added_p50_ms": [
                        y["p50_ms"] - x["p50_ms"] for x, y in zip(per["none"], per["budgets"], strict=True)
                    ],
                    "rounds_rps_ratio": [y["rps"] / x["rps"] for x, y in zip(per["none"], per["budgets"], strict=True)],
                }
            )
        results.append({"check": await e2e_check(sessions)})
    finally:
        for s in (*sessions.values(), stub_session):
            await s.close()
    return results


async def e2e_check(sessions: dict[str, aiohttp.ClientSession]) -> dict[str, Any]:
    """What the daemons' own ledgers say: rows written, limits active, nothing left reserved."""
    out: dict[str, Any] = {}
    for c, s in sessions.items():
        async with s.get("http://tiqo/tiqo/usage", params={"since": "1h", "by": "user"}) as r:
            usage = await r.json()
        async with s.get("http://tiqo/tiqo/budget") as r:
            budget = await r.json()
        out[c] = {
            "ledger_rows": usage["total"]["requests"],
            "external_rows": usage["total"]["external"],
            "limits": len(budget["limits"]),
            "reserved_usd": budget["reserved_usd"],
            "spent_usd": max((row["spent_usd"] for row in budget["limits"]), default=0.0),
            "budget_error": budget["error"],
        }
    return out


def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    homes = {c: Path(tempfile.mkdtemp(prefix=f"tqle{c[0]}", dir="/tmp")) for c in E2E_CONFIGS}
    stub = UpstreamProcess()
    daemons: dict[str, subprocess.Popen[bytes]] = {}
    t0 = time.perf_counter()
    try:
        stub.start()
        assert stub.pid is not None
        for c, home in homes.items():
            write_home(home, stub.url)
            if c == "budgets":
                with (home / "config" / "config.toml").open("a") as fh:
                    fh.write(E2E_BUDGETS)
            daemons[c] = start_daemon(home, ["-m", "tiqo.daemon"])
        with asyncio.Runner(loop_factory=factory) as runner:
            pids = {}
            for c in E2E_CONFIGS:
                health = runner.run(wait_healthy(daemons[c], homes[c] / "run" / "tiqo.sock", homes[c]))
                pids[c] = int(health["pid"])
            socks = {c: homes[c] / "run" / "tiqo.sock" for c in E2E_CONFIGS}
            results = runner.run(e2e_measure(args, stub.url, socks, pids, stub.pid))
    finally:
        for proc in daemons.values():
            stop_proc(proc)
        stub.stop()
        for home in homes.values():
            shutil.rmtree(home, ignore_errors=True)
    check = results.pop()["check"]
    return {"scenarios": results, "check": check, "wall_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------- report


def fs_type(path: Path) -> str:
    best = ""
    fstype = "?"
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if str(path.resolve()).startswith(mount) and len(mount) > len(best):
            best, fstype = mount, part.fstype
    return fstype


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=20000, help="requests per sustained-throughput run")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per operation (the median is reported)")
    ap.add_argument("--batch", type=int, default=2000, help="calls per round per operation")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the temp databases go")
    ap.add_argument(
        "--daemon",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure end to end through two real daemons (budgets vs none; about 30-60 s)",
    )
    ap.add_argument("--e2e-c1", type=int, default=400, help="end-to-end requests per config per round at c=1")
    ap.add_argument("--e2e-c64", type=int, default=1000, help="end-to-end requests per config per round at c=64")
    ap.add_argument("--e2e-rounds", type=int, default=3, help="end-to-end rounds (alternating order); medians")
    ap.add_argument("--words", type=int, default=20, help="words in the end-to-end prompt")
    ap.add_argument("--json", action="store_true", help="print all numbers as JSON")
    args = ap.parse_args()

    env = {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cpus": len(psutil.Process().cpu_affinity() or []) or os.cpu_count(),
        "dir": str(args.dir),
        "fs": fs_type(args.dir),
        "rounds": args.rounds,
        "batch": args.batch,
        "n": args.n,
    }
    n_ext = external_candidates()
    progress("1/3 per-operation costs ...")
    ops = measure_ops(args.dir, args.rounds, args.batch)
    total = sums(ops, n_ext)
    progress(f"2/3 sustained throughput, {args.n} requests x 3 ...")
    sus = sustained(args.dir, args.n)
    e2e: dict[str, Any] | None = None
    if args.daemon:
        progress("3/3 end to end through two daemons ...")
        try:
            e2e = end_to_end(args)
        except Exception as exc:  # keep parts 1 and 2; say why part 3 is missing
            e2e = {"error": f"{type(exc).__name__}: {exc}"}
    if args.json:
        print(json.dumps({"env": env, "ops_us": ops, "sums_us": total, "sustained": sus, "e2e": e2e}, indent=2))
    else:
        report(env, ops, total, n_ext, sus, e2e)
    return 1 if e2e is not None and "error" in e2e else 0


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def report(
    env: dict[str, Any],
    ops: dict[str, dict[str, float]],
    total: dict[str, float],
    n_ext: int,
    sus: dict[str, dict[str, float]],
    e2e: dict[str, Any] | None,
) -> None:
    print(
        f"ledger bench: python {env['python']}, SQLite {env['sqlite']}, {env['cpus']} CPUs, "
        f"databases in {env['dir']} ({env['fs']}), WAL + synchronous=NORMAL as the daemon opens them"
    )
    print()
    print(f"1. per operation, us (median of {env['rounds']} rounds x {env['batch']} calls; min-max of rounds)")
    for name, (_, _, what) in OPS.items():
        r = ops[name]
        print(f"  {name:<14} {r['us']:8.1f}  ({r['min']:.1f}-{r['max']:.1f})  {what}")
    print()
    print("  sums, us per request:")
    lines = [
        ("policy", "classify + plan (every request)"),
        ("external", f"external request: policy + {n_ext} x pressure + reserve + settle + record (3 limits)"),
        ("external_rpd", "the same + count_request (a tier or user with an rpd limit)"),
        ("external_no_budgets", "external request with no [budgets]: policy + audit row reserve/settle + record"),
        ("local", "local request: policy + record (budgets never touch local models)"),
        ("local_rpd", "local request + count_request (rpd limit)"),
    ]
    for key, what in lines:
        print(f"  {key:<20} {total[key]:8.1f}  {what}")
    print()
    print(f"2. sustained, one thread, {env['n']} requests on a fresh database each")
    explain = {
        "record": "rows/s Ledger.record alone",
        "reserve+settle+record": "external requests/s: reserve + settle (3 limits) + record",
        "full external path": "external requests/s: classify + count_request + plan (pressure per ext. candidate) "
        "+ reserve + settle + record",
    }
    for name, r in sus.items():
        print(
            f"  {name:<22} {r['per_s']:9.0f} /s  ({1e6 / r['per_s']:.1f} us each, {r['bytes_per_request']:.0f} "
            f"bytes of database per request)  {explain[name]}"
        )
    if e2e is not None and "error" in e2e:
        print()
        print(f"3. end to end: FAILED ({e2e['error']})")
    elif e2e is not None:
        print()
        print(
            "3. end to end: same JSON chat requests through two daemons in front of one stub provider, "
            "no [budgets] vs 5 applicable limits (both write ledger + audit rows)"
        )
        header = f"  {'scenario':<8} {'config':<8} {'N':>6} {'err':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} "
        header += f"{'daemon cpu ms/req':>17}"
        print(header)
        for s in e2e["scenarios"]:
            for c in E2E_CONFIGS:
                r = s[c]
                print(
                    f"  {'c=' + str(s['concurrency']):<8} {c:<8} {r['requests']:>6} {r['errors']:>4} "
                    f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['rps']:7.0f} {r['daemon_cpu_ms_per_req']:17.3f}"
                )
            rounds = ", ".join(f"{x:+.3f}" for x in s["rounds_added_p50_ms"])
            print(
                f"  {'':<8} budgets: p50 {s['added_p50_ms']:+.3f} ms (x{s['p50_ratio']:.3f}; rounds {rounds}), "
                f"req/s x{s['rps_ratio']:.3f}, daemon CPU {s['added_daemon_cpu_us']:+.0f} us/req; "
                f"other processes' load {s['foreign_load_cores']:.2f} CPUs"
            )
            for c in E2E_CONFIGS:
                for ex in s[c]["error_examples"]:
                    print(f"  {'':<8} {c} error: {ex}")
        for c, chk in e2e["check"].items():
            print(
                f"  check {c:<8}: {chk['ledger_rows']} ledger rows ({chk['external_rows']} external), "
                f"{chk['limits']} limits, ${chk['reserved_usd']:g} still reserved, max spent ${chk['spent_usd']:.4f}"
                + (f", budget error: {chk['budget_error']}" if chk["budget_error"] else "")
            )
        print(f"  (end-to-end part took {e2e['wall_s']:.0f} s)")
        worst = max((s["foreign_load_cores"] for s in e2e["scenarios"]), default=0.0)
        if worst > 0.2:
            print(
                f"  WARNING: other processes used up to {worst:.2f} of {env['cpus']} CPUs meanwhile; "
                "end-to-end numbers are inflated - rerun on a quiet machine"
            )
    print()
    print("summary")
    print(
        f"  policy + ledger per external request   {total['external']:7.1f} us  (3 limits; "
        f"{total['external_rpd']:.1f} us with an rpd limit too, "
        f"{total['external_no_budgets']:.1f} us with no [budgets])"
    )
    print(f"  policy + ledger per local request      {total['local']:7.1f} us")
    print(f"  ledger, record alone                   {sus['record']['per_s']:7.0f} rows/s")
    print(f"  ledger, reserve + settle + record      {sus['reserve+settle+record']['per_s']:7.0f} requests/s")
    print(f"  whole per-request policy + ledger path {sus['full external path']['per_s']:7.0f} requests/s")
    if e2e is not None and "error" not in e2e:
        for s in e2e["scenarios"]:
            o, g = s["none"], s["budgets"]
            print(
                f"  e2e c={s['concurrency']:<2} budgets vs none: p50 {o['p50_ms']:.2f} -> {g['p50_ms']:.2f} ms "
                f"(x{s['p50_ratio']:.3f}), req/s {o['rps']:.0f} -> {g['rps']:.0f} (x{s['rps_ratio']:.3f}), "
                f"daemon CPU {s['added_daemon_cpu_us']:+.0f} us/req"
            )


if __name__ == "__main__":
    sys.exit(main())
