"""Routing: from a classified request to an ordered list of candidates, each kept or dropped with a reason.

Pure: the daemon passes in the catalog, the routing config and what it knows about each provider right now
(circuit state, usable keys) and local models (warm or cold). ``tiqo route explain`` prints the ``Decision``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tiqo.policy.classify import DATA_CLASSES, Classification, class_rank
from tiqo.policy.ratelimit import RateLimits

LOCAL = "local"  # the provider name of models served by the daemon's own engines
AUTO = ("auto", "")  # model names that ask the router to choose


@dataclass(frozen=True)
class CatalogModel:
    name: str
    provider: str  # LOCAL or a configured provider's name
    upstream_model: str | None = None
    price_in: float = 0.0  # USD per 1M input tokens
    price_out: float = 0.0  # USD per 1M output tokens
    context: int | None = None
    capabilities: tuple[str, ...] = ("chat",)
    fallbacks: tuple[str, ...] = ()
    description: str = ""
    premium: bool = False  # tiers with premium = false may not use it
    price_minute: float = 0.0  # USD per minute of audio heard (speech-to-text)
    price_mchar: float = 0.0  # USD per 1M characters spoken (text-to-speech)
    price_image: float = 0.0  # USD per image made (image generation)

    @property
    def local(self) -> bool:
        return self.provider == LOCAL

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1_000_000

    def audio_cost(self, seconds: float = 0.0, chars: int = 0) -> float:
        return seconds / 60 * self.price_minute + chars * self.price_mchar / 1_000_000


@dataclass(frozen=True)
class Tier:
    name: str
    providers: tuple[str, ...] | None = None  # None = every provider; ("local",) = local models only
    description: str = ""
    premium: bool = True  # may use models marked premium
    limits: RateLimits = field(default_factory=RateLimits)  # per user of the tier

    def allows(self, provider: str) -> bool:
        return self.providers is None or provider in self.providers or "*" in self.providers


@dataclass(frozen=True)
class UserProfile:
    """``[users.NAME]``: the user's tier and default data class, and rate limits over the tier's."""

    name: str
    tier: str | None = None
    data_class: str | None = None
    limits: RateLimits = field(default_factory=RateLimits)


@dataclass(frozen=True)
class RoutingConfig:
    routes: Mapping[str, Mapping[str, Sequence[str]]] = field(default_factory=dict)  # task -> complexity -> names
    aliases: Mapping[str, Sequence[str]] = field(default_factory=dict)
    tiers: Mapping[str, Tier] = field(default_factory=dict)
    local_fallback: str = ""  # appended as the last candidate of every route (the default local model)
    # provider -> highest data class it may see; "restricted" only for providers configured as trusted = true
    provider_max_class: Mapping[str, str] = field(default_factory=dict)
    users: Mapping[str, UserProfile] = field(default_factory=dict)

    def route_for(self, task: str, complexity: str) -> tuple[str, list[str]]:
        for t in (task, "chat"):
            table = self.routes.get(t)
            if table and complexity in table:
                return f"routes.{t}.{complexity}", list(table[complexity])
            if table and "default" in table:
                return f"routes.{t}.default", list(table["default"])
        return "default model", []


@dataclass(frozen=True)
class Candidate:
    model: str
    provider: str
    kept: bool
    reason: str
    price_in: float = 0.0
    price_out: float = 0.0
    est_cost_usd: float = 0.0
    context: int | None = None
    via: str = ""  # the route entry or alias that brought it in

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "kept": self.kept,
            "reason": self.reason,
            "price_in": self.price_in,
            "price_out": self.price_out,
            "est_cost_usd": round(self.est_cost_usd, 8),
            "context": self.context,
            "via": self.via,
        }


@dataclass(frozen=True)
class Decision:
    classification: Classification
    source: str  # "model gpt-4o", "alias fast", "routes.chat.simple"
    candidates: tuple[Candidate, ...]
    est_prompt_tokens: int
    max_tokens: int

    @property
    def kept(self) -> list[Candidate]:
        return [c for c in self.candidates if c.kept]

    @property
    def chosen(self) -> Candidate | None:
        kept = self.kept
        return kept[0] if kept else None

    def as_dict(self) -> dict[str, Any]:
        chosen = self.chosen
        return {
            "classification": self.classification.as_dict(),
            "source": self.source,
            "est_prompt_tokens": self.est_prompt_tokens,
            "max_tokens": self.max_tokens,
            "candidates": [c.as_dict() for c in self.candidates],
            "chosen": chosen.model if chosen else None,
        }


# (model) -> None if usable now, else why not ("circuit open …", "no usable key: …", "provider not configured")
Availability = Callable[[CatalogModel], str | None]


def expand(names: Sequence[str], aliases: Mapping[str, Sequence[str]], via: str) -> list[tuple[str, str]]:
    """Names and aliases → unique model names, in order, each with what brought it in."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(name: str, how: str, depth: int) -> None:
        if name in aliases and depth < 5:
            for inner in aliases[name]:
                add(inner, f"alias {name}", depth + 1)
        elif name not in seen:
            seen.add(name)
            out.append((name, how))

    for name in names:
        add(name, via, 0)
    return out


