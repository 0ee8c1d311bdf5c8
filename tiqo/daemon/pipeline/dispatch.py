"""The shared steps of serving a non-chat request (speech, embeddings) through the daemon's policy: the ledger row,
classification and rate limits, routing with the task's default local model as the last candidate, external calls
with key rotation, breakers and budget reservations, and settling them."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from tiqo.core.errors import TiqoError
from tiqo.daemon.accounting.ledger import CallRow, RequestRow
from tiqo.daemon.catalog.registry import KIND_DEFAULTS
from tiqo.daemon.pipeline.attempts import Ticket, Try
from tiqo.daemon.pipeline.ports import LocalCompute
from tiqo.daemon.pipeline.recording import interrupted
from tiqo.daemon.pipeline.router import Router
from tiqo.daemon.pipeline.served import RequestMeta, Served
from tiqo.daemon.upstream.client import AttemptFailed
from tiqo.daemon.upstream.providers import Provider
from tiqo.policy import budget as bp
from tiqo.policy.classify import Classification
from tiqo.policy.ratelimit import RateLimits
from tiqo.policy.routing import AUTO, CatalogModel, Decision

log = logging.getLogger("tiqo.dispatch")
T = TypeVar("T")


class Dispatch:
    def __init__(self, gateway: Router, local: LocalCompute) -> None:
        self.gateway = gateway
        self.compute = local  # the root's local generation
        self.settings = gateway.settings
        self.registry = gateway.registry
        self.accounting = gateway.accounting
        self.hub = gateway.hub

    def _row(self, meta: RequestMeta, task: str) -> tuple[RequestRow, float]:
        rid = meta.request_id or "req_" + uuid.uuid4().hex[:24]
        return RequestRow(id=rid, ts=self.gateway.clock(), user=meta.user, task=task), time.perf_counter()

    async def _admit(
        self,
        row: RequestRow,
        meta: RequestMeta,
        task: str,
        texts: list[str],
        est_tokens: int,
        scan: list[str] | None = None,
    ) -> tuple[Classification, RateLimits]:
        """Classify (``scan``: every text sent upstream, when that is more than ``texts``), then rate limits."""
        c = await self.gateway.classify_texts(texts, replace(meta, task=task), scan=scan)
        row.tier, row.data_class = c.tier, c.data_class
        limits = self.accounting.rate_limits(c, self.gateway.catalog_and_config()[1])
        self.accounting.admit(c, limits, est_tokens)
        return c, limits

    def _refused(self, row: RequestRow, exc: TiqoError, started: float) -> None:
        row.outcome = "refused" if exc.status < 500 else "error"
        row.error = exc.code
        self.accounting.finish(row, None, started)

    def _openai_name(self, requested: str | None, defaults: tuple[str, ...]) -> str | None:
        """OpenAI's default model names mean "the local default" unless a model of that name is registered."""
        if not requested or requested in AUTO:
            return None
        catalog, config = self.gateway.catalog_and_config()
        if requested in defaults and requested not in catalog and requested not in config.aliases:
            return None
        return requested

    def _decide(
        self,
        c: Classification,
        task: str,
        requested: str | None,
        needs: tuple[str, ...],
        blocked: dict[str, bp.Charge],
        est_tokens: int = 0,
        *,
        local: str | None = None,
    ) -> Decision:
        """``local``: the task's default local model, the last candidate (default: the task's setting)."""
        self.gateway.check_requested(requested)
        _, config = self.gateway.catalog_and_config()
        # [routes.stt|tts|embed] when configured; the task's default local model is always the last candidate
        table = config.routes.get(task) or {"default": ()}
        task_config = replace(
            config,
            routes={task: table},
            local_fallback=local if local is not None else self.settings[KIND_DEFAULTS[task]],
        )
        return self.gateway.plan_route(
            c,
            requested=requested,
            est_prompt_tokens=est_tokens,
            max_tokens=0,
            needs=needs,
            blocked=blocked,
            config=task_config,
        )

    def _served_by(self, served: Served, model: CatalogModel, backend: str, key: str | None) -> None:
        served.backend, served.provider, served.model, served.key = backend, model.provider, model.name, key

    async def _first(
        self,
        decision: Decision,
        served: Served,
        blocked: dict[str, bp.Charge],
        request_id: str,
        *,
        local: Callable[[CatalogModel], Awaitable[T]],
        call: Callable[[CatalogModel, str | None, Provider, str], Awaitable[T]],
        worst: Callable[[CatalogModel], float],
        actual: Callable[[CatalogModel, T], float] | None = None,
        until_end: Callable[[T, Settler], T] | None = None,
    ) -> T:
        """The answer of the first candidate that serves, through the one attempt driver: ``local`` runs a local
        candidate (it sets ``served.backend``), ``call`` an external one with a key's secret, the provider as this
        request's class may see it and the call's id. The budget reservation is ``worst(model)``, settled at
        ``actual(model, answer)`` when given (usage in the answer), else at the reservation; ``until_end``: the
        answer is a stream, settled when it ends (``settled_at_end``: the provider bills the whole input anyway)."""

        def reserve(model: CatalogModel, key: str | None) -> tuple[CallRow, bp.Refusal | None]:
            return self.accounting.open_call(model, key, decision, request_id, worst(model))

        async def attempt(one: Try[CallRow]) -> T:
            if one.reserved is None:
                return await local(one.model)
            model, row = one.model, one.reserved
            provider = self.hub.providers[model.provider]
            try:
                view = self.hub.for_call(provider, decision.classification.data_class)
                answer = await call(model, self.hub.secret(provider.name, one.key), view, row.id)
            except AttemptFailed as exc:
                self._settle(row, model, 0.0, "failed", exc.kind)
                raise
            except BaseException:  # cancelled or unexpected: the reservation must not stay taken until a restart
                self._settle(row, model, 0.0, "failed", "cancelled")
                raise
            assert one.ticket is not None
            one.ticket.succeeded(0)
            if until_end is not None:
                return until_end(answer, Settler(self, row, model, worst(model), one.ticket))
            self._settle(row, model, worst(model) if actual is None else actual(model, answer), "ok", None)
            return answer

        catalog, _ = self.gateway.catalog_and_config()
        answer, _one = await self.gateway.attempts.first(decision, catalog, served, blocked, reserve, attempt)
        return answer

    def _settle(self, call: CallRow, model: CatalogModel, cost: float, status: str, error: str | None) -> None:
        try:
            self.accounting.budgets.settle(
                call.id, call.user, model, status=status, cost=bp.to_nano(cost), tokens_in=0, tokens_out=0, error=error
            )
        except Exception:  # the call stays pending; start-up reconciles it at its reservation
            log.exception("settling %s failed", call.id)

    async def _recorded(
        self,
        served: Served,
        items: AsyncGenerator[T, None],
        row: RequestRow,
        limits: RateLimits,
        started: float,
        is_end: Callable[[T], bool],
        *,
        ends_ok: bool = False,
    ) -> AsyncGenerator[T, None]:
        """Pass items through; write the ledger row when they end, are cut off, or the client goes away."""
        row.outcome = "cancelled"
        try:
            async for item in items:
                if is_end(item):
                    row.outcome = "ok"
                yield item
            if ends_ok:
                row.outcome = "ok"
        except (TiqoError, AttemptFailed) as exc:
            interrupted(row, exc)
            raise
        finally:
            await items.aclose()
            self.accounting.finish(row, served, started)


class Settler:
    """Settles a streamed external answer when it ends, and counts a failure after its first bytes against the
    provider's and the key's health (as chat does)."""

    def __init__(self, dispatch: Dispatch, call: CallRow, model: CatalogModel, cost: float, ticket: Ticket) -> None:
        self.dispatch, self.call, self.model, self.cost, self.ticket = dispatch, call, model, cost, ticket

    def __call__(self, ok: bool) -> None:
        status, error = ("ok", None) if ok else ("interrupted", "cut off")
        self.dispatch._settle(self.call, self.model, self.cost, status, error)


async def settled_at_end(stream: AsyncGenerator[bytes, None], settle: Settler) -> AsyncGenerator[bytes, None]:
    ok = False
    try:
        async for chunk in stream:
            yield chunk
        ok = True
    except AttemptFailed as exc:
        settle.ticket.failed(exc)
        raise
    finally:
        await stream.aclose()
        settle(ok)


def _never(item: object) -> bool:
    return False


async def _prepend(first: T, rest: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()
