"""Frames to mp4 (tiqo.daemon.media.video) with real PyAV, checked by the system's ffprobe: frame count, fps, size,
the AAC track and its length, interpolation, upscaling, odd sizes, cancel, thumbnails and the bounds."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import threading
import wave
import zlib
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from tiqo.core.errors import BadRequest, Cancelled
from tiqo.daemon.media import video
from tiqo.daemon.media.video import encode_mp4, frames_from_image, probe, thumbnail

assert shutil.which("ffprobe"), "ffprobe (apt ffmpeg) checks what tiqo writes"


def moving_square(count: int = 8, height: int = 64, width: int = 96) -> np.ndarray:
    frames = np.full((count, height, width, 3), 30, dtype=np.uint8)
    for i in range(count):
        x = (i * 7) % max(1, width - 20)
        frames[i, 10:30, x : x + 20] = (250, 200, 40)
    return frames


def wav_bytes(seconds: float, rate: int = 22_050, channels: int = 1) -> bytes:
    """A 440 Hz tone as 16-bit WAV (what tiqo's local voice gives for --narrate)."""
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(tone, channels).tobytes())
    return buf.getvalue()


def ffprobe(path: Path) -> dict[str, Any]:
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def stream(data: dict[str, Any], kind: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [s for s in data["streams"] if s["codec_type"] == kind]
    assert len(found) == 1, data["streams"]
    return found[0]


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_h264_mp4_has_the_frames_fps_and_size_ffprobe_reports(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    info = encode_mp4(moving_square(12), 8, out)
    data = ffprobe(out)
    v = stream(data, "video")
    assert (v["codec_name"], v["pix_fmt"], v["width"], v["height"]) == ("h264", "yuv420p", 96, 64)
    assert int(v["nb_read_frames"]) == 12
    assert v["r_frame_rate"] == v["avg_frame_rate"] == "8/1"
    assert float(data["format"]["duration"]) == pytest.approx(1.5, abs=0.01)
    assert not [s for s in data["streams"] if s["codec_type"] == "audio"]
    raw = out.read_bytes()
    assert 0 <= raw.find(b"moov") < raw.find(b"mdat"), "+faststart puts the index first, so browsers can stream"
    assert info == probe(out)
    assert (info.frames, info.fps, info.width, info.height, info.codec) == (12, 8.0, 96, 64, "h264")
    assert info.seconds == pytest.approx(1.5, abs=0.01) and not info.has_audio and info.bytes == len(raw)
    assert leftovers(tmp_path) == []
    played = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(out), "-f", "null", "-"], capture_output=True, text=True, timeout=60
    )
    assert played.returncode == 0 and played.stderr == "", played.stderr  # FFmpeg decodes it start to end cleanly
    # what was encoded is what plays back (H.264 is lossy: close, not equal)
    first = decoded(out)[0].astype(int)
    assert np.abs(first - moving_square(1).astype(int)).mean() < 6


def test_narration_longer_than_the_video_holds_the_last_frame(tmp_path: Path) -> None:
    narration = tmp_path / "narration.wav"
    narration.write_bytes(wav_bytes(2.5))
    out = tmp_path / "narrated.mp4"
    info = encode_mp4(moving_square(8), 8, out, audio=narration)
    data = ffprobe(out)
    a, v = stream(data, "audio"), stream(data, "video")
    assert (a["codec_name"], int(a["sample_rate"]), int(a["channels"])) == ("aac", 48_000, 1)
    assert float(a["duration"]) == pytest.approx(2.5, abs=0.05)
    assert int(v["nb_read_frames"]) == 20  # 2.5 s at 8 fps: 8 made frames, then the last one held
    assert float(v["duration"]) == pytest.approx(2.5, abs=0.01)
    assert info.has_audio and info.frames == 20 and info.seconds == pytest.approx(2.5, abs=0.05)
    frames = decoded(out)
    assert np.abs(frames[7].astype(int) - frames[-1].astype(int)).mean() < 1


