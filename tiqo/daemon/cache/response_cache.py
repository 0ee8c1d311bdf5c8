"""The response cache: exact, and optionally semantic.

Exact: the canonical request plus the model that answered it (tiqo.policy.cache), in SQLite for ``cache.ttl``.

Scope: every entry belongs to one user and data class (``cache.scope = user``, the default), so no user is served, or
told of (x-tiqo-cache: hit), what another asked; ``cache.scope = all`` shares entries among the users of a data class,
restricted ones excepted.

Semantic (``cache.semantic = true``): a request whose last user message means the same as a cached one's (cosine
similarity of their embeddings ≥ ``cache.semantic_threshold``), for the same answering model, scope, earlier
messages and parameters, gets that entry's answer. Its question's float32 vector and a ``sem_group`` (the entries whose
questions may be compared at all) sit beside the answer in the same SQLite row, so TTL, ``tiqo cache clear`` and scopes
apply to both alike. A group's vectors are also held in memory (tiqo.daemon.cache.semantic_index), so a lookup is one
matrix product (bench/semantic_cache.py). Questions are embedded by the local embedding model
only: restricted text never leaves the machine for the cache either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tiqo.core.errors import TiqoError
from tiqo.core.settings import Settings
from tiqo.daemon.cache.tool_calls import merge_tool_calls
from tiqo.daemon.state.shared import CacheEntry, CacheStore
from tiqo.policy import cache as cachepol
from tiqo.policy.classify import Classification
from tiqo.sdk.engine import ModelSpec, Piece

if TYPE_CHECKING:
    from tiqo.daemon.cache.semantic_index import SemanticIndex

log = logging.getLogger("tiqo.cache")


class Vectors(Protocol):
    @property
    def vectors(self) -> Any: ...  # numpy float32 (n, dim), unit length


class QuestionEmbedder(Protocol):
    """What the semantic cache asks of the embeddings service (tiqo.daemon.services.embeddings.Embeddings): vectors
    from a local model only, so restricted text never leaves the machine for the cache either."""

    async def local(self, texts: Sequence[str], model: str | None = None) -> tuple[ModelSpec, Vectors]: ...


@dataclass
class Probe:
    """A request's question, embedded, and what else an entry must share with it."""

    context: str
    embed_model: str
    vector: Any  # numpy float32, unit length (numpy comes with the embed extra, so it is imported late)

    def group(self, model: str, scope: str) -> str:
        return cachepol.semantic_group(self.context, model, scope, self.embed_model)


@dataclass
class CacheUse:
    """A request that may be answered from and stored in the cache: its scope, and (semantic cache) its question,
    embedded once the exact lookup missed or for a refresh."""

    scope: str
    probe: Probe | None = None


@dataclass
class CacheHit:
    """A cached answer and how it was found, for the pipeline to record (what served the request) and replay."""

    model: str  # the model whose answer it is
    kind: str  # hit (exact) | semantic
    answer: dict[str, Any]  # text, tool_calls, finish_reason, prompt_tokens, completion_tokens, model
    similarity: float | None = None  # a semantic hit's cosine similarity to the cached question

    @property
    def prompt_tokens(self) -> int:
        return int(self.answer.get("prompt_tokens") or 0)

    @property
    def completion_tokens(self) -> int:
        return int(self.answer.get("completion_tokens") or 0)


