"""The vector store: collections of chunks and vectors in LanceDB (embedded, under <state dir>/vectors/), their
owners and sharing in the daemon's SQLite store.

lancedb is imported on first use, never at start-up. Its calls block, so they run in worker threads; writes to one
collection are serialised by a lock. Scores are cosine similarity (higher is better). A collection that reaches
``vectors.index_threshold`` rows gets an ANN index built in the background; until it exists, search is exact (flat).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from tiqo.core.errors import BadRequest, Conflict, PayloadTooLarge
from tiqo.core.paths import ensure_private_dir
from tiqo.daemon.knowledge.catalog import NAME, Catalog, Collection, digest
from tiqo.daemon.knowledge.chunking import UNITS, TooManyChunks, check_params, chunk_text
from tiqo.daemon.knowledge.vector_search import (
    FILTER_HINT,
    build_index,
    ensure_fts,
    refresh_index,
    search,
    valid_filter,
)

log = logging.getLogger("tiqo.vectors")
MAX_TOP_K = 1000
EMBED_BATCH = 256  # texts per embedding call: the model slot is released between calls, so others get a turn


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def chunk_ids(source: str, chunks: list[str]) -> list[str]:
    """A chunk's key is a hash of its source and content (plus which repeat of that content it is)."""
    seen: dict[str, int] = {}
    out = []
    for chunk in chunks:
        n = seen.get(chunk, 0)
        seen[chunk] = n + 1
        out.append(digest(source, str(n), chunk))
    return out


