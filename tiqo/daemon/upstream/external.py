"""A call to an external provider: the plugin's sans-IO translator on the daemon's pooled HTTP client."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from tiqo.daemon.upstream.client import AttemptFailed, ReadAhead, UpstreamClient, read_body, sse_events
from tiqo.daemon.upstream.providers import Provider
from tiqo.policy.routing import CatalogModel
from tiqo.sdk.engine import Piece
from tiqo.sdk.provider import UnsupportedRequest


async def stream_external(
    upstream: UpstreamClient,
    secret: str | None,
    provider: Provider,
    model: CatalogModel,
    wire: dict[str, Any],
    call_id: str | None = None,
    ahead: ReadAhead | None = None,
) -> AsyncGenerator[Piece, None]:
    """One streamed call to a provider, as pieces. Raises AttemptFailed (with no key material in its message).
    ``ahead`` says, with each piece, whether the next one is already in hand."""
    kind = provider.kind
    assert kind is not None
    upstream_model = model.upstream_model or model.name
    body = {**wire, "model": upstream_model}
    try:
        request = kind.chat_request(provider.config, upstream_model, body, secret)
    except UnsupportedRequest as exc:
        raise AttemptFailed("unsupported", f"{provider.config.kind} cannot express this request: {exc}") from None
    if call_id is not None:  # OpenAI's request-tracking header; lets a provider's logs be matched to the audit trail
        request.headers["X-Client-Request-Id"] = call_id
    try:
        resp = await upstream.open(request, kind, provider.timeouts)
    except AttemptFailed as exc:
        exc.message = scrub(exc.message, secret)
        raise
    translator = kind.translator(upstream_model)
    answer, ahead = _Answer(), ahead or ReadAhead()
    events = sse_events(resp, provider.timeouts, ahead)
    try:
        async for event, data in events:
            more = ahead.more
            try:
                chunks = translator.feed(event, data)
            except Exception as exc:
                raise AttemptFailed("protocol", scrub(_upstream_error_text(exc), secret)) from None
            pieces = answer.pieces(chunks)
            for i, piece in enumerate(pieces, 1):
                ahead.more = more or i < len(pieces)
                yield piece
        try:
            tail = translator.close()
        except Exception as exc:
            raise AttemptFailed("protocol", scrub(_upstream_error_text(exc), secret)) from None
        ahead.more = True  # the rest is in hand: the tail's pieces and the last one
        for piece in answer.pieces(tail):
            yield piece
    finally:
        await events.aclose()
    ahead.more = False
    yield answer.last()


class _Answer:
    """OpenAI-shaped chunks as pieces; remembers the finish reason and the usage for the last piece."""

    __slots__ = ("finish", "usage")

    def __init__(self) -> None:
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}

    def pieces(self, chunks: list[dict[str, Any]]) -> list[Piece]:
        out = []
        for chunk in chunks:
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                content = delta.get("content") or ""
                calls = delta.get("tool_calls")
                if content or calls:
                    out.append(Piece(content, tool_calls=calls))
                if choice.get("finish_reason"):
                    self.finish = choice["finish_reason"]
        return out

    def last(self) -> Piece:
        usage = self.usage
        return Piece(
            "",
            finish_reason=self.finish or "stop",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )


async def json_answer(upstream: UpstreamClient, request: Any, provider: Provider, secret: str | None, what: str) -> Any:
    """Send a non-streamed request (embeddings, images) and parse its JSON answer; errors never carry the key."""
    assert provider.kind is not None  # the caller built the request with it
    try:
        resp = await upstream.open(request, provider.kind, provider.timeouts)
    except AttemptFailed as exc:
        exc.message = scrub(exc.message, secret)
        raise
    raw = await read_body(resp, provider.timeouts)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise AttemptFailed("protocol", scrub(f"unusable {what} answer: {exc}", secret)) from None


def scrub(text: str, secret: str | None) -> str:
    """The daemon is the only side that knows the key: make sure no message carries it."""
    return text.replace(secret, "[redacted]") if secret else text


def _upstream_error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
