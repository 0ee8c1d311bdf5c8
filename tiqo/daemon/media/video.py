"""Frames to mp4, through PyAV (FFmpeg's libraries): what a video model made, as a file every player and browser plays.

- ``encode_mp4``: ``uint8`` frames ``(frames, height, width, 3)`` to H.264 (libx264, yuv420p, ``+faststart`` so a
  browser can start playing before the whole file is there; MPEG-4 part 2 where libx264 is missing), optionally
  with an AAC track made from any audio file FFmpeg reads, with more frames per second from **ffmpeg's motion
  interpolation** (``minterpolate``, mci mode: block motion estimation, not AI) and bigger frames from the
  **Lanczos** scaler (not AI either). Written to a temporary file beside ``out`` and renamed, so a crash or a
  cancel never leaves half an mp4 under the final name.
- ``probe``: what an mp4 holds (frames, fps, size, length, audio, codec), read back with PyAV.
- ``thumbnail``: one frame as PNG; ``frames_from_image``: an uploaded picture decoded and fitted to a size
  (image-to-video).

Lengths: when the audio is longer than the video, the video holds its last frame until the audio ends (narration
is never cut); when it is shorter, the audio track is padded with silence to the video's length (players show the
whole video with sound to the end). Every function blocks: the daemon calls them in a worker thread.

The audio side is ``tiqo.daemon.media.soundtrack``; the bounds of an encode are ``media/video_bounds``. Imported
by the daemon's image/video service only (numpy, av; PIL inside functions): never by the CLI.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tiqo.core.errors import BadRequest
from tiqo.daemon.media.audio import av_reason
from tiqo.daemon.media.soundtrack import MAX_AUDIO_SECONDS, Soundtrack, stopped
from tiqo.daemon.media.video_bounds import MAX_OUTPUT_PIXELS, MAX_SIDE, Shape, check_budget, check_frames, shape_of

MAX_IMAGE_PIXELS = 64_000_000  # an input picture, checked from its header before it is decoded
# x264 preset and quality, measured with bench/video_encode.py (48 frames, CRF 20, 2 loaded cores): veryfast took
# 4.2 ms/frame at 256x256 and 25 ms at 512x512; ultrafast/superfast were 0.16-0.8x the time but 1.7-2.1x the bytes,
# faster/fast/medium 1.4-3.8x the time for the same bytes (+-10 %) and PSNR. A diffusion step takes far longer.
X264_PRESET = "veryfast"
X264_CRF = 20
INTERPOLATION = "ffmpeg motion interpolation (minterpolate, mci)"
UPSCALER = "Lanczos (ffmpeg scale filter)"
IMAGE_HINT = "send a PNG, JPEG or WebP picture, e.g. `--image first_frame.png`"

Progress = Callable[[int, int], None]  # (frames encoded, frames in all)


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int
    seconds: float
    has_audio: bool
    codec: str  # the video codec: "h264", or "mpeg4" where libx264 is missing
    bytes: int


# ---------------------------------------------------------------- encode
def encode_mp4(
    frames: np.ndarray,
    fps: float,
    out: Path,
    *,
    audio: Path | bytes | None = None,
    interpolate_fps: int | None = None,
    upscale: int | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    max_audio_seconds: float = MAX_AUDIO_SECONDS,
    max_output_pixels: int = MAX_OUTPUT_PIXELS,
) -> VideoInfo:
    """Encode ``frames`` at ``fps`` to an mp4 at ``out`` and return what the written file holds (probed).

    ``interpolate_fps`` raises the frame rate with ffmpeg's motion interpolation, keeping the length (the last
    source frame shows for its own 1/fps); ``upscale`` multiplies width and height with the Lanczos filter. Odd
    sizes are padded to even (yuv420p needs it) by repeating the last row or column. ``audio`` is muxed as AAC
    (48 kHz); see the module docstring for unequal lengths. Raises ``BadRequest`` for arguments out of bounds or
    audio that cannot be read or is longer than ``max_audio_seconds``, and ``Cancelled`` when ``stop`` is set
    (checked between frames); either way nothing is left at ``out`` or beside it.
    """
    import av

    frames = check_frames(frames)
    shape = shape_of(frames, fps, interpolate_fps, upscale, max_output_pixels)
    out = Path(out)
    options = {"movflags": "+faststart"}
    with _written_beside(out) as tmp, av.open(str(tmp), mode="w", format="mp4", options=options) as container:
        vstream = _video_stream(container, shape.out_rate, shape.out_width, shape.out_height)
        track = None
        if audio is not None:
            track = _soundtrack(container, audio, shape, max_audio_seconds, max_output_pixels, stop)
        _encode_frames(container, vstream, track, frames, shape, stop, progress)
    return probe(out)


@contextlib.contextmanager
def _written_beside(out: Path) -> Iterator[Path]:
    """A temporary file beside ``out``, renamed to ``out`` when the block ends well and deleted when it does not, so
    no half-written mp4 ever has the final name."""
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _soundtrack(
    container: Any,
    audio: Path | bytes,
    shape: Shape,
    max_audio_seconds: float,
    max_output_pixels: int,
    stop: threading.Event | None,
) -> Soundtrack:
    """The audio track, once the frames held to cover it are known to fit the output budget."""
    track = Soundtrack(container, audio, max_audio_seconds, stop)
    audio_frames = shape.frames_for(track.seconds)
    if audio_frames > shape.frames:
        why = f" to cover {track.seconds:.1f} s of audio"
        check_budget(shape.out_width, shape.out_height, audio_frames, max_output_pixels, why)
    return track


def _encode_frames(
    container: Any,
    vstream: Any,
    track: Soundtrack | None,
    frames: np.ndarray,
    shape: Shape,
    stop: threading.Event | None,
    progress: Progress | None,
) -> None:
    """Every frame (filtered, then the last one held until the sound track ends), interleaved with the audio."""
    total = max(shape.frames, shape.frames_for(track.seconds) if track else 0)
    done = 0
    last: Any = None
    for frame in _filtered(frames, shape, stop):
        last = _put(container, vstream, track, frame, done, shape.out_rate)
        done += 1
        if progress is not None:
            progress(done, total)
    while done < total:  # hold the last frame until the narration ends
        stopped(stop)
        last = _put(container, vstream, track, last, done, shape.out_rate)
        done += 1
        if progress is not None:
            progress(done, total)
    for packet in vstream.encode(None):
        container.mux(packet)
    if track is not None:
        track.finish(float(done / shape.out_rate))


def _put(container: Any, stream: Any, track: Soundtrack | None, frame: Any, index: int, rate: Fraction) -> Any:
    """Encode one frame as the ``index``-th, and the audio up to its time, so the file is interleaved."""
    frame.pts = index
    frame.time_base = 1 / rate
    for packet in stream.encode(frame):
        container.mux(packet)
    if track is not None:
        track.mux_until(float(index / rate))
    return frame


def _video_stream(container: Any, rate: Fraction, width: int, height: int) -> Any:
    import av

    if "libx264" in av.codecs_available:
        stream = container.add_stream("libx264", rate=rate)
        stream.options = {"preset": X264_PRESET, "crf": str(X264_CRF)}
    else:  # an FFmpeg built without GPL parts: MPEG-4 part 2 still plays nearly everywhere except browsers
        stream = container.add_stream("mpeg4", rate=rate)
        stream.bit_rate = max(400_000, int(width * height * float(rate) * 0.2))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = 1 / rate
    return stream


def _filtered(frames: np.ndarray, shape: Shape, stop: threading.Event | None) -> Iterator[Any]:
    """The frames as yuv420p video frames, interpolated and scaled through FFmpeg's filter graph; exactly
    ``shape.frames``."""
    import av

    rate, out_rate, factor, wanted = shape.rate, shape.out_rate, shape.factor, shape.frames
    width, height = shape.width, shape.height

    graph = av.filter.Graph()
    nodes = [graph.add_buffer(width=width, height=height, format=av.VideoFormat("rgb24"), time_base=1 / rate)]
    if out_rate != rate:
        nodes += [graph.add("format", "yuv444p"), graph.add("minterpolate", f"fps={out_rate}:mi_mode=mci")]
    if factor > 1:
        nodes.append(graph.add("scale", f"iw*{factor}:ih*{factor}:flags=lanczos"))
    nodes += [graph.add("format", "yuv420p"), graph.add("buffersink")]
    graph.link_nodes(*nodes).configure()
    # minterpolate needs frames after the last one to reach it: two copies of the last frame carry it to the end
    tail = 2 if out_rate != rate else 0
    made = 0
    for index in range(frames.shape[0] + tail):
        stopped(stop)
        frame = av.VideoFrame.from_ndarray(_even(frames[min(index, frames.shape[0] - 1)]), format="rgb24")
        frame.pts, frame.time_base = index, 1 / rate
        graph.vpush(frame)
        for made_frame in _pull(graph):
            if made < wanted:
                made += 1
                yield made_frame
    graph.vpush(None)
    for made_frame in _pull(graph):
        if made < wanted:
            made += 1
            yield made_frame


def _pull(graph: Any) -> Iterator[Any]:
    import av

    while True:
        try:
            yield graph.vpull()
        except (av.error.BlockingIOError, av.error.EOFError):
            return


def _even(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row / column (invisible, unlike a black line)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return np.ascontiguousarray(frame)


# ---------------------------------------------------------------- probe, pictures
def probe(path: Path) -> VideoInfo:
    """What the video file at ``path`` holds, read with PyAV (frame count from the container, or counted)."""
    import av

    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError) as exc:
        raise BadRequest(f"{path.name} is not a video tiqo can read ({av_reason(exc)})", param="file") from None
    with container:
        videos = container.streams.video
        if not videos:
            raise BadRequest(f"{path.name} has no video stream", param="file")
        stream = videos[0]
        frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        rate = stream.average_rate or stream.base_rate or stream.guessed_rate
        if container.duration is not None:
            seconds = container.duration / 1_000_000
        elif stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        else:
            seconds = frames / float(rate) if rate else 0.0
        return VideoInfo(
            frames=int(frames),
            fps=float(rate) if rate else 0.0,
            width=stream.width,
            height=stream.height,
            seconds=float(seconds),
            has_audio=any(s.type == "audio" for s in container.streams),
            codec=stream.codec_context.name,
            bytes=Path(path).stat().st_size,
        )


def thumbnail(frames: np.ndarray, *, index: int | None = None) -> bytes:
    """One frame as PNG bytes: the middle one unless ``index`` says which (negative counts from the end)."""
    from PIL import Image

    frames = check_frames(frames)
    count = frames.shape[0]
    at = count // 2 if index is None else index
    if not -count <= at < count:
        raise BadRequest(
            f"frame {index} does not exist: the video has {count} frames", param="index", hint=f"use 0 to {count - 1}"
        )
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frames[at]), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def frames_from_image(data: bytes, width: int, height: int) -> np.ndarray:
    """An uploaded picture (PNG, JPEG, WebP, ...) as one ``(1, height, width, 3)`` uint8 frame: turned upright
    (EXIF), transparency flattened onto white, scaled to cover the size (Lanczos) and centre-cropped, so the
    picture is never stretched."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not (isinstance(width, int) and isinstance(height, int) and 1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise BadRequest(
            f"size {width}x{height} is out of range (1 to {MAX_SIDE} a side)",
            param="size",
            hint="use e.g. `--size 512x512`",
        )
    if not data:
        raise BadRequest("the image is empty (0 bytes)", param="input_reference", hint=IMAGE_HINT)
    try:
        with warnings.catch_warnings():  # PIL warns of big pictures; tiqo refuses them itself, below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise BadRequest(
                    f"the image is {img.width}x{img.height}; at most {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels",
                    param="input_reference",
                    hint="scale it down first, e.g. `ffmpeg -i IN -vf scale=1024:-1 small.png`",
                )
            img.load()
            picture = ImageOps.exif_transpose(img)
            if picture.mode in ("RGBA", "LA", "P", "PA"):
                picture = picture.convert("RGBA")
                flat = Image.new("RGBA", picture.size, (255, 255, 255, 255))
                flat.alpha_composite(picture)
                picture = flat
            picture = picture.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise BadRequest(
            f"this is not an image tiqo can read ({type(exc).__name__}: {str(exc)[:120]})",
            param="input_reference",
            hint=IMAGE_HINT,
        ) from None
    fitted = ImageOps.fit(picture, (width, height), method=Image.Resampling.LANCZOS)
    return np.asarray(fitted, dtype=np.uint8).reshape(1, height, width, 3).copy()
