"""A job while it is queued or running, the :class:`JobHandle` its work function gets, and the throttle that carries
progress from engine threads to the event loop: events at most every ``EVENT_INTERVAL_S`` per job, SQLite writes at
most every ``STORE_INTERVAL_S`` (status changes are never held back: the manager publishes those itself)."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tiqo.core.errors import Cancelled
from tiqo.daemon.runtime.job_record import FINISHED, MAX_STAGE
from tiqo.daemon.state.jobs_store import JobsStore
from tiqo.sdk.engine import StopFlag

EVENT_INTERVAL_S = 0.1  # progress events per job: at most 10 a second (status changes are never held back)
STORE_INTERVAL_S = 0.5  # progress writes to SQLite per job: at most 2 a second

Work = Callable[["JobHandle"], Awaitable[dict[str, Any]]]


class LiveJob:
    """A queued or running job: its row as it changes, its stop flag, and what the throttles need. Engine threads
    write ``row`` (under ``lock``); everything else is touched on the event loop only."""

    def __init__(self, row: dict[str, Any], work: Work) -> None:
        self.row = row
        self.work = work
        self.lock = threading.Lock()
        self.stop = StopFlag()
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.started_mono = 0.0
        self.anchor: tuple[float, int] | None = None  # (monotonic time, step) of the first progress report
        self.woken = False  # a wake-up is already on its way to the loop
        self.event_dirty = self.store_dirty = False
        self.event_at = self.stored_at = -math.inf
        self.timer: asyncio.TimerHandle | None = None
        self.removed = False

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {**self.row, "meta": dict(self.row["meta"])}


class Throttle:
    """Progress reports (any thread) into events and store writes (the loop), at most one wake-up per flush.
    ``publish`` sends a job's ``job`` event; ``loop`` is set once the manager first runs on it."""

    def __init__(self, store: JobsStore, publish: Callable[[LiveJob], None]) -> None:
        self.store = store
        self.publish = publish
        self.loop: asyncio.AbstractEventLoop | None = None

    def progress(self, live: LiveJob, step: int, total: int, stage: str) -> None:
        """Record ``step`` of ``total`` and its ETA (from the first report on, so loading time does not count)."""
        now = time.monotonic()
        total = max(0, int(total))
        step = max(0, int(step))
        if total:
            step = min(step, total)
        with live.lock:
            if live.anchor is None or step < live.anchor[1]:
                live.anchor = (now, step)
            anchor_t, anchor_step = live.anchor
            eta: float | None = None
            if total and step > anchor_step:
                eta = (now - anchor_t) / (step - anchor_step) * (total - step)
            elif total and step:
                eta = (now - live.started_mono) / step * (total - step)
            live.row.update(step=step, total=total, stage=str(stage)[:MAX_STAGE], eta_s=_round(eta))
            live.event_dirty = live.store_dirty = True
        self.wake(live)

    def wake(self, live: LiveJob) -> None:
        """Have the loop flush ``live`` soon; many reports between two flushes cost one wake-up."""
        with live.lock:
            if live.woken:
                return
            live.woken = True
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._flush, live)

    def _flush(self, live: LiveJob) -> None:
        with live.lock:
            live.woken = False
        live.timer = None
        if live.row["status"] in FINISHED or live.removed:
            return
        mono, waits = time.monotonic(), []
        if live.event_dirty:
            due = live.event_at + EVENT_INTERVAL_S - mono
            if due <= 0:
                live.event_dirty, live.event_at = False, mono
                self.publish(live)
            else:
                waits.append(due)
        if live.store_dirty:
            due = live.stored_at + STORE_INTERVAL_S - mono
            if due <= 0:
                live.store_dirty, live.stored_at = False, mono
                row = live.snapshot()
                self.store.update(row["id"], {k: row[k] for k in ("step", "total", "stage", "eta_s", "meta")})
            else:
                waits.append(due)
        if waits and self.loop is not None:
            live.timer = self.loop.call_later(min(waits), self._flush, live)


class JobHandle:
    """What a work function gets: where to put files, the stop flag, and ways to report progress and metadata."""

    def __init__(self, throttle: Throttle, live: LiveJob, directory: Path) -> None:
        self._throttle = throttle
        self._live = live
        self.id: str = live.row["id"]
        self.user: str = live.row["user"]
        self.kind: str = live.row["kind"]
        self.dir = directory
        self.stop = live.stop

    def progress(self, step: int, total: int, stage: str = "") -> None:
        """``step`` of ``total`` done (thread-safe; call it from engine threads as often as steps end)."""
        self._throttle.progress(self._live, step, total, stage)

    def check(self) -> None:
        """Raise :class:`Cancelled` when the job's owner cancelled it (call it between steps)."""
        if self.stop.is_set():
            raise Cancelled("the job was cancelled", hint="submit it again to start over")

    def note(self, **fields: Any) -> None:
        """Merge ``fields`` (JSON values: model, device, seed, steps, ...) into the job's metadata (thread-safe)."""
        json.dumps(fields)  # a value JSON cannot hold is the caller's bug: say so here, not at the next write
        live = self._live
        with live.lock:
            live.row["meta"] = {**live.row["meta"], **fields}
            live.store_dirty = True
        self._throttle.wake(live)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
