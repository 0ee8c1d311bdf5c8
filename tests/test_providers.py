# ruff: noqa: E501  (the recorded SSE bodies below are kept byte for byte as the APIs send them)
"""The first-party provider kinds (plugins/tiqo-providers): request translation, stream translation from recorded
SSE bodies, failure classification, and loading through the ``tiqo`` entry points. Pure: no network."""

from __future__ import annotations

import datetime as dt
import json
import time
from importlib.metadata import entry_points
from typing import Any

import pluggy
import pytest
from tiqo_providers import UnsupportedRequest
from tiqo_providers._common import duration_seconds, redact
from tiqo_providers.anthropic import AnthropicKind
from tiqo_providers.gemini import GeminiKind, seconds_to_pacific_midnight
from tiqo_providers.openai import OpenAIKind

import tiqo.sdk
import tiqo.sdk.hookspecs
from tiqo.sdk import ProviderConfig, ProviderKind, StreamTranslator, UpstreamProtocolError

KEY = "sk-test-SECRETKEY1234567890"
GKEY = "AIzaSyD-SECRETKEY1234567890abcdefghi"

OPENAI = OpenAIKind()
ANTHROPIC = AnthropicKind()
GEMINI = GeminiKind()


def config(kind: str, base_url: str = "", **options: Any) -> ProviderConfig:
    return ProviderConfig(name=f"my-{kind}", kind=kind, base_url=base_url, options=options)


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    """Split an SSE body into (event, data) the way the daemon does: blank-line separated, CRLF or LF."""
    events: list[tuple[str | None, str]] = []
    for block in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
        event: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
        if data:
            events.append((event, "\n".join(data)))
    return events


def translate(translator: StreamTranslator, raw: str) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    for event, data in sse_events(raw):
        chunks.extend(translator.feed(event, data))
    chunks.extend(translator.close())
    return chunks


def feed_only(translator: StreamTranslator, raw: str) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = []
    for event, data in sse_events(raw):
        chunks.extend(translator.feed(event, data))
    return chunks


def content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]


def usages(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["usage"] for c in chunks if c.get("usage")]


def tool_calls(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool-call deltas folded the way an OpenAI client does: by index, arguments concatenated."""
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        if not c["choices"]:
            continue
        for delta in c["choices"][0]["delta"].get("tool_calls") or []:
            call = calls.setdefault(delta["index"], {"id": None, "name": None, "arguments": ""})
            if delta.get("id"):
                call["id"] = delta["id"]
            function = delta.get("function") or {}
            if function.get("name"):
                call["name"] = function["name"]
            call["arguments"] += function.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def assert_openai_chunk_shape(chunks: list[dict[str, Any]], model: str) -> None:
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == model
        assert isinstance(c["created"], int) and isinstance(c["id"], str)
        if c["choices"]:
            (choice,) = c["choices"]
            assert choice["index"] == 0 and "logprobs" in choice and "finish_reason" in choice
            assert isinstance(choice["delta"], dict)
        else:
            assert set(c["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
                "additionalProperties": False,
            },
        },
    }
]

TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_p", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_r", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_p", "content": '{"temp": 18}'},
    {"role": "tool", "tool_call_id": "call_r", "content": "sunny"},
    {"role": "user", "content": "Thanks. Which is warmer?"},
]


# ========================================================================================================= openai


def test_openai_request_passes_the_body_through() -> None:
    body = {
        "model": "alias",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": TOOLS,
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "some_future_field": {"x": 1},
        "stream": False,
        "stream_options": {"include_obfuscation": False},
        "keep_alive": "5m",
        "tiqo_route": "cheap",
        "tiqo": {"cache": False},
    }
    req = OPENAI.chat_request(config("openai", "https://api.groq.com/openai/v1/"), "llama-3.3-70b", body, KEY)
    assert req.method == "POST"
    assert req.url == "https://api.groq.com/openai/v1/chat/completions"
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["Accept"] == "text/event-stream"
    assert KEY not in req.url
    assert req.json == {
        "model": "llama-3.3-70b",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": TOOLS,
        "response_format": {"type": "json_object"},
        "logprobs": True,
        "some_future_field": {"x": 1},
        "stream": True,
        "stream_options": {"include_obfuscation": False, "include_usage": True},
    }
    assert body["stream"] is False and body["model"] == "alias"  # the caller's body is not modified


@pytest.mark.parametrize(
    ("options", "key", "expected_headers", "stream_options"),
    [
        ({}, None, {"Content-Type": "application/json", "Accept": "text/event-stream"}, {"include_usage": True}),
        (
            {"headers": {"HTTP-Referer": "https://example.org", "X-Title": "tiqo"}},
            "k",
            {
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
                "Authorization": "Bearer k",
                "HTTP-Referer": "https://example.org",
                "X-Title": "tiqo",
            },
            {"include_usage": True},
        ),
        (
            {"headers": {"authorization": "Basic abc"}, "stream_usage": False},
            "k",
            {"Content-Type": "application/json", "Accept": "text/event-stream", "authorization": "Basic abc"},
            None,
        ),
    ],
)
def test_openai_request_headers_and_options(
    options: dict[str, Any], key: str | None, expected_headers: dict[str, str], stream_options: Any
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    req = OPENAI.chat_request(config("openai", **options), "gpt-4o-mini", body, key)
    assert req.url == "https://api.openai.com/v1/chat/completions"  # default_base_url when none configured
    assert req.headers == expected_headers
    assert req.json.get("stream_options") == stream_options


OPENAI_TEXT_STREAM = r"""data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1727000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1727000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1727000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"content":" there!"},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1727000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}],"usage":null}

