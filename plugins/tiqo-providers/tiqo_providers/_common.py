"""Helpers shared by the provider kinds: chunk shapes, headers, error bodies, durations, redaction."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from tiqo.sdk import UnsupportedRequest, UpstreamProtocolError, retry_after_seconds

__all__ = ["UnsupportedRequest"]  # re-exported: the SDK owns the type so the daemon can catch it

MAX_MESSAGE_CHARS = 1000  # an upstream error message longer than this is cut (HTML error pages, stack traces)

# ---------------------------------------------------------------------------------------------------------- chunks


def new_chunk_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def chunk(
    chunk_id: str, model: str, created: int, delta: dict[str, Any], finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage_chunk(chunk_id: str, model: str, created: int, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


def now_created() -> int:
    return int(time.time())


def parse_event_json(data: str) -> dict[str, Any]:
    """One SSE data payload as a JSON object, or UpstreamProtocolError."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise UpstreamProtocolError(f"upstream sent an event that is not JSON: {data[:200]!r}") from exc
    if not isinstance(value, dict):
        raise UpstreamProtocolError(f"upstream sent an event that is not a JSON object: {data[:200]!r}")
    return value


def error_message(error: Any, default: str = "upstream error") -> str:
    """The message of an ``error`` member: a string, or an object with ``message``."""
    if isinstance(error, str):
        return redact(error) or default
    if isinstance(error, Mapping):
        message = error.get("message")
        if isinstance(message, str) and message:
            return redact(message)
        kind = error.get("type") or error.get("status") or error.get("code")
        if kind is not None:
            return redact(f"{default}: {kind}")
    return default


# ------------------------------------------------------------------------------------------------------- requests


def endpoint(base_url: str, default_base_url: str, path: str) -> str:
    return (base_url or default_base_url).rstrip("/") + path


def with_option_headers(headers: dict[str, str], options: Mapping[str, Any]) -> dict[str, str]:
    """``headers`` plus ``options["headers"]``; an option header replaces ours whatever its case."""
    extra = options.get("headers") or {}
    if not isinstance(extra, Mapping):
        raise UnsupportedRequest("provider option 'headers' must be a table of header names to values")
    result = dict(headers)
    for name, value in extra.items():
        for existing in [k for k in result if k.lower() == str(name).lower()]:
            del result[existing]
        result[str(name)] = str(value)
    return result


def text_of(content: Any, what: str) -> str:
    """Plain text of message content that may only hold text: a string, None, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                texts.append(str(part.get("text") or ""))
            elif isinstance(part, str):
                texts.append(part)
            else:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise UnsupportedRequest(f"{what} content may only hold text parts, not {kind!r}")
        return "".join(texts)
    raise UnsupportedRequest(f"{what} content must be a string or a list of parts")


def stop_list(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop) or None
    raise UnsupportedRequest("'stop' must be a string or a list of strings")


_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*),(?P<data>.*)$", re.DOTALL)


def data_url(url: str) -> tuple[str, str] | None:
    """``(mime type, base64 payload)`` of a base64 ``data:`` URL; None for any other URL."""
    match = _DATA_URL.match(url)
    if match is None:
        return None
    if ";base64" not in match.group("params"):
        raise UnsupportedRequest("image data URLs must be base64-encoded")
    return match.group("mime") or "application/octet-stream", match.group("data")


def tool_arguments(arguments: Any, name: str) -> dict[str, Any]:
    """An assistant tool call's ``function.arguments`` (a JSON string) as an object."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, Mapping):
        return dict(arguments)
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError) as exc:
        raise UnsupportedRequest(f"the arguments of tool call {name!r} are not valid JSON") from exc
    if not isinstance(value, dict):
        raise UnsupportedRequest(f"the arguments of tool call {name!r} must be a JSON object")
    return value


