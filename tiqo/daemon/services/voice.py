"""Speech requests through the same policy as text: classify → rate limits → route (local engines first, external
speech providers as configured fallbacks, with keys, breakers and budgets) → serve → one ledger row.

Fallback happens before the first byte: a local engine is committed once it has loaded and started (the language is
known, or the first sentence is synthesised); an external one once its answer (or first audio bytes) arrived.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tiqo.core.errors import BadRequest, TiqoError
from tiqo.daemon.media.audio import Decoded, RawPcm, SpeechEncoder, decode, sentences, wav_header
from tiqo.daemon.pipeline.dispatch import Dispatch, _never, _prepend, settled_at_end
from tiqo.daemon.pipeline.ports import LocalCompute
from tiqo.daemon.pipeline.router import Router
from tiqo.daemon.pipeline.served import RequestMeta, Served
from tiqo.daemon.runtime.holding import HeldSlots, Lease
from tiqo.daemon.upstream.client import AttemptFailed
from tiqo.daemon.upstream.speech import (
    NOT_FORWARDED,
    done_event,
    speak_external,
    stt_from_answer,
    transcribe_external,
    upload_for,
)
from tiqo.policy import budget as bp
from tiqo.policy.outbound import form_texts
from tiqo.policy.ratelimit import RateLimits
from tiqo.policy.routing import CatalogModel, Decision
from tiqo.protocol.audio import OPENAI_STT_MODELS, OPENAI_TTS_MODELS, OPENAI_VOICES
from tiqo.sdk.engine import StopFlag
from tiqo.sdk.speech import SpeechRunner, SttJob, TranscribeRunner, TtsJob

log = logging.getLogger("tiqo.voice")
T = TypeVar("T")


@dataclass
class SttRequest:
    audio: bytes
    filename: str = "audio"
    content_type: str = "application/octet-stream"
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float | None = None
    granularities: tuple[str, ...] = ("segment",)
    translate: bool = False
    raw: RawPcm | None = None
    vad_filter: bool | None = None
    fields: dict[str, str | list[str]] = field(default_factory=dict)  # OpenAI form fields, passed to providers


@dataclass
class TtsRequest:
    input: str
    model: str | None = None
    voice: str | None = None
    response_format: str = "mp3"
    speed: float = 1.0
    speaker: str | None = None


@dataclass
class Spoken:
    """What a speech answer turned out to be (filled in while it streams)."""

    content_type: str = "audio/mpeg"
    sample_rate: int = 0
    voice: str = ""
    samples: int = 0


class Voice(Dispatch):
    def __init__(self, gateway: Router, local: LocalCompute) -> None:
        super().__init__(gateway, local)
        self.decoded_slots = HeldSlots(
            self.settings["stt.max_decoded"],
            self.settings["scheduler.max_queue"],
            "transcriptions",
            "stt.max_decoded",
        )

    # ------------------------------------------------------------ speech-to-text
    async def transcribe(
        self, req: SttRequest, meta: RequestMeta
    ) -> tuple[Served, AsyncGenerator[dict[str, Any], None]]:
        """Events: ``info`` (language, duration), ``segment``…, then ``done``. Raises TiqoError before the first."""
        row, started = self._row(meta, "stt")
        limits = RateLimits()
        lease: Lease | None = None
        try:
            sent = [req.filename, *form_texts(req.fields, NOT_FORWARDED)]  # every form field a provider gets
            c, limits = await self._admit(row, meta, "stt", [req.prompt] if req.prompt else [], 1, scan=sent)
            lease = await self.decoded_slots.acquire()  # decoded audio is big (230 MB an hour): a few at a time
            decoded = await asyncio.to_thread(decode, req.audio, req.raw, self.settings["stt.max_duration"])
            row.audio_s = round(decoded.duration, 3)
            requested = self._openai_name(req.model, OPENAI_STT_MODELS)
            needs = ("stt",)
            blocked: dict[str, bp.Charge] = {}
            decision = self._decide(c, "stt", requested, needs, blocked)
            served, events = await self._serve_stt(req, decoded, decision, blocked, row.id)
        except BaseException as exc:
            if lease is not None:
                lease.release()
            if isinstance(exc, TiqoError):
                self._refused(row, exc, started)
            raise
        recorded = self._recorded(served, events, row, limits, started, lambda e: e.get("type") == "done")
        return served, lease.release_with(recorded)

    async def _serve_stt(
        self, req: SttRequest, decoded: Decoded, decision: Decision, blocked: dict[str, bp.Charge], request_id: str
    ) -> tuple[Served, AsyncGenerator[dict[str, Any], None]]:
        served = Served(route=decision.source)

        async def local(model: CatalogModel) -> AsyncGenerator[dict[str, Any], None]:
            spec = self.registry.resolve(model.name, "stt")
            job = SttJob(
                language=req.language,
                task="translate" if req.translate else "transcribe",
                word_timestamps="word" in req.granularities,
                vad_filter=self.settings["stt.vad_filter"] if req.vad_filter is None else req.vad_filter,
                prompt=req.prompt,
                temperature=req.temperature,
                beam_size=max(1, self.settings["stt.beam_size"]),
            )
            events = self.compute.generate(spec, None, functools.partial(_transcribe, decoded.audio, job))
            first = await anext(events)  # the model is loaded and the language known: committed
            served.backend = f"local:{spec.engine}"
            return _stt_stream(first, events, decoded.duration)

        async def external(
            model: CatalogModel, secret: str | None, provider: Any, call_id: str
        ) -> AsyncGenerator[dict[str, Any], None]:
            result = await self._stt_call(model, req, decoded, secret, provider, call_id)
            served.cost_usd = model.audio_cost(seconds=decoded.duration)
            return stt_from_answer(result, req, decoded.duration)

        def worst(model: CatalogModel) -> float:
            return model.audio_cost(seconds=decoded.duration)

        events = await self._first(decision, served, blocked, request_id, local=local, call=external, worst=worst)
        return served, events

    async def _stt_call(
        self, model: CatalogModel, req: SttRequest, decoded: Decoded, secret: str | None, provider: Any, call_id: str
    ) -> Any:
        # tiqo's own form fields (raw PCM layout, VAD, the ledger's user) are not the provider's: sending them could
        # get the request rejected, and the raw layout would be wrong for the WAV sent in its place.
        fields = {k: v for k, v in req.fields.items() if k not in NOT_FORWARDED}
        fields["response_format"] = "verbose_json" if req.response_format in ("srt", "vtt", "verbose_json") else "json"
        if fields["response_format"] == "verbose_json":
            # the parsed granularities, whichever way the client spelled the field; a list goes out as the form
            # array OpenAI reads (timestamp_granularities[]); word timings exist only in verbose_json
            fields["timestamp_granularities"] = list(req.granularities)
        return await transcribe_external(
            self.gateway.upstream,
            secret,
            provider,
            model,
            fields,
            upload_for(req, decoded),
            translate=req.translate,
            call_id=call_id,
        )

    # ------------------------------------------------------------ text-to-speech
    async def speak(self, req: TtsRequest, meta: RequestMeta) -> tuple[Served, Spoken, AsyncGenerator[bytes, None]]:
        """Audio bytes, the first chunk already in hand. Raises TiqoError before any byte."""
        row, started = self._row(meta, "tts")
        limits = RateLimits()
        spoken = Spoken()
        try:
            c, limits = await self._admit(row, meta, "tts", [req.input], len(req.input) // 4 + 1)
            pieces = list(sentences(req.input))
            if not pieces:
                raise BadRequest(
                    "the input has nothing to say (no letters or digits)",
                    param="input",
                    code="nothing_to_say",
                    hint='give it words: tiqo speak "Hello there"',
                )
            requested = self._openai_name(req.model, OPENAI_TTS_MODELS)
            if requested is None and req.voice and req.voice not in OPENAI_VOICES:
                requested = req.voice  # a local voice by name (the voice is the model for piper)
            blocked: dict[str, bp.Charge] = {}
            decision = self._decide(c, "tts", requested, ("tts",), blocked)
            served, audio = await self._serve_tts(req, pieces, decision, blocked, row.id, spoken)
        except TiqoError as exc:
            self._refused(row, exc, started)
            raise

        served.prompt_tokens = len(req.input)  # tts rows count characters in, as providers bill them

        async def measured() -> AsyncGenerator[bytes, None]:
            try:
                async for chunk in audio:
                    yield chunk
            finally:
                await audio.aclose()
                if spoken.sample_rate and spoken.samples:
                    row.audio_s = round(spoken.samples / spoken.sample_rate, 3)

        return served, spoken, self._recorded(served, measured(), row, limits, started, _never, ends_ok=True)

    async def local_wav(self, text: str, voice: str | None = None) -> bytes:
        """``text`` spoken by a local voice as one WAV file (a video's narration): the machine's own voice, no
        routing, inside the job that asked for it (and its ledger row)."""
        pieces = list(sentences(text))
        if not pieces:
            raise BadRequest("the narration has nothing to say (no letters or digits)", param="narrate")
        spec = self.registry.resolve(voice, "tts")
        spoken = Spoken()

        def call(runner: SpeechRunner, stop: StopFlag) -> Iterator[bytes]:
            return _encode(runner, pieces, TtsJob(), stop, "pcm", spoken)

        pcm = b"".join([chunk async for chunk in self.compute.generate(spec, None, call)])
        return wav_header(spoken.sample_rate, len(pcm)) + pcm

    async def _serve_tts(
        self,
        req: TtsRequest,
        pieces: list[str],
        decision: Decision,
        blocked: dict[str, bp.Charge],
        request_id: str,
        spoken: Spoken,
    ) -> tuple[Served, AsyncGenerator[bytes, None]]:
        from tiqo.protocol.audio import SPEECH_CONTENT_TYPES

        served = Served(route=decision.source)
        spoken.content_type = SPEECH_CONTENT_TYPES[req.response_format]

        async def local(model: CatalogModel) -> AsyncGenerator[bytes, None]:
            spec = self.registry.resolve(model.name, "tts")
            job = TtsJob(speed=req.speed, speaker=req.speaker)

            def call(runner: SpeechRunner, stop: StopFlag) -> Iterator[bytes]:
                return _encode(runner, pieces, job, stop, req.response_format, spoken)

            audio = self.compute.generate(spec, None, call)
            first = await anext(audio)  # the first sentence is ready: committed
            spoken.voice, served.backend = spec.name, f"local:{spec.engine}"
            return _prepend(first, audio)

        body = {
            "input": req.input,
            "voice": req.voice if req.voice in OPENAI_VOICES else "alloy",
            "response_format": "opus" if req.response_format == "ogg" else req.response_format,
            "speed": req.speed,
        }

        async def external(
            model: CatalogModel, secret: str | None, provider: Any, call_id: str
        ) -> AsyncGenerator[bytes, None]:
            stream = speak_external(self.gateway.upstream, secret, provider, model, body, call_id)
            try:
                first = await anext(stream)  # a failure before the first byte falls back
            except StopAsyncIteration:  # a 200 with an empty body: no audio is a failed attempt, not a crash
                raise AttemptFailed("protocol", "the provider answered with no audio") from None
            spoken.voice = str(body["voice"])
            served.cost_usd = model.audio_cost(chars=len(req.input))
            return _prepend(first, stream)

        audio = await self._first(
            decision,
            served,
            blocked,
            request_id,
            local=local,
            call=external,
            worst=lambda model: model.audio_cost(chars=len(req.input)),
            until_end=settled_at_end,
        )
        return served, audio


def _transcribe(audio: Any, job: SttJob, runner: TranscribeRunner, stop: StopFlag) -> Iterator[dict[str, Any]]:
    """In the Whisper runner's thread: its events for ``audio``."""
    events: Iterator[dict[str, Any]] = runner.transcribe(audio, job, stop)
    return events


async def _stt_stream(
    first: dict[str, Any], rest: AsyncGenerator[dict[str, Any], None], duration: float
) -> AsyncGenerator[dict[str, Any], None]:
    """Engine events plus the closing ``done`` event (with the whole text)."""
    segments: list[dict[str, Any]] = []
    info = first
    try:
        yield {**first, "duration": round(duration, 3)}
        async for event in rest:
            if event.get("type") == "segment":
                segments.append(event)
            yield event
    finally:
        await rest.aclose()
    yield done_event(info.get("language") or "", duration, segments)


def _encode(
    runner: SpeechRunner, pieces: list[str], job: TtsJob, stop: StopFlag, fmt: str, spoken: Spoken
) -> Iterator[bytes]:
    """Synthesise and encode in the runner's thread: the event loop only moves bytes."""
    encoder = SpeechEncoder(fmt, runner.sample_rate)
    spoken.sample_rate = runner.sample_rate
    try:
        for pcm in runner.speak(pieces, job, stop):
            spoken.samples += len(pcm) // 2
            out = encoder.feed(pcm)
            if out:
                yield out
        tail = encoder.finish()
        if tail:
            yield tail
    finally:
        encoder.close()
