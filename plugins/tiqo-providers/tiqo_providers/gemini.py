"""Provider kind "gemini": Google's Generative Language API (``models/{model}:streamGenerateContent?alt=sse``),
translated from and to OpenAI's chat shape. The key travels in the ``x-goog-api-key`` header, never in the URL.
The request is translated in ``gemini_request``; the stream and the errors here.

Options read: ``headers`` (extra request headers), ``api_version`` (the URL's version segment, default v1beta).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tiqo.sdk import (
    ProviderConfig,
    UpstreamFailure,
    UpstreamProtocolError,
    UpstreamRequest,
    failure_from_status,
    hookimpl,
)
from tiqo_providers._common import (
    chunk,
    clip,
    duration_seconds,
    endpoint,
    error_message,
    fallback_message,
    json_body,
    new_chunk_id,
    now_created,
    parse_event_json,
    retry_after_header,
    usage_chunk,
    with_option_headers,
)
from tiqo_providers.gemini_request import gemini_body

API_VERSION = "v1beta"

CONTENT_FILTER_REASONS = {
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
}

# ------------------------------------------------------------------------------------------------------ translator


class GeminiTranslator:
    """Each SSE event is one GenerateContentResponse; the stream has no terminator but the candidate's finishReason."""

    def __init__(self, upstream_model: str) -> None:
        self.model = upstream_model
        self.created = now_created()
        self.id = new_chunk_id()
        self.id_from_upstream = False
        self.role_sent = False
        self.tool_calls = 0
        self.finished = False
        self.usage: dict[str, Any] | None = None

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if not self.role_sent:
            delta = {"role": "assistant", **delta}
            self.role_sent = True
        return chunk(self.id, self.model, self.created, delta, finish_reason)

    def _finish(self, reason: str) -> dict[str, Any]:
        self.finished = True
        if reason == "STOP":
            mapped = "tool_calls" if self.tool_calls else "stop"
        elif reason == "MAX_TOKENS":
            mapped = "length"
        elif reason in CONTENT_FILTER_REASONS:
            mapped = "content_filter"
        else:
            mapped = "stop"
        return self._chunk({}, mapped)

    def _remember_usage(self, metadata: Any) -> None:
        if not isinstance(metadata, Mapping):
            return
        prompt = int(metadata.get("promptTokenCount") or 0) + int(metadata.get("toolUsePromptTokenCount") or 0)
        thoughts = int(metadata.get("thoughtsTokenCount") or 0)
        completion = int(metadata.get("candidatesTokenCount") or 0) + thoughts
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": int(metadata.get("totalTokenCount") or prompt + completion),
        }
        if metadata.get("cachedContentTokenCount"):
            usage["prompt_tokens_details"] = {"cached_tokens": int(metadata["cachedContentTokenCount"])}
        if thoughts:
            usage["completion_tokens_details"] = {"reasoning_tokens": thoughts}
        self.usage = usage

    def feed(self, event: str | None, data: str) -> list[dict[str, Any]]:
        if not data.strip():
            return []
        obj = parse_event_json(data)
        if event == "error" or obj.get("error") is not None:
            raise UpstreamProtocolError(error_message(obj.get("error"), "upstream error in stream"))
        if not self.id_from_upstream and isinstance(obj.get("responseId"), str):
            self.id, self.id_from_upstream = obj["responseId"], True
        self._remember_usage(obj.get("usageMetadata"))
        if self.finished:
            return []

        candidates = obj.get("candidates") or []
        if not candidates:
            feedback = obj.get("promptFeedback") or {}
            if feedback.get("blockReason"):
                self.finished = True
                return [self._chunk({}, "content_filter")]
            return []

        candidate = candidates[0]
        out: list[dict[str, Any]] = []
        text = ""
        calls: list[dict[str, Any]] = []
        for part in (candidate.get("content") or {}).get("parts") or []:
            if part.get("thought"):
                continue  # thought summaries are not part of the answer
            if isinstance(part.get("text"), str):
                text += part["text"]
            elif isinstance(part.get("functionCall"), Mapping):
                call = part["functionCall"]
                calls.append(
                    {
                        "index": self.tool_calls,
                        "id": f"call_{self.tool_calls}",
                        "type": "function",
                        "function": {"name": call.get("name"), "arguments": json.dumps(call.get("args") or {})},
                    }
                )
                self.tool_calls += 1
        delta: dict[str, Any] = {}
        if text:
            delta["content"] = text
        if calls:
            delta["tool_calls"] = calls
        if delta:
            out.append(self._chunk(delta))
        reason = candidate.get("finishReason")
        if reason and reason != "FINISH_REASON_UNSPECIFIED":
            out.append(self._finish(str(reason)))
        return out

    def close(self) -> list[dict[str, Any]]:
        if not self.finished:
            raise UpstreamProtocolError("stream ended before finishReason")
        if self.usage is None:
            return []
        return [usage_chunk(self.id, self.model, self.created, self.usage)]


