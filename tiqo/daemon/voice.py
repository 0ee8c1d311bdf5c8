"""Speech requests through the same policy as text: classify → rate limits → route (local engines first, external
speech providers as configured fallbacks, with keys, breakers and budgets) → serve → one ledger row.

Fallback happens before the first byte: a local engine is committed once it has loaded and started (the language is
known, or the first sentence is synthesised); an external one once its answer (or first audio bytes) arrived.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from tiqo.core.errors import BadRequest, Busy, ModelLoadFailed, TiqoError
from tiqo.daemon.audio import Decoded, RawPcm, SpeechEncoder, decode, sentences
from tiqo.daemon.engines.piper import TtsJob
from tiqo.daemon.engines.whisper import SttJob
from tiqo.daemon.ledger import CallRow, RequestRow
from tiqo.daemon.served import RequestMeta, Served
from tiqo.daemon.upstream import AttemptFailed
from tiqo.daemon.voice_upstream import (
    NOT_FORWARDED,
    done_event,
    speak_external,
    stt_from_answer,
    transcribe_external,
    upload_for,
)
from tiqo.policy import budget as bp
from tiqo.policy.classify import Classification
from tiqo.policy.ratelimit import RateLimits
from tiqo.policy.routing import AUTO, CatalogModel, Decision
from tiqo.protocol.audio import OPENAI_STT_MODELS, OPENAI_TTS_MODELS, OPENAI_VOICES

log = logging.getLogger("tiqo.voice")
T = TypeVar("T")
KEY_LEVEL = ("rate_limited", "quota_exhausted", "auth")


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


class Voice:
    def __init__(self, gateway: Any, daemon: Any) -> None:
        self.gateway = gateway  # tiqo.daemon.gateway.Gateway
        self.daemon = daemon  # tiqo.daemon.service.Daemon
        self.settings = gateway.settings
        self.registry = gateway.registry
        self.accounting = gateway.accounting
        self.hub = gateway.hub

    # ------------------------------------------------------------ speech-to-text
    async def transcribe(
        self, req: SttRequest, meta: RequestMeta
    ) -> tuple[Served, AsyncGenerator[dict[str, Any], None]]:
        """Events: ``info`` (language, duration), ``segment``…, then ``done``. Raises TiqoError before the first."""
        row, started = self._row(meta, "stt")
        limits = RateLimits()
        try:
            c, limits = self._admit(row, meta, "stt", [req.prompt] if req.prompt else [], 1)
            decoded = await asyncio.to_thread(decode, req.audio, req.raw)
            row.audio_s = round(decoded.duration, 3)
            requested = self._openai_name(req.model, OPENAI_STT_MODELS)
            needs = ("stt",)
            blocked: dict[str, bp.Charge] = {}
            decision = self._decide(c, "stt", requested, needs, blocked)
            served, events = await self._serve_stt(req, decoded, decision, blocked, row.id)
        except TiqoError as exc:
            self._refused(row, exc, started)
            raise
        return served, self._recorded(served, events, row, limits, started, lambda e: e.get("type") == "done")

    async def _serve_stt(
        self, req: SttRequest, decoded: Decoded, decision: Decision, blocked: dict[str, bp.Charge], request_id: str
    ) -> tuple[Served, AsyncGenerator[dict[str, Any], None]]:
        served = Served(route=decision.source)
        catalog, _ = self.gateway.catalog_and_config()
        failures: list[AttemptFailed | TiqoError] = []
        for cand in decision.kept:
            model = catalog[cand.model]
            if model.local:
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
                events = self.daemon.generate(
                    spec, None, lambda r, stop, job=job: r.transcribe(decoded.audio, job, stop)
                )
                try:
                    first = await anext(events)  # the model is loaded and the language known: committed
                except (Busy, ModelLoadFailed) as exc:
                    failures.append(exc)
                    served.attempts.append({"model": cand.model, "provider": "local", "error": exc.message})
                    continue
                self._served_by(served, model, f"local:{spec.engine}", None)
                return served, _stt_stream(first, events, decoded.duration)
            result = await self._external(
                cand.model,
                model,
                decision,
                served,
                failures,
                blocked,
                request_id,
                worst=model.audio_cost(seconds=decoded.duration),
                call=lambda secret, p, call_id, model=model: self._stt_call(secret, p, model, req, decoded, call_id),
            )
            if result is not None:
                served.cost_usd = model.audio_cost(seconds=decoded.duration)
                return served, stt_from_answer(result, req, decoded.duration)
        raise self._none_served(decision, blocked, failures, served)

    async def _stt_call(
        self, secret: str | None, provider: Any, model: CatalogModel, req: SttRequest, decoded: Decoded, call_id: str
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
            c, limits = self._admit(row, meta, "tts", [req.input], len(req.input) // 4 + 1)
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
        catalog, _ = self.gateway.catalog_and_config()
        failures: list[AttemptFailed | TiqoError] = []
        spoken.content_type = SPEECH_CONTENT_TYPES[req.response_format]
        for cand in decision.kept:
            model = catalog[cand.model]
            if model.local:
                spec = self.registry.resolve(model.name, "tts")
                job = TtsJob(speed=req.speed, speaker=req.speaker)

                def call(runner: Any, stop: Any, job: TtsJob = job) -> Iterator[bytes]:
                    return _encode(runner, pieces, job, stop, req.response_format, spoken)

                audio = self.daemon.generate(spec, None, call)
                try:
                    first = await anext(audio)  # the first sentence is ready: committed
                except (Busy, ModelLoadFailed) as exc:
                    failures.append(exc)
                    served.attempts.append({"model": cand.model, "provider": "local", "error": exc.message})
                    continue
                spoken.voice = spec.name
                self._served_by(served, model, f"local:{spec.engine}", None)
                return served, _prepend(first, audio)
            body = {
                "input": req.input,
                "voice": req.voice if req.voice in OPENAI_VOICES else "alloy",
                "response_format": "opus" if req.response_format == "ogg" else req.response_format,
                "speed": req.speed,
            }
            holder: dict[str, Any] = {}

            async def open_speech(
                secret: str | None,
                provider: Any,
                call_id: str,
                model: CatalogModel = model,
                body: dict[str, Any] = body,
                holder: dict[str, Any] = holder,
            ) -> Any:
                stream = speak_external(self.gateway.upstream, secret, provider, model, body, call_id)
                try:
                    holder["first"] = await anext(stream)  # a failure before the first byte falls back
                except StopAsyncIteration:  # a 200 with an empty body: no audio is a failed attempt, not a crash
                    raise AttemptFailed("protocol", "the provider answered with no audio") from None
                return stream

            stream = await self._external(
                cand.model,
                model,
                decision,
                served,
                failures,
                blocked,
                request_id,
                worst=model.audio_cost(chars=len(req.input)),
                call=open_speech,
                settle_now=False,
            )
            if stream is not None:
                spoken.voice = str(body["voice"])
                served.cost_usd = model.audio_cost(chars=len(req.input))
                return served, _prepend(holder["first"], stream)
        raise self._none_served(decision, blocked, failures, served)

    # ------------------------------------------------------------ shared steps
    def _row(self, meta: RequestMeta, task: str) -> tuple[RequestRow, float]:
        rid = meta.request_id or "req_" + uuid.uuid4().hex[:24]
        return RequestRow(id=rid, ts=self.gateway.clock(), user=meta.user, task=task), time.perf_counter()

    def _admit(
        self, row: RequestRow, meta: RequestMeta, task: str, texts: list[str], est_tokens: int
    ) -> tuple[Classification, RateLimits]:
        c = self.gateway.classify_texts(texts, replace(meta, task=task))
        row.tier, row.data_class = c.tier, c.data_class
        limits = self.accounting.rate_limits(c, self.gateway.catalog_and_config()[1])
        self.accounting.admit(c, limits, est_tokens)
        return c, limits

    def _refused(self, row: RequestRow, exc: TiqoError, started: float) -> None:
        row.outcome = "refused" if exc.status < 500 else "error"
        row.error = exc.code
        self.accounting.finish(row, None, started)

    def _openai_name(self, requested: str | None, defaults: tuple[str, ...]) -> str | None:
        """OpenAI's default model names mean "the local default" unless a model of that name is registered."""
        if not requested or requested in AUTO:
            return None
        catalog, config = self.gateway.catalog_and_config()
        if requested in defaults and requested not in catalog and requested not in config.aliases:
            return None
        return requested

    def _decide(
        self, c: Classification, task: str, requested: str | None, needs: tuple[str, ...], blocked: dict[str, bp.Charge]
    ) -> Decision:
        self.gateway.check_requested(requested)
        _, config = self.gateway.catalog_and_config()
        # [routes.stt] / [routes.tts] when configured; the default local model is always the last candidate
        table = config.routes.get(task) or {"default": ()}
        default_key = "stt.default_model" if task == "stt" else "tts.default_voice"
        voice_config = replace(config, routes={task: table}, local_fallback=self.settings[default_key])
        return self.gateway.plan_route(
            c, requested=requested, est_prompt_tokens=0, max_tokens=0, needs=needs, blocked=blocked, config=voice_config
        )

    def _served_by(self, served: Served, model: CatalogModel, backend: str, key: str | None) -> None:
        served.backend, served.provider, served.model, served.key = backend, model.provider, model.name, key

    def _none_served(
        self,
        decision: Decision,
        blocked: dict[str, bp.Charge],
        failures: list[AttemptFailed | TiqoError],
        served: Served,
    ) -> TiqoError:
        if not decision.kept:
            return self.gateway.nothing_kept(decision, blocked)  # type: ignore[no-any-return]
        if blocked and not failures:
            return self.accounting.budget_error(blocked, served.attempts)  # type: ignore[no-any-return]
        return self.gateway.all_failed(decision, failures, served)  # type: ignore[no-any-return]

    async def _external(
        self,
        name: str,
        model: CatalogModel,
        decision: Decision,
        served: Served,
        failures: list[AttemptFailed | TiqoError],
        blocked: dict[str, bp.Charge],
        request_id: str,
        *,
        worst: float,
        call: Callable[[str | None, Any, str], Any],
        settle_now: bool = True,
    ) -> Any:
        """Try one external candidate with each usable key (a key-level failure moves to the next key). Returns the
        call's result, or None when this candidate cannot serve (the reason is in ``served.attempts``)."""
        provider = self.hub.providers[model.provider]
        tried: set[str] = set()
        for _ in range(max(1, self.settings["routing.max_attempts"])):
            why = self.hub.unavailable(model.provider, 0)
            if why is not None:
                served.attempts.append({"model": name, "provider": model.provider, "error": why})
                return None
            key_name = None
            if self.hub.has_keys(model.provider):
                key_name = provider.pool.pick(self.gateway.clock(), 0, tried)
                if key_name is None:
                    served.attempts.append(
                        {"model": name, "provider": model.provider, "error": "no untried usable key"}
                    )
                    return None
                tried.add(key_name)
            row, refusal = self.accounting.open_call(model, key_name, decision, request_id, worst)
            if refusal is not None:
                blocked[name] = refusal.charge
                served.attempts.append({"model": name, "provider": model.provider, "error": refusal.message})
                return None
            now = self.gateway.clock()
            provider.breaker.begin(now)
            if key_name is not None:
                provider.pool.begin(key_name, now)
            try:
                result = await call(self.hub.secret(provider.name, key_name), provider, row.id)
            except AttemptFailed as exc:
                failures.append(exc)
                served.attempts.append(
                    {"model": name, "provider": model.provider, "key": key_name, "error": exc.message, "kind": exc.kind}
                )
                log.info("%s via %s failed (%s): %s", name, model.provider, exc.kind, exc.message)
                self.gateway.record_failure(provider, key_name, exc)
                self._settle(row, model, 0.0, "failed", exc.kind)
                if exc.kind == "bad_request":
                    raise BadRequest(f"{model.provider} rejected the request: {exc.message}") from None
                if exc.kind in KEY_LEVEL and key_name is not None:
                    continue
                return None
            except BaseException:
                # Cancelled (the client hung up mid-call) or an unexpected error: it says nothing about the provider's
                # health, but the probe slot, the key's slot and the budget reservation must not stay taken (the
                # reservation would otherwise count against the budget until the daemon restarts).
                provider.breaker.release()
                if key_name is not None:
                    provider.pool.release(key_name)
                self._settle(row, model, 0.0, "failed", "cancelled")
                raise
            self.gateway.record_success(provider, key_name, 0)
            self._served_by(served, model, model.provider, key_name)
            if settle_now:
                self._settle(row, model, worst, "ok", None)
            else:  # a speech stream: settled when it ends (the provider bills the whole input either way)
                result = _with_settle(result, _Settler(self, row, model, worst, provider, key_name))
            return result
        return None

    def _settle(self, call: CallRow, model: CatalogModel, cost: float, status: str, error: str | None) -> None:
        try:
            self.accounting.budgets.settle(
                call.id, call.user, model, status=status, cost=bp.to_nano(cost), tokens_in=0, tokens_out=0, error=error
            )
        except Exception:  # the call stays pending; start-up reconciles it at its reservation
            log.exception("settling %s failed", call.id)

    async def _recorded(
        self,
        served: Served,
        items: AsyncGenerator[T, None],
        row: RequestRow,
        limits: RateLimits,
        started: float,
        is_end: Callable[[T], bool],
        *,
        ends_ok: bool = False,
    ) -> AsyncGenerator[T, None]:
        """Pass items through; write the ledger row when they end, are cut off, or the client goes away."""
        row.outcome = "cancelled"
        try:
            async for item in items:
                if is_end(item):
                    row.outcome = "ok"
                yield item
            if ends_ok:
                row.outcome = "ok"
        except TiqoError as exc:
            row.outcome, row.error = "interrupted", exc.code
            raise
        except AttemptFailed:
            row.outcome, row.error = "interrupted", "stream_interrupted"
            raise
        finally:
            await items.aclose()
            self.accounting.finish(row, served, started)


class _Settler:
    def __init__(
        self, voice: Voice, call: CallRow, model: CatalogModel, cost: float, provider: Any, key: str | None
    ) -> None:
        self.voice, self.call, self.model, self.cost = voice, call, model, cost
        self.provider, self.key = provider, key

    def __call__(self, ok: bool) -> None:
        self.voice._settle(self.call, self.model, self.cost, "ok" if ok else "interrupted", None if ok else "cut off")

    def failed(self, exc: AttemptFailed) -> None:
        """A provider that dies after the first bytes still counts against its and the key's health (as in chat)."""
        self.voice.gateway.record_failure(self.provider, self.key, exc)


async def _with_settle(stream: AsyncGenerator[bytes, None], settle: _Settler) -> AsyncGenerator[bytes, None]:
    ok = False
    try:
        async for chunk in stream:
            yield chunk
        ok = True
    except AttemptFailed as exc:
        settle.failed(exc)
        raise
    finally:
        await stream.aclose()
        settle(ok)


def _never(item: object) -> bool:
    return False


async def _prepend(first: T, rest: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


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


def _encode(runner: Any, pieces: list[str], job: TtsJob, stop: Any, fmt: str, spoken: Spoken) -> Iterator[bytes]:
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
