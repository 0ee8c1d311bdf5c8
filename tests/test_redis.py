"""Budget counters in Redis (state.backend = redis), against real redis-server processes this file starts on free
ports (no system service): the same semantics as the SQLite counters, atomic under concurrency, shared by several
daemons, and a clear error when Redis is down."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import home_env, short_home, start_daemon
from tests.test_gateway import write_home
from tests.upstreams import Upstream
from tiqo.core.errors import ConfigError, TiqoError
from tiqo.daemon.accounting.ledger import CallRow, Counters, Ledger, SqliteCounters
from tiqo.daemon.state.redis_counters import DAY_TTL_S, MONTH_TTL_S, RedisCounters
from tiqo.daemon.state.store import Store
from tiqo.policy.budget import Charge, Limit, Policy, Refusal, Usage, to_nano

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs it)")

NOW = 1_795_000_000.0  # 2026-11-18, a fixed clock: every charge lands in the same day and month
POLICY = Policy(
    limits=(
        Limit("global", "", "day", 1.0),
        Limit("user", "alice", "day", 0.5),
        Limit("user", "carol", "day", 0.0),
        Limit("provider", "alpha", "month", 2.0),
        Limit("model", "other-m", "day", 0.01),  # never applies below
    )
)


def charges(user: str, provider: str = "alpha", model: str = "alpha-m", policy: Policy = POLICY) -> list[Charge]:
    return policy.charges(user, provider, model, NOW)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisProc:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        return redis.Redis(port=self.port, decode_responses=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis() -> RedisProc:
    """A private redis-server on a free port: no persistence, its own working directory."""
    assert REDIS_SERVER is not None
    for _ in range(3):  # another process may take the free port before redis-server binds it
        port, workdir = free_port(), Path(tempfile.mkdtemp(prefix="tqredis"))
        cmd = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        cmd += ["--dir", str(workdir), "--logfile", str(workdir / "redis.log")]
        r = RedisProc(port, subprocess.Popen(cmd, cwd=workdir), workdir)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and r.proc.poll() is None:
            with contextlib.suppress(redis.exceptions.ConnectionError):
                if r.client().ping():
                    return r
            time.sleep(0.02)
        r.stop()
    raise RuntimeError("redis-server did not start")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisProc]:
    r = start_redis()
    yield r
    r.stop()


@pytest.fixture
def rsrv(server: RedisProc) -> RedisProc:
    """The module's redis-server, emptied for each test."""
    server.client().flushall()
    return server


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tqtest"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sqlite_counters(path: Path) -> SqliteCounters:
    return SqliteCounters(Store(path / "counters.db").db)


@pytest.fixture(params=["sqlite", "redis"])
def counters(request: pytest.FixtureRequest, workdir: Path) -> Counters:
    if request.param == "sqlite":
        return sqlite_counters(workdir)
    return RedisCounters(request.getfixturevalue("rsrv").url)


def keys_of(*lists: list[Charge]) -> list[tuple[str, str]]:
    return sorted({c.key for cs in lists for c in cs})


# ------------------------------------------------------------------ the same semantics as SQLite


def run_sequence(c: Counters) -> list[Any]:
    """A day of reservations and settlements; every result, and the counters after each step."""
    a, b, carol = charges("alice"), charges("bob"), charges("carol")
    all_keys = keys_of(a, b, carol)
    out: list[Any] = []

    def step(result: Any) -> None:
        out.append(result)
        out.append(c.usage(all_keys))

    step(c.reserve("c1", a, to_nano(0.3)))  # fits every limit
    step(c.reserve("c2", a, to_nano(0.3)))  # alice: 0.3 + 0.3 > 0.5
    step(c.reserve("c3", b, to_nano(0.4)))  # bob has no user limit
    step(c.reserve("c4", b, to_nano(0.4)))  # global: 0.7 + 0.4 > 1.0
    step(c.settle("c1", [x.key for x in a], to_nano(0.3), to_nano(0.1)))  # cost less than the worst case
    step(c.reserve("c4", b, to_nano(0.4)))  # global: 0.5 + 0.4 fits now
    step(c.settle("c3", [x.key for x in b], to_nano(0.4), 0))  # a call that failed costs nothing
    step(c.reserve("c5", carol, to_nano(0.000001)))  # a zero budget allows no external call
    step(c.reserve("c6", carol, 0))  # … except one that costs nothing
    step(c.settle("c6", [x.key for x in carol], 0, 0))
    step(c.reserve("c7", b, to_nano(0.5)))  # global: 0.1 spent + 0.4 reserved + 0.5 is exactly the limit: fits
    step(c.settle("c4", [x.key for x in b], to_nano(0.4), to_nano(0.4)))
    step(c.settle("c7", [x.key for x in b], to_nano(0.5), to_nano(0.5)))
    step(c.reserve("c9", b, 1))  # one nano-dollar past the limit
    step(c.reserve("c8", [], to_nano(5)))  # a call no limit applies to
    step(c.settle("c8", [], to_nano(5), to_nano(5)))
    return out


