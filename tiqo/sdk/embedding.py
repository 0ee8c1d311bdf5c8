"""What embedding engines take and give (ONNX MiniLM is the built-in one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tiqo.sdk.engine import Runner, StopFlag


@dataclass(frozen=True)
class Embedded:
    vectors: Any  # np.ndarray float32 (n, dim), unit length
    tokens: int  # input tokens counted (after truncation)
    truncated: int  # how many inputs were longer than the window


class EmbeddingRunner(Runner, Protocol):
    """A sentence-embedding model: one unit vector per text, in the order given."""

    def embed(self, texts: Sequence[str], stop: StopFlag | None = None) -> Embedded: ...
