"""What the client raises and how it reads server-sent events (no httpx import until a stream is read)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx


class DaemonUnavailable(Exception):
    """The daemon is not running (and could not be started)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ApiError(Exception):
    """The daemon answered with an error (OpenAI's error shape plus tiqo's ``hint``)."""

    def __init__(self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
        err = (body or {}).get("error") or {}
        self.status = status
        self.message = str(err.get("message") or f"HTTP {status}")
        self.code = err.get("code")
        self.type = err.get("type")
        self.param = err.get("param")
        self.hint = err.get("hint")
        self.headers = headers or {}
        super().__init__(self.message)


class Stream:
    """Server-sent events of one streaming response. Iterating yields each event's JSON; closing it (or
    leaving the ``with`` block early) hangs up, which makes the daemon stop generating."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.headers = dict(response.headers)
        self.usage: dict[str, int] | None = None
        self.finish_reason: str | None = None
        self.served: dict[str, Any] = {}  # backend, cost_usd, cache: from the daemon's final usage chunk

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import httpx

        try:
            yield from self._events()
        except httpx.HTTPError as exc:  # the daemon died or was stopped mid-answer
            raise DaemonUnavailable(
                f"the daemon went away in the middle of the answer ({type(exc).__name__})",
                hint="see `tiqo daemon logs`; the next command starts it again",
            ) from None

    def _events(self) -> Iterator[dict[str, Any]]:
        for line in self.response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if "error" in event:
                raise ApiError(200, event)
            if event.get("usage"):
                self.usage = event["usage"]
            if event.get("x_tiqo"):
                self.served = event["x_tiqo"]
            for choice in event.get("choices") or ():
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
            yield event
        raise ApiError(
            502,
            {
                "error": {
                    "message": "the stream ended without [DONE] (the daemon went away?)",
                    "code": "stream_truncated",
                    "hint": "see `tiqo daemon logs`",
                }
            },
        )

    def text(self) -> Iterator[str]:
        """Just the generated text, chunk by chunk (chat or text completions)."""
        for event in self:
            for choice in event.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                if piece:
                    yield piece

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_sse(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Server-sent events from the lines of a stream (the WHATWG rules): ``{"id", "event", "data"}`` per event.

    Comment lines (``:`` first, the daemon's keep-alives) and ``retry:`` are skipped; several ``data:`` lines join
    with newlines; an event is dispatched at its blank line; ``id`` carries over to later events until set again."""
    last_id: str | None = None
    event: str | None = None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield {"id": last_id, "event": event or "message", "data": "\n".join(data)}
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
    # an event without its closing blank line is incomplete: dropped, as the standard says
