"""Image and video generation with diffusers, one spawned worker process per loaded model.

Why a process and not a thread (measured, see bench/diffusion.py): a step through the worker costs the same as in
the daemon's own process (the Pipe carries a few bytes per step), while a process gives what a thread cannot: a
crash, an out-of-memory kill or ``kill -9`` fails one request with ``WorkerDied`` and the daemon keeps serving, and
unloading returns every byte (torch's allocator and glibc keep freed memory in a process that lives on). torch and
diffusers are imported in the worker only (~5-10 s), never in the daemon.

This module is the daemon's side: a thin proxy that forwards requests, progress and cancellation. The worker's side
is ``diffusion_worker``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
from collections.abc import Mapping
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiqo.core.errors import BadRequest, Cancelled, ModelLoadFailed, TiqoError, WorkerDied
from tiqo.daemon.catalog.diffusion_check import DiffusionInfo, capabilities, inspect, is_diffusers_dir
from tiqo.sdk.engine import ModelSpec, Recognised, StopFlag
from tiqo.sdk.imaging import (
    IMAGE_TO_VIDEO,
    TEXT_TO_VIDEO,
    ImageRequest,
    ImageResult,
    ImageRunner,
    Progress,
    VideoRequest,
    VideoResult,
)

if TYPE_CHECKING:
    from tiqo.core.settings import Settings

log = logging.getLogger("tiqo.engine.diffusers")

# A worker with torch + diffusers imported and nothing loaded: ~450 MB RSS measured here (bench/diffusion.py).
WORKER_BASE = 512 * 1024 * 1024
ACTIVATION_SHARE = 0.25  # of the weights in memory: latents, attention, the VAE decode at 512-1024 px
_ERRORS: dict[str, type[TiqoError]] = {"BadRequest": BadRequest, "Cancelled": Cancelled, "TiqoError": TiqoError}
_POLL = 0.05  # seconds between checks of the stop flag while the worker computes


def memory_estimate(info: DiffusionInfo, device: str, dtype: str | None = None) -> int:
    """Bytes a loaded model takes: its weights as they will sit in memory, a share for activations, the worker.

    Weights are converted on load: float16 files run as float32 on CPU (twice their size), float32 files run as
    float16 on CUDA (half). The worker's own RSS (Python, torch, diffusers) counts on every device: it is host memory.
    """
    in_memory = info.weight_bytes
    wants_half = (dtype or ("float16" if device == "cuda" else "float32")) in ("float16", "bfloat16")
    if info.half_weights and not wants_half:
        in_memory *= 2
    elif not info.half_weights and wants_half:
        in_memory //= 2
    return int(in_memory * (1 + ACTIVATION_SHARE)) + WORKER_BASE


class DiffusionRunner:
    """The daemon's handle on one worker. One request at a time (the scheduler gives it one slot)."""

    def __init__(self, spec: ModelSpec, options: dict[str, Any], info: DiffusionInfo) -> None:
        from tiqo.daemon.runtime.engines.diffusion_worker import serve

        self.name = spec.name
        self.task = info.task
        self.broken = False  # set when the worker died: the scheduler drops this runner and loads a fresh one
        ctx = multiprocessing.get_context("spawn")  # a fork would copy the daemon's threads and locks
        self._conn, child = ctx.Pipe()
        self._cancel = ctx.Event()
        plain = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool)) or v is None}
        plain.update(task=info.task, kind=info.kind, pipeline=info.pipeline_class, weight_bytes=info.weight_bytes)
        self._proc = ctx.Process(
            target=serve, args=(child, self._cancel, str(info.path), plain), name=f"tiqo-diffusers-{spec.name}"
        )
        self._proc.daemon = True  # never outlives the daemon
        self._proc.start()
        child.close()
        try:
            _kind, payload = self._receive(None, None, "loading")
        except TiqoError as exc:
            self.close()
            raise ModelLoadFailed(f"could not load {spec.name}: {exc.message}", hint=exc.hint) from None
        self.pid = self._proc.pid
        self.details: dict[str, Any] = {**payload, "worker": "process"}

    # -------------------------------------------------------------- requests
    def images(self, request: ImageRequest, progress: Progress, stop: StopFlag) -> ImageResult:
        if self.task in (IMAGE_TO_VIDEO, TEXT_TO_VIDEO):
            raise BadRequest(
                f"{self.name} makes videos, not images", param="model", hint="pick an image model for /v1/images"
            )
        result = self._request("images", request, progress, stop)
        assert isinstance(result, ImageResult)
        return result

    def video(self, request: VideoRequest, progress: Progress, stop: StopFlag) -> VideoResult:
        if self.task not in (IMAGE_TO_VIDEO, TEXT_TO_VIDEO):
            raise BadRequest(
                f"{self.name} makes images, not videos", param="model", hint="pick a video model for /v1/videos"
            )
        result = self._request("video", request, progress, stop)
        assert isinstance(result, VideoResult)
        return result

    def _request(self, what: str, request: Any, progress: Progress, stop: StopFlag) -> Any:
        if self.broken:
            raise WorkerDied(f"the worker of {self.name} is gone", hint="retry: the next request starts a fresh one")
        self._cancel.clear()
        try:
            self._conn.send((what, request))
        except (BrokenPipeError, OSError):
            self._died("before the request")
        return self._receive(progress, stop, what)[1]

    def _receive(self, progress: Progress | None, stop: StopFlag | None, what: str) -> tuple[str, Any]:
        """Wait for the worker's final answer, forwarding progress and the stop flag; a dead worker -> WorkerDied."""
        while True:
            if stop is not None and stop.is_set() and not self._cancel.is_set():
                self._cancel.set()  # the worker checks it after every step
            ready = wait([self._conn, self._proc.sentinel], timeout=_POLL)
            if not ready:
                continue
            if self._conn not in ready and not self._conn.poll():  # only the process ended, with nothing said
                self._died(what)
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                self._died(what)
            kind = message[0]
            if kind == "progress":
                if progress is not None:
                    progress(message[1], message[2])
                continue
            if kind == "error":
                payload = message[1]
                cls = _ERRORS.get(payload.get("cls", ""), TiqoError)
                raise cls(payload["message"], hint=payload.get("hint"), param=payload.get("param"))
            return kind, message[1]

    def _died(self, what: str) -> Any:
        self.broken = True
        self._proc.join(2)
        code = self._proc.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if code == -signal.SIGKILL:
                how += " (out of memory, or killed)"
        else:
            how = f"exit code {code}"
        log.error("the worker of %s (pid %s) died while %s: %s", self.name, self._proc.pid, what, how)
        raise WorkerDied(
            f"the worker process of {self.name} died while {what} ({how}); this request is lost",
            hint="retry: the next request starts a fresh worker; if it happens again, lower the size or frames, "
            "or check `tiqo daemon logs`",
        )

    def worker_rss(self) -> int:
        """Resident memory of the worker process (0 once it is gone)."""
        import psutil

        try:
            return int(psutil.Process(self._proc.pid).memory_info().rss)
        except (psutil.Error, TypeError):
            return 0

    def close(self) -> None:
        """Stop the worker; its memory goes back to the OS with it."""
        if self._proc.is_alive():
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(("close",))
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()


