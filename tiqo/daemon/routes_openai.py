"""OpenAI-compatible routes: models, chat completions and text completions (JSON or SSE)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tiqo.core.durations import parse_duration
from tiqo.core.errors import TiqoError
from tiqo.daemon.service import Daemon
from tiqo.protocol import openai as oa
from tiqo.sdk.engine import GenerationParams, ModelSpec, Piece, Runner, StopFlag

log = logging.getLogger("tiqo.api")
router = APIRouter()


def _daemon(request: Request) -> Daemon:
    daemon: Daemon = request.app.state.daemon
    return daemon


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _params(body: oa.ChatCompletionRequest | oa.CompletionRequest) -> GenerationParams:
    return GenerationParams(
        max_tokens=body.token_limit(),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(body.stop_list()),
        seed=body.seed,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.logit_bias,
    )


def _headers(spec: ModelSpec) -> dict[str, str]:
    return {"x-tiqo-backend": f"local:{spec.engine}", "x-tiqo-model": spec.name, "x-tiqo-cost-usd": "0"}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    daemon = _daemon(request)
    created = int(daemon.started_at)
    return {
        "object": "list",
        "data": [
            {"id": s.name, "object": "model", "created": created, "owned_by": "tiqo"} for s in daemon.registry.all()
        ],
    }


@router.get("/v1/models/{name}")
async def get_model(name: str, request: Request) -> dict[str, Any]:
    daemon = _daemon(request)
    spec = daemon.registry.resolve(name)
    return {"id": spec.name, "object": "model", "created": int(daemon.started_at), "owned_by": "tiqo"}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: oa.ChatCompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    daemon = _daemon(request)
    spec = daemon.registry.resolve(body.model)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    params = _params(body)

    def call(runner: Runner, stop: StopFlag) -> Iterator[Piece]:
        return runner.chat(messages, params, stop)

    return await _serve(request, daemon, spec, body, call, chat=True)


@router.post("/v1/completions", response_model=None)
async def completions(body: oa.CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    daemon = _daemon(request)
    spec = daemon.registry.resolve(body.model)
    prompt = body.prompt_text()
    params = _params(body)

    def call(runner: Runner, stop: StopFlag) -> Iterator[Piece]:
        return runner.complete(prompt, params, stop)

    return await _serve(request, daemon, spec, body, call, chat=False)


async def _serve(
    request: Request,
    daemon: Daemon,
    spec: ModelSpec,
    body: oa.ChatCompletionRequest | oa.CompletionRequest,
    call: Callable[[Runner, StopFlag], Iterator[Piece]],
    *,
    chat: bool,
) -> JSONResponse | StreamingResponse:
    keep_alive = None if body.keep_alive is None else parse_duration(body.keep_alive)
    rid = request.scope["state"]["request_id"]
    prefix = "chatcmpl-" if chat else "cmpl-"
    rid = prefix + rid.removeprefix("req_")
    pieces = daemon.generate(spec, keep_alive, call)
    if not body.stream:
        return await _collect(request, pieces, spec, rid, chat)
    # Pull the first piece before answering, so load errors and over-long prompts get a real HTTP status.
    try:
        first = await anext(pieces)
    except StopAsyncIteration:
        first = Piece("", finish_reason="stop")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _sse(first, pieces, spec, rid, chat, include_usage),
        media_type="text/event-stream",
        headers={**_headers(spec), "cache-control": "no-cache"},
    )


async def _collect(
    request: Request, pieces: AsyncGenerator[Piece, None], spec: ModelSpec, rid: str, chat: bool
) -> JSONResponse:
    """Run the whole generation, stopping it if the client hangs up first."""

    async def consume() -> tuple[str, Piece]:
        parts, last = [], Piece("", finish_reason="stop")
        async for piece in pieces:
            parts.append(piece.text)
            last = piece
        return "".join(parts), last

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work = asyncio.ensure_future(consume())
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            await pieces.aclose()
    if work.cancelled():
        log.info("%s: client disconnected; generation stopped", rid)
        return JSONResponse({}, status_code=499)
    text, last = work.result()
    use = oa.usage(last.prompt_tokens, last.completion_tokens)
    finish = last.finish_reason or "stop"
    body = (oa.chat_response if chat else oa.completion_response)(rid, spec.name, text, finish, use)
    return JSONResponse(body, headers=_headers(spec))


async def _sse(
    first: Piece, pieces: AsyncGenerator[Piece, None], spec: ModelSpec, rid: str, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    created = int(time.time())
    model = spec.name

    def event(text: str, finish: str | None = None) -> str:
        if chat:
            delta = {"content": text} if finish is None else {}
            return "data: " + _dumps(oa.chat_chunk(rid, model, created, delta, finish)) + "\n\n"
        return "data: " + _dumps(oa.completion_chunk(rid, model, created, text, finish)) + "\n\n"

    last = first
    try:
        if chat:
            yield "data: " + _dumps(oa.chat_chunk(rid, model, created, {"role": "assistant", "content": ""})) + "\n\n"
        if first.text:
            yield event(first.text)
        if first.finish_reason is None:
            async for piece in pieces:
                last = piece
                if piece.text:
                    yield event(piece.text)
        yield event("", last.finish_reason or "stop")
        if include_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            use = oa.usage(last.prompt_tokens, last.completion_tokens)
            yield "data: " + _dumps(oa.usage_chunk(rid, model, created, obj, use)) + "\n\n"
        yield "data: [DONE]\n\n"
    except TiqoError as exc:
        yield "data: " + _dumps(exc.to_body()) + "\n\n"
    except Exception as exc:  # never a silently truncated stream: say it failed
        log.exception("%s: generation failed mid-stream", rid)
        yield (
            "data: "
            + _dumps(
                {"error": {"message": f"generation failed: {exc}", "type": "server_error", "code": "stream_error"}}
            )
            + "\n\n"
        )
    finally:
        await pieces.aclose()
