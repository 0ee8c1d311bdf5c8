"""Searching one LanceDB table: cosine vector search and lance's native full-text search (no tantivy, works offline)
fused with reciprocal rank fusion, on LanceDB's async API; the index builds (blocking, called from worker threads).

Index choice, measured by bench/vectors.py on 100,000 real all-MiniLM-L6-v2 embeddings (200 queries, recall@10
against exact search; flat search 68 ms a query on 2 cores): IVF_FLAT with sqrt(N) partitions builds in 9 s and
answers in 7.6 ms at nprobes 20 with recall 1.000 (6.7 ms at nprobes 10); IVF_HNSW_SQ builds in 22 s, 6.4-7.9 ms at
recall 0.986 without refinement, 10-17 ms with refine_factor 10 (recall 1.0); IVF_PQ builds in 100-200 s and needs
refine_factor 10 to pass recall 0.95 (9-13 ms). IVF_FLAT keeps full vectors, so it needs no refinement pass and its
recall depends only on nprobes. So: IVF_FLAT, sqrt(N) partitions, nprobes 20.

The table is compacted (``optimize``) before the index is built: a collection written in many small upserts has a
fragment per write (100 at 100k rows in batches of 1,000), and searching 100 fragments cost ~7 ms more per query.
"""

from __future__ import annotations

import math
from typing import Any

COLUMNS = ["id", "text", "source", "chunk", "meta"]
RRF_K = 60  # reciprocal rank fusion: score = sum of 1 / (RRF_K + rank)
NPROBES = 20
FILTER_HINT = "a SQL WHERE clause over id, text, source, chunk and meta, e.g. \"source LIKE '%.md'\""


def valid_filter(table: Any, where: str) -> bool:
    try:
        table.count_rows(where)
    except Exception:
        return False
    return True


def _match(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("id", "score", "text", "source", "chunk", "meta")}


def ensure_fts(table: Any, built_version: int | None) -> int:
    """A full-text index over ``text``, rebuilt when the table changed since ``built_version``; returns the version
    it now covers."""
    if built_version == int(table.version):
        return built_version
    from lancedb.index import FTS

    table.create_index("text", config=FTS(), replace=True)
    return int(table.version)


async def search(
    table: Any,
    vector: list[float],
    text: str | None,
    k: int,
    where: str | None,
    hybrid: bool,
    exact: bool = False,
    *,
    indexed: bool = False,
) -> list[dict[str, Any]]:
    """The ``k`` best rows (id, score = cosine similarity, text, source, chunk, meta) of an ``AsyncTable``; hybrid
    search needs the full-text index (``ensure_fts``) first.

    LanceDB's async API runs the query on its own runtime and wakes the event loop when done: 3 ms a query less than
    its sync API (which hops to a background loop thread for the query and again for each batch) from a worker
    thread, measured on 20k rows (6.7 ms vs 3.7-4.0 ms)."""
    import numpy as np

    want = k * 4 if hybrid else k
    q = table.query().nearest_to(vector).column("vector").distance_type("cosine").limit(want)
    if where:
        q = q.where(where)  # a prefilter: the k best of the rows that match
    if exact:
        q = q.bypass_vector_index()
    elif indexed:
        q = q.nprobes(NPROBES)
    dense = await q.select([*COLUMNS, "_distance"]).to_list()
    for row in dense:
        row["score"] = 1.0 - float(row.pop("_distance"))
    if not hybrid:
        return [_match(r) for r in dense[:k]]
    fq = table.query().nearest_to_text(str(text), columns="text").limit(want)
    if where:
        fq = fq.where(where)
    sparse = await fq.select([*COLUMNS, "vector", "_score"]).to_list()
    fused: dict[str, dict[str, Any]] = {}
    query = np.asarray(vector, dtype=np.float32)
    query /= max(float(np.linalg.norm(query)), 1e-12)
    for ranked in (dense, sparse):
        for rank, row in enumerate(ranked):
            entry = fused.setdefault(row["id"], row)
            entry["rrf"] = entry.get("rrf", 0.0) + 1.0 / (RRF_K + rank + 1)
            if "score" not in entry:  # found by words only: its cosine similarity from the stored vector
                v = np.asarray(row["vector"], dtype=np.float32)
                entry["score"] = float(v @ query / max(float(np.linalg.norm(v)), 1e-12))
    best = sorted(fused.values(), key=lambda r: -r["rrf"])[:k]
    return [{**_match(r), "rrf": round(r["rrf"], 6)} for r in best]


def index_config(rows: int, dim: int) -> Any:
    """IVF_FLAT sized to the table: sqrt(rows) partitions (at least one, so a small table still builds)."""
    from lancedb.index import IvfFlat

    return IvfFlat(distance_type="cosine", num_partitions=max(1, round(math.sqrt(rows))))


def build_index(table: Any, rows: int, dim: int) -> None:
    """Compact the table's fragments, then build its vector index (replacing an older one)."""
    table.optimize()
    table.create_index("vector", config=index_config(rows, dim), replace=True)


def refresh_index(table: Any) -> None:
    """Fold rows written since the index was built into it (and compact): without it they are searched flat."""
    table.optimize()
