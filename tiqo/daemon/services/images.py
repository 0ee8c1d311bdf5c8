"""Images and videos: ``/v1/images/*`` and ``/v1/videos`` through the same policy as every other modality
(classification, rate limits, routing with the local model last, budgets for external image providers, one ledger row
per request), run as jobs (``runtime/jobs``): persisted, owned by their user, with progress, cancellable between steps.

A video is made in stages, each a share of the job's progress: a first frame from the image model when the video
model needs one and none was given (text → image → video), the video model's frames, the narration (the local voice)
and the mp4 (``media/video``: H.264, AAC, ffmpeg's motion interpolation and Lanczos scaling when asked)."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from tiqo.core.errors import BadRequest, Cancelled, NotFound, TiqoError
from tiqo.daemon.media.pictures import check_pictures, save_pictures
from tiqo.daemon.pipeline.dispatch import Dispatch
from tiqo.daemon.pipeline.ports import LocalCompute
from tiqo.daemon.pipeline.router import Router
from tiqo.daemon.pipeline.served import RequestMeta, Served
from tiqo.daemon.runtime.jobs import Job, JobHandle, Jobs
from tiqo.daemon.upstream.client import AttemptFailed
from tiqo.daemon.upstream.external import json_answer, scrub
from tiqo.policy import budget as bp
from tiqo.policy.routing import CatalogModel, Decision
from tiqo.protocol.images import OPENAI_IMAGE_MODELS, OPENAI_VIDEO_MODELS
from tiqo.sdk import imaging as im
from tiqo.sdk.engine import ModelSpec, StopFlag

log = logging.getLogger("tiqo.images")
Narrator = Callable[[str], Awaitable[bytes]]  # text -> WAV bytes, spoken by the local voice


@dataclass(frozen=True)
class ImageTask:
    """One ``/v1/images/generations`` or ``/v1/images/edits`` request, checked by the route."""

    prompt: str
    model: str | None = None
    n: int = 1
    size: tuple[int, int] | None = None
    output_format: str = "png"
    seed: int | None = None
    steps: int | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    image: bytes | None = None
    mask: bytes | None = None
    strength: float | None = None


@dataclass(frozen=True)
class VideoTask:
    """One ``/v1/videos`` request. ``seconds * fps`` frames unless ``frames`` is given; ``image`` is OpenAI's
    ``input_reference``; ``narrate`` is text for the local voice, ``audio`` a sound track (either, not both)."""

    prompt: str
    model: str | None = None
    seconds: float | None = None
    size: tuple[int, int] | None = None
    fps: int | None = None
    frames: int | None = None
    steps: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    image: bytes | None = None
    image_model: str | None = None
    narrate: str | None = None
    audio: bytes | None = None
    interpolate: int | None = None
    upscale: int | None = None


@dataclass
class _Stages:
    """Maps each stage's own steps onto one rising progress for the whole job."""

    handle: JobHandle
    plan: list[tuple[str, int]]  # (stage, weight in steps)
    done: int = 0
    current: str = ""
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(w for _, w in self.plan)

    def start(self, stage: str) -> im.Progress:
        self.current = stage
        offset = sum(w for s, w in self.plan[: [s for s, _ in self.plan].index(stage)])
        weight = dict(self.plan)[stage]

        def progress(step: int, total: int) -> None:
            scaled = offset + min(weight, round(step * weight / max(1, total)))
            self.handle.progress(scaled, self.total, stage)

        self.handle.progress(offset, self.total, stage)
        return progress


