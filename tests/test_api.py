"""The API over a real socket of a real daemon process, with the real bundled models."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DaemonProc, smollm_path, wait_for

CHAT = "/v1/chat/completions"


def ask(content: str = "What is the capital of France?", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 8, **extra}


def sse_events(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def model_row(d: DaemonProc, name: str) -> dict[str, Any] | None:
    rows = d.client().get("/tiqo/ps").json()["models"]
    return next((r for r in rows if r["name"] == name), None)


# ------------------------------------------------------------------ the official openai client


def test_official_openai_client_gets_a_completion_and_a_stream(daemon: DaemonProc) -> None:
    import openai

    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)))
    client = openai.OpenAI(base_url="http://tiqo/v1", api_key="unused", http_client=http)
    models = [m.id for m in client.models.list()]
    assert "smollm2-135m" in models and "gemma3-270m" in models

    question = [{"role": "user", "content": "Which city is the capital of France?"}]
    reply = client.chat.completions.create(model="smollm2-135m", messages=question, temperature=0, max_tokens=16)
    # What the code guarantees, not the model's words (greedy output differs between CPUs): an answer, its usage,
    # and the same answer again for the same greedy request on this machine.
    choice = reply.choices[0]
    assert (choice.message.content or "").strip() and choice.message.role == "assistant"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 16
    assert choice.finish_reason == "stop" or (choice.finish_reason == "length" and reply.usage.completion_tokens == 16)
    again = client.chat.completions.create(  # generated again, not read from the response cache
        model="smollm2-135m", messages=question, temperature=0, max_tokens=16, extra_headers={"x-tiqo-cache": "off"}
    )
    assert again.choices[0].message.content == choice.message.content and again.usage == reply.usage

    stream = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 2  # really streamed
    finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 12
    assert finish == "stop" or (finish == "length" and usage.completion_tokens == 12), (finish, usage)

    completion = client.completions.create(
        model="gemma3-270m", prompt="The capital of France is", max_tokens=6, temperature=0
    )
    assert completion.choices[0].text.strip()


def test_streamed_and_plain_answers_agree(daemon: DaemonProc) -> None:
    c = daemon.client()
    plain = c.post(CHAT, json=ask(max_tokens=12)).json()
    with c.stream("POST", CHAT, json=ask(max_tokens=12, stream=True, stream_options={"include_usage": True})) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert streamed == plain["choices"][0]["message"]["content"]
    assert events[-2]["usage"] == plain["usage"]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"


def test_every_response_says_what_served_it(daemon: DaemonProc) -> None:
    r = daemon.client().post(CHAT, json=ask(max_tokens=2))
    assert r.status_code == 200
    assert r.headers["x-tiqo-backend"] == "local:llama.cpp"
    assert r.headers["x-tiqo-model"] == "smollm2-135m"
    assert r.headers["x-tiqo-cost-usd"] == "0"
    assert r.headers["x-tiqo-request-id"].startswith("req_")
    assert daemon.client().get("/tiqo/health").headers["x-tiqo-request-id"].startswith("req_")


def test_management_routes(daemon: DaemonProc) -> None:
    c = daemon.client()
    health = c.get("/tiqo/health").json()
    assert health["status"] == "ok" and health["pid"] == daemon.proc.pid and health["api_version"] == "1"
    assert c.get("/openapi.json").json()["paths"]["/v1/chat/completions"]
    row = c.post("/tiqo/models/smollm2-135m/load", json={"keep_alive": "10m"}).json()
    assert row["keep_alive_s"] == 600 and row["memory_bytes"] > 90 * 2**20
    assert row["details"]["n_ctx"] == 4096 and row["details"]["n_threads"] >= 1
    ps = c.get("/tiqo/ps").json()
    assert ps["memory_used_bytes"] >= row["memory_bytes"] and ps["memory_budget_bytes"] > 0


def test_concurrent_requests_to_one_model_queue_instead_of_crashing(daemon: DaemonProc) -> None:
    results: list[Any] = []

    def worker(i: int) -> None:
        r = daemon.client().post(CHAT, json=ask(f"Say the number {i}.", max_tokens=6))
        results.append((r.status_code, r.json()))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == 6
    assert all(status == 200 and body["choices"][0]["message"]["content"] for status, body in results)
    assert daemon.proc.poll() is None


def test_per_request_keep_alive_zero_unloads_after_the_answer(daemon: DaemonProc) -> None:
    c = daemon.client()
    r = c.post(
        "/v1/completions", json={"model": "gemma3-270m", "prompt": "Once upon a time", "max_tokens": 4, "keep_alive": 0}
    )
    assert r.status_code == 200 and r.json()["choices"][0]["text"]
    assert wait_for(lambda: model_row(daemon, "gemma3-270m") is None)
    assert wait_for(lambda: "unloaded gemma3-270m (keep-alive expired)" in daemon.log_text())


# ------------------------------------------------------------------ bad input and faults


def test_unknown_model_is_404_naming_the_available_ones(daemon: DaemonProc) -> None:
    r = daemon.client().post(CHAT, json=ask(model="gpt-9"))
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and "smollm2-135m" in err["message"] and err["hint"]
    assert daemon.client().post("/tiqo/models/gpt-9/load").status_code == 404


def test_malformed_json_is_400_and_wrong_types_are_422_naming_the_field(daemon: DaemonProc) -> None:
    c = daemon.client()
    r = c.post(CHAT, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = c.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "max_tokens"
    r = c.post(CHAT, json={"messages": [{"role": "wizard", "content": "hi"}]})
    assert r.status_code == 422 and "messages.0.role" in r.json()["error"]["message"]
    r = c.post(CHAT, json={"messages": []})
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages"
    r = c.post(CHAT, json=ask(temperature=7))
    assert r.status_code == 422 and r.json()["error"]["param"] == "temperature"


def test_prompt_longer_than_the_context_window_is_400(daemon: DaemonProc) -> None:
    c = daemon.client()
    huge = ask("hello " * 6000)
    for body in (huge, {**huge, "stream": True}):
        r = c.post(CHAT, json=body)
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and "context window of 4096" in err["message"]
    assert c.post(CHAT, json=ask(max_tokens=2)).status_code == 200  # still serving


def test_body_over_the_size_limit_is_413(daemon: DaemonProc) -> None:
    r = daemon.client().post(CHAT, content=b"x" * (17 * 2**20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def _endless(**extra: Any) -> dict[str, Any]:
    # Forbid the end-of-sequence token so the model would write until its context is full (minutes).
    return ask("Write a very long story.", max_tokens=3000, temperature=0.7, logit_bias={"2": -100}, **extra)


def test_client_disconnect_mid_stream_stops_generation(daemon: DaemonProc) -> None:
    c = daemon.client()
    with c.stream("POST", CHAT, json=_endless(stream=True)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        got = [next(lines) for _ in range(8)]
    assert any("content" in line for line in got)
    row = wait_for(lambda: (m := model_row(daemon, "smollm2-135m")) and m["in_flight"] == 0 and m)
    assert row, "generation kept running after the client hung up"
    assert c.post(CHAT, json=ask(max_tokens=2)).status_code == 200


def test_client_disconnect_during_a_plain_request_stops_generation(daemon: DaemonProc) -> None:
    body = json.dumps(_endless()).encode()
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(daemon.socket))
    raw.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: tiqo\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert wait_for(lambda: (m := model_row(daemon, "smollm2-135m")) and m["in_flight"] == 1)
    raw.close()
    assert wait_for(lambda: (m := model_row(daemon, "smollm2-135m")) and m["in_flight"] == 0)
    assert wait_for(lambda: "client disconnected; generation stopped" in daemon.log_text())


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\xfe garbage \r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\n" + b"A" * 70000,
        os.urandom(4096),
    ],
)
def test_garbage_on_the_socket_does_not_hurt_the_daemon(daemon: DaemonProc, garbage: bytes) -> None:
    raw = socket.socket(socket.AF_UNIX)
    raw.settimeout(5)
    raw.connect(str(daemon.socket))
    try:
        raw.sendall(garbage)
        raw.shutdown(socket.SHUT_WR)
        raw.recv(4096)
    except OSError:
        pass
    finally:
        raw.close()
    assert daemon.client().get("/tiqo/health").json()["status"] == "ok"
    assert daemon.proc.poll() is None


def test_socket_is_0600_in_a_0700_folder(daemon: DaemonProc) -> None:
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(daemon.socket.stat().st_mode)
    assert stat.S_IMODE(daemon.socket.parent.stat().st_mode) == 0o700


# ------------------------------------------------------------------ the model catalog


def test_add_chat_and_remove_a_local_gguf(daemon: DaemonProc, tmp_path: Path) -> None:
    c = daemon.client()
    copy = tmp_path / "my-model.gguf"
    shutil.copy(smollm_path(), copy)
    r = c.post("/tiqo/models", json={"name": "mine", "path": str(copy), "keep_alive": "1m"})
    assert r.status_code == 201, r.text
    assert "mine" in [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert "mine" in (daemon.home / "config" / "config.toml").read_text()
    r = c.post(CHAT, json=ask(model="mine", max_tokens=3))
    assert r.status_code == 200 and r.headers["x-tiqo-model"] == "mine"
    assert model_row(daemon, "mine")["keep_alive_s"] == 60  # the model's own keep-alive
    assert c.post("/tiqo/models", json={"name": "mine", "path": str(copy)}).status_code == 409
    assert c.delete("/tiqo/models/mine").status_code == 200
    assert model_row(daemon, "mine") is None
    assert "mine" not in [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert c.delete("/tiqo/models/smollm2-135m").status_code == 409


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a model at all", "not a GGUF file"),
        (b"GGUF\x03\x00\x00\x00" + b"\x01" * 40, "corrupt GGUF header"),
        (b"", "not a GGUF file"),
    ],
)
def test_corrupt_or_non_gguf_file_is_refused_and_nothing_registered(
    daemon: DaemonProc, tmp_path: Path, content: bytes, message: str
) -> None:
    c = daemon.client()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    r = c.post("/tiqo/models", json={"name": "bad", "path": str(bad)})
    assert r.status_code == 400 and message in r.json()["error"]["message"]
    assert "bad" not in [m["id"] for m in c.get("/v1/models").json()["data"]]
    config = daemon.home / "config" / "config.toml"
    assert not config.exists() or "bad.gguf" not in config.read_text()
    r = c.post("/tiqo/models", json={"name": "nofile", "path": str(tmp_path / "missing.gguf")})
    assert r.status_code == 400 and r.json()["error"]["code"] == "file_not_found"


def test_unloading_gives_the_memory_back(fresh_daemon: DaemonProc) -> None:
    import psutil

    c = fresh_daemon.client()
    proc = psutil.Process(fresh_daemon.proc.pid)
    before = proc.memory_info().rss
    assert c.post("/tiqo/models/gemma3-270m/load").status_code == 200
    assert (
        c.post("/v1/completions", json={"model": "gemma3-270m", "prompt": "Hello", "max_tokens": 4}).status_code == 200
    )
    loaded = proc.memory_info().rss
    assert loaded - before > 200 * 2**20  # 253 MB of weights plus the KV cache
    assert c.post("/tiqo/models/gemma3-270m/unload").json()["unloaded"] is True
    after = proc.memory_info().rss
    assert after - before < 0.25 * (loaded - before), (before, loaded, after)
    assert c.get("/tiqo/ps").json()["models"] == []
