"""The semantic cache (``cache.semantic = true``): a chat request whose last user message means the same as a cached
one's (cosine similarity of their embeddings ≥ ``cache.semantic_threshold``), for the same answering model, class
scope, earlier messages and parameters, is answered from the exact cache's entry.

Entries live in the exact cache's SQLite table (a ``sem_group`` and the question's float32 vector beside the answer),
so TTL, ``tiqo cache clear`` and scopes apply to both alike. A group holds the entries whose questions may be
compared at all; it is scanned with one matrix product (a thousand 384-dimensional entries take well under a
millisecond), which needs no index to keep in step with expiry. The question is embedded by the local embedding model
only: restricted text never leaves the machine for the cache either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tiqo.core.errors import TiqoError
from tiqo.policy import cache as cachepol

log = logging.getLogger("tiqo.cache")


@dataclass
class Probe:
    """A request's question, embedded, and what else an entry must share with it."""

    context: str
    embed_model: str
    vector: Any  # numpy float32, unit length (numpy comes with the embed extra, so it is imported late)

    def group(self, model: str, scope: str) -> str:
        return cachepol.semantic_group(self.context, model, scope, self.embed_model)


@dataclass
class Found:
    key: str
    similarity: float


class SemanticCache:
    def __init__(self, store: Any, embeddings: Any, settings: Any, clock: Callable[[], float]) -> None:
        self.store = store
        self.embeddings = embeddings  # tiqo.daemon.embeddings.Embeddings
        self.settings = settings
        self.clock = clock
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.settings["cache.semantic"])

    async def probe(self, wire: Mapping[str, Any]) -> Probe | None:
        """Embed the request's question; None when it has none, or the embedding model cannot run (logged once: the
        cache is an optimisation and never fails an answer)."""
        parts = cachepol.semantic_parts(wire)
        if parts is None:
            return None
        context, question = parts
        try:
            spec, done = await self.embeddings.local([question])
        except TiqoError as exc:
            if not self._warned:
                log.warning("semantic cache off for now: %s (%s)", exc.message, exc.hint or "see `tiqo doctor`")
                self._warned = True
            return None
        self._warned = False
        import numpy as np

        return Probe(context, spec.name, np.asarray(done.vectors[0], dtype=np.float32))

    def lookup(self, probe: Probe, model: str, scope: str) -> Found | None:
        """The most similar live entry at or above the threshold, if any."""
        rows = self.store.cache_vectors(probe.group(model, scope), self.clock())
        if not rows:
            return None
        import numpy as np

        matrix = np.frombuffer(b"".join(vector for _, vector in rows), dtype=np.float32)
        if matrix.size != len(rows) * probe.vector.size:  # an entry from another dimension: not comparable
            return None
        scores = matrix.reshape(len(rows), -1) @ probe.vector
        best = int(np.argmax(scores))
        if float(scores[best]) < self.settings["cache.semantic_threshold"]:
            return None
        return Found(rows[best][0], float(scores[best]))

    @staticmethod
    def columns(probe: Probe | None, model: str, scope: str) -> dict[str, Any]:
        """The extra columns a cache entry gets so later questions can find it by meaning."""
        if probe is None:
            return {}
        return {"sem_group": probe.group(model, scope), "vector": probe.vector.tobytes()}
