"""Jobs and usage across daemons (state.backend = redis), against real redis-server and real daemon processes: a job
that daemon A runs is seen with rising progress from daemon B, cancelled from B, and its files asked of B get a 409
naming A's host; a restart marks only the restarted daemon's own jobs interrupted; Redis away fails submits closed
while reads answer from the local view; usage sums in Redis agree on every daemon (the three-daemon burst in
test_shared_state.py checks them through `tiqo usage --json`)."""

from __future__ import annotations

import datetime as dt
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProc, wait_for
from tests.test_jobs import ALICE, BOB, start_jobs_daemon, submit
from tests.test_redis import (  # noqa: F401 (fixtures)
    NOW,
    REDIS_SERVER,
    RedisProc,
    call_row,
    charges,
    rsrv,
    server,
    start_redis,
)
from tests.test_shared_state import restart_on
from tiqo.core.errors import BadRequest, StateUnavailable
from tiqo.daemon.accounting.ledger import Ledger, RequestRow
from tiqo.daemon.state.redis_counters import RedisCounters
from tiqo.daemon.state.redis_usage import TTL_S, RedisUsage
from tiqo.daemon.state.store import Store

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (.ci/run installs it)")


def shared_env(url: str) -> dict[str, str]:
    return {"TIQO_STATE_BACKEND": "redis", "TIQO_REDIS_URL": url, "TIQO_REDIS_PREFIX": "t19j"}


@pytest.fixture
def pair(rsrv: RedisProc) -> Iterator[tuple[DaemonProc, DaemonProc]]:  # noqa: F811
    a, b = start_jobs_daemon(**shared_env(rsrv.url)), start_jobs_daemon(**shared_env(rsrv.url))
    yield a, b
    for d in (a, b):
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


def test_a_job_on_one_daemon_is_seen_cancelled_and_pointed_to_from_another(
    pair: tuple[DaemonProc, DaemonProc],
    rsrv: RedisProc,  # noqa: F811
) -> None:
    a, b = pair
    ha, hb = a.client(), b.client()
    job = submit(ha, 400, 0.05, ALICE, kind="video")
    base = f"/tiqo/jobs/{job['id']}"
    seen: list[int] = []
    wait_for(lambda: seen.append(hb.get(base, headers=ALICE).json()["step"]) or seen[-1] >= 20)
    assert seen == sorted(seen) and len(set(seen)) >= 3, seen  # B follows A's progress as it rises
    video = hb.get(f"/v1/videos/{job['id']}", headers=ALICE).json()
    assert video["status"] == "in_progress" and video["progress"] >= 5
    assert [j["id"] for j in hb.get("/tiqo/jobs", headers=ALICE).json()["data"]] == [job["id"]]
    # another user: B answers as A does, 404 everywhere, nothing listed
    for method, path in (("GET", base), ("POST", base + "/cancel"), ("GET", base + "/files/out.txt")):
        r = hb.request(method, path, headers=BOB)
        assert r.status_code == 404, (method, path, r.text)
    assert hb.get(f"/v1/videos/{job['id']}", headers=BOB).status_code == 404
    assert hb.get("/tiqo/jobs", headers=BOB).json()["data"] == []
    # cancelled from B: A's job stops at a step boundary, both daemons say so
    cancelled = hb.post(base + "/cancel", headers=ALICE).json()
    assert cancelled["status"] == "cancelled", cancelled
    assert ha.get(base, headers=ALICE).json()["status"] == "cancelled"
    assert cancelled["step"] < 400
    # a finished job: A serves its files; B says where they are
    done = submit(ha, 3, 0.01, ALICE, kind="video")
    finished = hb.get(f"/tiqo/jobs/{done['id']}/wait", params={"timeout": 30}, headers=ALICE).json()
    assert finished["status"] == "completed" and finished["progress"] == 100
    assert ha.get(f"/tiqo/jobs/{done['id']}/files/out.txt", headers=ALICE).text == "3 steps\n"
    host = rsrv.client().hget(f"t19j:job:{{{done['id']}}}", "host").strip('"')
    for path in (f"/tiqo/jobs/{done['id']}/files/out.txt", f"/v1/videos/{done['id']}/content"):
        r = hb.get(path, headers=ALICE)
        err = r.json()["error"]
        assert r.status_code == 409 and err["code"] == "job_elsewhere", r.text
        assert host in err["message"] and "proxy" in err["hint"]
    r = hb.delete(f"/tiqo/jobs/{done['id']}", headers=ALICE)
    assert r.status_code == 409 and r.json()["error"]["hint"]
    assert ha.delete(f"/tiqo/jobs/{done['id']}", headers=ALICE).status_code == 200  # the owner removes it
    assert hb.get(f"/tiqo/jobs/{done['id']}", headers=ALICE).status_code == 404
    assert all(rsrv.client().ttl(k) > 0 for k in rsrv.client().scan_iter("t19j:*"))  # expiry on every key


