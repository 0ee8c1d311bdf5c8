"""Who asks, how sensitive it is, and who may answer: classification (user, tier, data class, on the loop or in a
thread by size) and routing (candidates by policy, provider health, keys and budget pressure), over the catalog and
routing config it keeps. Every modality routes through it; the text gateway is one (``services.gateway``)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from tiqo.core.errors import BadRequest, ModelNotFound
from tiqo.core.settings import Settings
from tiqo.daemon.catalog.registry import Registry
from tiqo.daemon.catalog.routing_config import restricted_patterns, routing_config
from tiqo.daemon.pipeline.attempts import Attempts
from tiqo.daemon.pipeline.recording import DEFAULT_MAX_TOKENS, Accounting
from tiqo.daemon.pipeline.served import RequestMeta
from tiqo.daemon.upstream.client import UpstreamClient
from tiqo.daemon.upstream.providers import ProviderHub
from tiqo.policy import budget as bp
from tiqo.policy.classify import DATA_CLASSES, Classification, classify
from tiqo.policy.outbound import Outbound, TooBig, outbound
from tiqo.policy.routing import AUTO, CatalogModel, Decision, RoutingConfig, plan, prefer_local
from tiqo.protocol import openai as oa

INLINE_SCAN_CHARS = 16_384  # texts up to this size are classified on the event loop (RE2: well under a millisecond)
VISIBLE_ROLES = ("system", "developer", "user")  # the turns task and complexity are read from


class Router:
    """What every modality's service shares: classification and routing here, and the accounting (admission, budget
    reservations, the ledger row), the one upstream client and the attempt driver it holds."""

    def __init__(self, settings: Settings, registry: Registry, hub: ProviderHub, accounting: Accounting) -> None:
        self.settings, self.registry, self.hub, self.accounting = settings, registry, hub, accounting
        self.budgets = accounting.budgets
        self.clock = time.time
        self.upstream = UpstreamClient(hub.replicas)  # one door for every provider call, replicas chosen there
        self.attempts = Attempts(settings, hub, accounting, lambda: self.clock())
        self._patterns = restricted_patterns(settings)
        self._derived: tuple[tuple[int, int], dict[str, CatalogModel], RoutingConfig] | None = None

    def catalog_and_config(self) -> tuple[dict[str, CatalogModel], RoutingConfig]:
        """The catalog and routing config, rebuilt only when models or providers changed."""
        version = (self.registry.version, self.hub.version)
        if self._derived is None or self._derived[0] != version:
            self._derived = (version, self.registry.catalog(), routing_config(self.settings, self.hub.max_classes()))
        return self._derived[1], self._derived[2]

    async def close(self) -> None:
        await self.upstream.close()

    def invalidate(self) -> None:
        """Config changed outside the registry and the providers (users, tiers): rebuild the routing config."""
        self._derived = None

    async def classify(self, body: oa.ChatCompletionRequest, meta: RequestMeta) -> Classification:
        return (await self.examine(body, meta))[0]

    async def examine(
        self, body: oa.ChatCompletionRequest, meta: RequestMeta, wire: dict[str, Any] | None = None
    ) -> tuple[Classification, Outbound]:
        """Classify a chat request and measure what it sends upstream. Task and complexity come from the
        user-visible turns (system, developer, user), as always; the restricted-data scan reads every text that
        would leave the machine (tool results, assistant turns, tool calls, ``tools``, names, file parts,
        pass-through fields), and the size counts all of it too (for rate limits and the budget reservation).
        A small body is read on the event loop; a bigger one in a worker thread, like ``classify_texts``. ``wire``:
        ``body.wire()`` when the caller has it already."""
        texts = [m.text() for m in body.messages if m.role in VISIBLE_ROLES]
        wire = body.wire() if wire is None else wire
        classifier = self._classifier(texts, meta, has_tools=bool(body.tools), max_tokens=body.token_limit())

        def run(sent: Outbound | None = None) -> tuple[Classification, Outbound]:
            if sent is None:
                sent = outbound(wire)
            return classifier(scan=sent.texts), sent

        try:
            small = outbound(wire, limit=INLINE_SCAN_CHARS)  # stops as soon as it reads more than that
        except TooBig:
            return await asyncio.to_thread(run)
        return run(small)

    async def classify_texts(
        self,
        texts: list[str],
        meta: RequestMeta,
        *,
        has_tools: bool = False,
        max_tokens: int | None = None,
        scan: list[str] | None = None,
    ) -> Classification:
        """Who asks (user, tier) and how sensitive it is (data class: the caller's, raised to the user's and to what
        the patterns find). ``scan``: every text that leaves the machine, when more than ``texts`` does.

        The scan is linear in the text and bounded (classification.max_scan_chars); big texts are scanned in a
        worker thread (RE2 releases the GIL), so one big request never stalls the other clients."""
        classifier = self._classifier(texts, meta, has_tools=has_tools, max_tokens=max_tokens)
        run = functools.partial(classifier, scan=scan)
        if sum(len(t) for t in texts) + sum(len(t) for t in scan or ()) <= INLINE_SCAN_CHARS:
            return run()
        return await asyncio.to_thread(run)

    def _classifier(
        self, texts: list[str], meta: RequestMeta, *, has_tools: bool, max_tokens: int | None
    ) -> Callable[..., Classification]:
        """The classification of ``texts``, ready to run anywhere (call it with ``scan=``): the config lookups happen
        here, on the loop."""
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
        return functools.partial(
            classify,
            texts,
            has_tools=has_tools,
            max_tokens=max_tokens,
            data_class=meta.data_class,
            default_class=(profile.data_class if profile else None) or self.settings["routing.data_class"],
            min_class=profile.data_class if profile else None,  # x-tiqo-class may raise it, never lower it
            restricted_patterns=self._patterns,
            user=meta.user,
            tier=tier,
            task=meta.task,
            max_scan_chars=self.settings["classification.max_scan_chars"],
        )

    def decide(
        self,
        body: oa.ChatCompletionRequest,
        classification: Classification,
        sent: Outbound,
        blocked: dict[str, bp.Charge] | None = None,
    ) -> Decision:
        """Route one request, classified and measured by ``examine``. ``blocked`` collects the budgets that dropped
        external candidates."""
        self.check_requested(body.model)
        return self.plan_route(
            classification,
            requested=body.model,
            est_prompt_tokens=sent.est_prompt_tokens,
            max_tokens=body.token_limit() or DEFAULT_MAX_TOKENS,
            needs=body.needs(),
            blocked=blocked,
        )

    def check_requested(self, requested: str | None) -> None:
        catalog, config = self.catalog_and_config()
        if requested and requested not in AUTO and requested not in catalog and requested not in config.aliases:
            names = ", ".join([*catalog, *config.aliases]) or "none"
            raise ModelNotFound(
                f"model {requested!r} not found; available: {names}",
                param="model",
                hint="`tiqo models list` shows models and aliases; `tiqo models add` registers one",
            )

    def plan_route(
        self,
        classification: Classification,
        *,
        requested: str | None,
        est_prompt_tokens: int,
        max_tokens: int,
        needs: Sequence[str],
        blocked: dict[str, bp.Charge] | None = None,
        config: RoutingConfig | None = None,
    ) -> Decision:
        """Candidates for a classified request: routing policy, provider health and keys, budget pressure."""
        catalog, default_config = self.catalog_and_config()
        config = config or default_config
        now = self.clock()
        demoted: dict[str, str] = {}

        def availability(model: CatalogModel) -> str | None:
            if model.local:
                return None
            why = self.hub.unavailable(model.provider, est_prompt_tokens + max_tokens)
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
            est_prompt_tokens=est_prompt_tokens,
            max_tokens=max_tokens,
            needs=needs,
        )
        return prefer_local(decision, demoted)