def test_audio_shorter_than_the_video_is_padded_with_silence(tmp_path: Path) -> None:
    out = tmp_path / "short_audio.mp4"
    encode_mp4(moving_square(24), 8, out, audio=wav_bytes(1.0, rate=16_000))
    data = ffprobe(out)
    assert int(stream(data, "video")["nb_read_frames"]) == 24
    assert float(stream(data, "audio")["duration"]) == pytest.approx(3.0, abs=0.05)
    with av.open(str(out)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    second = 48_000
    assert np.abs(samples[: second // 2]).max() > 0.1  # the tone
    assert np.abs(samples[int(1.2 * second) :]).max() < 0.01  # then silence


def test_a_users_stereo_file_in_another_format_is_muxed_stereo(tmp_path: Path) -> None:
    source = tmp_path / "music.flac"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=frequency=300:duration=1.5", "-ac", "2", str(source)],
        check=True,
        timeout=60,
    )
    out = tmp_path / "music.mp4"
    encode_mp4(moving_square(8), 8, out, audio=source)
    a = stream(ffprobe(out), "audio")
    assert (a["codec_name"], int(a["channels"])) == ("aac", 2)
    assert float(a["duration"]) == pytest.approx(1.5, abs=0.05)


def _video_only(tmp_path: Path) -> bytes:
    path = tmp_path / "silent.mp4"
    encode_mp4(moving_square(2), 8, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: b"this is not audio at all" * 40, "not audio"),
        (lambda tmp: b"", "empty"),
        (lambda tmp: wav_bytes(1.0)[:44], "no sound"),  # a WAV header and no samples
        (lambda tmp: _video_only(tmp), "no audio stream"),
        (lambda tmp: tmp / "missing.wav", "not audio"),
    ],
    ids=["garbage", "empty", "header-only", "video-only", "missing-file"],
)
def test_broken_audio_is_a_bad_request_and_leaves_nothing(tmp_path: Path, make: Any, says: str) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous video")
    with pytest.raises(BadRequest) as caught:
        encode_mp4(moving_square(4), 8, out, audio=make(tmp_path))
    assert says in caught.value.message and caught.value.hint and caught.value.param == "audio"
    assert caught.value.status == 400
    assert out.read_bytes() == b"the previous video"  # the old file under the final name is untouched
    assert leftovers(tmp_path) == []


def test_audio_over_the_limit_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "long.mp4"
    with pytest.raises(BadRequest) as caught:
        encode_mp4(moving_square(4), 8, out, audio=wav_bytes(3.0), max_audio_seconds=1.5)
    assert caught.value.code == "audio_too_long" and "ffmpeg -i IN -t" in (caught.value.hint or "")
    # a streamed WAV declares no length: decoding stops at the limit
    streamed = bytearray(wav_bytes(3.0))
    streamed[4:8] = streamed[40:44] = b"\xff\xff\xff\xff"
    with pytest.raises(BadRequest) as caught:
        encode_mp4(moving_square(4), 8, out, audio=bytes(streamed), max_audio_seconds=1.5)
    assert caught.value.code == "audio_too_long"
    assert not out.exists() and leftovers(tmp_path) == []


def test_motion_interpolation_from_8_to_24_fps_triples_the_frames(tmp_path: Path) -> None:
    out = tmp_path / "smooth.mp4"
    info = encode_mp4(moving_square(8), 8, out, interpolate_fps=24)
    v = stream(ffprobe(out), "video")
    assert int(v["nb_read_frames"]) == 24 and v["r_frame_rate"] == "24/1"
    assert float(v["duration"]) == pytest.approx(1.0, abs=0.01)  # same length, more frames
    assert info.frames == 24 and info.fps == 24.0
    frames = [f.astype(int) for f in decoded(out)]
    # a made-up frame between source frames 0 and 1 is neither of them: the square moved part of the way
    assert np.abs(frames[1] - frames[0]).mean() > 0.5 and np.abs(frames[1] - frames[3]).mean() > 0.5
    assert video.INTERPOLATION.startswith("ffmpeg motion interpolation")


