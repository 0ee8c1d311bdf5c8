"""Speech-to-text through faster-whisper (CTranslate2 Whisper models): float16 on a GPU, int8 on the CPU.

The runner yields an ``info`` event (language, duration) and then one ``segment`` event per decoded segment, so a
long file shows progress while it is transcribed and a client that goes away stops the decoding.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiqo.core.errors import BadRequest
from tiqo.daemon.runtime.engines.threads import default_threads
from tiqo.sdk.engine import ModelSpec, Recognised, StopFlag
from tiqo.sdk.speech import SttJob, TranscribeRunner

if TYPE_CHECKING:
    from tiqo.core.settings import Settings

log = logging.getLogger("tiqo.engine.whisper")
OVERHEAD = 96 * 1024 * 1024  # decoder state, mel features and VAD for an hour of audio at int8


def is_whisper_dir(path: Path) -> bool:
    """A CTranslate2 Whisper conversion: model.bin + config.json with Whisper's mel settings, and a tokenizer."""
    if not (path.is_dir() and (path / "model.bin").is_file() and (path / "config.json").is_file()):
        return False
    if not ((path / "tokenizer.json").is_file() or (path / "vocabulary.txt").is_file()):
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and (
        "lang_ids" in config or "suppress_ids" in config or "alignment_heads" in config
    )


def english_only(path: Path) -> bool:
    """Whisper ``*.en`` models have no language tokens."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return not config.get("lang_ids")


def _round(x: float) -> float:
    return round(float(x), 3)


class WhisperRunner:
    def __init__(self, spec: ModelSpec, options: dict[str, Any]) -> None:
        import ctranslate2
        from faster_whisper import WhisperModel

        from tiqo.daemon.runtime.engines.log_mel import BlockLogMel

        assert spec.path is not None
        device = options.get("device") or "auto"
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute = options.get("compute_type") or ("float16" if device == "cuda" else "int8")
        threads = int(options.get("n_threads") or default_threads())
        self.model = WhisperModel(str(spec.path), device=device, compute_type=compute, cpu_threads=threads)
        # the same features in bounded memory: faster-whisper's own extractor peaks at ~13x the audio
        self.model.feature_extractor = BlockLogMel(self.model.feature_extractor)
        self.name = spec.name
        self.multilingual = bool(self.model.model.is_multilingual)
        self.details: dict[str, Any] = {
            "device": device,
            "compute_type": compute,
            "n_threads": threads,
            "multilingual": self.multilingual,
        }

    def transcribe(self, audio: Any, job: SttJob, stop: StopFlag) -> Iterator[dict[str, Any]]:
        language = job.language
        if not self.multilingual:
            if language not in (None, "en"):
                raise BadRequest(
                    f"{self.name} understands English only, not {language!r}",
                    param="language",
                    hint="register a multilingual Whisper model: `tiqo models add whisper-base DIR` (a CTranslate2 "
                    "folder), then pass -m whisper-base",
                )
            language = "en"
        temperature: Any = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) if job.temperature is None else job.temperature
        segments, info = self.model.transcribe(
            audio,
            language=language,
            task=job.task if self.multilingual else "transcribe",  # an English-only model's output is English
            beam_size=job.beam_size,
            word_timestamps=job.word_timestamps,
            vad_filter=job.vad_filter,
            initial_prompt=job.prompt or None,
            temperature=temperature,
        )
        yield {
            "type": "info",
            "language": info.language,
            "language_probability": _round(info.language_probability),
            "duration": _round(info.duration),
        }
        try:
            for s in segments:
                if stop.is_set():
                    break
                yield {
                    "type": "segment",
                    "id": s.id - 1,
                    "seek": s.seek,
                    "start": _round(s.start),
                    "end": _round(s.end),
                    "text": s.text,
                    "tokens": list(s.tokens),
                    "temperature": s.temperature,
                    "avg_logprob": _round(s.avg_logprob),
                    "compression_ratio": _round(s.compression_ratio),
                    "no_speech_prob": _round(s.no_speech_prob),
                    "words": [
                        {
                            "word": w.word,
                            "start": _round(w.start),
                            "end": _round(w.end),
                            "probability": _round(w.probability),
                        }
                        for w in (s.words or ())
                    ],
                }
        finally:
            close = getattr(segments, "close", None)
            if close is not None:
                close()

    def close(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            del self.model


class WhisperEngine:
    name = "faster-whisper"
    kinds = ("stt",)
    options = ("n_threads", "device")
    recognise_order = 80  # any folder the others do not claim: a Whisper conversion, or a 400 saying what is missing

    def default_options(self, settings: Settings) -> dict[str, Any]:
        return {"n_threads": settings["stt.n_threads"], "device": settings["stt.device"], "num_parallel": 1}

    def capabilities(self, kind: str, entry: Mapping[str, Any]) -> tuple[str, ...]:
        return ("stt",)

    def recognise(self, path: Path, pipeline: str | None) -> Recognised | None:
        if not path.is_dir():
            return None
        if not is_whisper_dir(path):
            raise BadRequest(
                f"{path} is a folder but not a CTranslate2 Whisper model (model.bin, config.json, tokenizer)",
                param="path",
                hint="convert a Whisper model with `ct2-transformers-converter`, or pass a .gguf file",
            )
        return Recognised(path.absolute(), "stt", "whisper")

    def estimate_memory(self, spec: ModelSpec, options: dict[str, Any]) -> int:
        weights = spec.path / "model.bin" if spec.path is not None else None
        size = weights.stat().st_size if weights is not None and weights.exists() else spec.size_bytes
        return size + OVERHEAD

    def load(self, spec: ModelSpec, options: dict[str, Any]) -> TranscribeRunner:
        return WhisperRunner(spec, options)