class ResponseCache:
    def __init__(self, store: CacheStore, settings: Settings, clock: Callable[[], float]) -> None:
        self.store = store  # tiqo.daemon.state.store.Store, or the Redis cache in front of it
        self.settings = settings
        self.clock = clock
        self.embeddings: QuestionEmbedder | None = None  # the embeddings service, set by the root once it exists
        self._warned = False
        self._index: SemanticIndex | None = None  # made on the first semantic lookup (numpy: the embed extra)

    @property
    def index(self) -> SemanticIndex:
        if self._index is None:
            from tiqo.daemon.cache.semantic_index import SemanticIndex  # numpy: the embed extra

            self._index = SemanticIndex(self.store.cache_vectors)
        return self._index

    def clear(self, expired_only: bool = False) -> int:
        """Remove every entry (or the expired ones); how many went."""
        removed = int(self.store.cache_clear(expired_only=expired_only))
        if not expired_only and self._index is not None:
            self._index.clear()
        return removed

    async def use(
        self, wire: Mapping[str, Any], c: Classification, control: str, *, named_class: bool = False
    ) -> CacheUse | None:
        """How this request uses the cache: None when it does not (``x-tiqo-cache: off``, or ``cache.mode`` excludes
        it). With ``refresh`` (store, no lookup) the question is embedded here, for the entry it will write.

        Entries are the user's own unless ``cache.scope = all``; even then a request whose data class the caller named
        itself (``named_class``: x-tiqo-class) keeps to its user's entries, so no caller picks the shared scope it
        reads: shared scopes come from configuration (the user's class, the default) and the restricted patterns."""
        if control == "off" or not cachepol.cacheable(self.settings["cache.mode"], wire):
            return None
        shared = self.settings["cache.scope"] == "all" and not named_class
        use = CacheUse(cachepol.scope_for(c.data_class, c.user, shared=shared))
        if control == "refresh":
            use.probe = await self._probe(wire)
        return use

    async def lookup(self, wire: Mapping[str, Any], models: Sequence[str], use: CacheUse) -> CacheHit | None:
        """The cached answer for the first model that has one: the same request exactly, else (semantic cache) the
        same question in other words. The question is embedded only after the exact lookup missed (an exact hit costs
        no embedding); the miss keeps it for the entry its answer will write. A miss is counted once."""
        now = self.clock()
        for model in models:
            hit = self.store.cache_get(cachepol.cache_key(wire, model, use.scope), now)
            if hit is not None:
                return CacheHit(model, "hit", hit)
        use.probe = await self._probe(wire)
        for model in models:
            near = None if use.probe is None else self._nearest(use.probe, model, use.scope)
            hit = None if near is None else self.store.cache_get(near[0], now, "semantic_hits")
            if near is not None and hit is not None:
                return CacheHit(model, "semantic", hit, round(near[1], 4))
        self.store.cache_miss()
        return None

    def put(
        self, wire: Mapping[str, Any], model: str, use: CacheUse, text: str, tools: list[dict[str, Any]], last: Piece
    ) -> None:
        entry = {
            "text": text,
            "tool_calls": merge_tool_calls(tools) or None,
            "finish_reason": last.finish_reason,
            "prompt_tokens": last.prompt_tokens,
            "completion_tokens": last.completion_tokens,
            "model": model,
        }
        try:
            key, now, ttl = cachepol.cache_key(wire, model, use.scope), self.clock(), self.settings["cache.ttl"]
            if use.probe is None:
                self.store.cache_put(CacheEntry(key, use.scope, model, entry, ttl, now))
            else:
                group = use.probe.group(model, use.scope)
                self.store.cache_put(
                    CacheEntry(key, use.scope, model, entry, ttl, now, group, use.probe.vector.tobytes())
                )
                self.index.add(group, key, use.probe.vector, now + ttl)
        except Exception:  # the cache is an optimisation: never fail an answer because of it
            log.exception("cache write failed")

    # ------------------------------------------------------------ semantic
    async def _probe(self, wire: Mapping[str, Any]) -> Probe | None:
        """Embed the request's question; None when the semantic cache is off, the request has no question, or the
        embedding model cannot run (logged once: the cache never fails an answer)."""
        if not self.settings["cache.semantic"] or self.embeddings is None:
            return None
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

    def _nearest(self, probe: Probe, model: str, scope: str) -> tuple[str, float] | None:
        """(key, similarity) of the most similar live entry at or above the threshold, if any."""
        near: tuple[str, float] | None = self.index.nearest(probe.group(model, scope), probe.vector, self.clock())
        if near is None or near[1] < self.settings["cache.semantic_threshold"]:
            return None
        return near
