"""Calls to external speech providers (OpenAI-compatible /audio/transcriptions and /audio/speech)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import numpy as np

from tiqo.daemon.media.audio import WHISPER_RATE, Decoded, wav_header
from tiqo.daemon.upstream.client import AttemptFailed, UpstreamClient, iter_body, read_body
from tiqo.daemon.upstream.external import scrub
from tiqo.daemon.upstream.providers import Provider
from tiqo.policy.routing import CatalogModel
from tiqo.protocol.audio import LANGUAGE_CODES
from tiqo.sdk.provider import FormFile, UpstreamRequest


def _audio_kind(provider: Provider, method: str) -> Any:
    kind = provider.kind
    if kind is None or not hasattr(kind, method):
        what = "speech-to-text" if method == "transcription_request" else "text-to-speech"
        raise AttemptFailed("unsupported", f"provider kind {provider.config.kind} has no {what} API")
    return kind


async def _open(upstream: UpstreamClient, provider: Provider, request: UpstreamRequest, secret: str | None) -> Any:
    assert provider.kind is not None  # _audio_kind refused a provider without one before the request was built
    try:
        return await upstream.open(request, provider.kind, provider.timeouts)
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


# form fields of /v1/audio/transcriptions that stay in tiqo (the rest pass through to the provider)
NOT_FORWARDED = (
    "file", "model", "stream", "response_format", "timestamp_granularities",
    "sample_rate", "channels", "sample_format", "vad_filter", "user",
)  # fmt: skip
# What OpenAI's transcription API accepts, judged by the upload's file name (Groq's list is the same)
_UPLOAD_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
# FFmpeg container (the first name of decode()'s source) -> an extension providers accept for it
_CONTAINER_EXTENSIONS = {"wav": "wav", "mp3": "mp3", "ogg": "ogg", "flac": "flac", "mov": "m4a", "matroska": "webm"}


def upload_for(req: Any, decoded: Decoded) -> FormFile:
    """The file a provider gets. Providers judge the format by the name's extension, so an upload named without a
    usable one ("stdin" from `tiqo transcribe -`, "audio", talk.opus) is renamed after its container, or sent as
    WAV of the decoded audio when the container has no accepted name; headerless PCM always goes as WAV."""
    if req.raw is not None:  # providers take files, not headerless samples
        return FormFile("audio.wav", req.raw.as_wav(req.audio), "audio/wav")
    name = req.filename or "audio"
    stem, dot, ext = name.rpartition(".")
    if dot and stem and ext.lower() in _UPLOAD_EXTENSIONS:
        return FormFile(name, req.audio, req.content_type or "application/octet-stream")
    container = decoded.source.split("/", 1)[0]
    if container in _CONTAINER_EXTENSIONS:
        ext = _CONTAINER_EXTENSIONS[container]
        return FormFile(f"{stem or name}.{ext}", req.audio, req.content_type or "application/octet-stream")
    pcm = (np.clip(decoded.audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    return FormFile("audio.wav", wav_header(WHISPER_RATE, len(pcm)) + pcm, "audio/wav")


def done_event(language: str, duration: float, segments: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "done",
        "language": language,
        "duration": round(duration, 3),
        "text": "".join(s["text"] for s in segments).strip(),
        "segments": segments,
    }


async def stt_from_answer(answer: dict[str, Any], req: Any, duration: float) -> AsyncGenerator[dict[str, Any], None]:
    """An external provider's JSON answer as the same events a local engine yields."""
    language = str(answer.get("language") or req.language or "")
    language = LANGUAGE_CODES.get(language.lower(), language)  # OpenAI says "english"; local engines say "en"
    duration = float(answer.get("duration") or duration)
    yield {"type": "info", "language": language, "language_probability": None, "duration": round(duration, 3)}
    segments: list[dict[str, Any]] = []
    raw = answer.get("segments")
    if isinstance(raw, list) and raw:
        for i, s in enumerate(raw):
            if isinstance(s, dict):
                seg = {
                    "type": "segment",
                    "id": int(s.get("id", i)),
                    "start": float(s.get("start", 0.0)),
                    "end": float(s.get("end", duration)),
                    "text": str(s.get("text", "")),
                    "words": [],
                }
                segments.append(seg)
    elif str(answer.get("text", "")).strip():
        segments.append(
            {
                "type": "segment",
                "id": 0,
                "start": 0.0,
                "end": round(duration, 3),
                "text": " " + str(answer["text"]).strip(),
                "words": [],
            }
        )
    words = answer.get("words")
    if isinstance(words, list) and segments:
        for w in words:
            if isinstance(w, dict):
                holder = next((s for s in segments if s["start"] <= float(w.get("start", 0)) < s["end"]), segments[-1])
                holder["words"].append(w)
    for seg in segments:
        yield seg
    yield done_event(language, duration, segments)
