"""Warm pool of loaded models with Ollama's semantics.

- ``acquire(spec)`` hands out one runner slot; a model serves up to ``num_parallel`` requests at once.
- One load at a time. Requests waiting for a slot or a load are bounded: full -> 503 + Retry-After.
- Idle models expire after their keep-alive (0 = unload when idle, inf = never).
- A model that does not fit the memory budget (or the loaded-model count) evicts idle models, least recently
  used first; if every loaded model is busy, the load waits until one is released.
- Engine calls block, so they run in threads: one loader thread, and one thread per runner slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tiqo.core.durations import format_size
from tiqo.core.errors import Busy, ModelLoadFailed, TiqoError
from tiqo.sdk.engine import Described, Engine, Fragile, ModelSpec, Runner

log = logging.getLogger("tiqo.scheduler")


@dataclass(eq=False)
class Slot:
    runner: Runner
    executor: ThreadPoolExecutor  # one thread: a runner is only ever called from its own thread
    fragile: Fragile | None = None  # the runner, when its worker can die (checked once, at load: isinstance is slow)


@dataclass(eq=False)
class Loaded:
    spec: ModelSpec
    slots: list[Slot]
    free: asyncio.Queue[Slot]
    keep_alive: float
    memory_estimate: int
    memory_measured: int
    loaded_at: float
    last_used: float
    in_flight: int = 0
    waiting: int = 0
    expires_at: float | None = None
    timer: asyncio.TimerHandle | None = None
    unloading: bool = False
    requests_served: int = 0
    load_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def memory(self) -> int:
        return self.memory_estimate


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _trim_heap() -> None:
    """Give freed heap pages back to the OS so unloading shows in RSS (glibc keeps them otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Scheduler:
    def __init__(
        self,
        engines: dict[str, Engine],
        *,
        memory_budget: int,
        max_loaded_models: int = 3,
        max_queue: int = 64,
        default_keep_alive: float = 300.0,
        options_for: Callable[[ModelSpec], dict[str, Any]] = lambda spec: dict(spec.options),
        prepare: Callable[[ModelSpec], ModelSpec] = lambda spec: spec,
        on_event: Callable[[str, dict[str, Any]], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engines = engines
        self.memory_budget = memory_budget
        self.max_loaded_models = max_loaded_models
        self.max_queue = max_queue
        self.default_keep_alive = default_keep_alive
        self.options_for = options_for
        self.prepare = prepare
        self.on_event = on_event or (lambda kind, data: None)
        self.clock = clock
        self.loaded: dict[str, Loaded] = {}
        self.pending = 0
        self._load_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tiqo-loader")
        self._closed = False

    # ----------------------------------------------------------------- public
    @contextlib.asynccontextmanager
    async def acquire(self, spec: ModelSpec, keep_alive: float | None = None) -> AsyncIterator[Slot]:
        """Wait for a free slot of ``spec`` (loading it if needed) and hold it for the block."""
        if self._closed:
            raise Busy("the daemon is shutting down", retry_after=2, hint="retry once `tiqo daemon status` is ok")
        if self.pending >= self.max_queue:
            raise Busy(
                f"too many requests waiting ({self.pending}); try again shortly",
                retry_after=self._retry_after(),
                hint="raise scheduler.max_queue or scheduler.num_parallel (`tiqo config set`)",
            )
        self.pending += 1
        try:
            entry, slot = await self._take_slot(spec)
        finally:
            self.pending -= 1
        if keep_alive is not None:
            entry.keep_alive = keep_alive
        try:
            yield slot
        finally:
            entry.free.put_nowait(slot)
            entry.in_flight -= 1
            entry.requests_served += 1
            entry.last_used = self.clock()
            if slot.fragile is not None and slot.fragile.broken:  # its worker died: the next request loads afresh
                await self._unload(entry, reason="its worker died")
            elif entry.in_flight == 0:
                self._arm_expiry(entry)
            await self._notify()

    async def load(self, spec: ModelSpec, keep_alive: float | None = None) -> Loaded:
        """Load ``spec`` (if needed) and leave it warm for ``keep_alive``."""
        async with self.acquire(spec, keep_alive=keep_alive):
            pass
        return self.loaded[spec.name]

    async def unload(self, name: str) -> bool:
        """Unload ``name`` once its in-flight requests finish. False if it was not loaded."""
        entry = self.loaded.get(name)
        if entry is None:
            return False
        await self._unload(entry, reason="requested")
        return True

    async def close(self) -> None:
        self._closed = True
        for entry in list(self.loaded.values()):
            await self._unload(entry, reason="shutdown")
        self._loader.shutdown(wait=True)

    def ps(self) -> list[dict[str, Any]]:
        now = self.clock()
        rows = []
        for entry in sorted(self.loaded.values(), key=lambda e: e.loaded_at):
            expires_in = None if entry.expires_at is None else max(0.0, entry.expires_at - now)
            rows.append(
                {
                    "name": entry.spec.name,
                    "kind": entry.spec.kind,
                    "engine": entry.spec.engine,
                    "memory_bytes": entry.memory_estimate,
                    "rss_delta_bytes": entry.memory_measured,
                    "parallel": len(entry.slots),
                    "in_flight": entry.in_flight,
                    "queued": entry.waiting,
                    "requests_served": entry.requests_served,
                    "keep_alive_s": None if math.isinf(entry.keep_alive) else entry.keep_alive,
                    "expires_in_s": expires_in,
                    "idle_s": 0.0 if entry.in_flight else now - entry.last_used,
                    "load_seconds": entry.load_seconds,
                    "details": entry.extra,
                }
            )
        return rows

    def memory_used(self) -> int:
        return sum(e.memory for e in self.loaded.values())

    # ---------------------------------------------------------------- private
    async def _take_slot(self, spec: ModelSpec) -> tuple[Loaded, Slot]:
        while True:
            entry = self.loaded.get(spec.name)
            if entry is not None and not entry.unloading:
                entry.waiting += 1
                self._disarm_expiry(entry)
                try:
                    slot = await entry.free.get()
                finally:
                    entry.waiting -= 1
                if entry.unloading:  # unloaded while we waited: give it back and start over
                    entry.free.put_nowait(slot)
                    continue
                entry.in_flight += 1
                return entry, slot
            async with self._load_lock:
                if spec.name in self.loaded:
                    continue
                await self._load(spec)

    async def _load(self, spec: ModelSpec) -> Loaded:
        engine = self.engines.get(spec.engine)
        if engine is None:
            raise ModelLoadFailed(
                f"no engine {spec.engine!r} for model {spec.name}", hint="`tiqo plugins` lists engines"
            )
        options = self.options_for(spec)
        parallel = max(1, int(options.get("num_parallel", 1)))
        loop = asyncio.get_running_loop()
        estimate = await loop.run_in_executor(self._loader, engine.estimate_memory, spec, options) * parallel
        await self._make_room(spec, estimate)
        self.on_event("model.loading", {"model": spec.name})
        try:
            spec = await loop.run_in_executor(self._loader, self.prepare, spec)
        except Exception as exc:
            log.exception("preparing %s failed", spec.name)
            raise ModelLoadFailed(f"could not prepare {spec.name}: {exc}") from exc
        started = time.perf_counter()
        rss_before = await loop.run_in_executor(self._loader, _rss)
        slots = await self._open_slots(engine, spec, options, parallel)
        rss_after = await loop.run_in_executor(self._loader, _rss)
        now = self.clock()
        keep_alive = options.get("keep_alive")
        free: asyncio.Queue[Slot] = asyncio.Queue()
        for slot in slots:
            free.put_nowait(slot)
        first = slots[0].runner
        entry = Loaded(
            spec=spec,
            slots=slots,
            free=free,
            keep_alive=self.default_keep_alive if keep_alive is None else float(keep_alive),
            memory_estimate=estimate,
            memory_measured=max(0, rss_after - rss_before),
            loaded_at=now,
            last_used=now,
            load_seconds=time.perf_counter() - started,
            extra=dict(first.details) if isinstance(first, Described) else {},
        )
        self.loaded[spec.name] = entry
        log.info(
            "loaded %s in %.2fs (estimate %s, rss +%s)",
            spec.name,
            entry.load_seconds,
            format_size(estimate),
            format_size(entry.memory_measured),
        )
        self.on_event("model.loaded", {"model": spec.name, "seconds": entry.load_seconds})
        return entry

    async def _open_slots(self, engine: Engine, spec: ModelSpec, options: dict[str, Any], parallel: int) -> list[Slot]:
        """``parallel`` runners of ``spec``, each with its own thread; none left open when one fails to load."""
        loop = asyncio.get_running_loop()
        slots: list[Slot] = []
        try:
            for i in range(parallel):
                runner = await loop.run_in_executor(self._loader, engine.load, spec, options)
                thread = ThreadPoolExecutor(1, thread_name_prefix=f"tiqo-{spec.name}-{i}")
                slots.append(Slot(runner, thread, runner if isinstance(runner, Fragile) else None))
        except BaseException as exc:
            for slot in slots:
                await self._close_slot(slot)
            if isinstance(exc, TiqoError):
                raise
            if isinstance(exc, Exception):
                log.exception("loading %s failed", spec.name)
                raise ModelLoadFailed(
                    f"could not load {spec.name}: {exc}",
                    hint="check the file with `tiqo models list`; details in `tiqo daemon logs`",
                ) from exc
            raise
        return slots

    async def _make_room(self, spec: ModelSpec, need: int) -> None:
        while True:
            count_ok = self.max_loaded_models <= 0 or len(self.loaded) < self.max_loaded_models
            if count_ok and self.memory_used() + need <= self.memory_budget:
                return
            if not self.loaded:
                raise ModelLoadFailed(
                    f"{spec.name} needs about {format_size(need)} but the memory budget is "
                    f"{format_size(self.memory_budget)}",
                    code="insufficient_memory",
                    hint="raise it with `tiqo config set scheduler.memory_budget 16GiB`, or use a smaller model",
                )
            idle = sorted(
                (e for e in self.loaded.values() if e.in_flight == 0 and e.waiting == 0), key=lambda e: e.last_used
            )
            if idle:
                await self._unload(idle[0], reason=f"evicted for {spec.name}")
                continue
            async with self._changed:  # every loaded model is busy: wait for a release
                await self._changed.wait()

    async def _unload(self, entry: Loaded, reason: str) -> None:
        if entry.unloading:
            return
        entry.unloading = True
        self._disarm_expiry(entry)
        # Take every slot back: this waits for in-flight requests on this model to finish.
        for _ in entry.slots:
            await entry.free.get()
        if self.loaded.get(entry.spec.name) is entry:
            del self.loaded[entry.spec.name]
        loop = asyncio.get_running_loop()
        rss_before = await loop.run_in_executor(self._loader, _rss)
        for slot in entry.slots:
            await self._close_slot(slot)
        for slot in entry.slots:  # requests still waiting on this entry wake, see it unloading and start over
            entry.free.put_nowait(slot)
        entry.slots.clear()
        rss_after = await loop.run_in_executor(self._loader, _rss)
        log.info("unloaded %s (%s); rss -%s", entry.spec.name, reason, format_size(max(0, rss_before - rss_after)))
        self.on_event("model.unloaded", {"model": entry.spec.name, "reason": reason})
        await self._notify()

    async def _close_slot(self, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(slot.executor, slot.runner.close)
        slot.executor.shutdown(wait=True)
        await loop.run_in_executor(self._loader, _trim_heap)

    def _arm_expiry(self, entry: Loaded) -> None:
        self._disarm_expiry(entry)
        if entry.unloading or math.isinf(entry.keep_alive):
            return
        loop = asyncio.get_running_loop()
        entry.expires_at = self.clock() + entry.keep_alive
        entry.timer = loop.call_later(max(0.0, entry.keep_alive), self._expire, entry)

    def _disarm_expiry(self, entry: Loaded) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        entry.timer = None
        entry.expires_at = None

    def _expire(self, entry: Loaded) -> None:
        entry.timer = None
        if entry.in_flight == 0 and entry.waiting == 0 and not entry.unloading:
            task = asyncio.get_running_loop().create_task(self._unload(entry, reason="keep-alive expired"))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _retry_after(self) -> float:
        return 2.0
