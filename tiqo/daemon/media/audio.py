"""Audio in and out, through PyAV (FFmpeg's libraries; faster-whisper depends on it already).

- ``decode``: any container FFmpeg reads (wav, flac, mp3, ogg/opus, m4a, webm, ...) or raw PCM, to 16 kHz mono
  float32 for Whisper. Garbage, empty, truncated and unsupported input raise a ``BadRequest`` that says what was wrong;
  audio longer than ``stt.max_duration`` a ``PayloadTooLarge`` (413), before decoding or while decoding.
- ``SpeechEncoder``: 16-bit mono PCM from a voice, chunk by chunk, to wav / pcm / mp3 / ogg (opus) / aac / flac
  bytes, so the first sentence can be on its way while the next one is synthesised.
- ``sentences``: text cut into pieces a voice can start on quickly.

Imported by engines and the voice routes inside the daemon only (numpy, av): never by the CLI.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import struct
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiqo.core.durations import format_duration
from tiqo.core.errors import BadRequest, PayloadTooLarge
from tiqo.daemon.media.pcm import PcmBuffer
from tiqo.protocol.audio import PCM_RATE

WHISPER_RATE = 16_000
TOO_LONG = "audio_too_long"  # the error code of audio over stt.max_duration
FORMAT_HINT = "send wav, flac, mp3, ogg/opus, m4a or webm; raw PCM needs its rate (`tiqo transcribe --rate 16000 -`)"
# raw PCM sample formats: name -> (numpy dtype, WAV format tag, bits)
RAW_FORMATS: dict[str, tuple[str, int, int]] = {
    "s16le": ("<i2", 1, 16),
    "s32le": ("<i4", 1, 32),
    "f32le": ("<f4", 3, 32),
    "u8": ("u1", 1, 8),
}


@dataclass(frozen=True)
class RawPcm:
    rate: int
    channels: int = 1
    sample_format: str = "s16le"

    def check(self) -> None:
        if self.sample_format not in RAW_FORMATS:
            raise BadRequest(
                f"unsupported raw sample format {self.sample_format!r}; supported: {', '.join(RAW_FORMATS)}",
                param="sample_format",
                hint="convert it first, e.g. `ffmpeg -i IN -f s16le -ac 1 -ar 16000 -`",
            )
        if not 1000 <= self.rate <= 384_000:
            raise BadRequest(
                f"raw sample rate {self.rate} Hz is out of range (1000-384000)",
                param="sample_rate",
                hint="pass the rate the audio was recorded at, e.g. `--rate 16000`",
            )
        if not 1 <= self.channels <= 8:
            raise BadRequest(
                f"raw PCM with {self.channels} channels is not supported (1-8)",
                param="channels",
                hint="pass the channel count the audio was recorded with, e.g. `--channels 1`",
            )

    def seconds(self, nbytes: int) -> float:
        """How long ``nbytes`` of these samples last."""
        _, _, bits = RAW_FORMATS[self.sample_format]
        return nbytes / (bits // 8 * self.channels) / self.rate

    def as_wav(self, data: bytes) -> bytes:
        """The samples behind a WAV header, so one FFmpeg path decodes and resamples both."""
        self.check()
        _, tag, bits = RAW_FORMATS[self.sample_format]
        frame = bits // 8 * self.channels
        if len(data) % frame:
            raise BadRequest(
                f"{len(data)} bytes is not a whole number of {self.sample_format} frames of {self.channels} "
                f"channel(s) ({frame} bytes each)",
                param="file",
                hint="check --rate/--channels/--sample-format against how the audio was recorded",
            )
        header = struct.pack(
            "<4sI4s4sIHHIIHH4sI",
            b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, tag, self.channels, self.rate,
            self.rate * frame, frame, bits, b"data", len(data),
        )  # fmt: skip
        return header + data


@dataclass(frozen=True)
class Decoded:
    audio: Any  # np.ndarray, float32, mono, 16 kHz
    duration: float  # seconds
    source: str  # "mp3, 44100 Hz, 2 ch"


def decode(data: bytes, raw: RawPcm | None = None, max_seconds: float = math.inf) -> Decoded:
    """Audio bytes → 16 kHz mono float32, at most ``max_seconds`` of it (``stt.max_duration``).

    Raises BadRequest naming what was wrong, PayloadTooLarge when the audio is longer than the limit: refused from
    its declared length before decoding, or as soon as decoding passes the limit (a header can lie or say nothing),
    so no more than the limit is ever held in memory.
    """
    import av

    if not data:
        raise BadRequest("the audio file is empty (0 bytes)", param="file", hint=FORMAT_HINT)
    if raw is not None:
        raw.check()
        _check_declared(raw.seconds(len(data)), max_seconds, f"raw {raw.sample_format}, {raw.rate} Hz", slack=0.0)
        data = raw.as_wav(data)
    _check_wav_length(data)
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise BadRequest(
            f"this is not audio tiqo can read ({av_reason(exc)})", param="file", hint=FORMAT_HINT
        ) from None
    with container:
        stream = audio_stream(container)
        ctx = stream.codec_context
        source = f"{container.format.name.split(',')[0]}/{ctx.name}, {ctx.sample_rate} Hz, {ctx.channels} ch"
        declared = declared_seconds(container, stream)
        if declared is not None:
            _check_declared(declared, max_seconds, source, slack=max(1.0, 0.05 * max_seconds))
        audio = _decode_stream(container, stream, source, declared, max_seconds)
    duration = audio.size / WHISPER_RATE
    if declared is not None and declared - duration > max(1.0, 0.05 * declared):
        raise BadRequest(
            f"the audio is truncated: its header says {declared:.1f} s but the file holds {duration:.1f} s ({source})",
            param="file",
            hint="the upload or download was cut short; send the whole file",
        )
    return Decoded(audio, duration, source)


def audio_stream(container: Any, param: str = "file", hint: str = FORMAT_HINT) -> Any:
    """The container's first audio stream; a 400 naming what it holds instead."""
    streams = [s for s in container.streams if s.type == "audio"]
    if not streams:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
        raise BadRequest(f"the {param} has no audio stream (it holds {kinds})", param=param, hint=hint)
    return streams[0]