data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1727000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}

data: [DONE]

"""

OPENAI_TOOL_STREAM = r"""data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1727000001,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_Q1","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1727000001,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1727000001,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\": \"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}

data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1727000001,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}

data: {"id":"chatcmpl-T1","object":"chat.completion.chunk","created":1727000001,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":80,"completion_tokens":16,"total_tokens":96}}

data: [DONE]

"""


def test_openai_stream_passes_chunks_through() -> None:
    chunks = translate(OPENAI.translator("gpt-4o-mini"), OPENAI_TEXT_STREAM)
    assert len(chunks) == 5
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content(chunks) == "Hello there!"
    assert finish_reasons(chunks) == ["stop"]
    assert usages(chunks) == [
        {
            "prompt_tokens": 9,
            "completion_tokens": 3,
            "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
    ]
    assert chunks[1]["system_fingerprint"] == "fp_0ba0d124f1"  # unknown fields pass through too


def test_openai_tool_call_stream() -> None:
    chunks = translate(OPENAI.translator("gpt-4o"), OPENAI_TOOL_STREAM)
    assert tool_calls(chunks) == [{"id": "call_Q1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert finish_reasons(chunks) == ["tool_calls"]
    assert usages(chunks)[0]["total_tokens"] == 96


def test_openai_stream_without_done_is_truncated() -> None:
    truncated = OPENAI_TEXT_STREAM.replace("data: [DONE]\n", "")
    translator = OPENAI.translator("gpt-4o-mini")
    assert len(feed_only(translator, truncated)) == 5
    with pytest.raises(UpstreamProtocolError, match=r"\[DONE\]"):
        translator.close()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            'data: {"error":{"message":"The server had an error while processing your request.","type":"server_error"}}',
            "The server had an error while processing your request.",
        ),
        (  # OpenRouter: a provider failed after the 200
            'data: {"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"x",'
            '"error":{"code":502,"message":"Provider returned error"},'
            '"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}',
            "Provider returned error",
        ),
        ('event: error\ndata: {"message":"worker crashed"}', "worker crashed"),
        ("data: not json at all", "not JSON"),
    ],
)
def test_openai_error_in_stream(raw: str, message: str) -> None:
    translator = OPENAI.translator("m")
    translator.feed(None, OPENAI_TEXT_STREAM.split("\n\n")[0].removeprefix("data: "))
    with pytest.raises(UpstreamProtocolError, match=message):
        for event, data in sse_events(raw + "\n\n"):
            translator.feed(event, data)


# ====================================================================================================== anthropic


def test_anthropic_request_translation() -> None:
    body = {
        "model": "alias",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}]},
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": "Thanks"},
        ],
        "temperature": 1.7,
        "top_p": 0.9,
        "stop": "END",
        "user": "user-42",
        "max_tokens": 300,
        "frequency_penalty": 0.5,  # no Anthropic equivalent: dropped
        "keep_alive": "5m",
    }
    req = ANTHROPIC.chat_request(config("anthropic"), "claude-sonnet-4-5", body, KEY)
    assert req.url == "https://api.anthropic.com/v1/messages"
    assert req.headers == {
        "x-api-key": KEY,
        "anthropic-version": "2023-06-01",
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
    }
    assert KEY not in req.url and "Authorization" not in req.headers
    assert req.json == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "stream": True,
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "What is this?"}],
            },
            {"role": "assistant", "content": "Bonjour"},
            {"role": "user", "content": "Thanks"},
        ],
        "temperature": 1.0,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
    }


@pytest.mark.parametrize(
    ("fields", "options", "max_tokens"),
    [
        ({}, {}, 4096),
        ({}, {"default_max_tokens": 1024}, 1024),
        ({"max_tokens": 50}, {"default_max_tokens": 1024}, 50),
        ({"max_tokens": 50, "max_completion_tokens": 70}, {}, 70),
    ],
)
def test_anthropic_max_tokens_is_always_set(fields: dict[str, Any], options: dict[str, Any], max_tokens: int) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    assert ANTHROPIC.chat_request(config("anthropic", **options), "m", body, KEY).json["max_tokens"] == max_tokens


def test_anthropic_options_version_base_url_and_headers() -> None:
    cfg = config("anthropic", "https://proxy.example/", api_version="2024-01-01", headers={"anthropic-beta": "x-2025"})
    req = ANTHROPIC.chat_request(cfg, "m", {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b"]}, KEY)
    assert req.url == "https://proxy.example/v1/messages"
    assert req.headers["anthropic-version"] == "2024-01-01"
    assert req.headers["anthropic-beta"] == "x-2025"
    assert req.json["stop_sequences"] == ["a", "b"]
    assert "system" not in req.json and "temperature" not in req.json


def test_anthropic_tools_tool_calls_and_tool_results() -> None:
    body = {"messages": TOOL_CONVERSATION, "tools": TOOLS, "tool_choice": "auto"}
    payload = ANTHROPIC.chat_request(config("anthropic"), "m", body, KEY).json
    assert payload["system"] == "Be brief."
    assert payload["tools"] == [
        {"name": "get_weather", "description": "Weather in a city", "input_schema": TOOLS[0]["function"]["parameters"]}
    ]
    assert payload["tool_choice"] == {"type": "auto"}
    assert payload["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_p", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_r", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {  # both tool results and the next user turn in one user message: Anthropic requires alternation
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_p", "content": '{"temp": 18}'},
                {"type": "tool_result", "tool_use_id": "call_r", "content": "sunny"},
                {"type": "text", "text": "Thanks. Which is warmer?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        (None, None, None),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, None, {"type": "tool", "name": "get_weather"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_anthropic_tool_choice(tool_choice: Any, parallel: Any, expected: Any) -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    payload = ANTHROPIC.chat_request(config("anthropic"), "m", body, KEY).json
    assert payload.get("tool_choice") == expected
    assert len(payload["tools"]) == 1


def test_anthropic_tool_choice_none() -> None:
    plain = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "tool_choice": "none"}
    payload = ANTHROPIC.chat_request(config("anthropic"), "m", plain, KEY).json
    assert "tools" not in payload and "tool_choice" not in payload
    # with tool blocks in the history Anthropic needs the tools defined: they stay, with choice "none"
    history = {"messages": TOOL_CONVERSATION, "tools": TOOLS, "tool_choice": "none"}
    payload = ANTHROPIC.chat_request(config("anthropic"), "m", history, KEY).json
    assert payload["tool_choice"] == {"type": "none"} and len(payload["tools"]) == 1


def test_anthropic_images() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.org/cat.jpg", "detail": "low"}},
                ],
            }
        ]
    }
    payload = ANTHROPIC.chat_request(config("anthropic"), "m", body, KEY).json
    assert payload["messages"][0]["content"] == [
        {"type": "text", "text": "Describe"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
        {"messages": [{"role": "user", "content": "hi"}], "n": 2},
        {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "web_search"}]},
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
                }
            ]
        },
    ],
)
def test_untranslatable_bodies_raise_unsupported_request(body: dict[str, Any]) -> None:
    for kind in (ANTHROPIC, GEMINI):
        with pytest.raises(UnsupportedRequest):
            kind.chat_request(config(kind.kind), "m", body, KEY)
    assert issubclass(UnsupportedRequest, ValueError)


ANTHROPIC_TEXT_STREAM = r"""event: message_start
data: {"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":10,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}

event: message_stop
data: {"type":"message_stop"}

"""

ANTHROPIC_TOOL_STREAM = r"""event: message_start
data: {"type":"message_start","message":{"id":"msg_014p7gG3wDgGV9EUtLvnow3U","type":"message","role":"assistant","model":"claude-opus-4-1","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: content_block_start
data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Pa"}}

event: content_block_delta
data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"ris\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":1}

event: content_block_start
data: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_02","name":"get_weather","input":{}}}

event: content_block_delta
data: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"city\": \"Rome\"}"}}

