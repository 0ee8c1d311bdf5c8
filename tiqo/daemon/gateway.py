"""Dispatch of chat requests: classify → route → cache → try candidates (keys, breakers, fallback) → account.

Fallback happens before the caller has received a byte: a streamed answer is committed to a candidate only when
its first token (or its end) arrived; a JSON answer is committed only when the whole generation succeeded. After
commit a failure is an explicit error event, and it still counts against the provider's and key's health.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

from tiqo.core.durations import parse_duration
from tiqo.core.errors import (
    BadRequest,
    Busy,
    ContextOverflow,
    ModelLoadFailed,
    ModelNotFound,
    NoCandidate,
    RateLimited,
    TiqoError,
    UpstreamFailed,
)
from tiqo.core.settings import Settings
from tiqo.daemon.pieces import merge_tool_calls, prime, replay
from tiqo.daemon.providers import Provider, ProviderHub
from tiqo.daemon.registry import Registry
from tiqo.daemon.routing_config import default_routing, restricted_patterns, routing_config
from tiqo.daemon.store import Store
from tiqo.daemon.upstream import AttemptFailed, UpstreamClient, sse_events
from tiqo.policy import cache as cachepol
from tiqo.policy.breaker import HEALTH_FAILURES
from tiqo.policy.classify import DATA_CLASSES, Classification, classify
from tiqo.policy.routing import AUTO, LOCAL, CatalogModel, Decision, RoutingConfig, estimate_tokens, plan
from tiqo.protocol import openai as oa
from tiqo.sdk.engine import GenerationParams, Piece, Runner, StopFlag
from tiqo.sdk.provider import UnsupportedRequest

log = logging.getLogger("tiqo.gateway")
DEFAULT_MAX_TOKENS = 1024  # for cost estimates and context checks when a request sets none
_BACKOFF_BASE, _BACKOFF_CAP = 0.05, 1.0


@dataclass
class RequestMeta:
    """Who asks and how: from x-tiqo-* headers (or the OpenAI ``user`` field), else the settings."""

    user: str = "local"
    tier: str | None = None
    data_class: str | None = None
    cache: str = "use"  # use | refresh | off
    task: str | None = None


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
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.hub = hub
        self.store = store
        self.daemon = daemon
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
        tier = meta.tier or self.settings["routing.tier"]
        tiers = self.settings.toml.get("tiers") or default_routing().get("tiers", {})
        if tiers and tier != "default" and tier not in tiers:
            raise BadRequest(
                f"unknown tier {tier!r}; configured tiers: {', '.join(tiers)}",
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
            default_class=self.settings["routing.data_class"],
            restricted_patterns=self._patterns,
            user=meta.user,
            tier=tier,
            task=meta.task,
        )

    def decide(self, body: oa.ChatCompletionRequest, meta: RequestMeta) -> Decision:
        classification = self.classify(body, meta)
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

        def availability(model: CatalogModel) -> str | None:
            if model.local:
                return None
            return self.hub.unavailable(model.provider, est + max_tokens)

        return plan(
            classification,
            requested=requested,
            catalog=catalog,
            config=config,
            availability=availability,
            est_prompt_tokens=est,
            max_tokens=max_tokens,
            needs=body.needs(),
        )

    # ------------------------------------------------------------ serving
    async def chat(
        self, body: oa.ChatCompletionRequest, meta: RequestMeta, *, stream: bool
    ) -> tuple[Served, AsyncGenerator[Piece, None]]:
        """Pick a candidate that answers. Returns what served and the pieces, the first one already in hand
        (streams) or all of them (JSON). Raises a TiqoError when nothing could serve."""
        decision = self.decide(body, meta)
        served = Served(route=decision.source)
        kept = decision.kept
        if not kept:
            raise self._nothing_kept(decision)
        wire = body.wire()
        scope = cachepol.scope_for(decision.classification.data_class, decision.classification.user)
        use_cache = meta.cache != "off" and cachepol.cacheable(self.settings["cache.mode"], wire)
        if use_cache and meta.cache == "use":
            now = self.clock()
            for cand in kept:
                hit = self.store.cache_get(cachepol.cache_key(wire, cand.model, scope), now)
                if hit is not None:
                    served.backend, served.provider, served.model, served.cache = "cache", "cache", cand.model, "hit"
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
                try:
                    pieces = self._attempt(model, key_name, body, wire, meta, decision, served, scope, use_cache)
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
                served.provider, served.model = model.provider, model.name
                served.est_cost_usd = cand.est_cost_usd
                return served, ready
        raise self._all_failed(decision, failures, served)

    def _nothing_kept(self, decision: Decision) -> TiqoError:
        reasons = "; ".join(f"{c.model}: {c.reason}" for c in decision.candidates)
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
        body: oa.ChatCompletionRequest,
        wire: dict[str, Any],
        meta: RequestMeta,
        decision: Decision,
        served: Served,
        scope: str,
        use_cache: bool,
    ) -> AsyncGenerator[Piece, None]:
        if model.local:
            inner = self._local(model, body)
        else:
            inner = self._external(self.hub.providers[model.provider], model, key_name, wire)
        return self._account(inner, model, key_name, wire, decision, served, scope, use_cache)

    async def _account(
        self,
        pieces: AsyncGenerator[Piece, None],
        model: CatalogModel,
        key_name: str | None,
        wire: dict[str, Any],
        decision: Decision,
        served: Served,
        scope: str,
        use_cache: bool,
    ) -> AsyncGenerator[Piece, None]:
        """Pass pieces through; on the end, record health, usage, cost and the cache entry."""
        provider = None if model.local else self.hub.providers[model.provider]
        if provider is not None:
            now = self.clock()
            provider.breaker.begin(now)
            if key_name is not None:
                provider.pool.begin(key_name, now)
        text: list[str] = []
        tools: list[dict[str, Any]] = []
        ok = False
        try:
            async for piece in pieces:
                if piece.text:
                    text.append(piece.text)
                if piece.tool_calls:
                    tools.extend(piece.tool_calls)
                if piece.finish_reason is not None:
                    prompt_t = piece.prompt_tokens or decision.est_prompt_tokens
                    completion_t = piece.completion_tokens or max(1, len("".join(text)) // 4)
                    served.cost_usd = model.cost(prompt_t, completion_t)
                    ok = True
                    if use_cache:
                        self._store_cache(wire, model.name, scope, "".join(text), tools, piece, served)
                    if provider is not None:
                        self._record_success(provider, key_name, prompt_t + completion_t)
                yield piece
        except AttemptFailed as exc:
            if provider is not None:
                self._record_failure(provider, key_name, exc)
            raise
        finally:
            if provider is not None and not ok:
                provider.breaker.release()
                if key_name is not None:
                    provider.pool.release(key_name)
                    self.hub.persist(provider.name, key_name)

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

    async def _external(
        self, provider: Provider, model: CatalogModel, key_name: str | None, wire: dict[str, Any]
    ) -> AsyncGenerator[Piece, None]:
        kind = provider.kind
        assert kind is not None
        upstream_model = model.upstream_model or model.name
        body = {**wire, "model": upstream_model}
        secret = self.hub.secret(provider.name, key_name)
        try:
            request = kind.chat_request(provider.config, upstream_model, body, secret)
        except UnsupportedRequest as exc:
            raise AttemptFailed("unsupported", f"{provider.config.kind} cannot express this request: {exc}") from None
        try:
            resp = await self.upstream.open(request, kind, provider.timeouts)
        except AttemptFailed as exc:
            exc.message = _scrub(exc.message, secret)
            raise
        translator = kind.translator(upstream_model)
        finish: str | None = None
        usage: dict[str, Any] = {}

        def convert(chunks: list[dict[str, Any]]) -> Iterator[Piece]:
            nonlocal finish, usage
            for chunk in chunks:
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    delta = choice.get("delta") or {}
                    content = delta.get("content") or ""
                    calls = delta.get("tool_calls")
                    if content or calls:
                        yield Piece(content, tool_calls=calls)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]

        events = sse_events(resp, provider.timeouts)
        try:
            async for event, data in events:
                try:
                    chunks = translator.feed(event, data)
                except Exception as exc:
                    raise AttemptFailed("protocol", _scrub(_upstream_error_text(exc), secret)) from None
                for piece in convert(chunks):
                    yield piece
            try:
                tail = translator.close()
            except Exception as exc:
                raise AttemptFailed("protocol", _scrub(_upstream_error_text(exc), secret)) from None
            for piece in convert(tail):
                yield piece
        finally:
            await events.aclose()
        yield Piece(
            "",
            finish_reason=finish or "stop",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


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


def _scrub(text: str, secret: str | None) -> str:
    """The daemon is the only side that knows the key: make sure no message carries it."""
    return text.replace(secret, "[redacted]") if secret else text


def _upstream_error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
