"""Budget and rate-limit policy: pure, clock injected, table-tested."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from tiqo.policy import budget as bp
from tiqo.policy.classify import classify
from tiqo.policy.ratelimit import RateLimiter, RateLimits
from tiqo.policy.routing import Candidate, Decision, prefer_local

PARIS = "Europe/Paris"


def ts(text: str, tz: str = PARIS) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


@pytest.mark.parametrize(
    ("period", "now", "pid", "ends"),
    [
        ("day", "2026-11-23 00:00:00", "day:2026-11-23", "2026-11-24 00:00:00"),
        ("day", "2026-11-23 23:59:59", "day:2026-11-23", "2026-11-24 00:00:00"),
        ("day", "2026-03-29 12:00:00", "day:2026-03-29", "2026-03-30 00:00:00"),  # a 23-hour day (DST starts)
        ("day", "2026-10-25 12:00:00", "day:2026-10-25", "2026-10-26 00:00:00"),  # a 25-hour day (DST ends)
        ("month", "2026-12-31 23:00:00", "month:2026-12", "2027-01-01 00:00:00"),
        ("month", "2026-02-01 00:00:00", "month:2026-02", "2026-03-01 00:00:00"),
    ],
)
def test_periods_are_calendar_days_and_months_in_the_zone(period: str, now: str, pid: str, ends: str) -> None:
    assert bp.period_of(period, ts(now), PARIS) == (pid, ts(ends))


def test_the_same_instant_is_a_different_day_in_another_zone() -> None:
    now = ts("2026-11-23 23:30:00", "UTC")
    assert bp.period_of("day", now, "UTC")[0] == "day:2026-11-23"
    assert bp.period_of("day", now, "Asia/Tokyo")[0] == "day:2026-11-24"


def test_charges_pick_the_limits_that_apply() -> None:
    limits = bp.parse_limits(
        {
            "global": {"daily": 5, "monthly": 100},
            "users": {"ann": {"daily": 1}, "*": {"daily": 0.5}},
            "providers": {"openai": {"monthly": 20}},
            "models": {"gpt-4o": {"daily": 2}},
        }
    )
    policy = bp.Policy(limits=limits, timezone="UTC")
    now = ts("2026-11-23 12:00:00", "UTC")
    keys = {c.key for c in policy.charges("ann", "openai", "gpt-4o", now)}
    assert keys == {
        ("global", "day:2026-11-23"),
        ("global", "month:2026-11"),
        ("user:ann", "day:2026-11-23"),  # both ann's own limit and the every-user limit charge her counter
        ("provider:openai", "month:2026-11"),
        ("model:gpt-4o", "day:2026-11-23"),
    }
    assert len(policy.charges("ann", "openai", "gpt-4o", now)) == 6
    keys = {c.key for c in policy.charges("bob", "groq", "llama", now)}
    assert keys == {("global", "day:2026-11-23"), ("global", "month:2026-11"), ("user:bob", "day:2026-11-23")}


@pytest.mark.parametrize(
    "table",
    [
        {"global": {"weekly": 1}},
        {"global": {"daily": "5"}},
        {"global": {"daily": -1}},
        {"teams": {"x": {"daily": 1}}},
        {"users": {"ann": 3}},
    ],
)
def test_bad_budget_tables_are_refused_with_a_reason(table: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        bp.parse_limits(table)


def test_check_refuses_the_call_that_would_pass_a_limit() -> None:
    policy = bp.Policy(limits=bp.parse_limits({"global": {"daily": 1.0}, "users": {"ann": {"daily": 0.3}}}))
    charges = policy.charges("ann", "p", "m", 0.0)
    usage = {c.key: bp.Usage() for c in charges}
    assert bp.check(charges, usage, bp.to_nano(0.3)) is None  # exactly at the limit fits
    usage[("user:ann", "day:1970-01-01")] = bp.Usage(spent=bp.to_nano(0.2), reserved=bp.to_nano(0.05))
    refusal = bp.check(charges, usage, bp.to_nano(0.06))
    assert refusal is not None and refusal.charge.counter == "user:ann"
    assert "user ann daily budget of $0.3" in refusal.message and "resets at 1970-01-02 00:00 UTC" in refusal.message
    assert bp.check(charges, usage, bp.to_nano(0.05)) is None


def test_thresholds_cross_once_and_actions_escalate() -> None:
    assert bp.crossed([70, 85, 95], 0.5, 0.9) == [70, 85]
    assert bp.crossed([70, 85, 95], 0.9, 0.92) == []
    assert bp.crossed([70, 85, 95, 100], 0.96, 1.0) == [100]
    policy = bp.Policy(
        limits=bp.parse_limits({"global": {"daily": 10}}),
        actions=bp.parse_actions("85:prefer-local,95:block-external"),
        timezone="UTC",
    )
    (charge,) = policy.charges("u", "p", "m", 0.0)

    def at(spent: float, reserved: float = 0.0) -> str:
        usage = {charge.key: bp.Usage(bp.to_nano(spent), bp.to_nano(reserved))}
        return bp.pressure(policy, [charge], usage)[0]

    assert at(6.9) == "" and at(7.5) == ""  # 70 %: warn only
    assert at(8.5) == "prefer-local" and at(8.0, 0.6) == "prefer-local"  # reservations count
    assert at(9.5) == "block-external" and at(10.0) == "block-external"
    zero = bp.Policy(limits=bp.parse_limits({"global": {"daily": 0}}))
    assert bp.pressure(zero, zero.charges("u", "p", "m", 0.0), {})[0] == "block-external"
    with pytest.raises(ValueError, match="unknown budget action"):
        bp.parse_actions("85:panic")


def test_prefer_local_moves_pressured_candidates_after_local_ones() -> None:
    c = classify(["hi"])
    cands = (
        Candidate("big", "openai", True, "ok", est_cost_usd=0.5),
        Candidate("small", "groq", True, "ok", est_cost_usd=0.1),
        Candidate("local-a", "local", True, "local, no cost"),
        Candidate("other", "gemini", True, "ok", est_cost_usd=0.2),
    )
    decision = Decision(c, "routes.chat.simple", cands, 10, 100)
    moved = prefer_local(decision, {"big": "global at 90%", "small": "global at 90%"})
    assert [x.model for x in moved.candidates] == ["local-a", "other", "small", "big"]
    assert "moved after local models: global at 90%" in moved.candidates[3].reason
    assert prefer_local(decision, {}) is decision


def test_token_buckets_refill_and_say_how_long_to_wait() -> None:
    rl = RateLimiter()
    limits = RateLimits(rpm=2, tpm=1000)
    assert rl.admit("ann", limits, 100, 0.0).ok
    assert rl.admit("ann", limits, 100, 0.0).ok
    no = rl.admit("ann", limits, 100, 0.0)
    assert not no.ok and no.retry_after == pytest.approx(30.0) and "2 requests per minute" in no.reason
    assert rl.admit("bob", limits, 100, 0.0).ok  # per user
    assert rl.admit("ann", limits, 100, 30.0).ok  # half a minute refills one request
    rl.charge_tokens("ann", limits, 1500, 30.0)  # a long answer puts the token bucket in debt
    no = rl.admit("ann", limits, 10, 31.0)
    assert not no.ok and "1000 tokens per minute" in no.reason and no.retry_after > 30
    assert RateLimits(rpm=5).merged(RateLimits(tpm=9)) == RateLimits(rpm=5, tpm=9)
    assert not RateLimits()


def test_a_counter_charged_by_two_limits_is_reserved_and_settled_once(tmp_path: object) -> None:
    from pathlib import Path

    from tiqo.daemon.accounting.ledger import CallRow, Ledger
    from tiqo.daemon.state.store import Store

    assert isinstance(tmp_path, Path)
    ledger = Ledger(Store(tmp_path / "t.db"))
    policy = bp.Policy(limits=bp.parse_limits({"users": {"ann": {"daily": 1.0}, "*": {"daily": 0.5}}}))
    charges = policy.charges("ann", "p", "m", 0.0)
    call = CallRow("c1", "r1", 0.0, "ann", "p", "m", None, "internal", "test")
    assert ledger.reserve(call, charges, bp.to_nano(0.2)) is None
    key = ("user:ann", "day:1970-01-01")
    assert ledger.usage_of([key])[key] == bp.Usage(0, bp.to_nano(0.2))
    refusal = ledger.reserve(CallRow("c2", "r2", 0.0, "ann", "p", "m", None, "internal", "t"), charges, bp.to_nano(0.4))
    assert refusal is not None and refusal.charge.limit.usd == 0.5  # the tighter of the two
    ledger.settle("c1", status="ok", cost=bp.to_nano(0.1))
    ledger.settle("c1", status="ok", cost=bp.to_nano(0.1))  # idempotent
    assert ledger.usage_of([key])[key] == bp.Usage(bp.to_nano(0.1), 0)
