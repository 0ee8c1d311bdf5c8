"""What an external provider kind implements: a sans-IO translator between OpenAI's chat shape and a wire protocol.

The daemon owns the network: it builds nothing itself, it asks the provider kind for an ``UpstreamRequest``, sends it
with its own pooled HTTP client, splits the SSE body into events and feeds them to the kind's ``StreamTranslator``,
which answers with OpenAI ``chat.completion.chunk`` dicts. Upstream calls always stream, even when the caller asked
for one JSON answer (the daemon aggregates), so one code path serves both and a hung upstream is noticed by the
first-byte and idle timeouts instead of one long read timeout.

A provider kind never sees a socket, never logs and never puts the key in a URL.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

# How a failed upstream call is classified. The daemon's fallback logic keys on this, not on status codes.
FailureKind = Literal[
    "rate_limited",  # 429 for this key right now: cool the key down (Retry-After), try another key
    "quota_exhausted",  # the key's daily/monthly quota is gone: exhausted until its reset
    "auth",  # 401/403: disable the key with a visible reason
    "server",  # 5xx: counts against the endpoint's circuit breaker, try the next candidate
    "bad_request",  # 4xx that another key or provider would not fix: returned to the caller as is
    "not_found",  # the upstream model does not exist: drop this candidate
]


@dataclass(frozen=True)
class ProviderConfig:
    """A provider as the user configured it (``[providers.NAME]`` in config.toml)."""

    name: str  # the user's name for it: "openai", "groq", "my-vllm"
    kind: str  # the ProviderKind that speaks its protocol: "openai", "anthropic", "gemini", or a plugin's kind
    base_url: str
    options: Mapping[str, Any] = field(default_factory=dict)  # kind-specific: extra headers, api_version, ...


@dataclass(frozen=True)
class FormFile:
    """A file part of a multipart/form-data request."""

    filename: str
    content: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    json: dict[str, Any]
    # multipart/form-data instead of JSON (audio uploads): (field name, text or file) pairs, sent in this order
    form: tuple[tuple[str, str | FormFile], ...] | None = None


@dataclass(frozen=True)
class UpstreamFailure:
    kind: FailureKind
    status: int
    message: str  # the upstream's own message, safe to show (a kind must strip anything that echoes the key)
    retry_after: float | None = None  # seconds, from Retry-After or the protocol's own retry hint


class UnsupportedRequest(ValueError):
    """``chat_request`` cannot express the caller's body in this protocol (n > 1, audio parts, ...). The daemon moves
    on to the next candidate; if none is left the caller gets a 400 with this message."""


class UpstreamProtocolError(Exception):
    """The upstream sent something the translator cannot use, or the stream ended before its terminator."""


@runtime_checkable
class StreamTranslator(Protocol):
    """Turns one upstream SSE stream into OpenAI chunks.

    ``feed`` gets each SSE event (``event`` is the ``event:`` field or None, ``data`` the joined ``data:`` lines) and
    returns zero or more ``chat.completion.chunk`` dicts: ``choices[0].delta`` holds ``role``/``content``/
    ``tool_calls``; ``choices[0].finish_reason`` is one of stop/length/tool_calls/content_filter on the last one;
    usage comes as a chunk with ``"choices": []`` and ``"usage": {prompt_tokens, completion_tokens, total_tokens}``.
    The daemon overwrites ``id``, ``model`` and ``created``.

    An error event inside the stream raises ``UpstreamProtocolError``. ``close()`` is called when the body ends and
    raises ``UpstreamProtocolError`` if the protocol's terminator never came (a truncated stream must never look
    complete); it may return final chunks.
    """

    def feed(self, event: str | None, data: str) -> list[dict[str, Any]]: ...

    def close(self) -> list[dict[str, Any]]: ...


@runtime_checkable
class AudioProviderKind(Protocol):
    """Optional: a kind that also speaks an audio API (OpenAI's /audio/transcriptions and /audio/speech). Answers
    are not SSE: a transcription answer is one body (JSON or text), a speech answer is audio bytes, streamed."""

    def transcription_request(
        self,
        config: ProviderConfig,
        upstream_model: str,
        fields: Mapping[str, str | list[str]],
        audio: FormFile,
        key: str | None,
        *,
        translate: bool = False,
    ) -> UpstreamRequest: ...

    def speech_request(
        self, config: ProviderConfig, upstream_model: str, body: Mapping[str, Any], key: str | None
    ) -> UpstreamRequest: ...


@runtime_checkable
class ProviderKind(Protocol):
    kind: str  # "openai", "anthropic", "gemini", ...
    default_base_url: str
    capabilities: tuple[str, ...]  # what the translation supports: "chat", "tools", "json", "vision", ...

    def chat_request(
        self, config: ProviderConfig, upstream_model: str, body: Mapping[str, Any], key: str | None
    ) -> UpstreamRequest:
        """A streaming request for an OpenAI chat-completions ``body`` (already validated; ``model`` replaced by
        ``upstream_model``). Unknown OpenAI fields pass through where the protocol has them, are dropped otherwise."""
        ...

    def translator(self, upstream_model: str) -> StreamTranslator: ...

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        """Classify an error answer (status >= 400) from its status, headers and the protocol's error body."""
        ...


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date. None when missing or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def failure_from_status(status: int, message: str, retry_after: float | None) -> UpstreamFailure:
    """The usual mapping of HTTP statuses to failure kinds; kinds refine it from the error body."""
    kind: FailureKind
    if status == 429:
        kind = "rate_limited"
    elif status in (401, 403):
        kind = "auth"
    elif status == 404:
        kind = "not_found"
    elif status >= 500 or status in (408, 409):
        kind = "server"
    else:
        kind = "bad_request"
    return UpstreamFailure(kind=kind, status=status, message=message, retry_after=retry_after)