def test_redis_and_sqlite_counters_give_identical_results(rsrv: RedisProc, workdir: Path) -> None:
    lite = run_sequence(sqlite_counters(workdir))
    red = run_sequence(RedisCounters(rsrv.url))
    assert red == lite
    a, b, carol = charges("alice"), charges("bob"), charges("carol")
    # spot checks of what both agree on
    assert lite[0] is None
    assert lite[2] == Refusal(a[1], to_nano(0.3), to_nano(0.3))  # the user limit, at alice's 0.3
    assert lite[4] is None
    assert lite[6] == Refusal(b[0], to_nano(0.7), to_nano(0.4))  # the global limit, at 0.3 + 0.4
    assert lite[8] == {k: (0, to_nano(0.1)) for k in keys_of(a)}
    assert lite[14] == Refusal(carol[1], 0, to_nano(0.000001))
    assert lite[16] is None
    assert lite[20] is None
    assert lite[-6] == Refusal(b[0], to_nano(1.0), 1)
    final = lite[-1]
    assert final[b[0].key] == Usage(to_nano(1.0), 0)  # 0.1 + 0 + 0.4 + 0.5
    assert final[a[1].key] == Usage(to_nano(0.1), 0)
    assert final[b[1].key] == Usage(to_nano(1.0), 0)  # provider alpha, monthly
    assert lite[-2] == {} and lite[-4] is None


@pytest.mark.parametrize("tight", [0, 1, 2])
def test_a_refusal_names_the_charge_that_does_not_fit_and_reserves_nothing(counters: Counters, tight: int) -> None:
    limits = [Limit("global", "", "day", 10.0), Limit("user", "*", "day", 10.0), Limit("provider", "*", "month", 10.0)]
    limits[tight] = Limit(limits[tight].scope, limits[tight].name, limits[tight].period, 1.0)
    policy = Policy(limits=tuple(limits))
    cs = policy.charges("dan", "alpha", "alpha-m", NOW)
    assert counters.reserve("c1", cs, to_nano(0.75)) is None
    before = counters.usage([c.key for c in cs])
    refusal = counters.reserve("c2", cs, to_nano(0.5))
    assert refusal == Refusal(cs[tight], to_nano(0.75), to_nano(0.5))
    assert refusal.charge.limit.usd == 1.0 and "budget of $1 (" in refusal.message
    assert counters.usage([c.key for c in cs]) == before  # all or nothing


def test_settle_happens_once_per_reservation(rsrv: RedisProc) -> None:
    c = RedisCounters(rsrv.url)
    cs = charges("alice")
    keys = [x.key for x in cs]
    assert c.reserve("c1", cs, to_nano(0.2)) is None
    assert c.reserve("c1", cs, to_nano(0.2)) is None  # a retried reserve (lost reply) reserves once
    assert c.usage(keys)[keys[0]] == Usage(0, to_nano(0.2))
    assert set(c.reservations()) == {"c1"}
    assert c.reservations()["c1"]["amount"] == to_nano(0.2)
    assert [tuple(k) for k in c.reservations()["c1"]["keys"]] == keys
    moved = c.settle("c1", keys, to_nano(0.2), to_nano(0.15))
    assert moved == {k: (0, to_nano(0.15)) for k in keys}
    assert c.settle("c1", keys, to_nano(0.2), to_nano(0.15)) == {}  # the second settle is a no-op
    assert c.usage(keys)[keys[0]] == Usage(to_nano(0.15), 0)
    assert c.reservations() == {}
    # a call that never reserved here (refused, or a crash before Redis saw it) settles to nothing
    assert c.settle("never", [("global", "day:2026-11-18"), ("user:zed", "day:2026-11-18")], 5, 5) == {}
    assert rsrv.client().exists("tiqo:budget:user:zed:day:2026-11-18") == 0


