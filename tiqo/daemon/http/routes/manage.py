"""tiqo's own routes: health, ps, the model catalog, load/unload, backup and shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from tiqo.core.errors import BadRequest, Conflict
from tiqo.daemon.catalog.registry import KIND_DEFAULTS
from tiqo.daemon.http.dependencies import Services, services_of
from tiqo.daemon.http.json_route import api_router
from tiqo.daemon.http.openapi_errors import errors
from tiqo.policy.routing import CatalogModel
from tiqo.protocol.tiqo import AddModelRequest, BackupRequest, LoadRequest
from tiqo.sdk.engine import ModelSpec

router = api_router(prefix="/tiqo")


def _model_row(services: Services, spec: ModelSpec) -> dict[str, Any]:
    loaded = services.scheduler.loaded.get(spec.name)
    return {
        "name": spec.name,
        "kind": spec.kind,
        "engine": spec.engine,
        "source": spec.source,
        "path": str(spec.path) if spec.path else None,
        "size_bytes": spec.size_bytes,
        "description": spec.description,
        "capabilities": list(spec.capabilities),
        "default": spec.name == services.settings[KIND_DEFAULTS.get(spec.kind, "llm.default_model")],
        "loaded": loaded is not None,
        "options": {k: v for k, v in spec.options.items()},
    }


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    return services_of(request).health()


@router.get("/ps")
async def ps(request: Request) -> dict[str, Any]:
    services = services_of(request)
    sched = services.scheduler
    return {
        "models": sched.ps(),
        "memory_budget_bytes": sched.memory_budget,
        "memory_used_bytes": sched.memory_used(),
        "pending": sched.pending,
        "max_queue": sched.max_queue,
    }


def _external_kind(capabilities: tuple[str, ...]) -> str:
    for capability, kind in (("stt", "stt"), ("tts", "tts"), ("embed", "embed"), ("image", "image")):
        if capability in capabilities:
            return kind
    return "llm"


def _external_row(model: CatalogModel) -> dict[str, Any]:
    return {
        "name": model.name,
        "kind": _external_kind(model.capabilities),
        "engine": None,
        "provider": model.provider,
        "upstream_model": model.upstream_model,
        "source": f"provider:{model.provider}",
        "price_in": model.price_in,
        "price_out": model.price_out,
        "price_minute": model.price_minute,
        "price_mchar": model.price_mchar,
        "price_image": model.price_image,
        "context": model.context,
        "capabilities": list(model.capabilities),
        "fallbacks": list(model.fallbacks),
        "premium": model.premium,
        "description": model.description,
        "default": False,
        "loaded": None,
    }


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    services = services_of(request)
    rows = [_model_row(services, s) for s in services.registry.all()]
    rows += [_external_row(m) for m in services.registry.external().values()]
    aliases = services.gateway.catalog_and_config()[1].aliases
    return {"models": rows, "aliases": {k: list(v) for k, v in aliases.items()}}


# What an external model takes from the request as it is (``Registry.add_external``'s keywords).
EXTERNAL_FIELDS = {
    "price_in",
    "price_out",
    "context",
    "capabilities",
    "fallbacks",
    "premium",
    "description",
    "price_minute",
    "price_mchar",
    "price_image",
}


@router.post("/models", status_code=201, responses=errors(400, 404, 409))
async def add_model(body: AddModelRequest, request: Request) -> dict[str, Any]:
    services = services_of(request)
    if body.name in services.gateway.catalog_and_config()[1].aliases:
        raise Conflict(
            f"{body.name!r} is an alias (requests for it expand to its models), so a model of that name "
            "could never be picked",
            param="name",
            hint="pick another name; `tiqo models list` shows the aliases",
        )
    if body.provider is not None:
        services.hub.get(body.provider)  # 404 with a hint when the provider does not exist
        model = services.registry.add_external(
            body.name,
            provider=body.provider,
            upstream_model=body.upstream_model or body.name,
            **body.model_dump(include=EXTERNAL_FIELDS),
        )
        return _external_row(model)
    assert body.path is not None
    # Reading a big file's header touches the disk: keep it off the event loop.
    spec = await asyncio.to_thread(
        services.registry.add,
        body.name,
        body.path,
        n_ctx=body.n_ctx,
        keep_alive=body.keep_alive,
        description=body.description,
    )
    return _model_row(services, spec)


@router.delete("/models/{name}", responses=errors(409))
async def remove_model(name: str, request: Request) -> dict[str, Any]:
    services = services_of(request)
    if services.registry.is_external(name):
        services.registry.remove(name)
        return {"removed": name}
    spec = services.registry.resolve(name, None)
    services.registry.ensure_removable(spec.name)
    await services.scheduler.unload(spec.name)
    services.registry.remove(spec.name)
    return {"removed": spec.name}


@router.post("/models/{name}/load", responses=errors(400, 503))
async def load_model(name: str, request: Request, body: LoadRequest | None = None) -> dict[str, Any]:
    services = services_of(request)
    body = body or LoadRequest()
    spec = services.registry.resolve(name, None)
    try:
        keep_alive = body.keep_alive_seconds()
    except ValueError as exc:
        raise BadRequest(str(exc), param="keep_alive") from None
    await services.scheduler.load(spec, keep_alive)
    row = next(r for r in services.scheduler.ps() if r["name"] == spec.name)
    return row


@router.post("/models/{name}/unload")
async def unload_model(name: str, request: Request) -> dict[str, Any]:
    services = services_of(request)
    spec = services.registry.resolve(name, None)
    return {"name": spec.name, "unloaded": await services.scheduler.unload(spec.name)}


@router.post("/backup", responses=errors(400, 409))
async def backup(body: BackupRequest, request: Request) -> dict[str, Any]:
    """Write a backup archive (SQLite online backup, vector tables at one version, config) while serving."""
    return await services_of(request).backup.run(body.path, body.include_keys)


@router.post("/shutdown")
async def shutdown(request: Request) -> JSONResponse:
    services = services_of(request)
    # Answer first, then stop: the server exits after this response is sent.
    asyncio.get_running_loop().call_later(0.05, services.shutdown)
    return JSONResponse({"ok": True, "pid": services.health()["pid"]})
