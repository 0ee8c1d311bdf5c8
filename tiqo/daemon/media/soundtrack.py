"""A video's sound: any audio file FFmpeg reads, decoded, resampled to 48 kHz and encoded to AAC for an mp4
(``tiqo.daemon.media.video``), with its length known before the video is encoded so the video can hold its last
frame until a narration ends, and silence appended when the audio is the shorter one.

Broken, empty and video-only files raise ``BadRequest`` with a hint; audio longer than the caller's limit too
(code ``audio_too_long``), from its header before decoding or as soon as decoding passes the limit.
"""

from __future__ import annotations

import io
import math
import threading
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tiqo.core.errors import BadRequest, Cancelled
from tiqo.daemon.media.audio import audio_stream, av_reason, declared_seconds

MAX_AUDIO_SECONDS = 600.0
AUDIO_RATE = 48_000
AUDIO_BITRATE = 128_000  # stereo; mono gets 3/4 of it
AUDIO_HINT = "send an audio file FFmpeg reads (wav, flac, mp3, ogg/opus, m4a), e.g. `ffmpeg -i IN -ac 1 narration.wav`"


class Soundtrack:
    """The whole audio, decoded, resampled to 48 kHz and encoded to AAC packets up front (128 kbit/s: 10 minutes
    are ~10 MB), so its length is known before the video is; muxed beside the video frames as they are made."""

    def __init__(self, container: Any, source: Path | bytes, max_seconds: float, stop: threading.Event | None) -> None:
        import av

        self.container = container
        self.packets: list[Any] = []
        self.samples = 0
        opened = _open_audio(source)
        with opened as inp:
            in_stream = audio_stream(inp, "audio", AUDIO_HINT)
            channels = 1 if in_stream.codec_context.channels <= 1 else 2
            layout = "mono" if channels == 1 else "stereo"
            self.stream = container.add_stream("aac", rate=AUDIO_RATE)
            self.stream.layout = layout
            self.stream.bit_rate = AUDIO_BITRATE if channels == 2 else AUDIO_BITRATE * 3 // 4
            self.layout = layout
            declared = declared_seconds(inp, in_stream)
            if declared is not None and declared > max_seconds + 1.0:
                raise _too_long(declared, max_seconds)
            resampler = av.AudioResampler(format="fltp", layout=layout, rate=AUDIO_RATE)
            limit = math.ceil(max_seconds * AUDIO_RATE)
            try:
                for frame in inp.decode(in_stream):
                    stopped(stop)
                    for chunk in resampler.resample(frame):
                        self._encode(chunk)
                    if self.samples > limit:
                        raise _too_long(None, max_seconds)
                for chunk in resampler.resample(None):
                    self._encode(chunk)
            except (av.error.FFmpegError, IndexError, ValueError) as exc:
                raise BadRequest(
                    f"the audio is corrupt or truncated after {self.samples / AUDIO_RATE:.1f} s ({av_reason(exc)})",
                    param="audio",
                    hint=AUDIO_HINT,
                ) from None
        if self.samples > limit:
            raise _too_long(None, max_seconds)
        if self.samples == 0:
            raise BadRequest("the audio file holds no sound (0 samples)", param="audio", hint=AUDIO_HINT)
        self.seconds = self.samples / AUDIO_RATE
        self._next = 0

    def _encode(self, frame: Any) -> None:
        frame.pts = self.samples
        frame.time_base = Fraction(1, AUDIO_RATE)
        self.samples += frame.samples
        self.packets.extend(self.stream.encode(frame))

    def mux_until(self, seconds: float) -> None:
        while self._next < len(self.packets):
            packet = self.packets[self._next]
            if packet.pts is not None and float(packet.pts * packet.time_base) > seconds:
                return
            self.container.mux(packet)
            self._next += 1

    def finish(self, video_seconds: float) -> None:
        """Pad with silence to the video's length, then flush the encoder and mux what is left."""
        import av

        missing = math.ceil(video_seconds * AUDIO_RATE) - self.samples
        channels = 1 if self.layout == "mono" else 2
        while missing > 0:
            size = min(missing, 4096)
            silence = av.AudioFrame.from_ndarray(
                np.zeros((channels, size), dtype=np.float32), format="fltp", layout=self.layout
            )
            silence.sample_rate = AUDIO_RATE
            self._encode(silence)
            missing -= size
        self.packets.extend(self.stream.encode(None))
        self.mux_until(math.inf)


def _open_audio(source: Path | bytes) -> Any:
    import av

    if isinstance(source, bytes | bytearray):
        if not source:
            raise BadRequest("the audio file is empty (0 bytes)", param="audio", hint=AUDIO_HINT)
        target: Any = io.BytesIO(source)
    else:
        target = str(source)
    try:
        return av.open(target, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, IndexError, ValueError, OSError) as exc:
        raise BadRequest(
            f"this is not audio tiqo can read ({av_reason(exc)})", param="audio", hint=AUDIO_HINT
        ) from None


def _too_long(seconds: float | None, max_seconds: float) -> BadRequest:
    said = (
        f"{seconds:.1f} s long" if seconds is not None else f"longer than {max_seconds:.0f} s (decoding stopped there)"
    )
    return BadRequest(
        f"the audio is {said}; a video's audio may last at most {max_seconds:.0f} s",
        param="audio",
        code="audio_too_long",
        hint="shorten the narration or cut the file, e.g. `ffmpeg -i IN -t 60 short.wav`",
    )


def stopped(stop: threading.Event | None) -> None:
    """Raise ``Cancelled`` when the job's owner cancelled it (checked between frames)."""
    if stop is not None and stop.is_set():
        raise Cancelled("the video encoding was cancelled", hint="start the job again to make the video")
