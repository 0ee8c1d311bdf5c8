"""The process that holds one diffusers pipeline (spawned by ``diffusion.DiffusionRunner``).

torch and diffusers are imported here, in the worker, never in the daemon: a crash, an out-of-memory kill or a
``kill -9`` takes this process down and fails one job, and unloading the model gives all of its memory back.

Protocol on the Pipe: the daemon sends ``("images", ImageRequest)``, ``("video", VideoRequest)`` or ``("close",)``;
the worker answers ``("ready", details)`` once loaded, then per request ``("progress", done, total)`` after every
step and one ``("result", ImageResult | VideoResult)`` or ``("error", {...})``. The daemon sets ``cancel`` to stop a
request; the step callback sees it and the request ends with ``Cancelled`` within one step.
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import secrets
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from tiqo.core.errors import BadRequest, Cancelled, TiqoError
from tiqo.sdk.imaging import (
    IMAGE_TO_IMAGE,
    IMAGE_TO_VIDEO,
    INPAINTING,
    TEXT_TO_IMAGE,
    ImageRequest,
    ImageResult,
    VideoRequest,
    VideoResult,
)

log = logging.getLogger("tiqo.engine.diffusers.worker")
MAX_SIDE = 4096  # pixels; also the largest input picture the worker decodes (the service checks first)
MAX_INPUT_PIXELS = 64 * 1024 * 1024
DEFAULT_STEPS = {"image": 25, "video": 25}
_VRAM_MARGIN = 1.25  # weights x this must fit free VRAM to run without offloading


def serve(conn: Connection, cancel: Event, path: str, options: dict[str, Any]) -> None:
    """Entry point of the spawned worker: load, say ready, answer requests until closed or the daemon goes away."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded at run time
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bars in the daemon log
    try:
        worker = Worker(Path(path), options, cancel)
    except BaseException as exc:  # every load failure goes back to the daemon as a message
        conn.send(("error", _error_payload(exc, "loading")))
        return
    conn.send(("ready", worker.details))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the daemon closed the pipe or died: nothing left to serve
            return
        if message[0] == "close":
            return
        try:
            done = worker.run(message[0], message[1], lambda i, n: conn.send(("progress", i, n)))
            conn.send(("result", done))
        except BaseException as exc:  # the daemon turns the payload back into the error
            conn.send(("error", _error_payload(exc, message[0])))


def _error_payload(exc: BaseException, what: str) -> dict[str, Any]:
    if isinstance(exc, TiqoError):
        return {"cls": type(exc).__name__, "message": exc.message, "hint": exc.hint, "param": exc.param}
    if type(exc).__name__ == "OutOfMemoryError":
        return {
            "cls": "TiqoError",
            "message": f"the accelerator ran out of memory while {what}: {exc}",
            "hint": "ask for a smaller size or fewer frames, or set `tiqo config set image.device cpu`",
        }
    log.exception("diffusers %s failed", what)
    return {
        "cls": "TiqoError",
        "message": f"the diffusers pipeline failed while {what}: {type(exc).__name__}: {exc}",
        "hint": "details in `tiqo daemon logs`",
    }


class _Stop(Exception):
    """Raised from the step callback when the daemon set the cancel event."""


