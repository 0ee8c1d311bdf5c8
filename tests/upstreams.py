"""Local stand-ins for the OpenAI, Anthropic and Gemini HTTP APIs that speak their real wire protocols.

One aiohttp app serves all three, so tests (and benchmarks) can point the tiqo daemon at it as if it were the
provider:

* OpenAI     ``POST /v1/chat/completions`` (``Authorization: Bearer KEY``), ``GET /v1/models``,
  ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` (multipart: ``file`` and ``model``; answers
  ``TRANSCRIPT`` or ``Upstream.reply`` as json, text, srt, vtt or verbose_json with segments and words) and
  ``POST /v1/audio/speech`` (JSON; answers a 440 Hz tone in the asked format, streamed in several chunks, or
  ``Upstream.speech``)
* Anthropic  ``POST /v1/messages`` (``x-api-key``; ``anthropic-version`` header and ``max_tokens`` required)
* Gemini     ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``
  (``x-goog-api-key``; a ``key=`` query parameter is a recorded violation answered with 400)

Replies are deterministic: ``"echo: " + <text of the last user-side message>`` (or ``Upstream.reply``), split
into one-word pieces (each with its following whitespace) for streaming. Faults (HTTP errors, connection
resets, hangs, streams cut in the middle, slow streams), per-key quotas and key checks are set on the Python
object from any thread, or through ``POST /_stub/control`` when the stub runs as its own process::

    python -m tests.upstreams --port 0      # prints "READY http://127.0.0.1:PORT", serves until SIGTERM

``UpstreamProcess`` starts and drives that process from Python.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import itertools
import json
import math
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

ROOT = Path(__file__).resolve().parent.parent

#: Every fault name accepted by ``fail_next`` / ``mode``.
FAULTS = frozenset({"429", "500", "503", "529", "reset", "hang", "midstream", "slow"})
#: Faults that change how a normal answer is delivered (auth, quota and validation still apply first).
DELIVERY_FAULTS = frozenset({"slow", "midstream"})
DEFAULT_MODELS = ("gpt-4o-mini", "claude-3-5-haiku-latest", "gemini-2.0-flash")
_URL_KEY_PARAMS = ("key", "api_key", "apikey", "api-key")

_WORD = re.compile(r"\S+\s*")
_LEAD = re.compile(r"\s*")
_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)

_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def split_pieces(text: str) -> list[str]:
    """One piece per word, each carrying the whitespace that follows it; ``"".join(pieces) == text``."""
    pieces = _WORD.findall(text)
    lead = _LEAD.match(text).group()  # type: ignore[union-attr]
    if lead:
        if pieces:
            pieces[0] = lead + pieces[0]
        else:
            pieces = [text]
    return pieces


def _bearer(request: web.BaseRequest) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() != "bearer ":
        return None
    return auth[7:].strip() or None


def _words(text: str) -> int:
    return len(text.split())


def _text_of(content: Any) -> str:
    """Text of an OpenAI/Anthropic message content (string or list of blocks) or of Gemini parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out: list[str] = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
                elif part.get("type") == "tool_result":
                    out.append(_text_of(part.get("content")))
                elif isinstance(part.get("functionResponse"), dict):
                    out.append(_dumps(part["functionResponse"].get("response")))
        return " ".join(out)
    return ""


class _Reply:
    """What the "model" answers for one request."""

    __slots__ = ("completion_tokens", "finish", "pieces", "prompt_tokens", "stop_sequence", "text", "tool")

    def __init__(
        self,
        *,
        user_text: str,
        prompt_tokens: int,
        fixed: str | None,
        max_tokens: Any,
        stops: Any,
        tool_name: str | None,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.stop_sequence: str | None = None
        # tool: (name, arguments JSON, [argument piece 1, argument piece 2])
        self.tool: tuple[str, str, list[str]] | None = None
        if tool_name is not None:
            args = _dumps({"text": user_text})
            mid = len(args) // 2
            self.tool = (tool_name, args, [args[:mid], args[mid:]])
            self.text, self.pieces, self.finish, self.completion_tokens = "", [], "tool", 2
            return
        text = fixed if fixed is not None else "echo: " + user_text
        if stops:
            if isinstance(stops, str):
                stops = [stops]
            cut, hit = len(text), None
            for seq in stops:
                if isinstance(seq, str) and seq:
                    at = text.find(seq)
                    if 0 <= at < cut:
                        cut, hit = at, seq
            if hit is not None:
                text, self.stop_sequence = text[:cut], hit
        pieces = split_pieces(text)
        finish = "stop_sequence" if self.stop_sequence is not None else "stop"
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 <= max_tokens < len(pieces):
            pieces, finish, self.stop_sequence = pieces[:max_tokens], "length", None
            text = "".join(pieces)
        self.text, self.pieces, self.finish, self.completion_tokens = text, pieces, finish, len(pieces)


# --------------------------------------------------------------------------------------------------- errors


def _json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=_dumps(obj).encode(), content_type=_JSON, headers=headers)


def _openai_error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _anthropic_error(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}}


def _gemini_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        err["details"] = details
    return {"error": err}


