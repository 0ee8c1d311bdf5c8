"""Dispatch of chat requests: classify → route → cache → try candidates (keys, breakers, fallback) → account.

Fallback happens before the caller has received a byte: a streamed answer is committed to a candidate only when
its first token (or its end) arrived; a JSON answer is committed only when the whole generation succeeded. After
commit a failure is an explicit error event, and it still counts against the provider's and key's health.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

from tiqo.core.durations import parse_duration
from tiqo.core.errors import (
    BadRequest,
    BudgetExceeded,
    Busy,
    ClassificationRefused,
    ContextOverflow,
    ModelLoadFailed,
    ModelNotFound,
    NoCandidate,
    RateLimited,
    TiqoError,
    UpstreamFailed,
)
from tiqo.core.settings import Settings
from tiqo.daemon.budgets import Budgets
from tiqo.daemon.events import EventBus
from tiqo.daemon.external import stream_external
from tiqo.daemon.ledger import CallRow, Ledger, RequestRow
from tiqo.daemon.pieces import merge_tool_calls, prime, replay
from tiqo.daemon.providers import Provider, ProviderHub
from tiqo.daemon.registry import Registry
from tiqo.daemon.routing_config import restricted_patterns, routing_config
from tiqo.daemon.store import Store
from tiqo.daemon.upstream import AttemptFailed, UpstreamClient
from tiqo.policy import budget as bp
from tiqo.policy import cache as cachepol
from tiqo.policy.breaker import HEALTH_FAILURES
from tiqo.policy.classify import DATA_CLASSES, Classification, classify
from tiqo.policy.ratelimit import RateLimiter, RateLimits
from tiqo.policy.routing import (
    AUTO,
    LOCAL,
    CatalogModel,
    Decision,
    RoutingConfig,
    estimate_tokens,
    plan,
    prefer_local,
)
from tiqo.protocol import openai as oa
from tiqo.sdk.engine import GenerationParams, Piece, Runner, StopFlag

log = logging.getLogger("tiqo.gateway")
DEFAULT_MAX_TOKENS = 1024  # for cost estimates and context checks when a request sets none
# A budgeted external call without max_tokens is sent with this bound, so its reservation is a real worst case.
BUDGET_MAX_TOKENS = 4096
_BACKOFF_BASE, _BACKOFF_CAP = 0.05, 1.0


@dataclass
class RequestMeta:
    """Who asks and how: from x-tiqo-* headers (or the OpenAI ``user`` field), else the settings."""

    user: str = "local"
    tier: str | None = None
    data_class: str | None = None
    cache: str = "use"  # use | refresh | off
    task: str | None = None
    request_id: str = ""


@dataclass
class Served:
    backend: str = ""
    provider: str = ""
    model: str = ""
    cache: str = "off"  # hit | miss | off
    cost_usd: float = 0.0
    est_cost_usd: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    route: str = ""
    key: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def headers(self, final: bool) -> dict[str, str]:
        cost = self.cost_usd if final else self.est_cost_usd
        return {
            "x-tiqo-backend": self.backend,
            "x-tiqo-model": self.model,
            "x-tiqo-cost-usd": f"{cost:.8f}".rstrip("0").rstrip(".") or "0",
            "x-tiqo-cache": self.cache,
            "x-tiqo-attempts": str(len(self.attempts) + 1),
            "x-tiqo-route": self.route,
        }


class Gateway:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        hub: ProviderHub,
        store: Store,
        daemon: Any,  # tiqo.daemon.service.Daemon (for local generation); typed loosely to avoid a cycle
        ledger: Ledger,
        budgets: Budgets,
        events: EventBus,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.hub = hub
        self.store = store
        self.daemon = daemon
        self.ledger = ledger
        self.budgets = budgets
        self.events = events
        self.limiter = RateLimiter()
        self.upstream = UpstreamClient()
        self.clock = time.time
        self._patterns = restricted_patterns(settings)
        self._derived: tuple[tuple[int, int], dict[str, CatalogModel], RoutingConfig] | None = None

    def catalog_and_config(self) -> tuple[dict[str, CatalogModel], RoutingConfig]:
        """The catalog and routing config, rebuilt only when models or providers changed."""
        version = (self.registry.version, self.hub.version)
        if self._derived is None or self._derived[0] != version:
            self._derived = (version, self.registry.catalog(), routing_config(self.settings, self.hub))
        return self._derived[1], self._derived[2]

    async def close(self) -> None:
        await self.upstream.close()

    # ------------------------------------------------------------ decisions
    def classify(self, body: oa.ChatCompletionRequest, meta: RequestMeta) -> Classification:
        _, config = self.catalog_and_config()
        profile = config.users.get(meta.user)
        tier = meta.tier or (profile.tier if profile else None) or self.settings["routing.tier"]
        if config.tiers and tier != "default" and tier not in config.tiers:
            raise BadRequest(
                f"unknown tier {tier!r}; configured tiers: {', '.join(config.tiers)}",
                param="tier",
                hint="tiers are tables [tiers.NAME] in config.toml",
            )
        if meta.data_class is not None and meta.data_class not in DATA_CLASSES:
            raise BadRequest(
                f"unknown data class {meta.data_class!r}; use one of {', '.join(DATA_CLASSES)}", param="class"
            )
        texts = [m.text() for m in body.messages if m.role in ("system", "developer", "user")]
        return classify(
            texts,
            has_tools=bool(body.tools),
            max_tokens=body.token_limit(),
            data_class=meta.data_class,
            default_class=(profile.data_class if profile else None) or self.settings["routing.data_class"],
            restricted_patterns=self._patterns,
            user=meta.user,
            tier=tier,
            task=meta.task,
        )

    def rate_limits(self, classification: Classification) -> RateLimits:
        """The user's limits: their tier's, with their own [users.NAME] values over them."""
        _, config = self.catalog_and_config()
        tier = config.tiers.get(classification.tier)
        profile = config.users.get(classification.user)
        limits = tier.limits if tier else RateLimits()
        return limits.merged(profile.limits) if profile else limits

    def admit(self, classification: Classification, limits: RateLimits, est_tokens: int) -> None:
        """Per-user rate limits (requests and tokens per minute, requests per day): 429 + Retry-After when over."""
        if not limits:
            return
        now = self.clock()
        user = classification.user
        verdict = self.limiter.admit(user, limits, est_tokens, now)
        if not verdict.ok:
            raise RateLimited(
                f"rate limited: {verdict.reason} (tier {classification.tier})",
                retry_after=verdict.retry_after,
                hint="wait for Retry-After, or raise the limits in [tiers.NAME] / [users.NAME] of config.toml",
            )
        if limits.rpd is not None:
            day, resets = bp.period_of("day", now, self.budgets.policy.timezone)
            if self.ledger.count_request(user, day, limits.rpd) is None:
                raise RateLimited(
                    f"user {user} has used the {limits.rpd} requests per day of tier {classification.tier}",
                    retry_after=max(1.0, resets - now),
                    hint="the allowance resets at midnight (budget.timezone); [users.NAME] rpd raises it",
                )

    def decide(
        self,
        body: oa.ChatCompletionRequest,
        meta: RequestMeta,
        classification: Classification | None = None,
        blocked: dict[str, bp.Charge] | None = None,
    ) -> Decision:
        """Route one request. ``blocked`` collects the budgets that dropped external candidates."""
        classification = classification or self.classify(body, meta)
        catalog, config = self.catalog_and_config()
        requested = body.model
        if requested and requested not in AUTO and requested not in catalog and requested not in config.aliases:
            names = ", ".join([*catalog, *config.aliases]) or "none"
            raise ModelNotFound(
                f"model {requested!r} not found; available: {names}",
                param="model",
                hint="`tiqo models list` shows models and aliases; `tiqo models add` registers one",
            )
        texts = [m.text() for m in body.messages]
        est = estimate_tokens(texts)
        max_tokens = body.token_limit() or DEFAULT_MAX_TOKENS
        now = self.clock()
        demoted: dict[str, str] = {}

        def availability(model: CatalogModel) -> str | None:
            if model.local:
                return None
            why = self.hub.unavailable(model.provider, est + max_tokens)
            if why is None and self.budgets.active:
                action, reason, charge = self.budgets.pressure(classification.user, model, now)
                if action == "block-external":
                    if blocked is not None and charge is not None:
                        blocked[model.name] = charge
                    return f"budget: {reason}"
                if action == "prefer-local":
                    demoted[model.name] = reason
            return why

        decision = plan(
            classification,
            requested=requested,
            catalog=catalog,
            config=config,
            availability=availability,
            est_prompt_tokens=est,
            max_tokens=max_tokens,
            needs=body.needs(),
        )
        return prefer_local(decision, demoted)

    # ------------------------------------------------------------ serving
    async def chat(
        self, body: oa.ChatCompletionRequest, meta: RequestMeta, *, stream: bool
    ) -> tuple[Served, AsyncGenerator[Piece, None]]:
        """Pick a candidate that answers. Returns what served and the pieces, the first one already in hand
        (streams) or all of them (JSON). Raises a TiqoError when nothing could serve. Either way the request gets
        one ledger row, written when it ends."""
        started = time.perf_counter()
        row = RequestRow(id=meta.request_id or "req_" + uuid.uuid4().hex[:24], ts=self.clock(), user=meta.user)
        limits = RateLimits()
        try:
            classification = self.classify(body, meta)
            row.tier, row.task, row.data_class = classification.tier, classification.task, classification.data_class
            limits = self.rate_limits(classification)
            self.admit(classification, limits, estimate_tokens([m.text() for m in body.messages]))
            served, pieces = await self._serve(body, meta, classification, row.id, stream=stream)
        except TiqoError as exc:
            row.outcome = "refused" if exc.status < 500 else "error"
            row.error = exc.code
            self._finish(row, None, started)
            raise
        return served, self._recorded(served, pieces, row, body, limits, started)

    async def _recorded(
        self,
        served: Served,
        pieces: AsyncGenerator[Piece, None],
        row: RequestRow,
        body: oa.ChatCompletionRequest,
        limits: RateLimits,
        started: float,
    ) -> AsyncGenerator[Piece, None]:
        text: list[str] = []
        row.outcome = "cancelled"  # until the end arrives (a client that hangs up never lets it)
        try:
            async for piece in pieces:
                if piece.text:
                    text.append(piece.text)
                if piece.finish_reason is not None:
                    row.outcome = "ok"
                yield piece
        except TiqoError as exc:
            row.outcome, row.error = "interrupted", exc.code
            raise
        except AttemptFailed:
            row.outcome, row.error = "interrupted", "stream_interrupted"
            raise
        finally:
            await pieces.aclose()
            if limits.tpm:
                self.limiter.charge_tokens(row.user, limits, served.completion_tokens, self.clock())
            if self.settings["ledger.store_content"] and row.data_class != "restricted":
                messages = [{"role": m.role, "content": m.text()} for m in body.messages]
                row.content = json.dumps({"messages": messages, "answer": "".join(text)})
            self._finish(row, served, started)

    def _finish(self, row: RequestRow, served: Served | None, started: float) -> None:
        row.latency_ms = round((time.perf_counter() - started) * 1000, 2)
        if served is not None:
            row.backend, row.provider, row.model, row.key = served.backend, served.provider, served.model, served.key
            row.tokens_in, row.tokens_out = served.prompt_tokens, served.completion_tokens
            row.cost_nusd, row.cache, row.route = bp.to_nano(served.cost_usd), served.cache, served.route
            row.attempts = len(served.attempts) + 1
        try:
            self.ledger.record(row)
        except Exception:  # the answer is already out; say loudly that the ledger missed it
            log.exception("ledger write failed for %s", row.id)
        if self.events.subscribers:
            data = {k: v for k, v in row.__dict__.items() if k != "content"}
            data["cost_usd"] = row.cost_nusd / bp.NANO
            self.events.publish("request", data)

    async def _serve(
        self,
        body: oa.ChatCompletionRequest,
        meta: RequestMeta,
        classification: Classification,
        request_id: str,
        *,
        stream: bool,
    ) -> tuple[Served, AsyncGenerator[Piece, None]]:
        blocked: dict[str, bp.Charge] = {}
        decision = self.decide(body, meta, classification, blocked)
        served = Served(route=decision.source)
        kept = decision.kept
        if not kept:
            raise self._nothing_kept(decision, blocked)
        wire = body.wire()
        scope = cachepol.scope_for(decision.classification.data_class, decision.classification.user)
        use_cache = meta.cache != "off" and cachepol.cacheable(self.settings["cache.mode"], wire)
        if use_cache and meta.cache == "use":
            now = self.clock()
            for cand in kept:
                hit = self.store.cache_get(cachepol.cache_key(wire, cand.model, scope), now)
                if hit is not None:
                    served.backend, served.provider, served.model, served.cache = "cache", "cache", cand.model, "hit"
                    served.prompt_tokens = int(hit.get("prompt_tokens") or 0)
                    served.completion_tokens = int(hit.get("completion_tokens") or 0)
                    return served, replay(hit)
            self.store.cache_miss()
        served.cache = "miss" if use_cache else "off"

        failures: list[AttemptFailed | TiqoError] = []
        attempts = 0
        max_attempts = max(1, self.settings["routing.max_attempts"])
        catalog, _ = self.catalog_and_config()
        last_provider_failed: str | None = None
        for cand in kept:
            model = catalog[cand.model]
            tried_keys: set[str] = set()
            while attempts < max_attempts:
                attempts += 1
                if last_provider_failed == model.provider:
                    await asyncio.sleep(_backoff(attempts))
                key_name = None
                call: CallRow | None = None
                call_wire = wire
                if not model.local:
                    provider = self.hub.providers[model.provider]
                    why = self.hub.unavailable(model.provider, decision.est_prompt_tokens + decision.max_tokens)
                    if why is not None:
                        served.attempts.append({"model": cand.model, "provider": model.provider, "error": why})
                        break
                    if self.hub.has_keys(model.provider):
                        key_name = provider.pool.pick(self.clock(), decision.est_prompt_tokens, tried_keys)
                        if key_name is None:
                            served.attempts.append(
                                {"model": cand.model, "provider": model.provider, "error": "no untried usable key"}
                            )
                            break
                        tried_keys.add(key_name)
                    call, call_wire, refusal = self._reserve(body, wire, model, key_name, decision, request_id)
                    if refusal is not None:
                        blocked[cand.model] = refusal.charge
                        error = {"model": cand.model, "provider": model.provider, "error": refusal.message}
                        served.attempts.append({**error, "kind": "budget"})
                        break
                try:
                    pieces = self._attempt(model, key_name, call, body, call_wire, decision, served, scope, use_cache)
                    ready = await prime(pieces, stream)
                except (AttemptFailed, TiqoError) as exc:
                    failures.append(exc)
                    kind = exc.kind if isinstance(exc, AttemptFailed) else exc.code
                    served.attempts.append(
                        {
                            "model": cand.model,
                            "provider": model.provider,
                            "key": key_name,
                            "error": _msg(exc),
                            "kind": kind,
                        }
                    )
                    log.info("%s via %s failed (%s): %s", cand.model, model.provider, kind, _msg(exc))
                    if isinstance(exc, AttemptFailed) and exc.kind == "bad_request":
                        raise BadRequest(f"{model.provider} rejected the request: {exc.message}") from None
                    if isinstance(exc, TiqoError) and not _local_retryable(exc):
                        raise
                    last_provider_failed = model.provider
                    key_level = isinstance(exc, AttemptFailed) and exc.kind in (
                        "rate_limited",
                        "quota_exhausted",
                        "auth",
                    )
                    if key_level and key_name is not None:
                        continue  # same candidate, another key (never the one that just failed)
                    break
                served.backend = f"local:{self.registry.resolve(model.name).engine}" if model.local else model.provider
                served.provider, served.model, served.key = model.provider, model.name, key_name
                served.est_cost_usd = cand.est_cost_usd
                return served, ready
        if blocked and not failures:
            raise self._budget_error(blocked, served.attempts)
        raise self._all_failed(decision, failures, served)

    def _reserve(
        self,
        body: oa.ChatCompletionRequest,
        wire: dict[str, Any],
        model: CatalogModel,
        key_name: str | None,
        decision: Decision,
        request_id: str,
    ) -> tuple[CallRow, dict[str, Any], bp.Refusal | None]:
        """The audit row of an external call, and its budget reservation at the worst-case cost: every prompt byte
        a token (no tokenizer counts more), plus max_tokens (sent upstream when the request set none)."""
        c = decision.classification
        limit = body.token_limit()
        now = self.clock()
        if limit is None and self.budgets.charges(c.user, model, now):
            limit = BUDGET_MAX_TOKENS
            wire = {**wire, "max_tokens": limit}
        prompt_bound = sum(len(m.text().encode()) + 8 for m in body.messages)
        worst = model.cost(prompt_bound, limit or DEFAULT_MAX_TOKENS)
        provider = self.hub.providers[model.provider]
        reason = (
            f"{decision.source}; class {c.data_class} allowed to {model.provider} (up to {provider.max_class}); "
            f"tier {c.tier}; worst case ${worst:.6f}"
        )
        call = CallRow(
            id="call_" + uuid.uuid4().hex[:24],
            request_id=request_id,
            ts=now,
            user=c.user,
            provider=model.provider,
            model=model.name,
            key=key_name,
            data_class=c.data_class,
            reason=reason,
        )
        return call, wire, self.budgets.reserve(call, model, worst, now)

    def _budget_error(self, blocked: dict[str, bp.Charge], attempts: list[dict[str, Any]]) -> TiqoError:
        charge = min(blocked.values(), key=lambda c: c.resets_at)
        reasons = "; ".join(f"{a['model']}: {a['error']}" for a in attempts) or f"the {charge.label} budget is spent"
        reset = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(charge.resets_at))
        return BudgetExceeded(
            f"budget exhausted for external models ({reasons}); the {charge.label} budget resets at {reset}",
            retry_after=max(1.0, charge.resets_at - self.clock()),
            hint="`tiqo budget show` lists the limits; `tiqo budget set` raises one; local models keep working",
        )

    def _nothing_kept(self, decision: Decision, blocked: dict[str, bp.Charge]) -> TiqoError:
        reasons = "; ".join(f"{c.model}: {c.reason}" for c in decision.candidates)
        if decision.classification.data_class == "restricted":
            return ClassificationRefused(
                f"restricted data never leaves the machine, and no local model can serve this request ({reasons})",
                hint="register a local model that can (`tiqo models add`), or name one with -m",
            )
        if blocked:
            attempts = [{"model": m, "error": f"the {c.label} budget is spent"} for m, c in blocked.items()]
            return self._budget_error(blocked, attempts)
        retry = [self.hub.retry_after(c.provider) for c in decision.candidates if c.provider not in (LOCAL, "?")]
        waits = [r for r in retry if r is not None]
        if waits:
            return RateLimited(
                f"no candidate can serve this request now ({reasons})",
                retry_after=min(waits),
                hint="`tiqo keys list` and `tiqo providers list` show what is cooling down",
            )
        return NoCandidate(
            f"no candidate can serve this request ({reasons})",
            hint=f"`tiqo route explain` shows the decision; routes come from {decision.source}",
        )

    def _all_failed(self, decision: Decision, failures: list[AttemptFailed | TiqoError], served: Served) -> TiqoError:
        if not failures:
            waits = [w for w in (self.hub.retry_after(c.provider) for c in decision.kept) if w is not None]
            summary = "; ".join(f"{a['model']}: {a['error']}" for a in served.attempts)
            return RateLimited(
                f"no candidate can serve this request now ({summary})",
                retry_after=min(waits) if waits else 1,
                hint="`tiqo keys list` and `tiqo providers list` show what is cooling down",
            )
        if all(isinstance(f, AttemptFailed) and f.kind == "unsupported" for f in failures):
            return NoCandidate("; ".join(f.message for f in failures if isinstance(f, AttemptFailed)))
        if all(isinstance(f, TiqoError) for f in failures) and len(failures) == 1:
            err = failures[0]
            assert isinstance(err, TiqoError)
            return err
        summary = "; ".join(f"{a['model']} ({a['provider']}): {a['error']}" for a in served.attempts)
        waits = [f.retry_after for f in failures if isinstance(f, AttemptFailed) and f.retry_after is not None]
        if all(isinstance(f, AttemptFailed) and f.kind in ("rate_limited", "quota_exhausted") for f in failures):
            return RateLimited(f"every candidate is rate limited: {summary}", retry_after=min(waits) if waits else 1)
        return UpstreamFailed(
            f"every candidate failed: {summary}",
            hint="`tiqo providers list` shows provider health; `tiqo route explain` shows the candidates",
        )

    def _attempt(
        self,
        model: CatalogModel,
        key_name: str | None,
        call: CallRow | None,
        body: oa.ChatCompletionRequest,
        wire: dict[str, Any],
        decision: Decision,
        served: Served,
        scope: str,
        use_cache: bool,
    ) -> AsyncGenerator[Piece, None]:
        if model.local:
            inner = self._local(model, body)
        else:
            provider = self.hub.providers[model.provider]
            secret = self.hub.secret(provider.name, key_name)
            inner = stream_external(self.upstream, secret, provider, model, wire, call.id if call else None)
        return self._account(inner, model, key_name, call, wire, decision, served, scope, use_cache)

    async def _account(
        self,
        pieces: AsyncGenerator[Piece, None],
        model: CatalogModel,
        key_name: str | None,
        call: CallRow | None,
        wire: dict[str, Any],
        decision: Decision,
        served: Served,
        scope: str,
        use_cache: bool,
    ) -> AsyncGenerator[Piece, None]:
        """Pass pieces through; on the end, record health, usage, cost, the cache entry and settle the budget."""
        provider = None if model.local else self.hub.providers[model.provider]
        if provider is not None:
            now = self.clock()
            provider.breaker.begin(now)
            if key_name is not None:
                provider.pool.begin(key_name, now)
        text: list[str] = []
        tools: list[dict[str, Any]] = []
        ok = False
        error: str | None = None
        try:
            async for piece in pieces:
                if piece.text:
                    text.append(piece.text)
                if piece.tool_calls:
                    tools.extend(piece.tool_calls)
                if piece.finish_reason is not None:
                    served.prompt_tokens = piece.prompt_tokens or decision.est_prompt_tokens
                    served.completion_tokens = piece.completion_tokens or max(1, len("".join(text)) // 4)
                    served.cost_usd = model.cost(served.prompt_tokens, served.completion_tokens)
                    ok = True
                    if use_cache:
                        self._store_cache(wire, model.name, scope, "".join(text), tools, piece, served)
                    if provider is not None:
                        self._record_success(provider, key_name, served.prompt_tokens + served.completion_tokens)
                yield piece
        except AttemptFailed as exc:
            error = exc.kind
            if provider is not None:
                self._record_failure(provider, key_name, exc)
            raise
        finally:
            if provider is not None and not ok:
                provider.breaker.release()
                if key_name is not None:
                    provider.pool.release(key_name)
                    self.hub.persist(provider.name, key_name)
            if call is not None:
                self._settle(call, model, ok, error, served, decision, text)

    def _settle(
        self,
        call: CallRow,
        model: CatalogModel,
        ok: bool,
        error: str | None,
        served: Served,
        decision: Decision,
        text: list[str],
    ) -> None:
        """Release the reservation and charge what the call cost: the reported usage; for a call cut off after
        tokens arrived, the prompt plus what arrived (the provider bills those); nothing for one that never did."""
        if ok:
            t_in, t_out, status = served.prompt_tokens, served.completion_tokens, "ok"
        elif text:
            t_in, t_out, status = decision.est_prompt_tokens, max(1, len("".join(text)) // 4), "interrupted"
            served.prompt_tokens, served.completion_tokens = t_in, t_out
            served.cost_usd = model.cost(t_in, t_out)
        else:
            t_in, t_out, status = 0, 0, "failed"
        try:
            self.budgets.settle(
                call.id,
                call.user,
                model,
                status=status,
                cost=bp.to_nano(model.cost(t_in, t_out)),
                tokens_in=t_in,
                tokens_out=t_out,
                error=error if not ok else None,
            )
        except Exception:  # never lose the answer over the ledger; the call stays pending and start-up settles it
            log.exception("settling %s failed", call.id)

    def _record_success(self, provider: Provider, key_name: str | None, tokens: int) -> None:
        provider.breaker.success()
        if key_name is not None:
            provider.pool.success(key_name, tokens, self.clock())
            self.hub.persist(provider.name, key_name)

    def _record_failure(self, provider: Provider, key_name: str | None, exc: AttemptFailed) -> None:
        now = self.clock()
        if exc.kind in HEALTH_FAILURES:
            provider.breaker.failure(now, f"{exc.kind}: {exc.message}"[:120])
        else:
            provider.breaker.release()
        if key_name is not None:
            provider.pool.failure(key_name, exc.kind, now, exc.retry_after, exc.message)
            self.hub.persist(provider.name, key_name, now=True)

    def _store_cache(
        self,
        wire: dict[str, Any],
        model: str,
        scope: str,
        text: str,
        tools: list[dict[str, Any]],
        last: Piece,
        served: Served,
    ) -> None:
        entry = {
            "text": text,
            "tool_calls": merge_tool_calls(tools) or None,
            "finish_reason": last.finish_reason,
            "prompt_tokens": last.prompt_tokens,
            "completion_tokens": last.completion_tokens,
            "model": model,
        }
        try:
            self.store.cache_put(
                cachepol.cache_key(wire, model, scope), scope, model, entry, self.settings["cache.ttl"], self.clock()
            )
        except Exception:  # the cache is an optimisation: never fail an answer because of it
            log.exception("cache write failed")

    # ------------------------------------------------------------ backends
    async def _local(self, model: CatalogModel, body: oa.ChatCompletionRequest) -> AsyncGenerator[Piece, None]:
        spec = self.registry.resolve(model.name)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        params = generation_params(body)
        keep_alive = None if body.keep_alive is None else parse_duration(body.keep_alive)

        def call(runner: Runner, stop: StopFlag) -> Iterator[Piece]:
            return runner.chat(messages, params, stop)

        async for piece in self.daemon.generate(spec, keep_alive, call):
            yield piece


def generation_params(body: oa.ChatCompletionRequest | oa.CompletionRequest) -> GenerationParams:
    return GenerationParams(
        max_tokens=body.token_limit(),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(body.stop_list()),
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.logit_bias,
    )


def _local_retryable(exc: TiqoError) -> bool:
    """Local failures that another candidate may not have: busy, too long for this window, failed to load."""
    return isinstance(exc, (Busy, ContextOverflow, ModelLoadFailed))


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1)))


def _msg(exc: BaseException) -> str:
    return exc.message if isinstance(exc, (AttemptFailed, TiqoError)) else str(exc)
