"""Provider kind "anthropic": the Messages API (``POST /v1/messages``), translated from and to OpenAI's chat shape.

Options read: ``headers`` (extra request headers, e.g. ``anthropic-beta``), ``api_version`` (the
``anthropic-version`` header, default 2023-06-01), ``default_max_tokens`` (Anthropic requires ``max_tokens``; used
when the caller gave none, default 4096).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tiqo.sdk import (
    ProviderConfig,
    UpstreamFailure,
    UpstreamProtocolError,
    UpstreamRequest,
    failure_from_status,
    hookimpl,
)
from tiqo_providers._common import (
    UnsupportedRequest,
    append_turn,
    check_single_choice,
    chunk,
    clip,
    data_url,
    endpoint,
    error_message,
    fallback_message,
    function_tools,
    json_body,
    new_chunk_id,
    now_created,
    parse_event_json,
    reset_hint,
    retry_after_header,
    rfc3339_seconds_from_now,
    stop_list,
    text_of,
    tool_arguments,
    usage_chunk,
    with_option_headers,
)

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


# -------------------------------------------------------------------------------------------------------- request


def _content_blocks(content: Any, role: str) -> list[dict[str, Any]]:
    """OpenAI message content (a string or a list of parts) as Anthropic content blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise UnsupportedRequest(f"{role} message content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            text = str(part.get("text") or "")
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str):
                raise UnsupportedRequest("image_url parts need image_url.url")
            inline = data_url(url)
            if inline is not None:
                mime, data = inline
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}})
            elif url.startswith(("https://", "http://")):
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})
            else:
                raise UnsupportedRequest("image URLs must be data: or http(s): URLs")
        elif kind == "refusal":
            text = str(part.get("refusal") or "")
            if text:
                blocks.append({"type": "text", "text": text})
        else:
            raise UnsupportedRequest(f"Anthropic cannot take {kind or type(part).__name__!r} content parts")
    return blocks


def _messages(messages: Any) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI messages as (Anthropic ``system``, Anthropic ``messages``) with roles alternating."""
    if not isinstance(messages, list):
        raise UnsupportedRequest("'messages' must be a list")
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        append_turn(turns, role, "content", blocks)

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
            add("user", _content_blocks(content, "user"))
        elif role == "assistant":
            blocks = _content_blocks(content, "assistant")
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                name = str(function.get("name") or "")
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": str(call.get("id") or ""),
                        "name": name,
                        "input": tool_arguments(function.get("arguments"), name),
                    }
                )
            add("assistant", blocks)
        elif role == "tool":
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id") or ""),
                "content": text_of(content, "tool"),
            }
            add("user", [result])
        else:
            raise UnsupportedRequest(f"Anthropic cannot take messages with role {role!r}")

    for turn in turns:  # a lone text block reads better (and is what most clients send) as a plain string
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]
    return ("\n\n".join(system) if system else None), turns


def _uses_tools(turns: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(turn["content"], list) and any(b["type"] in ("tool_use", "tool_result") for b in turn["content"])
        for turn in turns
    )


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    result: dict[str, Any] | None
    if choice is None:
        result = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        result = {"type": "none"}
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        result = {"type": "tool", "name": str(choice["function"].get("name") or "")}
    else:
        raise UnsupportedRequest(f"unsupported tool_choice {choice!r}")
    if result is not None and parallel is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    return result


def anthropic_body(body: Mapping[str, Any], upstream_model: str, options: Mapping[str, Any]) -> dict[str, Any]:
    check_single_choice(body)
    system, turns = _messages(body.get("messages"))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or options.get("default_max_tokens")
    payload: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": int(max_tokens or DEFAULT_MAX_TOKENS),
        "messages": turns,
        "stream": True,
    }
    if system is not None:
        payload["system"] = system
    if body.get("temperature") is not None:
        payload["temperature"] = min(1.0, max(0.0, float(body["temperature"])))  # Anthropic's range is 0..1
    if body.get("top_p") is not None:
        payload["top_p"] = body["top_p"]
    stops = stop_list(body.get("stop"))
    if stops:
        payload["stop_sequences"] = stops
    if isinstance(body.get("user"), str) and body["user"]:
        payload["metadata"] = {"user_id": body["user"]}

    functions = function_tools(body.get("tools"))
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if functions:
        if choice is not None and choice["type"] == "none" and not _uses_tools(turns):
            choice = None
            functions = []  # "none" without tool blocks in the conversation: simply offer no tools
        if functions:
            payload["tools"] = [
                {
                    "name": f["name"],
                    "description": str(f.get("description") or ""),
                    "input_schema": f.get("parameters") or {"type": "object", "properties": {}},
                }
                for f in functions
            ]
            if choice is not None:
                payload["tool_choice"] = choice
    return payload


# ------------------------------------------------------------------------------------------------------ translator


class AnthropicTranslator:
    """Anthropic's message_start / content_block_* / message_delta / message_stop events as OpenAI chunks."""

    def __init__(self, upstream_model: str) -> None:
        self.model = upstream_model
        self.created = now_created()
        self.id = new_chunk_id()
        self.started = False
        self.done = False
        self.tool_index: dict[int, int] = {}  # content block index -> OpenAI tool_calls index
        self.prompt_tokens = 0
        self.cache_read_tokens = 0
        self.output_tokens = 0
        self.stop_reason: str | None = None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return chunk(self.id, self.model, self.created, delta, finish_reason)

    def _input_usage(self, usage: Any) -> None:
        if not isinstance(usage, Mapping):
            return
        if usage.get("input_tokens") is not None:  # message_start; newer APIs repeat it, cumulative, in message_delta
            fields = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
            self.prompt_tokens = sum(int(usage.get(name) or 0) for name in fields)
            self.cache_read_tokens = int(usage.get("cache_read_input_tokens") or 0)
        if usage.get("output_tokens") is not None:
            self.output_tokens = int(usage["output_tokens"])

    def feed(self, event: str | None, data: str) -> list[dict[str, Any]]:
        if self.done or not data.strip():
            return []
        obj = parse_event_json(data)
        kind = obj.get("type") or event
        if kind == "error" or event == "error":
            raise UpstreamProtocolError(error_message(obj.get("error"), "upstream error in stream"))
        if kind == "message_start":
            message = obj.get("message") or {}
            if isinstance(message.get("id"), str):
                self.id = message["id"]
            self._input_usage(message.get("usage"))
            self.started = True
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(obj)
        if kind == "content_block_delta":
            return self._block_delta(obj)
        if kind == "message_delta":
            delta = obj.get("delta") or {}
            if delta.get("stop_reason"):
                self.stop_reason = str(delta["stop_reason"])
            self._input_usage(obj.get("usage"))
            return []
        if kind == "message_stop":
            return self._stop()
        return []  # ping, content_block_stop, and event types added later

    def _block_start(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        block = obj.get("content_block") or {}
        if block.get("type") == "tool_use":
            index = len(self.tool_index)
            self.tool_index[int(obj.get("index", 0))] = index
            call = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        return []  # text starts empty; thinking and server-tool blocks are not part of OpenAI's shape

    def _block_delta(self, obj: Mapping[str, Any]) -> list[dict[str, Any]]:
        delta = obj.get("delta") or {}
        if delta.get("type") == "text_delta":
            text = delta.get("text") or ""
            return [self._chunk({"content": text})] if text else []
        if delta.get("type") == "input_json_delta":
            call_index = self.tool_index.get(int(obj.get("index", 0)))
            if call_index is None:
                raise UpstreamProtocolError("input_json_delta for a content block that is not a tool_use")
            partial = delta.get("partial_json") or ""
            if not partial:
                return []
            return [self._chunk({"tool_calls": [{"index": call_index, "function": {"arguments": partial}}]})]
        return []  # thinking_delta, signature_delta, citations_delta

    def _stop(self) -> list[dict[str, Any]]:
        """message_stop: the finish reason, then the usage the stream reported."""
        self.done = True
        finish = FINISH_REASONS.get(self.stop_reason or "end_turn", "stop")
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.prompt_tokens + self.output_tokens,
        }
        if self.cache_read_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cache_read_tokens}
        return [
            self._chunk({}, finish),
            usage_chunk(self.id, self.model, self.created, usage),
        ]

    def close(self) -> list[dict[str, Any]]:
        if not self.done:
            raise UpstreamProtocolError("stream ended before message_stop")
        return []


