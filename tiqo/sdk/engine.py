"""What a local engine implements. Engine and runner calls block; the daemon runs them in worker threads.

An engine declares, besides loading models: the ``[models.NAME]`` keys that are its options and their defaults, what
a model of it can do, its memory estimate, and which files or folders are its own. The catalog asks it; it keeps no
table of engines of its own. A loaded model (a ``Runner``) offers one capability, each with its own protocol:
``ChatRunner`` here, ``TranscribeRunner`` and ``SpeechRunner`` in ``tiqo.sdk.speech``, ``EmbeddingRunner`` in
``tiqo.sdk.embedding``, ``ImageRunner`` in ``tiqo.sdk.imaging``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tiqo.protocol.openai import JsonFormat, ToolUse

if TYPE_CHECKING:
    from tiqo.core.settings import Settings

# Options every engine takes (the scheduler reads them): slots per model, and how long an idle model stays loaded.
SCHEDULING_OPTIONS = ("num_parallel", "keep_alive")


@dataclass(frozen=True)
class ModelSpec:
    """A local model as the registry knows it."""

    name: str
    kind: str  # "llm", "stt", "tts", "embed", "image", "video"
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


@dataclass(frozen=True)
class Recognised:
    """A file or folder an engine says is its own: what `tiqo models add` writes into ``[models.NAME]``."""

    path: Path  # absolute
    kind: str
    label: str  # what it is, for the log ("llama, 98 MB", "piper en_US")
    entry: dict[str, Any] = field(default_factory=dict)  # the engine's own keys (diffusers: task, pipeline)


# ------------------------------------------------------------------ runners
@runtime_checkable
class Runner(Protocol):
    """A loaded model instance: all the scheduler needs of one. Not shared between threads: the scheduler gives each
    call its own slot. What it can do is one of the capability protocols."""

    def close(self) -> None: ...


@runtime_checkable
class Described(Protocol):
    """A runner that says how it was loaded (device, threads, ...): ``tiqo ps`` shows it."""

    details: dict[str, Any]


@runtime_checkable
class Fragile(Protocol):
    """A runner whose worker can die (a process): it sets ``broken``, and the scheduler drops it after the call."""

    broken: bool


class ChatRunner(Runner, Protocol):
    """A language model: chat turns or a plain prompt in, pieces of text out."""

    def chat(self, messages: list[dict[str, str]], params: GenerationParams, stop: StopFlag) -> Iterator[Piece]: ...

    def complete(self, prompt: str, params: GenerationParams, stop: StopFlag) -> Iterator[Piece]: ...


# ------------------------------------------------------------------ engines
@runtime_checkable
class Engine(Protocol):
    name: str
    kinds: tuple[str, ...]
    options: tuple[str, ...]  # keys of [models.NAME] that are this engine's options (besides SCHEDULING_OPTIONS)
    recognise_order: int  # engines are asked in this order: precise checks low, catch-alls (any folder) high

    def default_options(self, settings: Settings) -> dict[str, Any]:
        """Options of its models before a model's own table overrides them (from the daemon's settings)."""
        ...

    def capabilities(self, kind: str, entry: Mapping[str, Any]) -> tuple[str, ...]:
        """What a model of ``kind`` with this ``[models.NAME]`` table can do (policy.routing's capability names)."""
        ...

    def recognise(self, path: Path, pipeline: str | None) -> Recognised | None:
        """``path`` as one of this engine's models, None when it is not; raises a clear 400 when it is but is broken."""
        ...

    def estimate_memory(self, spec: ModelSpec, options: dict[str, Any]) -> int:
        """Bytes the model will need once loaded (weights plus context), used for the memory budget."""
        ...

    def load(self, spec: ModelSpec, options: dict[str, Any]) -> Runner: ...


def engine_options(engine: Engine | None, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a ``[models.NAME]`` table for ``engine`` (the rest is the catalog's: path, kind, prices, …)."""
    keys = SCHEDULING_OPTIONS + (engine.options if engine is not None else ())
    return {k: entry[k] for k in keys if k in entry}
