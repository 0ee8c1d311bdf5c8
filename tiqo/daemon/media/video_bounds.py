"""What ``media/video`` may be asked for: the bounds of an encode (frame rates, upscaling, sides, output pixels) and
the :class:`Shape` it works to, checked before anything is written. ``BadRequest`` with a hint for each."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from tiqo.core.errors import BadRequest

MAX_FACTOR = 4  # upscale: at most 4x each side
MAX_FPS = 60  # source and interpolated frame rates
MAX_SIDE = 8192  # output width or height, after upscaling
# output width x height x frames (held frames for a long narration included): about a minute of 720p at 24 fps
MAX_OUTPUT_PIXELS = 1280 * 720 * 24 * 60


@dataclass(frozen=True)
class Shape:
    """What ``encode_mp4`` makes of its arguments: the rates, the even size, the factor, the frames to write."""

    rate: Fraction  # the frames' own rate
    out_rate: Fraction  # after interpolation
    factor: int  # upscaling, each side
    width: int  # the frames' size, padded to even
    height: int
    frames: int  # video frames written, before any held for a longer sound track

    @property
    def out_width(self) -> int:
        return self.width * self.factor

    @property
    def out_height(self) -> int:
        return self.height * self.factor

    def frames_for(self, seconds: float) -> int:
        """Output frames that cover ``seconds``."""
        return math.ceil(seconds * self.out_rate - 1e-9)


def shape_of(
    frames: np.ndarray, fps: float, interpolate_fps: int | None, upscale: int | None, max_output_pixels: int
) -> Shape:
    """The encode's shape, checked against its bounds (``BadRequest`` before anything is written)."""
    rate = _check_fps(fps)
    out_rate = rate if interpolate_fps is None else _check_interpolate(interpolate_fps, rate)
    factor = 1 if upscale is None else _check_upscale(upscale)
    count, height, width = frames.shape[0], frames.shape[1] + frames.shape[1] % 2, frames.shape[2] + frames.shape[2] % 2
    out_w, out_h = width * factor, height * factor
    if max(out_w, out_h) > MAX_SIDE:
        raise BadRequest(
            f"the video would be {out_w}x{out_h}; at most {MAX_SIDE} pixels a side",
            param="upscale",
            hint="choose a smaller --upscale or a smaller --size",
        )
    video_frames = math.ceil(count * out_rate / rate - 1e-9)
    check_budget(out_w, out_h, video_frames, max_output_pixels, "")
    return Shape(rate, out_rate, factor, width, height, video_frames)


def check_frames(frames: Any) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        shape = getattr(frames, "shape", type(frames).__name__)
        raise BadRequest(
            f"video frames must be a (frames, height, width, 3) array with at least one frame, not {shape}",
            param="frames",
            hint="the video engine returned no frames; try again or with another model",
        )
    if frames.dtype != np.uint8:
        raise BadRequest(
            f"video frames must be uint8 RGB, not {frames.dtype}",
            param="frames",
            hint="convert with `.astype(np.uint8)`",
        )
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise BadRequest(
            f"video frames of {frames.shape[2]}x{frames.shape[1]} are too small (2x2 at least)",
            param="size",
            hint="ask for a bigger --size",
        )
    return frames


def _check_fps(fps: float) -> Fraction:
    if not isinstance(fps, int | float) or not 1 <= fps <= MAX_FPS:
        raise BadRequest(f"fps must be between 1 and {MAX_FPS}, not {fps}", param="fps", hint="use e.g. `--fps 8`")
    return Fraction(fps).limit_denominator(1001)


def _check_interpolate(target: int, rate: Fraction) -> Fraction:
    if not isinstance(target, int) or not rate < target <= MAX_FPS:
        raise BadRequest(
            f"interpolation must raise the frame rate: to more than {float(rate):g} fps and at most {MAX_FPS}, "
            f"not {target}",
            param="interpolate",
            hint=f"use e.g. `--interpolate {min(MAX_FPS, max(24, math.ceil(rate) * 2))}`, or leave it out",
        )
    return Fraction(target)


def _check_upscale(factor: int) -> int:
    if not isinstance(factor, int) or not 1 <= factor <= MAX_FACTOR:
        raise BadRequest(
            f"upscale must be a whole factor from 1 to {MAX_FACTOR}, not {factor}",
            param="upscale",
            hint="use `--upscale 2`, or leave it out",
        )
    return factor


def check_budget(width: int, height: int, frames: int, limit: int, why: str) -> None:
    if width * height * frames > limit:
        raise BadRequest(
            f"the video would be {frames} frames of {width}x{height}{why} ({width * height * frames / 1e6:.0f} "
            f"megapixels); the limit is {limit / 1e6:.0f} megapixels",
            param="size",
            code="video_too_large",
            hint="ask for fewer frames or seconds, a smaller --size, --upscale or --interpolate, or shorter audio",
        )
