"""``POST /v1/embeddings`` (OpenAI-compatible: string or list input, float or base64 encoding, ``dimensions``)."""

from __future__ import annotations

import base64
import struct
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from tiqo.core.errors import BadRequest, PayloadTooLarge
from tiqo.daemon.http.dependencies import request_meta, services_of
from tiqo.daemon.http.json_route import api_router
from tiqo.daemon.http.openapi_errors import GENERATES, errors
from tiqo.protocol.embeddings import EmbeddingsBody

router = api_router()
MAX_INPUTS = 2048  # OpenAI's limit per request


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not value:
        raise BadRequest("input is empty", param="input", hint='send a string or a list of strings: {"input": "hi"}')
    if not all(isinstance(v, str) for v in value):
        raise BadRequest(
            "token arrays are not accepted: tokenizers differ between models",
            param="input",
            hint="send the text itself",
        )
    empty = [i for i, v in enumerate(value) if not v.strip()]
    if empty:
        raise BadRequest(f"input {empty[0]} is empty", param="input", hint="drop empty strings before sending")
    if len(value) > MAX_INPUTS:
        raise PayloadTooLarge(f"{len(value)} inputs; the limit is {MAX_INPUTS}", param="input", hint="send batches")
    return list(value)


@router.post("/v1/embeddings", responses=errors(*GENERATES))
async def embeddings(body: EmbeddingsBody, request: Request) -> JSONResponse:
    services = services_of(request)
    if body.encoding_format not in (None, "float", "base64"):
        raise BadRequest("encoding_format must be float or base64", param="encoding_format")
    if body.dimensions is not None and body.dimensions < 1:
        raise BadRequest("dimensions must be positive", param="dimensions")
    inputs = _texts(body.input)
    served, vectors = await services.embeddings.create(
        inputs, body.model, request_meta(request, body.user), body.dimensions
    )
    data = []
    for i, vector in enumerate(vectors):
        value: Any = vector
        if body.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": served.prompt_tokens, "total_tokens": served.prompt_tokens}
    return JSONResponse(
        {"object": "list", "data": data, "model": served.model, "usage": usage}, headers=served.headers(final=True)
    )
