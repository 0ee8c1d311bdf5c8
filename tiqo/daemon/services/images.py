"""Images: ``/v1/images/*`` through the same policy as every other modality (classification, rate limits, routing
with the local model last, budgets for external image providers, one ledger row per request), run as jobs
(``runtime/jobs``): persisted, owned by their user, with progress, cancellable between steps. Videos are
``services/videos``; the root hands them ``Images.first_frame``."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from dataclasses import dataclass, replace
from typing import Any

from tiqo.core.errors import BadRequest, Cancelled, TiqoError
from tiqo.daemon.accounting.records import RequestRow
from tiqo.daemon.media.pictures import save_pictures
from tiqo.daemon.pipeline.generation import Generation, GenerationTask, public
from tiqo.daemon.pipeline.served import RequestMeta, Served
from tiqo.daemon.runtime.jobs import Job, JobHandle
from tiqo.daemon.upstream.client import AttemptFailed
from tiqo.daemon.upstream.external import json_answer, scrub
from tiqo.policy import budget as bp
from tiqo.policy.routing import CatalogModel, Decision
from tiqo.protocol.images import OPENAI_IMAGE_MODELS
from tiqo.sdk import imaging as im

log = logging.getLogger("tiqo.images")


@dataclass(frozen=True)
class ImageTask(GenerationTask):
    """One ``/v1/images/generations`` or ``/v1/images/edits`` request, checked by the route."""

    n: int = 1
    output_format: str = "png"
    mask: bytes | None = None
    strength: float | None = None


class Images(Generation):
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
                task = await self._fit_to_picture(task, task.mask)
            elif task.mask is not None:
                raise BadRequest("a mask needs an image to repaint", param="mask")
            texts = [task.prompt] + ([task.negative_prompt] if task.negative_prompt else [])
            c, _ = await self._admit(row, meta, "image", texts, len(task.prompt) // 4 + 1)
            capability = _capability(task)
            requested = self._openai_name(task.model, OPENAI_IMAGE_MODELS)
            blocked: dict[str, bp.Charge] = {}
            local = self.default_model("image", capability)
            catalog, config = self.gateway.catalog_and_config()
            if requested is None and local is None and "image" not in config.routes:
                self._local_spec(None, "image", capability)  # raises: no image model is registered, and how to add one
            decision = self._decide(c, "image", requested, (capability,), blocked, local=local or "")
            if not decision.kept:
                raise self.gateway.attempts.nothing_kept(decision, blocked)
            first = catalog[decision.kept[0].model]
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
        row: RequestRow,
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
        handle.note(model=served.model, backend=served.backend, **public(details))
        return {"files": files, "cost_usd": served.cost_usd, "backend": served.backend, "model": served.model}

    async def _local_images(
        self, name: str, task: ImageTask, handle: JobHandle, progress: im.Progress | None = None
    ) -> tuple[list[bytes], dict[str, Any]]:
        spec = self._local_spec(name, "image", _capability(task))
        size = self._check_size(task.size, spec, "image")
        request = im.ImageRequest(
            **task.sampling(size), n=task.n, image=task.image, mask=task.mask, strength=task.strength
        )
        report = progress or (lambda step, total: handle.progress(step, total, "image"))
        result: im.ImageResult = await self._run_local(
            spec, handle, lambda runner, stop: runner.images(request, report, stop)
        )
        details = {"engine": spec.engine, "seed": result.seed, "steps": result.steps, "device": result.device}
        return result.images, {**details, "seconds": round(result.seconds, 3), **result.details}

    async def first_frame(self, model: str, task: GenerationTask, handle: JobHandle, progress: im.Progress) -> bytes:
        """A video's first frame, made by the image model inside the video's job (``services.videos.FirstFrame``)
        from the video's prompt, size, seed and steps."""
        shot = ImageTask(prompt=task.prompt, size=task.size, seed=task.seed, steps=task.steps)
        pictures, _ = await self._local_images(model, shot, handle, progress)
        return pictures[0]

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


def _capability(task: ImageTask) -> str:
    return "inpaint" if task.mask is not None else "image-edit" if task.image is not None else "image"
