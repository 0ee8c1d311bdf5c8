"""A bounded number of requests may hold a large buffer at once (decoded audio for transcription); the rest wait,
and past a bounded queue they are refused with 503. A lease is released however its request ends: by the stream
that uses it, by an error before the stream, or when an unstarted stream is dropped (``release_with``)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator
from typing import TypeVar

from tiqo.core.errors import Busy

T = TypeVar("T")


class Lease:
    def __init__(self, slots: HeldSlots) -> None:
        self._slots: HeldSlots | None = slots

    def release(self) -> None:
        """Idempotent: the first call gives the slot back."""
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.sem.release()

    def release_with(self, items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """``items``, giving the slot back when they end, fail, are closed, or are dropped without being started."""
        wrapped = _releasing(items, self)
        weakref.finalize(wrapped, self.release)
        return wrapped


class HeldSlots:
    def __init__(self, slots: int, max_waiting: int, what: str, setting: str) -> None:
        self.sem = asyncio.Semaphore(slots)
        self.slots = slots
        self.max_waiting = max_waiting
        self.waiting = 0
        self.what = what
        self.setting = setting

    async def acquire(self) -> Lease:
        if self.sem.locked() and self.waiting >= self.max_waiting:
            raise Busy(
                f"{self.slots} {self.what} are in progress and {self.waiting} wait: try again shortly",
                hint=f"`tiqo config set {self.setting} N` allows more at once (each holds its decoded audio)",
                retry_after=2,
            )
        self.waiting += 1
        try:
            await self.sem.acquire()
        finally:
            self.waiting -= 1
        return Lease(self)


async def _releasing(items: AsyncGenerator[T, None], lease: Lease) -> AsyncGenerator[T, None]:
    try:
        async for item in items:
            yield item
    finally:
        lease.release()
        await items.aclose()
