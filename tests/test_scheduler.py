"""The scheduler's semantics (Ollama's): keep-alive, one load at a time, LRU eviction, parallelism, bounded queue."""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest

from tests.fakes import FakeEngine, spec
from tiqo.core.errors import Busy, ModelLoadFailed
from tiqo.daemon.runtime.scheduler import Scheduler
from tiqo.daemon.runtime.streaming import iterate_in_thread
from tiqo.sdk.engine import GenerationParams, StopFlag


def make(engine: FakeEngine, **kw: Any) -> Scheduler:
    kw.setdefault("memory_budget", 1000)
    return Scheduler({"fake": engine}, **kw)


async def use(sched: Scheduler, name: str, keep_alive: float | None = None, text: str = "a b c", **opts: Any) -> str:
    out = []
    stop = StopFlag()
    async with sched.acquire(spec(name, **opts), keep_alive) as slot:
        async for piece in iterate_in_thread(
            slot.executor, lambda: slot.runner.chat([{"role": "user", "content": text}], GenerationParams(), stop), stop
        ):
            out.append(piece.text)
    return "".join(out)


async def until(predicate: Any, timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return bool(predicate())


def test_loads_once_and_keeps_model_warm() -> None:
    async def main() -> None:
        engine = FakeEngine()
        sched = make(engine)
        assert await use(sched, "a") == "a b c "
        assert await use(sched, "a") == "a b c "
        assert engine.loads == ["a"]
        row = sched.ps()[0]
        assert row["name"] == "a" and row["requests_served"] == 2 and row["in_flight"] == 0
        assert row["expires_in_s"] == pytest.approx(300, abs=5)
        await sched.close()
        assert engine.unloads == ["a"]

    asyncio.run(main())


def test_keep_alive_zero_unloads_when_idle_and_negative_never_expires() -> None:
    async def main() -> None:
        engine = FakeEngine()
        sched = make(engine)
        await use(sched, "a", keep_alive=0)
        assert await until(lambda: "a" not in sched.loaded)
        assert engine.unloads == ["a"]
        await use(sched, "b", keep_alive=math.inf)
        assert sched.ps()[0]["keep_alive_s"] is None and sched.ps()[0]["expires_in_s"] is None
        await use(sched, "c", keep_alive=0.05)
        assert await until(lambda: "c" not in sched.loaded)
        assert "b" in sched.loaded
        await sched.close()

    asyncio.run(main())


def test_per_model_keep_alive_option_is_the_default() -> None:
    async def main() -> None:
        engine = FakeEngine()
        sched = make(engine, default_keep_alive=300)
        await use(sched, "a", keep_alive_opt=None)
        s = spec("b", keep_alive=0.0)
        async with sched.acquire(s):
            pass
        assert await until(lambda: "b" not in sched.loaded)
        assert "a" in sched.loaded
        await sched.close()

    asyncio.run(main())


def test_only_one_load_at_a_time() -> None:
    async def main() -> None:
        engine = FakeEngine(load_delay=0.05)
        sched = make(engine)
        await asyncio.gather(*(use(sched, name) for name in "abc"), use(sched, "a"))
        assert engine.max_concurrent_loads == 1
        assert sorted(engine.loads) == ["a", "b", "c"]
        await sched.close()

    asyncio.run(main())


def test_memory_budget_evicts_least_recently_used_idle_model() -> None:
    async def main() -> None:
        engine = FakeEngine(memory={"a": 400, "b": 400, "c": 400})
        sched = make(engine, memory_budget=1000)
        await use(sched, "a")
        await use(sched, "b")
        await use(sched, "a")  # b is now the least recently used
        await use(sched, "c")
        assert set(sched.loaded) == {"a", "c"}
        assert engine.unloads == ["b"]
        assert sched.memory_used() == 800
        await sched.close()

    asyncio.run(main())


def test_max_loaded_models_evicts_too() -> None:
    async def main() -> None:
        engine = FakeEngine()
        sched = make(engine, max_loaded_models=2)
        for name in "abc":
            await use(sched, name)
        assert set(sched.loaded) == {"b", "c"}
        await sched.close()

    asyncio.run(main())


def test_busy_models_are_not_evicted_the_load_waits() -> None:
    async def main() -> None:
        engine = FakeEngine(memory={"a": 600, "b": 600})
        engine.gates["a"] = threading.Event()
        sched = make(engine, memory_budget=1000)
        first = asyncio.ensure_future(use(sched, "a"))
        assert await until(lambda: "a" in engine.calls)
        second = asyncio.ensure_future(use(sched, "b"))
        await asyncio.sleep(0.1)
        assert not second.done() and engine.unloads == []  # a is busy: b waits instead of evicting it
        engine.gates["a"].set()
        assert await first == "a b c "
        assert await second == "a b c "
        assert engine.unloads == ["a"]
        await sched.close()

    asyncio.run(main())


def test_model_bigger_than_budget_is_a_clear_error() -> None:
    async def main() -> None:
        engine = FakeEngine(memory={"huge": 5000})
        sched = make(engine, memory_budget=1000)
        with pytest.raises(ModelLoadFailed) as info:
            await use(sched, "huge")
        assert info.value.code == "insufficient_memory" and "memory_budget" in (info.value.hint or "")
        assert engine.loads == []

    asyncio.run(main())


def test_failed_load_reports_and_leaves_nothing_loaded() -> None:
    async def main() -> None:
        engine = FakeEngine(fail_load={"bad"})
        sched = make(engine)
        with pytest.raises(ModelLoadFailed, match="weights are corrupt"):
            await use(sched, "bad")
        assert sched.loaded == {} and sched.pending == 0
        assert await use(sched, "good") == "a b c "

    asyncio.run(main())


def test_one_runner_is_never_entered_twice() -> None:
    async def main() -> None:
        engine = FakeEngine(token_delay=0.002)
        sched = make(engine)
        results = await asyncio.gather(*(use(sched, "a", text="x y z w") for _ in range(12)))
        assert results == ["x y z w "] * 12
        assert not engine.reentered
        await sched.close()

    asyncio.run(main())


def test_num_parallel_serves_that_many_at_once() -> None:
    async def main() -> None:
        engine = FakeEngine()
        gate = engine.gates["a"] = threading.Event()
        sched = make(engine)
        tasks = [asyncio.ensure_future(use(sched, "a", num_parallel=2)) for _ in range(3)]
        assert await until(lambda: len(engine.calls) == 2)
        await asyncio.sleep(0.05)
        assert len(engine.calls) == 2  # the third waits for a free slot
        assert sched.ps()[0]["in_flight"] == 2 and sched.ps()[0]["queued"] == 1
        gate.set()
        await asyncio.gather(*tasks)
        assert len(engine.calls) == 3 and engine.loads == ["a", "a"] and not engine.reentered
        await sched.close()

    asyncio.run(main())


@pytest.mark.parametrize("preloaded", [True, False])
def test_full_queue_answers_busy_with_retry_after(preloaded: bool) -> None:
    async def main() -> None:
        engine = FakeEngine()
        sched = make(engine, max_queue=2)
        if preloaded:
            await use(sched, "a")
        else:
            engine.load_delay = 0.3
        gate = engine.gates["a"] = threading.Event()
        running = asyncio.ensure_future(use(sched, "a"))
        if preloaded:
            assert await until(lambda: sched.ps() and sched.ps()[0]["in_flight"] == 1)
        waiting = [asyncio.ensure_future(use(sched, "a")) for _ in range(2 if preloaded else 1)]
        assert await until(lambda: sched.pending == 2)
        with pytest.raises(Busy) as info:
            await use(sched, "a")
        assert info.value.status == 503 and info.value.headers()["Retry-After"].isdigit()
        gate.set()
        await asyncio.gather(running, *waiting)
        assert sched.pending == 0
        await sched.close()

    asyncio.run(main())


def test_stop_flag_stops_generation_and_frees_the_slot() -> None:
    async def main() -> None:
        engine = FakeEngine(token_delay=0.01)
        sched = make(engine)
        stop = StopFlag()
        async with sched.acquire(spec("a")) as slot:
            gen = iterate_in_thread(
                slot.executor,
                lambda: slot.runner.chat([{"role": "user", "content": "w " * 10_000}], GenerationParams(), stop),
                stop,
            )
            got = [await anext(gen) for _ in range(3)]
            await gen.aclose()  # what a client disconnect does
        assert len(got) == 3 and stop.is_set()
        assert engine.stopped == 1
        assert sched.ps()[0]["in_flight"] == 0
        await sched.close()

    asyncio.run(main())


def test_unload_waits_for_in_flight_requests() -> None:
    async def main() -> None:
        engine = FakeEngine()
        gate = engine.gates["a"] = threading.Event()
        sched = make(engine)
        running = asyncio.ensure_future(use(sched, "a"))
        assert await until(lambda: "a" in engine.calls)
        unloading = asyncio.ensure_future(sched.unload("a"))
        await asyncio.sleep(0.05)
        assert not unloading.done() and engine.unloads == []
        gate.set()
        assert await running == "a b c "
        assert await unloading is True
        assert engine.unloads == ["a"] and "a" not in sched.loaded
        assert await sched.unload("a") is False

    asyncio.run(main())
