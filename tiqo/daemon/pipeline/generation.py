"""What image and video generation share: jobs run on local diffusion models, their defaults and bounds, and the
caller that waits on a job it just submitted. ``services/images`` and ``services/videos`` build on it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypedDict, TypeVar

from tiqo.core.errors import BadRequest, NotFound, TiqoError
from tiqo.daemon.media.pictures import check_pictures
from tiqo.daemon.pipeline.dispatch import Dispatch
from tiqo.daemon.pipeline.ports import LocalCompute
from tiqo.daemon.pipeline.router import Router
from tiqo.daemon.runtime.jobs import Job, JobHandle, Jobs
from tiqo.sdk import imaging as im
from tiqo.sdk.engine import ModelSpec, StopFlag

Work = Callable[[JobHandle], Awaitable[dict[str, Any]]]
REMEMBERED = 256  # failed jobs whose exception (status, hint) a waiting caller may still collect


@dataclass(frozen=True)
class GenerationTask:
    """What an image request and a video request both carry; ``image`` is a picture to start from (an edit, or a
    video's first frame)."""

    prompt: str
    model: str | None = None
    size: tuple[int, int] | None = None
    seed: int | None = None
    steps: int | None = None
    negative_prompt: str | None = None
    guidance: float | None = None
    image: bytes | None = None

    def sampling(self, size: tuple[int, int]) -> Sampling:
        """What an image runner's and a video runner's request both take from the task, at the size checked for the
        model."""
        return Sampling(
            prompt=self.prompt,
            width=size[0],
            height=size[1],
            steps=self.steps,
            seed=self.seed,
            negative_prompt=self.negative_prompt,
            guidance=self.guidance,
        )


class Sampling(TypedDict):
    prompt: str
    width: int
    height: int
    steps: int | None
    seed: int | None
    negative_prompt: str | None
    guidance: float | None


Task = TypeVar("Task", bound=GenerationTask)


@dataclass
class Stages:
    """Maps each stage's own steps onto one rising progress for the whole job."""

    handle: JobHandle
    plan: list[tuple[str, int]]  # (stage, weight in steps)

    @property
    def total(self) -> int:
        return sum(w for _, w in self.plan)

    def start(self, stage: str) -> im.Progress:
        offset = sum(w for s, w in self.plan[: [s for s, _ in self.plan].index(stage)])
        weight = dict(self.plan)[stage]

        def progress(step: int, total: int) -> None:
            scaled = offset + min(weight, round(step * weight / max(1, total)))
            self.handle.progress(scaled, self.total, stage)

        self.handle.progress(offset, self.total, stage)
        return progress


class Generation(Dispatch):
    def __init__(self, gateway: Router, local: LocalCompute, jobs: Jobs) -> None:
        super().__init__(gateway, local)
        self.jobs = jobs
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

    async def _fit_to_picture(self, task: Task, mask: bytes | None = None) -> Task:
        """Check the uploaded picture (and mask); a task without a size takes the picture's, to a multiple of 8 (as
        OpenAI's edits do)."""
        assert task.image is not None
        given = await asyncio.to_thread(check_pictures, task.image, mask, int(self.settings["image.max_side"]))
        if task.size is None:
            task = replace(task, size=(max(64, given[0] // 8 * 8), max(64, given[1] // 8 * 8)))
        return task

    async def _run_local(
        self, spec: ModelSpec, handle: JobHandle, call: Callable[[im.ImageRunner, StopFlag], Any]
    ) -> Any:
        """One blocking engine call in the model's slot. The job's stop flag is what the engine watches: cancelling
        the job, or this coroutine, stops it between steps."""

        def once(runner: im.ImageRunner, stop: StopFlag) -> Iterator[Any]:
            yield call(runner, handle.stop)

        results = self.compute.generate(spec, None, once)
        try:
            async for result in results:
                return result
        except asyncio.CancelledError:
            handle.stop.set()
            raise
        finally:
            await results.aclose()
        raise TiqoError(f"{spec.name} returned nothing")

    # ------------------------------------------------------------------ waiting
    def _remembered(self, work: Work) -> Work:
        async def run(handle: JobHandle) -> dict[str, Any]:
            try:
                return await work(handle)
            except TiqoError as exc:
                self._failures[handle.id] = exc
                while len(self._failures) > REMEMBERED:  # nobody waits on most jobs: keep only the newest
                    self._failures.pop(next(iter(self._failures)))
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


def public(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if isinstance(v, (str, int, float, bool)) or v is None}
