"""Streams of ``Piece``: committing an attempt (prime), chaining held pieces to the rest, replaying a cache hit.
(Merging OpenAI tool-call deltas is tiqo.daemon.cache.tool_calls.)"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from tiqo.core.errors import UpstreamFailed
from tiqo.daemon.upstream.client import AttemptFailed
from tiqo.sdk.engine import Piece


async def prime(pieces: AsyncGenerator[Piece, None], stream: bool) -> AsyncGenerator[Piece, None]:
    """Run the attempt until it is safe to commit: a first token for streams, the whole answer for JSON."""
    held: list[Piece] = []
    try:
        async for piece in pieces:
            held.append(piece)
            if stream and (piece.text or piece.tool_calls or piece.finish_reason):
                break
    except BaseException:
        await pieces.aclose()
        raise
    return _chain(held, pieces if stream else None)


async def _chain(held: list[Piece], rest: AsyncGenerator[Piece, None] | None) -> AsyncGenerator[Piece, None]:
    try:
        for piece in held:
            yield piece
        if rest is not None and not (held and held[-1].finish_reason):
            async for piece in rest:
                yield piece
    except AttemptFailed as exc:
        raise UpstreamFailed(f"the provider failed mid-answer: {exc.message}", code="stream_interrupted") from None
    finally:
        if rest is not None:
            await rest.aclose()


async def replay(hit: dict[str, Any]) -> AsyncGenerator[Piece, None]:
    if hit.get("text"):
        yield Piece(hit["text"])
    if hit.get("tool_calls"):
        yield Piece("", tool_calls=hit["tool_calls"])
    yield Piece(
        "",
        finish_reason=hit.get("finish_reason") or "stop",
        prompt_tokens=int(hit.get("prompt_tokens") or 0),
        completion_tokens=int(hit.get("completion_tokens") or 0),
    )