def test_two_limits_on_one_counter_charge_it_once(rsrv: RedisProc) -> None:
    """`users.alice` and `users."*"` both count alice's spend in the counter user:alice: charged once, checked
    against both caps."""
    policy = Policy(limits=(Limit("user", "alice", "day", 1.0), Limit("user", "*", "day", 0.5)))
    cs = charges("alice", policy=policy)
    assert cs[0].key == cs[1].key
    c = RedisCounters(rsrv.url)
    assert c.reserve("c1", cs, to_nano(0.2)) is None
    assert c.usage([cs[0].key])[cs[0].key] == Usage(0, to_nano(0.2))
    assert c.settle("c1", [x.key for x in cs], to_nano(0.2), to_nano(0.1)) == {cs[0].key: (0, to_nano(0.1))}
    assert c.usage([cs[0].key])[cs[0].key] == Usage(to_nano(0.1), 0)
    assert c.reserve("c2", cs, to_nano(0.45)) == Refusal(cs[1], to_nano(0.1), to_nano(0.45))  # the tighter cap


def test_counters_expire_and_reservations_do_not(rsrv: RedisProc) -> None:
    c = RedisCounters(rsrv.url)
    cs = charges("alice")
    assert c.reserve("c1", cs, 7) is None
    r = rsrv.client()
    assert DAY_TTL_S - 60 < r.ttl("tiqo:budget:global:day:2026-11-18") <= DAY_TTL_S
    assert MONTH_TTL_S - 60 < r.ttl("tiqo:budget:provider:alpha:month:2026-11") <= MONTH_TTL_S
    assert r.ttl("tiqo:resv") == -1
    assert r.hgetall("tiqo:budget:user:alice:day:2026-11-18") == {"spent": "0", "reserved": "7"}
    c.settle("c1", [x.key for x in cs], 7, 3)
    assert DAY_TTL_S - 60 < r.ttl("tiqo:budget:user:alice:day:2026-11-18") <= DAY_TTL_S


def test_periods_lists_every_subject_of_a_star_limit(rsrv: RedisProc) -> None:
    policy = Policy(limits=(Limit("user", "*", "day", 5.0),))
    c = RedisCounters(rsrv.url)
    for i, user in enumerate(["ann", "bob", "we*ird[1]"]):
        assert c.reserve(f"c{i}", charges(user, policy=policy), i + 1) is None
    rsrv.client().hset("tiqo:budget:users-not:day:2026-11-18", "spent", 1)
    assert sorted(c.periods("user:")) == [
        ("user:ann", "day:2026-11-18", 0, 1),
        ("user:bob", "day:2026-11-18", 0, 2),
        ("user:we*ird[1]", "day:2026-11-18", 0, 3),
    ]
    assert c.periods("user:we*") == [("user:we*ird[1]", "day:2026-11-18", 0, 3)]


# ------------------------------------------------------------------ concurrency


