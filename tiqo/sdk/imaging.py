"""What image and video engines take and give (diffusers is the built-in one). Plain data: no torch, no PIL.

Images travel encoded (PNG, JPEG or WebP bytes in, PNG bytes out); video frames as one ``uint8`` array
``(frames, height, width, 3)``. A runner calls ``progress(step, total)`` after every denoising step (from its own
thread) and checks ``stop`` between steps: when it is set it raises ``tiqo.core.errors.Cancelled``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tiqo.sdk.engine import Runner

if TYPE_CHECKING:
    import numpy as np

    from tiqo.sdk.engine import StopFlag

# Tasks a diffusion model can do (``[models.NAME] task``, read from model_index.json's ``_class_name``).
TEXT_TO_IMAGE = "text-to-image"
IMAGE_TO_IMAGE = "image-to-image"
INPAINTING = "inpainting"
IMAGE_TO_VIDEO = "image-to-video"
TEXT_TO_VIDEO = "text-to-video"
TASKS = (TEXT_TO_IMAGE, IMAGE_TO_IMAGE, INPAINTING, IMAGE_TO_VIDEO, TEXT_TO_VIDEO)

Progress = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    width: int
    height: int
    n: int = 1
    steps: int | None = None  # None: the model's own default
    seed: int | None = None  # None: a random seed, reported back
    negative_prompt: str | None = None
    guidance: float | None = None
    image: bytes | None = None  # image-to-image / inpainting: the picture to change
    mask: bytes | None = None  # inpainting: white where the picture is repainted (same size as image)
    strength: float | None = None  # image-to-image: how far from the input (0..1)


@dataclass(frozen=True)
class VideoRequest:
    prompt: str
    width: int
    height: int
    frames: int
    fps: int
    steps: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    image: bytes | None = None  # image-to-video: the first frame / conditioning picture


@dataclass(frozen=True)
class ImageResult:
    images: list[bytes]  # PNG
    seed: int
    steps: int
    device: str  # "cpu", "cuda:0", ...
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VideoResult:
    frames: np.ndarray  # uint8 (frames, height, width, 3)
    fps: int
    seed: int
    steps: int
    device: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


class ImageRunner(Runner, Protocol):
    """A loaded diffusion model. ``task`` says which of the two calls it answers."""

    task: str

    def images(self, request: ImageRequest, progress: Progress, stop: StopFlag) -> ImageResult: ...

    def video(self, request: VideoRequest, progress: Progress, stop: StopFlag) -> VideoResult: ...
