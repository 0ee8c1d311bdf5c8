"""OpenAI-compatible audio routes (transcriptions, translations, speech) and tiqo's voice catalog."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from tiqo.core.errors import BadRequest, PayloadTooLarge, TiqoError
from tiqo.core.paths import user_path
from tiqo.daemon.http.dependencies import Services, request_meta, services_of, until_disconnect
from tiqo.daemon.http.forms import Fields, flag, number, one, read_form
from tiqo.daemon.http.json_route import api_router
from tiqo.daemon.http.openapi_errors import GENERATES, errors
from tiqo.daemon.http.sse import StreamResponse
from tiqo.daemon.pipeline.served import Served
from tiqo.protocol import audio as pa
from tiqo.protocol.speech import AddVoiceBody, SpeechBody

log = logging.getLogger("tiqo.api")
router = api_router()
TEXT_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}
CLONING_HINT = (
    "Piper speaks with the voices it was trained on: pick one with --voice (`tiqo voices list`), or add a trained "
    "voice with `tiqo voices add PATH.onnx`"
)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# ------------------------------------------------------------------ speech-to-text
@router.post("/v1/audio/transcriptions", response_model=None, responses=errors(*GENERATES))
async def transcriptions(request: Request) -> Response:
    """OpenAI's transcription route (multipart: file, model, language, prompt, response_format, temperature,
    timestamp_granularities[], stream). tiqo extras: sample_rate / channels / sample_format for raw PCM,
    vad_filter."""
    return await _transcribe(request, translate=False)


@router.post("/v1/audio/translations", response_model=None, responses=errors(*GENERATES))
async def translations(request: Request) -> Response:
    """Speech in any language to English text (same fields as transcriptions)."""
    return await _transcribe(request, translate=True)


async def _read_form(request: Request) -> tuple[UploadFile, Fields]:
    uploads, fields = await read_form(
        request, hint="send the audio as a form upload: curl -F file=@talk.mp3 …, or `tiqo transcribe FILE`"
    )
    upload = uploads.get("file")
    if not upload:
        raise BadRequest("the form has no `file` field with the audio", param="file", hint="curl -F file=@talk.mp3")
    return upload[0], fields


def _stt_request(upload: UploadFile, data: bytes, fields: Fields, translate: bool) -> Any:
    from tiqo.daemon.media.audio import RawPcm
    from tiqo.daemon.services.voice import SttRequest

    try:
        fmt = pa.transcription_format(one(fields, "response_format"))
    except ValueError as exc:
        raise BadRequest(str(exc), param="response_format") from None
    given = fields.get("timestamp_granularities", ["segment"])
    granularities = tuple(given if isinstance(given, list) else [given])
    unknown = [g for g in granularities if g not in ("segment", "word")]
    if unknown:
        raise BadRequest(
            f"timestamp_granularities may be segment and word, not {unknown}", param="timestamp_granularities"
        )
    rate = number(fields, "sample_rate", int)
    filename = upload.filename or "audio"
    raw = None
    if rate is not None or Path(filename).suffix.lower() in (".pcm", ".raw"):
        if rate is None:
            raise BadRequest(
                f"{filename} looks like raw PCM, which carries no sample rate",
                param="sample_rate",
                hint="pass it: `tiqo transcribe --rate 16000 --channels 1 FILE` (form field sample_rate)",
            )
        raw = RawPcm(rate, number(fields, "channels", int) or 1, one(fields, "sample_format") or "s16le")
        raw.check()
    vad = flag(fields, "vad_filter")
    language = (one(fields, "language") or "").strip().lower() or None
    return SttRequest(
        audio=data,
        filename=filename,
        content_type=upload.content_type or "application/octet-stream",
        model=one(fields, "model") or None,
        language=language,
        prompt=one(fields, "prompt") or None,
        response_format=fmt,
        temperature=number(fields, "temperature", float),
        granularities=granularities,
        translate=translate,
        raw=raw,
        vad_filter=vad,
        fields=fields,
    )


async def _transcribe(request: Request, translate: bool) -> Response:
    services = services_of(request)
    upload, fields = await _read_form(request)
    data = await upload.read()
    await upload.close()
    req = _stt_request(upload, data, fields, translate)
    meta = request_meta(request, one(fields, "user"))
    stream = bool(flag(fields, "stream"))
    if stream:
        served, events = await services.voice.transcribe(req, meta)
        return StreamResponse(
            _stt_sse(events),
            media_type="text/event-stream",
            headers={**served.headers(final=True), "cache-control": "no-cache"},
        )

    async def run() -> tuple[Served, dict[str, Any]]:
        served, events = await services.voice.transcribe(req, meta)
        done: dict[str, Any] = {}
        async for event in events:
            if event.get("type") == "done":
                done = event
        return served, done

    result = await until_disconnect(request, run())
    if result is None:
        return JSONResponse({}, status_code=499)
    served, done = result
    body = pa.transcription_body(
        req.response_format,
        task="translate" if translate else "transcribe",
        language=_language_name(done.get("language") or ""),
        duration=float(done.get("duration") or 0.0),
        segments=[_public_segment(s) for s in done.get("segments", [])],
        granularities=req.granularities,
    )
    headers = served.headers(final=True)
    if isinstance(body, str):
        return PlainTextResponse(body, media_type=TEXT_TYPES[req.response_format], headers=headers)
    return JSONResponse(body, headers=headers)


def _public_segment(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "type"}


def _language_name(code: str) -> str:
    """verbose_json names the language as OpenAI does ("english"); other codes pass through."""
    return pa.LANGUAGE_NAMES.get(code, code)


async def _stt_sse(events: AsyncGenerator[dict[str, Any], None]) -> AsyncIterator[str]:
    """OpenAI's streamed-transcription events (``transcript.text.delta`` / ``.done``) with tiqo's segment timing."""
    try:
        async for event in events:
            kind = event.get("type")
            if kind == "info":
                out = {"type": "transcript.info", **{k: v for k, v in event.items() if k != "type"}}
            elif kind == "segment":
                out = {"type": "transcript.text.delta", "delta": event["text"], "segment": _public_segment(event)}
            elif kind == "done":
                out = {"type": "transcript.text.done", **{k: v for k, v in event.items() if k != "type"}}
                out["segments"] = [_public_segment(s) for s in event.get("segments", [])]
            else:
                continue
            yield "data: " + _dumps(out) + "\n\n"
        yield "data: [DONE]\n\n"
    except TiqoError as exc:
        yield "data: " + _dumps({"type": "error", **exc.to_body()}) + "\n\n"
    except Exception as exc:  # never a silently truncated transcript
        log.exception("transcription failed mid-stream")
        error = {"message": f"transcription failed: {exc}", "type": "server_error", "code": "stream_error"}
        yield "data: " + _dumps({"type": "error", "error": error}) + "\n\n"
    finally:
        await events.aclose()


# ------------------------------------------------------------------ text-to-speech
_CLONING_FIELDS = ("reference_audio", "voice_sample", "speaker_wav", "clone")


@router.post("/v1/audio/speech", response_model=None, responses=errors(*GENERATES))
async def speech(body: SpeechBody, request: Request) -> StreamingResponse:
    """Audio bytes, streamed sentence by sentence: the first sentence plays while the rest is synthesised."""
    from tiqo.daemon.services.voice import TtsRequest

    services = services_of(request)
    extra = body.model_extra or {}
    if isinstance(body.voice, dict) or any(extra.get(f) for f in _CLONING_FIELDS):
        raise BadRequest(
            "voice cloning is not offered: tiqo's local voices (Piper) cannot imitate a voice from a sample",
            param="voice",
            code="voice_cloning_unsupported",
            hint=CLONING_HINT,
        )
    if body.stream_format not in (None, "audio"):
        raise BadRequest(
            f"stream_format {body.stream_format!r} is not supported; the audio is always streamed as bytes",
            param="stream_format",
            hint='leave stream_format out (or "audio")',
        )
    limit = services.settings["tts.max_chars"]
    if len(body.input) > limit:
        raise PayloadTooLarge(
            f"the input is {len(body.input)} characters; the limit is {limit}",
            param="input",
            hint=f"split the text, or raise the limit: `tiqo config set tts.max_chars {len(body.input)}`",
        )
    try:
        fmt = pa.speech_format(body.response_format)
    except ValueError as exc:
        raise BadRequest(str(exc), param="response_format") from None
    req = TtsRequest(
        input=body.input,
        model=body.model,
        voice=body.voice if isinstance(body.voice, str) else None,
        response_format=fmt,
        speed=body.speed,
        speaker=body.speaker,
    )
    served, spoken, audio = await services.voice.speak(req, request_meta(request, extra.get("user")))
    rate = pa.PCM_RATE if fmt == "pcm" else 48_000 if fmt in ("ogg", "opus") else spoken.sample_rate
    headers = {**served.headers(final=True), "x-tiqo-voice": spoken.voice}
    if rate:
        headers["x-tiqo-sample-rate"] = str(rate)
    if body.instructions:
        headers["x-tiqo-warning"] = "instructions are ignored by local voices"
    return StreamResponse(audio, media_type=spoken.content_type, headers=headers)


# ------------------------------------------------------------------ voices
def _voice_row(services: Services, spec: Any) -> dict[str, Any]:
    from tiqo.daemon.runtime.engines.piper import voice_info

    try:
        info = voice_info(spec.path)
    except TiqoError as exc:
        info = {"error": exc.message}
    return {
        "name": spec.name,
        **info,
        "source": spec.source,
        "path": str(spec.path),
        "description": spec.description,
        "default": spec.name == services.settings["tts.default_voice"],
        "loaded": spec.name in services.scheduler.loaded,
    }


@router.get("/tiqo/voices")
async def voices(request: Request) -> dict[str, Any]:
    services = services_of(request)
    rows = [_voice_row(services, spec) for spec in services.registry.of_kind("tts")]
    return {"voices": rows, "openai_voices": list(pa.OPENAI_VOICES), "default": services.settings["tts.default_voice"]}


@router.post("/tiqo/voices", status_code=201)
async def add_voice(body: AddVoiceBody, request: Request) -> dict[str, Any]:
    services = services_of(request)
    path = user_path(body.path)
    if path.suffix != ".onnx":
        raise BadRequest(
            f"{path.name} is not a Piper voice (NAME.onnx with NAME.onnx.json beside it)",
            param="path",
            hint="Piper voices come as two files: en_US-amy-medium.onnx and en_US-amy-medium.onnx.json",
        )
    name = body.name or path.stem
    spec = await asyncio.to_thread(services.registry.add, name, str(path), description=body.description)
    return _voice_row(services, spec)