class VectorStore:
    def __init__(self, root: Path, store: Any, embeddings: Any, settings: Any) -> None:
        self.root = root
        self.store = store  # tiqo.daemon.state.store.Store: the catalog table lives there
        self.embeddings = embeddings  # tiqo.daemon.services.embeddings.Embeddings
        self.settings = settings
        self._db: Any = None
        self._tables: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._indexed: dict[str, bool] = {}
        self._building: dict[str, asyncio.Task[None]] = {}
        self._fts_version: dict[str, int] = {}
        self._readers: dict[str, Any] = {}  # tbl -> AsyncTable, for queries
        self._async_db: Any = None
        self._covered: dict[str, int] = {}  # rows the ANN index held when it was built or last refreshed
        self.catalog = Catalog(store)

    def get(self, user: str, name: str) -> Collection:
        return self.catalog.get(user, name)

    def writable(self, user: str, name: str) -> Collection:
        return self.catalog.writable(user, name)

    async def list_collections(self, user: str) -> list[dict[str, Any]]:
        out = []
        for c in self.catalog.visible(user):
            out.append(c.as_dict(*await asyncio.to_thread(self._stats, c)))
        return out

    async def describe(self, c: Collection) -> dict[str, Any]:
        return c.as_dict(*await asyncio.to_thread(self._stats, c))

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
        await asyncio.to_thread(self._drop_table, c.tbl)  # leftovers of a collection removed by a crash
        self.catalog.add(c)  # the shared-name check and the insert, with no await between: two cannot both pass
        return c.as_dict(0, False)

    async def remove(self, user: str, name: str) -> dict[str, Any]:
        c = self.writable(user, name)
        async with self._lock(c):
            task = self._building.pop(c.tbl, None)
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            await asyncio.to_thread(self._drop_table, c.tbl)
            self.catalog.delete(c)
        return {"name": name, "deleted": True}

    # ------------------------------------------------------------------ LanceDB (worker threads)
    def _lock(self, c: Collection) -> asyncio.Lock:
        return self._locks.setdefault(c.tbl, asyncio.Lock())

    def _connect(self) -> Any:
        if self._db is None:
            import lancedb

            ensure_private_dir(self.root)
            self._db = lancedb.connect(str(self.root))
        return self._db

    def _table(self, c: Collection, create_dim: int | None = None) -> Any:
        table = self._tables.get(c.tbl)
        if table is not None:
            return table
        db = self._connect()
        try:
            table = db.open_table(c.tbl)
        except ValueError:  # not created yet: the first write creates it
            if create_dim is None:
                return None
            import pyarrow as pa

            schema = pa.schema(
                [
                    pa.field("id", pa.string()),
                    pa.field("text", pa.string()),
                    pa.field("source", pa.string()),
                    pa.field("chunk", pa.int32()),
                    pa.field("doc_hash", pa.string()),
                    pa.field("meta", pa.string()),
                    pa.field("vector", pa.list_(pa.float32(), create_dim)),
                ]
            )
            table = db.create_table(c.tbl, schema=schema)
        self._tables[c.tbl] = table
        if c.tbl not in self._indexed:
            vector_index = next((i.name for i in table.list_indices() if i.index_type != "FTS"), None)
            self._indexed[c.tbl] = vector_index is not None
            if vector_index is not None:
                stats = table.index_stats(vector_index)
                self._covered[c.tbl] = int(stats.num_indexed_rows) if stats is not None else 0
        return table

    def _drop_table(self, tbl: str) -> None:
        self._tables.pop(tbl, None)
        self._readers.pop(tbl, None)
        self._indexed.pop(tbl, None)
        self._covered.pop(tbl, None)
        self._fts_version.pop(tbl, None)
        db = self._connect()
        with contextlib.suppress(ValueError, FileNotFoundError):
            db.drop_table(tbl)

    def _stats(self, c: Collection) -> tuple[int, bool, int]:
        """Rows, whether an ANN index exists, and rows written since it was built or refreshed (an estimate: rows
        replaced in place count as neither)."""
        table = self._table(c)
        if table is None:
            return 0, False, 0
        rows, indexed = int(table.count_rows()), self._indexed.get(c.tbl, False)
        return rows, indexed, max(0, rows - self._covered.get(c.tbl, rows)) if indexed else 0

    def _scan(self, table: Any, where: str, columns: list[str]) -> list[dict[str, Any]]:
        limit = max(1, int(table.count_rows(where)))
        rows: list[dict[str, Any]] = table.search().where(where).select(columns).limit(limit).to_list()
        return rows

    def _merge(self, c: Collection, rows: list[dict[str, Any]], replace_where: str | None = None) -> int:
        table = self._table(c, c.dimension)
        op = table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        if replace_where is not None:
            op = op.when_not_matched_by_source_delete(replace_where)
        op.execute(rows)
        return int(table.count_rows())

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
            rows.append(self._row_for(str(item["id"]), text, source, 0, "", meta, values))
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
            rows.append(self._row_for(ident, doc["text"], source, 0, "", meta, vector))
        return await self._write(c, rows)

    def _row_for(
        self, ident: str, text: str, source: str, chunk: int, doc_hash: str, meta: dict[str, Any], vector: Any
    ) -> dict[str, Any]:
        try:
            meta_json = json.dumps(meta, sort_keys=True, ensure_ascii=False)
            values = [float(v) for v in vector]
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"record {ident!r}: {exc}", hint="metadata is a JSON object; values are numbers") from None
        return {
            "id": ident,
            "text": text,
            "source": source,
            "chunk": chunk,
            "doc_hash": doc_hash,
            "meta": meta_json,
            "vector": values,
        }

    async def _write(self, c: Collection, rows: list[dict[str, Any]]) -> dict[str, Any]:
        async with self._lock(c):
            total = await asyncio.to_thread(self._merge, c, rows)
        self._maybe_index(c, total)
        return {"upserted": len(rows), "rows": total}

    def _plan(
        self, docs: list[dict[str, Any]], size: int, overlap: int, unit: str, limit: int
    ) -> list[tuple[str, list[str], dict[str, Any], str]]:
        """Each document's (source, chunks, metadata, hash); more than ``limit`` chunks in all is refused before any
        is embedded, and as soon as it is known."""
        plans = []
        left = limit
        for i, doc in enumerate(docs):
            source, text = str(doc.get("source") or ""), str(doc.get("text") or "")
            if not source:
                raise BadRequest(f"documents[{i}].source is empty", param="source", hint="name where the text is from")
            if not text.strip():
                raise BadRequest(f"{source}: the text is empty", param="text", hint="skip empty files")
            try:
                chunks = chunk_text(text, size, overlap, unit, max_chunks=left)
            except TooManyChunks:
                raise PayloadTooLarge(
                    f"this request makes more than {limit} chunks (vectors.max_chunks_per_request) at chunk size "
                    f"{size} {unit}",
                    param="documents",
                    code="too_many_chunks",
                    hint="send fewer or smaller documents per request, use a larger chunk_size, or raise "
                    "vectors.max_chunks_per_request",
                ) from None
            left -= len(chunks)
            meta = dict(doc.get("metadata") or {})
            doc_hash = digest(json.dumps([text, meta, size, overlap, unit], sort_keys=True))
            plans.append((source, chunks, meta, doc_hash))
        return plans

    async def ingest(
        self, c: Collection, docs: list[dict[str, Any]], size: int, overlap: int, unit: str
    ) -> dict[str, Any]:
        """Chunk, embed and store documents keyed by source: an unchanged document is skipped; a changed one
        replaces every chunk of its source (vectors of chunks that did not change are reused)."""
        try:
            check_params(size, overlap, unit)
        except ValueError as exc:
            raise BadRequest(
                str(exc),
                param="chunk_size" if unit in UNITS else "chunk_unit",
                code="bad_chunking",
                hint="use a larger chunk_size (and a smaller chunk_overlap), or fix vectors.chunk_size and "
                "vectors.chunk_overlap",
            ) from None
        limit = int(self.settings["vectors.max_chunks_per_request"])
        plans = await asyncio.to_thread(self._plan, docs, size, overlap, unit, limit)  # CPU work: off the loop
        if len({p[0] for p in plans}) != len(plans):
            raise BadRequest("two documents have the same source", param="source", hint="one document per source")
        async with self._lock(c):
            counts = {"added": 0, "unchanged": 0, "replaced": 0, "chunks": 0, "embedded": 0}
            existing: dict[str, dict[str, Any]] = {}
            hashes: dict[str, set[str]] = {}
            table = await asyncio.to_thread(self._table, c)
            if table is not None and plans:
                where = "source IN (" + ", ".join(_quote(p[0]) for p in plans) + ")"
                for row in await asyncio.to_thread(self._scan, table, where, ["id", "source", "doc_hash", "vector"]):
                    existing[row["id"]] = row
                    hashes.setdefault(row["source"], set()).add(row["doc_hash"])
            todo = []
            for source, chunks, meta, doc_hash in plans:
                if hashes.get(source) == {doc_hash}:
                    counts["unchanged"] += 1
                    continue
                counts["replaced" if source in hashes else "added"] += 1
                todo.append((source, chunks, meta, doc_hash, chunk_ids(source, chunks)))
            wanted = {ident: chunk for plan in todo for ident, chunk in zip(plan[4], plan[1], strict=True)}
            new_texts = [(ident, chunk) for ident, chunk in wanted.items() if ident not in existing]
            fresh: dict[str, Any] = {}
            if new_texts:
                vectors = await self._embed(c, [t for _, t in new_texts])
                self.catalog.set_dimension(c, int(vectors.shape[1]))
                fresh = {ident: v for (ident, _), v in zip(new_texts, vectors, strict=True)}
            rows = []
            for source, chunks, meta, doc_hash, ids in todo:
                for n, (ident, chunk) in enumerate(zip(ids, chunks, strict=True)):
                    vector = fresh[ident] if ident in fresh else existing[ident]["vector"]
                    rows.append(self._row_for(ident, chunk, source, n, doc_hash, meta, vector))
            counts["chunks"], counts["embedded"] = len(rows), len(fresh)
            total = 0
            if rows:
                replaced = [s for s, *_ in todo if s in hashes]
                stale = "source IN (" + ", ".join(_quote(s) for s in replaced) + ")" if replaced else None
                total = await asyncio.to_thread(self._merge, c, rows, stale)
        if rows:
            self._maybe_index(c, total)
        return counts

    async def delete(
        self, c: Collection, ids: list[str] | None, where: str | None, source: str | None
    ) -> dict[str, Any]:
        clauses = []
        if ids:
            clauses.append("id IN (" + ", ".join(_quote(str(i)) for i in ids) + ")")
        if source:
            clauses.append(f"source = {_quote(source)}")
        if where:
            clauses.append(f"({where})")
        if not clauses:
            raise BadRequest("say what to delete", hint='send {"ids": [...]}, {"source": "..."} or {"filter": "..."}')
        condition = " OR ".join(clauses)
        async with self._lock(c):
            table = await asyncio.to_thread(self._table, c)
            if table is None:
                return {"deleted": 0, "rows": 0}

            def run() -> tuple[int, int]:
                before = int(table.count_rows())
                table.delete(condition)
                after = int(table.count_rows())
                return before - after, after

            try:
                deleted, rows = await asyncio.to_thread(run)
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
        if not 0 < top_k <= MAX_TOP_K:
            raise BadRequest(
                f"top_k must be between 1 and {MAX_TOP_K}", param="top_k", hint="ask for fewer matches (-k)"
            )
        if (vector is None) == (text is None):
            raise BadRequest(
                "send either a vector or a text to search for", hint='{"text": "..."} or {"vector": [...]}'
            )
        if text is not None and not text.strip():
            raise BadRequest("the query text is empty", param="text", hint="search for some words")
        if hybrid and text is None:
            raise BadRequest("hybrid search needs a text query", param="hybrid", hint='send {"text": "..."}')
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
        table = await self._reader(c)
        if table is None:
            return []
        if flags[0]:  # hybrid: the full-text index must cover the table's current version
            await asyncio.to_thread(self._ensure_fts, c)
        try:
            return await search(table, vector, text, k, where, *flags, indexed=bool(self._indexed.get(c.tbl)))
        except (ValueError, RuntimeError) as exc:
            if where and not await asyncio.to_thread(valid_filter, self._table(c), where):
                raise BadRequest(f"bad filter {where!r}: {exc}", param="filter", hint=FILTER_HINT) from None
            raise

    async def _reader(self, c: Collection) -> Any:
        """The collection's table on LanceDB's async API, or None before its first write. Its connection checks for
        a newer version on every query (read_consistency_interval 0): writes go through the sync tables."""
        if c.tbl not in self._tables and await asyncio.to_thread(self._table, c) is None:
            return None
        table = self._readers.get(c.tbl)
        if table is None:
            if self._async_db is None:
                import lancedb

                self._async_db = await lancedb.connect_async(str(self.root), read_consistency_interval=timedelta(0))
            table = self._readers[c.tbl] = await self._async_db.open_table(c.tbl)
        return table

    def _ensure_fts(self, c: Collection) -> None:
        self._fts_version[c.tbl] = ensure_fts(self._table(c), self._fts_version.get(c.tbl))

    # ------------------------------------------------------------------ ANN index
    def _maybe_index(self, c: Collection, rows: int) -> None:
        """Build the ANN index once a collection has ``vectors.index_threshold`` rows; later, once rows written since
        (searched flat until then) reach the threshold or a tenth of the index, fold them in. In the background:
        search stays correct meanwhile."""
        threshold = int(self.settings["vectors.index_threshold"])
        if threshold <= 0 or rows < threshold or c.tbl in self._building:
            return
        if self._indexed.get(c.tbl):
            covered = self._covered.get(c.tbl, rows)
            if rows - covered < max(threshold, covered // 10):
                return
        task = asyncio.get_running_loop().create_task(self._build(c, rows))
        self._building[c.tbl] = task

    async def _build(self, c: Collection, rows: int) -> None:
        started = time.perf_counter()
        what = "refreshed" if self._indexed.get(c.tbl) else "built"
        try:
            await asyncio.to_thread(self._build_index, c, rows)
            self._indexed[c.tbl] = True
            self._covered[c.tbl] = rows
            log.info("%s the ANN index of %s (%d rows) in %.1fs", what, c.name, rows, time.perf_counter() - started)
        except Exception:
            log.exception("building the ANN index of %s failed; search stays exact", c.name)
        finally:
            self._building.pop(c.tbl, None)

    def _build_index(self, c: Collection, rows: int) -> None:
        table = self._table(c)
        if self._indexed.get(c.tbl):
            refresh_index(table)
        else:
            build_index(table, rows, int(c.dimension or 0))

    async def wait_for_index(self, c: Collection) -> None:
        task = self._building.get(c.tbl)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
