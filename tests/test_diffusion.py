"""The diffusers engine on tiny random-weight pipelines (tests/tiny_diffusion.py) saved like a user's download.

Detection goes through the real `tiqo models add` against a real daemon; generation through the engine itself (one
spawned worker process per model, as the daemon runs it) and through the scheduler for worker deaths.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import tomllib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from PIL import Image

from tests.conftest import DaemonProc
from tests.tiny_diffusion import IMAGE_TO_VIDEO, INPAINTING, TEXT_TO_IMAGE, TEXT_TO_VIDEO
from tiqo.core.errors import BadRequest, Cancelled, WorkerDied
from tiqo.daemon.catalog.diffusion_check import check_safetensors, inspect
from tiqo.daemon.runtime.engines.diffusion import DiffusionEngine, DiffusionRunner
from tiqo.daemon.runtime.scheduler import Scheduler
from tiqo.sdk.engine import ModelSpec, StopFlag
from tiqo.sdk.imaging import ImageRequest, ImageResult, VideoRequest

ENGINE = DiffusionEngine()
DEVICE = os.environ.get("TIQO_IMAGE_DEVICE", "cpu")  # bench/gpu_check.sh runs these on cuda
OPTS = {"n_threads": 1, "device": DEVICE}


def _spec(name: str, path: Path, kind: str = "image") -> ModelSpec:
    return ModelSpec(name=name, kind=kind, engine="diffusers", path=path, source="local", size_bytes=0)


def _png(width: int, height: int, mode: str = "RGB", color: object = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, format="PNG")  # type: ignore[arg-type]  # PIL's color union
    return buf.getvalue()


def _config(d: DaemonProc) -> dict[str, object]:
    path = d.home / "config" / "config.toml"
    if not path.exists():
        path = next(d.home.rglob("config.toml"), path)
    return tomllib.loads(path.read_text()) if path.exists() else {}


def _models(d: DaemonProc) -> dict[str, dict[str, object]]:
    r = d.cli("models", "list", "--json")
    assert r.returncode == 0, r.stderr
    return {m["name"]: m for m in json.loads(r.stdout)}


# --------------------------------------------------------------------------- detection through `tiqo models add`
def test_models_add_detects_each_pipeline_and_refuses_broken_ones(
    tiny_pipelines: dict[str, Path], fresh_daemon: DaemonProc, tmp_path: Path
) -> None:
    d = fresh_daemon
    expected = {
        TEXT_TO_IMAGE: ("image", "text-to-image", ["image", "image-edit", "inpaint"]),
        INPAINTING: ("image", "inpainting", ["image-edit", "inpaint"]),
        TEXT_TO_VIDEO: ("video", "text-to-video", ["video"]),
        IMAGE_TO_VIDEO: ("video", "image-to-video", ["video-from-image"]),
    }
    for name, (kind, task, caps) in expected.items():
        add = d.cli("models", "add", name, str(tiny_pipelines[name]))
        assert add.returncode == 0, add.stderr
        row = _models(d)[name]
        assert (row["kind"], row["engine"], row["capabilities"]) == (kind, "diffusers", caps)
        assert _config(d)["models"][name]["task"] == task  # type: ignore[index]

    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipelines[TEXT_TO_IMAGE], broken)
    shutil.rmtree(broken / "vae")
    r = d.cli("models", "add", "no-vae", str(broken))
    assert r.returncode == 1 and "'vae'" in r.stderr and "no vae/ folder" in r.stderr, r.stderr

    wrong = tmp_path / "wrong"
    shutil.copytree(tiny_pipelines[TEXT_TO_IMAGE], wrong)
    index = json.loads((wrong / "model_index.json").read_text())
    index["_class_name"] = "MusicGenPipeline"
    (wrong / "model_index.json").write_text(json.dumps(index))
    r = d.cli("models", "add", "wrong", str(wrong))
    assert r.returncode == 1 and "MusicGenPipeline" in r.stderr and "StableVideoDiffusionPipeline" in r.stderr

    cut = tmp_path / "cut"
    shutil.copytree(tiny_pipelines[TEXT_TO_IMAGE], cut)
    weights = cut / "unet" / "diffusion_pytorch_model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size - 1000)
    r = d.cli("models", "add", "cut", str(cut))
    assert r.returncode == 1 and "truncated" in r.stderr and "diffusion_pytorch_model.safetensors" in r.stderr

    single = tmp_path / "model.safetensors"
    single.write_bytes(weights.read_bytes()[:50])
    r = d.cli("models", "add", "single", str(single))
    assert r.returncode == 1 and "safetensors" in r.stderr
    models = _config(d).get("models", {})
    assert not {"no-vae", "wrong", "cut", "single"} & set(models)  # type: ignore[arg-type]
    assert not {"no-vae", "wrong", "cut", "single"} & set(_models(d))


def test_single_file_checkpoint_is_text_to_image(tiny_pipelines: dict[str, Path]) -> None:
    weights = tiny_pipelines[TEXT_TO_IMAGE] / "unet" / "diffusion_pytorch_model.safetensors"
    assert check_safetensors(weights) > 0
    info = inspect(weights)
    assert (info.task, info.pipeline_class, info.single_file) == ("text-to-image", "StableDiffusionPipeline", True)
    with pytest.raises(BadRequest, match="text-to-image"):
        inspect(weights, "StableVideoDiffusionPipeline")


def test_load_and_unload_through_the_daemon_returns_the_workers_memory(
    tiny_pipelines: dict[str, Path], fresh_daemon: DaemonProc
) -> None:
    d = fresh_daemon
    assert d.cli("models", "add", "sd", str(tiny_pipelines[TEXT_TO_IMAGE])).returncode == 0
    daemon_rss = psutil.Process(d.proc.pid).memory_info().rss
    load = d.cli("models", "load", "sd", "--json", timeout=300)
    assert load.returncode == 0, load.stderr
    ps = d.client().get("/tiqo/ps").json()
    row = next(m for m in ps["models"] if m["name"] == "sd")
    pid = row["details"]["pid"]
    assert row["details"]["worker"] == "process" and row["details"]["device"] in ("cpu", "cuda")
    worker = psutil.Process(pid)
    assert worker.memory_info().rss > 100 * 1024 * 1024  # torch and the pipeline live in the worker...
    grown = psutil.Process(d.proc.pid).memory_info().rss - daemon_rss
    assert grown < 100 * 1024 * 1024, grown  # ...not in the daemon, which never imports torch
    assert "torch" not in d.log_text()
    assert d.cli("models", "unload", "sd").returncode == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# --------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def sd(tiny_pipelines: dict[str, Path]) -> Iterator[DiffusionRunner]:
    runner = ENGINE.load(_spec("sd", tiny_pipelines[TEXT_TO_IMAGE]), {**OPTS, "steps": 3})
    yield runner
    runner.close()


def _images(runner: DiffusionRunner, request: ImageRequest, stop: StopFlag | None = None) -> ImageResult:
    return runner.images(request, lambda i, n: None, stop or StopFlag())


def test_text_to_image_png_of_the_requested_size_seeds_and_progress(sd: DiffusionRunner) -> None:
    steps: list[tuple[int, int]] = []
    result = sd.images(
        ImageRequest("a red cat", 64, 48, steps=4, seed=7, n=2), lambda i, n: steps.append((i, n)), StopFlag()
    )
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(result.images) == 2 and result.seed == 7 and result.steps == 4 and result.device.startswith(DEVICE)
    picture = Image.open(io.BytesIO(result.images[0]))
    assert (picture.format, picture.size) == ("PNG", (64, 48))
    again = _images(sd, ImageRequest("a red cat", 64, 48, steps=4, seed=7, n=2))
    assert again.images == result.images  # same seed, same pictures
    assert _images(sd, ImageRequest("a red cat", 64, 48, steps=4, seed=8)).images[0] != result.images[0]
    drawn = _images(sd, ImageRequest("a red cat", 32, 32))
    assert 0 <= drawn.seed < 2**32 and drawn.steps == 3  # a random seed is reported; the model's default steps
    replay = _images(sd, ImageRequest("a red cat", 32, 32, seed=drawn.seed))
    assert replay.images == drawn.images


def test_image_to_image_and_inpainting_from_the_same_weights(sd: DiffusionRunner) -> None:
    steps: list[int] = []
    edited = sd.images(
        ImageRequest("a cat", 64, 64, steps=4, image=_png(80, 80), strength=0.5),
        lambda i, n: steps.append(n),
        StopFlag(),
    )
    assert Image.open(io.BytesIO(edited.images[0])).size == (64, 64)
    assert edited.steps == 2 and set(steps) == {2}  # strength 0.5 runs half the steps
    assert edited.details["pipeline"] == "StableDiffusionImg2ImgPipeline"
    painted = _images(sd, ImageRequest("a cat", 64, 64, steps=2, image=_png(64, 64), mask=_png(64, 64, "L", 255)))
    assert painted.details["pipeline"] == "StableDiffusionInpaintPipeline"
    assert Image.open(io.BytesIO(painted.images[0])).size == (64, 64)


def test_bad_pictures_are_clear_400s(sd: DiffusionRunner) -> None:
    with pytest.raises(BadRequest, match="not an image") as bad:
        _images(sd, ImageRequest("x", 64, 64, image=b"GIF? no, plain text"))
    assert bad.value.param == "image" and bad.value.hint
    with pytest.raises(BadRequest, match="mask is 32x32 but the image is 64x64"):
        _images(sd, ImageRequest("x", 64, 64, image=_png(64, 64), mask=_png(32, 32, "L", 255)))
    with pytest.raises(BadRequest, match="largest accepted"):
        _images(sd, ImageRequest("x", 64, 64, image=_png(5000, 8)))
    with pytest.raises(BadRequest, match="makes images, not videos"):
        sd.video(VideoRequest("x", 64, 64, frames=2, fps=2), lambda i, n: None, StopFlag())
    assert _images(sd, ImageRequest("still works", 32, 32, steps=1)).images  # the worker survived them all


def test_cancel_stops_within_one_step(sd: DiffusionRunner) -> None:
    stop = StopFlag()
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            stop.set()

    with pytest.raises(Cancelled):
        sd.images(ImageRequest("a cat", 64, 64, steps=200), progress, stop)
    assert seen[-1] <= 3, seen  # the step that was running when the flag was set may finish, no more
    assert _images(sd, ImageRequest("next", 32, 32, steps=1)).images


def test_dedicated_inpainting_model_needs_a_mask(tiny_pipelines: dict[str, Path]) -> None:
    runner = ENGINE.load(_spec("inpaint", tiny_pipelines[INPAINTING]), OPTS)
    try:
        assert runner.task == "inpainting"
        with pytest.raises(BadRequest, match="needs an image and a mask"):
            _images(runner, ImageRequest("x", 64, 64, steps=1))
        done = _images(runner, ImageRequest("x", 64, 64, steps=2, image=_png(64, 64), mask=_png(64, 64, "L", 255)))
        assert Image.open(io.BytesIO(done.images[0])).size == (64, 64)
    finally:
        runner.close()


def test_text_to_video_and_image_to_video_frames(tiny_pipelines: dict[str, Path]) -> None:
    t2v = ENGINE.load(_spec("t2v", tiny_pipelines[TEXT_TO_VIDEO], "video"), OPTS)
    try:
        steps: list[int] = []
        video = t2v.video(
            VideoRequest("a cat", 64, 48, frames=6, fps=8, steps=3, seed=1), lambda i, n: steps.append(i), StopFlag()
        )
        assert steps == [1, 2, 3]  # the legacy callback= of TextToVideoSDPipeline
        assert video.frames.shape == (6, 48, 64, 3) and str(video.frames.dtype) == "uint8" and video.fps == 8
        with pytest.raises(BadRequest, match="makes videos"):
            _images(t2v, ImageRequest("x", 64, 64))
    finally:
        t2v.close()
    i2v = ENGINE.load(_spec("svd", tiny_pipelines[IMAGE_TO_VIDEO], "video"), OPTS)
    try:
        with pytest.raises(BadRequest, match="needs a first image"):
            i2v.video(VideoRequest("", 64, 64, frames=3, fps=7), lambda i, n: None, StopFlag())
        steps = []
        video = i2v.video(
            VideoRequest("", 64, 64, frames=3, fps=7, steps=2, image=_png(100, 80)),
            lambda i, n: steps.append(i),
            StopFlag(),
        )
        assert steps == [1, 2] and video.frames.shape == (3, 64, 64, 3)
    finally:
        i2v.close()


# --------------------------------------------------------------------------- worker deaths, through the scheduler
def test_kill_9_of_the_worker_fails_that_request_and_the_next_one_reloads(tiny_pipelines: dict[str, Path]) -> None:
    spec = _spec("sd", tiny_pipelines[TEXT_TO_IMAGE])

    async def main() -> None:
        sched = Scheduler({"diffusers": ENGINE}, memory_budget=64 * 1024**3, options_for=lambda s: OPTS)
        loop = asyncio.get_running_loop()
        try:
            async with sched.acquire(spec) as slot:
                runner = slot.runner
                assert isinstance(runner, DiffusionRunner)
                first_pid = runner.pid

                def kill_at_two(done: int, total: int) -> None:
                    if done == 2:
                        os.kill(first_pid, signal.SIGKILL)

                request = ImageRequest("a cat", 64, 64, steps=500)
                with pytest.raises(WorkerDied, match="SIGKILL") as died:
                    await loop.run_in_executor(slot.executor, runner.images, request, kill_at_two, StopFlag())
                assert died.value.hint and runner.broken
            assert "sd" not in sched.loaded  # the broken runner was dropped on release
            async with sched.acquire(spec) as slot:
                runner = slot.runner
                assert isinstance(runner, DiffusionRunner) and runner.pid != first_pid
                ok = await loop.run_in_executor(
                    slot.executor, runner.images, ImageRequest("again", 32, 32, steps=1), lambda i, n: None, StopFlag()
                )
                assert ok.images
                pid = runner.pid
            await sched.unload("sd")
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        finally:
            await sched.close()

    asyncio.run(main())


def test_memory_estimate_counts_weights_dtype_and_worker(tiny_pipelines: dict[str, Path]) -> None:
    spec = _spec("sd", tiny_pipelines[TEXT_TO_IMAGE])
    info = inspect(tiny_pipelines[TEXT_TO_IMAGE])
    cpu = ENGINE.estimate_memory(spec, {"device": "cpu"})
    cuda = ENGINE.estimate_memory(spec, {"device": "cuda"})
    assert cpu > info.weight_bytes and cuda < cpu  # float32 files are halved on CUDA (float16)
