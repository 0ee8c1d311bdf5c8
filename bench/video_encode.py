"""How long does tiqo take to turn generated frames into an mp4, per frame, and which libx264 preset should it use?

Synthetic frames that look like a diffusion model's (a soft gradient, moving blobs, fine per-frame grain) at 256x256
and 512x512 are encoded with ``tiqo.daemon.media.video.encode_mp4`` under each candidate x264 preset (CRF as in
the module). Prints, per size and preset: median encode time per frame, file size, PSNR of the decoded video
against the source frames, and the time and size ratios to the preset tiqo uses (``X264_PRESET``). Then the cost of
the optional filters per output frame: ffmpeg motion interpolation 8 -> 24 fps and Lanczos upscale x2.

Run:  .venv/bin/python bench/video_encode.py [--frames 48] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import av
import numpy as np

from tiqo.daemon.media import video

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")


def synthetic(count: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    frames = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        t = i / max(1, count - 1)
        img = np.stack([80 + 120 * x, 60 + 100 * y, 140 - 60 * x * y], axis=-1)
        for k, (cx, cy, r) in enumerate(((0.2 + 0.6 * t, 0.5, 0.15), (0.7, 0.2 + 0.5 * t, 0.1))):
            blob = np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r)))
            img += blob[..., None] * np.array([120, 40, -60] if k == 0 else [-50, 110, 90], dtype=np.float32)
        img += rng.normal(0, 4, img.shape)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def psnr(path: Path, frames: np.ndarray) -> float:
    with av.open(str(path)) as container:
        out = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    mse = float(np.mean((out.astype(np.float64) - frames.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / mse) if mse else float("inf")


def timed(frames: np.ndarray, rounds: int, folder: Path, **kwargs: Any) -> tuple[float, video.VideoInfo, Path]:
    out = folder / "bench.mp4"
    times = []
    info = None
    for _ in range(rounds):
        start = time.perf_counter()
        info = video.encode_mp4(frames, 8, out, **kwargs)
        times.append(time.perf_counter() - start)
    assert info is not None
    return statistics.median(times), info, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    chosen = video.X264_PRESET
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for size in (256, 512):
            frames = synthetic(args.frames, size)
            for preset in PRESETS:
                video.X264_PRESET = preset
                seconds, info, out = timed(frames, args.rounds, folder)
                rows.append(
                    {
                        "size": size,
                        "preset": preset,
                        "ms_per_frame": 1000 * seconds / info.frames,
                        "kbytes": info.bytes / 1000,
                        "psnr_db": psnr(out, frames),
                    }
                )
            video.X264_PRESET = chosen
            base = next(r for r in rows if r["size"] == size and r["preset"] == chosen)
            for row in rows:
                if row["size"] == size:
                    row["time_ratio"] = row["ms_per_frame"] / base["ms_per_frame"]
                    row["size_ratio"] = row["kbytes"] / base["kbytes"]
        filters = []
        frames = synthetic(max(2, args.frames // 3), 256)
        for label, kwargs in (
            ("none", {}),
            ("interpolate 8->24 fps", {"interpolate_fps": 24}),
            ("upscale x2 (Lanczos)", {"upscale": 2}),
        ):
            seconds, info, _ = timed(frames, args.rounds, folder, **kwargs)
            per_frame = 1000 * seconds / info.frames
            filters.append({"filter": label, "frames_out": info.frames, "ms_per_output_frame": per_frame})
    if args.json:
        print(json.dumps({"preset": chosen, "crf": video.X264_CRF, "encode": rows, "filters_256": filters}, indent=2))
        return
    print(f"x264 crf {video.X264_CRF}, {args.frames} frames, median of {args.rounds}; ratios to {chosen!r} (tiqo's)")
    print(f"{'size':>5} {'preset':>10} {'ms/frame':>9} {'KB':>8} {'PSNR dB':>8} {'time x':>7} {'size x':>7}")
    for r in rows:
        print(
            f"{r['size']:>5} {r['preset']:>10} {r['ms_per_frame']:>9.2f} {r['kbytes']:>8.1f} {r['psnr_db']:>8.2f} "
            f"{r['time_ratio']:>7.2f} {r['size_ratio']:>7.2f}"
        )
    print("\nfilters at 256x256, per output frame (encode included):")
    for f in filters:
        print(f"  {f['filter']:<24} {f['frames_out']:>4} frames  {f['ms_per_output_frame']:.2f} ms/frame")


if __name__ == "__main__":
    main()
