"""Jobs as the API shows them (``/tiqo/jobs``): long work such as video, owned by a user, with progress and a
result that stays until it is removed or expires (``jobs.keep``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
MAX_WAIT_S = 60.0  # GET /tiqo/jobs/{id}/wait holds a request at most this long


class JobError(BaseModel):
    code: str = Field(description="e.g. interrupted (the daemon stopped while it ran), internal_error, worker_died")
    message: str
    hint: str | None = None


class JobObject(BaseModel):
    id: str = Field(description='"job_" and 32 hex digits')
    user: str
    kind: str = Field(description="what the job makes, e.g. video or image")
    status: JobStatus
    progress: int = Field(ge=0, le=100, description="percent of its steps done")
    step: int
    total: int
    stage: str = Field(description="what it is doing now, e.g. loading or denoising")
    eta_s: float | None = Field(description="seconds left, from the mean step time so far; null until known")
    created_at: float
    started_at: float | None
    finished_at: float | None
    params: dict[str, Any] = Field(description="the request as it was submitted")
    result: dict[str, Any] | None = Field(description='what it made, e.g. {"files": {"video": "video.mp4"}}')
    meta: dict[str, Any] = Field(description="model, device, seed, steps, ...")
    error: JobError | None
    expires_at: float | None = Field(description="when a finished job and its files are removed (jobs.keep)")


class JobList(BaseModel):
    data: list[JobObject]
    has_more: bool = Field(description="pass the last id as ?after= for the next page")
