"""The OpenAI-compatible subset tiqo serves. Requests are validated; responses are plain dicts built here."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tiqo.core.durations import parse_duration
from tiqo.core.errors import BadRequest


class ContentPart(BaseModel):
    """A part of a message: text, or (for providers that take them) image_url, input_audio, file, ..."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    # Extra fields (tool_calls, tool_call_id, ...) are kept: external providers get the message as sent.
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)

    def has_media(self) -> bool:
        return isinstance(self.content, list) and any(part.type != "text" for part in self.content)


@dataclass(frozen=True)
class JsonFormat:
    """An answer that must be JSON: any object (``schema`` None, OpenAI's ``json_object``) or one that validates
    against ``schema`` (``json_schema``)."""

    schema: dict[str, Any] | None = None
    name: str = "response"
    strict: bool = False

    def key(self) -> str:
        """The schema's identity: a hash of its canonical JSON (what compiled grammars are cached by)."""
        canonical = json.dumps(self.schema, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def json_format(response_format: dict[str, Any] | None) -> JsonFormat | None:
    """OpenAI's ``response_format`` → the JSON the answer must be (None: free text). Raises a 400 naming the field."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonFormat()
    if kind != "json_schema":
        raise BadRequest(
            f"unknown response_format type {kind!r}; use text, json_object or json_schema", param="response_format.type"
        )
    spec = (response_format or {}).get("json_schema")
    if not isinstance(spec, dict):
        raise BadRequest("response_format.json_schema must be an object", param="response_format.json_schema")
    name, schema, strict = spec.get("name", "response"), spec.get("schema"), spec.get("strict") or False
    if not isinstance(name, str) or not name:
        raise BadRequest("response_format.json_schema.name must be a string", param="response_format.json_schema.name")
    if not isinstance(schema, dict):
        raise BadRequest(
            "response_format.json_schema.schema must be a JSON Schema object",
            param="response_format.json_schema.schema",
            hint='e.g. {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}',
        )
    if not isinstance(strict, bool):
        raise BadRequest(
            "response_format.json_schema.strict must be a boolean", param="response_format.json_schema.strict"
        )
    return JsonFormat(schema=schema, name=name, strict=strict)


_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolUse:
    """What a local model may call: the declared functions, whether it must call one (``required``; ``only``: that
    one) or may answer in text (``auto``), and whether one answer may hold several calls."""

    functions: tuple[Function, ...]
    required: bool = False
    only: str | None = None
    parallel: bool = True

    def callable(self) -> tuple[Function, ...]:
        return tuple(f for f in self.functions if self.only in (None, f.name))


def tool_use(tools: list[dict[str, Any]] | None, tool_choice: Any, parallel: bool | None) -> ToolUse | None:
    """OpenAI's ``tools`` / ``tool_choice`` / ``parallel_tool_calls`` → what may be called (None: no tools, or
    ``tool_choice: none``). Raises a 400 naming the field."""
    functions = tuple(_function(i, tool) for i, tool in enumerate(tools or []))
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise BadRequest("two tools have the same name", param="tools")
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    if choice in ("auto", "required"):
        only = None
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"), str):
        only = choice["function"]["name"]
        if only not in names:
            raise BadRequest(
                f"tool_choice names {only!r}, which is not among the tools ({', '.join(names) or 'none'})",
                param="tool_choice.function.name",
            )
    else:
        raise BadRequest(
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if not functions:
        if choice == "auto":
            return None
        raise BadRequest("tool_choice asks for a tool call but no tools are given", param="tools")
    return ToolUse(functions, required=choice != "auto", only=only, parallel=parallel is not False)


def _function(i: int, tool: Any) -> Function:
    fn = tool.get("function") if isinstance(tool, dict) and tool.get("type", "function") == "function" else None
    if not isinstance(fn, dict):
        raise BadRequest(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}', param=f"tools[{i}]")
    name = fn.get("name")
    if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
        raise BadRequest(
            f"tools[{i}].function.name must be 1 to 64 letters, digits, _ or -",
            param=f"tools[{i}].function.name",
        )
    parameters = fn.get("parameters", NO_PARAMETERS)
    if not isinstance(parameters, dict):
        raise BadRequest(
            f"tools[{i}].function.parameters must be a JSON Schema object", param=f"tools[{i}].function.parameters"
        )
    description = fn.get("description") or ""
    return Function(name, description if isinstance(description, str) else "", parameters)


def plain_call(call: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI tool call as ``{"name", "arguments"}``, the arguments parsed (left as sent when not JSON)."""
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = function.get("arguments")
    return {"name": function.get("name"), "arguments": arguments}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[int, float] | None = None
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    user: str | None = None
    # Ollama's extension: how long the model stays loaded after this request ("5m", "0", "-1").
    keep_alive: str | float | None = None

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            parse_duration(value)
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    # Unknown fields (tools, response_format, logprobs, ...) are kept and passed to OpenAI-compatible providers.
    model_config = ConfigDict(extra="allow")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def needs(self) -> tuple[str, ...]:
        """Capabilities a backend must have to serve this request."""
        needs = ["chat"]
        if self.tools and self.tool_choice != "none":
            needs.append("tools")
        if any(m.has_media() for m in self.messages):
            needs.append("vision")
        if self.response_format and self.response_format.get("type") in ("json_object", "json_schema"):
            needs.append("json")
        return tuple(needs)

    def wire(self) -> dict[str, Any]:
        """The body as the caller sent it (fields they set, extras included), for pass-through to providers."""
        return self.model_dump(exclude_unset=True, exclude_none=False)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _single_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("only one prompt per request is supported")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def token_limit(self) -> int | None:
        return self.max_tokens


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(rid: str, model: str, text: str, finish: str, use: dict[str, int]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": None}
        ],
        "usage": use,
    }


def chat_chunk(rid: str, model: str, created: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }


def completion_response(rid: str, model: str, text: str, finish: str, use: dict[str, int]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        "usage": use,
    }


def completion_chunk(rid: str, model: str, created: int, text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


def usage_chunk(rid: str, model: str, created: int, obj: str, use: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": use}
