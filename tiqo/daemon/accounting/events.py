"""The daemon's event bus: requests finishing, budget alerts, breakers and keys changing state.

``publish`` never blocks the request path: each subscriber has a bounded queue and a slow one loses its oldest
events (it is told how many with a ``dropped`` event). A ring buffer lets a reconnecting client resume from the
``Last-Event-ID`` it saw. ``GET /tiqo/events`` streams this as server-sent events (the dashboard's feed).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

HISTORY = 512
QUEUE = 1024


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    kind: str  # request | alert | breaker | key | model | budget | job
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "kind": self.kind, "data": self.data}


class EventBus:
    def __init__(self, history: int = HISTORY) -> None:
        self._next = 1
        self.history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: set[_Subscriber] = set()
        self.dropped_total = 0  # events slow subscribers lost, since start (a metric)

    def publish(self, kind: str, data: dict[str, Any]) -> Event:
        event = Event(self._next, time.time(), kind, data)
        self._next += 1
        self.history.append(event)
        for sub in list(self._subscribers):
            if not sub.put(event):
                self.dropped_total += 1
        return event

    def publish_named(self, name: str, data: dict[str, Any]) -> Event:
        """``model.loaded`` becomes a ``model`` event with ``{"event": "loaded", ...}``, so that kinds stay a short
        list to filter on (the scheduler's ``on_event`` hook names its events this way)."""
        kind, _, what = name.partition(".")
        return self.publish(kind, {"event": what or kind, **data})

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def subscribe(self, after: int | None = None, kinds: set[str] | None = None) -> AsyncGenerator[Event, None]:
        """Events from now on (or after the id ``after``, from the history), filtered by kind."""
        sub = _Subscriber()
        self._subscribers.add(sub)
        try:
            if after is not None:
                for event in list(self.history):
                    if event.id > after and (kinds is None or event.kind in kinds):
                        yield event
                if self.history and self.history[0].id > after + 1:
                    yield Event(0, time.time(), "dropped", {"from": after + 1, "to": self.history[0].id - 1})
            while True:
                event = await sub.get()
                if kinds is None or event.kind in kinds or event.kind == "dropped":
                    yield event
        finally:
            self._subscribers.discard(sub)


class _Subscriber:
    def __init__(self) -> None:
        self.queue: collections.deque[Event] = collections.deque()
        self.ready = asyncio.Event()
        self.dropped = 0

    def put(self, event: Event) -> bool:
        """Queue ``event``; False when the oldest queued one had to go to make room."""
        full = len(self.queue) >= QUEUE
        if full:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(event)
        self.ready.set()
        return not full

    async def get(self) -> Event:
        while not self.queue:
            self.ready.clear()
            await self.ready.wait()
        if self.dropped:
            n, self.dropped = self.dropped, 0
            return Event(0, time.time(), "dropped", {"count": n})
        return self.queue.popleft()
