"""The audio side of the API: transcription result shapes (json, text, srt, vtt, verbose_json) and speech formats.

Pure and light (no numpy): the daemon renders non-streamed transcriptions with it, and the CLI renders the segments
it receives from a streamed one, so both print the same subtitles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
# OpenAI's speech formats plus "ogg" (opus in an Ogg file, what `--format ogg` asks for).
SPEECH_FORMATS = ("mp3", "opus", "ogg", "aac", "flac", "wav", "pcm")
SPEECH_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "ogg": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
PCM_RATE = 24_000  # OpenAI's raw `pcm` speech: 24 kHz, 16-bit little-endian, mono
# Names OpenAI clients send by default. When no model of that name is registered they mean "the local default".
OPENAI_STT_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
OPENAI_TTS_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
)  # fmt: skip

# ISO 639-1 codes (what Whisper reports) and the names OpenAI's verbose_json uses for them
LANGUAGE_NAMES = {
    "en": "english", "fr": "french", "de": "german", "es": "spanish", "it": "italian", "pt": "portuguese",
    "nl": "dutch", "sv": "swedish", "da": "danish", "no": "norwegian", "fi": "finnish", "pl": "polish",
    "cs": "czech", "ru": "russian", "uk": "ukrainian", "tr": "turkish", "ar": "arabic", "he": "hebrew",
    "hi": "hindi", "ja": "japanese", "ko": "korean", "zh": "chinese", "el": "greek", "ro": "romanian",
}  # fmt: skip
LANGUAGE_CODES = {name: code for code, name in LANGUAGE_NAMES.items()}


def timestamp(seconds: float, sep: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or ``HH:MM:SS.mmm`` (WebVTT, ``sep="."``)."""
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_cue(index: int, segment: Mapping[str, Any]) -> str:
    start, end = timestamp(segment["start"]), timestamp(segment["end"])
    return f"{index}\n{start} --> {end}\n{str(segment['text']).strip()}\n\n"


def vtt_cue(segment: Mapping[str, Any]) -> str:
    start, end = timestamp(segment["start"], "."), timestamp(segment["end"], ".")
    return f"{start} --> {end}\n{str(segment['text']).strip()}\n\n"


VTT_HEADER = "WEBVTT\n\n"


def srt(segments: Iterable[Mapping[str, Any]]) -> str:
    return "".join(srt_cue(i, s) for i, s in enumerate(segments, 1))


def vtt(segments: Iterable[Mapping[str, Any]]) -> str:
    return VTT_HEADER + "".join(vtt_cue(s) for s in segments)


def joined_text(segments: Iterable[Mapping[str, Any]]) -> str:
    return "".join(str(s["text"]) for s in segments).strip()


def transcription_body(
    response_format: str,
    *,
    task: str,
    language: str,
    duration: float,
    segments: Sequence[Mapping[str, Any]],
    granularities: Sequence[str] = ("segment",),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any] | str:
    """The answer of ``/v1/audio/transcriptions`` in ``response_format``: a dict for json formats, else text."""
    text = joined_text(segments)
    if response_format == "text":
        return text + "\n" if text else ""
    if response_format == "srt":
        return srt(segments)
    if response_format == "vtt":
        return vtt(segments)
    if response_format == "json":
        return {"text": text, **(extra or {})}
    body: dict[str, Any] = {
        "task": task,
        "language": language,
        "duration": round(duration, 3),
        "text": text,
    }
    if "segment" in granularities:
        body["segments"] = [{k: v for k, v in s.items() if k != "words"} for s in segments]
    if "word" in granularities:
        body["words"] = [w for s in segments for w in s.get("words") or ()]
    body.update(extra or {})
    return body


def transcription_format(name: str | None) -> str:
    """``verbose-json`` (the CLI's spelling) is OpenAI's ``verbose_json``."""
    value = (name or "json").strip().lower().replace("-", "_")
    if value not in TRANSCRIPTION_FORMATS:
        raise ValueError(f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}, not {name!r}")
    return value


def speech_format(name: str | None) -> str:
    value = (name or "mp3").strip().lower()
    if value not in SPEECH_FORMATS:
        raise ValueError(f"response_format must be one of {', '.join(SPEECH_FORMATS)}, not {name!r}")
    return value