event: content_block_stop
data: {"type":"content_block_stop","index":2}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}

event: message_stop
data: {"type":"message_stop"}

"""


def test_anthropic_text_stream() -> None:
    chunks = translate(ANTHROPIC.translator("claude-sonnet-4-5"), ANTHROPIC_TEXT_STREAM)
    assert_openai_chunk_shape(chunks, "claude-sonnet-4-5")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert content(chunks) == "Hello!"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"  # the finish chunk, then the usage chunk
    assert chunks[-1]["choices"] == []
    assert usages(chunks) == [
        {
            "prompt_tokens": 35,
            "completion_tokens": 15,
            "total_tokens": 50,
            "prompt_tokens_details": {"cached_tokens": 10},
        }
    ]


def test_anthropic_tool_stream() -> None:
    chunks = translate(ANTHROPIC.translator("claude-opus-4-1"), ANTHROPIC_TOOL_STREAM)
    assert_openai_chunk_shape(chunks, "claude-opus-4-1")
    assert content(chunks) == "Let me check."
    assert tool_calls(chunks) == [
        {"id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "toolu_02", "name": "get_weather", "arguments": '{"city": "Rome"}'},
    ]
    first_call = next(c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls"))
    assert first_call["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert finish_reasons(chunks) == ["tool_calls"]
    assert usages(chunks)[0] == {"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561}


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_anthropic_finish_reasons(stop_reason: str, finish: str) -> None:
    raw = ANTHROPIC_TEXT_STREAM.replace('"stop_reason":"end_turn"', f'"stop_reason":"{stop_reason}"')
    assert finish_reasons(translate(ANTHROPIC.translator("m"), raw)) == [finish]


def test_anthropic_error_event() -> None:
    raw = ANTHROPIC_TEXT_STREAM.split("event: content_block_stop")[0] + (
        'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    )
    with pytest.raises(UpstreamProtocolError, match="Overloaded"):
        translate(ANTHROPIC.translator("m"), raw)


def test_anthropic_truncated_stream() -> None:
    truncated = ANTHROPIC_TEXT_STREAM.split("event: message_delta")[0]
    translator = ANTHROPIC.translator("m")
    assert content(feed_only(translator, truncated)) == "Hello!"
    with pytest.raises(UpstreamProtocolError, match="message_stop"):
        translator.close()


# ========================================================================================================= gemini


def test_gemini_request_translation_and_key_placement() -> None:
    body = {
        "model": "alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use metric units."},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
            {"role": "assistant", "content": "Fine."},
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}],
            },
        ],
        "temperature": 1.5,
        "top_p": 0.8,
        "max_completion_tokens": 200,
        "stop": ["END"],
        "seed": 7,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.2,
        "response_format": {"type": "json_object"},
        "user": "u1",  # no Gemini equivalent: dropped
    }
    req = GEMINI.chat_request(config("gemini"), "gemini-2.5-flash", body, GKEY)
    assert req.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert GKEY not in req.url and "key=" not in req.url
    assert req.headers == {
        "x-goog-api-key": GKEY,
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
    }
    assert GKEY not in json.dumps(req.json)
    assert req.json == {
        "systemInstruction": {"parts": [{"text": "Be brief.\n\nUse metric units."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}, {"text": "How are you?"}]},
            {"role": "model", "parts": [{"text": "Fine."}]},
            {"role": "user", "parts": [{"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}}]},
        ],
        "generationConfig": {
            "temperature": 1.5,
            "topP": 0.8,
            "seed": 7,
            "presencePenalty": 0.1,
            "frequencyPenalty": 0.2,
            "maxOutputTokens": 200,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
        },
    }


def test_gemini_request_options() -> None:
    cfg = config("gemini", "https://gw.example/google/", api_version="v1", headers={"X-Team": "a"})
    req = GEMINI.chat_request(cfg, "models/gemini-2.0-flash", {"messages": [{"role": "user", "content": "x"}]}, None)
    assert req.url == "https://gw.example/google/v1/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    assert req.headers == {"Content-Type": "application/json", "Accept": "text/event-stream", "X-Team": "a"}
    assert "generationConfig" not in req.json and "systemInstruction" not in req.json


def test_gemini_tools_function_calls_and_responses() -> None:
    no_args = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
    body = {"messages": TOOL_CONVERSATION, "tools": [*TOOLS, no_args], "tool_choice": "required"}
    payload = GEMINI.chat_request(config("gemini"), "m", body, GKEY).json
    assert payload["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parameters": {  # additionalProperties is not in Gemini's schema subset
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
                {"name": "now"},  # Gemini rejects an object schema without properties
            ]
        }
    ]
    assert payload["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert payload["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}},
                {"text": "Thanks. Which is warmer?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"functionCallingConfig": {"mode": "AUTO"}}),
        ("none", {"functionCallingConfig": {"mode": "NONE"}}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        ),
    ],
)
def test_gemini_tool_choice(tool_choice: Any, expected: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS, "tool_choice": tool_choice}
    assert GEMINI.chat_request(config("gemini"), "m", body, GKEY).json["toolConfig"] == expected


def test_gemini_tool_message_name_fallback() -> None:
    body = {"messages": [{"role": "tool", "tool_call_id": "unknown", "name": "lookup", "content": "[1, 2]"}]}
    payload = GEMINI.chat_request(config("gemini"), "m", body, GKEY).json
    assert payload["contents"] == [
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"result": [1, 2]}}}]}
    ]
    with pytest.raises(UnsupportedRequest):
        GEMINI.chat_request(config("gemini"), "m", {"messages": [{"role": "tool", "content": "x"}]}, GKEY)


def test_gemini_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    config_ = GEMINI.chat_request(config("gemini"), "m", body, GKEY).json["generationConfig"]
    assert config_ == {"responseMimeType": "application/json", "responseJsonSchema": schema}


def gemini_sse(*events: str) -> str:
    """Gemini's alt=sse body: ``data: <json>`` events separated by CRLF CRLF."""
    return "".join(f"data: {event}\r\n\r\n" for event in events)


