"""Provider kind "openai": any OpenAI-compatible chat-completions server (OpenAI, Groq, DeepSeek, OpenRouter, Together,
vLLM, llama.cpp's server), and "tiqo": another tiqo daemon (the same protocol, its token as the key). The body
passes through; the stream is already in OpenAI's shape.

Options read: ``headers`` (extra request headers), ``stream_usage`` (False: do not send ``stream_options``, for
servers that reject it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tiqo.sdk import (
    FormFile,
    ProviderConfig,
    UpstreamFailure,
    UpstreamProtocolError,
    UpstreamRequest,
    failure_from_status,
    hookimpl,
)
from tiqo_providers._common import (
    clip,
    duration_seconds,
    endpoint,
    error_message,
    fallback_message,
    json_body,
    parse_event_json,
    reset_hint,
    retry_after_header,
    with_option_headers,
)

TIQO_ONLY_FIELDS = ("keep_alive",)  # plus every field whose name starts with "tiqo"


class OpenAITranslator:
    """OpenAI chunks pass through as they are; ``data: [DONE]`` is the terminator."""

    def __init__(self, upstream_model: str) -> None:
        self.upstream_model = upstream_model
        self.done = False

    def feed(self, event: str | None, data: str) -> list[dict[str, Any]]:
        if self.done:
            return []
        payload = data.strip()
        if payload == "[DONE]":
            self.done = True
            return []
        if not payload:
            return []
        obj = parse_event_json(payload)
        if event == "error" or obj.get("error") is not None:
            # OpenAI, OpenRouter and vLLM report a failure after the 200 as an object with "error" in the stream
            raise UpstreamProtocolError(error_message(obj.get("error", obj), "upstream error in stream"))
        return [obj]

    def close(self) -> list[dict[str, Any]]:
        if not self.done:
            raise UpstreamProtocolError("stream ended before [DONE]")
        return []


class OpenAIKind:
    kind = "openai"
    default_base_url = "https://api.openai.com/v1"
    capabilities: tuple[str, ...] = ("chat", "tools", "json", "vision", "stt", "tts", "embed")

    def _headers(self, config: ProviderConfig, key: str | None, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return with_option_headers(headers, config.options)

    def transcription_request(
        self,
        config: ProviderConfig,
        upstream_model: str,
        fields: Mapping[str, str | list[str]],
        audio: FormFile,
        key: str | None,
        *,
        translate: bool = False,
    ) -> UpstreamRequest:
        """OpenAI's multipart ``/audio/transcriptions`` (or ``/audio/translations``); Groq and vLLM speak it too."""
        form: list[tuple[str, str | FormFile]] = [("model", upstream_model)]
        for name, value in fields.items():
            if name == "model" or name.startswith("tiqo"):
                continue
            if isinstance(value, list):
                # OpenAI reads form arrays as repeated `name[]` fields (its SDKs send timestamp_granularities[] and
                # include[] so); a bare repeated `name` is not read as the array and the words would be missing.
                form.extend((name.removesuffix("[]") + "[]", str(item)) for item in value)
            else:
                form.append((name, str(value)))
        form.append(("file", audio))
        path = "/audio/translations" if translate else "/audio/transcriptions"
        return UpstreamRequest(
            method="POST",
            url=endpoint(config.base_url, self.default_base_url, path),
            headers=self._headers(config, key, "application/json"),
            json={},
            form=tuple(form),
        )

    def _json_post(
        self, config: ProviderConfig, key: str | None, path: str, payload: dict[str, Any], accept: str
    ) -> UpstreamRequest:
        headers = self._headers(config, key, accept)
        headers["Content-Type"] = "application/json"
        url = endpoint(config.base_url, self.default_base_url, path)
        return UpstreamRequest(method="POST", url=url, headers=headers, json=payload)

    def embeddings_request(
        self, config: ProviderConfig, upstream_model: str, body: Mapping[str, Any], key: str | None
    ) -> UpstreamRequest:
        """OpenAI's ``/embeddings`` (JSON in, JSON out; float vectors)."""
        payload = {k: v for k, v in body.items() if not k.startswith("tiqo") and k != "encoding_format"}
        return self._json_post(config, key, "/embeddings", {**payload, "model": upstream_model}, "application/json")

    def images_request(
        self, config: ProviderConfig, upstream_model: str, body: Mapping[str, Any], key: str | None
    ) -> UpstreamRequest:
        """OpenAI's ``/images/generations`` (JSON in; images as base64 in ``data[].b64_json``)."""
        payload = {k: v for k, v in body.items() if not k.startswith("tiqo")}
        if not upstream_model.startswith("gpt-image"):  # GPT image models answer base64 only and refuse the field
            payload["response_format"] = "b64_json"
        return self._json_post(
            config, key, "/images/generations", {**payload, "model": upstream_model}, "application/json"
        )

    def speech_request(
        self, config: ProviderConfig, upstream_model: str, body: Mapping[str, Any], key: str | None
    ) -> UpstreamRequest:
        payload = {k: v for k, v in body.items() if not k.startswith("tiqo") and k != "stream"}
        return self._json_post(config, key, "/audio/speech", {**payload, "model": upstream_model}, "*/*")

    def chat_request(
        self, config: ProviderConfig, upstream_model: str, body: Mapping[str, Any], key: str | None
    ) -> UpstreamRequest:
        payload: dict[str, Any] = {
            name: value
            for name, value in body.items()
            if name not in TIQO_ONLY_FIELDS and not name.startswith("tiqo") and name != "stream_options"
        }
        payload["model"] = upstream_model
        payload["stream"] = True
        if config.options.get("stream_usage", True) is not False:
            caller_options = body.get("stream_options")
            stream_options = dict(caller_options) if isinstance(caller_options, Mapping) else {}
            stream_options["include_usage"] = True
            payload["stream_options"] = stream_options
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return UpstreamRequest(
            method="POST",
            url=endpoint(config.base_url, self.default_base_url, "/chat/completions"),
            headers=with_option_headers(headers, config.options),
            json=payload,
        )

    def translator(self, upstream_model: str) -> OpenAITranslator:
        return OpenAITranslator(upstream_model)

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamFailure:
        parsed = json_body(body)
        error: Any = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, Mapping):
            message = error_message(error, f"HTTP {status}")
            code = str(error.get("code") or "")
            kind_name = str(error.get("type") or "")
        elif isinstance(error, str):
            message, code, kind_name = error, "", ""
        elif isinstance(parsed, dict) and isinstance(parsed.get("message") or parsed.get("detail"), str):
            message, code, kind_name = str(parsed.get("message") or parsed.get("detail")), "", ""
        else:
            message, code, kind_name = fallback_message(status, body), "", ""

        retry_after = retry_after_header(headers)
        if retry_after is None and status == 429:
            parse: Callable[[str | None], float | None] = duration_seconds
            retry_after = reset_hint(
                headers,
                [
                    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
                    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
                ],
                parse,
                primary="x-ratelimit-reset-requests",
            )

        result = failure_from_status(status, clip(message), retry_after)
        if "insufficient_quota" in (code, kind_name) or status == 402:
            # OpenAI: 429 insufficient_quota; OpenRouter and DeepSeek: 402 when the balance is gone
            return UpstreamFailure("quota_exhausted", status, result.message, retry_after)
        if code == "model_not_found" and 400 <= status < 500:
            return UpstreamFailure("not_found", status, result.message, retry_after)
        return result


class TiqoKind(OpenAIKind):
    """Another tiqo daemon over its TCP listener (``daemon.listen``, usually behind a TLS proxy): its /v1 routes are
    OpenAI's, and its bearer token (``tiqo users token NAME`` on that machine) is this provider's key. The calling
    daemon adds ``X-Tiqo-Class`` to requests for a provider with ``trusted = true``, so the remote daemon keeps
    restricted data on its own machine as well."""

    kind = "tiqo"
    default_base_url = "http://127.0.0.1:8484/v1"


@hookimpl
def register_providers(register: Callable[[Any], None]) -> None:
    register(OpenAIKind())
    register(TiqoKind())
