"""OpenAI-compatible routes: models, chat completions and text completions (JSON or SSE)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from tiqo.core.durations import parse_duration
from tiqo.core.errors import TiqoError
from tiqo.daemon.cache.tool_calls import merge_tool_calls
from tiqo.daemon.http.dependencies import request_meta, services_of, until_disconnect
from tiqo.daemon.http.json_route import api_router
from tiqo.daemon.http.openapi_errors import GENERATES, errors
from tiqo.daemon.http.sse import StreamResponse
from tiqo.daemon.http.tcp import tcp_user
from tiqo.daemon.services.gateway import RequestMeta, Served, generation_params
from tiqo.daemon.services.rag import augment
from tiqo.protocol import openai as oa
from tiqo.sdk.engine import ChatRunner, Piece, StopFlag

log = logging.getLogger("tiqo.api")
router = api_router()
ChatOrCompletion = TypeVar("ChatOrCompletion", oa.ChatCompletionRequest, oa.CompletionRequest)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    services = services_of(request)
    created = int(services.started_at)
    data = [{"id": s.name, "object": "model", "created": created, "owned_by": "tiqo"} for s in services.registry.all()]
    data += [
        {"id": m.name, "object": "model", "created": created, "owned_by": m.provider}
        for m in services.registry.external().values()
    ]
    return {"object": "list", "data": data}


@router.get("/v1/models/{name}")
async def get_model(name: str, request: Request) -> dict[str, Any]:
    services = services_of(request)
    external = services.registry.external().get(name)
    if external is not None:
        return {"id": name, "object": "model", "created": int(services.started_at), "owned_by": external.provider}
    spec = services.registry.resolve(name, None)
    return {"id": spec.name, "object": "model", "created": int(services.started_at), "owned_by": "tiqo"}


KEEP_ALIVE_IGNORED = "keep_alive is ignored over TCP: shared models stay loaded for scheduler.keep_alive"


def _as_caller(body: ChatOrCompletion, meta: RequestMeta, request: Request) -> tuple[ChatOrCompletion, dict[str, str]]:
    """What the caller may set, and no more. Providers see the user tiqo accounts the request to (``meta.user``),
    never another name the caller puts in ``user``, and none when it names none. Over TCP ``keep_alive`` is dropped
    (a remote caller may neither pin nor unload models others use) and the answer says so in ``x-tiqo-warning``."""
    update: dict[str, Any] = {}
    headers = {}
    if body.user is not None and body.user != meta.user:
        update["user"] = meta.user
    if body.keep_alive is not None and tcp_user(request.scope) is not None:
        update["keep_alive"] = None
        headers["x-tiqo-warning"] = KEEP_ALIVE_IGNORED
    return (body.model_copy(update=update) if update else body), headers


@router.post("/v1/chat/completions", response_model=None, responses=errors(*GENERATES))
async def chat_completions(body: oa.ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    services = services_of(request)
    meta = request_meta(request, body.user)
    body, warnings = _as_caller(body, meta, request)
    rid = "chatcmpl-" + request.scope["state"]["request_id"].removeprefix("req_")
    body, sources = await augment(services.vectors, body, meta)
    if not body.stream:

        async def run() -> tuple[Served, list[Piece]]:
            served, pieces = await services.gateway.chat(body, meta, stream=False)
            served.sources = sources
            return served, [p async for p in pieces]

        response = await _collect(request, run, rid, chat=True)
        response.headers.update(warnings)
        return response
    served, pieces = await services.gateway.chat(body, meta, stream=True)
    served.sources = sources
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamResponse(
        _sse(pieces, served, rid, True, include_usage),
        media_type="text/event-stream",
        headers={**served.headers(final=False), "cache-control": "no-cache", **warnings},
    )


@router.post("/v1/completions", response_model=None, responses=errors(*GENERATES))
async def completions(body: oa.CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    services = services_of(request)
    spec = services.registry.resolve(body.model)
    meta = request_meta(request, body.user)
    body, warnings = _as_caller(body, meta, request)
    prompt = body.prompt_text()
    params = generation_params(body)
    keep_alive = None if body.keep_alive is None else parse_duration(body.keep_alive)
    rid = "cmpl-" + request.scope["state"]["request_id"].removeprefix("req_")
    served = Served(backend=f"local:{spec.engine}", provider="local", model=spec.name)
    row, limits, started = await services.gateway.admit_local(body, meta)

    def call(runner: ChatRunner, stop: StopFlag) -> Iterator[Piece]:
        return runner.complete(prompt, params, stop)

    def generate() -> AsyncGenerator[Piece, None]:
        pieces = services.local.generate(spec, keep_alive, call)
        return services.gateway.accounting.recorded(served, pieces, row, body, limits, started)

    if not body.stream:

        async def run() -> tuple[Served, list[Piece]]:
            return served, [p async for p in generate()]

        response = await _collect(request, run, rid, chat=False)
        response.headers.update(warnings)
        return response
    pieces = generate()
    # Pull the first piece before answering, so load errors and over-long prompts get a real HTTP status.
    try:
        first = await anext(pieces)
    except StopAsyncIteration:
        first = Piece("", finish_reason="stop")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamResponse(
        _sse(_prepend(first, pieces), served, rid, False, include_usage),
        media_type="text/event-stream",
        headers={**served.headers(final=True), "cache-control": "no-cache", **warnings},
    )


async def _prepend(first: Piece, rest: AsyncGenerator[Piece, None]) -> AsyncGenerator[Piece, None]:
    try:
        yield first
        if first.finish_reason is None:
            async for piece in rest:
                yield piece
    finally:
        await rest.aclose()


async def _collect(
    request: Request,
    run: Callable[[], Awaitable[tuple[Served, list[Piece]]]],
    rid: str,
    *,
    chat: bool,
) -> JSONResponse:
    """Run the whole generation, stopping it if the client hangs up first."""
    result = await until_disconnect(request, run())
    if result is None:
        log.info("%s: client disconnected; generation stopped", rid)
        return JSONResponse({}, status_code=499)
    served, pieces = result
    text = "".join(p.text for p in pieces)
    last = next((p for p in reversed(pieces) if p.finish_reason), Piece("", finish_reason="stop"))
    use = oa.usage(last.prompt_tokens, last.completion_tokens)
    finish = last.finish_reason or "stop"
    if chat:
        body = oa.chat_response(rid, served.model, text, finish, use)
        calls = merge_tool_calls([c for p in pieces for c in (p.tool_calls or ())])
        if calls:
            message = body["choices"][0]["message"]
            message["tool_calls"] = calls
            message["content"] = text or None
        if served.sources:
            body["x_tiqo"] = {"sources": served.sources}
    else:
        body = oa.completion_response(rid, served.model, text, finish, use)
    return JSONResponse(body, headers=served.headers(final=True))


async def _sse(
    pieces: AsyncGenerator[Piece, None], served: Served, rid: str, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    created = int(time.time())
    model = served.model

    # The hot path: a content-only chunk is a fixed frame around one JSON string (same bytes as chat_chunk).
    head = _dumps(oa.chat_chunk(rid, model, created, {"content": ""}))
    prefix, suffix = "data: " + head[: head.index('"content":') + 10], head[head.index('"content":') + 12 :] + "\n\n"

    def event(piece: Piece, finish: str | None = None) -> str:
        if chat and finish is None and not piece.tool_calls:
            return prefix + json.dumps(piece.text, ensure_ascii=False) + suffix
        if chat:
            delta: dict[str, Any] = {}
            if finish is None:
                if piece.text:
                    delta["content"] = piece.text
                if piece.tool_calls:
                    delta["tool_calls"] = piece.tool_calls
            return "data: " + _dumps(oa.chat_chunk(rid, model, created, delta, finish)) + "\n\n"
        return "data: " + _dumps(oa.completion_chunk(rid, model, created, piece.text, finish)) + "\n\n"

    last = Piece("", finish_reason="stop")
    # Events that are in hand together go out in one write (one HTTP chunk): the role chunk with the first piece,
    # pieces the provider sent in one network read (``served.ahead``), the end with the usage chunk and [DONE]. Each
    # write costs a send through the middleware and a system call; the bytes of the stream are the same, and no
    # event waits for one that is not here yet.
    held = ""
    ahead = served.ahead
    try:
        if chat:
            held = "data: " + _dumps(oa.chat_chunk(rid, model, created, {"role": "assistant", "content": ""})) + "\n\n"
        async for piece in pieces:
            if piece.text or piece.tool_calls:
                held += event(piece)
                if not ahead.more:
                    frame, held = held, ""
                    yield frame
            if piece.finish_reason is not None:
                last = piece
        held += event(last, last.finish_reason or "stop")
        frame, held = held + _closing(served, rid, created, chat, include_usage, last) + "data: [DONE]\n\n", ""
        yield frame
    except TiqoError as exc:
        yield held + "data: " + _dumps(exc.to_body()) + "\n\n"
    except Exception as exc:  # never a silently truncated stream: say it failed
        log.exception("%s: generation failed mid-stream", rid)
        error = {"error": {"message": f"generation failed: {exc}", "type": "server_error", "code": "stream_error"}}
        yield held + "data: " + _dumps(error) + "\n\n"
    finally:
        await pieces.aclose()


def _closing(served: Served, rid: str, created: int, chat: bool, include_usage: bool, last: Piece) -> str:
    """What follows the last event: the usage chunk (asked for with ``stream_options``), or the sources."""
    model = served.model
    if include_usage:
        obj = "chat.completion.chunk" if chat else "text_completion"
        use = oa.usage(last.prompt_tokens, last.completion_tokens)
        chunk = oa.usage_chunk(rid, model, created, obj, use)
        chunk["x_tiqo"] = {"backend": served.backend, "cost_usd": round(served.cost_usd, 8), "cache": served.cache}
        if served.sources:
            chunk["x_tiqo"]["sources"] = served.sources
        return "data: " + _dumps(chunk) + "\n\n"
    if served.sources:
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": []}
        return "data: " + _dumps({**chunk, "x_tiqo": {"sources": served.sources}}) + "\n\n"
    return ""
