"""What every route needs from a request: the daemon's services (``Services``) and who asks (``RequestMeta``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from starlette.types import Receive

from tiqo.core.errors import BadRequest
from tiqo.core.settings import Settings
from tiqo.daemon.accounting.budgets import Budgets
from tiqo.daemon.accounting.events import EventBus
from tiqo.daemon.accounting.ledger import Ledger
from tiqo.daemon.accounting.metrics import Metrics
from tiqo.daemon.catalog.registry import Registry
from tiqo.daemon.catalog.routing_config import tcp_tier
from tiqo.daemon.http.tcp import tcp_user
from tiqo.daemon.knowledge.vectors import VectorStore
from tiqo.daemon.pipeline.ports import LocalCompute
from tiqo.daemon.pipeline.served import OS_USER, RequestMeta
from tiqo.daemon.runtime.jobs import Jobs
from tiqo.daemon.runtime.plugins import PluginReport
from tiqo.daemon.runtime.scheduler import Scheduler
from tiqo.daemon.services.backup import Backup
from tiqo.daemon.services.embeddings import Embeddings
from tiqo.daemon.services.gateway import Gateway
from tiqo.daemon.services.images import Images
from tiqo.daemon.services.videos import Videos
from tiqo.daemon.services.voice import Voice
from tiqo.daemon.state.store import Store
from tiqo.daemon.upstream.providers import ProviderHub
from tiqo.policy.cache import CONTROL
from tiqo.protocol.headers import decode_name

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Services:
    """What the routes call, each typed by what it is; the composition root (``root.Daemon``) fills it in once, so
    http never imports the root. A route takes the one it needs: ``services_of(request).voice``."""

    settings: Settings
    registry: Registry
    hub: ProviderHub
    store: Store
    ledger: Ledger
    budgets: Budgets
    events: EventBus
    metrics: Metrics | None  # None: metrics.enabled is off
    scheduler: Scheduler
    local: LocalCompute  # a blocking engine call on a warm model's slot (/v1/completions)
    jobs: Jobs
    gateway: Gateway
    voice: Voice
    embeddings: Embeddings
    vectors: VectorStore
    images: Images
    videos: Videos
    backup: Backup
    plugins: PluginReport
    engines: list[str]  # the engines' names, sorted
    started_at: float
    health: Callable[[], dict[str, Any]]  # GET /tiqo/health
    shutdown: Callable[[], None]  # POST /tiqo/shutdown: asks the server to stop
    close: Callable[[], Awaitable[None]]  # the app's lifespan ends: jobs, models, store


def services_of(request: Request) -> Services:
    """The services the app was built with (``create_app``): one attribute read, nothing built per request."""
    services: Services = request.app.state.services
    return services


def request_meta(request: Request, user_field: str | None = None) -> RequestMeta:
    """x-tiqo-user / -tier / -class / -cache / -task headers (the OpenAI ``user`` field names the user too).

    User and tier names are UTF-8, percent-encoded or raw (``tiqo.protocol.headers``). Over TCP the token's user is
    the user, whatever the request says, and the tier is theirs or ``daemon.listen_tier`` (``tcp_tier``)."""
    h = request.headers
    cache = (h.get("x-tiqo-cache") or "use").strip().lower()
    if cache not in CONTROL:
        raise BadRequest(f"x-tiqo-cache must be one of {', '.join(CONTROL)}", param="x-tiqo-cache")
    remote = tcp_user(request.scope)
    if remote is not None:
        services = services_of(request)
        _, config = services.gateway.catalog_and_config()
        profile = config.users.get(remote)
        user = remote
        tier: str | None = tcp_tier(
            profile.tier if profile else None, services.settings["daemon.listen_tier"], config.tiers
        )[0]
    else:
        user = decode_name(h.get("x-tiqo-user") or "", "x-tiqo-user") or user_field or OS_USER
        tier = decode_name(h.get("x-tiqo-tier") or "", "x-tiqo-tier") or None
    return RequestMeta(
        user=user,
        tier=tier,
        data_class=(h.get("x-tiqo-class") or "").strip().lower() or None,
        cache=cache,
        task=h.get("x-tiqo-task") or None,
        request_id=request.scope.get("state", {}).get("request_id", ""),
    )


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Run ``work``; cancel it (and return None) when the client hangs up first."""
    return await until_gone(request.receive, work)


async def until_gone(receive: Receive, work: Awaitable[T]) -> T | None:
    """Run ``work`` in the caller's task; cancel it (and return None) when ``receive`` says the client hung up.

    One watcher task per request, not two tasks and a wait: the work runs where it was awaited."""
    caller = asyncio.current_task()
    assert caller is not None
    cancelling = caller.cancelling()
    state = {"gone": False, "done": False}

    async def disconnected() -> None:
        with contextlib.suppress(Exception):  # a receive that fails ends the request as a disconnect does
            while (await receive())["type"] != "http.disconnect":
                pass
        if not state["done"]:
            state["gone"] = True
            caller.cancel()

    watch = asyncio.ensure_future(disconnected())
    try:
        return await work
    except asyncio.CancelledError:
        if state["gone"] and caller.uncancel() <= cancelling:
            return None  # our own cancellation, and nobody else's: the client went away
        raise
    finally:
        state["done"] = True
        watch.cancel()
