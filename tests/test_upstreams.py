"""The provider stub in tests/upstreams.py speaks the real OpenAI / Anthropic / Gemini wire protocols.

OpenAI is checked with the official ``openai`` SDK; Anthropic and Gemini byte-for-byte with httpx.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.upstreams import FAULTS, Upstream, UpstreamProcess, split_pieces

ANTHROPIC_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
GEMINI_HEADERS = {"x-goog-api-key": "k"}
GEMINI_STREAM = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
GEMINI_GENERATE = "/v1beta/models/gemini-2.0-flash:generateContent"


@pytest.fixture(scope="module")
def server() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture
def up(server: Upstream) -> Iterator[Upstream]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def http(up: Upstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=up.url, timeout=5) as client:
        yield client


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def sdk(up: Upstream, key: str = "k") -> openai.OpenAI:
    """An official OpenAI client on the stub (no retries), closed after the test."""
    client = openai.OpenAI(base_url=up.url + "/v1", api_key=key, max_retries=0, timeout=5)
    _clients.append(client)
    return client


def oa_body(text: str = "hello big world", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def an_body(text: str = "hello big world", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-3-5-haiku-latest",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def ge_body(text: str = "hello big world", **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


def sse_events(raw: str) -> list[tuple[str | None, Any]]:
    """Parse Anthropic-style SSE: [(event name, data JSON)], checking every event is `event:` + `data:`."""
    out: list[tuple[str | None, Any]] = []
    assert raw.endswith("\n\n")
    for block in raw[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


# ------------------------------------------------------------------------------------------------- OpenAI


def test_split_pieces_keeps_all_text() -> None:
    assert split_pieces("echo: hello  big world") == ["echo: ", "hello  ", "big ", "world"]
    assert split_pieces("  lead") == ["  lead"]
    assert split_pieces("") == []
    assert sorted(FAULTS) == ["429", "500", "503", "529", "hang", "midstream", "reset", "slow"]


def test_openai_sdk_non_stream(up: Upstream) -> None:
    resp = sdk(up, "sk-a").chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "be terse"}, {"role": "user", "content": "hello big world"}],
    )
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-") and resp.model == "gpt-4o-mini"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == "echo: hello big world"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (5, 4, 9)
    rec = up.requests[-1]
    assert rec["protocol"] == "openai" and rec["method"] == "POST" and rec["path"] == "/v1/chat/completions"
    assert rec["key"] == "sk-a" and rec["headers"]["authorization"] == "Bearer sk-a" and rec["status"] == 200
    assert rec["json"]["messages"][1]["content"] == "hello big world"


def test_openai_sdk_stream_with_usage(up: Upstream) -> None:
    stream = sdk(up).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hello big world"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    texts = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert texts == ["echo: ", "hello ", "big ", "world"]
    assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-2].choices[0].delta.content is None
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)


def test_openai_raw_stream_framing_and_length(http: httpx.Client) -> None:
    body = oa_body(stream=True, max_completion_tokens=2)
    with http.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "echo: "},
        {"content": "hello "},
        {},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks)  # no include_usage: no usage chunk and no usage keys


def test_openai_sdk_rate_limit_retry_after(up: Upstream) -> None:
    up.fail_next(1, "429", retry_after=7)
    with pytest.raises(openai.RateLimitError) as info:
        sdk(up).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    err = info.value
    assert err.status_code == 429 and err.code == "rate_limit_exceeded"
    assert err.response.headers["retry-after"] == "7"
    assert err.body == {
        "message": err.body["message"],
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert up.requests[-1]["status"] == 429 and up.requests[-1]["fault"] == "429"
    # the fault was consumed: the next request succeeds
    ok = sdk(up).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert ok.choices[0].message.content == "echo: hi"


def test_openai_sdk_tool_calls(up: Upstream) -> None:
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    client = sdk(up)
    resp = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "find x"}], tools=tools
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"text": "find x"}

    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "find x"}], tools=tools, stream=True
        )
    )
    deltas = [c.choices[0].delta for c in chunks]
    assert deltas[0].tool_calls[0].function.name == "lookup"  # type: ignore[index]
    parts = [d.tool_calls[0].function.arguments for d in deltas[1:3]]  # type: ignore[index]
    assert len(parts) == 2 and all(parts) and json.loads("".join(parts)) == {"text": "find x"}  # type: ignore[arg-type]
    assert all(d.tool_calls[0].index == 0 for d in deltas[:3])  # type: ignore[index]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # after the tool result the "model" answers with text
    after = client.chat.completions.create(
        model="gpt-4o-mini",
        tools=tools,
        messages=[
            {"role": "user", "content": "find x"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "x is 4"},
        ],
    )
    assert after.choices[0].message.content == "echo: x is 4" and after.choices[0].finish_reason == "stop"


def test_openai_sdk_models_and_errors(up: Upstream) -> None:
    assert [m.id for m in sdk(up).models.list()][:1] == ["gpt-4o-mini"]
    up.valid_keys = {"good"}
    with pytest.raises(openai.AuthenticationError) as auth:
        sdk(up, "bad").chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert auth.value.status_code == 401 and auth.value.code == "invalid_api_key"
    assert auth.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert up.requests[-1]["key"] == "bad" and up.requests[-1]["status"] == 401
    up.fail_next(1, "500")
    up.fail_next(1, "503")
    with pytest.raises(openai.InternalServerError) as e500:
        sdk(up, "good").chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert e500.value.status_code == 500 and e500.value.body["type"] == "server_error"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError) as e503:
        sdk(up, "good").chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert e503.value.status_code == 503


def test_openai_missing_key_and_quota(up: Upstream, http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json=oa_body())
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    assert up.requests[-1]["key"] is None
    up.set_quota("a", 2, retry_after=30)
    for _ in range(2):
        assert http.post("/v1/chat/completions", json=oa_body(), headers={"Authorization": "Bearer a"}).is_success
    r = http.post("/v1/chat/completions", json=oa_body(), headers={"Authorization": "Bearer a"})
    assert r.status_code == 429 and r.headers["retry-after"] == "30"
    assert r.json() == {
        "error": {
            "message": r.json()["error"]["message"],
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    assert http.post("/v1/chat/completions", json=oa_body(), headers={"Authorization": "Bearer b"}).is_success


# ---------------------------------------------------------------------------------------------- Anthropic


def test_anthropic_non_stream(up: Upstream, http: httpx.Client) -> None:
    body = an_body(system=[{"type": "text", "text": "be terse"}], temperature=0.1, top_p=0.9)
    body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "hello big world"}]}]
    r = http.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    msg = r.json()
    assert msg["id"].startswith("msg_")
    assert msg == {
        "id": msg["id"],
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-latest",
        "content": [{"type": "text", "text": "echo: hello big world"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 4},
    }
    assert up.requests[-1]["protocol"] == "anthropic" and up.requests[-1]["key"] == "k"
    r = http.post("/v1/messages", json=an_body(max_tokens=1), headers=ANTHROPIC_HEADERS)
    assert r.json()["stop_reason"] == "max_tokens" and r.json()["content"][0]["text"] == "echo: "
    r = http.post("/v1/messages", json=an_body(stop_sequences=["big"]), headers=ANTHROPIC_HEADERS)
    assert r.json()["stop_reason"] == "stop_sequence" and r.json()["stop_sequence"] == "big"
    assert r.json()["content"][0]["text"] == "echo: hello "


def test_anthropic_stream_event_sequence(http: httpx.Client) -> None:
    with http.stream("POST", "/v1/messages", json=an_body(stream=True), headers=ANTHROPIC_HEADERS) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["role"] == "assistant"
    assert start["usage"] == {"input_tokens": 3, "output_tokens": 1}
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert [d["delta"] for _, d in events[3:7]] == [
        {"type": "text_delta", "text": t} for t in ["echo: ", "hello ", "big ", "world"]
    ]
    assert all(d["index"] == 0 for _, d in events[3:8])
    assert events[8][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 4},
    }


def test_anthropic_stream_tool_use(http: httpx.Client) -> None:
    body = an_body("find x", stream=True, tools=[{"name": "lookup", "input_schema": {"type": "object"}}])
    with http.stream("POST", "/v1/messages", json=body, headers=ANTHROPIC_HEADERS) as r:
        events = sse_events(r.read().decode())
    block = events[1][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "lookup" and block["input"] == {}
    assert block["id"].startswith("toolu_")
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert len(deltas) == 2 and all(d["type"] == "input_json_delta" for d in deltas)
    assert json.loads("".join(d["partial_json"] for d in deltas)) == {"text": "find x"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    r = http.post("/v1/messages", json={**body, "stream": False}, headers=ANTHROPIC_HEADERS)
    assert r.json()["stop_reason"] == "tool_use"
    assert r.json()["content"][0]["input"] == {"text": "find x"}


def test_anthropic_validation_and_errors(up: Upstream, http: httpx.Client) -> None:
    r = http.post("/v1/messages", json=an_body(), headers={"x-api-key": "k"})
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error" and "anthropic-version" in r.json()["error"]["message"]
    body = an_body()
    del body["max_tokens"]
    r = http.post("/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = http.post("/v1/messages", json=an_body(), headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    up.valid_keys = {"good"}
    r = http.post("/v1/messages", json=an_body(), headers=ANTHROPIC_HEADERS)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    up.valid_keys = None
    for fault, status, kind in [
        ("429", 429, "rate_limit_error"),
        ("500", 500, "api_error"),
        ("529", 529, "overloaded_error"),
    ]:
        up.fail_next(1, fault)
        r = http.post("/v1/messages", json=an_body(stream=True), headers=ANTHROPIC_HEADERS)
        assert r.status_code == status
        assert r.json() == {"type": "error", "error": {"type": kind, "message": r.json()["error"]["message"]}}
    assert up.requests[-3]["status"] == 429
    up.set_quota("k", 0)
    r = http.post("/v1/messages", json=an_body(), headers=ANTHROPIC_HEADERS)
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"


def test_anthropic_midstream(up: Upstream, http: httpx.Client) -> None:
    up.fail_next(1, "midstream", after=1)
    seen: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/v1/messages", json=an_body(stream=True), headers=ANTHROPIC_HEADERS) as r,
    ):
        seen.extend(r.iter_lines())
    assert [line for line in seen if line.startswith("event:")] == [
        "event: message_start",
        "event: content_block_start",
        "event: ping",
        "event: content_block_delta",
    ]
    up.fail_next(1, "midstream", as_event=True)
    with http.stream("POST", "/v1/messages", json=an_body(stream=True), headers=ANTHROPIC_HEADERS) as r:
        events = sse_events(r.read().decode())
    assert [n for n, _ in events][-3:] == ["content_block_delta", "content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


# ------------------------------------------------------------------------------------------------- Gemini


def test_gemini_generate(up: Upstream, http: httpx.Client) -> None:
    body = ge_body(
        systemInstruction={"parts": [{"text": "be terse"}]},
        generationConfig={"temperature": 0.2, "topP": 0.9, "maxOutputTokens": 100},
    )
    r = http.post(GEMINI_GENERATE, json=body, headers=GEMINI_HEADERS)
    assert r.status_code == 200
    assert r.json() == {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": "echo: hello big world"}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 4, "totalTokenCount": 9},
        "modelVersion": "gemini-2.0-flash",
    }
    rec = up.requests[-1]
    assert rec["protocol"] == "gemini" and rec["key"] == "k" and rec["headers"]["x-goog-api-key"] == "k"
    r = http.post(GEMINI_GENERATE, json=ge_body(generationConfig={"maxOutputTokens": 2}), headers=GEMINI_HEADERS)
    assert r.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == "echo: hello "


def test_gemini_stream_sse(http: httpx.Client) -> None:
    with http.stream("POST", GEMINI_STREAM, json=ge_body(), headers=GEMINI_HEADERS) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("\r\n\r\n") and "[DONE]" not in raw
    events = raw.split("\r\n\r\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    chunks = [json.loads(e[6:]) for e in events]
    assert ["".join(p["text"] for p in c["candidates"][0]["content"]["parts"]) for c in chunks] == [
        "echo: ",
        "hello ",
        "big ",
        "world",
    ]
    assert all("finishReason" not in c["candidates"][0] and "usageMetadata" not in c for c in chunks[:-1])
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"] == {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7}
    assert all(c["modelVersion"] == "gemini-2.0-flash" for c in chunks)


def test_gemini_key_in_url_is_a_violation(up: Upstream, http: httpx.Client) -> None:
    r = http.post(GEMINI_GENERATE + "?key=secret", json=ge_body())
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert len(up.violations) == 1 and "key=" in up.violations[0]
    assert up.requests[-1]["query"] == "key=secret" and up.requests[-1]["status"] == 400


def test_gemini_errors(up: Upstream, http: httpx.Client) -> None:
    up.valid_keys = {"good"}
    r = http.post(GEMINI_GENERATE, json=ge_body(), headers=GEMINI_HEADERS)
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
        }
    }
    up.valid_keys = None
    up.fail_next(1, "429", retry_after=7)
    r = http.post(GEMINI_STREAM, json=ge_body(), headers=GEMINI_HEADERS)
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    err = r.json()["error"]
    assert err["code"] == 429 and err["status"] == "RESOURCE_EXHAUSTED"
    assert err["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}]
    for fault, status in [("500", "INTERNAL"), ("503", "UNAVAILABLE")]:
        up.fail_next(1, fault)
        r = http.post(GEMINI_GENERATE, json=ge_body(), headers=GEMINI_HEADERS)
        assert r.status_code == int(fault) and r.json()["error"]["status"] == status
        assert r.json()["error"]["code"] == int(fault)
    up.set_quota("k", 1)
    assert http.post(GEMINI_GENERATE, json=ge_body(), headers=GEMINI_HEADERS).status_code == 200
    r = http.post(GEMINI_GENERATE, json=ge_body(), headers=GEMINI_HEADERS)
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_gemini_midstream_has_no_finish(up: Upstream, http: httpx.Client) -> None:
    up.fail_next(1, "midstream", after=2)
    lines: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", GEMINI_STREAM, json=ge_body(), headers=GEMINI_HEADERS) as r,
    ):
        lines.extend(line for line in r.iter_lines() if line)
    assert len(lines) == 2 and all("finishReason" not in line for line in lines)


# ------------------------------------------------------------------------------------------ faults, misc


def test_reset_is_a_transport_error(up: Upstream, http: httpx.Client) -> None:
    for path, body, headers in [
        ("/v1/chat/completions", oa_body(), {"Authorization": "Bearer k"}),
        ("/v1/messages", an_body(), ANTHROPIC_HEADERS),
        (GEMINI_GENERATE, ge_body(), GEMINI_HEADERS),
    ]:
        up.fail_next(1, "reset")
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            http.post(path, json=body, headers=headers)
    assert [r["status"] for r in up.requests] == [0, 0, 0]
    assert http.post("/v1/messages", json=an_body(), headers=ANTHROPIC_HEADERS).status_code == 200


def test_openai_midstream_and_sdk_sees_connection_error(up: Upstream, http: httpx.Client) -> None:
    up.fail_next(1, "midstream")
    lines: list[str] = []
    body = oa_body(stream=True)
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}) as r,
    ):
        lines.extend(line for line in r.iter_lines() if line)
    assert len(lines) == 3 and "data: [DONE]" not in lines  # role chunk + 2 content pieces
    up.fail_next(1, "reset")
    with pytest.raises(openai.APIConnectionError):
        sdk(up).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])


def test_hang_times_out_and_does_not_block_stop() -> None:
    with Upstream() as own:
        own.fail_next(2, "hang")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(own.url + "/v1/messages", json=an_body(), headers=ANTHROPIC_HEADERS, timeout=0.3)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                httpx.post(own.url + GEMINI_GENERATE, json=ge_body(), headers=GEMINI_HEADERS, timeout=10)
            except BaseException as exc:
                errors.append(exc)

        hanging = threading.Thread(target=call)
        hanging.start()
        time.sleep(0.2)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3
    hanging.join(5)
    assert len(errors) == 1 and isinstance(errors[0], httpx.TransportError)


def test_slow_mode_delay_and_modes(up: Upstream, http: httpx.Client) -> None:
    up.fail_next(1, "slow", delay=0.05, first_delay=0.1)
    t0 = time.monotonic()
    with http.stream("POST", GEMINI_STREAM, json=ge_body(), headers=GEMINI_HEADERS) as r:
        first = time.monotonic() - t0
        chunks = [line for line in r.iter_lines() if line]
    total = time.monotonic() - t0
    assert len(chunks) == 4 and first >= 0.1 and total >= 0.1 + 3 * 0.05
    up.mode = "503"
    for _ in range(3):
        assert http.post("/v1/messages", json=an_body(), headers=ANTHROPIC_HEADERS).status_code == 503
    up.mode = None
    assert http.post("/v1/messages", json=an_body(), headers=ANTHROPIC_HEADERS).status_code == 200
    up.delay_s = 0.15
    t0 = time.monotonic()
    assert http.post(GEMINI_GENERATE, json=ge_body(), headers=GEMINI_HEADERS).status_code == 200
    assert time.monotonic() - t0 >= 0.15
    up.reply = "fixed reply"
    r = http.post("/v1/chat/completions", json=oa_body(), headers={"Authorization": "Bearer k"})
    assert r.json()["choices"][0]["message"]["content"] == "fixed reply"
    with pytest.raises(ValueError):
        up.fail_next(1, "teapot")
    up.fail_next(2, "500")
    up.reset()
    assert up.requests == [] and up.violations == [] and up.reply is None and up.delay_s == 0
    assert http.post("/v1/messages", json=an_body(), headers=ANTHROPIC_HEADERS).status_code == 200


def test_process_mode_and_control_api() -> None:
    with UpstreamProcess() as proc:
        assert proc.url.startswith("http://127.0.0.1:")
        client = openai.OpenAI(base_url=proc.url + "/v1", api_key="k", max_retries=0, timeout=5)
        _clients.append(client)
        out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
        assert out.choices[0].message.content == "echo: ping"
        proc.control(fail_next=[1, "429", {"retry_after": 3}], reply="pong")
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
        assert info.value.response.headers["retry-after"] == "3"
        out = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
        assert out.choices[0].message.content == "pong"
        proc.control(valid_keys=["other"], quota=["other", 0, 5])
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
        httpx.post(proc.url + GEMINI_GENERATE + "?key=k", json=ge_body(), timeout=5)
        recorded = proc.recorded()
        assert [r["status"] for r in recorded["requests"]] == [200, 429, 200, 401, 400]
        assert len(recorded["violations"]) == 1
        proc.control(reset=True, mode="500")
        r = httpx.post(proc.url + "/v1/messages", json=an_body(), headers=ANTHROPIC_HEADERS, timeout=5)
        assert r.status_code == 500 and r.json()["error"]["type"] == "api_error"
        assert len(proc.recorded()["requests"]) == 1
        assert httpx.post(proc.url + "/_stub/control", json={"mode": "nope"}, timeout=5).status_code == 400
        popen = proc.proc
    assert popen is not None and popen.returncode == 0