def _retry_info(retry_after: Any) -> list[dict[str, Any]]:
    return [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"}]


def _status_fault(protocol: str, fault: str, kw: dict[str, Any]) -> web.Response:
    """The error response a status fault ("429", "500", "503", "529") answers in ``protocol``'s shape."""
    retry_after = kw.get("retry_after", 1 if fault == "429" else None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    status = int(fault)
    if protocol == "openai":
        body = {
            "429": _openai_error(
                "Rate limit reached for requests. Please try again in 1s.",
                "requests",
                "rate_limit_exceeded",
            ),
            "500": _openai_error(
                "The server had an error while processing your request. Sorry about that!", "server_error", None
            ),
            "503": _openai_error("The engine is currently overloaded, please try again later.", "server_error", None),
            "529": _openai_error("The server is overloaded, please try again later.", "server_error", None),
        }[fault]
    elif protocol == "anthropic":
        body = {
            "429": _anthropic_error(
                "rate_limit_error",
                "This request would exceed the rate limit for your organization. Please try again later.",
            ),
            "500": _anthropic_error("api_error", "Internal server error"),
            "503": _anthropic_error("api_error", "Service unavailable"),
            "529": _anthropic_error("overloaded_error", "Overloaded"),
        }[fault]
    else:
        body = {
            "429": _gemini_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                _retry_info(retry_after),
            ),
            "500": _gemini_error(500, "INTERNAL", "An internal error has occurred. Please retry."),
            "503": _gemini_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
            "529": _gemini_error(529, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        }[fault]
    return _json_response(status, body, headers)


def _quota_error(protocol: str, retry_after: Any) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if protocol == "openai":
        body = _openai_error(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        )
    elif protocol == "anthropic":
        body = _anthropic_error("rate_limit_error", "Your credit balance or usage limit has been reached.")
    else:
        details: list[dict[str, Any]] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests"}],
            }
        ]
        if retry_after is not None:
            details += _retry_info(retry_after)
        body = _gemini_error(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            details,
        )
    return _json_response(429, body, headers)


def _auth_error(protocol: str, missing: bool) -> web.Response:
    if protocol == "openai":
        if missing:
            msg = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return _json_response(401, _openai_error(msg, "invalid_request_error", None))
        msg = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."
        return _json_response(401, _openai_error(msg, "invalid_request_error", "invalid_api_key"))
    if protocol == "anthropic":
        msg = "x-api-key header is required" if missing else "invalid x-api-key"
        return _json_response(401, _anthropic_error("authentication_error", msg))
    if missing:
        msg = (
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API."
        )
        return _json_response(403, _gemini_error(403, "PERMISSION_DENIED", msg))
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
    return _json_response(
        400, _gemini_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", details)
    )


def _bad_request(protocol: str, message: str) -> web.Response:
    if protocol == "openai":
        return _json_response(400, _openai_error(message, "invalid_request_error", None))
    if protocol == "anthropic":
        return _json_response(400, _anthropic_error("invalid_request_error", message))
    return _json_response(400, _gemini_error(400, "INVALID_ARGUMENT", message))


# -------------------------------------------------------------------------------------------------- audio

#: What OpenAI's /audio/transcriptions accepts, judged (as OpenAI does) by the file name's extension.
STT_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
STT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
#: /audio/speech formats and the Content-Type OpenAI answers them with.
SPEECH_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
SPEECH_RATE = 24_000  # OpenAI's speech (and its raw pcm) is 24 kHz, 16-bit, mono
SPEECH_CHUNK = 4096
#: What the stub "hears" in any upload (``Upstream.reply`` replaces it).
TRANSCRIPT = "The quick brown fox jumps over the lazy dog. It was heard by the stub."
_LANGUAGE_NAMES = {"en": "english", "fr": "french", "de": "german", "es": "spanish", "it": "italian", "nl": "dutch"}
# PyAV muxer, encoder and sample rate of the compressed speech formats
_SPEECH_CODECS = {
    "mp3": ("mp3", "libmp3lame", SPEECH_RATE),
    "opus": ("ogg", "libopus", 48_000),
    "aac": ("adts", "aac", SPEECH_RATE),
    "flac": ("flac", "flac", SPEECH_RATE),
}


def grey_png(width: int, height: int) -> bytes:
    """A mid-grey 8-bit RGB PNG, written with zlib alone."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\x80" * (3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def speech_seconds(text: str, speed: float = 1.0) -> float:
    """How long the stub "speaks" ``text``: 50 ms a character at speed 1, between 0.2 s and 8 s."""
    return round(min(8.0, max(0.2, 0.05 * len(text))) / speed, 3)


def _tone(seconds: float, rate: int, freq: float = 440.0) -> bytes:
    """A sine tone as 16-bit little-endian mono PCM."""
    n = max(1, int(seconds * rate))
    step = 2 * math.pi * freq / rate
    return array.array("h", (int(8000 * math.sin(i * step)) for i in range(n))).tobytes()


@functools.lru_cache(maxsize=64)
def speech_audio(fmt: str, seconds: float) -> bytes:
    """A valid ``fmt`` file (see ``SPEECH_TYPES``) holding ``seconds`` of a 440 Hz tone: WAV and raw PCM with the
    stdlib, compressed formats with PyAV."""
    if fmt == "pcm":
        return _tone(seconds, SPEECH_RATE)
    if fmt == "wav":
        buf = io.BytesIO()
        with wave.open(buf, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SPEECH_RATE)
            out.writeframes(_tone(seconds, SPEECH_RATE))
        return buf.getvalue()
    import av
    import numpy as np

    muxer, codec, rate = _SPEECH_CODECS[fmt]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=muxer) as out:
        stream: Any = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        samples = np.frombuffer(_tone(seconds, rate), dtype="<i2")
        for start in range(0, samples.size, rate // 10):
            frame = av.AudioFrame.from_ndarray(
                samples[start : start + rate // 10].reshape(1, -1), format="s16", layout="mono"
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def audio_seconds(data: bytes) -> float:
    """The duration of an uploaded file: WAV with the stdlib, anything else with PyAV when it is installed (else an
    estimate from the size, as if it were 16 kHz 16-bit mono)."""
    with contextlib.suppress(wave.Error, EOFError, ValueError), wave.open(io.BytesIO(data), "rb") as w:
        width = w.getsampwidth() * w.getnchannels()
        frames = len(w.readframes(w.getnframes())) // max(1, width)  # streamed WAVs claim 0xFFFFFFFF frames
        return frames / w.getframerate()
    with contextlib.suppress(Exception):
        import av

        with av.open(io.BytesIO(data), mode="r") as c:
            stream = c.streams.audio[0]
            samples = sum(frame.samples for frame in c.decode(stream))
            return samples / (stream.codec_context.sample_rate or 1)
    return len(data) / 32_000


def _transcript_body(
    fmt: str, text: str, *, task: str, language: str, duration: float, granularities: list[str]
) -> tuple[str, str | dict[str, Any]]:
    """(content type, body) of a transcription answer in ``fmt``, as OpenAI's whisper-1 answers it."""
    words = text.split()
    step = duration / max(1, len(words))
    timed = [
        {"word": w.strip(".,!?"), "start": round(i * step, 2), "end": round((i + 1) * step, 2)}
        for i, w in enumerate(words)
    ]
    segments: list[dict[str, Any]] = []
    for n, first in enumerate(range(0, len(words), 6)):
        chunk = words[first : first + 6]
        segments.append(
            {
                "id": n,
                "seek": 0,
                "start": timed[first]["start"],
                "end": timed[first + len(chunk) - 1]["end"],
                "text": " " + " ".join(chunk),
                "tokens": [50364 + first + i for i in range(len(chunk))],
                "temperature": 0.0,
                "avg_logprob": -0.25,
                "compression_ratio": 1.2,
                "no_speech_prob": 0.01,
            }
        )
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if fmt == "text":
        return "text/plain; charset=utf-8", text + "\n"
    if fmt in ("srt", "vtt"):

        def stamp(t: float) -> str:
            ms = round(t * 1000)
            sep = "," if fmt == "srt" else "."
            return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"

        cues = [f"{stamp(s['start'])} --> {stamp(s['end'])}\n{s['text'].strip()}\n\n" for s in segments]
        if fmt == "srt":
            return "application/x-subrip", "".join(f"{i}\n{c}" for i, c in enumerate(cues, 1))
        return "text/vtt", "WEBVTT\n\n" + "".join(cues)
    if fmt == "json":
        return _JSON, {"text": text, "usage": usage}
    body: dict[str, Any] = {"task": task, "language": language, "duration": round(duration, 2), "text": text}
    if "segment" in granularities or not granularities:
        body["segments"] = segments
    if "word" in granularities:
        body["words"] = timed
    body["usage"] = usage
    return _JSON, body


