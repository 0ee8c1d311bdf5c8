"""``tiqo image`` and ``tiqo video``: submit the work as a job, follow its progress on stderr, write the result."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Optional, TypeVar

import typer

from tiqo.cli import complete
from tiqo.cli.ask import DATA_CLASS, TIER, USER, routing_headers
from tiqo.cli.jobs import fail_unless_completed, follow
from tiqo.cli.output import EXIT_ERROR, EXIT_USAGE, client, console, err_console, fail, handle_errors, print_json
from tiqo.core.paths import open_user_file

JSON = typer.Option(False, "--json", help="Print the finished job as JSON (the files are still written).")
SEED = typer.Option(None, "--seed", min=0, help="Seed; the same seed, model and settings make the same picture.")
STEPS = typer.Option(None, "--steps", min=1, help="Denoising steps (default: the model's own).")
NEGATIVE = typer.Option(None, "--negative", help="What the picture should not show.")
WAIT = typer.Option(True, "--wait/--no-wait", help="Wait and write the result, or print the job id and return.")
T = TypeVar("T")
FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def _read(path: Path | None, what: str) -> tuple[str, bytes] | None:
    if path is None:
        return None
    try:
        return path.name, (sys.stdin.buffer.read() if str(path) == "-" else path.expanduser().read_bytes())
    except OSError as exc:
        fail(f"cannot read the {what} {path}: {exc.strerror}", f"check the path of the {what}", EXIT_USAGE)


def _sink_for(output: Path) -> bool:
    """True for ``-o -`` (stdout), which must not be a terminal."""
    if str(output) != "-":
        return False
    if sys.stdout.isatty():
        fail("refusing to write binary data to the terminal", "pipe it (`| display`), or use -o FILE", EXIT_USAGE)
    return True


def _write(c: Any, job: dict[str, Any], name: str, output: Path, user: str | None) -> int:
    if str(output) == "-":
        written: int = c.job_file(job["id"], name, sys.stdout.buffer, user=user)
        sys.stdout.buffer.flush()
        return written
    sink: IO[bytes] = open_user_file(output, "wb")
    try:
        return int(c.job_file(job["id"], name, sink, user=user))
    finally:
        sink.close()


def _numbered(output: Path, i: int, n: int) -> Path:
    return output if n == 1 or str(output) == "-" else output.with_name(f"{output.stem}-{i + 1}{output.suffix}")


@handle_errors
def image(
    prompt: str = typer.Argument(..., help="What to draw, or - to read it from stdin."),
    output: Path = typer.Option(
        Path("image.png"), "--output", "-o", help="File to write (.png/.jpg/.webp), - = stdout."
    ),
    size: Optional[str] = typer.Option(None, "--size", "-s", help="WIDTHxHEIGHT, multiples of 8 (default: model's)."),
    n: int = typer.Option(1, "--n", "-n", min=1, help="How many images (out-1.png, out-2.png, ...)."),
    steps: Optional[int] = STEPS,
    seed: Optional[int] = SEED,
    negative: Optional[str] = NEGATIVE,
    guidance: Optional[float] = typer.Option(None, "--guidance", min=0.0, help="Guidance scale (default: model's)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Image model; default: the first that can.", autocompletion=complete.models
    ),
    source: Optional[Path] = typer.Option(None, "--image", "-i", help="Picture to change (image-to-image), - = stdin."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Inpainting: white where --image is repainted."),
    strength: Optional[float] = typer.Option(
        None, "--strength", min=0.01, max=1.0, help="With --image: how far from it (0-1)."
    ),
    wait: bool = WAIT,
    json_out: bool = JSON,
    user: Optional[str] = USER,
    tier: Optional[str] = TIER,
    data_class: Optional[str] = DATA_CLASS,
) -> None:
    """Make a picture from a prompt with a local diffusion model (or an external image provider when policy allows).

    Example: tiqo image "a lighthouse at dawn, oil painting" -o lighthouse.png --seed 7

    Example: tiqo image "make it winter" --image summer.png --strength 0.6 -o winter.png

    Example: tiqo image "a red door" --image house.png --mask door-mask.png -o red-door.png
    """
    fields: dict[str, Any] = {
        "prompt": sys.stdin.read().strip() if prompt == "-" else prompt,
        "n": n,
        "size": size,
        "steps": steps,
        "seed": seed,
        "negative_prompt": negative,
        "guidance_scale": guidance,
        "model": model,
        "strength": strength,
    }
    _make_images(fields, source, mask, _Delivery(output, wait, json_out, user, routing_headers(user, tier, data_class)))


@dataclass(frozen=True)
class _Delivery:
    """Where a job's answer goes and how: the -o path, --wait, --json, and the caller's user and routing headers."""

    output: Path
    wait: bool
    json_out: bool
    user: str | None
    headers: dict[str, str]


def _make_images(fields: dict[str, Any], source: Path | None, mask: Path | None, to: _Delivery) -> None:
    output, json_out, user = to.output, to.json_out, to.user
    if mask is not None and source is None:
        fail("--mask needs --image (the picture to repaint)", "add --image PICTURE.png", EXIT_USAGE)
    if str(output) == "-" and fields["n"] > 1:
        fail("-o - writes one image", "use -o out.png for several (out-1.png, ...)", EXIT_USAGE)
    to_stdout = _sink_for(output)
    fields["output_format"] = FORMATS.get(output.suffix.lower(), "png") if not to_stdout else "png"
    files = {k: v for k, v in (("image", _read(source, "image")), ("mask", _read(mask, "mask"))) if v is not None}
    done = _run_job(
        lambda c: c.image_submit({k: v for k, v in fields.items() if v is not None}, files, headers=to.headers),
        lambda c, job: _write_all(c, job, output, user),
        to,
    )
    if done is None:
        return
    job, written = done
    if json_out:
        print_json(job)
    elif not to_stdout:
        meta = job.get("meta") or {}
        for path, size_b in written:
            err_console.print(
                f"wrote {path} ({size_b} bytes; seed {meta.get('seed', '?')}, {meta.get('steps', '?')} steps, "
                f"{meta.get('model', '?')} on {meta.get('device', '?')})"
            )


def _write_all(c: Any, job: dict[str, Any], output: Path, user: str | None) -> list[tuple[Path, int]]:
    """Every file of a finished job: -o itself for one, numbered beside it (out-1.png, ...) for several."""
    names = list((job.get("result") or {}).get("files") or [])
    paths = [_numbered(output, i, len(names)) for i in range(len(names))]
    return [(path, _write(c, job, name, path, user)) for name, path in zip(names, paths, strict=True)]


def _run_job(
    submit: Callable[[Any], dict[str, Any]], write: Callable[[Any, dict[str, Any]], T], to: _Delivery
) -> tuple[dict[str, Any], T] | None:
    """Submit a job; with --wait follow it to its end and write its files (the job and what ``write`` returns),
    else print its id (or the job, --json) and return None."""
    with client() as c:
        job = submit(c)
        if not to.wait:
            print_json(job) if to.json_out else console.print(job["id"])
            return None
        job = follow(c, job["id"], user=to.user)
        fail_unless_completed(job)
        return job, write(c, job)


@handle_errors
def video(
    prompt: str = typer.Argument("", help="What happens in the video (may be empty with --image)."),
    output: Path = typer.Option(Path("video.mp4"), "--output", "-o", help="mp4 to write, - = stdout."),
    source: Optional[Path] = typer.Option(None, "--image", "-i", help="First frame (image-to-video models)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", min=0.1, help="Length (frames = seconds x fps)."),
    fps: Optional[int] = typer.Option(None, "--fps", min=1, max=60, help="Frames per second the model makes."),
    frames: Optional[int] = typer.Option(None, "--frames", min=2, help="Exact frame count (instead of --seconds)."),
    size: Optional[str] = typer.Option(None, "--size", "-s", help="WIDTHxHEIGHT, multiples of 8."),
    steps: Optional[int] = STEPS,
    seed: Optional[int] = SEED,
    negative: Optional[str] = NEGATIVE,
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Video model; default: the first that can.", autocompletion=complete.models
    ),
    image_model: Optional[str] = typer.Option(
        None, "--image-model", help="Makes the first frame when an image-to-video model gets no --image."
    ),
    narrate: Optional[str] = typer.Option(None, "--narrate", help="Text the local voice speaks over the video."),
    audio: Optional[Path] = typer.Option(None, "--audio", help="A sound track to mux in (any format ffmpeg reads)."),
    interpolate: Optional[int] = typer.Option(
        None, "--interpolate", min=2, max=60, help="Raise the frame rate with ffmpeg's motion interpolation (no AI)."
    ),
    upscale: Optional[int] = typer.Option(
        None, "--upscale", min=2, max=4, help="Enlarge by this factor with ffmpeg's Lanczos filter (no AI)."
    ),
    wait: bool = WAIT,
    json_out: bool = JSON,
    user: Optional[str] = USER,
    tier: Optional[str] = TIER,
    data_class: Optional[str] = DATA_CLASS,
) -> None:
    """Make a short mp4 with a local video model: from text, or from a picture (--image).

    A narration (the local voice) or a sound track becomes its AAC audio; the video holds its last frame until the
    audio ends.

    Example: tiqo video "waves rolling onto a beach" --seconds 2 -o waves.mp4

    Example: tiqo video --image cat.png --narrate "This is Tom." --interpolate 24 -o tom.mp4
    """
    fields: dict[str, Any] = {
        "prompt": prompt,
        "seconds": seconds,
        "fps": fps,
        "frames": frames,
        "size": size,
        "steps": steps,
        "seed": seed,
        "negative_prompt": negative,
        "model": model,
        "image_model": image_model,
        "narrate": narrate,
        "interpolate": interpolate,
        "upscale": upscale,
    }
    _make_video(fields, source, audio, _Delivery(output, wait, json_out, user, routing_headers(user, tier, data_class)))


def _make_video(fields: dict[str, Any], source: Path | None, audio: Path | None, to: _Delivery) -> None:
    output, json_out, user = to.output, to.json_out, to.user
    if not fields["prompt"] and source is None:
        fail("give a prompt, or --image for an image-to-video model", 'tiqo video "a cat sleeping"', EXIT_USAGE)
    if fields["narrate"] and audio:
        fail("--narrate and --audio both make the sound track", "pick one", EXIT_USAGE)
    to_stdout = _sink_for(output)
    fields["prompt"] = fields["prompt"] or "a video"
    files = {
        k: v
        for k, v in (("input_reference", _read(source, "image")), ("audio", _read(audio, "audio")))
        if v is not None
    }
    done = _run_job(
        lambda c: c.video_submit(fields, files, headers=to.headers),
        lambda c, job: _write(c, job, "video.mp4", output, user),
        to,
    )
    if done is None:
        return
    job, written = done
    if json_out:
        print_json(job)
    elif not to_stdout:
        result = job.get("result") or {}
        err_console.print(
            f"wrote {output} ({written} bytes; {result.get('frames', '?')} frames at {result.get('fps', '?')} fps, "
            f"{result.get('width', '?')}x{result.get('height', '?')}"
            + (", with audio" if result.get("has_audio") else "")
            + ")"
        )
    if not written:
        fail("the daemon sent an empty video", "see `tiqo daemon logs`", EXIT_ERROR)