def test_restart_marks_only_its_own_jobs_and_redis_away_fails_submits_closed() -> None:
    r = start_redis()
    a, b = start_jobs_daemon(**shared_env(r.url)), start_jobs_daemon(**shared_env(r.url))
    try:
        mine = submit(a.client(), 1000, 0.05, ALICE)
        theirs = submit(b.client(), 1000, 0.05, ALICE)
        wait_for(lambda: a.client().get(f"/tiqo/jobs/{mine['id']}", headers=ALICE).json()["step"] >= 2)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        a.stop()
        a = start_jobs_daemon(a.home, **shared_env(r.url))
        for d in (a, b):
            row = d.client().get(f"/tiqo/jobs/{mine['id']}", headers=ALICE).json()
            assert row["status"] == "failed" and row["error"]["code"] == "interrupted", row
            assert d.client().get(f"/tiqo/jobs/{theirs['id']}", headers=ALICE).json()["status"] == "in_progress"
        assert b.client().post(f"/tiqo/jobs/{theirs['id']}/cancel", headers=ALICE).json()["status"] == "cancelled"
        r.proc.kill()
        r.proc.wait(10)
        refused = a.client().post("/test/jobs", json={"steps": 1}, headers=ALICE)
        assert refused.status_code == 503 and "retry-after" in refused.headers
        assert (
            refused.json()["error"]["code"] == "state_unavailable" and "redis-server" in refused.json()["error"]["hint"]
        )
        own = a.client().get(f"/tiqo/jobs/{mine['id']}", headers=ALICE)  # the local view answers for A's own job
        assert own.status_code == 200 and own.json()["status"] == "failed"
        other = b.client().get(f"/tiqo/jobs/{mine['id']}", headers=ALICE)  # B never had it: a clear 503
        assert other.status_code == 503 and other.json()["error"]["hint"]
        r2 = restart_on(r.port)  # empty: a Redis that lost everything
        try:
            again = submit(a.client(), 2, 0.01, ALICE)
            done = b.client().get(f"/tiqo/jobs/{again['id']}/wait", params={"timeout": 30}, headers=ALICE).json()
            assert done["status"] == "completed"
        finally:
            r2.stop()
    finally:
        for d in (a, b):
            d.stop()
            shutil.rmtree(d.home, ignore_errors=True)
        r.stop()


# ------------------------------------------------------------------ usage sums, in process


def row(i: int, user: str = "alice", provider: str = "alpha", ts: float | None = None, **kw: Any) -> RequestRow:
    base = {"tokens_in": 10, "tokens_out": 5, "cost_nusd": 3000, "latency_ms": 20.0, "task": "chat"}
    return RequestRow(
        id=f"r{i}",
        ts=ts or time.time(),
        user=user,
        provider=provider,
        model=provider + "-m",
        **{
            **base,
            **kw,
        },
    )


def test_usage_sums_agree_across_ledgers_and_local_rows_stay_local(rsrv: RedisProc, tmp_path: Path) -> None:  # noqa: F811
    ledgers = [Ledger(Store(tmp_path / f"{n}.db"), sums=RedisUsage(RedisCounters(rsrv.url))) for n in "abc"]
    yesterday = time.time() - 86400
    for i in range(30):
        ledgers[i % 3].record(row(i, user="bob" if i % 5 == 0 else "alice"))
    ledgers[0].record(row(99, provider="local", ts=yesterday, outcome="error", cache="hit", audio_s=1.5))
    views = [ledger.cluster_usage(time.time() - 2 * 86400, "provider") for ledger in ledgers]
    assert views[0] == views[1] == views[2]
    total = views[0]["total"]
    assert (total["requests"], total["tokens_in"], total["tokens_out"]) == (31, 310, 155)
    assert total["cost_usd"] == pytest.approx(31 * 3e-6) and total["external"] == 30
    assert (total["errors"], total["cache_hits"], total["audio_s"]) == (1, 1, 1.5)
    assert views[0]["scope"] == "cluster" and [r["group"] for r in views[0]["rows"]] == ["alpha", "local"]
    today = dt.datetime.now(dt.UTC).date().isoformat()
    by_day = ledgers[1].cluster_usage(time.time() - 3600, "day")  # whole days: today only
    assert [r["group"] for r in by_day["rows"]] == [today] and by_day["total"]["requests"] == 30
    assert ledgers[2].cluster_usage(time.time() - 86400 * 2, "user", user="bob")["total"]["requests"] == 6
    local = ledgers[0].usage(time.time() - 2 * 86400, "provider")
    assert local["scope"] == "local" and local["total"]["requests"] == 11
    with pytest.raises(BadRequest) as info:
        ledgers[0].cluster_usage(0, "key")
    assert info.value.hint and "--local" in info.value.hint
    assert all(0 < rsrv.client().ttl(k) <= TTL_S for k in rsrv.client().scan_iter("tiqo:usage:*"))


def test_calls_a_crash_left_pending_reach_the_sums_once(rsrv: RedisProc, tmp_path: Path) -> None:  # noqa: F811
    store = Store(tmp_path / "a.db")
    Ledger(store).reserve(call_row("c1"), charges("alice"), 7000)  # the daemon dies with the call in flight
    for _ in range(2):  # start-up settles it at its reserved cost; a second start-up finds nothing
        Ledger(store, sums=RedisUsage(RedisCounters(rsrv.url))).reconcile()
    sums = Ledger(store, sums=RedisUsage(RedisCounters(rsrv.url))).cluster_usage(NOW - 60, "provider", now=NOW)
    assert (sums["total"]["requests"], sums["total"]["errors"]) == (1, 1)
    assert sums["total"]["cost_usd"] == pytest.approx(7e-6)


def test_usage_sums_wait_out_a_redis_outage_and_count_once(tmp_path: Path) -> None:
    r = start_redis()
    sums = RedisUsage(RedisCounters(r.url))
    ledger = Ledger(Store(tmp_path / "a.db"), sums=sums)
    ledger.record(row(1))
    r.proc.kill()
    r.proc.wait(10)
    for i in range(2, 6):
        ledger.record(row(i))  # answered anyway: the sums wait in memory
    with pytest.raises(StateUnavailable) as info:
        ledger.cluster_usage(0, "day")
    assert info.value.hint and "--local" in info.value.hint
    r2 = restart_on(r.port)
    try:
        sums._retry_at = 0.0  # do not wait out RETRY_AFTER_S in a test
        ledger.record(row(6))
        assert ledger.cluster_usage(time.time() - 60, "day")["total"]["requests"] == 5  # 2..6, each once
    finally:
        r2.stop()
        r.stop()