def test_concurrent_reservations_never_pass_the_cap(rsrv: RedisProc) -> None:
    cap, amount = 1.0, to_nano(0.07)  # room for exactly 14
    policy = Policy(limits=(Limit("global", "", "day", cap), Limit("user", "*", "day", 100.0)))
    threads, each = 32, 8
    barrier = threading.Barrier(threads)

    def worker(t: int) -> list[str]:
        c = RedisCounters(rsrv.url)  # its own connection pool, like another daemon
        cs = policy.charges(f"u{t % 5}", "alpha", "alpha-m", NOW)
        barrier.wait()
        return [f"t{t}-{i}" for i in range(each) if c.reserve(f"t{t}-{i}", cs, amount) is None]

    with ThreadPoolExecutor(threads) as pool:
        won = [call for calls in pool.map(worker, range(threads)) for call in calls]
    assert len(won) == to_nano(cap) // amount == 14
    c = RedisCounters(rsrv.url)
    g = ("global", "day:2026-11-18")
    assert c.usage([g])[g] == Usage(0, 14 * amount) and 14 * amount <= to_nano(cap)
    assert sorted(c.reservations()) == sorted(won)
    assert sum(reserved for _, _, _, reserved in c.periods("user:")) == 14 * amount

    # settling concurrently (each call twice, from two threads) moves each reservation exactly once
    def settle(call: str) -> int:
        user = f"u{int(call[1:].split('-')[0]) % 5}"
        keys = [x.key for x in policy.charges(user, "alpha", "alpha-m", NOW)]
        return len(RedisCounters(rsrv.url).settle(call, keys, amount, to_nano(0.05)))

    with ThreadPoolExecutor(16) as pool:
        moved = list(pool.map(settle, won + won))
    assert sum(moved) == 14 * 2  # two counters per call, once
    assert c.usage([g])[g] == Usage(14 * to_nano(0.05), 0)
    assert c.reservations() == {}


# ------------------------------------------------------------------ two daemons, one Redis


def call_row(call_id: str, user: str = "alice") -> CallRow:
    return CallRow(call_id, "req_" + call_id, NOW, user, "alpha", "alpha-m", "k1", "public", "allowed to alpha")


def statuses(ledger: Ledger) -> dict[str, tuple[str, int]]:
    rows = ledger.db.execute("SELECT id, status, cost_nusd FROM calls").fetchall()
    return {i: (s, c) for i, s, c in rows}


def test_two_daemons_share_one_budget_and_reconcile_only_their_own_calls(rsrv: RedisProc, workdir: Path) -> None:
    policy = Policy(limits=(Limit("global", "", "day", 1.0),))
    cs = policy.charges("alice", "alpha", "alpha-m", NOW)
    g = cs[0].key
    (workdir / "a").mkdir()
    (workdir / "b").mkdir()
    store_a, store_b = Store(workdir / "a" / "tiqo.db"), Store(workdir / "b" / "tiqo.db")
    a = Ledger(store_a, counters=RedisCounters(rsrv.url))
    b = Ledger(store_b, counters=RedisCounters(rsrv.url))

    assert a.reserve(call_row("a1"), cs, to_nano(0.3)) is None
    assert b.reserve(call_row("b1"), cs, to_nano(0.3)) is None
    assert a.reserve(call_row("a2"), cs, to_nano(0.3)) is None
    refusal = b.reserve(call_row("b2"), cs, to_nano(0.3))  # 0.9 + 0.3 > 1.0: daemon b sees a's reservations
    assert refusal == Refusal(cs[0], to_nano(0.9), to_nano(0.3))
    assert "b2" not in statuses(b)  # a refused call leaves no row
    assert b.usage_of([g])[g] == a.usage_of([g])[g] == Usage(0, to_nano(0.9))

    moved = a.settle("a1", status="ok", cost=to_nano(0.1))
    assert moved == {g: (0, to_nano(0.1))}
    assert a.settle("a1", status="ok", cost=to_nano(0.1)) == {}  # idempotent
    assert b.usage_of([g])[g] == Usage(to_nano(0.1), to_nano(0.6))

    # daemon a dies with a2 in flight, and with a3 written as "reserving" before Redis ever saw it
    a3 = call_row("a3")
    a3.reserved_nusd, a3.charges = to_nano(0.3), [g]
    a._insert_call(a3, status="reserving")
    store_a.close()
    a = Ledger(Store(workdir / "a" / "tiqo.db"), counters=RedisCounters(rsrv.url))
    assert a.reconcile() == 2
    st = statuses(a)
    assert st["a2"] == ("interrupted", to_nano(0.3)) and st["a3"][0] == "interrupted"
    # a2 is charged at its worst case; a3 never reserved anything; b1 (the other daemon's call) is untouched
    assert b.usage_of([g])[g] == Usage(to_nano(0.4), to_nano(0.3))
    assert set(RedisCounters(rsrv.url).reservations()) == {"b1"}
    assert statuses(b)["b1"] == ("pending", 0)
    assert b.settle("b1", status="ok", cost=to_nano(0.2)) == {g: (to_nano(0.4), to_nano(0.6))}
    assert a.usage_of([g])[g] == Usage(to_nano(0.6), 0)
    assert a.reconcile() == 0 and b.reconcile() == 0


