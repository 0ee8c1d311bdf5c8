"""Live events from the daemon (``GET /tiqo/events``, server-sent events): a blocking iterator that reconnects
after the last id it saw (the CLI), and an asyncio one for the dashboard."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from tiqo.client.streams import DaemonUnavailable, parse_sse
from tiqo.client.transport import Transport

if TYPE_CHECKING:
    import asyncio

    import httpx

RECONNECT_HEALTHY_S = 5.0  # an event stream open this long had been fine: reconnect at once when it drops
RECONNECT_TRIES = 5  # reconnections in a row that each dropped quickly before events() gives up


class EventStreams(Transport):
    def events(
        self,
        kinds: str | Iterable[str] | None = None,
        last_event_id: int | str | None = None,
        *,
        reconnect: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Live events (``{"id", "ts", "kind", "data"}``) until the iterator is closed (which hangs up).

        ``kinds`` filters them (``"request,alert"`` or a list); ``last_event_id`` first replays what came after it
        from the daemon's short history. Keep-alive comments are skipped. With ``reconnect`` (what server-sent
        events expect of a client) a dropped stream is opened again with the last id seen, as long as the daemon
        answers (it is never started for that); otherwise :class:`DaemonUnavailable` is raised."""
        last, failures, first = last_event_id, 0, True
        gone: DaemonUnavailable | None = None
        while True:
            if first:
                response = self._open_events(kinds, last)  # may start the daemon, like every other call
            else:
                autostart, self.autostart = self.autostart, False
                try:
                    response = self._open_events(kinds, last)
                except DaemonUnavailable as exc:
                    raise (gone or exc) from None
                finally:
                    self.autostart = autostart
            first, opened = False, time.monotonic()
            try:
                for event in self._read_events(response):
                    ident = event.get("id")
                    if isinstance(ident, int) and ident > 0:
                        last = ident
                    yield event
                gone = DaemonUnavailable(
                    "the daemon ended the event stream (it is stopping)", hint="see `tiqo daemon status`"
                )
            except DaemonUnavailable as exc:
                gone = exc
            finally:
                response.close()
            failures = 0 if time.monotonic() - opened > RECONNECT_HEALTHY_S else failures + 1
            if not reconnect or failures > RECONNECT_TRIES or not self.is_running():
                raise gone
            if failures:
                time.sleep(min(2.0, 0.25 * 2 ** (failures - 1)))

    def _open_events(self, kinds: str | Iterable[str] | None, last_event_id: int | str | None) -> httpx.Response:
        params, headers = _query(kinds, last_event_id)
        response = self._send("GET", "/tiqo/events", stream=True, headers=headers, params=params)
        if response.status_code >= 400:
            try:
                response.read()
                self._decode(response)
            finally:
                response.close()
        return response

    @staticmethod
    def _read_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
        import httpx

        try:
            for raw in parse_sse(response.iter_lines()):
                yield event_of(raw)
        except httpx.HTTPError as exc:
            raise DaemonUnavailable(
                f"the daemon went away in the middle of the event stream ({type(exc).__name__})",
                hint="see `tiqo daemon logs`; run the command again once it is back",
            ) from None

    # ------------------------------------------------------------------ asyncio (the dashboard)
    async def aevents(
        self,
        kinds: str | Iterable[str] | None = None,
        last_event_id: int | str | None = None,
        *,
        connect_timeout: float = 3.0,
        opened: asyncio.Event | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Live events as :meth:`events` yields them, for asyncio programs (``tiqo dash``). One connection: it never
        starts the daemon and never reconnects by itself; when the daemon cannot be reached or the stream ends it
        raises :class:`DaemonUnavailable`, so the caller can say so and open it again after the last id it saw.
        ``opened`` is set once the daemon has answered: it has subscribed this stream, so nothing published from
        then on is missed (fetch a snapshot after that, not before). Cancelling the iteration hangs up at once."""
        import httpx

        params, headers = _query(kinds, last_event_id)
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path))
        timeout = httpx.Timeout(connect_timeout, read=None)
        try:
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://tiqo", timeout=timeout) as http,
                http.stream("GET", "/tiqo/events", params=params, headers=headers) as response,
            ):
                if response.status_code >= 400:
                    await response.aread()
                    self._decode(response)
                if opened is not None:
                    opened.set()
                block: list[str] = []
                async for line in response.aiter_lines():
                    if line.strip("\r\n"):
                        block.append(line)
                        continue
                    for raw in parse_sse([*block, ""]):  # one event at its blank line
                        yield event_of(raw)
                    block = []
        except (httpx.HTTPError, OSError) as exc:
            raise DaemonUnavailable(
                f"cannot reach the tiqo daemon at {self.socket_path} ({type(exc).__name__})",
                hint="start it with `tiqo daemon start`; see `tiqo daemon logs`",
            ) from None
        raise DaemonUnavailable("the daemon ended the event stream (it is stopping)", hint="see `tiqo daemon status`")


def _query(kinds: str | Iterable[str] | None, last_event_id: int | str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The query (``kinds``) and headers (``Last-Event-ID``) that open an event stream."""
    params: dict[str, Any] = {}
    if kinds is not None:
        params["kinds"] = kinds if isinstance(kinds, str) else ",".join(kinds)
    headers = {"accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = str(last_event_id)
    return params, headers


def event_of(raw: dict[str, Any]) -> dict[str, Any]:
    """``{"id", "ts", "kind", "data"}`` of one server-sent event as :func:`parse_sse` gives it."""
    try:
        event = json.loads(raw["data"])
    except ValueError:
        event = {"data": raw["data"]}
    if not isinstance(event, dict):
        event = {"data": event}
    event.setdefault("kind", raw["event"])
    if raw["id"] is not None:
        event.setdefault("id", int(raw["id"]) if raw["id"].isdigit() else raw["id"])
    return event
