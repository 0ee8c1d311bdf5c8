"""Fakes that record what happened: an engine whose runners detect re-entry and can be held at a gate."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiqo.sdk.engine import GenerationParams, ModelSpec, Piece, StopFlag


class FakeRunner:
    def __init__(self, engine: FakeEngine, spec: ModelSpec) -> None:
        self.engine, self.spec = engine, spec
        self.memory_bytes = 0
        self.busy = False
        self.closed = False

    def _run(self, text: str, stop: StopFlag) -> Iterator[Piece]:
        if self.busy:
            self.engine.reentered = True
        self.busy = True
        finished = False
        try:
            self.engine.calls.append(self.spec.name)
            gate = self.engine.gates.get(self.spec.name)
            if gate is not None:
                gate.wait(10)
            for word in text.split():
                if stop.is_set():
                    break
                time.sleep(self.engine.token_delay)
                yield Piece(word + " ")
            else:
                finished = True
                yield Piece("", finish_reason="stop", prompt_tokens=1, completion_tokens=len(text.split()))
        finally:
            if not finished:
                self.engine.stopped += 1  # closed or stopped before the end
            self.busy = False

    def chat(self, messages: list[dict[str, str]], params: GenerationParams, stop: StopFlag) -> Iterator[Piece]:
        return self._run(messages[-1]["content"], stop)

    def complete(self, prompt: str, params: GenerationParams, stop: StopFlag) -> Iterator[Piece]:
        return self._run(prompt, stop)

    def close(self) -> None:
        self.closed = True
        self.engine.unloads.append(self.spec.name)


@dataclass
class FakeEngine:
    name: str = "fake"
    kinds: tuple[str, ...] = ("llm",)
    memory: dict[str, int] = field(default_factory=dict)
    load_delay: float = 0.0
    token_delay: float = 0.0
    fail_load: set[str] = field(default_factory=set)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    concurrent_loads: int = 0
    max_concurrent_loads: int = 0
    reentered: bool = False
    stopped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def estimate_memory(self, spec: ModelSpec, options: dict[str, Any]) -> int:
        return self.memory.get(spec.name, 100)

    def load(self, spec: ModelSpec, options: dict[str, Any]) -> FakeRunner:
        with self._lock:
            self.concurrent_loads += 1
            self.max_concurrent_loads = max(self.max_concurrent_loads, self.concurrent_loads)
        try:
            time.sleep(self.load_delay)
            if spec.name in self.fail_load:
                raise RuntimeError("weights are corrupt")
            self.loads.append(spec.name)
            return FakeRunner(self, spec)
        finally:
            with self._lock:
                self.concurrent_loads -= 1


def spec(name: str, **options: Any) -> ModelSpec:
    return ModelSpec(
        name=name, kind="llm", engine="fake", path=Path("/dev/null"), source="test", size_bytes=1, options=options
    )
