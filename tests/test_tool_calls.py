"""Tool calls on the bundled local model (tools, tool_choice, parallel_tool_calls, tool results in the history,
streamed deltas): a grammar makes every call a call of a declared function, its arguments are validated.

Never the model's words or values (greedy output differs between CPUs): names, shapes and validity only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import DaemonProc
from tests.test_api import sse_events
from tiqo.core.errors import BadRequest
from tiqo.daemon.cache.tool_calls import merge_tool_calls
from tiqo.daemon.runtime.engines import tool_calls as tc
from tiqo.protocol.openai import ToolUse, tool_use

CHAT = "/v1/chat/completions"
LOCAL = "smollm2-135m"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": -100, "maximum": 100}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}
PARAMETERS = {"get_weather": WEATHER, "add": ADD}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Current weather in a city.", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": ADD}},
]
PROMPTS = ["What's the weather in Paris?", "What is 2 + 3?", "Tell me a joke.", "Is it raining in Oslo, in fahrenheit?"]


def body(prompt: str, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": LOCAL, "messages": messages, "tools": TOOLS, "temperature": 0, "max_tokens": 200, **extra}


def assert_valid_calls(calls: list[dict[str, Any]], only: str | None = None) -> None:
    assert calls
    for call in calls:
        assert call["id"].startswith("call_") and call["type"] == "function"
        name = call["function"]["name"]
        assert name in PARAMETERS and only in (None, name)
        jsonschema.validate(json.loads(call["function"]["arguments"]), PARAMETERS[name])


# ------------------------------------------------------------------ pure: the request shape and the call schema


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([{"type": "function", "function": {"description": "no name"}}], "auto", "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "has space"}}], "auto", "tools[0].function.name"),
        ([{"type": "function"}], "auto", "tools[0]"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "auto", "tools[0].function.parameters"),
        (TOOLS, {"type": "function", "function": {"name": "unknown"}}, "tool_choice.function.name"),
        (TOOLS, "sometimes", "tool_choice"),
        (TOOLS + TOOLS[:1], "auto", "tools"),
        (None, "required", "tools"),
    ],
)
def test_bad_tools_name_the_field(tools: list[dict[str, Any]] | None, choice: Any, param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        tool_use(tools, choice, None)
    assert caught.value.param == param


def test_tool_choice_shapes() -> None:
    assert tool_use(TOOLS, "none", None) is None and tool_use(None, None, None) is None
    auto = tool_use(TOOLS, None, None)
    assert isinstance(auto, ToolUse) and not auto.required and auto.parallel and len(auto.callable()) == 2
    named = tool_use(TOOLS, {"type": "function", "function": {"name": "add"}}, False)
    assert named is not None and named.required and [f.name for f in named.callable()] == ["add"] and not named.parallel


def test_the_call_schema_lifts_each_tools_defs() -> None:
    point = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["x"]}
    parameters = {
        "type": "object",
        "properties": {"p": {"$ref": "#/$defs/point"}},
        "required": ["p"],
        "$defs": {"point": point},
    }
    use = tool_use([{"type": "function", "function": {"name": "go", "parameters": parameters}}], "required", False)
    assert use is not None
    schema = tc.call_schema(use)
    assert schema["$defs"] == {"f0-point": point}
    assert schema["properties"]["tool_calls"]["items"]["properties"]["arguments"]["properties"]["p"] == {
        "$ref": "#/$defs/f0-point"
    }
    assert schema["properties"]["tool_calls"]["maxItems"] == 1
    jsonschema.validate({"tool_calls": [{"name": "go", "arguments": {"p": {"x": 3}}}]}, schema)


def test_history_writes_earlier_calls_as_the_model_writes_them() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
    turns = tc.history([{"role": "assistant", "content": "", "tool_calls": json.dumps([call])}])
    assert turns == [
        {"role": "assistant", "content": '{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}'}
    ]


# ------------------------------------------------------------------ the daemon with the bundled model


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("choice", ["required", "add", "get_weather"])
def test_required_and_named_choices_always_return_a_valid_call(daemon: DaemonProc, prompt: str, choice: str) -> None:
    tool_choice: Any = choice if choice == "required" else {"type": "function", "function": {"name": choice}}
    r = daemon.client().post(CHAT, json=body(prompt, tool_choice=tool_choice, parallel_tool_calls=False))
    assert r.status_code == 200, r.text
    choice_out = r.json()["choices"][0]
    assert choice_out["finish_reason"] == "tool_calls" and choice_out["message"]["content"] is None
    calls = choice_out["message"]["tool_calls"]
    assert len(calls) == 1
    assert_valid_calls(calls, None if choice == "required" else choice)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_auto_returns_text_or_a_valid_call(daemon: DaemonProc, prompt: str) -> None:
    r = daemon.client().post(CHAT, json=body(prompt, tool_choice="auto"))
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    if choice["finish_reason"] == "tool_calls":
        assert_valid_calls(choice["message"]["tool_calls"])
    else:
        assert (choice["message"]["content"] or "").strip() and not choice["message"].get("tool_calls")


def test_a_two_turn_exchange_with_a_tool_result_completes(daemon: DaemonProc) -> None:
    first = daemon.client().post(
        CHAT, json=body(PROMPTS[0], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    )
    assert first.status_code == 200, first.text
    message = first.json()["choices"][0]["message"]
    call = message["tool_calls"][0]
    turns = [
        {"role": "user", "content": PROMPTS[0]},
        message,
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"temperature": 18, "sky": "clear"})},
    ]
    second = daemon.client().post(CHAT, json={**body(""), "messages": turns, "max_tokens": 60})
    assert second.status_code == 200, second.text
    choice = second.json()["choices"][0]
    assert choice["finish_reason"] in ("stop", "length", "tool_calls")
    if choice["finish_reason"] == "tool_calls":
        assert_valid_calls(choice["message"]["tool_calls"])
    else:
        assert (choice["message"]["content"] or "").strip()


def test_streamed_deltas_reassemble_to_the_same_call(daemon: DaemonProc) -> None:
    request = body(PROMPTS[1], tool_choice="required", parallel_tool_calls=False)
    headers = {"x-tiqo-cache": "off"}
    whole = daemon.client().post(CHAT, json=request, headers=headers).json()["choices"][0]["message"]["tool_calls"]
    with daemon.client().stream("POST", CHAT, json={**request, "stream": True}, headers=headers) as streamed:
        events = sse_events(streamed)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    deltas = [d for e in chunks for d in e["choices"][0]["delta"].get("tool_calls") or []]
    opening = deltas[0]  # OpenAI's shape: the first delta of a call has its id, type, name and empty arguments
    assert set(opening) == {"index", "id", "type", "function"} and opening["function"]["arguments"] == ""
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    merged = merge_tool_calls(deltas)
    assert [c["function"] for c in merged] == [c["function"] for c in whole]  # the same call (ids are per answer)
    assert_valid_calls(merged)


def test_bad_tool_requests_are_400s_naming_the_field(daemon: DaemonProc) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [{"type": "function", "function": {"parameters": ADD}}]}, "tools[0].function.name"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
            "tools[0].function.parameters",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "number", "minimum": 0}}}
                ]
            },
            "tools[0].function.parameters",
        ),
    ]
    for extra, param in cases:
        r = daemon.client().post(CHAT, json=body("hi", **extra))
        assert r.status_code == 400, (param, r.text)
        assert r.json()["error"]["param"] == param


def test_the_official_openai_client_gets_tool_calls(daemon: DaemonProc) -> None:
    import openai

    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(daemon.socket)))
    client = openai.OpenAI(base_url="http://tiqo/v1", api_key="unused", http_client=http)
    messages: Any = [{"role": "user", "content": PROMPTS[3]}]
    reply = client.chat.completions.create(
        model=LOCAL,
        messages=messages,
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=200,  # type: ignore[arg-type]
    )
    calls = reply.choices[0].message.tool_calls or []
    assert reply.choices[0].finish_reason == "tool_calls"
    assert_valid_calls([c.model_dump() for c in calls])

    stream = client.chat.completions.create(
        model=LOCAL,
        messages=messages,
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=200,
        stream=True,  # type: ignore[arg-type]
    )
    names = [
        d.function.name
        for c in stream
        if c.choices
        for d in c.choices[0].delta.tool_calls or []
        if d.function and d.function.name
    ]
    assert names and all(n in PARAMETERS for n in names)


def test_route_explain_keeps_the_local_model_for_tools(daemon: DaemonProc) -> None:
    result = daemon.client().post("/tiqo/route/explain", json={"prompt": "weather?", "tools": TOOLS}).json()
    assert "tools" in result["needs"] and result["chosen"] == LOCAL


def test_tiqo_ask_tool(daemon: DaemonProc, tmp_path: Path) -> None:
    weather, add = tmp_path / "weather.json", tmp_path / "add.json"
    weather.write_text(json.dumps(TOOLS[0]))
    add.write_text(json.dumps(TOOLS[1]["function"]))  # the bare function object works too
    ok = daemon.cli("ask", "--tool", str(weather), "--tool", str(add), "-t", "0", "What is 2 + 3?")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert lines
    for line in lines:
        call = json.loads(line)
        assert set(call) == {"name", "arguments"} and call["name"] in PARAMETERS
        jsonschema.validate(call["arguments"], PARAMETERS[call["name"]])

    weather.write_text(json.dumps({"type": "function", "function": {"description": "no name"}}))
    refused = daemon.cli("ask", "--tool", str(weather), "hi")
    assert refused.returncode == 1 and "tools[0].function.name" in refused.stderr
