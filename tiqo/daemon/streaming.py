"""Bridges a blocking engine generator (run in a runner's own thread) to the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tiqo.sdk.engine import StopFlag

T = TypeVar("T")
_DONE = object()


async def iterate_in_thread(
    executor: ThreadPoolExecutor, make: Callable[[], Iterator[T]], stop: StopFlag
) -> AsyncIterator[T]:
    """Yield what ``make()`` yields, running it in ``executor``.

    Exceptions raised before or during iteration propagate here. When the consumer stops early (client
    disconnect, cancellation), ``stop`` is set and this waits for the thread to finish, so the runner is never
    handed to the next request while still generating.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    put = queue.put_nowait

    def work() -> None:
        items: Iterator[T] | None = None
        try:
            items = make()
            for item in items:
                loop.call_soon_threadsafe(put, item)
                if stop.is_set():
                    break
        except BaseException as exc:  # delivered to the consumer
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
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        await asyncio.shield(future)
