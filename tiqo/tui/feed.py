"""The dashboard's live feed: subscribe to ``/tiqo/events``, then fetch a snapshot of the routes, then pass on each
event; when the daemon goes away, say so, wait until its socket answers again and start over.

No textual here: the app hands in three callbacks, all called on its event loop. REST calls use the synchronous
client in a worker thread; the event stream is read with :meth:`TiqoClient.aevents` (asyncio, cancellable)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from tiqo.client import ApiError, DaemonUnavailable, TiqoClient
from tiqo.client import process as daemon_process
from tiqo.tui.model import midnight

LOGS = 500  # recent requests in the snapshot
ALERTS = 100
JOBS = 100
CONNECT_WAIT_S = 10.0  # for the daemon to answer a new event stream
RETRY_S = (0.25, 0.5, 1.0, 2.0)  # waits between checks that the daemon is back


def snapshot(client: TiqoClient) -> dict[str, Any]:
    """Everything the tabs show, from the daemon's routes (blocking: run it in a thread)."""
    now = time.time()
    today = f"{max(1, int(now - midnight(now)) + 1)}s"
    return {
        "health": client.health(),
        "usage": client.usage(today, "provider"),
        "logs": client.logs(LOGS),
        "alerts": client.alerts(ALERTS),
        "budget": client.budget(),
        "keys": client.keys(),
        "replicas": replica_rows(client.providers()),
        "ps": client.ps(),
        "catalog": client.models(),
        "jobs": client.jobs(limit=JOBS)["data"],
    }


def replica_rows(providers: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per endpoint of each provider served by several (replicas), for the keys tab."""
    return [{"provider": p["name"], **e} for p in providers.get("providers") or [] for e in p.get("endpoints") or []]


def fetch(client: TiqoClient, what: str) -> Any:
    """One part of the snapshot again: ``budget``, ``keys`` or ``ps``."""
    calls: dict[str, Callable[[], Any]] = {"budget": client.budget, "keys": client.keys, "ps": client.ps}
    return calls[what]()


class Feed:
    def __init__(
        self,
        client: TiqoClient,
        on_snapshot: Callable[[dict[str, Any]], None],
        on_event: Callable[[dict[str, Any]], None],
        on_down: Callable[[str, str | None], None],
    ) -> None:
        self.client = client
        self.on_snapshot = on_snapshot
        self.on_event = on_event
        self.on_down = on_down
        self.connections = 0  # streams opened so far (1 = the first; more = reconnected)

    async def run(self) -> None:
        """Until cancelled: one connection after another."""
        while True:
            try:
                await self._connection()
            except (DaemonUnavailable, ApiError) as exc:
                self.on_down(exc.message, exc.hint)
            except TimeoutError:
                self.on_down("the daemon did not open the event stream", "see `tiqo daemon logs`")
            except Exception as exc:  # a broken connection in the middle of the snapshot, …: never end the feed
                self.on_down(f"lost the daemon ({type(exc).__name__}: {exc})", "see `tiqo daemon logs`")
            await self._until_back()

    async def _connection(self) -> None:
        opened = asyncio.Event()
        queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()

        async def read() -> None:
            try:
                async for event in self.client.aevents(opened=opened):
                    queue.put_nowait(event)
            except (DaemonUnavailable, ApiError) as exc:
                queue.put_nowait(exc)

        reader = asyncio.create_task(read())
        try:
            waiter = asyncio.create_task(opened.wait())
            await asyncio.wait({reader, waiter}, timeout=CONNECT_WAIT_S, return_when="FIRST_COMPLETED")
            waiter.cancel()
            if not opened.is_set():
                if not queue.empty():
                    failure = queue.get_nowait()
                    if isinstance(failure, BaseException):
                        raise failure
                raise TimeoutError
            # Subscribed: whatever is published from now on comes through the queue; the snapshot has the rest.
            snap = await asyncio.to_thread(snapshot, self.client)
            self.connections += 1
            self.on_snapshot(snap)
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                self.on_event(item)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _until_back(self) -> None:
        """Wait until the daemon's socket answers again (never starting it: it was stopped on purpose, or will be
        started by whoever restarts it)."""
        attempt = 0
        while True:
            await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])
            if await asyncio.to_thread(daemon_process.socket_answers, self.client.socket_path):
                return
            attempt += 1
