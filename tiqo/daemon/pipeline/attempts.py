"""The one attempt driver: for each candidate of a routing decision, availability → key → budget reservation →
breaker and key begin → the modality's call → after a failure, ``fallback.after_failure`` picks another key, the
next candidate, or the caller's error. Chat, completions, embeddings, speech-to-text, text-to-speech and image
generation all run through ``Attempts.first``; each gives its call (and its reservation) as parameters.

Where the callers still differ, and why (``Rules``):

* **How tries are counted.** Chat counts ``routing.max_attempts`` over the whole request and backs off (jittered,
  exponential) before trying the provider that failed last again: a chat user waits for the answer, so the total is
  what is bounded. The other modalities count per candidate and never back off: their last candidate is the task's
  default local model, which must be reached however many external tries failed before it.
* **What the provider's limits are asked for.** Chat asks for its prompt and max_tokens (a provider or key whose
  token limits cannot take it is skipped); the other modalities ask for nothing, as their providers bill by input
  (seconds, characters, images) that tokens-per-minute limits do not count.
* **When health is recorded.** A ``Ticket`` holds one try's breaker probe and key; the driver begins it and records
  a failure before the commit. A chat attempt hands the ticket to its stream wrapper, which records success at the
  last piece (tokens counted) and a failure even after the first byte; the others succeed when the call returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from tiqo.core.errors import BadRequest, ClassificationRefused, NoCandidate, RateLimited, TiqoError, UpstreamFailed
from tiqo.core.settings import Settings
from tiqo.daemon.pipeline.fallback import RATE_LIMITED, after_failure
from tiqo.daemon.pipeline.recording import Accounting
from tiqo.daemon.pipeline.served import Served
from tiqo.daemon.upstream.client import AttemptFailed
from tiqo.daemon.upstream.providers import Provider, ProviderHub
from tiqo.policy import budget as bp
from tiqo.policy.breaker import HEALTH_FAILURES
from tiqo.policy.routing import LOCAL, Candidate, CatalogModel, Decision

log = logging.getLogger("tiqo.attempts")
_BACKOFF_BASE, _BACKOFF_CAP = 0.05, 1.0
R = TypeVar("R")  # what a caller's reservation gives its call (a call row; chat: the row and the body sent)
T = TypeVar("T")  # what a call answers


class Ticket:
    """One try's hold on a provider's breaker (the half-open probe) and on one of its keys: begun when the call
    starts, then ended by a success, a failure or a release. A release after either is nothing; a failure after a
    success still counts (a provider that dies after the first bytes), a second failure does not."""

    def __init__(self, hub: ProviderHub, provider: Provider, key: str | None, clock: Callable[[], float]) -> None:
        self.hub, self.provider, self.key, self.clock = hub, provider, key, clock
        self.outcome: str | None = None  # ok | failed | released

    def begin(self) -> None:
        now = self.clock()
        self.provider.breaker.begin(now)
        if self.key is not None:
            self.provider.pool.begin(self.key, now)

    def succeeded(self, tokens: int) -> None:
        if self.outcome is not None:
            return
        self.outcome = "ok"
        self.provider.breaker.success()
        if self.key is not None:
            self.provider.pool.success(self.key, tokens, self.clock())
            self.hub.key_used(self.provider.name, self.key, tokens)
            self.hub.persist(self.provider.name, self.key)

    def failed(self, exc: AttemptFailed) -> None:
        if self.outcome in ("failed", "released"):
            return
        self.outcome = "failed"
        now = self.clock()
        name = self.provider.name
        if exc.kind in HEALTH_FAILURES and not self.hub.replica_takes_failure(name, exc.kind):
            self.provider.breaker.failure(now, f"{exc.kind}: {exc.message}"[:120])
        else:
            self.provider.breaker.release()
        if self.key is not None:
            self.provider.pool.failure(self.key, exc.kind, now, exc.retry_after, exc.message)
            self.hub.persist(name, self.key, now=True)

    def released(self) -> None:
        """The call ended without telling anything about health (cancelled, or a local error): free its slots."""
        if self.outcome is not None:
            return
        self.outcome = "released"
        self.provider.breaker.release()
        if self.key is not None:
            self.provider.pool.release(self.key)
            self.hub.persist(self.provider.name, self.key)


@dataclass
class Try(Generic[R]):
    """One try, as the modality's call gets it. Local candidates have no key, reservation or ticket."""

    candidate: Candidate
    model: CatalogModel
    key: str | None = None
    reserved: R | None = None
    ticket: Ticket | None = None


@dataclass(frozen=True)
class Rules:
    """How a caller spends its tries (see the module's docstring for why chat's differ)."""

    per_request: bool = False  # max_attempts counts the request's tries, with backoff (chat); else each candidate's
    need_tokens: int = 0  # what the provider's token limits must take (availability)
    key_tokens: int = 0  # what a key's token limits must take


Reserve = Callable[[CatalogModel, str | None], tuple[R, bp.Refusal | None]]


