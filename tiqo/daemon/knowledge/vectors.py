"""The vector store: collections of chunks and vectors in LanceDB (embedded, under <state dir>/vectors/), their
owners and sharing in the daemon's SQLite store.

``VectorStore`` is what routes and RAG call; it composes the parts: ``Catalog`` (owners, sharing, dimensions: SQL),
``Tables`` (LanceDB connections and what is known of each table), ``AnnIndexer`` (background index builds), the pure
ingest planning of ``ingest`` and the row shapes of ``rows``. LanceDB calls block, so they run in worker threads;
writes to one collection are serialised by a lock. Scores are cosine similarity (higher is better). A collection that
reaches ``vectors.index_threshold`` rows gets an ANN index built in the background; until it exists, search is exact
(flat).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tiqo.core.errors import BadRequest, Conflict
from tiqo.core.settings import Settings
from tiqo.daemon.knowledge.ann_index import AnnIndexer
from tiqo.daemon.knowledge.catalog import NAME, Catalog, Collection, digest
from tiqo.daemon.knowledge.ingest import Plan, Stored, changes, check_chunking, chunk_rows, plan, unembedded
from tiqo.daemon.knowledge.rows import any_of, delete_condition, record
from tiqo.daemon.knowledge.tables import Tables
from tiqo.daemon.knowledge.vector_search import FILTER_HINT, search, valid_filter
from tiqo.daemon.state.store import Store
from tiqo.sdk.engine import ModelSpec

__all__ = ["EMBED_BATCH", "MAX_TOP_K", "Collection", "Embedder", "VectorStore"]

MAX_TOP_K = 1000
EMBED_BATCH = 256  # texts per embedding call: the model slot is released between calls, so others get a turn


class EmbeddedTexts(Protocol):
    @property
    def vectors(self) -> Any: ...  # np.ndarray float32 (n, dim)


class Embedder(Protocol):
    """The local embedding models (the embeddings service), as the store uses them."""

    def spec(self, model: str | None = None) -> ModelSpec: ...

    async def local(self, texts: Sequence[str], model: str | None = None) -> tuple[ModelSpec, EmbeddedTexts]: ...


class VectorStore:
    def __init__(self, root: Path, store: Store, embeddings: Embedder, settings: Settings) -> None:
        self.root = root
        self.embeddings = embeddings
        self.settings = settings
        self.catalog = Catalog(store)
        self.tables = Tables(root)
        self.indexer = AnnIndexer(self.tables, settings)

    def get(self, user: str, name: str) -> Collection:
        return self.catalog.get(user, name)

    def writable(self, user: str, name: str) -> Collection:
        return self.catalog.writable(user, name)

    async def list_collections(self, user: str) -> list[dict[str, Any]]:
        return [await self.describe(c) for c in self.catalog.visible(user)]

    async def describe(self, c: Collection) -> dict[str, Any]:
        return c.as_dict(*await asyncio.to_thread(self.tables.stats, c))

    async def create(
        self, user: str, name: str, model: str | None, shared: bool, dimension: int | None
    ) -> dict[str, Any]:
        if not NAME.match(name):
            raise BadRequest(
                f"bad collection name {name!r}",
                param="name",
                hint="use letters, digits, '-', '_' or '.' (at most 64, starting with a letter or digit)",
            )
        if dimension is not None and not 0 < dimension <= 16384:
            raise BadRequest(
                "dimension must be between 1 and 16384", param="dimension", hint="give the length of your vectors"
            )
        if model is not None or dimension is None:
            model = self.embeddings.spec(model).name  # 400/404 for a model that is not a local embedding model
        if self.catalog.exists(user, name):
            raise Conflict(
                f"collection {name!r} already exists",
                param="name",
                hint=f"add to it with `tiqo vec add {name} FILE`, or remove it first with `tiqo vec rm {name}`",
            )
        c = Collection(user, name, "c_" + digest(user, name)[:24], model, dimension, shared, time.time())
        await asyncio.to_thread(self.tables.drop, c.tbl)  # leftovers of a collection removed by a crash
        self.catalog.add(c)  # the shared-name check and the insert, with no await between: two cannot both pass
        return c.as_dict(0, False)

    async def remove(self, user: str, name: str) -> dict[str, Any]:
        c = self.writable(user, name)
        async with self.tables.lock(c):
            await self.indexer.forget(c)
            await asyncio.to_thread(self.tables.drop, c.tbl)
            self.catalog.delete(c)
        return {"name": name, "deleted": True}

    # ------------------------------------------------------------------ writes
    async def _embed(self, c: Collection, texts: list[str]) -> Any:
        if c.model is None:
            raise BadRequest(
                f"collection {c.name!r} has no embedding model: it takes raw vectors only",
                hint='send {"vectors": [{"id", "values"}]} to upsert and {"vector": [...]} to query',
            )
        import numpy as np

        parts = []
        for start in range(0, len(texts), EMBED_BATCH):  # never one call with every text of a large request
            _, embedded = await self.embeddings.local(texts[start : start + EMBED_BATCH], c.model)
            parts.append(embedded.vectors)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def upsert_vectors(self, c: Collection, items: list[dict[str, Any]]) -> dict[str, Any]:
        rows = []
        for i, item in enumerate(items):
            values = item.get("values")
            if not isinstance(values, list) or not values:
                raise BadRequest(
                    f"vectors[{i}].values must be a non-empty list of numbers",
                    param="values",
                    hint='{"id": "a", "values": [0.1, 0.2, …]}',
                )
            self.catalog.set_dimension(c, len(values))
            meta = dict(item.get("metadata") or {})
            text, source = str(meta.pop("text", "")), str(meta.pop("source", ""))
            rows.append(record(str(item["id"]), text, source, 0, "", meta, values))
        return await self._write(c, rows)

    async def upsert_documents(self, c: Collection, docs: list[dict[str, Any]]) -> dict[str, Any]:
        for i, doc in enumerate(docs):
            if not str(doc.get("text") or "").strip():
                raise BadRequest(f"documents[{i}].text is empty", param="text", hint="send some text to embed")
        vectors = await self._embed(c, [str(d["text"]) for d in docs])
        self.catalog.set_dimension(c, int(vectors.shape[1]))
        rows = []
        for doc, vector in zip(docs, vectors, strict=True):
            meta = dict(doc.get("metadata") or {})
            source = str(meta.pop("source", ""))
            ident = str(doc.get("id") or digest(source, doc["text"]))
            rows.append(record(ident, doc["text"], source, 0, "", meta, vector))
        return await self._write(c, rows)

    async def _write(self, c: Collection, rows: list[dict[str, Any]]) -> dict[str, Any]:
        async with self.tables.lock(c):
            total = await asyncio.to_thread(self.tables.merge, c, rows)
        self.indexer.after_write(c, total)
        return {"upserted": len(rows), "rows": total}

    async def ingest(
        self, c: Collection, docs: list[dict[str, Any]], size: int, overlap: int, unit: str
    ) -> dict[str, Any]:
        """Chunk, embed and store documents keyed by source: an unchanged document is skipped; a changed one
        replaces every chunk of its source (vectors of chunks that did not change are reused)."""
        check_chunking(size, overlap, unit)
        limit = int(self.settings["vectors.max_chunks_per_request"])
        plans = await asyncio.to_thread(plan, docs, size, overlap, unit, limit)  # CPU work: off the loop
        async with self.tables.lock(c):
            stored, hashes = await self._stored(c, plans)
            todo, counts = changes(plans, hashes)
            fresh = await self._embed_new(c, todo, stored)
            rows = chunk_rows(todo, fresh, stored)
            counts["chunks"], counts["embedded"] = len(rows), len(fresh)
            total = 0
            if rows:
                replaced = [p.source for p in todo if p.source in hashes]
                stale = any_of("source", replaced) if replaced else None
                total = await asyncio.to_thread(self.tables.merge, c, rows, stale)
        if rows:
            self.indexer.after_write(c, total)
        return counts

    async def _stored(self, c: Collection, plans: list[Plan]) -> tuple[Stored, dict[str, set[str]]]:
        """The stored rows of the plans' sources, by id, and the document hashes each of those sources has."""
        stored: Stored = {}
        hashes: dict[str, set[str]] = {}
        table = await asyncio.to_thread(self.tables.table, c)
        if table is not None and plans:
            where = any_of("source", [p.source for p in plans])
            for row in await asyncio.to_thread(self.tables.scan, table, where, ["id", "source", "doc_hash", "vector"]):
                stored[row["id"]] = row
                hashes.setdefault(row["source"], set()).add(row["doc_hash"])
        return stored, hashes

    async def _embed_new(self, c: Collection, todo: list[Plan], stored: Stored) -> dict[str, Any]:
        """Vectors of the chunks that have none stored, by id."""
        new_texts = unembedded(todo, stored)
        if not new_texts:
            return {}
        vectors = await self._embed(c, [t for _, t in new_texts])
        self.catalog.set_dimension(c, int(vectors.shape[1]))
        return {ident: v for (ident, _), v in zip(new_texts, vectors, strict=True)}

    async def delete(
        self, c: Collection, ids: list[str] | None, where: str | None, source: str | None
    ) -> dict[str, Any]:
        condition = delete_condition(ids, where, source)
        async with self.tables.lock(c):
            table = await asyncio.to_thread(self.tables.table, c)
            if table is None:
                return {"deleted": 0, "rows": 0}
            try:
                deleted, rows = await asyncio.to_thread(self.tables.delete, table, condition)
            except (ValueError, RuntimeError) as exc:
                raise BadRequest(f"bad filter: {exc}", param="filter", hint=FILTER_HINT) from None
        return {"deleted": deleted, "rows": rows}

    # ------------------------------------------------------------------ search
    async def query(
        self,
        c: Collection,
        *,
        vector: list[float] | None,
        text: str | None,
        top_k: int,
        where: str | None,
        include_metadata: bool,
        hybrid: bool,
        exact: bool = False,
    ) -> dict[str, Any]:
        _check_query(vector, text, top_k, hybrid)
        if vector is None:
            vector = [float(v) for v in (await self._embed(c, [str(text)]))[0]]
        if c.dimension is not None and len(vector) != c.dimension:
            self.catalog.set_dimension(c, len(vector))  # raises the 400 that names both sizes
        matches = await self._search(c, vector, text, top_k, where, hybrid, exact)
        for m in matches:
            meta = json.loads(m.pop("meta") or "{}")
            source, chunk = m.pop("source"), m.pop("chunk")
            if include_metadata:
                m["metadata"] = {**meta, **({"source": source, "chunk": chunk} if source else {})}
        return {"matches": matches, "namespace": c.name}

    async def _search(
        self, c: Collection, vector: list[float], text: str | None, k: int, where: str | None, *flags: bool
    ) -> list[dict[str, Any]]:
        """One query on the event loop through LanceDB's async API (no worker-thread hop)."""
        table = await self.tables.reader(c)
        if table is None:
            return []
        if flags[0]:  # hybrid: the full-text index must cover the table's current version
            await asyncio.to_thread(self.tables.ensure_fts, c)
        try:
            return await search(table, vector, text, k, where, *flags, indexed=bool(self.tables.indexed.get(c.tbl)))
        except (ValueError, RuntimeError) as exc:
            if where and not await asyncio.to_thread(valid_filter, self.tables.table(c), where):
                raise BadRequest(f"bad filter {where!r}: {exc}", param="filter", hint=FILTER_HINT) from None
            raise

    async def wait_for_index(self, c: Collection) -> None:
        await self.indexer.wait(c)


def _check_query(vector: list[float] | None, text: str | None, top_k: int, hybrid: bool) -> None:
    if not 0 < top_k <= MAX_TOP_K:
        raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}", param="top_k", hint="ask for fewer matches (-k)")
    if (vector is None) == (text is None):
        raise BadRequest("send either a vector or a text to search for", hint='{"text": "..."} or {"vector": [...]}')
    if text is not None and not text.strip():
        raise BadRequest("the query text is empty", param="text", hint="search for some words")
    if hybrid and text is None:
        raise BadRequest("hybrid search needs a text query", param="hybrid", hint='send {"text": "..."}')