# ------------------------------------------------------------------ Redis down


def test_redis_down_at_start_is_a_clear_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(TiqoError) as info:
        RedisCounters(f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    assert time.monotonic() - t0 < 5
    err = info.value
    assert "cannot reach the Redis server" in err.message and err.code == "state_unavailable"
    assert err.hint is not None and "redis-server" in err.hint and "state.backend = sqlite" in err.hint
    assert "s3cret" not in err.message and "***" in err.message


def test_redis_going_away_is_a_clear_error() -> None:
    r = start_redis()
    try:
        c = RedisCounters(r.url)
        cs = charges("alice")
        assert c.reserve("c1", cs, 5) is None
    finally:
        r.stop()
    calls: list[Callable[[], Any]] = [
        lambda: c.reserve("c2", cs, 5),
        lambda: c.settle("c1", [x.key for x in cs], 5, 5),
        lambda: c.usage([x.key for x in cs]),
    ]
    for call in calls:
        with pytest.raises(TiqoError) as info:
            call()
        assert info.value.hint is not None and "state.backend = sqlite" in info.value.hint


def test_a_bad_redis_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        RedisCounters("http://127.0.0.1:6379")
    assert info.value.param == "state.redis_url"


def test_the_daemon_will_not_start_without_its_redis() -> None:
    home = short_home()
    try:
        env = home_env(home, TIQO_STATE_BACKEND="redis", TIQO_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
        proc = subprocess.run(
            [sys.executable, "-m", "tiqo.daemon"], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 2, proc.stderr
        assert "cannot reach the Redis server" in proc.stderr
        assert "hint: start redis-server" in proc.stderr and "state.backend = sqlite" in proc.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ------------------------------------------------------------------ end to end: two daemon processes


def test_two_daemon_processes_spend_one_shared_budget(rsrv: RedisProc) -> None:
    up = Upstream().start()
    up.delay_s = 2.0  # every call holds its reservation while the burst from both daemons arrives
    # worst case per call: (11 bytes + 8) prompt tokens at $1/M + 100 completion tokens at $2/M = $0.000219
    worst = (19 * 1.0 + 100 * 2.0) / 1e6
    limit = round(worst * 10 + worst / 2, 9)  # room for 10 worst cases, not 11, across both daemons
    daemons, homes = [], []
    try:
        for _ in range(2):
            home = short_home()
            homes.append(home)
            write_home(home, up, up, {"budgets": {"global": {"daily": limit}}})
            daemons.append(start_daemon(home, TIQO_STATE_BACKEND="redis", TIQO_REDIS_URL=rsrv.url))
        clients = [d.client(60) for d in daemons]

        def one(i: int) -> httpx.Response:
            body = {"model": "alpha-m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 100}
            return clients[i % 2].post("/v1/chat/completions", json=body)

        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(one, range(40)))
        ok = [i for i, r in enumerate(answers) if r.status_code == 200]
        assert len(ok) == 10, [r.text for r in answers if r.status_code != 200][:3]
        assert {r.status_code for r in answers if r.status_code != 200} == {429}
        billed = sum((2 * 1.0 + answers[i].json()["usage"]["completion_tokens"] * 2.0) / 1e6 for i in ok)
        for d in daemons:
            budget = d.client().get("/tiqo/budget").json()
            (row,) = budget["limits"]
            assert row["reserved_usd"] == 0
            assert row["spent_usd"] == pytest.approx(billed, abs=1e-9)  # what both daemons spent, in each
        assert RedisCounters(rsrv.url).reservations() == {}
    finally:
        for d in daemons:
            d.stop()
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)
        up.stop()
