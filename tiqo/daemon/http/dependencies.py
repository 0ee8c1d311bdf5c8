"""What every route needs from a request: the daemon's services and who asks (``RequestMeta``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from tiqo.core.errors import BadRequest
from tiqo.daemon.catalog.routing_config import tcp_tier
from tiqo.daemon.http.tcp import tcp_user
from tiqo.daemon.pipeline.served import OS_USER, RequestMeta
from tiqo.daemon.root import Daemon
from tiqo.policy.cache import CONTROL
from tiqo.protocol.headers import decode_name

T = TypeVar("T")


def daemon_of(request: Request) -> Daemon:
    """The composition root the app was built with (``create_app``)."""
    daemon: Daemon = request.app.state.daemon
    return daemon


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
        daemon = daemon_of(request)
        _, config = daemon.gateway.catalog_and_config()
        profile = config.users.get(remote)
        user = remote
        tier: str | None = tcp_tier(
            profile.tier if profile else None, daemon.settings["daemon.listen_tier"], config.tiers
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

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()