class Images(Dispatch):
    def __init__(self, gateway: Router, daemon: LocalCompute, jobs: Jobs, narrate: Narrator | None = None) -> None:
        super().__init__(gateway, daemon)
        self.jobs = jobs
        self.narrate = narrate
        self._failures: dict[str, TiqoError] = {}  # job id -> its error, for the caller that waits on it

    # ------------------------------------------------------------------ models
    def default_model(self, kind: str, capability: str | None = None) -> str | None:
        """``image.default_model`` / ``video.default_model``, else the first registered model that can do it."""
        name = self.settings[f"{kind}.default_model"]
        if name:
            return str(name)
        for spec in self.registry.of_kind(kind):
            if capability is None or capability in spec.capabilities:
                return spec.name
        return None

    def _local_spec(self, name: str | None, kind: str, capability: str, *alternatives: str) -> ModelSpec:
        """The local model ``name`` (the kind's default when None), which can do ``capability`` or an alternative."""
        name = name or self.default_model(kind, capability)
        if not name:
            raise NotFound(
                f"no {kind} model is registered",
                code="model_not_found",
                param="model",
                hint=f"register a diffusers folder: `tiqo models add NAME DIR` (see the README, {kind} generation)",
            )
        spec: ModelSpec = self.registry.resolve(name, kind)
        if not {capability, *alternatives} & set(spec.capabilities):
            can = ", ".join(spec.capabilities) or "nothing"
            raise BadRequest(
                f"{spec.name} cannot do {capability} (its task is {spec.options.get('task', '?')}: {can})",
                param="model",
                hint="`tiqo models list` shows each model's task; pick one that can",
            )
        return spec

    def _check_size(self, size: tuple[int, int] | None, spec: ModelSpec, kind: str) -> tuple[int, int]:
        from tiqo.protocol.images import parse_size

        if size is None:
            size = parse_size(str(spec.options.get("size") or self.settings[f"{kind}.default_size"]))
            assert size is not None
        width, height = size
        largest = int(self.settings["image.max_side"])
        for name, value in (("width", width), ("height", height)):
            if value % 8 or not 64 <= value <= largest:
                raise BadRequest(
                    f"{name} {value} must be a multiple of 8 between 64 and {largest}",
                    param="size",
                    hint="e.g. size=512x512 (image.max_side sets the largest side)",
                )
        return width, height

    def _check_steps(self, steps: int | None) -> None:
        most = int(self.settings["image.max_steps"])
        if steps is not None and not 1 <= steps <= most:
            raise BadRequest(
                f"steps must be between 1 and {most}, not {steps}", param="steps", hint="image.max_steps sets it"
            )

    # ------------------------------------------------------------------ images
    async def submit_images(self, task: ImageTask, meta: RequestMeta) -> Job:
        """Check, classify and admit the request now (its 4xx come back at once), then make it as a job."""
        row, started = self._row(meta, "image")
        edit = task.image is not None
        try:
            most = int(self.settings["image.max_n"])
            if not 1 <= task.n <= most:
                raise BadRequest(f"n must be between 1 and {most}, not {task.n}", param="n", hint="image.max_n")
            self._check_steps(task.steps)
            if task.image is not None:
                size = await asyncio.to_thread(
                    check_pictures, task.image, task.mask, int(self.settings["image.max_side"])
                )
                if task.size is None:  # an edit keeps the picture's size (to a multiple of 8), as OpenAI's does
                    task = replace(task, size=(max(64, size[0] // 8 * 8), max(64, size[1] // 8 * 8)))
            elif task.mask is not None:
                raise BadRequest("a mask needs an image to repaint", param="mask")
            texts = [task.prompt] + ([task.negative_prompt] if task.negative_prompt else [])
            c, _ = await self._admit(row, meta, "image", texts, len(task.prompt) // 4 + 1)
            capability = _capability(task)
            requested = self._openai_name(task.model, OPENAI_IMAGE_MODELS)
            blocked: dict[str, bp.Charge] = {}
            local = self.default_model("image", capability)
            if requested is None and local is None and "image" not in self.gateway.catalog_and_config()[1].routes:
                self._local_spec(None, "image", capability)  # raises: no image model is registered, and how to add one
            decision = self._decide(c, "image", requested, (capability,), blocked, local=local or "")
            if not decision.kept:
                raise self.gateway.attempts.nothing_kept(decision, blocked)
            first = self.gateway.catalog_and_config()[0][decision.kept[0].model]
            if first.local:  # a bad size for the local model is the caller's error, before any job exists
                spec = self._local_spec(first.name, "image", capability)
                task = replace(task, size=self._check_size(task.size, spec, "image"))
            elif task.size is None:
                task = replace(task, size=(1024, 1024))
        except TiqoError as exc:
            self._refused(row, exc, started)
            raise
        params = {
            "prompt": task.prompt,
            "model": task.model or first.name,
            "n": task.n,
            "size": f"{task.size[0]}x{task.size[1]}" if task.size else "",
            "seed": task.seed,
            "steps": task.steps,
            "edit": edit,
            "output_format": task.output_format,
        }
        work = functools.partial(self._make_images, task, decision, blocked, row, started)
        return await self.jobs.submit("image", meta.user, params, self._remembered(work))

    async def _make_images(
        self,
        task: ImageTask,
        decision: Decision,
        blocked: dict[str, bp.Charge],
        row: Any,
        started: float,
        handle: JobHandle,
    ) -> dict[str, Any]:
        served = Served(route=decision.source)

        async def local(m: CatalogModel) -> tuple[list[bytes], dict[str, Any]]:
            pictures, details = await self._local_images(m.name, task, handle)
            served.backend = f"local:{details['engine']}"
            return pictures, details

        async def external(
            m: CatalogModel, secret: str | None, provider: Any, call_id: str
        ) -> tuple[list[bytes], dict[str, Any]]:
            pictures = await self._call_images(m, task, secret, provider, call_id)
            served.cost_usd = m.price_image * len(pictures)
            handle.progress(1, 1, "image")
            return pictures, {"provider": m.provider}

        try:
            first = functools.partial(self._first, local=local, call=external, worst=lambda m: m.price_image * task.n)
            pictures, details = await first(decision, served, blocked, row.id)
            files = await asyncio.to_thread(save_pictures, pictures, task.output_format, handle.dir)
        except TiqoError as exc:
            self._refused(row, exc, started)
            if isinstance(exc, Cancelled):
                row.outcome = "cancelled"
            raise
        row.outcome = "ok"
        row.images, row.steps, row.device = len(files), int(details.get("steps") or 0), str(details.get("device", ""))
        self.accounting.finish(row, served, started)
        handle.note(model=served.model, backend=served.backend, **_public(details))
        return {"files": files, "cost_usd": served.cost_usd, "backend": served.backend, "model": served.model}

    async def _local_images(
        self, name: str, task: ImageTask, handle: JobHandle, progress: im.Progress | None = None
    ) -> tuple[list[bytes], dict[str, Any]]:
        spec = self._local_spec(name, "image", _capability(task))
        size = self._check_size(task.size, spec, "image")
        request = im.ImageRequest(
            prompt=task.prompt,
            width=size[0],
            height=size[1],
            n=task.n,
            steps=task.steps,
            seed=task.seed,
            negative_prompt=task.negative_prompt,
            guidance=task.guidance,
            image=task.image,
            mask=task.mask,
            strength=task.strength,
        )
        report = progress or (lambda step, total: handle.progress(step, total, "image"))
        result: im.ImageResult = await self._run_local(
            spec, handle, lambda runner, stop: runner.images(request, report, stop)
        )
        details = {"engine": spec.engine, "seed": result.seed, "steps": result.steps, "device": result.device}
        return result.images, {**details, "seconds": round(result.seconds, 3), **result.details}

    async def _run_local(self, spec: ModelSpec, handle: JobHandle, call: Callable[[Any, StopFlag], Any]) -> Any:
        """One blocking engine call in the model's slot. The job's stop flag is what the engine watches: cancelling
        the job, or this coroutine, stops it between steps."""

        def once(runner: Any, stop: StopFlag) -> Iterator[Any]:
            yield call(runner, handle.stop)

        results = self.daemon.generate(spec, None, once)
        try:
            async for result in results:
                return result
        except asyncio.CancelledError:
            handle.stop.set()
            raise
        finally:
            await results.aclose()
        raise TiqoError(f"{spec.name} returned nothing")

    async def _call_images(
        self, model: CatalogModel, task: ImageTask, secret: str | None, provider: Any, call_id: str
    ) -> list[bytes]:
        kind = provider.kind
        if task.image is not None:
            raise AttemptFailed("unsupported", "image edits are served by local models only")
        if kind is None or not hasattr(kind, "images_request"):
            raise AttemptFailed("unsupported", f"provider kind {provider.config.kind} has no images API")
        body: dict[str, Any] = {"prompt": task.prompt, "n": task.n}
        if task.size is not None:
            body["size"] = f"{task.size[0]}x{task.size[1]}"
        request = kind.images_request(provider.config, model.upstream_model or model.name, body, secret)
        request.headers["X-Client-Request-Id"] = call_id
        answer = await json_answer(self.gateway.upstream, request, provider, secret, "images")
        try:
            data = answer["data"]
            pictures = [base64.b64decode(d["b64_json"], validate=True) for d in data]
            if not pictures:
                raise ValueError("no images")
        except (ValueError, KeyError, TypeError) as exc:
            raise AttemptFailed("protocol", scrub(f"unusable images answer: {exc}", secret)) from None
        return pictures

    # ------------------------------------------------------------------ videos
    async def submit_video(self, task: VideoTask, meta: RequestMeta) -> Job:
        row, started = self._row(meta, "video")
        try:
            if task.narrate and task.audio is not None:
                raise BadRequest("give narrate or audio, not both", param="narrate")
            if task.narrate and self.narrate is None:
                raise BadRequest("narration needs a local voice", param="narrate", hint="`tiqo voices list`")
            self._check_steps(task.steps)
            texts = [task.prompt] + [t for t in (task.negative_prompt, task.narrate) if t]
            await self._admit(row, meta, "video", texts, len(task.prompt) // 4 + 1)
            requested = self._openai_name(task.model, OPENAI_VIDEO_MODELS)
            from_image = task.image is not None
            spec = self._video_spec(requested, from_image)
            if task.image is not None:
                given = await asyncio.to_thread(check_pictures, task.image, None, int(self.settings["image.max_side"]))
                if task.size is None:  # the video keeps the first frame's size (to a multiple of 8)
                    task = replace(task, size=(max(64, given[0] // 8 * 8), max(64, given[1] // 8 * 8)))
            size = self._check_size(task.size, spec, "video")
            fps = task.fps or int(spec.options.get("fps") or self.settings["video.fps"])
            frames = task.frames or (
                round(task.seconds * fps) if task.seconds else int(spec.options.get("frames") or 16)
            )
            most = int(self.settings["video.max_frames"])
            if not 1 <= fps <= 60 or not 2 <= frames <= most:
                raise BadRequest(
                    f"{frames} frames at {fps} fps: a video has 2 to {most} frames (video.max_frames), 1 to 60 fps",
                    param="seconds",
                    hint="ask for fewer seconds, or a lower fps",
                )
            if task.interpolate is not None and task.interpolate <= fps:
                raise BadRequest(
                    f"interpolate={task.interpolate} must be above the video's {fps} fps",
                    param="interpolate",
                    hint=f"e.g. interpolate={min(60, fps * 3)}",
                )
            first_frame = None
            if task.image is None and spec.options.get("task") == im.IMAGE_TO_VIDEO:
                first_frame = self._local_spec(task.image_model, "image", "image")
            task = replace(task, size=size, fps=fps, frames=frames)
        except TiqoError as exc:
            self._refused(row, exc, started)
            raise
        params = {
            "prompt": task.prompt,
            "model": spec.name,
            "seconds": round(frames / fps, 3),
            "size": f"{size[0]}x{size[1]}",
            "fps": task.interpolate or fps,
            "frames": frames,
            "seed": task.seed,
            "steps": task.steps,
            "narrated": bool(task.narrate or task.audio),
            "interpolate": task.interpolate,
            "upscale": task.upscale,
        }
        work = functools.partial(self._make_video, task, spec, first_frame, row, started)
        return await self.jobs.submit("video", meta.user, params, self._remembered(work))

    def _video_spec(self, requested: str | None, from_image: bool) -> ModelSpec:
        """A text-to-video model, or an image-to-video one: fed the given image, or a first frame the image model
        makes from the prompt (text -> image -> video)."""
        name = requested or self.settings["video.default_model"]
        if not name:  # the first video model that fits, preferring one that needs no first frame for a prompt
            models = self.registry.of_kind("video")
            wanted = "video-from-image" if from_image else "video"
            name = next((s.name for s in models if wanted in s.capabilities), models[0].name if models else None)
        if from_image:
            return self._local_spec(name, "video", "video-from-image")
        return self._local_spec(name, "video", "video", "video-from-image")

    async def _make_video(
        self,
        task: VideoTask,
        spec: ModelSpec,
        first_frame: ModelSpec | None,
        row: Any,
        started: float,
        handle: JobHandle,
    ) -> dict[str, Any]:
        from tiqo.daemon.media import video as mv

        assert task.size is not None and task.frames is not None and task.fps is not None
        plan = [("video", 100)]
        if first_frame is not None:
            plan.insert(0, ("image", 30))
        if task.narrate:
            plan.append(("narration", 10))
        plan.append(("encoding", 15))
        stages = _Stages(handle, plan)
        served = Served(route="local")
        try:
            image = task.image
            if first_frame is not None:
                shot = ImageTask(prompt=task.prompt, size=task.size, seed=task.seed, steps=task.steps)
                pictures, _ = await self._local_images(first_frame.name, shot, handle, stages.start("image"))
                image = pictures[0]
            request = im.VideoRequest(
                prompt=task.prompt,
                width=task.size[0],
                height=task.size[1],
                frames=task.frames,
                fps=task.fps,
                steps=task.steps,
                seed=task.seed,
                negative_prompt=task.negative_prompt,
                guidance=task.guidance,
                image=image,
            )
            progress = stages.start("video")
            made: im.VideoResult = await self._run_local(
                spec, handle, lambda runner, stop: runner.video(request, progress, stop)
            )
            audio = task.audio
            if task.narrate:
                stages.start("narration")
                assert self.narrate is not None
                audio = await self.narrate(task.narrate)
            handle.check()
            encode = stages.start("encoding")
            out = handle.dir / "video.mp4"
            info = await asyncio.to_thread(
                mv.encode_mp4,
                made.frames,
                made.fps,
                out,
                audio=audio,
                interpolate_fps=task.interpolate,
                upscale=task.upscale,
                stop=handle.stop,
                progress=encode,
                max_audio_seconds=float(self.settings["video.max_seconds"]),
            )
            thumb = await asyncio.to_thread(mv.thumbnail, made.frames)
            (handle.dir / "thumbnail.png").write_bytes(thumb)
            handle.progress(stages.total, stages.total, "done")
        except TiqoError as exc:
            self._refused(row, exc, started)
            if isinstance(exc, Cancelled):
                row.outcome = "cancelled"
            raise
        self._served_by(served, CatalogModel(name=spec.name, provider="local"), f"local:{spec.engine}", None)
        row.outcome = "ok"
        row.images, row.video_s, row.steps, row.device = info.frames, info.seconds, made.steps, made.device
        self.accounting.finish(row, served, started)
        meta = {"seed": made.seed, "steps": made.steps, "device": made.device, "model": spec.name}
        handle.note(**meta, video=_public(info.__dict__), made_in_s=round(made.seconds, 3))
        return {"files": {"video": "video.mp4", "thumbnail": "thumbnail.png"}, **_public(info.__dict__)}

    # ------------------------------------------------------------------ waiting
    def _remembered(self, work: Callable[[JobHandle], Awaitable[dict[str, Any]]]) -> Any:
        async def run(handle: JobHandle) -> dict[str, Any]:
            try:
                return await work(handle)
            except TiqoError as exc:
                self._failures[handle.id] = exc
                raise

        return run

    async def finished(self, job: Job, user: str) -> Job:
        """Wait for a job the caller just submitted; its error, with the status and hint it was raised with."""
        done = await self.jobs.wait(job.id, user, None)
        error = self._failures.pop(job.id, None)
        if done.status == "completed":
            return done
        if error is not None:
            raise error
        raise TiqoError(f"the job {done.status}: {(done.error or {}).get('message', '')}", code="job_failed")


def _capability(task: ImageTask) -> str:
    return "inpaint" if task.mask is not None else "image-edit" if task.image is not None else "image"


def _public(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if isinstance(v, (str, int, float, bool)) or v is None}
