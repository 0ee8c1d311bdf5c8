"""tiqo's routes for the gateway: route explain, providers, keys (redacted), plugins and the response cache."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from tiqo.core.errors import BadRequest
from tiqo.daemon.http.dependencies import services_of
from tiqo.daemon.http.json_route import api_router
from tiqo.daemon.http.openapi_errors import errors
from tiqo.daemon.pipeline.served import OS_USER
from tiqo.daemon.services.gateway import RequestMeta
from tiqo.policy.cache import CONTROL
from tiqo.protocol import openai as oa
from tiqo.protocol.tiqo import AddKeyRequest, AddProviderRequest, RouteExplainRequest

router = api_router(prefix="/tiqo")


@router.post("/route/explain", responses=errors(400, 403, 404))
async def route_explain(body: RouteExplainRequest, request: Request) -> dict[str, Any]:
    """What routing would do with this request, without running it: classification, every candidate with its
    price, availability and why it was kept or dropped, and the choice."""
    services = services_of(request)
    if body.messages is None and body.prompt is None:
        raise BadRequest("give a prompt or messages", param="prompt")
    messages = body.messages or [{"role": "user", "content": body.prompt}]
    chat: dict[str, Any] = {"messages": messages, "model": body.model}
    if body.max_tokens is not None:
        chat["max_tokens"] = body.max_tokens
    for field in ("tools", "response_format"):
        if getattr(body, field):
            chat[field] = getattr(body, field)
    try:
        request_body = oa.ChatCompletionRequest.model_validate(chat)
    except ValidationError as exc:  # messages or tools a chat request would refuse: the same 422 it gets
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None
    meta = RequestMeta(user=body.user or OS_USER, tier=body.tier, data_class=body.data_class, task=body.task)
    classification, sent = await services.gateway.examine(request_body, meta)
    decision = services.gateway.decide(request_body, classification, sent)
    result = decision.as_dict()
    result["needs"] = list(request_body.needs())
    result["replicas"] = services.hub.describe_replicas([c.provider for c in decision.candidates])
    return result


# ---------------------------------------------------------------- providers
@router.get("/providers")
async def list_providers(request: Request) -> dict[str, Any]:
    services = services_of(request)
    rows = services.hub.describe()
    for row in rows:
        row["models"] = services.registry.models_of(row["name"])
    return {"providers": rows, "kinds": sorted(services.hub.kinds)}


@router.post("/providers", status_code=201, responses=errors(409))
async def add_provider(body: AddProviderRequest, request: Request) -> dict[str, Any]:
    services = services_of(request)
    options = body.model_dump(exclude={"name", "kind", "base_url"}, exclude_none=True)
    services.hub.add_provider(body.name, body.kind, body.base_url, options)
    return next(p for p in services.hub.describe() if p["name"] == body.name)


@router.delete("/providers/{name}")
async def remove_provider(name: str, request: Request) -> dict[str, Any]:
    services = services_of(request)
    services.hub.remove_provider(name, services.registry.models_of(name))
    return {"removed": name}


# ---------------------------------------------------------------- keys
@router.get("/keys", responses=errors(404))
async def list_keys(request: Request, provider: str | None = None) -> dict[str, Any]:
    services = services_of(request)
    if provider is not None:
        services.hub.get(provider)
    return {"keys": services.hub.describe_keys(provider), "now": time.time()}


@router.post("/keys", status_code=201, responses=errors(404, 409))
async def add_key(body: AddKeyRequest, request: Request) -> dict[str, Any]:
    services = services_of(request)
    limits = body.model_dump(exclude={"provider", "name", "secret"}, exclude_none=True)
    name = services.hub.add_key(body.provider, body.name, body.secret, limits)
    return next(k for k in services.hub.describe_keys(body.provider) if k["name"] == name)


@router.delete("/keys/{provider}/{name}")
async def remove_key(provider: str, name: str, request: Request) -> dict[str, Any]:
    services_of(request).hub.remove_key(provider, name)
    return {"removed": f"{provider}/{name}"}


@router.post("/keys/{provider}/{name}/enable")
async def enable_key(provider: str, name: str, request: Request) -> dict[str, Any]:
    return _set_enabled(request, provider, name, True)


@router.post("/keys/{provider}/{name}/disable")
async def disable_key(provider: str, name: str, request: Request) -> dict[str, Any]:
    return _set_enabled(request, provider, name, False)


def _set_enabled(request: Request, provider: str, name: str, enabled: bool) -> dict[str, Any]:
    hub = services_of(request).hub
    hub.set_key_enabled(provider, name, enabled)
    return next(k for k in hub.describe_keys(provider) if k["name"] == name)


# ---------------------------------------------------------------- plugins and cache
@router.get("/plugins")
async def plugins(request: Request) -> dict[str, Any]:
    services = services_of(request)
    report = services.plugins.as_dict()
    report["engines"] = services.engines  # sorted by the root
    report["provider_kinds"] = sorted(services.hub.kinds)
    return report


@router.get("/cache")
async def cache_stats(request: Request) -> dict[str, Any]:
    services = services_of(request)
    stats = services.store.cache_stats(time.time())
    stats["mode"] = services.settings["cache.mode"]
    stats["ttl_s"] = services.settings["cache.ttl"]
    stats["scope"] = services.settings["cache.scope"]
    stats["semantic"] = services.settings["cache.semantic"]
    stats["semantic_threshold"] = services.settings["cache.semantic_threshold"]
    stats["controls"] = list(CONTROL)
    return stats


@router.delete("/cache")
async def cache_clear(request: Request, expired: bool = False) -> dict[str, Any]:
    services = services_of(request)
    return {"removed": services.gateway.cache.clear(expired_only=expired)}