async def _read_multipart(request: web.Request) -> tuple[dict[str, Any], dict[str, Any] | None, bytes, str | None]:
    """(fields, file info or None, file bytes, problem or None) of a multipart/form-data body, read with aiohttp's
    multipart reader. Names ending in ``[]`` collect lists, as OpenAI's SDK sends arrays."""
    fields: dict[str, Any] = {}
    info: dict[str, Any] | None = None
    data = b""
    if request.content_type != "multipart/form-data":
        await request.read()
        return fields, None, b"", f"Invalid Content-Type header ({request.content_type}), expected multipart/form-data."
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or not part.name:
                return fields, info, data, "Could not parse multipart form: unnamed or nested part."
            if part.filename is not None:
                content = bytes(await part.read())
                if part.name == "file":
                    data = content
                    info = {
                        "filename": part.filename,
                        "size": len(content),
                        "content_type": part.headers.get("Content-Type"),
                        "sha256": hashlib.sha256(content).hexdigest(),
                    }
                    continue
                value: Any = {"filename": part.filename, "size": len(content)}
            else:
                value = await part.text()
            if part.name.endswith("[]"):
                fields.setdefault(part.name, []).append(value)
            else:
                fields[part.name] = value
    except Exception as exc:  # a malformed body: whatever the reader raises is the client's problem
        return fields, info, data, f"Could not parse multipart form: {exc}"
    return fields, info, data, None


# ---------------------------------------------------------------------------------------------- transport


def _abort(request: web.BaseRequest, rst: bool) -> None:
    """Drop the connection: with ``rst`` a TCP reset (SO_LINGER 0), else an abrupt close (FIN)."""
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _flush_then_abort(request: web.BaseRequest, rst: bool) -> None:
    transport = request.transport
    if transport is not None and not rst:
        deadline = time.monotonic() + 2.0
        while transport.get_write_buffer_size() and time.monotonic() < deadline and not transport.is_closing():
            await asyncio.sleep(0.005)
    _abort(request, rst)


# ----------------------------------------------------------------------------------------------- upstream


