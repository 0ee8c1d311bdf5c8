"""OpenAI's chat request as Gemini's ``GenerateContentRequest``: messages as ``contents`` (system turns as the
``systemInstruction``, tool calls and results as ``functionCall`` / ``functionResponse`` parts), sampling options
as ``generationConfig``, tools as ``functionDeclarations`` with the schema keywords Gemini rejects left out."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tiqo_providers._common import (
    UnsupportedRequest,
    append_turn,
    check_single_choice,
    data_url,
    function_tools,
    stop_list,
    text_of,
    tool_arguments,
)

# JSON Schema keywords that Gemini's OpenAPI-subset ``Schema`` rejects ("Unknown name ...") and that only constrain
# validation, so dropping them keeps the tool usable.
_UNSUPPORTED_SCHEMA_KEYS = {"$schema", "$id", "$comment", "additionalProperties", "strict"}


def _schema(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_schema(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    result: dict[str, Any] = {}
    for name, value in schema.items():
        if name in _UNSUPPORTED_SCHEMA_KEYS:
            continue
        if name == "properties" and isinstance(value, Mapping):
            result[name] = {prop: _schema(sub) for prop, sub in value.items()}
        elif name in ("items", "anyOf", "oneOf", "allOf"):
            result[name] = _schema(value)
        else:
            result[name] = value
    return result


def _user_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise UnsupportedRequest("user message content must be a string or a list of parts")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            text = str(part.get("text") or "")
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            inline = data_url(url) if isinstance(url, str) else None
            if inline is None:
                raise UnsupportedRequest("Gemini takes images as base64 data: URLs only")
            parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
        else:
            raise UnsupportedRequest(f"Gemini cannot take {kind or type(part).__name__!r} content parts")
    return parts


def _tool_response(content: Any) -> dict[str, Any]:
    """A tool message's content as a functionResponse ``response`` (which must be a JSON object)."""
    text = text_of(content, "tool")
    try:
        value = json.loads(text)
    except ValueError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _contents(messages: Any) -> tuple[str | None, list[dict[str, Any]]]:
    if not isinstance(messages, list):
        raise UnsupportedRequest("'messages' must be a list")
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool call id -> function name, to name functionResponse parts

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        append_turn(contents, role, "parts", parts)

    for message in messages:
        if not isinstance(message, Mapping):
            raise UnsupportedRequest("each message must be an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = text_of(content, str(role))
            if text:
                system.append(text)
        elif role == "user":
            add("user", _user_parts(content))
        elif role == "assistant":
            text = text_of(content, "assistant")
            parts: list[dict[str, Any]] = [{"text": text}] if text else []
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                name = str(function.get("name") or "")
                if call.get("id"):
                    call_names[str(call["id"])] = name
                parts.append({"functionCall": {"name": name, "args": tool_arguments(function.get("arguments"), name)}})
            add("model", parts)
        elif role == "tool":
            answered = call_names.get(str(message.get("tool_call_id") or "")) or message.get("name")
            if not answered:
                raise UnsupportedRequest("a tool message must answer an earlier tool call or have a name")
            add("user", [{"functionResponse": {"name": str(answered), "response": _tool_response(content)}}])
        else:
            raise UnsupportedRequest(f"Gemini cannot take messages with role {role!r}")
    return ("\n\n".join(system) if system else None), contents


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"functionCallingConfig": {"mode": "AUTO"}}
    if choice == "required":
        return {"functionCallingConfig": {"mode": "ANY"}}
    if choice == "none":
        return {"functionCallingConfig": {"mode": "NONE"}}
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        name = str(choice["function"].get("name") or "")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise UnsupportedRequest(f"unsupported tool_choice {choice!r}")


def gemini_body(body: Mapping[str, Any]) -> dict[str, Any]:
    check_single_choice(body)
    system, contents = _contents(body.get("messages"))
    payload: dict[str, Any] = {"contents": contents}
    if system is not None:
        payload["systemInstruction"] = {"parts": [{"text": system}]}

    config: dict[str, Any] = {}
    for openai_name, gemini_name in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        if body.get(openai_name) is not None:
            config[gemini_name] = body[openai_name]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = int(max_tokens)
    stops = stop_list(body.get("stop"))
    if stops:
        config["stopSequences"] = stops
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        if response_format.get("type") == "json_object":
            config["responseMimeType"] = "application/json"
        elif response_format.get("type") == "json_schema":
            config["responseMimeType"] = "application/json"
            spec = response_format.get("json_schema") or {}
            if isinstance(spec, Mapping) and spec.get("schema"):
                config["responseJsonSchema"] = spec["schema"]
    if config:
        payload["generationConfig"] = config

    functions = function_tools(body.get("tools"))
    if functions:
        declarations: list[dict[str, Any]] = []
        for function in functions:
            declaration: dict[str, Any] = {"name": function["name"]}
            if function.get("description"):
                declaration["description"] = str(function["description"])
            parameters = function.get("parameters")
            # Gemini rejects an OBJECT schema without properties: a function without arguments has no parameters
            if isinstance(parameters, Mapping) and parameters.get("properties"):
                declaration["parameters"] = _schema(parameters)
            declarations.append(declaration)
        payload["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config is not None:
            payload["toolConfig"] = tool_config
    return payload