class Worker:
    def __init__(self, path: Path, options: dict[str, Any], cancel: Event) -> None:
        import torch

        threads = int(options.get("n_threads") or 1)
        torch.set_num_threads(threads)
        import diffusers
        from diffusers.utils import logging as dlogging

        dlogging.set_verbosity_error()
        dlogging.disable_progress_bar()
        self.cancel = cancel
        self.task = str(options["task"])
        self.kind = str(options.get("kind", "image"))
        self.default_steps = int(options.get("steps") or DEFAULT_STEPS.get(self.kind, 25))
        wanted = str(options.get("device") or "auto")
        self.device = "cuda" if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()) else "cpu"
        dtype_name = options.get("dtype") or ("float16" if self.device == "cuda" else "float32")
        self.dtype = getattr(torch, str(dtype_name))
        started = time.perf_counter()
        pipeline = str(options.get("pipeline") or "StableDiffusionPipeline")
        if path.is_file():
            cls = getattr(diffusers, pipeline)
            extra = {"config": str(options["config"])} if options.get("config") else {}
            self.pipe = cls.from_single_file(str(path), dtype=self.dtype, local_files_only=True, **extra)
        else:
            load = diffusers.DiffusionPipeline.from_pretrained
            self.pipe = load(path, dtype=self.dtype, local_files_only=True)  # type: ignore[no-untyped-call]  # untyped
        self.pipe.set_progress_bar_config(disable=True)
        self.memory_mode = self._place(torch, int(options.get("weight_bytes") or 0))
        self._derived: dict[str, Any] = {}
        self.details = {
            "pid": os.getpid(),
            "pipeline": type(self.pipe).__name__,
            "task": self.task,
            "device": self.device,
            "dtype": str(dtype_name),
            "n_threads": threads,
            "memory_mode": self.memory_mode,
            "default_steps": self.default_steps,
            "load_seconds_in_worker": round(time.perf_counter() - started, 3),
        }

    def _place(self, torch: Any, weight_bytes: int) -> str:
        """Move the pipeline to the device; on CUDA, save memory when free VRAM is short (measured, not guessed)."""
        if self.device != "cuda":
            return "cpu"
        free, _total = torch.cuda.mem_get_info()
        need = weight_bytes * (2 if self.dtype == torch.float32 else 1)
        mode = "gpu"
        if need * _VRAM_MARGIN > free:
            self.pipe.enable_model_cpu_offload()  # components visit the GPU one at a time
            mode = "model-cpu-offload"
        else:
            self.pipe.to("cuda")
        if need * 2 > free:  # little room for activations: slice attention, decode the VAE in tiles
            self.pipe.enable_attention_slicing()
            if hasattr(self.pipe, "enable_vae_tiling"):
                self.pipe.enable_vae_tiling()
            mode += "+slicing"
        return mode

    # ------------------------------------------------------------------ requests
    def run(self, what: str, request: Any, progress: Any) -> ImageResult | VideoResult:
        if self.cancel.is_set():
            raise Cancelled("cancelled before the first step")
        if what == "images":
            return self.images(request, progress)
        if what == "video":
            return self.video(request, progress)
        raise BadRequest(f"unknown worker request {what!r}")

    def _generator(self, seed: int | None) -> tuple[Any, int]:
        import torch

        seed = secrets.randbits(32) if seed is None else int(seed)
        return torch.Generator(self.device).manual_seed(seed), seed

    def _callbacks(self, pipe: Any, total: int, progress: Any) -> dict[str, Any]:
        """Step callbacks for ``pipe``: the modern ``callback_on_step_end`` or the legacy ``callback`` (T2V-SD)."""
        params = inspect.signature(pipe.__call__).parameters

        def step(done: int) -> None:
            if self.cancel.is_set():
                raise _Stop
            progress(done, max(total, done))

        if "callback_on_step_end" in params:

            def on_end(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                step(i + 1)
                return kwargs

            return {"callback_on_step_end": on_end}
        if "callback" in params:
            return {"callback": lambda i, t, latents: step(i + 1), "callback_steps": 1}
        return {}

    def _call(self, pipe: Any, total: int, progress: Any, **kwargs: Any) -> Any:
        try:
            return pipe(**kwargs, **self._callbacks(pipe, total, progress))
        except _Stop:
            raise Cancelled("cancelled", hint="the job stopped between two steps; nothing was kept") from None

    def images(self, r: ImageRequest, progress: Any) -> ImageResult:
        started = time.perf_counter()
        steps = r.steps or self.default_steps
        generator, seed = self._generator(r.seed)
        kwargs: dict[str, Any] = {
            "prompt": r.prompt,
            "num_inference_steps": steps,
            "num_images_per_prompt": r.n,
            "generator": generator,
            "negative_prompt": r.negative_prompt,
        }
        if r.guidance is not None:
            kwargs["guidance_scale"] = r.guidance
        pipe, total = self._image_pipe(r, kwargs, steps)
        out = self._call(pipe, total, progress, **kwargs)
        pngs = []
        for picture in out.images:
            buf = io.BytesIO()
            picture.save(buf, format="PNG")
            pngs.append(buf.getvalue())
        return ImageResult(
            pngs, seed, total, self._device_name(), time.perf_counter() - started, {"pipeline": type(pipe).__name__}
        )

    def _image_pipe(self, r: ImageRequest, kwargs: dict[str, Any], steps: int) -> tuple[Any, int]:
        """The pipeline for this request and its real step count (image-to-image runs ``steps * strength``)."""
        size = (r.width, r.height)
        if self.task == INPAINTING or (r.mask is not None and self.task == TEXT_TO_IMAGE):
            if r.image is None or r.mask is None:
                raise BadRequest(
                    "this is an inpainting model: it needs an image and a mask",
                    param="mask",
                    hint="send the picture and a mask (white where it is repainted), or pick a text-to-image model",
                )
            picture = decode_image(r.image, "image")
            mask = decode_image(r.mask, "mask", mode="L")
            if mask.size != picture.size:
                raise BadRequest(
                    f"the mask is {mask.size[0]}x{mask.size[1]} but the image is {picture.size[0]}x{picture.size[1]}",
                    param="mask",
                    hint="make the mask exactly the size of the image",
                )
            kwargs.update(image=picture.resize(size), mask_image=mask.resize(size), width=r.width, height=r.height)
            if r.strength is not None:
                kwargs["strength"] = r.strength
            return self._derive("inpaint"), _strength_steps(steps, r.strength)
        if self.task == IMAGE_TO_IMAGE or r.image is not None:
            if r.image is None:
                raise BadRequest(
                    "this is an image-to-image model: it needs an input image",
                    param="image",
                    hint="send the picture to change (`tiqo image --image IN.png`), or pick a text-to-image model",
                )
            if r.mask is not None:
                raise BadRequest(
                    "this image-to-image model does not inpaint (its weights cannot take a mask)",
                    param="mask",
                    hint="leave out the mask, or pick a text-to-image or inpainting model",
                )
            kwargs["image"] = decode_image(r.image, "image").resize(size)
            strength = 0.8 if r.strength is None else r.strength
            kwargs["strength"] = strength
            return self._derive("img2img"), _strength_steps(steps, strength)
        kwargs.update(width=r.width, height=r.height)
        return self.pipe, steps

    def _derive(self, how: str) -> Any:
        """img2img / inpaint pipelines sharing this one's modules (``from_pipe``: no extra weights in memory)."""
        if how in self._derived:
            return self._derived[how]
        if (self.task, how) in ((IMAGE_TO_IMAGE, "img2img"), (INPAINTING, "inpaint")):
            return self.pipe  # the loaded pipeline is already the right one
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        auto = AutoPipelineForInpainting if how == "inpaint" else AutoPipelineForImage2Image
        try:
            pipe = auto.from_pipe(self.pipe)
        except ValueError as exc:
            raise BadRequest(
                f"{type(self.pipe).__name__} cannot be used for {how}: {exc}",
                param="image",
                hint="register a model made for it (an Img2Img or Inpaint pipeline folder)",
            ) from None
        pipe.set_progress_bar_config(disable=True)
        self._derived[how] = pipe
        return pipe

    def video(self, r: VideoRequest, progress: Any) -> VideoResult:
        import numpy as np

        started = time.perf_counter()
        steps = r.steps or self.default_steps
        generator, seed = self._generator(r.seed)
        params = inspect.signature(self.pipe.__call__).parameters
        kwargs: dict[str, Any] = {
            "num_inference_steps": steps,
            "num_frames": r.frames,
            "generator": generator,
            "width": r.width,
            "height": r.height,
            "output_type": "np",
        }
        if "prompt" in params:
            kwargs["prompt"] = r.prompt
        if "negative_prompt" in params and r.negative_prompt:
            kwargs["negative_prompt"] = r.negative_prompt
        if r.guidance is not None and "guidance_scale" in params:
            kwargs["guidance_scale"] = r.guidance
        if self.task == IMAGE_TO_VIDEO:
            if r.image is None:
                raise BadRequest(
                    "this is an image-to-video model: it needs a first image",
                    param="input_reference",
                    hint="send a picture (`tiqo video --image IN.png`), or pick a text-to-video model",
                )
            kwargs["image"] = decode_image(r.image, "input_reference").resize((r.width, r.height))
            if "fps" in params:
                kwargs["fps"] = r.fps  # SVD conditions on it
            if "decode_chunk_size" in params:
                kwargs["decode_chunk_size"] = min(r.frames, 8)  # bounds the VAE's memory
        out = self._call(self.pipe, steps, progress, **kwargs)
        frames = np.asarray(out.frames[0])
        if frames.dtype != np.uint8:
            frames = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
        return VideoResult(
            frames,
            r.fps,
            seed,
            steps,
            self._device_name(),
            time.perf_counter() - started,
            {"pipeline": type(self.pipe).__name__},
        )

    def _device_name(self) -> str:
        return "cuda:0" if self.device == "cuda" else "cpu"


def _strength_steps(steps: int, strength: float | None) -> int:
    """Denoising steps an img2img/inpaint call really runs (diffusers skips the first ``1 - strength`` of them)."""
    if strength is None:
        return steps
    return max(1, min(steps, int(steps * strength)))


def decode_image(data: bytes, param: str, mode: str = "RGB") -> Any:
    """A PIL image from PNG/JPEG/WebP bytes; 400 for anything that is not a picture or is absurdly large."""
    from PIL import Image, UnidentifiedImageError

    try:
        picture = Image.open(io.BytesIO(data))  # reads the header only: the size is known before decoding
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadRequest(
            f"the {param} is not an image PIL can read ({exc})",
            param=param,
            hint="send a PNG, JPEG or WebP file",
        ) from None
    width, height = picture.size
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_INPUT_PIXELS:
        raise BadRequest(
            f"the {param} is {width}x{height}; the largest accepted is {MAX_SIDE}x{MAX_SIDE}",
            param=param,
            hint="scale the picture down first (e.g. `ffmpeg -i in.png -vf scale=1024:-8 out.png`)",
        )
    try:
        return picture.convert(mode)
    except (OSError, ValueError) as exc:
        raise BadRequest(f"the {param} could not be decoded ({exc})", param=param, hint="send a whole file") from None
