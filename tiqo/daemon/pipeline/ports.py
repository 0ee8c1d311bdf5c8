"""What the pipeline needs from the layers that use it, as protocols: the root's local generation and the text
gateway's routing. The root and the gateway satisfy them; nothing here imports either (they sit above)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from tiqo.core.settings import Settings
from tiqo.daemon.catalog.registry import Registry
from tiqo.daemon.pipeline.attempts import Attempts
from tiqo.daemon.pipeline.recording import Accounting
from tiqo.daemon.pipeline.served import RequestMeta
from tiqo.daemon.upstream.client import UpstreamClient
from tiqo.daemon.upstream.providers import ProviderHub
from tiqo.policy import budget as bp
from tiqo.policy.classify import Classification
from tiqo.policy.routing import CatalogModel, Decision, RoutingConfig
from tiqo.sdk.engine import ModelSpec, StopFlag

T = TypeVar("T")


class LocalCompute(Protocol):
    """Runs a blocking engine call on a warm model's slot and streams what it yields (``root.Daemon.generate``)."""

    def generate(
        self, spec: ModelSpec, keep_alive: float | None, call: Callable[[Any, StopFlag], Iterator[T]]
    ) -> AsyncGenerator[T, None]: ...


class Routing(Protocol):
    """The routing half of the text gateway that every other modality shares (``services.gateway.Gateway``)."""

    settings: Settings
    registry: Registry
    accounting: Accounting
    hub: ProviderHub
    upstream: UpstreamClient
    attempts: Attempts

    def clock(self) -> float: ...

    def catalog_and_config(self) -> tuple[dict[str, CatalogModel], RoutingConfig]: ...

    async def classify_texts(
        self,
        texts: list[str],
        meta: RequestMeta,
        *,
        has_tools: bool = False,
        max_tokens: int | None = None,
        scan: list[str] | None = None,
    ) -> Classification: ...

    def check_requested(self, requested: str | None) -> None: ...

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
    ) -> Decision: ...
