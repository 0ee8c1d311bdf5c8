"""Videos: ``/v1/videos`` as jobs, in stages that share one rising progress: a first frame from the image model when
an image-to-video model gets no picture (text -> image -> video), the video model's frames, the narration (the local
voice) and the mp4 (``media/video``: H.264, AAC, ffmpeg's motion interpolation and Lanczos scaling when asked).
Local models only; classified, rate limited and written to the ledger like every request."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tiqo.core.errors import BadRequest, Cancelled, TiqoError
from tiqo.daemon.accounting.records import RequestRow
from tiqo.daemon.pipeline.generation import Generation, GenerationTask, Stages, public
from tiqo.daemon.pipeline.ports import LocalCompute
from tiqo.daemon.pipeline.router import Router
from tiqo.daemon.pipeline.served import RequestMeta, Served
from tiqo.daemon.runtime.jobs import Job, JobHandle, Jobs
from tiqo.policy.routing import CatalogModel
from tiqo.protocol.images import OPENAI_VIDEO_MODELS
from tiqo.sdk import imaging as im
from tiqo.sdk.engine import ModelSpec

if TYPE_CHECKING:  # numpy and PyAV: imported when a video is encoded, not when the daemon starts
    from tiqo.daemon.media.video import VideoInfo

Narrator = Callable[[str], Awaitable[bytes]]  # text -> WAV bytes, spoken by the local voice


# (image model, the video's task, its job, the image stage's progress) -> the first frame as PNG bytes, made with a
# local image model (``Images.first_frame``)
FirstFrame = Callable[[str, GenerationTask, JobHandle, im.Progress], Awaitable[bytes]]


@dataclass(frozen=True)
class VideoTask(GenerationTask):
    """One ``/v1/videos`` request. ``seconds * fps`` frames unless ``frames`` is given; ``image`` is OpenAI's
    ``input_reference``; ``narrate`` is text for the local voice, ``audio`` a sound track (either, not both)."""

    seconds: float | None = None
    fps: int | None = None
    frames: int | None = None
    image_model: str | None = None
    narrate: str | None = None
    audio: bytes | None = None
    interpolate: int | None = None
    upscale: int | None = None


class Videos(Generation):
    def __init__(
        self, gateway: Router, local: LocalCompute, jobs: Jobs, first_frame: FirstFrame, narrate: Narrator | None
    ) -> None:
        super().__init__(gateway, local, jobs)
        self.first_frame = first_frame
        self.narrate = narrate

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
            if task.image is not None:  # the video keeps the first frame's size (to a multiple of 8)
                task = await self._fit_to_picture(task)
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
            image_model = None
            if task.image is None and spec.options.get("task") == im.IMAGE_TO_VIDEO:
                image_model = self._local_spec(task.image_model, "image", "image")
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
        work = functools.partial(self._make_video, task, spec, image_model, row, started)
        return await self.jobs.submit("video", meta.user, params, work)

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
        image_model: ModelSpec | None,
        row: RequestRow,
        started: float,
        handle: JobHandle,
    ) -> dict[str, Any]:
        """The job: frames (after a first frame, when one is needed), sound, the mp4; then the ledger row."""
        stages = Stages(handle, _plan(task, image_model))
        try:
            made = await self._frames(task, spec, image_model, handle, stages)
            audio = await self._sound(task, stages)
            handle.check()
            info = await self._encode(task, made, audio, handle, stages)
            handle.progress(stages.total, stages.total, "done")
        except TiqoError as exc:
            self._refused(row, exc, started)
            if isinstance(exc, Cancelled):
                row.outcome = "cancelled"
            raise
        self._record(row, spec, made, info, started)
        meta = {"seed": made.seed, "steps": made.steps, "device": made.device, "model": spec.name}
        handle.note(**meta, video=public(info.__dict__), made_in_s=round(made.seconds, 3))
        return {"files": {"video": "video.mp4", "thumbnail": "thumbnail.png"}, **public(info.__dict__)}

    async def _frames(
        self, task: VideoTask, spec: ModelSpec, image_model: ModelSpec | None, handle: JobHandle, stages: Stages
    ) -> im.VideoResult:
        """The video model's frames, from the given picture, a first frame the image model makes, or the prompt."""
        assert task.size is not None and task.frames is not None and task.fps is not None
        image = task.image
        if image_model is not None:
            image = await self.first_frame(image_model.name, task, handle, stages.start("image"))
        request = im.VideoRequest(**task.sampling(task.size), frames=task.frames, fps=task.fps, image=image)
        progress = stages.start("video")
        made: im.VideoResult = await self._run_local(
            spec, handle, lambda runner, stop: runner.video(request, progress, stop)
        )
        return made

    async def _sound(self, task: VideoTask, stages: Stages) -> bytes | None:
        """The sound track: the narration spoken by the local voice, or the audio given."""
        if not task.narrate:
            return task.audio
        stages.start("narration")
        assert self.narrate is not None
        return await self.narrate(task.narrate)

    async def _encode(
        self, task: VideoTask, made: im.VideoResult, audio: bytes | None, handle: JobHandle, stages: Stages
    ) -> VideoInfo:
        """``video.mp4`` and ``thumbnail.png`` in the job's folder (numpy and PyAV work: in a thread)."""
        from tiqo.daemon.media import video as mv

        encode = stages.start("encoding")
        info = await asyncio.to_thread(
            mv.encode_mp4,
            made.frames,
            made.fps,
            handle.dir / "video.mp4",
            audio=audio,
            interpolate_fps=task.interpolate,
            upscale=task.upscale,
            stop=handle.stop,
            progress=encode,
            max_audio_seconds=float(self.settings["video.max_seconds"]),
        )
        thumb = await asyncio.to_thread(mv.thumbnail, made.frames)
        (handle.dir / "thumbnail.png").write_bytes(thumb)
        return info

    def _record(self, row: RequestRow, spec: ModelSpec, made: im.VideoResult, info: VideoInfo, started: float) -> None:
        served = Served(route="local")
        self._served_by(served, CatalogModel(name=spec.name, provider="local"), f"local:{spec.engine}", None)
        row.outcome = "ok"
        row.images, row.video_s, row.steps, row.device = info.frames, info.seconds, made.steps, made.device
        self.accounting.finish(row, served, started)


def _plan(task: VideoTask, image_model: ModelSpec | None) -> list[tuple[str, int]]:
    """The job's stages and their weights in its one progress bar."""
    plan = [("video", 100)]
    if image_model is not None:
        plan.insert(0, ("image", 30))
    if task.narrate:
        plan.append(("narration", 10))
    plan.append(("encoding", 15))
    return plan
