"""External image providers as priced candidates: a stub speaking OpenAI's /v1/images/generations, the local tiny
diffusers model as the last candidate, restricted prompts kept local, and one ledger row with the provider's cost."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from tests.conftest import DaemonProc, short_home, start_daemon
from tests.upstreams import Upstream

pytestmark = pytest.mark.timeout(600)
SECRET = "sk-img-0123456789abcdef"


@pytest.fixture
def gallery(stubs: tuple[Upstream, Upstream], tiny_pipelines: dict[str, Path]) -> Iterator[tuple[DaemonProc, Upstream]]:
    """stubA serves `ext-img` at $0.04 an image; routes send images there first, the local `tiny-sd` last."""
    a, _ = stubs
    home = short_home()
    config: dict[str, Any] = {
        "providers": {"stubA": {"kind": "openai", "base_url": a.url + "/v1", "timeout_first_byte": "2s"}},
        "models": {
            "ext-img": {
                "provider": "stubA",
                "upstream_model": "gpt-image-1",
                "capabilities": ["image"],
                "price_image": 0.04,
            },
            "tiny-sd": {
                "path": str(tiny_pipelines["sd-tiny"]),
                "kind": "image",
                "engine": "diffusers",
                "task": "text-to-image",
            },
        },
        "routes": {"image": {"default": ["ext-img"]}},
        "image": {"default_model": "tiny-sd"},
    }
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(tomlkit.dumps(config))
    keys = home / "config" / "keys.toml"
    keys.write_text(tomlkit.dumps({"stubA": {"k1": {"secret": SECRET}}}))
    keys.chmod(0o600)
    d = start_daemon(home)
    yield d, a
    d.stop()
    shutil.rmtree(home, ignore_errors=True)


def image_calls(up: Upstream) -> list[dict[str, Any]]:
    return [r for r in up.requests if r["path"] == "/v1/images/generations"]


def size_of(b64: str) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).size  # type: ignore[no-any-return]


def last_row(d: DaemonProc) -> dict[str, Any]:
    rows: list[dict[str, Any]] = d.client().get("/tiqo/logs", params={"n": 1}).json()["data"]
    return rows[0]


def test_the_provider_serves_first_and_is_billed_per_image(gallery: tuple[DaemonProc, Upstream]) -> None:
    d, a = gallery
    r = d.client().post("/v1/images/generations", json={"prompt": "a harbour", "n": 2, "size": "64x48"})
    assert r.status_code == 200, r.text
    assert [size_of(x["b64_json"]) for x in r.json()["data"]] == [(64, 48), (64, 48)]
    calls = image_calls(a)
    assert len(calls) == 1 and calls[0]["key"] == SECRET
    assert calls[0]["json"]["model"] == "gpt-image-1" and "response_format" not in calls[0]["json"]
    row = last_row(d)
    assert row["task"] == "image" and row["provider"] == "stubA" and row["images"] == 2
    assert row["cost_usd"] == pytest.approx(0.08)


def test_a_failing_provider_falls_back_to_the_local_model(gallery: tuple[DaemonProc, Upstream]) -> None:
    d, a = gallery
    a.set_mode("500")
    r = d.client().post("/v1/images/generations", json={"prompt": "a harbour", "size": "64x64", "steps": 2})
    assert r.status_code == 200, r.text
    assert r.headers["x-tiqo-backend"] == "local:diffusers"
    assert len(image_calls(a)) >= 1
    row = last_row(d)
    assert row["model"] == "tiny-sd" and row["cost_usd"] == 0 and row["attempts"] >= 2


def test_restricted_prompts_never_leave_the_machine(gallery: tuple[DaemonProc, Upstream]) -> None:
    d, a = gallery
    headers = {"x-tiqo-class": "restricted"}
    r = d.client().post(
        "/v1/images/generations", json={"prompt": "our vault", "size": "64x64", "steps": 2}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-tiqo-backend"] == "local:diffusers"
    assert image_calls(a) == []
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\n-----END RSA PRIVATE KEY-----"
    r = d.client().post("/v1/images/generations", json={"prompt": f"draw {pem}", "size": "64x64", "steps": 2})
    assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "local:diffusers"
    assert image_calls(a) == []