class DiffusionEngine:
    name = "diffusers"
    kinds = ("image", "video")
    options = (
        "n_threads",
        "device",
        "task",  # text-to-image, image-to-image, inpainting, image-to-video, text-to-video
        "pipeline",  # the pipeline class (model_index.json's, or the one a single file is loaded with)
        "steps",  # the model's default number of denoising steps
        "dtype",  # float32, float16 or bfloat16 (default: float32 on CPU, float16 on CUDA)
        "config",  # single file: a folder with the configs of the same architecture (no hub access)
    )
    recognise_order = 10  # model_index.json, or a checkpoint file: before anything that claims folders or files

    def default_options(self, settings: Settings) -> dict[str, Any]:
        """One worker process per model, one generation at a time."""
        return {"n_threads": settings["image.n_threads"], "device": settings["image.device"], "num_parallel": 1}

    def capabilities(self, kind: str, entry: Mapping[str, Any]) -> tuple[str, ...]:
        return capabilities(str(entry.get("task", "")), str(entry.get("pipeline", "")))

    def recognise(self, path: Path, pipeline: str | None) -> Recognised | None:
        if not (is_diffusers_dir(path) or path.suffix in (".safetensors", ".ckpt") or pipeline):
            return None
        info = inspect(path, pipeline)  # 400 naming a missing component, a wrong class, a cut file
        label = f"{info.pipeline_class} ({info.task}, {info.weight_bytes} bytes of weights)"
        return Recognised(path.absolute(), info.kind, label, {"task": info.task, "pipeline": info.pipeline_class})

    def estimate_memory(self, spec: ModelSpec, options: dict[str, Any]) -> int:
        if spec.path is None or not spec.path.exists():
            return spec.size_bytes + WORKER_BASE
        info = inspect(spec.path, options.get("pipeline"))
        return memory_estimate(info, _device(options), options.get("dtype"))

    def load(self, spec: ModelSpec, options: dict[str, Any]) -> ImageRunner:
        assert spec.path is not None
        info = inspect(spec.path, options.get("pipeline"))  # a folder changed since `models add`: a clear 400
        return DiffusionRunner(spec, options, info)  # the worker resolves device "auto" with torch itself


def _device(options: dict[str, Any]) -> str:
    """``auto`` guessed without importing torch in the daemon (CUDA when an NVIDIA driver is present), for the
    memory estimate only; the worker decides with ``torch.cuda.is_available()``."""
    wanted = str(options.get("device") or "auto")
    if wanted != "auto":
        return wanted
    import os

    return "cuda" if os.path.exists("/proc/driver/nvidia/version") else "cpu"