class Attempts:
    def __init__(
        self, settings: Settings, hub: ProviderHub, accounting: Accounting, clock: Callable[[], float]
    ) -> None:
        self.settings, self.hub, self.accounting, self.clock = settings, hub, accounting, clock

    async def first(
        self,
        decision: Decision,
        catalog: Mapping[str, CatalogModel],
        served: Served,
        blocked: dict[str, bp.Charge],
        reserve: Reserve[R],
        attempt: Callable[[Try[R]], Awaitable[T]],
        rules: Rules = Rules(),
    ) -> tuple[T, Try[R]]:
        """The answer of the first candidate that gives one, and the try that did; ``served`` says who served and
        what was tried. Raises the caller's error (a request another backend would refuse too), or, when nothing
        served, the error that sums the tries up. ``blocked`` collects the budgets that dropped a candidate."""
        if not decision.kept:
            raise self.nothing_kept(decision, blocked)
        failures: list[AttemptFailed | TiqoError] = []
        most = max(1, self.settings["routing.max_attempts"])
        used = 0
        last_failed: str | None = None  # the provider of the last failed try (per_request: backoff before it again)
        for cand in decision.kept:
            model = catalog[cand.model]
            tried: set[str] = set()
            tries = 0
            while (used if rules.per_request else tries) < most:
                used, tries = used + 1, tries + 1
                if rules.per_request and last_failed == model.provider:
                    await asyncio.sleep(_backoff(used))
                one = Try[R](cand, model)
                if not model.local and not self._prepare(one, served, blocked, tried, reserve, rules):
                    break
                try:
                    answer = await self._run(one, attempt)
                except (AttemptFailed, TiqoError) as exc:
                    step = self._failed(one, exc, failures, served, tried)
                    last_failed = None if step == "replica" else model.provider
                    if step == "candidate":
                        break
                    continue  # the same candidate: another key (never the one that just failed), or another replica
                served.backend = served.backend if model.local else model.provider
                served.provider, served.model, served.key = model.provider, model.name, one.key
                return answer, one
        if blocked and not failures:
            raise self.accounting.budget_error(blocked, served.attempts)
        raise self.all_failed(decision, failures, served)

    def _prepare(
        self,
        one: Try[R],
        served: Served,
        blocked: dict[str, bp.Charge],
        tried: set[str],
        reserve: Reserve[R],
        rules: Rules,
    ) -> bool:
        """Availability, a key not tried yet, the budget reservation; False (the reason noted): next candidate."""
        name, provider = one.candidate.model, one.model.provider
        why = self.hub.unavailable(provider, rules.need_tokens) or self.hub.take_probe(provider)
        if why is not None:
            served.attempts.append({"model": name, "provider": provider, "error": why})
            return False
        if self.hub.has_keys(provider):
            one.key = self.hub.pick_key(provider, rules.key_tokens, tried)
            if one.key is None:
                served.attempts.append({"model": name, "provider": provider, "error": "no untried usable key"})
                return False
            tried.add(one.key)
        one.reserved, refusal = reserve(one.model, one.key)
        if refusal is not None:
            blocked[name] = refusal.charge
            served.attempts.append({"model": name, "provider": provider, "error": refusal.message, "kind": "budget"})
            return False
        one.ticket = Ticket(self.hub, self.hub.providers[provider], one.key, self.clock)
        return True

    async def _run(self, one: Try[R], attempt: Callable[[Try[R]], Awaitable[T]]) -> T:
        if one.ticket is not None:
            one.ticket.begin()
        try:
            return await attempt(one)
        except (AttemptFailed, TiqoError):
            raise
        except BaseException:
            # Cancelled (the client hung up mid-call) or an unexpected error: it says nothing about the provider's
            # health, but the probe slot and the key's slot must not stay taken.
            if one.ticket is not None:
                one.ticket.released()
            raise

    def _failed(
        self,
        one: Try[R],
        exc: AttemptFailed | TiqoError,
        failures: list[AttemptFailed | TiqoError],
        served: Served,
        tried: set[str],
    ) -> str:
        """Note a failed try (and its provider's and key's health); what next by the one rule: ``key``, ``replica``
        (the same model on another endpoint) or ``candidate``. Raises the caller's error on ``stop``."""
        failures.append(exc)
        kind = exc.kind if isinstance(exc, AttemptFailed) else exc.code
        name, provider = one.candidate.model, one.model.provider
        served.attempts.append(
            {"model": name, "provider": provider, "key": one.key, "error": exc.message, "kind": kind}
        )
        log.info("%s via %s failed (%s): %s", name, provider, kind, exc.message)
        if one.ticket is not None:
            if isinstance(exc, AttemptFailed):
                one.ticket.failed(exc)
            else:
                one.ticket.released()
        step = after_failure(exc, one.key)
        if step == "stop":
            if isinstance(exc, AttemptFailed):
                raise BadRequest(f"{provider} rejected the request: {exc.message}") from None
            raise exc
        if (
            step == "candidate"
            and isinstance(exc, AttemptFailed)
            and self.hub.replica_takes_failure(provider, exc.kind)
        ):
            tried.discard(one.key or "")  # cut off midway by one replica while another is up: that one next
            return "replica"
        return step

    # ------------------------------------------------------------ when nothing served
    def nothing_kept(self, decision: Decision, blocked: dict[str, bp.Charge]) -> TiqoError:
        """The error of a decision that kept no candidate: restricted data, spent budgets, cooling down, or none."""
        reasons = "; ".join(f"{c.model}: {c.reason}" for c in decision.candidates)
        if decision.classification.data_class == "restricted":
            return ClassificationRefused(
                f"restricted data never leaves the machine, and no local model can serve this request ({reasons})",
                hint="register a local model that can (`tiqo models add`), or name one with -m",
            )
        if blocked:
            attempts = [{"model": m, "error": f"the {c.label} budget is spent"} for m, c in blocked.items()]
            return self.accounting.budget_error(blocked, attempts)
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

    def all_failed(self, decision: Decision, failures: list[AttemptFailed | TiqoError], served: Served) -> TiqoError:
        """The error after every kept candidate was tried: one local error as it was, else a summary of them all."""
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
        if all(isinstance(f, AttemptFailed) and f.kind in RATE_LIMITED for f in failures):
            return RateLimited(f"every candidate is rate limited: {summary}", retry_after=min(waits) if waits else 1)
        return UpstreamFailed(
            f"every candidate failed: {summary}",
            hint="`tiqo providers list` shows provider health; `tiqo route explain` shows the candidates",
        )


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1)))
