"""Request bodies of the speech routes: OpenAI's ``/v1/audio/speech`` and tiqo's voice registration."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SpeechBody(BaseModel):
    """OpenAI's ``/v1/audio/speech`` body; ``speaker`` picks a speaker of a multi-speaker voice (tiqo)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str
    voice: str | dict[str, Any] | None = None
    response_format: str | None = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: str | None = None
    speaker: str | None = None


class AddVoiceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    description: str | None = None
