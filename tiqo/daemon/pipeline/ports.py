"""What the pipeline needs from the layers that use it: the root's local generation, as a protocol the root satisfies
(nothing here imports it: it sits above)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, Protocol, TypeVar

from tiqo.sdk.engine import ModelSpec, StopFlag

T = TypeVar("T")


class LocalCompute(Protocol):
    """Runs a blocking engine call on a warm model's slot and streams what it yields (``root.LocalGeneration``)."""

    def generate(
        self, spec: ModelSpec, keep_alive: float | None, call: Callable[[Any, StopFlag], Iterator[T]]
    ) -> AsyncGenerator[T, None]: ...
