"""What speech engines take and give: speech-to-text (faster-whisper is the built-in one) and text-to-speech (piper)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from tiqo.sdk.engine import Runner, StopFlag


@dataclass(frozen=True)
class SttJob:
    language: str | None = None  # None: detect
    task: str = "transcribe"  # or "translate" (to English)
    word_timestamps: bool = False
    vad_filter: bool = True
    prompt: str | None = None
    temperature: float | None = None
    beam_size: int = 5


@dataclass(frozen=True)
class TtsJob:
    speed: float = 1.0  # 0.25-4.0, OpenAI's range
    speaker: str | None = None


class TranscribeRunner(Runner, Protocol):
    """A speech-to-text model. ``transcribe`` yields an ``info`` event (language, duration), then one ``segment``
    event per decoded segment (OpenAI's verbose_json fields), and stops early when ``stop`` is set."""

    def transcribe(self, audio: Any, job: SttJob, stop: StopFlag) -> Iterator[dict[str, Any]]: ...


class SpeechRunner(Runner, Protocol):
    """A voice: text in, 16-bit mono PCM at ``sample_rate`` out, a chunk at a time (one per sentence or so)."""

    sample_rate: int

    def speak(self, pieces: Iterable[str], job: TtsJob, stop: StopFlag) -> Iterator[bytes]: ...