GEMINI_TEXT_STREAM = gemini_sse(
    r'{"candidates": [{"content": {"parts": [{"text": "Hello"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 8}]},"modelVersion": "gemini-2.5-flash","responseId": "R6nGaKy1Mabc"}',
    r'{"candidates": [{"content": {"parts": [{"text": " there"}],"role": "model"},"index": 0}],"usageMetadata": {"promptTokenCount": 8,"totalTokenCount": 8},"modelVersion": "gemini-2.5-flash","responseId": "R6nGaKy1Mabc"}',
    r'{"candidates": [{"content": {"parts": [{"text": "!"}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 8,"candidatesTokenCount": 3,"totalTokenCount": 30,"thoughtsTokenCount": 19,"promptTokensDetails": [{"modality": "TEXT","tokenCount": 8}]},"modelVersion": "gemini-2.5-flash","responseId": "R6nGaKy1Mabc"}',
)

GEMINI_TOOL_STREAM = gemini_sse(
    r'{"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_weather","args": {"city": "Paris"}},"thoughtSignature": "CiIBVKhc7oDPpk"},{"functionCall": {"name": "get_weather","args": {"city": "Rome"}}}],"role": "model"},"finishReason": "STOP","index": 0}],"usageMetadata": {"promptTokenCount": 60,"candidatesTokenCount": 30,"totalTokenCount": 90},"modelVersion": "gemini-2.5-flash","responseId": "T1"}',
)


