"""OpenAI's ``/v1/embeddings`` request body (string or list input, float or base64 encoding, ``dimensions``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: str | list[str] | list[int] | list[list[int]]
    model: str | None = None
    encoding_format: str | None = "float"
    dimensions: int | None = None
    user: str | None = None
