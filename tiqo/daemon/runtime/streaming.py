"""Bridges a blocking engine generator (run in a runner's own thread) to the event loop, with backpressure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tiqo.sdk.engine import StopFlag

T = TypeVar("T")
_DONE = object()
# Pieces (tokens, events, encoded sentences of speech) an engine may hand over before its consumer takes them. A
# client that stops reading stops the engine this many pieces later, instead of the daemon holding all it makes.
MAX_AHEAD = 16
_WAKE_S = 0.5  # a waiting engine thread also looks at its stop flag this often (it is woken when the consumer ends)


async def iterate_in_thread(
    executor: ThreadPoolExecutor, make: Callable[[], Iterator[T]], stop: StopFlag, ahead: int = MAX_AHEAD
) -> AsyncIterator[T]:
    """Yield what ``make()`` yields, running it in ``executor``.

    At most ``ahead`` items wait for the consumer: then the engine thread waits too (backpressure), so a client that
    reads slowly or not at all holds a bounded amount. Exceptions raised before or during iteration propagate here.
    When the consumer stops early (client disconnect, cancellation), ``stop`` is set, a waiting thread is woken, and
    this waits for the thread to finish, so the runner is never handed to the next request while still generating.
    """
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1, not {ahead}")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    room = threading.Semaphore(ahead)  # one per item the consumer may still be behind
    put = queue.put_nowait

    def hand_over(item: T) -> bool:
        """Queue ``item`` once there is room; False when the consumer went away meanwhile."""
        while not room.acquire(timeout=_WAKE_S):
            if stop.is_set():
                return False
        if stop.is_set():
            return False
        loop.call_soon_threadsafe(put, item)
        return True

    def work() -> None:
        items: Iterator[T] | None = None
        try:
            items = make()
            for item in items:
                if not hand_over(item) or stop.is_set():
                    break
        except BaseException as exc:  # delivered to the consumer (the end needs no room: one item at most)
            loop.call_soon_threadsafe(put, exc)
        else:
            loop.call_soon_threadsafe(put, _DONE)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()  # runs the engine's cleanup (llama.cpp stops generating) in this thread

    future = loop.run_in_executor(executor, work)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            room.release()
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        room.release()  # wakes a thread waiting for room: it sees the stop flag and ends
        await asyncio.shield(future)
