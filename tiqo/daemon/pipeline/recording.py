"""The ledger and budget side of serving a request: rate limits on admission, the budget reservation and audit row of
each external call and its settlement, and the request's ledger row when it ends."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

from tiqo.core.errors import BudgetExceeded, RateLimited, TiqoError
from tiqo.core.settings import Settings
from tiqo.daemon.accounting.budgets import Budgets
from tiqo.daemon.accounting.events import EventBus
from tiqo.daemon.accounting.ledger import CallRow, Ledger, RequestRow
from tiqo.daemon.accounting.metrics import Metrics
from tiqo.daemon.pipeline.served import Served
from tiqo.daemon.state.shared import DayCounts, Limiter
from tiqo.daemon.upstream.client import AttemptFailed
from tiqo.daemon.upstream.providers import ProviderHub
from tiqo.policy import budget as bp
from tiqo.policy.classify import Classification
from tiqo.policy.ratelimit import RateLimiter, RateLimits
from tiqo.policy.routing import CatalogModel, Decision, RoutingConfig
from tiqo.protocol import openai as oa
from tiqo.sdk.engine import Piece

log = logging.getLogger("tiqo.gateway")
DEFAULT_MAX_TOKENS = 1024  # for cost estimates and context checks when a request sets none
# A budgeted external call without max_tokens is sent with this bound, so its reservation is a real worst case.
BUDGET_MAX_TOKENS = 4096


def interrupted(row: RequestRow, exc: TiqoError | AttemptFailed) -> None:
    """The row of a request whose answer was cut off after it began: by a TiqoError (its code) or the provider."""
    row.outcome = "interrupted"
    row.error = exc.code if isinstance(exc, TiqoError) else "stream_interrupted"


class Accounting:
    def __init__(
        self,
        settings: Settings,
        hub: ProviderHub,
        ledger: Ledger,
        budgets: Budgets,
        events: EventBus,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        limiter: Limiter | None = None,
        days: DayCounts | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics  # None: metrics.enabled is off
        self.hub = hub
        self.ledger = ledger
        self.budgets = budgets
        self.events = events
        self.limiter: Limiter = limiter or RateLimiter()
        self.days: DayCounts = days or ledger  # requests per day: the ledger's table, or shared
        self.clock = clock

    def rate_limits(self, classification: Classification, config: RoutingConfig) -> RateLimits:
        """The user's limits: their tier's, with their own [users.NAME] values over them."""
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
            if self.days.count_request(user, day, limits.rpd) is None:
                raise RateLimited(
                    f"user {user} has used the {limits.rpd} requests per day of tier {classification.tier}",
                    retry_after=max(1.0, resets - now),
                    hint="the allowance resets at midnight (budget.timezone); [users.NAME] rpd raises it",
                )

    async def recorded(
        self,
        served: Served,
        pieces: AsyncGenerator[Piece, None],
        row: RequestRow,
        body: oa.ChatCompletionRequest | oa.CompletionRequest,
        limits: RateLimits,
        started: float,
    ) -> AsyncGenerator[Piece, None]:
        """Pass pieces through and write the request's ledger row when they end (or the client goes away)."""
        text: list[str] = []
        row.outcome = "cancelled"  # until the end arrives (a client that hangs up never lets it)
        try:
            async for piece in pieces:
                if served.first_token_s is None and (piece.text or piece.tool_calls):
                    served.first_token_s = time.perf_counter() - started
                if piece.text:
                    text.append(piece.text)
                if piece.finish_reason is not None:
                    row.outcome = "ok"
                    if not served.completion_tokens:  # served outside routing (text completions)
                        served.prompt_tokens, served.completion_tokens = piece.prompt_tokens, piece.completion_tokens
                yield piece
        except (TiqoError, AttemptFailed) as exc:
            interrupted(row, exc)
            raise
        finally:
            await pieces.aclose()
            if limits.tpm:
                self.limiter.charge_tokens(row.user, limits, served.completion_tokens, self.clock())
            if self.settings["ledger.store_content"] and row.data_class != "restricted":
                if isinstance(body, oa.CompletionRequest):
                    asked: dict[str, Any] = {"prompt": body.prompt_text()}
                else:
                    asked = {"messages": [{"role": m.role, "content": m.text()} for m in body.messages]}
                row.content = json.dumps({**asked, "answer": "".join(text)})
            self.finish(row, served, started)

    def finish(self, row: RequestRow, served: Served | None, started: float) -> None:
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
        if self.metrics is not None:
            self.metrics.observe(row, served.first_token_s if served is not None else None)
        data = {k: v for k, v in row.__dict__.items() if k not in ("content", "cost_nusd")}
        data["cost_usd"] = row.cost_nusd / bp.NANO
        self.events.publish("request", data)  # into the history too, so a reconnecting client can catch up

    def reserve(
        self,
        body: oa.ChatCompletionRequest,
        wire: dict[str, Any],
        model: CatalogModel,
        key_name: str | None,
        decision: Decision,
        request_id: str,
        prompt_bound: int,
    ) -> tuple[CallRow, dict[str, Any], bp.Refusal | None]:
        """The audit row of an external call, and its budget reservation at the worst-case cost: ``prompt_bound``
        prompt tokens (``Outbound.worst_prompt_tokens``: every byte sent a token, tools, tool calls and pass-through
        fields included; no tokenizer counts more), plus max_tokens (sent upstream when the request set none)."""
        c = decision.classification
        limit = body.token_limit()
        now = self.clock()
        if limit is None and self.budgets.charges(c.user, model, now):
            limit = BUDGET_MAX_TOKENS
            wire = {**wire, "max_tokens": limit}
        worst = model.cost(prompt_bound, limit or DEFAULT_MAX_TOKENS)
        call, refusal = self.open_call(model, key_name, decision, request_id, worst)
        return call, wire, refusal

    def open_call(
        self, model: CatalogModel, key_name: str | None, decision: Decision, request_id: str, worst: float
    ) -> tuple[CallRow, bp.Refusal | None]:
        """The audit row of one external call and its budget reservation of ``worst`` USD (None: it fits)."""
        c = decision.classification
        now = self.clock()
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
        return call, self.budgets.reserve(call, model, worst, now)

    def budget_error(self, blocked: dict[str, bp.Charge], attempts: list[dict[str, Any]]) -> TiqoError:
        charge = min(blocked.values(), key=lambda c: c.resets_at)
        reasons = "; ".join(f"{a['model']}: {a['error']}" for a in attempts) or f"the {charge.label} budget is spent"
        message = f"budget exceeded for external models: {reasons}"
        if "resets at" not in message:
            message += f"; the {charge.label} budget resets at " + time.strftime(
                "%Y-%m-%d %H:%M %Z", time.localtime(charge.resets_at)
            )
        return BudgetExceeded(
            message,
            retry_after=max(1.0, charge.resets_at - self.clock()),
            hint="`tiqo budget show` lists the limits; `tiqo budget set` raises one; local models keep working",
        )

    def settle(
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
                charged=bool(call.charges),
            )
        except Exception:  # never lose the answer over the ledger; the call stays pending and start-up settles it
            log.exception("settling %s failed", call.id)