def test_gemini_text_stream() -> None:
    assert sse_events(GEMINI_TEXT_STREAM)[0][0] is None and len(sse_events(GEMINI_TEXT_STREAM)) == 3
    chunks = translate(GEMINI.translator("gemini-2.5-flash"), GEMINI_TEXT_STREAM)
    assert_openai_chunk_shape(chunks, "gemini-2.5-flash")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    assert "role" not in chunks[1]["choices"][0]["delta"]
    assert content(chunks) == "Hello there!"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, None, "stop"]
    assert chunks[-1]["choices"] == []  # usage after the finish chunk, from the latest usageMetadata
    assert usages(chunks) == [
        {
            "prompt_tokens": 8,
            "completion_tokens": 22,
            "total_tokens": 30,
            "completion_tokens_details": {"reasoning_tokens": 19},
        }
    ]
    assert {c["id"] for c in chunks} == {"R6nGaKy1Mabc"}


def test_gemini_tool_stream() -> None:
    chunks = translate(GEMINI.translator("m"), GEMINI_TOOL_STREAM)
    assert_openai_chunk_shape(chunks, "m")
    assert tool_calls(chunks) == [
        {"id": "call_0", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Rome"}'},
    ]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["choices"][0]["delta"]["tool_calls"][0]["type"] == "function"
    assert finish_reasons(chunks) == ["tool_calls"]
    assert usages(chunks) == [{"prompt_tokens": 60, "completion_tokens": 30, "total_tokens": 90}]


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
    ],
)
def test_gemini_finish_reasons(reason: str, finish: str) -> None:
    raw = GEMINI_TEXT_STREAM.replace('"finishReason": "STOP"', f'"finishReason": "{reason}"')
    assert finish_reasons(translate(GEMINI.translator("m"), raw)) == [finish]