def _decode_stream(container: Any, stream: Any, source: str, declared: float | None, max_seconds: float) -> Any:
    """The stream resampled to 16 kHz mono float32 straight into one buffer that stops at the limit."""
    import av

    expected = _samples(declared + 1.0) if declared is not None else None
    resampler = av.AudioResampler(format="flt", layout="mono", rate=WHISPER_RATE)
    with PcmBuffer(_samples(max_seconds), WHISPER_RATE, expected) as pcm:
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    _append(pcm, out, source, declared, max_seconds)
            for out in resampler.resample(None):
                _append(pcm, out, source, declared, max_seconds)
        except (av.error.FFmpegError, IndexError, ValueError) as exc:
            where = f"after {pcm.size / WHISPER_RATE:.1f} s" if pcm.size else "at the start"
            raise BadRequest(
                f"the audio is corrupt or truncated {where} ({source}: {av_reason(exc)})",
                param="file",
                hint="re-export or re-download the file",
            ) from None
        return pcm.take()


def _append(pcm: PcmBuffer, frame: Any, source: str, declared: float | None, max_seconds: float) -> None:
    if not pcm.add(frame.to_ndarray().reshape(-1)):
        said = "gives no length" if declared is None else f"says {format_duration(declared)}"
        raise _too_long(
            f"the audio is longer than stt.max_duration ({format_duration(max_seconds)}): decoding stopped there "
            f"({source}; its header {said})",
            max_seconds,
        )


def _check_declared(seconds: float, max_seconds: float, source: str, slack: float) -> None:
    """Refuse before decoding when the header alone says the audio is too long. ``slack`` covers lengths that
    are estimated (from the bit rate, for some MP3s): between the limit and limit + slack, decoding decides."""
    if seconds > max_seconds + slack:
        raise _too_long(
            f"the audio is {format_duration(seconds)} long ({source}); stt.max_duration allows "
            f"{format_duration(max_seconds)}",
            max_seconds,
            seconds,
        )


def _too_long(message: str, max_seconds: float, seconds: float | None = None) -> PayloadTooLarge:
    """The 413 of audio over stt.max_duration, with the hint that fixes it (split the file, or raise the limit)."""
    wanted = math.ceil((seconds or 2 * max_seconds) / 3600)
    return PayloadTooLarge(
        message,
        param="file",
        code=TOO_LONG,
        hint=f"split it into parts (`ffmpeg -i IN -f segment -segment_time {math.floor(max_seconds)} part%03d.flac`), "
        f"or raise the limit: `tiqo config set stt.max_duration {wanted}h`",
    )


def _samples(seconds: float) -> int:
    return sys.maxsize if math.isinf(seconds) else math.ceil(seconds * WHISPER_RATE)