class Upstream:
    """A local OpenAI + Anthropic + Gemini provider. Thread-safe configuration; see the module docstring.

    Use as ``with Upstream() as up: ...`` (or ``start()`` / ``stop()``); ``up.url`` is ``http://127.0.0.1:PORT``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        valid_keys: Iterable[str] | None = None,
        reply: str | None = None,
        delay_s: float = 0.0,
        models: Iterable[str] = DEFAULT_MODELS,
    ) -> None:
        self.host, self.port = host, port
        self.valid_keys: set[str] | None = set(valid_keys) if valid_keys is not None else None
        self.reply: str | None = reply
        self.speech: bytes | None = None  # fixed /audio/speech answer instead of the generated tone (b"": empty)
        self.delay_s: float = float(delay_s)
        self.held = False  # while True every request waits before it is answered (see ``hold``)
        self.models: list[str] = list(models)
        self.requests: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self._defaults = (frozenset(self.valid_keys) if self.valid_keys is not None else None, reply, self.delay_s)
        self._mode: str | None = None
        self.mode_kw: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._quota: dict[str, list[Any]] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    # ---------------------------------------------------------------- configuration

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def mode(self) -> str | None:
        """A fault every request gets until set back to None (kwargs in ``mode_kw``; see ``set_mode``)."""
        return self._mode

    @mode.setter
    def mode(self, fault: str | None) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        self._mode, self.mode_kw = fault, {}

    def set_mode(self, fault: str | None, **kw: Any) -> None:
        self.mode = fault
        self.mode_kw = dict(kw)

    def fail_next(self, n: int, fault: str, **kw: Any) -> None:
        """The next ``n`` requests (any protocol) get ``fault`` (queued after faults already queued)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {sorted(FAULTS)}")
        with self._lock:
            self._queue.extend((fault, dict(kw)) for _ in range(n))

    def set_quota(self, key: str, n: int, retry_after: float | int | None = None) -> None:
        """After ``n`` more successful requests with ``key``, that key gets the protocol's quota-exhausted 429."""
        with self._lock:
            self._quota[key] = [int(n), retry_after]

    def reset(self) -> None:
        """Forget requests, violations, queued faults, mode and quotas; restore constructor settings."""
        with self._lock:
            self._queue.clear()
            self._quota.clear()
            self.requests.clear()
            self.violations.clear()
            keys, self.reply, self.delay_s = self._defaults
            self.held = False
            self.speech = None
            self.valid_keys = set(keys) if keys is not None else None
            self.mode = None

    def control(self, **cmd: Any) -> None:
        """Apply a control command (the same keys as ``POST /_stub/control``); ``reset`` is applied first."""
        if cmd.get("reset"):
            self.reset()
        if "mode" in cmd:
            self.set_mode(cmd["mode"], **(cmd.get("mode_kw") or {}))
        if "fail_next" in cmd:
            n, fault, *rest = cmd["fail_next"]
            self.fail_next(int(n), fault, **(rest[0] if rest and rest[0] else {}))
        if "valid_keys" in cmd:
            keys = cmd["valid_keys"]
            self.valid_keys = set(keys) if keys is not None else None
        if "quota" in cmd:
            key, n, *rest = cmd["quota"]
            self.set_quota(key, int(n), rest[0] if rest else None)
        if "reply" in cmd:
            self.reply = cmd["reply"]
        if "delay_s" in cmd:
            self.delay_s = float(cmd["delay_s"] or 0.0)

    def _take_fault(self) -> tuple[str | None, dict[str, Any]]:
        if self._queue:
            with self._lock:
                if self._queue:
                    return self._queue.popleft()
        return self._mode, self.mode_kw

    def _charge_quota(self, key: str | None) -> tuple[bool, Any]:
        """Count one success against ``key``'s quota; (False, retry_after) when the quota is spent."""
        if key is None or not self._quota:
            return True, None
        with self._lock:
            entry = self._quota.get(key)
            if entry is None:
                return True, None
            if entry[0] <= 0:
                return False, entry[1]
            entry[0] -= 1
            return True, None

    # ---------------------------------------------------------------- lifecycle

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_get("/v1/models", self._openai_models)
        app.router.add_post("/v1/audio/transcriptions", self._openai_transcriptions)
        app.router.add_post("/v1/audio/translations", self._openai_translations)
        app.router.add_post("/v1/audio/speech", self._openai_speech)
        app.router.add_post("/v1/embeddings", self._openai_embeddings)
        app.router.add_post("/v1/images/generations", self._openai_images)
        app.router.add_post("/v1/messages", self._anthropic_messages)
        app.router.add_post("/v1beta/models/{name}", self._gemini)
        app.router.add_post("/v1/models/{name}", self._gemini)
        app.router.add_post("/_stub/control", self._control)
        app.router.add_get("/_stub/requests", self._recorded)
        return app

    async def _astart(self) -> None:
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(self._make_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=2048)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _astop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start(self) -> Upstream:
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._astop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"upstream-stub-{id(self):x}", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError("upstream stub failed to start") from failure[0]
        return self

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._thread = self._loop = None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- common request path

    async def _begin(
        self, request: web.Request, protocol: str, key: str | None
    ) -> tuple[dict[str, Any], Any, web.StreamResponse | None, str | None, dict[str, Any]]:
        """Record the request and decide what happens before the protocol handler: returns
        (record, body, early response or None, delivery fault or None, its kwargs)."""
        raw = await request.read()
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        rec = self._record(request, protocol, key, body)
        early, fault, kw = await self._gate(request, rec, protocol, key)
        if early is not None:
            return rec, body, early, None, {}
        if bad_json or (request.method == "POST" and not isinstance(body, dict)):
            rec["status"] = 400
            return rec, body, _bad_request(protocol, "We could not parse the JSON body of your request."), None, {}
        return rec, body, None, fault, kw

    def _record(self, request: web.Request, protocol: str, key: str | None, body: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "protocol": protocol,
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "json": body,
            "key": key,
            "status": None,
            "fault": None,
        }
        self.requests.append(rec)
        return rec

    async def _gate(
        self, request: web.Request, rec: dict[str, Any], protocol: str, key: str | None
    ) -> tuple[web.StreamResponse | None, str | None, dict[str, Any]]:
        """What every request goes through whatever its body: keys in the URL, the delay, faults, the key check.
        Returns (early response or None, delivery fault or None, its kwargs)."""
        if request.query_string:
            query = request.query
            for name in _URL_KEY_PARAMS:
                if name in query:
                    self.violations.append(
                        f"{protocol}: API key sent in the URL ({name}= query parameter) {request.path}"
                    )
                    rec["status"] = 400
                    return _bad_request(protocol, f"API keys must not be sent in the URL ({name}=)."), None, {}
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        while self.held:  # a test holds every call open until it has seen what it waits for, however slow the run
            await asyncio.sleep(0.005)
        fault, kw = self._take_fault()
        if fault is not None:
            rec["fault"] = fault
            if fault not in DELIVERY_FAULTS:
                return await self._apply_fault(request, rec, protocol, fault, kw), None, {}
        if key is None or (self.valid_keys is not None and key not in self.valid_keys):
            resp = _auth_error(protocol, missing=key is None)
            rec["status"] = resp.status
            return resp, None, {}
        return None, fault, kw

    async def _apply_fault(
        self, request: web.Request, rec: dict[str, Any], protocol: str, fault: str, kw: dict[str, Any]
    ) -> web.StreamResponse:
        if fault == "reset":
            rec["status"] = 0
            _abort(request, rst=True)
            return web.Response()
        if fault == "hang":
            stopping = self._stopping
            assert stopping is not None
            while not stopping.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 0.2)
            rec["status"] = 0
            _abort(request, rst=False)
            return web.Response()
        resp = _status_fault(protocol, fault, kw)
        rec["status"] = resp.status
        return resp

    def _allow(self, rec: dict[str, Any], protocol: str, key: str | None) -> web.Response | None:
        ok, retry_after = self._charge_quota(key)
        if ok:
            rec["status"] = 200
            return None
        resp = _quota_error(protocol, retry_after)
        rec["status"] = resp.status
        return resp

    async def _deliver_body(
        self, request: web.Request, obj: Any, fault: str | None, kw: dict[str, Any], n_pieces: int
    ) -> web.StreamResponse:
        """A non-stream 200 answer, possibly slow or cut in the middle of the body."""
        data = _dumps(obj).encode()
        if fault == "slow":
            await asyncio.sleep(float(kw.get("first_delay", 0.0)) + float(kw.get("delay", 0.2)) * n_pieces)
        elif fault == "midstream":
            resp = web.StreamResponse(status=200, headers={"Content-Type": _JSON})
            resp.content_length = len(data)
            try:
                await resp.prepare(request)
                await resp.write(data[: len(data) // 2])
            except ConnectionError:
                return resp
            await _flush_then_abort(request, bool(kw.get("rst", False)))
            return resp
        return web.Response(body=data, content_type=_JSON)

    async def _open_stream(self, request: web.Request, fault: str | None, kw: dict[str, Any]) -> web.StreamResponse:
        if fault == "slow" and kw.get("first_delay"):
            await asyncio.sleep(float(kw["first_delay"]))
        resp = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        await resp.prepare(request)
        return resp

    @staticmethod
    def _plan(fault: str | None, kw: dict[str, Any]) -> tuple[float, int | None]:
        """(delay between pieces, content pieces to send before cutting the stream or None)."""
        if fault == "slow":
            return float(kw.get("delay", 0.2)), None
        if fault == "midstream":
            return 0.0, int(kw.get("after", 2))
        return 0.0, None

    # ---------------------------------------------------------------- control API

    async def _control(self, request: web.Request) -> web.Response:
        try:
            cmd = await request.json()
            if not isinstance(cmd, dict):
                raise ValueError("control body must be a JSON object")
            self.control(**cmd)
        except (ValueError, TypeError) as exc:
            return _json_response(400, {"ok": False, "error": str(exc)})
        return _json_response(200, {"ok": True})

    async def _recorded(self, request: web.Request) -> web.Response:
        return _json_response(200, {"requests": self.requests, "violations": self.violations})

    # ---------------------------------------------------------------- OpenAI

    async def _openai_models(self, request: web.Request) -> web.StreamResponse:
        key = _bearer(request)
        rec, _, early, _, _ = await self._begin(request, "openai", key)
        if early is not None:
            return early
        refused = self._allow(rec, "openai", key)
        if refused is not None:
            return refused
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "tiqo-stub"} for m in self.models]
        return _json_response(200, {"object": "list", "data": data})

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        key = _bearer(request)
        rec, body, early, fault, kw = await self._begin(request, "openai", key)
        if early is not None:
            return early
        messages = body.get("messages")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            rec["status"] = 400
            return _bad_request("openai", "you must provide a model parameter")
        if not isinstance(messages, list) or not messages:
            rec["status"] = 400
            return _bad_request("openai", "'messages' is a required property")
        refused = self._allow(rec, "openai", key)
        if refused is not None:
            return refused

        user_text, words = "", 0
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            text = _text_of(msg.get("content"))
            words += _words(text)
            if msg.get("role") in ("user", "tool"):
                user_text = text
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        tool_name = None
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if tools and choice != "none" and last.get("role") != "tool":
            if isinstance(choice, dict):
                tool_name = (choice.get("function") or {}).get("name")
            if not tool_name:
                first = tools[0] if isinstance(tools[0], dict) else {}
                tool_name = (first.get("function") or {}).get("name") or "tool"
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        reply = _Reply(
            user_text=user_text,
            prompt_tokens=words,
            fixed=self.reply,
            max_tokens=max_tokens,
            stops=body.get("stop"),
            tool_name=tool_name,
        )
        n = next(self._ids)
        cid = f"chatcmpl-stub{n:020d}"
        created = int(time.time())
        finish = {"tool": "tool_calls", "length": "length"}.get(reply.finish, "stop")
        usage = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        }
        call_id = f"call_stub{n:016d}"

        if not body.get("stream"):
            if reply.tool is not None:
                name, args, _ = reply.tool
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}],
                    "refusal": None,
                }
            else:
                message = {"role": "assistant", "content": reply.text, "refusal": None}
            obj = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage,
                "system_fingerprint": None,
            }
            return await self._deliver_body(request, obj, fault, kw, len(reply.pieces))

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        usage_null = ',"usage":null' if include_usage else ""
        head = (
            f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{created},"model":{_dumps(model)},'
            '"system_fingerprint":null,"choices":[{"index":0,"delta":'
        )
        tail = ',"logprobs":null,"finish_reason":null}]' + usage_null + "}\n\n"
        delay, cut_after = self._plan(fault, kw)
        try:
            resp = await self._open_stream(request, fault, kw)
            if reply.tool is not None:
                name, _, arg_pieces = reply.tool
                first = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                    ],
                    "refusal": None,
                }
                await resp.write((head + _dumps(first) + tail).encode())
                deltas = [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in arg_pieces]
            else:
                await resp.write((head + '{"role":"assistant","content":"","refusal":null}' + tail).encode())
                deltas = [{"content": p} for p in reply.pieces]
            for i, delta in enumerate(deltas):
                if cut_after is not None and i >= cut_after:
                    break
                if delay:
                    await asyncio.sleep(delay)
                await resp.write((head + _dumps(delta) + tail).encode())
            if cut_after is not None:
                return await self._cut(request, resp, kw, "data: " + _dumps({"error": _server_error_obj()}) + "\n\n")
            end = head + '{},"logprobs":null,"finish_reason":"' + finish + '"}]' + usage_null + "}\n\n"
            if include_usage:
                end += (
                    f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
                    f'"model":{_dumps(model)},"system_fingerprint":null,"choices":[],"usage":{_dumps(usage)}}}\n\n'
                )
            await resp.write((end + "data: [DONE]\n\n").encode())
        except ConnectionError:
            return web.Response()
        return resp

    async def _cut(self, request: web.Request, resp: web.StreamResponse, kw: dict[str, Any], event: str) -> Any:
        """End a "midstream" stream: an in-band error event (``as_event=True``) or a dropped connection."""
        if kw.get("as_event"):
            await resp.write(event.encode())
            await resp.write_eof()
            return resp
        await _flush_then_abort(request, bool(kw.get("rst", False)))
        return resp

    # ---------------------------------------------------------------- OpenAI audio

    async def _openai_transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai_stt(request, "transcribe")

    async def _openai_translations(self, request: web.Request) -> web.StreamResponse:
        return await self._openai_stt(request, "translate")

    async def _openai_stt(self, request: web.Request, task: str) -> web.StreamResponse:
        """``/v1/audio/transcriptions`` and ``/translations``: multipart (``file`` and ``model`` required)."""
        key = _bearer(request)
        fields, info, data, problem = await _read_multipart(request)  # read before any answer, as a server does
        rec = self._record(request, "openai", key, None)
        rec.update(form=fields, file=info, client_request_id=request.headers.get("X-Client-Request-Id"))
        early, fault, kw = await self._gate(request, rec, "openai", key)
        if early is not None:
            return early
        fmt = fields.get("response_format") or "json"
        granularities = fields.get("timestamp_granularities[]") or []
        if problem is None:
            if info is None:
                problem = "Missing required parameter: 'file'."
            elif not isinstance(fields.get("model"), str) or not fields["model"]:
                problem = "you must provide a model parameter"
            elif info["filename"].rpartition(".")[2].lower() not in STT_EXTENSIONS or "." not in info["filename"]:
                problem = f"Invalid file format. Supported formats: {list(STT_EXTENSIONS)}"
            elif not data:
                problem = "Audio file is too short. Minimum audio length is 0.1 seconds."
            elif fmt not in STT_FORMATS:
                problem = f"Invalid value for 'response_format': {fmt!r}. Supported values are: {list(STT_FORMATS)}."
            elif granularities and fmt != "verbose_json":
                problem = "response_format must be set verbose_json to use timestamp granularities."
            elif any(g not in ("word", "segment") for g in granularities):
                problem = f"Invalid value for 'timestamp_granularities[]': {granularities}."
        if problem is not None:
            rec["status"] = 400
            return _bad_request("openai", problem)
        refused = self._allow(rec, "openai", key)
        if refused is not None:
            return refused
        duration = await asyncio.to_thread(audio_seconds, data)
        language = "english" if task == "translate" else _LANGUAGE_NAMES.get(fields.get("language") or "en", "english")
        text = self.reply if self.reply is not None else TRANSCRIPT
        ctype, body = _transcript_body(
            fmt, text, task=task, language=language, duration=duration, granularities=granularities
        )
        payload = body.encode() if isinstance(body, str) else _dumps(body).encode()
        rec["duration"] = duration
        if fault == "slow":
            await asyncio.sleep(float(kw.get("first_delay", 0.0)) + float(kw.get("delay", 0.2)))
        elif fault == "midstream":
            resp = web.StreamResponse(status=200, headers={"Content-Type": ctype})
            resp.content_length = len(payload)
            try:
                await resp.prepare(request)
                await resp.write(payload[: len(payload) // 2])
            except ConnectionError:
                return resp
            await _flush_then_abort(request, bool(kw.get("rst", False)))
            return resp
        return web.Response(body=payload, headers={"Content-Type": ctype})

    async def _openai_speech(self, request: web.Request) -> web.StreamResponse:
        """``/v1/audio/speech``: JSON in, audio bytes out (chunked, in several writes)."""
        key = _bearer(request)
        rec, body, early, fault, kw = await self._begin(request, "openai", key)
        rec["client_request_id"] = request.headers.get("X-Client-Request-Id")
        if early is not None:
            return early
        fmt = body.get("response_format", "mp3")
        speed = body.get("speed", 1.0)
        problem = None
        if not isinstance(body.get("model"), str) or not body["model"]:
            problem = "you must provide a model parameter"
        elif not isinstance(body.get("input"), str) or not body["input"]:
            problem = "Missing required parameter: 'input'."
        elif len(body["input"]) > 4096:
            problem = "'input': string too long. Expected a string with maximum length 4096."
        elif not isinstance(body.get("voice"), str) or not body["voice"]:
            problem = "Missing required parameter: 'voice'."
        elif fmt not in SPEECH_TYPES:
            problem = f"Invalid value for 'response_format': {fmt!r}. Supported values are: {list(SPEECH_TYPES)}."
        elif isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.25 <= speed <= 4.0:
            problem = f"Invalid value for 'speed': {speed!r}. It must be between 0.25 and 4.0."
        if problem is not None:
            rec["status"] = 400
            return _bad_request("openai", problem)
        refused = self._allow(rec, "openai", key)
        if refused is not None:
            return refused
        if self.speech is not None:
            audio = self.speech
        else:
            audio = await asyncio.to_thread(speech_audio, fmt, speech_seconds(body["input"], float(speed)))
        rec["audio"] = {"size": len(audio), "sha256": hashlib.sha256(audio).hexdigest()}
        size = max(1, min(SPEECH_CHUNK, -(-len(audio) // 3)))  # at least three writes
        chunks = [audio[i : i + size] for i in range(0, len(audio), size)]
        delay, cut_after = self._plan(fault, kw)
        try:
            if fault == "slow" and kw.get("first_delay"):
                await asyncio.sleep(float(kw["first_delay"]))
            resp = web.StreamResponse(status=200, headers={"Content-Type": SPEECH_TYPES[fmt]})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i, chunk in enumerate(chunks):
                if cut_after is not None and i >= cut_after:
                    break
                if delay and i:
                    await asyncio.sleep(delay)
                await resp.write(chunk)
            if cut_after is not None:
                await _flush_then_abort(request, bool(kw.get("rst", False)))
                return resp
            await resp.write_eof()
        except ConnectionError:
            return web.Response()
        return resp

    async def _openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        """``/v1/embeddings``: one deterministic unit vector per input (8 dims, or ``dimensions``), usage in tokens."""
        key = _bearer(request)
        rec, body, early, _, _ = await self._begin(request, "openai", key)
        rec["client_request_id"] = request.headers.get("X-Client-Request-Id")
        if early is not None:
            return early
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) and t for t in inputs):
            rec["status"] = 400
            return _bad_request("openai", "'input' must be a non-empty string or array of non-empty strings.")
        if not isinstance(body.get("model"), str) or not body["model"]:
            rec["status"] = 400
            return _bad_request("openai", "you must provide a model parameter")
        refused = self._allow(rec, "openai", key)
        if refused is not None:
            return refused
        dims = int(body.get("dimensions") or 8)
        data = []
        for i, text in enumerate(inputs):
            digest = hashlib.sha256(text.encode()).digest()
            raw = [b - 127.5 for b in (digest * (dims // 32 + 1))[:dims]]
            norm = sum(x * x for x in raw) ** 0.5
            data.append({"object": "embedding", "index": i, "embedding": [x / norm for x in raw]})
        tokens = sum(_words(t) for t in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return _json_response(200, {"object": "list", "data": data, "model": body["model"], "usage": usage})

    async def _openai_images(self, request: web.Request) -> web.StreamResponse:
        """``/v1/images/generations``: ``n`` grey PNGs of ``size`` as ``b64_json`` (as gpt-image models answer)."""
        key = _bearer(request)
        rec, body, early, _, _ = await self._begin(request, "openai", key)
        if early is not None:
            return early
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            rec["status"] = 400
            return _bad_request("openai", "'prompt' is required.")
        refused = self._allow(rec, "openai", key)
        if refused is not None:
            return refused
        width, height = (int(v) for v in str(body.get("size") or "64x64").split("x"))
        picture = base64.b64encode(grey_png(width, height)).decode()
        data = [{"b64_json": picture} for _ in range(int(body.get("n") or 1))]
        return _json_response(200, {"created": int(time.time()), "data": data})

    # ---------------------------------------------------------------- Anthropic

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-api-key") or None
        rec, body, early, fault, kw = await self._begin(request, "anthropic", key)
        if early is not None:
            return early
        problem = None
        if not request.headers.get("anthropic-version"):
            problem = "anthropic-version: header is required"
        elif "max_tokens" not in body:
            problem = "max_tokens: Field required"
        elif not isinstance(body.get("messages"), list):
            problem = "messages: Field required"
        elif not isinstance(body.get("model"), str):
            problem = "model: Field required"
        if problem is not None:
            rec["status"] = 400
            return _bad_request("anthropic", problem)
        refused = self._allow(rec, "anthropic", key)
        if refused is not None:
            return refused

        messages = body["messages"]
        model = body["model"]
        words = _words(_text_of(body.get("system")))
        user_text = ""
        for msg in messages:
            if not isinstance(msg, dict):
                continue
            text = _text_of(msg.get("content"))
            words += _words(text)
            if msg.get("role") == "user":
                user_text = text
        last_content = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else None
        after_tool = isinstance(last_content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in last_content
        )
        tool_name = None
        tools = body.get("tools")
        choice = body.get("tool_choice") or {}
        if tools and choice.get("type") != "none" and not after_tool:
            tool_name = choice.get("name") if choice.get("type") == "tool" else None
            if not tool_name:
                tool_name = (tools[0] if isinstance(tools[0], dict) else {}).get("name") or "tool"
        reply = _Reply(
            user_text=user_text,
            prompt_tokens=words,
            fixed=self.reply,
            max_tokens=body.get("max_tokens"),
            stops=body.get("stop_sequences"),
            tool_name=tool_name,
        )
        n = next(self._ids)
        mid = f"msg_stub{n:016d}"
        tool_id = f"toolu_stub{n:014d}"
        stop_reason = {"tool": "tool_use", "length": "max_tokens", "stop_sequence": "stop_sequence"}.get(
            reply.finish, "end_turn"
        )

        if not body.get("stream"):
            if reply.tool is not None:
                name, args, _ = reply.tool
                content: list[dict[str, Any]] = [
                    {"type": "tool_use", "id": tool_id, "name": name, "input": json.loads(args)}
                ]
            else:
                content = [{"type": "text", "text": reply.text}]
            obj = {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": reply.stop_sequence,
                "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": reply.completion_tokens},
            }
            return await self._deliver_body(request, obj, fault, kw, len(reply.pieces))

        start = {
            "type": "message_start",
            "message": {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": reply.prompt_tokens, "output_tokens": 1},
            },
        }
        if reply.tool is not None:
            name, _, arg_pieces = reply.tool
            block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in arg_pieces]
        else:
            block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in reply.pieces]
        delay, cut_after = self._plan(fault, kw)
        try:
            resp = await self._open_stream(request, fault, kw)
            await resp.write(
                (
                    "event: message_start\ndata: " + _dumps(start) + "\n\n"
                    'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":'
                    + _dumps(block)
                    + "}\n\n"
                    'event: ping\ndata: {"type": "ping"}\n\n'
                ).encode()
            )
            for i, delta in enumerate(deltas):
                if cut_after is not None and i >= cut_after:
                    break
                if delay:
                    await asyncio.sleep(delay)
                await resp.write(
                    (
                        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":'
                        + _dumps(delta)
                        + "}\n\n"
                    ).encode()
                )
            if cut_after is not None:
                error = _anthropic_error("overloaded_error", "Overloaded")
                return await self._cut(request, resp, kw, "event: error\ndata: " + _dumps(error) + "\n\n")
            end = {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": reply.stop_sequence},
                "usage": {"output_tokens": reply.completion_tokens},
            }
            await resp.write(
                (
                    'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
                    "event: message_delta\ndata: " + _dumps(end) + "\n\n"
                    'event: message_stop\ndata: {"type":"message_stop"}\n\n'
                ).encode()
            )
        except ConnectionError:
            return web.Response()
        return resp

    # ---------------------------------------------------------------- Gemini

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        key = request.headers.get("x-goog-api-key") or None
        rec, body, early, fault, kw = await self._begin(request, "gemini", key)
        if early is not None:
            return early
        name = request.match_info["name"]
        model, _, method = name.rpartition(":")
        if method not in ("generateContent", "streamGenerateContent") or not model:
            rec["status"] = 404
            return _json_response(404, _gemini_error(404, "NOT_FOUND", f"Method not found: {name}"))
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            rec["status"] = 400
            return _bad_request("gemini", "* GenerateContentRequest.contents: contents is not specified")
        refused = self._allow(rec, "gemini", key)
        if refused is not None:
            return refused

        words = _words(_text_of((body.get("systemInstruction") or {}).get("parts")))
        user_text = ""
        for item in contents:
            if not isinstance(item, dict):
                continue
            text = _text_of(item.get("parts"))
            words += _words(text)
            if item.get("role", "user") in ("user", "function"):
                user_text = text
        last_parts = contents[-1].get("parts") if isinstance(contents[-1], dict) else None
        after_tool = isinstance(last_parts, list) and any(
            isinstance(p, dict) and "functionResponse" in p for p in last_parts
        )
        tool_name = None
        tools = body.get("tools")
        calling = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
        if tools and calling != "NONE" and not after_tool:
            for tool in tools:
                decls = tool.get("functionDeclarations") if isinstance(tool, dict) else None
                if decls:
                    tool_name = decls[0].get("name") or "tool"
                    break
        config = body.get("generationConfig") or {}
        reply = _Reply(
            user_text=user_text,
            prompt_tokens=words,
            fixed=self.reply,
            max_tokens=config.get("maxOutputTokens"),
            stops=config.get("stopSequences"),
            tool_name=tool_name,
        )
        finish = "MAX_TOKENS" if reply.finish == "length" else "STOP"
        usage = {
            "promptTokenCount": reply.prompt_tokens,
            "candidatesTokenCount": reply.completion_tokens,
            "totalTokenCount": reply.prompt_tokens + reply.completion_tokens,
        }
        if reply.tool is not None:
            tname, args, _ = reply.tool
            parts_seq: list[list[dict[str, Any]]] = [[{"functionCall": {"name": tname, "args": json.loads(args)}}]]
        else:
            parts_seq = [[{"text": p}] for p in reply.pieces] or [[{"text": ""}]]

        def chunk(parts: list[dict[str, Any]], last: bool) -> dict[str, Any]:
            cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
            if last:
                cand["finishReason"] = finish
            cand["index"] = 0
            out: dict[str, Any] = {"candidates": [cand]}
            if last:
                out["usageMetadata"] = usage
            out["modelVersion"] = model
            return out

        if method == "generateContent":
            parts = parts_seq[0] if reply.tool is not None else [{"text": reply.text}]
            return await self._deliver_body(request, chunk(parts, True), fault, kw, len(reply.pieces))
        if request.query.get("alt") != "sse":
            # Without alt=sse Gemini streams one JSON array of the same chunks.
            chunks = [chunk(p, i == len(parts_seq) - 1) for i, p in enumerate(parts_seq)]
            return await self._deliver_body(request, chunks, fault, kw, len(reply.pieces))
        delay, cut_after = self._plan(fault, kw)
        try:
            resp = await self._open_stream(request, fault, kw)
            last_i = len(parts_seq) - 1 if cut_after is None else -1  # a cut stream never gets its finishReason
            for i, parts in enumerate(parts_seq):
                if cut_after is not None and i >= cut_after:
                    break
                if delay and i:
                    await asyncio.sleep(delay)
                await resp.write(("data: " + _dumps(chunk(parts, i == last_i)) + "\r\n\r\n").encode())
            if cut_after is not None:
                await _flush_then_abort(request, bool(kw.get("rst", False)))
        except ConnectionError:
            return web.Response()
        return resp


def _server_error_obj() -> dict[str, Any]:
    return {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }


# --------------------------------------------------------------------------------------- separate process


class UpstreamProcess:
    """``python -m tests.upstreams`` in its own process (own GIL), driven over ``/_stub/*``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, startup_timeout: float = 30.0) -> None:
        self.args, self.env, self.startup_timeout = list(args), env, startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> UpstreamProcess:
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.upstreams", "--port", "0", *self.args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                line = self.proc.stdout.readline()
                break
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"upstream stub process did not start (got {line!r})")
        self.url = line.split()[1]
        return self

    def control(self, **cmd: Any) -> dict[str, Any]:
        import httpx

        r = httpx.post(self.url + "/_stub/control", json=cmd, timeout=10)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def recorded(self) -> dict[str, Any]:
        """``{"requests": [...], "violations": [...]}``."""
        import httpx

        return httpx.get(self.url + "/_stub/requests", timeout=10).json()  # type: ignore[no-any-return]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self) -> UpstreamProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.upstreams", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--valid-key", action="append", dest="valid_keys", help="accept only these keys (repeatable)")
    ap.add_argument("--reply", default=None, help="fixed reply text instead of the echo")
    ap.add_argument("--delay-s", type=float, default=0.0)
    args = ap.parse_args(argv)
    up = Upstream(host=args.host, port=args.port, valid_keys=args.valid_keys, reply=args.reply, delay_s=args.delay_s)

    async def serve() -> None:
        await up._astart()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"READY {up.url}", flush=True)
        await stop.wait()
        await up._astop()

    factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
