"""Text-to-speech through piper-tts (ONNX voices). Sentence by sentence, so audio starts before the text is done.

Piper speaks with the voice it was trained on; it cannot clone a voice from a sample (the routes say so).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiqo.core.errors import BadRequest
from tiqo.sdk.engine import ModelSpec, Recognised, StopFlag
from tiqo.sdk.speech import SpeechRunner, TtsJob

if TYPE_CHECKING:
    from tiqo.core.settings import Settings

log = logging.getLogger("tiqo.engine.piper")
OVERHEAD = 48 * 1024 * 1024


def voice_config_path(model: Path) -> Path:
    """Piper's convention: ``NAME.onnx`` with ``NAME.onnx.json`` beside it."""
    return model.with_name(model.name + ".json")


def voice_info(model: Path) -> dict[str, Any]:
    """Language, quality, sample rate and speakers of a voice, read from its JSON (no model load)."""
    config_path = voice_config_path(model)
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise BadRequest(
            f"{config_path} is missing: a Piper voice is NAME.onnx plus NAME.onnx.json",
            param="path",
            hint="download both files of the voice and keep them side by side",
        ) from None
    except (OSError, ValueError) as exc:
        raise BadRequest(f"cannot read the voice config {config_path}: {exc}", param="path") from None
    if not isinstance(config, dict) or "audio" not in config or "phoneme_id_map" not in config:
        raise BadRequest(f"{config_path} is not a Piper voice config (no audio / phoneme_id_map)", param="path")
    language = config.get("language") or {}
    espeak = config.get("espeak") or {}
    return {
        "language": language.get("code") or espeak.get("voice") or "",
        "language_name": language.get("name_english") or "",
        "quality": (config.get("audio") or {}).get("quality") or _quality_from_name(model.stem),
        "sample_rate": int((config.get("audio") or {}).get("sample_rate") or 22050),
        "speakers": sorted((config.get("speaker_id_map") or {}).keys()),
        "num_speakers": int(config.get("num_speakers") or 1),
    }


def _quality_from_name(stem: str) -> str:
    tail = stem.rsplit("-", 1)[-1]
    return tail if tail in ("x_low", "low", "medium", "high") else ""


class PiperRunner:
    def __init__(self, spec: ModelSpec, options: dict[str, Any]) -> None:
        from piper import PiperVoice

        assert spec.path is not None
        use_cuda = options.get("use_cuda")
        if use_cuda is None:
            import onnxruntime

            use_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        self.voice = PiperVoice.load(spec.path, config_path=voice_config_path(spec.path), use_cuda=bool(use_cuda))
        self.name = spec.name
        self.sample_rate = int(self.voice.config.sample_rate)
        self.details: dict[str, Any] = {"sample_rate": self.sample_rate, "cuda": bool(use_cuda)}
        # Piper adds random noise to the sound and to phoneme lengths; a voice's [models.NAME] table may override both
        # (0 and 0 make the same text give the same samples every time).
        self.noise_scale = _scale(options, "noise_scale")
        self.noise_w_scale = _scale(options, "noise_w_scale")

    def speak(self, pieces: Iterable[str], job: TtsJob, stop: StopFlag) -> Iterator[bytes]:
        """16-bit mono PCM at ``self.sample_rate``, one chunk per sentence."""
        from piper import SynthesisConfig

        speaker_id = None
        if job.speaker is not None:
            ids = self.voice.config.speaker_id_map or {}
            if job.speaker not in ids:
                known = ", ".join(sorted(ids)) or "none (a single-speaker voice)"
                raise BadRequest(f"voice {self.name} has no speaker {job.speaker!r}; speakers: {known}")
            speaker_id = ids[job.speaker]
        config = SynthesisConfig(
            speaker_id=speaker_id,
            length_scale=(self.voice.config.length_scale or 1.0) / job.speed,
            noise_scale=self.noise_scale,
            noise_w_scale=self.noise_w_scale,
        )
        for text in pieces:
            for chunk in self.voice.synthesize(text, config):
                yield chunk.audio_int16_bytes
                if stop.is_set():
                    return

    def close(self) -> None:
        if getattr(self, "voice", None) is not None:
            del self.voice


def _scale(options: dict[str, Any], key: str) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
        raise BadRequest(f"{key} must be a number from 0 to 10, not {value!r}", param=key)
    return float(value)


class PiperEngine:
    name = "piper"
    kinds = ("tts",)
    options = ("noise_scale", "noise_w_scale")  # the voice's own noise when unset; 0 and 0 make synthesis repeatable
    recognise_order = 30

    def default_options(self, settings: Settings) -> dict[str, Any]:
        return {"num_parallel": 1}

    def capabilities(self, kind: str, entry: Mapping[str, Any]) -> tuple[str, ...]:
        return ("tts",)

    def recognise(self, path: Path, pipeline: str | None) -> Recognised | None:
        if path.suffix != ".onnx" or path.is_dir():
            return None
        info = voice_info(path)  # 400 when the .onnx.json is missing or not a Piper config
        if not path.is_file():
            raise BadRequest(f"{path} does not exist", param="path")
        return Recognised(path.absolute(), "tts", f"piper {info['language']}")

    def estimate_memory(self, spec: ModelSpec, options: dict[str, Any]) -> int:
        size = spec.path.stat().st_size if spec.path is not None and spec.path.exists() else spec.size_bytes
        return 2 * size + OVERHEAD

    def load(self, spec: ModelSpec, options: dict[str, Any]) -> SpeechRunner:
        return PiperRunner(spec, options)
