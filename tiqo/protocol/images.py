"""OpenAI's images and videos API as tiqo speaks it: request bodies, sizes, and the shapes of its answers."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
VIDEO_VARIANTS = {"video": ("video.mp4", "video/mp4"), "thumbnail": ("thumbnail.png", "image/png")}
# The names OpenAI clients send by default. When no model of that name is registered they mean "the local default".
OPENAI_IMAGE_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2")
OPENAI_VIDEO_MODELS = ("sora-2", "sora-2-pro")


def parse_size(value: str | None) -> tuple[int, int] | None:
    """``"WIDTHxHEIGHT"`` → (width, height); None or "auto" → None (the model's default). ValueError otherwise."""
    if value is None or value.strip().lower() in ("", "auto"):
        return None
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"size must look like 512x512 (width x height), not {value!r}")
    return int(match.group(1)), int(match.group(2))


class ImagesBody(BaseModel):
    """``POST /v1/images/generations``. tiqo extras: seed, steps, negative_prompt, guidance_scale."""

    model_config = ConfigDict(extra="allow")
    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(default=1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    user: str | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    steps: int | None = Field(default=None, ge=1)
    negative_prompt: str | None = None
    guidance_scale: float | None = Field(default=None, ge=0, le=50)
    # tiqo: answer with a job object at once instead of waiting (the CLI follows its progress)
    wait: bool = True


def image_answer(
    created: int, images: list[str], fmt: str, size: tuple[int, int], extra: dict[str, Any]
) -> dict[str, Any]:
    """OpenAI's ``ImagesResponse`` (b64_json items), with what tiqo adds (seed, steps, job) under ``tiqo``."""
    return {
        "created": created,
        "data": [{"b64_json": b64} for b64 in images],
        "output_format": fmt,
        "size": f"{size[0]}x{size[1]}",
        "tiqo": extra,
    }


def video_object(job: dict[str, Any]) -> dict[str, Any]:
    """A job of kind ``video`` as OpenAI's ``Video`` object (statuses queued / in_progress / completed / failed:
    a cancelled job reads as failed with the code ``cancelled``)."""
    params = job.get("params") or {}
    status = job["status"]
    error = job.get("error")
    if status == "cancelled":
        status = "failed"
        error = error or {"code": "cancelled", "message": "the job was cancelled"}
    finished = job.get("finished_at")
    return {
        "id": job["id"],
        "object": "video",
        "created_at": int(job["created_at"]),
        "completed_at": int(finished) if finished and status == "completed" else None,
        "expires_at": int(job["expires_at"]) if job.get("expires_at") else None,
        "status": status,
        "progress": int(job.get("progress") or 0),
        "model": params.get("model") or (job.get("meta") or {}).get("model") or "",
        "prompt": params.get("prompt"),
        "seconds": str(params.get("seconds", "")),
        "size": params.get("size", ""),
        "error": error,
        "remixed_from_video_id": None,
        "tiqo": {k: job.get(k) for k in ("step", "total", "eta_s", "stage", "meta", "result")},
    }
