"""Dispatch of chat requests: classify → route → cache → try candidates (keys, breakers, fallback) → account.

Fallback happens before the caller has received a byte: a streamed answer is committed to a candidate only when
its first token (or its end) arrived; a JSON answer is committed only when the whole generation succeeded. After
commit a failure is an explicit error event, and it still counts against the provider's and key's health.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from tiqo.core.durations import parse_duration
from tiqo.core.errors import (
    BadRequest,
    TiqoError,
)
from tiqo.core.settings import Settings
from tiqo.daemon.accounting.budgets import Budgets
from tiqo.daemon.accounting.events import EventBus
from tiqo.daemon.accounting.ledger import CallRow, Ledger, RequestRow
from tiqo.daemon.accounting.metrics import Metrics
from tiqo.daemon.cache.response_cache import CacheUse, ResponseCache
from tiqo.daemon.catalog.registry import Registry
from tiqo.daemon.pipeline.attempts import Rules, Ticket, Try
from tiqo.daemon.pipeline.pieces import prime, replay
from tiqo.daemon.pipeline.ports import LocalCompute
from tiqo.daemon.pipeline.recording import Accounting
from tiqo.daemon.pipeline.router import Router
from tiqo.daemon.pipeline.served import RequestMeta, Served
from tiqo.daemon.state.shared import SharedState
from tiqo.daemon.state.store import Store
from tiqo.daemon.upstream.client import AttemptFailed, ReadAhead
from tiqo.daemon.upstream.external import stream_external
from tiqo.daemon.upstream.providers import ProviderHub
from tiqo.policy import budget as bp
from tiqo.policy.classify import Classification
from tiqo.policy.outbound import Outbound
from tiqo.policy.ratelimit import RateLimits
from tiqo.policy.routing import (
    CatalogModel,
    Decision,
    estimate_tokens,
)
from tiqo.protocol import openai as oa
from tiqo.sdk.engine import ChatRunner, GenerationParams, Piece, StopFlag

log = logging.getLogger("tiqo.gateway")


__all__ = ["Gateway", "RequestMeta", "Served", "generation_params"]


class Gateway(Router):
    """The text gateway: chat and completions through the router, the response cache and the attempt driver."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        hub: ProviderHub,
        store: Store,
        local: LocalCompute,  # the root's local generation
        ledger: Ledger,
        budgets: Budgets,
        events: EventBus,
        metrics: Metrics | None = None,
        shared: SharedState | None = None,
    ) -> None:
        shared = shared or SharedState()
        days, limiter = shared.days, shared.limiter
        accounting = Accounting(settings, hub, ledger, budgets, events, lambda: self.clock(), metrics, limiter, days)
        super().__init__(settings, registry, hub, accounting)
        self.store, self.compute, self.ledger, self.events = store, local, ledger, events
        self.cache = ResponseCache(shared.cache or store, settings, lambda: self.clock())

    async def admit_local(self, body: oa.CompletionRequest, meta: RequestMeta) -> tuple[RequestRow, RateLimits, float]:
        """Classification, rate limits and the ledger row of a text completion (a named local model, no routing)."""
        started = time.perf_counter()
        as_chat = oa.ChatCompletionRequest.model_validate(
            {"model": body.model, "messages": [{"role": "user", "content": body.prompt_text()}]}
        )
        row = RequestRow(id=meta.request_id or "req_" + uuid.uuid4().hex[:24], ts=self.clock(), user=meta.user)
        try:
            c = await self.classify(as_chat, meta)
            row.tier, row.task, row.data_class = c.tier, "completion", c.data_class
            limits = self.accounting.rate_limits(c, self.catalog_and_config()[1])
            self.accounting.admit(c, limits, estimate_tokens([body.prompt_text()]))
        except TiqoError as exc:
            row.outcome, row.error = "refused", exc.code
            self.accounting.finish(row, None, started)
            raise
        return row, limits, started

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
            wire = body.wire()  # once: classification, the cache key and the upstream calls all read it
            classification, sent = await self.examine(body, meta, wire)
            row.tier, row.task, row.data_class = classification.tier, classification.task, classification.data_class
            limits = self.accounting.rate_limits(classification, self.catalog_and_config()[1])
            self.accounting.admit(classification, limits, sent.est_prompt_tokens)
            served, pieces = await self._serve(body, wire, meta, classification, sent, row.id, stream=stream)
        except TiqoError as exc:
            row.outcome = "refused" if exc.status < 500 else "error"
            row.error = exc.code
            self.accounting.finish(row, None, started)
            raise
        return served, self.accounting.recorded(served, pieces, row, body, limits, started)

    async def _serve(
        self,
        body: oa.ChatCompletionRequest,
        wire: dict[str, Any],
        meta: RequestMeta,
        classification: Classification,
        sent: Outbound,
        request_id: str,
        *,
        stream: bool,
    ) -> tuple[Served, AsyncGenerator[Piece, None]]:
        blocked: dict[str, bp.Charge] = {}
        decision = self.decide(body, classification, sent, blocked)
        served = Served(route=decision.source)
        kept = decision.kept
        if not kept:
            raise self.attempts.nothing_kept(decision, blocked)
        cache = await self.cache.use(wire, decision.classification, meta.cache, named_class=meta.data_class is not None)
        if cache is not None and meta.cache == "use":
            hit = await self.cache.lookup(wire, [c.model for c in kept], cache)
            if hit is not None:
                served.cached(hit)
                return served, replay(hit.answer)
        served.cache = "off" if cache is None else "miss"

        catalog, _ = self.catalog_and_config()

        def reserve(model: CatalogModel, key: str | None) -> tuple[tuple[CallRow, dict[str, Any]], bp.Refusal | None]:
            call, call_wire, refusal = self.accounting.reserve(
                body, wire, model, key, decision, request_id, sent.worst_prompt_tokens
            )
            return (call, call_wire), refusal

        async def attempt(one: Try[tuple[CallRow, dict[str, Any]]]) -> AsyncGenerator[Piece, None]:
            call, call_wire = one.reserved or (None, wire)
            pieces = self._attempt(one, call, body, call_wire, decision, served, cache)
            ready = await prime(pieces, stream)
            if one.model.local:
                served.backend = f"local:{self.registry.resolve(one.model.name).engine}"
            return ready

        need = decision.est_prompt_tokens + decision.max_tokens
        rules = Rules(per_request=True, need_tokens=need, key_tokens=decision.est_prompt_tokens)
        ready, one = await self.attempts.first(decision, catalog, served, blocked, reserve, attempt, rules)
        served.est_cost_usd = one.candidate.est_cost_usd
        return served, ready

    def _attempt(
        self,
        one: Try[Any],
        call: CallRow | None,
        body: oa.ChatCompletionRequest,
        wire: dict[str, Any],
        decision: Decision,
        served: Served,
        cache: CacheUse | None,
    ) -> AsyncGenerator[Piece, None]:
        model = one.model
        served.ahead = ReadAhead()  # this attempt's (an earlier one may have failed with more in hand)
        if model.local:
            inner = self._local(model, body)
        else:
            provider = self.hub.providers[model.provider]
            secret = self.hub.secret(provider.name, one.key)
            view = self.hub.for_call(provider, decision.classification.data_class)
            inner = stream_external(self.upstream, secret, view, model, wire, call.id if call else None, served.ahead)
        return self._account(inner, model, one.ticket, call, wire, decision, served, cache)

    async def _account(
        self,
        pieces: AsyncGenerator[Piece, None],
        model: CatalogModel,
        ticket: Ticket | None,
        call: CallRow | None,
        wire: dict[str, Any],
        decision: Decision,
        served: Served,
        cache: CacheUse | None,
    ) -> AsyncGenerator[Piece, None]:
        """Pass pieces through; on the end, record health, usage, cost, the cache entry and settle the budget. The
        ticket (external: the breaker and the key) lives as long as the stream: a failure after the first byte
        still counts against the provider's and the key's health."""
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
                    if cache is not None:
                        self.cache.put(wire, model.name, cache, "".join(text), tools, piece)
                    if ticket is not None:
                        ticket.succeeded(served.prompt_tokens + served.completion_tokens)
                yield piece
        except AttemptFailed as exc:
            error = exc.kind
            if ticket is not None:
                ticket.failed(exc)
            raise
        finally:
            if ticket is not None and not ok:
                ticket.released()
            if call is not None:
                self.accounting.settle(call, model, ok, error, served, decision, text)

    # ------------------------------------------------------------ backends
    async def _local(self, model: CatalogModel, body: oa.ChatCompletionRequest) -> AsyncGenerator[Piece, None]:
        spec = self.registry.resolve(model.name)
        messages = [_local_message(m) for m in body.messages]
        params = generation_params(body)
        keep_alive = None if body.keep_alive is None else parse_duration(body.keep_alive)

        def call(runner: ChatRunner, stop: StopFlag) -> Iterator[Piece]:
            return runner.chat(messages, params, stop)

        async for piece in self.compute.generate(spec, keep_alive, call):
            yield piece


def _local_message(m: oa.ChatMessage) -> dict[str, str]:
    """A turn for a local engine: its text, and an assistant's earlier tool calls as JSON text."""
    message = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
    calls = (m.model_extra or {}).get("tool_calls")
    if m.role == "assistant" and isinstance(calls, list) and calls:
        message["tool_calls"] = json.dumps(calls)
    return message


def generation_params(body: oa.ChatCompletionRequest | oa.CompletionRequest) -> GenerationParams:
    """The sampling parameters a local engine gets; a chat request's ``response_format`` and tools are checked here
    (a 400 naming the field when one is malformed)."""
    json_format, tools = None, None
    if isinstance(body, oa.ChatCompletionRequest):
        json_format = oa.json_format(body.response_format)
        tools = oa.tool_use(body.tools, body.tool_choice, body.parallel_tool_calls)
        if json_format is not None and tools is not None:
            raise BadRequest(
                "local models take response_format or tools, not both in one request",
                param="response_format",
                hint='drop one, or send tool_choice "none" with the response_format',
            )
    return GenerationParams(
        max_tokens=body.token_limit(),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(body.stop_list()),
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.logit_bias,
        json_format=json_format,
        tools=tools,
    )
