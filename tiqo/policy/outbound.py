"""What a chat request sends to a provider, as the policy reads it. Pure; table-tested.

The wire body (the request as the caller sent it, extras included: ``ChatCompletionRequest.wire``) goes to the
provider whole, only ``model`` replaced. So two policies read all of it, not only the message text:

* the restricted-data scan: a private key in a tool result, a tool call's arguments, a ``tools`` definition, a file
  part, a message's ``name`` or a pass-through field leaves the machine as surely as one in a user turn;
* the budget's worst-case reservation and the rate limits' token count: a provider bills ``tools``, tool calls and
  schemas as prompt, so megabytes of them must not reserve nothing.

Media are the exception in both. An image, audio or video payload is binary: it is not scanned (a ``data:`` URL or
base64 payload that decodes to UTF-8 text is scanned as that text), and providers bill it by resolution or duration,
not by bytes, so each non-text part counts ``MEDIA_PART_TOKENS`` (plus the text it carries, and the decoded bytes of
other binary files, a PDF say). Task and complexity signals do not read from here: they keep using the user-visible
turns, so ordinary requests route and reserve as before.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes

# Tokens a non-text content part (an image, an audio clip, a file) may cost beyond the text it carries. High-detail
# images: gpt-4o ≤ 1445, Claude ≤ ~1600, Gemini 258 a 768-px tile; providers bill by pixels, not payload bytes.
MEDIA_PART_TOKENS = 4096
NOT_SENT = frozenset({"model"})  # replaced by the provider's own model name before the body goes out
# Sent, but parameters rather than prompt: scanned for restricted data, not counted as prompt tokens.
NOT_PROMPT = frozenset(
    {
        "stream", "stream_options", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
        "logit_bias", "n", "user", "keep_alive", "max_tokens", "max_completion_tokens",
    }
)  # fmt: skip
MESSAGE_OVERHEAD = 8  # tokens of framing a message (its role, separators) counts at most, beyond its text
_MEDIA_TYPES = ("image/", "audio/", "video/")
_PART_MEDIA = {"image_url": "image/", "image": "image/", "input_image": "image/", "input_audio": "audio/"}
_PAYLOAD_KEYS = frozenset({"data", "file_data"})  # raw base64 in a part: input_audio.data, file.file_data, …
_TEXT_PARTS = frozenset({"input_text", "output_text", "refusal"})  # text by another name: no medium


@dataclass(frozen=True)
class Outbound:
    """A request's outgoing text and size. ``texts``: every caller-supplied string that leaves the machine, for the
    restricted-data scan. The counts: message text, everything else the provider reads as prompt, and media parts."""

    texts: tuple[str, ...] = ()
    messages: int = 0
    message_chars: int = 0
    message_bytes: int = 0
    other_bytes: int = 0  # bytes (as compact JSON) of tools, tool calls, names, schemas, files, pass-through fields
    media_parts: int = 0

    @property
    def worst_prompt_tokens(self) -> int:
        """The most prompt tokens the request can be billed for: no tokenizer makes more tokens than bytes."""
        return (
            self.message_bytes
            + MESSAGE_OVERHEAD * self.messages
            + self.other_bytes
            + MEDIA_PART_TOKENS * self.media_parts
        )

    @property
    def est_prompt_tokens(self) -> int:
        """A cheap estimate for routing and rate limits: about 4 characters a token (``routing.estimate_tokens`` of
        the message texts), the rest about 4 bytes a token, media parts at their allowance."""
        text = self.message_chars // 4 + 4 * self.messages + 1
        return text + self.other_bytes // 4 + MEDIA_PART_TOKENS * self.media_parts


class TooBig(Exception):
    """The body holds more than the walk's ``limit``: walk it again where time does not matter (a worker thread)."""


def outbound(wire: Mapping[str, Any], *, limit: int | None = None) -> Outbound:
    """What ``wire`` (a chat request body as sent upstream) carries out. With ``limit``, raises ``TooBig`` as soon as
    more than that many characters (and items) have been read, so a caller can walk small bodies inline."""
    walk = _Walk(limit)
    for key, value in wire.items():
        if key in NOT_SENT:
            continue
        if key == "messages" and isinstance(value, list):
            walk.add(key, prompt=False)
            for message in value:
                walk.message(message)
        else:
            walk.add(key, prompt=key not in NOT_PROMPT)
            walk.value(value, prompt=key not in NOT_PROMPT)
    return Outbound(
        tuple(walk.texts), walk.messages, walk.message_chars, walk.message_bytes, walk.other_bytes, walk.media_parts
    )


def form_texts(fields: Mapping[str, str | list[str]], skip: Collection[str] = ()) -> list[str]:
    """The names and values of the form fields sent upstream (those not in ``skip``), for the restricted-data scan."""
    out: list[str] = []
    for name, value in fields.items():
        if name not in skip:
            out.append(name)
            out.extend([value] if isinstance(value, str) else value)
    return out


