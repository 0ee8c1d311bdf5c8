"""Calls to external speech providers (OpenAI-compatible /audio/transcriptions and /audio/speech)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from tiqo.daemon.external import scrub
from tiqo.daemon.providers import Provider
from tiqo.daemon.upstream import AttemptFailed, UpstreamClient, iter_body, read_body
from tiqo.policy.routing import CatalogModel
from tiqo.sdk.provider import FormFile, UpstreamRequest


def _audio_kind(provider: Provider, method: str) -> Any:
    kind = provider.kind
    if kind is None or not hasattr(kind, method):
        what = "speech-to-text" if method == "transcription_request" else "text-to-speech"
        raise AttemptFailed("unsupported", f"provider kind {provider.config.kind} has no {what} API")
    return kind


async def _open(upstream: UpstreamClient, provider: Provider, request: UpstreamRequest, secret: str | None) -> Any:
    try:
        return await upstream.open(request, provider.kind, provider.timeouts)  # type: ignore[arg-type]
    except AttemptFailed as exc:
        exc.message = scrub(exc.message, secret)
        raise


async def transcribe_external(
    upstream: UpstreamClient,
    secret: str | None,
    provider: Provider,
    model: CatalogModel,
    fields: dict[str, str | list[str]],
    audio: FormFile,
    *,
    translate: bool,
    call_id: str | None,
) -> dict[str, Any]:
    """One transcription call; the answer as OpenAI's (verbose) JSON object."""
    kind = _audio_kind(provider, "transcription_request")
    upstream_model = model.upstream_model or model.name
    request = kind.transcription_request(provider.config, upstream_model, fields, audio, secret, translate=translate)
    if call_id is not None:
        request.headers["X-Client-Request-Id"] = call_id
    resp = await _open(upstream, provider, request, secret)
    body = await read_body(resp, provider.timeouts)
    text = body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"text": text.strip()}  # response_format=text
    if not isinstance(parsed, dict) or not isinstance(parsed.get("text"), str):
        raise AttemptFailed("protocol", scrub(f"transcription answer without text: {text[:200]}", secret))
    return parsed


async def speak_external(
    upstream: UpstreamClient,
    secret: str | None,
    provider: Provider,
    model: CatalogModel,
    body: dict[str, Any],
    call_id: str | None,
) -> AsyncGenerator[bytes, None]:
    """Audio bytes as the provider streams them."""
    kind = _audio_kind(provider, "speech_request")
    request = kind.speech_request(provider.config, model.upstream_model or model.name, body, secret)
    if call_id is not None:
        request.headers["X-Client-Request-Id"] = call_id
    resp = await _open(upstream, provider, request, secret)
    content_type = resp.headers.get("content-type", "")
    if content_type.startswith(("application/json", "text/")):
        resp.close()
        raise AttemptFailed("protocol", f"expected audio, got {content_type}")
    chunks = iter_body(resp, provider.timeouts)
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await chunks.aclose()