def plan(
    classification: Classification,
    *,
    requested: str | None,
    catalog: Mapping[str, CatalogModel],
    config: RoutingConfig,
    availability: Availability,
    est_prompt_tokens: int,
    max_tokens: int,
    needs: Sequence[str] = ("chat",),
) -> Decision:
    """The candidates for one request, in order, with the reason each is kept or dropped."""
    if requested and requested not in AUTO:
        if requested in config.aliases:
            source = f"alias {requested}"
            names = expand([requested], config.aliases, source)
        else:
            source = f"model {requested}"
            model = catalog.get(requested)
            chain = [requested, *(model.fallbacks if model else ())]
            names = expand(chain, config.aliases, source)
            names = [(n, source if i == 0 else f"fallback of {requested}") for i, (n, _) in enumerate(names)]
    else:
        source, route = config.route_for(classification.task, classification.complexity)
        names = expand(route, config.aliases, source)
        if config.local_fallback and config.local_fallback not in {n for n, _ in names}:
            local_present = any(catalog.get(n) is not None and catalog[n].local for n, _ in names)
            if not local_present or not names:
                names.append((config.local_fallback, "local fallback"))
    tier = config.tiers.get(classification.tier)
    rank = class_rank(classification.data_class)
    candidates = []
    for name, via in names:
        model = catalog.get(name)
        if model is None:
            candidates.append(Candidate(name, "?", False, "not registered (no such model in the catalog)", via=via))
            continue
        reason = _drop_reason(model, classification, tier, rank, config, needs, est_prompt_tokens, max_tokens)
        if reason is None:
            reason = availability(model)
        candidates.append(
            Candidate(
                model=name,
                provider=model.provider,
                kept=reason is None,
                reason=reason or ("local, no cost" if model.local else "ok"),
                price_in=model.price_in,
                price_out=model.price_out,
                est_cost_usd=model.cost(est_prompt_tokens, max_tokens),
                context=model.context,
                via=via,
            )
        )
    return Decision(classification, source, tuple(candidates), est_prompt_tokens, max_tokens)


def _drop_reason(
    model: CatalogModel,
    classification: Classification,
    tier: Tier | None,
    rank: int,
    config: RoutingConfig,
    needs: Sequence[str],
    est_prompt_tokens: int,
    max_tokens: int,
) -> str | None:
    missing = [n for n in needs if n not in model.capabilities]
    if missing:
        return f"lacks capability {', '.join(missing)}"
    if not model.local:
        limit = config.provider_max_class.get(model.provider, "confidential")
        if classification.data_class == "restricted" and limit != "restricted":
            # "restricted" is the limit of a provider configured as trusted = true (another tiqo inside the trust
            # boundary) and of no other
            return f"restricted data never leaves the machine ({model.provider} is not trusted = true)"
        if limit in DATA_CLASSES and rank > class_rank(limit):
            return f"{classification.data_class} data may not go to {model.provider} (allows up to {limit})"
    if tier is not None and not tier.allows(model.provider):
        return f"tier {tier.name} does not allow provider {model.provider}"
    if tier is not None and model.premium and not tier.premium:
        return f"tier {tier.name} does not allow premium models"
    # Local engines count tokens exactly before generating (a precise 400, or the next candidate); external ones
    # are checked here from an estimate, so a request is not sent (and billed) only to be rejected.
    if not model.local and model.context is not None and est_prompt_tokens + max_tokens > model.context:
        return f"needs ~{est_prompt_tokens + max_tokens} tokens, context window is {model.context}"
    return None


def estimate_tokens(texts: Sequence[str]) -> int:
    """A cheap prompt-size estimate (about 4 characters per token, plus per-message overhead)."""
    return sum(len(t) for t in texts) // 4 + 4 * len(texts) + 1


def prefer_local(decision: Decision, demoted: Mapping[str, str]) -> Decision:
    """A budget's ``prefer-local`` action: the ``demoted`` external candidates (model → why) move after every other
    candidate, cheapest first, so local models (and providers not under pressure) serve first."""
    if not demoted:
        return decision

    def order(c: Candidate) -> tuple[bool, float]:
        return (c.model in demoted, c.est_cost_usd if c.model in demoted else 0.0)

    candidates = []
    for c in sorted(decision.candidates, key=order):
        if c.model in demoted and c.kept:
            c = replace(c, reason=f"{c.reason}; moved after local models: {demoted[c.model]}")
        candidates.append(c)
    return replace(decision, candidates=tuple(candidates), source=f"{decision.source}, prefer-local")