@pytest.mark.parametrize(
    ("count", "fps", "target", "expected"),
    [(1, 8, 24, 3), (2, 8, 24, 6), (8, 7.5, 24, 26), (8, 8, 25, 25), (5, 12, 60, 25)],
)
def test_interpolation_keeps_the_length(tmp_path: Path, count: int, fps: float, target: int, expected: int) -> None:
    out = tmp_path / "smooth.mp4"
    info = encode_mp4(moving_square(count), fps, out, interpolate_fps=target)
    v = stream(ffprobe(out), "video")
    assert int(v["nb_read_frames"]) == expected == info.frames  # ceil(count / fps * target)
    assert v["r_frame_rate"] == f"{target}/1"


def test_interpolated_upscaled_and_narrated_together(tmp_path: Path) -> None:
    out = tmp_path / "all.mp4"
    info = encode_mp4(moving_square(9), 8, out, interpolate_fps=60, upscale=3, audio=wav_bytes(1.3))
    data = ffprobe(out)
    v, a = stream(data, "video"), stream(data, "audio")
    assert (int(v["nb_read_frames"]), v["width"], v["height"]) == (78, 288, 192)  # 1.3 s at 60 fps
    assert float(a["duration"]) == pytest.approx(1.3, abs=0.05) and info.has_audio


def test_upscale_2_doubles_the_size_with_lanczos(tmp_path: Path) -> None:
    out = tmp_path / "big.mp4"
    info = encode_mp4(moving_square(4), 8, out, upscale=2)
    v = stream(ffprobe(out), "video")
    assert (v["width"], v["height"], int(v["nb_read_frames"])) == (192, 128, 4)
    assert (info.width, info.height) == (192, 128)
    assert "Lanczos" in video.UPSCALER


@pytest.mark.parametrize(("upscale", "size"), [(None, (96, 64)), (3, (288, 192))])
def test_odd_sizes_are_padded_to_even(tmp_path: Path, upscale: int | None, size: tuple[int, int]) -> None:
    out = tmp_path / "odd.mp4"
    frames = moving_square(4, height=63, width=95)
    info = encode_mp4(frames, 8, out, upscale=upscale)
    v = stream(ffprobe(out), "video")
    assert (v["width"], v["height"]) == size == (info.width, info.height)
    assert int(v["nb_read_frames"]) == 4


