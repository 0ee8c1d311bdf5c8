"""Embeddings: ``/v1/embeddings`` through the same policy as text (local model first, external OpenAI-compatible
``/embeddings`` as configured fallbacks), and ``local()`` for the daemon's own users (the vector store)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from tiqo.daemon.engines.embed import Embedded
from tiqo.sdk.engine import ModelSpec, StopFlag

log = logging.getLogger("tiqo.embeddings")


class Embeddings:
    def __init__(self, gateway: Any, daemon: Any) -> None:
        self.gateway = gateway  # tiqo.daemon.gateway.Gateway
        self.daemon = daemon  # tiqo.daemon.service.Daemon
        self.registry = gateway.registry

    def spec(self, model: str | None = None) -> ModelSpec:
        """The local embedding model ``model`` (default: embed.default_model); 400/404 when it is not one."""
        spec: ModelSpec = self.registry.resolve(model, "embed")
        return spec

    async def local(self, texts: Sequence[str], model: str | None = None) -> tuple[ModelSpec, Embedded]:
        """Embed ``texts`` with a local model, in its runner slot (loaded on demand, kept warm like any model).
        Vectors are float32, unit length: cosine similarity is their dot product."""
        spec = self.spec(model)
        items = list(texts)

        def call(runner: Any, stop: StopFlag) -> Iterator[Embedded]:
            yield runner.embed(items, stop)

        results = [r async for r in self.daemon.generate(spec, None, call)]
        return spec, results[0]
