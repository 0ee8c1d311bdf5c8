"""What a local engine implements. Engine and runner calls block; the daemon runs them in worker threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tiqo.protocol.openai import JsonFormat, ToolUse


@dataclass(frozen=True)
class ModelSpec:
    """A local model as the registry knows it."""

    name: str
    kind: str  # "llm" for now; "stt", "tts", "embed", "image" later
    engine: str  # name of the Engine that loads it
    path: Path | None  # None until materialised (see ``source``)
    source: str  # "bundled:<package>" or "local"
    size_bytes: int
    options: dict[str, Any] = field(default_factory=dict)  # per-model settings: n_ctx, keep_alive, num_parallel, ...
    description: str = ""
    capabilities: tuple[str, ...] = ("chat", "completion")


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    json_format: JsonFormat | None = None  # the answer must be this JSON (engines that cannot honour it refuse)
    tools: ToolUse | None = None  # functions the answer may (or must) call


@dataclass(frozen=True)
class Piece:
    """One step of a generation: text (possibly empty), and on the last piece the finish reason and usage."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI tool-call deltas (external providers)


class StopFlag(threading.Event):
    """Set by the daemon when the client went away; engines check it between tokens."""


@runtime_checkable
class Runner(Protocol):
    """A loaded model instance. Not shared between threads: the scheduler gives each call its own slot."""

    memory_bytes: int

    def chat(self, messages: list[dict[str, str]], params: GenerationParams, stop: StopFlag) -> Iterator[Piece]: ...

    def complete(self, prompt: str, params: GenerationParams, stop: StopFlag) -> Iterator[Piece]: ...

    def close(self) -> None: ...


@runtime_checkable
class Engine(Protocol):
    name: str
    kinds: tuple[str, ...]

    def estimate_memory(self, spec: ModelSpec, options: dict[str, Any]) -> int:
        """Bytes the model will need once loaded (weights plus context), used for the memory budget."""
        ...

    def load(self, spec: ModelSpec, options: dict[str, Any]) -> Runner: ...
