"""What a row of a collection's LanceDB table holds (its schema, the record written for a vector, a document or a
chunk, a chunk's id) and the SQL conditions that pick rows."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tiqo.core.errors import BadRequest
from tiqo.daemon.knowledge.catalog import digest


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def any_of(column: str, values: Iterable[str]) -> str:
    return f"{column} IN (" + ", ".join(quote(str(v)) for v in values) + ")"


def chunk_ids(source: str, chunks: list[str]) -> list[str]:
    """A chunk's key is a hash of its source and content (plus which repeat of that content it is)."""
    seen: dict[str, int] = {}
    out = []
    for chunk in chunks:
        n = seen.get(chunk, 0)
        seen[chunk] = n + 1
        out.append(digest(source, str(n), chunk))
    return out


def schema(dim: int) -> Any:
    """The table's pyarrow schema, for vectors of ``dim`` dimensions (imported on first use, like lancedb)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("text", pa.string()),
            pa.field("source", pa.string()),
            pa.field("chunk", pa.int32()),
            pa.field("doc_hash", pa.string()),
            pa.field("meta", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def record(
    ident: str, text: str, source: str, chunk: int, doc_hash: str, meta: dict[str, Any], vector: Any
) -> dict[str, Any]:
    """One row; metadata that is not JSON or values that are not numbers are the caller's 400."""
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


def delete_condition(ids: list[str] | None, where: str | None, source: str | None) -> str:
    """Rows with any of ``ids``, or from ``source``, or matching the filter ``where``; at least one must be given."""
    clauses = []
    if ids:
        clauses.append(any_of("id", ids))
    if source:
        clauses.append(f"source = {quote(source)}")
    if where:
        clauses.append(f"({where})")
    if not clauses:
        raise BadRequest("say what to delete", hint='send {"ids": [...]}, {"source": "..."} or {"filter": "..."}')
    return " OR ".join(clauses)
