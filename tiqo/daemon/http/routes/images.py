"""OpenAI's images and videos routes. Every request becomes a job (``/tiqo/jobs``); the images routes wait for theirs
(unless ``wait`` is false), the videos routes answer with the job as OpenAI's ``Video`` object at once."""

from __future__ import annotations

import asyncio
import base64
from typing import Literal

from fastapi import Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import UploadFile

from tiqo.core.errors import BadRequest, Conflict, NotFound
from tiqo.daemon.http.dependencies import request_meta, services_of
from tiqo.daemon.http.forms import Fields, flag, number, one, read_form
from tiqo.daemon.http.json_route import api_router
from tiqo.daemon.http.openapi_errors import GENERATES, errors
from tiqo.daemon.runtime.jobs import Job
from tiqo.daemon.services.images import ImageTask
from tiqo.daemon.services.videos import VideoTask
from tiqo.protocol import images as pi

router = api_router()
URL_HINT = "tiqo answers with the image itself: leave response_format out, or set it to b64_json"


def _size(value: str | None) -> tuple[int, int] | None:
    try:
        return pi.parse_size(value)
    except ValueError as exc:
        raise BadRequest(str(exc), param="size", hint="e.g. size=512x512") from None


async def _images_answer(request: Request, job: Job, wait: bool, user: str) -> Response:
    services = services_of(request)
    if not wait:
        return JSONResponse(job.as_dict(), status_code=202)
    done = await services.images.finished(job, user)
    result = done.result or {}
    names = list(result.get("files") or [])

    def read() -> list[str]:
        return [base64.b64encode(services.jobs.file(done.id, user, n).read_bytes()).decode() for n in names]

    pictures = await asyncio.to_thread(read)
    params = done.params or {}
    size = pi.parse_size(params.get("size")) or (0, 0)
    extra = {
        "job": done.id,
        **{k: v for k, v in (done.meta or {}).items() if k in ("seed", "steps", "device", "model")},
    }
    return JSONResponse(
        pi.image_answer(int(done.created_at), pictures, params.get("output_format", "png"), size, extra),
        headers={
            "x-tiqo-job": done.id,
            "x-tiqo-model": str(result.get("model", "")),
            "x-tiqo-backend": str(result.get("backend", "")),
        },
    )


@router.post("/v1/images/generations", response_model=None, responses=errors(*GENERATES, 409))
async def generations(body: pi.ImagesBody, request: Request) -> Response:
    """Images from a prompt (OpenAI's route; base64 PNG, JPEG or WebP). tiqo extras: seed, steps, negative_prompt,
    guidance_scale, and ``wait: false`` for the job object at once."""
    if body.response_format == "url":
        raise BadRequest("response_format=url is not served: images are not hosted anywhere", hint=URL_HINT)
    task = ImageTask(
        prompt=body.prompt,
        model=body.model,
        n=body.n,
        size=_size(body.size),
        output_format=body.output_format or "png",
        seed=body.seed,
        steps=body.steps,
        negative_prompt=body.negative_prompt,
        guidance=body.guidance_scale,
    )
    meta = request_meta(request, body.user)
    job = await services_of(request).images.submit_images(task, meta)
    return await _images_answer(request, job, body.wait, meta.user)


async def _upload(uploads: dict[str, list[UploadFile]], name: str) -> bytes | None:
    files = uploads.get(name)
    if not files:
        return None
    data = await files[0].read()
    for f in files:
        await f.close()
    return data


@router.post("/v1/images/edits", response_model=None, responses=errors(*GENERATES, 409))
async def edits(request: Request) -> Response:
    """Image-to-image, or inpainting with a ``mask`` (white where the picture is repainted); multipart like OpenAI's.
    tiqo extras: strength (0..1), seed, steps, negative_prompt, guidance_scale, wait."""
    uploads, fields = await read_form(request, max_files=3, hint="curl -F image=@in.png -F prompt=… (-F mask=@m.png)")
    image = await _upload(uploads, "image")
    if image is None:
        raise BadRequest("the form has no `image` file to edit", param="image", hint="curl -F image=@in.png")
    if one(fields, "response_format") == "url":
        raise BadRequest("response_format=url is not served: images are not hosted anywhere", hint=URL_HINT)
    task = ImageTask(
        prompt=_prompt(fields),
        model=one(fields, "model") or None,
        n=number(fields, "n", int) or 1,
        size=_size(one(fields, "size")),
        output_format=_output_format(fields),
        seed=number(fields, "seed", int),
        steps=number(fields, "steps", int),
        negative_prompt=one(fields, "negative_prompt") or None,
        guidance=number(fields, "guidance_scale", float),
        image=image,
        mask=await _upload(uploads, "mask"),
        strength=_strength(fields),
    )
    meta = request_meta(request, one(fields, "user"))
    job = await services_of(request).images.submit_images(task, meta)
    return await _images_answer(request, job, flag(fields, "wait") is not False, meta.user)


def _prompt(fields: Fields) -> str:
    prompt = (one(fields, "prompt") or "").strip()
    if not prompt:
        raise BadRequest("prompt is required", param="prompt")
    return prompt