# ------------------------------------------------------------------------------------------------------------ kind


class AnthropicKind:
    kind = "anthropic"
    default_base_url = "https://api.anthropic.com"
    capabilities: tuple[str, ...] = ("chat", "tools", "vision")

    def chat_request(
        self, config: ProviderConfig, upstream_model: str, body: Mapping[str, Any], key: str | None
    ) -> UpstreamRequest:
        headers = {
            "anthropic-version": str(config.options.get("api_version") or API_VERSION),
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        if key is not None:
            headers["x-api-key"] = key
        return UpstreamRequest(
            method="POST",
            url=endpoint(config.base_url, self.default_base_url, "/v1/messages"),
            headers=with_option_headers(headers, config.options),
            json=anthropic_body(body, upstream_model, config.options),
        )

    def translator(self, upstream_model: str) -> AnthropicTranslator:
        return AnthropicTranslator(upstream_model)

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        parsed = json_body(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, Mapping):
            message = error_message(error, f"HTTP {status}")
            error_type = str(error.get("type") or "")
        else:
            message, error_type = fallback_message(status, body), ""

        retry_after = retry_after_header(headers)
        if retry_after is None and status == 429:
            parse: Callable[[str | None], float | None] = rfc3339_seconds_from_now
            retry_after = reset_hint(
                headers,
                [
                    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset"),
                    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset"),
                    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset"),
                    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset"),
                ],
                parse,
                primary="anthropic-ratelimit-requests-reset",
            )

        result = failure_from_status(status, clip(message), retry_after)
        lowered = message.lower()
        if "credit balance" in lowered or (status == 429 and "quota" in lowered):
            return UpstreamFailure("quota_exhausted", status, result.message, retry_after)
        if error_type == "overloaded_error" or status == 529:
            return UpstreamFailure("server", status, result.message, retry_after)
        if error_type in ("authentication_error", "permission_error") and status < 500:
            return UpstreamFailure("auth", status, result.message, retry_after)
        return result


@hookimpl
def register_providers(register: Callable[[Any], None]) -> None:
    register(AnthropicKind())