# ------------------------------------------------------------------------------------------------------------ kind


def seconds_to_pacific_midnight(now: float | None = None) -> float | None:
    """Gemini's per-day quotas reset at midnight Pacific time."""
    try:
        zone = ZoneInfo("America/Los_Angeles")
    except ZoneInfoNotFoundError:
        return None
    current = dt.datetime.fromtimestamp(time.time() if now is None else now, zone)
    midnight = dt.datetime.combine(current.date() + dt.timedelta(days=1), dt.time(), zone)
    return max(0.0, midnight.timestamp() - current.timestamp())


class GeminiKind:
    kind = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com"
    capabilities: tuple[str, ...] = ("chat", "tools", "json")

    def chat_request(
        self, config: ProviderConfig, upstream_model: str, body: Mapping[str, Any], key: str | None
    ) -> UpstreamRequest:
        version = str(config.options.get("api_version") or API_VERSION)
        model = upstream_model.removeprefix("models/")
        path = f"/{quote(version, safe='')}/models/{quote(model, safe='-._~')}:streamGenerateContent?alt=sse"
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if key is not None:
            headers["x-goog-api-key"] = key
        return UpstreamRequest(
            method="POST",
            url=endpoint(config.base_url, self.default_base_url, path),
            headers=with_option_headers(headers, config.options),
            json=gemini_body(body),
        )

    def translator(self, upstream_model: str) -> GeminiTranslator:
        return GeminiTranslator(upstream_model)

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        parsed = json_body(body)
        if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
            parsed = parsed[0]  # the non-SSE stream endpoint wraps its error in an array
        error = parsed.get("error") if isinstance(parsed, dict) else None
        details: list[Any] = []
        status_name = ""
        if isinstance(error, Mapping):
            message = error_message(error, f"HTTP {status}")
            status_name = str(error.get("status") or "")
            details = [d for d in error.get("details") or [] if isinstance(d, Mapping)]
        else:
            message = fallback_message(status, body)

        reasons = {str(d.get("reason")) for d in details if d.get("reason")}
        quota_ids = [
            str(v.get("quotaId") or "") + " " + str(v.get("quotaMetric") or "")
            for d in details
            for v in d.get("violations") or []
            if isinstance(v, Mapping)
        ]
        retry_after = retry_after_header(headers)
        if retry_after is None:
            for detail in details:
                if detail.get("retryDelay") is not None:
                    retry_after = duration_seconds(str(detail["retryDelay"]))
                    break

        result = failure_from_status(status, clip(message), retry_after)
        if any(reason.startswith("API_KEY_") for reason in reasons) and status < 500:
            return UpstreamFailure("auth", status, result.message, retry_after)  # a bad key is a 400 here
        if status == 429 or status_name == "RESOURCE_EXHAUSTED":
            lowered = message.lower()
            daily = (
                "per day" in lowered
                or "daily" in lowered
                or any("perday" in q.lower() or "per_day" in q.lower() for q in quota_ids)
            )
            if daily:
                # retryDelay is a short hint even for a per-day quota; the quota comes back at midnight Pacific time
                # (None, when the time zone is unknown here, lets the daemon use the key's configured reset)
                reset = seconds_to_pacific_midnight()
                until = None if reset is None else max(reset, retry_after or 0.0)
                return UpstreamFailure("quota_exhausted", status, result.message, until)
            return UpstreamFailure("rate_limited", status, result.message, retry_after)
        if status_name == "PERMISSION_DENIED" or status_name == "UNAUTHENTICATED":
            return UpstreamFailure("auth", status, result.message, retry_after)
        return result


@hookimpl
def register_providers(register: Callable[[Any], None]) -> None:
    register(GeminiKind())