@dataclass
class _Walk:
    limit: int | None
    texts: list[str] = field(default_factory=list)
    read: int = 0
    messages: int = 0
    message_chars: int = 0
    message_bytes: int = 0
    other_bytes: int = 0
    media_parts: int = 0

    def _read(self, chars: int) -> None:
        self.read += chars + 1
        if self.limit is not None and self.read > self.limit:
            raise TooBig(f"more than {self.limit} characters")

    def add(self, text: str, *, prompt: bool) -> None:
        """A caller's string that goes out: scanned; counted as prompt bytes when the provider reads it as prompt
        (with its quotes and a separator, as JSON sends it)."""
        self._read(len(text))
        self.texts.append(text)
        if prompt:
            self.other_bytes += _utf8_len(text) + 3

    def message(self, message: Any) -> None:
        if not isinstance(message, Mapping):
            self.value(message, prompt=True)
            return
        self.messages += 1
        for key, value in message.items():
            if key == "role":
                continue  # framing (MESSAGE_OVERHEAD), and one of five fixed words
            if key == "content" and isinstance(value, str):
                self._message_text(value)
            elif key == "content" and isinstance(value, list):
                for part in value:
                    self.part(part)
            else:
                self.add(key, prompt=True)
                self.value(value, prompt=True)

    def _message_text(self, text: str) -> None:
        self._read(len(text))
        self.texts.append(text)
        self.message_chars += len(text)
        self.message_bytes += _utf8_len(text)

    def part(self, part: Any) -> None:
        """A content part: a text part is message text; anything else is a medium (``MEDIA_PART_TOKENS``), whose
        payload is read as the text it decodes to, if any."""
        if not isinstance(part, Mapping):
            self.value(part, prompt=True)
            return
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            self._message_text(part["text"])
            for key, value in part.items():
                if key not in ("type", "text"):
                    self.add(key, prompt=True)
                    self.value(value, prompt=True)
            return
        if kind in _TEXT_PARTS:
            self.value(part, prompt=True)
            return
        self.media_parts += 1
        self.value(part, prompt=True, media=_PART_MEDIA.get(str(kind), "?"))

    def value(self, value: Any, *, prompt: bool, media: str = "", key: str = "") -> None:
        """Any JSON value: every string (and dict key, and integer) in it is read. Within a media part (``media`` is
        its implied type, ``"?"`` when unknown) payloads are decoded first."""
        if isinstance(value, str):
            if not (media and self._payload(value, key, media, prompt)):
                self.add(value, prompt=prompt)
        elif isinstance(value, Mapping):
            self._read(0)
            self.other_bytes += 2 * prompt  # its braces
            for k, v in value.items():
                self.add(str(k), prompt=prompt)
                self.value(v, prompt=prompt, media=media, key=str(k))
        elif isinstance(value, (list, tuple)):
            self._read(0)
            self.other_bytes += 2 * prompt  # its brackets
            for item in value:
                self.value(item, prompt=prompt, media=media, key=key)
        elif isinstance(value, int) and not isinstance(value, bool):
            self.add(str(value), prompt=prompt)  # a card number sent as a number is still a card number
        else:  # float, bool, None
            self._read(0)
            self.other_bytes += (len(repr(value)) + 1) * prompt

    def _payload(self, text: str, key: str, media: str, prompt: bool) -> bool:
        """A ``data:`` URL, or raw base64 under a payload key: scanned and counted as the UTF-8 text it decodes to;
        binary image, audio or video is neither (the part's allowance covers it); other binary (a PDF) counts its
        decoded bytes. False when ``text`` is no payload (then it is read as it is)."""
        is_url = text.startswith("data:")
        if not is_url and key not in _PAYLOAD_KEYS:
            return False
        self._read(len(text))  # before decoding: a walk with a limit stops before the work
        if is_url:
            head, comma, data = text.partition(",")
            mime = head[5:].split(";", 1)[0].strip().lower() or media
            base64_data = head.lower().endswith(";base64")
            raw = None if not comma else _b64(data, strict=False) if base64_data else unquote_to_bytes(data)
        else:
            mime, raw = media, _b64(text, strict=True)
        if raw is None:
            self.read -= len(text) + 1  # read again as plain text
            return False
        try:
            decoded = raw.decode("utf-8")
        except UnicodeDecodeError:
            if prompt and not mime.startswith(_MEDIA_TYPES):
                self.other_bytes += len(raw)
            return True
        self.texts.append(decoded)
        if prompt:
            self.other_bytes += len(raw)
        return True


def _b64(data: str, *, strict: bool) -> bytes | None:
    try:
        return base64.b64decode(data, validate=strict)
    except (binascii.Error, ValueError):
        return None


def _utf8_len(text: str) -> int:
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))
