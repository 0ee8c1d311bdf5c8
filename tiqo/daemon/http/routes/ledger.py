"""tiqo's routes for the ledger: usage, request logs, the audit trail of off-machine calls, budgets, alerts and the
live event stream (server-sent events)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import StreamingResponse

from tiqo.core.durations import parse_duration
from tiqo.core.errors import BadRequest, ConfigError
from tiqo.core.settings import write_config_value
from tiqo.daemon.accounting.ledger import GROUPS
from tiqo.daemon.catalog.routing_config import tcp_tier
from tiqo.daemon.http.dependencies import Services, request_meta, services_of
from tiqo.daemon.http.json_route import api_router
from tiqo.daemon.http.openapi_errors import errors
from tiqo.daemon.http.sse import StreamResponse
from tiqo.daemon.http.tcp import SCRAPE_ROLE, new_token
from tiqo.protocol.tiqo import CreateTokenRequest, SetBudgetRequest

router = api_router(prefix="/tiqo")
HEARTBEAT_S = 15.0


def _since(since: str) -> float:
    try:
        return time.time() - parse_duration(since)
    except ValueError as exc:
        raise BadRequest(f"since: {exc}", param="since", hint="use a duration such as 1h, 7d or 30d") from None


@router.get("/usage", responses=errors(400))
async def usage(
    request: Request, since: str = "7d", by: str = "day", user: str | None = None, local: bool = False
) -> dict[str, Any]:
    """Requests, tokens, cost, cache hits and errors since a time, grouped by day, provider, model, user or key.

    With ``state.backend = redis`` the sums are cluster-wide (every daemon on that Redis; whole days) unless
    ``local`` asks for this daemon's own rows; ``scope`` in the answer says which."""
    if by not in GROUPS:
        raise BadRequest(f"cannot group by {by!r}; use one of {', '.join(GROUPS)}", param="by")
    services = services_of(request)
    if services.ledger.sums is not None and not local:
        result = services.ledger.cluster_usage(_since(since), by, user)
    else:
        result = services.ledger.usage(_since(since), by, user)
    result["timezone"] = services.budgets.policy.timezone
    return result


@router.get("/logs", responses=errors(400))
async def logs(request: Request, n: int = 20, user: str | None = None) -> dict[str, Any]:
    """The most recent requests, newest first (no content unless ledger.store_content is on)."""
    if not 0 < n <= 10_000:
        raise BadRequest("n must be between 1 and 10000", param="n")
    return {"data": services_of(request).ledger.logs(n, user)}


@router.get("/audit", responses=errors(400))
async def audit(request: Request, n: int = 20, since: str = "3650d") -> dict[str, Any]:
    """Every off-machine call, newest first: where it went, with which key, why it was allowed, what it cost."""
    if not 0 < n <= 10_000:
        raise BadRequest("n must be between 1 and 10000", param="n")
    return {"data": services_of(request).ledger.audit(n, _since(since))}


@router.get("/budget")
async def budget(request: Request) -> dict[str, Any]:
    """Each limit: spent, reserved by calls in flight, left, percent, when it resets; thresholds and alerts."""
    return services_of(request).budgets.show(time.time())


@router.put("/budget")
async def set_budget(body: SetBudgetRequest, request: Request) -> dict[str, Any]:
    """Set a limit (``usd``) or remove it (``usd`` null); written to config.toml and applied at once."""
    services = services_of(request)
    try:
        services.budgets.set_limit(body.scope, body.name or "", body.period, body.usd)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return services.budgets.show(time.time())


@router.get("/alerts")
async def alerts(request: Request, n: Annotated[int, Query(ge=1, le=10_000)] = 50) -> dict[str, Any]:
    return {"data": services_of(request).ledger.alerts(n)}


@router.get("/events")
async def events(request: Request, kinds: str | None = None) -> StreamingResponse:
    """Server-sent events: ``request`` (each ledger row), ``alert``, ``job`` (progress of the caller's own jobs
    only) … A reconnecting client sends Last-Event-ID and gets what it missed from a short history."""
    services = services_of(request)
    user = request_meta(request).user  # a job event goes to its owner only
    last = request.headers.get("last-event-id")
    after = int(last) if last and last.isascii() and last.isdigit() else None
    wanted = {k.strip() for k in kinds.split(",") if k.strip()} if kinds else None

    feed = services.events.subscribe(after, wanted)  # subscribed now: nothing published later is missed

    async def stream() -> AsyncIterator[str]:
        yield f": tiqo events, pid {services.health()['pid']}\nretry: 2000\n\n"
        pending: asyncio.Task[Any] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(feed))
                done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_S)  # the read survives a keep-alive
                if not done:
                    yield ": keep-alive\n\n"
                    continue
                event, pending = pending.result(), None
                if event.kind == "job" and event.data.get("user") != user:
                    continue
                ident = f"id: {event.id}\n" if event.id else ""
                yield f"{ident}event: {event.kind}\ndata: {json.dumps(event.as_dict(), separators=(',', ':'))}\n\n"
        finally:
            if pending is not None:  # the feed is closed only once its pending read has really ended
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await feed.aclose()

    return StreamResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


