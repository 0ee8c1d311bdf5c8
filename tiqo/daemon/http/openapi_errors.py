"""The error statuses the OpenAPI schema lists, from one table: every error body has OpenAI's shape
``{"error": {...}}`` (tiqo/core/errors.py), so a client generator sees each status a route really answers.

Statuses every route can answer come from its shape (``document_errors``); a route adds its own with
``responses=errors(404, 409)`` on its decorator."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="OpenAI's error type: invalid_request_error, rate_limit_error, server_error …")
    code: str = Field(description="a stable machine-readable code, e.g. not_found, validation_error")
    param: str | None = Field(default=None, description="the request field at fault, when there is one")
    hint: str | None = Field(default=None, description="the command or setting that fixes it")


class ErrorBody(BaseModel):
    """Every error tiqo answers (OpenAI's shape, plus ``hint``)."""

    error: ErrorDetail


COMMON_ERRORS: dict[int, str] = {
    400: "Bad request: invalid JSON, or a value the route cannot use",
    401: "Over the TCP listener: no token, or a token tiqo does not know",
    403: "Refused: restricted data with no local model to serve it, or not allowed to this caller",
    404: "No such model, provider, key, voice, user or collection",
    409: "Conflict: it exists already, or is in use",
    413: "The request body is larger than daemon.max_request_size (stt.max_upload for audio)",
    422: "The request does not match this schema",
    429: "A rate limit or budget leaves no room for this request (see Retry-After)",
    431: "The request's headers are too large (more than 256 headers or 64 KiB)",
    500: "A bug in tiqo (details in `tiqo daemon logs`)",
    502: "Every provider that could serve the request failed",
    503: "Busy: too many requests waiting for the model",
}

# Statuses any route can answer whatever it does: the TCP token check, the body and header size limits, a bug.
ANY_ROUTE = (401, 413, 431, 500)
# What a route that generates or calls a provider can answer besides: refused, no candidate, rate-limited or over
# budget, every upstream failed, the queue full.
GENERATES = (400, 403, 404, 429, 502, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, with the error body's model and the table's description."""
    return {status: {"model": ErrorBody, "description": COMMON_ERRORS[status]} for status in statuses}


def document_errors(app: FastAPI) -> None:
    """Make ``app.openapi()`` list on each operation the statuses its shape implies, besides those its decorator
    names: any route (ANY_ROUTE), a JSON body can be invalid JSON (400), parameters or a body can fail validation
    (422), a path parameter can name nothing (404). All share one ``ErrorBody`` schema."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in body.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas.setdefault("ErrorBody", body)
        ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                places = {p.get("in") for p in operation.get("parameters", [])}
                statuses = set(ANY_ROUTE)
                if "requestBody" in operation:
                    statuses |= {400, 422}
                if "path" in places:
                    statuses |= {404, 422}
                if places:
                    statuses.add(422)
                responses = operation.setdefault("responses", {})
                for status in sorted(statuses):
                    if status == 422 or str(status) not in responses:  # 422: our shape, not FastAPI's default
                        responses[str(status)] = {"description": COMMON_ERRORS[status], **ref}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
