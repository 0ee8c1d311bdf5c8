"""The shared steps of serving a non-chat request (speech, embeddings) through the daemon's policy: the ledger row,
classification and rate limits, routing with the task's default local model as the last candidate, external calls
with key rotation, breakers and budget reservations, and settling them."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from typing import Any, TypeVar

from tiqo.core.errors import BadRequest, TiqoError
from tiqo.daemon.accounting.ledger import CallRow, RequestRow
from tiqo.daemon.catalog.registry import KIND_DEFAULTS
from tiqo.daemon.pipeline.fallback import after_failure
from tiqo.daemon.pipeline.ports import LocalCompute, Routing
from tiqo.daemon.pipeline.served import RequestMeta, Served
from tiqo.daemon.upstream.client import AttemptFailed
from tiqo.policy import budget as bp
from tiqo.policy.classify import Classification
from tiqo.policy.ratelimit import RateLimits
from tiqo.policy.routing import AUTO, CatalogModel, Decision

log = logging.getLogger("tiqo.dispatch")
T = TypeVar("T")


class Dispatch:
    def __init__(self, gateway: Routing, daemon: LocalCompute) -> None:
        self.gateway = gateway
        self.daemon = daemon
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

    def _none_served(
        self,
        decision: Decision,
        blocked: dict[str, bp.Charge],
        failures: list[AttemptFailed | TiqoError],
        served: Served,
    ) -> TiqoError:
        if not decision.kept:
            return self.gateway.nothing_kept(decision, blocked)
        if blocked and not failures:
            return self.accounting.budget_error(blocked, served.attempts)
        return self.gateway.all_failed(decision, failures, served)

    async def _external(
        self,
        name: str,
        model: CatalogModel,
        decision: Decision,
        served: Served,
        failures: list[AttemptFailed | TiqoError],
        blocked: dict[str, bp.Charge],
        request_id: str,
        *,
        worst: float,
        call: Callable[[str | None, Any, str], Any],
        settle_now: bool = True,
        actual: Callable[[Any], float] | None = None,
    ) -> Any:
        """Try one external candidate with each usable key (a key-level failure moves to the next key). Returns the
        call's result, or None when this candidate cannot serve (the reason is in ``served.attempts``)."""
        provider = self.hub.providers[model.provider]
        tried: set[str] = set()
        for _ in range(max(1, self.settings["routing.max_attempts"])):
            why = self.hub.unavailable(model.provider, 0)
            why = why or self.hub.take_probe(model.provider)
            if why is not None:
                served.attempts.append({"model": name, "provider": model.provider, "error": why})
                return None
            key_name = None
            if self.hub.has_keys(model.provider):
                key_name = self.hub.pick_key(model.provider, 0, tried)
                if key_name is None:
                    served.attempts.append(
                        {"model": name, "provider": model.provider, "error": "no untried usable key"}
                    )
                    return None
                tried.add(key_name)
            row, refusal = self.accounting.open_call(model, key_name, decision, request_id, worst)
            if refusal is not None:
                blocked[name] = refusal.charge
                served.attempts.append({"model": name, "provider": model.provider, "error": refusal.message})
                return None
            now = self.gateway.clock()
            provider.breaker.begin(now)
            if key_name is not None:
                provider.pool.begin(key_name, now)
            try:
                view = self.hub.for_call(provider, decision.classification.data_class)
                result = await call(self.hub.secret(provider.name, key_name), view, row.id)
            except AttemptFailed as exc:
                failures.append(exc)
                served.attempts.append(
                    {"model": name, "provider": model.provider, "key": key_name, "error": exc.message, "kind": exc.kind}
                )
                log.info("%s via %s failed (%s): %s", name, model.provider, exc.kind, exc.message)
                self.gateway.record_failure(provider, key_name, exc)
                self._settle(row, model, 0.0, "failed", exc.kind)
                step = after_failure(exc, key_name)
                if step == "stop":
                    raise BadRequest(f"{model.provider} rejected the request: {exc.message}") from None
                if step == "key":
                    continue
                if self.hub.replica_takes_failure(model.provider, exc.kind):
                    tried.discard(key_name or "")  # cut off by one replica while another is up: try that one
                    continue
                return None
            except BaseException:
                # Cancelled (the client hung up mid-call) or an unexpected error: it says nothing about the provider's
                # health, but the probe slot, the key's slot and the budget reservation must not stay taken (the
                # reservation would otherwise count against the budget until the daemon restarts).
                provider.breaker.release()
                if key_name is not None:
                    provider.pool.release(key_name)
                self._settle(row, model, 0.0, "failed", "cancelled")
                raise
            self.gateway.record_success(provider, key_name, 0)
            self._served_by(served, model, model.provider, key_name)
            if settle_now:  # at the real cost when the answer says it (usage), else the reserved one
                self._settle(row, model, worst if actual is None else actual(result), "ok", None)
            else:  # a speech stream: settled when it ends (the provider bills the whole input either way)
                result = _with_settle(result, _Settler(self, row, model, worst, provider, key_name))
            return result
        return None

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
        except TiqoError as exc:
            row.outcome, row.error = "interrupted", exc.code
            raise
        except AttemptFailed:
            row.outcome, row.error = "interrupted", "stream_interrupted"
            raise
        finally:
            await items.aclose()
            self.accounting.finish(row, served, started)


class _Settler:
    def __init__(
        self, voice: Dispatch, call: CallRow, model: CatalogModel, cost: float, provider: Any, key: str | None
    ) -> None:
        self.voice, self.call, self.model, self.cost = voice, call, model, cost
        self.provider, self.key = provider, key

    def __call__(self, ok: bool) -> None:
        self.voice._settle(self.call, self.model, self.cost, "ok" if ok else "interrupted", None if ok else "cut off")

    def failed(self, exc: AttemptFailed) -> None:
        """A provider that dies after the first bytes still counts against its and the key's health (as in chat)."""
        self.voice.gateway.record_failure(self.provider, self.key, exc)


async def _with_settle(stream: AsyncGenerator[bytes, None], settle: _Settler) -> AsyncGenerator[bytes, None]:
    ok = False
    try:
        async for chunk in stream:
            yield chunk
        ok = True
    except AttemptFailed as exc:
        settle.failed(exc)
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
