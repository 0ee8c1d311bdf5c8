"""Diffusers engine: per-step time in-process vs through the worker process, cold load, RSS around unload, threads.

    python bench/diffusion.py [--size 256] [--steps 8]

Builds a small random-weight Stable Diffusion (tests/tiny_diffusion.py, wider UNet) so a step takes >= 50 ms, then:
1. the same pipeline called in this process (torch imported here) vs through DiffusionEngine (a spawned worker):
   median seconds per step and their ratio (engine / in-process; 1.00 = no overhead);
2. cold load time of the engine (spawn + import torch/diffusers + from_pretrained) and the worker's RSS;
3. this process's RSS and the worker's after unload;
4. 1 vs 2 torch threads in the worker, idle and with one CPU-bound process beside it.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.tiny_diffusion import stable_diffusion
from tiqo.daemon.runtime.engines.diffusion import DiffusionEngine
from tiqo.sdk.engine import ModelSpec, StopFlag
from tiqo.sdk.imaging import ImageRequest


def rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def step_times(call: object, steps: int) -> list[float]:
    """Seconds between consecutive step callbacks of one generation (the first step, with warm-up, is dropped)."""
    marks: list[float] = []
    call(lambda: marks.append(time.perf_counter()))  # type: ignore[operator]  # a closure, typed by use
    return [b - a for a, b in itertools.pairwise(marks[1:])] or [0.0]


def busy() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--width", type=int, default=64, help="UNet channels (64: a step of ~0.1 s at 256 px here)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="tqbench")) / "sd"
    stable_diffusion(folder, width=args.width)
    size, steps = args.size, args.steps
    request = ImageRequest("a red cat on the moon", size, size, steps=steps, seed=1)
    spec = ModelSpec(name="sd", kind="image", engine="diffusers", path=folder, source="local", size_bytes=0)
    engine = DiffusionEngine()

    rss_start = rss()
    started = time.perf_counter()
    runner = engine.load(spec, {"n_threads": 1})
    cold = time.perf_counter() - started
    worker_rss = runner.worker_rss()
    import torch
    from diffusers import DiffusionPipeline

    torch.set_num_threads(1)
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def local(mark: object) -> None:
        def cb(p: object, i: int, t: object, kw: dict[str, object]) -> dict[str, object]:
            mark()  # type: ignore[operator]
            return kw

        pipe(
            request.prompt,
            width=size,
            height=size,
            num_inference_steps=steps,
            generator=torch.Generator("cpu").manual_seed(1),
            callback_on_step_end=cb,
        )

    inproc: list[float] = []
    through: list[float] = []
    for _ in range(4):  # interleaved: the machine is shared, so its load drifts between rounds
        through += step_times(lambda mark: runner.images(request, lambda i, n: mark(), StopFlag()), steps)
        inproc += step_times(local, steps)
    rss_loaded_here = rss()
    unload_started = time.perf_counter()
    runner.close()
    unload_s = time.perf_counter() - unload_started
    rss_after_unload = rss()
    m_in, m_through = statistics.median(inproc), statistics.median(through)
    print(f"pipeline: SD, UNet width {args.width}, {size}x{size}, {steps} steps, 1 torch thread")
    print(f"per step in-process      {m_in * 1000:8.1f} ms")
    print(f"per step through engine  {m_through * 1000:8.1f} ms   in-process / engine = {m_in / m_through:.3f}")
    print(f"cold load (spawn + import + from_pretrained) {cold:.2f} s; worker RSS {worker_rss / 2**20:.0f} MiB")
    print(
        f"this process RSS: before load {rss_start / 2**20:.0f} MiB, before unload {rss_loaded_here / 2**20:.0f} MiB "
        f"(torch imported here for the in-process run), after unload {rss_after_unload / 2**20:.0f} MiB "
        f"(worker gone: its {worker_rss / 2**20:.0f} MiB returned; unload took {unload_s:.2f} s)"
    )

    print("threads (median ms per step through the engine):")
    for hog in (False, True):
        proc = None
        if hog:
            proc = multiprocessing.get_context("spawn").Process(target=busy, daemon=True)
            proc.start()
        for threads in (1, 2):
            r = engine.load(spec, {"n_threads": threads})
            times: list[float] = []
            for _ in range(2):
                times += step_times(lambda mark, r=r: r.images(request, lambda i, n: mark(), StopFlag()), steps)
            r.close()
            where = "busy neighbour" if hog else "idle          "
            print(f"  {where} n_threads={threads}: {statistics.median(times) * 1000:7.1f}")
        if proc is not None:
            proc.kill()


if __name__ == "__main__":
    main()
