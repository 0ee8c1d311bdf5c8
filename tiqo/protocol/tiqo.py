"""Bodies of tiqo's own routes (``/tiqo/...``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tiqo.core.durations import parse_duration


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_alive: str | float | None = None

    def keep_alive_seconds(self) -> float | None:
        return None if self.keep_alive is None else parse_duration(self.keep_alive)


class AddModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    path: str
    n_ctx: int | None = Field(default=None, ge=64)
    keep_alive: str | None = None
    description: str | None = None
