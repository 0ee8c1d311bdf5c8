"""Images and videos end to end: a real daemon process, tiny random-weight diffusers pipelines registered through
`tiqo models add` like a user's folders, the official openai SDK over the socket, ffprobe on the mp4s."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import DaemonProc, start_daemon, wait_for

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning"),  # tiqo's videos API is not going away
]
SIZE = "64x64"
FAST = {"steps": 2, "seed": 1}


@pytest.fixture(scope="module")
def media(tiny_pipelines: dict[str, Path]) -> Iterator[DaemonProc]:
    d = start_daemon()
    for name, task in (
        ("tiny-sd", "sd-tiny"),
        ("tiny-inpaint", "sd-tiny-inpaint"),
        ("tiny-t2v", "t2v-tiny"),
        ("tiny-svd", "svd-tiny"),
    ):
        done = d.cli("models", "add", name, str(tiny_pipelines[task]), "--json")
        assert done.returncode == 0, done.stderr
    yield d
    d.stop()
    shutil.rmtree(d.home, ignore_errors=True)


def sdk(d: DaemonProc, user: str | None = None) -> openai.OpenAI:
    headers = {"x-tiqo-user": user} if user else {}
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)), timeout=600, headers=headers)
    return openai.OpenAI(base_url="http://tiqo/v1", api_key="unused", http_client=http, max_retries=0)


def picture(data: bytes) -> Any:
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {s["codec_type"]: s for s in json.loads(out.stdout)["streams"]}


# ---------------------------------------------------------------------------------------------------- images
def test_sdk_generates_a_png_of_the_requested_size(media: DaemonProc) -> None:
    client = sdk(media)
    answer = client.images.generate(model="tiny-sd", prompt="a red cube", size="64x64", extra_body=FAST)
    assert len(answer.data) == 1
    img = picture(base64.b64decode(answer.data[0].b64_json or ""))
    assert img.format == "PNG" and img.size == (64, 64)
    wide = client.images.generate(model="tiny-sd", prompt="a red cube", size="96x64", n=2, extra_body=FAST)
    sizes = {picture(base64.b64decode(d.b64_json or "")).size for d in wide.data}
    assert sizes == {(96, 64)} and len(wide.data) == 2


def test_same_seed_same_picture_other_seed_differs(media: DaemonProc) -> None:
    client = sdk(media)

    def make(seed: int) -> bytes:
        answer = client.images.generate(
            model="tiny-sd", prompt="a boat", size=SIZE, extra_body={"steps": 2, "seed": seed}
        )
        return base64.b64decode(answer.data[0].b64_json or "")

    first = make(5)
    assert make(5) == first
    assert make(6) != first


def test_edit_with_a_mask_and_image_to_image(media: DaemonProc) -> None:
    client = sdk(media)
    answer = client.images.edit(
        model="tiny-inpaint",
        image=("in.png", png(64, 64), "image/png"),
        mask=("mask.png", png(64, 64, (255, 255, 255)), "image/png"),
        prompt="a blue door",
        extra_body=FAST,
    )
    assert picture(base64.b64decode(answer.data[0].b64_json or "")).size == (64, 64)
    again = client.images.edit(
        model="tiny-sd", image=("in.png", png(64, 64), "image/png"), prompt="winter", extra_body=FAST
    )
    assert picture(base64.b64decode(again.data[0].b64_json or "")).size == (64, 64)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"size": "65x64"}, "multiple of 8"),
        ({"size": "99999x64"}, "between 64 and"),
        ({"size": "big"}, "512x512"),
        ({"steps": 0}, "steps"),
        ({"steps": 100000}, "steps must be between"),
        ({"n": 100}, "n must be between"),
        ({"model": "smollm2-135m"}, "image"),
        ({"model": "no-such-model"}, "not found"),
        ({"response_format": "url"}, "b64_json"),
    ],
)
def test_bad_image_requests_are_clear_4xx(media: DaemonProc, body: dict[str, Any], needle: str) -> None:
    c = media.client()
    r = c.post("/v1/images/generations", json={"model": "tiny-sd", "prompt": "x", **FAST, **body})
    assert 400 <= r.status_code < 500, r.text
    assert needle in r.text


def test_bad_edit_uploads_are_400(media: DaemonProc) -> None:
    c = media.client()
    not_image = c.post(
        "/v1/images/edits",
        data={"prompt": "x", "model": "tiny-inpaint"},
        files={"image": ("in.png", b"GIF89a but not really", "image/png")},
    )
    assert not_image.status_code == 400 and "not an image" in not_image.text
    other_size = c.post(
        "/v1/images/edits",
        data={"prompt": "x", "model": "tiny-inpaint"},
        files={"image": ("in.png", png(64, 64), "image/png"), "mask": ("m.png", png(32, 64), "image/png")},
    )
    assert other_size.status_code == 400 and "mask is 32x64" in other_size.text


def test_an_image_request_is_one_ledger_row(media: DaemonProc) -> None:
    c = media.client()
    r = c.post("/v1/images/generations", json={"model": "tiny-sd", "prompt": "a ledger", **FAST, "n": 2})
    assert r.status_code == 200, r.text
    rows = json.loads(media.cli("logs", "-n", "50", "--json").stdout)
    row = next(x for x in rows if x.get("task") == "image" and x.get("images") == 2)
    assert row["outcome"] == "ok" and row["steps"] == 2 and row["device"] == "cpu" and row["model"] == "tiny-sd"
    assert row["backend"] == "local:diffusers"


# ---------------------------------------------------------------------------------------------------- videos
def wait_video(client: openai.OpenAI, video_id: str, timeout: float = 600) -> tuple[Any, list[int]]:
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while True:
        video = client.videos.retrieve(video_id)
        seen.append(video.progress)
        if video.status in ("completed", "failed") or time.monotonic() > deadline:
            return video, seen
        time.sleep(0.1)


def test_sdk_video_from_text_with_narration(media: DaemonProc, tmp_path: Path) -> None:
    client = sdk(media)
    job = client.videos.create(
        model="tiny-t2v",
        prompt="a spinning top",
        seconds="2",
        size=SIZE,
        extra_body={"fps": 4, "steps": 3, "seed": 2, "narrate": "A top spins on the table."},
    )
    assert job.status in ("queued", "in_progress") and job.object == "video"
    video, seen = wait_video(client, job.id)
    assert video.status == "completed", video.error
    assert seen == sorted(seen) and seen[-1] == 100 and len(set(seen)) >= 2
    out = tmp_path / "top.mp4"
    client.videos.download_content(job.id).write_to_file(out)
    streams = ffprobe(out)
    v = streams["video"]
    assert (v["width"], v["height"]) == (64, 64) and v["codec_name"] == "h264"
    assert v["r_frame_rate"] == "4/1"
    assert int(v["nb_read_frames"]) >= 8  # 2 s x 4 fps, held longer while the narration lasts
    assert streams["audio"]["codec_name"] == "aac"
    thumb = client.videos.download_content(job.id, variant="thumbnail").read()
    assert picture(thumb).size == (64, 64)


def test_video_from_an_image_and_from_text_through_an_image(media: DaemonProc, tmp_path: Path) -> None:
    client = sdk(media)
    given = client.videos.create(
        model="tiny-svd",
        prompt="it moves",
        input_reference=("first.png", png(64, 64), "image/png"),
        extra_body={"frames": 4, "fps": 4, "steps": 2},
    )
    chained = client.videos.create(
        model="tiny-svd", prompt="a kite", size=SIZE, extra_body={"frames": 4, "fps": 4, "steps": 2}
    )
    for job in (given, chained):
        video, _ = wait_video(client, job.id)
        assert video.status == "completed", video.error
        out = tmp_path / f"{job.id}.mp4"
        client.videos.download_content(job.id).write_to_file(out)
        v = ffprobe(out)["video"]
        assert int(v["nb_read_frames"]) == 4 and (v["width"], v["height"]) == (64, 64)
    meta = media.client().get(f"/tiqo/jobs/{chained.id}").json()
    assert meta["params"]["model"] == "tiny-svd"


def test_cancel_stops_a_video_and_frees_the_model(media: DaemonProc) -> None:
    c = media.client()
    job = c.post(
        "/v1/videos", json={"model": "tiny-t2v", "prompt": "slow", "frames": 8, "fps": 4, "steps": 150, "size": SIZE}
    ).json()
    assert wait_for(lambda: c.get(f"/tiqo/jobs/{job['id']}").json()["step"] >= 2, timeout=300)
    assert c.post(f"/tiqo/jobs/{job['id']}/cancel").status_code == 200
    done = wait_for(lambda: (j := c.get(f"/tiqo/jobs/{job['id']}").json())["status"] == "cancelled" and j, timeout=120)
    assert done and done["step"] < 150
    video = c.get(f"/v1/videos/{job['id']}").json()
    assert video["status"] == "failed" and video["error"]["code"] == "cancelled"
    quick = c.post("/v1/images/generations", json={"model": "tiny-sd", "prompt": "after", **FAST})
    assert quick.status_code == 200


def test_another_user_cannot_see_or_fetch_a_video(media: DaemonProc) -> None:
    mine = sdk(media, "alice")
    job = mine.videos.create(
        model="tiny-t2v", prompt="private", size=SIZE, extra_body={"frames": 2, "fps": 2, "steps": 1}
    )
    video, _ = wait_video(mine, job.id)
    assert video.status == "completed"
    bob = media.client()
    for method, path in (
        ("GET", f"/v1/videos/{job.id}"),
        ("GET", f"/v1/videos/{job.id}/content"),
        ("DELETE", f"/v1/videos/{job.id}"),
        ("GET", f"/tiqo/jobs/{job.id}"),
    ):
        r = bob.request(method, path, headers={"x-tiqo-user": "bob"})
        assert r.status_code == 404, (method, path, r.text)
    assert job.id not in {v.id for v in sdk(media, "bob").videos.list().data}
    assert job.id in {v.id for v in mine.videos.list().data}
    assert mine.videos.delete(job.id).deleted
    assert media.client().get(f"/v1/videos/{job.id}", headers={"x-tiqo-user": "alice"}).status_code == 404


def test_bad_video_requests_are_clear_4xx(media: DaemonProc) -> None:
    c = media.client()
    cases = [
        ({"model": "tiny-sd", "prompt": "x"}, "is an image model, not a video model"),
        ({"model": "tiny-t2v", "prompt": "x", "frames": 100000}, "video.max_frames"),
        ({"model": "tiny-t2v", "prompt": "x", "size": "60x64"}, "multiple of 8"),
        ({"model": "tiny-t2v", "prompt": "x", "upscale": 9}, "upscale"),
        ({"model": "tiny-t2v", "prompt": ""}, "prompt"),
    ]
    for body, needle in cases:
        r = c.post("/v1/videos", json=body)
        assert 400 <= r.status_code < 500 and needle in r.text, (body, r.text)
    assert c.get("/v1/videos/job_0123456789abcdef").status_code == 404
    assert c.get("/v1/videos/job_0123456789abcdef/content").status_code == 404


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_image_and_video(media: DaemonProc, tmp_path: Path) -> None:
    out = tmp_path / "cube.png"
    done = media.cli("image", "a cube", "-o", str(out), "--size", SIZE, "--steps", "2", "--seed", "3", "-m", "tiny-sd")
    assert done.returncode == 0, done.stderr
    assert picture(out.read_bytes()).size == (64, 64)
    piped = subprocess.run(
        f"{sys.executable} -m tiqo image 'a cube' -o - --size {SIZE} --steps 2 -m tiny-sd | cat",
        shell=True,
        env=media.env,
        capture_output=True,
    )
    assert piped.returncode == 0, piped.stderr
    assert picture(piped.stdout).size == (64, 64)
    movie = tmp_path / "clip.mp4"
    made = media.cli(
        "video",
        "a wave",
        "-o",
        str(movie),
        "-m",
        "tiny-t2v",
        "--frames",
        "4",
        "--fps",
        "4",
        "--steps",
        "2",
        "--size",
        SIZE,
        "--json",
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["status"] == "completed"
    assert int(ffprobe(movie)["video"]["nb_read_frames"]) == 4


def test_restart_marks_a_running_video_failed(tiny_pipelines: dict[str, Path]) -> None:
    d = start_daemon()
    try:
        assert d.cli("models", "add", "tiny-t2v", str(tiny_pipelines["t2v-tiny"])).returncode == 0
        c = d.client()
        job = c.post("/v1/videos", json={"prompt": "long", "frames": 8, "fps": 4, "steps": 150, "size": SIZE}).json()
        assert wait_for(lambda: c.get(f"/tiqo/jobs/{job['id']}").json()["status"] == "in_progress", timeout=300)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        again = start_daemon(d.home)
        try:
            video = again.client().get(f"/v1/videos/{job['id']}").json()
            assert video["status"] == "failed" and video["error"]["code"] == "interrupted"
        finally:
            again.stop()
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)


def test_kill_9_of_the_worker_fails_that_job_and_the_next_one_succeeds(media: DaemonProc) -> None:
    c = media.client()
    body = {"model": "tiny-t2v", "prompt": "doomed", "frames": 8, "fps": 4, "steps": 150, "size": SIZE}
    job = c.post("/v1/videos", json=body).json()
    assert wait_for(lambda: c.get(f"/tiqo/jobs/{job['id']}").json()["step"] >= 1, timeout=300)
    row = next(m for m in c.get("/tiqo/ps").json()["models"] if m["name"] == "tiny-t2v")
    os.kill(row["details"]["pid"], signal.SIGKILL)
    failed = wait_for(lambda: (j := c.get(f"/tiqo/jobs/{job['id']}").json())["status"] == "failed" and j, timeout=60)
    assert failed and failed["error"]["code"] == "worker_died"
    assert c.get("/tiqo/health").status_code == 200
    again = c.post("/v1/videos", json={**body, "prompt": "after", "frames": 2, "steps": 1}).json()
    done = wait_for(
        lambda: (j := c.get(f"/tiqo/jobs/{again['id']}").json())["status"] == "completed" and j, timeout=300
    )
    assert done, c.get(f"/tiqo/jobs/{again['id']}").json()
