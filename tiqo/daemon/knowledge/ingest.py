"""Planning an ingest, with no I/O: each document chunked and hashed (a request that makes too many chunks is refused
before anything is embedded), then compared with what the collection holds: an unchanged source is skipped, a changed
one replaces every chunk of its source, and chunks already stored keep their vectors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tiqo.core.errors import BadRequest, PayloadTooLarge
from tiqo.daemon.knowledge.catalog import digest
from tiqo.daemon.knowledge.chunking import UNITS, TooManyChunks, check_params, chunk_text
from tiqo.daemon.knowledge.rows import chunk_ids, record

Stored = dict[str, dict[str, Any]]  # id -> the stored row (id, source, doc_hash, vector) of a source being ingested


@dataclass
class Plan:
    """One document: its chunks, metadata, and a hash of everything that decides them."""

    source: str
    chunks: list[str]
    meta: dict[str, Any]
    doc_hash: str
    ids: list[str] = field(default_factory=list)  # the chunks' ids, filled in for documents that are written


def check_chunking(size: int, overlap: int, unit: str) -> None:
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


def plan(docs: list[dict[str, Any]], size: int, overlap: int, unit: str, limit: int) -> list[Plan]:
    """Each document's plan; more than ``limit`` chunks in all is refused before any is embedded, and as soon as it is
    known. CPU work: run it in a worker thread."""
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
        plans.append(Plan(source, chunks, meta, doc_hash))
    if len({p.source for p in plans}) != len(plans):
        raise BadRequest("two documents have the same source", param="source", hint="one document per source")
    return plans


def changes(plans: list[Plan], hashes: dict[str, set[str]]) -> tuple[list[Plan], dict[str, int]]:
    """The plans to write (``hashes``: the document hashes each source has now) and the counts of the answer."""
    counts = {"added": 0, "unchanged": 0, "replaced": 0, "chunks": 0, "embedded": 0}
    todo = []
    for p in plans:
        if hashes.get(p.source) == {p.doc_hash}:
            counts["unchanged"] += 1
            continue
        counts["replaced" if p.source in hashes else "added"] += 1
        p.ids = chunk_ids(p.source, p.chunks)
        todo.append(p)
    return todo, counts


def unembedded(todo: list[Plan], stored: Stored) -> list[tuple[str, str]]:
    """(id, text) of each distinct chunk with no stored vector."""
    wanted = {ident: chunk for p in todo for ident, chunk in zip(p.ids, p.chunks, strict=True)}
    return [(ident, chunk) for ident, chunk in wanted.items() if ident not in stored]


def chunk_rows(todo: list[Plan], fresh: dict[str, Any], stored: Stored) -> list[dict[str, Any]]:
    """Every chunk's row, with its new vector or the one stored under its id."""
    rows = []
    for p in todo:
        for n, (ident, chunk) in enumerate(zip(p.ids, p.chunks, strict=True)):
            vector = fresh[ident] if ident in fresh else stored[ident]["vector"]
            rows.append(record(ident, chunk, p.source, n, p.doc_hash, p.meta, vector))
    return rows
