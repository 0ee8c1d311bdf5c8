"""Request bodies of tiqo's vector store routes (``/tiqo/vectors``), shaped like Pinecone's API, plus ``ingest``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CreateCollection(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    name: str
    model: str | None = None
    shared: bool = False
    dimension: int | None = None


class VectorRecord(BaseModel):
    id: str = Field(min_length=1)
    values: list[float]
    metadata: dict[str, Any] | None = None


class DocumentRecord(BaseModel):
    id: str | None = None
    text: str
    metadata: dict[str, Any] | None = None


class Upsert(BaseModel):
    vectors: list[VectorRecord] | None = None
    documents: list[DocumentRecord] | None = None


class Query(BaseModel):
    vector: list[float] | None = None
    text: str | None = None
    top_k: int = 5
    filter: str | None = None
    include_metadata: bool = True
    hybrid: bool = False
    exact: bool = False  # skip the ANN index: flat, exact search


class Delete(BaseModel):
    ids: list[str] | None = None
    filter: str | None = None
    source: str | None = None


class IngestDocument(BaseModel):
    source: str
    text: str
    metadata: dict[str, Any] | None = None


class Ingest(BaseModel):
    documents: list[IngestDocument]
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    chunk_unit: str | None = None