# ---------------------------------------------------------------- users
@router.get("/users")
async def users(request: Request) -> dict[str, Any]:
    """Configured users: tier, default data class, rate limits, whether a TCP token exists (never the token), and
    the tier they get over TCP (``tcp_tier``: theirs, else daemon.listen_tier)."""
    services = services_of(request)
    _, config = services.gateway.catalog_and_config()
    table = services.settings.toml.get("users", {})
    return {
        "users": [
            {
                "name": name,
                "tier": p.tier,
                "tcp_tier": _tcp_tier_or_none(services, p.tier, config.tiers),
                "data_class": p.data_class,
                "rpm": p.limits.rpm,
                "tpm": p.limits.tpm,
                "rpd": p.limits.rpd,
                "token": bool(isinstance(table.get(name), dict) and table[name].get("token_sha256")),
                "role": table[name].get("role") if isinstance(table.get(name), dict) else None,
            }
            for name, p in sorted(config.users.items())
        ],
        "tiers": {
            name: {
                "providers": t.providers,
                "premium": t.premium,
                "rpm": t.limits.rpm,
                "tpm": t.limits.tpm,
                "rpd": t.limits.rpd,
                "description": t.description,
            }
            for name, t in config.tiers.items()
        },
        "listen": services.settings["daemon.listen"] or None,
        "listen_tier": services.settings["daemon.listen_tier"],
    }


def _tcp_tier_or_none(services: Services, tier: str | None, tiers: Iterable[str]) -> str | None:
    try:
        return tcp_tier(tier, services.settings["daemon.listen_tier"], tiers)[0]
    except ConfigError:
        return None  # no usable tier: the user's TCP requests are refused


@router.post("/users/{name}/token", status_code=201)
async def create_token(name: str, request: Request, body: CreateTokenRequest | None = None) -> dict[str, Any]:
    """A new bearer token for ``name`` on the TCP listener (replacing any old one). Shown once; only its hash is
    kept. ``tier`` also sets ``[users.NAME] tier``; the answer says which tier the user gets over TCP and from where
    (``user``, or ``daemon.listen_tier`` for a user without one)."""
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise BadRequest("a user name is letters, digits, '-', '_' or '.' (at most 64)", param="name")
    services = services_of(request)
    body = body or CreateTokenRequest()
    if body.scrape:
        return _scrape_token(services, name, body)
    _set_user_field(services, name, "role", None)  # a user's token from now on, whatever it was
    _, config = services.gateway.catalog_and_config()
    tier = body.tier
    if tier is not None and tier != "default" and tier not in config.tiers:
        raise BadRequest(
            f"unknown tier {tier!r}; configured tiers: {', '.join(config.tiers) or 'none'} (or default: no limits)",
            param="tier",
            hint="tiers are tables [tiers.NAME] in config.toml; `tiqo users list` shows them",
        )
    if tier is not None:
        _set_user_field(services, name, "tier", tier)
    profile = services.gateway.catalog_and_config()[1].users.get(name)
    current = tier or (profile.tier if profile else None)
    tcp, source = tcp_tier(current, services.settings["daemon.listen_tier"], config.tiers)
    token, digest = new_token()
    _set_user_field(services, name, "token_sha256", digest)
    return {"user": name, "token": token, "tier": tcp, "tier_source": source}


def _scrape_token(services: Services, name: str, body: CreateTokenRequest) -> dict[str, Any]:
    """A token that reads GET /metrics over TCP and nothing else ([users.NAME] role = "metrics")."""
    if body.tier is not None:
        raise BadRequest("a scrape token reads /metrics only: it has no tier", param="tier")
    _set_user_field(services, name, "role", SCRAPE_ROLE)
    token, digest = new_token()
    _set_user_field(services, name, "token_sha256", digest)
    return {"user": name, "token": token, "role": SCRAPE_ROLE}


@router.delete("/users/{name}/token")
async def revoke_token(name: str, request: Request) -> dict[str, Any]:
    _set_user_field(services_of(request), name, "token_sha256", None)
    return {"user": name, "revoked": True}


def _set_user_field(services: Services, name: str, field: str, value: Any) -> None:
    write_config_value(services.settings.paths.config_file, ["users", name, field], value)
    entry = services.settings.toml.setdefault("users", {}).setdefault(name, {})
    if value is None:
        entry.pop(field, None)
    else:
        entry[field] = value
    services.gateway.invalidate()
