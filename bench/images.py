"""Images through the daemon vs the same pipeline in this process, and how soon a submitted job reports progress.

    python bench/images.py [--size 256] [--steps 4,12] [--rounds 3]

Builds a small random-weight Stable Diffusion (tests/tiny_diffusion.py, wider UNet: a step of ~0.1 s at 256 px on
one thread), registers it with a real daemon like a user's folder, then:
1. per-step time: a request with few steps and one with many, through the daemon (POST /v1/images/generations,
   wait for the answer) and in-process (the same pipeline, 1 torch thread); (t_many - t_few) / (many - few) cancels
   what does not scale with steps (text encoder, VAE, PNG, HTTP). Ratio in-process / daemon: 1.00 = no overhead
   (the issue's goal: >= 0.95). Rounds interleave the two, since the machine is shared and its load drifts.
2. submit -> first job event (``queued``/``in_progress``) and -> first step event on /tiqo/events, model warm.
3. cold load (first request after registering) and the daemon's and the worker's RSS before/after unload.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._daemon import start_daemon, stop_daemon
from tests.conftest import home_env
from tests.tiny_diffusion import stable_diffusion


def events(home: Path, seen: list[tuple[float, dict[str, Any]]], ready: threading.Event) -> None:
    """Collect job events (arrival time, data) from /tiqo/events."""
    sock = str(home / "run" / "tiqo.sock")
    with (
        contextlib.suppress(httpx.HTTPError),  # the daemon stops at the end
        httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://tiqo", timeout=None) as c,
        c.stream("GET", "/tiqo/events", params={"kinds": "job"}) as r,
    ):
        ready.set()
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                seen.append((time.perf_counter(), event.get("data") or {}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", default="4,12")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args()
    few, many = (int(s) for s in args.steps.split(","))
    root = Path(tempfile.mkdtemp(prefix="tqbi"))
    folder = stable_diffusion(root / "sd", width=args.width)
    home = root / "home"
    proc, client = start_daemon(home, home_env(home, TIQO_IMAGE_THREADS="1"))
    try:
        assert client.post("/tiqo/models", json={"name": "sd", "path": str(folder)}).status_code == 201
        body = {"model": "sd", "prompt": "a red cat on the moon", "size": f"{args.size}x{args.size}", "seed": 1}
        daemon_rss = psutil.Process(proc.pid).memory_info().rss
        started = time.perf_counter()
        assert client.post("/v1/images/generations", json={**body, "steps": 1}).status_code == 200
        cold = time.perf_counter() - started
        model = next(m for m in client.get("/tiqo/ps").json()["models"] if m["name"] == "sd")
        worker_rss = psutil.Process(model["details"]["pid"]).memory_info().rss

        import torch
        from diffusers import DiffusionPipeline

        torch.set_num_threads(1)
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)

        def here(steps: int) -> float:
            t = time.perf_counter()
            pipe(
                body["prompt"],
                width=args.size,
                height=args.size,
                num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(1),
            )
            return time.perf_counter() - t

        def there(steps: int) -> float:
            t = time.perf_counter()
            r = client.post("/v1/images/generations", json={**body, "steps": steps})
            assert r.status_code == 200, r.text
            return time.perf_counter() - t

        per_here: list[float] = []
        per_there: list[float] = []
        for _ in range(args.rounds):
            per_there.append((there(many) - there(few)) / (many - few))
            per_here.append((here(many) - here(few)) / (many - few))
        m_here, m_there = statistics.median(per_here), statistics.median(per_there)

        seen: list[tuple[float, dict[str, Any]]] = []
        ready = threading.Event()
        threading.Thread(target=events, args=(home, seen, ready), daemon=True).start()
        ready.wait(10)
        first_event: list[float] = []
        first_step: list[float] = []
        for _ in range(5):
            seen.clear()
            t = time.perf_counter()
            job = client.post("/v1/images/generations", json={**body, "steps": 4, "wait": False}).json()
            while not any(d.get("status") in ("completed", "failed") for _, d in seen if d.get("id") == job["id"]):
                time.sleep(0.01)
            mine = [(at, d) for at, d in seen if d.get("id") == job["id"]]
            first_event.append(mine[0][0] - t)
            first_step.append(next(at for at, d in mine if (d.get("step") or 0) >= 1) - t)

        assert client.post("/tiqo/models/sd/unload").status_code in (200, 204)
        time.sleep(1)
        gone = not psutil.pid_exists(model["details"]["pid"])
        after_rss = psutil.Process(proc.pid).memory_info().rss
    finally:
        stop_daemon(proc, client)

    print(f"pipeline: SD, UNet width {args.width}, {args.size}x{args.size}, {few} vs {many} steps, 1 torch thread")
    print(f"per step in-process          {m_here * 1000:8.1f} ms   (rounds: {[round(x * 1000) for x in per_here]})")
    print(f"per step through the daemon  {m_there * 1000:8.1f} ms   (rounds: {[round(x * 1000) for x in per_there]})")
    print(f"in-process / daemon = {m_here / m_there:.3f}   (goal >= 0.95)")
    print(
        f"submit -> first job event  median {statistics.median(first_event) * 1000:.1f} ms "
        f"(max {max(first_event) * 1000:.1f}); -> first step  median {statistics.median(first_step) * 1000:.1f} ms"
    )
    print(f"cold first request (spawn, import torch/diffusers, load, 1 step) {cold:.2f} s")
    print(
        f"RSS: daemon {daemon_rss / 2**20:.0f} MiB before load, {after_rss / 2**20:.0f} MiB after unload; "
        f"worker {worker_rss / 2**20:.0f} MiB, gone after unload: {gone}"
    )


if __name__ == "__main__":
    main()