def function_tools(tools: Any) -> list[dict[str, Any]]:
    """The ``function`` members of OpenAI ``tools``; any other tool type cannot be translated."""
    if not tools:
        return []
    if not isinstance(tools, list):
        raise UnsupportedRequest("'tools' must be a list")
    functions: list[dict[str, Any]] = []
    for tool in tools:
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, Mapping) else type(tool).__name__
            raise UnsupportedRequest(f"only function tools can be translated, not {kind!r}")
        function = tool.get("function")
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise UnsupportedRequest("each tool needs function.name")
        functions.append(dict(function))
    return functions


def check_single_choice(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise UnsupportedRequest("this provider returns one choice: 'n' must be 1")


# -------------------------------------------------------------------------------------------------------- failures


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header whatever its case (httpx.Headers is case-insensitive, a plain dict is not)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def json_body(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8", errors="replace"))
    except ValueError:
        return None


def fallback_message(status: int, body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text if text else f"HTTP {status}"


def clip(message: str) -> str:
    message = redact(message)
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


def retry_after_header(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` (seconds or HTTP date), else ``retry-after-ms`` (OpenAI, Anthropic SDK convention)."""
    seconds = retry_after_seconds(header(headers, "retry-after"))
    if seconds is not None:
        return seconds
    millis = header(headers, "retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            return None
    return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def duration_seconds(value: str | None) -> float | None:
    """Go-style durations as OpenAI and Google send them: "1s", "6m0s", "20ms", "0.5s", "1h2m3.5s"."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    pos = 0
    total = 0.0
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            return None
        total += float(match.group(1)) * scale[match.group(2)]
        pos = match.end()
    return total


def rfc3339_seconds_from_now(value: str | None, now: float | None = None) -> float | None:
    """Seconds until an RFC 3339 time ("2025-01-01T00:00:30Z"); None when missing or unreadable."""
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def reset_hint(headers: Mapping[str, str], limits: Iterable[tuple[str, str]], parse: Any, primary: str) -> float | None:
    """A rate-limit reset from per-limit headers: the latest reset among limits whose ``remaining`` is 0, else the
    ``primary`` limit's reset. ``limits`` is (remaining header, reset header) pairs; ``parse`` reads a reset value."""
    exhausted: list[float] = []
    for remaining_name, reset_name in limits:
        remaining = header(headers, remaining_name)
        if remaining is not None and remaining.strip() == "0":
            seconds = parse(header(headers, reset_name))
            if seconds is not None:
                exhausted.append(float(seconds))
    if exhausted:
        return max(exhausted)
    seconds = parse(header(headers, primary))
    return None if seconds is None else float(seconds)


# ------------------------------------------------------------------------------------------------------- redaction

REDACTED = "[redacted]"

_SECRET_PATTERNS = [
    # OpenAI: "Incorrect API key provided: sk-abc***xyz." (and the same wording from compatible servers, any key shape)
    re.compile(r"(?i)(api[ _-]?key provided:?\s*)([^\s,;]+?)(?=[.,;]?(?:\s|$))"),
    re.compile(r"(?i)(bearer\s+)([^\s,;\"']+)"),
    re.compile(r"(?i)((?:x-api-key|x-goog-api-key|api[_-]?key)[\"']?\s*[:=]\s*[\"']?)([^\s,;\"']+)"),
    # well-known key shapes: OpenAI/Anthropic/DeepSeek/OpenRouter sk-..., Groq gsk_..., xAI, Perplexity, Google AIza...
    re.compile(r"()\b(?:sk|gsk|xai|pplx|nvapi|hf)[-_][A-Za-z0-9_*.\-]{6,}"),
    re.compile(r"()\bAIza[0-9A-Za-z_*\-]{10,}"),
]


def redact(message: str) -> str:
    """``message`` with anything that looks like an API key (or an echoed fragment of one) replaced."""
    for pattern in _SECRET_PATTERNS:
        message = pattern.sub(lambda m: m.group(1) + REDACTED, message)
    return message


def append_turn(turns: list[dict[str, Any]], role: str, field: str, items: list[dict[str, Any]]) -> None:
    """Add ``items`` as a turn of ``role``, merged into the previous turn when it has the same role (Anthropic and
    Gemini both require roles to alternate)."""
    if not items:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1][field].extend(items)
    else:
        turns.append({"role": role, field: list(items)})