def _output_format(fields: Fields) -> str:
    fmt = one(fields, "output_format") or "png"
    if fmt not in pi.IMAGE_FORMATS:
        raise BadRequest(f"output_format must be one of {', '.join(pi.IMAGE_FORMATS)}", param="output_format")
    return fmt


def _strength(fields: Fields) -> float | None:
    strength = number(fields, "strength", float)
    if strength is not None and not 0 < strength <= 1:
        raise BadRequest("strength must be above 0 and at most 1", param="strength")
    return strength


# ------------------------------------------------------------------ videos
@router.post("/v1/videos", response_model=None, responses=errors(*GENERATES, 409))
async def create_video(request: Request) -> Response:
    """OpenAI's videos route (multipart or JSON): prompt, model, seconds, size, input_reference (an image file).
    tiqo extras: fps, frames, steps, seed, negative_prompt, guidance_scale, narrate (text for the local voice),
    audio (a sound-track file), interpolate (fps, ffmpeg motion interpolation), upscale (factor, Lanczos), image_model
    (makes the first frame for an image-to-video model)."""
    uploads: dict[str, list[UploadFile]] = {}
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        uploads, fields = await read_form(request, max_files=2)
    else:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the body is neither a form nor JSON", hint="send prompt=… as a form, or JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        fields = {k: str(v) for k, v in body.items() if v is not None and not isinstance(v, (dict, list))}
    seconds = number(fields, "seconds", float)
    interpolate, upscale = number(fields, "interpolate", int), number(fields, "upscale", int)
    if interpolate is not None and not 2 <= interpolate <= 60:
        raise BadRequest("interpolate is the frame rate to reach, 2 to 60 fps", param="interpolate")
    if upscale is not None and not 1 <= upscale <= 4:
        raise BadRequest("upscale is a factor from 1 to 4", param="upscale")
    if seconds is not None and not 0 < seconds <= 600:
        raise BadRequest("seconds must be above 0 and at most 600", param="seconds")
    task = VideoTask(
        prompt=_prompt(fields),
        model=one(fields, "model") or None,
        seconds=seconds,
        size=_size(one(fields, "size")),
        fps=number(fields, "fps", int),
        frames=number(fields, "frames", int),
        steps=number(fields, "steps", int),
        seed=number(fields, "seed", int),
        negative_prompt=one(fields, "negative_prompt") or None,
        guidance=number(fields, "guidance_scale", float),
        image=await _upload(uploads, "input_reference"),
        image_model=one(fields, "image_model") or None,
        narrate=(one(fields, "narrate") or "").strip() or None,
        audio=await _upload(uploads, "audio"),
        interpolate=interpolate,
        upscale=upscale,
    )
    meta = request_meta(request, one(fields, "user"))
    job = await services_of(request).videos.submit_video(task, meta)
    return JSONResponse(pi.video_object(job.as_dict()))


def _video(request: Request, video_id: str) -> tuple[Job, str]:
    user = request_meta(request).user
    job = services_of(request).jobs.get(video_id, user)
    if job.kind != "video":
        raise NotFound(f"no video {video_id!r}", code="video_not_found", hint="`tiqo jobs list` shows your jobs")
    return job, user


@router.get("/v1/videos", response_model=None, responses=errors(404))
async def list_videos(
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> Response:
    """The caller's videos, newest first (``order=asc`` for oldest first), OpenAI's cursor list; ``after`` is the
    last id of the previous page (404 when it is not one of the caller's)."""
    jobs = services_of(request).jobs.list(request_meta(request).user, kind="video", limit=limit + 1, after=after)
    data = [pi.video_object(j.as_dict()) for j in jobs[:limit]]
    if order == "asc":
        data.reverse()
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "has_more": len(jobs) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


@router.get("/v1/videos/{video_id}", response_model=None, responses=errors(404))
async def retrieve_video(video_id: str, request: Request) -> Response:
    job, _ = _video(request, video_id)
    return JSONResponse(pi.video_object(job.as_dict()))


@router.delete("/v1/videos/{video_id}", response_model=None, responses=errors(404, 409))
async def delete_video(video_id: str, request: Request) -> Response:
    """Cancels the video if it is still being made, and removes it and its files."""
    _, user = _video(request, video_id)
    await services_of(request).jobs.remove(video_id, user)
    return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})


@router.get("/v1/videos/{video_id}/content", response_model=None, responses=errors(400, 404, 409))
async def video_content(video_id: str, request: Request, variant: str = "video") -> Response:
    """The mp4 (``variant=video``) or a PNG of its middle frame (``thumbnail``)."""
    job, user = _video(request, video_id)
    if variant not in pi.VIDEO_VARIANTS:
        raise BadRequest(
            f"variant must be one of {', '.join(pi.VIDEO_VARIANTS)} (tiqo makes no spritesheet)", param="variant"
        )
    if job.status != "completed":
        raise Conflict(
            f"video {video_id} is {job.status} ({job.progress}%), not completed",
            hint=f"wait for it: `tiqo jobs wait {video_id}`",
        )
    name, media_type = pi.VIDEO_VARIANTS[variant]
    return FileResponse(services_of(request).jobs.file(video_id, user, name), media_type=media_type)