def test_gemini_blocked_prompt() -> None:
    raw = gemini_sse(
        r'{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},"usageMetadata": {"promptTokenCount": 12,"totalTokenCount": 12},"modelVersion": "gemini-2.5-flash","responseId": "B1"}'
    )
    chunks = translate(GEMINI.translator("m"), raw)
    assert chunks[0]["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant"},
        "finish_reason": "content_filter",
        "logprobs": None,
    }
    assert usages(chunks) == [{"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}]


def test_gemini_truncated_stream() -> None:
    truncated = gemini_sse(*[data for _, data in sse_events(GEMINI_TEXT_STREAM)[:2]])
    translator = GEMINI.translator("m")
    assert content(feed_only(translator, truncated)) == "Hello there"
    with pytest.raises(UpstreamProtocolError, match="finishReason"):
        translator.close()


def test_gemini_error_in_stream() -> None:
    raw = gemini_sse(
        r'{"candidates": [{"content": {"parts": [{"text": "Hel"}],"role": "model"},"index": 0}]}',
        r'{"error": {"code": 503,"message": "The model is overloaded. Please try again later.","status": "UNAVAILABLE"}}',
    )
    with pytest.raises(UpstreamProtocolError, match="overloaded"):
        translate(GEMINI.translator("m"), raw)


# ======================================================================================================= failures


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


GEMINI_KEY_INVALID = {
    "error": {
        "code": 400,
        "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": "API key not valid. Please pass a valid API key.",
            },
        ],
    }
}


def gemini_quota(quota_id: str, delay: str) -> dict[str, Any]:
    return {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details. "
            "* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, "
            f"limit: 10, model: gemini-2.5-flash\nPlease retry in {delay}.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": quota_id,
                            "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                            "quotaValue": "10",
                        }
                    ],
                },
                {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
            ],
        }
    }