def test_progress_per_frame_and_cancel_between_frames(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    encode_mp4(moving_square(6), 8, tmp_path / "a.mp4", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]

    stop = threading.Event()
    calls: list[int] = []

    def cancel_at_three(done: int, total: int) -> None:
        calls.append(done)
        if done == 3:
            stop.set()

    out = tmp_path / "cancelled.mp4"
    with pytest.raises(Cancelled):
        encode_mp4(moving_square(30), 8, out, audio=wav_bytes(5.0), stop=stop, progress=cancel_at_three)
    assert calls == [1, 2, 3]
    assert not out.exists() and leftovers(tmp_path) == []


def test_thumbnail_is_a_png_of_the_frame_size() -> None:
    frames = moving_square(5, height=40, width=72)
    png = thumbnail(frames)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (72, 40) and img.mode == "RGB"
        assert np.array_equal(np.asarray(img), frames[2])  # the middle frame, losslessly
    with Image.open(io.BytesIO(thumbnail(frames, index=-1))) as img:
        assert np.array_equal(np.asarray(img), frames[4])
    with pytest.raises(BadRequest, match="5 frames"):
        thumbnail(frames, index=5)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"fps": 0}, "fps"),
        ({"fps": 61}, "fps"),
        ({"interpolate_fps": 61}, "interpolate"),
        ({"interpolate_fps": 8}, "interpolate"),  # not above the source rate
        ({"upscale": 5}, "upscale"),
        ({"upscale": 0}, "upscale"),
        ({"upscale": 4, "frames": moving_square(2, height=2100, width=40)}, "upscale"),  # 8400 px tall
        ({"max_output_pixels": 96 * 64 * 7}, "size"),  # 8 frames of 96x64
        ({"interpolate_fps": 24, "max_output_pixels": 96 * 64 * 20}, "size"),  # 24 frames after interpolation
        ({"audio": wav_bytes(4.0), "max_output_pixels": 96 * 64 * 24}, "size"),  # 32 frames held for the audio
        ({"frames": moving_square(2).astype(np.float32)}, "frames"),
        ({"frames": np.zeros((0, 8, 8, 3), np.uint8)}, "frames"),
        ({"frames": np.zeros((8, 8, 3), np.uint8)}, "frames"),
        ({"frames": np.zeros((2, 1, 8, 3), np.uint8)}, "size"),
    ],
    ids=lambda v: "" if isinstance(v, dict) else v,
)
def test_bounds_are_refused_before_work(tmp_path: Path, kwargs: dict[str, Any], param: str) -> None:
    out = tmp_path / "refused.mp4"
    args: dict[str, Any] = {"frames": moving_square(8), "fps": 8, **kwargs}
    with pytest.raises(BadRequest) as caught:
        encode_mp4(args.pop("frames"), args.pop("fps"), out, **args)
    assert caught.value.param == param and caught.value.hint
    assert not out.exists() and leftovers(tmp_path) == []


def test_mpeg4_when_libx264_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    out = tmp_path / "fallback.mp4"
    info = encode_mp4(moving_square(8), 8, out)
    v = stream(ffprobe(out), "video")
    assert (v["codec_name"], int(v["nb_read_frames"]), v["width"]) == ("mpeg4", 8, 96)
    assert info.codec == "mpeg4"


def test_frames_from_image_fits_without_stretching() -> None:
    picture = Image.new("RGBA", (80, 40), (255, 0, 0, 255))
    picture.paste((0, 0, 255, 0), (0, 0, 20, 40))  # a transparent band on the left
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    frames = frames_from_image(buf.getvalue(), 32, 32)
    assert frames.shape == (1, 32, 32, 3) and frames.dtype == np.uint8
    # scaled to cover 32x32 (64x32), centre-cropped: the transparent band (now white) is cut away
    assert np.abs(frames[0, :, :, 0].astype(int) - 255).max() < 8 and frames[0, :, :, 1].max() < 8

    jpeg = io.BytesIO()
    Image.new("RGB", (20, 30), (0, 200, 0)).save(jpeg, format="JPEG")
    assert frames_from_image(jpeg.getvalue(), 48, 16).shape == (1, 16, 48, 3)


def png_header(width: int, height: int) -> bytes:
    """Only a PNG's signature and IHDR: what a decompression bomb shows before it is decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


@pytest.mark.parametrize(
    ("data", "size", "param"),
    [
        (b"definitely not a picture", (64, 64), "input_reference"),
        (png_header(10_000, 10_000), (64, 64), "input_reference"),
        (b"", (64, 64), "input_reference"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, (64, 64), "input_reference"),  # a PNG cut short
        (b"any", (0, 64), "size"),
        (b"any", (64, 9000), "size"),
    ],
    ids=["garbage", "bomb", "empty", "truncated-png", "zero-size", "too-big"],
)
def test_frames_from_image_refuses_bad_input(data: bytes, size: tuple[int, int], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        frames_from_image(data, *size)
    assert caught.value.param == param and caught.value.hint
    if data.startswith(png_header(1, 1)[:16]) and len(data) > 40:
        assert "megapixels" in caught.value.message  # refused from its header, before decoding