def _check_wav_length(data: bytes) -> None:
    """FFmpeg reads a WAV cut short without complaint (it sizes the stream by the file): compare the data chunk's
    declared size with what is there. A streamed WAV (size 0 or 0xFFFFFFFF: unknown) passes."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    pos, byte_rate = 12, 0
    while pos + 8 <= len(data):
        tag, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if tag == b"fmt " and pos + 20 <= len(data):
            byte_rate = struct.unpack_from("<I", data, pos + 16)[0]
        if tag == b"data":
            have = len(data) - pos - 8
            if size not in (0, 0xFFFFFFFF) and byte_rate and size - have > byte_rate // 2:
                raise BadRequest(
                    f"the audio is truncated: its header says {size / byte_rate:.1f} s but the file holds "
                    f"{have / byte_rate:.1f} s (wav)",
                    param="file",
                    hint="the upload or download was cut short; send the whole file",
                )
            return
        pos += 8 + size + (size & 1)


def declared_seconds(container: Any, stream: Any) -> float | None:
    """How long a PyAV input says its audio stream is (the stream's own length first), or None when it does not."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return None


def av_reason(exc: BaseException) -> str:
    """Why FFmpeg refused an input, without the temporary file name it quotes."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).split(": '<", 1)[0].strip()


# ---------------------------------------------------------------- speech out
class _Sink:
    """A write-only file for FFmpeg's muxers: bytes are taken out as they come (non-seekable, so streamable)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        self.buf += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out


# format -> (muxer, encoder, rate or None for the voice's own, muxer options)
_CODECS: dict[str, tuple[str, str, int | None, dict[str, str]]] = {
    "mp3": ("mp3", "libmp3lame", None, {}),
    "opus": ("ogg", "libopus", 48_000, {"page_duration": "100000"}),
    "ogg": ("ogg", "libopus", 48_000, {"page_duration": "100000"}),
    "aac": ("adts", "aac", None, {}),
    "flac": ("flac", "flac", None, {}),
}


def wav_header(rate: int, data_bytes: int | None = None) -> bytes:
    """A 16-bit mono WAV header; with unknown length (a stream) the sizes are 0xFFFFFFFF, as OpenAI streams WAV."""
    size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", riff, b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16, b"data", size
    )


class SpeechEncoder:
    """16-bit mono PCM in (``feed`` per sentence), encoded bytes out, ready to send at once."""

    def __init__(self, fmt: str, rate: int) -> None:
        self.fmt = fmt
        self.rate = rate
        self._started = False
        self._container: Any = None
        self._stream: Any = None
        self._resampler: Any = None
        self._sink = _Sink()
        if fmt in _CODECS:
            import av

            muxer, codec, out_rate, options = _CODECS[fmt]
            self._container = av.open(self._sink, mode="w", format=muxer, options=options)
            self._stream = self._container.add_stream(codec, rate=out_rate or rate)
            self._stream.layout = "mono"
        elif fmt == "pcm" and rate != PCM_RATE:
            import av

            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=PCM_RATE)
        elif fmt not in ("wav", "pcm"):
            raise BadRequest(f"unknown speech format {fmt!r}", param="response_format")

    @property
    def output_rate(self) -> int:
        if self.fmt == "pcm":
            return PCM_RATE
        if self._stream is not None:
            return int(self._stream.rate)
        return self.rate

    def feed(self, pcm: bytes) -> bytes:
        out = b""
        if self.fmt == "wav" and not self._started:
            out = wav_header(self.rate)
        self._started = True
        if self.fmt == "wav" or (self.fmt == "pcm" and self._resampler is None):
            return out + pcm
        frame = self._frame(pcm)
        if self._resampler is not None:
            return b"".join(f.to_ndarray().tobytes() for f in self._resampler.resample(frame))
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        if self.fmt == "wav":
            return b"" if self._started else wav_header(self.rate, 0)
        if self._resampler is not None:
            return b"".join(f.to_ndarray().tobytes() for f in self._resampler.resample(None))
        if self._container is None:
            return b""
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None
        return self._sink.take()

    def close(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):  # half-written output on cancel: nothing to save
                self._container.close()
            self._container = None

    def _frame(self, pcm: bytes) -> Any:
        import av

        array = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(array, format="s16", layout="mono")
        frame.sample_rate = self.rate
        return frame


# ---------------------------------------------------------------- text in
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026\u3002\uff01\uff1f])[\"'\u201d\u2019)\]]*\s+|\n\s*\n")
MAX_PIECE = 400  # characters: longer sentences are cut at commas, then spaces, so first audio stays quick


def speakable(text: str) -> bool:
    """Whether there is anything to say: a letter or a digit in some script."""
    return any(unicodedata.category(ch)[0] in ("L", "N") for ch in text)


def sentences(text: str, max_chars: int = MAX_PIECE) -> Iterator[str]:
    """Sentences (and paragraphs) of ``text``, none longer than ``max_chars``, skipping ones with nothing to say."""
    for sentence in _SENTENCE_END.split(text):
        sentence = " ".join(sentence.split())
        while len(sentence) > max_chars:
            cut = max(sentence.rfind(", ", 0, max_chars), sentence.rfind("; ", 0, max_chars))
            if cut <= 0:
                cut = sentence.rfind(" ", 0, max_chars)
            if cut <= 0:
                cut = max_chars - 1
            head, sentence = sentence[: cut + 1].strip(), sentence[cut + 1 :].strip()
            if speakable(head):
                yield head
        if sentence and speakable(sentence):
            yield sentence
