"""Table tests of the pure policy: classification, routing, key pools, circuit breakers, cache keys."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tiqo.policy.breaker import CircuitBreaker
from tiqo.policy.cache import cache_key, cacheable, canonical_request, scope_for
from tiqo.policy.classify import classify
from tiqo.policy.keys import KeyLimits, KeyPool, KeyState, next_reset, period_start
from tiqo.policy.routing import LOCAL, CatalogModel, RoutingConfig, Tier, plan

T0 = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC).timestamp()


# ------------------------------------------------------------------ classification
@pytest.mark.parametrize(
    ("text", "task", "complexity"),
    [
        ("Which city is the capital of France?", "chat", "simple"),
        ("Write a python function that reverses a list", "code", "medium"),
        ("```\ndef f(x): return x\n```\nWhy does this fail? Analyze it step by step.", "code", "complex"),
        ("Prove that the integral of 1/x diverges", "reasoning", "medium"),
        ("word " * 200, "chat", "medium"),
        ("word " * 1000, "chat", "complex"),
        ("Compare the pros and cons of the two designs in depth", "chat", "medium"),
    ],
)
def test_classify_task_and_complexity(text: str, task: str, complexity: str) -> None:
    c = classify([text])
    assert (c.task, c.complexity) == (task, complexity), c.signals


def test_classify_tools_max_tokens_and_explicit_values() -> None:
    assert classify(["hi"], has_tools=True).complexity == "medium"
    assert classify(["hi"], max_tokens=4000).complexity == "medium"
    assert classify(["hi"], has_tools=True, max_tokens=4000).complexity == "complex"
    assert classify(["hi"], task="code").task == "code"
    assert classify(["hi"]).data_class == "internal"
    assert classify(["hi"], default_class="public").data_class == "public"
    ssn = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
    assert classify(["my ssn is 123-45-6789"], restricted_patterns=[ssn]).data_class == "restricted"
    # patterns only raise the class: saying "public" does not let a match leave the machine
    assert (
        classify(["my ssn is 123-45-6789"], data_class="public", restricted_patterns=[ssn]).data_class == "restricted"
    )
    assert classify(["hello"], data_class="confidential", restricted_patterns=[ssn]).data_class == "confidential"
    with pytest.raises(ValueError, match="unknown data class"):
        classify(["hi"], data_class="secret")


# ------------------------------------------------------------------ routing
CATALOG = {
    "smollm2-135m": CatalogModel("smollm2-135m", LOCAL, capabilities=("chat", "completion")),
    "local-large": CatalogModel("local-large", LOCAL, capabilities=("chat",)),
    "gpt-4o-mini": CatalogModel("gpt-4o-mini", "openai", "gpt-4o-mini", 0.15, 0.6, 128000, ("chat", "tools")),
    "claude-sonnet": CatalogModel("claude-sonnet", "anthropic", "claude", 3.0, 15.0, 200000, ("chat", "tools")),
    "deepseek-coder": CatalogModel("deepseek-coder", "deepseek", "dc", 0.14, 0.28, 64000, ("chat", "tools")),
    "tiny-ctx": CatalogModel("tiny-ctx", "openai", "t", 0.1, 0.1, 100, ("chat",), fallbacks=("gpt-4o-mini",)),
}


def default_config(**over: Any) -> RoutingConfig:
    from tiqo.daemon.catalog.routing_config import DEFAULT_ROUTING

    with DEFAULT_ROUTING.open("rb") as fh:
        raw = tomllib.load(fh)
    tiers = {n: Tier(n, tuple(e["providers"]) if "providers" in e else None) for n, e in raw["tiers"].items()}
    base: dict[str, Any] = {
        "routes": raw["routes"],
        "aliases": {"default": ["smollm2-135m"], **raw["aliases"]},
        "tiers": tiers,
        "local_fallback": "smollm2-135m",
    }
    return RoutingConfig(**{**base, **over})


def route(
    text: str,
    *,
    model: str | None = None,
    tier: str = "default",
    data_class: str | None = None,
    catalog: dict[str, CatalogModel] | None = None,
    down: set[str] = frozenset(),  # type: ignore[assignment]
    needs: tuple[str, ...] = ("chat",),
    config: RoutingConfig | None = None,
) -> Any:
    c = classify([text], tier=tier, data_class=data_class)
    return plan(
        c,
        requested=model,
        catalog=catalog or CATALOG,
        config=config or default_config(),
        availability=lambda m: "circuit open" if m.provider in down else None,
        est_prompt_tokens=len(text) // 4 + 5,
        max_tokens=256,
        needs=needs,
    )


def test_seed_policy_simple_goes_to_the_small_local_model() -> None:
    d = route("Which city is the capital of France?")
    assert d.source == "routes.chat.simple" and d.chosen.model == "smollm2-135m"


def test_seed_policy_medium_prefers_a_larger_local_model_else_a_cheap_external_one() -> None:
    text = "Summarise the history of the printing press and its effect on literacy. " * 8
    assert route(text).chosen.model == "local-large"
    without_large = {k: v for k, v in CATALOG.items() if k != "local-large"}
    d = route(text, catalog=without_large)
    assert d.chosen.model == "gpt-4o-mini"
    dropped = {c.model: c.reason for c in d.candidates if not c.kept}
    assert "not registered" in dropped["local-large"] and "not registered" in dropped["deepseek-chat"]
    assert d.candidates[-1].model == "smollm2-135m"  # a local model is always the last candidate


def test_seed_policy_complex_premium_for_paying_tiers_best_local_for_free() -> None:
    text = "Analyze the trade-offs of these architectures in depth and design a migration strategy. " * 5
    assert route(text, tier="pro").chosen.model == "claude-sonnet"
    free = route(text, tier="free")
    assert free.chosen.model == "local-large"
    reasons = {c.model: c.reason for c in free.candidates}
    assert reasons["claude-sonnet"] == "tier free does not allow provider anthropic"


def test_seed_policy_code_goes_to_a_code_model() -> None:
    d = route("Write a python function that reverses a list")
    assert d.classification.task == "code" and d.chosen.model == "deepseek-coder"


def test_restricted_data_never_leaves_the_machine() -> None:
    d = route("Analyze this in depth " * 40, data_class="restricted", tier="pro")
    assert all(c.provider == LOCAL for c in d.kept)
    assert any(c.reason.startswith("restricted data never leaves the machine") for c in d.candidates)
    d = route("hi", model="gpt-4o-mini", data_class="restricted")
    assert d.chosen is None


def test_confidential_data_respects_a_providers_max_class() -> None:
    config = default_config(provider_max_class={"openai": "internal"})
    d = route("hi", model="gpt-4o-mini", data_class="confidential", config=config)
    assert d.chosen is None and "allows up to internal" in d.candidates[0].reason
    assert route("hi", model="gpt-4o-mini", data_class="internal", config=config).chosen.model == "gpt-4o-mini"


def test_unavailable_providers_capabilities_and_context_windows_drop_candidates() -> None:
    text = "Analyze the trade-offs in depth and design a strategy " * 10
    assert classify([text]).complexity == "complex"
    d = route(text, tier="pro", down={"anthropic"})
    assert d.candidates[0].reason == "circuit open" and d.chosen.model == "local-large"
    d = route("hi", model="smollm2-135m", needs=("chat", "tools"))
    assert d.chosen is None and d.candidates[0].reason == "lacks capability tools"
    d = route("a long prompt " * 50, model="tiny-ctx")
    assert "context window is 100" in d.candidates[0].reason
    assert d.chosen.model == "gpt-4o-mini" and d.chosen.via == "fallback of tiny-ctx"


def test_aliases_expand_in_order_and_explicit_models_skip_routes() -> None:
    d = route("hi", model="smart")
    assert [c.model for c in d.candidates] == ["claude-sonnet", "gpt-4o", "gemini-pro"]
    assert d.source == "alias smart" and d.chosen.model == "claude-sonnet"
    d = route("hi", model="gpt-4o-mini")
    assert [c.model for c in d.candidates] == ["gpt-4o-mini"]
    assert d.chosen.est_cost_usd == pytest.approx((d.est_prompt_tokens * 0.15 + 256 * 0.6) / 1e6)


# ------------------------------------------------------------------ key pools
def pool(strategy: str = "round-robin", **limits: Any) -> KeyPool:
    lim = {n: KeyLimits(**limits.get(n, {})) for n in ("k1", "k2", "k3")}
    return KeyPool("p", lim, strategy=strategy, breaker_threshold=2, breaker_cooldown_s=60)


def picks(p: KeyPool, n: int, now: float = T0) -> list[str | None]:
    out = []
    for _ in range(n):
        k = p.pick(now)
        if k is not None:
            p.begin(k, now)
            p.success(k, 10, now)
        out.append(k)
    return out


def test_round_robin_least_used_and_weighted() -> None:
    assert picks(pool(), 6) == ["k1", "k2", "k3", "k1", "k2", "k3"]
    p = pool("least-used")
    p.states["k1"].requests_day, p.states["k1"].period_start = 5, period_start(T0, "00:00", "UTC")
    assert picks(p, 4)[:2] == ["k2", "k3"]
    w = KeyPool("p", {"a": KeyLimits(weight=3), "b": KeyLimits(weight=1)}, strategy="weighted")
    assert sorted(picks(w, 8)).count("a") == 6


def test_limits_cooldowns_exhaustion_and_auth() -> None:
    p = pool(k1={"rpm": 2}, k2={"rpd": 1})
    assert picks(p, 4) == ["k1", "k2", "k3", "k1"]
    assert p.verdict("k1", T0).reason.startswith("rpm limit")
    assert p.verdict("k2", T0).reason.startswith("daily requests used")
    assert p.pick(T0 + 61) == "k3"  # k1's minute has rolled over but round-robin continues from k3
    p.failure("k3", "rate_limited", T0 + 61, retry_after=30)
    assert p.verdict("k3", T0 + 70).reason == "cooling down (429 from upstream)"
    assert p.verdict("k3", T0 + 92).usable
    p.failure("k3", "quota_exhausted", T0 + 100)
    v = p.verdict("k3", T0 + 100)
    assert not v.usable and v.until == next_reset(T0, "00:00", "UTC")
    p.failure("k1", "auth", T0 + 100, message="invalid api key")
    assert p.describe("k1", T0 + 100)["status"] == "disabled"
    assert "invalid api key" in p.verdict("k1", T0 + 100).reason
    p.set_enabled("k1", True)
    assert p.verdict("k1", T0 + 100).usable
    assert p.pick(T0 + 100, exclude={"k1"}) is None  # k2 used its day, k3 exhausted


def test_key_breaker_opens_and_half_opens() -> None:
    p = pool()
    for _ in range(2):
        p.begin("k1", T0)
        p.failure("k1", "server", T0, message="500")
    assert "circuit open" in p.verdict("k1", T0 + 1).reason
    assert p.verdict("k1", T0 + 61).usable  # half-open: one probe
    p.begin("k1", T0 + 61)
    assert not p.verdict("k1", T0 + 61).usable  # the probe is in flight
    p.success("k1", 1, T0 + 62)
    assert p.verdict("k1", T0 + 62).usable


def test_quota_day_starts_at_each_keys_reset_time_and_zone() -> None:
    lim = KeyLimits(rpd=1, reset="09:30", tz="Europe/Paris")
    p = KeyPool("p", {"k": lim})
    paris = ZoneInfo("Europe/Paris")
    at = dt.datetime(2026, 11, 23, 9, 0, tzinfo=paris).timestamp()
    p.begin("k", at)
    assert not p.verdict("k", at + 60).usable
    assert p.verdict("k", at + 60).until == dt.datetime(2026, 11, 23, 9, 30, tzinfo=paris).timestamp()
    assert p.verdict("k", at + 31 * 60).usable  # 09:31 Paris: a new quota day


def test_quota_day_holds_now_across_dst_changes_whatever_order_it_is_asked_in() -> None:
    """start <= now < end at every minute around both 2026 changes in Paris, for resets in the skipped and the
    repeated hour; asked forwards and backwards (the remembered day must never answer for another instant)."""
    paris = ZoneInfo("Europe/Paris")
    for reset in ("02:30", "00:00", "23:59"):
        for day in (dt.datetime(2026, 3, 28, 12, 0, tzinfo=paris), dt.datetime(2026, 10, 24, 12, 0, tzinfo=paris)):
            minutes = [day.timestamp() + 60 * i for i in range(0, 36 * 60, 7)]
            for now in [*minutes, *reversed(minutes)]:
                start, end = period_start(now, reset, "Europe/Paris"), next_reset(now, reset, "Europe/Paris")
                assert start <= now < end, (reset, dt.datetime.fromtimestamp(now, paris))
                assert 23 * 3600 <= end - start <= 25 * 3600
    # 02:30 does not exist on 29 March: that quota day starts at 02:30 on the old offset (01:30 UTC, 03:30 CEST) ...
    assert period_start(dt.datetime(2026, 3, 29, 3, 40, tzinfo=paris).timestamp(), "02:30", "Europe/Paris") == (
        dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC).timestamp()
    )
    # ... and 02:30 happens twice on 25 October: the day starts once, at the first
    second = dt.datetime(2026, 10, 25, 2, 45, fold=1, tzinfo=paris).timestamp()
    assert period_start(second, "02:30", "Europe/Paris") == dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC).timestamp()


def test_key_state_round_trips_through_a_dict() -> None:
    p = pool(k1={"rpd": 10})
    picks(p, 2)
    restored = KeyPool("p", p.limits, states={n: KeyState.from_dict(s.to_dict()) for n, s in p.states.items()})
    assert restored.states["k1"].requests_day == 1 and restored.states["k1"].tokens_day == 10
    with pytest.raises(ValueError, match="time zone"):
        KeyLimits(tz="Mars/Olympus")
    with pytest.raises(ValueError, match="HH:MM"):
        KeyLimits(reset="25:00")


# ------------------------------------------------------------------ breaker
def test_circuit_breaker_states() -> None:
    b = CircuitBreaker(threshold=3, cooldown_s=10)
    for i in range(2):
        b.failure(T0 + i)
    assert b.state(T0 + 2) == "closed"
    b.failure(T0 + 2, "500")
    assert b.state(T0 + 3) == "open" and not b.allows(T0 + 3)
    assert b.allows(T0 + 12)
    b.begin(T0 + 12)
    assert not b.allows(T0 + 12)  # one probe at a time
    b.failure(T0 + 13)  # the probe failed: open again for a full cooldown
    assert b.state(T0 + 14) == "open" and b.allows(T0 + 23)
    b.begin(T0 + 23)
    b.success()
    assert b.state(T0 + 23) == "closed" and b.failures == 0


# ------------------------------------------------------------------ cache keys
def test_cache_keys_are_canonical_and_scoped() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "model": "x"}
    same = {"temperature": 0, "stream": True, "messages": [{"role": "user", "content": "hi"}], "user": "u"}
    assert canonical_request(body) == canonical_request(same)
    k = cache_key(body, "m", "internal")
    assert k == cache_key(same, "m", "internal")
    assert k != cache_key(body, "other-model", "internal")
    assert k != cache_key({**body, "temperature": 0.5}, "m", "internal")
    assert scope_for("restricted", "ann", shared=True) != scope_for("restricted", "bob", shared=True)
    assert scope_for("internal", "ann") != scope_for("internal", "bob")  # per user unless cache.scope = all
    assert scope_for("internal", "ann", shared=True) == scope_for("internal", "bob", shared=True)
    assert cacheable("deterministic", body) and not cacheable("deterministic", {"temperature": 0.7})
    assert cacheable("deterministic", {"seed": 1}) and not cacheable("off", body) and cacheable("all", {})