FAILURES: list[tuple[str, Any, int, dict[str, str], bytes, str, float | None, str]] = [
    # (id, kind, status, headers, body, expected kind, expected retry_after, text the message contains)
    (
        "openai-429-retry-after",
        OPENAI,
        429,
        {"Retry-After": "20", "x-ratelimit-reset-requests": "6m0s"},
        body(
            {
                "error": {
                    "message": "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            }
        ),
        "rate_limited",
        20.0,
        "Rate limit reached",
    ),
    (
        "openai-429-retry-after-ms",
        OPENAI,
        429,
        {"retry-after-ms": "1500"},
        body({"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}),
        "rate_limited",
        1.5,
        "slow down",
    ),
    (
        "openai-429-ratelimit-reset-headers",
        OPENAI,
        429,
        {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-remaining-tokens": "1000",
            "x-ratelimit-reset-tokens": "20ms",
        },
        body({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
        "rate_limited",
        360.0,
        "Rate limit",
    ),
    (
        "openai-insufficient-quota",
        OPENAI,
        429,
        {},
        body(
            {
                "error": {
                    "message": "You exceeded your current quota, please check your plan and billing details.",
                    "type": "insufficient_quota",
                    "param": None,
                    "code": "insufficient_quota",
                }
            }
        ),
        "quota_exhausted",
        None,
        "current quota",
    ),
    (
        "openrouter-402",
        OPENAI,
        402,
        {},
        body({"error": {"message": "Insufficient credits", "code": 402}}),
        "quota_exhausted",
        None,
        "Insufficient credits",
    ),
    (
        "openai-401",
        OPENAI,
        401,
        {},
        body(
            {"error": {"message": "Invalid authentication", "type": "invalid_request_error", "code": "invalid_api_key"}}
        ),
        "auth",
        None,
        "Invalid authentication",
    ),
    (
        "openai-404-model",
        OPENAI,
        404,
        {},
        body({"error": {"message": "The model `gpt-9` does not exist", "code": "model_not_found"}}),
        "not_found",
        None,
        "gpt-9",
    ),
    (
        "openai-400",
        OPENAI,
        400,
        {},
        body({"error": {"message": "maximum context length is 128000 tokens", "code": "context_length_exceeded"}}),
        "bad_request",
        None,
        "context length",
    ),
    (
        "openai-500-html",
        OPENAI,
        502,
        {"content-type": "text/html"},
        b"<html><body>502 Bad Gateway</body></html>",
        "server",
        None,
        "502 Bad Gateway",
    ),
    (
        "openai-compatible-plain-error",
        OPENAI,
        503,
        {},
        body({"detail": "model is loading"}),
        "server",
        None,
        "model is loading",
    ),
    (
        "anthropic-429",
        ANTHROPIC,
        429,
        {"retry-after": "12", "anthropic-ratelimit-requests-remaining": "0"},
        body(
            {
                "type": "error",
                "error": {
                    "type": "rate_limit_error",
                    "message": "This request would exceed the rate limit for your organization of 50 requests "
                    "per minute.",
                },
            }
        ),
        "rate_limited",
        12.0,
        "rate limit",
    ),
    (
        "anthropic-529",
        ANTHROPIC,
        529,
        {},
        body({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        "server",
        None,
        "Overloaded",
    ),
    (
        "anthropic-401",
        ANTHROPIC,
        401,
        {},
        body({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
        "auth",
        None,
        "invalid x-api-key",
    ),
    (
        "anthropic-403",
        ANTHROPIC,
        403,
        {},
        body({"type": "error", "error": {"type": "permission_error", "message": "no access to this model"}}),
        "auth",
        None,
        "no access",
    ),
    (
        "anthropic-credit-balance",
        ANTHROPIC,
        400,
        {},
        body(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
                    "Billing to upgrade or purchase credits.",
                },
            }
        ),
        "quota_exhausted",
        None,
        "credit balance",
    ),
    (
        "anthropic-400",
        ANTHROPIC,
        400,
        {},
        body({"type": "error", "error": {"type": "invalid_request_error", "message": "messages: field required"}}),
        "bad_request",
        None,
        "field required",
    ),
    (
        "anthropic-404",
        ANTHROPIC,
        404,
        {},
        body({"type": "error", "error": {"type": "not_found_error", "message": "model: claude-9"}}),
        "not_found",
        None,
        "claude-9",
    ),
    (
        "anthropic-500",
        ANTHROPIC,
        500,
        {},
        body({"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}),
        "server",
        None,
        "Internal server error",
    ),
    ("gemini-400-api-key-invalid", GEMINI, 400, {}, body(GEMINI_KEY_INVALID), "auth", None, "API key not valid"),
    (
        "gemini-429-per-minute",
        GEMINI,
        429,
        {},
        body(gemini_quota("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "7s")),
        "rate_limited",
        7.0,
        "exceeded your current quota",
    ),
    (
        "gemini-429-fractional-delay",
        GEMINI,
        429,
        {},
        body(gemini_quota("GenerateContentInputTokensPerModelPerMinute-FreeTier", "0.5s")),
        "rate_limited",
        0.5,
        "quota",
    ),
    (
        "gemini-429-retry-after-header-wins",
        GEMINI,
        429,
        {"Retry-After": "3"},
        body(gemini_quota("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "7s")),
        "rate_limited",
        3.0,
        "quota",
    ),
    (
        "gemini-403",
        GEMINI,
        403,
        {},
        body(
            {
                "error": {
                    "code": 403,
                    "message": "Method doesn't allow unregistered callers.",
                    "status": "PERMISSION_DENIED",
                }
            }
        ),
        "auth",
        None,
        "unregistered callers",
    ),
    (
        "gemini-404",
        GEMINI,
        404,
        {},
        body(
            {
                "error": {
                    "code": 404,
                    "message": "models/gemini-9 is not found for API version v1beta",
                    "status": "NOT_FOUND",
                }
            }
        ),
        "not_found",
        None,
        "gemini-9",
    ),
    (
        "gemini-500",
        GEMINI,
        500,
        {},
        body({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}),
        "server",
        None,
        "internal error",
    ),
    (
        "gemini-503-array-body",
        GEMINI,
        503,
        {},
        body([{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}]),
        "server",
        None,
        "overloaded",
    ),
    (
        "gemini-400",
        GEMINI,
        400,
        {},
        body({"error": {"code": 400, "message": "Invalid JSON payload received.", "status": "INVALID_ARGUMENT"}}),
        "bad_request",
        None,
        "Invalid JSON payload",
    ),
]


@pytest.mark.parametrize(
    ("kind", "status", "headers", "raw", "expected", "retry_after", "text"),
    [case[1:] for case in FAILURES],
    ids=[case[0] for case in FAILURES],
)
def test_failure_classification(
    kind: Any,
    status: int,
    headers: dict[str, str],
    raw: bytes,
    expected: str,
    retry_after: float | None,
    text: str,
) -> None:
    failure = kind.failure(status, headers, raw)
    assert failure.kind == expected
    assert failure.status == status
    assert text.lower() in failure.message.lower()
    if retry_after is None:
        assert failure.retry_after is None
    else:
        assert failure.retry_after == pytest.approx(retry_after)


def test_anthropic_rate_limit_reset_header() -> None:
    reset = dt.datetime.fromtimestamp(time.time() + 30, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {"anthropic-ratelimit-requests-remaining": "0", "anthropic-ratelimit-requests-reset": reset}
    raw = body({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests exceeded"}})
    failure = ANTHROPIC.failure(429, headers, raw)
    assert failure.kind == "rate_limited"
    assert failure.retry_after is not None and 27 <= failure.retry_after <= 31


def test_gemini_daily_quota_is_exhausted_until_pacific_midnight() -> None:
    failure = GEMINI.failure(429, {}, body(gemini_quota("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "31s")))
    assert failure.kind == "quota_exhausted"
    expected = seconds_to_pacific_midnight()
    assert failure.retry_after is not None and expected is not None
    assert failure.retry_after == pytest.approx(max(expected, 31.0), abs=5)
    # 2025-01-15 12:00 UTC is 04:00 in Los Angeles (PST): 20 hours to go
    assert seconds_to_pacific_midnight(dt.datetime(2025, 1, 15, 12, tzinfo=dt.UTC).timestamp()) == 20 * 3600


def test_openai_redacts_echoed_keys() -> None:
    raw = body(
        {
            "error": {
                "message": "Incorrect API key provided: sk-proj-abc1***************************************wxyz. "
                "You can find your API key at https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    )
    failure = OPENAI.failure(401, {}, raw)
    assert failure.kind == "auth"
    assert "abc1" not in failure.message and "wxyz" not in failure.message and "sk-" not in failure.message
    assert failure.message.startswith("Incorrect API key provided: [redacted].")
    assert "https://platform.openai.com/account/api-keys" in failure.message


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Incorrect API key provided: my-vllm-secret. See docs.", "my-vllm-secret"),
        ("Invalid API Key provided: gsk_abcdefghijklmnop", "gsk_abcdefghijklmnop"),
        (f"header was Bearer {KEY}", KEY),
        ('{"api_key": "hunter2-very-secret"}', "hunter2-very-secret"),
        (f"key {GKEY} rejected", GKEY),
        ("used sk-ant-api03-AbCdEf123456 for this", "sk-ant-api03-AbCdEf123456"),
    ],
)
def test_redaction(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted and "[redacted]" in redacted


def test_failure_messages_never_hold_the_key_even_when_the_body_echoes_it() -> None:
    echoed = f"bad key {KEY} for Bearer {KEY}"
    for kind, raw in (
        (OPENAI, body({"error": {"message": echoed}})),
        (ANTHROPIC, body({"type": "error", "error": {"type": "authentication_error", "message": echoed}})),
        (GEMINI, body({"error": {"code": 401, "message": echoed, "status": "UNAUTHENTICATED"}})),
    ):
        failure = kind.failure(401, {}, raw)
        assert KEY not in failure.message and failure.kind == "auth"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("0.5s", 0.5), ("1h2m3.5s", 3723.5), ("", None), ("soon", None)],
)
def test_duration_seconds(text: str, seconds: float | None) -> None:
    assert duration_seconds(text) == (None if seconds is None else pytest.approx(seconds))


# ===================================================================================================== plugins


def test_kinds_load_through_entry_points_and_pluggy() -> None:
    pm = pluggy.PluginManager("tiqo")
    pm.add_hookspecs(tiqo.sdk.hookspecs)
    eps = {ep.name: ep for ep in entry_points(group="tiqo")}
    assert {"openai", "anthropic", "gemini"} <= set(eps)
    for name in ("openai", "anthropic", "gemini"):
        pm.register(eps[name].load(), name=name)
    kinds: dict[str, Any] = {}
    pm.hook.register_providers(register=lambda kind: kinds.setdefault(kind.kind, kind))
    assert {"openai", "anthropic", "gemini"} <= set(kinds)
    for name in ("openai", "anthropic", "gemini"):
        kind = kinds[name]
        assert isinstance(kind, ProviderKind)
        assert isinstance(kind.translator("m"), StreamTranslator)
        assert kind.default_base_url.startswith("https://")
        assert "chat" in kind.capabilities and "tools" in kind.capabilities
    assert "json" in kinds["gemini"].capabilities and "vision" in kinds["anthropic"].capabilities
